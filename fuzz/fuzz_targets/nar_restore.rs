//! Restoring any input either fails and leaves nothing, or succeeds and dumps back to the
//! same bytes; nothing is ever written outside the target's parent directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let target = dir.path().join("t");
    match flywheel_nix::nar::restore(data, &target) {
        Ok(_) => {
            let again = flywheel_nix::nar::write_nar(&target, Vec::new()).expect("dump what was restored");
            assert_eq!(again, data);
        }
        Err(_) => {
            let left = std::fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
            assert_eq!(left, 0, "a failed restore left files behind");
        }
    }
});
