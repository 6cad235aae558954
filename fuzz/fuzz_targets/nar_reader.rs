//! The NAR parser must never panic, hang or allocate without bound on any input, and whatever
//! it accepts must be exactly one NAR (the validator and the streaming reader agree).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = flywheel_nix::nar::validate(data);
    let prefix = flywheel_nix::nar::read_nar(data, &mut flywheel_nix::nar::Validate);
    if let Ok(len) = whole {
        assert_eq!(len as usize, data.len());
        assert_eq!(prefix.ok(), Some(len));
    }
});
