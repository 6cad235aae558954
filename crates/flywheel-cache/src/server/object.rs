//! A stored NAR streamed from object storage: the bytes go to the client as they arrive from
//! the store, never whole in memory, with the exact length the index records. HEAD needs no
//! request to the store; a single byte range is passed on to it.

#![allow(clippy::result_large_err)]

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::routes::internal;
use crate::storage::s3::ObjectRef;

/// What of the request matters here (a request's body is not `Sync`, so it stays behind).
pub struct Asked {
    pub head: bool,
    pub range: Option<String>,
}

impl Asked {
    pub fn of(req: &Request) -> Self {
        Asked {
            head: req.method() == Method::HEAD,
            range: req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_string),
        }
    }
}

pub async fn serve(object: ObjectRef, size: u64, asked: Asked) -> Result<Response, Response> {
    let range = match asked.range.as_deref() {
        None => None,
        Some(r) => match parse_range(r, size) {
            Some(range) => Some(range),
            None => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                    "the range is not satisfiable\n",
                )
                    .into_response())
            }
        },
    };
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-nix-nar")
        .header(header::ACCEPT_RANGES, "bytes");
    builder = match &range {
        Some(r) => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", r.start, r.end - 1))
            .header(header::CONTENT_LENGTH, r.end - r.start),
        None => builder.status(StatusCode::OK).header(header::CONTENT_LENGTH, size),
    };
    if asked.head {
        return builder.body(Body::empty()).map_err(internal);
    }
    let (stored, mut rx) = object.fetch(range).await.map_err(internal)?;
    if stored != size {
        return Err(internal(format!("the stored NAR has {stored} bytes, the index says {size}")));
    }
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    builder.body(Body::from_stream(stream)).map_err(internal)
}

/// One range of `bytes=A-B`, `bytes=A-` or `bytes=-N` within `size`, as a half-open range.
fn parse_range(header: &str, size: u64) -> Option<std::ops::Range<u64>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (a, "") => (a.parse().ok()?, size),
        (a, b) => (a.parse().ok()?, b.parse::<u64>().ok()?.saturating_add(1).min(size)),
    };
    (start < end && end <= size).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Some(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Some(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Some(95..100));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
