//! Request bodies, read within bounds: a size limit checked against the declared length before
//! reading and against what arrives while reading, and an idle deadline between chunks, so a
//! client that trickles or stops never holds a request (and its client's share) for ever.

#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use http_body_util::BodyExt;

use super::routes::text;

/// The next chunk of `body` (None at its end), or 408 once `idle` passes without one.
pub(super) async fn next_chunk(body: &mut Body, idle: Duration) -> Result<Option<Bytes>, Response> {
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                return Err(text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("no byte of the request body came for {} s", idle.as_secs()),
                ))
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(text(StatusCode::BAD_REQUEST, format!("reading the request body: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing the server reads.
        if let Ok(data) = frame.into_data() {
            return Ok(Some(data));
        }
    }
}

/// The declared length of `req`'s body, if it declares one.
pub(super) fn declared_length(req: &Request) -> Option<u64> {
    req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// The whole body of `req` when it is at most `limit` bytes; `what` names it in the 413.
pub(super) async fn read_all(req: Request, limit: usize, idle: Duration, what: &str) -> Result<Bytes, Response> {
    let too_large = || text(StatusCode::PAYLOAD_TOO_LARGE, format!("{what} is at most {limit} bytes"));
    if declared_length(&req).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = req.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = next_chunk(&mut body, idle).await? {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}
