//! `flywheel cache push --to http://HOST:PORT/CACHE`: the CI client's upload to a flywheel
//! server. One request asks what the cache lacks; NARs are then dumped from the store,
//! checked against the store's NarHash and zstd-compressed while they stream into the request
//! body (no temporary files; memory bounded by a few 1 MiB chunks per upload), several at once,
//! largest first, with retries; narinfos follow in dependency order, each only once its NAR
//! and references are in. The server checks everything again and signs with the cache's key.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use flywheel_nix::nar::write_nar_digested;
use flywheel_nix::narinfo::{Compression, NarInfo};
use flywheel_nix::store_db::{references_first, PathInfo, StoreDb};
use flywheel_nix::{NixHash, StoreDir, StorePath};
use tokio::sync::mpsc;

use crate::http::{check, with_retries, with_token, Failure};
use crate::push::{PushFailure, PushReport};
use crate::CacheError;

#[derive(Clone)]
pub struct HttpPushOptions {
    /// Uploads at once (each one dumps and compresses a path); 0 means one per CPU.
    pub jobs: usize,
    pub zstd_level: i32,
    /// Where the store's files are on disk.
    pub real_store: PathBuf,
    pub token: Option<String>,
    /// Attempts per request for failures worth retrying (connection errors, 5xx, 429).
    pub attempts: u32,
    pub progress: Option<crate::progress::ProgressFn>,
}

const CHUNK: usize = 1 << 20;

/// Sends what is written to it as body chunks of about `CHUNK` bytes.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Vec<u8>, io::Error>>,
    buf: Vec<u8>,
    sent: u64,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.sent += chunk.len() as u64;
        self.tx.blocking_send(Ok(chunk)).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    fn put(&self, url: String) -> reqwest::RequestBuilder {
        with_token(self.http.put(url), self.token.as_deref())
    }
}

/// Pushes the closure of `roots` to the flywheel server cache at `base` (`http://HOST:PORT/CACHE`).
pub fn push_http(
    db: &StoreDb,
    roots: &[StorePath],
    base: &str,
    opts: &HttpPushOptions,
) -> Result<PushReport, CacheError> {
    let started = Instant::now();
    let store_dir = db.store_dir().clone();
    let closure = references_first(db.closure(roots)?, &store_dir);
    let jobs = match opts.jobs {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CacheError::Other(format!("starting the runtime: {e}")))?;
    let base = base.trim_end_matches('/');
    let mut report = runtime.block_on(push_async(closure.clone(), store_dir.clone(), base, opts, jobs))?;
    // A GC on the server can remove a path the cache had when asked, before the narinfos that
    // refer to it arrive; the server then refuses those. Asking again sends what is gone.
    for _ in 0..GC_RACE_ROUNDS {
        if !report.failed.iter().any(|f| f.error.contains(GONE_SINCE_ASKED)) {
            break;
        }
        tracing::info!("the cache lost paths of the closure while pushing (GC): pushing what it lacks now");
        let again = runtime.block_on(push_async(closure.clone(), store_dir.clone(), base, opts, jobs))?;
        report.pushed += again.pushed;
        report.upstream += again.upstream;
        report.nar_bytes += again.nar_bytes;
        report.file_bytes += again.file_bytes;
        report.failed = again.failed;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// How often a push starts over after the server lost paths of the closure meanwhile.
const GC_RACE_ROUNDS: usize = 2;
/// What the server says when a narinfo refers to a path it no longer holds (IndexError).
const GONE_SINCE_ASKED: &str = "refers to paths this cache does not hold";

async fn push_async(
    closure: Vec<PathInfo>,
    store_dir: StoreDir,
    base: &str,
    opts: &HttpPushOptions,
    jobs: usize,
) -> Result<PushReport, CacheError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(jobs * 2)
        .build()
        .map_err(|e| CacheError::Other(format!("HTTP client: {e}")))?;
    let client = Arc::new(Client { http, base: base.to_string(), token: opts.token.clone() });
    let mut report = PushReport { closure: closure.len(), ..Default::default() };

    // One question for the whole closure.
    let all: Vec<String> = closure.iter().map(|i| store_dir.render_path(&i.path)).collect();
    let missing: Vec<String> = with_retries(opts.attempts, || {
        let client = client.clone();
        let all = all.clone();
        async move {
            let req = with_token(client.http.post(format!("{}/api/v1/missing", client.base)), client.token.as_deref())
                .json(&all);
            let resp =
                req.send().await.map_err(|e| Failure { message: format!("{}: {e}", client.base), retry: true })?;
            let resp = check(resp, &format!("asking {} what it lacks", client.base)).await?;
            resp.json::<Vec<String>>()
                .await
                .map_err(|e| Failure { message: format!("reading the answer: {e}"), retry: false })
        }
    })
    .await
    .map_err(CacheError::Other)?;
    let missing: HashSet<String> = missing.into_iter().collect();
    // The closure split once: what the cache has, and what to push (in dependency order).
    let (to_push, present): (Vec<&PathInfo>, Vec<&PathInfo>) =
        closure.iter().partition(|i| missing.contains(&store_dir.render_path(&i.path)));
    report.present = present.len();
    // Paths an upstream key of the cache signed get their narinfo only (the server declines
    // them and records them as upstream's): their NARs are not worth sending.
    let upstream_keys = upstream_keys(&client).await;
    let upstream: HashSet<StorePath> = to_push
        .iter()
        .filter(|i| {
            let fingerprint = i.fingerprint(&store_dir);
            i.signatures.iter().any(|s| s.verify(fingerprint.as_bytes(), &upstream_keys).unwrap_or(false))
        })
        .map(|i| i.path.clone())
        .collect();
    tracing::info!(
        "{} paths in the closure, {} already in the cache, {} to push",
        closure.len(),
        report.present,
        missing.len()
    );

    // NARs: several at once, largest first.
    let mut order: Vec<&PathInfo> = to_push.iter().filter(|i| !upstream.contains(&i.path)).copied().collect();
    order.sort_by_key(|i| std::cmp::Reverse(i.nar_size));
    let total = order.len();
    let tracker = crate::progress::Tracker::new(opts.progress.clone(), total, order.iter().map(|i| i.nar_size).sum());
    let semaphore = Arc::new(tokio::sync::Semaphore::new(jobs));
    let mut tasks = tokio::task::JoinSet::new();
    // All spawned at once, so completions are seen as they happen; the semaphore (first come,
    // first served) keeps `jobs` running, largest first.
    for info in order {
        let semaphore = semaphore.clone();
        let client = client.clone();
        let info = info.clone();
        let real = opts.real_store.join(info.path.to_basename());
        let (level, attempts) = (opts.zstd_level, opts.attempts);
        tasks.spawn(async move {
            let Ok(_permit) = semaphore.acquire_owned().await else {
                return (info.path, 0, Err("the upload pool closed".to_string()));
            };
            let result = with_retries(attempts, || upload_nar(client.clone(), info.clone(), real.clone(), level)).await;
            (info.path, info.nar_size, result)
        });
    }
    let mut uploaded: std::collections::HashMap<StorePath, Result<u64, String>> = std::collections::HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        let (path, nar_size, result) = joined.map_err(|e| CacheError::Other(format!("an upload task failed: {e}")))?;
        let done = tracker.path_done(nar_size);
        match &result {
            Ok(bytes) => tracing::info!("[{done}/{total}] {} ({bytes} bytes sent)", store_dir.render_path(&path)),
            Err(e) => tracing::warn!("[{done}/{total}] {}: {e}", store_dir.render_path(&path)),
        }
        uploaded.insert(path, result);
    }

    // narinfos, references first, each only when its NAR and references are in.
    let mut in_cache: HashSet<StorePath> = present.iter().map(|i| i.path.clone()).collect();
    for info in to_push {
        let shown = store_dir.render_path(&info.path);
        let sent = match uploaded.remove(&info.path) {
            Some(Ok(sent)) => sent,
            None if upstream.contains(&info.path) => 0,
            Some(Err(e)) => {
                report.failed.push(PushFailure { path: shown, error: e });
                continue;
            }
            None => continue,
        };
        if let Some(r) = info.references.iter().find(|r| *r != &info.path && !in_cache.contains(*r)) {
            let error = format!("not advertised: its reference {} is not in the cache", store_dir.render_path(r));
            report.failed.push(PushFailure { path: shown, error });
            continue;
        }
        let text = narinfo_text(&store_dir, info).map_err(|e| CacheError::Other(format!("{shown}: {e}")))?;
        let hash_part = info.path.to_basename()[..32].to_string();
        let result = with_retries(opts.attempts, || {
            let client = client.clone();
            let text = text.clone();
            let url = format!("{}/{hash_part}.narinfo", client.base);
            async move {
                let resp = client
                    .put(url.clone())
                    .header("content-type", "text/x-nix-narinfo")
                    .body(text)
                    .send()
                    .await
                    .map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
                let resp = check(resp, &url).await?;
                Ok(resp.headers().get("x-flywheel-declined").is_some())
            }
        })
        .await;
        match result {
            Ok(true) => {
                in_cache.insert(info.path.clone());
                report.upstream += 1;
            }
            Ok(false) => {
                in_cache.insert(info.path.clone());
                report.pushed += 1;
                report.nar_bytes += info.nar_size;
                report.file_bytes += sent;
            }
            Err(e) => report.failed.push(PushFailure { path: shown, error: e }),
        }
    }
    Ok(report)
}

/// The cache's upstream keys; none when the server does not say (an older flywheel).
async fn upstream_keys(client: &Client) -> Vec<flywheel_nix::narinfo::TrustedPublicKey> {
    let req = with_token(client.http.get(format!("{}/api/v1/upstream-keys", client.base)), client.token.as_deref());
    let keys: Vec<String> = match req.send().await {
        Ok(resp) if resp.status().is_success() => resp.json().await.unwrap_or_default(),
        _ => Vec::new(),
    };
    keys.iter().filter_map(|k| flywheel_nix::keys::PublicKey::parse(k).ok().map(|p| p.0)).collect()
}

fn nar_url(info: &PathInfo) -> Result<String, String> {
    match &info.nar_hash {
        NixHash::Sha256(h) => Ok(format!("nar/{}.nar.zst", nix_derivation::nixbase32::encode(h))),
        other => Err(format!("NarHash {} is not sha256", other.to_nix_nixbase32_string())),
    }
}

fn narinfo_text(store_dir: &StoreDir, info: &PathInfo) -> Result<Vec<u8>, String> {
    let record =
        NarInfo::builder_in(store_dir.clone(), info.path.clone(), nar_url(info)?, info.nar_hash.clone(), info.nar_size)
            .compression(Compression::Zstd)
            .references(info.references.iter().cloned())
            .deriver(info.deriver.clone())
            .content_address(info.ca.clone())
            .signatures(info.signatures.iter().cloned())
            .build()
            .map_err(|e| e.to_string())?;
    Ok(record.to_canonical_bytes())
}

/// Streams one path's NAR, zstd-compressed, into a PUT; returns the bytes sent.
async fn upload_nar(client: Arc<Client>, info: PathInfo, real: PathBuf, level: i32) -> Result<u64, Failure> {
    let url = format!("{}/{}", client.base, nar_url(&info).map_err(|e| Failure { message: e, retry: false })?);
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, io::Error>>(4);
    let expected = (info.nar_hash.clone(), info.nar_size);
    // Err(Some(why)): this path cannot be pushed; Err(None): the request stopped taking data.
    let producer = tokio::task::spawn_blocking(move || -> Result<u64, Option<String>> {
        let writer = ChannelWriter { tx, buf: Vec::with_capacity(CHUNK), sent: 0 };
        let stopped = |e: &dyn std::fmt::Display, broken: bool| if broken { None } else { Some(e.to_string()) };
        let encoder = zstd::stream::write::Encoder::new(writer, level).map_err(|e| Some(e.to_string()))?;
        let (encoder, nar) = write_nar_digested(&real, encoder).map_err(|e| {
            let broken = e.to_string().contains("the upload stopped");
            stopped(&e, broken)
        })?;
        let mut writer = encoder.finish().map_err(|e| stopped(&e, e.kind() == io::ErrorKind::BrokenPipe))?;
        // Checked before the last chunk goes: a modified store path never completes its upload.
        if NixHash::Sha256(nar.sha256) != expected.0 || nar.size != expected.1 {
            let _ = writer.tx.blocking_send(Err(io::Error::other("NAR hash mismatch")));
            return Err(Some(format!(
                "{}: NAR hash mismatch: the store records {} ({} bytes), the contents give {} ({} bytes)",
                real.display(),
                expected.0.to_nix_nixbase32_string(),
                expected.1,
                nar.to_nix32(),
                nar.size
            )));
        }
        writer.send().map_err(|_| None)?;
        Ok(writer.sent)
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    // The NarSize declared up front bounds what the server decompresses (it refuses a larger
    // NAR as it streams, and the narinfo must agree anyway).
    let sent = client
        .put(url.clone())
        .header(crate::ingest::NAR_SIZE_HEADER, expected.1)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await;
    let produced = producer.await.map_err(|e| Failure { message: e.to_string(), retry: false })?;
    let resp = sent.map_err(|e| Failure { message: format!("{url}: {e}"), retry: true });
    match (produced, resp) {
        (Err(Some(why)), _) => Err(Failure { message: why, retry: false }),
        (_, Err(e)) => Err(e),
        (Err(None), Ok(resp)) => {
            check(resp, &url).await?;
            Err(Failure { message: format!("{url}: the server stopped reading the upload"), retry: true })
        }
        (Ok(sent), Ok(resp)) => check(resp, &url).await.map(|_| sent),
    }
}
