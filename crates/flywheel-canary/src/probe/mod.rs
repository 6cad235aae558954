//! GPU probing behind one interface. NVML is the first backend (`nvml`); a DRM/sysfs backend for
//! amdgpu or i915 fits beside it by implementing [`GpuProbe`] with the fields it can fill (every
//! reading that a backend or a device may not support is an `Option`).

pub mod nvml;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The backend cannot run here (no library, no driver): the step is unavailable.
    #[error("{reason}")]
    Unavailable { reason: String, remedy: String },
    /// The backend runs but a call failed.
    #[error("{reason}")]
    Failed { reason: String, remedy: String },
}

pub trait GpuProbe: Send {
    /// `nvml`, `drm`, ...
    fn backend(&self) -> &'static str;
    /// Everything the backend can read about every device, now, with what it could not.
    fn read(&self) -> Result<Reading, ProbeError>;
}

/// The GPU backend for this machine: NVML today. A DRM/sysfs backend (amdgpu, i915) is chosen
/// here when it exists and NVML does not open.
pub fn open(opts: &crate::context::GpuOptions) -> Result<Box<dyn GpuProbe>, ProbeError> {
    Ok(Box::new(nvml::NvmlProbe::open(opts)?))
}

/// A GPU that cannot be read (fell off the bus, needs a reset, refused): the gpu step fails on
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub message: String,
    pub remedy: String,
}

/// A snapshot, and what went wrong while taking it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    pub snapshot: GpuSnapshot,
    /// Readings that failed for a reason other than "not supported", one line each
    /// (`GPU 0: power usage: ...`).
    pub warnings: Vec<String>,
    pub faults: Vec<Fault>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuSnapshot {
    pub backend: String,
    /// The userspace library's driver version.
    pub driver_version: Option<String>,
    /// The loaded kernel module's version (/proc/driver/nvidia/version for NVIDIA).
    pub kernel_module_version: Option<String>,
    /// CUDA version the driver supports, as NVML reports it (12080 = 12.8).
    pub cuda_driver_version: Option<i32>,
    pub devices: Vec<DeviceState>,
    /// Device nodes of this vendor's GPUs (/dev/nvidia0, ...), sorted.
    pub device_nodes: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub index: u32,
    pub name: String,
    pub uuid: String,
    pub pci_bus_id: String,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub temperature_c: Option<u32>,
    /// Where the GPU starts slowing down for heat.
    pub temperature_slowdown_c: Option<u32>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    pub sm_clock_mhz: Option<u32>,
    pub sm_clock_max_mhz: Option<u32>,
    pub mem_clock_mhz: Option<u32>,
    pub mem_clock_max_mhz: Option<u32>,
    pub pcie_gen: Option<u32>,
    pub pcie_gen_max: Option<u32>,
    pub pcie_width: Option<u32>,
    pub pcie_width_max: Option<u32>,
    pub ecc_enabled: Option<bool>,
    pub ecc_corrected_volatile: Option<u64>,
    pub ecc_uncorrected_volatile: Option<u64>,
    pub ecc_uncorrected_aggregate: Option<u64>,
    /// Pages retired for double-bit errors plus multiple single-bit errors.
    pub retired_pages: Option<u64>,
    pub retired_pages_pending: Option<bool>,
    pub remapped_rows: Option<RemappedRows>,
    /// Active clock throttle reasons, by NVML's names (`hw_slowdown`, `sw_thermal_slowdown`...).
    pub throttle_reasons: Vec<String>,
    pub persistence_mode: Option<bool>,
    pub compute_processes: Vec<GpuProcess>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemappedRows {
    pub correctable: u32,
    pub uncorrectable: u32,
    /// A remapping waits for the GPU to be reset.
    pub pending: bool,
    /// A remapping failed: the GPU needs service.
    pub failure: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_bytes: Option<u64>,
}

/// The NVIDIA GPU device nodes under `dev` (`nvidia0`, `nvidia1`...; not nvidiactl or
/// nvidia-uvm), sorted by number.
pub fn nvidia_device_nodes(dev: &std::path::Path) -> Vec<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir(dev)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("nvidia")?.parse().ok()?;
            Some((n, dev.join(&name).display().to_string()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_nodes_are_numbered_gpus_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in ["nvidia0", "nvidia10", "nvidia2", "nvidiactl", "nvidia-uvm", "nvidia-caps", "nvidiax"] {
            std::fs::write(dir.path().join(n), b"").expect("write");
        }
        let nodes = nvidia_device_nodes(dir.path());
        let names: Vec<&str> = nodes.iter().filter_map(|p| p.rsplit('/').next()).collect();
        assert_eq!(names, ["nvidia0", "nvidia2", "nvidia10"]);
        assert!(nvidia_device_nodes(&dir.path().join("missing")).is_empty());
    }
}
