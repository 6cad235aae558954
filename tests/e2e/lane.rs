//! `flywheel lane`: the lane spec (docs/lanes/honey-gpu.toml) round trip, every refusal, the
//! rendered Helm values and workflow against Kubernetes' pod spec schema and GitHub's workflow
//! schema (tests/data/schemas), byte-identical renders, `lane check` against an OCI layout and
//! a docker-registry, and the job hooks against a real cache server and a fixture driver tree.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::driver_root::{self as fx, VERSION};
use support::registry::Registry;
use support::server::Server;
use support::{flywheel, fsgroup_volume, nix_store, ok, ok_str, one_line_error, tempdir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example_spec() -> String {
    fs::read_to_string(repo().join("docs/lanes/honey-gpu.toml")).unwrap()
}

fn schema(name: &str) -> jsonschema::Validator {
    let text = fs::read_to_string(repo().join("tests/data/schemas").join(name)).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

fn yaml_file(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn render(spec: &Path, out: &Path) -> Output {
    flywheel().args(["lane", "render"]).arg(spec).arg("--out").arg(out).output().unwrap()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn the_example_spec_round_trips_and_renders_the_same_valid_bytes_every_time() {
    let t = tempdir();
    let spec = t.path().join("honey-gpu.toml");
    fs::write(&spec, example_spec()).unwrap();

    // Round trip: what `lane show` prints reads back to the same spec (a fixed point), and is
    // the same TOML data as the file with its defaults filled in.
    let shown = ok_str(flywheel().args(["lane", "show"]).arg(&spec));
    let again = t.path().join("shown.toml");
    fs::write(&again, &shown).unwrap();
    assert_eq!(ok_str(flywheel().args(["lane", "show"]).arg(&again)), shown);
    let original: toml::Value = toml::from_str(&example_spec()).unwrap();
    let reread: toml::Value = toml::from_str(&shown).unwrap();
    assert_eq!(reread["image"], original["image"]);
    assert_eq!(reread["labels"], original["labels"]);
    assert_eq!(reread["runners"]["gpu_resource"].as_str(), Some("nvidia.com/gpu"), "defaults are filled in");

    // Same spec, same bytes: twice from the file, once from its round trip.
    let (a, b, c) = (t.path().join("a"), t.path().join("b"), t.path().join("c"));
    for (s, out) in [(&spec, &a), (&spec, &b), (&again, &c)] {
        let o = render(s, out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rendered = files(&a);
    let names: Vec<&str> = rendered.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["README.md", "honey-gpu-canary.yml", "values.yaml"]);
    assert_eq!(files(&b), rendered);
    assert_eq!(files(&c), rendered);
    assert!(
        !fs::read_dir(&a).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')),
        "no temp files left"
    );

    // The values: template.spec is a valid Kubernetes pod spec, and says what the lane needs.
    let values = yaml_file(&a.join("values.yaml"));
    let pod = &values["template"]["spec"];
    let podspec = schema("k8s-podspec-v1.33-strict.json");
    assert_eq!(errors(&podspec, pod), Vec::<String>::new());
    assert_eq!(values["runnerScaleSetName"], "gpu");
    assert_eq!(values["githubConfigSecret"], "arc-github-app");
    assert_eq!((values["minRunners"].as_u64(), values["maxRunners"].as_u64()), (Some(0), Some(2)));
    assert_eq!(pod["runtimeClassName"], "nvidia");
    assert_eq!(pod["priorityClassName"], "ci-gpu");
    assert_eq!(pod["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(pod["tolerations"][0]["key"], "nvidia.com/gpu");
    let runner = &pod["containers"][0];
    assert_eq!(runner["name"], "runner", "ARC finds the runner container by name");
    assert_eq!(runner["command"][0], "/home/runner/run.sh");
    assert!(runner["image"].as_str().unwrap().contains("@sha256:"));
    assert_eq!(runner["resources"]["limits"]["nvidia.com/gpu"], "1");
    let env: Vec<(String, Value)> = runner["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    let var =
        |n: &str| env.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()).unwrap_or_else(|| panic!("{n} missing"));
    assert_eq!(var("ACTIONS_RUNNER_HOOK_JOB_STARTED")["value"], "/home/runner/hooks/job-started.sh");
    assert_eq!(var("ACTIONS_RUNNER_HOOK_JOB_COMPLETED")["value"], "/home/runner/hooks/job-completed.sh");
    assert_eq!(var("FLYWHEEL_CACHE_URL")["value"], "http://flywheel-cache.nix-cache.svc.cluster.local:8080/main");
    assert_eq!(var("FLYWHEEL_CACHE_TOKEN")["valueFrom"]["secretKeyRef"]["name"], "flywheel-cache-main");
    assert_eq!(var("FLYWHEEL_CACHE_PUBLIC_KEY")["valueFrom"]["secretKeyRef"]["key"], "public-key");
    assert!(var("NIX_CONFIG")["value"]
        .as_str()
        .unwrap()
        .contains("extra-trusted-public-keys = $(FLYWHEEL_CACHE_PUBLIC_KEY)"));
    let mounts: Vec<&str> =
        runner["volumeMounts"].as_array().unwrap().iter().map(|m| m["mountPath"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["/nix", "/home/runner/_work", "/home/runner/.cache"]);
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"], "60Gi");
    assert_eq!(volumes[2]["emptyDir"]["sizeLimit"], "10Gi");
    assert_eq!(pod["initContainers"][0]["volumeMounts"][0]["name"], "nix", "the /nix volume is seeded from the image");
    assert_eq!(
        pod["initContainers"][0]["command"],
        serde_json::json!(["/home/runner/hooks/seed-nix.sh", "--to", "/nix-volume"])
    );

    // The schema is not a rubber stamp: a misspelt field and a wrong type are caught.
    let mut broken = pod.clone();
    broken["containers"][0]["imagePullPolicy"] = Value::from(3);
    broken["runtimeClass"] = Value::from("nvidia");
    let found = errors(&podspec, &broken);
    assert!(found.iter().any(|e| e.contains("imagePullPolicy")), "{found:?}");
    assert!(found.iter().any(|e| e.contains("runtimeClass")), "{found:?}");

    // The workflow: valid for GitHub, on the lane's label and schedule, never on pull requests.
    let workflow = yaml_file(&a.join("honey-gpu-canary.yml"));
    let gh = schema("github-workflows.json");
    assert_eq!(errors(&gh, &workflow), Vec::<String>::new());
    assert_eq!(workflow["jobs"]["canary"]["runs-on"], "gpu");
    assert_eq!(workflow["jobs"]["canary"]["timeout-minutes"], 20);
    assert_eq!(workflow["on"]["schedule"][0]["cron"], "17 */6 * * *");
    assert!(workflow["on"].get("pull_request").is_none() && workflow["on"].get("pull_request_target").is_none());
    let mut bad = workflow.clone();
    bad["jobs"]["canary"]["timeout-minutes"] = Value::from("soon");
    assert!(!gh.is_valid(&bad), "a time limit that is not a number");
    let mut bad = workflow.clone();
    bad["jobs"]["canary"]["steps"][0]["runs"] = Value::from("typo");
    assert!(!gh.is_valid(&bad), "a misspelt step key");
    let mut bad = workflow.clone();
    bad["on"]["schedule"] = Value::from("17 * * * *");
    assert!(!gh.is_valid(&bad), "a schedule that is not a list of crons");

    // The README: who owns each part of the contract, and how to apply.
    let readme = String::from_utf8(rendered[0].1.clone()).unwrap();
    for part in
        ["| bootstrap |", "| cache |", "| traces |", "| queue |", "| cleanup |", "helm upgrade --install honey-gpu"]
    {
        assert!(readme.contains(part), "README lacks {part}");
    }

    // No secret value anywhere in what is rendered.
    for (name, bytes) in &rendered {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("ghp_") && !text.contains("BEGIN"), "{name}");
    }
}

/// (what to change in the example spec, text the one-line refusal must hold)
const REFUSALS: &[(&str, &str, &[&str])] = &[
    (
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\ncontainer_mode = \"docker\"",
        &["unknown variant `docker`", "expected `kubernetes`", "line "],
    ),
    (
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\nenv = { ACTIONS_RUNNER_CONTAINER_HOOKS = \"/x.js\" }",
        &["runners.env.ACTIONS_RUNNER_CONTAINER_HOOKS", "set by the lane itself"],
    ),
    (
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\nextra_ca = { config_map = \"Corp CA\" }",
        &["runners.extra_ca.config_map", "Corp CA"],
    ),
    (
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\nextra_ca = { config_map = \"corp-ca\", key = \"ca crt\" }",
        &["runners.extra_ca.key", "not a ConfigMap key"],
    ),
    (
        "@sha256:4b1d33b4f3e1c95b3a6d0e3c4e2f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5",
        ":v1",
        &["image.reference", "not pinned by digest", "REGISTRY/REPOSITORY@sha256:DIGEST"],
    ),
    (
        "labels = [\"gpu\", \"gpu-nvidia\"]",
        "labels = [\"gpu\", \"cmux-gpu\"]",
        &["labels[1]", "repo-named", "\"cmux\"", "capability words"],
    ),
    ("labels = [\"gpu\", \"gpu-nvidia\"]", "labels = [\"jesssullivan/cmux\"]", &["labels[0]", "repo-named"]),
    ("gpus = 1", "gpus = 0", &["runners.gpus", "at least 1"]),
    ("min = 0\nmax = 2", "min = 3\nmax = 2", &["runners.min", "min 3 is more than max 2", "at most runners.max"]),
    (
        "push_token = { secret = \"flywheel-cache-main\", key = \"push-token\" }",
        "push_token = \"ghp_abcdefghijklmnopqrstuvwxyz0123456789\"",
        &["cache.push_token", "inline", "secret = \"NAME\", key = \"push-token\""],
    ),
    (
        "public_key = { secret = \"flywheel-cache-main\", key = \"public-key\" }",
        "public_key = \"main-1:6Vw6AfaXtv5dxLH9N1D2gfQgm8O1vzpX4aqdSyzR5Y0=\"",
        &["cache.public_key", "inline"],
    ),
    (
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "env = { GITHUB_TOKEN = \"abc\" }",
        &["runners.env.GITHUB_TOKEN", "inline secret"],
    ),
    (
        "config_secret = { secret = \"arc-github-app\" }",
        "config_secret = \"arc-github-app\"",
        &["github.config_secret", "inline"],
    ),
    ("schedule = \"17 */6 * * *\"", "schedule = \"every day\"", &["canary.schedule", "five-field cron"]),
    ("cleanup = \"infra team (job hooks)\"", "cleanup = \"\"", &["owners.cleanup", "nobody owns it"]),
    ("[volumes.cache]\nsize = \"10Gi\"", "[volumes.cache]\nsize = \"lots\"", &["volumes.cache.size", "not a size"]),
    ("driver_version = \"580.159.04\"", "driver_version = \"latest\"", &["image.driver_version", "580.159.04"]),
    (
        "namespace = \"arc-runners\"",
        "namespace = \"arc-runners\"\nnamspace = \"x\"",
        &["line 9", "unknown field `namspace`"],
    ),
    ("name = \"honey-gpu\"", "name = \"honey-gpu", &["line 5", "honey-gpu.toml"]),
];

#[test]
fn an_extra_ca_is_mounted_from_its_config_map_and_named_for_run_sh() {
    let t = tempdir();
    let spec = t.path().join("honey-gpu.toml");
    let text = example_spec().replacen(
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\nextra_ca = { config_map = \"corp-ca\", key = \"root.pem\" }",
        1,
    );
    fs::write(&spec, text).unwrap();
    let out = t.path().join("out");
    let o = render(&spec, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let values = yaml_file(&out.join("values.yaml"));
    let pod = &values["template"]["spec"];
    assert_eq!(errors(&schema("k8s-podspec-v1.33-strict.json"), pod), Vec::<String>::new());
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "extra-ca").expect("the volume");
    assert_eq!(
        volume["configMap"],
        serde_json::json!({"name": "corp-ca", "items": [{"key": "root.pem", "path": "ca.crt"}]})
    );
    let runner = &pod["containers"][0];
    let mount = runner["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "extra-ca").expect("the mount");
    assert_eq!(
        (mount["mountPath"].as_str(), mount["readOnly"].as_bool()),
        (Some("/etc/flywheel/extra-ca"), Some(true))
    );
    let env = runner["env"].as_array().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == "FLYWHEEL_EXTRA_CA" && e["value"] == "/etc/flywheel/extra-ca/ca.crt"),
        "{env:?}"
    );
    // The spec's runner policy reaches the canary in these pods only when the spec sets it.
    assert!(!env.iter().any(|e| e["name"] == "FLYWHEEL_RUNNER_MIN_VERSION"), "{env:?}");
    // The seed container does not need it.
    assert!(pod["initContainers"][0]["volumeMounts"].as_array().unwrap().iter().all(|m| m["name"] != "extra-ca"));
}

/// The example spec in ARC's kubernetes container mode.
fn kubernetes_spec(text: &str) -> String {
    text.replacen(
        "requests = { cpu = \"4\", memory = \"16Gi\" }",
        "requests = { cpu = \"4\", memory = \"16Gi\" }\ncontainer_mode = \"kubernetes\"",
        1,
    )
}

#[test]
fn kubernetes_container_mode_names_the_images_hooks_and_the_work_claim_and_needs_a_storage_class() {
    let t = tempdir();
    let spec = t.path().join("honey-gpu.toml");
    fs::write(&spec, kubernetes_spec(&example_spec())).unwrap();
    let out = t.path().join("out");
    let o = render(&spec, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let values = yaml_file(&out.join("values.yaml"));
    assert_eq!(
        values["containerMode"],
        serde_json::json!({"type": "kubernetes", "kubernetesModeWorkVolumeClaim": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": "local-path",
            "resources": {"requests": {"storage": "40Gi"}}
        }})
    );
    let pod = &values["template"]["spec"];
    assert_eq!(errors(&schema("k8s-podspec-v1.33-strict.json"), pod), Vec::<String>::new());
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let find = |name: &str| env.iter().find(|e| e["name"] == name).cloned().unwrap_or(Value::Null);
    assert_eq!(find("ACTIONS_RUNNER_CONTAINER_HOOKS")["value"], "/home/runner/k8s/index.js");
    assert_eq!(find("ACTIONS_RUNNER_POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(find("ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER")["value"], "false");
    let readme = fs::read_to_string(out.join("README.md")).unwrap();
    assert!(readme.contains("Container mode `kubernetes`"), "{readme}");
    // The spec's own choice of job containers wins, and appears once.
    let required = t.path().join("required.toml");
    let text = kubernetes_spec(&example_spec()).replacen(
        "container_mode = \"kubernetes\"",
        "container_mode = \"kubernetes\"\nenv = { ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER = \"true\" }",
        1,
    );
    fs::write(&required, text).unwrap();
    let out2 = t.path().join("out2");
    assert!(render(&required, &out2).status.success());
    let values = yaml_file(&out2.join("values.yaml"));
    let env = values["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    let set: Vec<&Value> = env.iter().filter(|e| e["name"] == "ACTIONS_RUNNER_REQUIRE_JOB_CONTAINER").collect();
    assert_eq!(set.len(), 1, "{env:?}");
    assert_eq!(set[0]["value"], "true");
    // Without it, none of this is rendered.
    let plain = t.path().join("plain");
    let example = t.path().join("example.toml");
    fs::write(&example, example_spec()).unwrap();
    assert!(render(&example, &plain).status.success());
    let values = yaml_file(&plain.join("values.yaml"));
    assert!(values.get("containerMode").is_none());
    assert!(!fs::read_to_string(plain.join("values.yaml")).unwrap().contains("ACTIONS_RUNNER_CONTAINER_HOOKS"));
    // An emptyDir work volume cannot be mounted into the job's pods: refused in one line.
    let no_class = t.path().join("no-class.toml");
    let text = kubernetes_spec(&example_spec()).replacen(
        "[volumes.work]\nsize = \"40Gi\"\nstorage_class = \"local-path\"",
        "[volumes.work]\nsize = \"40Gi\"",
        1,
    );
    fs::write(&no_class, text).unwrap();
    let o = render(&no_class, &t.path().join("out3"));
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("runners.container_mode") && line.contains("volumes.work.storage_class"), "{line}");
    assert!(!t.path().join("out3").exists());
}

#[test]
fn lane_check_in_kubernetes_mode_needs_an_image_with_container_hooks() {
    let t = tempdir();
    let image = labelled_images(t.path());
    let check = |layout: &Path, digest: &str| {
        let spec = spec_for(t.path(), &format!("{digest}.toml"), &format!("registry.example/r@{digest}"), VERSION);
        fs::write(&spec, kubernetes_spec(&fs::read_to_string(&spec).unwrap())).unwrap();
        flywheel().args(["lane", "check"]).arg(&spec).arg("--layout").arg(layout).output().unwrap()
    };
    let (with, digest) = image("with", &["dev.flywheel.runner.container-hooks=0.8.1"]);
    let o = check(&with, &digest);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (without, digest) = image("without", &[]);
    let o = check(&without, &digest);
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(
        line.contains("runners.container_mode")
            && line.contains("/home/runner/k8s/index.js")
            && line.contains("dev.flywheel.runner.container-hooks")
            && line.contains("containerHooks"),
        "{line}"
    );
}

#[test]
fn every_bad_spec_is_refused_in_one_line_naming_the_field_and_the_fix_and_nothing_is_rendered() {
    let t = tempdir();
    for (i, (from, to, want)) in REFUSALS.iter().enumerate() {
        let text = example_spec();
        assert!(text.contains(from), "case {i}: the example spec has no {from:?}");
        let spec = t.path().join(format!("{i}/honey-gpu.toml"));
        fs::create_dir_all(spec.parent().unwrap()).unwrap();
        fs::write(&spec, text.replacen(from, to, 1)).unwrap();
        let out = t.path().join(format!("{i}/out"));
        let o = render(&spec, &out);
        assert_eq!(o.status.code(), Some(1), "case {i}: {}", String::from_utf8_lossy(&o.stderr));
        let line = one_line_error(&o);
        for w in *want {
            assert!(line.contains(w), "case {i}: {w:?} not in: {line}");
        }
        assert!(!out.exists(), "case {i}: rendered something");
        // `lane check` refuses the same spec before it reads any image.
        let o = flywheel().args(["lane", "check"]).arg(&spec).args(["--layout", "/nonexistent"]).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "case {i}");
        assert!(one_line_error(&o).contains(want[0]), "case {i}: {}", one_line_error(&o));
    }
    // Several problems at once: all of them, numbered, on one line.
    let spec = t.path().join("many.toml");
    fs::write(&spec, example_spec().replace("gpus = 1", "gpus = 0").replace("min = 0", "min = 9")).unwrap();
    let line = one_line_error(&render(&spec, &t.path().join("many")));
    assert!(line.contains("2 problems: (1) runners.gpus") && line.contains("(2) runners.min"), "{line}");
    // A usage error is exit 2.
    let o = flywheel().args(["lane", "render"]).arg(&spec).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// A driver tree for `version` (as `flywheel driver collect` writes it) and an image of it.
fn driver_image(dir: &Path, version: &str) -> (PathBuf, PathBuf, String) {
    let root = dir.join(format!("nvidia-{version}"));
    fx::host_root(&root, version);
    let tree = dir.join(format!("tree-{version}"));
    ok(flywheel().args(["driver", "collect", "--no-nvml", "--driver-root"]).arg(&root).arg("--out").arg(&tree));
    let image = dir.join(format!("image-{version}"));
    let digest =
        ok_str(flywheel().args(["image", "build", "--no-layer-cache", "--driver"]).arg(&tree).arg("--out").arg(&image));
    (tree, image, digest.trim().to_string())
}

fn spec_for(dir: &Path, name: &str, reference: &str, driver: &str) -> PathBuf {
    let text = example_spec()
        .replace(
            "ghcr.io/tinyland-inc/flywheel-gpu-runner@sha256:4b1d33b4f3e1c95b3a6d0e3c4e2f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5",
            reference,
        )
        .replace("driver_version = \"580.159.04\"", &format!("driver_version = \"{driver}\""));
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn lane_check_compares_the_spec_with_the_image_in_a_layout_and_in_a_registry() {
    let t = tempdir();
    let (_, image, digest) = driver_image(t.path(), VERSION);
    let layout = image.to_str().unwrap();
    let reference = format!("registry.example/flywheel/gpu-runner@{digest}");

    let good = spec_for(t.path(), "good.toml", &reference, VERSION);
    let line = ok_str(flywheel().args(["lane", "check"]).arg(&good).args(["--layout", layout]));
    assert!(line.contains(&format!("carries NVIDIA userspace {VERSION}")), "{line}");

    // The spec names another driver than the image carries: refused, and nothing rendered.
    let other = spec_for(t.path(), "other.toml", &reference, "570.86.15");
    let o = flywheel().args(["lane", "check"]).arg(&other).args(["--layout", layout]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("image.driver_version: the spec says 570.86.15") && line.contains(VERSION), "{line}");
    assert!(line.contains(&format!("set driver_version = \"{VERSION}\"")), "{line}");
    let out = t.path().join("out");
    let render_checked = |spec: &Path| {
        flywheel()
            .args(["lane", "render"])
            .arg(spec)
            .arg("--out")
            .arg(&out)
            .args(["--layout", layout])
            .output()
            .unwrap()
    };
    assert_eq!(render_checked(&other).status.code(), Some(1));
    assert!(!out.exists());
    let o = render_checked(&good);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A layout holding another image than the one pinned.
    let wrong = spec_for(t.path(), "wrong.toml", &format!("registry.example/x@sha256:{}", "0".repeat(64)), VERSION);
    let line =
        one_line_error(&flywheel().args(["lane", "check"]).arg(&wrong).args(["--layout", layout]).output().unwrap());
    assert!(line.contains("image.reference: the spec pins sha256:000") && line.contains(&digest), "{line}");

    // From a registry: the pushed image's config label, by digest.
    let registry = Registry::start();
    let target = registry.reference("flywheel/gpu-runner:580");
    let pushed = ok_str(flywheel().args(["image", "push", "--insecure", layout, &target]));
    assert!(pushed.contains(&digest), "{pushed}");
    let pinned = format!("{}@{digest}", registry.reference("flywheel/gpu-runner"));
    let good = spec_for(t.path(), "reg-good.toml", &pinned, VERSION);
    let line = ok_str(flywheel().args(["lane", "check", "--insecure"]).arg(&good));
    assert!(line.starts_with("ok: ") && line.contains("registry"), "{line}");
    let bad = spec_for(t.path(), "reg-bad.toml", &pinned, "570.86.15");
    let line = one_line_error(&flywheel().args(["lane", "check", "--insecure"]).arg(&bad).output().unwrap());
    assert!(line.contains("image.driver_version: the spec says 570.86.15"), "{line}");
    // A digest the registry does not have.
    let missing = spec_for(
        t.path(),
        "reg-missing.toml",
        &format!("{}@sha256:{}", registry.reference("flywheel/gpu-runner"), "1".repeat(64)),
        VERSION,
    );
    let o = flywheel().args(["lane", "check", "--insecure"]).arg(&missing).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("404"), "{}", one_line_error(&o));
}

/// A driver tree for VERSION in `dir`, and a builder of images of it with labels: (layout, digest).
fn labelled_images(dir: &Path) -> impl Fn(&str, &[&str]) -> (PathBuf, String) + '_ {
    let root = dir.join("nvidia");
    fx::host_root(&root, VERSION);
    let tree = dir.join("tree");
    ok(flywheel().args(["driver", "collect", "--no-nvml", "--driver-root"]).arg(&root).arg("--out").arg(&tree));
    move |name: &str, labels: &[&str]| {
        let out = dir.join(name);
        let mut c = flywheel();
        c.args(["image", "build", "--no-layer-cache", "--driver"]).arg(&tree).arg("--out").arg(&out);
        for l in labels {
            c.args(["--label", l]);
        }
        let digest = ok_str(&mut c).trim().to_string();
        (out, digest)
    }
}

#[test]
fn lane_check_reports_the_runner_and_warns_when_it_is_old_or_below_the_minimum() {
    let t = tempdir();
    let image = labelled_images(t.path());
    let (labelled, digest) =
        image("labelled", &["dev.flywheel.runner.version=2.338.0", "dev.flywheel.runner.released=2026-10-06"]);
    let layout = labelled.to_str().unwrap();
    let spec = spec_for(t.path(), "spec.toml", &format!("registry.example/r@{digest}"), VERSION);
    let check = |spec: &Path, today: &str| {
        ok_str(flywheel().args(["lane", "check"]).arg(spec).args(["--layout", layout, "--today", today]))
    };
    // 25 days after the release: reported, no warning.
    let out = check(&spec, "2026-10-31");
    assert!(out.contains("runner: 2.338.0, released 2026-10-06 (25 days ago)"), "{out}");
    assert!(!out.contains("warning:"), "{out}");
    // 26 days: a warning that says what to do; still exit 0.
    let out = check(&spec, "2026-11-01");
    assert!(
        out.contains("warning: the runner 2.338.0 was released 26 days ago") && out.contains("runner.json"),
        "{out}"
    );
    // The spec's own policy: a minimum above the image's runner, and a shorter age.
    let strict = t.path().join("strict.toml");
    let text = fs::read_to_string(&spec).unwrap().replace(
        &format!("driver_version = \"{VERSION}\""),
        &format!("driver_version = \"{VERSION}\"\nrunner_min_version = \"2.339.0\"\nrunner_max_age_days = 3"),
    );
    fs::write(&strict, text).unwrap();
    let out = check(&strict, "2026-10-10");
    assert!(out.contains("below the minimum 2.339.0") && out.contains("released 4 days ago"), "{out}");
    // The same policy goes to the lane's pods, where the canary reads it.
    let rendered = t.path().join("strict-out");
    let o = render(&strict, &rendered);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let values = yaml_file(&rendered.join("values.yaml"));
    let env = values["template"]["spec"]["containers"][0]["env"].as_array().unwrap().clone();
    for (name, value) in [("FLYWHEEL_RUNNER_MIN_VERSION", "2.339.0"), ("FLYWHEEL_RUNNER_MAX_AGE_DAYS", "3")] {
        assert!(env.iter().any(|e| e["name"] == name && e["value"] == value), "{name}: {env:?}");
    }
    // An image without the labels: said so.
    let (bare, digest) = image("bare", &[]);
    let spec = spec_for(t.path(), "bare.toml", &format!("registry.example/r@{digest}"), VERSION);
    let out = ok_str(flywheel().args(["lane", "check"]).arg(&spec).args(["--layout", bare.to_str().unwrap()]));
    assert!(out.contains("warning: the image has no dev.flywheel.runner.version label"), "{out}");
    // Bad input: a date that is not one (usage, 2), a bad minimum in the spec (1, one line).
    let o = flywheel()
        .args(["lane", "check"])
        .arg(&spec)
        .args(["--layout", layout, "--today", "tomorrow"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let bad = t.path().join("bad.toml");
    let text = fs::read_to_string(&strict).unwrap().replace("\"2.339.0\"", "\"2.339\"");
    fs::write(&bad, text).unwrap();
    let o = flywheel().args(["lane", "check"]).arg(&bad).args(["--layout", layout]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("image.runner_min_version") && line.contains("MAJOR.MINOR.PATCH"), "{line}");
}

/// The hooks' environment, as a runner pod gives it: private temp and state dirs.
struct Job {
    tmp: PathBuf,
    env: Vec<(String, String)>,
}

impl Job {
    fn new(dir: &Path, env: &[(&str, &str)]) -> Job {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let mut all: Vec<(String, String)> = vec![
            ("TMPDIR".into(), tmp.display().to_string()),
            ("HOME".into(), dir.display().to_string()),
            ("FLYWHEEL_HOOK_STATE_DIR".into(), dir.join("state").display().to_string()),
        ];
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Job { tmp, env: all }
    }

    fn hook(&self, which: &str, extra: &[(&str, &str)]) -> Output {
        let mut c = flywheel();
        c.args(["lane", "hook", which]);
        for var in [
            "GITHUB_EVENT_NAME",
            "GITHUB_WORKSPACE",
            "FLYWHEEL_CACHE_URL",
            "FLYWHEEL_CACHE_TOKEN",
            "RUNNER_TEMP",
            "FLYWHEEL_PUSH_PATHS",
        ] {
            c.env_remove(var);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

fn stdout_line(o: &Output) -> String {
    let s = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        s.lines().count(),
        1,
        "one line for the job log: {s:?} (stderr: {})",
        String::from_utf8_lossy(&o.stderr)
    );
    s.trim_end().to_string()
}

fn narinfo_status(server: &Server, path: &str) -> String {
    let hash = Path::new(path).file_name().unwrap().to_str().unwrap().split('-').next().unwrap().to_string();
    ok_str(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/{hash}.narinfo", server.url("main")),
    ]))
}

fn add_to_store(dir: &Path, name: &str) -> String {
    let f = dir.join(name);
    fs::write(&f, format!("{name} {:?}\n", std::time::SystemTime::now())).unwrap();
    ok_str(nix_store().arg("--add").arg(&f)).trim().to_string()
}

#[test]
fn hooks_refuse_a_driver_mismatch_skip_pull_requests_push_what_the_job_built_and_clean_up() {
    let t = tempdir();
    let data = t.path().join("data");
    let server = Server::start(&data, &[]);
    let token = ok_str(
        flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", "write", "--data"]).arg(&data),
    )
    .trim()
    .to_string();
    let url = server.url("main");
    let (tree, _, _) = driver_image(t.path(), VERSION);
    let good = t.path().join("kernel-good");
    fs::write(&good, fx::kernel_version_text(VERSION)).unwrap();
    let bad = t.path().join("kernel-bad");
    fs::write(&bad, fx::kernel_version_text("570.86.15")).unwrap();
    // A stand-in for a GPU device node: the GPU check looks for processes holding it open.
    let device = t.path().join("dev-nvidia0");
    fs::write(&device, "").unwrap();
    let job = Job::new(
        &t.path().join("job"),
        &[
            ("FLYWHEEL_DRIVER_ROOT", tree.to_str().unwrap()),
            ("FLYWHEEL_CACHE_URL", &url),
            ("FLYWHEEL_CACHE_TOKEN", &token),
            ("FLYWHEEL_GPU_DEVICES", device.to_str().unwrap()),
        ],
    );
    let kernel = |k: &Path| ("FLYWHEEL_KERNEL_VERSION_FILE", k.to_str().unwrap().to_string());

    // The node's kernel module is another version: the job is refused, saying both.
    let (k, v) = kernel(&bad);
    let o = job.hook("job-started", &[(k, &v)]);
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("job refused") && line.contains("570.86.15") && line.contains(VERSION), "{line}");

    // A pull request's job: started, built something, left a temp file; nothing is pushed.
    let (k, v) = kernel(&good);
    let o = job.hook("job-started", &[(k, &v)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout_line(&o);
    assert!(
        line.starts_with(&format!(
            "flywheel: job-started: NVIDIA userspace {VERSION} matches the kernel module; cache {url} answered in "
        )),
        "{line}"
    );
    let built = add_to_store(t.path(), "pr-output");
    fs::write(job.tmp.join("pr-scratch"), "x").unwrap();
    let o = job.hook("job-completed", &[("GITHUB_EVENT_NAME", "pull_request")]);
    assert!(o.status.success());
    let line = stdout_line(&o);
    assert!(line.contains("not pushed (pull_request event"), "{line}");
    assert!(line.contains("removed 1 temporary entry; GPU free"), "{line}");
    assert_eq!(narinfo_status(&server, &built), "404", "a pull request's output never reaches the cache");
    assert!(!job.tmp.join("pr-scratch").exists());

    // A push's job: what it built is pushed (--since the job's start), temp files removed, and a
    // process it left holding the GPU is named; the hook still exits 0.
    fs::write(job.tmp.join("from-before"), "kept").unwrap();
    let o = job.hook("job-started", &[(k, &v)]);
    assert!(o.status.success());
    let built = add_to_store(t.path(), "push-output");
    fs::create_dir_all(job.tmp.join("build-dir/sub")).unwrap();
    let mut holder = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3<'{}'; exec sleep 60", device.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = job.hook("job-completed", &[("GITHUB_EVENT_NAME", "push")]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(o.status.success());
    let line = stdout_line(&o);
    assert!(line.contains(&format!("to {url} in ")) && line.contains("pushed "), "{line}");
    assert!(line.contains("removed 1 temporary entry"), "{line}");
    assert!(line.contains(&format!("GPU still held by pid {} (sleep)", holder.id())), "{line}");
    assert_eq!(narinfo_status(&server, &built), "200", "the job's output is in the cache");
    assert!(job.tmp.join("from-before").exists(), "what was there before the job is not the job's");
    assert!(!job.tmp.join("build-dir").exists());

    // The cache goes away: the push fails, the hook says so and exits 0.
    drop(server);
    let o = job.hook("job-started", &[(k, &v)]);
    assert!(o.status.success(), "an unreachable cache does not refuse the job");
    assert!(stdout_line(&o).contains("unreachable"), "{}", stdout_line(&o));
    add_to_store(t.path(), "after-cache-went");
    let o = job.hook("job-completed", &[("GITHUB_EVENT_NAME", "push")]);
    assert!(o.status.success());
    let line = stdout_line(&o);
    assert!(line.contains("push failed (") && line.contains("the job's result stands"), "{line}");
}

/// (relative path, kind, mode, symlink target or content) of everything under `root`.
fn tree(root: &Path) -> Vec<(String, char, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                out.push((rel, 'd', mode, Vec::new()));
                stack.push(p);
            } else if m.file_type().is_symlink() {
                out.push((rel, 'l', 0, fs::read_link(&p).unwrap().as_os_str().as_encoded_bytes().to_vec()));
            } else {
                out.push((rel, 'f', mode, fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// `flywheel lane seed-nix --from FROM --to TO` as the runner user (uid and gid 1001), as the
/// init container runs it.
fn seed_as_runner(from: &Path, to: &Path) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "1001", "--regid", "1001", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_flywheel"))
        .args(["lane", "seed-nix", "--from"])
        .arg(from)
        .arg("--to")
        .arg(to)
        .output()
        .unwrap()
}

#[test]
fn seed_nix_copies_a_read_only_store_into_an_fsgroup_volume_as_the_runner_user() {
    let t = tempdir();
    chmod(t.path(), 0o755);
    // An image's /nix: read-only store directories and files, a symlink, the registration.
    let src = t.path().join("image-nix");
    let pkg = src.join("store/0123456789abcdfghijklmnpqrsvwxyz-tool-1.0");
    fs::create_dir_all(pkg.join("bin")).unwrap();
    fs::create_dir_all(src.join("var/nix/db")).unwrap();
    fs::write(pkg.join("bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    std::os::unix::fs::symlink("bin/tool", pkg.join("tool")).unwrap();
    fs::write(src.join(".flywheel-registration"), "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-tool-1.0\n").unwrap();
    chmod(&pkg.join("bin/tool"), 0o555);
    chmod(&src.join(".flywheel-registration"), 0o444);
    chmod(&pkg.join("bin"), 0o555);
    chmod(&pkg, 0o555);
    let want = tree(&src);

    let vol = t.path().join("vol");
    fsgroup_volume(&vol);
    let o = seed_as_runner(&src, &vol);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = stdout_line(&o);
    assert!(line.contains("seeded") && line.contains("2 files") && line.contains("1 symlinks"), "{line}");
    let mut got = tree(&vol);
    got.retain(|(p, ..)| p != ".flywheel-seeded");
    assert_eq!(got, want, "the volume holds the image's /nix, modes and all");
    assert!(vol.join(".flywheel-seeded").is_file());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(pkg.join("bin/tool")).unwrap().mtime(),
        fs::metadata(vol.join("store/0123456789abcdfghijklmnpqrsvwxyz-tool-1.0/bin/tool")).unwrap().mtime()
    );

    // Seeded once: the next start of the pod finds it so and copies nothing.
    let o = seed_as_runner(&src, &vol);
    assert!(o.status.success());
    assert!(stdout_line(&o).contains("already seeded"), "{}", stdout_line(&o));

    // An interrupted copy (a read-only directory left half full, no marker) is cleared and redone.
    let half = t.path().join("half");
    fsgroup_volume(&half);
    let stale = half.join("store/0123456789abcdfghijklmnpqrsvwxyz-tool-1.0");
    fs::create_dir_all(&stale).unwrap();
    ok(Command::new("chown").arg("-R").arg("1001:1001").arg(half.join("store")));
    chmod(&stale, 0o555);
    let o = seed_as_runner(&src, &half);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout_line(&o).contains("entries cleared first"), "{}", stdout_line(&o));
    let mut got = tree(&half);
    got.retain(|(p, ..)| p != ".flywheel-seeded");
    assert_eq!(got, want);

    // No volume mounted there: one line, exit 1.
    let o = flywheel().args(["lane", "seed-nix", "--to"]).arg(t.path().join("missing")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("missing"), "{}", one_line_error(&o));
}
