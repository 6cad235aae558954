use std::collections::BTreeMap;
use std::path::PathBuf;

use super::driver_api::{self, CuError};
use super::*;

fn opts(lib: &str) -> CudaOptions {
    CudaOptions { lib: Some(PathBuf::from(lib)), ..CudaOptions::default() }
}

#[test]
fn a_missing_library_is_unavailable_not_a_panic() {
    let o = run_with(&opts("/nonexistent/libcuda.so.1"));
    let u = o.unavailable.expect("unavailable");
    assert!(u.message.contains("not found"), "{}", u.message);
    assert!(u.message.contains("/nonexistent/libcuda.so.1"), "{}", u.message);
    assert!(u.remedy.as_deref().is_some_and(|r| r.contains("CDI")), "{:?}", u.remedy);
    assert!(o.findings.is_empty());
}

#[test]
fn the_whole_step_through_ctx_without_a_driver() {
    let mut options = crate::context::Options::default();
    options.cuda.lib = Some(PathBuf::from("/nonexistent/libcuda.so.1"));
    let o = run(&Ctx::new(options));
    assert!(o.unavailable.is_some());
}

#[test]
fn a_library_that_is_not_cuda_names_the_missing_symbol() {
    for lib in ["libm.so.6", "libc.so.6"] {
        let o = run_with(&opts(lib));
        let u = o.unavailable.unwrap_or_else(|| panic!("{lib}: unavailable"));
        assert!(u.message.contains("has no cuInit"), "{lib}: {}", u.message);
        assert!(u.message.contains(lib), "{lib}: {}", u.message);
        assert!(u.remedy.as_deref().is_some_and(|r| r.contains("--cuda-lib")));
    }
}

/// The PTX as far as it can be checked without a driver: header, entry, parameters in the order
/// `launch_map_u32` passes them, every register within its declaration, labels defined.
#[test]
fn the_ptx_is_well_formed() {
    let ptx = KERNEL_PTX;
    assert!(!ptx.contains('\0'));
    let code: Vec<&str> =
        ptx.lines().map(|l| l.split("//").next().unwrap_or("").trim()).filter(|l| !l.is_empty()).collect();
    assert_eq!(code[0], ".version 7.0");
    assert_eq!(code[1], ".target sm_52");
    assert_eq!(code[2], ".address_size 64");
    assert_eq!(code[3], format!(".visible .entry {KERNEL_ENTRY}("));
    let params: Vec<&str> = code.iter().filter(|l| l.starts_with(".param")).copied().collect();
    assert_eq!(
        params,
        [
            ".param .u64 flywheel_canary_map_param_in,",
            ".param .u64 flywheel_canary_map_param_out,",
            ".param .u32 flywheel_canary_map_param_n"
        ]
    );
    for p in ["flywheel_canary_map_param_in", "flywheel_canary_map_param_out", "flywheel_canary_map_param_n"] {
        assert!(code.iter().any(|l| l.starts_with("ld.param") && l.contains(&format!("[{p}]"))), "{p} never loaded");
    }
    let joined = code.join("\n");
    for c in ['{', '}', '(', ')'] {
        assert_eq!(joined.matches(c).count(), 1, "{c}");
    }
    assert!(code.last().is_some_and(|l| *l == "}"));
    assert!(code.contains(&"ret;"));
    // Instructions end with ';' (declarations of the entry and labels aside).
    let body = &code[code.iter().position(|l| *l == "{").expect("body") + 1..code.len() - 1];
    for l in body {
        assert!(l.ends_with(';') || l.ends_with(':'), "{l:?}");
    }

    // Registers: `.reg .b32 %r<9>` declares %r0..%r8.
    let mut declared = BTreeMap::new();
    for l in body.iter().filter(|l| l.starts_with(".reg")) {
        let decl = l.split_whitespace().last().expect("register").trim_end_matches(';');
        let (name, count) = decl.trim_end_matches('>').split_once('<').expect("%x<n>");
        declared.insert(name.to_string(), count.parse::<u32>().expect("count"));
    }
    assert_eq!(declared.keys().collect::<Vec<_>>(), ["%p", "%r", "%rd"]);
    for l in body.iter().filter(|l| !l.starts_with(".reg")) {
        for word in l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '%' || c == '_' || c == '.')) {
            let Some(reg) = word.strip_prefix('%') else { continue };
            if ["ctaid.x", "ntid.x", "tid.x"].contains(&reg) {
                continue;
            }
            let split = reg.find(|c: char| c.is_ascii_digit()).unwrap_or_else(|| panic!("register {word} in {l:?}"));
            let (name, index) = (format!("%{}", &reg[..split]), reg[split..].parse::<u32>().expect("index"));
            let count = declared.get(&name).unwrap_or_else(|| panic!("{name} not declared ({l:?})"));
            assert!(index < *count, "{word} beyond {name}<{count}> in {l:?}");
        }
    }

    // Every branch goes to a label that exists.
    let labels: Vec<&str> = body.iter().filter_map(|l| l.strip_suffix(':')).collect();
    for l in body.iter().filter(|l| l.contains("bra")) {
        let target = l.split_whitespace().last().expect("target").trim_end_matches(';');
        assert!(labels.contains(&target), "{target} not defined");
    }
}

#[test]
fn ptx_targets_are_swapped_in_place() {
    for (target, version) in PTX_TARGETS {
        let ptx = ptx_for(target, version);
        let ptx: String = ptx.lines().filter(|l| !l.trim_start().starts_with("//")).map(|l| format!("{l}\n")).collect();
        assert_eq!(ptx.matches(".target ").count(), 1);
        assert_eq!(ptx.matches(".version ").count(), 1);
        assert!(ptx.contains(&format!("\n.target {target}\n")), "{ptx}");
        assert!(ptx.contains(&format!("\n.version {version}\n")), "{ptx}");
        assert!(ptx.contains(".address_size 64"));
        assert!(ptx.contains(KERNEL_ENTRY));
    }
    assert_eq!(ptx_for("sm_75", "7.5").lines().count(), KERNEL_PTX.lines().count());
    assert_eq!(ptx_for("sm_52", "7.0").trim_end(), KERNEL_PTX.trim_end());
}

#[test]
fn init_failures_say_what_to_do() {
    let mismatch = CuError::offline(
        "cuInit",
        driver_api::CUDA_ERROR_SYSTEM_DRIVER_MISMATCH,
        "system has unsupported display driver / cuda driver combination",
    );
    let (message, remedy) = init_failure(&mismatch);
    assert!(message.starts_with("driver/library version mismatch"), "{message}");
    assert!(message.contains("CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"), "{message}");
    assert!(remedy.contains("kernel module"), "{remedy}");

    let none = CuError::offline("cuInit", driver_api::CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected");
    let (message, remedy) = init_failure(&none);
    assert!(message.contains("CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"), "{message}");
    assert!(remedy.contains("/dev/nvidia"), "{remedy}");

    let (message, _) = init_failure(&CuError::offline("cuInit", driver_api::CUDA_ERROR_NOT_INITIALIZED, "x"));
    assert!(message.contains("did not initialize"), "{message}");
    let (message, remedy) = init_failure(&CuError::offline("cuInit", driver_api::CUDA_ERROR_STUB_LIBRARY, "x"));
    assert!(message.contains("stub"), "{message}");
    assert!(remedy.contains("stubs"), "{remedy}");

    assert!(remedy_for(driver_api::CUDA_ERROR_OUT_OF_MEMORY).contains("--copy-mib"));
    assert!(remedy_for(214).contains("ECC"));
    assert!(remedy_for(driver_api::CUDA_ERROR_JIT_COMPILER_NOT_FOUND).contains("libnvidia-ptxjitcompiler"));
    assert_eq!(remedy_for(12345), REMEDY_GENERIC);
}

#[test]
fn the_pattern_catches_one_changed_byte() {
    for len in [0usize, 1, 7, 8, 9, 4096, 4099] {
        let mut buf = vec![0u8; len];
        fill_pattern(&mut buf, 7);
        assert_eq!(check_pattern(&buf, 7), None, "len {len}");
        if len > 0 {
            buf[len / 2] ^= 0x10;
            let m = check_pattern(&buf, 7).expect("mismatch");
            assert!(m.starts_with(&format!("1 of {len} bytes differ, the first at offset {:#x}", len / 2)), "{m}");
        }
    }
    // Words differ from each other, so data copied to the wrong place shows.
    let mut buf = vec![0u8; 64];
    fill_pattern(&mut buf, 7);
    buf.copy_within(0..8, 8);
    assert!(check_pattern(&buf, 7).is_some());
    let zeros = vec![0u8; 64];
    assert!(check_pattern(&zeros, 7).is_some());
}

#[test]
fn numbers_read_well() {
    assert_eq!(driver_version_string(13000), "13.0");
    assert_eq!(driver_version_string(12080), "12.8");
    assert_eq!(driver_version_string(11040), "11.4");
    assert_eq!(bandwidth_line(54.8e9, 55.1e9, 1362.4e9), "H2D 54.8 GB/s, D2H 55.1 GB/s, D2D 1362 GB/s");
    assert_eq!(size_text(256 << 20), "256 MiB");
    assert_eq!(size_text(4096), "4 KiB");
    assert_eq!(size_text(100), "100 bytes");
}

#[test]
fn kernel_inputs_exercise_wrapping() {
    let wraps = (0..1024).filter(|i| kernel_input(*i) >= 1 << 31).count();
    assert!((256..=768).contains(&wraps), "{wraps}");
}

/// The real thing, on a machine with a GPU and its driver:
/// `cargo test -p flywheel-canary cuda -- --ignored --nocapture` (FLYWHEEL_CUDA_LIB names the
/// library when the loader cannot find it).
#[test]
#[ignore = "needs an NVIDIA GPU and its driver"]
fn on_a_real_gpu() {
    let options =
        CudaOptions { lib: std::env::var_os("FLYWHEEL_CUDA_LIB").map(PathBuf::from), ..CudaOptions::default() };
    let t = std::time::Instant::now();
    let o = run_with(&options);
    let took = t.elapsed();
    println!("{}", serde_json::to_string_pretty(&o.details).unwrap_or_default());
    for n in &o.notes {
        println!("note: {n}");
    }
    for m in &o.metrics {
        println!("metric: {} {:?} = {:.3e}", m.name, m.labels, m.value);
    }
    for f in &o.findings {
        println!("FINDING: {} -- {}", f.message, f.remedy.as_deref().unwrap_or(""));
    }
    println!("took {took:?}");
    assert!(o.unavailable.is_none(), "{:?}", o.unavailable);
    assert!(o.findings.is_empty(), "{:?}", o.findings);
    assert_eq!(o.metrics.len() % 3, 0);
}

/// Every PTX variant compiles on this driver, and a broken one comes back with the JIT's log
/// (which checks how the log options are passed).
#[test]
#[ignore = "needs an NVIDIA GPU and its driver"]
fn on_a_real_gpu_every_ptx_variant_loads_and_errors_carry_the_log() {
    let lib = std::env::var_os("FLYWHEEL_CUDA_LIB").map(PathBuf::from);
    let api = driver_api::Api::load(lib.as_deref()).expect("libcuda");
    api.init().expect("cuInit");
    let dev = api.device(0).expect("device 0");
    let ctx = dev.create_context().expect("context");
    for (target, version) in PTX_TARGETS {
        let (module, info) =
            ctx.load_ptx(&ptx_for(target, version)).unwrap_or_else(|(e, log)| panic!("{target}: {e}: {log}"));
        println!("{target} {version}: info log {info:?}");
        module.function(KERNEL_ENTRY).expect("entry");
        assert!(module.function("no_such_kernel").is_err());
    }
    let broken = KERNEL_PTX.replace("shl.b32", "shl.bogus32");
    let (e, log) = ctx.load_ptx(&broken).err().expect("broken PTX is refused");
    println!("broken: {e}; log: {log}");
    assert_eq!(e.code, driver_api::CUDA_ERROR_INVALID_PTX, "{e}");
    assert!(log.contains("bogus"), "{log}");
}
