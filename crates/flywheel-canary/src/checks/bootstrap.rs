//! The runner environment: which image this is and its driver version, the Nix store and daemon,
//! the tools jobs expect, free space on the work and store volumes, and the clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flywheel_driver::version::DriverVersion;

use crate::checks::command::{output_within, CommandOutcome};
use crate::context::Ctx;
use crate::step::Outcome;

pub fn run(ctx: &Ctx) -> Outcome {
    let opts = &ctx.opts.bootstrap;
    let mut o = Outcome::new();
    image(ctx, &mut o);
    nix(ctx, &mut o);
    let missing: Vec<&str> = opts.tools.iter().map(String::as_str).filter(|t| find_on_path(t).is_none()).collect();
    o.detail("tools", &opts.tools);
    if !missing.is_empty() {
        o.fail(
            format!("tools missing from PATH: {}", missing.join(", ")),
            "add them to the runner image (images/), or pass --tools with what this lane's jobs need",
        );
    }
    for (what, dir) in [("work", &opts.work_dir), ("store", &opts.store_dir)] {
        free_space(what, dir, opts.min_free_bytes, &mut o);
    }
    clock(ctx, &mut o);
    o
}

/// The image's digest and driver version, and the driver version against the kernel module.
fn image(ctx: &Ctx, o: &mut Outcome) {
    let opts = &ctx.opts.bootstrap;
    let labels = match &opts.labels_file {
        Some(path) => match read_labels(path) {
            Ok(l) => l,
            Err(e) => {
                o.fail(e, "pass the image's labels as JSON: its OCI config, or an object of label names to values");
                Default::default()
            }
        },
        None => Default::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let digest = opts.image_digest.clone().or_else(|| env("FLYWHEEL_IMAGE_DIGEST"));
    let mut driver = opts
        .image_driver_version
        .clone()
        .or_else(|| env("FLYWHEEL_DRIVER_VERSION"))
        .or_else(|| labels.get(flywheel_driver::LABEL_VERSION).and_then(|v| v.as_str()).map(str::to_string))
        .map(|v| (v, "label"));
    let manifest = flywheel_driver::manifest::find_in_tree(&opts.driver_manifest_root);
    if driver.is_none() {
        if let Some(path) = &manifest {
            match flywheel_driver::Manifest::read(path) {
                Ok(m) => driver = Some((m.version.to_string(), "manifest")),
                Err(e) => o.fail(
                    format!("the image's driver manifest: {e}"),
                    "rebuild the image: its driver layer is damaged",
                ),
            }
        }
    }
    match &digest {
        Some(d) => o.note(format!("image {d}")),
        None => o.note("image digest unknown: set FLYWHEEL_IMAGE_DIGEST (the runner pod's image digest) to record it"),
    }
    o.detail("image_digest", &digest);
    o.detail("image_driver_version", driver.as_ref().map(|(v, _)| v));
    o.detail("image_driver_version_from", driver.as_ref().map(|(_, from)| *from));
    let kernel =
        std::fs::read_to_string(&ctx.opts.gpu.proc_version).ok().and_then(|t| DriverVersion::from_proc_text(&t));
    o.detail("kernel_module_version", kernel.as_ref().map(|k| k.to_string()));
    match (&driver, &kernel) {
        (Some((image, _)), Some(kernel)) if image.as_str() != kernel.as_str() => o.fail(
            format!("the image's NVIDIA userspace is {image}, but the kernel module is {kernel}"),
            format!("run this lane on an image built for {kernel} (flywheel driver collect from that driver, then rebuild), or schedule it on nodes with driver {image}"),
        ),
        (Some((image, _)), Some(_)) => o.note(format!("driver {image}: image and kernel module agree")),
        (Some((image, _)), None) => o.note(format!("image driver {image}; no NVIDIA kernel module loaded here")),
        (None, _) => o.note("no driver version recorded for this image"),
    }
    runner(&labels, &opts.runner, o);
}

/// The image's runner: its version and release date from the environment the image sets
/// (FLYWHEEL_RUNNER_VERSION, FLYWHEEL_RUNNER_RELEASED) or its labels, and a warning when
/// GitHub is about to stop queueing jobs to it. Warnings do not fail the step: the runner
/// took this job, so it works today.
fn runner(
    labels: &serde_json::Map<String, serde_json::Value>,
    policy: &flywheel_lane::runner::RunnerPolicy,
    o: &mut Outcome,
) {
    use flywheel_lane::runner;
    let from = |env: &str, label: &str| {
        std::env::var(env)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| labels.get(label).and_then(|v| v.as_str()).map(str::to_string))
    };
    let Some(version) = from("FLYWHEEL_RUNNER_VERSION", runner::LABEL_VERSION) else {
        o.note("runner version unknown: the image sets neither FLYWHEEL_RUNNER_VERSION nor the dev.flywheel.runner.version label");
        return;
    };
    let released = from("FLYWHEEL_RUNNER_RELEASED", runner::LABEL_RELEASED);
    match runner::assess(&version, released.as_deref(), runner::today(), policy) {
        Ok(f) => {
            o.detail("runner_version", &f.version);
            o.detail("runner_released", &f.released);
            o.detail("runner_warnings", &f.warnings);
            match (&f.released, f.age_days) {
                (Some(d), Some(age)) => {
                    o.metric("runner_release_age_seconds", (age * 86_400) as f64);
                    o.note(format!("runner {} released {d} ({age} days ago)", f.version));
                }
                _ => o.note(format!("runner {} (release date unknown)", f.version)),
            }
            for w in f.warnings {
                o.note(format!("warning: {w}"));
            }
        }
        Err(e) => o.fail(
            format!("the image's runner: {e}"),
            "rebuild the image: images/gpu-runner sets FLYWHEEL_RUNNER_VERSION and FLYWHEEL_RUNNER_RELEASED from runner.json",
        ),
    }
}

fn read_labels(path: &Path) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    let labels = value.pointer("/config/Labels").or_else(|| value.get("Labels")).unwrap_or(&value);
    labels.as_object().cloned().ok_or_else(|| format!("{}: no labels object", path.display()))
}

/// The store directory, and Nix answering for it (through the daemon when there is one).
fn nix(ctx: &Ctx, o: &mut Outcome) {
    let store = &ctx.opts.bootstrap.store_dir;
    if !store.is_dir() {
        o.fail(
            format!("no Nix store at {}", store.display()),
            "mount the runner's /nix volume (the nix runner type's volume for /nix)",
        );
        return;
    }
    let socket = Path::new("/nix/var/nix/daemon-socket/socket");
    let daemon = match std::env::var("NIX_REMOTE").ok().filter(|v| !v.is_empty()) {
        Some(remote) => Some(remote),
        None => socket.exists().then(|| "daemon".to_string()),
    };
    o.detail("nix_remote", daemon.as_deref().unwrap_or("local"));
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "store", "ping"]).stdin(Stdio::null());
    let started = Instant::now();
    match output_within(&mut cmd, Duration::from_secs(15)) {
        CommandOutcome::Done(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            let version = text.lines().find_map(|l| l.strip_prefix("Version:")).map(|v| v.trim().to_string());
            o.detail("nix_store", text.lines().find_map(|l| l.strip_prefix("Store URL:")).map(str::trim));
            o.detail("nix_version", &version);
            o.metric("nix_store_ping_seconds", started.elapsed().as_secs_f64());
            o.note(format!(
                "Nix {} answers for {} ({})",
                version.as_deref().unwrap_or("?"),
                store.display(),
                daemon.as_deref().unwrap_or("local store")
            ));
        }
        CommandOutcome::Done(out) => o.fail(
            format!("`nix store ping` failed: {}", last_line(&out.stderr)),
            "check the Nix daemon (nix-daemon.socket) or the store's permissions for this user",
        ),
        CommandOutcome::NotFound => {
            o.fail("nix is not on PATH", "add Nix to the runner image or PATH (the nix runner type has it)")
        }
        CommandOutcome::TimedOut => o.fail(
            "`nix store ping` did not answer in 15 s",
            "the Nix daemon is stuck or its socket is not served: restart nix-daemon on the node",
        ),
        CommandOutcome::Failed(e) => {
            o.fail(format!("running nix: {e}"), "check the runner's PATH and nix installation")
        }
    }
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string()
}

pub fn find_on_path(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| {
        std::fs::metadata(p)
            .is_ok_and(|m| m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0)
    })
}

fn free_space(what: &str, dir: &Path, min: u64, o: &mut Outcome) {
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let total = st.f_blocks.saturating_mul(st.f_frsize);
            o.metric_with("disk_free_bytes", free as f64, &[("volume", what)]);
            o.metric_with("disk_size_bytes", total as f64, &[("volume", what)]);
            o.note(format!("{what} volume {}: {} free of {}", dir.display(), gib(free), gib(total)));
            if free < min {
                o.fail(
                    format!("{what} volume {} has {} free, under {}", dir.display(), gib(free), gib(min)),
                    format!("free space on the runner's {what} volume (remove old results, or give the runner its own larger volume for it)"),
                );
            }
        }
        Err(e) => o.fail(format!("{what} volume {}: {e}", dir.display()), "check that the volume is mounted"),
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// The kernel's synchronisation state, and the offset from the cache server's clock (its HTTP
/// Date) when a cache is configured. Only a measured offset fails: a container may see the
/// host's clock as unsynchronised while it is right.
fn clock(ctx: &Ctx, o: &mut Outcome) {
    let synced = crate::checks::clock::kernel_synchronized();
    o.detail("clock_kernel_synchronized", synced);
    let reference = crate::checks::cache::configured_url(&ctx.opts.cache).ok();
    let Some(url) = reference else {
        o.note(format!(
            "clock: kernel says {}; no reference clock (no cache configured)",
            match synced {
                Some(true) => "synchronised",
                Some(false) => "unsynchronised",
                None => "unknown",
            }
        ));
        return;
    };
    match crate::checks::clock::offset_from_http_date(&format!("{url}/nix-cache-info")) {
        Ok(offset) => {
            o.metric("clock_offset_seconds", offset);
            o.detail("clock_offset_seconds", offset);
            o.note(format!("clock: {offset:+.1} s from the cache server's clock"));
            let max = ctx.opts.bootstrap.max_clock_offset.as_secs_f64();
            if offset.abs() > max {
                o.fail(
                    format!("the clock is {offset:+.1} s off the cache server's (more than {max} s)"),
                    "synchronise the node's clock (chrony or systemd-timesyncd); signatures, tokens and caches depend on it",
                );
            }
        }
        Err(e) => o.note(format!("clock: no reference ({e})")),
    }
}
