//! The runner's job hooks (`ACTIONS_RUNNER_HOOK_JOB_STARTED` / `_COMPLETED`), run by the
//! runner as the job's user before and after each job. Each prints one line to the job log.
//!
//! - job-started: the image's driver userspace against the node's kernel module (a mismatch
//!   refuses the job: exit 1 with the reason), the cache's reachability (a note, never a
//!   refusal), and what the completed hook needs (the start time, the temp dirs' entries)
//! - job-completed: `flywheel cache push --since START` of what the job built, unless the job
//!   came from a pull request; the entries the job added to the temp dirs removed; no process
//!   of the job holding the GPU. Never fails the job: every problem is part of its line.

mod gpu;
mod push;
mod state;
mod temp;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::LaneError;
pub use gpu::holders as gpu_holders;
use state::JobState;
pub(crate) use temp::remove_tree_or_file;

/// Everything the hooks read from their environment, gathered once (see [`HookOptions::from_env`]).
#[derive(Clone, Debug)]
pub struct HookOptions {
    /// flywheel itself: the completed hook runs `flywheel cache push`.
    pub flywheel: PathBuf,
    /// Where the started hook leaves what the completed hook needs.
    pub state_dir: PathBuf,
    /// Temporary directories whose new entries are the job's (`$TMPDIR` or /tmp, `$RUNNER_TEMP`).
    pub temp_dirs: Vec<PathBuf>,
    /// The root whose driver userspace is checked (/ in the runner container); None: no check.
    pub driver_root: Option<PathBuf>,
    pub kernel_version_file: PathBuf,
    pub cache_url: Option<String>,
    pub cache_token: Option<String>,
    /// `$GITHUB_EVENT_NAME`.
    pub event_name: Option<String>,
    /// `$GITHUB_WORKSPACE`: its `result*` links are pushed too.
    pub workspace: Option<PathBuf>,
    /// `$FLYWHEEL_PUSH_PATHS`: a file listing more paths to push, one per line.
    pub push_paths_file: Option<PathBuf>,
    pub push_timeout: Duration,
    /// Path prefixes of GPU device nodes (`/dev/nvidia`, `/dev/dri/`).
    pub gpu_devices: Vec<String>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn env_string(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl HookOptions {
    /// From the runner's environment: `FLYWHEEL_HOOK_STATE_DIR` (default `$HOME/.flywheel-hooks`),
    /// `TMPDIR`, `RUNNER_TEMP`, `FLYWHEEL_DRIVER_ROOT` (default /), `FLYWHEEL_KERNEL_VERSION_FILE`,
    /// `FLYWHEEL_CACHE_URL`, `FLYWHEEL_CACHE_TOKEN`, `GITHUB_EVENT_NAME`, `GITHUB_WORKSPACE`,
    /// `FLYWHEEL_PUSH_PATHS`, `FLYWHEEL_PUSH_TIMEOUT` (seconds, default 600),
    /// `FLYWHEEL_GPU_DEVICES` (':'-separated prefixes).
    pub fn from_env(flywheel: PathBuf, check_driver: bool) -> Self {
        let home = env_path("HOME").unwrap_or_else(|| PathBuf::from("/tmp"));
        let mut temp_dirs = vec![env_path("TMPDIR").unwrap_or_else(|| PathBuf::from("/tmp"))];
        if let Some(rt) = env_path("RUNNER_TEMP") {
            if !temp_dirs.contains(&rt) {
                temp_dirs.push(rt);
            }
        }
        HookOptions {
            flywheel,
            state_dir: env_path("FLYWHEEL_HOOK_STATE_DIR").unwrap_or_else(|| home.join(".flywheel-hooks")),
            temp_dirs,
            driver_root: check_driver.then(|| env_path("FLYWHEEL_DRIVER_ROOT").unwrap_or_else(|| PathBuf::from("/"))),
            kernel_version_file: env_path("FLYWHEEL_KERNEL_VERSION_FILE")
                .unwrap_or_else(|| PathBuf::from(flywheel_driver::check::KERNEL_VERSION_FILE)),
            cache_url: env_string("FLYWHEEL_CACHE_URL"),
            cache_token: env_string("FLYWHEEL_CACHE_TOKEN"),
            event_name: env_string("GITHUB_EVENT_NAME"),
            workspace: env_path("GITHUB_WORKSPACE"),
            push_paths_file: env_path("FLYWHEEL_PUSH_PATHS"),
            push_timeout: Duration::from_secs(
                env_string("FLYWHEEL_PUSH_TIMEOUT").and_then(|s| s.parse().ok()).unwrap_or(600),
            ),
            gpu_devices: env_string("FLYWHEEL_GPU_DEVICES")
                .map(|s| s.split(':').filter(|p| !p.is_empty()).map(str::to_string).collect())
                .unwrap_or_else(|| vec!["/dev/nvidia".into(), "/dev/dri/".into()]),
        }
    }
}

/// The job-started hook. Ok: the line to print. Err: the job is refused, for the reason given.
pub fn job_started(opts: &HookOptions) -> Result<String, LaneError> {
    // A second early: `--since` takes paths registered strictly later, and one the job adds in
    // this same second must not be missed (one from just before the job is pushed harmlessly).
    let started_at =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()).saturating_sub(1);
    let job = JobState { started_at, temp_entries: temp::snapshot(&opts.temp_dirs) };
    // Without its state the completed hook still cleans and checks; it only cannot push by time.
    let state_note = match job.save(&opts.state_dir) {
        Ok(()) => String::new(),
        Err(e) => format!("; state not saved ({e}): the completed hook will not push"),
    };

    let driver = match &opts.driver_root {
        None => "no driver check (the image has no driver layer)".to_string(),
        Some(root) => {
            let user = flywheel_driver::check::userspace_of_tree(root).map_err(|e| {
                LaneError::Other(format!("job refused: the image's driver userspace cannot be checked: {e}"))
            })?;
            flywheel_driver::check::check(&user, &opts.kernel_version_file)
                .map_err(|e| LaneError::Other(format!("job refused: {e}")))?;
            format!("NVIDIA userspace {} matches the kernel module", user.version)
        }
    };
    let cache = match &opts.cache_url {
        None => "no cache configured".to_string(),
        Some(url) => match cache_reachable(url, Duration::from_secs(5)) {
            Ok(ms) => format!("cache {url} answered in {ms} ms"),
            Err(e) => format!("cache {url} unreachable ({e}): the job builds without it"),
        },
    };
    Ok(format!("flywheel: job-started: {driver}; {cache}{state_note}"))
}

/// GET `URL/nix-cache-info`: the time it took, or why it failed.
fn cache_reachable(url: &str, timeout: Duration) -> Result<u128, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let target = format!("{}/nix-cache-info", url.trim_end_matches('/'));
    rt.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let resp = client.get(&target).send().await.map_err(|e| error_chain(&e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| error_chain(&e))?;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        if !body.contains("StoreDir:") {
            return Err("its nix-cache-info has no StoreDir".into());
        }
        Ok(t.elapsed().as_millis())
    })
}

/// The innermost cause ("Connection refused (os error 111)"): the part a job log reader needs.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        last = c.to_string();
        source = c.source();
    }
    last
}

/// The job-completed hook: always a line, never an error (the job's result stands).
pub fn job_completed(opts: &HookOptions) -> String {
    let job = JobState::load(&opts.state_dir);
    let push = push::push(opts, job.as_ref().ok());
    let cleanup = match &job {
        Ok(j) => temp::remove_new(&opts.temp_dirs, &j.temp_entries),
        Err(_) => "temporary files not cleaned (no state from the started hook)".to_string(),
    };
    let gpu = match gpu::holders(&opts.gpu_devices) {
        Ok(h) if h.is_empty() => "GPU free".to_string(),
        Ok(h) => format!(
            "GPU still held by {} (the next job on this runner may find it busy)",
            h.iter().map(|p| format!("pid {} ({})", p.pid, p.command)).collect::<Vec<_>>().join(", ")
        ),
        Err(e) => format!("GPU not checked ({e})"),
    };
    state::remove(&opts.state_dir);
    format!("flywheel: job-completed: {push}; {cleanup}; {gpu}")
}
