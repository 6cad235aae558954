//! `flywheel canary`: options from the command line, the run streamed to events.jsonl, and the
//! reports made from it.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use flywheel_canary::context::{self, Options};
use flywheel_canary::events::{write_event, Event, Run};
use flywheel_canary::{report, Ctx, Status, StepName};

use crate::cli::CanaryArgs;

pub fn run(args: CanaryArgs) -> anyhow::Result<()> {
    let opts = options(&args)?;
    // The driver's JIT cache would make the cuda step's kernel a cache hit from the second run
    // on (proving nothing about the JIT) and leave files in $HOME. Set before any thread starts.
    if std::env::var_os("CUDA_CACHE_DISABLE").is_none() {
        std::env::set_var("CUDA_CACHE_DISABLE", "1");
    }
    // The report directory is checked before anything runs: a bad one fails at once.
    let report_dir = match &args.report_dir {
        Some(dir) => Some(prepare_dir(dir)?),
        None => None,
    };
    let mut stream = match &report_dir {
        Some(dir) => {
            let partial = dir.join(format!("{}.partial", report::EVENTS_FILE));
            let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
            Some((BufWriter::new(file), partial))
        }
        None => None,
    };
    let ctx = Arc::new(Ctx::new(opts));
    let mut events = Vec::new();
    let mut write_failed = None;
    flywheel_canary::run::run(ctx, &mut |event: &Event| {
        if let Event::Step(s) = event {
            eprintln!(
                "canary: {:<9} {:<4} {:>7} ms{}",
                s.step.as_str(),
                s.status.as_str(),
                s.duration_ms,
                match &s.reason {
                    Some(r) if s.status != Status::Pass => format!("  {}", first_chars(r, 120)),
                    _ => String::new(),
                }
            );
        }
        if let Some((out, path)) = &mut stream {
            if let Err(e) = write_event(out, event) {
                write_failed.get_or_insert_with(|| format!("writing {}: {e}", path.display()));
            }
        }
        events.push(event.clone());
    });
    let run = Run::from_events(events)?;
    print!("{}", report::table(&run));
    publish(&args, &run);
    if let Some(e) = write_failed {
        bail!(e);
    }
    if let (Some(dir), Some((out, partial))) = (&report_dir, stream) {
        drop(out);
        report::write_reports(dir, &run).with_context(|| format!("writing the reports in {}", dir.display()))?;
        let events = dir.join(report::EVENTS_FILE);
        std::fs::rename(&partial, &events)
            .with_context(|| format!("renaming {} to {}", partial.display(), events.display()))?;
        eprintln!("canary: reports in {}", dir.display());
    }
    if let Some(summary) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|s| !s.is_empty()) {
        let summary = PathBuf::from(summary);
        report::append_step_summary(&summary, &run).with_context(|| format!("appending to {}", summary.display()))?;
    }
    let Some(end) = &run.end else { bail!("the run ended without its run-end event") };
    if end.status != Status::Pass {
        let failed: Vec<&str> = end.failed.iter().map(|s| s.as_str()).collect();
        bail!("canary failed: required step(s) {} did not pass", failed.join(", "));
    }
    Ok(())
}

fn first_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Creates the report directory and proves it writable.
fn prepare_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        bail!("--report-dir {}: not a directory", dir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("--report-dir {}", dir.display()))?;
    let probe = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("--report-dir {}: not writable", dir.display()))?;
    drop(probe);
    Ok(dir.to_path_buf())
}

/// Publishes the run when asked; reports a failure on stderr only, since the page is not the
/// lane's health.
fn publish(args: &CanaryArgs, run: &Run) {
    let Some(url) = &args.publish else { return };
    let Some(token) = args.publish_token.as_deref().filter(|t| !t.trim().is_empty()) else {
        eprintln!("canary: not published: --publish needs a canary token (--publish-token or FLYWHEEL_CANARY_TOKEN)");
        return;
    };
    let record = flywheel_canary::publish::record(run, &args.lane);
    match flywheel_canary::publish::publish(url, token, &record, std::time::Duration::from_secs(30)) {
        Ok(()) => eprintln!("canary: published run {} of lane {} to {url}", record.run_id, record.lane),
        Err(e) => eprintln!("canary: warning: not published: {e}"),
    }
}

fn options(args: &CanaryArgs) -> anyhow::Result<Options> {
    let mut o = Options::default();
    if let Some(r) = &args.require {
        o.require = r.0.iter().copied().collect();
    }
    if let Some(s) = &args.skip {
        o.skip = s.0.iter().copied().collect();
    }
    // Limits for every step first, so that a step's own limit wins wherever it is given.
    for (_, limit) in args.step_timeouts.iter().filter(|(s, _)| s.is_none()) {
        for s in StepName::ALL {
            o.limits.insert(s, *limit);
        }
    }
    for (step, limit) in &args.step_timeouts {
        if let Some(s) = step {
            o.limits.insert(*s, *limit);
        }
    }
    let both: Vec<&str> = o.require.intersection(&o.skip).map(|s| s.as_str()).collect();
    if !both.is_empty() && args.require.is_some() {
        bail!("--require and --skip both name {}", both.join(", "));
    }
    // A skipped step is not required by default.
    o.require = o.require.difference(&o.skip).copied().collect();
    if !(args.min_free_gib >= 0.0 && args.min_free_gib.is_finite()) {
        bail!("--min-free-gib {}: expected a number of GiB, 0 or more", args.min_free_gib);
    }
    o.bootstrap = context::BootstrapOptions {
        image_digest: args.image_digest.clone(),
        image_driver_version: args.image_driver_version.clone(),
        labels_file: args.image_labels.clone(),
        tools: args.tools.iter().map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        min_free_bytes: (args.min_free_gib * (1u64 << 30) as f64) as u64,
        runner: flywheel_lane::runner::RunnerPolicy {
            max_age_days: args.runner_max_age_days,
            min_version: args.runner_min_version,
        },
        ..o.bootstrap
    };
    o.gpu.nvml_lib = args.nvml_lib.clone();
    o.cuda.lib = args.cuda_lib.clone();
    o.cuda.copy_bytes = args.copy_mib as usize * (1 << 20);
    o.vulkan.loader = args.vulkan_loader.clone();
    o.cache = context::CacheOptions {
        url: args.cache.clone(),
        trusted_keys: args.trusted_keys.clone(),
        token: args.token.clone().filter(|t| !t.is_empty()),
        known_path: args.known_path.clone(),
        nix_conf: args.nix_conf.clone(),
    };
    for key in &o.cache.trusted_keys {
        flywheel_nix::keys::PublicKey::parse(key).with_context(|| format!("--trusted-key {key:?}"))?;
    }
    o.queue = context::QueueOptions {
        queued_at: args.queued_at,
        github_token: args.github_token.clone().filter(|t| !t.is_empty()),
        max_wait: args.max_queue.0,
    };
    Ok(o)
}
