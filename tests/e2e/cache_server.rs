//! The cache server's data directory and its administration (`flywheel cache create|info|token`),
//! with the keys checked by real Nix.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::{flywheel, listing, nix, nix_store, ok, ok_str, one_line_error, tempdir};

fn cache(data: &Path, args: &[&str]) -> Command {
    let mut c = flywheel();
    c.arg("cache").args(args).arg("--data").arg(data);
    c
}

/// The secret key the index holds for `name`, read straight from the SQLite file.
fn stored_secret(data: &Path, name: &str) -> String {
    let db = rusqlite::Connection::open(data.join("index.sqlite")).expect("open the index");
    db.query_row("SELECT secret_key FROM caches WHERE name = ?1", [name], |r| r.get(0)).expect("a row")
}

#[test]
fn caches_get_their_own_keys_that_nix_agrees_with() {
    let work = tempdir();
    let data = work.path().join("data");
    let created: Value = serde_json::from_str(&ok_str(&mut cache(&data, &["create", "main", "--json"]))).expect("JSON");
    assert_eq!(created["name"], "main");
    assert_eq!(created["visibility"], "public");
    assert_eq!(created["priority"], 30);
    ok(&mut cache(&data, &["create", "pr", "--private", "--priority", "50", "--key-name", "ci.example.org-pr-1"]));

    let public = ok_str(&mut cache(&data, &["info", "--cache", "main"]));
    let public = public.trim();
    assert!(public.starts_with("main-1:"), "{public}");
    assert_eq!(public, created["public_key"].as_str().expect("key"));
    // Real Nix derives the same public key from the secret the index keeps.
    let secret = stored_secret(&data, "main");
    let mut convert = nix();
    convert.args(["key", "convert-secret-to-public"]);
    let from_nix = support::run_with_input(&mut convert, secret.as_bytes());
    assert!(from_nix.status.success(), "{}", String::from_utf8_lossy(&from_nix.stderr));
    assert_eq!(String::from_utf8_lossy(&from_nix.stdout).trim(), public);

    let pr: Value =
        serde_json::from_str(&ok_str(&mut cache(&data, &["info", "--cache", "pr", "--json"]))).expect("JSON");
    assert_eq!(pr["visibility"], "private");
    assert_eq!(pr["priority"], 50);
    assert!(pr["public_key"].as_str().expect("key").starts_with("ci.example.org-pr-1:"));
    assert_ne!(stored_secret(&data, "pr"), secret, "each cache has its own key");

    // The index holds signing keys: only its owner may read it.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(fs::metadata(data.join("index.sqlite")).expect("stat").permissions().mode() & 0o777, 0o600);
}

#[test]
fn bad_names_and_repeats_are_refused_with_one_line() {
    let work = tempdir();
    let data = work.path().join("data");
    ok(&mut cache(&data, &["create", "main"]));
    let before = listing(&data);
    for (args, needle) in [
        (vec!["create", "main"], "already exists"),
        (vec!["create", "Main"], "lowercase"),
        (vec!["create", "../x"], "lowercase"),
        (vec!["create", "nar"], "route"),
        (vec!["info", "--cache", "nope"], "no cache named \"nope\""),
        (vec!["token", "create", "--cache", "nope", "--scope", "write"], "no cache named"),
        (
            vec!["token", "create", "--cache", "main", "--scope", "write", "--expires", "2001-01-01T00:00:00Z"],
            "in the past",
        ),
        (vec!["token", "create", "--cache", "main", "--scope", "write", "--expires", "soon"], "expected a duration"),
    ] {
        let o = cache(&data, &args).output().expect("run");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let line = one_line_error(&o);
        assert!(line.contains(needle), "{args:?}: {line}");
    }
    let o = cache(&data, &["token", "create", "--cache", "main", "--scope", "root"]).output().expect("run");
    assert_eq!(o.status.code(), Some(2), "an unknown scope is bad usage");
    assert_eq!(listing(&data), before);
    // Asking about a directory that is not a data directory creates nothing.
    let elsewhere = work.path().join("elsewhere");
    let o = cache(&elsewhere, &["info", "--cache", "main"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("no cache data directory"));
    assert!(!elsewhere.exists());
    let o = cache(&elsewhere, &["create", "Bad"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(!elsewhere.exists(), "a bad name creates no data directory");
}

#[test]
fn tokens_are_printed_once_and_stored_hashed() {
    let work = tempdir();
    let data = work.path().join("data");
    ok(&mut cache(&data, &["create", "main"]));
    let out =
        ok_str(&mut cache(&data, &["token", "create", "--cache", "main", "--scope", "write", "--expires", "30d"]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "the token alone: {out:?}");
    let token = lines[0];
    assert!(token.starts_with("fwc_") && token.len() > 40, "{token}");
    let second = ok_str(&mut cache(&data, &["token", "create", "--cache", "main", "--scope", "read"]));
    assert_ne!(second.trim(), token);

    let db = rusqlite::Connection::open(data.join("index.sqlite")).expect("open");
    let rows: Vec<(Vec<u8>, String, Option<i64>)> = db
        .prepare("SELECT hash, scope, expires_at FROM tokens ORDER BY created_at, scope DESC")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(rows.len(), 2);
    use sha2::Digest;
    let want: Vec<u8> = sha2::Sha256::digest(token.as_bytes()).to_vec();
    let write = rows.iter().find(|r| r.1 == "write").expect("the write token");
    assert_eq!(write.0, want, "stored as its SHA-256");
    let expires = write.2.expect("an expiry");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((expires - now - 30 * 86400).abs() < 120, "30 days from now");
    // The token's text appears nowhere in the data directory.
    for rel in listing(&data) {
        let p = data.join(&rel);
        if p.is_file() {
            let bytes = fs::read(&p).expect("read");
            assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "{} holds the token", p.display());
        }
    }
}

// ---- the server, with real Nix as the client ---------------------------------------------------

use support::server::Server;

/// `nix` with its own narinfo disk cache: Nix remembers the narinfos it uploads (unsigned), so
/// a pusher and a puller on one machine must not share one, as two CI runners do not.
fn nix_as(home: &Path) -> Command {
    let mut c = nix();
    c.env("XDG_CACHE_HOME", home.join("xdg-cache"));
    c
}

fn token(data: &Path, scope: &str) -> String {
    ok_str(&mut cache(data, &["token", "create", "--cache", "main", "--scope", scope])).trim().to_string()
}

#[test]
fn nix_copies_to_and_from_the_server_and_substitutes_from_it() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let server = Server::start(&data, &[]);
    let (name, key) = server.keys[0].clone();
    assert_eq!(name, "main", "the server creates main when there is no cache");
    let netrc = server.netrc(w, &token(&data, "write"));
    let pusher = w.join("pusher");
    let root = &support::fixture().root;
    let edge = support::edge_cases();

    // The bulk with zstd; one path with Nix's default, xz.
    ok(nix_as(&pusher)
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{}?compression=zstd", server.url("main"))])
        .arg(root));
    ok(nix_as(&pusher)
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &server.url("main")])
        .arg(edge));

    // What Nix sees in the cache: every path of the closure, signed by the cache's key.
    let puller = w.join("puller");
    let listed: Value = serde_json::from_slice(&ok(nix_as(&puller)
        .args(["path-info", "--json", "--recursive", "--store", &server.url("main")])
        .arg(root)))
    .expect("JSON");
    let listed = listed.as_array().expect("array");
    assert_eq!(listed.len(), support::fixture().paths.len());
    for p in listed {
        let sigs = p["signatures"].as_array().expect("signatures");
        assert!(sigs.iter().any(|s| s.as_str().is_some_and(|s| s.starts_with("main-1:"))), "{p}");
    }

    // Into a fresh store, trusting only the cache's key, contents checked.
    let fresh = w.join("fresh");
    ok(nix_as(&puller)
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", &key])
        .args(["--from", &server.url("main"), "--to"])
        .arg(&fresh)
        .arg(root)
        .arg(edge));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&fresh).arg(root).arg(edge));

    // A key the cache did not sign with: refused.
    let stranger = "stranger-1:6UqwZQSHeAoDprLLvvrXdW7bSSvJq+DnDJ9PSxyPRw4=";
    let o = nix_as(&w.join("stranger"))
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", stranger])
        .args(["--from", &server.url("main"), "--to"])
        .arg(w.join("s1"))
        .arg(edge)
        .output()
        .expect("nix");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("lacks a valid signature"));

    // Substitution: nix-store --realise into an empty store with the server as its substituter.
    let empty = w.join("empty");
    ok(nix_store()
        .arg("--store")
        .arg(&empty)
        .args(["--realise", "--option", "substituters", &server.url("main")])
        .args(["--option", "trusted-public-keys", &key, "--option", "require-sigs", "true"])
        .arg(edge));
    ok(nix().args(["store", "verify", "--no-trust", "--store"]).arg(&empty).arg(edge));

    // The index and the storage agree, every stored byte included.
    let report: Value =
        serde_json::from_str(&ok_str(&mut cache(&data, &["verify", "--full", "--json"]))).expect("JSON");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(
        report["paths"].as_u64(),
        Some(support::fixture().paths.len() as u64),
        "the edge-case path is in the closure"
    );
}

#[test]
fn verify_finds_missing_and_corrupt_nars_and_broken_closures() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let mut server = Server::start(&data, &[]);
    let netrc = server.netrc(w, &token(&data, "write"));
    let root = &support::fixture().root;
    ok(nix_as(&w.join("pusher"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{}?compression=zstd", server.url("main"))])
        .arg(root));
    server.kill();
    ok(&mut cache(&data, &["verify"]));

    let nars: Vec<PathBuf> =
        listing(&data.join("nar")).into_iter().map(|p| data.join("nar").join(p)).filter(|p| p.is_file()).collect();
    assert!(nars.len() >= 3);
    // One NAR gone, one truncated, one with a flipped byte (found by --full only).
    fs::remove_file(&nars[0]).expect("rm");
    let len = fs::metadata(&nars[1]).expect("stat").len();
    fs::OpenOptions::new().write(true).open(&nars[1]).expect("open").set_len(len - 1).expect("truncate");
    let mut bytes = fs::read(&nars[2]).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    fs::write(&nars[2], bytes).expect("write");
    let db = rusqlite::Connection::open(data.join("index.sqlite")).expect("open");
    // And a path dropped from the cache while the root still refers to it.
    let dropped: String = db
        .query_row(
            "SELECT p.store_path FROM paths p JOIN refs r ON r.reference = p.store_path
             WHERE r.path != p.id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("a referenced path");
    db.execute("DELETE FROM paths WHERE store_path = ?1", [&dropped]).expect("delete");

    let o = cache(&data, &["verify"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not in the storage"), "{out}");
    assert!(out.contains("bytes stored, the index says"), "{out}");
    assert!(out.contains(&format!("refers to {dropped}")), "{out}");
    assert!(!out.contains("do not match FileHash"), "only --full hashes: {out}");
    let o = cache(&data, &["verify", "--full"]).output().expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("do not match FileHash"));
    assert!(one_line_error(&o).contains("problems"));
}

#[test]
fn a_server_killed_mid_upload_loses_nothing_acknowledged_and_shows_nothing_partial() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let mut server = Server::start(&data, &[]);
    let netrc = server.netrc(w, &token(&data, "write"));
    let root = &support::fixture().root;
    // Uncompressed uploads: the push takes long enough to be cut in the middle.
    let mut push = nix_as(&w.join("pusher"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{}?compression=none", server.url("main"))])
        .arg(root)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nix copy");
    // Kill -9 once some paths are in, while others are on the wire.
    let started = std::time::Instant::now();
    loop {
        let db = rusqlite::Connection::open(data.join("index.sqlite")).expect("open");
        let n: i64 = db.query_row("SELECT count(*) FROM paths", [], |r| r.get(0)).unwrap_or(0);
        if n >= 3 || started.elapsed().as_secs() > 60 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill();
    let _ = push.wait();

    // What the index made visible is whole: every NAR there, every closure complete.
    ok(&mut cache(&data, &["verify", "--full"]));
    // A restarted server takes the rest of the push, and the result is consistent.
    let server = Server::start(&data, &[]);
    let netrc = server.netrc(w, &token(&data, "write"));
    ok(nix_as(&w.join("pusher2"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{}?compression=zstd", server.url("main"))])
        .arg(root));
    // The killed server's scratch folder is gone; the running one's holds only its lock.
    let left = listing(&data.join("tmp"));
    assert_eq!(left.len(), 2, "no upload left half-written: {left:?}");
    assert!(left[1].ends_with(".lock"), "{left:?}");
    let report: Value = serde_json::from_str(&ok_str(&mut cache(&data, &["verify", "--json"]))).expect("JSON");
    assert_eq!(report["problems"], serde_json::json!([]));
    assert_eq!(report["paths"].as_u64(), Some(support::fixture().paths.len() as u64));
}

fn curl(args: &[&str]) -> (u16, String) {
    let o = Command::new("curl").args(["-sS", "-o", "-", "-w", "\n%{http_code}"]).args(args).output().expect("curl");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A real NAR of `path`, as Nix dumps it.
fn nar_of(path: &Path, into: &Path) -> PathBuf {
    let out = ok(nix_store().arg("--dump").arg(path));
    fs::write(into, out).expect("write");
    into.to_path_buf()
}

fn narinfo_for(path: &Path, url: &str, nar_hash: &str, nar_size: u64, references: &str) -> String {
    format!(
        "StorePath: {}\nURL: {url}\nCompression: none\nNarHash: {nar_hash}\nNarSize: {nar_size}\nReferences: {references}\n",
        path.display()
    )
}

#[test]
fn bad_uploads_are_refused_and_nothing_becomes_visible() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let server = Server::start(&data, &["--max-nar-bytes", "50000000"]);
    let write = token(&data, "write");
    let read = token(&data, "read");
    let edge = support::edge_cases();
    let hash_part = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(|n| n[..32].to_string()).expect("store path");
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let base = server.url("main");

    // Writes need a write token: none, unknown, read-only.
    let nar = nar_of(edge, &w.join("edge.nar"));
    let nar_arg = format!("@{}", nar.display());
    let put_nar = |name: &str, auth: Option<&str>| {
        let url = format!("{base}/nar/{name}");
        let mut args = vec!["-X", "PUT", "--data-binary", nar_arg.as_str(), url.as_str()];
        let h;
        if let Some(a) = auth {
            h = bearer(a);
            args.extend(["-H", h.as_str()]);
        }
        curl(&args)
    };
    assert_eq!(put_nar("aaaa.nar", None).0, 401);
    assert_eq!(put_nar("aaaa.nar", Some("fwc_unknown")).0, 401);
    let (code, body) = put_nar("aaaa.nar", Some(&read));
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("scope is read"), "{body}");
    // Basic auth, as Nix sends a netrc password, works like a bearer token.
    let user = format!("flywheel:{write}");
    let url = format!("{base}/nar/edge.nar");
    let (code, body) = curl(&["-X", "PUT", "--data-binary", &nar_arg, "-u", &user, &url]);
    assert_eq!(code, 200, "{body}");

    // The narinfo must agree with the NAR that was uploaded.
    let info = nix_store_hash_size(edge);
    let wrong = narinfo_for(edge, "nar/edge.nar", &info.0, info.1 + 1, "");
    let put_info = |text: &str, path: &Path| {
        let url = format!("{base}/{}.narinfo", hash_part(path));
        let h = bearer(&write);
        curl(&["-X", "PUT", "--data-binary", text, "-H", &h, &url])
    };
    let (code, body) = put_info(&wrong, edge);
    assert_eq!(code, 400);
    assert!(body.contains("NAR mismatch") && body.contains(&info.0), "{body}");
    // A narinfo whose references the cache lacks.
    let other = support::fixture().paths.iter().find(|p| p.as_path() != edge).expect("another path").clone();
    let refs = other.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let (code, body) = put_info(&narinfo_for(edge, "nar/edge.nar", &info.0, info.1, &refs), edge);
    assert_eq!(code, 400);
    assert!(body.contains("does not hold") && body.contains(&refs), "{body}");
    // A narinfo for another path than its URL names.
    let (code, _) = put_info(&narinfo_for(edge, "nar/edge.nar", &info.0, info.1, ""), &other);
    assert_eq!(code, 400);
    // A NAR that is not one.
    fs::write(w.join("junk"), b"nix-archive-1 but not really").expect("write");
    let junk = format!("@{}", w.join("junk").display());
    let h = bearer(&write);
    let (code, body) = curl(&["-X", "PUT", "--data-binary", &junk, "-H", &h, &format!("{base}/nar/junk.nar")]);
    assert_eq!(code, 400);
    assert!(body.contains("not a valid NAR"), "{body}");
    // Too big.
    let big = w.join("big.nar");
    fs::write(&big, vec![0u8; 60_000_000]).expect("write");
    let big_arg = format!("@{}", big.display());
    let (code, _) = curl(&["-X", "PUT", "--data-binary", &big_arg, "-H", &h, &format!("{base}/nar/big.nar")]);
    assert_eq!(code, 413);
    // Malformed names and traversal.
    for bad in [
        "/main/nar/..%2f..%2findex.sqlite",
        "/main/nar/.hidden",
        "/Main/nix-cache-info",
        "/main/zzzz.narinfo",
        "/main/nar/a%00b",
    ] {
        let (code, _) = curl(&["--path-as-is", &format!("{}{bad}", server.base)]);
        assert!(code == 400 || code == 404, "{bad}: {code}");
    }
    let (code, _) = curl(&["--path-as-is", &format!("{}/main/../index.sqlite", server.base)]);
    assert!(code == 400 || code == 404, "traversal: {code}");

    // Nothing became visible; the good narinfo still goes in.
    let (code, _) = curl(&[&format!("{base}/{}.narinfo", hash_part(edge))]);
    assert_eq!(code, 404);
    let (code, body) = put_info(
        &narinfo_for(edge, "nar/edge.nar", &info.0, info.1, edge.file_name().and_then(|n| n.to_str()).expect("n")),
        edge,
    );
    assert_eq!(code, 200, "{body}");
    // A narinfo GET counts as an access (for retention): recorded in the index within seconds.
    let db = rusqlite::Connection::open(data.join("index.sqlite")).expect("open");
    db.execute("UPDATE paths SET last_access = 0", []).expect("reset");
    let (code, body) = curl(&[&format!("{base}/{}.narinfo", hash_part(edge))]);
    assert_eq!(code, 200);
    assert!(body.contains("Sig: main-1:") && body.contains("Compression: zstd"), "{body}");
    let started = std::time::Instant::now();
    let last_access = loop {
        let t: i64 = db.query_row("SELECT last_access FROM paths", [], |r| r.get(0)).expect("row");
        if t > 0 || started.elapsed().as_secs() > 20 {
            break t;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(last_access > 0, "the access was never recorded");
    // The NAR is served whole with its exact length, and in ranges.
    let nar_url = body.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL").to_string();
    let size: u64 =
        body.lines().find_map(|l| l.strip_prefix("FileSize: ")).and_then(|s| s.parse().ok()).expect("FileSize");
    let o = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", &format!("{base}/{nar_url}")])
        .output()
        .expect("curl");
    let headers = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(headers.contains(&format!("content-length: {size}")), "{headers}");
    let o = Command::new("curl").args(["-sS", "-r", "0-99", &format!("{base}/{nar_url}")]).output().expect("curl");
    assert_eq!(o.stdout.len(), 100);
}

/// NarHash (`sha256:` nix32) and NarSize of a store path, from Nix.
fn nix_store_hash_size(path: &Path) -> (String, u64) {
    let hash = ok_str(nix_store().args(["--query", "--hash"]).arg(path)).trim().to_string();
    let size = ok_str(nix_store().args(["--query", "--size"]).arg(path)).trim().parse().expect("size");
    (hash, size)
}

#[test]
fn a_private_cache_needs_a_read_token() {
    let work = tempdir();
    let data = work.path().join("data");
    ok(&mut cache(&data, &["create", "secret", "--private"]));
    let server = Server::start(&data, &[]);
    let read =
        ok_str(&mut cache(&data, &["token", "create", "--cache", "secret", "--scope", "read"])).trim().to_string();
    let url = format!("{}/nix-cache-info", server.url("secret"));
    let (code, _) = curl(&[&url]);
    assert_eq!(code, 401);
    let h = format!("Authorization: Bearer {read}");
    let (code, body) = curl(&["-H", &h, &url]);
    assert_eq!(code, 200);
    assert!(body.contains("StoreDir: /nix/store") && body.contains("Priority: 30"), "{body}");
    // A token for one cache opens no other.
    ok(&mut cache(&data, &["create", "other", "--private"]));
    let (code, _) = curl(&["-H", &h, &format!("{}/nix-cache-info", server.url("other"))]);
    assert_eq!(code, 403);
    let (code, _) = curl(&[&format!("{}/healthz", server.base)]);
    assert_eq!(code, 200);
    // Prometheus metrics count what happened, by route and status.
    let (code, metrics) = curl(&[&format!("{}/metrics", server.base)]);
    assert_eq!(code, 200);
    for line in [
        "flywheel_cache_requests_total{route=\"nix-cache-info\",method=\"GET\",status=\"401\"} 1",
        "flywheel_cache_requests_total{route=\"nix-cache-info\",method=\"GET\",status=\"200\"} 1",
        "flywheel_cache_requests_total{route=\"nix-cache-info\",method=\"GET\",status=\"403\"} 1",
        "flywheel_cache_paths 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
    }
}

#[test]
fn flywheel_push_is_read_back_by_nix_and_needs_a_write_token() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let server = Server::start(&data, &[]);
    let key = server.keys[0].1.clone();
    let root = &support::fixture().root;
    let url = server.url("main");

    // Without a token, or with a read token: one line, nothing stored.
    let o = flywheel()
        .args(["cache", "push", "--to", &url])
        .arg(root)
        .env_remove("FLYWHEEL_CACHE_TOKEN")
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("401"));
    let read = token(&data, "read");
    let o = flywheel().args(["cache", "push", "--to", &url, "--token", &read]).arg(root).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("write scope"));

    // With one (from the environment, as CI passes it): every path, then nothing left to do.
    let write = token(&data, "write");
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to", &url])
        .env("FLYWHEEL_CACHE_TOKEN", &write)
        .arg(root)))
    .expect("JSON");
    assert_eq!(report["pushed"].as_u64(), Some(support::fixture().paths.len() as u64));
    assert_eq!(report["failed"], serde_json::json!([]));
    let again: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to", &url, "--token", &write])
        .arg(root)))
    .expect("JSON");
    assert_eq!(
        (again["pushed"].as_u64(), again["present"].as_u64()),
        (Some(0), Some(support::fixture().paths.len() as u64))
    );

    // Real Nix reads it back into a fresh store, trusting only the cache's key.
    let fresh = w.join("fresh");
    ok(nix_as(&w.join("puller"))
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", &key])
        .args(["--from", &url, "--to"])
        .arg(&fresh)
        .arg(root));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&fresh).arg(root));
    ok(&mut cache(&data, &["verify", "--full"]));
}

#[test]
fn push_since_sends_what_was_registered_after_a_time() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let server = Server::start(&data, &[]);
    let write = token(&data, "write");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() - 1;
    // A path new to the store: what a job would have built.
    let file = w.join(format!("built-{}-{before}", std::process::id()));
    fs::write(&file, format!("built by a job at {before}\n")).expect("write");
    let added = ok_str(nix_store().arg("--add").arg(&file)).trim().to_string();
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to", &server.url("main"), "--token", &write, "--since"])
        .arg(before.to_string())))
    .expect("JSON");
    assert!(report["pushed"].as_u64().is_some_and(|n| n >= 1), "{report}");
    let hash = &Path::new(&added).file_name().and_then(|n| n.to_str()).expect("name")[..32];
    let (code, body) = curl(&[&format!("{}/{hash}.narinfo", server.url("main"))]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&added), "{body}");
    // A time that is not one: one line, exit 1.
    let o =
        flywheel().args(["cache", "push", "--to", &server.url("main"), "--since", "yesterday"]).output().expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("--since"));
}

/// Every store path under `store` (a chroot store's root) that Nix holds as valid.
fn valid_paths(store: &Path) -> Vec<String> {
    let out = nix_store()
        .arg("--store")
        .arg(store)
        .args(["--query", "--requisites"])
        .args(support::fixture().paths.iter())
        .output()
        .expect("run");
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn flywheel_pull_realises_closures_that_flywheel_and_nix_pushed() {
    let work = tempdir();
    let w = work.path();
    let data = w.join("data");
    let server = Server::start(&data, &[]);
    let key = server.keys[0].1.clone();
    let url = server.url("main");
    let root = support::fixture().root.to_string_lossy().to_string();
    let edge = support::edge_cases().to_string_lossy().to_string();

    // Nix pushes one path with its default compression (xz), flywheel the whole closure.
    let netrc = server.netrc(w, &token(&data, "write"));
    ok(nix_as(&w.join("pusher")).args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url, &edge]));
    ok(flywheel().args(["cache", "push", "--to", &url, "--token", &token(&data, "write"), &root]));

    // An untrusted key: refused before anything is written.
    let wrong = w.join("wrong");
    let o = flywheel()
        .args(["cache", "pull", "--from", &url, "--store"])
        .arg(&wrong)
        .args(["--trusted-key", "other-1:H6pPj1b6bGOS4e4TaPUiE9xgWO6OOwfehTxBJSfBfm8=", &root])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(1));
    assert!(one_line_error(&o).contains("no valid signature by a trusted key"), "{}", one_line_error(&o));
    assert!(!wrong.exists());

    // Direct: restored in place and registered; Nix finds every path valid with the right contents.
    let direct = w.join("direct");
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "pull", "--json", "--from", &url, "--trusted-key", &key, "--install", "direct", "--store"])
        .arg(&direct)
        .arg(&root)))
    .expect("JSON");
    assert_eq!(report["pulled"].as_u64(), Some(support::fixture().paths.len() as u64), "{report}");
    assert_eq!(report["install"], "direct");
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&direct).arg(&root));
    assert_eq!(valid_paths(&direct).len(), support::fixture().paths.len());
    let store_dir = direct.join("nix/store");
    assert!(listing(&store_dir).iter().all(|p| !p.to_string_lossy().ends_with(".lock")), "lock files left");
    // Nix's own dump of what was restored is the NAR the cache holds.
    let dumped = ok(nix_store().arg("--store").arg(&direct).args(["--dump", &edge]));
    assert_eq!(dumped, ok(nix_store().args(["--dump", &edge])));

    // Again: nothing to do.
    let again: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "pull", "--json", "--from", &url, "--trusted-key", &key, "--store"])
        .arg(&direct)
        .arg(&root)))
    .expect("JSON");
    assert_eq!((again["pulled"].as_u64(), again["present"].as_u64()), (Some(0), Some(1)));

    // Two pulls of the same closure into one store at once: both finish (they take Nix's path
    // locks in one order), and every path is whole and registered once.
    let shared = w.join("shared");
    let pulls: Vec<_> = (0..2)
        .map(|_| {
            flywheel()
                .args(["cache", "pull", "--json", "--from", &url, "--trusted-key", &key, "--store"])
                .arg(&shared)
                .arg(&root)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut pulled = 0;
    for p in pulls {
        let out = p.wait_with_output().expect("pull");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        pulled += r["pulled"].as_u64().expect("pulled");
    }
    assert_eq!(pulled, support::fixture().paths.len() as u64, "each path pulled by exactly one of the two");
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&shared).arg(&root));

    // Import, the way into a store behind the daemon: the path Nix pushed (xz), through nix-store --import.
    let imported = w.join("imported");
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "pull", "--json", "--from", &url, "--trusted-key", &key, "--install", "import", "--store"])
        .arg(&imported)
        .arg(&edge)))
    .expect("JSON");
    assert_eq!(report["install"], "import");
    assert!(report["pulled"].as_u64() >= Some(1));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&imported).arg(&edge));
}

/// A plain directory served over HTTP by Python, as any static file server would serve a
/// `nix copy --to file://` cache; stopped when dropped.
struct StaticServer(std::process::Child, String);

impl StaticServer {
    fn start(dir: &Path) -> StaticServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        // Stopped by Drop from here on, whether it starts or not.
        let server = StaticServer(child, format!("http://127.0.0.1:{port}"));
        for _ in 0..100 {
            if curl(&["-s", "-o", "/dev/null", &format!("{}/nix-cache-info", server.1)]).0 == 200 {
                return server;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("python3 -m http.server did not start");
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pull_from_a_plain_nix_cache_refuses_a_tampered_nar_and_registers_nothing() {
    let work = tempdir();
    let w = work.path();
    let edge = support::edge_cases().to_string_lossy().to_string();
    let (sk, pk) = (w.join("sk"), w.join("pk"));
    ok(nix_store().args(["--generate-binary-cache-key", "plain-1"]).arg(&sk).arg(&pk));
    let pk = fs::read_to_string(&pk).expect("pk");
    let files = w.join("files");
    ok(nix().args([
        "copy",
        "--to",
        &format!("file://{}?compression=none&secret-key={}", files.display(), sk.display()),
        &edge,
    ]));
    let server = StaticServer::start(&files);

    // Served by a plain file server, pulled and checked.
    let good = w.join("good");
    ok(flywheel()
        .args(["cache", "pull", "--from", &format!("{}/", server.1), "--trusted-key", pk.trim(), "--store"])
        .arg(&good)
        .arg(&edge));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&good).arg(&edge));
    // Without --trusted-key, Nix's own trusted-public-keys decide.
    let nix_trusts = w.join("nix-trusts");
    ok(flywheel()
        .args(["cache", "pull", "--from", &server.1, "--store"])
        .arg(&nix_trusts)
        .arg(&edge)
        .env("NIX_CONFIG", format!("trusted-public-keys = {}", pk.trim())));
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&nix_trusts).arg(&edge));
    let o = flywheel()
        .args(["cache", "pull", "--from", &server.1, "--store"])
        .arg(w.join("untrusted"))
        .arg(&edge)
        .env("NIX_CONFIG", "trusted-public-keys = other-1:H6pPj1b6bGOS4e4TaPUiE9xgWO6OOwfehTxBJSfBfm8=")
        .output()
        .expect("run");
    assert!(one_line_error(&o).contains("no valid signature by a trusted key"), "{}", one_line_error(&o));

    // The edge path's NAR swapped for another path's: the signature still holds, the hash does not.
    let hash_part = &Path::new(&edge).file_name().expect("name").to_string_lossy()[..32];
    let narinfo = fs::read_to_string(files.join(format!("{hash_part}.narinfo"))).expect("narinfo");
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL");
    let other = support::fixture().paths.iter().find(|p| p.to_string_lossy() != edge).expect("another path");
    fs::write(files.join(nar_url), ok(nix_store().arg("--dump").arg(other))).expect("swap the NAR");
    let bad = w.join("bad");
    for install in ["direct", "import"] {
        let o = flywheel()
            .args(["cache", "pull", "--from", &server.1, "--trusted-key", pk.trim(), "--install", install, "--store"])
            .arg(&bad)
            .arg(&edge)
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(1), "{install}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("NAR hash mismatch"), "{install}: {err}");
        assert!(valid_paths(&bad).is_empty(), "{install}: registered {:?}", valid_paths(&bad));
        assert!(
            !bad.join("nix/store").join(Path::new(&edge).file_name().expect("name")).exists(),
            "{install}: left on disk"
        );
    }
}

fn rand_bit() -> bool {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() & 1 == 1)
        .unwrap_or(false)
}

/// A new store path holding `text` (unique per call), added with Nix.
fn new_store_path(dir: &Path, name: &str, text: &str) -> PathBuf {
    let file = dir.join(name);
    fs::write(&file, format!("{text} {:?} {}", std::time::SystemTime::now(), std::process::id())).expect("write");
    PathBuf::from(ok_str(nix_store().arg("--add").arg(&file)).trim())
}

#[test]
fn a_config_file_sets_caches_upstream_filter_listings_and_logs() {
    let work = tempdir();
    let w = work.path();
    let (up_sk, up_pk) = (w.join("up.sk"), w.join("up.pk"));
    ok(nix_store().args(["--generate-binary-cache-key", "upstream-1"]).arg(&up_sk).arg(&up_pk));
    let up_pk = fs::read_to_string(&up_pk).expect("pk");
    let config = w.join("cache.toml");
    fs::write(
        &config,
        format!(
            "data = \"data\"\nmax-requests-per-client = 4\n[caches.main]\nupstream-keys = [\"{}\"]\n\
             [caches.pr]\nvisibility = \"private\"\npriority = 41\n",
            up_pk.trim()
        ),
    )
    .expect("config");
    let data = w.join("data");
    let server = Server::start(&data, &["--config", config.to_str().expect("utf-8")]);
    let url = server.url("main");

    // The caches the file declares, with their settings; admin commands find the data through it.
    let pr: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "info", "--json", "--cache", "pr", "--config"])
        .arg(&config)
        .env_remove("FLYWHEEL_CACHE_DATA")))
    .expect("JSON");
    assert_eq!((pr["visibility"].as_str(), pr["priority"].as_u64()), (Some("private"), Some(41)), "{pr}");
    assert_eq!(curl(&[&format!("{}/nix-cache-info", server.url("pr"))]).0, 401);

    // A path upstream signed is declined (Nix's copy still succeeds, and fetches it upstream).
    let upstream = new_store_path(w, "upstream.txt", "from upstream");
    ok(nix().args(["store", "sign", "--key-file"]).arg(&up_sk).arg(&upstream));
    let ours = new_store_path(w, "ours.txt", "built here");
    let netrc = server.netrc(w, &token(&data, "write"));
    let root = &support::fixture().root;
    ok(nix_as(&w.join("pusher"))
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &format!("{url}?compression=zstd&write-nar-listing=true")])
        .arg(&upstream)
        .arg(&ours)
        .arg(root));
    let hash_part = |p: &Path| p.file_name().and_then(|n| n.to_str()).map(|n| n[..32].to_string()).expect("store path");
    assert_eq!(curl(&[&format!("{url}/{}.narinfo", hash_part(&upstream))]).0, 404);
    assert_eq!(curl(&[&format!("{url}/{}.narinfo", hash_part(&ours))]).0, 200);
    let (_, metrics) = curl(&[&format!("{}/metrics", server.base)]);
    assert!(metrics.contains("flywheel_cache_upstream_declined_total 1"), "{metrics}");

    // It counts as present: a path referring to it is accepted, and push has nothing to send.
    let (hash, size) = nix_store_hash_size(&ours);
    let nar = nar_of(&ours, &w.join("ours.nar"));
    let write = format!("Authorization: Bearer {}", token(&data, "write"));
    let (code, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        &format!("@{}", nar.display()),
        "-H",
        &write,
        &format!("{url}/nar/again.nar"),
    ]);
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to", &url, "--token", &token(&data, "write")])
        .arg(&upstream)))
    .expect("JSON");
    assert_eq!((report["pushed"].as_u64(), report["present"].as_u64()), (Some(0), Some(1)), "{report}");
    // flywheel's push asks the cache for its upstream keys: an upstream path gets its narinfo
    // (declined, recorded) and no NAR upload.
    let nar_puts = || {
        let (_, metrics) = curl(&[&format!("{}/metrics", server.base)]);
        metrics
            .lines()
            .filter(|l| l.contains("route=\"nar\",method=\"PUT\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let puts_before = nar_puts();
    let upstream2 = new_store_path(w, "upstream2.txt", "from upstream too");
    ok(nix().args(["store", "sign", "--key-file"]).arg(&up_sk).arg(&upstream2));
    let report: Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to", &url, "--token", &token(&data, "write")])
        .arg(&upstream2)))
    .expect("JSON");
    assert_eq!((report["pushed"].as_u64(), report["upstream"].as_u64()), (Some(0), Some(1)), "{report}");
    assert_eq!(nar_puts(), puts_before, "no NAR uploaded for an upstream path");
    assert_eq!(curl(&[&format!("{url}/{}.narinfo", hash_part(&upstream2))]).0, 404);
    let missing = curl(&[
        "-X",
        "POST",
        "--data-binary",
        &serde_json::to_string(&[upstream2.to_string_lossy()]).expect("JSON"),
        &format!("{url}/api/v1/missing"),
        "-H",
        &write,
    ]);
    assert_eq!(missing, (200, "[]".to_string()), "recorded as upstream's, so not missing");
    let upstream_name = upstream.file_name().and_then(|n| n.to_str()).expect("name").to_string();
    let text = narinfo_for(&ours, "nar/again.nar", &hash, size, &upstream_name);
    let (code, body) =
        curl(&["-X", "PUT", "--data-binary", &text, "-H", &write, &format!("{url}/{}.narinfo", hash_part(&ours))]);
    assert_eq!(code, 200, "a reference to an upstream path is no hole in the closure: {body}");

    // `.ls` listings Nix wrote, served once the path is there.
    let (code, listing) = curl(&[&format!("{url}/{}.ls", hash_part(root))]);
    assert_eq!(code, 200);
    let listing: Value = serde_json::from_str(&listing).expect("JSON listing");
    assert_eq!(listing["version"], 1);

    // Build logs: uploaded with a write token, read back by `nix log`.
    let drv = ok_str(nix_store().args(["--query", "--deriver"]).arg(root)).trim().to_string();
    let drv_name = Path::new(&drv).file_name().and_then(|n| n.to_str()).expect("drv").to_string();
    let log_url = format!("{url}/log/{drv_name}");
    assert_eq!(curl(&["-X", "PUT", "--data-binary", "the build said hello", &log_url]).0, 401);
    assert_eq!(curl(&["-X", "PUT", "--data-binary", "x", "-H", &write, &format!("{url}/log/..%2Fescape")]).0, 400);
    assert_eq!(curl(&["-X", "PUT", "--data-binary", "the build said hello", "-H", &write, &log_url]).0, 200);
    let log = ok_str(nix_as(&w.join("reader")).args(["log", "--store", &url]).arg(root));
    assert_eq!(log.trim(), "the build said hello");

    // The largest fixture path, for the clients that hang up below.
    // One query for every path's NarSize, in the order given.
    let paths = &support::fixture().paths;
    let sizes = ok_str(nix_store().args(["--query", "--size"]).args(paths));
    let big = paths
        .iter()
        .zip(sizes.lines().map(|l| l.trim().parse::<u64>().expect("size")))
        .max_by_key(|(_, size)| *size)
        .map(|(p, _)| p)
        .expect("a path");
    let (_, narinfo) = curl(&[&format!("{url}/{}.narinfo", hash_part(big))]);
    let nar_url = format!("{url}/{}", narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL"));

    // One client with more downloads in flight than max-requests-per-client: the extra ones
    // wait their turn (counted), and every one completes in full.
    // A NAR larger than what the kernel buffers for a connection on both ends, so a download
    // that is not read holds its permit until it is.
    let sysctl_max = |name: &str| -> u64 {
        fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|t| t.split_whitespace().last().and_then(|v| v.parse().ok()))
            .unwrap_or(32 << 20)
    };
    let big_size = sysctl_max("tcp_wmem") + sysctl_max("tcp_rmem") + (16 << 20);
    let big_file = w.join("incompressible.bin");
    {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut bytes = Vec::with_capacity(usize::try_from(big_size).expect("size"));
        while (bytes.len() as u64) < big_size {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        fs::write(&big_file, bytes).expect("write");
    }
    let big = PathBuf::from(ok_str(nix_store().arg("--add").arg(&big_file)).trim());
    ok(nix_as(&w.join("pusher")).args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url]).arg(&big));
    let (_, narinfo) = curl(&[&format!("{url}/{}.narinfo", hash_part(&big))]);
    let big_nar = format!("{url}/{}", narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("URL"));
    let big_file_size: u64 =
        narinfo.lines().find_map(|l| l.strip_prefix("FileSize: ")).expect("FileSize").parse().expect("size");
    // The metrics come from another loopback address: this client's four turns are taken.
    let waits = || -> u64 {
        let (_, metrics) = curl(&["--interface", "127.0.0.2", &format!("{}/metrics", server.base)]);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("flywheel_cache_client_waits_total "))
            .and_then(|v| v.parse().ok())
            .expect("client_waits metric")
    };
    let waits_before = waits();
    let host = server.host_port().to_string();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let downloads: Vec<std::net::TcpStream> = (0..6)
        .map(|_| {
            use std::io::Write;
            let mut c = std::net::TcpStream::connect(&host).expect("connect");
            c.write_all(get(big_nar.trim_start_matches(&server.base)).as_bytes()).expect("request");
            c
        })
        .collect();
    // Nothing is read yet, so four downloads stall mid-body and the other two must wait.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waits() - waits_before < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let waited = waits() - waits_before;
    assert_eq!(waited, 2, "six downloads at once with a limit of four: {waited} waited");
    let readers: Vec<_> = downloads
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                use std::io::Read;
                let mut response = Vec::new();
                c.read_to_end(&mut response).expect("read");
                response
            })
        })
        .collect();
    for r in readers {
        let response = r.join().expect("reader");
        let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
        let head = String::from_utf8_lossy(&response[..split]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(response.len() - split, usize::try_from(big_file_size).expect("size"), "{head}");
    }

    // Clients that hang up in the middle of downloads (closing with unread data: a reset) cost
    // the server nothing but those requests; it used to die of SIGPIPE.
    let request = format!("GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n", nar_url.trim_start_matches(&server.base));
    for _ in 0..4 {
        let hangups: Vec<_> = (0..16)
            .map(|_| {
                let (host, request) = (host.clone(), request.clone());
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    for _ in 0..20 {
                        if let Ok(mut c) = std::net::TcpStream::connect(&host) {
                            let _ = c.write_all(request.as_bytes());
                            let _ = c.read(&mut [0u8; 100]);
                            // Half the time with the rest of the response unread (a reset),
                            // half the time after reading some more (the server is mid-write).
                            if rand_bit() {
                                let _ = c.read(&mut vec![0u8; 1 << 20]);
                            }
                        }
                    }
                })
            })
            .collect();
        for h in hangups {
            let _ = h.join();
        }
    }
    assert_eq!(curl(&[&format!("{}/healthz", server.base)]).0, 200, "the server survives clients that hang up");

    ok(flywheel().args(["cache", "verify", "--config"]).arg(&config).env_remove("FLYWHEEL_CACHE_DATA"));
}
