//! The index in PostgreSQL, for several servers (on several machines) sharing one database.
//!
//! Same answers, errors and GC guarantees as [`super::sqlite::SqliteIndex`]. Where SQLite has
//! one writer at a time (`BEGIN IMMEDIATE`), transactions here run side by side under READ
//! COMMITTED, and what a transaction checks is held with row locks until it commits:
//!
//! - Adding a path deletes the upload it consumes first, then locks the cache's paths it refers
//!   to (`FOR KEY SHARE`) and the NAR it keeps; pinning locks the path it pins. GC locks the
//!   cache's paths it may remove (`FOR UPDATE`), then checks referrers and pins, then locks the
//!   NARs it may forget and checks again who uses them. Whichever comes second waits and then
//!   sees the other's work, as if they had run one after the other. Everyone takes locks in the
//!   same order (uploads, paths, NARs; each by key), so they rarely deadlock; when they do (or a
//!   serialization failure comes), the transaction is retried a few times.
//! - Inserts that two servers may race on are `ON CONFLICT` (the second waits for the first,
//!   then joins it); counters are added in the database (`value = value + excluded.value`);
//!   pin revisions are numbered under the pin's row lock.
//!
//! Locks ([`IndexLock`], the GC lock) are session-level advisory locks, each held by its own
//! database session, apart from the query pool: when a server dies, its sessions end and the
//! server releases their locks. See `LockSessions` below.
//!
//! Connections: the blocking `postgres` client (each runs its own small tokio runtime, so it
//! works from `spawn_blocking` and from plain threads, never from async code itself), pooled by
//! r2d2 with a connection type of our own: it keeps prepared statements per session and is
//! closed off any runtime thread. No TLS (`NoTls`): reach the database over a trusted network, a
//! tunnel or a unix socket (`host=/run/postgresql`).
//!
//! The schema is created and upgraded by the numbered migrations in `postgres/`, recorded in
//! `schema_version`, applied in one transaction under a transaction-level advisory lock so that
//! servers starting together do not race; a database from a newer flywheel is refused. The
//! tables go where the session's `search_path` puts them (`?options=-csearch_path%3Dflywheel`
//! in the URL for a schema of their own); the user needs the right to create them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::types::{FromSql, ToSql};
use postgres::{Client, GenericClient, NoTls, Row, Statement};

use super::sqlite::{hash32, hash_part_of, i64_of, size};
use super::{
    Added, CacheRecord, Held, Index, IndexError, IndexLock, NarRecord, PathRecord, Removals, Scope, StoredFile,
    TokenRecord, Visibility,
};

/// The migrations, in order; migration N brings the schema to version N.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres/0001_schema.sql"),
    include_str!("postgres/0002_status.sql"),
    include_str!("postgres/0003_paths_per_cache.sql"),
];

/// Advisory-lock keys: PostgreSQL's two-int4 form, the first one flywheel's (`flyw`, `flys` in
/// ASCII), so that other applications sharing the database are unlikely to collide.
pub const LOCK_CLASS: i32 = 0x666c_7977;
/// The class of the per-NAR store locks; the object is the NarHash's first four bytes.
pub const LOCK_CLASS_STORE: i32 = 0x666c_7973;
/// Objects in [`LOCK_CLASS`]: migrations (transaction-level), the NAR lock, the GC lock.
const LOCK_MIGRATE: i32 = 0;
const LOCK_NAR: i32 = 1;
const LOCK_GC: i32 = 2;
/// Transaction-level: one publisher of a canary run at a time counts the lanes.
pub(super) const LOCK_LANES: i32 = 3;

/// Attempts of a transaction that failed with a serialization failure or a deadlock.
const ATTEMPTS: u32 = 8;
/// A session idle longer than this is checked (one round trip) before use: the server may
/// have closed it (restart, idle timeout, `pg_terminate_backend`) meanwhile.
const STALE: Duration = Duration::from_secs(5);
/// Rows fetched per round trip when streaming (GC's snapshot, usage).
const FETCH: i32 = 50_000;
/// Rows [`Index::removed_since`] answers at most, as SQLite's.
const REMOVALS_PAGE: i64 = 100_000;

pub struct PostgresIndex {
    shared: Arc<Shared>,
}

struct Shared {
    pool: r2d2::Pool<Manager>,
    locks: Arc<LockSessions>,
    /// The URL without its password, for messages.
    shown: String,
}

impl PostgresIndex {
    /// Connects (migrating the schema as needed) with at most `pool_size` sessions for queries;
    /// locks take sessions of their own. Call it from a blocking context (a plain thread or
    /// `spawn_blocking`), like every method. Errors are one line and never show a password.
    pub fn connect(url: &str, pool_size: u32) -> Result<PostgresIndex, IndexError> {
        let mut config: postgres::Config =
            url.parse().map_err(|e: postgres::Error| IndexError::Db(format!("the PostgreSQL URL: {}", message(&e))))?;
        let shown = describe(&config);
        if config.get_application_name().is_none() {
            config.application_name("flywheel");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        // A session whose peer vanished (a machine, not a process, died) is noticed in minutes,
        // not the kernel's two hours.
        config.keepalives(true).keepalives_idle(Duration::from_secs(60)).keepalives_interval(Duration::from_secs(10));
        let mut first = Session::connect(&config).map_err(|e| IndexError::Db(format!("{shown}: {}", message(&e))))?;
        migrate(&mut first).map_err(|e| match e {
            Fail::Pg(e) => IndexError::Db(format!("{shown}: migrating the schema: {}", message(&e))),
            Fail::Index(e) => e,
        })?;
        let pool = r2d2::Pool::builder()
            .max_size(pool_size.max(1))
            // Sessions open as they are first needed and stay open (r2d2 closes those idle
            // for ten minutes beyond the first).
            .min_idle(Some(1))
            // Checked when stale instead (STALE), not before every use: one round trip fewer.
            .test_on_check_out(false)
            .connection_timeout(Duration::from_secs(30))
            .error_handler(Box::new(LogErrors(shown.clone())))
            .build_unchecked(Manager { config: config.clone() });
        let locks = Arc::new(LockSessions { config, idle: Mutex::new(Vec::new()), keep: pool_size.max(1) as usize });
        locks.give_back(first);
        Ok(PostgresIndex { shared: Arc::new(Shared { pool, locks, shown }) })
    }

    /// A session from the pool, checked first when it has been idle a while.
    fn session(&self) -> Result<r2d2::PooledConnection<Manager>, IndexError> {
        // r2d2 quotes the last connection error: one line.
        let failed =
            |e: r2d2::Error| IndexError::Db(format!("{}: {}", self.shared.shown, e.to_string().replace('\n', " ")));
        for _ in 0..3 {
            let mut s = self.shared.pool.get().map_err(failed)?;
            if s.used.elapsed() < STALE || s.check().is_ok() {
                return Ok(s);
            }
            // Dropped as broken: the pool opens another.
            s.broken = true;
        }
        self.shared.pool.get().map_err(failed)
    }

    /// Runs `f` on a pooled session, each statement in its own transaction.
    pub(super) fn read<T>(&self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, Fail>) -> Result<T, IndexError> {
        let mut s = self.session()?;
        let Session { client, stmts, used, .. } = &mut *s;
        let client = client.as_mut().ok_or_else(closed).map_err(Fail::into_index)?;
        let out = f(&mut Db { c: client, stmts });
        *used = Instant::now();
        out.map_err(Fail::into_index)
    }

    /// Runs `f` in one READ COMMITTED transaction, again (from the start) when it fails with a
    /// serialization failure or a deadlock. `f` must have no effect outside the transaction.
    pub(super) fn write<T>(
        &self,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, Fail>,
    ) -> Result<T, IndexError> {
        let mut attempt = 1;
        loop {
            let mut s = self.session()?;
            match s.transaction(None, &mut f) {
                Err(Fail::Pg(e)) if retryable(&e) && attempt < ATTEMPTS => {
                    drop(s);
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                other => return other.map_err(Fail::into_index),
            }
        }
    }

    /// Runs `f` once in a transaction: repeatable read (one snapshot) for `snapshot`.
    pub(super) fn once<T>(
        &self,
        snapshot: bool,
        mut f: impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, Fail>,
    ) -> Result<T, IndexError> {
        let level = snapshot.then_some(postgres::IsolationLevel::RepeatableRead);
        self.session()?.transaction(level, &mut f).map_err(Fail::into_index)
    }

    fn take_lock(&self, class: i32, object: i32, shared: bool) -> Result<Held, IndexError> {
        let sql = if shared { "SELECT pg_advisory_lock_shared($1, $2)" } else { "SELECT pg_advisory_lock($1, $2)" };
        let locks = &self.shared.locks;
        let mut session = locks.take().map_err(|e| self.lock_error(e))?;
        match session.run(|db| Ok(db.exec(sql, &[&class, &object])?)) {
            Ok(_) => Ok(Held::new(LockGuard { session: Some(session), sessions: locks.clone() })),
            // A session the server had closed while idle: once more on a new one.
            Err(_) if session.is_closed() => {
                drop(session);
                let mut session = locks.connect().map_err(|e| self.lock_error(e))?;
                session.run(|db| Ok(db.exec(sql, &[&class, &object])?)).map_err(|e| self.lock_error(e))?;
                Ok(Held::new(LockGuard { session: Some(session), sessions: locks.clone() }))
            }
            // The session is dropped (closed), whatever it may hold.
            Err(e) => Err(self.lock_error(e)),
        }
    }

    fn lock_error(&self, e: impl Into<Fail>) -> IndexError {
        let e = match e.into() {
            Fail::Pg(e) => message(&e),
            Fail::Index(e) => e.to_string(),
        };
        IndexError::Db(format!("{}: taking a lock: {e}", self.shared.shown))
    }
}

/// What a closure inside a transaction fails with: PostgreSQL's error (kept whole, so that a
/// deadlock can be retried) or the index's.
pub(super) enum Fail {
    Pg(postgres::Error),
    Index(IndexError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<IndexError> for Fail {
    fn from(e: IndexError) -> Self {
        Fail::Index(e)
    }
}

impl Fail {
    fn into_index(self) -> IndexError {
        match self {
            Fail::Pg(e) => IndexError::Db(message(&e)),
            Fail::Index(e) => e,
        }
    }
}

fn closed() -> Fail {
    Fail::Index(IndexError::Db("the database session is closed".into()))
}

/// One line: PostgreSQL's severity, message and SQLSTATE (its DETAIL and HINT, on lines of
/// their own, may quote row values: left out).
fn message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} [{}]", db.severity(), db.message(), db.code().code()),
        None => e.to_string().replace('\n', " "),
    }
}

fn retryable(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
}

/// 2, 4, 8 … ms, up to about half a second, with jitter so that two retriers part.
fn backoff(attempt: u32) -> Duration {
    let base = 1u64 << attempt.min(8);
    let jitter = u64::from(getrandom::u32().unwrap_or(0)) % (base + 1);
    Duration::from_millis(base + jitter)
}

/// `postgresql://user@host:port/dbname` from the parsed URL: never its password.
/// `url` for messages: user, host, port and database, never the password.
pub fn shown_url(url: &str) -> String {
    match url.parse::<postgres::Config>() {
        Ok(c) => describe(&c),
        Err(_) => "an unreadable PostgreSQL URL".into(),
    }
}

fn describe(c: &postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgresql://{}@{host}:{port}/{}",
        c.get_user().unwrap_or(""),
        c.get_dbname().or(c.get_user()).unwrap_or("")
    )
}

fn migrate(s: &mut Session) -> Result<(), Fail> {
    s.transaction(None, &mut |db| {
        // Servers starting together: one migrates, the others wait here and then find it done.
        db.exec("SELECT pg_advisory_xact_lock($1, $2)", &[&LOCK_CLASS, &LOCK_MIGRATE])?;
        db.c.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )?;
        let found: i64 = get(&db.one("SELECT coalesce(max(version), 0) FROM schema_version", &[])?, 0)?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(IndexError::NewerSchema { found, known }.into());
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(found).unwrap_or(0)) {
            db.c.batch_execute(sql)?;
            db.exec(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, extract(epoch FROM now())::bigint)",
                &[&(i as i64 + 1)],
            )?;
        }
        Ok(())
    })
}

/// A database session: the client, its prepared statements, and when it was last used.
pub(super) struct Session {
    client: Option<Client>,
    stmts: HashMap<&'static str, Statement>,
    used: Instant,
    broken: bool,
}

impl Session {
    fn connect(config: &postgres::Config) -> Result<Session, postgres::Error> {
        let client = config.connect(NoTls)?;
        Ok(Session { client: Some(client), stmts: HashMap::new(), used: Instant::now(), broken: false })
    }

    fn is_closed(&self) -> bool {
        self.client.as_ref().is_none_or(Client::is_closed)
    }

    /// One round trip, to learn that the session still works.
    fn check(&mut self) -> Result<(), postgres::Error> {
        if let Some(c) = self.client.as_mut() {
            c.simple_query("")?;
            self.used = Instant::now();
        }
        Ok(())
    }

    /// Runs `f` outside a transaction, the statement cache at hand.
    fn run<T>(&mut self, f: impl FnOnce(&mut Db<'_, Client>) -> Result<T, Fail>) -> Result<T, Fail> {
        let Session { client, stmts, used, .. } = self;
        let client = client.as_mut().ok_or_else(closed)?;
        let out = f(&mut Db { c: client, stmts });
        *used = Instant::now();
        out
    }

    fn transaction<T>(
        &mut self,
        level: Option<postgres::IsolationLevel>,
        f: &mut impl FnMut(&mut Db<'_, postgres::Transaction<'_>>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let Session { client, stmts, used, .. } = self;
        let client = client.as_mut().ok_or_else(closed)?;
        let mut tx = match level {
            Some(level) => client.build_transaction().isolation_level(level).read_only(true).start()?,
            None => client.transaction()?,
        };
        let out = f(&mut Db { c: &mut tx, stmts })?;
        tx.commit()?;
        *used = Instant::now();
        Ok(out)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            off_runtime(move || drop(client));
        }
    }
}

/// Runs `f` (which closes a client, or uses one) where the `postgres` client may block: not
/// on a thread of a tokio runtime, where its own runtime's `block_on` would panic. On such a
/// thread (an async task dropped a lock or the index) it runs on a thread of its own, waited for.
fn off_runtime(f: impl FnOnce() + Send) {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            if let Err(e) = std::thread::Builder::new().name("flywheel-pg".into()).spawn_scoped(s, f) {
                tracing::warn!("PostgreSQL index: no thread to close a session on: {e}");
            }
        });
    } else {
        f();
    }
}

/// Statements through the session's cache of prepared statements: one round trip each, not
/// two (parse, then bind and execute).
pub(super) struct Db<'a, C> {
    pub(super) c: &'a mut C,
    stmts: &'a mut HashMap<&'static str, Statement>,
}

pub(super) type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl<C: GenericClient> Db<'_, C> {
    pub(super) fn prepared(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.c.prepare(sql)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    pub(super) fn query(&mut self, sql: &'static str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query(&s, params)
    }

    pub(super) fn opt(&mut self, sql: &'static str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query_opt(&s, params)
    }

    pub(super) fn one(&mut self, sql: &'static str, params: Params<'_>) -> Result<Row, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.query_one(&s, params)
    }

    pub(super) fn exec(&mut self, sql: &'static str, params: Params<'_>) -> Result<u64, postgres::Error> {
        let s = self.prepared(sql)?;
        self.c.execute(&s, params)
    }
}

impl Db<'_, postgres::Transaction<'_>> {
    /// Streams a query's rows to `each`, [`FETCH`] per round trip.
    pub(super) fn stream(
        &mut self,
        sql: &'static str,
        params: Params<'_>,
        mut each: impl FnMut(&Row) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        let s = self.prepared(sql)?;
        let portal = self.c.bind(&s, params)?;
        loop {
            let rows = self.c.query_portal(&portal, FETCH)?;
            for r in &rows {
                each(r)?;
            }
            if rows.len() < FETCH as usize {
                return Ok(());
            }
        }
    }
}

pub(super) fn get<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, Fail> {
    row.try_get(i).map_err(Fail::Pg)
}

/// The pool's sessions.
struct Manager {
    config: postgres::Config,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Session;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Session, postgres::Error> {
        Session::connect(&self.config)
    }

    fn is_valid(&self, s: &mut Session) -> Result<(), postgres::Error> {
        s.check()
    }

    fn has_broken(&self, s: &mut Session) -> bool {
        s.broken || s.is_closed()
    }
}

/// The pool opens sessions in the background: their errors go to the log (callers waiting for
/// a session get the last one too).
#[derive(Debug)]
struct LogErrors(String);

impl r2d2::HandleError<postgres::Error> for LogErrors {
    fn handle_error(&self, e: postgres::Error) {
        tracing::warn!("PostgreSQL index {}: {}", self.0, message(&e));
    }
}

/// Sessions for advisory locks, apart from the query pool: a lock holds its session until it
/// is released, and a server may hold many at once (one per upload being stored), more than
/// the pool has; taking them from the pool could leave no session for the queries the
/// holders go on to make. There is no bound: each waiting or held lock is one session (mind
/// `max_connections`). Released, a session goes back to the idle ones only once
/// `pg_advisory_unlock_all()` has succeeded on it, else it is closed (and the server drops
/// whatever it held): a lock never outlives its [`Held`] in a reused session.
struct LockSessions {
    config: postgres::Config,
    idle: Mutex<Vec<Session>>,
    keep: usize,
}

impl LockSessions {
    fn take(&self) -> Result<Session, postgres::Error> {
        loop {
            let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(mut s) = idle else { return self.connect() };
            if !s.is_closed() && (s.used.elapsed() < STALE || s.check().is_ok()) {
                return Ok(s);
            }
        }
    }

    fn connect(&self) -> Result<Session, postgres::Error> {
        Session::connect(&self.config)
    }

    fn give_back(&self, s: Session) {
        if s.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < self.keep {
                idle.push(s);
            }
        }
    }
}

/// A held advisory lock: its session, released (and given back) on drop.
struct LockGuard {
    session: Option<Session>,
    sessions: Arc<LockSessions>,
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(mut session) = self.session.take() else { return };
        let sessions = &self.sessions;
        off_runtime(move || {
            let released = session.run(|db| Ok(db.exec("SELECT pg_advisory_unlock_all()", &[])?));
            match released {
                Ok(_) => sessions.give_back(session),
                // Closing the session releases what it holds.
                Err(e) => {
                    tracing::debug!("PostgreSQL index: releasing a lock: {}; closing its session", e.into_index());
                    drop(session);
                }
            }
        });
    }
}

pub(super) fn cache_id<C: GenericClient>(db: &mut Db<'_, C>, name: &str) -> Result<i64, Fail> {
    match db.opt("SELECT id FROM caches WHERE name = $1", &[&name])? {
        Some(r) => get(&r, 0),
        None => Err(IndexError::NoSuchCache(name.to_string()).into()),
    }
}

fn to_cache(r: &Row) -> Result<CacheRecord, Fail> {
    let visibility: String = get(r, 1)?;
    let priority: i64 = get(r, 2)?;
    Ok(CacheRecord {
        name: get(r, 0)?,
        visibility: visibility.parse().map_err(IndexError::Db)?,
        priority: u32::try_from(priority).map_err(|_| IndexError::Db(format!("priority {priority} out of range")))?,
        secret_key: get(r, 3)?,
        created_at: get(r, 4)?,
    })
}

/// The five NAR columns from `at`.
fn to_nar(r: &Row, at: usize) -> Result<NarRecord, Fail> {
    Ok(NarRecord {
        nar_hash: hash32(get(r, at)?)?,
        nar_size: size(get(r, at + 1)?)?,
        file_hash: hash32(get(r, at + 2)?)?,
        file_size: size(get(r, at + 3)?)?,
        compression: get(r, at + 4)?,
    })
}

fn to_token(r: &Row, hash: [u8; 32]) -> Result<TokenRecord, Fail> {
    let scope: String = get(r, 1)?;
    Ok(TokenRecord {
        hash,
        cache: get(r, 0)?,
        scope: scope.parse::<Scope>().map_err(IndexError::Db)?,
        created_at: get(r, 2)?,
        expires_at: get(r, 3)?,
        description: get(r, 4)?,
    })
}

impl Index for PostgresIndex {
    fn another(&self) -> Result<Box<dyn Index>, IndexError> {
        Ok(Box::new(PostgresIndex { shared: self.shared.clone() }))
    }

    fn lock(&self, lock: IndexLock) -> Result<Held, IndexError> {
        match lock {
            IndexLock::NarShared => self.take_lock(LOCK_CLASS, LOCK_NAR, true),
            IndexLock::NarExclusive => self.take_lock(LOCK_CLASS, LOCK_NAR, false),
            IndexLock::Store(h) => {
                self.take_lock(LOCK_CLASS_STORE, i32::from_be_bytes([h[0], h[1], h[2], h[3]]), false)
            }
        }
    }

    fn try_gc_lock(&self) -> Result<Option<Held>, IndexError> {
        let locks = &self.shared.locks;
        let mut session = locks.take().map_err(|e| self.lock_error(e))?;
        let got = session
            .run(|db| get::<bool>(&db.one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &LOCK_GC])?, 0))
            .map_err(|e| self.lock_error(e))?;
        if got {
            Ok(Some(Held::new(LockGuard { session: Some(session), sessions: locks.clone() })))
        } else {
            locks.give_back(session);
            Ok(None)
        }
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT c.name, t.scope, t.created_at, t.expires_at, t.description, t.hash
                 FROM tokens t JOIN caches c ON c.id = t.cache ORDER BY c.name, t.created_at, t.hash",
                &[],
            )?;
            rows.iter().map(|r| to_token(r, hash32(get(r, 5)?)?)).collect()
        })
    }

    fn file_names(&self, cache: &str) -> Result<Vec<String>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT f.name FROM files f JOIN caches c ON c.id = f.cache WHERE c.name = $1 ORDER BY f.name",
                &[&cache],
            )?;
            rows.iter().map(|r| get(r, 0)).collect()
        })
    }

    fn upstream_paths(&self, cache: &str) -> Result<Vec<(String, String)>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT u.store_path, u.key_name FROM upstream u JOIN caches c ON c.id = u.cache
                 WHERE c.name = $1 ORDER BY u.store_path",
                &[&cache],
            )?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
        })
    }

    fn create_cache(&self, c: &CacheRecord) -> Result<(), IndexError> {
        self.read(|db| {
            let inserted = db.exec(
                "INSERT INTO caches (name, visibility, priority, secret_key, created_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING",
                &[&c.name, &c.visibility.as_str(), &i64::from(c.priority), &c.secret_key, &c.created_at],
            )?;
            if inserted == 0 {
                return Err(IndexError::CacheExists(c.name.clone()).into());
            }
            Ok(())
        })
    }

    fn cache(&self, name: &str) -> Result<Option<CacheRecord>, IndexError> {
        self.read(|db| {
            db.opt("SELECT name, visibility, priority, secret_key, created_at FROM caches WHERE name = $1", &[&name])?
                .map(|r| to_cache(&r))
                .transpose()
        })
    }

    fn caches(&self) -> Result<Vec<CacheRecord>, IndexError> {
        self.read(|db| {
            let rows =
                db.query("SELECT name, visibility, priority, secret_key, created_at FROM caches ORDER BY name", &[])?;
            rows.iter().map(to_cache).collect()
        })
    }

    fn add_token(&self, t: &TokenRecord) -> Result<(), IndexError> {
        self.read(|db| {
            let inserted = db.exec(
                "INSERT INTO tokens (hash, cache, scope, created_at, expires_at, description)
                 SELECT $1, id, $3, $4, $5, $6 FROM caches WHERE name = $2",
                &[&&t.hash[..], &t.cache, &t.scope.as_str(), &t.created_at, &t.expires_at, &t.description],
            )?;
            if inserted == 0 {
                return Err(IndexError::NoSuchCache(t.cache.clone()).into());
            }
            Ok(())
        })
    }

    fn record_upload(&self, cache: &str, url: &str, n: &NarRecord, now: i64) -> Result<(), IndexError> {
        let (nar_size, file_size) = (i64_of(n.nar_size)?, i64_of(n.file_size)?);
        self.read(|db| {
            let written = db.exec(
                "INSERT INTO uploads (cache, url, nar_hash, nar_size, file_hash, file_size, compression, created_at)
                 SELECT id, $2, $3, $4, $5, $6, $7, $8 FROM caches WHERE name = $1
                 ON CONFLICT (cache, url) DO UPDATE SET nar_hash = excluded.nar_hash, nar_size = excluded.nar_size,
                   file_hash = excluded.file_hash, file_size = excluded.file_size, compression = excluded.compression,
                   created_at = excluded.created_at",
                &[&cache, &url, &&n.nar_hash[..], &nar_size, &&n.file_hash[..], &file_size, &n.compression, &now],
            )?;
            if written == 0 {
                return Err(IndexError::NoSuchCache(cache.to_string()).into());
            }
            Ok(())
        })
    }

    fn upload(&self, cache: &str, url: &str) -> Result<Option<NarRecord>, IndexError> {
        self.read(|db| {
            db.opt(
                "SELECT u.nar_hash, u.nar_size, u.file_hash, u.file_size, u.compression
                 FROM uploads u JOIN caches c ON c.id = u.cache WHERE c.name = $1 AND u.url = $2",
                &[&cache, &url],
            )?
            .map(|r| to_nar(&r, 0))
            .transpose()
        })
    }

    fn nar(&self, nar_hash: &[u8; 32]) -> Result<Option<NarRecord>, IndexError> {
        self.read(|db| {
            db.opt(
                "SELECT nar_hash, nar_size, file_hash, file_size, compression FROM nars WHERE nar_hash = $1",
                &[&&nar_hash[..]],
            )?
            .map(|r| to_nar(&r, 0))
            .transpose()
        })
    }

    fn missing(&self, cache: &str, store_paths: &[String]) -> Result<Vec<String>, IndexError> {
        self.read(|db| {
            let id = cache_id(db, cache)?;
            let present = present_in(db, id, store_paths, false)?;
            // An adopted row counts as missing here: a client sends the path, and its upload
            // replaces the row (closure checks count it as present).
            let mut present = present;
            if !present.is_empty() {
                let held: Vec<&str> = present.iter().map(String::as_str).collect();
                for r in db.query(
                    "SELECT store_path FROM paths WHERE cache = $1 AND adopted AND store_path = ANY($2)",
                    &[&id, &held],
                )? {
                    present.remove(&get::<String>(&r, 0)?);
                }
            }
            Ok(store_paths.iter().filter(|p| !present.contains(*p)).cloned().collect())
        })
    }

    fn add_path(&self, cache: &str, p: &PathRecord, upload: Option<&str>, now: i64) -> Result<Added, IndexError> {
        self.write(|db| add_path_tx(db, cache, p, upload, now))
    }

    fn configure_cache(&self, name: &str, visibility: Visibility, priority: u32) -> Result<(), IndexError> {
        self.read(|db| {
            let n = db.exec(
                "UPDATE caches SET visibility = $2, priority = $3 WHERE name = $1",
                &[&name, &visibility.as_str(), &i64::from(priority)],
            )?;
            if n == 0 {
                return Err(IndexError::NoSuchCache(name.to_string()).into());
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
        self.write(|db| {
            let id = cache_id(db, cache)?;
            db.exec(
                "INSERT INTO upstream (cache, hash_part, store_path, key_name, recorded_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (cache, hash_part) DO UPDATE SET key_name = excluded.key_name,
                   recorded_at = excluded.recorded_at",
                &[&id, &hash_part_of(store_path)?, &store_path, &key_name, &now],
            )?;
            if let Some(url) = upload {
                db.exec("DELETE FROM uploads WHERE cache = $1 AND url = $2", &[&id, &url])?;
            }
            Ok(())
        })
    }

    fn put_file(&self, cache: &str, name: &str, file: &StoredFile, now: i64) -> Result<(), IndexError> {
        self.read(|db| {
            let written = db.exec(
                "INSERT INTO files (cache, name, body, content_type, content_encoding, created_at)
                 SELECT id, $2, $3, $4, $5, $6 FROM caches WHERE name = $1
                 ON CONFLICT (cache, name) DO UPDATE SET body = excluded.body, content_type = excluded.content_type,
                   content_encoding = excluded.content_encoding, created_at = excluded.created_at",
                &[&cache, &name, &file.body, &file.content_type, &file.content_encoding, &now],
            )?;
            if written == 0 {
                return Err(IndexError::NoSuchCache(cache.to_string()).into());
            }
            Ok(())
        })
    }

    fn file(&self, cache: &str, name: &str) -> Result<Option<StoredFile>, IndexError> {
        self.read(|db| {
            db.opt(
                "SELECT f.body, f.content_type, f.content_encoding FROM files f JOIN caches c ON c.id = f.cache
                 WHERE c.name = $1 AND f.name = $2",
                &[&cache, &name],
            )?
            .map(|r| Ok(StoredFile { body: get(&r, 0)?, content_type: get(&r, 1)?, content_encoding: get(&r, 2)? }))
            .transpose()
        })
    }

    fn path(&self, cache: &str, hash_part: &str) -> Result<Option<PathRecord>, IndexError> {
        self.read(|db| {
            let Some(r) = db.opt(
                "SELECT p.store_path, p.deriver, p.ca, p.sigs,
                        n.nar_hash, n.nar_size, n.file_hash, n.file_size, n.compression,
                        ARRAY(SELECT r.reference FROM refs r WHERE r.path = p.id ORDER BY r.reference)
                 FROM paths p
                 JOIN caches c ON c.id = p.cache
                 JOIN nars n ON n.nar_hash = p.nar_hash
                 WHERE c.name = $1 AND p.hash_part = $2",
                &[&cache, &hash_part],
            )?
            else {
                return Ok(None);
            };
            let sigs: String = get(&r, 3)?;
            Ok(Some(PathRecord {
                store_path: get(&r, 0)?,
                nar: to_nar(&r, 4)?,
                references: get(&r, 9)?,
                deriver: get(&r, 1)?,
                ca: get(&r, 2)?,
                sigs: super::sigs_of_column(&sigs),
            }))
        })
    }

    fn removed_since(&self, after: Option<i64>) -> Result<Removals, IndexError> {
        self.read(|db| {
            let Some(after) = after else {
                let last: i64 = get(&db.one("SELECT last FROM gc_log_position", &[])?, 0)?;
                return Ok(Removals { last, paths: Vec::new(), complete: true });
            };
            // One statement, one snapshot: the position and the rows up to it agree.
            let rows = db.query(
                "SELECT g.last, (SELECT min(seq) FROM gc_log), l.cache, l.hash_part
                 FROM gc_log_position g
                 LEFT JOIN LATERAL (SELECT seq, cache, hash_part FROM gc_log WHERE seq > $1 ORDER BY seq LIMIT $2) l
                   ON true
                 ORDER BY l.seq",
                &[&after, &REMOVALS_PAGE],
            )?;
            let Some(head) = rows.first() else {
                return Err(IndexError::Db("gc_log_position has no row".into()).into());
            };
            let (last, first): (i64, Option<i64>) = (get(head, 0)?, get(head, 1)?);
            let mut paths = Vec::with_capacity(rows.len());
            for r in &rows {
                if let (Some(cache), Some(hash_part)) = (get::<Option<String>>(r, 2)?, get::<Option<String>>(r, 3)?) {
                    paths.push((cache, hash_part));
                }
            }
            // Rows the log no longer holds were removed too: then nobody knows which.
            let complete = after >= last || first.is_some_and(|f| f <= after + 1);
            let complete = complete && (paths.len() as i64) < REMOVALS_PAGE;
            let last = if complete { last } else { last.max(after) };
            Ok(Removals { last, paths, complete })
        })
    }

    fn nar_in_cache(&self, cache: &str, nar_hash: &[u8; 32]) -> Result<Option<(NarRecord, i64)>, IndexError> {
        self.read(|db| {
            db.opt(
                "SELECT n.nar_hash, n.nar_size, n.file_hash, n.file_size, n.compression, n.stored_at
                 FROM nars n
                 WHERE n.nar_hash = $2 AND EXISTS (
                   SELECT 1 FROM paths p JOIN caches c ON c.id = p.cache
                   WHERE p.nar_hash = n.nar_hash AND c.name = $1)",
                &[&cache, &&nar_hash[..]],
            )?
            .map(|r| Ok((to_nar(&r, 0)?, get(&r, 5)?)))
            .transpose()
        })
    }

    fn touch(&self, accesses: &[super::Access]) -> Result<(), IndexError> {
        if accesses.is_empty() {
            return Ok(());
        }
        // The latest access of each path (what SQLite's updates one by one leave).
        let mut latest: HashMap<(&str, &str), i64> = HashMap::new();
        for a in accesses {
            let e = latest.entry((&a.cache, &a.hash_part)).or_insert(a.at);
            *e = (*e).max(a.at);
        }
        let mut caches = Vec::with_capacity(latest.len());
        let mut hashes = Vec::with_capacity(latest.len());
        let mut ats = Vec::with_capacity(latest.len());
        for ((c, h), at) in latest {
            caches.push(c);
            hashes.push(h);
            ats.push(at);
        }
        self.write(|db| {
            // Rows locked in id order, as GC locks them: two servers' touches (or a touch and a
            // collection) never wait for each other in a circle.
            db.exec(
                "SELECT p.id FROM paths p
                 JOIN unnest($1::text[], $2::text[], $3::bigint[]) AS a(c, h, at) ON p.hash_part = a.h
                 JOIN caches c ON c.id = p.cache AND c.name = a.c
                 WHERE p.last_access < a.at ORDER BY p.id FOR NO KEY UPDATE OF p",
                &[&caches, &hashes, &ats],
            )?;
            db.exec(
                "UPDATE paths p SET last_access = a.at
                 FROM unnest($1::text[], $2::text[], $3::bigint[]) AS a(c, h, at) JOIN caches c ON c.name = a.c
                 WHERE p.cache = c.id AND p.hash_part = a.h AND p.last_access < a.at",
                &[&caches, &hashes, &ats],
            )?;
            Ok(())
        })
    }

    fn all_nars(&self) -> Result<Vec<NarRecord>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT nar_hash, nar_size, file_hash, file_size, compression FROM nars ORDER BY nar_hash",
                &[],
            )?;
            rows.iter().map(|r| to_nar(r, 0)).collect()
        })
    }

    fn pending_uploads(&self) -> Result<Vec<[u8; 32]>, IndexError> {
        self.read(|db| {
            let rows = db.query("SELECT DISTINCT nar_hash FROM uploads ORDER BY nar_hash", &[])?;
            rows.iter().map(|r| Ok(hash32(get(r, 0)?)?)).collect()
        })
    }

    fn broken_references(&self) -> Result<Vec<(String, String, String)>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT c.name, p.store_path, r.reference
                 FROM paths p
                 JOIN caches c ON c.id = p.cache
                 JOIN refs r ON r.path = p.id
                 WHERE r.reference != p.store_path AND NOT EXISTS (
                   SELECT 1 FROM paths p2 WHERE p2.cache = p.cache AND p2.store_path = r.reference)
                 AND NOT EXISTS (
                   SELECT 1 FROM upstream u WHERE u.cache = p.cache AND u.store_path = r.reference)
                 ORDER BY 1, 2, 3",
                &[],
            )?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?))).collect()
        })
    }

    fn adopted_paths(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.read(|db| {
            let rows = db.query(
                "SELECT c.name, p.store_path FROM paths p JOIN caches c ON c.id = p.cache
                 WHERE p.adopted ORDER BY 1, 2",
                &[],
            )?;
            rows.iter().map(|r| Ok((get(r, 0)?, get(r, 1)?))).collect()
        })
    }

    fn mark_adopted(&self, cache: &str, store_path: &str) -> Result<(), IndexError> {
        self.read(|db| {
            let id = cache_id(db, cache)?;
            db.exec(
                "UPDATE paths SET adopted = true WHERE cache = $1 AND hash_part = $2 AND store_path = $3",
                &[&id, &hash_part_of(store_path)?, &store_path],
            )?;
            Ok(())
        })
    }

    fn counts(&self) -> Result<(u64, u64), IndexError> {
        self.read(|db| {
            let r = db.one("SELECT count(*), count(DISTINCT hash_part) FROM paths", &[])?;
            Ok((size(get(&r, 0)?)?, size(get(&r, 1)?)?))
        })
    }

    fn stored_bytes(&self) -> Result<u64, IndexError> {
        self.read(|db| Ok(size(get(&db.one("SELECT coalesce(sum(file_size), 0)::bigint FROM nars", &[])?, 0)?)?))
    }

    fn token(&self, hash: &[u8; 32]) -> Result<Option<TokenRecord>, IndexError> {
        self.read(|db| {
            db.opt(
                "SELECT c.name, t.scope, t.created_at, t.expires_at, t.description
                 FROM tokens t JOIN caches c ON c.id = t.cache WHERE t.hash = $1",
                &[&&hash[..]],
            )?
            .map(|r| to_token(&r, *hash))
            .transpose()
        })
    }
}

/// Which of `store_paths` the cache holds (as its own path, or declined as upstream's): the
/// whole store path must match, not only its hash part. With `lock`, the paths found stay
/// locked (`FOR KEY SHARE`, in id order) until the transaction ends: GC cannot remove them
/// meanwhile.
fn present_in<C: GenericClient, S: AsRef<str>>(
    db: &mut Db<'_, C>,
    cache: i64,
    store_paths: &[S],
    lock: bool,
) -> Result<std::collections::HashSet<String>, Fail> {
    let mut present = std::collections::HashSet::new();
    if store_paths.is_empty() {
        return Ok(present);
    }
    let paths: Vec<&str> = store_paths.iter().map(AsRef::as_ref).collect();
    let parts = paths.iter().map(|p| hash_part_of(p)).collect::<Result<Vec<&str>, _>>()?;
    let own = if lock {
        "SELECT p.store_path FROM paths p JOIN unnest($2::text[], $3::text[]) AS w(h, sp)
           ON p.hash_part = w.h AND p.store_path = w.sp
         WHERE p.cache = $1 ORDER BY p.id FOR KEY SHARE OF p"
    } else {
        "SELECT p.store_path FROM paths p JOIN unnest($2::text[], $3::text[]) AS w(h, sp)
           ON p.hash_part = w.h AND p.store_path = w.sp
         WHERE p.cache = $1"
    };
    for r in db.query(own, &[&cache, &parts, &paths])? {
        present.insert(get(&r, 0)?);
    }
    for r in db.query(
        "SELECT u.store_path FROM upstream u JOIN unnest($2::text[], $3::text[]) AS w(h, sp)
           ON u.hash_part = w.h AND u.store_path = w.sp
         WHERE u.cache = $1",
        &[&cache, &parts, &paths],
    )? {
        present.insert(get(&r, 0)?);
    }
    Ok(present)
}

/// [`Index::add_path`]'s transaction. Its checks and errors come in SQLite's order; its locks in
/// the order every transaction takes them: the upload, the cache's paths (the references, and
/// the path itself when the cache holds it), the NAR.
fn add_path_tx(
    db: &mut Db<'_, postgres::Transaction<'_>>,
    cache: &str,
    p: &PathRecord,
    upload: Option<&str>,
    now: i64,
) -> Result<Added, Fail> {
    let cache_id = cache_id(db, cache)?;
    let n = &p.nar;
    // Deleted first (it goes anyway): an expiry of the upload waits for this transaction, or
    // this one finds it gone. Only an upload of this very NAR to this cache counts.
    let uploaded = match upload {
        Some(url) => {
            db.exec(
                "DELETE FROM uploads WHERE cache = $1 AND url = $2 AND nar_hash = $3",
                &[&cache_id, &url, &&n.nar_hash[..]],
            )? > 0
        }
        None => false,
    };
    // The per-cache rule (see SQLite's): uploaded to this cache, or used by its own paths.
    let own_nar = uploaded
        || db
            .opt(
                "SELECT 1 FROM paths WHERE nar_hash = $1 AND cache = $2 AND NOT adopted LIMIT 1",
                &[&&n.nar_hash[..], &cache_id],
            )?
            .is_some();
    if !own_nar {
        return Err(IndexError::NarGone(p.store_path.clone()).into());
    }
    let others: Vec<&String> = p.references.iter().filter(|r| **r != p.store_path).collect();
    // The references, and the path's own row when the cache holds it already: a collection
    // removing one waits for this transaction.
    let mut locked: Vec<&str> = others.iter().map(|r| r.as_str()).collect();
    locked.push(&p.store_path);
    let present = present_in(db, cache_id, &locked, true)?;
    let hash_part = hash_part_of(&p.store_path)?;
    // Locked: GC cannot forget the NAR between this check and the commit. Without an upload,
    // the path that made it the cache's own may have gone with it meanwhile.
    let known_nar = db.opt("SELECT 1 FROM nars WHERE nar_hash = $1 FOR KEY SHARE", &[&&n.nar_hash[..]])?.is_some();
    if !known_nar && !uploaded {
        return Err(IndexError::NarGone(p.store_path.clone()).into());
    }
    let missing: Vec<String> = others.iter().filter(|r| !present.contains(r.as_str())).map(|r| (*r).clone()).collect();
    if !missing.is_empty() {
        return Err(IndexError::MissingReferences { path: p.store_path.clone(), missing }.into());
    }
    let existing = if present.contains(&p.store_path) {
        db.opt("SELECT id, adopted FROM paths WHERE cache = $1 AND hash_part = $2", &[&cache_id, &hash_part])?
            .map(|r| Ok::<_, Fail>((get::<i64>(&r, 0)?, get::<bool>(&r, 1)?)))
            .transpose()?
    } else {
        None
    };
    let added = match existing {
        Some((_, false)) => return Ok(Added::Present),
        Some((id, true)) => {
            // The totals trigger takes the adopted row off.
            db.exec("DELETE FROM paths WHERE id = $1", &[&id])?;
            Added::Replaced
        }
        None => Added::New,
    };
    if !known_nar {
        // Uploaded here, and not known a moment ago. Another push may have added it since: the
        // (no-op) update locks that row as `known_nar` would have, so a collection cannot
        // forget it before this path is committed. DO NOTHING would leave it unlocked: a
        // collection removing the other push's path would take the NAR too, and the path's
        // insert below would fail on the foreign key instead of adding the path.
        let (nar_size, file_size) = (i64_of(n.nar_size)?, i64_of(n.file_size)?);
        db.exec(
            "INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (nar_hash) DO UPDATE SET stored_at = nars.stored_at",
            &[&&n.nar_hash[..], &nar_size, &&n.file_hash[..], &file_size, &n.compression, &now],
        )?;
    }
    // Two servers adding the same path to one cache: the second waits for the first's commit
    // and then finds its row (the first upload stays, as in SQLite).
    let inserted = db.opt(
        "INSERT INTO paths (cache, hash_part, store_path, nar_hash, deriver, ca, sigs, added_at, last_access)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (cache, hash_part) DO NOTHING RETURNING id",
        &[
            &cache_id,
            &hash_part,
            &p.store_path,
            &&n.nar_hash[..],
            &p.deriver,
            &p.ca,
            &super::sigs_column(&p.sigs),
            &now,
        ],
    )?;
    let Some(r) = inserted else { return Ok(Added::Present) };
    let id: i64 = get(&r, 0)?;
    db.exec(
        "INSERT INTO refs (path, reference) SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
        &[&id, &p.references],
    )?;
    Ok(added)
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
