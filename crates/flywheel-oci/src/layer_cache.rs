//! A cache of built layers, so that a rebuild after one path changes only writes the layers
//! that changed. A layer is found by what determines its bytes: the header policy version, the
//! compressor and its settings, the mtime, and the layer's content identity (its store paths
//! with their NarHashes, which identify immutable store contents, and their owner when the spec
//! sets `nixStore.owner`; or the NarHash of a directory layer's tree with its prefix and
//! overrides). Blobs are hard-linked into the
//! output (copied across filesystems). Deleting the cache directory is always safe.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::layer::LayerBlob;

pub struct LayerCache {
    dir: PathBuf,
}

impl LayerCache {
    /// `$XDG_CACHE_HOME/flywheel/layers`, or `~/.cache/flywheel/layers`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = match std::env::var_os("XDG_CACHE_HOME") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(std::env::var_os("HOME").filter(|h| !h.is_empty())?).join(".cache"),
        };
        Some(base.join("flywheel/layers"))
    }

    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::create_dir_all(dir.join("entries"))?;
        Ok(LayerCache { dir: dir.to_path_buf() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a layer: the digest of the canonical JSON of what determines its bytes.
    pub fn key(identity: &serde_json::Value) -> String {
        Digest::of(&crate::json::canonical(identity).unwrap_or_default()).hex()
    }

    /// The layer stored under `key`, linked into `blobs`; `None` when absent or damaged.
    pub fn get(&self, key: &str, blobs: &Path) -> Option<LayerBlob> {
        let entry = self.dir.join("entries").join(format!("{key}.json"));
        let blob: LayerBlob = serde_json::from_slice(&fs::read(&entry).ok()?).ok()?;
        let cached = self.blob_path(&blob.digest);
        match fs::metadata(&cached) {
            Ok(m) if m.len() == blob.size => {}
            _ => {
                tracing::debug!("layer cache entry {key} has no intact blob; rebuilding it");
                let _ = fs::remove_file(&entry);
                return None;
            }
        }
        link_or_copy(&cached, &blobs.join(blob.digest.hex())).ok()?;
        Some(blob)
    }

    /// Stores the layer `blob`, found in `blobs`, under `key`. A failure only costs a rebuild
    /// later, so it is logged, not returned.
    pub fn put(&self, key: &str, blob: &LayerBlob, blobs: &Path) {
        if let Err(e) = self.try_put(key, blob, blobs) {
            tracing::warn!("could not store a layer in the cache {}: {e}", self.dir.display());
        }
    }

    fn try_put(&self, key: &str, blob: &LayerBlob, blobs: &Path) -> io::Result<()> {
        let cached = self.blob_path(&blob.digest);
        if !cached.exists() {
            // Linked under a temporary name and renamed, so a reader never sees half a blob.
            let tmp = self.dir.join("blobs/sha256").join(format!(".{}.{}", blob.digest.hex(), std::process::id()));
            let _ = fs::remove_file(&tmp);
            link_or_copy(&blobs.join(blob.digest.hex()), &tmp)?;
            fs::rename(&tmp, &cached)?;
        }
        let entry = serde_json::to_vec(blob).map_err(io::Error::other)?;
        crate::layout::write_atomic(&self.dir.join("entries").join(format!("{key}.json")), &entry)
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }
}

/// A hard link when both sides are on one filesystem, else a copy (which reflinks where the
/// filesystem can). An existing `to` is left as it is: blobs are named by their digest.
pub fn link_or_copy(from: &Path, to: &Path) -> io::Result<()> {
    if to.exists() {
        return Ok(());
    }
    match fs::hard_link(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => {
            let tmp = to.with_extension(format!("copy-{}", std::process::id()));
            fs::copy(from, &tmp)?;
            fs::rename(&tmp, to)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn put_then_get_links_the_blob_and_a_damaged_blob_is_a_miss() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = LayerCache::open(&tmp.path().join("cache")).unwrap();
        let out1 = tmp.path().join("out1");
        fs::create_dir(&out1).unwrap();
        let data = b"layer bytes";
        let digest = Digest::of(data);
        fs::write(out1.join(digest.hex()), data).unwrap();
        let blob = LayerBlob { digest, size: data.len() as u64, diff_id: digest, uncompressed_size: 11 };
        let key = LayerCache::key(&serde_json::json!({ "paths": ["a"] }));
        assert!(cache.get(&key, &out1).is_none());
        cache.put(&key, &blob, &out1);

        let out2 = tmp.path().join("out2");
        fs::create_dir(&out2).unwrap();
        assert_eq!(cache.get(&key, &out2), Some(blob));
        assert_eq!(fs::read(out2.join(digest.hex())).unwrap(), data);

        fs::write(cache.blob_path(&digest), b"short").unwrap();
        let out3 = tmp.path().join("out3");
        fs::create_dir(&out3).unwrap();
        assert!(cache.get(&key, &out3).is_none());
        assert!(!out3.join(digest.hex()).exists());
    }
}
