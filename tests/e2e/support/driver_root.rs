//! Fixture NVIDIA driver roots, built at test time from this machine's real ELF shared
//! libraries: copies of libz renamed like the driver's libraries and given their SONAMEs with
//! Debian's patchelf. No NVIDIA file is ever committed or needed.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every library of a real driver install, with its SONAME (`None`: the SONAME is the full
/// versioned name, as for libnvidia-glcore), written down from a 580 driver independently of
/// flywheel's own tables.
pub const LIBRARIES: &[(&str, Option<&str>, &str)] = &[
    ("libnvidia-ml", Some("libnvidia-ml.so.1"), "utility"),
    ("libnvidia-cfg", Some("libnvidia-cfg.so.1"), "utility"),
    ("libnvidia-nscq", Some("libnvidia-nscq.so.2"), "utility"),
    ("libcuda", Some("libcuda.so.1"), "compute"),
    ("libcudadebugger", Some("libcudadebugger.so.1"), "compute"),
    ("libnvidia-opencl", Some("libnvidia-opencl.so.1"), "compute"),
    ("libnvidia-gpucomp", None, "compute"),
    ("libnvidia-ptxjitcompiler", Some("libnvidia-ptxjitcompiler.so.1"), "compute"),
    ("libnvidia-allocator", Some("libnvidia-allocator.so.1"), "compute"),
    ("libnvidia-pkcs11-openssl3", None, "compute"),
    ("libnvidia-nvvm", Some("libnvidia-nvvm.so.4"), "compute"),
    ("libvdpau_nvidia", Some("libvdpau_nvidia.so.1"), "video"),
    ("libnvidia-encode", Some("libnvidia-encode.so.1"), "video"),
    ("libnvidia-opticalflow", Some("libnvidia-opticalflow.so.1"), "video"),
    ("libnvcuvid", Some("libnvcuvid.so.1"), "video"),
    ("libnvidia-eglcore", None, "graphics"),
    ("libnvidia-glcore", None, "graphics"),
    ("libnvidia-tls", None, "graphics"),
    ("libnvidia-glsi", None, "graphics"),
    ("libnvidia-fbc", Some("libnvidia-fbc.so.1"), "graphics"),
    ("libnvidia-rtcore", None, "graphics"),
    ("libnvoptix", Some("libnvoptix.so.1"), "graphics"),
    ("libGLX_nvidia", Some("libGLX_nvidia.so.0"), "graphics"),
    ("libEGL_nvidia", Some("libEGL_nvidia.so.0"), "graphics"),
    ("libGLESv2_nvidia", Some("libGLESv2_nvidia.so.2"), "graphics"),
    ("libGLESv1_CM_nvidia", Some("libGLESv1_CM_nvidia.so.1"), "graphics"),
    ("libnvidia-glvkspirv", None, "graphics"),
    ("libglxserver_nvidia", None, "display"),
    ("libnvidia-ngx", Some("libnvidia-ngx.so.1"), "ngx"),
];

pub const BINARIES: &[(&str, &str)] = &[
    ("nvidia-smi", "utility"),
    ("nvidia-debugdump", "utility"),
    ("nvidia-persistenced", "utility"),
    ("nvidia-cuda-mps-control", "compute"),
    ("nvidia-cuda-mps-server", "compute"),
];

pub const VERSION: &str = "580.159.04";

/// A real shared library of this machine to dress up as the driver's.
pub fn template_library() -> PathBuf {
    let candidates = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "/lib/aarch64-linux-gnu/libz.so.1",
        "/usr/lib/aarch64-linux-gnu/libz.so.1",
    ];
    let found = candidates.iter().map(Path::new).find(|p| p.exists()).expect("libz.so.1 (zlib1g) on this machine");
    fs::canonicalize(found).expect("canonical libz")
}

pub fn patchelf() -> Command {
    Command::new("patchelf")
}

/// Copies `template` to `dest` with SONAME `soname`.
pub fn make_library(dest: &Path, soname: &str) {
    fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    fs::copy(template_library(), dest).expect("copy the template library");
    let out =
        patchelf().arg("--set-soname").arg(soname).arg(dest).output().expect("patchelf (apt-get install patchelf)");
    assert!(out.status.success(), "patchelf: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(path, bytes).expect("write");
}

/// A host-style driver root, laid out as /usr/local/nvidia is on the GPU machine: lib64/ with
/// every library and the links an installer makes, bin/, firmware/, and the ICD files.
pub fn host_root(dir: &Path, version: &str) {
    let lib = dir.join("lib64");
    for (base, soname, _) in LIBRARIES {
        let name = format!("{base}.so.{version}");
        make_library(&lib.join(&name), soname.unwrap_or(&name));
        if let Some(soname) = soname {
            symlink(&name, lib.join(soname)).expect("soname link");
        }
    }
    symlink("libcuda.so.1", lib.join("libcuda.so")).expect("dev link");
    for (name, _) in BINARIES {
        write(&dir.join("bin").join(name), format!("#!/bin/sh\necho {name} {version}\n").as_bytes());
    }
    for gsp in ["gsp_ga10x.bin", "gsp_tu10x.bin"] {
        write(&dir.join(format!("firmware/nvidia/{version}/{gsp}")), format!("{gsp} firmware {version}").as_bytes());
    }
    write(
        &dir.join("share/vulkan/icd.d/nvidia_icd.json"),
        br#"{"file_format_version": "1.0.1", "ICD": {"library_path": "libGLX_nvidia.so.0", "api_version": "1.4.312"}}"#,
    );
    write(
        &dir.join("share/glvnd/egl_vendor.d/10_nvidia.json"),
        br#"{"file_format_version": "1.0.0", "ICD": {"library_path": "libEGL_nvidia.so.0"}}"#,
    );
    write(&dir.join("etc/OpenCL/vendors/nvidia.icd"), b"libnvidia-opencl.so.1\n");
}

/// A NixOS-style root: `lib/` of symlinks into a package tree elsewhere (as /run/opengl-driver
/// is a buildEnv of store paths). Returns the root.
pub fn nixos_root(dir: &Path, version: &str) -> PathBuf {
    let package = dir.join("store/nvidia-x11");
    host_root(&package, version);
    let root = dir.join("opengl-driver");
    fs::create_dir_all(root.join("lib")).expect("mkdir");
    for entry in fs::read_dir(package.join("lib64")).expect("lib64") {
        let entry = entry.expect("entry");
        symlink(entry.path(), root.join("lib").join(entry.file_name())).expect("link");
    }
    symlink(package.join("share"), root.join("share")).expect("share link");
    root
}

/// The kernel module's version file, as /proc/driver/nvidia/version reads.
pub fn kernel_version_text(version: &str) -> String {
    format!(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  (dvs-builder@U22-I3-AE18-23-3)  Thu Oct  9 00:00:00 UTC 2025\nGCC version:  gcc version 12.2.0 (Ubuntu 12.2.0-3ubuntu1)\n"
    )
}

/// A dev root for CDI: device nodes (plain files: the spec only names them) and the kernel
/// module's GPU list, with GPUs given as (PCI bus, device minor, UUID).
pub fn dev_root(dir: &Path, gpus: &[(&str, u32, &str)]) {
    for node in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
        write(&dir.join("dev").join(node), b"");
    }
    for (bus, minor, uuid) in gpus {
        write(&dir.join(format!("dev/nvidia{minor}")), b"");
        write(
            &dir.join(format!("proc/driver/nvidia/gpus/{bus}/information")),
            format!("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t {uuid}\nVideo BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n").as_bytes(),
        );
    }
    write(&dir.join("proc/driver/nvidia/version"), kernel_version_text(VERSION).as_bytes());
}
