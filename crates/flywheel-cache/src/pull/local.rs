//! The local Nix store a pull writes into, the two ways it can: directly (NARs restored in
//! place under Nix's own path locks, then registered in one `nix-store --load-db`), or through
//! `nix-store --import` of the export format when the store is not ours to write (a
//! multi-user store behind the daemon).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use flywheel_nix::nar::write_string;
use flywheel_nix::store_db::{PathInfo, StoreDb};
use flywheel_nix::{NixHash, StoreDir, StorePath};

use crate::CacheError;

/// How pulled paths get into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// Direct when the store directory is writable and no daemon is configured, else import.
    Auto,
    /// Restore each NAR into the store as it downloads; register all at the end.
    Direct,
    /// Download to a spool directory, then stream the export format into `nix-store --import`.
    Import,
}

impl std::str::FromStr for Install {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Install::Auto),
            "direct" => Ok(Install::Direct),
            "import" => Ok(Install::Import),
            other => Err(format!("{other:?}: expected auto, direct or import")),
        }
    }
}

/// A local store: `/`, or the root of a chroot store (what Nix's `--store DIR` names).
#[derive(Clone, Debug)]
pub struct LocalStore {
    pub root: PathBuf,
    pub store_dir: StoreDir,
    /// Where the store's files are on disk.
    pub real_store: PathBuf,
}

impl LocalStore {
    pub fn new(root: &Path, store_dir: StoreDir) -> Self {
        let real_store = flywheel_nix::store_path::real_store(root, &store_dir);
        LocalStore { root: root.to_path_buf(), store_dir, real_store }
    }

    /// The store's database, or `None` when the store has none yet (an empty chroot store).
    pub fn db(&self) -> Result<Option<StoreDb>, CacheError> {
        match StoreDb::open_root(&self.root, self.store_dir.clone()) {
            Ok(db) => Ok(Some(db)),
            Err(flywheel_nix::store_db::StoreDbError::Missing(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// What `Install::Auto` picks here.
    pub fn resolve(&self, install: Install) -> Install {
        if install != Install::Auto {
            return install;
        }
        let daemon = std::env::var("NIX_REMOTE").map(|v| !v.is_empty() && v != "local").unwrap_or(false);
        let writable = rustix::fs::access(&self.real_store, rustix::fs::Access::WRITE_OK).is_ok()
            || (!self.real_store.exists() && self.root != Path::new("/"));
        if writable && !daemon {
            Install::Direct
        } else {
            Install::Import
        }
    }

    /// `nix-store`, pointed at this store.
    fn nix_store(&self) -> Command {
        let mut cmd = Command::new("nix-store");
        if self.root != Path::new("/") {
            cmd.arg("--store").arg(&self.root);
        }
        cmd
    }

    pub fn target(&self, path: &StorePath) -> PathBuf {
        self.real_store.join(path.to_basename())
    }

    /// Registers restored paths (references first or not: one transaction) with
    /// `nix-store --load-db`, which takes the hashes as given and does not walk the trees
    /// again: they were checked while restoring, with the metadata Nix gives store paths.
    pub fn register(&self, infos: &[&PathInfo], sync: bool) -> Result<(), CacheError> {
        if infos.is_empty() {
            return Ok(());
        }
        let mut text = String::new();
        for info in infos {
            let NixHash::Sha256(hash) = &info.nar_hash else {
                return Err(CacheError::Other(format!(
                    "{}: NarHash is not sha256",
                    self.store_dir.render_path(&info.path)
                )));
            };
            flywheel_nix::store_db::push_load_db_entry(
                &mut text,
                &self.store_dir,
                &info.path,
                hash,
                info.nar_size,
                info.deriver.as_ref(),
                info.references.iter(),
            );
        }
        // The restored files reach the disk before Nix records them valid: after a power cut, a
        // registered path is whole (Nix itself does not sync store files).
        if sync {
            let dir = File::open(&self.real_store)
                .map_err(|e| CacheError::Io { path: self.real_store.clone(), source: e })?;
            rustix::fs::syncfs(&dir).map_err(|e| CacheError::Io { path: self.real_store.clone(), source: e.into() })?;
        }
        self.run_with_input(self.nix_store().arg("--load-db"), |stdin| stdin.write_all(text.as_bytes()))
    }

    /// Imports paths through `nix-store --import`: `infos` must come references first; `nar`
    /// opens each one's verified NAR.
    pub fn import(
        &self,
        infos: &[&PathInfo],
        mut nar: impl FnMut(&PathInfo) -> io::Result<File>,
    ) -> Result<(), CacheError> {
        self.run_with_input(self.nix_store().arg("--import"), |stdin| {
            for info in infos {
                write_u64(stdin, 1)?;
                io::copy(&mut nar(info)?, stdin)?;
                write_u64(stdin, EXPORT_MAGIC)?;
                write_string(stdin, self.store_dir.render_path(&info.path).as_bytes())?;
                write_u64(stdin, info.references.len() as u64)?;
                for r in &info.references {
                    write_string(stdin, self.store_dir.render_path(r).as_bytes())?;
                }
                let deriver = info.deriver.as_ref().map(|d| self.store_dir.render_path(d)).unwrap_or_default();
                write_string(stdin, deriver.as_bytes())?;
                // No legacy signature.
                write_u64(stdin, 0)?;
            }
            write_u64(stdin, 0)
        })
    }

    fn run_with_input(
        &self,
        cmd: &mut Command,
        feed: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), CacheError> {
        let shown = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| CacheError::Other(format!("running nix-store (is Nix installed?): {e}")))?;
        let fed = match child.stdin.take() {
            Some(stdin) => {
                let mut stdin = io::BufWriter::with_capacity(1 << 20, stdin);
                feed(&mut stdin).and_then(|()| stdin.flush())
            }
            None => Err(io::Error::other("no stdin")),
        };
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = child.wait().map_err(|e| CacheError::Other(format!("{shown}: {e}")))?;
        if !status.success() {
            let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            return Err(CacheError::Other(format!("{shown} failed ({status}): {last}")));
        }
        fed.map_err(|e| CacheError::Other(format!("{shown}: writing its input: {e}")))
    }
}

const EXPORT_MAGIC: u64 = 0x4558_494e;

fn write_u64(w: &mut dyn Write, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

/// Nix's lock on a store path (`<path>.lock`, flock), held while the path is written and
/// registered, so a Nix adding the same path at the same time waits, then finds it valid.
pub struct PathLock {
    file: File,
    path: PathBuf,
}

impl PathLock {
    pub fn acquire(target: &Path) -> io::Result<PathLock> {
        let mut name = target.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        loop {
            let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
            // As Nix: a holder that finished writes a byte to the file before unlinking it; such
            // a file is stale, and the lock must be taken on a new one.
            if file.metadata()?.len() == 0 {
                return Ok(PathLock { file, path });
            }
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.write_all(b"d");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_lock_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        let lock = PathLock::acquire(&target).unwrap();
        assert!(dir.path().join("x.lock").exists());
        drop(lock);
        assert!(!dir.path().join("x.lock").exists());
        let _again = PathLock::acquire(&target).unwrap();
    }
}
