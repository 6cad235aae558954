//! `flywheel image`: reproducible layered OCI images from a Nix closure, checked with the real
//! tools (skopeo, umoci, oci-image-tool) and against nix/lib's mkImage built by Debian's Nix.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

/// `flywheel image build` with no layer cache and no SOURCE_DATE_EPOCH from the environment.
fn build() -> Command {
    let mut c = flywheel();
    c.args(["image", "build", "--no-layer-cache"]).env_remove("SOURCE_DATE_EPOCH");
    c
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

fn read_json(path: &Path) -> Value {
    json(&fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The image manifest digest index.json names.
fn manifest_digest(layout: &Path) -> String {
    read_json(&layout.join("index.json"))["manifests"][0]["digest"].as_str().unwrap().to_string()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

fn manifest(layout: &Path) -> Value {
    read_json(&blob(layout, &manifest_digest(layout)))
}

fn config(layout: &Path) -> Value {
    read_json(&blob(layout, manifest(layout)["config"]["digest"].as_str().unwrap()))
}

fn tool_available(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok_and(|o| o.status.success())
}

#[track_caller]
fn require_tools(names: &[&str]) {
    for n in names {
        assert!(tool_available(n), "this test needs {n} (tests/run installs it with apt-get)");
    }
}

/// Every store path of the closure, as `nix-store --query --requisites` lists them.
fn closure_paths() -> Vec<PathBuf> {
    fixture().paths.clone()
}

#[test]
fn builds_are_the_same_whatever_the_directory_input_order_tmpdir_and_threads() {
    let work = tempdir();
    let f = fixture();
    // Two roots, given in both orders.
    let (a, b) = (&f.root, edge_cases());
    let one = work.path().join("one/image");
    let two = work.path().join("elsewhere/deeper/image");
    fs::create_dir_all(one.parent().unwrap()).unwrap();
    fs::create_dir_all(two.parent().unwrap()).unwrap();
    let tmp_a = work.path().join("tmp-a");
    let tmp_b = work.path().join("tmp-b");
    fs::create_dir_all(&tmp_a).unwrap();
    fs::create_dir_all(&tmp_b).unwrap();
    let d1 = ok_str(
        build().env("TMPDIR", &tmp_a).args(["--threads", "1", "--closure"]).arg(a).arg(b).arg("--out").arg(&one),
    );
    let d2 = ok_str(
        build()
            .env("TMPDIR", &tmp_b)
            .args(["--threads", "3", "--closure"])
            .arg(b)
            .arg("--closure")
            .arg(a)
            .arg("--out")
            .arg(&two),
    );
    assert_eq!(d1.trim(), d2.trim());
    assert_eq!(d1.trim(), manifest_digest(&one));
    // Byte for byte: the same blobs, nothing else.
    assert_eq!(listing(&one), listing(&two));
    for entry in listing(&one.join("blobs/sha256")) {
        assert_eq!(
            fs::read(one.join("blobs/sha256").join(&entry)).unwrap(),
            fs::read(two.join("blobs/sha256").join(&entry)).unwrap()
        );
    }
    // Rebuilding over an existing layout replaces it with the same bytes.
    let d3 = ok_str(build().args(["--threads", "2", "--closure"]).arg(a).arg(b).arg("--out").arg(&one));
    assert_eq!(d1, d3);
    assert_eq!(fs::read_dir(one.parent().unwrap()).unwrap().count(), 1, "nothing left beside the output");
}

#[test]
fn the_json_report_lists_every_layer_with_its_paths_size_and_digest() {
    let work = tempdir();
    let out = work.path().join("image");
    let report = json(&ok(build()
        .args(["--json", "--max-layers", "40", "--closure"])
        .arg(&fixture().root)
        .arg("--out")
        .arg(&out)));
    let layers = report["layers"].as_array().unwrap();
    assert!(layers.len() <= 40 && layers.len() > 1, "{} layers", layers.len());
    let mut seen = BTreeSet::new();
    for l in layers {
        for p in l["paths"].as_array().unwrap() {
            assert!(seen.insert(p.as_str().unwrap().to_string()), "{p} in two layers");
        }
        let digest = l["digest"].as_str().unwrap();
        let file = blob(&out, digest);
        assert_eq!(fs::metadata(&file).unwrap().len(), l["size"].as_u64().unwrap());
        assert_eq!(format!("sha256:{}", sha256_hex(&fs::read(&file).unwrap())), digest);
    }
    let want: BTreeSet<String> = closure_paths().iter().map(|p| p.display().to_string()).collect();
    assert_eq!(seen, want, "the layers hold exactly the closure");
    assert_eq!(report["manifest"]["digest"].as_str().unwrap(), manifest_digest(&out));
    // The manifest lists the same layers in the same order, zstd by default.
    let m = manifest(&out);
    let in_manifest: Vec<&str> =
        m["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let in_report: Vec<&str> = layers.iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(in_manifest, in_report);
    assert!(m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"));
    // Labels record the compressor's exact version and the SBOM.
    let labels = &config(&out)["config"]["Labels"];
    assert!(labels["dev.flywheel.image.compression"].as_str().unwrap().contains("libzstd 1.5.7"), "{labels}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn skopeo_inspects_the_layout_and_round_trips_it_through_a_docker_archive() {
    require_tools(&["skopeo"]);
    let work = tempdir();
    let out = work.path().join("image");
    // skopeo 1.9 will not write zstd layers into a docker-archive ("zstd compression is not
    // supported for docker images"): the round trip starts from gzip layers.
    ok(build()
        .args(["--compression", "gzip", "--entrypoint", "/bin/sh", "--env", "A=1", "--closure"])
        .arg(edge_cases())
        .arg("--out")
        .arg(&out));
    for reference in [format!("oci:{}", out.display()), format!("oci:{}:latest", out.display())] {
        let inspect = json(&ok(Command::new("skopeo").args(["inspect", &reference])));
        assert_eq!(inspect["Digest"].as_str().unwrap(), manifest_digest(&out), "{reference}");
        assert_eq!(inspect["Architecture"], "amd64");
        assert_eq!(inspect["Env"], serde_json::json!(["A=1"]));
    }
    let archive = work.path().join("docker.tar");
    ok(Command::new("skopeo")
        .args(["copy", &format!("oci:{}:latest", out.display())])
        .arg(format!("docker-archive:{}:flywheel/e2e:latest", archive.display())));
    let back = work.path().join("back");
    ok(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:latest", back.display())));
    // The layers' uncompressed contents survive the trip: the same diff_ids, in order.
    assert_eq!(config(&back)["rootfs"]["diff_ids"], config(&out)["rootfs"]["diff_ids"]);
    assert_eq!(config(&back)["config"]["Entrypoint"], serde_json::json!(["/bin/sh"]));
}

#[test]
fn umoci_unpacks_every_store_path_byte_for_byte_and_oci_image_tool_validates() {
    require_tools(&["umoci", "oci-image-tool"]);
    let work = tempdir();
    // umoci 0.4 (Debian 12) and oci-image-tool predate zstd layers (image-spec 1.1): gzip here.
    let out = work.path().join("image");
    ok(build().args(["--compression", "gzip", "--closure"]).arg(&fixture().root).arg("--out").arg(&out));
    ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&out));
    let rootfs = umoci_unpack(&out, &work.path().join("bundle"));
    let store = rootfs.join("nix/store");
    let mut names: Vec<String> =
        fs::read_dir(&store).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    let mut want: Vec<String> =
        closure_paths().iter().map(|p| p.file_name().unwrap().to_str().unwrap().to_string()).collect();
    want.sort();
    assert_eq!(names, want, "the rootfs holds exactly the closure");
    // Contents, executable bits and symlinks, as the NAR hash sees them, equal the store's.
    let unpacked: Vec<PathBuf> = want.iter().map(|n| store.join(n)).collect();
    let theirs = json(&ok(flywheel().args(["nar", "hash", "--json"]).args(&unpacked)));
    let ours = json(&ok(flywheel().args(["path-info", "--json"]).args(closure_paths())));
    let hash_of = |v: &Value, key: &str| -> BTreeSet<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let p = PathBuf::from(e["path"].as_str().unwrap());
                (p.file_name().unwrap().to_str().unwrap().to_string(), e[key].as_str().unwrap().to_string())
            })
            .collect()
    };
    let ours_nix32: BTreeSet<(String, String)> = hash_of(&ours, "narHash")
        .into_iter()
        .map(|(n, sri)| {
            let out = ok_str(nix().args(["hash", "to-base32", &sri]));
            (n, format!("sha256:{}", out.trim()))
        })
        .collect();
    assert_eq!(hash_of(&theirs, "narHash"), ours_nix32);
    // The store directory's own entries.
    assert_eq!(fs::metadata(rootfs.join("nix")).unwrap().permissions().mode() & 0o7777, 0o755);
}

#[test]
fn uncompressed_layers_validate_and_their_digest_is_the_diff_id() {
    require_tools(&["oci-image-tool"]);
    let work = tempdir();
    let out = work.path().join("image");
    ok(build().args(["--compression", "none", "--closure"]).arg(edge_cases()).arg("--out").arg(&out));
    ok(Command::new("oci-image-tool").args(["validate", "--type", "image"]).arg(&out));
    let m = manifest(&out);
    let digests: Vec<&Value> = m["layers"].as_array().unwrap().iter().map(|l| &l["digest"]).collect();
    let cfg = config(&out);
    let diff_ids: Vec<&Value> = cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().collect();
    assert_eq!(digests, diff_ids);
}

#[test]
fn directory_layers_carry_the_customisation_tree_with_owners_and_modes() {
    require_tools(&["umoci"]);
    let work = tempdir();
    let custom = work.path().join("custom");
    fs::create_dir_all(custom.join("etc")).unwrap();
    fs::create_dir_all(custom.join("tmp")).unwrap();
    fs::create_dir_all(custom.join("home/runner")).unwrap();
    fs::write(custom.join("etc/passwd"), "runner:x:1001:1001::/home/runner:/bin/sh\n").unwrap();
    fs::set_permissions(custom.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink(format!("{}/bin/hello", edge_cases().display()), custom.join("hello")).unwrap();
    let driver = work.path().join("driver");
    fs::create_dir_all(&driver).unwrap();
    fs::write(driver.join("libcuda.so.580.1"), "not really").unwrap();
    std::os::unix::fs::symlink("libcuda.so.580.1", driver.join("libcuda.so.1")).unwrap();

    let spec = serde_json::json!({
        "flywheelImageSpec": 1,
        "closureRoots": [edge_cases()],
        "layers": [
            { "name": "driver", "source": driver, "prefix": "/usr/lib/x86_64-linux-gnu" },
            { "name": "custom", "source": custom, "overrides": [{ "path": "/home/runner", "uid": 1001, "gid": 1001, "recursive": true }] },
        ],
    });
    let spec_file = work.path().join("spec.json");
    fs::write(&spec_file, spec.to_string()).unwrap();
    let out = work.path().join("image");
    let report =
        json(&ok(build().args(["--json", "--compression", "gzip", "--spec"]).arg(&spec_file).arg("--out").arg(&out)));
    let layers = report["layers"].as_array().unwrap();
    let kinds: Vec<&str> = layers.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    // Directory layers stay pinned, each its own layer, last, in spec order.
    assert_eq!(&kinds[kinds.len() - 2..], &["directory", "directory"]);
    assert_eq!(layers[layers.len() - 2]["name"], "driver");

    // Read the custom layer's tar: owner and mode as asked.
    let custom_layer = blob(&out, layers.last().unwrap()["digest"].as_str().unwrap());
    let mut archive = tar_gz(&custom_layer);
    let mut entries = Vec::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        entries.push((
            e.path().unwrap().display().to_string(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.mtime().unwrap(),
        ));
    }
    let find = |p: &str| {
        entries.iter().find(|e| e.0.trim_end_matches('/') == p).unwrap_or_else(|| panic!("{p} not in {entries:?}"))
    };
    assert_eq!(find("tmp").1, 0o1777);
    assert_eq!(find("home/runner").2, 1001);
    assert_eq!(find("etc/passwd").2, 0);
    assert!(entries.iter().all(|e| e.3 == 1), "mtime 1 everywhere");

    let rootfs = umoci_unpack(&out, &work.path().join("bundle"));
    assert_eq!(
        fs::read_link(rootfs.join("usr/lib/x86_64-linux-gnu/libcuda.so.1")).unwrap(),
        Path::new("libcuda.so.580.1")
    );
    assert_eq!(fs::read_to_string(rootfs.join("etc/passwd")).unwrap(), "runner:x:1001:1001::/home/runner:/bin/sh\n");
}

/// `umoci unpack --rootless` of the layout's `latest` image into `bundle`; returns its rootfs.
fn umoci_unpack(layout: &Path, bundle: &Path) -> PathBuf {
    ok(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(bundle));
    bundle.join("rootfs")
}

fn tar_gz(path: &Path) -> tar::Archive<flate2::read::GzDecoder<fs::File>> {
    tar::Archive::new(flate2::read::GzDecoder::new(fs::File::open(path).unwrap()))
}

#[test]
fn archives_are_read_by_skopeo() {
    require_tools(&["skopeo"]);
    let work = tempdir();
    let oci = work.path().join("image.oci.tar");
    let docker = work.path().join("image.docker.tar");
    let d1 = ok_str(build().args(["--format", "oci-archive", "--closure"]).arg(edge_cases()).arg("--out").arg(&oci));
    let d2 = ok_str(
        build()
            .args(["--format", "docker-archive", "--name", "flywheel/e2e", "--closure"])
            .arg(edge_cases())
            .arg("--out")
            .arg(&docker),
    );
    let i1 = json(&ok(Command::new("skopeo").arg("inspect").arg(format!("oci-archive:{}", oci.display()))));
    assert_eq!(i1["Digest"].as_str().unwrap(), d1.trim());
    // The same image as the directory layout: an archive is only a tar of it.
    let dir = work.path().join("image");
    let d3 = ok_str(build().args(["--closure"]).arg(edge_cases()).arg("--out").arg(&dir));
    assert_eq!(d1, d3);

    // Found by the tag its manifest.json records.
    let i2 = json(&ok(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}:flywheel/e2e:latest", docker.display()))));
    assert_eq!(i2["Layers"].as_array().unwrap().len(), config(&dir)["rootfs"]["diff_ids"].as_array().unwrap().len());
    // docker-archive defaults to gzip layers, which every docker load reads.
    let mut a = tar::Archive::new(fs::File::open(&docker).unwrap());
    let mut manifest_json = None;
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new("manifest.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest_json = Some(json(s.as_bytes()));
        }
    }
    let m = manifest_json.expect("manifest.json in the docker archive");
    assert_eq!(m[0]["RepoTags"], serde_json::json!(["flywheel/e2e:latest"]));
    assert!(m[0]["Layers"].as_array().unwrap().iter().all(|l| l.as_str().unwrap().starts_with("blobs/sha256/")));
    assert_ne!(d2.trim(), d1.trim(), "gzip layers, another image");
}

#[test]
fn the_sbom_lists_every_store_path_and_is_attached_to_the_image() {
    let work = tempdir();
    let out = work.path().join("image");
    let sbom_file = work.path().join("sbom.spdx.json");
    ok(build()
        .arg("--sbom")
        .arg(&sbom_file)
        .args(["--name", "flywheel/e2e", "--closure"])
        .arg(&fixture().root)
        .arg("--out")
        .arg(&out));
    let sbom = read_json(&sbom_file);
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let packages = sbom["packages"].as_array().unwrap();
    assert_eq!(packages.len(), closure_paths().len());
    let info = json(&ok(flywheel().args(["path-info", "--json"]).args(closure_paths())));
    for p in info.as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        let sri = p["narHash"].as_str().unwrap();
        let hex = ok_str(nix().args(["hash", "to-base16", sri]));
        assert!(
            packages.iter().any(|pkg| pkg["sourceInfo"].as_str().unwrap().contains(path)
                && pkg["checksums"][0]["checksumValue"].as_str().unwrap() == hex.trim()),
            "{path} missing or with the wrong checksum"
        );
    }
    // The config records the SBOM's digest; the layout holds it as an artifact of the image.
    let sbom_digest = format!("sha256:{}", sha256_hex(&fs::read(&sbom_file).unwrap()));
    assert_eq!(config(&out)["config"]["Labels"]["dev.flywheel.image.sbom.digest"], sbom_digest.as_str());
    let index = read_json(&out.join("index.json"));
    let artifact =
        read_json(&blob(&out, index["manifests"][0]["annotations"]["dev.flywheel.sbom.manifest"].as_str().unwrap()));
    assert_eq!(artifact["artifactType"], "application/spdx+json");
    assert_eq!(artifact["subject"]["digest"].as_str().unwrap(), manifest_digest(&out));
    assert_eq!(artifact["layers"][0]["digest"].as_str().unwrap(), sbom_digest);
}

/// A package of the fixture that only the root depends on: touching it changes two paths.
/// Referrers are counted within the fixture's closure: other closures built with the same tag
/// (the quickstart's, a bench's) share its package paths.
fn leaf_package() -> String {
    let f = fixture();
    for pkg in &f.packages {
        let path = f.paths.iter().find(|p| p.to_string_lossy().ends_with(&format!("-pkg-{pkg}"))).unwrap();
        let referrers = ok_str(nix_store().args(["--query", "--referrers"]).arg(path));
        if referrers.lines().filter(|r| f.paths.iter().any(|p| p.as_os_str() == *r)).count() == 1 {
            return pkg.clone();
        }
    }
    panic!("no leaf package in the fixture");
}

#[test]
fn a_rebuild_after_one_package_changes_writes_only_its_layers_and_diff_says_so() {
    let work = tempdir();
    let cache = work.path().join("layer-cache");
    let v1 = work.path().join("v1");
    let v2 = work.path().join("v2");
    let cold = work.path().join("v2-cold");
    let r1 = json(&ok(flywheel()
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["image", "build", "--json", "--layer-cache"])
        .arg(&cache)
        .arg("--closure")
        .arg(&fixture().root)
        .arg("--out")
        .arg(&v1)));
    assert_eq!(r1["layersCached"], 0);

    let spec = flywheel_fixture::Spec { touch: Some(leaf_package()), ..flywheel_fixture::Spec::default() };
    let touched = flywheel_fixture::build(&spec).unwrap();
    let changed: Vec<&PathBuf> = touched.paths.iter().filter(|p| !fixture().paths.contains(p)).collect();
    assert_eq!(changed.len(), 2, "the package and the root: {changed:?}");
    let r2 = json(&ok(flywheel()
        .env_remove("SOURCE_DATE_EPOCH")
        .args(["image", "build", "--json", "--layer-cache"])
        .arg(&cache)
        .arg("--closure")
        .arg(&touched.root)
        .arg("--out")
        .arg(&v2)));
    let written: Vec<&Value> = r2["layers"].as_array().unwrap().iter().filter(|l| l["cached"] == false).collect();
    assert!(!written.is_empty() && written.len() <= 2, "{} layers rewritten", written.len());
    for l in &written {
        assert!(
            l["paths"].as_array().unwrap().iter().any(|p| changed.iter().any(|c| c.to_str() == p.as_str())),
            "layer {} was rewritten without a changed path",
            l["name"]
        );
    }
    // The cache changes nothing about the result.
    let d = ok_str(build().arg("--closure").arg(&touched.root).arg("--out").arg(&cold));
    assert_eq!(r2["manifest"]["digest"].as_str().unwrap(), d.trim());

    let diff = json(&ok(flywheel().args(["image", "diff", "--json"]).arg(&v1).arg(&v2)));
    assert_eq!(diff["onlyInB"].as_array().unwrap().len(), written.len());
    let written_bytes: u64 = written.iter().map(|l| l["size"].as_u64().unwrap()).sum();
    let only_b: u64 = diff["onlyInB"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum();
    assert_eq!(only_b, written_bytes);
    assert_eq!(diff["sharedLayers"].as_u64().unwrap() as usize, r2["layers"].as_array().unwrap().len() - written.len());
    assert!(diff["downloadBytes"].as_u64().unwrap() > only_b, "plus the new manifest and config");
}

/// Runs `build` expecting a one-line error, and checks that nothing appeared at `out` or beside it.
#[track_caller]
fn refused(cmd: &mut Command, out: &Path, needle: &str) {
    let parent = out.parent().unwrap();
    let before = listing(parent);
    let result = cmd.arg("--out").arg(out).output().unwrap();
    assert_eq!(result.status.code(), Some(1), "{cmd:?}: {}", String::from_utf8_lossy(&result.stderr));
    let line = one_line_error(&result);
    assert!(line.contains(needle), "{line:?} does not say {needle:?}");
    assert!(!out.exists(), "{} was written", out.display());
    assert_eq!(listing(parent), before, "something was left beside the output");
}

#[test]
fn bad_input_gets_one_clear_line_and_writes_nothing() {
    let work = tempdir();
    let out = work.path().join("out/image");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    let spec_file = |name: &str, v: Value| {
        let p = work.path().join(name);
        fs::write(&p, v.to_string()).unwrap();
        p
    };
    let edge = edge_cases().display().to_string();

    refused(build().args(["--closure", "/nix/store/00000000000000000000000000000000-missing"]), &out, "missing");
    refused(build().args(["--closure", "/etc"]), &out, "not in the Nix store");

    // A closure graph whose one path refers to `reference`.
    let graph_spec = |name: &str, reference: &str| {
        spec_file(
            name,
            serde_json::json!({
                "flywheelImageSpec": 1,
                "closureRoots": [edge],
                "closureGraph": [{ "path": edge, "narSize": 8, "references": [reference],
                                   "narHash": "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s" }],
            }),
        )
    };
    let missing_ref = graph_spec("open.json", "/nix/store/00000000000000000000000000000000-elsewhere");
    refused(build().arg("--spec").arg(&missing_ref), &out, "not in the closure");
    let malformed_ref = graph_spec("malformed.json", "/nix/store/not-a-hash");
    refused(build().arg("--spec").arg(&malformed_ref), &out, "not-a-hash");
    let twice = spec_file(
        "twice.json",
        serde_json::json!({
            "flywheelImageSpec": 1,
            "layers": [{ "name": "a", "paths": [edge] }, { "name": "b", "paths": [edge] }],
        }),
    );
    refused(build().arg("--spec").arg(&twice), &out, "in both layer a and layer b");

    let looped = work.path().join("looped");
    fs::create_dir_all(looped.join("etc")).unwrap();
    std::os::unix::fs::symlink("b", looped.join("etc/a")).unwrap();
    std::os::unix::fs::symlink("/etc/a", looped.join("etc/b")).unwrap();
    refused(build().arg("--layer").arg(&looped), &out, "symbolic link loop");

    let shadow_a = work.path().join("shadow-a");
    let shadow_b = work.path().join("shadow-b");
    for d in [&shadow_a, &shadow_b] {
        fs::create_dir_all(d.join("etc")).unwrap();
        fs::write(d.join("etc/passwd"), "x").unwrap();
    }
    refused(build().arg("--layer").arg(&shadow_a).arg("--layer").arg(&shadow_b), &out, "/etc/passwd is in both");

    let fifo = work.path().join("fifo-tree");
    fs::create_dir_all(&fifo).unwrap();
    ok(Command::new("mkfifo").arg(fifo.join("pipe")));
    refused(build().arg("--layer").arg(&fifo), &out, "fifo");

    refused(
        build()
            .arg("--spec")
            .arg(spec_file("bad.json", serde_json::json!({ "flywheelImageSpec": 1, "config": { "env": [] } }))),
        &out,
        "env",
    );
    refused(build().arg("--layer").arg(work.path().join("nowhere")), &out, "nowhere");
    refused(&mut build(), &out, "nothing to put in the image");

    // An unreadable file: as an unprivileged user, since root reads anything.
    if tool_available("setpriv") && unsafe_uid_is_root() {
        let tree = work.path().join("secret-tree");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("secret"), "x").unwrap();
        fs::set_permissions(tree.join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
        let nobody_out = work.path().join("nobody");
        fs::create_dir_all(&nobody_out).unwrap();
        fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&nobody_out, fs::Permissions::from_mode(0o777)).unwrap();
        let bin = env!("CARGO_BIN_EXE_flywheel");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin,
            "image",
            "build",
            "--no-layer-cache",
            "--layer",
        ])
        .arg(&tree);
        refused(&mut cmd, &nobody_out.join("image"), "Permission denied");
    }
}

fn unsafe_uid_is_root() -> bool {
    ok_str(Command::new("id").arg("-u")).trim() == "0"
}

#[test]
fn a_layer_limit_below_the_pinned_layers_is_refused_and_a_dry_run_builds_nothing() {
    let work = tempdir();
    let dir = work.path().join("tree");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("f"), "x").unwrap();
    let out = work.path().join("image");
    refused(
        build().args(["--max-layers", "1", "--layer"]).arg(&dir).arg("--closure").arg(edge_cases()),
        &out,
        "no room",
    );
    let plan = json(&ok(build().args(["--dry-run", "--json", "--max-layers", "5", "--closure"]).arg(&fixture().root)));
    assert!(plan["layers"].as_array().unwrap().len() <= 5);
    assert!(plan["layers"][0].get("digest").is_none());
    assert_eq!(plan["storePaths"].as_u64().unwrap() as usize, closure_paths().len());
}

// ---- flywheel image push, to a docker-registry started here ------------------------------------

use support::registry::Registry;

#[test]
fn push_sends_only_the_changed_layers_and_prints_the_digest_last() {
    let registry = Registry::start();
    let work = tempdir();
    let cache = work.path().join("cache");
    let (v1, v2) = (work.path().join("v1"), work.path().join("v2"));
    let build_cached = |root: &Path, out: &Path| {
        ok(flywheel()
            .env_remove("SOURCE_DATE_EPOCH")
            .args(["image", "build", "--layer-cache"])
            .arg(&cache)
            .arg("--closure")
            .arg(root)
            .arg("--out")
            .arg(out));
    };
    build_cached(&fixture().root, &v1);
    let touched =
        flywheel_fixture::build(&flywheel_fixture::Spec { touch: Some(leaf_package()), ..Default::default() }).unwrap();
    build_cached(&touched.root, &v2);

    let reference = registry.reference("flywheel/e2e:v1");
    let home = work.path().join("home"); // no credentials, no blob memory from elsewhere
    fs::create_dir_all(&home).unwrap();
    let push = |layout: &Path, reference: &str| {
        let out = ok_str(
            flywheel()
                .env("HOME", &home)
                .env_remove("XDG_CACHE_HOME")
                .args(["image", "push", "--insecure"])
                .arg(layout)
                .arg(reference),
        );
        out.lines().last().unwrap().to_string()
    };
    let d1 = push(&v1, &reference);
    assert_eq!(d1, manifest_digest(&v1));
    let inspect =
        json(&ok(Command::new("skopeo").args(["inspect", "--tls-verify=false", &format!("docker://{reference}")])));
    assert_eq!(inspect["Digest"].as_str().unwrap(), d1);
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), manifest(&v1)["layers"].as_array().unwrap().len());

    // The second image shares all but the changed layers: only those (and the config) go up.
    let report = json(&ok(flywheel()
        .env("HOME", &home)
        .args(["image", "push", "--insecure", "--json"])
        .arg(&v2)
        .arg(registry.reference("flywheel/e2e:v2"))));
    let diff = json(&ok(flywheel().args(["image", "diff", "--json"]).arg(&v1).arg(&v2)));
    let uploaded: BTreeSet<String> = report["blobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["action"] == "uploaded")
        .map(|b| b["digest"].as_str().unwrap().to_string())
        .collect();
    let mut expected: BTreeSet<String> =
        diff["onlyInB"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    expected.insert(manifest(&v2)["config"]["digest"].as_str().unwrap().to_string());
    assert_eq!(uploaded, expected);
    assert_eq!(report["digest"].as_str().unwrap(), manifest_digest(&v2));

    // A registry that refuses the upload (a blob that does not match its digest): one line, exit 1.
    let broken = work.path().join("broken");
    ok(Command::new("cp").arg("-a").arg(&v1).arg(&broken));
    let layer = manifest(&broken)["layers"][0]["digest"].as_str().unwrap().to_string();
    let f = blob(&broken, &layer);
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&f).unwrap();
    bytes[0] ^= 0xff;
    fs::remove_file(&f).unwrap(); // a hard link into the layer cache: write a new file
    fs::write(&f, bytes).unwrap();
    // (A HOME of its own: with the first one, flywheel remembers the blob in flywheel/e2e and
    // mounts it from there instead of uploading.)
    let home2 = work.path().join("home2");
    fs::create_dir_all(&home2).unwrap();
    let out = flywheel()
        .env("HOME", &home2)
        .args(["image", "push", "--insecure"])
        .arg(&broken)
        .arg(registry.reference("flywheel/broken:v1"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let line = one_line_error(&out);
    assert!(line.contains("400") && line.contains(&layer), "{line}");
}

// ---- nix/lib's mkImage, built by Debian's Nix --------------------------------------------------

struct ImageFlake {
    _work: tempfile::TempDir,
    dir: PathBuf,
}

impl ImageFlake {
    /// tests/image-flake with nix/lib beside it as ./lib and settings naming this flywheel.
    fn new() -> Self {
        let work = tempdir();
        let dir = work.path().join("flake");
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::copy(repo.join("tests/image-flake/flake.nix"), dir.join("flake.nix")).unwrap();
        fs::copy(repo.join("tests/fixtures.nix"), dir.join("fixtures.nix")).unwrap();
        for e in fs::read_dir(repo.join("nix/lib")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.join("lib").join(e.file_name())).unwrap();
        }
        let settings = serde_json::json!({
            "flywheel": env!("CARGO_BIN_EXE_flywheel"),
            "system": "x86_64-linux",
            "tag": format!("e2e-{}", std::process::id()),
            "templateLibrary": support::driver_root::template_library(),
        });
        fs::write(dir.join("settings.json"), settings.to_string()).unwrap();
        ImageFlake { _work: work, dir }
    }

    fn attr(&self, attr: &str) -> String {
        format!("path:{}#{attr}", self.dir.display())
    }

    /// `nix build`, returning the output path.
    fn build(&self, attr: &str) -> PathBuf {
        let link = self.dir.join(format!("result-{}", attr.replace('.', "-")));
        ok(nix().args(["build", "--out-link"]).arg(&link).arg(self.attr(attr)));
        fs::canonicalize(&link).unwrap()
    }

    fn eval_raw(&self, attr: &str) -> String {
        ok_str(nix().args(["eval", "--raw", &self.attr(attr)]))
    }
}

#[test]
fn nix_builds_mk_driver_layer_and_an_image_with_it_as_the_cli_does() {
    let flake = ImageFlake::new();
    let layer = flake.build("packages.x86_64-linux.driverLayer");
    let out = flake.eval_raw("packages.x86_64-linux.fakeDriver.out.outPath");
    let bin = flake.eval_raw("packages.x86_64-linux.fakeDriver.bin.outPath");
    // The tree Nix built is the one `flywheel driver collect` writes from the same outputs.
    let cli_tree = flake.dir.join("cli-driver");
    ok(flywheel()
        .args(["driver", "collect", "--no-nvml", "--driver-root", &out, "--driver-root", &bin, "--out"])
        .arg(&cli_tree));
    assert_eq!(fs::read(layer.join("manifest.json")).unwrap(), fs::read(cli_tree.join("manifest.json")).unwrap());
    assert!(layer.join("usr/bin/nvidia-smi").is_file(), "the bin output is a driver root too");
    assert_eq!(
        fs::read_link(layer.join("usr/lib/x86_64-linux-gnu/libcuda.so.1")).unwrap(),
        PathBuf::from("libcuda.so.580.159.04")
    );

    let image = flake.build("packages.x86_64-linux.gpuImage");
    let app = flake.eval_raw("packages.x86_64-linux.app.outPath");
    let cli_image = flake.dir.join("cli-gpu-image");
    let digest = ok_str(
        build()
            .args([
                "--name",
                "flywheel/e2e-gpu",
                "--closure",
                &app,
                "--entrypoint",
                &format!("{app}/bin/app"),
                "--driver",
            ])
            .arg(&layer)
            .arg("--out")
            .arg(&cli_image),
    );
    assert_eq!(digest.trim(), manifest_digest(&image));
    assert_eq!(config(&image)["config"]["Labels"]["dev.flywheel.driver.version"], "580.159.04");
    let kernel = flake.dir.join("kernel-version");
    fs::write(&kernel, support::driver_root::kernel_version_text("580.159.04")).unwrap();
    let check =
        ok_str(flywheel().args(["driver", "check", "--image"]).arg(&image).arg("--kernel-version-file").arg(&kernel));
    assert!(check.starts_with("ok:"), "{check}");
}

#[test]
fn nix_build_of_mk_image_gives_the_digest_flywheel_image_build_gives() {
    let flake = ImageFlake::new();
    let built = flake.build("packages.x86_64-linux.cliEquivalent");
    let app = flake.eval_raw("packages.x86_64-linux.app.outPath");
    let custom = flake.eval_raw("packages.x86_64-linux.custom.outPath");
    let out = flake.dir.join("cli-image");
    let digest = ok_str(
        build()
            .args(["--threads", "1", "--name", "flywheel/e2e", "--closure", &app])
            .arg("--layer")
            .arg(format!("{custom}:/"))
            .args(["--entrypoint", &format!("{app}/bin/app"), "--env", &format!("PATH={app}/bin:/bin"), "--out"])
            .arg(&out),
    );
    assert_eq!(digest.trim(), manifest_digest(&built));
    assert_eq!(listing(&out), listing(&built), "the same blobs");

    // Everything a spec can say, through --spec with the spec mkImage wrote.
    let full = flake.build("packages.x86_64-linux.full");
    let spec = ok(nix().args(["eval", "--json", &flake.attr("specs.x86_64-linux.full")]));
    let spec_file = flake.dir.join("full.json");
    fs::write(&spec_file, spec).unwrap();
    let out = flake.dir.join("cli-full");
    let digest = ok_str(build().arg("--spec").arg(&spec_file).arg("--out").arg(&out));
    assert_eq!(digest.trim(), manifest_digest(&full));
    let index = read_json(&full.join("index.json"));
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "v1");
    let cfg = config(&full);
    assert_eq!(cfg["config"]["User"], "1001:1001");
    assert_eq!(cfg["created"], "2025-12-29T17:14:27Z");
    assert!(manifest(&full)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"));
    if tool_available("skopeo") {
        let inspect = json(&ok(Command::new("skopeo").arg("inspect").arg(format!("oci:{}:v1", full.display()))));
        assert_eq!(inspect["Digest"].as_str().unwrap(), manifest_digest(&full));
    }
}
