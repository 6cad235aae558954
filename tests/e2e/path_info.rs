//! `flywheel path-info` reads the Nix database and agrees with `nix path-info --json`.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use serde_json::Value;
use support::*;

fn by_path(v: &Value) -> std::collections::BTreeMap<String, Value> {
    v.as_array().unwrap().iter().map(|p| (p["path"].as_str().unwrap().to_string(), p.clone())).collect()
}

#[test]
fn recursive_json_matches_nix_path_info() {
    let root = &fixture().root;
    let ours: Value =
        serde_json::from_slice(&ok(flywheel().args(["path-info", "--json", "--recursive"]).arg(root))).unwrap();
    let nix: Value = serde_json::from_slice(&ok(nix().args(["path-info", "--json", "--recursive"]).arg(root))).unwrap();
    let (ours, nix) = (by_path(&ours), by_path(&nix));
    assert_eq!(ours.len(), fixture().paths.len());
    assert_eq!(ours.keys().collect::<Vec<_>>(), nix.keys().collect::<Vec<_>>());
    for (path, theirs) in &nix {
        let mine = &ours[path];
        for field in ["narHash", "narSize", "references", "deriver", "registrationTime", "ultimate", "signatures", "ca"]
        {
            assert_eq!(mine.get(field), theirs.get(field), "{path}: {field}");
        }
    }
    // The edge-case path refers to itself; the root refers to every member.
    let edge = edge_cases().to_str().unwrap();
    assert!(ours[edge]["references"].as_array().unwrap().iter().any(|r| r == edge));
}

#[test]
fn plain_output_and_argument_forms() {
    let work = tempdir();
    let link = work.path().join("result");
    std::os::unix::fs::symlink(&fixture().root, &link).unwrap();
    let inside = edge_cases().join("bin/hello");
    let out = ok_str(flywheel().arg("path-info").arg(&link).arg(&inside));
    let theirs = ok_str(nix().arg("path-info").arg(&fixture().root).arg(edge_cases()));
    assert_eq!(out, theirs);

    let recursive = ok_str(flywheel().args(["path-info", "-r"]).arg(&fixture().root));
    let nix_recursive = ok_str(nix().args(["path-info", "-r"]).arg(&fixture().root));
    assert_eq!(recursive, nix_recursive);
}

#[test]
fn invalid_paths_are_errors() {
    let out = flywheel().args(["path-info", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-not-there"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("not valid"));
    let out = flywheel()
        .args(["path-info", "--recursive", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-not-there"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("not a valid path"));
    let out = flywheel()
        .args(["path-info", "--store", "/nonexistent-root", "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("Nix database"));
}
