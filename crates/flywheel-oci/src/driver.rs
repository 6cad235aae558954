//! The driver an image holds, as `flywheel driver check --image` needs it: the version its
//! labels claim, checked against the driver files its layers actually carry.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};

use flywheel_driver::check::Userspace;
use flywheel_driver::manifest::{hex, Found, Manifest, IN_IMAGE_MANIFEST};
use flywheel_driver::DriverVersion;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::oci::{media_type, ImageConfig};
use crate::read::{read_blob, LayoutImage, ReadError};

#[derive(Debug, thiserror::Error)]
pub enum ImageDriverError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{image}: {why}")]
    Image { image: String, why: String },
    #[error(transparent)]
    Driver(#[from] flywheel_driver::DriverError),
}

/// Reads `arg` (an OCI layout `DIR` or `DIR:TAG`), its driver labels, and every file outside
/// the Nix store in its layers; verifies the driver manifest in the image against those files
/// and the labels against the manifest.
pub fn userspace_of_image(arg: &str) -> Result<Userspace, ImageDriverError> {
    let image = LayoutImage::open(arg)?;
    let fail = |why: String| ImageDriverError::Image { image: arg.to_string(), why };
    let config_bytes = read_blob(&image.dir, &image.manifest.config.digest)?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).map_err(|e| fail(format!("image config is not valid JSON: {e}")))?;
    let labels = &config.config.labels;
    let Some(label) = labels.get(flywheel_driver::LABEL_VERSION) else {
        return Err(fail(format!(
            "no {} label: the image was not built with a driver layer",
            flywheel_driver::LABEL_VERSION
        )));
    };
    let label: DriverVersion =
        label.parse().map_err(|e| fail(format!("label {}: {e}", flywheel_driver::LABEL_VERSION)))?;

    let mut files: HashMap<String, Found> = HashMap::new();
    let mut manifest_bytes = None;
    for layer in &image.manifest.layers {
        let path = image.blob_path(&layer.digest);
        let file = File::open(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let reader: Box<dyn Read> = match layer.media_type.as_str() {
            media_type::LAYER_ZSTD => Box::new(zstd::Decoder::new(file).map_err(|e| fail(e.to_string()))?),
            media_type::LAYER_GZIP => Box::new(flate2::read::GzDecoder::new(BufReader::new(file))),
            media_type::LAYER_TAR => Box::new(BufReader::new(file)),
            other => {
                return Err(fail(format!("layer {} has media type {other}, which flywheel cannot read", layer.digest)))
            }
        };
        scan_layer(reader, &mut files, &mut manifest_bytes)
            .map_err(|e| fail(format!("reading layer {}: {e}", layer.digest)))?;
    }
    let Some(bytes) = manifest_bytes else {
        return Err(fail(format!("labelled NVIDIA driver {label}, but no layer holds /{IN_IMAGE_MANIFEST}")));
    };
    let manifest = Manifest::from_bytes(&bytes, &format!("{arg}:/{IN_IMAGE_MANIFEST}"))?;
    if manifest.version != label {
        return Err(fail(format!("labelled NVIDIA driver {label}, but its driver layer holds {}", manifest.version)));
    }
    if let Some(digest) = labels.get(flywheel_driver::LABEL_MANIFEST) {
        let actual = Digest::of(&bytes).to_string();
        if *digest != actual {
            return Err(fail(format!("the driver manifest is {actual}, the label says {digest}")));
        }
    }
    manifest.verify(arg, |p| files.get(p).cloned())?;
    Ok(Userspace {
        what: format!(
            "the image {arg} (label {}, {} driver files checked)",
            flywheel_driver::LABEL_VERSION,
            manifest.files.len()
        ),
        version: label,
    })
}

/// Records every file and symlink outside /nix (what a driver layer adds), hashing the files.
fn scan_layer(reader: impl Read, files: &mut HashMap<String, Found>, manifest: &mut Option<Vec<u8>>) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().trim_start_matches("./").trim_start_matches('/').to_string();
        if path == "nix" || path.starts_with("nix/") {
            continue;
        }
        let kind = entry.header().entry_type();
        let found = if kind.is_symlink() {
            let target = entry.link_name()?.map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            Found::Symlink { target }
        } else if kind.is_file() {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            let mut content = Vec::new();
            let keep = path == IN_IMAGE_MANIFEST;
            loop {
                let n = entry.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                if keep {
                    content.extend_from_slice(&buf[..n]);
                }
                size += n as u64;
            }
            if keep {
                *manifest = Some(content);
            }
            Found::File { size, sha256: hex(&hasher.finalize()) }
        } else {
            Found::Other
        };
        files.insert(path, found);
    }
    Ok(())
}
