//! Blobs: skipped when the registry has them (HEAD), mounted from another repository of the
//! same registry when one is known to hold them, otherwise uploaded in one PUT or, above the
//! chunk size, in PATCHes; several at once, largest first.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flywheel_nix::human_bytes;
use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, Response, StatusCode, Url};

use super::client::{backoff, resolve_location, with_query, Body, Client, Req};
use super::state::BlobState;
use super::{BlobAction, RegistryError};
use crate::digest::Digest;

const OCTET_STREAM: &str = "application/octet-stream";

/// A blob to push: its digest, size, and file in the layout.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: Digest,
    pub size: u64,
    pub path: PathBuf,
}

/// What blob pushes share.
pub struct Ctx {
    pub client: Client,
    /// The registry as the state file names it (`host[:port]`).
    pub registry: String,
    pub repo: String,
    pub chunk_size: u64,
    pub state: BlobState,
}

impl Ctx {
    pub fn push_scope(&self) -> String {
        format!("repository:{}:pull,push", self.repo)
    }

    fn blob_url(&self, digest: &Digest) -> Result<Url, RegistryError> {
        self.client.url(&format!("/v2/{}/blobs/{digest}", self.repo))
    }
}

/// Pushes `blobs`, `jobs` at a time, largest first. Returns each digest's action; stops at the
/// first error (blobs being pushed then are finished or abandoned, none is started).
pub async fn push_blobs(
    ctx: &Arc<Ctx>,
    blobs: &[Blob],
    jobs: usize,
) -> Result<HashMap<Digest, BlobAction>, RegistryError> {
    let mut order: Vec<Blob> = Vec::new();
    for b in blobs {
        if !order.iter().any(|o| o.digest == b.digest) {
            order.push(b.clone());
        }
    }
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.digest.cmp(&b.digest)));
    let workers = jobs.max(1).min(order.len());
    let queue = Arc::new(Mutex::new(VecDeque::from(order)));
    let results = Arc::new(Mutex::new(HashMap::new()));
    let failed = Arc::new(AtomicBool::new(false));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (ctx, queue, results, failed) = (ctx.clone(), queue.clone(), results.clone(), failed.clone());
        set.spawn(async move {
            loop {
                if failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(blob) = next else { return Ok(()) };
                match push_blob(&ctx, &blob).await {
                    Ok(action) => {
                        if let Ok(mut r) = results.lock() {
                            r.insert(blob.digest, action);
                        }
                    }
                    Err(e) => {
                        failed.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
        });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let outcome = joined.unwrap_or_else(|e| Err(RegistryError::Other(format!("a blob push task failed: {e}"))));
        if let Err(e) = outcome {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let results = results.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(results)
}

/// Pushes one blob unless the registry has it.
pub async fn push_blob(ctx: &Ctx, blob: &Blob) -> Result<BlobAction, RegistryError> {
    let what = format!("pushing blob {}", blob.digest);
    let started = Instant::now();
    let head = Req::new(&what, Method::HEAD, ctx.blob_url(&blob.digest)?, vec![ctx.push_scope()]);
    let resp = ctx.client.send_expect(&head, &[StatusCode::OK, StatusCode::NOT_FOUND]).await?;
    if resp.status() == StatusCode::OK {
        tracing::info!("{}: already in {} ({})", blob.digest, ctx.repo, human_bytes(blob.size));
        return Ok(BlobAction::Existed);
    }
    // The file must be the blob the manifest describes.
    let meta = std::fs::metadata(&blob.path).map_err(|e| RegistryError::Io { path: blob.path.clone(), source: e })?;
    if meta.len() != blob.size {
        return Err(RegistryError::LayoutBlob {
            path: blob.path.clone(),
            why: format!("{} bytes, but the manifest says {} for {}", meta.len(), blob.size, blob.digest),
        });
    }
    // Uploads are retried whole, in a new session: a half-sent PATCH leaves the old session
    // at an offset this client does not know.
    let max = ctx.client.retries();
    let mut attempt = 1;
    loop {
        match upload(ctx, blob, &what).await {
            Ok(action) => {
                let verb = if action == BlobAction::Mounted { "mounted" } else { "uploaded" };
                let secs = started.elapsed().as_secs_f64();
                tracing::info!("{}: {verb} ({}) in {secs:.1} s", blob.digest, human_bytes(blob.size));
                return Ok(action);
            }
            Err(e) if e.is_transient() && attempt < max => {
                let delay = e.retry_after().unwrap_or_else(|| backoff(attempt));
                tracing::warn!(
                    "{e}; uploading again (attempt {} of {max}) in {:.1} s",
                    attempt + 1,
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Location of an upload session, from a 202.
fn session_location(what: &str, request_url: &Url, resp: &Response) -> Result<Url, RegistryError> {
    let loc = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| RegistryError::Protocol {
        what: what.to_string(),
        why: "the registry's answer has no Location".into(),
    })?;
    resolve_location(request_url, loc).map_err(|why| RegistryError::Protocol { what: what.to_string(), why })
}

/// Checks a `Docker-Content-Digest` answer header, when there is one.
pub fn check_digest_header(what: &str, resp: &Response, expected: &Digest) -> Result<(), RegistryError> {
    if let Some(v) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
        if v.trim() != expected.to_string() {
            return Err(RegistryError::Protocol {
                what: what.to_string(),
                why: format!("the registry stored it as {v}, not {expected}"),
            });
        }
    }
    Ok(())
}

async fn upload(ctx: &Ctx, blob: &Blob, what: &str) -> Result<BlobAction, RegistryError> {
    let uploads = ctx.client.url(&format!("/v2/{}/blobs/uploads/", ctx.repo))?;
    let mut session = None;
    if let Some(from) = ctx.state.mount_source(&ctx.registry, &blob.digest, &ctx.repo) {
        let url = with_query(&with_query(&uploads, "mount", &blob.digest.to_string()), "from", &from);
        let scopes = vec![ctx.push_scope(), format!("repository:{from}:pull")];
        let req = Req::new(what, Method::POST, url.clone(), scopes).no_retry();
        let (resp, attempts) = ctx.client.send(&req).await?;
        match resp.status() {
            StatusCode::CREATED => {
                check_digest_header(what, &resp, &blob.digest)?;
                tracing::debug!("{}: mounted from {from}", blob.digest);
                return Ok(BlobAction::Mounted);
            }
            // The registry started an upload instead: use it.
            StatusCode::ACCEPTED => session = Some(session_location(what, &url, &resp)?),
            _ => {
                let e = ctx.client.status_error(&format!("mounting {} from {from}", blob.digest), resp, attempts).await;
                if e.is_transient() {
                    return Err(e);
                }
                tracing::warn!("{e}; uploading it instead");
            }
        }
    }
    let location = match session {
        Some(l) => l,
        None => {
            let req = Req::new(what, Method::POST, uploads.clone(), vec![ctx.push_scope()]).no_retry();
            let resp = ctx.client.send_expect(&req, &[StatusCode::ACCEPTED]).await?;
            session_location(what, &uploads, &resp)?
        }
    };
    let path = blob.path.clone();
    if blob.size <= ctx.chunk_size {
        // Monolithic: the whole blob in the closing PUT.
        let url = with_query(&location, "digest", &blob.digest.to_string());
        let req = Req::new(what, Method::PUT, url, vec![ctx.push_scope()])
            .header(CONTENT_TYPE, OCTET_STREAM)
            .body(Body::File { path, offset: 0, len: blob.size })
            .no_retry();
        let resp = ctx.client.send_expect(&req, &[StatusCode::CREATED]).await?;
        check_digest_header(what, &resp, &blob.digest)?;
        return Ok(BlobAction::Uploaded);
    }
    // Chunked: PATCH each chunk where the last answer said, then PUT with the digest.
    let mut location = location;
    let mut offset = 0u64;
    while offset < blob.size {
        let len = ctx.chunk_size.min(blob.size - offset);
        let end = offset + len - 1;
        let req = Req::new(what, Method::PATCH, location.clone(), vec![ctx.push_scope()])
            .header(CONTENT_TYPE, OCTET_STREAM)
            .header(CONTENT_RANGE, &format!("{offset}-{end}"))
            .body(Body::File { path: path.clone(), offset, len })
            .no_retry();
        let resp = ctx.client.send_expect(&req, &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT]).await?;
        if let Some(range) = resp.headers().get(RANGE).and_then(|v| v.to_str().ok()) {
            let last = range.trim().rsplit_once('-').and_then(|(_, e)| e.parse::<u64>().ok());
            if last != Some(end) {
                return Err(RegistryError::Protocol {
                    what: what.to_string(),
                    why: format!("after bytes {offset}-{end} the registry says it has {range:?}"),
                });
            }
        }
        if resp.headers().contains_key(LOCATION) {
            location = session_location(what, &location, &resp)?;
        }
        tracing::debug!("{}: sent bytes {offset}-{end} of {}", blob.digest, blob.size);
        offset += len;
    }
    let url = with_query(&location, "digest", &blob.digest.to_string());
    let req = Req::new(what, Method::PUT, url, vec![ctx.push_scope()])
        .header(CONTENT_TYPE, OCTET_STREAM)
        .body(Body::Bytes(Vec::new()))
        .no_retry();
    let resp = ctx.client.send_expect(&req, &[StatusCode::CREATED]).await?;
    check_digest_header(what, &resp, &blob.digest)?;
    Ok(BlobAction::Uploaded)
}
