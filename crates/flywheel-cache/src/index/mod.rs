//! The cache server's index: which caches exist (with their signing keys, visibility and
//! priority), who may use them (tokens, stored hashed), and, as the server fills it, which
//! store paths each cache holds with their references, sizes, hashes and access times.
//!
//! The index sits behind [`Index`] because a later backend (PostgreSQL, for several servers)
//! replaces the embedded SQLite one ([`sqlite::SqliteIndex`]). The trait is synchronous: the
//! server calls it from `spawn_blocking`, and a blocking PostgreSQL client fits it as well.

pub mod history;
pub mod postgres;
mod postgres_history;
mod postgres_retention;
pub mod retention;
pub mod sqlite;
mod sqlite_history;
mod sqlite_retention;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index database: {0}")]
    Db(String),
    #[error("cache {0:?} already exists")]
    CacheExists(String),
    #[error("no cache named {0:?}")]
    NoSuchCache(String),
    #[error("{path} refers to paths this cache does not hold (upload them first): {}", missing.join(" "))]
    MissingReferences { path: String, missing: Vec<String> },
    #[error("the NAR of {0} is no longer on the server (collected, or its upload expired): upload it again")]
    NarGone(String),
    #[error("pin name {0:?}: expected 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'")]
    BadPinName(String),
    #[error("{path} is not in cache {cache:?}: push it before pinning it")]
    NotInCache { cache: String, path: String },
    #[error(
        "the server keeps canary runs for at most {0} lanes (max-lanes): publish to one of those, or raise the limit"
    )]
    TooManyLanes(usize),
    #[error("the index was written by a newer flywheel (schema {found}; this one knows up to {known})")]
    NewerSchema { found: i64, known: i64 },
}

/// Who may read a cache without a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may read (narinfos, NARs, listings).
    Public,
    /// Reads need a token with the read scope.
    Private,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
        }
    }
}

impl FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "public" => Ok(Visibility::Public),
            "private" => Ok(Visibility::Private),
            _ => Err(format!("unknown visibility {s:?} (public or private)")),
        }
    }
}

/// What a token allows on its cache: read, write and admin each include the ones before;
/// canary allows only publishing canary runs (to the server, whatever the cache), which admin
/// also allows. A canary token on a runner thus cannot push or read private caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
    Canary,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Admin, Scope::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Canary => "canary",
        }
    }

    pub fn allows(self, needed: Scope) -> bool {
        let rank = |s: Scope| match s {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 3,
            Scope::Canary => 0,
        };
        match (self, needed) {
            (Scope::Canary, needed) => needed == Scope::Canary,
            (have, Scope::Canary) => have == Scope::Admin,
            (have, needed) => rank(have) >= rank(needed),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            "canary" => Ok(Scope::Canary),
            _ => Err(format!("unknown scope {s:?} (read, write, admin or canary)")),
        }
    }
}

/// A cache as the index holds it, signing key included.
#[derive(Clone, Debug)]
pub struct CacheRecord {
    pub name: String,
    pub visibility: Visibility,
    /// Nix's `Priority` in nix-cache-info: lower is tried first (cache.nixos.org is 40).
    pub priority: u32,
    /// `name:base64(seed ‖ public)`, Nix's secret key format.
    pub secret_key: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A token as the index holds it: only the SHA-256 of the token is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    pub hash: [u8; 32],
    pub cache: String,
    pub scope: Scope,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub description: Option<String>,
}

/// A stored NAR: identified by its NarHash, kept as one zstd file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarRecord {
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    pub file_hash: [u8; 32],
    pub file_size: u64,
    /// `zstd` (the stored form) for every NAR the server writes.
    pub compression: String,
}

/// A store path as a cache serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRecord {
    /// The full store path.
    pub store_path: String,
    pub nar: NarRecord,
    /// Full store paths, sorted.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// Signatures the uploader sent (`name:base64`); the cache adds its own when serving.
    pub sigs: Vec<String>,
}

/// A small file kept in the index: a `<hash>.ls` listing or a `log/<drv>` build log, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFile {
    pub body: Vec<u8>,
    pub content_type: String,
    /// The `Content-Encoding` it was sent with (Nix's `ls-compression`, `log-compression`).
    pub content_encoding: Option<String>,
}

/// Paths GC removed from caches since a position in its log.
#[derive(Clone, Debug, Default)]
pub struct Removals {
    /// The log position to ask from next time.
    pub last: i64,
    /// (cache, hash part), in order.
    pub paths: Vec<(String, String)>,
    /// False when the log no longer reaches back that far (or the answer was cut short): the
    /// server must drop everything it keeps.
    pub complete: bool,
}

/// What adding a path did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// The path is new to the cache.
    New,
    /// The cache already held it (its first upload stays).
    Present,
    /// The cache held it adopted from another cache (before schema 6); its own upload now
    /// replaces that.
    Replaced,
}

/// A narinfo read (GET or HEAD) that counts as a use of the cache's path, for retention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub cache: String,
    pub hash_part: String,
    /// Unix seconds.
    pub at: i64,
}

pub use history::History;
pub use retention::Retention;

/// Locks every server and `flywheel cache gc` working on the same index share, across
/// processes and machines: flock(2) beside a SQLite index, advisory locks in PostgreSQL. Each
/// is released when its holder dies (kill -9), with the process or the database session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexLock {
    /// Held shared while an uploaded NAR is stored and its upload recorded, exclusive while GC
    /// checks that nothing uses a NAR and deletes it: otherwise an upload could find the NAR
    /// stored (and keep it) just before GC deletes it.
    NarShared,
    NarExclusive,
    /// One writer at a time of the stored NAR with this NarHash, so that the bytes kept are
    /// the ones the index records (two servers may receive the same NAR compressed otherwise).
    Store([u8; 32]),
}

/// A lock, held until dropped.
pub struct Held(#[allow(dead_code)] Box<dyn Send>);

impl Held {
    pub fn new(holder: impl Send + 'static) -> Self {
        Held(Box::new(holder))
    }
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Held")
    }
}

pub trait Index: Retention + History + Send + Sync {
    /// Another handle on the same index for work that must not wait behind this one's (a
    /// server's background writes, a collection): a second SQLite connection; the same
    /// PostgreSQL pool.
    fn another(&self) -> Result<Box<dyn Index>, IndexError>;
    /// Waits for `lock` (see [`IndexLock`]).
    fn lock(&self, lock: IndexLock) -> Result<Held, IndexError>;
    /// The right to collect garbage, or `None` while another collection (any process, any
    /// server) holds it.
    fn try_gc_lock(&self) -> Result<Option<Held>, IndexError>;

    // For `flywheel cache migrate`, which copies everything the index holds:
    /// Every token, by cache name.
    fn tokens(&self) -> Result<Vec<TokenRecord>, IndexError>;
    /// Names of the files (`.ls` listings, build logs) a cache holds, sorted.
    fn file_names(&self, cache: &str) -> Result<Vec<String>, IndexError>;
    /// Paths the cache declined because an upstream key signed them: (store path, key name),
    /// sorted.
    fn upstream_paths(&self, cache: &str) -> Result<Vec<(String, String)>, IndexError>;

    fn create_cache(&self, cache: &CacheRecord) -> Result<(), IndexError>;
    fn cache(&self, name: &str) -> Result<Option<CacheRecord>, IndexError>;
    fn caches(&self) -> Result<Vec<CacheRecord>, IndexError>;
    fn add_token(&self, token: &TokenRecord) -> Result<(), IndexError>;
    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, IndexError>;

    /// A NAR received and stored under `url` (the name the client PUT it at), waiting for its
    /// narinfo.
    fn record_upload(&self, cache: &str, url: &str, nar: &NarRecord, now: i64) -> Result<(), IndexError>;
    fn upload(&self, cache: &str, url: &str) -> Result<Option<NarRecord>, IndexError>;
    /// A NAR the index holds (through any cache's path): how it is stored. Only for storage
    /// (which bytes are kept), never as a reason to let a cache serve it.
    fn nar(&self, nar_hash: &[u8; 32]) -> Result<Option<NarRecord>, IndexError>;
    /// Which of `store_paths` the cache does not hold (by whole store path; a path adopted from
    /// another cache before schema 6 counts as not held, so that clients send it again).
    fn missing(&self, cache: &str, store_paths: &[String]) -> Result<Vec<String>, IndexError>;
    /// Makes `path` visible in `cache`, in one transaction: the NAR and the cache's own row of
    /// the path with its references; `upload` (its URL) is then forgotten. The NAR must have
    /// been uploaded to this cache (`upload` names its record) or be used by another path of
    /// this cache: never only because another cache holds it. A path the cache already holds
    /// keeps its first upload; other caches' rows of the same store path are never read.
    fn add_path(&self, cache: &str, path: &PathRecord, upload: Option<&str>, now: i64) -> Result<Added, IndexError>;
    /// Sets a cache's visibility and priority (from the server's config file).
    fn configure_cache(&self, name: &str, visibility: Visibility, priority: u32) -> Result<(), IndexError>;
    /// Records that `cache` declined `store_path` because `key_name`, an upstream key, signed
    /// it: it counts as present for closure checks; `upload` (its NAR's URL) is forgotten.
    fn record_upstream(
        &self,
        cache: &str,
        store_path: &str,
        key_name: &str,
        upload: Option<&str>,
        now: i64,
    ) -> Result<(), IndexError>;
    fn put_file(&self, cache: &str, name: &str, file: &StoredFile, now: i64) -> Result<(), IndexError>;
    fn file(&self, cache: &str, name: &str) -> Result<Option<StoredFile>, IndexError>;
    /// The path with this hash part, if the cache holds it.
    fn path(&self, cache: &str, hash_part: &str) -> Result<Option<PathRecord>, IndexError>;
    /// The NAR with this NarHash, if a path of the cache (its own row) has it, with when it
    /// was stored.
    fn nar_in_cache(&self, cache: &str, nar_hash: &[u8; 32]) -> Result<Option<(NarRecord, i64)>, IndexError>;
    /// What GC removed after log position `after` (`None`: only the current position), so a
    /// server drops exactly those narinfos from memory.
    fn removed_since(&self, after: Option<i64>) -> Result<Removals, IndexError>;
    /// Records accesses (narinfo GETs and HEADs) for retention, in one transaction.
    fn touch(&self, accesses: &[Access]) -> Result<(), IndexError>;

    // For `flywheel cache verify`:
    /// Every stored NAR the index knows.
    fn all_nars(&self) -> Result<Vec<NarRecord>, IndexError>;
    /// NarHashes of uploads still waiting for their narinfo.
    fn pending_uploads(&self) -> Result<Vec<[u8; 32]>, IndexError>;
    /// (cache, path, reference) for every reference a cache's path has that the cache lacks.
    fn broken_references(&self) -> Result<Vec<(String, String, String)>, IndexError>;
    /// (cache, store path) of paths a cache adopted from another before schema 6: their
    /// content is the other cache's upload, not the cache's own (docs/security.md).
    fn adopted_paths(&self) -> Result<Vec<(String, String)>, IndexError>;
    /// Marks a path of the cache as adopted (what `flywheel cache migrate` copies).
    fn mark_adopted(&self, cache: &str, store_path: &str) -> Result<(), IndexError>;
    /// Number of (cache, path) rows (paths summed over caches) and of distinct store paths.
    fn counts(&self) -> Result<(u64, u64), IndexError>;
    /// Bytes of the stored NARs the index knows.
    fn stored_bytes(&self) -> Result<u64, IndexError>;
}

/// A path's signatures as both backends keep them: one column, space-separated. A signature is
/// one token (`server::narinfo::accept` refuses any other), so they read back as they went in.
pub fn sigs_column(sigs: &[String]) -> String {
    sigs.join(" ")
}

/// [`sigs_column`] read back.
pub fn sigs_of_column(column: &str) -> Vec<String> {
    column.split_whitespace().map(str::to_string).collect()
}

/// A cache record for the index tests (both backends).
#[cfg(test)]
pub(crate) fn test_cache(name: &str) -> CacheRecord {
    CacheRecord {
        name: name.into(),
        visibility: Visibility::Public,
        priority: 41,
        secret_key: format!("{name}-1:secret"),
        created_at: 1,
    }
}
