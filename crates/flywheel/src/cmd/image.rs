use std::io::Write;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use flywheel_nix::store_path::{self, StoreDir};
use flywheel_oci::layer_cache::LayerCache;
use flywheel_oci::oci::Empty;
use flywheel_oci::read::LayoutImage;
use flywheel_oci::registry::{self, PushOptions};
use flywheel_oci::spec::LayerSpec;
use flywheel_oci::{plan, BuildOptions, Compression, Format, ImageSpec};

use super::{human_bytes, Store};
use crate::cli::{ImageBuildArgs, ImageCommand, ImageDiffArgs, ImagePushArgs, ImageTreeArgs};

pub fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Build(args) => build(*args),
        ImageCommand::Push(args) => push(args),
        ImageCommand::Diff(args) => diff(args),
        ImageCommand::Tree(args) => tree(args),
    }
}

/// `flywheel image tree`: the entries from --spec or from the Nix build's `flywheelTree`.
fn tree(a: ImageTreeArgs) -> anyhow::Result<()> {
    let (entries, out, what) = if a.nix_attrs {
        let path = nix_attrs_file();
        let bytes =
            std::fs::read(&path).with_context(|| format!("reading the build's attributes {}", path.display()))?;
        let mut attrs: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("reading the build's attributes {}", path.display()))?;
        let out = attrs.pointer("/outputs/out").and_then(|v| v.as_str()).map(PathBuf::from);
        let entries = attrs
            .get_mut("flywheelTree")
            .map(serde_json::Value::take)
            .ok_or_else(|| anyhow!("{}: no flywheelTree attribute (is this a mkTree build?)", path.display()))?;
        (entries, a.out.clone().or(out), path)
    } else {
        let Some(file) = &a.spec else { bail!("--spec or --nix-attrs is required") };
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let entries = serde_json::from_slice(&bytes).with_context(|| format!("reading {}", file.display()))?;
        (entries, a.out.clone(), file.clone())
    };
    let out = out.ok_or_else(|| anyhow!("--out is required (no outputs.out in the build's attributes)"))?;
    let tree = flywheel_oci::tree::Tree::from_json(entries).with_context(|| what.display().to_string())?;
    tree.write(&out)?;
    eprintln!("wrote {} ({} entries)", out.display(), tree.nodes.len());
    Ok(())
}

fn nix_attrs_file() -> PathBuf {
    std::env::var_os("NIX_ATTRS_JSON_FILE").map_or_else(|| PathBuf::from(".attrs.json"), PathBuf::from)
}

fn build(a: ImageBuildArgs) -> anyhow::Result<()> {
    let store_dir = store_path::default_store_dir();
    let (mut spec, nix_out) = match (a.nix_attrs, &a.spec) {
        (true, _) => read_nix_attrs()?,
        (false, Some(file)) => {
            let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            (ImageSpec::from_json(&bytes).with_context(|| format!("reading {}", file.display()))?, None)
        }
        (false, None) => (ImageSpec::new(), None),
    };
    apply_options(&mut spec, &a, &store_dir)?;
    if a.format == Format::DockerArchive && a.compression.is_none() && spec.compression.is_none() {
        // docker load reads zstd layers only on recent Docker.
        spec.compression = Some(Compression::GZIP_DEFAULT.to_string());
    }
    spec.validate()?;
    if spec.closure_roots.is_empty() && spec.layers.is_empty() {
        bail!("nothing to put in the image: give --closure, --layer or a --spec that names some");
    }
    let out = match a.out.clone().or(nix_out) {
        Some(out) => out,
        None if a.dry_run => PathBuf::new(),
        None => bail!("--out is required"),
    };

    let store = if spec.needs_store_db(store_dir.as_str()) { Some(Store::open(&a.store)?) } else { None };
    let resolved =
        plan::resolve_closure(&spec, store.as_ref().map(|s| &s.db), &store_dir).context("reading the closure")?;
    let real_store = flywheel_nix::store_path::real_store(&a.store.store, &store_dir);
    let layers =
        plan::plan_layers(&spec, &resolved.closure, &real_store, spec.max_layers(), spec.layering.unwrap_or_default())
            .context("planning the layers")?;

    if a.dry_run {
        let report = flywheel_oci::build::plan_report(&spec, &resolved.closure, &layers, &out, a.format)?;
        let mut stdout = std::io::stdout().lock();
        if a.json {
            serde_json::to_writer(&mut stdout, &report)?;
            writeln!(stdout)?;
        } else {
            for l in &report.layers {
                let what = match (&l.source, l.paths.len()) {
                    (Some(src), _) => format!("{src} at {}", l.prefix.as_deref().unwrap_or("/")),
                    (None, 1) => "1 store path".to_string(),
                    (None, n) => format!("{n} store paths"),
                };
                writeln!(
                    stdout,
                    "{:>10}  {:<9}  {}  ({what})",
                    human_bytes(l.content_bytes),
                    l.kind.to_string(),
                    l.name
                )?;
            }
            writeln!(
                stdout,
                "{} layers, {} store paths, {} of NAR",
                report.layers.len(),
                report.store_paths,
                human_bytes(report.nar_bytes)
            )?;
        }
        return Ok(());
    }

    let layer_cache = if a.no_layer_cache {
        None
    } else if a.nix_attrs {
        // Inside a Nix build there is no writable cache to share between builds.
        a.layer_cache.clone()
    } else {
        a.layer_cache.clone().or_else(LayerCache::default_dir)
    };
    let opts = BuildOptions {
        threads: a.threads,
        format: a.format,
        layer_cache,
        sbom_out: a.sbom.clone(),
        real_store,
        source_date_epoch: a.source_date_epoch,
    };
    let report = flywheel_oci::build(&spec, &resolved.closure, &resolved.roots, &layers, &opts, &out)
        .with_context(|| format!("building {}", out.display()))?;
    let digest = report.manifest.as_ref().map(|m| m.digest.to_string()).unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{digest}")?;
    }
    let compressed: u64 = report.layers.iter().filter_map(|l| l.size).sum();
    eprintln!(
        "built {} ({}): {} layers ({} written, {} from the layer cache), {} of store paths -> {} {}, in {:.1} s",
        out.display(),
        report.format,
        report.layers.len(),
        report.layers_written,
        report.layers_cached,
        human_bytes(report.nar_bytes),
        human_bytes(compressed),
        report.compression,
        report.seconds
    );
    Ok(())
}

/// The spec, the closure graph and the output path a Nix build hands its builder: the
/// structured attributes written by `__structuredAttrs = true` (see nix/lib/default.nix).
fn read_nix_attrs() -> anyhow::Result<(ImageSpec, Option<PathBuf>)> {
    let path = match std::env::var_os("NIX_ATTRS_JSON_FILE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(".attrs.json"),
    };
    let bytes = std::fs::read(&path).with_context(|| format!("reading the build's attributes {}", path.display()))?;
    let mut attrs: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("reading the build's attributes {}", path.display()))?;
    let spec_value = attrs
        .get_mut("flywheelSpec")
        .map(serde_json::Value::take)
        .ok_or_else(|| anyhow!("{}: no flywheelSpec attribute (is this a mkImage build?)", path.display()))?;
    let mut spec = ImageSpec::from_json(spec_value.to_string().as_bytes())?;
    if spec.closure_graph.is_none() {
        if let Some(graph) = attrs.get_mut("closureGraph").map(serde_json::Value::take) {
            spec.closure_graph = Some(serde_json::from_value(graph).context("reading the closureGraph attribute")?);
        }
    }
    let out = attrs.pointer("/outputs/out").and_then(|v| v.as_str()).map(PathBuf::from);
    Ok((spec, out))
}

fn apply_options(spec: &mut ImageSpec, a: &ImageBuildArgs, store_dir: &StoreDir) -> anyhow::Result<()> {
    for p in &a.closure {
        let path = store_path::resolve(p, store_dir).with_context(|| format!("--closure {}", p.display()))?;
        spec.closure_roots.push(store_dir.render_path(&path));
    }
    for (i, l) in a.layer.iter().enumerate() {
        let (dir, prefix) = match l.rsplit_once(':') {
            Some((d, p)) if p.starts_with('/') => (d, p.to_string()),
            _ => (l.as_str(), "/".to_string()),
        };
        let real = std::fs::canonicalize(dir).with_context(|| format!("--layer {l}"))?;
        let base = real.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("layer-{i}"));
        let mut name = base.clone();
        let mut n = 2;
        while spec.layers.iter().any(|x| x.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        let source = real.to_str().ok_or_else(|| anyhow!("--layer {l}: the path is not UTF-8"))?.to_string();
        spec.layers.push(LayerSpec { name, source: Some(source), prefix: Some(prefix), ..LayerSpec::default() });
    }
    if let Some(dir) = &a.driver {
        let real = std::fs::canonicalize(dir).with_context(|| format!("--driver {}", dir.display()))?;
        let source = real.to_str().ok_or_else(|| anyhow!("--driver {}: the path is not UTF-8", dir.display()))?;
        spec.layers.push(LayerSpec {
            name: "nvidia-driver".into(),
            driver: Some(source.to_string()),
            ..LayerSpec::default()
        });
    }
    let c = &mut spec.config;
    if !a.entrypoint.is_empty() {
        c.entrypoint = a.entrypoint.clone();
    }
    if !a.cmd.is_empty() {
        c.cmd = a.cmd.clone();
    }
    for e in &a.env {
        let Some((k, _)) = e.split_once('=') else { bail!("--env {e:?}: expected NAME=VALUE") };
        match c.env.iter_mut().find(|x| x.split_once('=').map(|(n, _)| n) == Some(k)) {
            Some(existing) => existing.clone_from(e),
            None => c.env.push(e.clone()),
        }
    }
    let key_value = |flag: &str, s: &str| -> anyhow::Result<(String, String)> {
        s.split_once('=')
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .ok_or_else(|| anyhow!("--{flag} {s:?}: expected KEY=VALUE"))
    };
    for l in &a.label {
        let (k, v) = key_value("label", l)?;
        c.labels.insert(k, v);
    }
    for p in &a.expose {
        let port = if p.contains('/') { p.clone() } else { format!("{p}/tcp") };
        c.exposed_ports.insert(port, Empty {});
    }
    for v in &a.volume {
        c.volumes.insert(v.clone(), Empty {});
    }
    if a.workdir.is_some() {
        c.working_dir.clone_from(&a.workdir);
    }
    if a.user.is_some() {
        c.user.clone_from(&a.user);
    }
    if a.stop_signal.is_some() {
        c.stop_signal.clone_from(&a.stop_signal);
    }
    for an in &a.annotation {
        let (k, v) = key_value("annotation", an)?;
        spec.annotations.insert(k, v);
    }
    if a.name.is_some() {
        spec.name.clone_from(&a.name);
    }
    if let Some(t) = &a.tag {
        spec.tag.clone_from(t);
    }
    if let Some(arch) = &a.architecture {
        spec.architecture.clone_from(arch);
    }
    if a.created.is_some() {
        spec.created.clone_from(&a.created);
    }
    if let Some(c) = a.compression {
        spec.compression = Some(c.to_string());
    }
    if a.max_layers.is_some() {
        spec.max_layers = a.max_layers;
    }
    if a.layering.is_some() {
        spec.layering = a.layering;
    }
    if let Some((uid, gid)) = a.nix_store_owner {
        spec.nix_store.get_or_insert_with(Default::default).owner = Some(flywheel_oci::spec::Owner { uid, gid });
    }
    if a.nix_registration {
        spec.nix_store.get_or_insert_with(Default::default).registration = true;
    }
    Ok(())
}

fn push(a: ImagePushArgs) -> anyhow::Result<()> {
    let image = LayoutImage::open(&a.layout)?;
    let opts = PushOptions {
        insecure: a.insecure,
        jobs: a.jobs.max(1),
        docker_config: a.docker_config.clone(),
        state_dir: LayerCache::default_dir().and_then(|d| d.parent().map(|p| p.join("registry"))),
        ..PushOptions::default()
    };
    let report = registry::push(&image, &a.reference, &opts).with_context(|| format!("pushing to {}", a.reference))?;
    let uploaded = report.blobs.iter().filter(|b| b.action == registry::BlobAction::Uploaded).count();
    eprintln!(
        "pushed {} in {:.1} s: {} of {} blobs uploaded ({}), the rest already there or mounted",
        report.reference,
        report.seconds,
        uploaded,
        report.blobs.len(),
        human_bytes(report.bytes_uploaded)
    );
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &report)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "{}", report.digest)?;
    }
    Ok(())
}

fn diff(a: ImageDiffArgs) -> anyhow::Result<()> {
    let (ia, ib) = (LayoutImage::open(&a.a)?, LayoutImage::open(&a.b)?);
    let d = flywheel_oci::diff::diff(&ia, &ib);
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &d)?;
        writeln!(stdout)?;
    } else {
        writeln!(stdout, "A {}: {} layers, {}", d.a.manifest, d.a.layers, human_bytes(d.a.bytes))?;
        writeln!(stdout, "B {}: {} layers, {}", d.b.manifest, d.b.layers, human_bytes(d.b.bytes))?;
        writeln!(stdout, "shared: {} layers, {}", d.shared_layers, human_bytes(d.shared_bytes))?;
        for l in &d.only_in_b {
            writeln!(stdout, "only in B: {} {}", l.digest, human_bytes(l.size))?;
        }
        writeln!(stdout, "a node holding A downloads {} for B", human_bytes(d.download_bytes))?;
    }
    Ok(())
}
