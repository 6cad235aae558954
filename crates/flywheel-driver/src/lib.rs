//! NVIDIA driver userspace for GPU runner images: find a driver's files by capability
//! ([`discover`]), lay them out as a deterministic image layer tree with a manifest
//! ([`collect`]), describe them for run-time injection as a CDI spec ([`cdi`]), and gate a
//! job on the image's userspace matching the host's kernel module ([`check`]).
//!
//! Data flows one way: driver root → [`discover::Driver`] → tree + [`manifest::Manifest`] (or
//! a CDI spec); the image builder (flywheel-oci) takes the tree as a layer and labels the image
//! from the manifest; [`check`] compares what an image or tree holds with the kernel module.

#![forbid(unsafe_code)]

pub mod capability;
pub mod cdi;
pub mod check;
pub mod collect;
pub mod discover;
pub mod elf;
pub mod manifest;
mod nvml;
pub mod version;

use std::path::{Path, PathBuf};

pub use capability::{Capabilities, Capability};
pub use discover::{discover, DiscoverOptions, Driver};
pub use elf::Arch;
pub use manifest::Manifest;
pub use version::DriverVersion;

/// Image config labels that record the driver an image holds.
pub const LABEL_VERSION: &str = "dev.flywheel.driver.version";
pub const LABEL_CAPABILITIES: &str = "dev.flywheel.driver.capabilities";
pub const LABEL_MANIFEST: &str = "dev.flywheel.driver.manifest";

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a directory; a driver root is a folder holding lib/ or lib64/ (e.g. /usr/local/nvidia, /run/opengl-driver)", .0.display())]
    RootNotADirectory(PathBuf),
    #[error("no NVIDIA driver found under {roots}: no libnvidia-ml.so.<version>, libcuda.so.<version>, ... (looked in {looked})")]
    NoDriver { roots: String, looked: String },
    #[error("two driver versions under the driver root: {a} ({}) and {b} ({}); give a root that holds one driver", a_file.display(), b_file.display())]
    TwoVersions { a: DriverVersion, a_file: PathBuf, b: DriverVersion, b_file: PathBuf },
    #[error("driver versions disagree: {a_what} are {a}, but {b_what} says {b}")]
    Disagree { a_what: String, a: DriverVersion, b_what: String, b: DriverVersion },
    #[error("{}: shared library without a SONAME, so its links cannot be made", .0.display())]
    NoSoname(PathBuf),
    #[error("{}: not an ELF shared library", .0.display())]
    NotElf(PathBuf),
    #[error("{}: {why}", path.display())]
    Elf { path: PathBuf, why: String },
    #[error("{}: dangling symlink (to {})", link.display(), target.display())]
    Dangling { link: PathBuf, target: PathBuf },
    #[error("capability {capability} needs {file}, which is not under {roots}")]
    MissingForCapability { capability: Capability, file: String, roots: String },
    #[error("{}: ICD file {why}", path.display())]
    BadIcd { path: PathBuf, why: String },
    #[error("{path}: not a flywheel driver manifest: {why}")]
    BadManifest { path: String, why: String },
    #[error("{origin}: {path} {why}: the driver files do not match their manifest")]
    Tampered { origin: String, path: String, why: String },
    #[error("{}: exists and is not a collected driver tree; remove it or choose another --out", .0.display())]
    OutputExists(PathBuf),
    #[error("no NVIDIA kernel module is loaded here ({} does not exist): run this on a GPU node with the NVIDIA driver", .0.display())]
    NoKernelModule(PathBuf),
    #[error("driver mismatch: {user_what} is NVIDIA userspace {user}, but the kernel module is {kernel} ({kernel_from}); NVML and CUDA would fail with \"Driver/library version mismatch\". Use an image built for {kernel} (flywheel driver collect from the {kernel} driver, then rebuild), or run the job on a node whose driver is {user}")]
    Mismatch { user: DriverVersion, user_what: String, kernel: DriverVersion, kernel_from: String },
    #[error("no NVIDIA GPUs under {}: no dev/nvidia<N> device nodes", .0.display())]
    NoGpus(PathBuf),
    #[error("{0}")]
    Other(String),
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl DriverError {
    pub fn io(path: &Path) -> impl Fn(std::io::Error) -> DriverError + '_ {
        move |source| DriverError::Io { path: path.to_path_buf(), source }
    }
}
