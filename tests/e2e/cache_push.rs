//! `flywheel cache push --to file:///DIR`: real Nix copies the closure back out of the cache
//! into a fresh store, trusting only flywheel's key.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flywheel_nix::keys::PublicKey;
use flywheel_nix::narinfo::NarInfo;
use flywheel_nix::StoreDir;
use support::*;

struct Cache {
    _work: tempfile::TempDir,
    dir: PathBuf,
    key: PathBuf,
    public: String,
}

fn push_fixture() -> Cache {
    let work = tempdir();
    let key = work.path().join("cache.secret");
    ok(flywheel().args(["key", "generate", "e2e-cache-1", "--out"]).arg(&key));
    let public = ok_str(flywheel().args(["key", "public"]).arg(&key)).trim().to_string();
    let dir = work.path().join("cache");
    let report = ok(flywheel()
        .args(["cache", "push", "--json", "--to"])
        .arg(format!("file://{}", dir.display()))
        .arg("--key")
        .arg(&key)
        .arg(&fixture().root));
    let report: serde_json::Value = serde_json::from_slice(&report).unwrap();
    assert_eq!(report["closure"].as_u64().unwrap() as usize, fixture().paths.len(), "{report}");
    assert_eq!(report["pushed"], report["closure"], "{report}");
    assert!(report["failed"].as_array().unwrap().is_empty());
    Cache { _work: work, dir, key, public }
}

fn narinfos(dir: &Path) -> Vec<NarInfo> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| NarInfo::parse_in(&StoreDir::default(), &fs::read(&p).unwrap()).unwrap())
        .collect()
}

#[test]
fn nix_copies_the_pushed_closure_into_a_fresh_store_checking_signatures() {
    let cache = push_fixture();
    let url = format!("file://{}", cache.dir.display());
    let fresh = cache._work.path().join("fresh-store");
    let root = &fixture().root;
    ok(nix()
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", &cache.public])
        .args(["--from", &url, "--to"])
        .arg(&fresh)
        .arg(root));

    // Every path arrived, with the same NAR hash, and its contents check out.
    let theirs: serde_json::Value = serde_json::from_slice(&ok(nix()
        .args(["path-info", "--json", "--recursive", "--store"])
        .arg(&fresh)
        .arg(root)))
    .unwrap();
    let here: serde_json::Value =
        serde_json::from_slice(&ok(nix().args(["path-info", "--json", "--recursive"]).arg(root))).unwrap();
    let hashes = |v: &serde_json::Value| -> Vec<(String, String)> {
        let mut h: Vec<_> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["path"].as_str().unwrap().to_string(), p["narHash"].as_str().unwrap().to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(hashes(&theirs), hashes(&here));
    assert_eq!(hashes(&theirs).len(), fixture().paths.len());
    ok(nix().args(["store", "verify", "--recursive", "--no-trust", "--store"]).arg(&fresh).arg(root));
}

#[test]
fn nix_refuses_the_cache_under_any_other_key_and_after_tampering() {
    let cache = push_fixture();
    let url = format!("file://{}", cache.dir.display());
    let copy = |trusted: &str, to: &Path| {
        nix()
            .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", trusted])
            .args(["--from", &url, "--to"])
            .arg(to)
            .arg(edge_cases())
            .output()
            .unwrap()
    };
    let stranger = flywheel_nix::keys::SecretKey::generate("e2e-cache-1").unwrap().public().to_nix_string();
    let out = copy(&stranger, &cache._work.path().join("s1"));
    assert!(!out.status.success(), "copied with an untrusted signature");
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"), "{}", String::from_utf8_lossy(&out.stderr));

    // Change the size in a narinfo: the signature no longer covers it.
    let hash_part = &edge_cases().file_name().unwrap().to_str().unwrap()[..32];
    let narinfo = cache.dir.join(format!("{hash_part}.narinfo"));
    let text = fs::read_to_string(&narinfo).unwrap();
    let tampered: String = text
        .lines()
        .map(|l| match l.strip_prefix("NarSize: ") {
            Some(n) => format!("NarSize: {}\n", n.parse::<u64>().unwrap() + 8),
            None => format!("{l}\n"),
        })
        .collect();
    assert_ne!(tampered, text);
    fs::write(&narinfo, tampered).unwrap();
    let out = copy(&cache.public, &cache._work.path().join("s2"));
    assert!(!out.status.success(), "copied a tampered narinfo");
}

#[test]
fn the_cache_is_complete_signed_and_idempotent() {
    let cache = push_fixture();
    let infos = narinfos(&cache.dir);
    assert_eq!(infos.len(), fixture().paths.len());
    let key = PublicKey::parse(&cache.public).unwrap();
    let present: std::collections::BTreeSet<_> = infos.iter().map(|i| i.store_path().clone()).collect();
    for info in &infos {
        assert!(info.has_valid_signature(&StoreDir::default(), std::slice::from_ref(&key.0)), "{}", info.store_path());
        assert!(
            info.references().iter().all(|r| present.contains(r)),
            "{} has a reference outside the cache",
            info.store_path()
        );
        let nar = cache.dir.join(info.url());
        assert_eq!(fs::metadata(&nar).unwrap().len(), info.file_size().unwrap());
        // Readable by others: a web server or another user may serve the directory.
        assert_eq!(fs::metadata(&nar).unwrap().permissions().mode() & 0o044, 0o044);
        assert!(info.url().ends_with(".nar.zst"));
    }
    // No temporary files left behind.
    assert!(listing(&cache.dir).iter().all(|p| !p.to_string_lossy().contains(".tmp")));

    // Pushing again uploads nothing.
    let again: serde_json::Value = serde_json::from_slice(&ok(flywheel()
        .args(["cache", "push", "--json", "--to"])
        .arg(format!("file://{}", cache.dir.display()))
        .arg("--key")
        .arg(&cache.key)
        .arg(&fixture().root)))
    .unwrap();
    assert_eq!(again["pushed"], 0);
    assert_eq!(again["present"].as_u64().unwrap() as usize, fixture().paths.len());
}

#[test]
fn a_modified_store_path_is_never_advertised() {
    let work = tempdir();
    let store = work.path().join("store");
    let root = &fixture().root;
    ok(nix().args(["copy", "--no-check-sigs", "--to"]).arg(&store).arg(root));
    // Corrupt one file of the edge-case path inside that chroot store.
    let victim = store.join(edge_cases().strip_prefix("/").unwrap()).join("sizes/f17");
    let dir = victim.parent().unwrap();
    fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A different size too: the check must not depend on the compressor noticing.
    fs::write(&victim, b"yyyyyyyyyyyyyyyyyyyy").unwrap();

    let key = work.path().join("k");
    ok(flywheel().args(["key", "generate", "k-1", "--out"]).arg(&key));
    let cache = work.path().join("cache");
    let out = flywheel()
        .args(["cache", "push", "--store"])
        .arg(&store)
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg("--key")
        .arg(&key)
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NAR hash mismatch"), "{stderr}");
    // Neither the modified path nor the root that refers to it has a narinfo; the rest do.
    let advertised: Vec<String> = narinfos(&cache).iter().map(|i| i.store_path().to_string()).collect();
    assert!(!advertised.iter().any(|p| p.ends_with("-flywheel-edge-cases")));
    assert!(!advertised.iter().any(|p| p.ends_with("-flywheel-fixture-root")));
    assert_eq!(advertised.len(), fixture().paths.len() - 2);
}

#[test]
fn bad_targets_and_keys_are_refused_cleanly() {
    let work = tempdir();
    let key = work.path().join("k");
    ok(flywheel().args(["key", "generate", "k-1", "--out"]).arg(&key));
    let root = &fixture().root;
    let out = flywheel().args(["cache", "push", "--to", "s3://bucket", "--key"]).arg(&key).arg(root).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
    let out = flywheel()
        .args(["cache", "push", "--to", "file://relative/dir", "--key"])
        .arg(&key)
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let cache = work.path().join("cache");
    let target = format!("file://{}", cache.display());
    let missing = work.path().join("no-such-key");
    let out = flywheel().args(["cache", "push", "--to", &target, "--key"]).arg(&missing).arg(root).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("no-such-key"));
    fs::write(work.path().join("garbage"), "not a key").unwrap();
    let out = flywheel()
        .args(["cache", "push", "--to", &target, "--key"])
        .arg(work.path().join("garbage"))
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    one_line_error(&out);
    let out = flywheel().args(["cache", "push", "--to", &target, "--key"]).arg(&key).arg("/tmp").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("not in the Nix store"));
    assert!(!cache.exists() || narinfos(&cache).is_empty(), "a failed push left narinfos");
}

#[test]
fn uncompressed_caches_work_too() {
    let work = tempdir();
    let key = work.path().join("k");
    ok(flywheel().args(["key", "generate", "plain-1", "--out"]).arg(&key));
    let public = ok_str(flywheel().args(["key", "public"]).arg(&key)).trim().to_string();
    let cache = work.path().join("cache");
    let url = format!("file://{}", cache.display());
    ok(flywheel().args(["cache", "push", "--compression", "none", "--to", &url, "--key"]).arg(&key).arg(edge_cases()));
    let infos = narinfos(&cache);
    assert_eq!(infos.len(), 1);
    assert!(infos[0].url().ends_with(".nar") && infos[0].file_size() == Some(infos[0].nar_size()));
    ok(nix()
        .args(["copy", "--option", "require-sigs", "true", "--option", "trusted-public-keys", &public])
        .args(["--from", &url, "--to"])
        .arg(work.path().join("store"))
        .arg(edge_cases()));
}
