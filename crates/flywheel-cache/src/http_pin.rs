//! Pinning over HTTP (`flywheel cache pin --to http://HOST:PORT/CACHE`), so a CI job can pin
//! what it just pushed with its write token: `PUT /<cache>/api/v1/pins/<name>`.

use crate::http::{check, with_retries, with_token, Failure};
use crate::index::retention::PinRevision;
use crate::CacheError;

pub struct PinOptions<'a> {
    pub token: Option<&'a str>,
    pub keep_revisions: Option<u32>,
    pub keep_days: Option<u32>,
    pub attempts: u32,
}

/// Pins `store_path` as the newest revision of `pin` in the cache at `base`.
pub fn pin_http(base: &str, pin: &str, store_path: &str, opts: &PinOptions<'_>) -> Result<PinRevision, CacheError> {
    crate::index::retention::check_pin_name(pin).map_err(|e| CacheError::BadTarget(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CacheError::Other(format!("starting the runtime: {e}")))?;
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/pins/{pin}", base.trim_end_matches('/'));
    let body = serde_json::json!({
        "path": store_path,
        "keep_revisions": opts.keep_revisions,
        "keep_days": opts.keep_days,
    });
    runtime
        .block_on(with_retries(opts.attempts, || {
            let req = with_token(http.put(&url), opts.token).json(&body);
            let url = url.clone();
            async move {
                let resp = req.send().await.map_err(|e| Failure { message: format!("{url}: {e}"), retry: true })?;
                let resp = check(resp, &url).await?;
                resp.json::<PinRevision>()
                    .await
                    .map_err(|e| Failure { message: format!("reading the answer: {e}"), retry: false })
            }
        }))
        .map_err(CacheError::Other)
}
