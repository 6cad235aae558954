//! A cache's backends: the index and the NAR storage, and the administrative operations on
//! them (create a cache, show its key, make a token). By default both live in the data
//! directory (`--data DIR`, default `./flywheel-cache`); the config may put the NARs in an
//! S3-compatible bucket and the index in PostgreSQL, and the data directory then holds only
//! the scratch space where uploads are checked.
//!
//! ```text
//! DIR/index.sqlite   the index (SQLite, WAL; mode 0600: it holds the signing keys)
//! DIR/nar/           NARs, stored once by NarHash
//! DIR/tmp/ID/        one server's uploads being received and verified (flock on ID/.lock)
//! DIR/nar.lock       flock: uploads (shared) against GC unlinking NARs (exclusive)
//! DIR/gc.lock        flock: one garbage collection at a time
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flywheel_nix::keys::SecretKey;
use serde::Serialize;

use crate::config::{Config, IndexKind, PostgresConfig, StorageKind};
use crate::index::sqlite::SqliteIndex;
use crate::index::{CacheRecord, Index, IndexError, Scope, TokenRecord, Visibility};
use crate::storage::s3::S3Config;
use crate::storage::NarStorage;
use crate::token;

pub const DEFAULT_DIR: &str = "flywheel-cache";
pub const INDEX_FILE: &str = "index.sqlite";
/// Nix's priority for a cache that should be tried before cache.nixos.org (40).
pub const DEFAULT_PRIORITY: u32 = 30;

/// Names that would collide with the server's own routes.
const RESERVED: &[&str] = &["nix-cache-info", "nar", "log", "api", "metrics", "healthz", "static"];

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cache name {0:?}: {1}")]
    BadName(String, String),
    #[error("signing key: {0}")]
    Key(String),
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Backend(String),
}

/// Which backends a cache uses, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The data directory: the embedded backends' home, and every server's scratch space.
    pub data: PathBuf,
    pub storage: StorageKind,
    pub index: IndexKind,
    pub s3: Option<S3Config>,
    pub postgres: Option<PostgresConfig>,
}

impl Backend {
    /// The embedded default: NARs and SQLite in `data`.
    pub fn dir(data: &Path) -> Self {
        Backend {
            data: data.to_path_buf(),
            storage: StorageKind::Dir,
            index: IndexKind::Sqlite,
            s3: None,
            postgres: None,
        }
    }

    /// The backends a config file names; `data` (the `--data` flag) wins over the file's.
    pub fn from_config(config: &Config, data: Option<&Path>) -> Self {
        let data = data.map(Path::to_path_buf).or_else(|| config.data.clone()).unwrap_or_else(|| DEFAULT_DIR.into());
        Backend {
            data,
            storage: config.storage.unwrap_or_default(),
            index: config.index.unwrap_or_default(),
            s3: config.s3.clone(),
            postgres: config.postgres.clone(),
        }
    }

    /// For messages: `DIR` for the embedded default, else where each part lives (never a
    /// password).
    pub fn describe(&self) -> String {
        let storage = match (&self.storage, &self.s3) {
            (StorageKind::S3, Some(s3)) => {
                format!("s3://{}/{}", s3.bucket, s3.prefix.as_deref().unwrap_or("").trim_matches('/'))
            }
            _ => self.data.join("nar").display().to_string(),
        };
        let index = match self.index {
            IndexKind::Postgres => {
                let url = self.postgres.as_ref().and_then(PostgresConfig::url).unwrap_or_default();
                format!("postgres {}", crate::index::postgres::shown_url(&url))
            }
            IndexKind::Sqlite => self.data.join(INDEX_FILE).display().to_string(),
        };
        if self.storage == StorageKind::Dir && self.index == IndexKind::Sqlite {
            return self.data.display().to_string();
        }
        format!("{storage} + {index}")
    }

    /// Whether there is a cache here at all (for commands that must not create one): the
    /// SQLite file exists; a PostgreSQL index is taken to exist.
    pub fn exists(&self) -> bool {
        self.index == IndexKind::Postgres || self.data.join(INDEX_FILE).is_file()
    }
}

/// A cache name is one URL path segment: `[a-z0-9][a-z0-9_-]*`, at most 63 characters, and
/// not one of the server's routes.
pub fn check_cache_name(name: &str) -> Result<(), DataError> {
    let bad = |why: &str| Err(DataError::BadName(name.to_string(), why.to_string()));
    if name.is_empty() || name.len() > 63 {
        return bad("must be 1 to 63 characters");
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return bad("must start with a lowercase letter or digit");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') {
        return bad("may hold only lowercase letters, digits, - and _");
    }
    if RESERVED.contains(&name) {
        return bad("is one of the server's own routes");
    }
    Ok(())
}

/// What `flywheel cache info` shows.
#[derive(Clone, Debug, Serialize)]
pub struct CacheInfo {
    pub name: String,
    pub public_key: String,
    pub visibility: Visibility,
    pub priority: u32,
    pub created_at: i64,
}

pub struct DataDir {
    root: PathBuf,
    backend: Backend,
    index: Box<dyn Index>,
    storage: Arc<dyn NarStorage>,
}

/// Pool size when the config gives none.
const DEFAULT_POOL: u32 = 16;

impl DataDir {
    /// The embedded default in `root`.
    pub fn open_or_create(root: &Path) -> Result<Self, DataError> {
        Self::open(&Backend::dir(root))
    }

    /// Opens (creating what is missing: folders, the SQLite file, the PostgreSQL schema) the
    /// backends `backend` names.
    pub fn open(backend: &Backend) -> Result<Self, DataError> {
        let root = &backend.data;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        for dir in [root.to_path_buf(), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        // The index first: a missing database URL is reported before the store is asked.
        let index: Box<dyn Index> = match backend.index {
            IndexKind::Sqlite => Box::new(SqliteIndex::open(&root.join(INDEX_FILE))?),
            IndexKind::Postgres => {
                let pg = backend.postgres.clone().unwrap_or_default();
                let url = pg.url().ok_or_else(|| {
                    DataError::Backend(format!(
                        "index = \"postgres\" needs [postgres] url in the config or {}",
                        crate::config::DATABASE_URL_ENV
                    ))
                })?;
                Box::new(crate::index::postgres::PostgresIndex::connect(&url, pg.pool_size.unwrap_or(DEFAULT_POOL))?)
            }
        };
        let storage: Arc<dyn NarStorage> = match backend.storage {
            StorageKind::Dir => {
                let nar = root.join("nar");
                std::fs::create_dir_all(&nar).map_err(io(&nar))?;
                Arc::new(crate::storage::dir::DirStorage::new(&nar))
            }
            StorageKind::S3 => {
                let s3 = backend
                    .s3
                    .as_ref()
                    .ok_or_else(|| DataError::Backend("storage = \"s3\" needs an [s3] table in the config".into()))?;
                Arc::new(crate::storage::s3::S3Storage::connect(s3).map_err(DataError::Backend)?)
            }
        };
        Ok(DataDir { root: root.to_path_buf(), backend: backend.clone(), index, storage })
    }

    /// Another handle on the same backends, whose index work does not wait behind this one's.
    pub fn another(&self) -> Result<Self, DataError> {
        Ok(DataDir {
            root: self.root.clone(),
            backend: self.backend.clone(),
            index: self.index.another()?,
            storage: self.storage.clone(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn index(&self) -> &dyn Index {
        self.index.as_ref()
    }

    pub fn storage(&self) -> Arc<dyn NarStorage> {
        self.storage.clone()
    }

    /// A scratch folder for this process's uploads, `tmp/ID`, held (flock) until dropped.
    /// Folders whose holder is gone (a crash, a kill) are removed first, with loose files an
    /// older flywheel left in `tmp/`: nothing there is ever visible. Servers sharing the data
    /// directory each get their own folder, so none removes another's uploads.
    pub fn scratch(&self) -> Result<(Scratch, usize), DataError> {
        let tmp = self.root.join("tmp");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
            let entry = entry.map_err(io(&tmp))?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io(&path))?;
            if kind.is_file() {
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed += 1;
            } else if kind.is_dir() {
                let Ok(lock) = std::fs::File::open(path.join(".lock")) else { continue };
                if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
                    removed += std::fs::read_dir(&path).map(|d| d.count().saturating_sub(1)).unwrap_or(0);
                    std::fs::remove_dir_all(&path).map_err(io(&path))?;
                }
            }
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| DataError::Backend(format!("randomness: {e}")))?;
        let dir = tmp.join(id.iter().map(|b| format!("{b:02x}")).collect::<String>());
        std::fs::create_dir(&dir).map_err(io(&dir))?;
        let lock = std::fs::File::create(dir.join(".lock")).map_err(io(&dir))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| DataError::Io { path: dir.clone(), source: e.into() })?;
        Ok((Scratch { dir, _lock: lock }, removed))
    }

    /// Creates a cache with a fresh signing key named `key_name` (default `<name>-1`).
    pub fn create_cache(
        &self,
        name: &str,
        visibility: Visibility,
        priority: u32,
        key_name: Option<&str>,
        now: i64,
    ) -> Result<CacheInfo, DataError> {
        check_cache_name(name)?;
        let key_name = key_name.map_or_else(|| format!("{name}-1"), str::to_string);
        let key = SecretKey::generate(&key_name).map_err(|e| DataError::Key(e.to_string()))?;
        let record = CacheRecord {
            name: name.to_string(),
            visibility,
            priority,
            secret_key: key.to_nix_string(),
            created_at: now,
        };
        self.index.create_cache(&record)?;
        info_of(&record)
    }

    pub fn cache_info(&self, name: &str) -> Result<CacheInfo, DataError> {
        let record = self.index.cache(name)?.ok_or_else(|| IndexError::NoSuchCache(name.to_string()))?;
        info_of(&record)
    }

    /// Makes a token for `cache` and returns its text, which is shown once and stored hashed.
    pub fn create_token(
        &self,
        cache: &str,
        scope: Scope,
        expires_at: Option<i64>,
        description: Option<&str>,
        now: i64,
    ) -> Result<String, DataError> {
        let text = token::generate().map_err(DataError::Token)?;
        let record = TokenRecord {
            hash: token::hash(&text),
            cache: cache.to_string(),
            scope,
            created_at: now,
            expires_at,
            description: description.map(str::to_string),
        };
        self.index.add_token(&record)?;
        Ok(text)
    }
}

/// A process's scratch folder (see [`DataDir::scratch`]); removed when dropped.
pub struct Scratch {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn info_of(record: &CacheRecord) -> Result<CacheInfo, DataError> {
    let key =
        SecretKey::parse(&record.secret_key).map_err(|e| DataError::Key(format!("cache {}: {e}", record.name)))?;
    Ok(CacheInfo {
        name: record.name.clone(),
        public_key: key.public().to_string(),
        visibility: record.visibility,
        priority: record.priority,
        created_at: record.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_url_segment_and_not_a_route() {
        for ok in ["main", "pr", "gpu-lane_2", "0cache"] {
            assert!(check_cache_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Main", "-x", "a/b", "..", "a b", "nar", "metrics", &"x".repeat(64)] {
            assert!(check_cache_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_never_reach_messages() {
        let mut b = Backend::dir(Path::new("d"));
        b.index = IndexKind::Postgres;
        b.postgres = Some(PostgresConfig { url: Some("postgresql://fw:s3cret@db:5432/fw".into()), pool_size: None });
        let shown = b.describe();
        assert!(shown.contains("postgresql://fw@db:5432/fw") && !shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_dead_servers_scratch_is_cleared_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open_or_create(dir.path()).unwrap();
        let (live, _) = data.scratch().unwrap();
        std::fs::write(live.path().join("upload-1"), b"half").unwrap();
        let dead = dir.path().join("tmp/deadbeef");
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(".lock"), b"").unwrap();
        std::fs::write(dead.join("upload-2"), b"half").unwrap();
        std::fs::write(dir.path().join("tmp/loose"), b"old").unwrap();
        let (other, removed) = data.scratch().unwrap();
        assert_eq!(removed, 2);
        assert!(!dead.exists() && !dir.path().join("tmp/loose").exists());
        assert!(live.path().join("upload-1").is_file(), "a running server's upload is kept");
        let kept = live.path().to_path_buf();
        drop(live);
        assert!(!kept.exists());
        assert!(other.path().is_dir());
    }
}
