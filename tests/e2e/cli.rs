//! The command line's contract: help everywhere, exit codes 0/1/2, one-line errors.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use support::*;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["nar"],
    &["nar", "dump"],
    &["nar", "hash"],
    &["nar", "restore"],
    &["key"],
    &["key", "generate"],
    &["key", "public"],
    &["cache"],
    &["cache", "push"],
    &["path-info"],
    &["image"],
    &["image", "build"],
    &["image", "push"],
    &["image", "diff"],
];

#[test]
fn every_command_has_help() {
    for cmd in COMMANDS {
        let out = flywheel().args(*cmd).arg("--help").output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{cmd:?} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: flywheel"), "{cmd:?}: {text}");
    }
    let out = flywheel().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flywheel "));
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        &["frobnicate"][..],
        &["nar"],
        &["nar", "hash"],
        &["nar", "dump"],
        &["cache", "push", "/nix/store"],
        &["--bogus"],
    ] {
        let out = flywheel().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = flywheel()
        .args(["cache", "push", "--to", "file:///tmp/x", "--key", "k", "--compression", "lzma", "/nix/store"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn failures_exit_1_with_one_line() {
    let out = flywheel().args(["nar", "hash", "/no/such/path"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("/no/such/path"));
    let out = flywheel().args(["key", "public", "/no/such/key"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    one_line_error(&out);
}

#[test]
fn verbose_logs_go_to_stderr_only() {
    let work = tempdir();
    let key = work.path().join("k");
    ok(flywheel().args(["key", "generate", "v-1", "--out"]).arg(&key));
    let out = flywheel()
        .args(["-v", "cache", "push", "--to"])
        .arg(format!("file://{}", work.path().join("c").display()))
        .arg("--key")
        .arg(&key)
        .arg(edge_cases())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty(), "logs leaked to stdout");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[1/1]") && stderr.contains("pushed 1 of 1"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "colour codes when stderr is not a terminal");
}
