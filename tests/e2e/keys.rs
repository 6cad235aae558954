//! Signing keys: flywheel's and Nix's are interchangeable.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use flywheel_nix::keys::{PublicKey, SecretKey};
use flywheel_nix::store_db::StoreDb;
use flywheel_nix::StoreDir;
use support::*;

fn nix_public_of(secret_file: &std::path::Path) -> String {
    let mut child =
        nix().args(["key", "convert-secret-to-public"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(&fs::read(secret_file).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn flywheel_keys_are_accepted_by_nix_and_nix_keys_by_flywheel() {
    let work = tempdir();
    let ours = work.path().join("ours.secret");
    let printed = ok_str(flywheel().args(["key", "generate", "flywheel-test-1", "--out"]).arg(&ours));
    let public = ok_str(flywheel().args(["key", "public"]).arg(&ours));
    assert_eq!(printed.trim(), public.trim());
    assert_eq!(nix_public_of(&ours), public.trim());
    assert!(public.starts_with("flywheel-test-1:"));
    assert_eq!(fs::metadata(&ours).unwrap().permissions().mode() & 0o777, 0o600);

    // To stdout too, and a second key is a different key.
    let stdout_key = ok_str(flywheel().args(["key", "generate", "flywheel-test-1"]));
    assert_ne!(stdout_key.trim(), fs::read_to_string(&ours).unwrap().trim());

    let theirs = work.path().join("theirs.secret");
    fs::write(&theirs, ok(nix().args(["key", "generate-secret", "--key-name", "nix-made-1"]))).unwrap();
    assert_eq!(ok_str(flywheel().args(["key", "public"]).arg(&theirs)).trim(), nix_public_of(&theirs));
}

#[test]
fn generate_never_overwrites_a_key() {
    let work = tempdir();
    let file = work.path().join("k");
    fs::write(&file, "precious").unwrap();
    let out = flywheel().args(["key", "generate", "x", "--out"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    one_line_error(&out);
    assert_eq!(fs::read_to_string(&file).unwrap(), "precious");
    let out = flywheel().args(["key", "generate", "bad name"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    one_line_error(&out);
}

#[test]
fn nix_store_sign_with_a_flywheel_key_verifies() {
    let work = tempdir();
    let key_file = work.path().join("k.secret");
    ok(flywheel().args(["key", "generate", "signer-1", "--out"]).arg(&key_file));
    let public = ok_str(flywheel().args(["key", "public"]).arg(&key_file)).trim().to_string();

    // Sign in a chroot store, so the system store is left alone.
    let store = work.path().join("store");
    let path = edge_cases();
    ok(nix().args(["copy", "--no-check-sigs", "--to"]).arg(&store).arg(path));
    ok(nix().arg("store").arg("sign").arg("--store").arg(&store).arg("--key-file").arg(&key_file).arg(path));

    // Nix checks the signature against the public key flywheel printed...
    ok(nix()
        .args(["store", "verify", "--no-contents", "--trusted-public-keys", &public, "--store"])
        .arg(&store)
        .arg(path));
    let other = SecretKey::generate("signer-1").unwrap().public().to_nix_string();
    let out = nix()
        .args(["store", "verify", "--no-contents", "--trusted-public-keys", &other, "--store"])
        .arg(&store)
        .arg(path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a signature verified under the wrong key");

    // ...and flywheel verifies what Nix signed, over the fingerprint it computes itself.
    let db = StoreDb::open_root(&store, StoreDir::default()).unwrap();
    let info = db.query(&path.to_str().unwrap().parse().unwrap()).unwrap().unwrap();
    let sig = info.signatures.iter().find(|s| s.key_name == "signer-1").expect("Nix's signature in the database");
    let key = PublicKey::parse(&public).unwrap();
    assert!(sig.verify(info.fingerprint(&StoreDir::default()).as_bytes(), &[key.0]).unwrap());
}
