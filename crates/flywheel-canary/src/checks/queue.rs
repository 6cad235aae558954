//! Queue time: from the job's creation to its start. From GitHub's API for this run's jobs (or
//! a `workflow_job` event payload) when the runner's GITHUB_* environment and a token are
//! there; from `--queued-at` otherwise (the start is then the canary's own start).

use std::time::Duration;

use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::context::Ctx;
use crate::events::GithubJob;
use crate::step::Outcome;

#[derive(Debug, Deserialize)]
pub struct ApiJob {
    pub name: String,
    #[serde(default)]
    pub status: String,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    #[serde(default)]
    pub runner_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JobsPage {
    jobs: Vec<ApiJob>,
}

/// Where a queue time came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Queued {
    pub created: OffsetDateTime,
    pub started: OffsetDateTime,
    pub source: String,
}

pub fn run(ctx: &Ctx) -> Outcome {
    let opts = &ctx.opts.queue;
    let github = GithubJob::from_env();
    let token = opts.github_token.clone().or_else(|| std::env::var("GITHUB_TOKEN").ok()).filter(|t| !t.is_empty());
    let mut o = Outcome::new();
    let mut tried = Vec::new();
    let mut found = None;
    if let Some(g) = &github {
        match from_event_payload() {
            Ok(Some(q)) => found = Some(q),
            Ok(None) => {}
            Err(e) => tried.push(e),
        }
        if found.is_none() {
            match &token {
                Some(t) => match from_api(g, t) {
                    Ok(q) => found = Some(q),
                    Err(e) => tried.push(e),
                },
                None => tried.push("no GitHub token (GITHUB_TOKEN or --github-token) to ask the API".into()),
            }
        }
    }
    if found.is_none() {
        if let Some(at) = opts.queued_at {
            found = Some(Queued { created: at, started: ctx.started_at, source: "--queued-at".into() });
        }
    }
    let Some(q) = found else {
        let why = if github.is_none() {
            "no job to time: not in a GitHub Actions job, and no --queued-at".to_string()
        } else {
            format!("no job to time: {}", tried.join("; "))
        };
        return Outcome::unavailable(
            why,
            "in a workflow, give the job `permissions: actions: read` and GITHUB_TOKEN; by hand, pass --queued-at TIME",
        );
    };
    let wait = q.started - q.created;
    let seconds = wait.as_seconds_f64();
    o.metric("queue_seconds", seconds);
    o.detail("created_at", q.created.format(&Rfc3339).unwrap_or_default());
    o.detail("started_at", q.started.format(&Rfc3339).unwrap_or_default());
    o.detail("source", &q.source);
    o.detail("queue_seconds", seconds);
    o.note(format!("queued {seconds:.1} s (from {})", q.source));
    for e in tried {
        o.note(format!("not used: {e}"));
    }
    if seconds < 0.0 {
        o.fail(
            format!("the job started {:.1} s before it was created: a clock is off", -seconds),
            "synchronise the runner node's clock; if --queued-at was given, check its time zone",
        );
    } else if wait > opts.max_wait {
        o.fail(
            format!("queued {seconds:.0} s, more than {} s", opts.max_wait.as_secs()),
            "the lane had no free runner: raise the scale set's maxRunners, check the ARC listener and the node's GPU allocatable, or look for jobs holding runners",
        );
    }
    o
}

/// A `workflow_job` event's payload has both times.
fn from_event_payload() -> Result<Option<Queued>, String> {
    let Some(path) = std::env::var_os("GITHUB_EVENT_PATH") else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.to_string_lossy()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.to_string_lossy()))?;
    let Some(job) = value.get("workflow_job") else { return Ok(None) };
    let time = |k: &str| job.get(k).and_then(|v| v.as_str()).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    match (time("created_at"), time("started_at")) {
        (Some(created), Some(started)) => {
            Ok(Some(Queued { created, started, source: "the workflow_job event".into() }))
        }
        _ => Ok(None),
    }
}

/// This run attempt's jobs, from the API; ours is the one on this runner (else by its id).
fn from_api(g: &GithubJob, token: &str) -> Result<Queued, String> {
    let api = std::env::var("GITHUB_API_URL").unwrap_or_else(|_| "https://api.github.com".into());
    let attempt = if g.run_attempt.is_empty() { "1" } else { &g.run_attempt };
    let url = format!(
        "{}/repos/{}/actions/runs/{}/attempts/{attempt}/jobs?per_page=100",
        api.trim_end_matches('/'),
        g.repository,
        g.run_id
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let page: JobsPage = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("flywheel-canary/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        let resp = client
            .get(&url)
            .bearer_auth(token)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.json::<JobsPage>().await.map_err(|e| format!("{url}: {e}"))
    })?;
    pick_job(&page.jobs, g).ok_or_else(|| format!("{url}: no job of this run on runner {:?}", g.runner_name))
}

/// Our job among the run's: the one in progress on this runner, else the one named as
/// GITHUB_JOB (the job's id, which is its name unless the workflow gives it a `name:`).
pub fn pick_job(jobs: &[ApiJob], g: &GithubJob) -> Option<Queued> {
    let ours = jobs
        .iter()
        .find(|j| {
            !g.runner_name.is_empty() && j.runner_name.as_deref() == Some(&g.runner_name) && j.status == "in_progress"
        })
        .or_else(|| jobs.iter().find(|j| j.name == g.job))?;
    let parse = |t: &Option<String>| t.as_deref().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
    Some(Queued {
        created: parse(&ours.created_at)?,
        started: parse(&ours.started_at)?,
        source: "the GitHub API".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, runner: Option<&str>, status: &str, created: &str, started: &str) -> ApiJob {
        ApiJob {
            name: name.into(),
            status: status.into(),
            created_at: Some(created.into()),
            started_at: Some(started.into()),
            runner_name: runner.map(String::from),
        }
    }

    #[test]
    fn our_job_is_the_one_on_this_runner() {
        let g = GithubJob { job: "canary".into(), runner_name: "gpu-abc".into(), ..Default::default() };
        let jobs = [
            job("canary", Some("gpu-xyz"), "completed", "2026-11-25T01:00:00Z", "2026-11-25T01:00:05Z"),
            job("canary", Some("gpu-abc"), "in_progress", "2026-11-25T01:00:00Z", "2026-11-25T01:02:30Z"),
        ];
        let q = pick_job(&jobs, &g).expect("found");
        assert_eq!((q.started - q.created).whole_seconds(), 150);
        let g = GithubJob { job: "canary".into(), runner_name: "elsewhere".into(), ..Default::default() };
        let q = pick_job(&jobs, &g).expect("by name");
        assert_eq!((q.started - q.created).whole_seconds(), 5);
        let g = GithubJob { job: "other".into(), ..Default::default() };
        assert!(pick_job(&jobs, &g).is_none());
    }
}
