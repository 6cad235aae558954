//! A CDI spec (Container Device Interface, cdiVersion 0.5.0) for hosts that inject the driver
//! at run time, in the shape `nvidia-ctk cdi generate` writes: devices "0".."N-1" and "all",
//! common device nodes, read-only bind mounts of every file, and createContainer hooks for the
//! links and the ld cache. One difference, on purpose: files are mounted where flywheel's
//! collected tree puts them (`/usr/lib/<triplet>`, `/usr/bin`, ...), not at their host paths,
//! so a container that gets the driver injected looks like an image that bakes it in.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::capability::Capability;
use crate::collect::library_dir;
use crate::discover::Driver;
use crate::DriverError;

pub const CDI_VERSION: &str = "0.5.0";
pub const KIND: &str = "nvidia.com/gpu";
const MOUNT_OPTIONS: [&str; 5] = ["ro", "nosuid", "nodev", "rbind", "rprivate"];
const COMMON_NODES: [&str; 4] = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<Hook>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    pub hook_name: String,
    pub path: String,
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    pub options: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct CdiOptions {
    /// Where dev/nvidia* and proc/driver/nvidia/gpus are read (`/` on a host).
    pub dev_root: PathBuf,
    /// The hook program on the host (the NVIDIA container toolkit's).
    pub hook_path: String,
}

impl Default for CdiOptions {
    fn default() -> Self {
        CdiOptions { dev_root: PathBuf::from("/"), hook_path: "/usr/bin/nvidia-cdi-hook".into() }
    }
}

/// A GPU as the kernel module lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    pub minor: u32,
    pub bus: Option<String>,
    pub uuid: Option<String>,
}

/// GPUs in PCI bus order (the order NVML and `nvidia-smi` number them), from
/// proc/driver/nvidia/gpus/*/information; without it, from the dev/nvidia<N> nodes.
pub fn gpus(dev_root: &Path) -> Result<Vec<Gpu>, DriverError> {
    let proc = dev_root.join("proc/driver/nvidia/gpus");
    let mut gpus = Vec::new();
    if let Ok(rd) = fs::read_dir(&proc) {
        for entry in rd {
            let entry = entry.map_err(DriverError::io(&proc))?;
            let info_path = entry.path().join("information");
            let text = fs::read_to_string(&info_path).map_err(DriverError::io(&info_path))?;
            let field = |key: &str| {
                text.lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == key).map(|(_, v)| v.trim().to_string()))
            };
            let minor = field("Device Minor")
                .and_then(|m| m.parse().ok())
                .ok_or_else(|| DriverError::Other(format!("{}: no Device Minor", info_path.display())))?;
            let bus = field("Bus Location").or_else(|| entry.file_name().to_str().map(str::to_string));
            gpus.push(Gpu { minor, bus, uuid: field("GPU UUID").filter(|u| u.starts_with("GPU-")) });
        }
        gpus.sort_by(|a, b| a.bus.cmp(&b.bus));
    }
    let dev = dev_root.join("dev");
    if gpus.is_empty() {
        if let Ok(rd) = fs::read_dir(&dev) {
            for entry in rd.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if let Some(minor) = name.strip_prefix("nvidia").and_then(|n| n.parse::<u32>().ok()) {
                    gpus.push(Gpu { minor, bus: None, uuid: None });
                }
            }
        }
        gpus.sort_by_key(|g| g.minor);
    }
    if gpus.is_empty() {
        return Err(DriverError::NoGpus(dev_root.to_path_buf()));
    }
    for g in &gpus {
        let node = dev.join(format!("nvidia{}", g.minor));
        if fs::symlink_metadata(&node).is_err() {
            return Err(DriverError::Other(format!(
                "GPU {} has device minor {} but {} does not exist",
                g.bus.as_deref().unwrap_or("?"),
                g.minor,
                node.display()
            )));
        }
    }
    Ok(gpus)
}

pub fn generate(driver: &Driver, opts: &CdiOptions) -> Result<Spec, DriverError> {
    let node = |name: &str| {
        let path = format!("/dev/{name}");
        let host = opts.dev_root.join("dev").join(name);
        let host_path = (opts.dev_root != Path::new("/")).then(|| host.display().to_string());
        DeviceNode { path, host_path }
    };
    let gpus = gpus(&opts.dev_root)?;
    let mut devices: Vec<Device> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| Device {
            name: i.to_string(),
            container_edits: ContainerEdits {
                device_nodes: vec![node(&format!("nvidia{}", g.minor))],
                ..Default::default()
            },
        })
        .collect();
    for g in gpus.iter().filter(|g| g.uuid.is_some()) {
        devices.push(Device {
            name: g.uuid.clone().unwrap_or_default(),
            container_edits: ContainerEdits {
                device_nodes: vec![node(&format!("nvidia{}", g.minor))],
                ..Default::default()
            },
        });
    }
    devices.push(Device {
        name: "all".into(),
        container_edits: ContainerEdits {
            device_nodes: gpus.iter().map(|g| node(&format!("nvidia{}", g.minor))).collect(),
            ..Default::default()
        },
    });

    let mut common_nodes = Vec::new();
    for name in COMMON_NODES {
        if fs::symlink_metadata(opts.dev_root.join("dev").join(name)).is_ok() {
            common_nodes.push(node(name));
        } else if name == "nvidiactl" {
            return Err(DriverError::Other(format!(
                "{} does not exist: the NVIDIA kernel module is not loaded",
                opts.dev_root.join("dev/nvidiactl").display()
            )));
        }
    }

    let lib_dir = format!("/{}", library_dir(driver.arch));
    let mount = |host: &Path, container: String| Mount {
        host_path: host.display().to_string(),
        container_path: container,
        options: MOUNT_OPTIONS.iter().map(|s| s.to_string()).collect(),
    };
    let mut mounts = Vec::new();
    for l in &driver.libraries {
        mounts.push(mount(&l.source, format!("{lib_dir}/{}", l.name)));
    }
    for b in &driver.binaries {
        mounts.push(mount(&b.source, format!("/usr/bin/{}", b.name)));
    }
    for f in &driver.firmware {
        mounts.push(mount(&f.source, format!("/usr/lib/firmware/nvidia/{}/{}", driver.version, f.name)));
    }
    for i in &driver.icds {
        mounts.push(mount(&i.source, format!("/{}", i.icd.destination())));
    }

    let mut links = Vec::new();
    for l in &driver.libraries {
        if l.soname != l.name {
            links.push(format!("{}::{lib_dir}/{}", l.name, l.soname));
        }
        let dev = format!("{}.so", l.base);
        if dev != l.soname && dev != l.name {
            links.push(format!("{}::{lib_dir}/{dev}", l.soname));
        }
    }
    // NixOS-built binaries look in /run/opengl-driver/lib.
    links.push(format!("{lib_dir}::/run/opengl-driver/lib"));
    let hook = |args: Vec<String>| Hook { hook_name: "createContainer".into(), path: opts.hook_path.clone(), args };
    let mut create = vec!["nvidia-cdi-hook".to_string(), "create-symlinks".to_string()];
    for l in links {
        create.push("--link".into());
        create.push(l);
    }
    let mut hooks = vec![hook(create)];
    if driver.capabilities.contains(Capability::Compute) {
        hooks.push(hook(vec![
            "nvidia-cdi-hook".into(),
            "enable-cuda-compat".into(),
            format!("--host-driver-version={}", driver.version),
        ]));
    }
    hooks.push(hook(vec!["nvidia-cdi-hook".into(), "update-ldcache".into(), "--folder".into(), lib_dir.clone()]));

    Ok(Spec {
        cdi_version: CDI_VERSION.into(),
        kind: KIND.into(),
        devices,
        container_edits: ContainerEdits {
            // As nvidia-ctk does: the toolkit's legacy hook must not inject a second time.
            env: vec!["NVIDIA_VISIBLE_DEVICES=void".into()],
            device_nodes: common_nodes,
            hooks,
            mounts,
        },
    })
}

impl Spec {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn to_yaml(&self) -> Result<String, DriverError> {
        serde_yaml_ng::to_string(self).map_err(|e| DriverError::Other(format!("rendering YAML: {e}")))
    }
}
