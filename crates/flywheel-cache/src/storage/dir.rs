//! NARs in a directory: `nar/<first two nix32 characters>/<nix32 NarHash>.nar.zst`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::NarStorage;

pub struct DirStorage {
    root: PathBuf,
}

impl DirStorage {
    pub fn new(root: &Path) -> Self {
        DirStorage { root: root.to_path_buf() }
    }

    pub fn file_of(&self, nar_hash: &[u8; 32]) -> PathBuf {
        let name = nix_derivation::nixbase32::encode(nar_hash);
        self.root.join(&name[..2]).join(format!("{name}.nar.zst"))
    }
}

impl NarStorage for DirStorage {
    fn contains(&self, nar_hash: &[u8; 32]) -> bool {
        self.file_of(nar_hash).is_file()
    }

    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<()> {
        let dest = self.file_of(nar_hash);
        if dest.is_file() {
            fs::remove_file(tmp)?;
            return Ok(());
        }
        let dir = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        fs::create_dir_all(dir)?;
        fs::rename(tmp, &dest)?;
        // The rename is durable only once the folder is synced.
        fs::File::open(dir)?.sync_all()
    }

    fn local_path(&self, nar_hash: &[u8; 32]) -> Option<PathBuf> {
        let p = self.file_of(nar_hash);
        p.is_file().then_some(p)
    }
}
