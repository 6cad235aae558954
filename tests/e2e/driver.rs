//! `flywheel driver collect|cdi|check` end to end, over fixture driver roots made at test time
//! from this machine's real ELF libraries with Debian's patchelf, with images checked by umoci
//! and CDI specs validated against the CDI project's own JSON schema (from Debian's package).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::driver_root::{self as fx, VERSION};
use support::{flywheel, listing, ok, ok_str, one_line_error, tempdir};

const LIB_DIR: &str = "usr/lib/x86_64-linux-gnu";

fn collect(roots: &[&Path], caps: Option<&str>, out: &Path) -> Command {
    let mut c = flywheel();
    c.args(["driver", "collect", "--no-nvml"]);
    for r in roots {
        c.arg("--driver-root").arg(r);
    }
    if let Some(caps) = caps {
        c.args(["--capabilities", caps]);
    }
    c.arg("--out").arg(out);
    c
}

fn host_root(dir: &Path) -> PathBuf {
    let root = dir.join("nvidia");
    fx::host_root(&root, VERSION);
    root
}

fn manifest(tree: &Path) -> Value {
    serde_json::from_slice(&fs::read(tree.join("manifest.json")).expect("manifest.json")).expect("manifest JSON")
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(fs::read(path).expect("read")).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry of a tree with its type, mode, mtime, and content or link target.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    listing(dir)
        .into_iter()
        .map(|rel| {
            let p = dir.join(&rel);
            let m = fs::symlink_metadata(&p).expect("stat");
            let what = if m.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).expect("readlink").display())
            } else if m.is_dir() {
                "dir".to_string()
            } else {
                format!("file {}", sha256_hex(&p))
            };
            (rel, format!("{what} {:o} {}", m.permissions().mode(), m.mtime()))
        })
        .collect()
}

fn soname(path: &Path) -> String {
    ok_str(Command::new("patchelf").arg("--print-soname").arg(path)).trim().to_string()
}

fn kernel_file(dir: &Path, version: &str) -> PathBuf {
    let p = dir.join(format!("kernel-{version}"));
    fs::write(&p, fx::kernel_version_text(version)).expect("write");
    p
}

#[test]
fn collect_lays_out_utility_and_compute_with_links_ld_conf_and_a_manifest() {
    let work = tempdir();
    let root = host_root(work.path());
    let out = work.path().join("tree");
    let stdout = ok_str(&mut collect(&[&root], None, &out));
    assert!(stdout.contains(VERSION) && stdout.contains("utility,compute"), "{stdout}");

    let lib = out.join(LIB_DIR);
    for (base, want_soname, cap) in fx::LIBRARIES {
        let file = lib.join(format!("{base}.so.{VERSION}"));
        let wanted = matches!(*cap, "utility" | "compute");
        assert_eq!(file.is_file(), wanted, "{base} ({cap})");
        if !wanted {
            continue;
        }
        assert_eq!(fs::metadata(&file).expect("stat").permissions().mode() & 0o777, 0o755);
        // The links are made from the SONAME read out of the ELF file itself.
        let name = format!("{base}.so.{VERSION}");
        let so = want_soname.unwrap_or(&name);
        assert_eq!(soname(&file), so);
        if so != name {
            assert_eq!(fs::read_link(lib.join(so)).expect("soname link"), PathBuf::from(&name));
        }
        let dev = lib.join(format!("{base}.so"));
        assert_eq!(fs::read_link(&dev).expect("dev link"), PathBuf::from(so), "{}", dev.display());
    }
    assert_eq!(fs::read_link(lib.join("libcuda.so.1")).expect("link"), PathBuf::from(format!("libcuda.so.{VERSION}")));
    assert_eq!(fs::read_link(lib.join("libcuda.so")).expect("link"), PathBuf::from("libcuda.so.1"));
    // Bytes are the source's, SONAME and all.
    assert_eq!(
        sha256_hex(&lib.join(format!("libcuda.so.{VERSION}"))),
        sha256_hex(&root.join(format!("lib64/libcuda.so.{VERSION}")))
    );

    for (bin, cap) in fx::BINARIES {
        assert!(out.join("usr/bin").join(bin).is_file(), "{bin} ({cap})");
    }
    assert!(out.join(format!("usr/lib/firmware/nvidia/{VERSION}/gsp_ga10x.bin")).is_file());
    assert_eq!(
        fs::read_to_string(out.join("etc/ld.so.conf.d/flywheel-nvidia.conf")).expect("ld.so.conf"),
        "/usr/lib/x86_64-linux-gnu\n"
    );
    // NixOS-built binaries look in /run/opengl-driver/lib: it resolves to the same folder.
    assert_eq!(
        fs::read_link(out.join("run/opengl-driver/lib")).expect("link"),
        PathBuf::from("../../usr/lib/x86_64-linux-gnu")
    );
    assert!(out.join("run/opengl-driver/lib/libcuda.so.1").is_file());
    // The OpenCL ICD (compute) names the library by its path in the image.
    assert_eq!(
        fs::read_to_string(out.join("etc/OpenCL/vendors/nvidia.icd")).expect("icd"),
        "/usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.1\n"
    );
    assert!(!out.join("usr/share/vulkan").exists(), "graphics was not asked for");

    // The manifest lists every file and link of the tree (but itself), with the right hashes.
    let m = manifest(&out);
    assert_eq!(m["version"], VERSION);
    assert_eq!(m["capabilities"], serde_json::json!(["utility", "compute"]));
    let entries = m["files"].as_array().expect("files");
    let listed: Vec<PathBuf> = entries.iter().map(|e| PathBuf::from(e["path"].as_str().expect("path"))).collect();
    let on_disk: Vec<PathBuf> = listing(&out)
        .into_iter()
        .filter(|p| !out.join(p).is_dir() || fs::symlink_metadata(out.join(p)).expect("stat").file_type().is_symlink())
        .filter(|p| p != Path::new("manifest.json"))
        .collect();
    assert_eq!(listed, on_disk, "sorted, and nothing missing or extra");
    for e in entries {
        let p = out.join(e["path"].as_str().expect("path"));
        match e["type"].as_str() {
            Some("file") => {
                assert_eq!(e["sha256"].as_str(), Some(sha256_hex(&p).as_str()), "{}", p.display());
                assert_eq!(e["size"].as_u64(), Some(fs::metadata(&p).expect("stat").len()));
            }
            Some("symlink") => {
                assert_eq!(e["target"].as_str().map(PathBuf::from), Some(fs::read_link(&p).expect("link")))
            }
            other => panic!("unexpected type {other:?}"),
        }
    }
}

#[test]
fn each_capability_takes_its_own_files_and_graphics_icds_are_rewritten() {
    let work = tempdir();
    let root = host_root(work.path());
    for cap in ["utility", "compute", "video", "graphics", "display", "ngx"] {
        let out = work.path().join(format!("tree-{cap}"));
        ok(&mut collect(&[&root], Some(cap), &out));
        let m = manifest(&out);
        assert_eq!(m["capabilities"], serde_json::json!([cap]));
        for (base, _, c) in fx::LIBRARIES {
            let present = out.join(LIB_DIR).join(format!("{base}.so.{VERSION}")).is_file();
            assert_eq!(present, *c == cap, "{cap}: {base} ({c})");
        }
        for (bin, c) in fx::BINARIES {
            assert_eq!(out.join("usr/bin").join(bin).is_file(), *c == cap, "{cap}: {bin}");
        }
        assert_eq!(
            out.join(format!("usr/lib/firmware/nvidia/{VERSION}")).is_dir(),
            cap == "utility",
            "{cap}: firmware"
        );
        assert_eq!(out.join("etc/OpenCL/vendors/nvidia.icd").is_file(), cap == "compute");
        if cap == "graphics" {
            let vk: Value = serde_json::from_slice(
                &fs::read(out.join("usr/share/vulkan/icd.d/nvidia_icd.json")).expect("vulkan icd"),
            )
            .expect("JSON");
            assert_eq!(vk["ICD"]["library_path"], "/usr/lib/x86_64-linux-gnu/libGLX_nvidia.so.0");
            assert_eq!(vk["ICD"]["api_version"], "1.4.312", "the rest is kept");
            let egl: Value = serde_json::from_slice(
                &fs::read(out.join("usr/share/glvnd/egl_vendor.d/10_nvidia.json")).expect("egl"),
            )
            .expect("JSON");
            assert_eq!(egl["ICD"]["library_path"], "/usr/lib/x86_64-linux-gnu/libEGL_nvidia.so.0");
            assert!(out.join("run/opengl-driver/share/vulkan/icd.d/nvidia_icd.json").is_file());
            // A library whose SONAME is its full name gets a dev link only.
            let glcore = out.join(LIB_DIR).join("libnvidia-glcore.so");
            assert_eq!(
                fs::read_link(glcore).expect("dev link"),
                PathBuf::from(format!("libnvidia-glcore.so.{VERSION}"))
            );
        }
    }
    let all = work.path().join("tree-all");
    ok(&mut collect(&[&root], Some("all"), &all));
    assert_eq!(manifest(&all)["capabilities"].as_array().map(Vec::len), Some(6));
}

#[test]
fn two_collections_are_identical_trees_and_give_the_same_layer() {
    let work = tempdir();
    let root = host_root(work.path());
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    ok(&mut collect(&[&root], Some("all"), &a));
    ok(&mut collect(&[&root], Some("all"), &b));
    let snap = snapshot(&a);
    assert!(snap.len() > 60, "{} entries", snap.len());
    assert_eq!(snap, snapshot(&b));
    // Collecting again over an earlier tree replaces it whole, with the same result.
    fs::write(a.join("stray"), b"left over").expect("write");
    ok(&mut collect(&[&root], Some("all"), &a));
    assert_eq!(snapshot(&a), snap);

    let image = |tree: &Path, out: &Path| {
        let stdout =
            ok_str(flywheel().args(["image", "build", "--no-layer-cache", "--driver"]).arg(tree).arg("--out").arg(out));
        stdout.trim().to_string()
    };
    let (ia, ib) = (work.path().join("image-a"), work.path().join("image-b"));
    let (da, db) = (image(&a, &ia), image(&b, &ib));
    assert!(da.starts_with("sha256:"), "{da}");
    assert_eq!(da, db, "same tree, same image manifest digest");
    let index: Value = serde_json::from_slice(&fs::read(ia.join("index.json")).expect("index")).expect("JSON");
    let manifest_digest = index["manifests"][0]["digest"].as_str().expect("digest").to_string();
    let blob = |d: &str| ia.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let m: Value = serde_json::from_slice(&fs::read(blob(&manifest_digest)).expect("manifest")).expect("JSON");
    let config: Value =
        serde_json::from_slice(&fs::read(blob(m["config"]["digest"].as_str().expect("config"))).expect("config"))
            .expect("JSON");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["dev.flywheel.driver.version"], VERSION);
    assert_eq!(labels["dev.flywheel.driver.capabilities"], "utility,compute,video,graphics,display,ngx");
    let want = format!("sha256:{}", sha256_hex(&a.join("manifest.json")));
    assert_eq!(labels["dev.flywheel.driver.manifest"].as_str(), Some(want.as_str()));
}

#[test]
fn a_nixos_root_of_symlinks_and_several_roots_are_collected() {
    let work = tempdir();
    let root = fx::nixos_root(work.path(), VERSION);
    let out = work.path().join("tree");
    ok(&mut collect(&[&root], Some("utility,compute,graphics"), &out));
    let lib = out.join(LIB_DIR).join(format!("libcuda.so.{VERSION}"));
    assert!(fs::symlink_metadata(&lib).expect("stat").is_file(), "the file, not the store symlink");
    assert!(out.join("usr/share/vulkan/icd.d/nvidia_icd.json").is_file());
    // The binaries live in another output (as nixpkgs' driver has `bin`): a second root.
    assert!(!out.join("usr/bin/nvidia-smi").exists());
    let out2 = work.path().join("tree2");
    ok(&mut collect(&[&root, &work.path().join("store/nvidia-x11")], None, &out2));
    assert!(out2.join("usr/bin/nvidia-smi").is_file());
}

/// A failed collect: exit 1, one line containing each of `needles`, nothing at --out and
/// nothing left beside it.
#[track_caller]
fn refused(work: &Path, cmd: &mut Command, out: &Path, needles: &[&str]) -> String {
    let before = listing(work);
    let o = cmd.output().expect("run flywheel");
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let line = one_line_error(&o);
    for n in needles {
        assert!(line.contains(n), "{n:?} not in: {line}");
    }
    assert!(!out.exists(), "{} was written", out.display());
    assert_eq!(listing(work), before, "something was left behind");
    line
}

#[test]
fn bad_roots_get_one_line_and_nothing_written() {
    let work = tempdir();
    let w = work.path();
    let out = w.join("out");

    let empty = w.join("empty");
    fs::create_dir(&empty).expect("mkdir");
    refused(w, &mut collect(&[&empty], None, &out), &out, &["no NVIDIA driver found", "empty"]);

    let file = w.join("a-file");
    fs::write(&file, b"x").expect("write");
    refused(w, &mut collect(&[&file], None, &out), &out, &["a-file", "not a directory"]);

    refused(w, &mut collect(&[&w.join("missing")], None, &out), &out, &["missing"]);

    // Two versions in one root.
    let two = host_root(&w.join("two"));
    fx::make_library(&two.join("lib64/libnvidia-ml.so.575.57.08"), "libnvidia-ml.so.1");
    refused(w, &mut collect(&[&two], None, &out), &out, &["two driver versions", VERSION, "575.57.08"]);

    // Another architecture's library of another version is not a second driver.
    let cross = host_root(&w.join("cross"));
    let foreign = cross.join("lib/libnvidia-ml.so.575.57.08");
    fx::make_library(&foreign, "libnvidia-ml.so.1");
    let mut bytes = fs::read(&foreign).expect("read");
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes()); // e_machine: EM_AARCH64
    fs::write(&foreign, bytes).expect("write");
    let cross_out = w.join("cross-out");
    ok(&mut collect(&[&cross], None, &cross_out));
    fs::remove_dir_all(&cross_out).expect("rm");

    // The kernel module in the root says another version.
    let proc = host_root(&w.join("proc"));
    fx::write(&proc.join("proc/driver/nvidia/version"), fx::kernel_version_text("575.57.08").as_bytes());
    refused(
        w,
        &mut collect(&[&proc], None, &out),
        &out,
        &["disagree", VERSION, "575.57.08", "proc/driver/nvidia/version"],
    );

    // A library without a SONAME (an executable has none).
    let nosoname = host_root(&w.join("nosoname"));
    let ml = nosoname.join(format!("lib64/libnvidia-ml.so.{VERSION}"));
    fs::copy("/usr/bin/patchelf", &ml).expect("copy");
    refused(w, &mut collect(&[&nosoname], None, &out), &out, &["without a SONAME", "libnvidia-ml"]);

    // A dangling symlink where a library should be.
    let dangling = host_root(&w.join("dangling"));
    let cuda = dangling.join(format!("lib64/libcuda.so.{VERSION}"));
    fs::remove_file(&cuda).expect("rm");
    symlink("/nonexistent/libcuda.so", &cuda).expect("link");
    refused(w, &mut collect(&[&dangling], None, &out), &out, &["dangling symlink", "libcuda"]);

    // Not an ELF file.
    let notelf = host_root(&w.join("notelf"));
    fs::write(notelf.join(format!("lib64/libcuda.so.{VERSION}")), b"not a library").expect("write");
    refused(w, &mut collect(&[&notelf], None, &out), &out, &["not an ELF shared library"]);

    // A capability's essential library is missing: an error; the other capability still works.
    let nocuda = host_root(&w.join("nocuda"));
    fs::remove_file(nocuda.join(format!("lib64/libcuda.so.{VERSION}"))).expect("rm");
    refused(w, &mut collect(&[&nocuda], None, &out), &out, &["capability compute needs", "libcuda.so.580.159.04"]);
    let util = w.join("util-out");
    ok(&mut collect(&[&nocuda], Some("utility"), &util));
    fs::remove_dir_all(&util).expect("rm");
    // `all` takes what the driver has.
    ok(&mut collect(&[&nocuda], Some("all"), &util));
    assert!(util.join("usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1").exists());
    fs::remove_dir_all(&util).expect("rm");

    // An --out that holds something else is kept.
    let precious = w.join("precious");
    fs::create_dir(&precious).expect("mkdir");
    fs::write(precious.join("data"), b"keep me").expect("write");
    let o = collect(&[&two.parent().expect("p").join("../cross/nvidia")], None, &precious).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("not a collected driver tree"));
    assert_eq!(fs::read(precious.join("data")).expect("kept"), b"keep me");

    // An unknown capability is bad usage: exit 2, before anything is read.
    let o = collect(&[&empty], Some("utility,gaming"), &out).output().expect("run");
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("unknown capability \"gaming\""), "{stderr}");
    assert!(!out.exists());
}

#[test]
fn check_passes_on_a_match_and_names_both_versions_otherwise() {
    let work = tempdir();
    let w = work.path();
    let tree = w.join("tree");
    ok(&mut collect(&[&host_root(w)], None, &tree));
    let check = |what: &[&str], kernel: &Path| {
        let mut c = flywheel();
        c.args(["driver", "check"]).args(what).arg("--kernel-version-file").arg(kernel);
        c.output().expect("run")
    };
    let tree_arg = tree.to_str().expect("utf-8");

    let o = check(&["--tree", tree_arg], &kernel_file(w, VERSION));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains(VERSION));

    let o = check(&["--tree", tree_arg], &kernel_file(w, "575.57.08"));
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    for n in ["driver mismatch", VERSION, "575.57.08", "Driver/library version mismatch", "image built for 575.57.08"] {
        assert!(line.contains(n), "{n:?} not in: {line}");
    }

    let o = check(&["--tree", tree_arg], &w.join("no-such-file"));
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("no NVIDIA kernel module"));

    // An image built from the tree: pass; one from a tree whose version was changed: fail.
    let image = w.join("image");
    ok(flywheel()
        .args(["image", "build", "--no-layer-cache", "--compression", "gzip", "--driver"])
        .arg(&tree)
        .arg("--out")
        .arg(&image));
    let o = check(&["--image", image.to_str().expect("utf-8")], &kernel_file(w, VERSION));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let other_root = w.join("other");
    fx::host_root(&other_root, "575.57.08");
    let other_tree = w.join("other-tree");
    ok(&mut collect(&[&other_root], None, &other_tree));
    let other_image = w.join("other-image");
    ok(flywheel()
        .args(["image", "build", "--no-layer-cache", "--driver"])
        .arg(&other_tree)
        .arg("--out")
        .arg(&other_image));
    let o = check(&["--image", other_image.to_str().expect("utf-8")], &kernel_file(w, VERSION));
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("575.57.08") && line.contains(VERSION) && line.contains("other-image"), "{line}");

    // The unpacked image's root filesystem checks as a tree (what the pre-job hook sees).
    if Command::new("umoci").arg("--version").output().is_ok() {
        let bundle = w.join("bundle");
        ok(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:latest", image.display()))
            .arg(&bundle));
        let rootfs = bundle.join("rootfs");
        assert!(rootfs.join("usr/share/flywheel/driver/manifest.json").is_file());
        assert!(!rootfs.join("manifest.json").exists(), "the manifest moves out of the image root");
        let o = check(&["--tree", rootfs.to_str().expect("utf-8")], &kernel_file(w, VERSION));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // A tree whose files no longer match its manifest fails, naming the file.
    let lib = tree.join(LIB_DIR).join(format!("libcuda.so.{VERSION}"));
    let mut bytes = fs::read(&lib).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&lib, bytes).expect("write");
    let o = check(&["--tree", tree_arg], &kernel_file(w, VERSION));
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("libcuda.so.580.159.04") && line.contains("sha256"), "{line}");

    // A raw driver root (no manifest) is judged by its library names.
    let o = check(&["--tree", other_root.to_str().expect("utf-8")], &kernel_file(w, "575.57.08"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Both --tree and --image is bad usage.
    let o = check(&["--tree", tree_arg, "--image", tree_arg], &kernel_file(w, VERSION));
    assert_eq!(o.status.code(), Some(2));
}

/// The CDI project's JSON schema, from Debian's golang-github-container-orchestrated-devices-
/// container-device-interface-dev (tests/run unpacks it when the package is not installed).
fn cdi_schema_dir() -> PathBuf {
    let installed = PathBuf::from(
        "/usr/share/gocode/src/github.com/container-orchestrated-devices/container-device-interface/schema",
    );
    if installed.join("schema.json").is_file() {
        return installed;
    }
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/cdi-schema")
        .join("usr/share/gocode/src/github.com/container-orchestrated-devices/container-device-interface/schema");
    assert!(
        unpacked.join("schema.json").is_file(),
        "the CDI schema is missing: run tests/run, or apt-get install golang-github-container-orchestrated-devices-container-device-interface-dev"
    );
    unpacked
}

fn validate_cdi(spec: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/support/validate_cdi.py");
    let o = Command::new("python3").arg(script).arg(cdi_schema_dir()).arg(spec).output().expect("python3");
    assert!(
        o.status.success(),
        "CDI schema validation of {}: {}{}",
        spec.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn cdi_spec_validates_against_the_schema_and_matches_nvidia_ctk_shape() {
    let work = tempdir();
    let w = work.path();
    let root = host_root(w);
    let dev = w.join("dev-root");
    // Listed out of bus order, with minors that are not the indexes.
    fx::dev_root(&dev, &[("0000:c1:00.0", 0, "GPU-bbbb"), ("0000:3b:00.0", 1, "GPU-aaaa")]);
    let cdi = |format: &str| {
        let mut c = flywheel();
        c.args(["driver", "cdi", "--no-nvml", "--driver-root"])
            .arg(&root)
            .arg("--dev-root")
            .arg(&dev)
            .args(["--format", format]);
        ok(&mut c)
    };
    let json_bytes = cdi("json");
    let yaml_bytes = cdi("yaml");
    let (json_path, yaml_path) = (w.join("nvidia.json"), w.join("nvidia.yaml"));
    fs::write(&json_path, &json_bytes).expect("write");
    fs::write(&yaml_path, &yaml_bytes).expect("write");
    validate_cdi(&json_path);
    validate_cdi(&yaml_path);
    // The validator can fail: a spec without its kind is refused.
    let mut broken: Value = serde_json::from_slice(&json_bytes).expect("JSON");
    broken.as_object_mut().expect("object").remove("kind");
    let broken_path = w.join("broken.json");
    fs::write(&broken_path, serde_json::to_vec(&broken).expect("JSON")).expect("write");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/support/validate_cdi.py");
    let o = Command::new("python3").arg(script).arg(cdi_schema_dir()).arg(&broken_path).output().expect("python3");
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("'kind' is a required property"));

    let spec: Value = serde_json::from_slice(&json_bytes).expect("JSON");
    assert_eq!(spec["cdiVersion"], "0.5.0");
    assert_eq!(spec["kind"], "nvidia.com/gpu");
    let devices = spec["devices"].as_array().expect("devices");
    let names: Vec<&str> = devices.iter().map(|d| d["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["0", "1", "GPU-aaaa", "GPU-bbbb", "all"]);
    let node_of = |d: &Value| d["containerEdits"]["deviceNodes"][0]["path"].as_str().expect("path").to_string();
    assert_eq!(node_of(&devices[0]), "/dev/nvidia1", "index 0 is the first GPU in bus order");
    assert_eq!(node_of(&devices[1]), "/dev/nvidia0");
    assert_eq!(devices[4]["containerEdits"]["deviceNodes"].as_array().map(Vec::len), Some(2));
    let edits = &spec["containerEdits"];
    let common: Vec<&str> =
        edits["deviceNodes"].as_array().expect("nodes").iter().map(|n| n["path"].as_str().expect("p")).collect();
    assert_eq!(common, ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]);
    let mounts = edits["mounts"].as_array().expect("mounts");
    assert!(mounts.iter().all(|m| m["options"] == serde_json::json!(["ro", "nosuid", "nodev", "rbind", "rprivate"])));
    let cuda = mounts
        .iter()
        .find(|m| m["containerPath"] == format!("/usr/lib/x86_64-linux-gnu/libcuda.so.{VERSION}"))
        .expect("libcuda mounted");
    assert!(Path::new(cuda["hostPath"].as_str().expect("host")).is_file());
    // Every capability the root has is mounted (the default), graphics included.
    assert!(mounts.iter().any(|m| m["containerPath"] == "/usr/share/vulkan/icd.d/nvidia_icd.json"));
    let hooks = edits["hooks"].as_array().expect("hooks");
    assert!(hooks.iter().all(|h| h["hookName"] == "createContainer"));
    let args: Vec<String> = hooks
        .iter()
        .flat_map(|h| h["args"].as_array().expect("args").iter().map(|a| a.as_str().expect("s").to_string()))
        .collect();
    for want in [
        "create-symlinks".to_string(),
        format!("libcuda.so.{VERSION}::/usr/lib/x86_64-linux-gnu/libcuda.so.1"),
        "libcuda.so.1::/usr/lib/x86_64-linux-gnu/libcuda.so".to_string(),
        "/usr/lib/x86_64-linux-gnu::/run/opengl-driver/lib".to_string(),
        "update-ldcache".to_string(),
        format!("--host-driver-version={VERSION}"),
    ] {
        assert!(args.contains(&want), "{want} not in the hooks: {args:?}");
    }
    assert_eq!(edits["env"], serde_json::json!(["NVIDIA_VISIBLE_DEVICES=void"]));

    // No GPUs: one line.
    let nogpu = w.join("no-gpu");
    fs::create_dir(&nogpu).expect("mkdir");
    let o = flywheel()
        .args(["driver", "cdi", "--no-nvml", "--driver-root"])
        .arg(&root)
        .arg("--dev-root")
        .arg(&nogpu)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("no NVIDIA GPUs"));
}
