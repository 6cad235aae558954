//! What the push and pull clients share: HTTP failures sorted into worth retrying or not,
//! and retries with backoff.

use std::time::Duration;

/// Why one request failed, and whether trying again may help.
pub(crate) struct Failure {
    pub message: String,
    pub retry: bool,
}

fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

pub(crate) async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, Failure> {
    let hint = match resp.status().as_u16() {
        401 => " (give a token with --token or FLYWHEEL_CACHE_TOKEN)",
        403 => " (the token needs the write scope on this cache to push, the read scope to pull)",
        _ => "",
    };
    check_with_hint(resp, what, hint).await
}

/// [`check`], with `hint` after a failure's message (the server's own text says the rest).
pub(crate) async fn check_with_hint(
    resp: reqwest::Response,
    what: &str,
    hint: &str,
) -> Result<reqwest::Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    // The server's explanation, as far as a line goes: a reply is not read without bound.
    let body = match body_limited(resp, ERROR_BODY, what).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => "(a longer reply, not read)".to_string(),
    };
    let body = body.trim();
    let line = body.lines().next().unwrap_or("");
    Err(Failure { message: format!("{what}: HTTP {status}: {line}{hint}"), retry: retryable(status) })
}

/// How much of an error reply is read.
const ERROR_BODY: usize = 4 << 10;

/// The whole body of `resp`, when it is at most `limit` bytes: a longer one, declared or sent,
/// is refused without reading the rest (and not retried: it would come back the same).
pub(crate) async fn body_limited(mut resp: reqwest::Response, limit: usize, what: &str) -> Result<Vec<u8>, Failure> {
    let too_long = || Failure { message: format!("{what}: the reply is longer than {limit} bytes"), retry: false };
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(too_long());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(Failure { message: format!("{what}: {e}"), retry: true }),
        }
    }
}

pub(crate) async fn with_retries<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retry && attempt < attempts.max(1) => {
                tracing::warn!("{} (attempt {attempt}; retrying in {delay:?})", e.message);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
            Err(e) => return Err(e.message),
        }
    }
}

/// `req` with the bearer token, when there is one.
pub(crate) fn with_token(req: reqwest::RequestBuilder, token: Option<&str>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}
