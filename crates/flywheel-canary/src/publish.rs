//! `flywheel canary --publish URL`: the finished run, reduced to what the cache server's status
//! page keeps ([`CanaryRun`]), sent to `URL/api/v1/canary/runs` with a canary token. A run is
//! published after it is judged, and a failed publish is reported, never fatal: the lane's
//! health does not depend on the page.

use std::time::Duration;

use flywheel_cache::canary_runs::{CanaryRun, CanaryStep};

use crate::events::Run;
use crate::step::StepName;

/// What the server keeps of `run`, for `lane`.
pub fn record(run: &Run, lane: &str) -> CanaryRun {
    let detail = |step: StepName, key: &str| {
        run.step(step).and_then(|s| s.details.get(key)).and_then(|v| v.as_str()).map(str::to_string)
    };
    // The slowest GPU's copies: a lane is as good as its worst device.
    let slowest = |name: &str| {
        run.steps
            .iter()
            .flat_map(|s| s.metrics.iter())
            .filter(|m| m.name == name && m.value.is_finite())
            .map(|m| m.value)
            .reduce(f64::min)
    };
    let runner = run.start.github.as_ref().map(|g| g.runner_name.clone()).filter(|n| !n.is_empty());
    CanaryRun {
        lane: lane.to_string(),
        run_id: run.start.run_id.clone(),
        runner: runner.unwrap_or_else(|| run.start.host.clone()),
        started_at: run.start.time.clone(),
        duration_ms: run.end.as_ref().map_or_else(|| run.steps.iter().map(|s| s.duration_ms).sum(), |e| e.duration_ms),
        status: if run.passed() { "pass" } else { "fail" }.to_string(),
        image_digest: detail(StepName::Bootstrap, "image_digest"),
        driver_version: detail(StepName::Bootstrap, "image_driver_version")
            .or_else(|| detail(StepName::Gpu, "driver_version")),
        kernel_module_version: detail(StepName::Bootstrap, "kernel_module_version"),
        version: Some(run.start.version.clone()),
        url: run.start.github.as_ref().map(|g| g.run_url()),
        steps: run
            .steps
            .iter()
            .map(|s| CanaryStep {
                name: s.step.as_str().to_string(),
                status: s.status.as_str().to_string(),
                required: s.required,
                duration_ms: s.duration_ms,
                reason: s.reason.clone(),
                remedy: s.remedy.clone(),
            })
            .collect(),
        h2d_bytes_per_second: slowest("cuda_h2d_bytes_per_second"),
        d2h_bytes_per_second: slowest("cuda_d2h_bytes_per_second"),
        cache_pull_bytes_per_second: slowest("cache_pull_bytes_per_second"),
        cache_push_bytes_per_second: slowest("cache_push_bytes_per_second"),
        cache_narinfo_latency_seconds: run
            .step(StepName::Cache)
            .and_then(|s| s.metrics.iter().find(|m| m.name == "cache_narinfo_latency_seconds"))
            .map(|m| m.value),
    }
}

/// Sends `record` to the server at `base` (`http://HOST:PORT`): see
/// [`flywheel_cache::canary_runs::publish`]. `timeout` bounds each try.
pub fn publish(base: &str, token: &str, record: &CanaryRun, timeout: Duration) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let http = reqwest::Client::builder().timeout(timeout).build().map_err(|e| format!("an HTTP client: {e}"))?;
    runtime.block_on(flywheel_cache::canary_runs::publish(&http, base, token, record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{RunEnd, RunStart};
    use crate::step::{Outcome, Status, StepResult};

    #[test]
    fn a_run_becomes_the_record_the_server_keeps() {
        let mut boot = Outcome::new();
        boot.detail("image_digest", "sha256:abc");
        boot.detail("image_driver_version", "580.95.05");
        let mut cuda = Outcome::new();
        cuda.metric_with("cuda_h2d_bytes_per_second", 25e9, &[("gpu", "0")]);
        cuda.metric_with("cuda_h2d_bytes_per_second", 12e9, &[("gpu", "1")]);
        cuda.metric_with("cuda_d2h_bytes_per_second", 26e9, &[("gpu", "0")]);
        let mut cache = Outcome::new();
        cache.metric_with("cache_pull_bytes_per_second", 150e6, &[("path", "known")]);
        cache.fail("narinfo of /nix/store/x: 503", "check the cache server");
        let run = Run {
            start: RunStart {
                run_id: "7-1".into(),
                time: "2026-11-25T10:00:00Z".into(),
                host: "node-3".into(),
                version: "0.1.0".into(),
                steps: vec![StepName::Bootstrap, StepName::Cuda, StepName::Cache],
                required: vec![StepName::Cache],
                github: None,
            },
            steps: vec![
                StepResult::from_outcome(StepName::Bootstrap, false, "t".into(), 10, boot),
                StepResult::from_outcome(StepName::Cuda, false, "t".into(), 900, cuda),
                StepResult::from_outcome(StepName::Cache, true, "t".into(), 2000, cache),
            ],
            end: Some(RunEnd {
                time: "t".into(),
                status: Status::Fail,
                duration_ms: 2950,
                failed: vec![StepName::Cache],
            }),
        };
        let r = record(&run, "gpu-h100");
        assert_eq!((r.lane.as_str(), r.run_id.as_str(), r.runner.as_str()), ("gpu-h100", "7-1", "node-3"));
        assert_eq!((r.status.as_str(), r.duration_ms), ("fail", 2950));
        assert_eq!(r.image_digest.as_deref(), Some("sha256:abc"));
        assert_eq!(r.driver_version.as_deref(), Some("580.95.05"));
        assert_eq!(r.h2d_bytes_per_second, Some(12e9), "the slowest GPU");
        assert_eq!(r.d2h_bytes_per_second, Some(26e9));
        assert_eq!(r.cache_pull_bytes_per_second, Some(150e6));
        let failed = r.failed_step().expect("a failed step");
        assert_eq!(failed.name, "cache");
        assert_eq!(failed.remedy.as_deref(), Some("check the cache server"));
        r.check().expect("the server accepts it");
    }

    #[test]
    fn nothing_listening_is_a_failure_after_retries_not_a_panic() {
        let run = record(
            &Run {
                start: RunStart {
                    run_id: "1".into(),
                    time: "2026-11-25T10:00:00Z".into(),
                    host: "h".into(),
                    version: "0.1.0".into(),
                    steps: vec![],
                    required: vec![],
                    github: None,
                },
                steps: vec![],
                end: None,
            },
            "l",
        );
        assert_eq!(run.status, "fail", "a run without its end did not pass");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
        let base = format!("http://127.0.0.1:{}", port.expect("a free port"));
        let e = publish(&base, "fwc_x", &run, Duration::from_secs(2)).expect_err("nothing listens");
        assert!(e.contains(&base), "{e}");
        assert!(e.contains("after 3 tries"), "{e}");
    }
}
