//! The vendor-neutral GPU path: the Vulkan loader, an instance, and the physical devices its ICDs
//! expose, with their vendor, type, API and driver versions and memory.
//!
//! The loader is opened at run time, so the canary builds and runs where there is none; then the
//! step is unavailable (skipped unless required). A loader without any device is a failure: the
//! ICD (the GPU driver's Vulkan half) is missing or broken.

// The Vulkan loader is a C library opened at run time through ash: every call into it is
// `unsafe`. The calls below pass only structures that ash builds and that outlive the call, and
// the instance is destroyed (by `InstanceGuard`) before the loader is unloaded.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::path::Path;

use ash::vk;
use serde::Serialize;

use crate::context::Ctx;
use crate::step::Outcome;

const LOADER: &str = "libvulkan.so.1";
const LOADER_REMEDY: &str = "install the Vulkan loader (libvulkan1 on Debian and Ubuntu) in the runner image";
const ICD_REMEDY: &str = "the ICD for the GPU is missing: check the manifests in /usr/share/vulkan/icd.d and \
                          /etc/vulkan/icd.d (for NVIDIA, nvidia_icd.json from the driver or the container toolkit), \
                          and VK_ICD_FILENAMES / VK_DRIVER_FILES if set";

/// Where the loader looks for ICD manifests (besides VK_ICD_FILENAMES / VK_DRIVER_FILES).
const ICD_DIRS: [&str; 3] = ["/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"];

/// One physical device, as the step reports it.
#[derive(Clone, Debug, Serialize)]
struct Device {
    index: usize,
    name: String,
    #[serde(rename = "type")]
    device_type: &'static str,
    vendor_id: String,
    vendor: String,
    device_id: String,
    api_version: String,
    driver_version: String,
    driver_version_raw: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_info: Option<String>,
    memory_heaps: Vec<Heap>,
    memory_bytes: u64,
    device_local_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
struct Heap {
    size_bytes: u64,
    device_local: bool,
}

pub fn run(ctx: &Ctx) -> Outcome {
    let loader = ctx.opts.vulkan.loader.as_deref();
    let loader_name = loader.map(|p| p.display().to_string()).unwrap_or_else(|| LOADER.to_string());

    // SAFETY: loading the loader runs its initialisers; it is a plain C library with no
    // requirements on the caller.
    let loaded = unsafe {
        match loader {
            Some(path) => ash::Entry::load_from(path),
            None => ash::Entry::load(),
        }
    };
    let entry = match loaded {
        Ok(entry) => entry,
        Err(ash::LoadingError::LibraryLoadFailure(e)) => {
            return Outcome::unavailable(format!("{loader_name} not found ({e})"), LOADER_REMEDY);
        }
        Err(e) => {
            return Outcome::unavailable(
                format!("{loader_name} could not be loaded ({e}): is it a Vulkan loader?"),
                LOADER_REMEDY,
            );
        }
    };

    let mut o = Outcome::new();
    o.detail("loader", &loader_name);
    for var in ["VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES", "VK_LOADER_DRIVERS_SELECT"] {
        if let Some(v) = std::env::var_os(var) {
            o.detail(var, v.to_string_lossy());
        }
    }
    o.detail("icd_manifests", icd_manifests());

    // SAFETY: a query with no arguments; ash returns None for a 1.0 loader without the entry point.
    let loader_version = match unsafe { entry.try_enumerate_instance_version() } {
        Ok(v) => v.unwrap_or(vk::API_VERSION_1_0),
        Err(e) => {
            o.fail(format!("vkEnumerateInstanceVersion failed: {e}"), LOADER_REMEDY);
            return o;
        }
    };
    o.detail("loader_api_version", version_string(loader_version));
    // 1.1, or 1.0 where the loader is that old (asking a 1.0 loader for 1.1 fails).
    let api = if loader_version >= vk::API_VERSION_1_1 { vk::API_VERSION_1_1 } else { vk::API_VERSION_1_0 };

    let app_name = c"flywheel-canary";
    let app = vk::ApplicationInfo::default()
        .application_name(app_name)
        .application_version(0)
        .engine_name(app_name)
        .engine_version(0)
        .api_version(api);
    let create = vk::InstanceCreateInfo::default().application_info(&app);
    // SAFETY: `create` and what it points to live until the call returns.
    let instance = match unsafe { entry.create_instance(&create, None) } {
        Ok(instance) => InstanceGuard(instance),
        Err(vk::Result::ERROR_INCOMPATIBLE_DRIVER) => {
            o.fail(
                "vkCreateInstance: no Vulkan driver (VK_ERROR_INCOMPATIBLE_DRIVER): the loader found no usable ICD",
                ICD_REMEDY,
            );
            diagnose_icds(&mut o);
            return o;
        }
        Err(e) => {
            o.fail(format!("vkCreateInstance failed: {e}"), ICD_REMEDY);
            return o;
        }
    };

    // SAFETY: the instance is live (the guard destroys it when this function returns).
    let handles = match unsafe { instance.0.enumerate_physical_devices() } {
        Ok(handles) => handles,
        Err(e) => {
            o.fail(format!("vkEnumeratePhysicalDevices failed: {e}"), ICD_REMEDY);
            return o;
        }
    };

    let devices: Vec<Device> =
        handles.iter().enumerate().map(|(index, pd)| describe(&instance.0, api, index, *pd)).collect();

    o.metric("vulkan_devices", devices.len() as f64);
    for d in &devices {
        o.note(note(d));
        let index = d.index.to_string();
        o.metric_with(
            "vulkan_device_info",
            1.0,
            &[
                ("index", &index),
                ("name", &d.name),
                ("vendor", &d.vendor),
                ("driver_version", &d.driver_version),
                ("type", d.device_type),
                ("api_version", &d.api_version),
            ],
        );
        o.metric_with("vulkan_device_memory_bytes", d.memory_bytes as f64, &[("index", &index)]);
    }
    if devices.is_empty() {
        o.fail("the Vulkan loader found no physical device", ICD_REMEDY);
    }
    // A CPU device (lavapipe) must not hide a missing NVIDIA ICD: every GPU NVML saw should be
    // a Vulkan device too.
    if let Some(gpus) = ctx.gpu_baseline().map(|s| s.devices.len()).filter(|n| *n > 0) {
        let nvidia = devices.iter().filter(|d| d.vendor_id == "0x10de").count();
        if nvidia < gpus {
            o.fail(format!("NVML sees {gpus} NVIDIA GPU(s), Vulkan {nvidia}"), NVIDIA_ICD_REMEDY);
            diagnose_icds(&mut o);
        }
    }
    o.detail("devices", &devices);
    drop(instance);
    o
}

/// Destroys the instance however `run` leaves (returns or a panic), before the entry (and the
/// loader) goes: declared after it, so dropped before it.
struct InstanceGuard(ash::Instance);

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        // SAFETY: the instance was created by us, has no child objects, and is destroyed once.
        unsafe { self.0.destroy_instance(None) }
    }
}

fn describe(instance: &ash::Instance, instance_api: u32, index: usize, pd: vk::PhysicalDevice) -> Device {
    // SAFETY: `pd` came from this live instance.
    let props = unsafe { instance.get_physical_device_properties(pd) };
    // SAFETY: as above.
    let mem = unsafe { instance.get_physical_device_memory_properties(pd) };

    // VkPhysicalDeviceDriverProperties is core in 1.2; vkGetPhysicalDeviceProperties2 needs a 1.1
    // instance.
    let (mut driver_id, mut driver_name, mut driver_info) = (None, None, None);
    if instance_api >= vk::API_VERSION_1_1 && props.api_version >= vk::API_VERSION_1_2 {
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut driver);
        // SAFETY: the chain points at `driver`, which outlives the call.
        unsafe { instance.get_physical_device_properties2(pd, &mut props2) };
        driver_id = Some(driver_id_name(driver.driver_id));
        driver_name = driver.driver_name_as_c_str().ok().map(lossy);
        driver_info = driver.driver_info_as_c_str().ok().map(lossy);
    }

    let heap_count = (mem.memory_heap_count as usize).min(mem.memory_heaps.len());
    let memory_heaps: Vec<Heap> = mem.memory_heaps[..heap_count]
        .iter()
        .map(|h| Heap { size_bytes: h.size, device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL) })
        .collect();
    let memory_bytes = memory_heaps.iter().map(|h| h.size_bytes).sum();
    let device_local_bytes = memory_heaps.iter().filter(|h| h.device_local).map(|h| h.size_bytes).sum();

    Device {
        index,
        name: props.device_name_as_c_str().map(lossy).unwrap_or_else(|_| "(unnamed)".into()),
        device_type: device_type(props.device_type),
        vendor_id: format!("{:#06x}", props.vendor_id),
        vendor: vendor_name(props.vendor_id),
        device_id: format!("{:#06x}", props.device_id),
        api_version: version_string(props.api_version),
        driver_version: driver_version(props.vendor_id, props.driver_version),
        driver_version_raw: props.driver_version,
        driver_id,
        driver_name,
        driver_info,
        memory_heaps,
        memory_bytes,
        device_local_bytes,
    }
}

/// VkDriverId's name (ash's Debug is behind a feature the workspace leaves off).
const NVIDIA_ICD_REMEDY: &str = "the NVIDIA Vulkan ICD is missing or broken: collect the driver with the graphics capability (flywheel driver collect --capabilities utility,compute,graphics), which installs usr/share/vulkan/icd.d/nvidia_icd.json and libGLX_nvidia, and check that the libraries it links are in the image (ldd libGLX_nvidia.so.0)";

fn driver_id_name(id: vk::DriverId) -> String {
    let name = match id {
        vk::DriverId::AMD_PROPRIETARY => "AMD_PROPRIETARY",
        vk::DriverId::AMD_OPEN_SOURCE => "AMD_OPEN_SOURCE",
        vk::DriverId::MESA_RADV => "MESA_RADV",
        vk::DriverId::NVIDIA_PROPRIETARY => "NVIDIA_PROPRIETARY",
        vk::DriverId::INTEL_PROPRIETARY_WINDOWS => "INTEL_PROPRIETARY_WINDOWS",
        vk::DriverId::INTEL_OPEN_SOURCE_MESA => "INTEL_OPEN_SOURCE_MESA",
        vk::DriverId::IMAGINATION_PROPRIETARY => "IMAGINATION_PROPRIETARY",
        vk::DriverId::QUALCOMM_PROPRIETARY => "QUALCOMM_PROPRIETARY",
        vk::DriverId::ARM_PROPRIETARY => "ARM_PROPRIETARY",
        vk::DriverId::GOOGLE_SWIFTSHADER => "GOOGLE_SWIFTSHADER",
        vk::DriverId::GGP_PROPRIETARY => "GGP_PROPRIETARY",
        vk::DriverId::BROADCOM_PROPRIETARY => "BROADCOM_PROPRIETARY",
        vk::DriverId::MESA_LLVMPIPE => "MESA_LLVMPIPE",
        vk::DriverId::MOLTENVK => "MOLTENVK",
        vk::DriverId::COREAVI_PROPRIETARY => "COREAVI_PROPRIETARY",
        vk::DriverId::JUICE_PROPRIETARY => "JUICE_PROPRIETARY",
        vk::DriverId::VERISILICON_PROPRIETARY => "VERISILICON_PROPRIETARY",
        vk::DriverId::MESA_TURNIP => "MESA_TURNIP",
        vk::DriverId::MESA_V3DV => "MESA_V3DV",
        vk::DriverId::MESA_PANVK => "MESA_PANVK",
        vk::DriverId::SAMSUNG_PROPRIETARY => "SAMSUNG_PROPRIETARY",
        vk::DriverId::MESA_VENUS => "MESA_VENUS",
        vk::DriverId::MESA_DOZEN => "MESA_DOZEN",
        vk::DriverId::MESA_NVK => "MESA_NVK",
        vk::DriverId::IMAGINATION_OPEN_SOURCE_MESA => "IMAGINATION_OPEN_SOURCE_MESA",
        vk::DriverId::MESA_AGXV => "MESA_AGXV",
        _ => return format!("driver id {}", id.as_raw()),
    };
    name.to_string()
}

fn lossy(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}

fn note(d: &Device) -> String {
    let driver = match (&d.driver_name, &d.driver_info) {
        (Some(n), Some(i)) if !i.is_empty() => format!("{n} {} ({i})", d.driver_version),
        (Some(n), _) => format!("{n} {}", d.driver_version),
        _ => d.driver_version.clone(),
    };
    format!(
        "device {}: {} ({}, {} {}, device {}), Vulkan {}, driver {}, {:.1} GiB in {} heap(s)",
        d.index,
        d.name,
        d.device_type,
        d.vendor,
        d.vendor_id,
        d.device_id,
        d.api_version,
        driver,
        d.memory_bytes as f64 / (1u64 << 30) as f64,
        d.memory_heaps.len(),
    )
}

fn device_type(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    }
}

/// PCI vendor ids, and Khronos' VkVendorId for vendors without one.
fn vendor_name(id: u32) -> String {
    let name = match id {
        0x10DE => "NVIDIA",
        0x1002 | 0x1022 => "AMD",
        0x8086 => "Intel",
        0x13B5 => "ARM",
        0x5143 => "Qualcomm",
        0x1010 => "Imagination",
        0x106B => "Apple",
        0x14E4 => "Broadcom",
        0x1AE0 => "Google (SwiftShader)",
        0x1414 => "Microsoft",
        0x1D17 => "Zhaoxin",
        0x1E3E => "Moore Threads",
        0x10001 => "Vivante",
        0x10002 => "VeriSilicon",
        0x10003 => "Kazan",
        0x10004 => "Codeplay",
        0x10005 => "Mesa (llvmpipe/lavapipe)",
        0x10006 => "PoCL",
        0x10007 => "Mobileye",
        _ => return format!("unknown ({id:#06x})"),
    };
    name.to_string()
}

/// A Vulkan API version: major.minor.patch (with the variant, when not 0).
fn version_string(v: u32) -> String {
    let variant = vk::api_version_variant(v);
    let base = format!("{}.{}.{}", vk::api_version_major(v), vk::api_version_minor(v), vk::api_version_patch(v));
    if variant == 0 {
        base
    } else {
        format!("{base} (variant {variant})")
    }
}

/// `driverVersion` is vendor-defined: NVIDIA packs 10.8.8.6 bits, Intel's Windows driver 18.14;
/// the rest (Mesa, AMD) use VK_MAKE_VERSION's 10.10.12.
fn driver_version(vendor_id: u32, v: u32) -> String {
    match vendor_id {
        0x10DE => {
            let (major, minor, patch, build) = (v >> 22, (v >> 14) & 0xFF, (v >> 6) & 0xFF, v & 0x3F);
            if build == 0 {
                format!("{major}.{minor:02}.{patch:02}")
            } else {
                format!("{major}.{minor:02}.{patch:02}.{build}")
            }
        }
        0x8086 if cfg!(windows) => format!("{}.{}", v >> 14, v & 0x3FFF),
        _ => format!("{}.{}.{}", v >> 22, (v >> 12) & 0x3FF, v & 0xFFF),
    }
}

const MODESET_REMEDY: &str = "load the nvidia-modeset kernel module on the node (modprobe nvidia-modeset, or nvidia-modprobe --modeset at boot; the GPU operator's driver container loads it) and give the job's container /dev/nvidia-modeset";

/// Why the ICDs did not start, as far as can be told from outside them: an ICD library that
/// does not load (a missing dependency), or NVIDIA's ICD without the nvidia-modeset kernel
/// module, which it needs to start (its vk_icdGetInstanceProcAddr then hands the loader no
/// vkCreateInstance).
fn diagnose_icds(o: &mut Outcome) {
    let mut nvidia = false;
    for manifest in icd_manifests() {
        let Some(lib) = icd_library(&manifest) else { continue };
        nvidia |= lib.contains("nvidia");
        // SAFETY: opening the ICD's library runs its initialisers, as the loader itself does.
        if let Err(e) = unsafe { libloading::Library::new(&lib) } {
            o.fail(format!("the ICD {manifest} names {lib}, which does not load: {e}"), ICD_LIBRARY_REMEDY);
        }
    }
    if nvidia {
        let modules = std::fs::read_to_string("/proc/modules").unwrap_or_default();
        if let Some(why) = modeset_missing(&modules, Path::new("/dev/nvidia-modeset").exists()) {
            o.fail(format!("NVIDIA's Vulkan driver cannot start: {why}"), MODESET_REMEDY);
        }
    }
}

const ICD_LIBRARY_REMEDY: &str = "install what the ICD's library links (ldd on it names the missing libraries) in the image, or collect the driver with the graphics capability";

/// The library an ICD manifest names (`ICD.library_path`).
fn icd_library(manifest: &str) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.pointer("/ICD/library_path")?.as_str().map(str::to_string)
}

/// Why nvidia-modeset is not usable, from /proc/modules and whether its device node exists.
pub fn modeset_missing(proc_modules: &str, node_exists: bool) -> Option<String> {
    let loaded = proc_modules.lines().any(|l| l.split_whitespace().next() == Some("nvidia_modeset"));
    match (loaded, node_exists) {
        (true, true) => None,
        (true, false) => {
            Some("the nvidia_modeset kernel module is loaded, but /dev/nvidia-modeset is not in this container".into())
        }
        (false, _) => {
            let nvidia: Vec<&str> = proc_modules
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|m| m.starts_with("nvidia"))
                .collect();
            Some(format!(
                "the nvidia_modeset kernel module is not loaded (loaded: {}), so there is no /dev/nvidia-modeset",
                if nvidia.is_empty() { "no NVIDIA module".to_string() } else { nvidia.join(", ") }
            ))
        }
    }
}

fn icd_manifests() -> Vec<String> {
    let mut found = Vec::new();
    for dir in ICD_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| p.display().to_string())
            .collect();
        names.sort();
        found.extend(names);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Options;
    use std::path::PathBuf;

    fn ctx(loader: Option<PathBuf>) -> Ctx {
        let mut opts = Options::default();
        opts.vulkan.loader = loader;
        Ctx::new(opts)
    }

    #[test]
    fn finds_mesa_lavapipe_for_real() {
        let o = run(&ctx(None));
        if let Some(u) = &o.unavailable {
            panic!(
                "the Vulkan loader could not be opened: {} -- this test needs libvulkan.so.1 and Mesa's lavapipe \
                 (Debian: libvulkan1 mesa-vulkan-drivers); CI installs them",
                u.message
            );
        }
        let devices = o.details.get("devices").and_then(|d| d.as_array()).cloned().unwrap_or_default();
        let cpu_mesa = devices.iter().find(|d| {
            d["type"] == "cpu"
                && d["vendor_id"] == "0x10005"
                && d["vendor"].as_str().is_some_and(|v| v.contains("Mesa"))
        });
        assert!(
            cpu_mesa.is_some(),
            "no CPU-type Mesa device (lavapipe) among {devices:#?}; findings {:?}; is mesa-vulkan-drivers installed?",
            o.findings
        );
        assert!(!o.failed(), "findings: {:?}", o.findings);
        let lvp = cpu_mesa.unwrap();
        assert!(lvp["api_version"].as_str().is_some_and(|v| v.starts_with("1.")), "{lvp}");
        assert!(lvp["memory_bytes"].as_u64().is_some_and(|b| b > 0), "{lvp}");
        assert_eq!(lvp["driver_name"], "llvmpipe", "{lvp}");
        let count = o.metrics.iter().find(|m| m.name == "vulkan_devices").map(|m| m.value);
        assert_eq!(count, Some(devices.len() as f64));
        assert!(o.metrics.iter().any(|m| m.name == "vulkan_device_info" && m.labels["type"] == "cpu"));
        assert_eq!(o.notes.len(), devices.len());
    }

    #[test]
    fn missing_loader_is_unavailable() {
        let o = run(&ctx(Some(PathBuf::from("/nonexistent/libvulkan.so.1"))));
        let u = o.unavailable.expect("unavailable");
        assert!(u.message.contains("not found"), "{}", u.message);
        assert!(u.message.contains("/nonexistent/libvulkan.so.1"), "{}", u.message);
        assert!(u.remedy.is_some_and(|r| r.contains("libvulkan1")));
    }

    #[test]
    fn a_library_that_is_not_a_loader_is_unavailable() {
        let o = run(&ctx(Some(PathBuf::from("libc.so.6"))));
        let u = o.unavailable.expect("unavailable");
        assert!(u.message.contains("could not be loaded"), "{}", u.message);
    }

    #[test]
    fn modeset_is_diagnosed_from_proc_modules_and_the_node() {
        let without =
            "nvidia_uvm 1830912 - - Live 0xffffffffc080c000 (O)\nnvidia 14299136 - - Live 0xffffffffc0400000 (O)\n";
        let why = modeset_missing(without, false).expect("missing");
        assert!(why.contains("not loaded (loaded: nvidia_uvm, nvidia)"), "{why}");
        let with = format!("{without}nvidia_modeset 1200000 - - Live 0x0 (O)\n");
        assert_eq!(modeset_missing(&with, true), None);
        assert!(modeset_missing(&with, false).is_some_and(|w| w.contains("not in this container")));
    }

    #[test]
    fn driver_versions_decode_per_vendor() {
        let nv = (580 << 22) | (159 << 14) | (4 << 6);
        assert_eq!(driver_version(0x10DE, nv), "580.159.04");
        assert_eq!(driver_version(0x10DE, (535 << 22) | (54 << 14) | (3 << 6)), "535.54.03");
        assert_eq!(driver_version(0x10005, vk::make_api_version(0, 0, 0, 1)), "0.0.1");
        assert_eq!(driver_version(0x1002, (2 << 22) | 279), "2.0.279");
        assert_eq!(version_string(vk::make_api_version(0, 1, 3, 230)), "1.3.230");
        assert_eq!(vendor_name(0x10DE), "NVIDIA");
        assert_eq!(vendor_name(0x1234), "unknown (0x1234)");
        assert_eq!(device_type(vk::PhysicalDeviceType::CPU), "cpu");
    }
}
