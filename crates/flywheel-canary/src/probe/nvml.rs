//! NVML backend: every device's identity, memory, temperature, power, clocks, PCIe link, ECC
//! counters, retired pages, remapped rows, throttle reasons and compute processes, read through
//! `libnvidia-ml.so.1` loaded at run time.
//!
//! The canary builds and runs without a driver: when the library or the kernel module is missing,
//! [`NvmlProbe::open`] says which (and what to do) instead of failing to start. A library that is
//! not NVML never panics the canary: its exports are checked before it is loaded, and the
//! initialisation itself runs under `catch_unwind`. A reading a device does not support is
//! `None`; one that fails otherwise is `None` too, with a warning in [`Reading::warnings`].

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use flywheel_driver::version::DriverVersion;
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{
    Clock, EccCounter, MemoryError, RetirementCause, TemperatureSensor, TemperatureThreshold,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::{Device, Nvml};

use super::{
    nvidia_device_nodes, DeviceState, Fault, GpuProbe, GpuProcess, GpuSnapshot, ProbeError, Reading, RemappedRows,
};
use crate::context::GpuOptions;

/// NVML's library, as the dynamic loader finds it when no path is given.
pub const DEFAULT_LIB: &str = "libnvidia-ml.so.1";

/// What a library must export to be loaded as NVML (nvml-wrapper's bindings panic when a
/// function they call is missing).
const REQUIRED_EXPORTS: &[&str] = &[
    "nvmlInit_v2",
    "nvmlShutdown",
    "nvmlSystemGetDriverVersion",
    "nvmlDeviceGetCount_v2",
    "nvmlDeviceGetHandleByIndex_v2",
];

const DRIVER_REMEDY: &str = "run the job on a GPU node, in a runner image with the NVIDIA driver layer (flywheel driver collect) or with the driver injected at run time (nvidia-container-toolkit or a CDI spec)";
const NOT_LOADED_REMEDY: &str = "run the job on a GPU node whose NVIDIA kernel module is loaded (lsmod | grep nvidia; modprobe nvidia, or reboot after a driver install), and give the job's container the GPUs";
const NOT_NVML_REMEDY: &str = "point the canary's NVML library option at the driver's libnvidia-ml.so.1, or leave it unset to use the one the dynamic loader finds";
const PERMISSION_REMEDY: &str = "the job's user cannot open the NVIDIA device nodes: give the runner's container the GPUs (--gpus, a CDI spec, or --device /dev/nvidiactl --device /dev/nvidia0 ...) and check the nodes' permissions (ls -l /dev/nvidia*; crw-rw-rw- or a group the job's user is in)";
const GPU_LOST_REMEDY: &str = "drain the node: a GPU fell off the bus and needs a reset or a power cycle (nvidia-smi -r when no job runs on it, else reboot the node); look for Xid 79 in dmesg and file a hardware ticket if it returns";
const RESET_REMEDY: &str = "drain the node and reset the GPU when no job runs on it (nvidia-smi -r), then file a hardware ticket if it returns";
const POWER_REMEDY: &str = "drain the node: a GPU's external power cables are not attached properly; reseat them, then file a hardware ticket if it returns";
const NVML_ERROR_REMEDY: &str =
    "look for NVRM and Xid errors in the node's dmesg and run nvidia-smi on the node; drain it if nvidia-smi fails too";

/// NVML, started. Dropping it shuts NVML down.
pub struct NvmlProbe {
    nvml: Nvml,
    /// The library as given (a path) or [`DEFAULT_LIB`].
    lib: String,
    dev_dir: PathBuf,
    proc_version: PathBuf,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("lib", &self.lib)
            .field("dev_dir", &self.dev_dir)
            .field("proc_version", &self.proc_version)
            .finish_non_exhaustive()
    }
}

/// Why NVML did not start.
#[derive(Debug)]
enum InitError {
    Nvml(NvmlError),
    /// The library does not export what NVML must (checked before loading it).
    NotNvml {
        lib: PathBuf,
        missing: Vec<&'static str>,
    },
    /// The bindings panicked (a function missing after all).
    Panicked(String),
}

impl NvmlProbe {
    /// Loads and starts NVML: from `opts.nvml_lib` when set, else [`DEFAULT_LIB`] through the
    /// dynamic loader.
    pub fn open(opts: &GpuOptions) -> Result<NvmlProbe, ProbeError> {
        let located = locate(opts);
        if let Some(lib) =
            located.as_deref().filter(|p| p.is_file() && !flywheel_driver::elf::exports_all(p, REQUIRED_EXPORTS))
        {
            let missing: Vec<&'static str> =
                REQUIRED_EXPORTS.iter().copied().filter(|s| !flywheel_driver::elf::exports_all(lib, &[s])).collect();
            return Err(open_error(InitError::NotNvml { lib: lib.to_path_buf(), missing }, opts, located.as_deref()));
        }
        // By SONAME first, as the image's loader resolves it; then the file found in the usual
        // folders, which a binary built by Nix (whose loader does not search the host's
        // /usr/lib) cannot find by name.
        let mut lib = lib_name(opts);
        let mut started = init(opts.nvml_lib.as_deref());
        if let (Err(InitError::Nvml(NvmlError::LibloadingError(_))), None, Some(found)) =
            (&started, &opts.nvml_lib, located.as_deref())
        {
            started = init(Some(found));
            lib = found.display().to_string();
        }
        match started {
            Ok(nvml) => {
                Ok(NvmlProbe { nvml, lib, dev_dir: opts.dev_dir.clone(), proc_version: opts.proc_version.clone() })
            }
            Err(e) => Err(open_error(e, opts, located.as_deref())),
        }
    }

    /// The library NVML was loaded from, as given.
    pub fn library(&self) -> &str {
        &self.lib
    }

    /// Everything NVML can read now, with what it could not.
    pub fn read(&self) -> Result<Reading, ProbeError> {
        let mut c = Collector::default();
        let count = self.nvml.device_count().map_err(|e| call_error("counting the GPUs", e))?;
        let driver_version = c.get(None, "driver version", self.nvml.sys_driver_version());
        let cuda_driver_version = c.get(None, "CUDA driver version", self.nvml.sys_cuda_driver_version());
        let kernel_module_version = match DriverVersion::from_proc_file(&self.proc_version) {
            Ok(v) => Some(v.to_string()),
            Err(e) => {
                c.warnings.push(format!("kernel module version: {e}"));
                None
            }
        };
        let mut devices = Vec::new();
        for index in 0..count {
            match self.nvml.device_by_index(index) {
                Ok(device) => devices.push(read_device(&self.nvml, index, &device, &mut c)),
                Err(e) => c.fault(index, "opening it", e),
            }
        }
        let snapshot = GpuSnapshot {
            backend: self.backend().to_string(),
            driver_version,
            kernel_module_version,
            cuda_driver_version,
            devices,
            device_nodes: nvidia_device_nodes(&self.dev_dir),
        };
        Ok(Reading { snapshot, warnings: c.warnings, faults: c.faults })
    }
}

impl GpuProbe for NvmlProbe {
    fn backend(&self) -> &'static str {
        "nvml"
    }

    fn read(&self) -> Result<Reading, ProbeError> {
        NvmlProbe::read(self)
    }
}

/// Starts NVML from `lib` (or the default), turning a panic of the bindings into an error.
fn init(lib: Option<&Path>) -> Result<Nvml, InitError> {
    let started = catch_unwind(AssertUnwindSafe(|| {
        let mut builder = Nvml::builder();
        if let Some(lib) = lib {
            builder.lib_path(lib.as_os_str());
        }
        builder.init()
    }));
    match started {
        Ok(r) => r.map_err(InitError::Nvml),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".to_string());
            Err(InitError::Panicked(msg))
        }
    }
}

fn lib_name(opts: &GpuOptions) -> String {
    opts.nvml_lib.as_ref().map_or_else(|| DEFAULT_LIB.to_string(), |p| p.display().to_string())
}

/// The library file NVML loads: the given path, else the first `libnvidia-ml.so.1` in
/// `LD_LIBRARY_PATH` or the usual library folders.
fn locate(opts: &GpuOptions) -> Option<PathBuf> {
    match &opts.nvml_lib {
        Some(p) => Some(p.clone()),
        None => crate::libs::locate(DEFAULT_LIB),
    }
}

/// The driver version a library's real file name ends in (`libnvidia-ml.so.580.159.04`).
fn library_version(lib: &Path) -> Option<String> {
    let real = std::fs::canonicalize(lib).unwrap_or_else(|_| lib.to_path_buf());
    let name = real.file_name()?.to_str()?;
    DriverVersion::from_library_name(name).map(|(_, v)| v.to_string())
}

/// NVML's refusal to start, as a reason and a remedy.
fn open_error(e: InitError, opts: &GpuOptions, located: Option<&Path>) -> ProbeError {
    let proc = opts.proc_version.display();
    let proc_present = opts.proc_version.exists();
    let lib = lib_name(opts);
    let unavailable = |reason: String, remedy: &str| ProbeError::Unavailable { reason, remedy: remedy.to_string() };
    let failed = |reason: String, remedy: &str| ProbeError::Failed { reason, remedy: remedy.to_string() };
    let with_proc = |mut reason: String| {
        if !proc_present {
            reason.push_str(&format!("; driver not loaded (no {proc})"));
        }
        reason
    };
    let e = match e {
        InitError::NotNvml { lib, missing } => {
            return unavailable(
                with_proc(format!("{} is not NVML: it does not export {}", lib.display(), missing.join(", "))),
                NOT_NVML_REMEDY,
            )
        }
        InitError::Panicked(msg) => {
            return unavailable(
                with_proc(format!("{lib} is not a usable NVML: loading it panicked ({msg})")),
                NOT_NVML_REMEDY,
            )
        }
        InitError::Nvml(e) => e,
    };
    match e {
        NvmlError::LibloadingError(le) => {
            let error = le.to_string();
            // What was asked for: the option's file, or the SONAME.
            let asked = opts.nvml_lib.as_ref().map_or_else(|| DEFAULT_LIB.to_string(), |p| p.display().to_string());
            let dependency = crate::libs::missing_dependency(&asked, &error);
            let reason = match &opts.nvml_lib {
                None => crate::libs::open_failure(DEFAULT_LIB, &error),
                Some(p) if !p.exists() => format!("{DEFAULT_LIB} not found: {} does not exist", p.display()),
                Some(p) => format!("{} could not be loaded ({le})", p.display()),
            };
            let remedy = if let Some(dep) = dependency {
                crate::libs::missing_dependency_remedy(&dep)
            } else if opts.nvml_lib.is_some() {
                format!("{DRIVER_REMEDY}; or fix the NVML library path")
            } else {
                DRIVER_REMEDY.to_string()
            };
            ProbeError::Unavailable { reason: with_proc(reason), remedy }
        }
        NvmlError::FailedToLoadSymbol(s) => {
            unavailable(with_proc(format!("{lib} is not NVML, or an NVML too old: {s}")), NOT_NVML_REMEDY)
        }
        NvmlError::FunctionNotFound => unavailable(
            with_proc(format!("{lib} is not NVML, or an NVML too old: a function is missing")),
            NOT_NVML_REMEDY,
        ),
        NvmlError::DriverNotLoaded if !proc_present => {
            unavailable(format!("driver not loaded (no {proc})"), NOT_LOADED_REMEDY)
        }
        NvmlError::DriverNotLoaded => unavailable(
            format!("driver not loaded: NVML finds no NVIDIA kernel module to talk to, though {proc} exists"),
            NOT_LOADED_REMEDY,
        ),
        NvmlError::LibRmVersionMismatch => {
            let user = located.and_then(library_version).unwrap_or_else(|| "unknown".to_string());
            let (kernel, kernel_known) = match DriverVersion::from_proc_file(&opts.proc_version) {
                Ok(v) => (v.to_string(), true),
                Err(e) => (format!("unknown ({e})"), false),
            };
            let target = if kernel_known { kernel.clone() } else { "the kernel module's version".to_string() };
            failed(
                format!("driver/library version mismatch: userspace {user}, kernel module {kernel}"),
                &format!(
                    "rebuild the runner image with the driver layer for the kernel module's version {target} \
                     (flywheel driver collect from the host's driver), or reboot the node into the kernel \
                     module the image was built for (a driver upgraded without a reboot does this)"
                ),
            )
        }
        NvmlError::NoPermission => {
            failed("NVML has no permission to talk to the driver".to_string(), PERMISSION_REMEDY)
        }
        NvmlError::GpuLost => failed("a GPU fell off the bus (NVML: GPU lost)".to_string(), GPU_LOST_REMEDY),
        NvmlError::ResetRequired => {
            failed("a GPU needs a reset before it can be used (NVML: reset required)".to_string(), RESET_REMEDY)
        }
        NvmlError::InsufficientPower => {
            failed("a GPU's external power cables are not attached properly".to_string(), POWER_REMEDY)
        }
        other => failed(format!("NVML did not start: {other}"), NVML_ERROR_REMEDY),
    }
}

/// An NVML call other than a device's readings failed after NVML started.
fn call_error(what: &str, e: NvmlError) -> ProbeError {
    let remedy = match e {
        NvmlError::GpuLost => GPU_LOST_REMEDY,
        NvmlError::ResetRequired => RESET_REMEDY,
        NvmlError::NoPermission => PERMISSION_REMEDY,
        NvmlError::InsufficientPower => POWER_REMEDY,
        _ => NVML_ERROR_REMEDY,
    };
    ProbeError::Failed { reason: format!("NVML failed {what}: {e}"), remedy: remedy.to_string() }
}

#[derive(Default)]
struct Collector {
    warnings: Vec<String>,
    faults: Vec<Fault>,
}

impl Collector {
    /// A reading: `None` when unsupported, and a warning or a fault when it failed otherwise.
    fn get<T>(&mut self, gpu: Option<u32>, what: &str, r: Result<T, NvmlError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(NvmlError::NotSupported) => None,
            Err(e @ (NvmlError::GpuLost | NvmlError::ResetRequired)) => {
                match gpu {
                    Some(i) => self.fault(i, what, e),
                    None => self.warnings.push(format!("{what}: {e}")),
                }
                None
            }
            Err(e) => {
                self.warnings.push(match gpu {
                    Some(i) => format!("GPU {i}: {what}: {e}"),
                    None => format!("{what}: {e}"),
                });
                None
            }
        }
    }

    /// A GPU that cannot be read; one fault per GPU and kind.
    fn fault(&mut self, gpu: u32, what: &str, e: NvmlError) {
        let (message, remedy) = match e {
            NvmlError::GpuLost => (format!("GPU {gpu} fell off the bus (NVML: GPU lost)"), GPU_LOST_REMEDY),
            NvmlError::ResetRequired => (format!("GPU {gpu} needs a reset (NVML: reset required)"), RESET_REMEDY),
            NvmlError::NoPermission => (format!("GPU {gpu}: no permission to open it"), PERMISSION_REMEDY),
            NvmlError::InsufficientPower => {
                (format!("GPU {gpu}: external power cables not attached properly"), POWER_REMEDY)
            }
            other => (format!("GPU {gpu} could not be read ({what}: {other})"), NVML_ERROR_REMEDY),
        };
        if !self.faults.iter().any(|f| f.message == message) {
            self.faults.push(Fault { message, remedy: remedy.to_string() });
        }
    }
}

const THROTTLE_NAMES: &[(ThrottleReasons, &str)] = &[
    (ThrottleReasons::GPU_IDLE, "gpu_idle"),
    (ThrottleReasons::APPLICATIONS_CLOCKS_SETTING, "applications_clocks_setting"),
    (ThrottleReasons::SW_POWER_CAP, "sw_power_cap"),
    (ThrottleReasons::HW_SLOWDOWN, "hw_slowdown"),
    (ThrottleReasons::SYNC_BOOST, "sync_boost"),
    (ThrottleReasons::SW_THERMAL_SLOWDOWN, "sw_thermal_slowdown"),
    (ThrottleReasons::HW_THERMAL_SLOWDOWN, "hw_thermal_slowdown"),
    (ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN, "hw_power_brake_slowdown"),
    (ThrottleReasons::DISPLAY_CLOCK_SETTING, "display_clock_setting"),
];

/// NVML's throttle reasons by name, in a fixed order.
pub fn throttle_reason_names(reasons: ThrottleReasons) -> Vec<String> {
    THROTTLE_NAMES.iter().filter(|(flag, _)| reasons.contains(*flag)).map(|(_, n)| n.to_string()).collect()
}

fn read_device(nvml: &Nvml, index: u32, d: &Device<'_>, c: &mut Collector) -> DeviceState {
    let g = Some(index);
    let memory = c.get(g, "memory", d.memory_info());
    let ecc = c.get(g, "ECC mode", d.is_ecc_enabled());
    let retired = |c: &mut Collector, cause, what| c.get(g, what, d.retired_pages(cause)).map(|p| p.len() as u64);
    let retired_dbe = retired(c, RetirementCause::DoubleBitEccError, "retired pages (double-bit)");
    let retired_sbe = retired(c, RetirementCause::MultipleSingleBitEccErrors, "retired pages (single-bit)");
    // nvmlDeviceGetComputeRunningProcesses_v3 (drivers from 470 on); the _v2 fallback needs
    // nvml-wrapper's `legacy-functions` feature.
    let processes = d.running_compute_processes();
    DeviceState {
        index,
        name: c.get(g, "name", d.name()).unwrap_or_default(),
        uuid: c.get(g, "UUID", d.uuid()).unwrap_or_default(),
        pci_bus_id: c.get(g, "PCI info", d.pci_info()).map(|p| p.bus_id).unwrap_or_default(),
        memory_total_bytes: memory.as_ref().map_or(0, |m| m.total),
        memory_used_bytes: memory.as_ref().map_or(0, |m| m.used),
        temperature_c: c.get(g, "temperature", d.temperature(TemperatureSensor::Gpu)),
        temperature_slowdown_c: c.get(
            g,
            "slowdown temperature",
            d.temperature_threshold(TemperatureThreshold::Slowdown),
        ),
        power_w: c.get(g, "power usage", d.power_usage()).map(milliwatts),
        power_limit_w: c.get(g, "power limit", d.enforced_power_limit()).map(milliwatts),
        sm_clock_mhz: c.get(g, "SM clock", d.clock_info(Clock::SM)),
        sm_clock_max_mhz: c.get(g, "max SM clock", d.max_clock_info(Clock::SM)),
        mem_clock_mhz: c.get(g, "memory clock", d.clock_info(Clock::Memory)),
        mem_clock_max_mhz: c.get(g, "max memory clock", d.max_clock_info(Clock::Memory)),
        pcie_gen: c.get(g, "PCIe link generation", d.current_pcie_link_gen()),
        pcie_gen_max: c.get(g, "max PCIe link generation", d.max_pcie_link_gen()),
        pcie_width: c.get(g, "PCIe link width", d.current_pcie_link_width()),
        pcie_width_max: c.get(g, "max PCIe link width", d.max_pcie_link_width()),
        ecc_enabled: ecc.map(|e| e.currently_enabled),
        ecc_corrected_volatile: c.get(
            g,
            "corrected ECC errors",
            d.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        ),
        ecc_uncorrected_volatile: c.get(
            g,
            "uncorrected ECC errors",
            d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
        ),
        ecc_uncorrected_aggregate: c.get(
            g,
            "aggregate uncorrected ECC errors",
            d.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Aggregate),
        ),
        retired_pages: retired_dbe.zip(retired_sbe).map(|(a, b)| a + b),
        retired_pages_pending: c.get(g, "pending page retirement", d.are_pages_pending_retired()),
        remapped_rows: c.get(g, "remapped rows", remapped_rows(nvml, d)),
        throttle_reasons: c
            .get(g, "throttle reasons", d.current_throttle_reasons())
            .map(throttle_reason_names)
            .unwrap_or_default(),
        persistence_mode: c.get(g, "persistence mode", d.is_in_persistent_mode()),
        compute_processes: c.get(g, "compute processes", processes).unwrap_or_default().iter().map(process).collect(),
    }
}

fn milliwatts(mw: u32) -> f64 {
    f64::from(mw) / 1000.0
}

fn process(p: &ProcessInfo) -> GpuProcess {
    GpuProcess {
        pid: p.pid,
        used_memory_bytes: match p.used_gpu_memory {
            UsedGpuMemory::Used(b) => Some(b),
            UsedGpuMemory::Unavailable => None,
        },
    }
}

/// The device's row remapping state (Ampere and newer).
// nvml-wrapper has no safe wrapper for remapped rows: this is the one raw NVML call.
#[allow(unsafe_code)]
fn remapped_rows(nvml: &Nvml, device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    // The bindings' method panics on a missing symbol (an NVML older than 450): check first.
    if let Err(e) = nvml.lib().nvmlDeviceGetRemappedRows.as_ref() {
        return Err(NvmlError::FailedToLoadSymbol(e.to_string()));
    }
    let (mut corr, mut unc, mut pending, mut failure) = (0u32, 0u32, 0u32, 0u32);
    // SAFETY: the symbol is loaded (checked above); the handle is valid while `device`, which
    // borrows `nvml`, lives; the four pointers are to live `c_uint`s, which NVML only writes.
    let code = unsafe {
        nvml.lib().nvmlDeviceGetRemappedRows(device.handle(), &mut corr, &mut unc, &mut pending, &mut failure)
    };
    nvml_try(code)?;
    Ok(RemappedRows { correctable: corr, uncorrectable: unc, pending: pending != 0, failure: failure != 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(nvml_lib: Option<PathBuf>, proc_version: PathBuf) -> GpuOptions {
        GpuOptions { nvml_lib, dev_dir: PathBuf::from("/nonexistent-dev"), proc_version }
    }

    fn reason(e: &ProbeError) -> (&'static str, &str, &str) {
        match e {
            ProbeError::Unavailable { reason, remedy } => ("unavailable", reason, remedy),
            ProbeError::Failed { reason, remedy } => ("failed", reason, remedy),
        }
    }

    #[test]
    fn no_library_is_unavailable_and_says_both_missing() {
        let o = opts(None, PathBuf::from("/proc/driver/nvidia/version"));
        if locate(&o).is_some() || o.proc_version.exists() {
            return; // a machine with a driver
        }
        let e = NvmlProbe::open(&o).expect_err("no NVML here");
        let (kind, reason, remedy) = reason(&e);
        assert_eq!(kind, "unavailable");
        assert!(reason.contains("libnvidia-ml.so.1 not found"), "{reason}");
        assert!(reason.contains("driver not loaded (no /proc/driver/nvidia/version)"), "{reason}");
        assert!(remedy.contains("GPU node"), "{remedy}");
    }

    #[test]
    fn a_missing_library_path_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = dir.path().join("version");
        std::fs::write(&proc, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n")
            .expect("write");
        let e = NvmlProbe::open(&opts(Some(dir.path().join("libnvidia-ml.so.1")), proc)).expect_err("no library");
        let (kind, reason, _) = reason(&e);
        assert_eq!(kind, "unavailable");
        assert!(reason.contains("libnvidia-ml.so.1 not found"), "{reason}");
        assert!(!reason.contains("driver not loaded"), "the kernel module is there: {reason}");
    }

    fn libm() -> Option<PathBuf> {
        ["/lib/x86_64-linux-gnu/libm.so.6", "/lib/aarch64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    }

    #[test]
    fn a_library_that_is_not_nvml_does_not_panic() {
        let Some(libm) = libm() else { return };
        let e = NvmlProbe::open(&opts(Some(libm.clone()), PathBuf::from("/nonexistent/version")))
            .expect_err("libm is not NVML");
        let (kind, reason, _) = reason(&e);
        assert_eq!(kind, "unavailable");
        assert!(reason.contains("is not NVML"), "{reason}");
        assert!(reason.contains("nvmlInit_v2"), "{reason}");
        assert!(reason.contains("driver not loaded"), "{reason}");
        // Past the exports check, the bindings themselves refuse it without panicking.
        match init(Some(&libm)) {
            Err(InitError::Nvml(NvmlError::FailedToLoadSymbol(_))) => {}
            Err(other) => panic!("unexpected: {other:?}"),
            Ok(_) => panic!("libm started as NVML"),
        }
    }

    #[test]
    fn version_mismatch_names_both_versions_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = dir.path().join("version");
        std::fs::write(&proc, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build\n")
            .expect("write");
        let real = dir.path().join("libnvidia-ml.so.570.86.15");
        std::fs::write(&real, b"").expect("write");
        let link = dir.path().join("libnvidia-ml.so.1");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let o = opts(Some(link.clone()), proc);
        let e = open_error(InitError::Nvml(NvmlError::LibRmVersionMismatch), &o, Some(&link));
        let (kind, reason, remedy) = reason(&e);
        assert_eq!(kind, "failed");
        assert_eq!(reason, "driver/library version mismatch: userspace 570.86.15, kernel module 580.159.04");
        assert!(remedy.contains("580.159.04") && remedy.contains("flywheel driver collect"), "{remedy}");
    }

    #[test]
    fn each_refusal_has_its_own_remedy() {
        let o = opts(None, PathBuf::from("/nonexistent/version"));
        let mut remedies = Vec::new();
        for e in [NvmlError::NoPermission, NvmlError::GpuLost, NvmlError::ResetRequired] {
            let e = open_error(InitError::Nvml(e), &o, None);
            let (kind, _, remedy) = reason(&e);
            assert_eq!(kind, "failed");
            remedies.push(remedy.to_string());
        }
        remedies.dedup();
        assert_eq!(remedies.len(), 3);
        let e = open_error(InitError::Nvml(NvmlError::DriverNotLoaded), &o, None);
        let (kind, reason, _) = reason(&e);
        assert_eq!(kind, "unavailable");
        assert_eq!(reason, "driver not loaded (no /nonexistent/version)");
    }

    #[test]
    fn throttle_reasons_are_named() {
        let names = throttle_reason_names(ThrottleReasons::GPU_IDLE | ThrottleReasons::HW_SLOWDOWN);
        assert_eq!(names, ["gpu_idle", "hw_slowdown"]);
        assert!(throttle_reason_names(ThrottleReasons::NONE).is_empty());
    }

    #[test]
    fn unsupported_readings_are_none_without_warnings() {
        let mut c = Collector::default();
        assert_eq!(c.get::<u32>(Some(0), "power", Err(NvmlError::NotSupported)), None);
        assert!(c.warnings.is_empty() && c.faults.is_empty());
        assert_eq!(c.get::<u32>(Some(0), "power", Err(NvmlError::Unknown)), None);
        assert_eq!(c.warnings.len(), 1);
        c.get::<u32>(Some(1), "power", Err(NvmlError::GpuLost));
        c.get::<u32>(Some(1), "clocks", Err(NvmlError::GpuLost));
        assert_eq!(c.faults.len(), 1, "one fault per GPU: {:?}", c.faults);
    }
}
