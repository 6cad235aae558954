//! `flywheel canary` end to end on this machine, which has no NVIDIA GPU: the gpu and cuda
//! steps fail (or skip) with their reasons while the rest run for real: the Vulkan loader with
//! Mesa's lavapipe, a real flywheel cache server pushed to and pulled from, Nix for the
//! bootstrap and push checks. Every report is parsed back by an independent reader (Python's
//! XML, prometheus_client, jsonschema).

mod support;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::Server;
use support::{canary, flywheel, nix_store, ok, ok_str, one_line_error, tempdir};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn events(dir: &Path) -> Vec<Value> {
    let text = fs::read_to_string(dir.join("events.jsonl")).expect("events.jsonl");
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}"))).collect()
}

fn step<'a>(events: &'a [Value], name: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == "step" && e["step"] == name)
        .unwrap_or_else(|| panic!("no result for step {name} in {events:?}"))
}

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3").arg("-c").arg(script).args(args).output().expect("python3");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/canary-events.schema.json")
}

/// Every line of events.jsonl against docs/canary-events.schema.json (python3-jsonschema).
fn validate_events(dir: &Path) {
    python(
        "import json, sys, jsonschema\n\
         schema = json.load(open(sys.argv[1]))\n\
         jsonschema.Draft202012Validator.check_schema(schema)\n\
         for n, line in enumerate(open(sys.argv[2]), 1):\n\
         \x20   errors = list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(line)))\n\
         \x20   assert not errors, f'line {n}: {errors[0].message}'\n",
        &[&s(&schema()), &s(&dir.join("events.jsonl"))],
    );
}

/// (tests, failures, skipped) of junit.xml, read by Python's XML parser.
fn junit_counts(dir: &Path) -> (u32, u32, u32) {
    let out = python(
        "import sys, xml.etree.ElementTree as ET\n\
         root = ET.parse(sys.argv[1]).getroot()\n\
         cases = root.findall('.//testcase')\n\
         f = sum(1 for c in cases if c.find('failure') is not None)\n\
         s = sum(1 for c in cases if c.find('skipped') is not None)\n\
         print(len(cases), f, s)\n",
        &[&s(&dir.join("junit.xml"))],
    );
    let n: Vec<u32> = out.split_whitespace().map(|x| x.parse().expect("number")).collect();
    (n[0], n[1], n[2])
}

/// Samples of canary.prom, as prometheus_client parses them: "name{k=v,...} value" lines.
fn prom_samples(dir: &Path) -> Vec<String> {
    python(
        "import sys\n\
         from prometheus_client.parser import text_string_to_metric_families\n\
         for fam in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
         \x20   for s in fam.samples:\n\
         \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
         \x20       print(f'{s.name}{{{labels}}} {float(s.value)}')\n",
        &[&s(&dir.join("canary.prom"))],
    )
    .lines()
    .map(String::from)
    .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_a_gpu_gpu_and_cuda_fail_with_their_reasons_and_every_report_is_written() {
    let t = tempdir();
    let dir = t.path().join("report");
    let out = canary(&["--report-dir", &s(&dir), "--skip", "cache"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(last, "flywheel: error: canary failed: required step(s) gpu, cuda did not pass", "{err}");

    let ev = events(&dir);
    assert_eq!(ev.first().map(|e| e["event"].clone()), Some(Value::from("run-start")));
    assert_eq!(ev.last().map(|e| e["event"].clone()), Some(Value::from("run-end")));
    for name in ["bootstrap", "gpu", "cuda", "vulkan", "cache", "queue", "cleanup"] {
        let r = step(&ev, name);
        assert!(r["status"].is_string() && r["duration_ms"].is_u64(), "{r}");
    }
    let gpu = step(&ev, "gpu");
    assert_eq!(gpu["status"], "fail");
    let reason = gpu["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("libnvidia-ml.so.1 not found") && reason.contains("driver not loaded"), "{reason}");
    assert!(gpu["remedy"].as_str().is_some_and(|r| !r.is_empty()), "a failure has a remedy: {gpu}");
    let cuda = step(&ev, "cuda");
    assert_eq!(cuda["status"], "fail");
    assert!(cuda["reason"].as_str().unwrap_or_default().contains("libcuda.so.1 not found"), "{cuda}");
    // Vulkan runs for real on the CPU (Mesa's lavapipe).
    let vk = step(&ev, "vulkan");
    assert_eq!(vk["status"], "pass", "{vk}");
    assert!(vk.to_string().to_lowercase().contains("llvmpipe"), "lavapipe's device: {vk}");
    assert_eq!(step(&ev, "bootstrap")["status"], "pass", "{}", step(&ev, "bootstrap"));
    assert_eq!(step(&ev, "cache")["status"], "skip");
    assert_eq!(step(&ev, "cache")["reason"], "skipped by --skip");
    assert_eq!(step(&ev, "queue")["status"], "skip", "not required, and nothing to time");
    assert_eq!(step(&ev, "cleanup")["status"], "pass");
    let end = ev.last().expect("end");
    assert_eq!(end["status"], "fail");
    assert_eq!(end["failed"], serde_json::json!(["gpu", "cuda"]));
    validate_events(&dir);

    assert_eq!(junit_counts(&dir), (7, 2, 2));
    let prom = prom_samples(&dir);
    for want in [
        "flywheel_canary_success{} 0.0",
        "flywheel_canary_step_success{step=gpu} 0.0",
        "flywheel_canary_step_success{step=vulkan} 1.0",
    ] {
        assert!(prom.iter().any(|l| l == want), "{want} not in {prom:#?}");
    }
    assert!(prom.iter().any(|l| l.starts_with("flywheel_canary_vulkan_devices{} ")), "{prom:#?}");
    let summary = fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    assert!(summary.contains("FAIL") && summary.contains("libnvidia-ml.so.1 not found"), "{summary}");
    // Only the four reports: no temp or partial files.
    let mut names: Vec<String> =
        fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["canary.prom", "events.jsonl", "junit.xml", "summary.md"]);
    // The terminal table is on stdout.
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("gpu") && table.contains("FAIL"), "{table}");
}

/// A driver library that is there but links one that is not (as the 580 driver's link libdl,
/// libpthread and librt): the steps name the missing library and say to add it, not that the
/// driver is missing.
#[test]
fn a_driver_library_whose_dependency_is_missing_is_reported_by_that_dependency() {
    let t = tempdir();
    let dir = t.path().join("report");
    let libs = t.path().join("lib");
    fs::create_dir_all(&libs).expect("lib dir");
    // NVML's step reads the library's exports before it opens it: a stub that has them.
    let stub = t.path().join("nvml.c");
    let exports = ["nvmlInit_v2", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount_v2"];
    let body: String = exports
        .iter()
        .chain(["nvmlDeviceGetHandleByIndex_v2"].iter())
        .map(|f| format!("int {f}(void) {{ return 0; }}\n"))
        .collect();
    fs::write(&stub, body).expect("write the stub");
    ok(Command::new("gcc").args(["-shared", "-fPIC", "-o"]).arg(libs.join("libnvidia-ml.so.1")).arg(&stub));
    fs::copy(support::driver_root::template_library(), libs.join("libcuda.so.1")).expect("copy the template library");
    for name in ["libcuda.so.1", "libnvidia-ml.so.1"] {
        ok(Command::new("patchelf").args(["--add-needed", "libflywheel-e2e-missing.so.1"]).arg(libs.join(name)));
    }
    let out = canary(&[
        "--report-dir",
        &s(&dir),
        "--require",
        "gpu,cuda",
        "--skip",
        "bootstrap,vulkan,cache,queue,cleanup",
        "--cuda-lib",
        &s(&libs.join("libcuda.so.1")),
    ])
    .env("LD_LIBRARY_PATH", &libs)
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let ev = events(&dir);
    for (name, lib) in [("cuda", "libcuda.so.1"), ("gpu", "libnvidia-ml.so.1")] {
        let r = step(&ev, name);
        let reason = r["reason"].as_str().unwrap_or_default();
        let want = format!("{lib} is there but cannot be loaded: it needs libflywheel-e2e-missing.so.1");
        assert!(reason.contains(&want), "{r}");
        assert!(r["remedy"].as_str().unwrap_or_default().contains("lacks libflywheel-e2e-missing.so.1"), "{r}");
    }
    validate_events(&dir);
}

#[test]
fn bootstrap_reports_the_images_runner_and_warns_when_it_is_old_or_too_low() {
    let t = tempdir();
    let date = |days_ago: i64| (time::OffsetDateTime::now_utc() - time::Duration::days(days_ago)).date().to_string();
    let run = |name: &str, env: &[(&str, String)], labels: Option<&Path>, extra: &[&str]| {
        let dir = t.path().join(name);
        let mut args = vec!["--report-dir".to_string(), s(&dir), "--skip".into(), "gpu,cuda,vulkan,cache,queue".into()];
        if let Some(l) = labels {
            args.extend(["--image-labels".to_string(), s(l)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = canary(&args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run");
        assert!(out.status.success(), "{}", stderr(&out));
        let ev = events(&dir);
        validate_events(&dir);
        (step(&ev, "bootstrap").clone(), prom_samples(&dir))
    };
    let notes = |b: &Value| {
        b["notes"]
            .as_array()
            .map(|n| n.iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };

    // From the environment the image sets: a current runner, no warning.
    let (b, prom) = run(
        "fresh",
        &[("FLYWHEEL_RUNNER_VERSION", "2.338.0".into()), ("FLYWHEEL_RUNNER_RELEASED", date(3))],
        None,
        &[],
    );
    assert_eq!(b["status"], "pass", "{b}");
    assert_eq!(b["details"]["runner_version"], "2.338.0");
    assert_eq!(b["details"]["runner_warnings"], serde_json::json!([]));
    assert!(notes(&b).iter().any(|n| n.starts_with("runner 2.338.0 released") && n.contains("(3 days ago)")), "{b}");
    assert!(prom.iter().any(|l| l.starts_with("flywheel_canary_runner_release_age_seconds{} 259200")), "{prom:#?}");

    // From the labels: 40 days old, and below a minimum the lane sets: two warnings, still a pass.
    let labels = t.path().join("labels.json");
    fs::write(
        &labels,
        serde_json::json!({"config": {"Labels": {"dev.flywheel.runner.version": "2.338.0", "dev.flywheel.runner.released": date(40)}}}).to_string(),
    )
    .unwrap();
    // The minimum as a lane's pod gives it (FLYWHEEL_RUNNER_MIN_VERSION, from the spec).
    let (b, _) = run("old", &[("FLYWHEEL_RUNNER_MIN_VERSION", "2.340.0".into())], Some(&labels), &[]);
    assert_eq!(b["status"], "pass", "{b}");
    let warnings = notes(&b).into_iter().filter(|n| n.starts_with("warning: ")).collect::<Vec<_>>();
    assert_eq!(warnings.len(), 2, "{b}");
    assert!(warnings.iter().any(|w| w.contains("below the minimum 2.340.0")), "{warnings:?}");
    assert!(warnings.iter().any(|w| w.contains("40 days ago") && w.contains("runner.json")), "{warnings:?}");
    // The environment wins over the labels; a shorter age from the command line.
    let (b, _) =
        run("env-wins", &[("FLYWHEEL_RUNNER_RELEASED", date(10))], Some(&labels), &["--runner-max-age-days", "7"]);
    assert!(notes(&b).iter().any(|n| n.contains("10 days ago") && n.starts_with("warning: ")), "{b}");

    // A version that is not one fails the step, with a remedy.
    let (b, _) = {
        let dir = t.path().join("bad");
        let out = canary(&["--report-dir", &s(&dir), "--skip", "gpu,cuda,vulkan,cache,queue"])
            .env("FLYWHEEL_RUNNER_VERSION", "latest")
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        (step(&events(&dir), "bootstrap").clone(), ())
    };
    assert_eq!(b["status"], "fail", "{b}");
    assert!(b["reason"].as_str().unwrap_or_default().contains("runner version \"latest\""), "{b}");
}

/// A fresh store path, added with Nix.
fn store_file(dir: &Path, name: &str, body: &str) -> String {
    let f = dir.join(name);
    fs::write(&f, body).expect("write");
    ok_str(nix_store().arg("--add").arg(&f)).trim().to_string()
}

#[test]
fn with_gpu_steps_not_required_the_run_passes_against_a_real_cache() {
    let t = tempdir();
    let data = t.path().join("data");
    let mut server = Server::start(&data, &[]);
    let write = ok_str(
        flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", "write", "--data"]).arg(&data),
    )
    .trim()
    .to_string();
    let key = server.keys[0].1.clone();
    let known = store_file(t.path(), "canary-known", &format!("known {:?}\n", Instant::now()));
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", &write, &known]));

    let summary = t.path().join("step-summary.md");
    fs::write(&summary, "# earlier step\n").expect("write");
    let dir = t.path().join("report");
    let out = canary(&[
        "--report-dir",
        &s(&dir),
        "--require",
        "bootstrap,vulkan,cache,cleanup",
        "--cache",
        &server.url("main"),
        "--trusted-key",
        &key,
        "--token",
        &write,
        "--known-path",
        &known,
    ])
    .env("GITHUB_STEP_SUMMARY", &summary)
    .output()
    .expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&dir);
    validate_events(&dir);
    for name in ["gpu", "cuda"] {
        let r = step(&ev, name);
        assert_eq!(r["status"], "skip", "{r}");
        assert_eq!(r["required"], false);
        assert!(r["reason"].as_str().is_some_and(|x| x.contains("not found")), "{r}");
    }
    let cache = step(&ev, "cache");
    assert_eq!(cache["status"], "pass", "{cache}");
    assert_eq!(cache["details"]["known_path"]["result"], "hit", "{cache}");
    assert_eq!(cache["details"]["known_path"]["path"], known.as_str());
    assert_eq!(cache["details"]["pushed_path"]["result"], "hit", "the pushed path was pulled back: {cache}");
    let pushed = cache["details"]["push"]["path"].as_str().expect("pushed path").to_string();
    let names: Vec<&str> =
        cache["metrics"].as_array().expect("metrics").iter().filter_map(|m| m["name"].as_str()).collect();
    for m in [
        "cache_info_latency_seconds",
        "cache_narinfo_latency_seconds",
        "cache_pull_bytes_per_second",
        "cache_push_bytes_per_second",
    ] {
        assert!(names.contains(&m), "{m} not in {names:?}");
    }
    // The cache holds the pushed path; the local store no longer does (cleanup deleted it).
    let hash = &pushed["/nix/store/".len()..][..32];
    let narinfo =
        Command::new("curl").args(["-sf", &format!("{}/{hash}.narinfo", server.url("main"))]).output().expect("curl");
    assert!(
        narinfo.status.success() && String::from_utf8_lossy(&narinfo.stdout).contains(&pushed),
        "the cache serves {pushed}"
    );
    assert!(!Path::new(&pushed).exists(), "cleanup deletes the fresh path from the local store");
    let cleanup = step(&ev, "cleanup");
    assert_eq!(cleanup["status"], "pass", "{cleanup}");
    for p in cleanup["details"]["scratch_removed"].as_array().expect("scratch list") {
        assert!(!Path::new(p.as_str().unwrap_or_default()).exists(), "{p} removed");
    }
    // The job summary was appended to, not replaced.
    let text = fs::read_to_string(&summary).expect("summary");
    assert!(text.starts_with("# earlier step\n") && text.contains("PASS"), "{text}");
    server.stop();
}

#[test]
fn a_hung_cache_fails_its_step_at_the_limit_and_the_canary_still_reports() {
    // A server that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    let t = tempdir();
    let dir = t.path().join("report");
    let started = Instant::now();
    let out = canary(&[
        "--report-dir",
        &s(&dir),
        "--require",
        "cache",
        "--skip",
        "gpu,cuda,vulkan",
        "--cache",
        &format!("http://127.0.0.1:{port}/main"),
        "--step-timeout",
        "cache=2",
    ])
    .output()
    .expect("run");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(took < Duration::from_secs(25), "the canary ended at the step's limit, not the server's: {took:?}");
    let ev = events(&dir);
    let cache = step(&ev, "cache");
    assert_eq!(cache["status"], "fail");
    assert_eq!(cache["reason"], "timed out after 2 s", "{cache}");
    assert!(cache["duration_ms"].as_u64().is_some_and(|d| (2000..5000).contains(&d)), "{cache}");
    assert_eq!(step(&ev, "cleanup")["status"], "pass", "the steps after it still ran");
    assert_eq!(junit_counts(&dir).1, 1);
}

#[test]
fn queue_time_from_queued_at_and_from_the_github_api() {
    let t = tempdir();
    // --queued-at, 90 s ago.
    let queued = time::OffsetDateTime::now_utc() - time::Duration::seconds(90);
    let at = queued.format(&time::format_description::well_known::Rfc3339).expect("format");
    let dir = t.path().join("a");
    let base = ["--skip", "bootstrap,gpu,cuda,vulkan,cache,cleanup", "--require", "queue"];
    let out = canary(&base).args(["--report-dir", &s(&dir), "--queued-at", &at]).output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let q = step(&events(&dir), "queue").clone();
    let secs = q["details"]["queue_seconds"].as_f64().expect("seconds");
    assert!((89.0..120.0).contains(&secs), "{q}");
    assert_eq!(q["details"]["source"], "--queued-at");
    // Over the limit.
    let dir = t.path().join("b");
    let out =
        canary(&base).args(["--report-dir", &s(&dir), "--queued-at", &at, "--max-queue", "1m"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let q = step(&events(&dir), "queue").clone();
    assert!(q["reason"].as_str().is_some_and(|r| r.contains("more than 60 s")), "{q}");
    // Nothing to time, required: a failure that says why.
    let dir = t.path().join("c");
    let out = canary(&base).args(["--report-dir", &s(&dir)]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(step(&events(&dir), "queue")["reason"].as_str().is_some_and(|r| r.contains("no --queued-at")));

    // The GitHub API, as a static server of the documented response shape
    // (GET /repos/{owner}/{repo}/actions/runs/{run_id}/attempts/{attempt}/jobs).
    let api = t.path().join("api");
    let jobs = api.join("repos/team/infra/actions/runs/4242/attempts/2");
    fs::create_dir_all(&jobs).expect("mkdir");
    fs::write(
        jobs.join("jobs"),
        r#"{"total_count": 2, "jobs": [
            {"id": 1, "run_id": 4242, "name": "canary", "status": "completed", "created_at": "2026-11-25T01:00:00Z", "started_at": "2026-11-25T01:00:04Z", "runner_name": "gpu-old"},
            {"id": 2, "run_id": 4242, "name": "canary", "status": "in_progress", "created_at": "2026-11-25T01:10:00Z", "started_at": "2026-11-25T01:12:30Z", "runner_name": "gpu-7x2k"}
        ]}"#,
    )
    .expect("write");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("port");
    let mut server = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory", &s(&api)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = t.path().join("d");
    let out = canary(&base)
        .args(["--report-dir", &s(&dir)])
        .envs([
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REPOSITORY", "team/infra"),
            ("GITHUB_RUN_ID", "4242"),
            ("GITHUB_RUN_ATTEMPT", "2"),
            ("GITHUB_JOB", "canary"),
            ("RUNNER_NAME", "gpu-7x2k"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_TOKEN", "ghs_test"),
        ])
        .env("GITHUB_API_URL", &url)
        .output()
        .expect("run");
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ev = events(&dir);
    assert_eq!(ev[0]["run_id"], "4242-2");
    assert_eq!(ev[0]["github"]["runner_name"], "gpu-7x2k");
    let q = step(&ev, "queue");
    assert_eq!(q["details"]["queue_seconds"].as_f64(), Some(150.0), "{q}");
    assert_eq!(q["details"]["source"], "the GitHub API");
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let t = tempdir();
    for (args, want) in [
        (vec!["--require", "gpu,nope"], "no step named \"nope\""),
        (vec!["--skip", "everything"], "no step named"),
        (vec!["--queued-at", "yesterday"], "not an RFC 3339 time"),
        (vec!["--step-timeout", "cache=0"], "between 0 and 3600"),
        (vec!["--cache", "ftp://x/main"], "http"),
        (vec!["--publish", "http://cache:5480/main"], "no cache name"),
        (vec!["--max-queue", "soon"], "expected a duration"),
        (vec!["--runner-min-version", "2.x"], "MAJOR.MINOR.PATCH"),
        (vec!["--runner-max-age-days", "0"], "--runner-max-age-days"),
    ] {
        let out = canary(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    let file = t.path().join("a-file");
    fs::write(&file, "keep me").expect("write");
    for (args, want) in [
        (vec!["--report-dir".to_string(), s(&file)], "not a directory"),
        (vec!["--trusted-key".to_string(), "garbage".to_string()], "--trusted-key \"garbage\""),
        (
            vec!["--require".to_string(), "cache".to_string(), "--skip".to_string(), "cache".to_string()],
            "both name cache",
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = canary(&args).output().expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(one_line_error(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(fs::read_to_string(&file).expect("read"), "keep me", "a bad --report-dir is left as it was");
}

#[test]
fn the_lane_workflow_is_valid_scheduled_never_for_forks_and_always_keeps_its_reports() {
    let wf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.github/workflows/gpu-canary.yml");
    // GitHub's workflow schema (SchemaStore's, as check-jsonschema vendors it).
    let out = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(&wf)
        .output()
        .expect("check-jsonschema (pip install check-jsonschema; .ci/run does)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let facts = python(
        "import sys, yaml, json\n\
         w = yaml.safe_load(open(sys.argv[1]))\n\
         on = w.get('on', w.get(True))\n\
         job = w['jobs']['canary']\n\
         up = [s for s in job['steps'] if 'upload-artifact' in s.get('uses', '')]\n\
         run = ' '.join(s.get('run', '') for s in job['steps'])\n\
         print(json.dumps({'triggers': sorted(on), 'runs_on': job['runs-on'], 'timeout': job.get('timeout-minutes'),\n\
         \x20 'group': w.get('concurrency', {}).get('group'), 'upload_if': up[0].get('if') if up else None,\n\
         \x20 'upload_path': up[0]['with']['path'] if up else None, 'fork_guard': job.get('if', ''),\n\
         \x20 'runs_canary': 'run .#canary' in run and '--report-dir canary-report' in run}))\n",
        &[&s(&wf)],
    );
    let f: Value = serde_json::from_str(&facts).expect("json");
    assert_eq!(f["triggers"], serde_json::json!(["schedule", "workflow_dispatch"]), "no pull_request trigger");
    assert_eq!(f["runs_on"], "gpu", "the capability label");
    assert!(f["timeout"].as_u64().is_some_and(|t| t > 0 && t <= 60));
    assert!(f["group"].as_str().is_some_and(|g| !g.is_empty()));
    assert_eq!(f["upload_if"], "always()", "reports uploaded on success too");
    assert_eq!(f["upload_path"], "canary-report/");
    assert!(f["fork_guard"].as_str().is_some_and(|g| g.contains("head.repo.full_name == github.repository")));
    assert_eq!(f["runs_canary"], true);
}

/// flake.nix's `apps.<system>.canary`, evaluated by Debian's Nix with a stand-in for nixpkgs
/// (nothing here can fetch nixpkgs): the attributes the app uses, `writeShellScript` writing the
/// script as nixpkgs does (a shebang and the text), the package as a folder holding this
/// flywheel, and `vulkan-loader` as a folder holding the machine's loader. The script it makes
/// is then run: `nix run .#canary -- ARGS` is `flywheel canary ARGS` with the Vulkan loader set.
#[test]
fn the_flakes_canary_app_runs_flywheel_canary_with_nixpkgs_vulkan_loader() {
    let t = tempdir();
    let pkg = t.path().join("pkg");
    fs::create_dir_all(pkg.join("bin")).expect("mkdir");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_flywheel"), pkg.join("bin/flywheel")).expect("symlink");
    let vk = t.path().join("vulkan-loader");
    fs::create_dir_all(vk.join("lib")).expect("mkdir");
    let system_loader = ["/usr/lib/x86_64-linux-gnu/libvulkan.so.1", "/usr/lib/aarch64-linux-gnu/libvulkan.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("libvulkan1 is installed (tests/run installs it)");
    std::os::unix::fs::symlink(system_loader, vk.join("lib/libvulkan.so.1")).expect("symlink");
    let flake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../flake.nix");
    let expr = format!(
        r##"let
          lib = {{
            genAttrs = names: f: builtins.listToAttrs (map (n: {{ name = n; value = f n; }}) names);
            fileset = {{ toSource = a: a.root; unions = l: l; }};
            licenses.asl20 = "asl20";
          }};
          pkgs = {{
            inherit lib;
            rustPlatform.buildRustPackage = args: "{pkg}";
            writeShellScript = name: text: builtins.toFile name ("#!/bin/sh\n" + text);
            vulkan-loader = "{vk}";
          }};
          nixpkgs = {{ inherit lib; legacyPackages = {{ x86_64-linux = pkgs; aarch64-linux = pkgs; }}; }};
          outputs = (import {flake}).outputs {{ self = outputs; inherit nixpkgs; }};
          app = outputs.apps.${{builtins.currentSystem}}.canary;
        in assert app.type == "app"; app.program"##,
        pkg = pkg.display(),
        vk = vk.display(),
        flake = flake.display(),
    );
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--read-write-mode", "--json", "--expr", &expr])
        .output()
        .expect("nix-instantiate");
    assert!(out.status.success(), "{}", stderr(&out));
    let program: String = serde_json::from_slice(&out.stdout).expect("a JSON string");
    assert!(program.starts_with("/nix/store/") && program.ends_with("-flywheel-canary"), "{program}");
    let script = fs::read_to_string(&program).expect("the script");
    assert!(script.contains(&format!("exec {}/bin/flywheel canary \"$@\"", pkg.display())), "{script}");

    let run = |loader: Option<&str>, dir: &Path| {
        let mut c = Command::new("sh");
        c.arg(&program).args([
            "--require",
            "vulkan",
            "--skip",
            "bootstrap,gpu,cuda,cache,queue,cleanup",
            "--report-dir",
            &s(dir),
        ]);
        c.env_remove("GITHUB_STEP_SUMMARY").env_remove("FLYWHEEL_VULKAN_LOADER");
        if let Some(l) = loader {
            c.env("FLYWHEEL_VULKAN_LOADER", l);
        }
        c.output().expect("run the app")
    };
    // The loader defaults to nixpkgs' (here, the stand-in's).
    let dir = t.path().join("a");
    let out = run(None, &dir);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let vulkan = step(&events(&dir), "vulkan").clone();
    assert_eq!(vulkan["details"]["loader"], s(&vk.join("lib/libvulkan.so.1")).as_str(), "{vulkan}");
    // A loader the job names wins.
    let dir = t.path().join("b");
    let out = run(Some("/nonexistent/libvulkan.so.1"), &dir);
    assert_eq!(out.status.code(), Some(1));
    let vulkan = step(&events(&dir), "vulkan").clone();
    assert!(
        vulkan["reason"].as_str().is_some_and(|r| r.starts_with("/nonexistent/libvulkan.so.1 not found")),
        "{vulkan}"
    );
}
