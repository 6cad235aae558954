//! HTTP to one registry: URLs, request bodies streamed from files, authorization (through
//! [`Auth`]) and retries with exponential backoff.

use std::io::{self, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::Auth;
use super::RegistryError;

/// First retry delay; doubled for each further attempt up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How long to wait before attempt `attempt + 1`.
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// Statuses worth another attempt: 408, 429, and 5xx except 501 and 505.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured; backoff applies then).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

/// An error and its sources on one line, each once.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn reqwest_error_chain(e: reqwest::Error) -> String {
    error_chain(&e.without_url())
}

/// Whether a connection error is TLS refusing the peer (a certificate, or not TLS at all),
/// which trying again does not change.
fn tls_failure(why: &str) -> bool {
    why.contains("InvalidContentType")
        || why.contains("invalid peer certificate")
        || why.contains("CertificateRequired")
}

/// What the registry said in an error answer: the distribution API's
/// `{"errors":[{"code","message"}]}` as `CODE: message; ...`, or the start of the body.
pub async fn status_message(resp: Response) -> String {
    let bytes = resp.bytes().await.unwrap_or_default();
    error_body_message(&bytes)
}

pub fn error_body_message(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(bytes) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(bytes);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}

/// `location` (a `Location` header: absolute, or relative to `base`) as a URL.
pub fn resolve_location(base: &Url, location: &str) -> Result<Url, String> {
    base.join(location.trim()).map_err(|e| format!("bad Location {location:?}: {e}"))
}

/// `url` with `name=value` added to its query, keeping what the query already has.
pub fn with_query(url: &Url, name: &str, value: &str) -> Url {
    let mut u = url.clone();
    u.query_pairs_mut().append_pair(name, value);
    u
}

/// A request body, made anew for each attempt.
#[derive(Clone, Debug)]
pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of `path` from `offset`, streamed from disk.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

/// `len` bytes of the file at `path` from `offset`, streamed in 1 MiB reads (never held whole).
async fn file_body(path: &Path, offset: u64, len: u64) -> io::Result<reqwest::Body> {
    let range = range_reader(path, offset, len).await?;
    Ok(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(range, 1 << 20)))
}

/// A reader of `len` bytes of the file at `path` from `offset`, which must lie in the file.
async fn range_reader(path: &Path, offset: u64, len: u64) -> io::Result<tokio::io::Take<tokio::fs::File>> {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("file is {size} bytes, {len} bytes from {offset} were to be sent"),
        ));
    }
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(file.take(len))
}

/// Says why `req` is tried again and waits `delay`.
async fn wait_to_retry(req: &Req, why: &str, attempt: u32, max: u32, delay: Duration) {
    tracing::warn!(
        "{}: {} {}: {why}; attempt {} of {max} in {:.1} s",
        req.what,
        req.method,
        req.url,
        attempt + 1,
        delay.as_secs_f64()
    );
    tokio::time::sleep(delay).await;
}

/// One request to the registry.
pub struct Req {
    /// What is being done, for errors: `pushing blob sha256:...`.
    pub what: String,
    pub method: Method,
    pub url: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Body,
    /// Token scopes the request needs (`repository:NAME:pull,push`).
    pub scopes: Vec<String>,
    /// Whether connection errors and retryable statuses are tried again.
    pub retry: bool,
    /// Whether a 401 is answered with credentials (false: returned as it is).
    pub authorize: bool,
}

impl Req {
    pub fn new(what: &str, method: Method, url: Url, scopes: Vec<String>) -> Self {
        Req {
            what: what.to_string(),
            method,
            url,
            headers: Vec::new(),
            body: Body::Empty,
            scopes,
            retry: true,
            authorize: true,
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    pub fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// A registry's HTTP client.
pub struct Client {
    http: reqwest::Client,
    /// `http[s]://host[:port]/`
    base: Url,
    pub auth: Auth,
    retries: u32,
}

impl Client {
    pub fn new(api_host: &str, insecure: bool, auth: Auth, retries: u32) -> Result<Self, RegistryError> {
        let scheme = if insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{api_host}/"))
            .map_err(|e| RegistryError::Other(format!("registry {api_host}: not a host: {e}")))?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("flywheel/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(insecure)
            .connect_timeout(Duration::from_secs(30))
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Other(format!("setting up HTTP: {}", reqwest_error_chain(e))))?;
        Ok(Client { http, base, auth, retries: retries.max(1) })
    }

    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// `path` (`/v2/...`) on the registry.
    pub fn url(&self, path: &str) -> Result<Url, RegistryError> {
        self.base.join(path).map_err(|e| RegistryError::Other(format!("bad registry URL path {path:?}: {e}")))
    }

    /// Sends `req`, answering challenges and retrying as it says; returns the final answer
    /// whatever its status.
    pub async fn send(&self, req: &Req) -> Result<(Response, u32), RegistryError> {
        let max = if req.retry { self.retries } else { 1 };
        let mut attempt = 1;
        let mut auth_retried = false;
        loop {
            let mut rb = self.http.request(req.method.clone(), req.url.clone());
            for (name, value) in &req.headers {
                rb = rb.header(name, value);
            }
            let auth = if req.authorize { self.auth.header(&self.http, &req.scopes).await? } else { None };
            let sent_auth = auth.is_some();
            if let Some(h) = auth {
                rb = rb.header(AUTHORIZATION, h);
            }
            rb = match &req.body {
                Body::Empty => rb,
                Body::Bytes(b) => rb.header(CONTENT_LENGTH, b.len()).body(b.clone()),
                Body::File { path, offset, len } => {
                    let body = file_body(path, *offset, *len)
                        .await
                        .map_err(|e| RegistryError::Io { path: path.clone(), source: e })?;
                    rb.header(CONTENT_LENGTH, *len).body(body)
                }
            };
            let result = rb.send().await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    let mut why = reqwest_error_chain(e);
                    let tls = tls_failure(&why);
                    if tls && req.url.scheme() == "https" && why.contains("InvalidContentType") {
                        why.push_str(" (the registry may speak plain HTTP: push insecurely to use it)");
                    }
                    if attempt < max && !tls {
                        wait_to_retry(req, &why, attempt, max, backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(RegistryError::Connection {
                        what: req.what.clone(),
                        method: req.method.to_string(),
                        url: req.url.to_string(),
                        why,
                        attempts: attempt,
                    });
                }
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && req.authorize && !auth_retried {
                let challenges: Vec<String> = resp
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string))
                    .collect();
                if self.auth.on_challenge(&self.http, &challenges, &req.scopes, sent_auth).await? {
                    auth_retried = true;
                    continue;
                }
                return Ok((resp, attempt));
            }
            if is_retryable(status) && attempt < max {
                let delay = retry_after(&resp).unwrap_or_else(|| backoff(attempt));
                wait_to_retry(req, &format!("registry answered {status}"), attempt, max, delay).await;
                attempt += 1;
                continue;
            }
            return Ok((resp, attempt));
        }
    }

    /// Sends `req` and requires one of `ok` as the answer's status.
    pub async fn send_expect(&self, req: &Req, ok: &[StatusCode]) -> Result<Response, RegistryError> {
        let (resp, attempts) = self.send(req).await?;
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        Err(self.status_error(&req.what, resp, attempts).await)
    }

    /// The error for an unexpected answer.
    pub async fn status_error(&self, what: &str, resp: Response, attempts: u32) -> RegistryError {
        let status = resp.status();
        let retry_after = retry_after(&resp);
        let mut message = status_message(resp).await;
        if status == StatusCode::UNAUTHORIZED {
            let hint = self.auth.hint();
            message = if message.is_empty() { hint } else { format!("{message} ({hint})") };
        }
        RegistryError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_string(),
            message,
            attempts,
            retry_after,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn locations() {
        let base = Url::parse("http://127.0.0.1:5000/v2/a/blobs/uploads/").unwrap();
        let abs = resolve_location(&base, "https://other.example.org/upload/x?_state=abc").unwrap();
        assert_eq!(abs.as_str(), "https://other.example.org/upload/x?_state=abc");
        let rel = resolve_location(&base, "/v2/a/blobs/uploads/uuid?_state=s%2B").unwrap();
        assert_eq!(rel.as_str(), "http://127.0.0.1:5000/v2/a/blobs/uploads/uuid?_state=s%2B");
        let relative_path = resolve_location(&base, "uuid2").unwrap();
        assert_eq!(relative_path.as_str(), "http://127.0.0.1:5000/v2/a/blobs/uploads/uuid2");
        let d = "sha256:0123";
        assert_eq!(
            with_query(&rel, "digest", d).as_str(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/uuid?_state=s%2B&digest=sha256%3A0123"
        );
        let plain = resolve_location(&base, "/v2/a/blobs/uploads/uuid").unwrap();
        assert_eq!(
            with_query(&plain, "digest", d).as_str(),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/uuid?digest=sha256%3A0123"
        );
        assert!(resolve_location(&base, "http://[bad").is_err());
    }

    #[test]
    fn retry_policy() {
        assert!(is_retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(is_retryable(StatusCode::BAD_GATEWAY));
        assert!(is_retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable(StatusCode::REQUEST_TIMEOUT));
        assert!(!is_retryable(StatusCode::NOT_IMPLEMENTED));
        assert!(!is_retryable(StatusCode::HTTP_VERSION_NOT_SUPPORTED));
        assert!(!is_retryable(StatusCode::FORBIDDEN));
        assert!(!is_retryable(StatusCode::NOT_FOUND));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn error_bodies() {
        let body =
            br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied","detail":null}]}"#;
        assert_eq!(error_body_message(body), "DENIED: requested access to the resource is denied");
        let two = br#"{"errors":[{"code":"A","message":"x"},{"code":"B"}]}"#;
        assert_eq!(error_body_message(two), "A: x; B");
        assert_eq!(error_body_message(b"  <html>\n nope </html>"), "<html> nope </html>");
        assert_eq!(error_body_message(b""), "");
        assert!(error_body_message(&[b'x'; 1000]).ends_with('…'));
    }

    #[tokio::test]
    async fn file_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        for (offset, len) in [(0u64, 300_000u64), (0, 10), (299_990, 10), (12_345, 200_000), (5, 0)] {
            let mut r = range_reader(&path, offset, len).await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut r, &mut got).await.unwrap();
            let (o, l) = (offset as usize, len as usize);
            assert_eq!(got, &data[o..o + l]);
        }
    }

    #[tokio::test]
    async fn file_body_checks_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, [1u8; 100]).unwrap();
        assert!(file_body(&path, 0, 100).await.is_ok());
        assert!(file_body(&path, 10, 90).await.is_ok());
        let e = file_body(&path, 99, 2).await.unwrap_err();
        assert!(e.to_string().contains("file is 100 bytes"), "{e}");
    }
}
