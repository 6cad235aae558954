//! `flywheel lane check`: the driver version a spec names against the image it pins, read from
//! an OCI layout (fully: labels against the driver files in the layers) or from the registry
//! (the config's label, by digest).

use std::path::{Path, PathBuf};

use flywheel_oci::registry::reference::Reference;

use crate::{LaneError, LaneSpec};

/// Where the pinned image is read from.
#[derive(Clone, Debug)]
pub enum ImageSource {
    /// An OCI layout holding the image (`DIR` or `DIR:TAG`).
    Layout(String),
    /// The registry the reference names; `insecure` for plain HTTP.
    Registry { insecure: bool, docker_config: Option<PathBuf> },
}

/// A one-line summary when the spec's driver version is the image's; the mismatch otherwise.
pub fn check(spec: &LaneSpec, source: &ImageSource) -> Result<String, LaneError> {
    let pinned = spec.image_digest().unwrap_or_default();
    let want = &spec.image.driver_version;
    let (digest, found, what) = match source {
        ImageSource::Layout(arg) => {
            let image = flywheel_oci::read::LayoutImage::open(arg).map_err(|e| LaneError::Image(e.to_string()))?;
            let user = flywheel_oci::driver::userspace_of_image(arg).map_err(|e| LaneError::Image(e.to_string()))?;
            (image.descriptor.digest.to_string(), user.version.as_str().to_string(), format!("the OCI layout {arg}"))
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
            (digest.to_string(), label, format!("the registry's {}", reference.registry))
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
    Ok(format!("ok: {} ({what}) carries NVIDIA userspace {found}, as the spec says", spec.image.reference))
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, LaneError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LaneError::Other(format!("starting the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}
