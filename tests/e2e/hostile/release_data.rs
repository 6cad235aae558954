//! Point 1's migration, on data made by the current release (tests/data/release-e20d766, see its
//! make.sh): a data directory with SQLite, and a PostgreSQL dump, both holding a path that one
//! cache (pr) got by joining another's (main) rows. After the upgrade every cache serves byte
//! for byte what it served before, old tokens and pins work, `cache verify` names the adopted
//! rows, and the next push from the cache's own writer replaces them.

use std::path::{Path, PathBuf};
use std::process::Command;

use flywheel_fixture::postgres::PgCluster;

use crate::harness::*;
use crate::support::{flywheel, ok, ok_str, tempdir};

const CACHES: &str = "[caches.main]\n[caches.pr]\n[caches.secret]\nvisibility = \"private\"\n";

fn release() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/release-e20d766")
}

fn copy_dir(from: &Path, to: &Path) {
    ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// The three store paths the data holds, made again in this machine's store (text paths: the
/// same on every machine with Nix).
fn make_paths(tokens: &serde_json::Value) -> (String, String, String) {
    let out = ok_str(
        Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--read-write-mode", "--json", "-E"])
            .arg(
                "let lib = builtins.toFile \"release-lib\" \"the release lib\\n\";
                     app = builtins.toFile \"release-app\" \"app refers to ${lib}\\n\";
                     solo = builtins.toFile \"release-solo\" \"solo\\n\";
                 in [ lib app solo ]",
            )
            .args(flywheel_fixture::NIX_OFFLINE_OPTIONS),
    );
    let made: Vec<String> = serde_json::from_str(&out).expect("paths");
    let p = &tokens["paths"];
    assert_eq!(made, [&p["lib"], &p["app"], &p["solo"]].map(|v| v.as_str().unwrap_or_default().to_string()));
    (made[0].clone(), made[1].clone(), made[2].clone())
}

fn check_upgrade(s: &Served, w: &Path, backend: &str, tokens: &serde_json::Value) {
    let (lib, app, solo) = make_paths(tokens);
    let addr = s.addr();
    let t = &tokens[backend];
    let token = |k: &str| t[k].as_str().unwrap_or_default().to_string();

    // Served as before, byte for byte (the same keys sign the same data).
    for cache in ["main", "pr"] {
        for p in [&lib, &app] {
            let name = format!("{cache}-{}.narinfo", p.trim_start_matches("/nix/store/"));
            let before = std::fs::read(release().join("served").join(backend).join(&name)).expect("served before");
            let now = get(&addr, &format!("/{cache}/{}.narinfo", hash_part(p)));
            assert_eq!(now.status, 200, "{backend} {name}");
            assert_eq!(now.text(), String::from_utf8_lossy(&before), "{backend} {name}");
        }
    }
    // Old tokens: the private cache reads with its read token only.
    let solo_narinfo = format!("/secret/{}.narinfo", hash_part(&solo));
    assert_eq!(get(&addr, &solo_narinfo).status, 401);
    let read = bearer(&token("secret_read"));
    assert_eq!(request(&addr, "GET", &solo_narinfo, &[("Authorization", &read)], b"").status, 200, "{backend}");
    // The pin.
    let pins: serde_json::Value = serde_json::from_slice(
        &request(&addr, "GET", "/main/api/v1/pins", &[("Authorization", &bearer(&token("main_write")))], b"").body,
    )
    .expect("pins");
    assert_eq!(pins[0]["revisions"][0]["store_path"], app.as_str(), "{backend}: {pins}");

    // verify names the rows that joined another cache's.
    let report = s.verify();
    assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{backend}: {report}");
    let adopted: Vec<String> =
        report["adopted"].as_array().expect("adopted").iter().filter_map(|v| v.as_str().map(String::from)).collect();
    assert_eq!(adopted, [format!("pr: {app}"), format!("pr: {lib}"), format!("secret: {solo}")], "{backend}");
    assert_eq!((report["paths"].as_u64(), report["store_paths"].as_u64()), (Some(6), Some(3)), "{backend}: {report}");

    // `cache migrate` carries the rows and their marks to another index (an embedded one).
    let copy = w.join("copy.toml");
    std::fs::write(&copy, format!("data = \"{}\"\n", w.join("copy").display())).expect("write");
    ok(flywheel().args(["cache", "migrate", "--json", "--from"]).arg(&s.config).arg("--to").arg(&copy));
    let out = flywheel().args(["cache", "verify", "--json", "--config"]).arg(&copy).output().expect("verify");
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(copied["adopted"], report["adopted"], "{backend}: {copied}");
    assert!(copied["problems"].as_array().is_some_and(|p| p.is_empty()), "{backend}: {copied}");

    // pr's writer pushes its paths: they count as missing, are sent, and replace the adopted
    // rows; the narinfos stay what they were (the same contents).
    let out = ok_str(
        flywheel()
            .args(["cache", "push", "--json", "--to", &s.server.url("pr"), "--token", &token("pr_write")])
            .arg(&app),
    );
    let pushed: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(pushed["pushed"], 2, "{backend}: {pushed}");
    let report = s.verify();
    assert_eq!(report["adopted"].as_array().map(Vec::len), Some(1), "{backend}: {report}");
    assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{backend}: {report}");
    let (info, signed) = served_narinfo(&addr, "pr", &app, &s.key("pr")).expect("pr has app");
    assert!(signed && info.references().len() == 1, "{backend}");
}

#[test]
fn an_sqlite_data_directory_of_the_release_is_upgraded_in_place() {
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release().join("tokens.json")).expect("tokens")).expect("json");
    let work = tempdir();
    let w = work.path();
    copy_dir(&release().join("sqlite"), &w.join("data"));
    let s = Served::start_on(w, None, "", CACHES);
    assert!(s.data.join("index.sqlite").exists());
    check_upgrade(&s, w, "sqlite", &tokens);
}

#[test]
fn a_postgresql_index_of_the_release_is_upgraded_in_place() {
    let tokens: serde_json::Value =
        serde_json::from_slice(&std::fs::read(release().join("tokens.json")).expect("tokens")).expect("json");
    let work = tempdir();
    let w = work.path();
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"));
    let dump = std::fs::read_to_string(release().join("postgres.sql")).expect("the dump");
    pg.psql(&dump).unwrap_or_else(|e| panic!("restoring the dump: {e}"));
    std::fs::create_dir_all(w.join("data")).expect("mkdir");
    copy_dir(&release().join("postgres-nar"), &w.join("data").join("nar"));
    let s = Served::start_on(w, Some(pg), "", CACHES);
    check_upgrade(&s, w, "postgres", &tokens);
}
