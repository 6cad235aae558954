//! Retention and garbage collection (`flywheel cache pin | gc | stats`) on a real server's data
//! directory, with paths built and pushed by real Nix and read back by it.
//!
//! Time passing is simulated by setting access and upload times in the index (SQL), the one
//! thing a test cannot wait for; everything else goes through the CLI, the server and Nix.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::server::Server;
use support::{flywheel, nix, ok, ok_str, one_line_error, tempdir};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn cache(data: &Path, args: &[&str]) -> Command {
    let mut c = flywheel();
    c.arg("cache").args(args).arg("--data").arg(data).env_remove("FLYWHEEL_CACHE_CONFIG");
    c
}

/// `nix` with its own narinfo disk cache (Nix remembers narinfos it has seen).
fn nix_as(home: &Path) -> Command {
    let mut c = nix();
    c.env("XDG_CACHE_HOME", home.join("xdg-cache"));
    c
}

/// Builds derivations with Debian's Nix: each `(name, bytes, deps)` is a file holding the store
/// paths of `deps` (so those are its references) and then `bytes` random bytes. The outputs,
/// in the order given.
fn build(dir: &Path, specs: &[(String, usize, Vec<usize>)]) -> Vec<PathBuf> {
    let mut expr = String::from(
        "let sh = name: bytes: deps: derivation { inherit name deps; system = builtins.currentSystem; \
         builder = \"/bin/sh\"; PATH = \"/usr/bin:/bin\"; \
         args = [ \"-e\" \"-c\" \"{ echo $deps; head -c ${toString bytes} /dev/urandom; } > $out\" ]; };\n",
    );
    for (i, (name, bytes, deps)) in specs.iter().enumerate() {
        let deps: Vec<String> = deps.iter().map(|d| format!("p{d}")).collect();
        expr.push_str(&format!("  p{i} = sh \"{name}\" {bytes} [ {} ];\n", deps.join(" ")));
    }
    let all: Vec<String> = (0..specs.len()).map(|i| format!("p{i}")).collect();
    expr.push_str(&format!("in [ {} ]\n", all.join(" ")));
    // `let` bindings may refer to each other.
    let expr = expr.replacen("let sh", "let\n  sh", 1);
    let file = dir.join("gc-fixture.nix");
    fs::write(&file, expr).expect("write the expression");
    let out = ok_str(
        Command::new("nix-build")
            .arg(&file)
            .arg("--no-out-link")
            .args(flywheel_fixture::NIX_OFFLINE_OPTIONS)
            .args(["--max-jobs", "auto"]),
    );
    let paths: Vec<PathBuf> = out.lines().map(PathBuf::from).collect();
    assert_eq!(paths.len(), specs.len(), "{out}");
    paths
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn token(data: &Path, scope: &str) -> String {
    ok_str(&mut cache(data, &["token", "create", "--cache", "main", "--scope", scope])).trim().to_string()
}

fn sql(data: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(data.join("index.sqlite")).expect("open the index");
    c.busy_timeout(Duration::from_secs(10)).expect("busy timeout");
    c
}

/// Makes `path` last read `read_ago` seconds ago and (when given) added `added_ago` ago, in
/// every cache that holds it.
fn set_times(data: &Path, path: &Path, read_ago: i64, added_ago: Option<i64>) {
    let db = sql(data);
    let n = db
        .execute(
            "UPDATE paths SET last_access = ?2 WHERE store_path = ?1",
            rusqlite::params![s(path), now() - read_ago],
        )
        .expect("update");
    assert!(n >= 1, "{} is in the index", path.display());
    if let Some(ago) = added_ago {
        db.execute("UPDATE paths SET added_at = ?2 WHERE store_path = ?1", rusqlite::params![s(path), now() - ago])
            .expect("update");
    }
}

/// The store paths cache main holds.
fn members(data: &Path) -> BTreeSet<String> {
    members_of(data, "main")
}

/// Everything GC could change: the index's rows and the stored files with their sizes and times.
fn state(data: &Path) -> Vec<String> {
    let db = sql(data);
    let mut out = Vec::new();
    for table in ["caches", "nars", "paths", "refs", "uploads", "pins", "pin_revisions", "dead_nars", "files"] {
        let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).expect("prepare");
        let n = stmt.column_count();
        let mut rows = stmt.query([]).expect("query");
        while let Some(r) = rows.next().expect("row") {
            let cols: Vec<String> = (0..n).map(|i| format!("{:?}", r.get_ref(i).expect("column"))).collect();
            out.push(format!("{table}: {}", cols.join(" ")));
        }
    }
    for f in support::listing(data) {
        if f.extension().is_some_and(|e| e == "sqlite-wal" || e == "sqlite-shm") {
            continue;
        }
        let m = fs::metadata(data.join(&f)).expect("stat");
        out.push(format!("file {} {} {:?}", f.display(), m.len(), m.modified().ok()));
    }
    out.sort();
    out
}

fn stored_nars(data: &Path) -> usize {
    support::listing(&data.join("nar")).iter().filter(|p| p.to_string_lossy().ends_with(".nar.zst")).count()
}

fn gc(data: &Path, args: &[&str]) -> Value {
    let mut c = cache(data, &["gc", "--json"]);
    c.args(args);
    serde_json::from_slice(&ok(&mut c)).expect("gc --json")
}

/// The paths a GC report says it removed for `reason` (in cache main).
fn removed(report: &Value, reason: &str) -> BTreeSet<String> {
    report["caches"][0]["removed"][reason]["paths"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn set(paths: &[&PathBuf]) -> BTreeSet<String> {
    paths.iter().map(|p| s(p)).collect()
}

fn verify_clean(data: &Path) -> Value {
    let out = cache(data, &["verify", "--json"]).output().expect("run verify");
    let report: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert!(out.status.success(), "verify: {report}");
    report
}

fn copy_dir(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp").success());
}

/// lib and lib_b (100 kB each); app1 -> lib; app2 -> lib, lib_b; app3 -> lib_b; solo.
struct Six {
    lib: PathBuf,
    lib_b: PathBuf,
    app1: PathBuf,
    app2: PathBuf,
    app3: PathBuf,
    solo: PathBuf,
}

/// The six paths pushed by `flywheel cache push` into a server's data directory (server
/// stopped), with times: app2 read an hour ago, app1 ten days ago, app3 forty, the rest a
/// hundred; everything added two hundred days ago.
fn six(w: &Path) -> (PathBuf, Six) {
    let specs: Vec<(String, usize, Vec<usize>)> = vec![
        ("gc-lib".into(), 100_000, vec![]),
        ("gc-lib-b".into(), 100_000, vec![]),
        ("gc-app1".into(), 100_000, vec![0]),
        ("gc-app2".into(), 100_000, vec![0, 1]),
        ("gc-app3".into(), 100_000, vec![1]),
        ("gc-solo".into(), 100_000, vec![]),
    ];
    let p = build(w, &specs);
    let six = Six {
        lib: p[0].clone(),
        lib_b: p[1].clone(),
        app1: p[2].clone(),
        app2: p[3].clone(),
        app3: p[4].clone(),
        solo: p[5].clone(),
    };
    let data = w.join("base");
    let mut server = Server::start(&data, &[]);
    let write = token(&data, "write");
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", &write]).args(&p));
    server.stop();
    age(&data, &six);
    (data, six)
}

fn age(data: &Path, x: &Six) {
    for (p, read) in [
        (&x.app2, 3600),
        (&x.app1, 10 * DAY),
        (&x.app3, 40 * DAY),
        (&x.solo, 100 * DAY),
        (&x.lib, 100 * DAY),
        (&x.lib_b, 100 * DAY),
    ] {
        set_times(data, p, read, Some(200 * DAY));
    }
}

#[test]
fn each_policy_alone_and_together_keeps_exactly_the_expected_paths() {
    let work = tempdir();
    let w = work.path();
    let (base, x) = six(w);
    assert_eq!(members(&base), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2, &x.app3, &x.solo]));
    let scenario = |name: &str| {
        let d = w.join(name);
        copy_dir(&base, &d);
        d
    };

    // Age: what was not read for 30 days goes, unless a path read since refers to it.
    let d = scenario("age");
    let r = gc(&d, &["--max-age", "30d", "--grace", "0s"]);
    assert_eq!(members(&d), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2]));
    assert_eq!(removed(&r, "age"), set(&[&x.app3, &x.solo]), "{r}");
    assert_eq!(r["nars"]["files"], 2, "{r}");
    assert_eq!(stored_nars(&d), 4);
    verify_clean(&d);

    // Quota: the most recently read closures that fit in 350 kB (three 100 kB paths).
    let d = scenario("quota");
    let r = gc(&d, &["--max-size", "350000", "--grace", "0s"]);
    assert_eq!(members(&d), set(&[&x.app2, &x.lib, &x.lib_b]));
    assert_eq!(removed(&r, "quota"), set(&[&x.app1, &x.app3, &x.solo]), "{r}");
    assert!(r["caches"][0]["kept"]["bytes"].as_u64().is_some_and(|b| b <= 350_000), "{r}");
    verify_clean(&d);

    // Pins: revision 2 (solo) is kept whatever its age; revision 1 (app3) is released, and
    // goes for its age.
    let d = scenario("pins");
    ok(&mut cache(&d, &["pin", "--cache", "main", "ci", &s(&x.app3)]));
    let pinned: Value = serde_json::from_slice(&ok(&mut cache(
        &d,
        &["pin", "--cache", "main", "ci", &s(&x.solo), "--keep-revisions", "1", "--json"],
    )))
    .expect("JSON");
    assert_eq!(pinned["revision"]["revision"], 2, "{pinned}");
    age(&d, &x);
    let r = gc(&d, &["--max-age", "30d", "--grace", "0s"]);
    assert_eq!(members(&d), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2, &x.solo]));
    assert_eq!(removed(&r, "unpinned-revision"), set(&[&x.app3]), "{r}");
    assert_eq!(r["caches"][0]["released_revisions"], serde_json::json!([["ci", 1]]));
    let stats: Value = serde_json::from_slice(&ok(&mut cache(&d, &["stats", "--json"]))).expect("JSON");
    let revs = &stats["caches"][0]["pins"][0]["revisions"];
    assert_eq!(revs.as_array().map(Vec::len), Some(1), "{stats}");
    assert_eq!(revs[0]["store_path"], s(&x.solo));
    verify_clean(&d);

    // Grace: a path the cache got ten minutes ago stays (with its closure) however old its
    // last read; the default grace is an hour.
    let d = scenario("grace");
    set_times(&d, &x.app3, 100 * DAY, Some(600));
    let r = gc(&d, &["--max-age", "30d"]);
    assert_eq!(members(&d), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2, &x.app3]));
    assert_eq!(removed(&r, "age"), set(&[&x.solo]), "{r}");
    verify_clean(&d);

    // Together: a pin (solo, 100 kB), a 250 kB quota that app2's closure (300 kB) no longer
    // fits beside it, and a 30-day age limit.
    let together = |d: &Path| {
        ok(&mut cache(d, &["pin", "--cache", "main", "nightly", &s(&x.solo)]));
        age(d, &x);
    };
    let args = ["--max-size", "250000", "--max-age", "30d", "--grace", "0s"];
    let d = scenario("together");
    together(&d);
    let r = gc(&d, &args);
    assert_eq!(members(&d), set(&[&x.solo]));
    assert_eq!(removed(&r, "quota"), set(&[&x.app1, &x.app2]), "{r}");
    assert_eq!(removed(&r, "age"), set(&[&x.app3, &x.lib, &x.lib_b]), "{r}");
    assert_eq!(stored_nars(&d), 1);
    verify_clean(&d);

    // The same with --dry-run: the same report, and nothing changed at all.
    let d = scenario("dry-run");
    together(&d);
    let before = state(&d);
    let dry = gc(&d, &[&args[..], &["--dry-run"]].concat());
    assert_eq!(state(&d), before, "a dry run changed the data directory");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(removed(&dry, "quota"), removed(&r, "quota"));
    assert_eq!(removed(&dry, "age"), removed(&r, "age"));
    let text = ok_str(&mut cache(&d, &[&["gc", "--dry-run"][..], &args[..]].concat()));
    assert!(text.contains("main: would remove 5 of 6 paths"), "{text}");
    assert_eq!(state(&d), before);

    // Bad input: one line, nothing changed.
    for (args, needle) in [
        (vec!["gc", "--max-age", "3 fortnights"], "duration"),
        (vec!["gc", "--max-size", "lots"], "size"),
        (vec!["gc", "--cache", "nope"], "no cache named"),
        (vec!["pin", "--cache", "main", "ci", "/nix/store/00000000000000000000000000000000-absent"], "not in cache"),
        (vec!["pin", "--cache", "main", "ci", &s(&x.solo), "--keep-revisions", "0"], "keep-revisions"),
    ] {
        let o = cache(&d, &args).output().expect("run");
        // Bad flags are usage errors (2, clap's message and its hint); the rest fail with 1.
        let line = match o.status.code() {
            Some(2) => String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string(),
            _ => {
                assert_eq!(o.status.code(), Some(1), "{args:?}");
                one_line_error(&o)
            }
        };
        assert!(line.contains(needle), "{args:?}: {line}");
        assert_eq!(state(&d), before, "{args:?} changed something");
    }
    let o = cache(&w.join("nowhere"), &["gc"]).output().expect("run");
    assert!(one_line_error(&o).contains("no cache data directory"));
    assert!(!w.join("nowhere").exists());
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-sS", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn hash_part(p: &Path) -> String {
    p.file_name().and_then(|n| n.to_str()).map(|n| n[..32].to_string()).expect("store path")
}

#[test]
fn narinfo_reads_count_as_access_and_stats_show_them() {
    let work = tempdir();
    let w = work.path();
    let (base, x) = six(w);
    let d = w.join("reads");
    copy_dir(&base, &d);
    for p in [&x.lib, &x.lib_b, &x.app1, &x.app2, &x.app3, &x.solo] {
        set_times(&d, p, 100 * DAY, None);
    }
    let mut server = Server::start(&d, &[]);
    let url = server.url("main");
    // Nix asks GET for narinfos it substitutes and HEAD for those it would upload.
    let (code, narinfo) = curl(&[&format!("{url}/{}.narinfo", hash_part(&x.app3))]);
    assert_eq!(code, 200);
    assert_eq!(curl(&["-I", &format!("{url}/{}.narinfo", hash_part(&x.solo))]).0, 200);
    assert_eq!(curl(&[&format!("{url}/{}.narinfo", "0".repeat(32))]).0, 404);
    let nar = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
    let file_size: u64 =
        narinfo.lines().find_map(|l| l.strip_prefix("FileSize: ")).expect("FileSize").parse().expect("size");
    assert_eq!(curl(&["-o", "/dev/null", &format!("{url}/{nar}")]).0, 200);
    server.stop();

    let stats: Value = serde_json::from_slice(&ok(&mut cache(&d, &["stats", "--json"]))).expect("JSON");
    let main = &stats["caches"][0];
    assert_eq!((main["narinfo_hits"].as_i64(), main["narinfo_misses"].as_i64()), (Some(2), Some(1)), "{stats}");
    assert!((main["hit_rate"].as_f64().expect("rate") - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(main["served_by_nar_age"][0]["age"], "1h");
    assert_eq!(main["served_by_nar_age"][0]["bytes"].as_u64(), Some(file_size), "{stats}");
    assert_eq!(main["read_within"][0]["paths"].as_u64(), Some(2), "read within the hour: {stats}");
    assert_eq!(main["paths"].as_u64(), Some(6));
    let text = ok_str(&mut cache(&d, &["stats"]));
    assert!(text.contains("narinfo hit rate 66.7%"), "{text}");

    let r = gc(&d, &["--max-age", "30d", "--grace", "0s"]);
    assert_eq!(members(&d), set(&[&x.app3, &x.lib_b, &x.solo]), "{r}");
    verify_clean(&d);
}

#[test]
fn the_server_collects_on_its_interval_and_stops_serving_what_it_removed() {
    let work = tempdir();
    let w = work.path();
    let (base, x) = six(w);
    let d = w.join("served");
    copy_dir(&base, &d);
    let config = w.join("cache.toml");
    fs::write(&config, "gc-interval = \"2s\"\n[caches.main]\nmax-age = \"30d\"\ngrace = \"0s\"\n").expect("config");
    // The server reads the narinfos it serves from memory after the first time: GC must
    // clear them.
    let mut server = Server::start(&d, &["--config", &s(&config)]);
    let url = server.url("main");
    let solo = format!("{url}/{}.narinfo", hash_part(&x.solo));
    assert_eq!(curl(&[&solo]).0, 200, "served before the first collection");
    // That read made solo recent again; let it be old.
    std::thread::sleep(Duration::from_millis(1500));
    set_times(&d, &x.solo, 100 * DAY, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while members(&d).contains(&s(&x.solo)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(members(&d), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2]));
    // Within the poll of the index (a quarter second), the narinfo is gone too.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(curl(&[&solo]).0, 404, "a removed path's narinfo is no longer served");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_nars(&d) > 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(stored_nars(&d), 4, "the NARs of removed paths are unlinked");
    let (_, metrics) = curl(&[&format!("{}/metrics", server.base)]);
    let value = |name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    assert!(value("flywheel_cache_gc_runs_total") >= 1, "{metrics}");
    assert_eq!(value("flywheel_cache_gc_removed_paths_total"), 2, "{metrics}");
    assert_eq!(value("flywheel_cache_gc_unlinked_nars_total"), 2, "{metrics}");
    assert_eq!(value("flywheel_cache_gc_failures_total"), 0, "{metrics}");
    server.stop();
    verify_clean(&d);
}

/// `count` apps of 20 kB, each referring to three of `libs` shared libraries of 20 kB.
fn apps(w: &Path, tag: &str, libs: usize, count: usize) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut specs: Vec<(String, usize, Vec<usize>)> =
        (0..libs).map(|i| (format!("gc-{tag}-lib{i}"), 20_000, vec![])).collect();
    for i in 0..count {
        let mut deps = vec![i % libs, (i * 3 + 1) % libs, (i * 7 + 2) % libs];
        deps.dedup();
        specs.push((format!("gc-{tag}-app{i}"), 20_000, deps));
    }
    let mut p = build(w, &specs);
    let apps = p.split_off(libs);
    (p, apps)
}

#[test]
fn pushes_and_gc_at_the_same_time_never_break_a_closure_or_lose_a_pin() {
    let work = tempdir();
    let w = work.path();
    // Forty libraries and room for about twenty paths: each collection dooms libraries that the
    // next app pushed refers to again.
    let (_, apps) = apps(w, "race", 40, 200);
    let data = w.join("data");
    let server = Server::start(&data, &[]);
    let url = server.url("main");
    let key = server.keys[0].1.clone();
    let write = token(&data, "write");
    let netrc = server.netrc(w, &write);

    // Pinning over HTTP needs the write scope, a valid name and a path the cache holds.
    let read = token(&data, "read");
    for (token, pin, path, needle) in [
        (&read, "main", &apps[0], "403"),
        (&write, "../main", &apps[0], "pin name"),
        (&write, "main", &apps[0], "not in cache"),
    ] {
        let o = flywheel().args(["cache", "pin", "--to", &url, "--token", token, pin]).arg(path).output().expect("pin");
        assert_eq!(o.status.code(), Some(1), "{pin}");
        assert!(one_line_error(&o).contains(needle), "{}", one_line_error(&o));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (data, done) = (data.clone(), done.clone());
        std::thread::spawn(move || {
            let (mut runs, mut removed) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // About twenty 20 kB paths fit: the three pinned closures (up to 240 kB) and the
                // newest push or two. Every run has something to remove, in many short
                // transactions (a wide window for pushes to land in).
                let out = cache(&data, &["gc", "--json", "--max-size", "400000", "--grace", "0s", "--batch-size", "2"])
                    .output()
                    .expect("gc");
                assert!(out.status.success(), "gc: {}", String::from_utf8_lossy(&out.stderr));
                let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
                removed += r["caches"][0]["removed"]
                    .as_object()
                    .map(|m| m.values().map(|g| g["paths"].as_array().map_or(0, Vec::len)).sum::<usize>())
                    .unwrap_or(0);
                runs += 1;
            }
            (runs, removed)
        })
    };

    let mut refused = 0;
    for (i, app) in apps.iter().enumerate() {
        // Each push is retried: a path the cache had when the pusher asked may be collected
        // before the narinfo that refers to it arrives (refused, never accepted half). Nix
        // checks the references itself too, and gives up on the first that is gone.
        let (mut pushed, mut last) = (false, String::new());
        for attempt in 0..10 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            let out = if i % 2 == 0 {
                flywheel().args(["cache", "push", "--to", &url, "--token", &write]).arg(app).output()
            } else {
                // Nix remembers for a month that the cache had a path (narinfo-cache-positive-ttl)
                // and would never send a collected one again: a pusher to a collected cache
                // must ask each time.
                nix_as(&w.join("pusher"))
                    .args(["copy", "--option", "narinfo-cache-positive-ttl", "0"])
                    .args(["--option", "narinfo-cache-negative-ttl", "0", "--option", "netrc-file"])
                    .arg(&netrc)
                    .args(["--to", &url])
                    .arg(app)
                    .output()
            }
            .expect("push");
            if out.status.success() {
                pushed = true;
                break;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            refused += 1;
        }
        assert!(pushed, "pushing {} failed ten times: {last}", app.display());
        if i % 10 == 9 {
            // As a CI job pins main's build: over HTTP, with its write token.
            let pin = flywheel()
                .args(["cache", "pin", "--to", &url, "--token", &write, "main"])
                .arg(app)
                .args(["--keep-revisions", "3"])
                .output()
                .expect("pin");
            assert!(pin.status.success(), "pinning {} right after its push: {}", app.display(), one_line_error(&pin));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, removed) = collector.join().expect("the collector");
    assert!(runs >= 3 && removed > 0, "GC ran {runs} times and removed {removed} paths: it must have raced");
    eprintln!("{runs} collections removed {removed} paths during 200 pushes; {refused} push attempts were refused");
    gc(&data, &["--max-size", "400000", "--grace", "0s"]);
    verify_clean(&data);

    // Every kept revision of the pin comes back whole into a fresh store.
    let stats: Value = serde_json::from_slice(&ok(&mut cache(&data, &["stats", "--json"]))).expect("JSON");
    let revisions: Vec<String> = stats["caches"][0]["pins"][0]["revisions"]
        .as_array()
        .expect("revisions")
        .iter()
        .filter_map(|r| r["store_path"].as_str().map(str::to_string))
        .collect();
    assert_eq!(revisions, [&apps[199], &apps[189], &apps[179]].map(|p| s(p)));
    let fresh = w.join("fresh");
    ok(nix_as(&w.join("puller"))
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", &key])
        .args(["--from", &url, "--to"])
        .arg(&fresh)
        .args(&revisions));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&fresh).args(&revisions));
}

#[test]
fn a_gc_killed_at_random_points_loses_nothing_pinned_and_finishes_as_if_uninterrupted() {
    let work = tempdir();
    let w = work.path();
    let (_, apps) = apps(w, "kill", 10, 120);
    let data = w.join("data");
    let mut server = Server::start(&data, &[]);
    let write = token(&data, "write");
    ok(flywheel().args(["cache", "push", "--to", &server.url("main"), "--token", &write]).args(&apps));
    server.stop();
    ok(&mut cache(&data, &["pin", "--cache", "main", "release", &s(&apps[3])]));
    ok(&mut cache(&data, &["pin", "--cache", "main", "main", &s(&apps[60])]));
    // Older apps were read longer ago; the libraries, only through them.
    for (i, app) in apps.iter().enumerate() {
        set_times(&data, app, (200 - i as i64) * DAY, Some(300 * DAY));
    }
    let args = ["--max-size", "400000", "--max-age", "150d", "--grace", "0s"];
    let pristine = w.join("pristine");
    copy_dir(&data, &pristine);
    let gc_cmd = |d: &Path| {
        let mut c = cache(d, &[&["gc", "--batch-size", "1"][..], &args[..]].concat());
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        c
    };
    // One whole run, one path per transaction: where the others must end, and how long it takes.
    let reference = w.join("reference");
    copy_dir(&pristine, &reference);
    let started = Instant::now();
    assert!(gc_cmd(&reference).status().expect("gc").success());
    let whole = started.elapsed().as_millis() as u64;

    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below.max(1)
    };
    let (mut kills, mut interrupted) = (0, 0);
    for round in 0..6 {
        // From the start each round, killed twice at random points (the second run has less
        // left to do), then run to the end.
        let d = w.join(format!("round{round}"));
        copy_dir(&pristine, &d);
        for within in [whole, whole / 2] {
            let mut child = gc_cmd(&d).spawn().expect("gc");
            std::thread::sleep(Duration::from_millis(random(within)));
            kills += 1;
            if child.try_wait().expect("wait").is_none() {
                interrupted += 1;
            }
            let _ = child.kill();
            let _ = child.wait();
            // Whatever was cut short, what the index shows is whole.
            let report = cache(&d, &["verify", "--json"]).output().expect("verify");
            assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stdout));
        }
        gc(&d, &args);
        assert_eq!(members(&d), members(&reference), "interrupted runs end where one whole run does");
        let report = verify_clean(&d);
        assert_eq!(report["unreferenced_nars"], 0, "no NAR left behind: {report}");
        assert_eq!(stored_nars(&d), stored_nars(&reference));
    }
    assert!(interrupted * 3 >= kills * 2, "only {interrupted} of {kills} runs were killed before they finished");
    let data = w.join("round5");

    let server = Server::start(&data, &[]);
    let key = server.keys[0].1.clone();
    let fresh = w.join("fresh");
    ok(nix_as(&w.join("puller"))
        .args(["copy", "--option", "trusted-public-keys", &key])
        .args(["--from", &server.url("main"), "--to"])
        .arg(&fresh)
        .arg(&apps[3])
        .arg(&apps[60]));
    ok(nix()
        .args(["store", "verify", "--recursive", "--no-trust", "--store"])
        .arg(&fresh)
        .arg(&apps[3])
        .arg(&apps[60]));
}

/// The store paths cache `name` holds.
fn members_of(data: &Path, name: &str) -> BTreeSet<String> {
    let db = sql(data);
    let mut stmt = db
        .prepare("SELECT p.store_path FROM paths p JOIN caches c ON c.id = p.cache WHERE c.name = ?1")
        .expect("prepare");
    let rows = stmt.query_map([name], |r| r.get::<_, String>(0)).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

#[test]
fn a_nar_two_caches_share_goes_only_when_neither_holds_its_path() {
    let work = tempdir();
    let w = work.path();
    let (base, x) = six(w);
    let d = w.join("shared");
    copy_dir(&base, &d);
    ok(&mut cache(&d, &["create", "pr"]));
    let mut server = Server::start(&d, &[]);
    let write = ok_str(&mut cache(&d, &["token", "create", "--cache", "pr", "--scope", "write"])).trim().to_string();
    ok(flywheel().args(["cache", "push", "--to", &server.url("pr"), "--token", &write]).arg(&x.app3).arg(&x.solo));
    server.stop();
    age(&d, &x);
    assert_eq!(members_of(&d, "pr"), set(&[&x.app3, &x.lib_b, &x.solo]));
    assert_eq!(stored_nars(&d), 6, "one file per NAR, whichever caches hold it");

    // main lets app3 and solo go; pr still holds them, so their NARs stay.
    let r = gc(&d, &["--cache", "main", "--max-age", "30d", "--grace", "0s"]);
    assert_eq!(removed(&r, "age"), set(&[&x.app3, &x.solo]), "{r}");
    assert_eq!(r["nars"]["files"], 0, "{r}");
    assert_eq!(members_of(&d, "main"), set(&[&x.lib, &x.lib_b, &x.app1, &x.app2]));
    assert_eq!(members_of(&d, "pr"), set(&[&x.app3, &x.lib_b, &x.solo]));
    assert_eq!(stored_nars(&d), 6);
    verify_clean(&d);

    // Then pr lets all three go: lib_b's NAR stays for main, the other two are unlinked.
    let r = gc(&d, &["--cache", "pr", "--max-age", "30d", "--grace", "0s"]);
    assert_eq!(r["caches"][0]["cache"], "pr");
    assert_eq!(members_of(&d, "pr"), BTreeSet::new());
    assert_eq!(r["nars"]["files"], 2, "{r}");
    assert_eq!(stored_nars(&d), 4);
    let report = verify_clean(&d);
    assert_eq!(report["unreferenced_nars"], 0, "{report}");
}

#[test]
fn abandoned_uploads_and_orphan_nars_go_after_the_grace_period() {
    let work = tempdir();
    let w = work.path();
    let (base, _) = six(w);
    let d = w.join("abandoned");
    copy_dir(&base, &d);

    // A NAR uploaded whose narinfo never came (what `nix copy` leaves for a declined path).
    let file = w.join("lonely.txt");
    fs::write(&file, format!("nobody will ever want this {:?}", std::time::SystemTime::now())).expect("write");
    let lonely = PathBuf::from(ok_str(support::nix_store().arg("--add").arg(&file)).trim());
    let nar = w.join("lonely.nar");
    fs::write(&nar, ok(support::nix_store().arg("--dump").arg(&lonely))).expect("write");
    let mut server = Server::start(&d, &[]);
    let write = token(&d, "write");
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Authorization: Bearer {write}"),
        "--data-binary",
        &format!("@{}", nar.display()),
        &format!("{}/nar/lonely.nar", server.url("main")),
    ]);
    assert_eq!(code, 200, "{body}");
    server.stop();
    // A stored NAR the index does not know (a crash between storing and recording).
    let name = format!("{}{}", "1".repeat(26), "a".repeat(26));
    let orphan = d.join("nar").join(&name[..2]).join(format!("{name}.nar.zst"));
    fs::create_dir_all(orphan.parent().expect("shard")).expect("mkdir");
    fs::write(&orphan, b"left behind").expect("write");
    assert_eq!(verify_clean(&d)["pending_uploads"], 1);
    assert_eq!(stored_nars(&d), 8);

    // Within the grace period both stay.
    let r = gc(&d, &[]);
    assert_eq!((r["expired_uploads"].as_u64(), r["orphans"]["files"].as_u64()), (Some(0), Some(0)), "{r}");
    assert_eq!(stored_nars(&d), 8);

    // Older than it, both go (and nothing else).
    sql(&d).execute("UPDATE uploads SET created_at = created_at - 7200", []).expect("update");
    assert!(Command::new("touch").args(["-d", "3 hours ago"]).arg(&orphan).status().expect("touch").success());
    let dry = gc(&d, &["--dry-run"]);
    assert_eq!(dry["orphans"]["files"], 1, "{dry}");
    let r = gc(&d, &[]);
    assert_eq!(r["expired_uploads"], 1, "{r}");
    assert_eq!((r["nars"]["files"].as_u64(), r["orphans"]["files"].as_u64()), (Some(1), Some(1)), "{r}");
    assert!(!orphan.exists());
    assert_eq!(stored_nars(&d), 6);
    let report = verify_clean(&d);
    assert_eq!((report["pending_uploads"].as_u64(), report["unreferenced_nars"].as_u64()), (Some(0), Some(0)));
    assert_eq!(members(&d).len(), 6, "no policy, so every path stays");
}
