//! The embedded index: one SQLite database in WAL mode, so readers never wait for the writer.
//!
//! The schema is created and upgraded by the numbered migrations below, recorded in
//! `PRAGMA user_version`; an index from a newer flywheel is refused rather than misread.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};

use super::{CacheRecord, Index, IndexError, Scope, TokenRecord};

/// The migrations, in order; migration N brings the schema to version N+1.
const MIGRATIONS: &[&str] = &[
    // 1: caches and tokens, and the tables the server fills: NARs stored once by their NarHash,
    // store paths (global) with their references, and which caches hold which paths.
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
    ",
];

pub struct SqliteIndex {
    conn: Mutex<Connection>,
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
        migrate(&conn)?;
        Ok(SqliteIndex { conn: Mutex::new(conn) })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T, IndexError>) -> Result<T, IndexError> {
        let conn = self.conn.lock().map_err(|_| IndexError::Db("a previous operation panicked".into()))?;
        f(&conn)
    }
}

fn db(e: rusqlite::Error) -> IndexError {
    IndexError::Db(e.to_string())
}

fn migrate(conn: &Connection) -> Result<(), IndexError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(db)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(IndexError::NewerSchema { found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction().map_err(db)?;
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

impl Index for SqliteIndex {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Visibility;

    fn cache(name: &str) -> CacheRecord {
        CacheRecord {
            name: name.into(),
            visibility: Visibility::Public,
            priority: 41,
            secret_key: format!("{name}-1:secret"),
            created_at: 1,
        }
    }

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
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin.allows(Scope::Write) && Scope::Write.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write) && !Scope::Write.allows(Scope::Admin));
    }
}
