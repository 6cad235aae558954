//! The cuda step: CUDA's driver API, opened at run time (no toolkit in the image), proves that a
//! job can use the GPU the way CUDA programs do.
//!
//! For every device the driver shows (a lane's job normally sees one; each takes about half a
//! second): a context; name, compute capability and memory; a host->device->device->host round
//! trip of a pattern, checked byte for byte; H2D, D2H and D2D bandwidth from pinned memory, timed
//! with CUDA events (one warm-up, then the best of `repeats`); and a small kernel written in PTX
//! that the driver's JIT compiles, with every output element checked on the host. Everything is
//! freed and the context destroyed on every path (the handles in [`driver_api`] free what they
//! hold when dropped), so device memory is back where it was for the cleanup step.

pub mod driver_api;

use std::time::Instant;

use serde_json::{Map, Value};

use crate::context::{Ctx, CudaOptions};
use crate::step::Outcome;

use driver_api::{Api, Context, CuError, Device, LoadError, Transfer};

/// The kernel: `out[i] = in[i] * 2 + 1` over u32, for `i < n`.
pub const KERNEL_PTX: &str = include_str!("kernel.ptx");
/// Its entry point.
pub const KERNEL_ENTRY: &str = "flywheel_canary_map";
/// The `.target` and `.version` tried, in order: the first the driver's JIT accepts is used.
/// sm_52 with PTX ISA 7.0 (CUDA 11.0) runs on every GPU a current driver supports; sm_75 with 7.5
/// is for JITs that no longer take targets older than Turing.
pub const PTX_TARGETS: [(&str, &str); 2] = [("sm_52", "7.0"), ("sm_75", "7.5")];
const KERNEL_ELEMENTS: u32 = 1 << 20;
const KERNEL_BLOCK: u32 = 256;

/// Bytes for the pageable round trip (at most; never more than the bandwidth size).
const ROUND_TRIP_BYTES: usize = 16 << 20;
/// H2D and D2H under this fail the step: PCIe gen1 x1 moves 0.25 GB/s, and anything a GPU lane
/// has moves tens.
const MIN_HOST_COPY_BYTES_PER_SECOND: f64 = 1e9;
/// Copies smaller than this are mostly latency, so the floor above is not applied to them.
const MIN_BYTES_FOR_FLOOR: usize = 16 << 20;

const REMEDY_NO_LIBRARY: &str = "Run the job in an image built with the driver layer of the host's driver version \
(`flywheel driver collect`, `flywheel image build --driver`; the host's version is in /proc/driver/nvidia/version), \
or have the container runtime mount the host's driver through CDI (`flywheel driver cdi` as /etc/cdi/nvidia.yaml, \
run with `--device nvidia.com/gpu=all`); or name the library with --cuda-lib.";
const REMEDY_WRONG_LIBRARY: &str = "Point --cuda-lib at the NVIDIA driver's libcuda.so.1 (not the CUDA toolkit's \
stub, not another library), from the same driver version as the host's kernel module.";
const REMEDY_CORRUPTION: &str = "The GPU returned different data than it was given: look for uncorrectable ECC \
errors and retired or pending pages (`nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER`) and for Xid errors in \
the host's kernel log (`dmesg | grep -i xid`; 48, 63, 64, 94 and 95 are memory errors, 79 a GPU that fell off the \
bus); drain the node and have the GPU reset or replaced.";
const REMEDY_GENERIC: &str = "Check `nvidia-smi` and the host's kernel log (`dmesg | grep -i -e nvrm -e xid`); \
if the error persists, drain the node and reset the GPU.";

/// Runs the step with the run's options.
pub fn run(ctx: &Ctx) -> Outcome {
    run_with(&ctx.opts.cuda)
}

/// Runs the step with `opts`.
pub fn run_with(opts: &CudaOptions) -> Outcome {
    let mut loaded = Api::load(opts.lib.as_deref());
    let mut library = opts.lib.as_ref().map_or_else(|| "libcuda.so.1".to_string(), |p| p.display().to_string());
    // Not found by SONAME: a binary built by Nix does not search the host's folders (crate::libs).
    if let (Err(LoadError::Open { .. }), None) = (&loaded, &opts.lib) {
        if let Some(found) = crate::libs::locate("libcuda.so.1") {
            library = found.display().to_string();
            loaded = Api::load(Some(&found));
        }
    }
    let api = match loaded {
        Ok(api) => api,
        Err(LoadError::Open { name, error }) => {
            let remedy = crate::libs::missing_dependency(&name, &error)
                .map_or_else(|| REMEDY_NO_LIBRARY.to_string(), |dep| crate::libs::missing_dependency_remedy(&dep));
            return Outcome::unavailable(crate::libs::open_failure(&name, &error), remedy);
        }
        Err(e @ LoadError::Symbol { .. }) => return Outcome::unavailable(e.to_string(), REMEDY_WRONG_LIBRARY),
    };
    let mut o = Outcome::new();
    o.detail("library", &library);

    if let Err(e) = api.init() {
        let (message, remedy) = init_failure(&e);
        o.fail(message, remedy);
        return o;
    }
    match api.driver_version() {
        Ok(v) => {
            o.detail("driver_cuda_version", driver_version_string(v));
            o.detail("driver_cuda_version_raw", v);
        }
        Err(e) => o.fail(format!("CUDA driver version: {e}"), remedy_for(e.code)),
    }
    let count = match api.device_count() {
        Ok(n) => n,
        Err(e) => {
            o.fail(format!("counting CUDA devices: {e}"), remedy_for(e.code));
            return o;
        }
    };
    o.detail("device_count", count);
    if count <= 0 {
        o.fail("the CUDA driver sees no device", remedy_for(driver_api::CUDA_ERROR_NO_DEVICE));
        return o;
    }

    let mut devices = Vec::new();
    for ordinal in 0..count {
        let mut d = Map::new();
        d.insert("index".into(), ordinal.into());
        match api.device(ordinal) {
            Ok(dev) => check_device(&dev, opts, &mut d, &mut o),
            Err(e) => o.fail(format!("GPU {ordinal}: {e}"), remedy_for(e.code)),
        }
        devices.push(Value::Object(d));
    }
    o.detail("devices", devices);
    o
}

/// `13000` -> `"13.0"`, `12080` -> `"12.8"`.
pub fn driver_version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// What a failed cuInit means, and what to do: the library loaded, so these are failures the
/// step found, said the way a person needs them.
pub fn init_failure(e: &CuError) -> (String, String) {
    let what = match e.code {
        driver_api::CUDA_ERROR_NO_DEVICE => "no CUDA device is visible to this job",
        driver_api::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => "driver/library version mismatch",
        driver_api::CUDA_ERROR_NOT_INITIALIZED | driver_api::CUDA_ERROR_SYSTEM_NOT_READY => {
            "the NVIDIA driver did not initialize"
        }
        driver_api::CUDA_ERROR_STUB_LIBRARY => "libcuda.so.1 is the CUDA toolkit's stub, not the driver",
        driver_api::CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => {
            "the image's CUDA forward-compatibility package does not support this GPU"
        }
        _ => "CUDA's driver failed to initialize",
    };
    (format!("{what} ({e})"), remedy_for(e.code).to_string())
}

/// What a person can do about a CUDA error.
pub fn remedy_for(code: driver_api::CuResult) -> &'static str {
    use driver_api::*;
    match code {
        CUDA_ERROR_NO_DEVICE => "Check that the job asked for a GPU (the runner's device request or CDI device, e.g. \
`--device nvidia.com/gpu=all`), that /dev/nvidia0, /dev/nvidiactl and /dev/nvidia-uvm exist in the container, and that \
CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES do not hide it; on the host, `nvidia-smi -L` should list the GPU.",
        CUDA_ERROR_SYSTEM_DRIVER_MISMATCH => "The image's driver libraries are not the version of the host's kernel \
module: match the userspace to the kernel module (/proc/driver/nvidia/version), i.e. rebuild the image with the driver \
layer of that version (`flywheel driver collect`, checked by `flywheel driver check`), or mount the host's driver \
through CDI instead of baking it in.",
        CUDA_ERROR_NOT_INITIALIZED | CUDA_ERROR_SYSTEM_NOT_READY => "Check `nvidia-smi` and the host's kernel log \
(`dmesg | grep -i -e nvrm -e xid`); on NVSwitch systems (HGX) nvidia-fabricmanager must be running and match the \
driver's version; /dev/nvidia-uvm must exist (`nvidia-modprobe -u -c0`).",
        CUDA_ERROR_STUB_LIBRARY => "A CUDA toolkit's stubs directory (…/lib64/stubs) is on the library path ahead of \
the driver: remove it from LD_LIBRARY_PATH and the loader's configuration, or name the driver's library with --cuda-lib.",
        CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE => "Remove the cuda-compat libraries from the image (or from \
LD_LIBRARY_PATH): forward compatibility works only on data-center GPUs; use the host driver's own libcuda.",
        CUDA_ERROR_DEVICE_UNAVAILABLE | 216 => "Another process holds the GPU and its compute mode is exclusive \
(`nvidia-smi -q -d COMPUTE`): find it with `nvidia-smi --query-compute-apps=pid,process_name --format=csv` and make \
sure each job gets its GPU to itself.",
        CUDA_ERROR_OUT_OF_MEMORY => "Too little free GPU memory: another process holds it (`nvidia-smi \
--query-compute-apps=pid,used_memory --format=csv`): make sure earlier jobs' processes are gone and each job gets its \
GPU to itself; or copy less with --copy-mib.",
        CUDA_ERROR_JIT_COMPILER_NOT_FOUND => "The driver's PTX JIT compiler (libnvidia-ptxjitcompiler.so.1) is \
missing: collect the driver layer with the compute capability (`flywheel driver collect --capabilities \
utility,compute`), or mount it through CDI.",
        CUDA_ERROR_JIT_COMPILATION_DISABLED => "PTX JIT compilation is disabled: unset CUDA_DISABLE_PTX_JIT in the \
job's environment.",
        CUDA_ERROR_INVALID_PTX | CUDA_ERROR_UNSUPPORTED_PTX_VERSION => "The driver's JIT rejected the canary's PTX: \
libnvidia-ptxjitcompiler and libcuda must come from the same driver, one recent enough for PTX ISA 7.0 (R450 or \
later); see the JIT log in the message.",
        214 | 220 | 700 | 714 | 715 | 716 | 717 | 718 | 719 | 226 => REMEDY_CORRUPTION,
        805..=810 => "The CUDA MPS server failed: check nvidia-cuda-mps-control on the host, and \
CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY in the job, or run without MPS.",
        _ => REMEDY_GENERIC,
    }
}

/// Checks one device, recording what it saw in `d` (the device's details) and `o`.
fn check_device(dev: &Device<'_>, opts: &CudaOptions, d: &mut Map<String, Value>, o: &mut Outcome) {
    let gpu = dev.ordinal.to_string();
    let fail = |o: &mut Outcome, what: &str, e: &CuError| o.fail(format!("GPU {gpu}: {what}: {e}"), remedy_for(e.code));

    // Identity first: none of it needs a context.
    let name = dev.name().unwrap_or_else(|e| {
        fail(o, "device name", &e);
        String::new()
    });
    d.insert("name".into(), name.clone().into());
    let cc = match (
        dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    ) {
        (Ok(major), Ok(minor)) => format!("{major}.{minor}"),
        (Err(e), _) | (_, Err(e)) => {
            fail(o, "compute capability", &e);
            String::new()
        }
    };
    d.insert("compute_capability".into(), cc.clone().into());
    if let Ok(total) = dev.total_memory().map_err(|e| fail(o, "total memory", &e)) {
        d.insert("total_memory_bytes".into(), total.into());
    }
    if let (Ok(domain), Ok(bus), Ok(device)) = (
        dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID),
    ) {
        d.insert("pci_bus_id".into(), format!("{domain:08x}:{bus:02x}:{device:02x}.0").into());
    }
    if let Ok(sms) = dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) {
        d.insert("multiprocessors".into(), sms.into());
    }
    if let Ok(ecc) = dev.attribute(driver_api::CU_DEVICE_ATTRIBUTE_ECC_ENABLED) {
        d.insert("ecc_enabled".into(), (ecc != 0).into());
    }

    let t = Instant::now();
    let ctx = match dev.create_context() {
        Ok(c) => c,
        Err(e) => return fail(o, "creating a context", &e),
    };
    d.insert("context_ms".into(), ms(t.elapsed().as_secs_f64() * 1e3).into());
    let free_before = ctx.memory_info().ok().map(|(free, _)| free);
    if let Some(free) = free_before {
        d.insert("free_memory_bytes_at_start".into(), free.into());
    }
    o.note(format!(
        "GPU {gpu}: {name} (compute capability {cc}, {:.1} GiB)",
        d.get("total_memory_bytes").and_then(Value::as_f64).unwrap_or(0.0) / (1u64 << 30) as f64
    ));

    // Each phase stops the device's checks at its first CUDA error (later ones would mostly echo
    // it); what it finds wrong with the results it records and goes on.
    let phases: [(&str, PhaseFn); 3] = [("round trip", round_trip), ("bandwidth", bandwidth), ("kernel", kernel)];
    for (what, phase) in phases {
        if let Err(e) = phase(&ctx, &gpu, opts, d, o) {
            fail(o, what, &e);
            break;
        }
    }

    // Everything the phases allocated is freed by now; what the context itself holds goes with it.
    if let (Some(before), Ok((after, _))) = (free_before, ctx.memory_info()) {
        d.insert("free_memory_bytes_at_end".into(), after.into());
        if after + (64 << 20) < before {
            o.note(format!(
                "GPU {gpu}: {} MiB less free device memory after the checks than before them, in the same context",
                (before - after) >> 20
            ));
        }
    }
    drop(ctx);
}

type PhaseFn = fn(&Context<'_>, &str, &CudaOptions, &mut Map<String, Value>, &mut Outcome) -> Result<(), CuError>;

/// Pageable host -> device -> device -> host with the synchronous copies, checked byte for byte.
fn round_trip(
    ctx: &Context<'_>,
    gpu: &str,
    opts: &CudaOptions,
    d: &mut Map<String, Value>,
    o: &mut Outcome,
) -> Result<(), CuError> {
    let bytes = opts.copy_bytes.clamp(4096, ROUND_TRIP_BYTES);
    let mut host = vec![0u8; bytes];
    fill_pattern(&mut host, 0x5eed_0001);
    let a = ctx.alloc(bytes)?;
    let b = ctx.alloc(bytes)?;
    ctx.copy_to_device(&a, &host)?;
    ctx.copy_device(&b, &a, bytes)?;
    host.fill(0);
    ctx.copy_to_host(&mut host, &b)?;
    d.insert("round_trip_bytes".into(), bytes.into());
    if let Some(m) = check_pattern(&host, 0x5eed_0001) {
        o.fail(
            format!("GPU {gpu}: host->device->device->host copy of {bytes} bytes came back changed: {m}"),
            REMEDY_CORRUPTION,
        );
    }
    Ok(())
}

/// H2D, D2H and D2D from pinned memory: one warm-up, then the best of `repeats`, each timed with
/// events. The data is checked once more at the end (it went H2D, D2D, D2H).
fn bandwidth(
    ctx: &Context<'_>,
    gpu: &str,
    opts: &CudaOptions,
    d: &mut Map<String, Value>,
    o: &mut Outcome,
) -> Result<(), CuError> {
    let bytes = opts.copy_bytes.max(4096);
    let repeats = opts.repeats.max(1);
    let mut host = ctx.alloc_pinned(bytes)?;
    fill_pattern(host.as_mut_slice(), 0x5eed_0002);
    let a = ctx.alloc(bytes)?;
    let b = ctx.alloc(bytes)?;
    let stream = ctx.stream()?;
    let (start, end) = (ctx.event()?, ctx.event()?);

    let h2d = best_rate(bytes, repeats, || {
        stream.timed_copy(Transfer::HostToDevice { dst: &a, src: &host }, bytes, &start, &end)
    })?;
    let d2d = best_rate(bytes, repeats, || {
        stream.timed_copy(Transfer::DeviceToDevice { dst: &b, src: &a }, bytes, &start, &end)
    })?;
    host.as_mut_slice().fill(0);
    let d2h = best_rate(bytes, repeats, || {
        stream.timed_copy(Transfer::DeviceToHost { dst: &mut host, src: &b }, bytes, &start, &end)
    })?;

    for (metric, value) in
        [("cuda_h2d_bytes_per_second", h2d), ("cuda_d2h_bytes_per_second", d2h), ("cuda_d2d_bytes_per_second", d2d)]
    {
        o.metric_with(metric, value, &[("gpu", gpu)]);
    }
    d.insert("copy_bytes".into(), bytes.into());
    d.insert("copy_repeats".into(), repeats.into());
    d.insert("h2d_gb_per_s".into(), round2(h2d / 1e9).into());
    d.insert("d2h_gb_per_s".into(), round2(d2h / 1e9).into());
    d.insert("d2d_gb_per_s".into(), round2(d2d / 1e9).into());
    o.note(format!("GPU {gpu}: {} ({} pinned, best of {repeats})", bandwidth_line(h2d, d2h, d2d), size_text(bytes)));

    if let Some(m) = check_pattern(host.as_slice(), 0x5eed_0002) {
        o.fail(
            format!("GPU {gpu}: pinned copies of {bytes} bytes (H2D, D2D, D2H) came back changed: {m}"),
            REMEDY_CORRUPTION,
        );
    }
    if bytes >= MIN_BYTES_FOR_FLOOR {
        for (dir, value) in [("host-to-device", h2d), ("device-to-host", d2h)] {
            if value < MIN_HOST_COPY_BYTES_PER_SECOND {
                o.fail(
                    format!("GPU {gpu}: {dir} bandwidth {:.2} GB/s is under the 1 GB/s floor", value / 1e9),
                    "The GPU's PCIe link is degraded or saturated: check the link's generation and width \
(`nvidia-smi -q -d PCIE`, `lspci -vv` LnkSta against LnkCap), replay/AER errors in the kernel log, and whether \
another job is copying over the same link; reseat or replace the card if the link trained down.",
                );
            }
        }
    } else {
        o.note(format!(
            "GPU {gpu}: copies under {} are mostly latency: the 1 GB/s floor is not applied",
            size_text(MIN_BYTES_FOR_FLOOR)
        ));
    }
    Ok(())
}

/// Runs `copy` once to warm up, then `repeats` times, and returns the best rate in bytes per
/// second (0 when the events could not tell the time apart).
fn best_rate(bytes: usize, repeats: u32, mut copy: impl FnMut() -> Result<f32, CuError>) -> Result<f64, CuError> {
    copy()?;
    let mut best_ms = f64::INFINITY;
    for _ in 0..repeats {
        best_ms = best_ms.min(f64::from(copy()?));
    }
    Ok(if best_ms > 0.0 && best_ms.is_finite() { bytes as f64 / (best_ms / 1e3) } else { 0.0 })
}

/// The PTX kernel: JIT-compile, run over 2^20 elements, check every output on the host.
fn kernel(
    ctx: &Context<'_>,
    gpu: &str,
    _opts: &CudaOptions,
    d: &mut Map<String, Value>,
    o: &mut Outcome,
) -> Result<(), CuError> {
    let t = Instant::now();
    let mut rejected = Vec::new();
    let mut last_code = driver_api::CUDA_ERROR_INVALID_PTX;
    let mut loaded = None;
    for (i, (target, version)) in PTX_TARGETS.iter().enumerate() {
        let ptx = ptx_for(target, version);
        match ctx.load_ptx(&ptx) {
            Ok((module, _info)) => {
                loaded = Some((module, *target));
                break;
            }
            Err((e, log)) => {
                let retry = i + 1 < PTX_TARGETS.len()
                    && matches!(
                        e.code,
                        driver_api::CUDA_ERROR_INVALID_PTX | driver_api::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                    );
                // One line: the log is ptxas' output, a line per problem.
                let log = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ");
                let log = if log.is_empty() { String::new() } else { format!("; JIT log: {log}") };
                rejected.push(format!(".target {target} .version {version}: {e}{log}"));
                last_code = e.code;
                if !retry {
                    break;
                }
            }
        }
    }
    let jit_ms = t.elapsed().as_secs_f64() * 1e3;
    if !rejected.is_empty() {
        d.insert("ptx_rejected".into(), rejected.clone().into());
    }
    let Some((module, target)) = loaded else {
        // Recorded here rather than returned: the JIT's log says more than the code.
        o.fail(
            format!("GPU {gpu}: the driver could not JIT-compile the canary's PTX: {}", rejected.join(" | ")),
            remedy_for(last_code),
        );
        return Ok(());
    };
    d.insert("ptx_target".into(), target.into());
    d.insert("jit_ms".into(), ms(jit_ms).into());
    let function = module.function(KERNEL_ENTRY)?;

    let n = KERNEL_ELEMENTS;
    let input: Vec<u32> = (0..n).map(kernel_input).collect();
    let input_bytes: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes = input_bytes.len();
    let dev_in = ctx.alloc(bytes)?;
    let dev_out = ctx.alloc(bytes)?;
    ctx.copy_to_device(&dev_in, &input_bytes)?;
    // Zeros are never a right answer (every output is odd), so stale memory cannot pass.
    ctx.copy_to_device(&dev_out, &vec![0u8; bytes])?;
    let stream = ctx.stream()?;
    let (start, end) = (ctx.event()?, ctx.event()?);
    let kernel_ms = function.launch_map_u32(&stream, &dev_in, &dev_out, n, KERNEL_BLOCK, (&start, &end))?;
    let mut out = vec![0u8; bytes];
    ctx.copy_to_host(&mut out, &dev_out)?;
    d.insert("kernel_elements".into(), n.into());
    d.insert("kernel_ms".into(), ms(f64::from(kernel_ms)).into());

    let mut wrong = 0usize;
    let mut first = None;
    for (i, (x, got)) in input.iter().zip(out.chunks_exact(4)).enumerate() {
        let got = u32::from_le_bytes([got[0], got[1], got[2], got[3]]);
        let want = x.wrapping_mul(2).wrapping_add(1);
        if got != want {
            wrong += 1;
            first.get_or_insert((i, want, got));
        }
    }
    match first {
        None => o.note(format!(
            "GPU {gpu}: PTX kernel ({target}) over {n} elements right (JIT {:.1} ms, kernel {:.3} ms)",
            jit_ms, kernel_ms
        )),
        Some((i, want, got)) => o.fail(
            format!("GPU {gpu}: the PTX kernel got {wrong} of {n} elements wrong (first at {i}: want {want:#010x}, got {got:#010x})"),
            REMEDY_CORRUPTION,
        ),
    }
    Ok(())
}

/// The kernel's PTX with `.target` and `.version` replaced.
pub fn ptx_for(target: &str, version: &str) -> String {
    KERNEL_PTX
        .lines()
        .map(|l| match l.trim() {
            t if t.starts_with(".version ") => format!(".version {version}"),
            t if t.starts_with(".target ") => format!(".target {target}"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the kernel is given at `i`: spread over all 32 bits, so the doubling wraps for half.
fn kernel_input(i: u32) -> u32 {
    i.wrapping_mul(0x9e37_79b9) ^ 0xa5a5_a5a5
}

fn pattern_word(i: u64, seed: u64) -> u64 {
    (i ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 3)
}

/// Fills `buf` with a pattern that differs in every 8-byte word (so a copy to the wrong place
/// shows too).
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let w = pattern_word(i as u64, seed).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// `None` when `buf` holds [`fill_pattern`]'s pattern, else how many bytes differ and where the
/// first one is.
pub fn check_pattern(buf: &[u8], seed: u64) -> Option<String> {
    let mut wrong = 0usize;
    let mut first = None;
    for (i, chunk) in buf.chunks(8).enumerate() {
        let w = pattern_word(i as u64, seed).to_le_bytes();
        if chunk != &w[..chunk.len()] {
            for (j, (got, want)) in chunk.iter().zip(w).enumerate() {
                if *got != want {
                    wrong += 1;
                    first.get_or_insert((i * 8 + j, want, *got));
                }
            }
        }
    }
    first.map(|(at, want, got)| {
        format!("{wrong} of {} bytes differ, the first at offset {at:#x} (want {want:#04x}, got {got:#04x})", buf.len())
    })
}

/// "H2D 54.8 GB/s, D2H 55.1 GB/s, D2D 1362 GB/s"
pub fn bandwidth_line(h2d: f64, d2h: f64, d2d: f64) -> String {
    format!("H2D {} GB/s, D2H {} GB/s, D2D {} GB/s", gbps(h2d), gbps(d2h), gbps(d2d))
}

fn gbps(bytes_per_second: f64) -> String {
    let g = bytes_per_second / 1e9;
    if g >= 100.0 {
        format!("{g:.0}")
    } else {
        format!("{g:.1}")
    }
}

fn size_text(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests;
