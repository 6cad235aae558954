//! The embedded server's data directory (`--data DIR`, default `./flywheel-cache`): the index
//! and the NAR storage, and the administrative operations on them (create a cache, show its
//! key, make a token).
//!
//! ```text
//! DIR/index.sqlite   the index (SQLite, WAL; mode 0600: it holds the signing keys)
//! DIR/nar/           NARs, stored once by NarHash
//! DIR/tmp/           uploads being received and verified
//! DIR/nar.lock       flock: uploads (shared) against GC unlinking NARs (exclusive)
//! DIR/gc.lock        flock: one garbage collection at a time
//! ```

use std::path::{Path, PathBuf};

use flywheel_nix::keys::SecretKey;
use serde::Serialize;

use crate::index::sqlite::SqliteIndex;
use crate::index::{CacheRecord, Index, IndexError, Scope, TokenRecord, Visibility};
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
    index: SqliteIndex,
}

impl DataDir {
    pub fn open_or_create(root: &Path) -> Result<Self, DataError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataError::Io { path, source }
        };
        for dir in [root.to_path_buf(), root.join("nar"), root.join("tmp")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let index = SqliteIndex::open(&root.join(INDEX_FILE))?;
        // The lock files exist from the start, so taking a lock (a GC dry run) changes nothing.
        let locks = crate::locks::DataLocks::new(root);
        locks.create().map_err(io(root))?;
        Ok(DataDir { root: root.to_path_buf(), index })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> &dyn Index {
        &self.index
    }

    pub fn storage(&self) -> crate::storage::dir::DirStorage {
        crate::storage::dir::DirStorage::new(&self.root.join("nar"))
    }

    /// Removes what unfinished uploads left in `tmp/` (a crash, a kill): nothing there is ever
    /// visible, and only a running server writes there.
    pub fn clean_tmp(&self) -> Result<usize, DataError> {
        let tmp = self.root.join("tmp");
        let io = |source| DataError::Io { path: tmp.clone(), source };
        let mut removed = 0;
        for entry in std::fs::read_dir(&tmp).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.file_type().map_err(io)?.is_file() {
                std::fs::remove_file(entry.path()).map_err(io)?;
                removed += 1;
            }
        }
        Ok(removed)
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
}
