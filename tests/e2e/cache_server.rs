//! The cache server's data directory and its administration (`flywheel cache create|info|token`),
//! with the keys checked by real Nix.

mod support;

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::{flywheel, listing, nix, ok, ok_str, one_line_error, tempdir};

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
