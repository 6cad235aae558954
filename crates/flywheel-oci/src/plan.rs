//! From a spec to a plan: the image's closure (read from the spec's graph or the Nix
//! database, cut down to what the roots reach) and its layers in order: the computed closure
//! layers, the pinned store-path layers, then the directory layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use flywheel_nix::store_db::StoreDb;
use flywheel_nix::{StoreDir, StorePath};

use crate::closure::{Closure, ClosureError};
use crate::layering::{self, Strategy};
use crate::spec::{normalize_prefix, ImageSpec, NIX_DB_LAYER};
use crate::tar::{entries, Entry, Modes};
use crate::ImageError;

/// The closure the image holds, and which of its objects the image is of (its closure roots
/// and pinned paths).
pub struct ResolvedClosure {
    pub closure: Closure,
    pub roots: Vec<usize>,
}

#[derive(Clone, Debug)]
pub enum LayerSource {
    /// Store objects (indexes into the closure), placed under the store directory.
    Store(Vec<usize>),
    /// A directory tree, already gathered and checked.
    Directory { source: PathBuf, prefix: String, entries: Vec<Entry> },
    /// Entries flywheel writes itself (the Nix database layer), sorted.
    Generated { entries: Vec<Entry> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    /// Computed by the layering strategy.
    Closure,
    /// Store paths pinned by the spec.
    Pinned,
    Directory,
    /// A collected NVIDIA driver tree (a directory layer that labels the image).
    Driver,
    /// The Nix database's directories and the registration of the image's store paths.
    #[serde(rename = "nix-db")]
    NixDb,
}

impl std::fmt::Display for LayerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LayerKind::Closure => "closure",
            LayerKind::Pinned => "pinned",
            LayerKind::Directory => "directory",
            LayerKind::Driver => "driver",
            LayerKind::NixDb => "nix-db",
        })
    }
}

#[derive(Clone, Debug)]
pub struct PlannedLayer {
    pub name: String,
    pub kind: LayerKind,
    pub source: LayerSource,
    /// NAR bytes (store layers) or file bytes (directory layers): an estimate of the tar size.
    pub bytes: u64,
}

fn bad_path(p: &str, store_dir: &StoreDir, why: String) -> ClosureError {
    ClosureError::BadPath { path: p.to_string(), store_dir: store_dir.as_str().to_string(), why }
}

fn parse_store_path(p: &str, store_dir: &StoreDir) -> Result<StorePath, ClosureError> {
    store_dir.parse_path(p.as_bytes()).map_err(|e| bad_path(p, store_dir, e.to_string()))
}

/// The store path a directory layer's source lies in, if it lies in the store.
fn store_path_above(source: &str, store_dir: &StoreDir) -> Option<StorePath> {
    let rest = source.strip_prefix(store_dir.as_str())?.strip_prefix('/')?;
    let top = rest.split('/').next()?;
    StorePath::from_basename(top.as_bytes()).ok()
}

/// Reads the closure: the closure roots, the pinned paths, and what directory layers taken
/// from the store refer to (a driver tree built by Nix needs the libraries its RPATHs name).
pub fn resolve_closure(
    spec: &ImageSpec,
    db: Option<&StoreDb>,
    store_dir: &StoreDir,
) -> Result<ResolvedClosure, ImageError> {
    let mut wanted: Vec<StorePath> =
        spec.closure_roots.iter().map(|p| parse_store_path(p, store_dir)).collect::<Result<_, _>>()?;
    for l in &spec.layers {
        for p in &l.paths {
            wanted.push(parse_store_path(p, store_dir)?);
        }
    }
    let sources: Vec<StorePath> =
        spec.layers.iter().filter_map(|l| l.tree()).filter_map(|s| store_path_above(s, store_dir)).collect();

    if wanted.is_empty() && sources.is_empty() {
        // Directory layers only: nothing to read from a store.
        return Ok(ResolvedClosure {
            closure: Closure { store_dir: store_dir.clone(), objects: Vec::new() },
            roots: Vec::new(),
        });
    }
    let full = match (&spec.closure_graph, db) {
        (Some(graph), _) => Closure::from_graph(store_dir.clone(), graph.clone())?,
        (None, Some(db)) => {
            let mut all = wanted.clone();
            all.extend(sources.iter().cloned());
            all.sort_by_key(|p| p.to_basename());
            all.dedup();
            Closure::from_store(db, &all)?
        }
        (None, None) => return Err(ImageError::NoStore),
    };
    let mut start: Vec<usize> = wanted.iter().map(|p| full.index_of(p)).collect::<Result<_, _>>()?;
    for s in &sources {
        // The tree is copied out of its store path: what it refers to must come along.
        start.extend(full.objects[full.index_of(s)?].references.iter().copied());
    }
    let closure = full.restrict(&full.reachable(&start));
    // What the image is of: its closure roots and pinned paths (the SBOM describes them).
    let mut root_idx: Vec<usize> = wanted.iter().map(|p| closure.index_of(p)).collect::<Result<_, _>>()?;
    root_idx.sort_unstable();
    root_idx.dedup();
    Ok(ResolvedClosure { closure, roots: root_idx })
}

/// The layers of the image, in order.
pub fn plan_layers(
    spec: &ImageSpec,
    closure: &Closure,
    real_store: &Path,
    max_layers: usize,
    strategy: Strategy,
) -> Result<Vec<PlannedLayer>, ImageError> {
    let store_dir = &closure.store_dir;
    let mut pinned_by: HashMap<usize, &str> = HashMap::new();
    let mut excluded = vec![false; closure.len()];
    let mut pinned = Vec::new();
    let mut directories = Vec::new();
    for l in &spec.layers {
        if let Some(source) = &l.source {
            directories.push(directory_layer(l.name.as_str(), source, l, store_dir, real_store)?);
            continue;
        }
        if let Some(tree) = &l.driver {
            directories.push(driver_layer(l.name.as_str(), tree, l, store_dir, real_store)?);
            continue;
        }
        let mut members = Vec::new();
        for p in &l.paths {
            let i = closure.index_of(&parse_store_path(p, store_dir)?)?;
            if let Some(first) = pinned_by.insert(i, &l.name) {
                return Err(ImageError::PathInTwoLayers {
                    path: closure.render(i),
                    first: first.to_string(),
                    second: l.name.clone(),
                });
            }
            excluded[i] = true;
            members.push(i);
        }
        members.sort_unstable();
        let bytes = members.iter().map(|&i| closure.objects[i].nar_size).sum();
        pinned.push(PlannedLayer {
            name: l.name.clone(),
            kind: LayerKind::Pinned,
            source: LayerSource::Store(members),
            bytes,
        });
    }
    let named: Vec<(&str, &[Entry])> = directories
        .iter()
        .filter_map(|d: &PlannedLayer| match &d.source {
            LayerSource::Directory { entries, .. } => Some((d.name.as_str(), entries.as_slice())),
            LayerSource::Store(_) | LayerSource::Generated { .. } => None,
        })
        .collect();
    entries::check_collisions(&named)?;
    let nix_db = if spec.nix_registration() { Some(nix_db_layer(closure, spec.store_owner())?) } else { None };

    let fixed = pinned.len() + directories.len() + usize::from(nix_db.is_some());
    let left = excluded.iter().filter(|&&e| !e).count();
    if left > 0 && fixed >= max_layers {
        return Err(ImageError::NoRoomForClosure { max_layers, fixed });
    }
    let computed = layering::plan(closure, &excluded, max_layers - fixed, strategy);
    let mut layers: Vec<PlannedLayer> = computed
        .into_iter()
        .map(|members| {
            let largest = members
                .iter()
                .copied()
                .max_by(|&a, &b| closure.objects[a].nar_size.cmp(&closure.objects[b].nar_size).then_with(|| b.cmp(&a)))
                .unwrap_or(members[0]);
            let name = match members.len() {
                1 => closure.objects[largest].path.name().to_string(),
                n => format!("{} and {} more", closure.objects[largest].path.name(), n - 1),
            };
            let bytes = members.iter().map(|&i| closure.objects[i].nar_size).sum();
            PlannedLayer { name, kind: LayerKind::Closure, source: LayerSource::Store(members), bytes }
        })
        .collect();
    layers.extend(pinned);
    layers.extend(directories.into_iter().filter(|d| match &d.source {
        LayerSource::Directory { entries, .. } if entries.is_empty() => {
            tracing::warn!("layer {} is empty; leaving it out", d.name);
            false
        }
        _ => true,
    }));
    layers.extend(nix_db);
    Ok(layers)
}

/// Where the registration of the image's store paths lies in the image.
pub const REGISTRATION_PATH: &str = "nix/.flywheel-registration";

/// The `nix-db` layer: the state directories single-user Nix writes to, and every store path
/// of the image in `nix-store --load-db` format, all owned by `owner` (0:0 without one).
pub fn nix_db_layer(closure: &Closure, owner: Option<(u32, u32)>) -> Result<PlannedLayer, ImageError> {
    let (uid, gid) = owner.unwrap_or((0, 0));
    let mut list = entries::parents(b"nix/var/nix", crate::tar::DIR_MODE);
    for d in ["db", "gcroots", "profiles", "temproots"] {
        list.push(Entry::dir(format!("nix/var/nix/{d}").as_bytes(), crate::tar::DIR_MODE));
    }
    let text = closure.load_db_text().into_bytes();
    let bytes = text.len() as u64;
    list.push(Entry {
        path: REGISTRATION_PATH.as_bytes().to_vec(),
        kind: entries::EntryKind::Data { bytes: text },
        mode: 0o444,
        uid: 0,
        gid: 0,
    });
    for e in &mut list {
        e.uid = uid;
        e.gid = gid;
    }
    entries::sort_entries(&mut list, NIX_DB_LAYER)?;
    Ok(PlannedLayer {
        name: NIX_DB_LAYER.to_string(),
        kind: LayerKind::NixDb,
        source: LayerSource::Generated { entries: list },
        bytes,
    })
}

/// A collected driver tree: checked against its manifest, placed at `/`, and its manifest moved
/// to where a running container finds it.
fn driver_layer(
    name: &str,
    tree: &str,
    spec: &crate::spec::LayerSpec,
    store_dir: &StoreDir,
    real_store: &Path,
) -> Result<PlannedLayer, ImageError> {
    use flywheel_driver::manifest::{Manifest, IN_IMAGE_MANIFEST, MANIFEST_NAME};
    let mut layer = directory_layer(name, tree, spec, store_dir, real_store)?;
    let driver_error =
        |e: flywheel_driver::DriverError| ImageError::Driver { layer: name.to_string(), source: Box::new(e) };
    let LayerSource::Directory { source, entries: list, .. } = &mut layer.source else {
        return Err(ImageError::Internal("a driver layer is a directory layer".into()));
    };
    let manifest = Manifest::read(&source.join(MANIFEST_NAME)).map_err(driver_error)?;
    manifest.verify_tree(source).map_err(driver_error)?;
    let Some(entry) = list.iter_mut().find(|e| e.path == MANIFEST_NAME.as_bytes()) else {
        return Err(ImageError::Internal("the manifest vanished from the driver tree".into()));
    };
    entry.path = IN_IMAGE_MANIFEST.as_bytes().to_vec();
    let parent = IN_IMAGE_MANIFEST.rsplit_once('/').map_or("", |(p, _)| p);
    list.extend(entries::parents(parent.as_bytes(), crate::tar::DIR_MODE));
    entries::sort_entries(list, name)?;
    layer.kind = LayerKind::Driver;
    Ok(layer)
}

fn directory_layer(
    name: &str,
    source: &str,
    spec: &crate::spec::LayerSpec,
    store_dir: &StoreDir,
    real_store: &Path,
) -> Result<PlannedLayer, ImageError> {
    // In a chroot store, store paths live under its root.
    let on_disk = match source.strip_prefix(store_dir.as_str()).and_then(|r| r.strip_prefix('/')) {
        Some(rest) => real_store.join(rest),
        None => PathBuf::from(source),
    };
    let source_error =
        |e: std::io::Error| ImageError::Source { layer: name.to_string(), path: on_disk.clone(), source: e };
    // The source itself may be a symlink (./result); nothing below it is followed.
    let real = std::fs::canonicalize(&on_disk).map_err(source_error)?;
    if !real.is_dir() {
        return Err(source_error(std::io::Error::other("not a directory")));
    }
    let prefix_str = spec.prefix.clone().unwrap_or_else(|| "/".to_string());
    let prefix = normalize_prefix(&prefix_str)
        .map_err(|e| ImageError::Spec(crate::spec::SpecError(format!("layer {name:?}: {e}"))))?;
    let mut list = entries::parents(&prefix, crate::tar::DIR_MODE);
    list.pop(); // the prefix directory itself comes from the tree
    entries::gather(&real, &prefix, Modes::OnDisk, &mut list)?;
    entries::apply_overrides(&mut list, &spec.overrides, name)?;
    entries::sort_entries(&mut list, name)?;
    entries::check_symlink_loops(&list, name)?;
    let bytes = list
        .iter()
        .map(|e| match e.kind {
            entries::EntryKind::File { size, .. } => size,
            _ => 0,
        })
        .sum();
    Ok(PlannedLayer {
        name: name.to_string(),
        kind: LayerKind::Directory,
        source: LayerSource::Directory { source: real, prefix: prefix_str, entries: list },
        bytes,
    })
}
