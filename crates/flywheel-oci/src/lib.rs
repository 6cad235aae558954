//! OCI images from Nix closures: closure-aware layering, deterministic tar, compressed layers
//! written in one pass, OCI layouts and archives, a layer cache for fast rebuilds, registry
//! push, image diff and an SPDX SBOM.
//!
//! Data flows one way: [`spec`] (what the image holds) → [`closure`] (store objects with their
//! NarHash, NarSize and references) → [`plan`] (the layers, grouped by [`layering`]) → [`tar`]
//! and [`layer`] (one pass per layer, compressed by [`compress`], reused through
//! [`layer_cache`]) → [`build`] (config, manifest, [`sbom`], index) → [`layout`] (committed
//! atomically). [`read`] opens a layout again for [`diff`] and [`registry`] (push).

#![forbid(unsafe_code)]

pub mod build;
pub mod closure;
pub mod compress;
pub mod diff;
pub mod digest;
pub mod driver;
pub mod json;
pub mod layer;
pub mod layer_cache;
pub mod layering;
pub mod layout;
pub mod oci;
mod pipeline;
pub mod plan;
pub mod read;
pub mod registry;
pub mod sbom;
pub mod spec;
pub mod tar;
pub mod tree;

use std::path::PathBuf;

pub use build::{build, BuildOptions, BuildReport};
pub use compress::Compression;
pub use layering::Strategy;
pub use layout::Format;
pub use spec::ImageSpec;

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Closure(#[from] closure::ClosureError),
    #[error(transparent)]
    Layer(#[from] tar::LayerError),
    #[error(transparent)]
    Output(#[from] layout::OutputError),
    #[error("{path} is in both layer {first} and layer {second}")]
    PathInTwoLayers { path: String, first: String, second: String },
    #[error("maxLayers {max_layers} leaves no room for the closure: {fixed} layers are pinned or directories")]
    NoRoomForClosure { max_layers: usize, fixed: usize },
    #[error("layer {layer}: source {}: {source}", path.display())]
    Source { layer: String, path: PathBuf, source: std::io::Error },
    #[error("the spec has no closureGraph and no Nix database was given to read the closure from")]
    NoStore,
    #[error("layer {layer}: {source}")]
    Driver { layer: String, source: Box<flywheel_driver::DriverError> },
    #[error("{0}")]
    Internal(String),
}
