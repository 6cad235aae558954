//! Laying out a discovered driver as a tree that is an image layer as it stands, and its
//! manifest. The tree is written under a temporary name beside `out` and renamed at the end.
//!
//! Layout (amd64; `aarch64-linux-gnu` on arm64), documented in docs/driver.md:
//! - `usr/lib/x86_64-linux-gnu/`: the libraries, their SONAME links and dev links. The FHS
//!   folder, not `/run/opengl-driver/lib`, holds the files: it is where the NVIDIA container
//!   toolkit and flywheel's CDI spec put them (an image that bakes the driver and a container
//!   that gets it injected look the same), where binaries built outside Nix look through
//!   ld.so.conf, and it survives runtimes that mount a tmpfs over `/run`.
//! - `run/opengl-driver/lib` -> `../../usr/lib/x86_64-linux-gnu`: what NixOS-built binaries
//!   (RUNPATH /run/opengl-driver/lib, as nixpkgs' `addDriverRunpath` sets it) open.
//! - `usr/bin/`: nvidia-smi and the other binaries; `usr/lib/firmware/nvidia/<version>/`: GSP
//!   firmware; ICD files where the standard loaders look, naming libraries by absolute path.
//! - `etc/ld.so.conf.d/flywheel-nvidia.conf`: the library folder, for `ldconfig`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::capability::{Capability, Icd};
use crate::discover::Driver;
use crate::manifest::{self, EntryKind, Manifest, ManifestEntry, MANIFEST_NAME, MANIFEST_VERSION};
use crate::DriverError;

/// The mtime of everything in the tree: two collections of one root are identical trees.
pub const TREE_MTIME: i64 = 1;
pub const LD_SO_CONF: &str = "etc/ld.so.conf.d/flywheel-nvidia.conf";

/// The folder holding the libraries in the image, relative to `/`.
pub fn library_dir(arch: crate::elf::Arch) -> String {
    format!("usr/lib/{}", arch.triplet())
}

#[derive(Clone, Debug)]
enum Content {
    Copy { source: PathBuf, mode: u32 },
    Bytes { bytes: Vec<u8>, mode: u32 },
    Link { target: String },
}

#[derive(Clone, Debug)]
struct Planned {
    path: String,
    content: Content,
    role: &'static str,
    capability: Option<Capability>,
}

/// Every entry of the tree, sorted by path; nothing touched on disk but the sources read.
fn plan(driver: &Driver) -> Result<Vec<Planned>, DriverError> {
    let lib_dir = library_dir(driver.arch);
    let mut planned: BTreeMap<String, Planned> = BTreeMap::new();
    let mut add = |p: Planned| -> Result<(), DriverError> {
        if let Some(existing) = planned.get(&p.path) {
            if matches!(p.content, Content::Link { .. }) {
                // A link whose name a real file already has: the file wins.
                tracing::debug!("{}: already {}; link not made", p.path, existing.role);
                return Ok(());
            }
            return Err(DriverError::Other(format!("two files would be {}", p.path)));
        }
        planned.insert(p.path.clone(), p);
        Ok(())
    };
    for l in &driver.libraries {
        let cap = Some(l.capability);
        let copy = Content::Copy { source: l.source.clone(), mode: 0o755 };
        add(Planned { path: format!("{lib_dir}/{}", l.name), content: copy, role: "library", capability: cap })?;
    }
    // Links after every file, so a link never shadows a library of the same name.
    for l in &driver.libraries {
        let cap = Some(l.capability);
        if l.soname != l.name {
            let target = Content::Link { target: l.name.clone() };
            add(Planned {
                path: format!("{lib_dir}/{}", l.soname),
                content: target,
                role: "soname link",
                capability: cap,
            })?;
        }
        let dev = format!("{}.so", l.base);
        if dev != l.soname && dev != l.name {
            let target = Content::Link { target: l.soname.clone() };
            add(Planned { path: format!("{lib_dir}/{dev}"), content: target, role: "dev link", capability: cap })?;
        }
    }
    for b in &driver.binaries {
        let copy = Content::Copy { source: b.source.clone(), mode: 0o755 };
        add(Planned {
            path: format!("usr/bin/{}", b.name),
            content: copy,
            role: "binary",
            capability: Some(b.capability),
        })?;
    }
    for f in &driver.firmware {
        let copy = Content::Copy { source: f.source.clone(), mode: 0o644 };
        let path = format!("usr/lib/firmware/nvidia/{}/{}", driver.version, f.name);
        add(Planned { path, content: copy, role: "firmware", capability: Some(f.capability) })?;
    }
    let lib_names: BTreeSet<String> =
        driver.libraries.iter().flat_map(|l| [l.name.clone(), l.soname.clone(), format!("{}.so", l.base)]).collect();
    for icd in &driver.icds {
        let bytes = rewrite_icd(icd.icd, &icd.source, &lib_names, &lib_dir)?;
        let content = Content::Bytes { bytes, mode: 0o644 };
        add(Planned {
            path: icd.icd.destination().to_string(),
            content,
            role: "icd",
            capability: Some(icd.capability),
        })?;
    }
    let conf = Content::Bytes { bytes: format!("/{lib_dir}\n").into_bytes(), mode: 0o644 };
    add(Planned { path: LD_SO_CONF.to_string(), content: conf, role: "ld.so.conf", capability: None })?;
    let link = |target: String| Content::Link { target };
    add(Planned {
        path: "run/opengl-driver/lib".into(),
        content: link(format!("../../{lib_dir}")),
        role: "opengl-driver link",
        capability: None,
    })?;
    if driver.icds.iter().any(|i| i.icd.destination().starts_with("usr/share/")) {
        add(Planned {
            path: "run/opengl-driver/share".into(),
            content: link("../../usr/share".into()),
            role: "opengl-driver link",
            capability: None,
        })?;
    }
    if driver.icds.iter().any(|i| i.icd == Icd::OpenCl) {
        add(Planned {
            path: "run/opengl-driver/etc".into(),
            content: link("../../etc".into()),
            role: "opengl-driver link",
            capability: None,
        })?;
    }
    Ok(planned.into_values().collect())
}

/// ICD files name their library by SONAME (resolved through the loader's search path); in the
/// image they name it by absolute path, so a loader built by Nix (which does not read the
/// image's ld.so.cache) finds it too.
fn rewrite_icd(icd: Icd, source: &Path, libs: &BTreeSet<String>, lib_dir: &str) -> Result<Vec<u8>, DriverError> {
    let text = fs::read_to_string(source).map_err(DriverError::io(source))?;
    let bad = |why: String| DriverError::BadIcd { path: source.to_path_buf(), why };
    let place = |named: &str| -> Result<String, DriverError> {
        let base = named.rsplit('/').next().unwrap_or(named);
        if libs.contains(base) {
            Ok(format!("/{lib_dir}/{base}"))
        } else {
            Err(bad(format!("names {named}, which is not among the collected libraries")))
        }
    };
    match icd {
        Icd::OpenCl => {
            let named = text.trim();
            if named.is_empty() || named.contains('\n') {
                return Err(bad("expected one library name".into()));
            }
            Ok(format!("{}\n", place(named)?).into_bytes())
        }
        Icd::Egl | Icd::Vulkan => {
            let mut json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            let slot = json.pointer_mut("/ICD/library_path").ok_or_else(|| bad("no ICD.library_path".into()))?;
            let named = slot.as_str().ok_or_else(|| bad("ICD.library_path is not a string".into()))?.to_string();
            *slot = serde_json::Value::String(place(&named)?);
            let mut out = serde_json::to_vec_pretty(&json).map_err(|e| bad(e.to_string()))?;
            out.push(b'\n');
            Ok(out)
        }
    }
}

#[derive(Clone, Debug)]
pub struct CollectReport {
    pub out: PathBuf,
    pub manifest: Manifest,
    pub files: usize,
    pub bytes: u64,
}

/// Writes the tree for `driver` at `out`: a new path, an empty folder, or an earlier tree
/// (replaced whole). On any error nothing is left at `out` that was not there before.
pub fn collect(driver: &Driver, out: &Path) -> Result<CollectReport, DriverError> {
    check_out(out)?;
    let entries = plan(driver)?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp =
        tempfile::Builder::new().prefix(".flywheel-driver-").tempdir_in(&parent).map_err(DriverError::io(&parent))?;
    let root = tmp.path();

    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for e in &entries {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            dirs.insert(parent.to_string());
            p = parent;
        }
    }
    for d in &dirs {
        let path = root.join(d);
        fs::create_dir_all(&path).map_err(DriverError::io(&path))?;
    }

    // Files in parallel: copying and hashing the driver is most of the work.
    let written: Vec<ManifestEntry> = entries.par_iter().map(|e| write_entry(root, e)).collect::<Result<_, _>>()?;
    let bytes = written
        .iter()
        .map(|e| match e.kind {
            EntryKind::File { size, .. } => size,
            EntryKind::Symlink { .. } => 0,
        })
        .sum();
    let manifest = Manifest {
        flywheel_driver_manifest: MANIFEST_VERSION,
        version: driver.version.clone(),
        architecture: driver.arch,
        capabilities: driver.capabilities.names(),
        library_dir: format!("/{}", library_dir(driver.arch)),
        files: written,
    };
    let manifest_path = root.join(MANIFEST_NAME);
    fs::write(&manifest_path, manifest.to_bytes()).map_err(DriverError::io(&manifest_path))?;
    set_mode(&manifest_path, 0o644)?;
    set_mtime(&manifest_path)?;
    // Deepest folders first, so setting a child's time does not change its parent's after.
    for d in dirs.iter().rev() {
        let path = root.join(d);
        set_mode(&path, 0o755)?;
        set_mtime(&path)?;
    }
    set_mode(root, 0o755)?;
    set_mtime(root)?;

    let tmp_path = tmp.keep();
    if let Err(e) = replace(&tmp_path, out) {
        let _ = fs::remove_dir_all(&tmp_path);
        return Err(e);
    }
    Ok(CollectReport { out: out.to_path_buf(), files: manifest.files.len(), bytes, manifest })
}

fn write_entry(root: &Path, e: &Planned) -> Result<ManifestEntry, DriverError> {
    let path = root.join(&e.path);
    let kind = match &e.content {
        Content::Copy { source, mode } => {
            let (size, sha256) = copy_hashing(source, &path)?;
            set_mode(&path, *mode)?;
            EntryKind::File { size, sha256, mode: format!("{mode:04o}") }
        }
        Content::Bytes { bytes, mode } => {
            fs::write(&path, bytes).map_err(DriverError::io(&path))?;
            set_mode(&path, *mode)?;
            let sha256 = manifest::hex(&Sha256::digest(bytes));
            EntryKind::File { size: bytes.len() as u64, sha256, mode: format!("{mode:04o}") }
        }
        Content::Link { target } => {
            std::os::unix::fs::symlink(target, &path).map_err(DriverError::io(&path))?;
            EntryKind::Symlink { target: target.clone() }
        }
    };
    set_mtime(&path)?;
    Ok(ManifestEntry {
        path: e.path.clone(),
        kind,
        role: e.role.to_string(),
        capability: e.capability.map(|c| c.name().to_string()),
    })
}

/// One pass over the source: every byte read is hashed and written. A source that changes
/// size while it is read is an error, not a torn copy.
fn copy_hashing(source: &Path, dest: &Path) -> Result<(u64, String), DriverError> {
    let mut src = fs::File::open(source).map_err(DriverError::io(source))?;
    let expected = src.metadata().map_err(DriverError::io(source))?.len();
    let mut dst = fs::File::create(dest).map_err(DriverError::io(dest))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(DriverError::io(source)(e)),
        };
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(DriverError::io(dest))?;
        size += n as u64;
    }
    if size != expected {
        return Err(DriverError::Other(format!(
            "{} changed while it was copied ({expected} bytes, then {size})",
            source.display()
        )));
    }
    Ok((size, manifest::hex(&hasher.finalize())))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), DriverError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(DriverError::io(path))
}

fn set_mtime(path: &Path) -> Result<(), DriverError> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let t = Timespec { tv_sec: TREE_MTIME, tv_nsec: 0 };
    utimensat(CWD, path, &Timestamps { last_access: t, last_modification: t }, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| DriverError::io(path)(e.into()))
}

/// `out` may be absent, an empty folder, or an earlier collected tree; anything else is kept.
fn check_out(out: &Path) -> Result<(), DriverError> {
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::io(out)(e)),
        Ok(m) if m.is_dir() => {
            let empty = fs::read_dir(out).map_err(DriverError::io(out))?.next().is_none();
            if empty || Manifest::read(&out.join(MANIFEST_NAME)).is_ok() {
                Ok(())
            } else {
                Err(DriverError::OutputExists(out.to_path_buf()))
            }
        }
        Ok(_) => Err(DriverError::OutputExists(out.to_path_buf())),
    }
}

fn replace(tmp: &Path, out: &Path) -> Result<(), DriverError> {
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(tmp, out).map_err(DriverError::io(out)),
        Err(e) => Err(DriverError::io(out)(e)),
        Ok(_) => {
            let cwd = rustix::fs::CWD;
            if rustix::fs::renameat_with(cwd, tmp, cwd, out, rustix::fs::RenameFlags::EXCHANGE).is_ok() {
                // `tmp` now holds the old tree.
                let _ = fs::remove_dir_all(tmp);
                return Ok(());
            }
            let aside = tmp.with_extension("old");
            fs::rename(out, &aside).map_err(DriverError::io(out))?;
            fs::rename(tmp, out).map_err(DriverError::io(out))?;
            let _ = fs::remove_dir_all(&aside);
            Ok(())
        }
    }
}
