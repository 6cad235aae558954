//! The lane's status: `GET /` (the page), `GET /api/v1/status` (its JSON), and canary runs:
//! `POST /api/v1/canary/runs` (a canary token) and `GET /api/v1/canary/runs?lane=NAME`.

#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::extract::{Query, Request};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::authorize_canary;
use super::routes::{blocking, denied, internal, method_not_allowed, now, text};
use super::State;
use crate::canary_runs::{CanaryRun, MAX_RECORD_BYTES, MAX_RUNS};

fn json(status: StatusCode, value: &impl serde::Serialize) -> Result<Response, Response> {
    let body = serde_json::to_vec(value).map_err(internal)?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// How long a gathered status is served again: a burst of page views costs one gathering.
const STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// A page of `GET /api/v1/canary/runs` holds at most this many bytes of runs (and at least one).
const RUNS_PAGE_BYTES: usize = 4 << 20;
/// A run that starts later than this after the server's clock is refused.
const CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// `http://HOST` from the request's Host header, when it is a plausible host[:port].
fn base_of(req: &Request) -> String {
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let plausible = !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    format!("http://{}", if plausible { host } else { "localhost" })
}

pub(super) async fn status(state: &Arc<State>, req: Request, page: bool) -> Result<Response, Response> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(method_not_allowed());
    }
    let base = base_of(&req);
    let cached = state
        .status
        .lock()
        .ok()
        .and_then(|c| c.as_ref().filter(|(at, _)| at.elapsed() < STATUS_TTL).map(|(_, s)| s.clone()));
    let status = match cached {
        Some(s) => s,
        None => {
            let gathered =
                blocking(state, move |s| crate::status::gather(s.index(), &s.opts.caches, now()).map_err(internal))
                    .await?;
            let gathered = Arc::new(gathered);
            if let Ok(mut c) = state.status.lock() {
                *c = Some((std::time::Instant::now(), gathered.clone()));
            }
            gathered
        }
    };
    let status = status.with_base(&base);
    if page {
        let page = crate::status::html::render(&status);
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
    } else {
        json(StatusCode::OK, &status)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    lane: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

pub(super) async fn canary_runs(state: &Arc<State>, req: Request) -> Result<Response, Response> {
    match *req.method() {
        Method::POST => publish(state, req).await,
        Method::GET | Method::HEAD => {
            let Query(q) = Query::<RunsQuery>::try_from_uri(req.uri())
                .map_err(|e| text(StatusCode::BAD_REQUEST, format!("the query: {e}")))?;
            let limit = q.limit.unwrap_or(100).clamp(1, MAX_RUNS);
            let offset = q.offset.unwrap_or(0);
            let Some(lane) = q.lane else {
                let lanes = blocking(state, |s| s.index().canary_lanes().map_err(internal)).await?;
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("which lane: ?lane=NAME (lanes with runs: {})", lanes.join(", ")),
                ));
            };
            let page = blocking(state, move |s| {
                // One more than asked: whether there is a next page.
                let kept = s.index().canary_runs(&lane, offset, limit + 1).map_err(internal)?;
                let mut runs = Vec::new();
                let (mut taken, mut bytes) = (0, 0);
                for stored in kept.iter().take(limit) {
                    // The page stops at its byte budget; the next one starts where it stopped.
                    if taken > 0 && bytes + stored.record.len() > RUNS_PAGE_BYTES {
                        break;
                    }
                    bytes += stored.record.len();
                    taken += 1;
                    runs.extend(CanaryRun::from_stored(stored));
                }
                let next_offset = (taken < kept.len()).then_some(offset + taken);
                Ok(crate::status::LaneRuns { runs, lane, next_offset })
            })
            .await?;
            json(StatusCode::OK, &page)
        }
        _ => Err(method_not_allowed()),
    }
}

async fn publish(state: &Arc<State>, req: Request) -> Result<Response, Response> {
    let headers = req.headers().clone();
    blocking(state, move |s| authorize_canary(s, &headers, now()).map_err(denied)).await?;
    let body = super::body::read_all(req, MAX_RECORD_BYTES, state.opts.limits.idle_timeout, "a canary run").await?;
    let run = CanaryRun::parse(&body).map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))?;
    let stored = run.to_stored(now()).map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))?;
    if stored.started_at > now().saturating_mul(1000) + CLOCK_SKEW_MS {
        return Err(text(
            StatusCode::BAD_REQUEST,
            format!("canary run: started_at {} is in the future (the server's clock says otherwise)", run.started_at),
        ));
    }
    let (max_lanes, keep) = (state.opts.limits.max_lanes, state.opts.history.canary_keep);
    blocking(state, move |s| match s.index().publish_canary_run(&stored, max_lanes, keep) {
        Ok(()) => Ok(()),
        Err(e @ crate::index::IndexError::TooManyLanes(_)) => Err(text(StatusCode::CONFLICT, e.to_string())),
        Err(e) => Err(internal(e)),
    })
    .await?;
    if let Ok(mut c) = state.status.lock() {
        *c = None;
    }
    tracing::info!(lane = %run.lane, run_id = %run.run_id, status = %run.status, "canary run published");
    json(StatusCode::CREATED, &serde_json::json!({"lane": run.lane, "run_id": run.run_id}))
}
