//! The completed hook's push: `flywheel cache push --since START` plus the workspace's
//! `result*` links and `$FLYWHEEL_PUSH_PATHS`, in a child process with a time limit, so a
//! stuck upload ends the push and not the runner. Never for pull requests.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::state::JobState;
use super::HookOptions;

/// Events whose code may come from a fork: what they built never reaches the shared cache.
const UNTRUSTED_EVENTS: [&str; 2] = ["pull_request", "pull_request_target"];

pub fn push(opts: &HookOptions, job: Option<&JobState>) -> String {
    let Some(url) = &opts.cache_url else { return "not pushed (no FLYWHEEL_CACHE_URL)".into() };
    if let Some(event) = opts.event_name.as_deref().filter(|e| UNTRUSTED_EVENTS.contains(e)) {
        return format!("not pushed ({event} event: pull requests never push to the cache)");
    }
    if opts.cache_token.is_none() {
        return "not pushed (no FLYWHEEL_CACHE_TOKEN)".into();
    }
    let paths = explicit_paths(opts);
    let Some(job) = job else {
        if paths.is_empty() {
            return "not pushed (no state from the started hook, no result links)".into();
        }
        return run(opts, url, None, &paths);
    };
    run(opts, url, Some(job.started_at), &paths)
}

/// The workspace's `result*` symlinks and the lines of `$FLYWHEEL_PUSH_PATHS`.
fn explicit_paths(opts: &HookOptions) -> Vec<String> {
    let mut paths = Vec::new();
    if let Some(ws) = &opts.workspace {
        if let Ok(rd) = std::fs::read_dir(ws) {
            let mut links: Vec<_> = rd
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("result"))
                .map(|e| e.path())
                .filter(|p| p.is_symlink() && p.exists())
                .collect();
            links.sort();
            paths.extend(links.into_iter().map(|p| p.display().to_string()));
        }
    }
    if let Some(file) = &opts.push_paths_file {
        if let Ok(text) = std::fs::read_to_string(file) {
            paths.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
        }
    }
    paths
}

fn run(opts: &HookOptions, url: &str, since: Option<u64>, paths: &[String]) -> String {
    let mut cmd = Command::new(&opts.flywheel);
    cmd.args(["cache", "push", "--json", "--to", url]);
    if let Some(t) = since {
        cmd.arg("--since").arg(t.to_string());
    }
    cmd.arg("--").args(paths);
    if let Some(token) = &opts.cache_token {
        cmd.env("FLYWHEEL_CACHE_TOKEN", token);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return format!("push failed to start ({}: {e}); the job's result stands", opts.flywheel.display()),
    };
    let out = child.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let err = child.stderr.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = s.read_to_end(&mut v);
            v
        })
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= opts.push_timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    let Some(status) = status else {
        return format!(
            "push stopped after {} s (FLYWHEEL_PUSH_TIMEOUT); the job's result stands",
            opts.push_timeout.as_secs()
        );
    };
    let report: Option<serde_json::Value> = serde_json::from_slice(&stdout).ok();
    let seconds = started.elapsed().as_secs_f64();
    match report {
        Some(r) if status.success() => {
            let n = |k: &str| r.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
            format!(
                "pushed {} new of {} path(s) ({} of NAR) to {url} in {seconds:.1} s",
                n("pushed"),
                n("closure"),
                flywheel_nix::human_bytes(n("nar_bytes"))
            )
        }
        _ => {
            let text = String::from_utf8_lossy(&stderr);
            let why = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim();
            format!("push failed ({why}); the job's result stands")
        }
    }
}
