//! NVML's view of the driver, loaded at run time from the library being collected or checked.
//! No NVIDIA driver is needed to build or test flywheel: when NVML does not load or no kernel
//! module answers, there is simply no NVML opinion.

use std::path::Path;

use nvml_wrapper::Nvml;

use crate::version::DriverVersion;

/// The version NVML reports through the library at `lib`, when it loads and a driver runs.
pub fn driver_version(lib: &Path) -> Option<DriverVersion> {
    // nvml-wrapper's bindings panic on a missing function: a library that is not NVML (or an
    // NVML too old) is not loaded at all.
    if !crate::elf::exports_all(lib, &["nvmlInit_v2", "nvmlSystemGetDriverVersion", "nvmlShutdown"]) {
        tracing::debug!("{} does not export NVML's functions; not loaded", lib.display());
        return None;
    }
    let nvml = match Nvml::builder().lib_path(lib.as_os_str()).init() {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!("NVML from {} did not start: {e}", lib.display());
            return None;
        }
    };
    match nvml.sys_driver_version() {
        Ok(v) => v.parse().ok(),
        Err(e) => {
            tracing::debug!("NVML from {}: no driver version: {e}", lib.display());
            None
        }
    }
}
