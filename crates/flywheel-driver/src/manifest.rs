//! `manifest.json` of a collected driver tree: the version, the capabilities, and every file
//! with its size and sha256 (and every symlink with its target), so a tree, or an image built
//! from one, can be checked against what was collected.

use std::fs;
use std::io::Read;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::elf::Arch;
use crate::version::DriverVersion;
use crate::DriverError;

/// The manifest's name at the root of a collected tree.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Where an image built with the tree as a `driver` layer holds the manifest, so the running
/// container can be checked (`flywheel driver check --tree /`).
pub const IN_IMAGE_MANIFEST: &str = "usr/share/flywheel/driver/manifest.json";
/// Version of the manifest's layout.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub flywheel_driver_manifest: u32,
    pub version: DriverVersion,
    pub architecture: Arch,
    pub capabilities: Vec<String>,
    /// The folder holding the libraries in the image (absolute).
    pub library_dir: String,
    /// Every file and symlink of the tree but the manifest, sorted by path.
    pub files: Vec<ManifestEntry>,
}

// No deny_unknown_fields here: serde cannot combine it with the flattened `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestEntry {
    /// Relative to the tree's root, which is the image's `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: EntryKind,
    /// What the entry is for (`library`, `soname link`, `binary`, `firmware`, `icd`, ...).
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum EntryKind {
    File { size: u64, sha256: String, mode: String },
    Symlink { target: String },
}

/// What a checker found at a manifest entry's path (in a tree, or in an image's layers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    File { size: u64, sha256: String },
    Symlink { target: String },
    Other,
}

impl Manifest {
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Manifest, DriverError> {
        let m: Manifest = serde_json::from_slice(bytes)
            .map_err(|e| DriverError::BadManifest { path: origin.to_string(), why: e.to_string() })?;
        if m.flywheel_driver_manifest != MANIFEST_VERSION {
            return Err(DriverError::BadManifest {
                path: origin.to_string(),
                why: format!("layout version {} (this flywheel reads {MANIFEST_VERSION})", m.flywheel_driver_manifest),
            });
        }
        Ok(m)
    }

    pub fn read(path: &Path) -> Result<Manifest, DriverError> {
        let bytes = fs::read(path).map_err(DriverError::io(path))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Canonical bytes: sorted keys, two-space indent, a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).unwrap_or_default();
        let mut out = serde_json::to_vec_pretty(&value).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Compares every entry with what `lookup` finds at its path; the first difference is
    /// the error, named by path.
    pub fn verify(&self, origin: &str, lookup: impl Fn(&str) -> Option<Found> + Sync) -> Result<(), DriverError> {
        self.files.par_iter().try_for_each(|e| {
            let wrong = |why: String| DriverError::Tampered { origin: origin.to_string(), path: e.path.clone(), why };
            match (&e.kind, lookup(&e.path)) {
                (_, None) => Err(wrong("missing".into())),
                (EntryKind::File { size, sha256, .. }, Some(Found::File { size: s, sha256: h })) => {
                    if *size != s {
                        Err(wrong(format!("{s} bytes, the manifest says {size}")))
                    } else if *sha256 != h {
                        Err(wrong(format!("sha256 {h}, the manifest says {sha256}")))
                    } else {
                        Ok(())
                    }
                }
                (EntryKind::Symlink { target }, Some(Found::Symlink { target: t })) if *target == t => Ok(()),
                (EntryKind::Symlink { target }, Some(Found::Symlink { target: t })) => {
                    Err(wrong(format!("links to {t}, the manifest says {target}")))
                }
                (EntryKind::File { .. }, Some(_)) => Err(wrong("is not a regular file".into())),
                (EntryKind::Symlink { .. }, Some(_)) => Err(wrong("is not a symlink".into())),
            }
        })?;
        // The libraries must carry the version the manifest claims.
        for e in &self.files {
            if e.role == "library" {
                let name = e.path.rsplit('/').next().unwrap_or(&e.path);
                if !name.ends_with(&format!(".so.{}", self.version)) {
                    return Err(DriverError::Tampered {
                        origin: origin.to_string(),
                        path: e.path.clone(),
                        why: format!("is not a {} library", self.version),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the tree at `root` (a collected tree, or an image's root filesystem).
    pub fn verify_tree(&self, root: &Path) -> Result<(), DriverError> {
        self.verify(&root.display().to_string(), |p| found_on_disk(&root.join(p)))
    }
}

pub fn found_on_disk(path: &Path) -> Option<Found> {
    let meta = fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path).ok()?;
        return Some(Found::Symlink { target: target.to_string_lossy().into_owned() });
    }
    if !meta.is_file() {
        return Some(Found::Other);
    }
    let (size, sha256) = hash_file(path).ok()?;
    Some(Found::File { size, sha256 })
}

pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The manifest of a tree: at its root (a collected tree) or at [`IN_IMAGE_MANIFEST`] (an
/// image's root filesystem, e.g. `/` inside a runner container).
pub fn find_in_tree(root: &Path) -> Option<std::path::PathBuf> {
    [MANIFEST_NAME, IN_IMAGE_MANIFEST].iter().map(|p| root.join(p)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry() -> impl Strategy<Value = ManifestEntry> {
        let file = (any::<u64>(), "[0-9a-f]{64}", "0[0-7]{3}").prop_map(|(size, sha256, mode)| EntryKind::File {
            size,
            sha256,
            mode,
        });
        let link = "[a-z0-9._/-]{1,40}".prop_map(|target| EntryKind::Symlink { target });
        (
            "[a-z0-9_.-]{1,20}(/[a-z0-9_.-]{1,20}){0,3}",
            prop_oneof![file, link],
            "[a-z ]{1,12}",
            proptest::option::of("utility|compute"),
        )
            .prop_map(|(path, kind, role, capability)| ManifestEntry { path, kind, role, capability })
    }

    proptest! {
        #[test]
        fn manifests_round_trip_through_their_canonical_bytes(files in proptest::collection::vec(entry(), 0..20)) {
            let m = Manifest {
                flywheel_driver_manifest: MANIFEST_VERSION,
                version: "580.159.04".parse().expect("version"),
                architecture: Arch::Amd64,
                capabilities: vec!["utility".into()],
                library_dir: "/usr/lib/x86_64-linux-gnu".into(),
                files,
            };
            let bytes = m.to_bytes();
            prop_assert_eq!(Manifest::from_bytes(&bytes, "test").expect("parses"), m.clone());
            prop_assert_eq!(Manifest::from_bytes(&bytes, "test").expect("parses").to_bytes(), bytes);
        }
    }

    #[test]
    fn verify_names_what_differs() {
        let m = Manifest {
            flywheel_driver_manifest: MANIFEST_VERSION,
            version: "580.159.04".parse().expect("version"),
            architecture: Arch::Amd64,
            capabilities: vec!["utility".into()],
            library_dir: "/usr/lib/x86_64-linux-gnu".into(),
            files: vec![ManifestEntry {
                path: "usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04".into(),
                kind: EntryKind::File { size: 3, sha256: "ab".repeat(32), mode: "0755".into() },
                role: "library".into(),
                capability: Some("utility".into()),
            }],
        };
        let same = |_: &str| Some(Found::File { size: 3, sha256: "ab".repeat(32) });
        assert!(m.verify("t", same).is_ok());
        let bigger = |_: &str| Some(Found::File { size: 4, sha256: "ab".repeat(32) });
        let e = m.verify("t", bigger).expect_err("size").to_string();
        assert!(e.contains("4 bytes") && e.contains("libnvidia-ml"), "{e}");
        let link = |_: &str| Some(Found::Symlink { target: "x".into() });
        assert!(m.verify("t", link).expect_err("type").to_string().contains("not a regular file"));
        assert!(m.verify("t", |_| None).expect_err("missing").to_string().contains("missing"));
        let mut other = m.clone();
        other.version = "575.57.08".parse().expect("version");
        assert!(other.verify("t", same).expect_err("version").to_string().contains("not a 575.57.08 library"));
    }
}
