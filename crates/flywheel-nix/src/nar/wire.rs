//! The NAR wire format: every string is a little-endian u64 length, the bytes, then zero
//! padding up to a multiple of 8.

use std::io::{self, Write};

pub(crate) const MAGIC: &[u8] = b"nix-archive-1";
pub(crate) const OPEN: &[u8] = b"(";
pub(crate) const CLOSE: &[u8] = b")";
pub(crate) const TYPE: &[u8] = b"type";
pub(crate) const REGULAR: &[u8] = b"regular";
pub(crate) const EXECUTABLE: &[u8] = b"executable";
pub(crate) const CONTENTS: &[u8] = b"contents";
pub(crate) const SYMLINK: &[u8] = b"symlink";
pub(crate) const TARGET: &[u8] = b"target";
pub(crate) const DIRECTORY: &[u8] = b"directory";
pub(crate) const ENTRY: &[u8] = b"entry";
pub(crate) const NAME: &[u8] = b"name";
pub(crate) const NODE: &[u8] = b"node";

/// Longest entry name accepted, Linux's NAME_MAX: nothing longer can be restored.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted, Linux's PATH_MAX less the terminating NUL.
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest directory nesting accepted; restoring holds one descriptor per level.
pub const MAX_DEPTH: usize = 512;

pub(crate) const ZEROS: [u8; 8] = [0; 8];

/// Bytes of padding after a string of `len` bytes.
pub(crate) fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// A Nix wire-format string: its length as a little-endian u64, the bytes, zeros to a multiple
/// of 8 (NARs and the `nix-store --export` format both use it).
pub fn write_string<W: Write + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    w.write_all(&(bytes.len() as u64).to_le_bytes())?;
    w.write_all(bytes)?;
    w.write_all(&ZEROS[..padding(bytes.len() as u64)])
}

/// Writes several tokens at once: the writer keeps these small writes in its buffer.
pub(crate) fn write_tokens<W: Write + ?Sized>(w: &mut W, tokens: &[&[u8]]) -> io::Result<()> {
    for t in tokens {
        write_string(w, t)?;
    }
    Ok(())
}

/// Validates an entry name as Nix does: not empty, not `.` or `..`, no `/` and no NUL.
pub fn check_entry_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty entry name")
    } else if name == b"." || name == b".." {
        Err("entry name is `.` or `..`")
    } else if name.contains(&b'/') {
        Err("entry name contains `/`")
    } else if name.contains(&0) {
        Err("entry name contains NUL")
    } else if name.len() > MAX_NAME_LEN {
        Err("entry name longer than 255 bytes")
    } else {
        Ok(())
    }
}

/// Renders bytes from a NAR for an error message: printable ASCII as is, the rest escaped.
pub(crate) fn show(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(80).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
    if bytes.len() > 80 {
        format!("\"{shown}...\"")
    } else {
        format!("\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 7);
        assert_eq!(padding(8), 0);
        assert_eq!(padding(13), 3);
    }

    #[test]
    fn strings_are_framed() {
        let mut v = Vec::new();
        write_string(&mut v, b"abc").unwrap();
        assert_eq!(v, [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
    }

    #[test]
    fn names_follow_nix_rules() {
        assert!(check_entry_name(b"ok.txt").is_ok());
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(check_entry_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_entry_name(&[b'x'; 256]).is_err());
        assert!(check_entry_name(b"...").is_ok());
    }
}
