//! The cache scaled out: several `flywheel cache serve` processes over one real S3 store
//! (Garage) and one real PostgreSQL, started by the tests on 127.0.0.1; and
//! `flywheel cache migrate` between those and the embedded directory + SQLite, both ways.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flywheel_fixture::garage::Garage;
use flywheel_fixture::postgres::PgCluster;
use serde_json::Value;
use support::server::Server;
use support::{flywheel, nix, ok, ok_str, one_line_error, tempdir};

/// Garage and PostgreSQL for one test.
struct Backends {
    garage: Garage,
    pg: PgCluster,
}

impl Backends {
    fn start() -> Backends {
        let garage = Garage::start().unwrap_or_else(|e| panic!("starting Garage: {e}"));
        let pg = PgCluster::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
        Backends { garage, pg }
    }

    /// A config file for a server over these backends, with its own data (scratch) folder.
    fn config(&self, dir: &Path, name: &str, extra: &str) -> PathBuf {
        let g = &self.garage;
        let credentials = format!(
            "access-key-id = \"{}\"\nsecret-access-key = \"{}\"\n[postgres]\nurl = \"{}\"\n",
            g.access_key_id(),
            g.secret_access_key(),
            self.pg.url()
        );
        self.config_with(dir, name, extra, &credentials)
    }

    /// The same with no credentials and no database URL in the file: they come from the
    /// environment ([`Backends::env`]), as a Kubernetes Secret gives them.
    fn config_without_secrets(&self, dir: &Path, name: &str, extra: &str) -> PathBuf {
        self.config_with(dir, name, extra, "[postgres]\n")
    }

    fn config_with(&self, dir: &Path, name: &str, extra: &str, secrets: &str) -> PathBuf {
        let g = &self.garage;
        let text = format!(
            "data = \"{name}-data\"\nstorage = \"s3\"\nindex = \"postgres\"\n{extra}\n\
             [s3]\nbucket = \"{}\"\nendpoint = \"{}\"\nregion = \"{}\"\nprefix = \"cache\"\nallow-http = true\n\
             {secrets}pool-size = 8\n\
             [caches.main]\n[caches.pr]\nmax-age = \"1s\"\ngrace = \"0s\"\n",
            g.bucket(),
            g.endpoint(),
            g.region(),
        );
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write the config");
        path
    }

    /// The usual AWS variables and flywheel's database URL.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.garage.access_key_id().to_string()),
            ("AWS_SECRET_ACCESS_KEY", self.garage.secret_access_key().to_string()),
            ("FLYWHEEL_DATABASE_URL", self.pg.url()),
        ]
    }
}

/// A server from `NAME.toml`, whose data folder is `NAME-data` beside it (as the configs say).
fn serve(config: &Path) -> Server {
    serve_with_env(config, &[])
}

fn serve_with_env(config: &Path, env: &[(&str, String)]) -> Server {
    let stem = config.file_stem().expect("a name").to_string_lossy();
    let data = config.with_file_name(format!("{stem}-data"));
    Server::start_with_env(&data, &["--config", config.to_str().expect("utf-8")], env)
}

/// `flywheel cache ARGS --config CONFIG`.
fn cache(config: &Path, args: &[&str]) -> Command {
    let mut c = flywheel();
    c.arg("cache").args(args).arg("--config").arg(config);
    c
}

fn token(config: &Path, cache_name: &str) -> String {
    ok_str(&mut cache(config, &["token", "create", "--cache", cache_name, "--scope", "write"])).trim().to_string()
}

/// Publishes a canary run (lane gpu, run r1) to `server` with a new canary token.
fn publish_run(config: &Path, server: &Server) {
    let canary = ok_str(&mut cache(config, &["token", "create", "--cache", "main", "--scope", "canary"]));
    let run = r#"{"lane":"gpu","run_id":"r1","runner":"n1","started_at":"2026-11-25T08:00:00Z","duration_ms":1,"status":"pass","steps":[]}"#;
    let code = ok_str(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"]).args([
        "-H",
        &format!("Authorization: Bearer {}", canary.trim()),
        "--data-binary",
        run,
        &format!("{}/api/v1/canary/runs", server.base),
    ]));
    assert_eq!(code, "201");
}

/// Lane gpu's runs, as `server` returns them.
fn lane_runs(server: &Server) -> String {
    ok_str(Command::new("curl").args(["-sS", "--fail", &format!("{}/api/v1/canary/runs?lane=gpu", server.base)]))
}

fn nix_as(home: &Path) -> Command {
    let mut c = nix();
    c.env("XDG_CACHE_HOME", home.join("xdg-cache"));
    c
}

fn get(url: &str) -> (u16, Vec<u8>) {
    let out = Command::new("curl").args(["-sS", "-o", "-", "-w", "\n%{http_code}", url]).output().expect("curl");
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[split + 1..]).trim().parse().unwrap_or(0);
    body.truncate(split);
    (code, body)
}

fn hash_part(path: &Path) -> String {
    path.file_name().expect("a store path").to_string_lossy()[..32].to_string()
}

/// Every path of the closure, fetched into a fresh store from `url`, signatures required.
fn copy_out_and_verify(w: &Path, name: &str, url: &str, key: &str, paths: &[&Path]) {
    let fresh = w.join(name);
    ok(nix_as(&w.join(format!("{name}-home")))
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", key])
        .args(["--from", url, "--to"])
        .arg(&fresh)
        .args(paths));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&fresh).args(paths));
}

fn verify_clean(config: &Path) -> Value {
    let report: Value =
        serde_json::from_str(&ok_str(&mut cache(config, &["verify", "--full", "--json"]))).expect("JSON");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    report
}

#[test]
fn two_servers_over_one_bucket_and_one_database_serve_the_same_caches() {
    let b = Backends::start();
    let work = tempdir();
    let w = work.path();
    // A collects every second; B only serves.
    let a_cfg = b.config(w, "a", "gc-interval = \"1s\"");
    // B takes its credentials and database URL from the environment.
    let b_cfg = b.config_without_secrets(w, "b", "");
    let a = serve(&a_cfg);
    let b_srv = serve_with_env(&b_cfg, &b.env());
    // Without them, B's config is refused at start in one line.
    let o = cache(&b_cfg, &["verify"]).env_remove("FLYWHEEL_DATABASE_URL").output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("FLYWHEEL_DATABASE_URL"));
    let key = a.keys.iter().find(|(n, _)| n == "main").expect("main").1.clone();
    assert_eq!(b_srv.keys.iter().find(|(n, _)| n == "main").map(|k| &k.1), Some(&key), "one key for both");
    let write = token(&a_cfg, "main");
    let pr_token = token(&a_cfg, "pr");
    let root = &support::fixture().root;
    let edge = support::edge_cases();

    // A path in `pr`, through B: A's GC takes it (max-age 1s, no grace) while both serve.
    ok(flywheel().args(["cache", "push", "--to", &b_srv.url("pr"), "--token", &pr_token]).arg(edge));

    // Concurrently: flywheel push of the whole closure through each server, and nix copy of
    // one path through B.
    let push = |server: &Server| {
        flywheel()
            .args(["cache", "push", "--json", "--to", &server.url("main"), "--token", &write])
            .arg(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("push")
    };
    let (p1, p2) = (push(&a), push(&b_srv));
    let netrc = b_srv.netrc(w, &write);
    let copy = nix_as(&w.join("nix-pusher"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &b_srv.url("main")])
        .arg(edge)
        .output()
        .expect("nix copy");
    assert!(copy.status.success(), "nix copy --to B: {}", String::from_utf8_lossy(&copy.stderr));
    let mut pushed = 0;
    for p in [p1, p2] {
        let out = p.wait_with_output().expect("push");
        assert!(out.status.success(), "a concurrent push failed");
        let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(r["failed"], serde_json::json!([]), "{r}");
        pushed += r["pushed"].as_u64().unwrap_or(0);
    }
    let n = support::fixture().paths.len() as u64;
    // Each path was sent by one push or both (a race), never lost: the rest were present.
    assert!((n..=2 * n).contains(&pushed), "{pushed} pushed for {n} paths");

    // The collector on A removed the `pr` path; B stops serving it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pr_narinfo = format!("{}/{}.narinfo", b_srv.url("pr"), hash_part(edge));
    while get(&pr_narinfo).0 != 404 {
        assert!(Instant::now() < deadline, "A's GC never removed the pr path (or B kept serving it)");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Each server gives the same signed narinfo for every path, and real Nix takes the whole
    // closure from each into a fresh store, signatures required.
    for p in &support::fixture().paths {
        let (ca, na) = get(&format!("{}/{}.narinfo", a.url("main"), hash_part(p)));
        let (cb, nb) = get(&format!("{}/{}.narinfo", b_srv.url("main"), hash_part(p)));
        assert_eq!((ca, cb), (200, 200), "{}", p.display());
        assert_eq!(na, nb, "{}: the servers disagree", p.display());
    }
    copy_out_and_verify(w, "from-a", &a.url("main"), &key, &[root, edge]);
    copy_out_and_verify(w, "from-b", &b_srv.url("main"), &key, &[root, edge]);
    let report = verify_clean(&a_cfg);
    assert_eq!(report["paths"].as_u64(), Some(n));

    // The status page: both servers show the same totals, kept by PostgreSQL's triggers through
    // the pushes and A's collections (pr's path is gone); a canary run published to A is B's.
    let figures = |server: &Server| -> Vec<(Value, Value, Value)> {
        let status = ok_str(Command::new("curl").args(["-sS", &format!("{}/api/v1/status", server.base)]));
        let status: Value = serde_json::from_str(&status).expect("JSON");
        let caches = status["caches"].as_array().expect("caches").clone();
        caches
            .iter()
            .map(|c| (c["name"].clone(), c["figures"]["paths"].clone(), c["figures"]["bytes"].clone()))
            .collect()
    };
    let from_a = figures(&a);
    assert_eq!(from_a, figures(&b_srv));
    let paths_of = |name: &str| from_a.iter().find(|(c, _, _)| c == name).and_then(|(_, p, _)| p.as_u64());
    assert_eq!(paths_of("pr"), Some(0), "{from_a:?}");
    assert!(paths_of("main").unwrap_or(0) >= support::fixture().paths.len() as u64, "{from_a:?}");
    publish_run(&a_cfg, &a);
    assert!(lane_runs(&b_srv).contains("\"run_id\":\"r1\""));
}

#[test]
fn a_server_killed_during_an_upload_leaves_nothing_partial_visible_through_the_other() {
    let b = Backends::start();
    let work = tempdir();
    let w = work.path();
    let a_cfg = b.config(w, "a", "");
    let b_cfg = b.config(w, "b", "");
    let mut a = serve(&a_cfg);
    let b_srv = serve(&b_cfg);
    let key = b_srv.keys.iter().find(|(n, _)| n == "main").expect("main").1.clone();
    let write = token(&a_cfg, "main");
    let root = &support::fixture().root;
    // Uncompressed through A: slow enough to be cut in the middle.
    let netrc = a.netrc(w, &write);
    let mut push = nix_as(&w.join("pusher"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{}?compression=none", a.url("main"))])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nix copy");
    let started = Instant::now();
    loop {
        let n: u64 = b.pg.psql("SELECT count(*) FROM paths").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if n >= 3 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill();
    let _ = push.wait();

    // Whatever B serves is whole: every narinfo's NAR is there, every closure complete.
    verify_clean(&b_cfg);
    let visible: Vec<&PathBuf> = support::fixture()
        .paths
        .iter()
        .filter(|p| get(&format!("{}/{}.narinfo", b_srv.url("main"), hash_part(p))).0 == 200)
        .collect();
    assert!(!visible.is_empty() && visible.len() < support::fixture().paths.len(), "the kill was mid-push");
    let some: Vec<&Path> = visible.iter().map(|p| p.as_path()).collect();
    copy_out_and_verify(w, "partial", &b_srv.url("main"), &key, &some);

    // The rest of the push through B completes the cache.
    ok(flywheel().args(["cache", "push", "--to", &b_srv.url("main"), "--token", &write]).arg(root));
    copy_out_and_verify(w, "whole", &b_srv.url("main"), &key, &[root.as_path()]);
    let report = verify_clean(&b_cfg);
    assert_eq!(report["paths"].as_u64(), Some(support::fixture().paths.len() as u64));
}

/// Every narinfo of the closure from `server`, by hash part.
fn narinfos(server: &Server, paths: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    paths
        .iter()
        .map(|p| {
            let (code, body) = get(&format!("{}/{}.narinfo", server.url("main"), hash_part(p)));
            assert_eq!(code, 200, "{}", p.display());
            (hash_part(p), body)
        })
        .collect()
}

#[test]
fn migrate_copies_a_cache_to_garage_and_postgres_and_back_resumably_and_verified() {
    let b = Backends::start();
    let work = tempdir();
    let w = work.path();
    let root = &support::fixture().root;
    let edge = support::edge_cases();
    let paths = support::fixture().paths.clone();

    // The embedded default, filled by a push and a pin.
    let dir_cfg = w.join("dir.toml");
    std::fs::write(&dir_cfg, "data = \"dir-data\"\n[caches.main]\n").expect("write");
    let mut original = serve(&dir_cfg);
    let key = original.keys[0].1.clone();
    let write = token(&dir_cfg, "main");
    ok(flywheel().args(["cache", "push", "--to", &original.url("main"), "--token", &write]).arg(root));
    ok(flywheel().args(["cache", "pin", "--cache", "main", "release", "--config"]).arg(&dir_cfg).arg(root));
    // A canary run on the status page, published with a canary token: migrated with the rest.
    publish_run(&dir_cfg, &original);
    let before = narinfos(&original, &paths);
    let totals = |server: &Server| -> (Value, Value) {
        let status = ok_str(Command::new("curl").args(["-sS", &format!("{}/api/v1/status", server.base)]));
        let status: Value = serde_json::from_str(&status).expect("JSON");
        let f = &status["caches"][0]["figures"];
        (f["paths"].clone(), f["bytes"].clone())
    };
    let totals_before = totals(&original);
    assert!(totals_before.0.as_u64().unwrap_or(0) >= paths.len() as u64, "{totals_before:?}");
    original.stop();

    // To Garage + PostgreSQL, interrupted (kill -9) once some paths are in, then resumed.
    let s3_cfg = b.config(w, "s3", "");
    let mut first = flywheel()
        .args(["cache", "migrate", "--jobs", "1", "--from"])
        .arg(&dir_cfg)
        .arg("--to")
        .arg(&s3_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("migrate");
    let started = Instant::now();
    let interrupted = loop {
        if first.try_wait().expect("wait").is_some() {
            break false;
        }
        let n: u64 = b.pg.psql("SELECT count(*) FROM paths").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if n > 0 {
            first.kill().expect("kill");
            let _ = first.wait();
            break true;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "migrate made no progress");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(interrupted, "the first migrate finished before it could be interrupted");
    let resumed: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "migrate", "--json", "--from"])
        .arg(&dir_cfg)
        .arg("--to")
        .arg(&s3_cfg)))
    .expect("JSON");
    assert!(resumed["paths_present"].as_u64().unwrap_or(0) > 0, "the resumed run kept the first run's work: {resumed}");
    assert_eq!(
        resumed["paths_added"].as_u64().unwrap_or(0) + resumed["paths_present"].as_u64().unwrap_or(0),
        paths.len() as u64
    );
    assert_eq!(resumed["mismatches"], serde_json::json!([]));
    // Once more: nothing left to do.
    let again: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "migrate", "--json", "--from"])
        .arg(&dir_cfg)
        .arg("--to")
        .arg(&s3_cfg)))
    .expect("JSON");
    assert_eq!((again["paths_added"].as_u64(), again["nars_copied"].as_u64()), (Some(0), Some(0)), "{again}");
    verify_clean(&s3_cfg);

    // Served from Garage + PostgreSQL: the same narinfos, byte for byte, and the pin.
    let migrated = serve(&s3_cfg);
    assert_eq!(narinfos(&migrated, &paths), before);
    let pins = ok_str(Command::new("curl").args(["-sS", &format!("{}/api/v1/pins", migrated.url("main"))]));
    assert!(pins.contains("release") && pins.contains(&root.display().to_string()), "{pins}");
    assert!(lane_runs(&migrated).contains("\"run_id\":\"r1\""));
    assert_eq!(totals(&migrated), totals_before, "the status page's totals, kept by PostgreSQL's triggers");
    copy_out_and_verify(w, "from-s3", &migrated.url("main"), &key, &[root, edge]);

    // And back, into a fresh directory + SQLite.
    let back_cfg = w.join("back.toml");
    std::fs::write(&back_cfg, "data = \"back-data\"\n").expect("write");
    ok(flywheel().args(["cache", "migrate", "--full", "--from"]).arg(&s3_cfg).arg("--to").arg(&back_cfg));
    verify_clean(&back_cfg);
    let back = serve(&back_cfg);
    assert_eq!(narinfos(&back, &paths), before);
    copy_out_and_verify(w, "from-back", &back.url("main"), &key, &[root, edge]);
    // A token made before the migration still writes.
    ok(flywheel().args(["cache", "push", "--to", &back.url("main"), "--token", &write]).arg(root));

    // Bad input: one line, exit 1, nothing changed.
    let o = flywheel()
        .args(["cache", "migrate", "--from"])
        .arg(&back_cfg)
        .arg("--to")
        .arg(&back_cfg)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("same backends"), "{}", one_line_error(&o));
    let o = flywheel()
        .args(["cache", "migrate", "--from"])
        .arg(w.join("missing.toml"))
        .arg("--to")
        .arg(&back_cfg)
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    one_line_error(&o);
}
