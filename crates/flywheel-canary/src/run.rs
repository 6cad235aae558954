//! Runs the steps in order, each on its own thread under a time limit: a step that hangs (a
//! driver call that never returns) fails with "timed out", and the run goes on and reports.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::checks;
use crate::context::{default_limit, Ctx};
use crate::events::{Event, GithubJob, RunEnd, RunStart};
use crate::step::{Outcome, Status, StepName, StepResult};

pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Runs the canary. `emit` sees every event as it happens (to stream it to a file); the last is
/// `run-end`.
pub fn run(ctx: Arc<Ctx>, emit: &mut dyn FnMut(&Event)) {
    let opts = &ctx.opts;
    let steps: Vec<StepName> = StepName::ALL.into_iter().collect();
    let github = GithubJob::from_env();
    let run_id = match &github {
        Some(g) => format!("{}-{}", g.run_id, if g.run_attempt.is_empty() { "1" } else { &g.run_attempt }),
        None => random_id(),
    };
    emit(&Event::RunStart(RunStart {
        run_id,
        time: rfc3339(ctx.started_at),
        host: rustix::system::uname().nodename().to_string_lossy().into_owned(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        steps: steps.clone(),
        required: steps.iter().copied().filter(|s| opts.require.contains(s)).collect(),
        github,
    }));

    let mut failed = Vec::new();
    for step in steps {
        let required = opts.require.contains(&step);
        let started_at = rfc3339(OffsetDateTime::now_utc());
        let result = if opts.skip.contains(&step) {
            StepResult::skipped(step, required, started_at, "skipped by --skip")
        } else {
            let limit = opts.limits.get(&step).copied().unwrap_or_else(|| default_limit(step));
            tracing::info!("{step}: running (limit {} s)", limit.as_secs());
            let started = Instant::now();
            let outcome = run_limited(&ctx, step, limit);
            StepResult::from_outcome(step, required, started_at, started.elapsed().as_millis() as u64, outcome)
        };
        if !result.ok() {
            failed.push(step);
        }
        emit(&Event::Step(result));
    }
    emit(&Event::RunEnd(RunEnd {
        time: rfc3339(OffsetDateTime::now_utc()),
        status: if failed.is_empty() { Status::Pass } else { Status::Fail },
        duration_ms: ctx.started.elapsed().as_millis() as u64,
        failed,
    }));
}

/// Runs one step on its own thread. A step that outlives its limit is left running (a thread
/// stuck in a driver call cannot be stopped); the process exits without waiting for it.
fn run_limited(ctx: &Arc<Ctx>, step: StepName, limit: Duration) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let worker = Arc::clone(ctx);
    let spawned = std::thread::Builder::new().name(format!("canary-{step}")).spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| checks::run(step, &worker)));
        let _ = tx.send(outcome);
    });
    if let Err(e) = spawned {
        let mut o = Outcome::new();
        o.fail(format!("could not start the step's thread: {e}"), "the machine is out of threads or memory");
        return o;
    }
    match rx.recv_timeout(limit) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "no message".into());
            let mut o = Outcome::new();
            o.fail(format!("the step panicked: {what}"), "a bug in flywheel: report it with events.jsonl");
            o
        }
        Err(_) => {
            let mut o = Outcome::new();
            o.fail(format!("timed out after {} s", limit.as_secs_f64()), timeout_remedy(step));
            o
        }
    }
}

fn timeout_remedy(step: StepName) -> &'static str {
    match step {
        StepName::Gpu | StepName::Cuda | StepName::Cleanup => {
            "a driver call did not return: look for Xid errors in the node's kernel log (dmesg), and drain the node if the GPU is stuck"
        }
        StepName::Vulkan => "the Vulkan loader or an ICD hung: check VK_ICD_FILENAMES and the driver's ICD file",
        StepName::Cache => "the cache did not answer in time: check the cache server and the network path to it",
        StepName::Queue => "the GitHub API did not answer in time: check the runner's network",
        StepName::Bootstrap => "a check of the runner environment hung (the Nix daemon, a volume): check the runner pod",
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("{}", OffsetDateTime::now_utc().unix_timestamp_nanos());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
