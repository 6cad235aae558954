//! The cache server's status page (`GET /`) and its JSON (`GET /api/v1/status`), against a
//! server started by the test and filled by a real push.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::Server;
use support::{canary, flywheel, ok, ok_str, tempdir};

fn curl(args: &[&str]) -> String {
    ok_str(Command::new("curl").args(["-sS", "--fail"]).args(args))
}

#[test]
fn the_status_shows_each_caches_figures_quota_and_nix_conf_lines() {
    let work = tempdir();
    let w = work.path();
    let config = w.join("cache.toml");
    std::fs::write(&config, "[caches.main]\nmax-size = \"1GiB\"\n[caches.team]\nvisibility = \"private\"\n")
        .expect("write");
    let data = w.join("data");
    let server = Server::start(&data, &["--config", config.to_str().expect("utf-8")]);
    let key = server.keys.iter().find(|(n, _)| n == "main").expect("main").1.clone();
    let token = ok_str(
        flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", "write", "--data"]).arg(&data),
    )
    .trim()
    .to_string();
    let edge = support::edge_cases();
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", &token]).arg(edge));
    // One hit and one miss; the server writes its counters to the index every second.
    let hash = &edge.file_name().expect("name").to_string_lossy()[..32];
    curl(&[&format!("{}/{hash}.narinfo", server.url("main"))]);
    let _ = Command::new("curl").args(["-sS", &format!("{}/{}.narinfo", server.url("main"), "0".repeat(32))]).output();

    let deadline = Instant::now() + Duration::from_secs(10);
    let main = loop {
        let status: Value = serde_json::from_str(&curl(&[&format!("{}/api/v1/status", server.base)])).expect("JSON");
        let main = status["caches"].as_array().expect("caches").iter().find(|c| c["name"] == "main").cloned();
        let main = main.expect("main in the status");
        if main["figures"]["narinfo_misses"].as_i64() == Some(1) || Instant::now() > deadline {
            break main;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let f = &main["figures"];
    assert_eq!(f["paths"].as_u64(), Some(1), "{main}");
    assert!(f["bytes"].as_u64().unwrap_or(0) > 0);
    assert_eq!((f["narinfo_hits"].as_i64(), f["narinfo_misses"].as_i64()), (Some(1), Some(1)), "{main}");
    assert_eq!(f["hit_rate"].as_f64(), Some(0.5));
    assert_eq!(f["quota_bytes"].as_u64(), Some(1 << 30));
    assert_eq!(main["public_key"].as_str(), Some(key.as_str()));
    let conf: Vec<&str> = main["nix_conf"].as_array().expect("lines").iter().filter_map(Value::as_str).collect();
    assert_eq!(
        conf,
        [format!("extra-substituters = {}", server.url("main")), format!("extra-trusted-public-keys = {key}")]
    );

    // A private cache: named, with its nix.conf lines, but no figures.
    let status: Value = serde_json::from_str(&curl(&[&format!("{}/api/v1/status", server.base)])).expect("JSON");
    let team = status["caches"].as_array().expect("caches").iter().find(|c| c["name"] == "team").cloned();
    let team = team.expect("team");
    assert_eq!(team["visibility"], "private");
    assert!(team["figures"].is_null(), "{team}");

    // The page: the same figures and lines, no scripts, a hostile Host header escaped.
    let page = curl(&[&format!("{}/", server.base)]);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(!page.contains("<script"), "no scripts");
    assert!(page.contains(&format!("extra-trusted-public-keys = {key}")), "{page}");
    assert!(page.contains("50.0%") && page.contains("of 1.0 GiB"), "{page}");
    // A Host header that is no host is not echoed at all.
    let hostile = curl(&["-H", "Host: <b>x</b>", &format!("{}/", server.base)]);
    assert!(
        !hostile.contains("<b>x</b>") && hostile.contains("extra-substituters = http://localhost/main"),
        "{hostile}"
    );
    // Rendered by a real browser (Debian's chromium, headless): a PNG of the asked size, and
    // not blank: a blank page of the same size compresses to a small fraction of it.
    let shot = |url: &str, name: &str| -> Vec<u8> {
        let png = w.join(name);
        ok(Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1024,768"])
            .arg(format!("--user-data-dir={}", w.join(format!("{name}-profile")).display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(url));
        std::fs::read(&png).expect("the screenshot")
    };
    let page_png = shot(&format!("{}/", server.base), "page.png");
    let blank_png = shot("about:blank", "blank.png");
    assert_eq!(&page_png[..8], b"\x89PNG\r\n\x1a\n");
    let size = |png: &[u8]| {
        (
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
        )
    };
    assert_eq!(size(&page_png), (1024, 768));
    assert!(
        page_png.len() > 4 * blank_png.len(),
        "the page rendered blank: {} bytes against {} for about:blank",
        page_png.len(),
        blank_png.len()
    );
    // Only GET and HEAD.
    let code = ok_str(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("{}/", server.base),
    ]));
    assert_eq!(code, "405");
}

fn status_code(args: &[&str]) -> String {
    ok_str(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]).args(args))
}

fn json(url: &str) -> Value {
    serde_json::from_str(&curl(&[url])).unwrap_or_else(|e| panic!("{url}: not JSON: {e}"))
}

/// A run record as another publisher (or a GPU node's canary) would send it.
fn record(lane: &str, run_id: &str, started_at: &str, h2d: f64, pull: f64) -> String {
    serde_json::json!({
        "lane": lane, "run_id": run_id, "runner": "gpu-node-7", "started_at": started_at,
        "duration_ms": 41_000, "status": "pass", "image_digest": "sha256:feed", "driver_version": "580.95.05",
        "steps": [{"name": "cuda", "status": "pass", "required": true, "duration_ms": 1200}],
        "h2d_bytes_per_second": h2d, "d2h_bytes_per_second": h2d * 1.05, "cache_pull_bytes_per_second": pull,
    })
    .to_string()
}

#[test]
fn canary_runs_published_to_the_server_show_as_lanes_in_the_json_and_the_page() {
    let work = tempdir();
    let w = work.path();
    let config = w.join("cache.toml");
    // Three runs kept per lane: the collection below forgets the oldest of the four.
    std::fs::write(&config, "canary-keep-runs = 4\n[caches.main]\n").expect("write");
    let data = w.join("data");
    let server = Server::start(&data, &["--config", config.to_str().expect("utf-8")]);
    let key = server.keys.iter().find(|(n, _)| n == "main").expect("main").1.clone();
    let token = |scope: &str| {
        ok_str(flywheel().args(["cache", "token", "create", "--cache", "main", "--scope", scope, "--data"]).arg(&data))
            .trim()
            .to_string()
    };
    let (publish, write) = (token("canary"), token("write"));
    let edge = support::edge_cases();
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", &write]).arg(edge));
    let edge = edge.to_str().expect("utf-8");
    let lane = "<img src=x onerror=alert(1)>&lane";
    let runs_url = format!("{}/api/v1/canary/runs?lane=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E%26lane", server.base);

    // 1. A GPU node's runs with bandwidth figures, posted as the canary posts them.
    for (i, (h2d, pull)) in [(24.0e9, 150.0e6), (25.5e9, 175.0e6)].into_iter().enumerate() {
        let body = record(lane, &format!("gpu-{i}"), &format!("2026-11-2{}T08:00:00Z", i + 1), h2d, pull);
        let code = status_code(&[
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {publish}"),
            "--data-binary",
            &body,
            &format!("{}/api/v1/canary/runs", server.base),
        ]);
        assert_eq!(code, "201");
    }
    // 2. The real canary on this machine (no GPU): one run that passes (bootstrap and the cache,
    //    pulling a path for real), published with the token from the environment...
    let out = canary(&[
        "--require",
        "bootstrap,cache",
        "--skip",
        "gpu,cuda,vulkan,queue,cleanup",
        "--cache",
        &server.url("main"),
        "--trusted-key",
        &key,
        "--token",
        &write,
        "--known-path",
        edge,
        "--image-digest",
        "sha256:1234abcd",
        "--image-driver-version",
        "580.95.05",
        "--publish",
        &server.base,
        "--lane",
        lane,
    ])
    .env("FLYWHEEL_CANARY_TOKEN", &publish)
    .output()
    .expect("canary");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("canary: published run"), "{err}");
    // ...and one that fails (the gpu step, required, finds no NVIDIA driver), published anyway
    // with --publish-token; the canary's own exit status is unchanged by publishing.
    let out = canary(&[
        "--require",
        "gpu",
        "--skip",
        "cuda,vulkan,cache,queue,cleanup",
        "--image-digest",
        "sha256:1234abcd",
        "--publish",
        &server.base,
        "--publish-token",
        &publish,
        "--lane",
        lane,
    ])
    .output()
    .expect("canary");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("canary: published run"), "{err}");

    // 3. Wrong tokens are refused, and the canary goes on: a write token is the wrong scope.
    let out = canary(&["--require", "bootstrap", "--skip", "gpu,cuda,vulkan,cache,queue,cleanup"])
        .args(["--publish", &server.base, "--lane", lane])
        .env("FLYWHEEL_CANARY_TOKEN", &write)
        .output()
        .expect("canary");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "publishing never fails the canary: {err}");
    assert!(err.contains("not published") && err.contains("403") && err.contains("canary token"), "{err}");
    let post = |auth: &[&str], body: &str| {
        let mut args = vec!["-X", "POST", "--data-binary", body];
        args.extend_from_slice(auth);
        let url = format!("{}/api/v1/canary/runs", server.base);
        args.push(&url);
        status_code(&args)
    };
    let good = record(lane, "x", "2026-11-25T08:00:00Z", 1.0, 1.0);
    assert_eq!(post(&[], &good), "401");
    assert_eq!(post(&["-H", &format!("Authorization: Bearer {write}")], &good), "403");
    assert_eq!(post(&["-H", "Authorization: Bearer fwc_unknown"], &good), "401");
    let bad = good.replace("\"pass\"", "\"great\"");
    assert_eq!(post(&["-H", &format!("Authorization: Bearer {publish}")], &bad), "400");
    assert_eq!(post(&["-H", &format!("Authorization: Bearer {publish}")], "{not json"), "400");

    // 4. The runs, newest first, as kept: the failing run last published is the newest.
    let runs = json(&runs_url);
    let runs = runs["runs"].as_array().expect("runs").clone();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert_eq!(runs[0]["status"], "fail");
    assert_eq!(runs[1]["status"], "pass");
    assert_eq!((runs[2]["run_id"].as_str(), runs[3]["run_id"].as_str()), (Some("gpu-1"), Some("gpu-0")));
    let failed_gpu = runs[0]["steps"].as_array().expect("steps").iter().find(|s| s["name"] == "gpu").cloned();
    let failed_gpu = failed_gpu.expect("the gpu step");
    assert_eq!((failed_gpu["status"].as_str(), failed_gpu["required"].as_bool()), (Some("fail"), Some(true)));
    assert!(failed_gpu["remedy"].as_str().is_some_and(|r| !r.is_empty()), "{failed_gpu}");
    let pull = runs[1]["cache_pull_bytes_per_second"].as_f64().expect("the real cache pull's rate");
    assert!(pull > 0.0, "{pull}");
    assert_eq!(runs[1]["image_digest"], "sha256:1234abcd");
    assert_eq!(runs[1]["driver_version"], "580.95.05");
    assert!(runs[1]["steps"].as_array().expect("steps").iter().any(|s| s["name"] == "cache" && s["status"] == "pass"));
    assert_eq!(status_code(&[&format!("{}/api/v1/canary/runs", server.base)]), "400", "a lane is needed");

    // 5. The status: the lane, its counts, current image and last failure; the cache's figures
    //    and hourly history from the canary's own pull.
    let status = json(&format!("{}/api/v1/status", server.base));
    let l = status["lanes"].as_array().expect("lanes").iter().find(|l| l["lane"] == lane).cloned();
    let l = l.expect("the lane");
    assert_eq!((l["passed"].as_u64(), l["failed"].as_u64()), (Some(3), Some(1)), "{l}");
    assert_eq!(l["image_digest"], "sha256:1234abcd");
    assert_eq!(l["last_failure"]["step"], "gpu");
    assert_eq!(l["last_failure"]["remedy"], failed_gpu["remedy"]);
    let main = status["caches"].as_array().expect("caches").iter().find(|c| c["name"] == "main").cloned();
    let main = main.expect("main");
    assert_eq!(main["figures"]["paths"].as_u64(), Some(2), "the edge cases and the canary's fresh path: {main}");

    // 6. The page: escaped lane and step text, the timeline, the plots and the remedy.
    let page = curl(&[&format!("{}/", server.base)]);
    assert!(!page.contains("<img") && !page.contains("<script"), "{page}");
    assert!(page.contains("Lane &lt;img src=x onerror=alert(1)&gt;&amp;lane"), "{page}");
    assert!(page.contains("Last failure") && page.contains("step <strong>gpu</strong>"), "{page}");
    let remedy = failed_gpu["remedy"].as_str().unwrap_or_default();
    let escaped = remedy.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    assert!(page.contains(&format!("What to do: {}", escaped.replace('\'', "&#39;"))), "{page}");
    assert!(page.contains("class=\"timeline\"") && page.matches("<rect x=").count() >= 4, "{page}");
    assert!(page.contains("pinned copy bandwidth") && page.contains("H2D: 25.5 GB/s"), "{page}");
    assert!(page.contains("cache pull rate") && page.contains("narinfo hit rate by the hour"), "{page}");
    assert!(page.contains(&format!("extra-trusted-public-keys = {key}")), "{page}");

    // 7. Retention: a collection under a config that keeps three keeps the newest three and
    //    records what it did (a publish beyond the server's four would drop the oldest at once).
    std::fs::write(&config, "canary-keep-runs = 3\n[caches.main]\n").expect("write");
    ok(flywheel().args(["cache", "gc", "--data"]).arg(&data).args(["--config", config.to_str().expect("utf-8")]));
    let runs = json(&runs_url);
    let ids: Vec<&str> = runs["runs"].as_array().expect("runs").iter().filter_map(|r| r["run_id"].as_str()).collect();
    assert_eq!(ids.len(), 3);
    assert!(!ids.contains(&"gpu-0"), "{ids:?}");
    // The server gathers its status at most every two seconds: the collection shows after that.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let status = json(&format!("{}/api/v1/status", server.base));
    assert_eq!(status["last_gc"]["canary_runs_removed"].as_u64(), Some(1), "{}", status["last_gc"]);

    // 8. A real browser renders it: a PNG of the asked size, and not blank: far larger than
    //    about:blank's of the same size.
    let shot = |url: &str, name: &str| -> Vec<u8> {
        let png = w.join(name);
        ok(Command::new("chromium")
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,2000"])
            .arg(format!("--user-data-dir={}", w.join(format!("{name}-profile")).display()))
            .arg(format!("--screenshot={}", png.display()))
            .arg(url));
        std::fs::read(&png).expect("the screenshot")
    };
    let page_png = shot(&format!("{}/", server.base), "lanes.png");
    let blank_png = shot("about:blank", "blank.png");
    assert_eq!(&page_png[..8], b"\x89PNG\r\n\x1a\n");
    let dims = |png: &[u8]| {
        (
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
        )
    };
    assert_eq!(dims(&page_png), (1280, 2000));
    if let Some(keep) = std::env::var_os("FLYWHEEL_KEEP_SCREENSHOT") {
        std::fs::write(keep, &page_png).expect("keep the screenshot");
    }
    assert!(
        page_png.len() > 8 * blank_png.len(),
        "the page rendered blank: {} bytes against {} for about:blank",
        page_png.len(),
        blank_png.len()
    );
}
