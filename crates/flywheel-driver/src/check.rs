//! The version gate: the userspace an image or tree holds against the running kernel module.
//! As a runner's pre-job hook it turns "Driver/library version mismatch" deep inside a job
//! into one line, before the job starts, that names both versions and what to do.

use std::path::Path;

use crate::capability::Capabilities;
use crate::discover::{discover, DiscoverOptions};
use crate::manifest::{self, Manifest};
use crate::version::DriverVersion;
use crate::DriverError;

/// Where the kernel module tells its version.
pub const KERNEL_VERSION_FILE: &str = "/proc/driver/nvidia/version";

/// A driver userspace, and how flywheel knows its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Userspace {
    pub version: DriverVersion,
    /// e.g. "the image ./img (label dev.flywheel.driver.version, 23 files checked)"
    pub what: String,
}

/// The userspace in a tree: a collected tree or an image's root filesystem (`/` in a running
/// container), checked against its manifest; without a manifest, found as `collect` would.
pub fn userspace_of_tree(root: &Path) -> Result<Userspace, DriverError> {
    if let Some(path) = manifest::find_in_tree(root) {
        let m = Manifest::read(&path)?;
        m.verify_tree(root)?;
        return Ok(Userspace {
            what: format!("the tree {} ({}, {} files checked)", root.display(), path.display(), m.files.len()),
            version: m.version,
        });
    }
    let opts = DiscoverOptions {
        capabilities: Capabilities(Default::default()),
        nvml: false,
        strict: false,
        ..DiscoverOptions::default()
    };
    let driver = discover(&[root.to_path_buf()], &opts)?;
    Ok(Userspace { what: format!("the tree {} (library names)", root.display()), version: driver.version })
}

pub fn kernel_version(file: &Path) -> Result<DriverVersion, DriverError> {
    if !file.exists() {
        return Err(DriverError::NoKernelModule(file.to_path_buf()));
    }
    DriverVersion::from_proc_file(file).map_err(DriverError::Other)
}

/// Ok with a one-line summary when the versions match; the mismatch error otherwise.
pub fn check(user: &Userspace, kernel_file: &Path) -> Result<String, DriverError> {
    let kernel = kernel_version(kernel_file)?;
    if kernel != user.version {
        return Err(DriverError::Mismatch {
            user: user.version.clone(),
            user_what: user.what.clone(),
            kernel,
            kernel_from: kernel_file.display().to_string(),
        });
    }
    Ok(format!(
        "ok: {} is NVIDIA userspace {}, the kernel module's version ({})",
        user.what,
        kernel,
        kernel_file.display()
    ))
}
