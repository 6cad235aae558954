//! Locks on the data directory that servers and `flywheel cache gc` (another process) share:
//! flock(2) on files beside the index, released by the kernel when a holder dies (kill -9).
//!
//! - `nar.lock`: storing an uploaded NAR and recording the upload hold it shared; GC holds it
//!   exclusive while it checks that nothing uses a NAR and unlinks it. Without it an upload
//!   could find the file present (and keep it) just before GC unlinks it.
//! - `gc.lock`: one collection at a time.
//! - `store-locks/NN`: one writer at a time of a stored NAR, striped by its NarHash's first
//!   byte (object storage with a SQLite index; the directory store needs none).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

pub struct DataLocks {
    nar: PathBuf,
    gc: PathBuf,
    store: PathBuf,
}

/// Held until dropped (closing the file releases the lock).
pub struct Held(#[allow(dead_code)] File);

impl DataLocks {
    pub fn new(data_root: &Path) -> Self {
        DataLocks {
            nar: data_root.join("nar.lock"),
            gc: data_root.join("gc.lock"),
            store: data_root.join("store-locks"),
        }
    }

    /// Creates the lock files when missing.
    pub fn create(&self) -> io::Result<()> {
        Self::open(&self.nar)?;
        Self::open(&self.gc)?;
        Ok(())
    }

    fn open(path: &Path) -> io::Result<File> {
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)
    }

    /// For storing a NAR and recording its upload.
    pub fn nar_shared(&self) -> io::Result<Held> {
        let f = Self::open(&self.nar)?;
        flock(&f, FlockOperation::LockShared)?;
        Ok(Held(f))
    }

    /// For unlinking NARs.
    pub fn nar_exclusive(&self) -> io::Result<Held> {
        let f = Self::open(&self.nar)?;
        flock(&f, FlockOperation::LockExclusive)?;
        Ok(Held(f))
    }

    /// For storing the NAR `nar_hash`.
    pub fn store_exclusive(&self, nar_hash: &[u8; 32]) -> io::Result<Held> {
        std::fs::create_dir_all(&self.store)?;
        let f = Self::open(&self.store.join(format!("{:02x}", nar_hash[0])))?;
        flock(&f, FlockOperation::LockExclusive)?;
        Ok(Held(f))
    }

    /// The right to collect, or `None` while another collection runs.
    pub fn try_gc(&self) -> io::Result<Option<Held>> {
        let f = Self::open(&self.gc)?;
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Held(f))),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}
