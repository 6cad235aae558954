//! The embedded index: one SQLite database in WAL mode, so readers never wait for the writer.
//!
//! The schema is created and upgraded by the numbered migrations below, recorded in
//! `PRAGMA user_version`; an index from a newer flywheel is refused rather than misread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{
    Access, Added, CacheRecord, Index, IndexError, NarRecord, PathRecord, Removals, Scope, StoredFile, TokenRecord,
    Visibility,
};

/// The migrations, in order; migration N brings the schema to version N+1.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: caches and tokens, and the tables the server fills: NARs stored once by their NarHash,
    // store paths (global) with their references and signatures, which caches hold which
    // paths, and NARs uploaded (verified, stored) whose narinfo has not come yet.
    "
    CREATE TABLE caches (
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        visibility  TEXT NOT NULL CHECK (visibility IN ('public', 'private')),
        priority    INTEGER NOT NULL,
        secret_key  TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE tokens (
        hash        BLOB PRIMARY KEY,
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER,
        description TEXT
    );
    CREATE TABLE nars (
        nar_hash    BLOB PRIMARY KEY,
        nar_size    INTEGER NOT NULL,
        file_hash   BLOB NOT NULL,
        file_size   INTEGER NOT NULL,
        compression TEXT NOT NULL,
        stored_at   INTEGER NOT NULL
    );
    CREATE TABLE paths (
        id          INTEGER PRIMARY KEY,
        hash_part   TEXT NOT NULL UNIQUE,
        store_path  TEXT NOT NULL,
        nar_hash    BLOB NOT NULL REFERENCES nars(nar_hash),
        deriver     TEXT,
        ca          TEXT,
        sigs        TEXT NOT NULL,
        uploaded_at INTEGER NOT NULL,
        last_access INTEGER NOT NULL
    );
    CREATE INDEX paths_nar ON paths(nar_hash);
    CREATE INDEX paths_last_access ON paths(last_access);
    CREATE TABLE refs (
        path        INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
        reference   TEXT NOT NULL,
        PRIMARY KEY (path, reference)
    ) WITHOUT ROWID;
    CREATE INDEX refs_reference ON refs(reference);
    CREATE TABLE members (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        path        INTEGER NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
        added_at    INTEGER NOT NULL,
        PRIMARY KEY (cache, path)
    ) WITHOUT ROWID;
    CREATE INDEX members_path ON members(path);
    CREATE TABLE uploads (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        url         TEXT NOT NULL,
        nar_hash    BLOB NOT NULL,
        nar_size    INTEGER NOT NULL,
        file_hash   BLOB NOT NULL,
        file_size   INTEGER NOT NULL,
        compression TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (cache, url)
    ) WITHOUT ROWID;
    ",
    // 2: paths a cache declined because an upstream cache (cache.nixos.org) signed them: they
    // count as present for the closure checks, and Nix fetches them from upstream. And the
    // small files Nix uploads beside NARs: `<hash>.ls` listings and `log/<drv>` build logs.
    "
    CREATE TABLE upstream (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        hash_part   TEXT NOT NULL,
        store_path  TEXT NOT NULL,
        key_name    TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (cache, hash_part)
    ) WITHOUT ROWID;
    CREATE TABLE files (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        body        BLOB NOT NULL,
        content_type TEXT NOT NULL,
        content_encoding TEXT,
        created_at  INTEGER NOT NULL,
        PRIMARY KEY (cache, name)
    ) WITHOUT ROWID;
    ",
    // 3: retention. Named pins with their revisions (each a store path whose closure GC
    // keeps); NARs whose last path is gone, waiting to be unlinked once servers have dropped
    // their narinfos; counters the server adds to (narinfo hits and misses, bytes served by NAR
    // age) for `flywheel cache stats`. `dead_nars.since` is in milliseconds.
    "
    CREATE TABLE pins (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        name        TEXT NOT NULL,
        keep_revisions INTEGER,
        keep_days   INTEGER,
        PRIMARY KEY (cache, name)
    ) WITHOUT ROWID;
    CREATE TABLE pin_revisions (
        cache       INTEGER NOT NULL,
        name        TEXT NOT NULL,
        revision    INTEGER NOT NULL,
        store_path  TEXT NOT NULL,
        pinned_at   INTEGER NOT NULL,
        PRIMARY KEY (cache, name, revision),
        FOREIGN KEY (cache, name) REFERENCES pins(cache, name) ON DELETE CASCADE
    ) WITHOUT ROWID;
    CREATE INDEX pin_revisions_path ON pin_revisions(cache, store_path);
    CREATE TABLE dead_nars (
        nar_hash    BLOB PRIMARY KEY,
        since       INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX uploads_nar ON uploads(nar_hash);
    CREATE INDEX uploads_created ON uploads(created_at);
    CREATE TABLE stats (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        key         TEXT NOT NULL,
        value       INTEGER NOT NULL,
        PRIMARY KEY (cache, key)
    ) WITHOUT ROWID;
    ",
    // 4: what GC removed, in order, so servers drop exactly those narinfos from memory. Its
    // positions never repeat (AUTOINCREMENT), even once old rows are trimmed.
    "
    CREATE TABLE gc_log (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        cache       TEXT NOT NULL,
        hash_part   TEXT NOT NULL,
        at          INTEGER NOT NULL
    );
    ",
    // 5: what the status page shows, kept as things change so that a page view reads a few
    // rows, never every path.
    //
    // Tokens may have the canary scope (a runner publishing canary runs, nothing else). SQLite
    // cannot change a CHECK: the table is made again (nothing refers to it).
    //
    // Each cache's paths and the bytes of their stored NARs (what `usage_by_access` sums),
    // counted from the memberships there are, then kept: a trigger adds each new membership;
    // GC's removal (`gc_remove`, the only place memberships go) subtracts what it removed in the
    // same transaction. A trigger per removed membership would do the same at 45 µs a path,
    // half again GC's time at 100k paths (docs/benchmarks.md).
    //
    // The counters the status page draws, by the hour (`add_stats` adds to them as it adds to
    // `stats`); the summaries of the last collections; and the canary runs the runners publish,
    // found by lane and age, each kept whole as published.
    "
    CREATE TABLE tokens_5 (
        hash        BLOB PRIMARY KEY,
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin', 'canary')),
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER,
        description TEXT
    );
    INSERT INTO tokens_5 (hash, cache, scope, created_at, expires_at, description)
        SELECT hash, cache, scope, created_at, expires_at, description FROM tokens;
    DROP TABLE tokens;
    ALTER TABLE tokens_5 RENAME TO tokens;

    CREATE TABLE cache_totals (
        cache       INTEGER PRIMARY KEY REFERENCES caches(id) ON DELETE CASCADE,
        paths       INTEGER NOT NULL,
        bytes       INTEGER NOT NULL
    );
    INSERT INTO cache_totals (cache, paths, bytes)
        SELECT m.cache, count(*), sum(n.file_size)
        FROM members m JOIN paths p ON p.id = m.path JOIN nars n ON n.nar_hash = p.nar_hash
        GROUP BY m.cache;
    CREATE TRIGGER members_counted AFTER INSERT ON members BEGIN
        INSERT INTO cache_totals (cache, paths, bytes)
            SELECT NEW.cache, 1, n.file_size FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
            WHERE p.id = NEW.path
        ON CONFLICT (cache) DO UPDATE SET paths = paths + 1, bytes = bytes + excluded.bytes;
    END;

    CREATE TABLE hourly_stats (
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        hour        INTEGER NOT NULL,
        key         TEXT NOT NULL,
        value       INTEGER NOT NULL,
        PRIMARY KEY (cache, hour, key)
    ) WITHOUT ROWID;
    CREATE INDEX hourly_stats_hour ON hourly_stats(hour);
    CREATE TABLE gc_summaries (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        summary     TEXT NOT NULL
    );
    CREATE INDEX gc_summaries_at ON gc_summaries(at, id);
    CREATE TABLE canary_runs (
        lane        TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        started_at  INTEGER NOT NULL,   -- unix milliseconds
        status      TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        record      TEXT NOT NULL,
        PRIMARY KEY (lane, run_id)
    ) WITHOUT ROWID;
    CREATE INDEX canary_runs_started ON canary_runs(lane, started_at);
    ",
    // 6: each cache's paths are its own (docs/security.md). Until now a store path had one row
    // for the whole server and caches held it through `members`: a cache that pushed a path
    // another cache already held got the other's NarHash, references and signatures, and
    // served them signed with its own key. Now a row is (cache, store path) with what was
    // uploaded to that cache; NARs are still stored once by NarHash, but a cache's row may
    // name a NAR only when it was uploaded to that cache (`add_path_tx` checks it).
    //
    // Every membership becomes a row of its own with its path's data. A membership that joined
    // a path another cache held first got that cache's content, not its own upload: it is kept
    // (nothing a client sees changes) but marked `adopted`, `flywheel cache verify` lists it,
    // and the cache's next upload of the path replaces it. The totals count rows from here on.
    "
    CREATE TABLE paths_6 (
        id          INTEGER PRIMARY KEY,
        cache       INTEGER NOT NULL REFERENCES caches(id) ON DELETE CASCADE,
        hash_part   TEXT NOT NULL,
        store_path  TEXT NOT NULL,
        nar_hash    BLOB NOT NULL REFERENCES nars(nar_hash),
        deriver     TEXT,
        ca          TEXT,
        sigs        TEXT NOT NULL,
        added_at    INTEGER NOT NULL,
        last_access INTEGER NOT NULL,
        adopted     INTEGER NOT NULL DEFAULT 0 CHECK (adopted IN (0, 1)),
        UNIQUE (cache, hash_part)
    );
    INSERT INTO paths_6 (cache, hash_part, store_path, nar_hash, deriver, ca, sigs, added_at, last_access, adopted)
        SELECT m.cache, p.hash_part, p.store_path, p.nar_hash, p.deriver, p.ca, p.sigs, m.added_at, p.last_access,
               EXISTS (SELECT 1 FROM members o WHERE o.path = m.path
                       AND (o.added_at < m.added_at OR (o.added_at = m.added_at AND o.cache < m.cache)))
        FROM members m JOIN paths p ON p.id = m.path
        ORDER BY m.cache, p.hash_part;
    CREATE TABLE refs_6 (
        path        INTEGER NOT NULL REFERENCES paths_6(id) ON DELETE CASCADE,
        reference   TEXT NOT NULL,
        PRIMARY KEY (path, reference)
    ) WITHOUT ROWID;
    INSERT INTO refs_6 (path, reference)
        SELECT n.id, r.reference FROM paths_6 n JOIN paths p ON p.hash_part = n.hash_part JOIN refs r ON r.path = p.id;
    DROP TRIGGER members_counted;
    DROP TABLE members;
    DROP TABLE refs;
    DROP TABLE paths;
    ALTER TABLE paths_6 RENAME TO paths;
    ALTER TABLE refs_6 RENAME TO refs;
    CREATE INDEX paths_nar ON paths(nar_hash, cache);
    CREATE INDEX paths_last_access ON paths(last_access);
    CREATE INDEX refs_reference ON refs(reference);
    CREATE TRIGGER paths_counted AFTER INSERT ON paths BEGIN
        INSERT INTO cache_totals (cache, paths, bytes)
            SELECT NEW.cache, 1, n.file_size FROM nars n WHERE n.nar_hash = NEW.nar_hash
        ON CONFLICT (cache) DO UPDATE SET paths = paths + 1, bytes = bytes + excluded.bytes;
    END;
    ",
    // 7: a cache's paths in id (upload) order. GC reads a cache's paths and their references
    // in this order and removes them in it, so each batch touches neighbouring pages of
    // `paths` and `refs`; in hash order (the unique index) every batch dirtied pages all over
    // both tables and a GC of 100k paths took half again as long.
    "
    CREATE INDEX paths_cache ON paths(cache);
    ",
];

pub struct SqliteIndex {
    pub(super) conn: Mutex<Connection>,
    path: PathBuf,
    locks: crate::locks::DataLocks,
}

impl SqliteIndex {
    /// Opens (creating and migrating as needed) the index at `path`. A new database file is
    /// made readable by its owner only: it holds the caches' signing keys.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let existed = path.exists();
        let conn = Connection::open(path).map_err(db)?;
        if !existed {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| IndexError::Db(format!("{}: {e}", path.display())))?;
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(db)?;
        // The statements GC, the server and the push run again and again stay prepared.
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&conn)?;
        // The lock files live beside the index: every process that opens it shares them.
        let root = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let locks = crate::locks::DataLocks::new(root);
        locks.create().map_err(|e| IndexError::Db(format!("{}: lock files: {e}", root.display())))?;
        Ok(SqliteIndex { conn: Mutex::new(conn), path: path.to_path_buf(), locks })
    }

    pub(super) fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, IndexError>) -> Result<T, IndexError> {
        let conn = self.conn.lock().map_err(|_| IndexError::Db("a previous operation panicked".into()))?;
        f(&conn)
    }
}

/// A write transaction: it takes the write lock at BEGIN, waiting up to the busy timeout, so
/// it never fails midway because another connection (a GC, a pin) wrote after it first read.
pub(super) fn write_tx(conn: &Connection) -> Result<rusqlite::Transaction<'_>, IndexError> {
    rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate).map_err(db)
}

pub(super) fn db(e: rusqlite::Error) -> IndexError {
    IndexError::Db(e.to_string())
}

fn migrate(conn: &Connection) -> Result<(), IndexError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(IndexError::NewerSchema { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = write_tx(conn)?;
        tx.execute_batch(sql).map_err(db)?;
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

fn cache_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, String, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

fn to_cache(
    (name, visibility, priority, secret_key, created_at): (String, String, i64, String, i64),
) -> Result<CacheRecord, IndexError> {
    Ok(CacheRecord {
        name,
        visibility: visibility.parse().map_err(IndexError::Db)?,
        priority: u32::try_from(priority).map_err(|_| IndexError::Db(format!("priority {priority} out of range")))?,
        secret_key,
        created_at,
    })
}

const CACHE_COLUMNS: &str = "name, visibility, priority, secret_key, created_at";

pub(super) fn cache_id(conn: &Connection, name: &str) -> Result<i64, IndexError> {
    conn.query_row("SELECT id FROM caches WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(db)?
        .ok_or_else(|| IndexError::NoSuchCache(name.to_string()))
}

pub(super) fn hash32(v: Vec<u8>) -> Result<[u8; 32], IndexError> {
    v.try_into().map_err(|v: Vec<u8>| IndexError::Db(format!("a stored hash has {} bytes, not 32", v.len())))
}

pub(super) fn size(v: i64) -> Result<u64, IndexError> {
    u64::try_from(v).map_err(|_| IndexError::Db(format!("a stored size is negative: {v}")))
}

pub(super) fn i64_of(v: u64) -> Result<i64, IndexError> {
    i64::try_from(v).map_err(|_| IndexError::Db(format!("size {v} does not fit the index")))
}

type NarRow = (Vec<u8>, i64, Vec<u8>, i64, String);

fn nar_row(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<NarRow> {
    Ok((r.get(at)?, r.get(at + 1)?, r.get(at + 2)?, r.get(at + 3)?, r.get(at + 4)?))
}

fn to_nar((nar_hash, nar_size, file_hash, file_size, compression): NarRow) -> Result<NarRecord, IndexError> {
    Ok(NarRecord {
        nar_hash: hash32(nar_hash)?,
        nar_size: size(nar_size)?,
        file_hash: hash32(file_hash)?,
        file_size: size(file_size)?,
        compression,
    })
}

/// The hash part of a full store path: the 32 characters after the store directory.
pub fn hash_part_of(store_path: &str) -> Result<&str, IndexError> {
    let base = store_path.rsplit('/').next().unwrap_or(store_path);
    base.get(..32)
        .filter(|_| base.as_bytes().get(32) == Some(&b'-'))
        .ok_or_else(|| IndexError::Db(format!("{store_path:?} is not a store path")))
}

impl Index for SqliteIndex {
    fn another(&self) -> Result<Box<dyn Index>, IndexError> {
        Ok(Box::new(SqliteIndex::open(&self.path)?))
    }

    fn lock(&self, lock: super::IndexLock) -> Result<super::Held, IndexError> {
        let held = match lock {
            super::IndexLock::NarShared => self.locks.nar_shared(),
            super::IndexLock::NarExclusive => self.locks.nar_exclusive(),
            super::IndexLock::Store(h) => self.locks.store_exclusive(&h),
        };
        held.map(super::Held::new).map_err(|e| IndexError::Db(format!("taking a lock: {e}")))
    }

    fn try_gc_lock(&self) -> Result<Option<super::Held>, IndexError> {
        let held = self.locks.try_gc().map_err(|e| IndexError::Db(format!("taking the GC lock: {e}")))?;
        Ok(held.map(super::Held::new))
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT t.hash, c.name, t.scope, t.created_at, t.expires_at, t.description
                     FROM tokens t JOIN caches c ON c.id = t.cache ORDER BY c.name, t.created_at, t.hash",
                )
                .map_err(db)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                    ))
                })
                .map_err(db)?;
            let mut out = Vec::new();
            for row in rows {
                let (hash, cache, scope, created_at, expires_at, description) = row.map_err(db)?;
                out.push(TokenRecord {
                    hash: hash32(hash)?,
                    cache,
                    scope: scope.parse::<Scope>().map_err(IndexError::Db)?,
                    created_at,
                    expires_at,
                    description,
                });
            }
            Ok(out)
        })
    }

    fn file_names(&self, cache: &str) -> Result<Vec<String>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT f.name FROM files f JOIN caches c ON c.id = f.cache WHERE c.name = ?1 ORDER BY f.name")
                .map_err(db)?;
            let names = stmt.query_map([cache], |r| r.get::<_, String>(0)).map_err(db)?;
            names.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn upstream_paths(&self, cache: &str) -> Result<Vec<(String, String)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT u.store_path, u.key_name FROM upstream u JOIN caches c ON c.id = u.cache
                     WHERE c.name = ?1 ORDER BY u.store_path",
                )
                .map_err(db)?;
            let rows = stmt.query_map([cache], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))).map_err(db)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db)
        })
    }

    fn create_cache(&self, c: &CacheRecord) -> Result<(), IndexError> {
        self.with(|conn| {
            let inserted = conn
                .execute(
                    "INSERT INTO caches (name, visibility, priority, secret_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (name) DO NOTHING",
                    params![c.name, c.visibility.as_str(), c.priority, c.secret_key, c.created_at],
                )
                .map_err(db)?;
            if inserted == 0 {
                return Err(IndexError::CacheExists(c.name.clone()));
            }
            Ok(())
        })
    }

    fn cache(&self, name: &str) -> Result<Option<CacheRecord>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(&format!("SELECT {CACHE_COLUMNS} FROM caches WHERE name = ?1"), [name], cache_from_row)
                .optional()
                .map_err(db)?;
            row.map(to_cache).transpose()
        })
    }

    fn caches(&self) -> Result<Vec<CacheRecord>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {CACHE_COLUMNS} FROM caches ORDER BY name")).map_err(db)?;
            let rows = stmt.query_map([], cache_from_row).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(to_cache)).collect()
        })
    }

    fn add_token(&self, t: &TokenRecord) -> Result<(), IndexError> {
        self.with(|conn| {
            let cache: Option<i64> = conn
                .query_row("SELECT id FROM caches WHERE name = ?1", [&t.cache], |r| r.get(0))
                .optional()
                .map_err(db)?;
            let Some(cache) = cache else { return Err(IndexError::NoSuchCache(t.cache.clone())) };
            conn.execute(
                "INSERT INTO tokens (hash, cache, scope, created_at, expires_at, description) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![&t.hash[..], cache, t.scope.as_str(), t.created_at, t.expires_at, t.description],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn record_upload(&self, cache: &str, url: &str, n: &NarRecord, now: i64) -> Result<(), IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            conn.execute(
                "INSERT INTO uploads (cache, url, nar_hash, nar_size, file_hash, file_size, compression, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (cache, url) DO UPDATE SET nar_hash = excluded.nar_hash, nar_size = excluded.nar_size,
                   file_hash = excluded.file_hash, file_size = excluded.file_size, compression = excluded.compression,
                   created_at = excluded.created_at",
                params![
                    id,
                    url,
                    &n.nar_hash[..],
                    i64_of(n.nar_size)?,
                    &n.file_hash[..],
                    i64_of(n.file_size)?,
                    n.compression,
                    now
                ],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn upload(&self, cache: &str, url: &str) -> Result<Option<NarRecord>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT u.nar_hash, u.nar_size, u.file_hash, u.file_size, u.compression
                     FROM uploads u JOIN caches c ON c.id = u.cache WHERE c.name = ?1 AND u.url = ?2",
                    params![cache, url],
                    |r| nar_row(r, 0),
                )
                .optional()
                .map_err(db)?;
            row.map(to_nar).transpose()
        })
    }

    fn nar(&self, nar_hash: &[u8; 32]) -> Result<Option<NarRecord>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT nar_hash, nar_size, file_hash, file_size, compression FROM nars WHERE nar_hash = ?1",
                    [&nar_hash[..]],
                    |r| nar_row(r, 0),
                )
                .optional()
                .map_err(db)?;
            row.map(to_nar).transpose()
        })
    }

    fn missing(&self, cache: &str, store_paths: &[String]) -> Result<Vec<String>, IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            Self::missing_in(conn, id, store_paths, false)
        })
    }

    fn add_path(&self, cache: &str, path: &PathRecord, upload: Option<&str>, now: i64) -> Result<Added, IndexError> {
        self.with(|conn| Self::add_path_tx(conn, cache, path, upload, now))
    }

    fn configure_cache(&self, name: &str, visibility: Visibility, priority: u32) -> Result<(), IndexError> {
        self.with(|conn| {
            let n = conn
                .execute(
                    "UPDATE caches SET visibility = ?2, priority = ?3 WHERE name = ?1",
                    params![name, visibility.as_str(), priority],
                )
                .map_err(db)?;
            if n == 0 {
                return Err(IndexError::NoSuchCache(name.to_string()));
            }
            Ok(())
        })
    }

    fn record_upstream(
        &self,
        cache: &str,
        store_path: &str,
        key_name: &str,
        upload: Option<&str>,
        now: i64,
    ) -> Result<(), IndexError> {
        self.with(|conn| {
            let tx = write_tx(conn)?;
            let id = cache_id(&tx, cache)?;
            tx.execute(
                "INSERT INTO upstream (cache, hash_part, store_path, key_name, recorded_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (cache, hash_part) DO UPDATE SET key_name = excluded.key_name, recorded_at = excluded.recorded_at",
                params![id, hash_part_of(store_path)?, store_path, key_name, now],
            )
            .map_err(db)?;
            if let Some(url) = upload {
                tx.execute("DELETE FROM uploads WHERE cache = ?1 AND url = ?2", params![id, url]).map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    fn put_file(&self, cache: &str, name: &str, file: &StoredFile, now: i64) -> Result<(), IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            conn.execute(
                "INSERT INTO files (cache, name, body, content_type, content_encoding, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (cache, name) DO UPDATE SET body = excluded.body, content_type = excluded.content_type,
                   content_encoding = excluded.content_encoding, created_at = excluded.created_at",
                params![id, name, file.body, file.content_type, file.content_encoding, now],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn file(&self, cache: &str, name: &str) -> Result<Option<StoredFile>, IndexError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT f.body, f.content_type, f.content_encoding FROM files f JOIN caches c ON c.id = f.cache
                 WHERE c.name = ?1 AND f.name = ?2",
                params![cache, name],
                |r| Ok(StoredFile { body: r.get(0)?, content_type: r.get(1)?, content_encoding: r.get(2)? }),
            )
            .optional()
            .map_err(db)
        })
    }

    fn path(&self, cache: &str, hash_part: &str) -> Result<Option<PathRecord>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT p.id, p.store_path, p.deriver, p.ca, p.sigs,
                            n.nar_hash, n.nar_size, n.file_hash, n.file_size, n.compression
                     FROM paths p
                     JOIN caches c ON c.id = p.cache
                     JOIN nars n ON n.nar_hash = p.nar_hash
                     WHERE c.name = ?1 AND p.hash_part = ?2",
                    params![cache, hash_part],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, Option<String>>(3)?,
                            r.get::<_, String>(4)?,
                            nar_row(r, 5)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            let Some((id, store_path, deriver, ca, sigs, nar)) = row else { return Ok(None) };
            let mut stmt =
                conn.prepare_cached("SELECT reference FROM refs WHERE path = ?1 ORDER BY reference").map_err(db)?;
            let references = stmt
                .query_map([id], |r| r.get::<_, String>(0))
                .map_err(db)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db)?;
            Ok(Some(PathRecord {
                store_path,
                nar: to_nar(nar)?,
                references,
                deriver,
                ca,
                sigs: super::sigs_of_column(&sigs),
            }))
        })
    }

    fn removed_since(&self, after: Option<i64>) -> Result<Removals, IndexError> {
        self.with(|conn| {
            let (first, last): (Option<i64>, Option<i64>) = conn
                .prepare_cached("SELECT min(seq), max(seq) FROM gc_log")
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(db)?;
            // An empty log (all trimmed) is still at the position it reached.
            let last = match last {
                Some(l) => l,
                None => conn
                    .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'gc_log'")
                    .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
                    .map_err(db)?
                    .unwrap_or(0),
            };
            let Some(after) = after else { return Ok(Removals { last, paths: Vec::new(), complete: true }) };
            // Rows the log no longer holds were removed too: then nobody knows which.
            let complete = after >= last || first.is_some_and(|f| f <= after + 1);
            let mut stmt = conn
                .prepare_cached("SELECT cache, hash_part FROM gc_log WHERE seq > ?1 ORDER BY seq LIMIT 100000")
                .map_err(db)?;
            let paths = stmt
                .query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db)?
                .collect::<Result<Vec<(String, String)>, _>>()
                .map_err(db)?;
            let complete = complete && paths.len() < 100_000;
            let last = if complete { last } else { last.max(after) };
            Ok(Removals { last, paths, complete })
        })
    }

    fn nar_in_cache(&self, cache: &str, nar_hash: &[u8; 32]) -> Result<Option<(NarRecord, i64)>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT n.nar_hash, n.nar_size, n.file_hash, n.file_size, n.compression, n.stored_at
                     FROM nars n
                     WHERE n.nar_hash = ?2 AND EXISTS (
                       SELECT 1 FROM paths p JOIN caches c ON c.id = p.cache
                       WHERE p.nar_hash = n.nar_hash AND c.name = ?1)",
                    params![cache, &nar_hash[..]],
                    |r| Ok((nar_row(r, 0)?, r.get::<_, i64>(5)?)),
                )
                .optional()
                .map_err(db)?;
            row.map(|(n, at)| Ok((to_nar(n)?, at))).transpose()
        })
    }

    fn touch(&self, accesses: &[Access]) -> Result<(), IndexError> {
        self.with(|conn| {
            let tx = write_tx(conn)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE paths SET last_access = ?3
                         WHERE cache = (SELECT id FROM caches WHERE name = ?1) AND hash_part = ?2 AND last_access < ?3",
                    )
                    .map_err(db)?;
                for a in accesses {
                    stmt.execute(params![a.cache, a.hash_part, a.at]).map_err(db)?;
                }
            }
            tx.commit().map_err(db)
        })
    }

    fn all_nars(&self) -> Result<Vec<NarRecord>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT nar_hash, nar_size, file_hash, file_size, compression FROM nars ORDER BY nar_hash")
                .map_err(db)?;
            let rows = stmt.query_map([], |r| nar_row(r, 0)).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(to_nar)).collect()
        })
    }

    fn pending_uploads(&self) -> Result<Vec<[u8; 32]>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT DISTINCT nar_hash FROM uploads").map_err(db)?;
            let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(db)?;
            rows.map(|r| r.map_err(db).and_then(hash32)).collect()
        })
    }

    fn broken_references(&self) -> Result<Vec<(String, String, String)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT c.name, p.store_path, r.reference
                     FROM paths p
                     JOIN caches c ON c.id = p.cache
                     JOIN refs r ON r.path = p.id
                     WHERE r.reference != p.store_path AND NOT EXISTS (
                       SELECT 1 FROM paths p2 WHERE p2.cache = p.cache AND p2.store_path = r.reference)
                     AND NOT EXISTS (
                       SELECT 1 FROM upstream u WHERE u.cache = p.cache AND u.store_path = r.reference)
                     ORDER BY 1, 2, 3",
                )
                .map_err(db)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn adopted_paths(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT c.name, p.store_path FROM paths p JOIN caches c ON c.id = p.cache
                     WHERE p.adopted = 1 ORDER BY 1, 2",
                )
                .map_err(db)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)
        })
    }

    fn mark_adopted(&self, cache: &str, store_path: &str) -> Result<(), IndexError> {
        self.with(|conn| {
            let id = cache_id(conn, cache)?;
            conn.execute(
                "UPDATE paths SET adopted = 1 WHERE cache = ?1 AND hash_part = ?2 AND store_path = ?3",
                params![id, hash_part_of(store_path)?, store_path],
            )
            .map_err(db)?;
            Ok(())
        })
    }

    fn counts(&self) -> Result<(u64, u64), IndexError> {
        self.with(|conn| {
            let held: i64 = conn.query_row("SELECT count(*) FROM paths", [], |r| r.get(0)).map_err(db)?;
            let distinct: i64 =
                conn.query_row("SELECT count(DISTINCT hash_part) FROM paths", [], |r| r.get(0)).map_err(db)?;
            Ok((size(held)?, size(distinct)?))
        })
    }

    fn stored_bytes(&self) -> Result<u64, IndexError> {
        self.with(|conn| {
            let total: i64 =
                conn.query_row("SELECT coalesce(sum(file_size), 0) FROM nars", [], |r| r.get(0)).map_err(db)?;
            size(total)
        })
    }

    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, IndexError> {
        self.with(|conn| {
            let row = conn
                .query_row(
                    "SELECT c.name, t.scope, t.created_at, t.expires_at, t.description
                     FROM tokens t JOIN caches c ON c.id = t.cache WHERE t.hash = ?1",
                    [&hash[..]],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, Option<i64>>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    },
                )
                .optional()
                .map_err(db)?;
            row.map(|(cache, scope, created_at, expires_at, description)| {
                Ok(TokenRecord {
                    hash: *hash,
                    cache,
                    scope: scope.parse::<Scope>().map_err(IndexError::Db)?,
                    created_at,
                    expires_at,
                    description,
                })
            })
            .transpose()
        })
    }
}

impl SqliteIndex {
    /// Which of `store_paths` the cache holds neither as its own path nor as declined
    /// upstream's: the whole store path must match, not only its hash part. With `adopted`
    /// false, an adopted row counts as missing (a client asked what to send sends it, and its
    /// upload replaces the row); closure checks count it as present.
    fn missing_in(
        conn: &Connection,
        cache_id: i64,
        store_paths: &[String],
        adopted: bool,
    ) -> Result<Vec<String>, IndexError> {
        let mut stmt = conn
            .prepare_cached(
                "SELECT 1 FROM paths WHERE cache = ?1 AND hash_part = ?2 AND store_path = ?3 AND adopted <= ?4
                 UNION ALL SELECT 1 FROM upstream WHERE cache = ?1 AND hash_part = ?2 AND store_path = ?3",
            )
            .map_err(db)?;
        let mut out = Vec::new();
        for sp in store_paths {
            if !stmt.exists(params![cache_id, hash_part_of(sp)?, sp, adopted]).map_err(db)? {
                out.push(sp.clone());
            }
        }
        Ok(out)
    }

    fn add_path_tx(
        conn: &Connection,
        cache: &str,
        p: &PathRecord,
        upload: Option<&str>,
        now: i64,
    ) -> Result<Added, IndexError> {
        let tx = write_tx(conn)?;
        let cache_id = cache_id(&tx, cache)?;
        let n = &p.nar;
        // The per-cache rule: the NAR was uploaded to this cache (the upload is still
        // recorded), or a path of this cache already uses it. That another cache holds it is
        // no reason: naming a NarHash proves nothing. Checked in the transaction that adds the
        // path, so a concurrent GC cannot take the NAR away between the check and the insert.
        let uploaded = match upload {
            Some(url) => tx
                .prepare_cached("SELECT 1 FROM uploads WHERE cache = ?1 AND url = ?2 AND nar_hash = ?3")
                .and_then(|mut s| s.exists(params![cache_id, url, &n.nar_hash[..]]))
                .map_err(db)?,
            None => false,
        };
        let own_nar = uploaded
            || tx
                .prepare_cached("SELECT 1 FROM paths WHERE nar_hash = ?1 AND cache = ?2 AND adopted = 0")
                .and_then(|mut s| s.exists(params![&n.nar_hash[..], cache_id]))
                .map_err(db)?;
        if !own_nar {
            return Err(IndexError::NarGone(p.store_path.clone()));
        }
        let others: Vec<String> = p.references.iter().filter(|r| **r != p.store_path).cloned().collect();
        let missing = Self::missing_in(&tx, cache_id, &others, true)?;
        if !missing.is_empty() {
            return Err(IndexError::MissingReferences { path: p.store_path.clone(), missing });
        }
        let hash_part = hash_part_of(&p.store_path)?;
        let existing: Option<(i64, bool, i64)> = tx
            .prepare_cached(
                "SELECT p.id, p.adopted, n.file_size FROM paths p JOIN nars n ON n.nar_hash = p.nar_hash
                 WHERE p.cache = ?1 AND p.hash_part = ?2",
            )
            .and_then(|mut s| s.query_row(params![cache_id, hash_part], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
            .optional()
            .map_err(db)?;
        let added = match existing {
            // The cache's own upload of a path it holds: the first stays, as a store path's
            // contents never change (a rebuild that differs is the same path to Nix).
            Some((_, false, _)) => Added::Present,
            // Adopted from another cache before the per-cache rule: the cache's own upload wins.
            Some((id, true, file_size)) => {
                tx.execute("DELETE FROM paths WHERE id = ?1", [id]).map_err(db)?;
                tx.execute(
                    "UPDATE cache_totals SET paths = paths - 1, bytes = bytes - ?2 WHERE cache = ?1",
                    params![cache_id, file_size],
                )
                .map_err(db)?;
                Added::Replaced
            }
            None => Added::New,
        };
        if added != Added::Present {
            tx.execute(
                "INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (nar_hash) DO NOTHING",
                params![
                    &n.nar_hash[..],
                    i64_of(n.nar_size)?,
                    &n.file_hash[..],
                    i64_of(n.file_size)?,
                    n.compression,
                    now
                ],
            )
            .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO paths (cache, hash_part, store_path, nar_hash, deriver, ca, sigs, added_at, last_access)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    cache_id,
                    hash_part,
                    p.store_path,
                    &n.nar_hash[..],
                    p.deriver,
                    p.ca,
                    super::sigs_column(&p.sigs),
                    now
                ])
            })
            .map_err(db)?;
            let id = tx.last_insert_rowid();
            let mut stmt =
                tx.prepare_cached("INSERT OR IGNORE INTO refs (path, reference) VALUES (?1, ?2)").map_err(db)?;
            for r in &p.references {
                stmt.execute(params![id, r]).map_err(db)?;
            }
        }
        if let Some(url) = upload {
            tx.execute("DELETE FROM uploads WHERE cache = ?1 AND url = ?2", params![cache_id, url]).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{test_cache as cache, History, Retention};

    #[test]
    fn caches_and_tokens_round_trip_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.db");
        {
            let idx = SqliteIndex::open(&path).expect("open");
            idx.create_cache(&cache("main")).expect("create");
            idx.create_cache(&CacheRecord { visibility: Visibility::Private, ..cache("pr") }).expect("create");
            assert!(matches!(idx.create_cache(&cache("main")), Err(IndexError::CacheExists(n)) if n == "main"));
            let t = TokenRecord {
                hash: [7; 32],
                cache: "pr".into(),
                scope: Scope::Write,
                created_at: 5,
                expires_at: Some(99),
                description: Some("ci".into()),
            };
            idx.add_token(&t).expect("token");
            assert!(matches!(
                idx.add_token(&TokenRecord { cache: "nope".into(), ..t.clone() }),
                Err(IndexError::NoSuchCache(_))
            ));
        }
        let idx = SqliteIndex::open(&path).expect("reopen");
        let names: Vec<String> = idx.caches().expect("caches").into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["main", "pr"]);
        assert_eq!(idx.cache("pr").expect("read").map(|c| c.visibility), Some(Visibility::Private));
        assert!(idx.cache("other").expect("read").is_none());
        let t = idx.token(&[7; 32]).expect("read").expect("present");
        assert_eq!((t.cache.as_str(), t.scope, t.expires_at), ("pr", Scope::Write, Some(99)));
        assert!(idx.token(&[8; 32]).expect("read").is_none());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.db");
        drop(SqliteIndex::open(&path).expect("open"));
        Connection::open(&path).expect("open").pragma_update(None, "user_version", 99).expect("bump");
        assert!(matches!(SqliteIndex::open(&path), Err(IndexError::NewerSchema { found: 99, .. })));
    }

    #[test]
    fn the_removal_log_tells_servers_exactly_what_went_or_that_it_cannot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let idx = SqliteIndex::open(&dir.path().join("index.db")).expect("open");
        let log = |n: i64| {
            idx.with(|c| {
                for i in 0..n {
                    c.execute(
                        "INSERT INTO gc_log (cache, hash_part, at) VALUES ('main', ?1, ?2)",
                        params![format!("h{i}"), i],
                    )
                    .map_err(db)?;
                }
                Ok(())
            })
            .expect("insert")
        };
        let start = idx.removed_since(None).expect("read");
        assert_eq!((start.last, start.paths.len()), (0, 0));
        log(3);
        let r = idx.removed_since(Some(start.last)).expect("read");
        assert!(r.complete);
        assert_eq!(r.paths.iter().map(|(_, h)| h.as_str()).collect::<Vec<_>>(), ["h0", "h1", "h2"]);
        // Trimmed past a server's position: it must drop everything.
        idx.trim_gc_log(2).expect("trim");
        assert!(!idx.removed_since(Some(1)).expect("read").complete);
        // Trimmed to nothing: positions still go on from where they were.
        idx.trim_gc_log(100).expect("trim");
        let empty = idx.removed_since(Some(r.last)).expect("read");
        assert!(empty.complete && empty.paths.is_empty());
        assert_eq!(empty.last, r.last);
        log(1);
        let next = idx.removed_since(Some(empty.last)).expect("read");
        assert!(next.complete);
        assert_eq!(next.paths.len(), 1);
        assert!(!idx.removed_since(Some(0)).expect("read").complete, "rows before the trim are gone");
    }

    #[test]
    fn schema_6_gives_each_cache_its_own_paths_and_marks_the_adopted_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("index.db");
        let (a, b) = (format!("/nix/store/{}-a", "a".repeat(32)), format!("/nix/store/{}-b", "b".repeat(32)));
        {
            // As flywheel before migration 6 made it: one row per store path, caches holding
            // them through memberships. main pushed a (t=1) and other joined it (t=5); other
            // pushed b (t=2, referring to a) and main joined it (t=3).
            let mut conn = Connection::open(&file).expect("open");
            conn.pragma_update(None, "foreign_keys", "ON").expect("pragma");
            let tx = conn.transaction().expect("tx");
            for sql in &MIGRATIONS[..5] {
                tx.execute_batch(sql).expect("migrate");
            }
            tx.pragma_update(None, "user_version", 5).expect("version");
            tx.execute_batch(&format!(
                "INSERT INTO caches (id, name, visibility, priority, secret_key, created_at) VALUES
                   (1, 'main', 'public', 40, 'k', 1), (2, 'other', 'public', 41, 'k', 1);
                 INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at) VALUES
                   (zeroblob(32), 1000, zeroblob(32), 100, 'zstd', 1), (randomblob(32), 2000, zeroblob(32), 200, 'zstd', 2);
                 INSERT INTO paths (id, hash_part, store_path, nar_hash, sigs, uploaded_at, last_access) VALUES
                   (1, '{ha}', '{a}', zeroblob(32), 'main-1:x', 1, 7),
                   (2, '{hb}', '{b}', (SELECT nar_hash FROM nars WHERE stored_at = 2), 'other-1:y', 2, 8);
                 INSERT INTO refs (path, reference) VALUES (2, '{a}');
                 INSERT INTO members (cache, path, added_at) VALUES (1, 1, 1), (2, 1, 5), (2, 2, 2), (1, 2, 3);",
                ha = "a".repeat(32),
                hb = "b".repeat(32),
            ))
            .expect("fill");
            tx.commit().expect("commit");
        }
        let idx = SqliteIndex::open(&file).expect("open and migrate");
        assert_eq!(idx.adopted_paths().expect("adopted"), [("main".into(), b.clone()), ("other".into(), a.clone())]);
        assert_eq!(idx.counts().expect("counts"), (4, 2));
        assert!(idx.broken_references().expect("refs").is_empty(), "each cache's b refers to its a");
        let other_b = idx.path("other", &"b".repeat(32)).expect("read").expect("kept");
        assert_eq!((other_b.references, other_b.sigs), (vec![a.clone()], vec!["other-1:y".to_string()]));
        let main_b = idx.path("main", &"b".repeat(32)).expect("read").expect("kept");
        assert_eq!(main_b.nar, other_b.nar, "an adopted path serves what it served before");
        let ages: Vec<(i64, i64)> = {
            let mut v = Vec::new();
            idx.gc_snapshot("other", &mut |m| v.push((m.added_at, m.last_access)), &mut |_, _| {}).expect("snapshot");
            v.sort();
            v
        };
        assert_eq!(ages, [(2, 8), (5, 7)], "each cache's own added time, the path's last read");
        // Adopted NARs are not the cache's own: main cannot name other's b NAR for a new path.
        let c = PathRecord {
            store_path: format!("/nix/store/{}-c", "c".repeat(32)),
            nar: main_b.nar.clone(),
            references: vec![],
            deriver: None,
            ca: None,
            sigs: vec![],
        };
        assert!(matches!(idx.add_path("main", &c, None, 9), Err(IndexError::NarGone(_))));
        // other's own upload of a replaces the adopted row; the totals follow.
        let mut own = idx.path("other", &"a".repeat(32)).expect("read").expect("kept");
        own.nar.nar_hash = [9; 32];
        own.nar.file_size = 300;
        own.sigs = vec!["other-1:z".into()];
        idx.record_upload("other", "nar/own", &own.nar, 10).expect("upload");
        assert_eq!(idx.add_path("other", &own, Some("nar/own"), 10).expect("add"), Added::Replaced);
        assert_eq!(idx.path("other", &"a".repeat(32)).expect("read"), Some(own));
        assert_eq!(idx.adopted_paths().expect("adopted"), [("main".into(), b)]);
        let totals: Vec<(String, u64, u64)> =
            idx.cache_totals().expect("totals").into_iter().map(|(n, u)| (n, u.paths, u.bytes)).collect();
        assert_eq!(totals, [("main".into(), 2, 300), ("other".into(), 2, 500)]);
        assert!(idx.broken_references().expect("refs").is_empty(), "b still finds a by its store path");
    }

    #[test]
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin.allows(Scope::Write) && Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write) && !Scope::Write.allows(Scope::Admin));
    }

    #[test]
    fn the_canary_scope_only_publishes_and_admin_may_too() {
        for s in Scope::ALL {
            assert_eq!(s.as_str().parse::<Scope>(), Ok(s));
            assert_eq!(s.allows(Scope::Canary), matches!(s, Scope::Canary | Scope::Admin), "{s}");
            assert_eq!(Scope::Canary.allows(s), s == Scope::Canary, "{s}");
        }
    }
}
