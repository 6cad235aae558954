//! `flywheel lane check`: the driver version a spec names against the image it pins, read from
//! an OCI layout (fully: labels against the driver files in the layers) or from the registry
//! (the config's label, by digest); and how current the image's runner is (its labels).

use std::path::{Path, PathBuf};

use flywheel_oci::registry::reference::Reference;

use crate::{LaneError, LaneSpec};

/// The label mkRunnerImage puts on an image that carries container hooks: their version.
pub const LABEL_CONTAINER_HOOKS: &str = "dev.flywheel.runner.container-hooks";

/// Where the pinned image is read from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// An OCI layout holding the image (`DIR` or `DIR:TAG`).
    Layout(String),
    /// The registry the reference names; `insecure` for plain HTTP.
    Registry { insecure: bool, docker_config: Option<PathBuf> },
}

/// What `lane check` found: the driver line, and the runner's (with its warnings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub summary: String,
    pub runner: Option<crate::runner::Freshness>,
}

impl Checked {
    /// The lines to print: the summary, the runner, then each warning.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![self.summary.clone()];
        match &self.runner {
            Some(r) => {
                let age = match (&r.released, r.age_days) {
                    (Some(d), Some(a)) => format!(", released {d} ({a} days ago)"),
                    _ => format!(" (no {} label: its age is unknown)", crate::runner::LABEL_RELEASED),
                };
                out.push(format!("runner: {}{age}", r.version));
                out.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
            }
            None => out.push(format!(
                "warning: the image has no {} label: its runner's version cannot be checked",
                crate::runner::LABEL_VERSION
            )),
        }
        out
    }
}

/// The driver line when the spec's driver version is the image's, with the runner's freshness
/// on `today` (days since 1970); the mismatch otherwise.
pub fn check(spec: &LaneSpec, source: &ImageSource, today: i64) -> Result<Checked, LaneError> {
    let pinned = spec.image_digest().unwrap_or_default();
    let want = &spec.image.driver_version;
    let (digest, found, what, labels) = match source {
        ImageSource::Layout(arg) => {
            let image = flywheel_oci::read::LayoutImage::open(arg).map_err(|e| LaneError::Image(e.to_string()))?;
            let user = flywheel_oci::driver::userspace_of_image(arg).map_err(|e| LaneError::Image(e.to_string()))?;
            let config = flywheel_oci::read::read_blob(&image.dir, &image.manifest.config.digest)
                .map_err(|e| LaneError::Image(e.to_string()))?;
            let config: flywheel_oci::oci::ImageConfig = serde_json::from_slice(&config)
                .map_err(|e| LaneError::Image(format!("{arg}: the image config is not valid JSON: {e}")))?;
            (
                image.descriptor.digest.to_string(),
                user.version.as_str().to_string(),
                format!("the OCI layout {arg}"),
                config.config.labels,
            )
        }
        ImageSource::Registry { insecure, docker_config } => {
            let reference = Reference::parse(&spec.image.reference)
                .map_err(|e| LaneError::Image(format!("image.reference {:?}: {e}", spec.image.reference)))?;
            let (digest, config) = block_on(flywheel_oci::registry::fetch::image_config(
                &reference,
                *insecure,
                docker_config.as_deref().map(Path::new),
            ))?
            .map_err(|e| LaneError::Image(e.to_string()))?;
            let label = config.config.labels.get(flywheel_driver::LABEL_VERSION).cloned().ok_or_else(|| {
                LaneError::ImageMismatch(format!(
                    "{}: no {} label: the image was built without a driver layer; a GPU lane's image needs one (mkRunnerImage's driverLayer)",
                    spec.image.reference,
                    flywheel_driver::LABEL_VERSION
                ))
            })?;
            (digest.to_string(), label, format!("the registry's {}", reference.registry), config.config.labels)
        }
    };
    if digest != pinned {
        return Err(LaneError::ImageMismatch(format!(
            "image.reference: the spec pins {pinned}, but {what} holds {digest}; check the image the spec names, or update the digest"
        )));
    }
    if &found != want {
        return Err(LaneError::ImageMismatch(format!(
            "image.driver_version: the spec says {want}, but the image {} carries NVIDIA userspace {found} (label {}); set driver_version = \"{found}\", or pin the image built for {want} (one image per driver version)",
            spec.image.reference,
            flywheel_driver::LABEL_VERSION
        )));
    }
    if spec.runners.container_mode == Some(crate::spec::ContainerMode::Kubernetes)
        && !labels.contains_key(LABEL_CONTAINER_HOOKS)
    {
        return Err(LaneError::ImageMismatch(format!(
            "runners.container_mode: kubernetes mode runs the image's container hooks ({}), but {} has no {LABEL_CONTAINER_HOOKS} label: build it with mkRunnerImage's containerHooks (images/gpu-runner does), or leave container_mode out",
            crate::render::values::CONTAINER_HOOKS,
            spec.image.reference
        )));
    }
    let policy = spec.image.runner_policy().map_err(|e| LaneError::Other(format!("image.runner_min_version: {e}")))?;
    let runner = crate::runner::from_labels(&labels, today, &policy)
        .transpose()
        .map_err(|e| LaneError::ImageMismatch(format!("{}: {e}", spec.image.reference)))?;
    Ok(Checked {
        summary: format!("ok: {} ({what}) carries NVIDIA userspace {found}, as the spec says", spec.image.reference),
        runner,
    })
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, LaneError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LaneError::Other(format!("starting the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}
