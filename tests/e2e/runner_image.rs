//! nix/lib's mkRunnerImage, built by Debian's Nix from tests/runner-flake: the image is the one
//! `flywheel image build --spec` gives for the same spec, holds what actions-runner-controller
//! starts (run.sh, the runner user, the job hooks, nix.conf), and its hooks do what they say;
//! and a lane pod played on this machine: /nix seeded, the store registered, a build as the
//! runner user, and its output pushed by the job-completed hook.
//! Also `flywheel image tree`, which mkTree runs as the builder.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::*;

const SYSTEM: &str = "x86_64-linux";
const CACHE_URL: &str = "http://cache.lane.invalid:8080/main";
const CACHE_KEY: &str = "lane-1:Z2F0ZXdheS1maXh0dXJlLWtleS1ub3QtYS1yZWFsLW9uZQ==";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

fn manifest_digest(layout: &Path) -> String {
    read_json(&layout.join("index.json"))["manifests"][0]["digest"].as_str().unwrap().to_string()
}

fn manifest(layout: &Path) -> Value {
    read_json(&blob(layout, &manifest_digest(layout)))
}

fn image_config(layout: &Path) -> Value {
    read_json(&blob(layout, manifest(layout)["config"]["digest"].as_str().unwrap()))
}

/// tests/runner-flake with nix/lib beside it as ./lib and its settings; the cargo-built flywheel
/// goes in as the flake's `flywheel` input (`--override-input`): a folder whose bin/flywheel runs
/// it (the binary itself is 300 MB with debug info: copying it into the store for every build
/// would cost more than the test).
struct RunnerFlake {
    _work: tempfile::TempDir,
    dir: PathBuf,
    input: PathBuf,
}

impl RunnerFlake {
    fn new() -> Self {
        Self::with_settings(serde_json::json!({}))
    }

    /// With more settings (`cacheUrl` and `cachePublicKey`: the cache the image's nix.conf names).
    fn with_settings(extra: Value) -> Self {
        let work = tempdir();
        let dir = work.path().join("flake");
        fs::create_dir_all(dir.join("lib")).unwrap();
        fs::copy(repo().join("tests/runner-flake/flake.nix"), dir.join("flake.nix")).unwrap();
        fs::copy(repo().join("tests/fixtures.nix"), dir.join("fixtures.nix")).unwrap();
        for e in fs::read_dir(repo().join("nix/lib")).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), dir.join("lib").join(e.file_name())).unwrap();
        }
        let mut settings = serde_json::json!({
            "system": SYSTEM,
            "tag": format!("runner-e2e-{}", std::process::id()),
            "templateLibrary": support::driver_root::template_library(),
        });
        settings.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        fs::write(dir.join("settings.json"), settings.to_string()).unwrap();
        let input = work.path().join("flywheel-input");
        fs::create_dir_all(input.join("bin")).unwrap();
        // The binary itself: the flake copies it into the store with its loader and libraries.
        fs::copy(env!("CARGO_BIN_EXE_flywheel"), input.join("bin/flywheel")).unwrap();
        RunnerFlake { _work: work, dir, input }
    }

    /// `nix SUBCOMMAND...` with the flywheel input overridden (a flag of the subcommand).
    fn nix(&self, sub: &[&str]) -> std::process::Command {
        let mut c = nix();
        c.args(sub).args(["--override-input", "flywheel"]).arg(format!("path:{}", self.input.display()));
        c
    }

    fn attr(&self, attr: &str) -> String {
        format!("path:{}#{attr}", self.dir.display())
    }

    fn build(&self, attr: &str) -> PathBuf {
        let link = self.dir.join(format!("result-{}", attr.replace('.', "-")));
        ok(self.nix(&["build"]).args(["--out-link"]).arg(&link).arg(self.attr(attr)));
        fs::canonicalize(&link).unwrap()
    }

    fn eval_raw(&self, attr: &str) -> String {
        ok_str(self.nix(&["eval"]).args(["--raw", &self.attr(attr)]))
    }

    /// The GPU runner image (gzip layers: Debian's umoci predates zstd), built and unpacked
    /// rootless under `bundle`; returns its rootfs.
    fn gpu_rootfs(&self) -> PathBuf {
        let image = self.build(&format!("packages.{SYSTEM}.gpu-runner-image"));
        umoci_unpack(&image, &self.dir.join("bundle"))
    }

    /// Builds `packages.SYSTEM.NAME` and checks that `flywheel image build --spec` gives the same
    /// image, digest for digest, from the spec the derivation carries.
    fn build_and_compare(&self, name: &str) -> PathBuf {
        let built = self.build(&format!("packages.{SYSTEM}.{name}"));
        let spec = ok(self.nix(&["eval"]).args(["--json", &self.attr(&format!("specs.{SYSTEM}.{name}"))]));
        let spec_file = self.dir.join(format!("{name}.json"));
        fs::write(&spec_file, spec).unwrap();
        let out = self.dir.join(format!("cli-{name}"));
        let digest = ok_str(
            flywheel()
                .args(["image", "build", "--no-layer-cache", "--spec"])
                .env_remove("SOURCE_DATE_EPOCH")
                .arg(&spec_file)
                .arg("--out")
                .arg(&out),
        );
        assert_eq!(digest.trim(), manifest_digest(&built), "{name}: nix build and flywheel image build --spec differ");
        assert_eq!(listing(&out), listing(&built), "{name}: the same blobs");
        built
    }
}

/// `path` (absolute, as the image sees it) inside `rootfs`, following symlinks as the image
/// would: an absolute target is taken from the image's root, never the host's.
fn resolve_in(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut at = PathBuf::from("/");
    let mut parts: Vec<String> = path.split('/').filter(|p| !p.is_empty()).map(str::to_string).rev().collect();
    let mut hops = 0;
    while let Some(part) = parts.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let next = at.join(&part);
        let host = rootfs.join(next.strip_prefix("/").unwrap());
        let meta = fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = fs::read_link(&host).ok()?;
            let target = target.to_string_lossy().to_string();
            if target.starts_with('/') {
                at = PathBuf::from("/");
            }
            parts.extend(target.split('/').filter(|p| !p.is_empty()).map(str::to_string).rev());
        } else {
            at = next;
        }
    }
    let host = rootfs.join(at.strip_prefix("/").unwrap());
    host.exists().then_some(host)
}

/// Every ELF in the unpacked image asks for a loader and libraries the image holds (through
/// its interpreter, RUNPATH and, where it has either, each NEEDED library), and every script's
/// `#!` names a program in the image: nothing resolves from the host. Returns the ELFs checked.
fn assert_nothing_outside(rootfs: &Path) -> usize {
    let mut problems = Vec::new();
    let mut elfs = 0;
    let mut stack = vec![rootfs.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let host = e.path();
            let inside = format!("/{}", host.strip_prefix(rootfs).unwrap().display());
            let mut head = [0u8; 256];
            let n = std::io::Read::read(&mut fs::File::open(&host).unwrap(), &mut head).unwrap_or(0);
            let head = &head[..n];
            if head.starts_with(b"#!") {
                let line = String::from_utf8_lossy(head).lines().next().unwrap_or("").to_string();
                let program = line[2..].split_whitespace().next().unwrap_or("").to_string();
                if resolve_in(rootfs, &program).is_none() {
                    problems.push(format!("{inside}: #!{program} is not in the image"));
                }
                continue;
            }
            if !head.starts_with(b"\x7fELF") {
                continue;
            }
            elfs += 1;
            let patchelf = |arg: &str| {
                let o = Command::new("patchelf").arg(arg).arg(&host).output().unwrap();
                o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
            };
            let interp = patchelf("--print-interpreter").filter(|i| !i.is_empty());
            let rpath = patchelf("--print-rpath").unwrap_or_default();
            let origin = Path::new(&inside).parent().unwrap().display().to_string();
            let dirs: Vec<String> =
                rpath.split(':').filter(|d| !d.is_empty()).map(|d| d.replace("$ORIGIN", &origin)).collect();
            if let Some(i) = &interp {
                if !i.starts_with("/nix/store/") || resolve_in(rootfs, i).is_none() {
                    problems.push(format!("{inside}: interpreter {i} is not in the image's store"));
                }
            }
            for d in &dirs {
                if !d.starts_with("/nix/store/") || resolve_in(rootfs, d).is_none() {
                    problems.push(format!("{inside}: RUNPATH {d} is not in the image's store"));
                }
            }
            if interp.is_some() || !dirs.is_empty() {
                for lib in patchelf("--print-needed").unwrap_or_default().lines() {
                    if !dirs.iter().any(|d| resolve_in(rootfs, &format!("{d}/{lib}")).is_some()) {
                        problems.push(format!("{inside}: {lib} is not in its RUNPATH ({rpath}) in the image"));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{} references outside the image:\n{}", problems.len(), problems.join("\n"));
    elfs
}

/// `umoci unpack --rootless` of the layout's `latest` image into `bundle`; returns its rootfs.
fn umoci_unpack(layout: &Path, bundle: &Path) -> PathBuf {
    ok(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:latest", layout.display()))
        .arg(bundle));
    bundle.join("rootfs")
}

/// (uid, gid, mode) of `path` (relative, as in the layer tars) in whichever layer holds it.
fn owner_in_layers(layout: &Path, path: &str) -> Option<(u64, u64, u32)> {
    for l in manifest(layout)["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let file = fs::File::open(blob(layout, l["digest"].as_str().unwrap())).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().trim_start_matches("./").trim_end_matches('/').to_string();
            if p == path {
                let h = e.header();
                return Some((h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap()));
            }
        }
    }
    None
}

/// The image's registration, loaded by real Nix into a fresh chroot store, describes the
/// closures of `roots` as the host store does (path, NarHash, NarSize, references); loaded into
/// the unpacked rootfs as a store, `nix store verify` finds every file as registered.
fn check_registration(rootfs: &Path, work: &Path, roots: &[&str]) {
    let registration = fs::read(rootfs.join("nix/.flywheel-registration")).unwrap();
    let fresh = work.join("registered-store");
    let out = run_with_input(nix_store().arg("--store").arg(&fresh).arg("--load-db"), &registration);
    assert!(out.status.success(), "nix-store --load-db: {}", String::from_utf8_lossy(&out.stderr));
    let info = |store: Option<&Path>, root: &str| -> Value {
        let mut c = nix();
        c.args(["path-info", "--json", "-r"]);
        if let Some(s) = store {
            c.arg("--store").arg(s);
        }
        serde_json::from_slice(&ok(c.arg(root))).unwrap()
    };
    // Nix 2.8 prints a list; later ones an object keyed by path.
    let by_path = |v: Value| -> std::collections::BTreeMap<String, (String, u64, Vec<String>)> {
        let items: Vec<(String, Value)> = match v {
            Value::Array(a) => a.into_iter().map(|i| (i["path"].as_str().unwrap().to_string(), i)).collect(),
            Value::Object(o) => o.into_iter().collect(),
            other => panic!("path-info --json: {other}"),
        };
        items
            .into_iter()
            .map(|(p, i)| {
                let mut refs: Vec<String> =
                    i["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect();
                refs.sort();
                (p, (i["narHash"].as_str().unwrap().to_string(), i["narSize"].as_u64().unwrap(), refs))
            })
            .collect()
    };
    let mut registered_paths = 0;
    for root in roots {
        let registered = by_path(info(Some(&fresh), root));
        let host = by_path(info(None, root));
        assert!(!registered.is_empty());
        assert_eq!(registered, host, "the closure of {root} as registered and as the host store has it");
        registered_paths += registered.len();
    }
    assert!(registered_paths > 0);
    let listed = String::from_utf8_lossy(&registration).lines().filter(|l| l.starts_with("/nix/store/")).count();
    assert!(listed >= roots.len(), "{listed} paths listed");

    // The unpacked image as a store: its files are what the registration says.
    let out = run_with_input(nix_store().arg("--store").arg(rootfs).arg("--load-db"), &registration);
    assert!(out.status.success(), "nix-store --load-db into the rootfs: {}", String::from_utf8_lossy(&out.stderr));
    let mut verify = nix();
    verify.args(["store", "verify", "--no-trust", "--store"]).arg(rootfs).arg("-r").args(roots);
    let out = verify.output().unwrap();
    assert!(out.status.success(), "nix store verify: {}", String::from_utf8_lossy(&out.stderr));
}

/// The lane pod's init container: the image's seed-nix.sh, as the runner user.
fn seed_as_runner(rootfs: &Path, vol: &Path) {
    let mut dir = rootfs.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir()) {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        dir = d.parent();
    }
    let out = Command::new("setpriv")
        .args(["--reuid", "1001", "--regid", "1001", "--clear-groups"])
        .arg(rootfs.join("home/runner/hooks/seed-nix.sh"))
        .arg("--from")
        .arg(rootfs.join("nix"))
        .arg("--to")
        .arg(vol)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("flywheel: seeded "), "{}", text(&out));
}

/// A lane pod, as far as one machine can play it: the /nix volume seeded as the runner user and
/// mounted at /nix (a private mount namespace), run.sh registering the image's store, the
/// job-started hook, a `nix-build` as the runner user with the image's own bash as builder, and
/// the job-completed hook pushing what that build made to a real cache server.
#[test]
fn a_lane_pod_seeds_nix_registers_the_store_builds_as_the_runner_and_pushes_what_it_built() {
    let flake = RunnerFlake::new();
    let rootfs = flake.gpu_rootfs();
    let bash = flake.eval_raw(&format!("packages.{SYSTEM}.bash.outPath"));
    let pod = flake.dir.join("pod");
    let vol = pod.join("nix");
    fsgroup_volume(&vol);
    seed_as_runner(&rootfs, &vol);

    let data = flake.dir.join("cache-data");
    let server = support::server::Server::start(&data, &[]);
    let token = ok_str(
        flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", "write", "--data"]).arg(&data),
    );
    let kernel = flake.dir.join("kernel");
    fs::write(&kernel, support::driver_root::kernel_version_text("580.159.04")).unwrap();
    let (home, tmp) = (pod.join("home"), pod.join("tmp"));
    for d in [&home, &tmp] {
        fs::create_dir_all(d).unwrap();
        ok(Command::new("chown").arg("1001:1001").arg(d));
    }
    let hooks = rootfs.join("home/runner/hooks");
    // Everything the runner user runs gets the image's environment, as the container would.
    let as_runner = format!(
        "setpriv --reuid 1001 --regid 1001 --clear-groups env -i PATH=/usr/bin:/bin HOME={home} USER=runner TMPDIR={tmp} \
         NIX_CONF_DIR={etc} FLYWHEEL_HOOK_STATE_DIR={home}/.flywheel-hooks FLYWHEEL_CACHE_URL={url} GITHUB_EVENT_NAME=push",
        home = home.display(),
        tmp = tmp.display(),
        etc = rootfs.join("etc/nix").display(),
        url = server.url("main"),
    );
    let script = format!(
        r#"set -u
mount --bind {vol} /nix
{as_runner} ACTIONS_RUNNER_INPUT_JITCONFIG=jit {run_sh} --once
{as_runner} FLYWHEEL_DRIVER_ROOT={rootfs} FLYWHEEL_KERNEL_VERSION_FILE={kernel} {hooks}/job-started.sh || exit 3
out=$({as_runner} nix-build --option substituters '' --no-out-link -E 'derivation {{ name = "built-in-the-pod"; system = builtins.currentSystem; builder = "{bash}/bin/bash"; args = [ "-c" "echo built > $out" ]; }}') || exit 4
echo "built: $out"
{as_runner} FLYWHEEL_CACHE_TOKEN={token} {hooks}/job-completed.sh
{as_runner} nix-store --verify --check-contents || exit 5
"#,
        vol = vol.display(),
        run_sh = rootfs.join("home/runner/run.sh").display(),
        rootfs = rootfs.display(),
        kernel = kernel.display(),
        hooks = hooks.display(),
        token = token.trim(),
    );
    let out = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("flywheel: registering the image's store paths with Nix"), "{said}");
    assert!(!said.contains("load-db failed"), "{said}");
    assert!(said.contains("Runner.Listener run --once"), "{said}");
    assert!(
        said.contains("flywheel: job-started: NVIDIA userspace 580.159.04 matches the kernel module; cache "),
        "{said}"
    );
    let built = said.lines().find_map(|l| l.strip_prefix("built: ")).unwrap_or_else(|| panic!("{said}")).to_string();
    assert!(said.contains("flywheel: job-completed: pushed ") && said.contains("GPU free"), "{said}");
    // What the runner built in the pod is in the cache, with its NAR, as the server signed it.
    let hash = built.trim_start_matches("/nix/store/").split('-').next().unwrap().to_string();
    let narinfo = ok_str(Command::new("curl").args(["-sf", &format!("{}/{hash}.narinfo", server.url("main"))]));
    assert!(narinfo.contains(&format!("StorePath: {built}")) && narinfo.contains("Sig: main-"), "{narinfo}");
    assert_eq!(fs::read_to_string(vol.join(built.trim_start_matches("/nix/"))).unwrap(), "built\n");
}

#[test]
fn run_sh_trusts_the_lanes_extra_ca_beside_the_images_bundle_or_refuses_to_start() {
    let flake = RunnerFlake::new();
    let rootfs = flake.gpu_rootfs();
    let cacert = flake.eval_raw(&format!("packages.{SYSTEM}.cacert.outPath"));
    let home = flake.dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBfixture\n-----END CERTIFICATE-----";
    let extra = flake.dir.join("extra-ca.crt");
    fs::write(&extra, format!("{pem}\n")).unwrap();
    // As the pod starts it, with an empty PATH: run.sh must manage with bash's builtins.
    let run = |ca: &Path| {
        Command::new(rootfs.join("home/runner/run.sh"))
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "")
            .env("SSL_CERT_FILE", format!("{cacert}/etc/ssl/certs/ca-bundle.crt"))
            .env("ACTIONS_RUNNER_INPUT_JITCONFIG", "jit")
            .env("FLYWHEEL_EXTRA_CA", ca)
            .output()
            .unwrap()
    };
    let out = run(&extra);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let bundle = home.join(".flywheel-ca-bundle.crt");
    assert!(said.contains("flywheel: trusting the lane's extra CA"), "{said}");
    assert!(said.contains(&format!("ssl={} node={}", bundle.display(), extra.display())), "{said}");
    let image_bundle = fs::read_to_string(format!("{cacert}/etc/ssl/certs/ca-bundle.crt")).unwrap();
    assert_eq!(fs::read_to_string(&bundle).unwrap(), format!("{}\n{pem}\n", image_bundle.trim_end_matches('\n')));
    // Not a certificate, or not there: one line, and the runner does not start.
    let bad = flake.dir.join("bad.crt");
    fs::write(&bad, "not a certificate\n").unwrap();
    for ca in [bad, flake.dir.join("missing.crt")] {
        let out = run(&ca);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{said}");
        assert!(!said.contains("Runner.Listener"), "{said}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("is not a readable PEM certificate file") && err.contains("runners.extra_ca"), "{err}");
    }
}

#[test]
fn run_sh_gives_arc_the_exit_codes_the_actions_runner_image_gives_and_passes_on_term() {
    let flake = RunnerFlake::new();
    let rootfs = flake.gpu_rootfs();
    let codes = flake.dir.join("codes");
    // run.sh with the stand-in listener exiting with `exits`, one code per start.
    let run_sh = |exits: &str| {
        fs::write(&codes, exits).unwrap();
        let mut c = Command::new(rootfs.join("home/runner/run.sh"));
        c.env_clear().env("PATH", "/usr/bin:/bin").env("HOME", &flake.dir).env("FIXTURE_EXITS", &codes);
        c
    };
    let run = |exits: &str, env: &[(&str, &str)]| run_sh(exits).envs(env.iter().copied()).output().unwrap();
    let starts = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).matches("Runner.Listener run").count();
    // The listener's code -> what run.sh exits with, and the line it says (as actions/runner's
    // run-helper.sh: done, terminated and session conflicts are 0 for ARC).
    for (code, exit, said) in [
        ("0", 0, ""),
        ("1", 0, "terminated): no retry"),
        ("5", 0, "lost its session"),
        ("7", 0, "unknown code 7"),
        ("42", 0, "unknown code 42"),
    ] {
        let o = run(code, &[]);
        assert_eq!(o.status.code(), Some(exit), "{code}: {}", text(&o));
        assert!(text(&o).contains(said), "{code}: {}", text(&o));
        assert_eq!(starts(&o), 1, "{code}: {}", text(&o));
    }
    // A retryable error: the listener again (after 5 s), then done.
    let o = run("2 0", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(starts(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("retryable error (exit 2): starting it again"), "{}", text(&o));
    // An update request, and a deprecated version where the lane asked for its code: failures
    // that say to rebuild the image.
    for (exits, env, exit) in [
        ("3", &[][..], 1),
        ("4", &[][..], 1),
        ("7", &[("ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE", "1")][..], 7),
    ] {
        let o = run(exits, env);
        assert_eq!(o.status.code(), Some(exit), "{exits}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("rebuild the image with a newer runner"), "{exits}: {err}");
        assert_eq!(starts(&o), 1);
    }
    // TERM to run.sh (the container's PID 1 when the pod goes) reaches the listener.
    let out_file = flake.dir.join("term.out");
    let mut child = run_sh("wait").stdout(fs::File::create(&out_file).unwrap()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fs::read_to_string(&out_file).unwrap().contains("listener waiting") {
        assert!(std::time::Instant::now() < deadline, "the listener did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", fs::read_to_string(&out_file).unwrap());
    assert!(fs::read_to_string(&out_file).unwrap().contains("listener got TERM"));
}

/// `openssl s_server -WWW` on 127.0.0.1 (a free port), serving `dir` with a certificate for
/// IP 127.0.0.1 signed by a CA of its own; stopped when dropped.
struct HttpsServer {
    child: std::process::Child,
    url: String,
    ca: PathBuf,
}

impl HttpsServer {
    fn start(dir: &Path, certs: &Path) -> Self {
        fs::create_dir_all(certs).unwrap();
        let c = |f: &str| certs.join(f);
        let openssl = |args: &[&str]| ok(Command::new("openssl").args(args).current_dir(certs));
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let req = |more: &str| -> Vec<String> { format!("req {ec} {more}").split(' ').map(str::to_string).collect() };
        let ca = req("-x509 -days 2 -keyout ca.key -out ca.crt -subj");
        let mut ca: Vec<&str> = ca.iter().map(String::as_str).collect();
        ca.push("/CN=flywheel e2e lane CA");
        openssl(&ca);
        let csr = req("-keyout server.key -out server.csr -subj /CN=127.0.0.1");
        openssl(&csr.iter().map(String::as_str).collect::<Vec<_>>());
        fs::write(c("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("openssl")
            .args(["s_server", "-quiet", "-WWW", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(c("server.crt"))
            .arg("-key")
            .arg(c("server.key"))
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "openssl s_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        HttpsServer { child, url: format!("https://127.0.0.1:{port}"), ca: c("ca.crt") }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job a CI workflow would run, as the runner runs a step's script: git, HTTPS through the
/// lane's CA, a tool downloaded into the tool cache and run from there, `nix-build`, a pull from
/// the lane's cache, and the canary.
const JOB: &str = r#"#!/usr/bin/env bash
set -euo pipefail
echo "job: first step at $(date +%s.%N)"
echo "job: uid=$(id -u) home=$HOME root=$RUNNER_ROOT lang=$LANG pwd=$PWD"
[ ! -e /usr/bin/id ] || echo "job: the host's /usr is here"
[ ! -f /home/runner/k8s/index.js ] || echo "job: container hooks at /home/runner/k8s/index.js"

# What actions/checkout does, locally: a repository, a commit, a clone.
up="$RUNNER_TEMP/upstream"
git init -q "$up"
printf 'hello from git\n' > "$up/README"
git -C "$up" add README
git -C "$up" -c user.name=ci -c user.email=ci@lane.invalid commit -q -m "first commit"
git clone -q "file://$up" "$GITHUB_WORKSPACE/src"
echo "job: git: $(git -C "$GITHUB_WORKSPACE/src" log --format=%s) / $(cat "$GITHUB_WORKSPACE/src/README")"

# HTTPS to a server whose certificate the lane's extra CA signed, and not without it.
echo "job: https: $(curl -sSf --max-time 20 "$JOB_HTTPS/hello.txt")"
if CURL_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt curl -sSf --max-time 20 "$JOB_HTTPS/hello.txt" 2>/dev/null; then
  echo "job: the image's own bundle trusted the lane's CA"
  exit 9
fi

# What setup-* actions do: a tarball into the tool cache, its binary (built for Debian, its
# loader /lib64/ld-linux-x86-64.so.2) run from there.
tool="$RUNNER_TOOL_CACHE/xz/5.4.1/x64"
mkdir -p "$tool"
curl -sSf --max-time 20 "$JOB_HTTPS/xz.tar.gz" | tar -xz -C "$tool"
touch "$tool.complete"
echo "job: tool: $("$tool/bin/xz" --version | head -n 1), round trip: $(printf 'through xz\n' | "$tool/bin/xz" | "$tool/bin/xz" -d)"

# A build as the runner, with the image's nix.conf; ./result for the completed hook.
printf '%s\n' 'derivation { name = "built-by-the-job"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built in the container > $out" ]; }' > default.nix
nix-build --quiet default.nix >/dev/null
echo "job: built $(readlink result): $(cat result)"

# A path only the lane's cache holds, substituted through the image's nix.conf.
nix-store --realise "$JOB_CACHED" >/dev/null
echo "job: pulled $JOB_CACHED: $(cat "$JOB_CACHED")"

flywheel canary --require bootstrap,cache,cleanup --skip gpu,cuda,vulkan,queue --min-free-gib 1 \
  --report-dir "$GITHUB_WORKSPACE/canary-report"
echo "job: canary passed"
"#;

/// The image the quickstart builds, started by runc from its own config as ARC starts a runner
/// pod (images/runc-pod.sh, which the quickstart prints): `run.sh` with the stand-in listener, which runs a job between the job hooks as the
/// runner does. The job lives in the image: /usr/bin/env, git, curl with the lane's extra CA, a
/// downloaded binary through the FHS loader (nix-ld), nix-build, a pull from the lane's cache,
/// and the canary; the completed hook pushes what the job built.
#[test]
fn the_image_runs_a_job_in_runc_as_arc_starts_it() {
    // The cache first: the image's nix.conf names it.
    let dir = tempdir();
    let data = dir.path().join("cache-data");
    let server = support::server::Server::start(&data, &[]);
    let key = server.keys.iter().find(|(c, _)| c == "main").map(|(_, k)| k.clone()).unwrap();
    let token = ok_str(
        flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", "write", "--data"]).arg(&data),
    );
    let token = token.trim();
    let flake = RunnerFlake::with_settings(serde_json::json!({"cacheUrl": server.url("main"), "cachePublicKey": key}));
    let image = flake.build(&format!("packages.{SYSTEM}.gpu-runner-image"));
    // As root (the image's owners: the runner's home and store are uid 1001's): unpacked, the
    // /nix volume seeded as the init container does, the work volume.
    let pod = flake.dir.join("pod");
    fsgroup_volume(&pod);
    let runc_pod = repo().join("images/runc-pod.sh");
    // With this machine's /nix hidden (a GPU node has none): the init container must need
    // nothing of the host's store. The image is bound elsewhere first.
    let layout = flake.dir.join("layout");
    fs::create_dir_all(&layout).unwrap();
    let script = format!(
        "mount --bind {image} {layout} && mount -t tmpfs none /nix && exec {runc_pod} unpack {layout} {pod}",
        image = image.display(),
        layout = layout.display(),
        runc_pod = runc_pod.display(),
        pod = pod.display()
    );
    let o = Command::new("unshare").args(["-m", "--propagation", "private", "sh", "-c", &script]).output().unwrap();
    assert!(o.status.success() && text(&o).starts_with("flywheel: seeded "), "{}", text(&o));
    let rootfs = pod.join("bundle/rootfs");
    assert!(assert_nothing_outside(&rootfs) > 0);

    // A path only the cache holds: added to this machine's store and pushed.
    let cached_file = dir.path().join(format!("from-the-cache-{}", std::process::id()));
    fs::write(&cached_file, format!("pushed before the job {:?}\n", std::time::SystemTime::now())).unwrap();
    let cached = ok_str(nix_store().arg("--add").arg(&cached_file)).trim().to_string();
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", token]).arg(&cached));

    // The rest of the pod: the lane's extra CA as its ConfigMap, the node's kernel module
    // version; the job's script where the runner writes one, and what the HTTPS server serves.
    let work = pod.join("work");
    let served = pod.join("served");
    fs::create_dir_all(served.join("tool/bin")).unwrap();
    fs::write(served.join("hello.txt"), "hello over TLS\n").unwrap();
    fs::copy("/usr/bin/xz", served.join("tool/bin/xz")).unwrap();
    ok(Command::new("tar").arg("-czf").arg(served.join("xz.tar.gz")).arg("-C").arg(served.join("tool")).arg("bin"));
    let https = HttpsServer::start(&served, &pod.join("certs"));
    let (ca_map, node) = (pod.join("extra-ca"), pod.join("node"));
    fs::create_dir_all(&ca_map).unwrap();
    fs::copy(&https.ca, ca_map.join("ca.crt")).unwrap();
    fs::create_dir_all(&node).unwrap();
    fs::write(node.join("version"), support::driver_root::kernel_version_text("580.159.04")).unwrap();
    // This machine cannot reach cache.nixos.org, the substituter the image's nix.conf keeps
    // beside the lane's: the runner's own nix.conf leaves only the lane's.
    let user_conf = rootfs.join("home/runner/.config/nix");
    fs::create_dir_all(&user_conf).unwrap();
    fs::write(user_conf.join("nix.conf"), format!("substituters = {}\n", server.url("main"))).unwrap();
    ok(Command::new("chown").args(["-R", "1001:1001"]).arg(rootfs.join("home/runner/.config")));
    let temp = work.join("_temp");
    fs::create_dir_all(&temp).unwrap();
    fs::write(temp.join("job.sh"), JOB).unwrap();
    fs::set_permissions(temp.join("job.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    ok(Command::new("chown").args(["-R", "1001:1001"]).arg(&temp));

    let env = [
        "ACTIONS_RUNNER_INPUT_JITCONFIG=jit".to_string(),
        "FIXTURE_JOB=/home/runner/_work/_temp/job.sh".to_string(),
        "FLYWHEEL_EXTRA_CA=/etc/flywheel/extra-ca/ca.crt".to_string(),
        "FLYWHEEL_KERNEL_VERSION_FILE=/node/version".to_string(),
        "FLYWHEEL_GPU_DEVICES=/node/no-gpu".to_string(),
        format!("FLYWHEEL_CACHE_TOKEN={token}"),
        format!("JOB_HTTPS={}", https.url),
        format!("JOB_CACHED={cached}"),
    ];
    let mut run = Command::new(&runc_pod);
    run.arg("run").arg(&pod).args(["--name", &format!("flywheel-e2e-{}", std::process::id())]);
    for e in &env {
        run.args(["--env", e]);
    }
    for (source, dest) in [(&ca_map, "/etc/flywheel/extra-ca"), (&node, "/node")] {
        run.arg("--mount").arg(format!("{}:{dest}:ro", source.display()));
    }
    let started = std::time::SystemTime::now();
    let o = run.output().unwrap();
    let said = text(&o);
    assert!(o.status.success(), "{said}");
    let cached_line = format!("job: pulled {cached}: pushed before the job");
    for line in [
        "flywheel: registering the image's store paths with Nix",
        "flywheel: trusting the lane's extra CA (/etc/flywheel/extra-ca/ca.crt)",
        "Runner.Listener run\njitconfig=jit",
        "flywheel: job-started: NVIDIA userspace 580.159.04 matches the kernel module; cache ",
        "job: uid=1001 home=/home/runner root=/home/runner lang=C.UTF-8 pwd=/home/runner/_work/repo/repo",
        "job: container hooks at /home/runner/k8s/index.js",
        "job: git: first commit / hello from git",
        "job: https: hello over TLS",
        "job: tool: xz (XZ Utils) ",
        "round trip: through xz",
        "job: built /nix/store/",
        "-built-by-the-job: built in the container",
        &cached_line,
        "job: canary passed",
        "listener: job exited 0",
        "flywheel: job-completed: pushed ",
    ] {
        assert!(said.contains(line), "no {line:?} in:\n{said}");
    }
    assert!(!said.contains("host's /usr") && !said.contains("load-db failed"), "{said}");
    let first: f64 = said.lines().find_map(|l| l.strip_prefix("job: first step at ")).unwrap().trim().parse().unwrap();
    let start = started.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    eprintln!("{said}\nrunc run to the job's first step: {:.2} s", first - start);

    // runc-pod.sh's --env replaces what the image sets; --gpus wants this machine's GPUs.
    let o = Command::new(&runc_pod)
        .arg("run")
        .arg(&pod)
        .args(["--env", "HOME=/tmp", "--", "/usr/bin/env", "bash", "-c", "echo \"$HOME $(env | grep -c '^HOME=')\""])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "/tmp 1", "{}", text(&o));
    // Bad input: one line, exit 1 (2 for usage), and the pod left as it was.
    for (args, code, want) in [
        (vec!["run", "POD", "--env", "FOO"], 1, "--env takes NAME=VALUE"),
        (vec!["run", "POD", "--mount", "relative:/x"], 1, "--mount takes SRC:DEST[:ro], both absolute"),
        (vec!["unpack", "IMAGE", "POD"], 1, "bundle exists: remove it first"),
        (vec!["unpack", "/nonexistent", "POD"], 1, "is not an OCI layout"),
        (vec!["frobnicate", "POD"], 2, "Starts a runner image"),
    ] {
        let mut c = Command::new(&runc_pod);
        for a in args {
            match a {
                "POD" => c.arg(&pod),
                "IMAGE" => c.arg(&image),
                other => c.arg(other),
            };
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{err}");
        assert!(err.contains(want), "{want}: {err}");
        if code == 1 {
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
    assert!(pod.join("bundle/rootfs/home/runner/run.sh").exists());
    if !Path::new("/dev/nvidia0").exists() {
        let o = Command::new(&runc_pod).arg("run").arg(&pod).arg("--gpus").output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.lines().count() == 1 && err.contains("--gpus: this machine has no /dev/nvidia0"), "{err}");
    }

    // The canary's reports, in the workspace: every required step passed.
    let junit = fs::read_to_string(work.join("repo/repo/canary-report/junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\"") && junit.contains("name=\"bootstrap\""), "{junit}");
    // What the job built is in the cache, signed by the server, as the completed hook pushed it.
    let built = said.lines().find_map(|l| l.strip_prefix("job: built ")).unwrap().split(':').next().unwrap();
    let hash = built.trim_start_matches("/nix/store/").split('-').next().unwrap();
    let narinfo = ok_str(Command::new("curl").args(["-sf", &format!("{}/{hash}.narinfo", server.url("main"))]));
    assert!(narinfo.contains(&format!("StorePath: {built}")) && narinfo.contains("Sig: main-"), "{narinfo}");
}

fn env_of(config: &Value) -> Vec<String> {
    config["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// The hooks' environment: a private temp dir and state dir, so the completed hook's cleanup
/// (what appeared in the temp dir since the started hook) never touches another test's files.
struct HookEnv {
    tmp: PathBuf,
    state: PathBuf,
}

impl HookEnv {
    fn new(dir: &Path) -> Self {
        let (tmp, state) = (dir.join("hook-tmp"), dir.join("hook-state"));
        fs::create_dir_all(&tmp).unwrap();
        HookEnv { tmp, state }
    }

    fn run(&self, hook: &Path, env: &[(&str, &str)]) -> std::process::Output {
        let mut c = Command::new(hook);
        c.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("TMPDIR", &self.tmp)
            .env("FLYWHEEL_HOOK_STATE_DIR", &self.state)
            .env("FLYWHEEL_GPU_DEVICES", self.tmp.join("no-gpu"));
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap_or_else(|e| panic!("running {}: {e}", hook.display()))
    }
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn nix_flake_show_lists_the_runner_images() {
    let flake = RunnerFlake::new();
    let show = ok_str(flake.nix(&["flake", "show"]).args(["--json"]).arg(format!("path:{}", flake.dir.display())));
    let show: Value = serde_json::from_str(&show).unwrap();
    let packages = &show["packages"][SYSTEM];
    for name in ["gpu-runner-image", "plain-runner-image", "gpu-runner-tree", "driverLayer"] {
        assert_eq!(packages[name]["type"], "derivation", "{name} in {show}");
    }
    assert_eq!(packages["gpu-runner-image"]["name"], "flywheel-gpu-runner-image");
}

#[test]
fn mk_runner_image_with_driver_and_cache_is_what_the_cli_builds_and_arc_can_start() {
    let flake = RunnerFlake::new();
    let image = flake.build_and_compare("gpu-runner-image");

    // The image config.
    let cfg = image_config(&image);
    let c = &cfg["config"];
    assert_eq!(c["User"], "1001:1001");
    assert_eq!(c["WorkingDir"], "/home/runner");
    assert_eq!(c["Entrypoint"], serde_json::json!(["/home/runner/run.sh"]));
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.revision"], "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(labels["dev.flywheel.runner.user"], "runner");
    assert_eq!(labels["org.example.purpose"], "e2e");
    assert_eq!(labels["dev.flywheel.driver.version"], "580.159.04", "mkImage labels the driver");
    assert_eq!(labels["dev.flywheel.runner.container-hooks"], "0.8.1", "the container hooks' version");
    // What jobs rely on beyond PATH is in the SBOM too: nix-ld, its libraries, the hooks.
    let index = read_json(&image.join("index.json"));
    let sbom_manifest =
        read_json(&blob(&image, index["manifests"][0]["annotations"]["dev.flywheel.sbom.manifest"].as_str().unwrap()));
    let sbom = read_json(&blob(&image, sbom_manifest["layers"][0]["digest"].as_str().unwrap()));
    let names: Vec<&str> = sbom["packages"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for want in ["nix-ld-standin", "debian-libs", "runner-container-hooks-k8s", "coreutils", "curl"] {
        assert!(names.contains(&want), "{want} not in the SBOM: {names:?}");
    }
    let git = flake.eval_raw(&format!("packages.{SYSTEM}.git.outPath"));
    let nixp = flake.eval_raw(&format!("packages.{SYSTEM}.nix.outPath"));
    let bash = flake.eval_raw(&format!("packages.{SYSTEM}.bash.outPath"));
    let cacert = flake.eval_raw(&format!("packages.{SYSTEM}.cacert.outPath"));
    let runner = flake.eval_raw(&format!("packages.{SYSTEM}.runner.outPath"));
    let coreutils = flake.eval_raw(&format!("packages.{SYSTEM}.coreutils.outPath"));
    let curl = flake.eval_raw(&format!("packages.{SYSTEM}.curl.outPath"));
    let fw = flake.eval_raw(&format!("packages.{SYSTEM}.flywheel.outPath"));
    let libs = flake.eval_raw(&format!("packages.{SYSTEM}.debian-libs.outPath"));
    let ca = format!("{cacert}/etc/ssl/certs/ca-bundle.crt");
    assert_eq!(
        env_of(&cfg),
        vec![
            format!("PATH={git}/bin:{nixp}/bin:{bash}/bin:{coreutils}/bin:{curl}/bin:{fw}/bin"),
            "HOME=/home/runner".to_string(),
            "USER=runner".to_string(),
            "RUNNER_ROOT=/home/runner".to_string(),
            "ACTIONS_RUNNER_PRINT_LOG_TO_STDOUT=1".to_string(),
            "LANG=C.UTF-8".to_string(),
            "ACTIONS_RUNNER_HOOK_JOB_STARTED=/home/runner/hooks/job-started.sh".to_string(),
            "ACTIONS_RUNNER_HOOK_JOB_COMPLETED=/home/runner/hooks/job-completed.sh".to_string(),
            format!("SSL_CERT_FILE={ca}"),
            format!("NIX_SSL_CERT_FILE={ca}"),
            format!("GIT_SSL_CAINFO={ca}"),
            format!("FLYWHEEL_CACHE_URL={CACHE_URL}"),
            format!("NIX_CONFIG=build-hook = {nixp}/libexec/nix/build-remote"),
            format!("NIX_LD={libs}/lib/ld-linux-x86-64.so.2"),
            format!("NIX_LD_LIBRARY_PATH={libs}/lib"),
            "RUNNER_ALLOW_RUNASROOT=0".to_string(),
        ]
    );
    assert_eq!(cfg["created"], "2025-12-29T17:14:27Z");

    // The filesystem, as umoci unpacks it.
    let rootfs = umoci_unpack(&image, &flake.dir.join("bundle"));
    // Self-contained: bash, flywheel and Debian's loader and libraries at least.
    let elfs = assert_nothing_outside(&rootfs);
    assert!(elfs >= 4, "{elfs} ELF files");
    // And they run with the image as their whole world (chroot: no host path to fall back on).
    let flywheel_in_image = format!("{}/bin/flywheel", flake.eval_raw(&format!("packages.{SYSTEM}.flywheel.outPath")));
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot"].into_iter().find(|p| Path::new(p).exists()).expect("chroot");
    let o = Command::new(chroot)
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo \"bash $BASH_VERSION\"; \"$0\" --version", &flywheel_in_image])
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "in a chroot of the image: {}", text(&o));
    assert!(text(&o).starts_with("bash 5.") && text(&o).contains("flywheel "), "{}", text(&o));
    let run_sh = rootfs.join("home/runner/run.sh");
    assert!(fs::metadata(&run_sh).unwrap().permissions().mode() & 0o111 != 0, "run.sh is executable");
    let run_text = fs::read_to_string(&run_sh).unwrap();
    assert!(run_text.starts_with(&format!("#!{bash}/bin/bash\n")), "{run_text}");
    assert!(run_text.contains(&format!("{runner}/bin/Runner.Listener run \"$@\" &")), "{run_text}");
    // The CA bundle where Debian- and Fedora-built programs look, and it is the image's own.
    for at in ["etc/ssl/certs/ca-certificates.crt", "etc/pki/tls/certs/ca-bundle.crt"] {
        assert_eq!(fs::read_link(rootfs.join(at)).unwrap(), PathBuf::from(&ca), "{at}");
        let inside = rootfs.join(ca.trim_start_matches('/'));
        assert!(fs::read_to_string(&inside).unwrap().contains("CA bundle fixture"), "{at}: {}", inside.display());
    }
    let passwd = fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.lines().any(|l| l == format!("runner:x:1001:1001:runner:/home/runner:{bash}/bin/bash")), "{passwd}");
    assert!(passwd.starts_with("root:x:0:0:"), "{passwd}");
    let group = fs::read_to_string(rootfs.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "runner:x:1001:"), "{group}");
    let nix_conf = fs::read_to_string(rootfs.join("etc/nix/nix.conf")).unwrap();
    for line in [
        "experimental-features = nix-command flakes",
        "build-users-group =",
        "sandbox = false",
        &format!("extra-substituters = {CACHE_URL}"),
        &format!("extra-trusted-public-keys = {CACHE_KEY}"),
    ] {
        assert!(nix_conf.lines().any(|l| l == line), "{line:?} in {nix_conf}");
    }
    for hook in ["job-started.sh", "job-completed.sh"] {
        let p = rootfs.join("home/runner/hooks").join(hook);
        assert!(fs::metadata(&p).unwrap().permissions().mode() & 0o111 != 0, "{hook} is executable");
    }
    assert!(rootfs.join("usr/share/flywheel/driver/manifest.json").is_file(), "the driver layer");
    assert!(rootfs.join(ca.trim_start_matches('/')).is_file(), "the CA bundle");
    assert!(rootfs.join(format!("{}/bin/git", git.trim_start_matches('/'))).is_file(), "the packages");
    assert_eq!(fs::read_link(rootfs.join("bin/sh")).unwrap(), PathBuf::from(format!("{bash}/bin/bash")));

    // Owners and modes, as the layers record them (umoci --rootless maps them to this user).
    assert_eq!(owner_in_layers(&image, "home/runner/run.sh"), Some((1001, 1001, 0o755)));
    assert_eq!(owner_in_layers(&image, "home/runner"), Some((1001, 1001, 0o755)));
    assert_eq!(owner_in_layers(&image, "home/runner/_work"), Some((1001, 1001, 0o755)));
    assert_eq!(owner_in_layers(&image, "home/runner/hooks/job-completed.sh"), Some((1001, 1001, 0o755)));
    assert_eq!(owner_in_layers(&image, "tmp"), Some((0, 0, 0o1777)));
    assert_eq!(owner_in_layers(&image, "etc/passwd").map(|(u, g, _)| (u, g)), Some((0, 0)));

    // The store is the runner user's (nixStore.owner), modes as the NAR records them.
    assert_eq!(owner_in_layers(&image, "nix"), Some((1001, 1001, 0o755)));
    assert_eq!(owner_in_layers(&image, "nix/store"), Some((1001, 1001, 0o755)));
    let git_rel = git.trim_start_matches('/');
    assert_eq!(owner_in_layers(&image, git_rel), Some((1001, 1001, 0o555)));
    assert_eq!(owner_in_layers(&image, &format!("{git_rel}/bin")), Some((1001, 1001, 0o555)));
    assert_eq!(owner_in_layers(&image, &format!("{git_rel}/bin/git")).map(|(u, g, _)| (u, g)), Some((1001, 1001)));
    let bash_rel = bash.trim_start_matches('/');
    assert_eq!(owner_in_layers(&image, &format!("{bash_rel}/bin/bash")).map(|(u, g, _)| (u, g)), Some((1001, 1001)));
    // ... and the image carries Nix's state directories and the registration (nixStore.registration).
    for d in ["nix/var/nix/db", "nix/var/nix/gcroots", "nix/var/nix/profiles", "nix/var/nix/temproots"] {
        assert_eq!(owner_in_layers(&image, d), Some((1001, 1001, 0o755)), "{d}");
    }
    assert_eq!(owner_in_layers(&image, "nix/.flywheel-registration"), Some((1001, 1001, 0o444)));
    let layer_names: Vec<String> =
        cfg["history"].as_array().unwrap().iter().map(|h| h["created_by"].as_str().unwrap().to_string()).collect();
    assert_eq!(layer_names.last().unwrap(), "flywheel image build: nix-db layer nix-db", "{layer_names:?}");
    assert!(run_text.contains("nix-store --load-db < /nix/.flywheel-registration"), "{run_text}");
    // The lane pod's init container: the image's seed-nix.sh, as the runner user, copies its
    // /nix into an fsGroup volume; that copy is the store the registration describes.
    let pod = flake.dir.join("pod");
    let vol = pod.join("nix");
    fsgroup_volume(&vol);
    seed_as_runner(&rootfs, &vol);
    check_registration(&pod, &flake.dir, &[&git, &bash, &runner, &cacert]);

    // run.sh starts the listener with ARC's JIT configuration in the environment.
    let out =
        Command::new(&run_sh).env("ACTIONS_RUNNER_INPUT_JITCONFIG", "eyJqaXQiOnRydWV9").arg("--once").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Runner.Listener run --once\njitconfig=eyJqaXQiOnRydWV9\n");

    // job-started (`flywheel lane hook job-started`): the driver check, against the node's
    // kernel module; the image's tree stands in for the container's /.
    let started = rootfs.join("home/runner/hooks/job-started.sh");
    let good = flake.dir.join("kernel-good");
    fs::write(&good, support::driver_root::kernel_version_text("580.159.04")).unwrap();
    let bad = flake.dir.join("kernel-bad");
    fs::write(&bad, support::driver_root::kernel_version_text("570.86.15")).unwrap();
    let hook_env = HookEnv::new(&flake.dir);
    let root = rootfs.to_str().unwrap();
    let out = hook_env
        .run(&started, &[("FLYWHEEL_DRIVER_ROOT", root), ("FLYWHEEL_KERNEL_VERSION_FILE", good.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.starts_with("flywheel: job-started: NVIDIA userspace 580.159.04 matches"), "{said}");
    // The image's own cache URL is the default, and nothing listens there.
    assert!(said.contains(&format!("cache {CACHE_URL} unreachable")), "{said}");
    assert_eq!(said.lines().count(), 1, "{said}");
    let out = hook_env
        .run(&started, &[("FLYWHEEL_DRIVER_ROOT", root), ("FLYWHEEL_KERNEL_VERSION_FILE", bad.to_str().unwrap())]);
    assert!(!out.status.success(), "a driver that does not match the kernel module fails the job: {}", text(&out));
    assert!(text(&out).contains("job refused") && text(&out).contains("570.86.15"), "{}", text(&out));

    // job-completed: never fails the job.
    let completed = rootfs.join("home/runner/hooks/job-completed.sh");
    let out = hook_env.run(&completed, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not pushed (no FLYWHEEL_CACHE_TOKEN)"), "{}", text(&out));
    // A pull request: not pushed, and says so.
    let workspace = flake.dir.join("workspace");
    fs::create_dir_all(&workspace).unwrap();
    std::os::unix::fs::symlink(&git, workspace.join("result")).unwrap();
    let ws = workspace.to_str().unwrap();
    let out = hook_env.run(
        &completed,
        &[("FLYWHEEL_CACHE_TOKEN", "t"), ("GITHUB_EVENT_NAME", "pull_request"), ("GITHUB_WORKSPACE", ws)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not pushed (pull_request event"), "{}", text(&out));
    // A push to a cache that cannot be reached: it tries, says it failed, and exits 0.
    let list = flake.dir.join("push-paths");
    fs::write(&list, format!("{nixp}\n")).unwrap();
    let out = hook_env.run(
        &completed,
        &[
            ("FLYWHEEL_CACHE_TOKEN", "t"),
            ("FLYWHEEL_CACHE_URL", "http://127.0.0.1:9/main"),
            ("GITHUB_EVENT_NAME", "push"),
            ("GITHUB_WORKSPACE", ws),
            ("FLYWHEEL_PUSH_PATHS", list.to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("push failed") && said.contains("the job's result stands"), "{said}");
}

#[test]
fn mk_runner_image_without_driver_or_cache() {
    let flake = RunnerFlake::new();
    let image = flake.build_and_compare("plain-runner-image");
    let cfg = image_config(&image);
    let env = env_of(&cfg);
    assert!(!env.iter().any(|e| e.starts_with("FLYWHEEL_CACHE_URL=") || e.starts_with("SSL_CERT_FILE=")), "{env:?}");
    assert!(cfg["config"]["Labels"].get("dev.flywheel.driver.version").is_none());
    assert!(cfg["config"]["Labels"].get("org.opencontainers.image.revision").is_none());
    assert_eq!(cfg["config"]["Labels"]["dev.flywheel.runner.user"], "runner");
    let layers = manifest(&image)["layers"].as_array().unwrap().len();
    assert!(layers >= 2, "the runner tree and the packages");

    // The tree mkTree built for it, straight from the store.
    let tree = PathBuf::from(flake.eval_raw(&format!("packages.{SYSTEM}.plain-runner-image.runnerTree.outPath")));
    ok(flake
        .nix(&["build"])
        .args(["--no-link", &flake.attr(&format!("packages.{SYSTEM}.plain-runner-image.runnerTree"))]));
    let nix_conf = fs::read_to_string(tree.join("etc/nix/nix.conf")).unwrap();
    assert!(!nix_conf.contains("extra-substituters") && !nix_conf.contains("extra-trusted-public-keys"), "{nix_conf}");
    assert!(tree.join("tmp").is_dir());
    // No driver layer: the job-started hook says so and lets the job run.
    let hook_env = HookEnv::new(&flake.dir);
    let out = hook_env.run(&tree.join("home/runner/hooks/job-started.sh"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no driver check (the image has no driver layer); no cache configured"),
        "{}",
        text(&out)
    );
    // No cache configured, none in the environment: nothing pushed, exit 0, and a file the
    // "job" left in its temp dir is removed.
    fs::write(hook_env.tmp.join("job-scratch"), "x").unwrap();
    let out = hook_env.run(&tree.join("home/runner/hooks/job-completed.sh"), &[("FLYWHEEL_CACHE_TOKEN", "t")]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out),
        "flywheel: job-completed: not pushed (no FLYWHEEL_CACHE_URL); removed 1 temporary entry; GPU free\n"
    );
    assert!(!hook_env.tmp.join("job-scratch").exists());
}

#[test]
fn image_tree_writes_entries_and_refuses_bad_ones_in_one_line() {
    let work = tempdir();
    let spec = work.path().join("entries.json");
    fs::write(
        &spec,
        serde_json::json!([
            { "path": "/home/runner/run.sh", "text": "#!/bin/sh\n", "mode": "0755" },
            { "path": "/bin/sh", "symlink": "/nix/store/x-bash/bin/bash" },
            { "path": "/home/runner/_work", "directory": true, "mode": "0700" },
        ])
        .to_string(),
    )
    .unwrap();
    let out = work.path().join("tree");
    ok(flywheel().args(["image", "tree", "--spec"]).arg(&spec).arg("--out").arg(&out));
    assert_eq!(fs::metadata(out.join("home/runner/run.sh")).unwrap().permissions().mode() & 0o7777, 0o755);
    assert_eq!(fs::metadata(out.join("home/runner/_work")).unwrap().permissions().mode() & 0o7777, 0o700);
    assert_eq!(fs::read_link(out.join("bin/sh")).unwrap(), PathBuf::from("/nix/store/x-bash/bin/bash"));

    for (entries, says) in [
        (serde_json::json!([{ "path": "etc/passwd", "text": "" }]), "not absolute"),
        (serde_json::json!([{ "path": "/a/../b", "text": "" }]), ".."),
        (serde_json::json!([{ "path": "/a", "text": "" }, { "path": "/a", "text": "" }]), "twice"),
        (serde_json::json!([{ "path": "/a", "symlink": "b" }, { "path": "/a/c", "text": "" }]), "under /a"),
        (serde_json::json!([{ "path": "/a", "text": "", "mode": "999" }]), "octal"),
        (serde_json::json!([{ "path": "/a" }]), "exactly one"),
    ] {
        let bad = work.path().join("bad.json");
        fs::write(&bad, entries.to_string()).unwrap();
        let target = work.path().join("bad-tree");
        let o = flywheel().args(["image", "tree", "--spec"]).arg(&bad).arg("--out").arg(&target).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{entries}");
        let line = one_line_error(&o);
        assert!(line.contains(says), "{entries}: {line}");
        assert!(!target.exists(), "nothing written");
    }
    // Usage errors exit 2.
    let o = flywheel().args(["image", "tree", "--out"]).arg(work.path().join("x")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    // Only the output appears beside it: no temporary directories left behind.
    let mut names: Vec<String> =
        fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, vec!["bad.json", "entries.json", "tree"]);
}

#[test]
fn nix_lib_evaluation_tests_pass() {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict"])
        .arg(repo().join("nix/tests/lib.nix"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut said = String::new();
    out.stdout.as_slice().read_to_string(&mut said).unwrap();
    assert!(said.contains("cases passed"), "{said}");
}
