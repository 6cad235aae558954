//! Canary runs as the lane publishes them (`flywheel canary --publish`, `POST
//! /api/v1/canary/runs`) and the server keeps and shows them: who ran where on what image and
//! driver, each step's status and time, the figures the page plots, and what to do about a
//! failure. docs/status-page.md documents the format for other dashboards.

use serde::{Deserialize, Serialize};

use crate::index::history::StoredRun;

/// The largest run record the server takes.
pub const MAX_RECORD_BYTES: usize = 256 << 10;
/// Tries of a publish before giving up.
const PUBLISH_TRIES: u32 = 3;

/// The steps and the runs a request may ask for.
const MAX_STEPS: usize = 64;
pub const MAX_RUNS: usize = 500;

/// Fields this server does not know are ignored, so a newer canary can publish to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CanaryRun {
    /// The lane (a runner scale set): 1 to 128 characters.
    pub lane: String,
    /// Unique in its lane: GitHub's run id and attempt, or random.
    pub run_id: String,
    /// The runner (its name, or the host).
    pub runner: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub duration_ms: u64,
    /// `pass` when every required step passed, else `fail`.
    pub status: String,
    #[serde(default)]
    pub image_digest: Option<String>,
    /// The NVIDIA userspace the image carries, and the host's kernel module.
    #[serde(default)]
    pub driver_version: Option<String>,
    #[serde(default)]
    pub kernel_module_version: Option<String>,
    /// The flywheel that ran it.
    #[serde(default)]
    pub version: Option<String>,
    /// The job's page, when GitHub ran it.
    #[serde(default)]
    pub url: Option<String>,
    pub steps: Vec<CanaryStep>,
    /// Pinned host-to-device and device-to-host copies, bytes per second: the slowest GPU's.
    #[serde(default)]
    pub h2d_bytes_per_second: Option<f64>,
    #[serde(default)]
    pub d2h_bytes_per_second: Option<f64>,
    /// The cache step's signed pull and its push.
    #[serde(default)]
    pub cache_pull_bytes_per_second: Option<f64>,
    #[serde(default)]
    pub cache_push_bytes_per_second: Option<f64>,
    #[serde(default)]
    pub cache_narinfo_latency_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub name: String,
    /// `pass`, `fail` or `skip`.
    pub status: String,
    pub required: bool,
    pub duration_ms: u64,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub remedy: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("canary run: {0}")]
pub struct BadRun(pub String);

fn text(what: &str, s: &str, max: usize) -> Result<(), BadRun> {
    if s.is_empty() || s.chars().count() > max {
        return Err(BadRun(format!("{what}: expected 1 to {max} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(BadRun(format!("{what}: control characters are not allowed")));
    }
    Ok(())
}

fn optional(what: &str, s: &Option<String>, max: usize) -> Result<(), BadRun> {
    s.as_deref().map_or(Ok(()), |s| text(what, s, max))
}

fn rate(what: &str, v: Option<f64>) -> Result<(), BadRun> {
    match v {
        Some(v) if !(v.is_finite() && v >= 0.0) => Err(BadRun(format!("{what}: expected a number, 0 or more"))),
        _ => Ok(()),
    }
}

fn status(what: &str, s: &str, allowed: &[&str]) -> Result<(), BadRun> {
    if allowed.contains(&s) {
        Ok(())
    } else {
        Err(BadRun(format!("{what}: {s:?} is not one of {}", allowed.join(", "))))
    }
}

impl CanaryRun {
    /// Reads and checks a published record.
    pub fn parse(body: &[u8]) -> Result<CanaryRun, BadRun> {
        if body.len() > MAX_RECORD_BYTES {
            return Err(BadRun(format!("larger than {MAX_RECORD_BYTES} bytes")));
        }
        let run: CanaryRun = serde_json::from_slice(body).map_err(|e| BadRun(e.to_string()))?;
        run.check()?;
        Ok(run)
    }

    pub fn check(&self) -> Result<(), BadRun> {
        text("lane", &self.lane, 128)?;
        text("run_id", &self.run_id, 200)?;
        text("runner", &self.runner, 200)?;
        self.started_at_unix()?;
        status("status", &self.status, &["pass", "fail"])?;
        optional("image_digest", &self.image_digest, 200)?;
        optional("driver_version", &self.driver_version, 64)?;
        optional("kernel_module_version", &self.kernel_module_version, 64)?;
        optional("version", &self.version, 64)?;
        optional("url", &self.url, 1000)?;
        if self.steps.len() > MAX_STEPS {
            return Err(BadRun(format!("more than {MAX_STEPS} steps")));
        }
        for s in &self.steps {
            text("step name", &s.name, 64)?;
            status("step status", &s.status, &["pass", "fail", "skip"])?;
            // Reasons and remedies are prose that may span lines; only their length is bounded.
            for t in [&s.reason, &s.remedy].into_iter().flatten() {
                if t.len() > 8192 {
                    return Err(BadRun(format!("step {}: a reason or remedy over 8192 bytes", s.name)));
                }
            }
        }
        rate("h2d_bytes_per_second", self.h2d_bytes_per_second)?;
        rate("d2h_bytes_per_second", self.d2h_bytes_per_second)?;
        rate("cache_pull_bytes_per_second", self.cache_pull_bytes_per_second)?;
        rate("cache_push_bytes_per_second", self.cache_push_bytes_per_second)?;
        rate("cache_narinfo_latency_seconds", self.cache_narinfo_latency_seconds)?;
        Ok(())
    }

    pub fn started_at_unix(&self) -> Result<i64, BadRun> {
        unix_of(&self.started_at)
            .ok_or_else(|| BadRun(format!("started_at {:?}: expected an RFC 3339 UTC time", self.started_at)))
    }

    pub fn passed(&self) -> bool {
        self.status == "pass"
    }

    /// The first required step that failed, else the first that failed.
    pub fn failed_step(&self) -> Option<&CanaryStep> {
        let failed = |s: &&CanaryStep| s.status == "fail";
        self.steps.iter().filter(failed).find(|s| s.required).or_else(|| self.steps.iter().find(failed))
    }

    pub fn to_stored(&self, received_at: i64) -> Result<StoredRun, BadRun> {
        // Milliseconds: runs of a fast canary start within a second of each other, and must
        // still come back in the order they ran.
        let started_at = unix_ms_of(&self.started_at)
            .ok_or_else(|| BadRun(format!("started_at {:?}: expected an RFC 3339 UTC time", self.started_at)))?;
        Ok(StoredRun {
            lane: self.lane.clone(),
            run_id: self.run_id.clone(),
            started_at,
            status: self.status.clone(),
            received_at,
            record: serde_json::to_string(self).map_err(|e| BadRun(e.to_string()))?,
        })
    }

    /// A kept run; `None` for a record this server cannot read (written by another version).
    pub fn from_stored(run: &StoredRun) -> Option<CanaryRun> {
        serde_json::from_str(&run.record).ok()
    }
}

/// Unix seconds of an RFC 3339 UTC time (`2026-11-25T09:00:00.5Z`).
pub fn unix_of(rfc3339: &str) -> Option<i64> {
    unix_ms_of(rfc3339).map(|ms| ms.div_euclid(1000))
}

/// Unix milliseconds of an RFC 3339 UTC time.
pub fn unix_ms_of(rfc3339: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(rfc3339.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Sends `run` to the server at `base` (`http://HOST:PORT`) with a canary token, retrying
/// what may pass later (no answer, 5xx) with the push and pull clients' backoff; a refusal
/// (a wrong token, a bad record) is not retried.
pub async fn publish(http: &reqwest::Client, base: &str, token: &str, run: &CanaryRun) -> Result<(), String> {
    let url = format!("{}/api/v1/canary/runs", base.trim_end_matches('/'));
    let tries = std::sync::atomic::AtomicU32::new(0);
    crate::http::with_retries(PUBLISH_TRIES, || async {
        tries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let resp = http
            .post(&url)
            .bearer_auth(token.trim())
            .json(run)
            .send()
            .await
            .map_err(|e| crate::http::Failure { message: format!("{url}: {e}"), retry: true })?;
        crate::http::check_with_hint(resp, &url, "").await.map(drop)
    })
    .await
    .map_err(|e| match tries.into_inner() {
        1 => e,
        n => format!("{e} (after {n} tries)"),
    })
}

#[cfg(test)]
pub(crate) fn sample(lane: &str, run_id: &str, started_at: &str, pass: bool) -> CanaryRun {
    CanaryRun {
        lane: lane.into(),
        run_id: run_id.into(),
        runner: "gpu-runner-abc12".into(),
        started_at: started_at.into(),
        duration_ms: 12_345,
        status: if pass { "pass" } else { "fail" }.into(),
        image_digest: Some("sha256:1111".into()),
        driver_version: Some("580.95.05".into()),
        kernel_module_version: Some("580.95.05".into()),
        version: Some("0.1.0".into()),
        url: None,
        steps: vec![
            CanaryStep {
                name: "gpu".into(),
                status: if pass { "pass" } else { "fail" }.into(),
                required: true,
                duration_ms: 800,
                reason: (!pass).then(|| "GPU 0: 3 uncorrected ECC errors".into()),
                remedy: (!pass).then(|| "drain the node and replace the GPU".into()),
            },
            CanaryStep {
                name: "cache".into(),
                status: "pass".into(),
                required: true,
                duration_ms: 2500,
                reason: None,
                remedy: None,
            },
        ],
        h2d_bytes_per_second: Some(25.1e9),
        d2h_bytes_per_second: Some(26.3e9),
        cache_pull_bytes_per_second: Some(180e6),
        cache_push_bytes_per_second: Some(90e6),
        cache_narinfo_latency_seconds: Some(0.002),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_is_checked() {
        let run = sample("gpu-h100", "123-1", "2026-11-25T09:00:00.5Z", false);
        let body = serde_json::to_vec(&run).expect("json");
        let back = CanaryRun::parse(&body).expect("parse");
        assert_eq!(back, run);
        assert_eq!(back.started_at_unix(), Ok(1_795_597_200));
        assert_eq!(back.failed_step().map(|s| s.name.as_str()), Some("gpu"));
        let stored = back.to_stored(5).expect("stored");
        assert_eq!((stored.started_at, stored.status.as_str()), (1_795_597_200_500, "fail"), "in milliseconds");
        assert_eq!(CanaryRun::from_stored(&stored), Some(run));
    }

    #[test]
    fn runs_within_one_second_keep_their_order() {
        let at = |t: &str| sample("l", "1", t, true).to_stored(0).expect("stored").started_at;
        assert!(at("2026-11-25T09:00:00.100Z") < at("2026-11-25T09:00:00.900Z"));
        assert_eq!(at("2026-11-25T09:00:01Z") - at("2026-11-25T09:00:00.900Z"), 100);
    }

    #[test]
    fn bad_records_are_refused_with_what_is_wrong() {
        let bad = |f: &dyn Fn(&mut CanaryRun), expect: &str| {
            let mut run = sample("l", "1", "2026-11-25T09:00:00Z", true);
            f(&mut run);
            let e = CanaryRun::parse(&serde_json::to_vec(&run).expect("json")).expect_err("refused");
            assert!(e.to_string().contains(expect), "{e}");
        };
        bad(&|r| r.lane = String::new(), "lane");
        bad(&|r| r.lane = "x".repeat(129), "lane");
        bad(&|r| r.lane = "a\u{1b}[31m".into(), "control");
        bad(&|r| r.status = "ok".into(), "status");
        bad(&|r| r.started_at = "yesterday".into(), "started_at");
        bad(&|r| r.steps[0].status = "passed".into(), "step status");
        bad(&|r| r.h2d_bytes_per_second = Some(-1.0), "h2d");
        assert!(CanaryRun::parse(b"{\"lane\":1}").is_err());
        assert!(CanaryRun::parse(&vec![b' '; MAX_RECORD_BYTES + 1]).unwrap_err().0.contains("larger"));
        let mut v = serde_json::to_value(sample("l", "1", "2026-11-25T09:00:00Z", true)).expect("json");
        v["from_a_newer_canary"] = 1.into();
        assert!(CanaryRun::parse(&serde_json::to_vec(&v).expect("json")).is_ok(), "unknown fields are ignored");
    }
}
