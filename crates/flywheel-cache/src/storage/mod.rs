//! Where NARs live, one object per NarHash (so caches that hold the same path share it), behind
//! a trait: a directory on the server ([`dir`]), or any S3-compatible object store ([`s3`]),
//! which several servers share.
//!
//! The trait is synchronous, like the index: the server calls it from `spawn_blocking`, and
//! the CLI (GC, verify, migrate) from plain threads. Serving a NAR is the one streaming path
//! that stays asynchronous: [`NarStorage::source`] says where to stream it from.

pub mod dir;
pub mod s3;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What a storage holds: each stored NAR (NarHash, stored size), and anything else found there.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    pub nars: Vec<([u8; 32], u64)>,
    /// Names (paths or keys) that are not a stored NAR's.
    pub strays: Vec<String>,
}

/// Where the server streams a stored NAR from.
pub enum NarSource {
    /// A local file, served from a memory map or with ranges.
    File(PathBuf),
    /// An object, streamed from the store as it arrives.
    Object(s3::ObjectRef),
}

pub trait NarStorage: Send + Sync {
    /// For messages: the folder, or `s3://bucket/prefix`.
    fn describe(&self) -> String;
    fn contains(&self, nar_hash: &[u8; 32]) -> io::Result<bool>;
    /// Stores the complete, synced file at `tmp` as the NAR `nar_hash`, and removes `tmp`. A
    /// NAR that is already stored is kept (the same NAR, though perhaps compressed otherwise):
    /// then the answer is `false`, and the stored object's hash and size are not `tmp`'s. The
    /// caller holds [`crate::index::IndexLock::Store`] for the NAR, so no other writer races it.
    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<bool>;
    /// Where to serve the NAR from (no I/O: it may not exist).
    fn source(&self, nar_hash: &[u8; 32]) -> NarSource;
    /// The stored NAR's bytes, streamed.
    fn open(&self, nar_hash: &[u8; 32]) -> io::Result<Box<dyn Read + Send>>;
    /// The stored NAR's size.
    fn size(&self, nar_hash: &[u8; 32]) -> io::Result<u64>;
    /// Every stored NAR, with its size; names that are not a stored NAR's are returned apart.
    fn list(&self) -> io::Result<Listing>;
    /// Deletes a stored NAR (GC, once the index no longer names it); `NotFound` if it is not there.
    fn remove(&self, nar_hash: &[u8; 32]) -> io::Result<()>;
    /// When the NAR was stored (for the orphan sweep's grace period).
    fn modified(&self, nar_hash: &[u8; 32]) -> io::Result<SystemTime>;
    /// Removes what interrupted writes left in the storage itself (temporary objects) before
    /// `before`: (count, bytes). The directory store writes its temporaries in the server's own
    /// scratch folder instead, which the server clears.
    fn sweep_temporaries(&self, before: SystemTime) -> io::Result<(u64, u64)>;
}

/// `nar/<first two nix32 characters>/<nix32 NarHash>.nar.zst`: the same names in both stores.
pub fn nar_name(nar_hash: &[u8; 32]) -> String {
    let name = nix_derivation::nixbase32::encode(nar_hash);
    format!("{}/{name}.nar.zst", &name[..2])
}

/// The NarHash a name from [`nar_name`] stands for.
pub fn parse_nar_name(shard: &str, file: &str) -> Option<[u8; 32]> {
    let hash = file
        .strip_suffix(".nar.zst")
        .and_then(|h| nix_derivation::nixbase32::decode(h.as_bytes()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())?;
    (nar_name(&hash) == format!("{shard}/{file}")).then_some(hash)
}

/// SHA-256 and length of what `reader` yields.
pub fn hash_reader(mut reader: impl Read) -> io::Result<([u8; 32], u64)> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher.finalize().into(), size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn names_round_trip(hash in proptest::array::uniform32(any::<u8>())) {
            let name = nar_name(&hash);
            let (shard, file) = name.split_once('/').expect("a shard");
            prop_assert_eq!(parse_nar_name(shard, file), Some(hash));
            prop_assert_eq!(parse_nar_name("zz", file), None);
        }
    }
}
