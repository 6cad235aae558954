//! flywheel's GPU lane: what turns the runner image, the cache and the canary into one shared
//! lane on a Kubernetes cluster running actions-runner-controller (docs/lane.md).
//!
//! Data flows one way: spec -> validation -> rendered files (Helm values, canary workflow,
//! operator README). The runner's job hooks run inside the lane's pods.
//!
//! - [`spec`]: the lane spec (TOML), [`validate`]: what it must mean, [`labels`]: capability
//!   labels against repo-named ones
//! - [`render`]: `flywheel lane render`, deterministic bytes written atomically
//! - [`image_check`]: `flywheel lane check`, the spec's driver version against the image's label
//! - [`hooks`]: `ACTIONS_RUNNER_HOOK_JOB_STARTED` / `_COMPLETED`
//! - [`seed`]: the image's /nix into the runner's /nix volume (the pod's init container)

pub mod hooks;
pub mod image_check;
pub mod labels;
pub mod render;
pub mod runner;
pub mod seed;
pub mod spec;
pub mod validate;

use std::path::PathBuf;

pub use spec::LaneSpec;
pub use validate::Problem;

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {why}")]
    Parse { origin: String, why: String },
    /// Every problem of the spec, on one line.
    #[error("{origin}: {}", problems_line(problems))]
    Invalid { origin: String, problems: Vec<Problem> },
    #[error("serializing the spec: {0}")]
    Serialize(String),
    /// The image the spec pins does not carry the driver the spec says.
    #[error("{0}")]
    ImageMismatch(String),
    #[error("{0}")]
    Image(String),
    #[error("{0}")]
    Other(String),
}

fn problems_line(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => format!(
            "{} problems: {}",
            many.len(),
            many.iter().enumerate().map(|(i, p)| format!("({}) {p}", i + 1)).collect::<Vec<_>>().join(" ")
        ),
    }
}
