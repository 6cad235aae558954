//! NARs in a directory: `nar/<first two nix32 characters>/<nix32 NarHash>.nar.zst`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Listing, NarSource, NarStorage};

pub struct DirStorage {
    root: PathBuf,
}

impl DirStorage {
    pub fn new(root: &Path) -> Self {
        DirStorage { root: root.to_path_buf() }
    }

    pub fn file_of(&self, nar_hash: &[u8; 32]) -> PathBuf {
        self.root.join(super::nar_name(nar_hash))
    }
}

impl NarStorage for DirStorage {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn contains(&self, nar_hash: &[u8; 32]) -> io::Result<bool> {
        Ok(self.file_of(nar_hash).is_file())
    }

    fn put(&self, nar_hash: &[u8; 32], tmp: &Path) -> io::Result<bool> {
        let dest = self.file_of(nar_hash);
        let dir = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        fs::create_dir_all(dir)?;
        // A link, unlike a rename, never replaces a NAR another upload stored meanwhile.
        let stored = match fs::hard_link(tmp, &dest) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        fs::remove_file(tmp)?;
        if stored {
            // The link is durable only once the folder is synced.
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(stored)
    }

    fn source(&self, nar_hash: &[u8; 32]) -> NarSource {
        NarSource::File(self.file_of(nar_hash))
    }

    fn open(&self, nar_hash: &[u8; 32]) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(fs::File::open(self.file_of(nar_hash))?))
    }

    fn size(&self, nar_hash: &[u8; 32]) -> io::Result<u64> {
        Ok(fs::metadata(self.file_of(nar_hash))?.len())
    }

    fn remove(&self, nar_hash: &[u8; 32]) -> io::Result<()> {
        fs::remove_file(self.file_of(nar_hash))
    }

    fn modified(&self, nar_hash: &[u8; 32]) -> io::Result<SystemTime> {
        fs::metadata(self.file_of(nar_hash))?.modified()
    }

    fn sweep_temporaries(&self, _before: SystemTime) -> io::Result<(u64, u64)> {
        Ok((0, 0))
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
                strays.push(shard.path().display().to_string());
                continue;
            }
            let shard_name = shard.file_name().to_string_lossy().into_owned();
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                match super::parse_nar_name(&shard_name, &name) {
                    Some(h) if entry.file_type()?.is_file() => nars.push((h, entry.metadata()?.len())),
                    _ => strays.push(entry.path().display().to_string()),
                }
            }
        }
        nars.sort();
        Ok(Listing { nars, strays })
    }
}
