//! Nothing the server sends runs in a browser. Listings and build logs are uploaded by writers
//! and served from the status page's origin, so they go out as JSON and plain text whatever
//! Content-Type they came with, and every response carries `nosniff` (no guessing HTML from
//! their bytes) and a Content-Security-Policy that allows no script at all: the page itself is
//! server-rendered HTML with inline styles and SVG.

use axum::http::{header, HeaderMap, HeaderValue};

pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Adds the headers to a response. The listener calls it on every response as it leaves: a
/// layer on the router would cost a boxed service clone per request (docs/benchmarks.md).
pub(super) fn add_headers(h: &mut HeaderMap) {
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

/// The Content-Type a stored listing (`<hash>.ls`) or build log is served with.
pub fn served_type(name: &str) -> &'static str {
    if name.ends_with(".ls") {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    }
}

/// A Content-Encoding as Nix sends them (`ls-compression`, `log-compression`: br, xz, bzip2,
/// gzip, zstd): one short lowercase token, or none.
pub fn checked_encoding(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() || value == "identity" {
        return Ok(None);
    }
    let ok = value.len() <= 16 && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(Some(value.to_string()))
    } else {
        Err(format!(
            "Content-Encoding {:?}: expected one token such as br, xz, gzip or zstd",
            value.chars().take(40).collect::<String>()
        ))
    }
}
