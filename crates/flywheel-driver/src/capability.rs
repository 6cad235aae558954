//! Driver capabilities and the files each one needs, as the NVIDIA container toolkit selects
//! them (`NVIDIA_DRIVER_CAPABILITIES`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Utility,
    Compute,
    Video,
    Graphics,
    Display,
    Ngx,
}

impl Capability {
    pub const ALL: [Capability; 6] = [
        Capability::Utility,
        Capability::Compute,
        Capability::Video,
        Capability::Graphics,
        Capability::Display,
        Capability::Ngx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Utility => "utility",
            Capability::Compute => "compute",
            Capability::Video => "video",
            Capability::Graphics => "graphics",
            Capability::Display => "display",
            Capability::Ngx => "ngx",
        }
    }

    /// Library base names (before `.so.<version>`); only files named `<base>.so.<driver version>`
    /// are taken, so a stray copy of another driver's library is never picked up.
    pub fn libraries(self) -> &'static [&'static str] {
        match self {
            Capability::Utility => &["libnvidia-ml", "libnvidia-cfg", "libnvidia-nscq"],
            Capability::Compute => &[
                "libcuda",
                "libcudadebugger",
                "libnvidia-opencl",
                "libnvidia-gpucomp",
                "libnvidia-ptxjitcompiler",
                "libnvidia-allocator",
                "libnvidia-pkcs11",
                "libnvidia-pkcs11-openssl3",
                "libnvidia-nvvm",
                "libnvidia-tileiras",
            ],
            Capability::Video => &["libvdpau_nvidia", "libnvidia-encode", "libnvidia-opticalflow", "libnvcuvid"],
            Capability::Graphics => &[
                "libnvidia-eglcore",
                "libnvidia-glcore",
                "libnvidia-tls",
                "libnvidia-glsi",
                "libnvidia-fbc",
                "libnvidia-ifr",
                "libnvidia-rtcore",
                "libnvoptix",
                "libGLX_nvidia",
                "libEGL_nvidia",
                "libGLESv2_nvidia",
                "libGLESv1_CM_nvidia",
                "libnvidia-glvkspirv",
            ],
            Capability::Display => &["libglxserver_nvidia"],
            Capability::Ngx => &["libnvidia-ngx"],
        }
    }

    pub fn binaries(self) -> &'static [&'static str] {
        match self {
            Capability::Utility => &["nvidia-smi", "nvidia-debugdump", "nvidia-persistenced"],
            Capability::Compute => &["nvidia-cuda-mps-control", "nvidia-cuda-mps-server"],
            Capability::Ngx => &["nvidia-ngx-updater"],
            _ => &[],
        }
    }

    /// ICD files the capability brings, by kind.
    pub fn icds(self) -> &'static [Icd] {
        match self {
            Capability::Compute => &[Icd::OpenCl],
            Capability::Graphics => &[Icd::Egl, Icd::Vulkan],
            _ => &[],
        }
    }

    /// The GSP firmware goes with utility, as the toolkit mounts it: NVML reads it on GSP GPUs.
    pub fn takes_firmware(self) -> bool {
        self == Capability::Utility
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Capability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!("unknown capability {s:?} (known: {})", Capability::ALL.map(Capability::name).join(", "))
        })
    }
}

/// A set of capabilities: `utility,compute` (the default), `all`, or any comma-separated list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities(pub BTreeSet<Capability>);

impl Capabilities {
    pub fn default_set() -> Self {
        Capabilities([Capability::Utility, Capability::Compute].into_iter().collect())
    }

    pub fn contains(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }

    /// The capability a library base name belongs to, when it is one of the set's.
    pub fn library_capability(&self, base: &str) -> Option<Capability> {
        self.iter().find(|c| c.libraries().contains(&base))
    }

    pub fn names(&self) -> Vec<String> {
        self.iter().map(|c| c.name().to_string()).collect()
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::default_set()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl FromStr for Capabilities {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut set = BTreeSet::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            if part == "all" {
                set.extend(Capability::ALL);
            } else {
                set.insert(part.parse()?);
            }
        }
        if set.is_empty() {
            return Err("no capabilities given (e.g. utility,compute or all)".into());
        }
        Ok(Capabilities(set))
    }
}

/// Installable client driver files: text or JSON that names a driver library, so the loader
/// (OpenCL ICD loader, glvnd, Vulkan loader) can find it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Icd {
    OpenCl,
    Egl,
    Vulkan,
}

impl Icd {
    /// Where the file is looked for, relative to a driver root, in order.
    pub fn sources(self) -> &'static [&'static str] {
        match self {
            Icd::OpenCl => &["etc/OpenCL/vendors/nvidia.icd"],
            Icd::Egl => &["share/glvnd/egl_vendor.d/10_nvidia.json", "usr/share/glvnd/egl_vendor.d/10_nvidia.json"],
            // nixpkgs names it after the architecture.
            Icd::Vulkan => &[
                "share/vulkan/icd.d/nvidia_icd.json",
                "share/vulkan/icd.d/nvidia_icd.x86_64.json",
                "share/vulkan/icd.d/nvidia_icd.aarch64.json",
                "usr/share/vulkan/icd.d/nvidia_icd.json",
                "etc/vulkan/icd.d/nvidia_icd.json",
            ],
        }
    }

    /// Where it goes in the image (relative to `/`), where the standard loaders look.
    pub fn destination(self) -> &'static str {
        match self {
            Icd::OpenCl => "etc/OpenCL/vendors/nvidia.icd",
            Icd::Egl => "usr/share/glvnd/egl_vendor.d/10_nvidia.json",
            Icd::Vulkan => "usr/share/vulkan/icd.d/nvidia_icd.json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_all_and_refuses_unknown_names() {
        let c: Capabilities = "compute, utility".parse().expect("parses");
        assert_eq!(c, Capabilities::default_set());
        assert_eq!(c.to_string(), "utility,compute");
        let all: Capabilities = "all".parse().expect("parses");
        assert_eq!(all.0.len(), 6);
        let e = "utility,gaming".parse::<Capabilities>().expect_err("unknown");
        assert!(e.contains("gaming") && e.contains("ngx"), "{e}");
        assert!("".parse::<Capabilities>().is_err());
    }

    #[test]
    fn every_library_belongs_to_exactly_one_capability() {
        let mut seen = BTreeSet::new();
        for c in Capability::ALL {
            for l in c.libraries() {
                assert!(seen.insert(*l), "{l} listed twice");
            }
        }
    }
}
