//! What flywheel remembers of earlier pushes, for cross-repository mounts: registry host ->
//! blob digest -> a repository that holds it, in `STATE_DIR/blobs.json`.
//!
//! It is only a hint: a wrong entry costs a refused mount and an upload. The file is replaced
//! whole (temporary file + rename), merged with what other pushes wrote meanwhile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

const FILE: &str = "blobs.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobState {
    /// host\[:port\] -> digest -> repository.
    #[serde(default)]
    pub registries: BTreeMap<String, BTreeMap<String, String>>,
}

impl BlobState {
    /// The state in `dir` (empty when there is none, or when it cannot be read: it is a hint).
    pub fn load(dir: &Path) -> Self {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("{}: not a valid blob state file ({e}); starting afresh", path.display());
                BlobState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BlobState::default(),
            Err(e) => {
                tracing::warn!("{}: {e}; pushing without mount hints", path.display());
                BlobState::default()
            }
        }
    }

    /// A repository of `registry`, other than `repo`, known to hold `digest`.
    pub fn mount_source(&self, registry: &str, digest: &Digest, repo: &str) -> Option<String> {
        let r = self.registries.get(registry)?.get(&digest.to_string())?;
        (r != repo).then(|| r.clone())
    }

    pub fn record(&mut self, registry: &str, repo: &str, digests: impl IntoIterator<Item = Digest>) {
        let m = self.registries.entry(registry.to_string()).or_default();
        for d in digests {
            m.insert(d.to_string(), repo.to_string());
        }
    }

    /// Records `digests` as held by `repo` and writes the state to `dir`, merged with the
    /// state there now.
    pub fn save_pushed(dir: &Path, registry: &str, repo: &str, digests: &[Digest]) -> Result<PathBuf, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let mut state = BlobState::load(dir);
        state.record(registry, repo, digests.iter().copied());
        let mut bytes = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        let path = dir.join(FILE);
        crate::layout::write_atomic(&path, &bytes)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_merge() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        assert_eq!(BlobState::load(dir.path()), BlobState::default());
        BlobState::save_pushed(dir.path(), "reg:5000", "one", &[a, b]).unwrap();
        BlobState::save_pushed(dir.path(), "reg:5000", "two", &[b]).unwrap();
        BlobState::save_pushed(dir.path(), "other", "x", &[a]).unwrap();
        let s = BlobState::load(dir.path());
        assert_eq!(s.mount_source("reg:5000", &a, "two").as_deref(), Some("one"));
        assert_eq!(s.mount_source("reg:5000", &a, "one"), None);
        assert_eq!(s.mount_source("reg:5000", &b, "one").as_deref(), Some("two"));
        assert_eq!(s.mount_source("other", &a, "y").as_deref(), Some("x"));
        assert_eq!(s.mount_source("nowhere", &a, "y"), None);
        // Only the state file is left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn malformed_state_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{oops").unwrap();
        assert_eq!(BlobState::load(dir.path()), BlobState::default());
        BlobState::save_pushed(dir.path(), "r", "x", &[Digest::of(b"")]).unwrap();
        assert_eq!(BlobState::load(dir.path()).registries["r"].len(), 1);
    }
}
