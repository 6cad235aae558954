//! The cache server's status page (`GET /`) and its JSON (`GET /api/v1/status`), against a
//! server started by the test and filled by a real push.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::Server;
use support::{flywheel, ok, ok_str, tempdir};

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
    let hostile = curl(&["-H", "Host: <b>x</b>", &format!("{}/", server.base)]);
    assert!(!hostile.contains("<b>x</b>") && hostile.contains("&lt;b&gt;x&lt;/b&gt;"), "{hostile}");
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
