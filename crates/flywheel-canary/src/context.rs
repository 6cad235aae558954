//! What every step reads (the options) and the little that steps hand each other: the GPU's
//! state at the start, for cleanup to compare against, and what the run created, for cleanup to
//! remove.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::probe::GpuSnapshot;
use crate::step::StepName;

#[derive(Clone, Debug)]
pub struct Options {
    /// Steps that must pass for the run to pass. A step that is not required still runs; when
    /// what it needs is missing, it is skipped instead of failing.
    pub require: BTreeSet<StepName>,
    /// Steps not run at all.
    pub skip: BTreeSet<StepName>,
    /// Time limits that replace the defaults ([`default_limit`]).
    pub limits: BTreeMap<StepName, Duration>,
    pub bootstrap: BootstrapOptions,
    pub gpu: GpuOptions,
    pub cuda: CudaOptions,
    pub vulkan: VulkanOptions,
    pub cache: CacheOptions,
    pub queue: QueueOptions,
    /// Where the run's scratch files go (removed by cleanup).
    pub temp_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            require: default_required(),
            skip: BTreeSet::new(),
            limits: BTreeMap::new(),
            bootstrap: BootstrapOptions::default(),
            gpu: GpuOptions::default(),
            cuda: CudaOptions::default(),
            vulkan: VulkanOptions::default(),
            cache: CacheOptions::default(),
            queue: QueueOptions::default(),
            temp_dir: std::env::temp_dir(),
        }
    }
}

/// Every step but queue: a run by hand has no job to have queued.
pub fn default_required() -> BTreeSet<StepName> {
    StepName::ALL.into_iter().filter(|s| *s != StepName::Queue).collect()
}

/// How long a step may take before it fails as hung, and the run goes on.
pub fn default_limit(step: StepName) -> Duration {
    Duration::from_secs(match step {
        StepName::Bootstrap => 30,
        StepName::Gpu => 30,
        StepName::Cuda => 60,
        StepName::Vulkan => 30,
        StepName::Cache => 90,
        StepName::Queue => 30,
        StepName::Cleanup => 30,
    })
}

#[derive(Clone, Debug)]
pub struct BootstrapOptions {
    /// The runner image's digest and driver version: from these when given, else from the
    /// environment (FLYWHEEL_IMAGE_DIGEST, FLYWHEEL_DRIVER_VERSION) or `labels_file`.
    pub image_digest: Option<String>,
    pub image_driver_version: Option<String>,
    /// A JSON file of the image's labels (an OCI config's `config.Labels`, or a flat object).
    pub labels_file: Option<PathBuf>,
    /// Programs that must be on PATH.
    pub tools: Vec<String>,
    /// The job's work volume (GITHUB_WORKSPACE, else the current directory).
    pub work_dir: PathBuf,
    pub store_dir: PathBuf,
    /// Least free space on the work and store volumes.
    pub min_free_bytes: u64,
    /// Most clock offset tolerated, where a reference clock (the cache's HTTP Date) is known.
    pub max_clock_offset: Duration,
    /// Where the image keeps its driver manifest (flywheel driver collect).
    pub driver_manifest_root: PathBuf,
    /// When the image's runner is too old or too low (from FLYWHEEL_RUNNER_VERSION and
    /// FLYWHEEL_RUNNER_RELEASED, else the labels): a warning, not a failure.
    pub runner: flywheel_lane::runner::RunnerPolicy,
}

impl Default for BootstrapOptions {
    fn default() -> Self {
        BootstrapOptions {
            image_digest: None,
            image_driver_version: None,
            labels_file: None,
            tools: ["nix", "git", "tar", "gzip"].map(String::from).to_vec(),
            work_dir: std::env::var_os("GITHUB_WORKSPACE")
                .map(PathBuf::from)
                .or_else(|| std::env::current_dir().ok())
                .unwrap_or_else(|| PathBuf::from(".")),
            store_dir: PathBuf::from("/nix/store"),
            min_free_bytes: 5 << 30,
            max_clock_offset: Duration::from_secs(5),
            driver_manifest_root: PathBuf::from("/"),
            runner: flywheel_lane::runner::RunnerPolicy::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// NVML's library; by default `libnvidia-ml.so.1` through the dynamic loader.
    pub nvml_lib: Option<PathBuf>,
    pub dev_dir: PathBuf,
    pub proc_version: PathBuf,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            nvml_lib: None,
            dev_dir: PathBuf::from("/dev"),
            proc_version: PathBuf::from("/proc/driver/nvidia/version"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct CudaOptions {
    /// CUDA's driver library; by default `libcuda.so.1` through the dynamic loader.
    pub lib: Option<PathBuf>,
    /// Bytes per bandwidth copy (pinned host memory).
    pub copy_bytes: usize,
    /// Timed copies per direction (after one warm-up); the best is reported.
    pub repeats: u32,
}

impl Default for CudaOptions {
    fn default() -> Self {
        CudaOptions { lib: None, copy_bytes: 256 << 20, repeats: 10 }
    }
}

#[derive(Clone, Debug, Default)]
pub struct VulkanOptions {
    /// The Vulkan loader; by default `libvulkan.so.1` through the dynamic loader.
    pub loader: Option<PathBuf>,
}

#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// `http://HOST/CACHE`; by default the first substituter in nix.conf that is not
    /// cache.nixos.org.
    pub url: Option<String>,
    /// `name:base64` keys; by default nix.conf's trusted-public-keys.
    pub trusted_keys: Vec<String>,
    /// A write token: push a fresh path and pull it back.
    pub token: Option<String>,
    /// A path the cache should hold, pulled and verified; by default the canary's own store path.
    pub known_path: Option<String>,
    /// nix.conf files to read, in order (later settings win); by default Nix's own search.
    pub nix_conf: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct QueueOptions {
    /// When the job was queued, when no GitHub environment tells.
    pub queued_at: Option<OffsetDateTime>,
    /// For the GitHub API (GITHUB_TOKEN).
    pub github_token: Option<String>,
    /// A longer wait fails the step.
    pub max_wait: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions { queued_at: None, github_token: None, max_wait: Duration::from_secs(15 * 60) }
    }
}

/// What the steps share during one run.
pub struct Ctx {
    pub opts: Options,
    pub started: Instant,
    pub started_at: OffsetDateTime,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    gpu_baseline: Option<GpuSnapshot>,
    scratch: Vec<PathBuf>,
    store_paths: Vec<String>,
}

impl Ctx {
    pub fn new(opts: Options) -> Self {
        Ctx {
            opts,
            started: Instant::now(),
            started_at: OffsetDateTime::now_utc(),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A step that panicked while holding the lock left nothing half-written worth refusing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The GPU state the gpu step saw, for cleanup.
    pub fn set_gpu_baseline(&self, snapshot: GpuSnapshot) {
        self.state().gpu_baseline = Some(snapshot);
    }

    pub fn gpu_baseline(&self) -> Option<GpuSnapshot> {
        self.state().gpu_baseline.clone()
    }

    /// A new directory for a step's files, removed (and checked gone) by cleanup.
    pub fn scratch_dir(&self, what: &str) -> std::io::Result<PathBuf> {
        let dir =
            tempfile::Builder::new().prefix(&format!("flywheel-canary-{what}.")).tempdir_in(&self.opts.temp_dir)?;
        let path = dir.keep();
        self.state().scratch.push(path.clone());
        Ok(path)
    }

    pub fn scratch(&self) -> Vec<PathBuf> {
        self.state().scratch.clone()
    }

    /// A store path the run added to the local store, for cleanup to delete.
    pub fn added_store_path(&self, path: &str) {
        self.state().store_paths.push(path.to_string());
    }

    pub fn store_paths(&self) -> Vec<String> {
        self.state().store_paths.clone()
    }
}
