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

pub(super) async fn status(state: &Arc<State>, req: Request, page: bool) -> Result<Response, Response> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(method_not_allowed());
    }
    let host = req.headers().get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost").to_string();
    let base = format!("http://{host}");
    let status =
        blocking(state, move |s| crate::status::gather(s.index(), &s.opts.caches, &base, now()).map_err(internal))
            .await?;
    if page {
        let page = crate::status::html::render(&status);
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
    } else {
        json(StatusCode::OK, &status)
    }
}

#[derive(Deserialize)]
struct RunsQuery {
    lane: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn canary_runs(state: &Arc<State>, req: Request) -> Result<Response, Response> {
    match *req.method() {
        Method::POST => publish(state, req).await,
        Method::GET | Method::HEAD => {
            let Query(q) = Query::<RunsQuery>::try_from_uri(req.uri())
                .map_err(|e| text(StatusCode::BAD_REQUEST, format!("the query: {e}")))?;
            let limit = q.limit.unwrap_or(100).clamp(1, MAX_RUNS);
            let Some(lane) = q.lane else {
                let lanes = blocking(state, |s| s.index().canary_lanes().map_err(internal)).await?;
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("which lane: ?lane=NAME (lanes with runs: {})", lanes.join(", ")),
                ));
            };
            let runs = blocking(state, move |s| {
                let kept = s.index().canary_runs(&lane, limit).map_err(internal)?;
                Ok(crate::status::LaneRuns { runs: kept.iter().filter_map(CanaryRun::from_stored).collect(), lane })
            })
            .await?;
            json(StatusCode::OK, &runs)
        }
        _ => Err(method_not_allowed()),
    }
}

async fn publish(state: &Arc<State>, req: Request) -> Result<Response, Response> {
    let headers = req.headers().clone();
    blocking(state, move |s| authorize_canary(s, &headers, now()).map_err(denied)).await?;
    let body = axum::body::to_bytes(req.into_body(), MAX_RECORD_BYTES).await.map_err(|_| {
        text(StatusCode::PAYLOAD_TOO_LARGE, format!("a canary run is at most {MAX_RECORD_BYTES} bytes"))
    })?;
    let run = CanaryRun::parse(&body).map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))?;
    let stored = run.to_stored(now()).map_err(|e| text(StatusCode::BAD_REQUEST, e.to_string()))?;
    blocking(state, move |s| s.index().put_canary_run(&stored).map_err(internal)).await?;
    tracing::info!(lane = %run.lane, run_id = %run.run_id, status = %run.status, "canary run published");
    json(StatusCode::CREATED, &serde_json::json!({"lane": run.lane, "run_id": run.run_id}))
}
