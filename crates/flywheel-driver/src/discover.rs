//! Finding a driver's userspace under one or more roots: a host tree (`/`, `/usr/local/nvidia`),
//! NixOS's `/run/opengl-driver`, or the outputs of nixpkgs' NVIDIA driver package. Nothing is
//! written here; [`crate::collect`] lays out what this finds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::capability::{Capabilities, Capability, Icd};
use crate::elf::{self, Arch, ElfError};
use crate::version::DriverVersion;
use crate::DriverError;

/// Library folders, relative to a root, in the order they are searched.
fn library_dirs(arch: Arch) -> Vec<String> {
    let t = arch.triplet();
    vec![
        "lib64".into(),
        "lib".into(),
        format!("lib/{t}"),
        "usr/lib64".into(),
        "usr/lib".into(),
        format!("usr/lib/{t}"),
        "usr/local/nvidia/lib64".into(),
        "usr/local/nvidia/lib".into(),
        "run/opengl-driver/lib".into(),
    ]
}

const BINARY_DIRS: &[&str] = &["bin", "usr/bin", "usr/local/nvidia/bin", "sbin", "usr/sbin"];

fn firmware_dirs(version: &DriverVersion) -> Vec<String> {
    ["firmware", "lib/firmware", "usr/lib/firmware", "usr/local/nvidia/firmware"]
        .iter()
        .map(|d| format!("{d}/nvidia/{version}"))
        .collect()
}

/// The library a capability cannot do without: asking for the capability on a root that lacks
/// it is an error, where any other missing library of it is skipped (drivers differ in which
/// of the optional ones they ship).
pub fn essential_library(c: Capability) -> &'static str {
    match c {
        Capability::Utility => "libnvidia-ml",
        Capability::Compute => "libcuda",
        Capability::Video => "libnvcuvid",
        Capability::Graphics => "libGLX_nvidia",
        Capability::Display => "libglxserver_nvidia",
        Capability::Ngx => "libnvidia-ngx",
    }
}

#[derive(Clone, Debug)]
pub struct DiscoverOptions {
    pub capabilities: Capabilities,
    pub arch: Arch,
    /// Ask NVML (loaded from the root) for the version too, when it loads and a driver runs.
    pub nvml: bool,
    /// A capability whose essential library is missing is an error (when the capabilities
    /// were asked for); otherwise it is skipped.
    pub strict: bool,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        DiscoverOptions { capabilities: Capabilities::default(), arch: Arch::host(), nvml: true, strict: true }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Library {
    /// `libcuda.so.580.159.04`
    pub name: String,
    /// `libcuda`
    pub base: String,
    /// `libcuda.so.1`
    pub soname: String,
    /// The real file (symlinks resolved).
    pub source: PathBuf,
    pub capability: Capability,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverFile {
    pub name: String,
    pub source: PathBuf,
    pub capability: Capability,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IcdFile {
    pub icd: Icd,
    pub source: PathBuf,
    pub capability: Capability,
}

/// A driver's userspace as found: everything [`crate::collect`] needs, nothing read yet but
/// ELF headers.
#[derive(Clone, Debug)]
pub struct Driver {
    pub roots: Vec<PathBuf>,
    pub version: DriverVersion,
    pub arch: Arch,
    pub capabilities: Capabilities,
    pub libraries: Vec<Library>,
    pub binaries: Vec<DriverFile>,
    pub firmware: Vec<DriverFile>,
    pub icds: Vec<IcdFile>,
    /// Where the version was read, each agreeing with the libraries (`libraries`, `/proc...`, `NVML`).
    pub version_sources: Vec<String>,
}

/// A versioned library candidate before the version is settled.
struct Candidate {
    name: String,
    base: String,
    version: DriverVersion,
    shown: PathBuf,
    real: PathBuf,
    soname: Option<String>,
}

pub fn discover(roots: &[PathBuf], opts: &DiscoverOptions) -> Result<Driver, DriverError> {
    if roots.is_empty() {
        return Err(DriverError::NoDriver { roots: String::new(), looked: "no --driver-root given".into() });
    }
    for root in roots {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(DriverError::RootNotADirectory(root.clone())),
            Err(e) => return Err(DriverError::io(root)(e)),
        }
    }
    let known: BTreeSet<&str> = Capability::ALL.iter().flat_map(|c| c.libraries().iter().copied()).collect();

    // Every versioned driver library of the wanted architecture, of any capability: a second
    // version anywhere under the roots is an error even when its capability is not asked for.
    let mut candidates: Vec<Candidate> = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for root in roots {
        for dir in library_dirs(opts.arch) {
            let dir = root.join(dir);
            for (name, shown) in list_dir(&dir)? {
                let Some((base, version)) = DriverVersion::from_library_name(&name) else {
                    continue;
                };
                if !known.contains(base) || taken.contains(&name) {
                    continue;
                }
                let real = resolve(&shown)?;
                if !fs::metadata(&real).map_err(DriverError::io(&real))?.is_file() {
                    continue;
                }
                let info = match elf::read(&real) {
                    Ok(i) => i,
                    Err(ElfError::NotElf) => return Err(DriverError::NotElf(shown)),
                    Err(e) => return Err(DriverError::Elf { path: shown, why: e.to_string() }),
                };
                if !info.is_64 || info.machine != opts.arch.elf_machine() {
                    tracing::debug!("{}: another architecture's library, skipped", shown.display());
                    continue;
                }
                taken.insert(name.clone());
                candidates.push(Candidate { base: base.to_string(), version, name, shown, real, soname: info.soname });
            }
        }
    }

    let roots_shown = roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    let mut by_version: BTreeMap<&DriverVersion, &Candidate> = BTreeMap::new();
    for c in &candidates {
        by_version.entry(&c.version).or_insert(c);
    }
    let version = match by_version.len() {
        0 => return Err(DriverError::NoDriver { roots: roots_shown, looked: library_dirs(opts.arch).join(", ") }),
        1 => by_version.keys().next().map(|v| (*v).clone()).ok_or(DriverError::Internal("no version"))?,
        _ => {
            let mut two = by_version.values();
            let (a, b) = (two.next(), two.next());
            let (Some(a), Some(b)) = (a, b) else { return Err(DriverError::Internal("two versions")) };
            return Err(DriverError::TwoVersions {
                a: a.version.clone(),
                a_file: a.shown.clone(),
                b: b.version.clone(),
                b_file: b.shown.clone(),
            });
        }
    };

    let mut version_sources = vec![format!("library names under {roots_shown}")];
    for root in roots {
        let proc = root.join("proc/driver/nvidia/version");
        if proc.is_file() {
            let kernel = DriverVersion::from_proc_file(&proc).map_err(DriverError::Other)?;
            if kernel != version {
                return Err(DriverError::Disagree {
                    a_what: format!("the libraries under {roots_shown}"),
                    a: version,
                    b_what: proc.display().to_string(),
                    b: kernel,
                });
            }
            version_sources.push(proc.display().to_string());
        }
    }
    if opts.nvml {
        if let Some(ml) = candidates.iter().find(|c| c.base == "libnvidia-ml") {
            if let Some(nvml) = crate::nvml::driver_version(&ml.real) {
                if nvml != version {
                    return Err(DriverError::Disagree {
                        a_what: format!("the libraries under {roots_shown}"),
                        a: version,
                        b_what: format!("NVML ({})", ml.shown.display()),
                        b: nvml,
                    });
                }
                version_sources.push(format!("NVML ({})", ml.shown.display()));
            }
        }
    }

    let mut libraries = Vec::new();
    for c in candidates.into_iter().filter(|c| c.version == version) {
        let Some(capability) = opts.capabilities.library_capability(&c.base) else {
            continue;
        };
        let Some(soname) = c.soname else {
            return Err(DriverError::NoSoname(c.shown));
        };
        if soname.contains('/') || soname.is_empty() {
            return Err(DriverError::Elf { path: c.shown, why: format!("SONAME {soname:?} is not a file name") });
        }
        libraries.push(Library { name: c.name, base: c.base, soname, source: c.real, capability });
    }
    for c in opts.capabilities.iter().filter(|_| opts.strict) {
        let base = essential_library(c);
        if !libraries.iter().any(|l| l.base == base) {
            return Err(DriverError::MissingForCapability {
                capability: c,
                file: format!("{base}.so.{version}"),
                roots: roots_shown,
            });
        }
    }
    libraries.sort_by(|a, b| a.name.cmp(&b.name));

    let mut binaries = Vec::new();
    for c in opts.capabilities.iter() {
        for name in c.binaries() {
            if let Some(source) = first_file(roots, BINARY_DIRS.iter().map(|d| format!("{d}/{name}")))? {
                binaries.push(DriverFile { name: name.to_string(), source, capability: c });
            } else {
                tracing::debug!("{name} not found under {roots_shown}");
            }
        }
    }
    binaries.sort_by(|a, b| a.name.cmp(&b.name));

    let mut firmware = Vec::new();
    if opts.capabilities.iter().any(Capability::takes_firmware) {
        let mut seen = BTreeSet::new();
        for root in roots {
            for dir in firmware_dirs(&version) {
                for (name, shown) in list_dir(&root.join(dir))? {
                    if name.starts_with("gsp_") && name.ends_with(".bin") && seen.insert(name.clone()) {
                        let source = resolve(&shown)?;
                        firmware.push(DriverFile { name, source, capability: Capability::Utility });
                    }
                }
            }
        }
    }
    firmware.sort_by(|a, b| a.name.cmp(&b.name));

    let mut icds = Vec::new();
    for c in opts.capabilities.iter() {
        for icd in c.icds() {
            if let Some(source) = first_file(roots, icd.sources().iter().map(|s| s.to_string()))? {
                icds.push(IcdFile { icd: *icd, source, capability: c });
            }
        }
    }
    icds.sort_by_key(|i| i.icd);

    Ok(Driver {
        roots: roots.to_vec(),
        version,
        arch: opts.arch,
        capabilities: opts.capabilities.clone(),
        libraries,
        binaries,
        firmware,
        icds,
        version_sources,
    })
}

/// The entries of `dir` by name, sorted; a missing folder is empty.
fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf)>, DriverError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => return Ok(Vec::new()),
        Err(e) => return Err(DriverError::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(DriverError::io(dir))?;
        if let Some(name) = entry.file_name().to_str() {
            out.push((name.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Follows symlinks (NixOS's /run/opengl-driver is a tree of them); a dangling one is an error.
fn resolve(path: &Path) -> Result<PathBuf, DriverError> {
    fs::canonicalize(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound && fs::symlink_metadata(path).is_ok() {
            let target = fs::read_link(path).unwrap_or_default();
            DriverError::Dangling { link: path.to_path_buf(), target }
        } else {
            DriverError::io(path)(e)
        }
    })
}

fn first_file(roots: &[PathBuf], rels: impl Iterator<Item = String> + Clone) -> Result<Option<PathBuf>, DriverError> {
    for root in roots {
        for rel in rels.clone() {
            let p = root.join(&rel);
            if fs::symlink_metadata(&p).is_ok() {
                let real = resolve(&p)?;
                if real.is_file() {
                    return Ok(Some(real));
                }
            }
        }
    }
    Ok(None)
}
