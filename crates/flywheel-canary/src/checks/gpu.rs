//! The gpu step: NVML opens, sees as many GPUs as /dev has nodes, agrees with the kernel module
//! on the driver version, and finds every GPU healthy (no uncorrected ECC errors, no pending page
//! retirement or row remapping, a full-width PCIe link, no hardware slowdown, below its slowdown
//! temperature) and free (no compute process but the canary's own). The snapshot is kept for
//! cleanup to compare against.
//!
//! [`evaluate`] holds every rule and needs no GPU: it judges a [`GpuSnapshot`].

use crate::context::Ctx;
use crate::probe::{DeviceState, GpuSnapshot, ProbeError};
use crate::step::Outcome;

const NO_GPU_REMEDY: &str = "give the job a GPU: check the runner's GPU assignment (--gpus, the CDI spec, NVIDIA_VISIBLE_DEVICES) and that nvidia-smi on the node lists its GPUs";
const COUNT_REMEDY: &str = "NVML and /dev disagree: check the runner's GPU assignment (the CDI spec or --gpus should give the job the device nodes of exactly the GPUs it sees), and look for a GPU that fell off the bus (dmesg | grep -i xid; nvidia-smi on the node)";
const RESET_REMEDY: &str = "drain the node and reset the GPU when no job runs on it (nvidia-smi -r), then file a hardware ticket if it returns";
const REMAP_FAILED_REMEDY: &str = "drain the node: the GPU's memory could not be repaired by row remapping and the GPU needs service; file a hardware ticket with its UUID";
const PCIE_REMEDY: &str = "drain the node: the GPU's PCIe link trained narrower than it can (nvidia-smi -q -d PCIE); reseat the GPU or its riser/cable, then file a hardware ticket if it returns";
const HW_SLOWDOWN_REMEDY: &str = "drain the node and check its cooling and power supply (nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER); file a hardware ticket if the slowdown stays when the GPU is idle and cool";
const TEMPERATURE_REMEDY: &str =
    "drain the node and check its cooling (fans, airflow, inlet temperature): the GPU slows down at this temperature";
const FOREIGN_REMEDY: &str = "another job or a leaked process holds the GPU; find it with nvidia-smi (nvidia-smi --query-compute-apps=pid,used_memory --format=csv) on the node and fix the runner's isolation/cleanup so that each job gets its own GPUs and nothing outlives a job";

/// Hardware throttle reasons: the GPU protects itself (heat, power brake): the step fails.
const HW_THROTTLES: &[&str] = &["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"];

pub fn run(ctx: &Ctx) -> Outcome {
    let probe = match crate::probe::open(&ctx.opts.gpu) {
        Ok(p) => p,
        Err(e) => return probe_error(e),
    };
    let reading = match probe.read() {
        Ok(r) => r,
        Err(e) => return probe_error(e),
    };
    ctx.set_gpu_baseline(reading.snapshot.clone());
    let mut o = evaluate(&reading.snapshot, std::process::id());
    for f in reading.faults {
        o.fail(f.message, f.remedy);
    }
    if !reading.warnings.is_empty() {
        o.detail("warnings", &reading.warnings);
        for w in &reading.warnings {
            o.note(format!("NVML could not read {w}"));
        }
    }
    o
}

fn probe_error(e: ProbeError) -> Outcome {
    match e {
        ProbeError::Unavailable { reason, remedy } => Outcome::unavailable(reason, remedy),
        ProbeError::Failed { reason, remedy } => {
            let mut o = Outcome::new();
            o.detail("backend", "nvml");
            o.fail(reason, remedy);
            o
        }
    }
}

/// Judges a snapshot: findings for what is wrong, notes for what is worth knowing, the snapshot as
/// details and per-device metrics. `own_pid` is the canary's process, the one compute process
/// allowed on a GPU.
pub fn evaluate(s: &GpuSnapshot, own_pid: u32) -> Outcome {
    let mut o = Outcome::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(s) {
        o.details.extend(m);
    }
    o.metric("gpu_devices", s.devices.len() as f64);
    o.note(summary(s));

    if s.devices.is_empty() {
        o.fail(format!("no GPU visible to {}", backend(s)), NO_GPU_REMEDY);
    }
    if s.devices.len() != s.device_nodes.len() {
        let nodes = if s.device_nodes.is_empty() { "none".to_string() } else { s.device_nodes.join(", ") };
        o.fail(
            format!(
                "{} sees {} but /dev has {} ({nodes})",
                backend(s),
                plural(s.devices.len(), "GPU"),
                plural(s.device_nodes.len(), "GPU device node"),
            ),
            COUNT_REMEDY,
        );
    }
    match (&s.driver_version, &s.kernel_module_version) {
        (Some(user), Some(kernel)) if user.trim() != kernel.trim() => o.fail(
            format!("driver/library version mismatch: userspace {user}, kernel module {kernel}"),
            format!(
                "rebuild the runner image with the driver layer for the kernel module's version {kernel} \
                 (flywheel driver collect from the host's driver), or reboot the node into the kernel module \
                 the image was built for (a driver upgraded without a reboot does this)"
            ),
        ),
        (Some(_), Some(_)) => {}
        (user, kernel) => o.note(format!(
            "driver version not compared: userspace {}, kernel module {}",
            user.as_deref().unwrap_or("unknown"),
            kernel.as_deref().unwrap_or("unknown"),
        )),
    }

    let mut foreign = Vec::new();
    for d in &s.devices {
        check_device(&mut o, d);
        metrics(&mut o, d);
        o.note(device_line(d));
        for p in d.compute_processes.iter().filter(|p| p.pid != own_pid) {
            foreign.push(match p.used_memory_bytes {
                Some(b) => format!("pid {} ({}) on GPU {}", p.pid, gib(b), d.index),
                None => format!("pid {} on GPU {}", p.pid, d.index),
            });
        }
    }
    if !foreign.is_empty() {
        o.fail(format!("foreign compute processes at start: {}", foreign.join(", ")), FOREIGN_REMEDY);
    }
    o
}

fn check_device(o: &mut Outcome, d: &DeviceState) {
    let who = who(d);
    if let Some(n) = d.ecc_uncorrected_volatile.filter(|n| *n > 0) {
        o.fail(format!("{who}: {n} uncorrected ECC errors since the driver loaded"), RESET_REMEDY);
    }
    if d.retired_pages_pending == Some(true) {
        o.fail(format!("{who}: page retirement pending (applies at the next GPU reset)"), RESET_REMEDY);
    }
    if let Some(r) = &d.remapped_rows {
        if r.failure {
            o.fail(
                format!("{who}: row remapping failed ({} uncorrectable rows)", r.uncorrectable),
                REMAP_FAILED_REMEDY,
            );
        }
        if r.pending {
            o.fail(format!("{who}: row remapping pending (applies at the next GPU reset)"), RESET_REMEDY);
        }
        if r.uncorrectable > 0 && !r.failure {
            o.note(format!("{who}: {} rows remapped for uncorrectable errors", r.uncorrectable));
        }
    }
    if let (Some(w), Some(max)) = (d.pcie_width, d.pcie_width_max) {
        if w < max {
            o.fail(format!("{who}: PCIe link x{w}, below its max x{max}"), PCIE_REMEDY);
        }
    }
    if let (Some(g), Some(max)) = (d.pcie_gen, d.pcie_gen_max) {
        if g < max {
            o.note(format!("{who}: PCIe gen{g}, below its max gen{max} (GPUs lower the link generation when idle)"));
        }
    }
    let hw: Vec<&str> = d.throttle_reasons.iter().map(String::as_str).filter(|r| HW_THROTTLES.contains(r)).collect();
    if !hw.is_empty() {
        o.fail(format!("{who}: hardware clock slowdown active: {}", hw.join(", ")), HW_SLOWDOWN_REMEDY);
    }
    let other: Vec<&str> = d
        .throttle_reasons
        .iter()
        .map(String::as_str)
        .filter(|r| !HW_THROTTLES.contains(r) && *r != "gpu_idle")
        .collect();
    if !other.is_empty() {
        o.note(format!("{who}: clocks limited by {}", other.join(", ")));
    }
    if let (Some(t), Some(slow)) = (d.temperature_c, d.temperature_slowdown_c) {
        if t >= slow {
            o.fail(format!("{who}: {t} C, at or above its slowdown temperature {slow} C"), TEMPERATURE_REMEDY);
        }
    }
}

fn metrics(o: &mut Outcome, d: &DeviceState) {
    let gpu = d.index.to_string();
    let labels = [("gpu", gpu.as_str()), ("uuid", d.uuid.as_str())];
    let mut m = |name: &str, v: Option<f64>| {
        if let Some(v) = v {
            o.metric_with(name, v, &labels);
        }
    };
    m("gpu_memory_used_bytes", Some(d.memory_used_bytes as f64));
    m("gpu_memory_total_bytes", Some(d.memory_total_bytes as f64));
    m("gpu_temperature_celsius", d.temperature_c.map(f64::from));
    m("gpu_power_watts", d.power_w);
    m("gpu_sm_clock_hertz", d.sm_clock_mhz.map(|c| f64::from(c) * 1e6));
    m("gpu_pcie_link_gen", d.pcie_gen.map(f64::from));
    m("gpu_pcie_link_width", d.pcie_width.map(f64::from));
    m("gpu_ecc_uncorrected_errors", d.ecc_uncorrected_volatile.map(|n| n as f64));
    m("gpu_retired_pages", d.retired_pages.map(|n| n as f64));
    m("gpu_remapped_rows_uncorrectable", d.remapped_rows.map(|r| f64::from(r.uncorrectable)));
}

fn backend(s: &GpuSnapshot) -> &str {
    match s.backend.as_str() {
        "" | "nvml" => "NVML",
        b => b,
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `GPU 0 (GPU-8c1a..., 00000000:19:00.0)`.
fn who(d: &DeviceState) -> String {
    let ids: Vec<&str> = [d.uuid.as_str(), d.pci_bus_id.as_str()].into_iter().filter(|s| !s.is_empty()).collect();
    if ids.is_empty() {
        format!("GPU {}", d.index)
    } else {
        format!("GPU {} ({})", d.index, ids.join(", "))
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

/// `driver 580.159.04 (kernel module 580.159.04), CUDA 12.8, 8 GPUs, 8 device nodes`.
fn summary(s: &GpuSnapshot) -> String {
    let cuda = s.cuda_driver_version.map_or_else(|| "?".to_string(), |v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    format!(
        "{}: driver {} (kernel module {}), CUDA {cuda}, {}, {}",
        backend(s),
        s.driver_version.as_deref().unwrap_or("?"),
        s.kernel_module_version.as_deref().unwrap_or("?"),
        plural(s.devices.len(), "GPU"),
        plural(s.device_nodes.len(), "device node"),
    )
}

/// `GPU 0 NVIDIA H100 80GB HBM3 (00000000:19:00.0): 45 C, 70 W / 700 W, PCIe gen5 x16 (max gen5
/// x16), 0 MiB used of 81559 MiB, ECC on, 0 uncorrected`.
fn device_line(d: &DeviceState) -> String {
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "?".to_string(), |v| v.to_string())
    }
    let watts = |w: Option<f64>| w.map_or_else(|| "?".to_string(), |w| format!("{w:.0}"));
    let ecc = match (d.ecc_enabled, d.ecc_uncorrected_volatile) {
        (Some(true), Some(n)) => format!("ECC on, {n} uncorrected"),
        (Some(true), None) => "ECC on".to_string(),
        (Some(false), _) => "ECC off".to_string(),
        (None, _) => "ECC n/a".to_string(),
    };
    let mut line = format!("GPU {}", d.index);
    if !d.name.is_empty() {
        line.push_str(&format!(" {}", d.name));
    }
    if !d.pci_bus_id.is_empty() {
        line.push_str(&format!(" ({})", d.pci_bus_id));
    }
    line.push_str(&format!(
        ": {} C, {} W / {} W, PCIe gen{} x{} (max gen{} x{}), {} MiB used of {} MiB, {ecc}",
        opt(d.temperature_c),
        watts(d.power_w),
        watts(d.power_limit_w),
        opt(d.pcie_gen),
        opt(d.pcie_width),
        opt(d.pcie_gen_max),
        opt(d.pcie_width_max),
        mib(d.memory_used_bytes),
        mib(d.memory_total_bytes),
    ));
    if d.persistence_mode == Some(false) {
        line.push_str(", persistence mode off");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::{GpuProcess, RemappedRows};
    use proptest::prelude::*;

    const OWN: u32 = 4242;

    fn device(index: u32) -> DeviceState {
        DeviceState {
            index,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: format!("GPU-0000000{index}-aaaa-bbbb-cccc-dddddddddddd"),
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x19 + index),
            memory_total_bytes: 81559 << 20,
            memory_used_bytes: 0,
            temperature_c: Some(45),
            temperature_slowdown_c: Some(87),
            power_w: Some(70.2),
            power_limit_w: Some(700.0),
            sm_clock_mhz: Some(345),
            sm_clock_max_mhz: Some(1980),
            mem_clock_mhz: Some(2619),
            mem_clock_max_mhz: Some(2619),
            pcie_gen: Some(5),
            pcie_gen_max: Some(5),
            pcie_width: Some(16),
            pcie_width_max: Some(16),
            ecc_enabled: Some(true),
            ecc_corrected_volatile: Some(0),
            ecc_uncorrected_volatile: Some(0),
            ecc_uncorrected_aggregate: Some(0),
            retired_pages: Some(0),
            retired_pages_pending: Some(false),
            remapped_rows: Some(RemappedRows::default()),
            throttle_reasons: vec!["gpu_idle".into()],
            persistence_mode: Some(true),
            compute_processes: vec![],
        }
    }

    fn healthy() -> GpuSnapshot {
        GpuSnapshot {
            backend: "nvml".into(),
            driver_version: Some("580.159.04".into()),
            kernel_module_version: Some("580.159.04".into()),
            cuda_driver_version: Some(13000),
            devices: vec![device(0), device(1)],
            device_nodes: vec!["/dev/nvidia0".into(), "/dev/nvidia1".into()],
        }
    }

    /// The one finding `s` gives, which must contain `needle`.
    fn fails_with(s: &GpuSnapshot, needle: &str) -> String {
        let o = evaluate(s, OWN);
        assert_eq!(o.findings.len(), 1, "{:?}", o.findings);
        let f = &o.findings[0];
        assert!(f.message.contains(needle), "{:?} lacks {needle:?}", f.message);
        assert!(f.remedy.as_deref().is_some_and(|r| !r.is_empty()));
        f.message.clone()
    }

    #[test]
    fn a_healthy_snapshot_passes_with_details_metrics_and_notes() {
        let o = evaluate(&healthy(), OWN);
        assert!(!o.failed(), "{:?}", o.findings);
        assert!(o.unavailable.is_none());
        assert_eq!(o.details.get("driver_version").and_then(|v| v.as_str()), Some("580.159.04"));
        assert_eq!(o.details.get("devices").and_then(|v| v.as_array()).map(Vec::len), Some(2));
        let devices = o.metrics.iter().find(|m| m.name == "gpu_devices").map(|m| m.value);
        assert_eq!(devices, Some(2.0));
        let clock = o
            .metrics
            .iter()
            .find(|m| m.name == "gpu_sm_clock_hertz" && m.labels.get("gpu").map(String::as_str) == Some("1"))
            .expect("clock metric");
        assert_eq!(clock.value, 345e6);
        assert_eq!(clock.labels.get("uuid").map(String::as_str), Some("GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"));
        for name in [
            "gpu_memory_used_bytes",
            "gpu_memory_total_bytes",
            "gpu_temperature_celsius",
            "gpu_power_watts",
            "gpu_pcie_link_gen",
            "gpu_pcie_link_width",
            "gpu_ecc_uncorrected_errors",
            "gpu_retired_pages",
            "gpu_remapped_rows_uncorrectable",
        ] {
            assert_eq!(o.metrics.iter().filter(|m| m.name == name).count(), 2, "{name}");
        }
        assert!(
            o.notes.iter().any(|n| n
                == "GPU 0 NVIDIA H100 80GB HBM3 (00000000:19:00.0): 45 C, 70 W / 700 W, PCIe gen5 x16 (max gen5 x16), 0 MiB used of 81559 MiB, ECC on, 0 uncorrected"),
            "{:#?}",
            o.notes
        );
        assert!(o.notes[0].contains("CUDA 13.0"), "{}", o.notes[0]);
    }

    #[test]
    fn no_device_fails() {
        let mut s = healthy();
        s.devices.clear();
        s.device_nodes.clear();
        fails_with(&s, "no GPU visible to NVML");
    }

    #[test]
    fn count_mismatch_fails() {
        let mut s = healthy();
        s.device_nodes.push("/dev/nvidia2".into());
        let m = fails_with(&s, "NVML sees 2 GPUs but /dev has 3 GPU device nodes");
        assert!(m.contains("/dev/nvidia2"), "{m}");
    }

    #[test]
    fn version_mismatch_fails() {
        let mut s = healthy();
        s.driver_version = Some("570.86.15".into());
        fails_with(&s, "driver/library version mismatch: userspace 570.86.15, kernel module 580.159.04");
        let o = evaluate(&s, OWN);
        assert!(o.findings[0].remedy.as_deref().is_some_and(|r| r.contains("flywheel driver collect")));
    }

    #[test]
    fn an_unknown_version_is_a_note() {
        let mut s = healthy();
        s.kernel_module_version = None;
        let o = evaluate(&s, OWN);
        assert!(!o.failed());
        assert!(o.notes.iter().any(|n| n.contains("driver version not compared")));
    }

    #[test]
    fn ecc_errors_fail() {
        let mut s = healthy();
        s.devices[1].ecc_uncorrected_volatile = Some(3);
        let m = fails_with(&s, "3 uncorrected ECC errors");
        assert!(m.starts_with("GPU 1 (GPU-00000001"), "{m}");
        let o = evaluate(&s, OWN);
        assert!(o.findings[0].remedy.as_deref().is_some_and(|r| r.contains("nvidia-smi -r")));
    }

    #[test]
    fn pending_retirement_fails() {
        let mut s = healthy();
        s.devices[0].retired_pages_pending = Some(true);
        fails_with(&s, "page retirement pending");
    }

    #[test]
    fn pending_remap_fails() {
        let mut s = healthy();
        s.devices[0].remapped_rows =
            Some(RemappedRows { correctable: 0, uncorrectable: 1, pending: true, failure: false });
        fails_with(&s, "row remapping pending");
    }

    #[test]
    fn remap_failure_fails() {
        let mut s = healthy();
        s.devices[0].remapped_rows =
            Some(RemappedRows { correctable: 0, uncorrectable: 9, pending: false, failure: true });
        fails_with(&s, "row remapping failed");
    }

    #[test]
    fn remapped_uncorrectable_rows_are_a_note() {
        let mut s = healthy();
        s.devices[0].remapped_rows =
            Some(RemappedRows { correctable: 2, uncorrectable: 1, pending: false, failure: false });
        let o = evaluate(&s, OWN);
        assert!(!o.failed(), "{:?}", o.findings);
        assert!(o.notes.iter().any(|n| n.contains("1 rows remapped")));
    }

    #[test]
    fn narrow_link_fails() {
        let mut s = healthy();
        s.devices[0].pcie_width = Some(8);
        fails_with(&s, "PCIe link x8, below its max x16");
    }

    #[test]
    fn lower_link_gen_is_a_note() {
        let mut s = healthy();
        s.devices[0].pcie_gen = Some(1);
        let o = evaluate(&s, OWN);
        assert!(!o.failed(), "{:?}", o.findings);
        assert!(o.notes.iter().any(|n| n.contains("PCIe gen1, below its max gen5")), "{:#?}", o.notes);
    }

    #[test]
    fn hardware_slowdown_fails_and_software_is_a_note() {
        let mut s = healthy();
        s.devices[0].throttle_reasons = vec!["hw_slowdown".into(), "sw_power_cap".into()];
        fails_with(&s, "hardware clock slowdown active: hw_slowdown");
        for hw in ["hw_thermal_slowdown", "hw_power_brake_slowdown"] {
            s.devices[0].throttle_reasons = vec![hw.into()];
            fails_with(&s, hw);
        }
        s.devices[0].throttle_reasons = vec!["sw_thermal_slowdown".into(), "sw_power_cap".into()];
        let o = evaluate(&s, OWN);
        assert!(!o.failed(), "{:?}", o.findings);
        assert!(o.notes.iter().any(|n| n.contains("clocks limited by sw_thermal_slowdown, sw_power_cap")));
    }

    #[test]
    fn hot_gpu_fails() {
        let mut s = healthy();
        s.devices[1].temperature_c = Some(87);
        fails_with(&s, "87 C, at or above its slowdown temperature 87 C");
    }

    #[test]
    fn foreign_process_fails_but_own_passes() {
        let mut s = healthy();
        s.devices[0].compute_processes = vec![GpuProcess { pid: OWN, used_memory_bytes: Some(500 << 20) }];
        assert!(!evaluate(&s, OWN).failed());
        s.devices[0].compute_processes.push(GpuProcess { pid: 1234, used_memory_bytes: Some(2 << 30) });
        s.devices[1].compute_processes.push(GpuProcess { pid: 99, used_memory_bytes: None });
        let m = fails_with(&s, "foreign compute processes at start");
        assert_eq!(m, "foreign compute processes at start: pid 1234 (2.0 GiB) on GPU 0, pid 99 on GPU 1");
    }

    #[test]
    fn unreadable_fields_do_not_fail() {
        let mut s = healthy();
        s.devices[0] = DeviceState { index: 0, ..DeviceState::default() };
        let o = evaluate(&s, OWN);
        assert!(!o.failed(), "{:?}", o.findings);
        assert!(
            o.notes
                .iter()
                .any(|n| n
                    .starts_with("GPU 0: ? C, ? W / ? W, PCIe gen? x? (max gen? x?), 0 MiB used of 0 MiB, ECC n/a")),
            "{:#?}",
            o.notes
        );
    }

    #[test]
    fn a_failed_probe_is_a_finding_and_a_missing_one_unavailable() {
        let o = probe_error(ProbeError::Unavailable { reason: "no".into(), remedy: "r".into() });
        assert!(o.unavailable.is_some() && !o.failed());
        let o = probe_error(ProbeError::Failed { reason: "bad".into(), remedy: "r".into() });
        assert!(o.unavailable.is_none() && o.failed());
    }

    #[test]
    fn run_without_a_driver_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = crate::context::Options::default();
        opts.gpu.nvml_lib = Some(dir.path().join("libnvidia-ml.so.1"));
        opts.gpu.proc_version = dir.path().join("version");
        let ctx = Ctx::new(opts);
        let o = run(&ctx);
        let u = o.unavailable.expect("unavailable");
        assert!(u.message.contains("libnvidia-ml.so.1 not found"), "{}", u.message);
        assert!(u.message.contains("driver not loaded"), "{}", u.message);
        assert!(ctx.gpu_baseline().is_none());
    }

    /// The real thing, on a machine with a GPU and its driver:
    /// `cargo test -p flywheel-canary gpu -- --ignored --nocapture` (FLYWHEEL_NVML_LIB names the
    /// library when the loader cannot find it).
    #[test]
    #[ignore = "needs an NVIDIA GPU and its driver"]
    fn on_a_real_gpu() {
        let mut opts = crate::context::Options::default();
        opts.gpu.nvml_lib = std::env::var_os("FLYWHEEL_NVML_LIB").map(std::path::PathBuf::from);
        let ctx = Ctx::new(opts);
        let t = std::time::Instant::now();
        let o = run(&ctx);
        let took = t.elapsed();
        println!("{}", serde_json::to_string_pretty(&o.details).unwrap_or_default());
        for n in &o.notes {
            println!("note: {n}");
        }
        for m in &o.metrics {
            println!("metric: {} {:?} = {}", m.name, m.labels, m.value);
        }
        for f in &o.findings {
            println!("FINDING: {} -- {}", f.message, f.remedy.as_deref().unwrap_or(""));
        }
        println!("took {took:?}");
        assert!(o.unavailable.is_none(), "{:?}", o.unavailable);
        assert!(ctx.gpu_baseline().is_some_and(|s| !s.devices.is_empty()));
    }

    fn arb_device(index: u32) -> impl Strategy<Value = DeviceState> {
        (0u32..87, 1u32..=5, 0u64..(80 << 30), any::<bool>(), 0u32..100).prop_map(
            move |(temp, gen, used, idle, unc)| {
                let mut d = device(index);
                d.temperature_c = Some(temp);
                d.pcie_gen = Some(gen);
                d.memory_used_bytes = used;
                d.throttle_reasons = if idle { vec!["gpu_idle".into()] } else { vec!["sw_power_cap".into()] };
                d.remapped_rows =
                    Some(RemappedRows { correctable: unc, uncorrectable: unc, pending: false, failure: false });
                d
            },
        )
    }

    fn arb_healthy() -> impl Strategy<Value = GpuSnapshot> {
        (1u32..8).prop_flat_map(|n| {
            (0..n).map(arb_device).collect::<Vec<_>>().prop_map(move |devices| GpuSnapshot {
                device_nodes: (0..n).map(|i| format!("/dev/nvidia{i}")).collect(),
                devices,
                ..healthy()
            })
        })
    }

    proptest! {
        #[test]
        fn healthy_snapshots_pass(s in arb_healthy(), own in any::<u32>(), gpu in any::<prop::sample::Index>()) {
            let mut s = s;
            let i = gpu.index(s.devices.len());
            s.devices[i].compute_processes.push(GpuProcess { pid: own, used_memory_bytes: Some(1 << 20) });
            let o = evaluate(&s, own);
            prop_assert!(!o.failed(), "{:?}", o.findings);
        }

        #[test]
        fn any_foreign_pid_fails(s in arb_healthy(), own in any::<u32>(), other in any::<u32>(), gpu in any::<prop::sample::Index>()) {
            prop_assume!(own != other);
            let mut s = s;
            let i = gpu.index(s.devices.len());
            s.devices[i].compute_processes.push(GpuProcess { pid: own, used_memory_bytes: None });
            s.devices[i].compute_processes.push(GpuProcess { pid: other, used_memory_bytes: None });
            let o = evaluate(&s, own);
            prop_assert_eq!(o.findings.len(), 1);
            let expected = format!("pid {other} on GPU {}", s.devices[i].index);
            prop_assert!(o.findings[0].message.contains(&expected), "{}", o.findings[0].message);
        }
    }
}
