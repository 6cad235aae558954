//! NARs in a directory: `nar/<first two nix32 characters>/<nix32 NarHash>.nar.zst`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{Listing, NarStorage};

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

    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<bool> {
        let dest = self.file_of(nar_hash);
        if dest.is_file() {
            fs::remove_file(tmp)?;
            return Ok(false);
        }
        let dir = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        fs::create_dir_all(dir)?;
        fs::rename(tmp, &dest)?;
        // The rename is durable only once the folder is synced.
        fs::File::open(dir)?.sync_all()?;
        Ok(true)
    }

    fn local_path(&self, nar_hash: &[u8; 32]) -> Option<PathBuf> {
        let p = self.file_of(nar_hash);
        p.is_file().then_some(p)
    }

    fn remove(&self, nar_hash: &[u8; 32]) -> io::Result<()> {
        fs::remove_file(self.file_of(nar_hash))
    }

    fn modified(&self, nar_hash: &[u8; 32]) -> io::Result<std::time::SystemTime> {
        fs::metadata(self.file_of(nar_hash))?.modified()
    }

    fn list(&self) -> io::Result<Listing> {
        let (mut nars, mut strays) = (Vec::new(), Vec::new());
        let top = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Listing { nars, strays }),
            Err(e) => return Err(e),
        };
        for shard in top {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                strays.push(shard.path());
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let hash = name
                    .strip_suffix(".nar.zst")
                    .and_then(|h| nix_derivation::nixbase32::decode(h.as_bytes()).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .filter(|h| self.file_of(h) == entry.path());
                match hash {
                    Some(h) if entry.file_type()?.is_file() => nars.push((h, entry.metadata()?.len())),
                    _ => strays.push(entry.path()),
                }
            }
        }
        nars.sort();
        Ok(Listing { nars, strays })
    }
}
