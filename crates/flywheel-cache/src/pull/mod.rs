//! `flywheel cache pull --from URL PATH...`: realises paths from a binary cache (a flywheel
//! server or any Nix HTTP cache) into the local store, faster than Nix's own substitution.
//!
//! 1. The closure is walked with many narinfo requests in flight; paths the store already
//!    holds are not asked for, nor their references. Every narinfo must carry a signature by
//!    a trusted key, for the path it claims to be.
//! 2. NARs download in parallel, largest first; each is decompressed and hashed as it arrives
//!    and goes straight into the store under Nix's lock for that path (or, when the store is
//!    not ours to write, into a spool file). Nothing beyond the signed NarSize is written, and
//!    nothing much beyond it read. A NAR whose hash or size differs from its narinfo's, or
//!    that does not decode, is removed and refused at once (the cache would send it again); a
//!    transfer that broke off is tried again.
//!
//! Every reply is bounded before it is read (narinfos, nix-cache-info, errors). The token goes
//! only to the cache's own origin: a narinfo whose `URL:` names another origin (the URL is not
//! signed) is fetched from there without it, and only over http or https; its NAR is checked
//! against the signed NarHash like any other.
//! 3. Everything is registered at once (`nix-store --load-db`), or imported references first
//!    (`nix-store --import`). A path is registered only when its whole closure is: a failed
//!    download never leaves a valid path with a missing reference.

mod fetch;
mod local;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use flywheel_nix::narinfo::{Compression, NarInfo, TrustedPublicKey};
use flywheel_nix::store_db::{references_first, PathInfo};
use flywheel_nix::{NixHash, StoreDir, StorePath};
use tokio::task::JoinSet;

pub use local::{Install, LocalStore, PathLock};

use crate::http::{body_limited, check, with_retries, with_token, Failure};
use crate::CacheError;

#[derive(Clone)]
pub struct PullOptions {
    /// NAR downloads at once; 0 picks 8.
    pub jobs: usize,
    /// A narinfo is accepted only with a valid signature by one of these.
    pub trusted_keys: Vec<TrustedPublicKey>,
    /// Bearer token, for private caches.
    pub token: Option<String>,
    /// Attempts per request for failures worth retrying.
    pub attempts: u32,
    pub install: Install,
    /// Sync the store's filesystem before registering (direct): after a power cut, a registered
    /// path is whole. Nix's own substitution does not; an ephemeral CI runner need not either.
    pub sync: bool,
    pub progress: Option<crate::progress::ProgressFn>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PullReport {
    /// Paths in the closure of what was asked for, as far as it was walked (the references of
    /// paths already in the store are not).
    pub closure: usize,
    /// Of those, already in the store.
    pub present: usize,
    pub pulled: usize,
    pub nar_bytes: u64,
    /// Bytes downloaded (compressed).
    pub file_bytes: u64,
    pub seconds: f64,
    /// `direct` or `import`.
    pub install: String,
    pub failed: Vec<crate::PushFailure>,
}

/// A path to fetch: what its narinfo says.
#[derive(Clone)]
struct Wanted {
    info: PathInfo,
    url: String,
    compression: Compression,
    /// Whether `url` is on the cache's own origin (then the token goes with it).
    own_origin: bool,
}

/// The largest narinfo read: thousands of references fit.
const MAX_NARINFO: usize = 4 << 20;
/// The largest nix-cache-info read.
const MAX_CACHE_INFO: usize = 64 << 10;

/// The origin (scheme, host, port) of an http(s) URL.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let u = reqwest::Url::parse(url).ok()?;
    if !matches!(u.scheme(), "http" | "https") {
        return None;
    }
    Some((u.scheme().to_string(), u.host_str()?.to_ascii_lowercase(), u.port_or_known_default()?))
}

/// Pulls the closures of `roots` from the cache at `base` (`http://HOST:PORT/CACHE`) into `store`.
pub fn pull(store: &LocalStore, roots: &[StorePath], base: &str, opts: &PullOptions) -> Result<PullReport, CacheError> {
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CacheError::Other(format!("starting the runtime: {e}")))?;
    let mut report = runtime.block_on(pull_async(store, roots, base.trim_end_matches('/'), opts))?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

struct Remote {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    store_dir: StoreDir,
    keys: Vec<TrustedPublicKey>,
    attempts: u32,
}

impl Remote {
    async fn get(&self, url: &str) -> Result<reqwest::Response, Failure> {
        let resp = with_token(self.http.get(url), self.token.as_deref())
            .send()
            .await
            .map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
        check(resp, url).await
    }

    async fn text(&self, url: &str, limit: usize) -> Result<Vec<u8>, String> {
        with_retries(self.attempts, || async {
            let resp = self.get(url).await?;
            body_limited(resp, limit, url).await
        })
        .await
    }

    fn token_for(&self, w: &Wanted) -> Option<&str> {
        if w.own_origin {
            self.token.as_deref()
        } else {
            None
        }
    }

    /// The narinfo of `path`, checked: it describes `path`, and a trusted key signed it.
    async fn narinfo(&self, path: &StorePath) -> Result<Wanted, String> {
        self.narinfo_if_any(path)
            .await?
            .ok_or_else(|| format!("{} is not in the cache {}", self.store_dir.render_path(path), self.base))
    }

    /// The same, or None when the cache does not have `path`.
    async fn narinfo_if_any(&self, path: &StorePath) -> Result<Option<Wanted>, String> {
        let shown = self.store_dir.render_path(path);
        let url = format!("{}/{}.narinfo", self.base, &path.to_basename()[..32]);
        let body = match self.text(&url, MAX_NARINFO).await {
            Ok(body) => body,
            Err(e) if e.contains("HTTP 404") => return Ok(None),
            Err(e) => return Err(e),
        };
        let info = NarInfo::parse_in(&self.store_dir, &body).map_err(|e| format!("{url}: not a valid narinfo: {e}"))?;
        if info.store_path() != path {
            return Err(format!(
                "{url}: the narinfo is for {}, not {shown}",
                self.store_dir.render_path(info.store_path())
            ));
        }
        if !info.has_valid_signature(&self.store_dir, &self.keys) {
            let signers: Vec<&str> = info.signatures().iter().map(|s| s.key_name.as_str()).collect();
            let trusted: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
            return Err(format!(
                "{shown}: no valid signature by a trusted key (signed by: {}; trusted: {})",
                if signers.is_empty() { "nobody".to_string() } else { signers.join(", ") },
                trusted.join(", ")
            ));
        }
        let (url, own_origin) = if info.url().contains("://") {
            let theirs = origin(info.url())
                .ok_or_else(|| format!("{shown}: its NAR's URL {:?} is not an http or https URL", info.url()))?;
            (info.url().to_string(), origin(&self.base).is_some_and(|ours| ours == theirs))
        } else {
            (format!("{}/{}", self.base, info.url()), true)
        };
        Ok(Some(Wanted {
            info: PathInfo {
                path: path.clone(),
                nar_hash: info.nar_hash().clone(),
                nar_size: info.nar_size(),
                references: info.references().clone(),
                deriver: info.deriver().cloned(),
                registration_time: 0,
                ultimate: false,
                signatures: info.signatures().to_vec(),
                ca: info.content_address().cloned(),
            },
            url,
            compression: info.compression().clone(),
            own_origin,
        }))
    }
}

/// What [`check_path`] measured of one path it fetched and checked.
#[derive(Clone, Debug)]
pub struct Checked {
    pub narinfo_seconds: f64,
    pub download_seconds: f64,
    pub nar_size: u64,
    /// Bytes downloaded (compressed).
    pub file_bytes: u64,
}

/// Fetches one path from the cache at `base` and checks it as [`pull`] does (its narinfo is for
/// `path` and signed by one of `keys`; its NAR, decompressed and hashed as it streams, has the
/// narinfo's hash and size) without installing anything. None when the cache lacks the path.
/// What the canary's cache step proves a cache with.
pub async fn check_path(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    store_dir: &StoreDir,
    keys: &[TrustedPublicKey],
    path: &StorePath,
) -> Result<Option<Checked>, String> {
    let remote = Remote {
        http: http.clone(),
        base: base.trim_end_matches('/').to_string(),
        token: token.map(str::to_string),
        store_dir: store_dir.clone(),
        keys: keys.to_vec(),
        attempts: 1,
    };
    let started = Instant::now();
    let Some(w) = remote.narinfo_if_any(path).await? else { return Ok(None) };
    let narinfo_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let expect = fetch::Expect {
        compression: w.compression.clone(),
        nar_size: w.info.nar_size,
        decoder_memory: crate::ingest::DEFAULT_DECODER_MEMORY,
    };
    let got = fetch::download(http, remote.token_for(&w), &w.url, &expect, |_| Ok(())).await.map_err(|f| f.message)?;
    same_nar(&w, &got.nar)?;
    Ok(Some(Checked {
        narinfo_seconds,
        download_seconds: started.elapsed().as_secs_f64(),
        nar_size: got.nar.size,
        file_bytes: got.file_bytes,
    }))
}

/// Whether a download is the NAR its narinfo describes.
fn same_nar(w: &Wanted, got: &flywheel_nix::nar::Digested) -> Result<(), String> {
    if w.info.nar_hash == got.hash() && w.info.nar_size == got.size {
        return Ok(());
    }
    Err(format!(
        "{}: NAR hash mismatch: the narinfo says {} ({} bytes), the download gives {} ({} bytes)",
        w.url,
        w.info.nar_hash.to_nix_nixbase32_string(),
        w.info.nar_size,
        got.to_nix32(),
        got.size
    ))
}

async fn pull_async(
    store: &LocalStore,
    roots: &[StorePath],
    base: &str,
    opts: &PullOptions,
) -> Result<PullReport, CacheError> {
    let jobs = if opts.jobs == 0 { 8 } else { opts.jobs };
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        // A server that stops sending is given up on (and the transfer retried), not waited for.
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .map_err(|e| CacheError::Other(format!("HTTP client: {e}")))?;
    let remote = Arc::new(Remote {
        http,
        base: base.to_string(),
        token: opts.token.clone(),
        store_dir: store.store_dir.clone(),
        keys: opts.trusted_keys.clone(),
        attempts: opts.attempts,
    });
    if opts.trusted_keys.is_empty() {
        return Err(CacheError::Other("no trusted keys: give --trusted-key (the cache's public key)".into()));
    }
    let info = remote.text(&format!("{base}/nix-cache-info"), MAX_CACHE_INFO).await.map_err(CacheError::Other)?;
    let info = String::from_utf8_lossy(&info);
    if let Some(dir) = info.lines().find_map(|l| l.strip_prefix("StoreDir:")) {
        if dir.trim() != store.store_dir.as_str() {
            return Err(CacheError::StoreDirMismatch {
                cache: dir.trim().to_string(),
                ours: store.store_dir.to_string(),
            });
        }
    }

    // 1. The closure, minus what the store has.
    let db = store.db()?;
    let mut report = PullReport::default();
    let mut seen: HashSet<StorePath> = HashSet::new();
    let mut queue: Vec<StorePath> = roots.to_vec();
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut walking = JoinSet::new();
    let lookups = Arc::new(tokio::sync::Semaphore::new(32));
    loop {
        for path in queue.drain(..) {
            if !seen.insert(path.clone()) {
                continue;
            }
            report.closure += 1;
            if let Some(db) = &db {
                if db.is_valid(&path)? {
                    report.present += 1;
                    continue;
                }
            }
            let (remote, lookups) = (remote.clone(), lookups.clone());
            walking.spawn(async move {
                let _permit = lookups.acquire_owned().await;
                remote.narinfo(&path).await
            });
        }
        let Some(joined) = walking.join_next().await else { break };
        let w = joined.map_err(|e| CacheError::Other(e.to_string()))?.map_err(CacheError::Other)?;
        queue.extend(w.info.references.iter().filter(|r| **r != w.info.path).cloned());
        wanted.push(w);
    }
    drop(db);
    let install = store.resolve(opts.install);
    report.install = match install {
        Install::Import => "import",
        _ => "direct",
    }
    .to_string();
    tracing::info!(
        "{} paths in the closure, {} already in the store, {} to pull ({} of NAR; installing: {})",
        report.closure,
        report.present,
        wanted.len(),
        flywheel_nix::human_bytes(wanted.iter().map(|w| w.info.nar_size).sum()),
        report.install
    );
    if wanted.is_empty() {
        return Ok(report);
    }
    if !store.real_store.exists() && store.root != std::path::Path::new("/") {
        std::fs::create_dir_all(&store.real_store)
            .map_err(|e| CacheError::Io { path: store.real_store.clone(), source: e })?;
    }

    // 2. The NARs, largest first.
    let spool = match install {
        Install::Import => Some(
            tempfile::Builder::new()
                .prefix("flywheel-pull-")
                .tempdir()
                .map_err(|e| CacheError::Io { path: std::env::temp_dir(), source: e })?,
        ),
        _ => None,
    };
    let spool_dir = spool.as_ref().map(|d| d.path().to_path_buf());
    // Direct: every path's lock first, in path order as Nix takes several at once, so a
    // concurrent pull or build of an overlapping closure waits instead of deadlocking.
    let (locks, already_valid) = match install {
        Install::Direct => {
            let (store, mut paths) = (store.clone(), wanted.iter().map(|w| w.info.path.clone()).collect::<Vec<_>>());
            paths.sort_by_key(|p| p.to_basename());
            tokio::task::spawn_blocking(move || lock_all(&store, &paths))
                .await
                .map_err(|e| CacheError::Other(e.to_string()))??
        }
        _ => (Vec::new(), HashSet::new()),
    };
    let mut order: Vec<Wanted> = wanted.iter().filter(|w| !already_valid.contains(&w.info.path)).cloned().collect();
    order.sort_by_key(|w| std::cmp::Reverse(w.info.nar_size));
    let total = order.len();
    let tracker =
        crate::progress::Tracker::new(opts.progress.clone(), total, order.iter().map(|w| w.info.nar_size).sum());
    let downloads = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut tasks = JoinSet::new();
    // All spawned at once, so completions are seen as they happen; the semaphore (first come,
    // first served) keeps `jobs` running, largest first.
    for w in order {
        let (downloads, remote) = (downloads.clone(), remote.clone());
        let (target, direct) = match &spool_dir {
            Some(dir) => (dir.join(w.info.path.to_basename()), false),
            None => (store.target(&w.info.path), true),
        };
        tasks.spawn(async move {
            let result = match downloads.acquire_owned().await {
                Ok(_permit) => fetch_one(&remote, &w, target, direct).await,
                Err(_) => Err("the download pool closed".to_string()),
            };
            (w.info.path, w.info.nar_size, result)
        });
    }
    let mut fetched: HashMap<StorePath, u64> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (path, nar_size, result) = joined.map_err(|e| CacheError::Other(format!("a download task failed: {e}")))?;
        let done = tracker.path_done(nar_size);
        let shown = store.store_dir.render_path(&path);
        match result {
            Ok(file_bytes) => {
                tracing::info!("[{done}/{total}] {shown} ({} downloaded)", flywheel_nix::human_bytes(file_bytes));
                fetched.insert(path, file_bytes);
            }
            Err(error) => {
                tracing::warn!("[{done}/{total}] {shown}: {error}");
                report.failed.push(crate::PushFailure { path: shown, error });
            }
        }
    }

    // 3. Registered or imported: only paths whose whole closure arrived.
    let ordered = references_first(wanted.into_iter().map(|w| w.info).collect(), &store.store_dir);
    let pulled: HashSet<&StorePath> = ordered.iter().map(|i| &i.path).collect();
    let mut complete: HashSet<&StorePath> = HashSet::new();
    let mut ready: Vec<&PathInfo> = Vec::new();
    for info in &ordered {
        if already_valid.contains(&info.path) {
            complete.insert(&info.path);
            continue;
        }
        if !fetched.contains_key(&info.path) {
            continue;
        }
        // A reference outside this pull was already valid when the walk saw it.
        if info.references.iter().all(|r| *r == info.path || !pulled.contains(r) || complete.contains(r)) {
            complete.insert(&info.path);
            ready.push(info);
        } else {
            let shown = store.store_dir.render_path(&info.path);
            report
                .failed
                .push(crate::PushFailure { path: shown, error: "not registered: a path it refers to failed".into() });
        }
    }
    let registered = match &spool_dir {
        None => store.register(&ready, opts.sync),
        Some(dir) => store.import(&ready, |info| std::fs::File::open(dir.join(info.path.to_basename()))),
    };
    if spool_dir.is_none() {
        // Restored trees that were not registered go, while their locks are still held.
        let kept: HashSet<&StorePath> =
            if registered.is_ok() { ready.iter().map(|i| &i.path).collect() } else { HashSet::new() };
        for path in fetched.keys() {
            if !kept.contains(path) {
                if let Err(e) = flywheel_nix::nar::remove_tree(&store.target(path)) {
                    tracing::warn!("removing {}: {e}", store.target(path).display());
                }
            }
        }
    }
    registered?;
    for info in &ready {
        report.pulled += 1;
        report.nar_bytes += info.nar_size;
        report.file_bytes += fetched.get(&info.path).copied().unwrap_or(0);
    }
    drop(locks);
    Ok(report)
}

/// Locks `paths` (in the order given) and clears the way for each: a tree already at a path is
/// either valid (added since the walk: not pulled again) or left by a pull or build that
/// stopped before registering it (removed). Raises the open-file limit to hold the locks.
fn lock_all(store: &LocalStore, paths: &[StorePath]) -> Result<(Vec<PathLock>, HashSet<StorePath>), CacheError> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
    let mut locks = Vec::with_capacity(paths.len());
    let mut valid = HashSet::new();
    let mut db = None;
    for path in paths {
        let target = store.target(path);
        let lock = PathLock::acquire(&target).map_err(|e| CacheError::Io { path: target.clone(), source: e })?;
        if target.symlink_metadata().is_ok() {
            if db.is_none() {
                db = store.db()?;
            }
            if let Some(db) = &db {
                if db.is_valid(path)? {
                    valid.insert(path.clone());
                    locks.push(lock);
                    continue;
                }
            }
            flywheel_nix::nar::remove_tree(&target).map_err(|e| CacheError::Io { path: target.clone(), source: e })?;
        }
        locks.push(lock);
    }
    Ok((locks, valid))
}

/// Downloads one path's NAR into the store (`direct`, the path's lock held by the caller) or a
/// spool file, checked against its narinfo; returns the bytes downloaded.
async fn fetch_one(remote: &Arc<Remote>, w: &Wanted, target: std::path::PathBuf, direct: bool) -> Result<u64, String> {
    if !matches!(w.info.nar_hash, NixHash::Sha256(_)) {
        return Err("NarHash is not sha256".into());
    }
    let expect = fetch::Expect {
        compression: w.compression.clone(),
        nar_size: w.info.nar_size,
        decoder_memory: crate::ingest::DEFAULT_DECODER_MEMORY,
    };
    let result = with_retries(remote.attempts, || {
        let target = target.clone();
        let expect = expect.clone();
        async move {
            let t = target.clone();
            let sink = move |nar: &mut dyn std::io::Read| -> Result<(), String> {
                if direct {
                    flywheel_nix::nar::restore_canonical(nar, &t).map(|_| ()).map_err(|e| e.to_string())
                } else {
                    let mut file = std::fs::File::create(&t).map_err(|e| format!("{}: {e}", t.display()))?;
                    std::io::copy(nar, &mut file).map(|_| ()).map_err(|e| format!("{}: {e}", t.display()))
                }
            };
            let got = fetch::download(&remote.http, remote.token_for(w), &w.url, &expect, sink).await;
            let got = match got {
                Ok(g) => g,
                Err(e) => {
                    let _ = flywheel_nix::nar::remove_tree(&target);
                    return Err(e);
                }
            };
            if let Err(message) = same_nar(w, &got.nar) {
                // The cache would send the same bytes again.
                let _ = flywheel_nix::nar::remove_tree(&target);
                return Err(Failure { message, retry: false });
            }
            Ok(got.file_bytes)
        }
    })
    .await?;
    Ok(result)
}
