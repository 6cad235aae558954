//! A binary cache in a directory, laid out as Nix's `file://` store reads it:
//! `nix-cache-info`, `<hashpart>.narinfo`, `nar/<filehash>.nar[.zst]`.
//!
//! Every file is written under a temporary name, synced, and renamed into place, so a reader
//! (or a crash) never sees half a file; a narinfo is written only after its NAR.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flywheel_nix::nar::{Digested, HashingWriter};
use flywheel_nix::narinfo::NarInfo;
use flywheel_nix::{StoreDir, StorePath};

use crate::compression::Compression;
use crate::CacheError;

pub struct FileCache {
    root: PathBuf,
    store_dir: StoreDir,
}

impl FileCache {
    /// Opens the cache at `root`, creating it (with its `nix-cache-info`) if needed. An existing
    /// cache must be for the same store directory.
    pub fn open_or_create(root: &Path, store_dir: StoreDir) -> Result<Self, CacheError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        fs::create_dir_all(root.join("nar")).map_err(io_err(root))?;
        let info_path = root.join("nix-cache-info");
        match fs::read_to_string(&info_path) {
            Ok(text) => {
                let dir = text.lines().find_map(|l| l.strip_prefix("StoreDir:")).map(str::trim);
                if let Some(dir) = dir {
                    if dir != store_dir.as_str() {
                        return Err(CacheError::StoreDirMismatch {
                            cache: dir.to_string(),
                            ours: store_dir.as_str().to_string(),
                        });
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let text = format!("StoreDir: {}\nWantMassQuery: 1\n", store_dir.as_str());
                write_atomic(&info_path, text.as_bytes()).map_err(io_err(&info_path))?;
            }
            Err(e) => return Err(CacheError::Io { path: info_path, source: e }),
        }
        Ok(Self { root: root.to_path_buf(), store_dir })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn narinfo_path(&self, path: &StorePath) -> PathBuf {
        let basename = path.to_basename();
        let hash_part = &basename[..32];
        self.root.join(format!("{hash_part}.narinfo"))
    }

    pub fn has_narinfo(&self, path: &StorePath) -> bool {
        self.narinfo_path(path).is_file()
    }

    /// Streams a NAR into the cache: `write` gets the compressor's input and may refuse the NAR
    /// (an error) before it is renamed into place. Returns the URL and FileHash/FileSize.
    pub fn put_nar(
        &self,
        compression: Compression,
        write: impl FnOnce(&mut dyn Write) -> Result<(), CacheError>,
    ) -> Result<(String, Digested), CacheError> {
        let nar_dir = self.root.join("nar");
        let io_err = |source| CacheError::Io { path: nar_dir.clone(), source };
        // Removed on drop: an error or a panic below leaves no partial NAR.
        let temp = temp_file(&nar_dir).map_err(io_err)?;
        let mut enc = compression.encoder(HashingWriter::new(temp)).map_err(io_err)?;
        write(&mut enc)?;
        let (temp, digest) = enc.finish().map_err(io_err)?.finish();
        temp.as_file().sync_data().map_err(io_err)?;
        let url = format!("nar/{}.nar{}", digest.nix32_digest(), compression.extension());
        let dest = self.root.join(&url);
        temp.persist(&dest).map_err(|e| CacheError::Io { path: dest, source: e.error })?;
        Ok((url, digest))
    }

    pub fn put_narinfo(&self, info: &NarInfo) -> Result<(), CacheError> {
        let path = self.narinfo_path(info.store_path());
        write_atomic(&path, &info.to_canonical_bytes()).map_err(|source| CacheError::Io { path, source })
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }
}

/// A temporary file beside where it will be renamed to (so the rename stays on one filesystem),
/// readable by all like any cache file (a web server or another user serves the directory).
fn temp_file(dir: &Path) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".flywheel-")
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temp = temp_file(path.parent().unwrap_or(Path::new(".")))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_data()?;
    temp.persist(path).map(drop).map_err(|e| e.error)
}
