//! Canary run records, as anyone with a canary token publishes them (`POST
//! /api/v1/canary/runs`) and the status page shows them to anyone:
//! - parsing never panics, and refuses a body over `MAX_RECORD_BYTES`;
//! - an accepted record keeps every limit docs/status-page.md and `CanaryRun::check` promise
//!   (checked here on their own, not through `check`);
//! - it can be stored, and what is stored reads back (`from_stored`) equal and still valid,
//!   with the start time in milliseconds and seconds agreeing;
//! - on the status page, nothing of it becomes markup: the page has exactly as many `<`, `>`,
//!   `"` and `'` as the page of the same record with those characters replaced.
#![no_main]

use flywheel_cache::canary_runs::{unix_ms_of, unix_of, CanaryRun, MAX_RECORD_BYTES};
use flywheel_cache::status::{html, Failure, LaneStatus, Status};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_800_000_000;

fn text_ok(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.chars().count()) && !s.chars().any(char::is_control)
}

fn limits_hold(run: &CanaryRun) {
    assert!(text_ok(&run.lane, 128), "lane {:?}", run.lane);
    assert!(text_ok(&run.run_id, 200), "run_id {:?}", run.run_id);
    assert!(text_ok(&run.runner, 200), "runner {:?}", run.runner);
    assert!(["pass", "fail"].contains(&run.status.as_str()), "status {:?}", run.status);
    for (v, max) in [
        (&run.image_digest, 200),
        (&run.driver_version, 64),
        (&run.kernel_module_version, 64),
        (&run.version, 64),
        (&run.url, 1000),
    ] {
        if let Some(v) = v {
            assert!(text_ok(v, max), "{v:?}");
        }
    }
    assert!(run.steps.len() <= 64, "{} steps", run.steps.len());
    for s in &run.steps {
        assert!(text_ok(&s.name, 64), "step name {:?}", s.name);
        assert!(["pass", "fail", "skip"].contains(&s.status.as_str()), "step status {:?}", s.status);
        for t in [&s.reason, &s.remedy].into_iter().flatten() {
            assert!(t.len() <= 8192, "a reason or remedy of {} bytes", t.len());
        }
    }
    for v in [
        run.h2d_bytes_per_second,
        run.d2h_bytes_per_second,
        run.cache_pull_bytes_per_second,
        run.cache_push_bytes_per_second,
        run.cache_narinfo_latency_seconds,
    ]
    .into_iter()
    .flatten()
    {
        assert!(v.is_finite() && v >= 0.0, "rate {v}");
    }
    let ms = unix_ms_of(&run.started_at).expect("an accepted started_at parses");
    assert!(ms >= 0);
    assert_eq!(unix_of(&run.started_at), Some(ms.div_euclid(1000)));
}

/// The status page of one lane whose only run is `run` (what `status::gather` builds).
fn page(run: &CanaryRun) -> String {
    let step = run.failed_step();
    let last_failure = (!run.passed()).then(|| Failure {
        run_id: run.run_id.clone(),
        started_at: run.started_at.clone(),
        runner: run.runner.clone(),
        url: run.url.clone(),
        step: step.map(|s| s.name.clone()),
        reason: step.and_then(|s| s.reason.clone()),
        remedy: step.and_then(|s| s.remedy.clone()),
    });
    let lane = LaneStatus {
        lane: run.lane.clone(),
        runs: vec![run.clone(), run.clone()],
        passed: if run.passed() { 2 } else { 0 },
        failed: if run.passed() { 0 } else { 2 },
        image_digest: run.image_digest.clone(),
        driver_version: run.driver_version.clone(),
        last_failure,
    };
    html::render(&Status { generated_at: NOW, caches: vec![], lanes: vec![lane], last_gc: None })
}

/// `run` with every character that could make markup replaced by `x`.
fn defused(run: &CanaryRun) -> CanaryRun {
    let d = |s: &str| s.replace(['<', '>', '"', '\'', '&'], "x");
    let o = |s: &Option<String>| s.as_deref().map(d);
    let mut r = run.clone();
    r.lane = d(&r.lane);
    r.run_id = d(&r.run_id);
    r.runner = d(&r.runner);
    r.image_digest = o(&r.image_digest);
    r.driver_version = o(&r.driver_version);
    r.kernel_module_version = o(&r.kernel_module_version);
    r.version = o(&r.version);
    r.url = o(&r.url);
    for s in &mut r.steps {
        s.name = d(&s.name);
        s.reason = o(&s.reason);
        s.remedy = o(&s.remedy);
    }
    r
}

fn markup(page: &str) -> [usize; 4] {
    ['<', '>', '"', '\''].map(|c| page.matches(c).count())
}

fuzz_target!(|data: &[u8]| {
    let parsed = CanaryRun::parse(data);
    if data.len() > MAX_RECORD_BYTES {
        assert!(parsed.is_err(), "a record over {MAX_RECORD_BYTES} bytes was accepted");
    }
    let Ok(run) = parsed else { return };
    limits_hold(&run);

    let stored = run.to_stored(NOW).expect("an accepted run can be stored");
    assert_eq!(
        (stored.lane.as_str(), stored.run_id.as_str(), stored.status.as_str()),
        (&*run.lane, &*run.run_id, &*run.status)
    );
    assert_eq!(stored.received_at, NOW);
    assert_eq!(Some(stored.started_at), unix_ms_of(&run.started_at));
    assert_eq!(run.started_at_unix().ok(), Some(stored.started_at.div_euclid(1000)));
    let back = CanaryRun::from_stored(&stored).expect("a stored run reads back");
    assert_eq!(back, run, "a stored run reads back different");
    back.check().expect("a stored run is still valid");
    // What the server keeps is no larger than what it took, give or take the fields a record
    // left out (written as `null`: 9 of the run's, 2 a step) and rates written as floats
    // (`1e15` as `1000000000000000.0`).
    let bound = data.len() + 9 * 32 + 5 * 16 + run.steps.len() * 32;
    assert!(stored.record.len() <= bound, "{} bytes kept of a {}-byte record", stored.record.len(), data.len());

    let shown = page(&run);
    assert_eq!(markup(&shown), markup(&page(&defused(&run))), "the record's text became markup");
});
