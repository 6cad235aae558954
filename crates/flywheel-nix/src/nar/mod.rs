//! NAR, the Nix ARchive: writing from the filesystem, parsing, and safe restoring.
//!
//! ```
//! use flywheel_nix::nar;
//! let src = tempfile::tempdir().unwrap();
//! std::fs::write(src.path().join("greeting"), "hello\n").unwrap();
//! std::os::unix::fs::symlink("greeting", src.path().join("link")).unwrap();
//!
//! let bytes = nar::write_nar(src.path(), Vec::new()).unwrap();
//! let digest = nar::hash_path(src.path()).unwrap();
//! assert_eq!(digest.size, bytes.len() as u64);
//!
//! let out = tempfile::tempdir().unwrap();
//! let copy = out.path().join("copy");
//! nar::restore(&bytes[..], &copy).unwrap();
//! assert_eq!(std::fs::read_link(copy.join("link")).unwrap().to_str(), Some("greeting"));
//! ```

mod hashing;
mod reader;
mod restore;
mod wire;
mod writer;

use std::io;
use std::path::PathBuf;

pub use hashing::{Digested, HashingReader, HashingWriter};
pub use reader::{read_nar, read_nar_to_end, validate, Validate, Visitor};
pub use restore::{remove_tree, restore, restore_canonical, Restored};
pub use wire::{check_entry_name, write_string, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
pub use writer::{hash_path, hash_paths, write_nar, write_nar_digested};

/// Why a NAR could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    #[error("{}", path.display())]
    Fs { path: PathBuf, source: io::Error },
    #[error("{}: not a regular file, directory or symlink, which is all a NAR can hold", path.display())]
    UnsupportedFileType { path: PathBuf },
    #[error("{}: file changed while it was being read", path.display())]
    FileChanged { path: PathBuf },
    #[error("{}: directories nested deeper than {MAX_DEPTH} levels", path.display())]
    TooDeep { path: PathBuf },
    #[error("reading the NAR: {0}")]
    Read(io::Error),
    #[error("writing the NAR: {0}")]
    Write(io::Error),
    #[error("malformed NAR at byte {offset}: {what}")]
    Malformed { offset: u64, what: Malformed },
    #[error("{}: already exists; restore writes only to a new path", .0.display())]
    TargetExists(PathBuf),
    #[error("{}: not a path a NAR can be restored to", .0.display())]
    BadTarget(PathBuf),
}

impl NarError {
    /// Whether the input NAR itself was at fault (as opposed to the filesystem or the output).
    pub fn is_malformed(&self) -> bool {
        matches!(self, NarError::Malformed { .. })
    }
}

/// What is wrong with a malformed NAR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("expected {expected}, found {found}")]
    UnexpectedToken { expected: String, found: String },
    #[error("{what} of {len} bytes is longer than the limit of {max}")]
    TooLong { what: &'static str, len: u64, max: usize },
    #[error("non-zero padding")]
    BadPadding,
    #[error("input ends before the NAR does (truncated)")]
    Truncated,
    #[error("bytes follow the end of the NAR")]
    TrailingData,
    #[error("bad entry name {name}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("entry {entry} comes after {previous}: entries must be unique and sorted")]
    NotSorted { previous: String, entry: String },
    #[error("bad symlink target {0}: empty or contains NUL")]
    BadSymlinkTarget(String),
    #[error("directories nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

#[cfg(test)]
mod tests;
