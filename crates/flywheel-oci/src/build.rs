//! Building an image: plan the layers, write them (in parallel, largest first, reusing the
//! layer cache), then the SBOM, config, manifest, SBOM artifact and index, and commit the
//! layout or archive to the output in one step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::closure::Closure;
use crate::compress::Compression;
use crate::digest::Digest;
use crate::layer::{self, LayerBlob};
use crate::layer_cache::LayerCache;
use crate::layout::{Format, LayoutWriter};
use crate::oci::{self, annotation, media_type, Descriptor, History, ImageConfig, Index, Manifest, Platform, RootFs};
use crate::plan::{LayerKind, LayerSource, PlannedLayer};
use crate::spec::{format_created, ImageSpec};
use crate::tar::{self, entries, Entry, Modes};
use crate::ImageError;
use flywheel_nix::human_bytes;

/// Labels flywheel sets on every image (they win over the spec's labels of the same name).
pub const LABEL_COMPRESSION: &str = "dev.flywheel.image.compression";
pub const LABEL_SBOM: &str = "dev.flywheel.image.sbom.digest";
pub const LABEL_TAR_POLICY: &str = "dev.flywheel.image.tar-policy";

/// How to build (what to build is the spec).
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Threads for tar, hashing and compression (0: one per CPU).
    pub threads: usize,
    pub format: Format,
    pub layer_cache: Option<PathBuf>,
    /// Also write the SBOM here.
    pub sbom_out: Option<PathBuf>,
    /// Where the store's files are on disk (the store directory itself, or inside a chroot store).
    pub real_store: PathBuf,
    /// SOURCE_DATE_EPOCH from the environment, used when the spec sets none.
    pub source_date_epoch: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerReport {
    pub name: String,
    pub kind: LayerKind,
    /// Store paths (store layers) or the source directory and prefix (directory layers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// NAR bytes of the store paths, or file bytes of a directory layer.
    pub content_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
    /// Taken from the layer cache rather than written.
    pub cached: bool,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    pub out: String,
    pub format: String,
    pub tag: String,
    pub compression: String,
    pub layering: String,
    pub store_paths: usize,
    pub nar_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbom: Option<Descriptor>,
    pub layers: Vec<LayerReport>,
    pub layers_written: usize,
    pub layers_cached: usize,
    pub seconds: f64,
}

/// The layers and totals of a plan, without building anything (`--dry-run`).
pub fn plan_report(
    spec: &ImageSpec,
    closure: &Closure,
    layers: &[PlannedLayer],
    out: &Path,
    format: Format,
) -> Result<BuildReport, ImageError> {
    Ok(BuildReport {
        out: out.display().to_string(),
        format: format.to_string(),
        tag: spec.tag.clone(),
        compression: spec.compression()?.to_string(),
        layering: spec.layering.unwrap_or_default().to_string(),
        store_paths: closure.len(),
        nar_bytes: closure.objects.iter().map(|o| o.nar_size).sum(),
        manifest: None,
        config: None,
        sbom: None,
        layers: layers.iter().map(|l| layer_report(closure, l, None)).collect(),
        layers_written: 0,
        layers_cached: 0,
        seconds: 0.0,
    })
}

fn layer_report(closure: &Closure, l: &PlannedLayer, built: Option<(LayerBlob, bool)>) -> LayerReport {
    let (paths, source, prefix) = match &l.source {
        LayerSource::Store(members) => (members.iter().map(|&i| closure.render(i)).collect(), None, None),
        LayerSource::Directory { source, prefix, .. } => {
            (Vec::new(), Some(source.display().to_string()), Some(prefix.clone()))
        }
        LayerSource::Generated { .. } => (Vec::new(), None, Some("/".to_string())),
    };
    LayerReport {
        name: l.name.clone(),
        kind: l.kind,
        paths,
        source,
        prefix,
        content_bytes: l.bytes,
        digest: built.map(|b| b.0.digest),
        size: built.map(|b| b.0.size),
        diff_id: built.map(|b| b.0.diff_id),
        uncompressed_size: built.map(|b| b.0.uncompressed_size),
        cached: built.is_some_and(|b| b.1),
    }
}

pub fn build(
    spec: &ImageSpec,
    closure: &Closure,
    roots: &[usize],
    layers: &[PlannedLayer],
    opts: &BuildOptions,
    out: &Path,
) -> Result<BuildReport, ImageError> {
    let started = Instant::now();
    let compression = spec.compression()?;
    let mtime = spec.source_date_epoch.or(opts.source_date_epoch).unwrap_or(1);
    let created = spec.created.clone().unwrap_or_else(|| format_created(mtime));
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    };
    let cache = match &opts.layer_cache {
        Some(dir) => match LayerCache::open(dir) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("layer cache {} unusable ({e}); building every layer", dir.display());
                None
            }
        },
        None => None,
    };

    let writer = LayoutWriter::new(out)?;
    let default_store = PathBuf::from(closure.store_dir.as_str());
    let real_store = if opts.real_store.as_os_str().is_empty() { &default_store } else { &opts.real_store };
    let ctx = LayerContext {
        closure,
        compression,
        mtime,
        cache: cache.as_ref(),
        blobs: writer.blobs(),
        real_store,
        store_owner: spec.store_owner(),
    };
    let built = write_layers(layers, threads, ctx)?;

    // SBOM first: its digest goes into the config's labels.
    let image_name = spec.name.clone().unwrap_or_else(|| "image".to_string());
    let sbom = crate::sbom::spdx(closure, roots, &image_name, &created);
    let (sbom_desc, sbom_bytes) = writer.put_json(media_type::SPDX, &sbom)?;

    let mut runtime = spec.config.clone();
    runtime.labels.insert(LABEL_COMPRESSION.to_string(), compression.describe());
    runtime.labels.insert(LABEL_SBOM.to_string(), sbom_desc.digest.to_string());
    runtime.labels.insert(LABEL_TAR_POLICY.to_string(), tar::POLICY_VERSION.to_string());
    runtime.labels.extend(driver_labels(layers)?);
    let config = ImageConfig {
        created: Some(created.clone()),
        architecture: spec.architecture.clone(),
        os: spec.os.clone(),
        config: runtime,
        rootfs: RootFs { kind: "layers".to_string(), diff_ids: built.iter().map(|(b, _)| b.diff_id).collect() },
        history: layers
            .iter()
            .map(|l| History {
                created: Some(created.clone()),
                created_by: Some(format!("flywheel image build: {} layer {}", l.kind, l.name)),
                comment: match &l.source {
                    LayerSource::Store(m) => Some(format!("{} store paths", m.len())),
                    LayerSource::Directory { prefix, .. } => Some(format!("directory at {prefix}")),
                    LayerSource::Generated { .. } => Some("Nix database".to_string()),
                },
            })
            .collect(),
    };
    let (config_desc, _) = writer.put_json(media_type::CONFIG, &config)?;
    let mut annotations = spec.annotations.clone();
    annotations.entry(annotation::CREATED.to_string()).or_insert_with(|| created.clone());
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::MANIFEST.to_string()),
        artifact_type: None,
        config: config_desc.clone(),
        layers: built.iter().map(|(b, _)| Descriptor::new(compression.media_type(), b.digest, b.size)).collect(),
        subject: None,
        annotations,
    };
    let (manifest_desc, _) = writer.put_json(media_type::MANIFEST, &manifest)?;

    // The SBOM as an OCI 1.1 artifact whose subject is the image.
    let empty = writer.put_bytes(media_type::EMPTY, b"{}")?;
    let mut sbom_layer = sbom_desc.clone();
    sbom_layer.annotations.insert(annotation::TITLE.to_string(), "sbom.spdx.json".to_string());
    let artifact = Manifest {
        schema_version: 2,
        media_type: Some(media_type::MANIFEST.to_string()),
        artifact_type: Some(media_type::SPDX.to_string()),
        config: empty,
        layers: vec![sbom_layer],
        subject: Some(manifest_desc.clone()),
        annotations: BTreeMap::from([(annotation::CREATED.to_string(), created.clone())]),
    };
    let (artifact_desc, _) = writer.put_json(media_type::MANIFEST, &artifact)?;

    let mut entry = manifest_desc.clone();
    entry.annotations.insert(annotation::REF_NAME.to_string(), spec.tag.clone());
    entry.annotations.insert(oci::SBOM_ANNOTATION.to_string(), artifact_desc.digest.to_string());
    entry.platform = Some(Platform { architecture: spec.architecture.clone(), os: spec.os.clone() });
    writer.write_index(&Index {
        schema_version: 2,
        media_type: Some(media_type::INDEX.to_string()),
        manifests: vec![entry],
        annotations: BTreeMap::new(),
    })?;

    match opts.format {
        Format::Oci => writer.commit_dir(out)?,
        Format::OciArchive => writer.commit_archive(out, mtime)?,
        Format::DockerArchive => {
            let blob = |d: &Digest| format!("blobs/sha256/{}", d.hex());
            let docker = json!([{
                "Config": blob(&config_desc.digest),
                "RepoTags": [format!("{image_name}:{}", spec.tag)],
                "Layers": built.iter().map(|(b, _)| blob(&b.digest)).collect::<Vec<_>>(),
            }]);
            let bytes = crate::json::canonical(&docker).map_err(|e| ImageError::Internal(e.to_string()))?;
            writer.write_file("manifest.json", &bytes)?;
            writer.commit_archive(out, mtime)?
        }
    }
    if let Some(path) = &opts.sbom_out {
        crate::layout::write_atomic(path, &sbom_bytes)
            .map_err(|e| crate::layout::OutputError::Io { path: path.clone(), source: e })?;
    }

    let reports: Vec<LayerReport> =
        layers.iter().zip(&built).map(|(l, b)| layer_report(closure, l, Some(*b))).collect();
    let cached = built.iter().filter(|b| b.1).count();
    Ok(BuildReport {
        out: out.display().to_string(),
        format: opts.format.to_string(),
        tag: spec.tag.clone(),
        compression: compression.to_string(),
        layering: spec.layering.unwrap_or_default().to_string(),
        store_paths: closure.len(),
        nar_bytes: closure.objects.iter().map(|o| o.nar_size).sum(),
        manifest: Some(manifest_desc),
        config: Some(config_desc),
        sbom: Some(artifact_desc),
        layers_written: built.len() - cached,
        layers_cached: cached,
        layers: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Writes every layer into `blobs` and returns them in plan order, each with whether it came
/// from the cache. First every layer is looked up in the cache (linked when found); then the
/// rest are written, largest first, `threads` at a time, and stored in the cache.
fn write_layers(
    layers: &[PlannedLayer],
    threads: usize,
    ctx: LayerContext<'_>,
) -> Result<Vec<(LayerBlob, bool)>, ImageError> {
    let ctx = &ctx;
    let total = layers.len();
    let done = AtomicUsize::new(0);
    let all: Vec<usize> = (0..total).collect();
    // Phase 1: the cache. A miss yields its key (None without a cache) for phase 2.
    let looked_up = in_parallel(&all, threads, |i| lookup(ctx, &layers[i]))?;
    let mut results: Vec<Option<(LayerBlob, bool)>> = vec![None; total];
    let mut misses: Vec<(usize, Option<String>)> = Vec::new();
    for (i, found) in all.iter().zip(looked_up) {
        match found {
            Lookup::Hit(blob) => {
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    "layer {n}/{total} {}: reused {} from the layer cache",
                    layers[*i].name,
                    human_bytes(blob.size)
                );
                results[*i] = Some((blob, true));
            }
            Lookup::Miss(key) => misses.push((*i, key)),
        }
    }
    // Phase 2: the misses, largest first. zstd's frames do not depend on its worker count, so
    // each layer takes its share of the threads as it starts: a layer written alone (a rebuild
    // after one change) takes all of them, layers written side by side share them.
    misses.sort_by(|a, b| layers[b.0].bytes.cmp(&layers[a.0].bytes).then(a.0.cmp(&b.0)));
    let writing = AtomicUsize::new(0);
    let order: Vec<usize> = (0..misses.len()).collect();
    let written = in_parallel(&order, threads, |k| {
        let (i, key) = &misses[k];
        let l = &layers[*i];
        let now = writing.fetch_add(1, Ordering::Relaxed) + 1;
        let zstd_workers = u32::try_from((threads / now).max(1)).unwrap_or(1);
        let started = Instant::now();
        let blob = write_new(ctx, l, key.as_deref(), zstd_workers);
        writing.fetch_sub(1, Ordering::Relaxed);
        let blob = blob?;
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(
            "layer {n}/{total} {}: {} -> {} in {:.2} s",
            l.name,
            human_bytes(blob.uncompressed_size),
            human_bytes(blob.size),
            started.elapsed().as_secs_f64()
        );
        Ok(blob)
    })?;
    for ((i, _), blob) in misses.iter().zip(written) {
        results[*i] = Some((blob, false));
    }
    results.into_iter().map(|r| r.ok_or_else(|| ImageError::Internal("a layer was not written".into()))).collect()
}

/// Runs `f` on each of `items` with up to `threads` threads, taking them in order; returns the
/// results in the order of `items`, or the first error (the others stop taking new items).
fn in_parallel<T: Send>(
    items: &[usize],
    threads: usize,
    f: impl Fn(usize) -> Result<T, ImageError> + Sync,
) -> Result<Vec<T>, ImageError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T, ImageError>>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(items.len()).max(1) {
            scope.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&item) = items.get(k) else { break };
                let r = f(item);
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Ok(mut all) = results.lock() {
                    all[k] = Some(r);
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| ImageError::Internal("a layer thread panicked".into()))?;
    let mut out = Vec::with_capacity(items.len());
    let mut first_error = None;
    for r in results {
        match r {
            Some(Ok(v)) => out.push(v),
            Some(Err(e)) => {
                first_error.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None if out.len() == items.len() => Ok(out),
        None => Err(ImageError::Internal("a layer was not written".into())),
    }
}

/// What every layer of one build shares.
struct LayerContext<'a> {
    closure: &'a Closure,
    compression: Compression,
    mtime: u64,
    cache: Option<&'a LayerCache>,
    blobs: &'a Path,
    real_store: &'a Path,
    /// `nixStore.owner`: the owner of every entry of the store layers.
    store_owner: Option<(u32, u32)>,
}

enum Lookup {
    Hit(LayerBlob),
    /// Not in the cache; the key to store it under (None: no cache).
    Miss(Option<String>),
}

fn lookup(ctx: &LayerContext<'_>, l: &PlannedLayer) -> Result<Lookup, ImageError> {
    let Some(cache) = ctx.cache else { return Ok(Lookup::Miss(None)) };
    let key = cache_key(ctx.closure, l, ctx.compression, ctx.mtime, ctx.store_owner)?;
    Ok(match cache.get(&key, ctx.blobs) {
        Some(blob) => Lookup::Hit(blob),
        None => Lookup::Miss(Some(key)),
    })
}

fn write_new(
    ctx: &LayerContext<'_>,
    l: &PlannedLayer,
    key: Option<&str>,
    zstd_workers: u32,
) -> Result<LayerBlob, ImageError> {
    let entries = layer_entries(ctx.closure, l, ctx.real_store, ctx.store_owner)?;
    let blob = layer::write_blob(&entries, ctx.mtime, ctx.compression, zstd_workers, ctx.blobs)?;
    if let (Some(cache), Some(key)) = (ctx.cache, key) {
        cache.put(key, &blob, ctx.blobs);
    }
    Ok(blob)
}

/// The labels that record the driver a driver layer holds (checked by `flywheel driver check`).
fn driver_labels(layers: &[PlannedLayer]) -> Result<Vec<(String, String)>, ImageError> {
    use flywheel_driver::manifest::{Manifest, IN_IMAGE_MANIFEST};
    let mut labels = Vec::new();
    for l in layers.iter().filter(|l| l.kind == LayerKind::Driver) {
        let LayerSource::Directory { entries, .. } = &l.source else { continue };
        let source = entries.iter().find_map(|e| match &e.kind {
            entries::EntryKind::File { source, .. } if e.path == IN_IMAGE_MANIFEST.as_bytes() => Some(source),
            _ => None,
        });
        let Some(source) = source else { continue };
        let bytes = std::fs::read(source).map_err(|e| ImageError::Source {
            layer: l.name.clone(),
            path: source.clone(),
            source: e,
        })?;
        let manifest = Manifest::from_bytes(&bytes, &source.display().to_string())
            .map_err(|e| ImageError::Driver { layer: l.name.clone(), source: Box::new(e) })?;
        labels.push((flywheel_driver::LABEL_VERSION.to_string(), manifest.version.to_string()));
        labels.push((flywheel_driver::LABEL_CAPABILITIES.to_string(), manifest.capabilities.join(",")));
        labels.push((flywheel_driver::LABEL_MANIFEST.to_string(), Digest::of(&bytes).to_string()));
    }
    Ok(labels)
}

/// The sorted entries of a layer. Store layers start with the store directory's own entries;
/// with a store owner, every entry of a store layer is theirs.
pub(crate) fn layer_entries(
    closure: &Closure,
    l: &PlannedLayer,
    real_store: &Path,
    store_owner: Option<(u32, u32)>,
) -> Result<Vec<Entry>, ImageError> {
    match &l.source {
        LayerSource::Directory { entries, .. } | LayerSource::Generated { entries } => Ok(entries.clone()),
        LayerSource::Store(members) => {
            let store = closure.store_dir.as_str();
            let store_rel = store.trim_matches('/').as_bytes();
            let mut list = entries::parents(store_rel, tar::DIR_MODE);
            for &i in members {
                let base = closure.objects[i].path.to_basename();
                let on_disk = real_store.join(&base);
                entries::gather(&on_disk, &entries::store_entry_path(store, &base), Modes::Nar, &mut list)?;
            }
            entries::sort_entries(&mut list, &l.name)?;
            if let Some((uid, gid)) = store_owner {
                for e in &mut list {
                    e.uid = uid;
                    e.gid = gid;
                }
            }
            Ok(list)
        }
    }
}

pub(crate) fn cache_key(
    closure: &Closure,
    l: &PlannedLayer,
    compression: Compression,
    mtime: u64,
    store_owner: Option<(u32, u32)>,
) -> Result<String, ImageError> {
    let hex = |h: &[u8; 32]| Digest(*h).hex();
    let content = match &l.source {
        LayerSource::Store(members) => {
            let mut content = json!({
                "kind": "store",
                "storeDir": closure.store_dir.as_str(),
                "paths": members.iter().map(|&i| {
                    let o = &closure.objects[i];
                    json!([o.path.to_basename(), hex(&o.nar_hash)])
                }).collect::<Vec<_>>(),
            });
            // Only with an owner, so the keys of root-owned layers stay what they were.
            if let (Some((uid, gid)), Some(map)) = (store_owner, content.as_object_mut()) {
                map.insert("owner".to_string(), json!([uid, gid]));
            }
            content
        }
        LayerSource::Directory { source, prefix, entries } => {
            // Modes and owners are not in a NAR: the entry list covers them, the NAR hash the bytes.
            let tree = flywheel_nix::nar::hash_path(source)
                .map_err(|e| ImageError::Internal(format!("hashing {}: {e}", source.display())))?;
            json!({ "kind": "directory", "prefix": prefix, "tree": hex(&tree.sha256), "entries": entries_digest(entries) })
        }
        LayerSource::Generated { entries } => json!({ "kind": "generated", "entries": entries_digest(entries) }),
    };
    Ok(LayerCache::key(&json!({
        "policy": tar::POLICY_VERSION,
        "compression": compression.describe(),
        "mtime": mtime,
        "content": content,
    })))
}

/// The digest of what entries say about themselves: path, mode, owner, kind and size (and the
/// contents of generated files).
fn entries_digest(entries: &[Entry]) -> String {
    let meta: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            json!([
                String::from_utf8_lossy(&e.path),
                e.mode,
                e.uid,
                e.gid,
                match &e.kind {
                    entries::EntryKind::Dir => "d".to_string(),
                    entries::EntryKind::File { size, .. } => format!("f{size}"),
                    entries::EntryKind::Symlink { target } => format!("l{}", String::from_utf8_lossy(target)),
                    entries::EntryKind::Data { bytes } => format!("b{}", Digest::of(bytes).hex()),
                }
            ])
        })
        .collect();
    Digest::of(&crate::json::canonical(&meta).unwrap_or_default()).hex()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::closure::GraphEntry;
    use crate::plan::{nix_db_layer, REGISTRATION_PATH};
    use flywheel_nix::StoreDir;

    const A: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-a";
    const B: &str = "11bgd045z0d4icpbc2yyz4gx48ak44la-b";
    const H: &str = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

    fn fixture(dir: &Path) -> (Closure, PlannedLayer) {
        let a = dir.join(A);
        std::fs::create_dir_all(a.join("bin")).unwrap();
        std::fs::write(a.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("bin/tool", a.join("link")).unwrap();
        std::fs::write(dir.join(B), b"data").unwrap();
        let entry = |name: &str, refs: &[&str]| GraphEntry {
            path: format!("/nix/store/{name}"),
            nar_hash: H.to_string(),
            nar_size: 100,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
        };
        let closure = Closure::from_graph(StoreDir::default(), vec![entry(A, &[B, A]), entry(B, &[])]).unwrap();
        let layer = PlannedLayer {
            name: "store".into(),
            kind: LayerKind::Closure,
            source: LayerSource::Store(vec![0, 1]),
            bytes: 200,
        };
        (closure, layer)
    }

    #[test]
    fn the_store_owner_owns_every_store_entry_and_keys_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let (closure, layer) = fixture(tmp.path());
        let plain = layer_entries(&closure, &layer, tmp.path(), None).unwrap();
        let owned = layer_entries(&closure, &layer, tmp.path(), Some((1001, 1002))).unwrap();
        let paths: Vec<String> = owned.iter().map(|e| String::from_utf8_lossy(&e.path).into_owned()).collect();
        assert!(paths.starts_with(&["nix".to_string(), "nix/store".to_string()]), "{paths:?}");
        assert_eq!(plain.len(), owned.len());
        assert_eq!(plain.len(), 2 + 4 + 1);
        for (p, o) in plain.iter().zip(&owned) {
            assert_eq!((p.uid, p.gid), (0, 0), "{}", p.display_path());
            assert_eq!((o.uid, o.gid), (1001, 1002), "{}", o.display_path());
            assert_eq!((&p.path, &p.kind, p.mode), (&o.path, &o.kind, o.mode), "only the owner changes");
        }

        let compression = Compression::default();
        let without = cache_key(&closure, &layer, compression, 1, None).unwrap();
        let with = cache_key(&closure, &layer, compression, 1, Some((1001, 1002))).unwrap();
        let other = cache_key(&closure, &layer, compression, 1, Some((1001, 1001))).unwrap();
        assert_ne!(without, with);
        assert_ne!(with, other);
        // Without an owner the key is what it always was: cached layers stay valid.
        let before = LayerCache::key(&json!({
            "policy": tar::POLICY_VERSION,
            "compression": compression.describe(),
            "mtime": 1,
            "content": {
                "kind": "store",
                "storeDir": "/nix/store",
                "paths": [[A, Digest(closure.objects[0].nar_hash).hex()], [B, Digest(closure.objects[1].nar_hash).hex()]],
            },
        }));
        assert_eq!(without, before);
    }

    #[test]
    fn without_an_owner_the_layer_bytes_do_not_change() {
        let tmp = tempfile::tempdir().unwrap();
        let (closure, layer) = fixture(tmp.path());
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        let plain = layer_entries(&closure, &layer, tmp.path(), None).unwrap();
        // What a store layer was before owners existed: parents, gathered objects, sorted.
        let mut old = entries::parents(b"nix/store", tar::DIR_MODE);
        for base in [A, B] {
            entries::gather(&tmp.path().join(base), format!("nix/store/{base}").as_bytes(), Modes::Nar, &mut old)
                .unwrap();
        }
        entries::sort_entries(&mut old, "t").unwrap();
        assert_eq!(plain, old);
        let a = layer::write_blob(&plain, 1, Compression::None, 1, &blobs).unwrap();
        let b = layer::write_blob(&old, 1, Compression::None, 1, &blobs).unwrap();
        assert_eq!(a, b);
        let owned = layer_entries(&closure, &layer, tmp.path(), Some((1001, 1001))).unwrap();
        assert_ne!(layer::write_blob(&owned, 1, Compression::None, 1, &blobs).unwrap().diff_id, a.diff_id);
    }

    #[test]
    fn the_nix_db_layer_holds_the_state_directories_and_the_registration() {
        let tmp = tempfile::tempdir().unwrap();
        let (closure, _) = fixture(tmp.path());
        let l = nix_db_layer(&closure, Some((1001, 1001))).unwrap();
        assert_eq!((l.name.as_str(), l.kind), ("nix-db", LayerKind::NixDb));
        let list = layer_entries(&closure, &l, tmp.path(), None).unwrap();
        let paths: Vec<&[u8]> = list.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(
            paths,
            vec![
                &b"nix"[..],
                b"nix/.flywheel-registration",
                b"nix/var",
                b"nix/var/nix",
                b"nix/var/nix/db",
                b"nix/var/nix/gcroots",
                b"nix/var/nix/profiles",
                b"nix/var/nix/temproots",
            ]
        );
        assert!(list.iter().all(|e| (e.uid, e.gid) == (1001, 1001)));
        let reg = list.iter().find(|e| e.path == REGISTRATION_PATH.as_bytes()).unwrap();
        let entries::EntryKind::Data { bytes } = &reg.kind else { panic!("not data") };
        let text = String::from_utf8(bytes.clone()).unwrap();
        // B first (A refers to it); A's self-reference is kept.
        let hash = Digest(closure.objects[0].nar_hash).hex();
        assert_eq!(
            text,
            format!(
                "/nix/store/{B}\n{hash}\n100\n\n0\n/nix/store/{A}\n{hash}\n100\n\n2\n/nix/store/{A}\n/nix/store/{B}\n"
            )
        );
        let root_owned = nix_db_layer(&closure, None).unwrap();
        let k = |l: &PlannedLayer| cache_key(&closure, l, Compression::default(), 1, None).unwrap();
        assert_ne!(k(&l), k(&root_owned));
        // It is written like any layer.
        let blobs = tmp.path().join("blobs");
        std::fs::create_dir(&blobs).unwrap();
        layer::write_blob(&list, 1, Compression::default(), 1, &blobs).unwrap();
    }
}
