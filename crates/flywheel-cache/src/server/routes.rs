//! The routes: `/healthz`, and under `/<cache>/`: `nix-cache-info`, `<hash>.narinfo` (GET,
//! HEAD, PUT) and `nar/<name>` (GET, HEAD, PUT). Every name is checked before it touches the
//! index or the disk; anything else is 400 (malformed) or 404.

// A handler's early answer (401, 400, 404) is a `Response` carried in `Err`: axum's idiom, and
// a response is larger than clippy likes for an error type.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use flywheel_nix::keys::PublicKey;
use flywheel_nix::NixHash;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::auth::{authorize, Denied};
use super::body;
use super::names::{self, is_nix32, Item, Refused, Route};
use super::{Cache, State};
use crate::index::IndexLock;
use crate::index::{IndexError, NarRecord, Scope, StoredFile};
use crate::ingest::{self, Upload};
use crate::storage::NarSource;

/// Read size when serving NARs: fewer, larger reads and writes than tower-http's 64 KiB.
const NAR_CHUNK: usize = 1 << 20;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(state.clone(), per_client))
        .with_state(state)
}

/// Bodies up to this size are in memory and sent at once.
const SMALL_BODY: u64 = 1 << 20;

/// How long a request waits for its client's turn before it gets 503.
const CLIENT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Bounds the requests one client address has in progress, bodies included: a client that
/// opens hundreds of connections gets served at the same pace as one that opens a few.
async fn per_client(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    // Health checks answer whatever one client is doing (a liveness probe from the kubelet
    // shares no address with the clients, but a check from a runner's node may).
    if req.uri().path() == "/healthz" {
        return next.run(req).await;
    }
    let max = state.opts.max_requests_per_client.max(1);
    let semaphore = match state.clients.lock() {
        Ok(mut clients) => {
            if clients.len() > 4096 {
                // Forget idle clients (no request holds their semaphore).
                clients.retain(|_, s| Arc::strong_count(s) > 1);
            }
            clients.entry(peer.ip()).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max))).clone()
        }
        Err(_) => return internal("the client table is poisoned"),
    };
    let permit = match semaphore.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            state.metrics.client_waits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match tokio::time::timeout(CLIENT_WAIT, semaphore.acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    let mut r = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("too many requests in progress from {} (at most {max})", peer.ip()),
                    );
                    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                    return r;
                }
            }
        }
    };
    let response = next.run(req).await;
    // A small body in memory goes out whole at once (one write with the headers): its permit
    // can go now. A larger one (a NAR) takes the permit with it, so a download counts until it
    // is sent; its exact length, which the stream would hide, goes in the header.
    let exact = axum::body::HttpBody::size_hint(response.body()).exact();
    if exact.is_some_and(|n| n <= SMALL_BODY) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    if let Some(n) = exact {
        if !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    }));
    Response::from_parts(parts, body)
}

pub(super) fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

pub(super) fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!("{e}");
    text(StatusCode::INTERNAL_SERVER_ERROR, format!("internal error: {e}"))
}

/// Runs index and disk work off the async threads.
pub(super) async fn blocking<T: Send + 'static>(
    state: &Arc<State>,
    f: impl FnOnce(&State) -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(internal)?
}

async fn dispatch(AxState(state): AxState<Arc<State>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let response = route(&state, req).await.unwrap_or_else(|r| r);
    let route = super::metrics::route_of(&path);
    state.metrics.request(route, method.as_str(), response.status().as_u16());
    if matches!(response.status(), StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        state.metrics.refused_by_limit.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if method != Method::HEAD {
        let sent = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        state.metrics.bytes_out.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
    }
    if route == "narinfo" && (method == Method::GET || method == Method::HEAD) {
        let counter = match response.status() {
            StatusCode::OK => Some(&state.metrics.narinfo_hits),
            StatusCode::NOT_FOUND => Some(&state.metrics.narinfo_misses),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    tracing::info!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn route(state: &Arc<State>, req: Request) -> Result<Response, Response> {
    let path = req.uri().path().to_string();
    let (cache_name, item) = match names::parse(&path) {
        Ok(Route::Health) => return Ok(text(StatusCode::OK, "ok")),
        Ok(Route::Status { page }) => return super::status_routes::status(state, req, page).await,
        Ok(Route::CanaryRuns) => return super::status_routes::canary_runs(state, req).await,
        Ok(Route::Metrics) => {
            let body = blocking(state, |s| {
                let (memberships, paths) = s.index().counts().map_err(internal)?;
                let bytes = s.index().stored_bytes().map_err(internal)?;
                Ok(s.metrics.render(paths, memberships, bytes))
            })
            .await?;
            return Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response());
        }
        Ok(Route::CacheRoot(_)) => {
            return Err(text(StatusCode::NOT_FOUND, "not found: the cache's URL is http://HOST:PORT/CACHE"))
        }
        Ok(Route::Cache { cache, item }) => (cache.to_string(), item),
        Err(Refused::Malformed(why)) => return Err(text(StatusCode::BAD_REQUEST, why)),
        Err(Refused::NotFound(why)) => return Err(text(StatusCode::NOT_FOUND, why)),
    };
    let name = cache_name.clone();
    let cache = match state.known_cache(&name) {
        Some(c) => Some(c),
        None => blocking(state, move |s| s.cache(&name).map_err(internal)).await?,
    };
    let Some(cache) = cache else {
        return Err(text(StatusCode::NOT_FOUND, format!("no cache named {cache_name}")));
    };
    let method = req.method().clone();
    let needed = if method == Method::GET || method == Method::HEAD { Scope::Read } else { Scope::Write };
    let headers = req.headers().clone();
    let c = cache.clone();
    // Reads of a public cache need no token: no index query.
    let public_read = needed == Scope::Read && cache.record.visibility == crate::index::Visibility::Public;
    if !public_read {
        blocking(state, move |s| authorize(s, &c, &headers, needed, now()).map_err(denied)).await?;
    }
    let head = method == Method::HEAD;
    let read = method == Method::GET || head;
    match item {
        Item::CacheInfo if read => Ok(cache_info(&cache)),
        // The cache's upstream keys, so `flywheel cache push` sends no NAR for a path the cache
        // would decline.
        Item::UpstreamKeys if method == Method::GET => {
            let keys: Vec<String> = cache.upstream.iter().map(|k| PublicKey(k.clone()).to_nix_string()).collect();
            let body = serde_json::to_vec(&keys).map_err(internal)?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Item::Pins if method == Method::GET => {
            let pins = blocking(state, move |s| s.index().pins(&cache.record.name).map_err(internal)).await?;
            let body = serde_json::to_vec(&pins).map_err(internal)?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Item::Pin(pin) if method == Method::PUT => put_pin(state, cache, pin.to_string(), req).await,
        Item::Missing if method == Method::POST => missing(state, cache, req).await,
        Item::Narinfo(hash) if read => get_narinfo(state, cache, hash.to_string(), head).await,
        Item::Narinfo(hash) if method == Method::PUT => put_narinfo(state, cache, hash.to_string(), req).await,
        Item::Listing { name, hash } if read => {
            get_file(state, cache, name.to_string(), Some(hash.to_string()), head).await
        }
        Item::Log(name) if read => get_file(state, cache, name.to_string(), None, head).await,
        Item::Listing { name, .. } | Item::Log(name) if method == Method::PUT => {
            put_file(state, cache, name.to_string(), req).await
        }
        Item::Nar(name) if read => get_nar(state, cache, name.to_string(), req).await,
        Item::Nar(name) if method == Method::PUT => put_nar(state, cache, name.to_string(), req).await,
        _ => Err(method_not_allowed()),
    }
}

/// `POST /<cache>/api/v1/missing` with a JSON array of store paths: those the cache lacks, in
/// one request instead of a HEAD per path (what `flywheel cache push` asks first).
async fn missing(state: &Arc<State>, cache: Arc<Cache>, req: Request) -> Result<Response, Response> {
    let bytes = body::read_all(req, 64 << 20, state.opts.limits.idle_timeout, "a list of store paths").await?;
    let paths: Vec<String> = serde_json::from_slice(&bytes)
        .map_err(|e| text(StatusCode::BAD_REQUEST, format!("expected a JSON array of store paths: {e}")))?;
    let missing = blocking(state, move |s| {
        for p in &paths {
            s.store_dir.parse_path(p.as_bytes()).map_err(|e| text(StatusCode::BAD_REQUEST, format!("{p}: {e}")))?;
        }
        s.index().missing(&cache.record.name, &paths).map_err(internal)
    })
    .await?;
    let body = serde_json::to_vec(&missing).map_err(internal)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// What `PUT /<cache>/api/v1/pins/<name>` takes (a write token): the store path to pin as the
/// pin's newest revision, and the pin's settings.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PinRequest {
    pub path: String,
    pub keep_revisions: Option<u32>,
    pub keep_days: Option<u32>,
}

async fn put_pin(state: &Arc<State>, cache: Arc<Cache>, pin: String, req: Request) -> Result<Response, Response> {
    let bytes = body::read_all(req, 64 << 10, state.opts.limits.idle_timeout, "a pin request").await?;
    let asked: PinRequest = serde_json::from_slice(&bytes).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("expected {{\"path\": STORE_PATH, \"keep_revisions\": N, \"keep_days\": D}}: {e}"),
        )
    })?;
    if asked.keep_revisions == Some(0) {
        return Err(text(StatusCode::BAD_REQUEST, "keep_revisions must be at least 1"));
    }
    let revision = blocking(state, move |s| {
        s.store_dir
            .parse_path(asked.path.as_bytes())
            .map_err(|e| text(StatusCode::BAD_REQUEST, format!("{}: {e}", asked.path)))?;
        let name = &cache.record.name;
        match s.index().pin(name, &pin, &asked.path, asked.keep_revisions, asked.keep_days, now()) {
            Ok(r) => Ok(r),
            Err(e @ (IndexError::NotInCache { .. } | IndexError::BadPinName(_))) => {
                Err(text(StatusCode::BAD_REQUEST, e.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    })
    .await?;
    let body = serde_json::to_vec(&revision).map_err(internal)?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub(super) fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated(why) => {
            let mut r = text(StatusCode::UNAUTHORIZED, why);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"flywheel\""));
            r
        }
        Denied::Forbidden(why) => text(StatusCode::FORBIDDEN, why),
    }
}

pub(super) fn method_not_allowed() -> Response {
    text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

fn cache_info(cache: &Cache) -> Response {
    let body = format!("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: {}\n", cache.record.priority);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/x-nix-cache-info")], body).into_response()
}

async fn get_narinfo(state: &Arc<State>, cache: Arc<Cache>, hash: String, head: bool) -> Result<Response, Response> {
    let body = match state.rendered.get(&cache.record.name, &hash) {
        Some(body) => {
            // Nix asks for narinfos of everything it might substitute: that is the access GC counts.
            if let Ok(mut accessed) = state.accessed.lock() {
                accessed.insert((cache.name.clone(), hash), now());
            }
            cache.counters.narinfo_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Some(body)
        }
        None => {
            blocking(state, move |s| {
                let generation = s.rendered.generation();
                let Some(p) = s.index().path(&cache.record.name, &hash).map_err(internal)? else {
                    cache.counters.narinfo_misses.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(None);
                };
                cache.counters.narinfo_hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body =
                    axum::body::Bytes::from(super::narinfo::render(&s.store_dir, &cache.key, &p).map_err(internal)?);
                s.rendered.insert(&cache.record.name, &hash, body.clone(), generation);
                if let Ok(mut accessed) = s.accessed.lock() {
                    accessed.insert((cache.name.clone(), hash), now());
                }
                Ok(Some(body))
            })
            .await?
        }
    };
    let Some(body) = body else { return Err(text(StatusCode::NOT_FOUND, "no such path in this cache")) };
    let len = body.len();
    let body = if head { Body::empty() } else { Body::from(body) };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/x-nix-narinfo")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .map_err(internal)
}

async fn put_narinfo(state: &Arc<State>, cache: Arc<Cache>, hash: String, req: Request) -> Result<Response, Response> {
    let limit = state.opts.max_narinfo_bytes;
    let bytes = body::read_all(req, limit, state.opts.limits.idle_timeout, "a narinfo").await?;
    blocking(state, move |s| {
        let bad = |why: String| text(StatusCode::BAD_REQUEST, why);
        let (uploaded, info) = super::narinfo::accept(&s.store_dir, &hash, &bytes).map_err(bad)?;
        let (store_path, url) = (uploaded.store_path.clone(), uploaded.url.clone());
        let cache_name = cache.record.name.clone();
        if let Some(key) = cache.upstream.iter().find(|k| info.has_valid_signature(&s.store_dir, std::slice::from_ref(*k)))
        {
            // Declined with a success: Nix would stop the whole copy on an error, and it fetches
            // this path from upstream anyway. Closure checks count the path as present.
            s.index().record_upstream(&cache_name, &store_path, &key.name, Some(&url), now()).map_err(internal)?;
            s.metrics.upstream_declined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut r = text(
                StatusCode::OK,
                format!("not stored: {store_path} is signed by the upstream key {}; Nix fetches it from there", key.name),
            );
            r.headers_mut().insert("x-flywheel-declined", HeaderValue::from_static("upstream"));
            return Ok(r);
        }
        // The NAR this cache was sent at that URL, or one a path of this cache already uses
        // (two store paths with the same contents). Never one another cache holds: naming a
        // NarHash proves nothing, and the answer would tell whether it exists elsewhere.
        let nar: NarRecord = match s.index().upload(&cache_name, &url).map_err(internal)? {
            Some(n) => n,
            None => match s.index().nar_in_cache(&cache_name, &uploaded.nar_hash).map_err(internal)? {
                Some((n, _)) if s.storage.contains(&n.nar_hash).map_err(internal)? => n,
                _ => return Err(bad(format!("the NAR {url} was not uploaded to this cache: PUT it first"))),
            },
        };
        if nar.nar_hash != uploaded.nar_hash || nar.nar_size != uploaded.nar_size {
            return Err(bad(format!(
                "NAR mismatch for {store_path}: the narinfo says NarHash {} and NarSize {}, the uploaded NAR has {} and {}",
                NixHash::Sha256(uploaded.nar_hash).to_nix_nixbase32_string(),
                uploaded.nar_size,
                NixHash::Sha256(nar.nar_hash).to_nix_nixbase32_string(),
                nar.nar_size
            )));
        }
        let record = uploaded.with_nar(nar);
        let added = match s.index().add_path(&cache_name, &record, Some(&url), now()) {
            Ok(added) => added,
            Err(e @ (IndexError::MissingReferences { .. } | IndexError::NarGone(_))) => return Err(bad(e.to_string())),
            Err(e) => return Err(internal(e)),
        };
        tracing::debug!("{store_path}: {added:?} in {cache_name}");
        Ok(text(StatusCode::OK, "ok"))
    })
    .await
}

async fn get_nar(state: &Arc<State>, cache: Arc<Cache>, name: String, req: Request) -> Result<Response, Response> {
    let head = req.method() == Method::HEAD;
    let found = blocking(state, move |s| {
        if let Some(hash) = name.strip_suffix(".nar.zst").filter(|h| is_nix32(h, 52)) {
            if let Ok(bytes) = nix_derivation::nixbase32::decode(hash.as_bytes()) {
                if let Ok(nar_hash) = <[u8; 32]>::try_from(bytes.as_slice()) {
                    if let Some((nar, stored_at)) =
                        s.index().nar_in_cache(&cache.record.name, &nar_hash).map_err(internal)?
                    {
                        if !head {
                            let c = &cache.counters;
                            c.nar_downloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let class = crate::stats::served_class(now() - stored_at);
                            c.served[class].fetch_add(
                                i64::try_from(nar.file_size).unwrap_or(i64::MAX),
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        return Ok(Some(Ok((s.storage.source(&nar_hash), nar.file_size))));
                    }
                }
            }
        }
        // Nix asks (HEAD) whether a NAR is there before uploading it, at the name it chose.
        if head && s.index().upload(&cache.record.name, &format!("nar/{name}")).map_err(internal)?.is_some() {
            return Ok(Some(Err(())));
        }
        Ok(None)
    })
    .await?;
    match found {
        None => Err(text(StatusCode::NOT_FOUND, "no such NAR in this cache")),
        Some(Err(())) => Ok(StatusCode::OK.into_response()),
        Some(Ok((NarSource::Object(object), size))) => {
            super::object::serve(object, size, super::object::Asked::of(&req)).await
        }
        Some(Ok((NarSource::File(file), _))) if is_plain_get(&req) => {
            super::mapped::serve(file).await.map_err(internal)
        }
        Some(Ok((NarSource::File(file), _))) => {
            // ServeFile answers HEAD, ranges and conditional requests, always with the exact length
            // of a complete file (stored NARs are renamed into place whole).
            let served = tower_http::services::ServeFile::new_with_mime(
                file,
                &"application/x-nix-nar".parse().map_err(internal)?,
            )
            .with_buf_chunk_size(NAR_CHUNK)
            .oneshot(req)
            .await
            .map_err(internal)?;
            Ok(served.map(Body::new))
        }
    }
}

/// A whole-file GET: no range, no condition (what Nix sends for a NAR).
fn is_plain_get(req: &Request) -> bool {
    req.method() == Method::GET
        && ![
            header::RANGE,
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
        ]
        .iter()
        .any(|h| req.headers().contains_key(h))
}

async fn put_nar(state: &Arc<State>, cache: Arc<Cache>, name: String, req: Request) -> Result<Response, Response> {
    let Some(kind) = Upload::from_name(&name) else {
        return Err(text(StatusCode::BAD_REQUEST, format!("nar/{name}: expected a .nar, .nar.xz or .nar.zst upload")));
    };
    let tmp_dir = state.scratch.path().to_path_buf();
    let raw = tempfile::Builder::new().prefix("upload-").tempfile_in(&tmp_dir).map_err(internal)?.into_temp_path();
    let stored = tempfile::Builder::new().prefix("stored-").tempfile_in(&tmp_dir).map_err(internal)?.into_temp_path();

    // Stream the body to disk, counting: never the whole NAR in memory.
    let limit = state.opts.max_nar_bytes;
    // A declared length over the limit is refused before the body is read (a client that sent
    // `Expect: 100-continue` then sends none of it).
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("a NAR upload is at most {limit} bytes")));
    }
    let declared_nar_size = match req.headers().get(ingest::NAR_SIZE_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
            text(StatusCode::BAD_REQUEST, format!("{}: expected a number of bytes", ingest::NAR_SIZE_HEADER))
        })?),
    };
    let limits = state.opts.limits;
    if declared_nar_size.is_some_and(|n| n > limits.max_nar_size) {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a NAR is at most {} bytes (the server's max-nar-size)", limits.max_nar_size),
        ));
    }
    let mut file = tokio::fs::File::create(&raw).await.map_err(internal)?;
    let mut body = req.into_body();
    let mut received = 0u64;
    while let Some(data) = body::next_chunk(&mut body, limits.idle_timeout).await? {
        received += data.len() as u64;
        if received > limit {
            return Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("a NAR upload is at most {limit} bytes")));
        }
        file.write_all(&data).await.map_err(internal)?;
        state.metrics.bytes_in.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    file.flush().await.map_err(internal)?;
    drop(file);

    let _permit = state.ingest.acquire().await.map_err(internal)?;
    let opts = ingest::IngestOptions {
        level: state.opts.zstd_level,
        limits: ingest::DecodeLimits::new(limits.decoder_memory, declared_nar_size.unwrap_or(limits.max_nar_size)),
        declared: declared_nar_size.is_some(),
        deadline: Some(Instant::now() + limits.ingest_timeout),
    };
    blocking(state, move |s| {
        let nar = ingest::ingest(&raw, kind, &stored, &opts).map_err(|e| match e {
            ingest::IngestError::Io(e) => internal(e),
            e @ (ingest::IngestError::TooLarge(_) | ingest::IngestError::TooSlow(_)) => {
                text(StatusCode::PAYLOAD_TOO_LARGE, format!("nar/{name}: {e}"))
            }
            other => text(StatusCode::BAD_REQUEST, format!("nar/{name}: {other}")),
        })?;
        let stored = stored.keep().map_err(internal)?;
        let mut nar = nar;
        // Until the upload is recorded, GC must not unlink the NAR this finds stored; and no
        // other server may store this NAR meanwhile.
        let _lock = s.index().lock(IndexLock::NarShared).map_err(internal)?;
        let _store = s.index().lock(IndexLock::Store(nar.nar_hash)).map_err(internal)?;
        if !s.storage.put(&nar.nar_hash, &stored).map_err(internal)? {
            // The server already had this NAR (from another cache, or an upload cut short), maybe
            // compressed otherwise: the record must describe the file that is kept.
            let (hash, size) = match s.index().nar(&nar.nar_hash).map_err(internal)? {
                // The index's record of the same NAR holds what was kept.
                Some(known) => (known.file_hash, known.file_size),
                None => s.storage.open(&nar.nar_hash).and_then(crate::storage::hash_reader).map_err(internal)?,
            };
            nar.file_hash = hash;
            nar.file_size = size;
        }
        s.index().record_upload(&cache.record.name, &format!("nar/{name}"), &nar, now()).map_err(internal)?;
        Ok(text(StatusCode::OK, "ok"))
    })
    .await
}

/// `GET|HEAD <hash>.ls` (only once the path is in the cache) and `log/<drv>`: as uploaded.
async fn get_file(
    state: &Arc<State>,
    cache: Arc<Cache>,
    name: String,
    member: Option<String>,
    head: bool,
) -> Result<Response, Response> {
    let file_name = name.clone();
    let file = blocking(state, move |s| {
        if let Some(hash) = member {
            if s.index().path(&cache.record.name, &hash).map_err(internal)?.is_none() {
                return Ok(None);
            }
        }
        s.index().file(&cache.record.name, &name).map_err(internal)
    })
    .await?;
    let Some(file) = file else { return Err(text(StatusCode::NOT_FOUND, "not found")) };
    // By its name, never by what was stored with it (files kept before this rule included).
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, super::inert::served_type(&file_name))
        .header(header::CONTENT_LENGTH, file.body.len());
    if let Some(enc) = file.content_encoding.as_deref().and_then(|e| super::inert::checked_encoding(e).ok().flatten()) {
        builder = builder.header(header::CONTENT_ENCODING, enc);
    }
    builder.body(if head { Body::empty() } else { Body::from(file.body) }).map_err(internal)
}

/// `PUT <hash>.ls` and `PUT log/<drv>`: kept as sent (with their Content-Encoding), up to
/// `max_file_bytes`.
async fn put_file(state: &Arc<State>, cache: Arc<Cache>, name: String, req: Request) -> Result<Response, Response> {
    // Served as JSON or plain text whatever the uploader says (`inert`); only the encoding
    // is kept, checked.
    let content_type = super::inert::served_type(&name).to_string();
    let content_encoding = match req.headers().get(header::CONTENT_ENCODING) {
        None => None,
        Some(v) => {
            let v = v.to_str().map_err(|_| text(StatusCode::BAD_REQUEST, "Content-Encoding is not text"))?;
            super::inert::checked_encoding(v).map_err(|e| text(StatusCode::BAD_REQUEST, e))?
        }
    };
    let limit = state.opts.max_file_bytes;
    let body = body::read_all(req, limit, state.opts.limits.idle_timeout, "a listing or log").await?;
    state.metrics.bytes_in.fetch_add(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
    blocking(state, move |s| {
        let file = StoredFile { body: body.to_vec(), content_type, content_encoding };
        s.index().put_file(&cache.record.name, &name, &file, now()).map_err(internal)?;
        Ok(text(StatusCode::OK, "ok"))
    })
    .await
}
