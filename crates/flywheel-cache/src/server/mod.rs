//! `flywheel cache serve`: the Nix binary cache protocol over HTTP, for several named caches
//! (`/main`, `/pr`, ...) from one data directory. Reads follow each cache's visibility; writes
//! (`nix copy --to http://HOST/CACHE`) need a write token and are verified before they become
//! visible (docs/cache-server.md).

mod auth;
mod body;
pub mod inert;
mod listener;
mod mapped;
mod metrics;
pub mod names;
pub mod narinfo;
mod object;
mod rendered;
mod routes;
mod status_routes;
mod watchdog;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flywheel_nix::keys::SecretKey;
use flywheel_nix::narinfo::TrustedPublicKey;
use flywheel_nix::StoreDir;

use crate::config::CacheConfig;
use crate::data_dir::{DataDir, DataError};
use crate::index::{CacheRecord, Index, IndexError};
use crate::storage::NarStorage;

/// The port `flywheel cache serve` listens on when not told (on 127.0.0.1).
pub const DEFAULT_PORT: u16 = 5480;

#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    /// The largest NAR upload accepted, compressed as sent.
    pub max_nar_bytes: u64,
    /// What one client or upload may cost.
    pub limits: Limits,
    /// The largest narinfo accepted.
    pub max_narinfo_bytes: usize,
    /// zstd level of the stored NARs.
    pub zstd_level: i32,
    /// Uploads decompressed, checked and recompressed at once (the rest wait).
    pub ingest_jobs: usize,
    /// The largest `.ls` listing or build log accepted.
    pub max_file_bytes: usize,
    /// Requests one client address may have in progress at once (a response counts until its
    /// body is sent); more wait their turn, up to `CLIENT_WAIT`, then get 503.
    pub max_requests_per_client: usize,
    /// Caches the config file declares: created when missing, their settings applied at start.
    pub caches: BTreeMap<String, CacheConfig>,
    /// How often to collect garbage, with each cache's policy from `caches` (none when unset).
    pub gc_interval: Option<std::time::Duration>,
    /// How long the status page's history (canary runs) is kept.
    pub history: crate::gc::HistoryRetention,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            max_nar_bytes: 64 << 30,
            limits: Limits::default(),
            max_narinfo_bytes: 1 << 20,
            zstd_level: 3,
            ingest_jobs: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            max_file_bytes: 16 << 20,
            max_requests_per_client: 64,
            caches: BTreeMap::new(),
            gc_interval: None,
            history: crate::gc::HistoryRetention::default(),
        }
    }
}

/// What one client, connection or upload may cost the server (docs/security.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest NAR accepted, decompressed: no upload is decompressed beyond it.
    pub max_nar_size: u64,
    /// Memory one upload's decoder may use (xz's dictionary, zstd's window).
    pub decoder_memory: u64,
    /// How long checking one upload may take once received.
    pub ingest_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// A connection on which no byte moves either way for this long is closed: a body that
    /// stalls, a client that stops reading, an idle keep-alive.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the kernel's listen queue.
    pub max_connections: usize,
    /// Connections one client address may have open; more are closed as they come.
    pub max_connections_per_client: usize,
    /// Lanes with canary runs on the status page; a run for a new lane beyond it is refused.
    pub max_lanes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nar_size: 64 << 30,
            decoder_memory: crate::ingest::DEFAULT_DECODER_MEMORY,
            ingest_timeout: Duration::from_secs(30 * 60),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_client: 128,
            max_lanes: 32,
        }
    }
}

impl Limits {
    /// The config file's settings over the defaults.
    pub fn from_config(c: &crate::config::Config) -> Limits {
        let d = Limits::default();
        Limits {
            max_nar_size: c.max_nar_size.map_or(d.max_nar_size, |s| s.bytes()),
            decoder_memory: c.decoder_memory.map_or(d.decoder_memory, |s| s.bytes()),
            ingest_timeout: c.ingest_timeout.map_or(d.ingest_timeout, |t| t.0),
            header_timeout: c.header_timeout.map_or(d.header_timeout, |t| t.0),
            idle_timeout: c.idle_timeout.map_or(d.idle_timeout, |t| t.0),
            max_connections: c.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: c.max_connections_per_client.unwrap_or(d.max_connections_per_client),
            max_lanes: c.max_lanes.unwrap_or(d.max_lanes),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listening on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("cache {cache}: {message}")]
    Config { cache: String, message: String },
}

/// A cache with its parsed signing key.
pub(crate) struct Cache {
    pub record: CacheRecord,
    /// The name, shared: what per-request records (accesses) key on without a copy.
    pub name: Arc<str>,
    pub key: SecretKey,
    /// Paths signed by one of these are declined (the config's `upstream-keys`).
    pub upstream: Vec<TrustedPublicKey>,
    /// Counts for `flywheel cache stats` not yet added to the index: atomics, so a request
    /// pays no lock and no allocation for them.
    pub counters: CacheCounters,
}

#[derive(Default)]
pub(crate) struct CacheCounters {
    pub narinfo_hits: AtomicI64,
    pub narinfo_misses: AtomicI64,
    pub nar_downloads: AtomicI64,
    /// Bytes served, by NAR age class (`stats::SERVED`).
    pub served: [AtomicI64; 6],
}

impl CacheCounters {
    /// What was counted since the last call, as index counter deltas, zeroing them.
    fn take(&self, cache: &str) -> Vec<(String, String, i64)> {
        let named = [
            ("narinfo_hits", &self.narinfo_hits),
            ("narinfo_misses", &self.narinfo_misses),
            ("nar_downloads", &self.nar_downloads),
        ];
        named
            .into_iter()
            .chain(crate::stats::SERVED.into_iter().zip(&self.served))
            .map(|(key, v)| (cache.to_string(), key.to_string(), v.swap(0, Ordering::Relaxed)))
            .filter(|(_, _, v)| *v != 0)
            .collect()
    }
}

pub(crate) struct State {
    pub data: DataDir,
    /// A second connection to the index for the background writes (reads, counters), so a
    /// request never waits for their commit.
    pub background: DataDir,
    pub storage: std::sync::Arc<dyn NarStorage>,
    /// This server's folder for uploads being received and checked.
    pub scratch: crate::data_dir::Scratch,
    pub store_dir: StoreDir,
    pub opts: ServerOptions,
    pub caches: RwLock<HashMap<String, Arc<Cache>>>,
    pub ingest: tokio::sync::Semaphore,
    pub metrics: metrics::Metrics,
    /// narinfo accesses not yet written to the index ((cache, hash part) -> latest time):
    /// written in one transaction every second, so a read costs no disk write.
    pub accessed: std::sync::Mutex<HashMap<(Arc<str>, String), i64>>,
    /// Signed narinfos as served, by (cache, hash part).
    pub rendered: rendered::Rendered,
    /// The status as last gathered, and when: served again for a moment.
    pub status: std::sync::Mutex<Option<(std::time::Instant, Arc<crate::status::Status>)>>,
    /// Each client address's share of `max_requests_per_client`.
    pub clients: std::sync::Mutex<HashMap<std::net::IpAddr, Arc<tokio::sync::Semaphore>>>,
}

impl State {
    pub fn index(&self) -> &dyn Index {
        self.data.index()
    }

    /// The cache named `name` if it was read before (no index query).
    pub fn known_cache(&self, name: &str) -> Option<Arc<Cache>> {
        self.caches.read().ok().and_then(|m| m.get(name).cloned())
    }

    /// The cache named `name`, read from the index once and kept.
    pub fn cache(&self, name: &str) -> Result<Option<Arc<Cache>>, IndexError> {
        if let Some(c) = self.known_cache(name) {
            return Ok(Some(c));
        }
        let Some(record) = self.index().cache(name)? else { return Ok(None) };
        let key = SecretKey::parse(&record.secret_key)
            .map_err(|e| IndexError::Db(format!("cache {name}: its signing key: {e}")))?;
        // Checked when the config was loaded.
        let upstream = self.opts.caches.get(name).and_then(|c| c.upstream().ok()).unwrap_or_default();
        let shared: Arc<str> = Arc::from(record.name.as_str());
        let cache = Arc::new(Cache { record, name: shared, key, upstream, counters: CacheCounters::default() });
        if let Ok(mut m) = self.caches.write() {
            m.insert(name.to_string(), cache.clone());
        }
        Ok(Some(cache))
    }
}

/// A running server's address and caches, for the startup message.
pub struct Listening {
    pub addr: SocketAddr,
    pub caches: Vec<CacheRecord>,
}

/// Serves `data` until SIGINT or SIGTERM. With no cache in the data directory yet, creates a
/// public `main`. `ready` is called once the socket is bound (with the port, when the address
/// asked for port 0).
pub async fn serve(data: DataDir, opts: ServerOptions, ready: impl FnOnce(&Listening)) -> Result<(), ServerError> {
    // The index and the storage block (a PostgreSQL client runs its own runtime, which may
    // not start on an async thread): set up, and later dropped, on a blocking thread.
    let configured = opts.caches.clone();
    let setup = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        prepare(&data, &configured)?;
        let (scratch, cleaned) = data.scratch()?;
        if cleaned > 0 {
            tracing::info!("removed {cleaned} unfinished uploads from an earlier run");
        }
        let caches = data.index().caches()?;
        let background = data.another()?;
        Ok((data, scratch, caches, background))
    });
    let (data, scratch, caches, background) =
        setup.await.map_err(|e| ServerError::Serve(std::io::Error::other(e.to_string())))??;
    let bound = match tokio::net::TcpListener::bind(opts.listen).await {
        Ok(l) => l.local_addr().map(|addr| (l, addr)).map_err(ServerError::Serve),
        Err(e) => Err(ServerError::Bind { addr: opts.listen, source: e }),
    };
    let (listener, addr) = match bound {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || drop((data, background, scratch))).await;
            return Err(e);
        }
    };
    let storage = data.storage();
    let state = Arc::new(State {
        background,
        storage,
        scratch,
        store_dir: flywheel_nix::store_path::default_store_dir(),
        ingest: tokio::sync::Semaphore::new(opts.ingest_jobs.max(1)),
        opts,
        caches: RwLock::new(HashMap::new()),
        metrics: metrics::Metrics::default(),
        accessed: std::sync::Mutex::new(HashMap::new()),
        clients: std::sync::Mutex::new(HashMap::new()),
        status: std::sync::Mutex::new(None),
        rendered: rendered::Rendered::new(RENDERED_NARINFOS),
        data,
    });
    ready(&Listening { addr, caches });
    let flusher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ACCESS_FLUSH);
            loop {
                tick.tick().await;
                flush_accesses(&state).await;
            }
        })
    };
    let watcher = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INDEX_POLL);
            let mut seen: Option<i64> = None;
            loop {
                tick.tick().await;
                let s = state.clone();
                let after = seen;
                let asked = tokio::task::spawn_blocking(move || s.index().removed_since(after)).await;
                let Ok(Ok(removals)) = asked else { continue };
                if seen.is_some() {
                    if removals.complete {
                        if !removals.paths.is_empty() {
                            state.rendered.forget(&removals.paths);
                        }
                    } else {
                        state.rendered.clear();
                    }
                }
                seen = Some(removals.last);
            }
        })
    };
    let collector = state.opts.gc_interval.map(|every| {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                collect_garbage(&state).await;
            }
        })
    });
    let app = routes::router(state.clone());
    let served = listener::serve(listener, app, state.clone(), shutdown()).await.map_err(ServerError::Serve);
    flusher.abort();
    watcher.abort();
    let _ = flusher.await;
    let _ = watcher.await;
    if let Some(c) = collector {
        c.abort();
        let _ = c.await;
    }
    flush_accesses(&state).await;
    // The last reference to the index goes on a blocking thread (see above).
    let _ = tokio::task::spawn_blocking(move || drop(state)).await;
    served
}

/// Creates the caches the config declares (and `main` when there is none), and applies their
/// settings.
fn prepare(data: &DataDir, configured: &BTreeMap<String, CacheConfig>) -> Result<(), ServerError> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    for (name, c) in configured {
        c.upstream().map_err(|message| ServerError::Config { cache: name.clone(), message })?;
        if data.index().cache(name)?.is_some() {
            data.index().configure_cache(name, c.visibility, c.priority)?;
        } else {
            match data.create_cache(name, c.visibility, c.priority, None, now) {
                Ok(_) => {}
                // Another server starting at the same time made it first.
                Err(DataError::Index(IndexError::CacheExists(_))) => {
                    data.index().configure_cache(name, c.visibility, c.priority)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    if data.index().caches()?.is_empty() {
        match data.create_cache("main", crate::index::Visibility::Public, crate::data_dir::DEFAULT_PRIORITY, None, now)
        {
            Ok(_) | Err(DataError::Index(IndexError::CacheExists(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// How often the server looks for removals GC made (in this process or another): well under
/// [`crate::gc::SETTLE`], so a narinfo kept in memory is dropped before its NAR is unlinked.
const INDEX_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// One GC run with each cache's policy from the config, on its own index connection so
/// serving never waits for it.
async fn collect_garbage(state: &Arc<State>) {
    flush_accesses(state).await;
    let s = state.clone();
    let run = tokio::task::spawn_blocking(move || -> Result<crate::gc::GcReport, String> {
        let data = s.data.another().map_err(|e| e.to_string())?;
        let caches = data
            .index()
            .caches()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|c| {
                let policy = s.opts.caches.get(&c.name).map(CacheConfig::policy).unwrap_or_default();
                (c.name, policy)
            })
            .collect();
        let in_use = |cache: &str, hash: &str| {
            s.accessed.lock().map(|m| m.contains_key(&(Arc::from(cache), hash.to_string()))).unwrap_or(true)
        };
        let log = |line: &str| tracing::info!("gc: {line}");
        let opts = crate::gc::GcOptions {
            caches,
            dry_run: false,
            in_use: &in_use,
            log: &log,
            batch: 0,
            history: s.opts.history,
        };
        crate::gc::collect(data.index(), s.storage.as_ref(), &opts).map_err(|e| e.to_string())
    })
    .await;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &state.metrics;
    m.gc_runs.fetch_add(1, Relaxed);
    match run.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(r) => {
            let paths: usize = r.caches.iter().flat_map(|c| c.removed.values()).map(|g| g.paths.len()).sum();
            m.gc_removed_paths.fetch_add(paths as u64, Relaxed);
            m.gc_unlinked_nars.fetch_add(r.nars.files + r.orphans.files, Relaxed);
            m.gc_freed_bytes.fetch_add(r.nars.bytes + r.orphans.bytes, Relaxed);
            m.gc_last_millis.store((r.seconds * 1000.0) as u64, Relaxed);
            tracing::info!(
                "gc: removed {paths} paths, unlinked {} NARs ({} bytes) and {} orphans in {:.1}s",
                r.nars.files,
                r.nars.bytes,
                r.orphans.files,
                r.seconds
            );
        }
        Err(e) => {
            m.gc_failures.fetch_add(1, Relaxed);
            tracing::warn!("gc: {e}");
        }
    }
}

/// Signed narinfos kept in memory (about 1 KiB each).
const RENDERED_NARINFOS: usize = 65_536;

/// How often recorded narinfo accesses reach the index.
const ACCESS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

async fn flush_accesses(state: &Arc<State>) {
    let batch: Vec<crate::index::Access> = match state.accessed.lock() {
        Ok(mut m) => m
            .drain()
            .map(|((cache, hash_part), at)| crate::index::Access { cache: cache.to_string(), hash_part, at })
            .collect(),
        Err(_) => return,
    };
    let counters: Vec<(String, String, i64)> = match state.caches.read() {
        Ok(caches) => caches.iter().flat_map(|(name, c)| c.counters.take(name)).collect(),
        Err(_) => Vec::new(),
    };
    if batch.is_empty() && counters.is_empty() {
        return;
    }
    let s = state.clone();
    match tokio::task::spawn_blocking(move || {
        s.background.index().touch(&batch)?;
        s.background.index().add_stats(&counters)
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("recording narinfo accesses: {e}"),
        Err(e) => tracing::warn!("recording narinfo accesses: {e}"),
    }
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down: finishing the requests in flight");
}
