//! Where NARs live, one file per NarHash (so caches that hold the same path share it), behind
//! a trait: a later issue adds S3-compatible object storage beside the directory store.

pub mod dir;

use std::io;
use std::path::{Path, PathBuf};

/// What a storage holds: each stored NAR (NarHash, stored size), and anything else found there.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub nars: Vec<([u8; 32], u64)>,
    pub strays: Vec<PathBuf>,
}

pub trait NarStorage: Send + Sync {
    fn contains(&self, nar_hash: &[u8; 32]) -> bool;
    /// Moves the complete, synced file at `tmp` into place as the NAR `nar_hash`. A NAR that is
    /// already stored is kept (the same NAR, though perhaps compressed differently) and `tmp` is
    /// removed: then the answer is `false`, and the stored file's hash and size are not `tmp`'s.
    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<bool>;
    /// A local file holding the stored NAR, for serving with ranges (the directory store).
    fn local_path(&self, nar_hash: &[u8; 32]) -> Option<PathBuf>;
    /// Every stored NAR, with its size; names that are not a stored NAR's are returned apart.
    fn list(&self) -> io::Result<Listing>;
    /// Deletes a stored NAR (GC, once the index no longer names it); `NotFound` if it is not there.
    fn remove(&self, nar_hash: &[u8; 32]) -> io::Result<()>;
    /// When the NAR was stored (for the orphan sweep's grace period).
    fn modified(&self, nar_hash: &[u8; 32]) -> io::Result<std::time::SystemTime>;
}
