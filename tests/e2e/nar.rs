//! NAR dump, hash and restore against real Nix (Debian's nix-bin) over the fixture closure.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use support::*;

#[test]
fn every_path_dumps_byte_identically_to_nix_store_dump() {
    let closure = fixture();
    assert!(closure.paths.len() > 50, "fixture too small: {} paths", closure.paths.len());
    let mut total = 0;
    for p in &closure.paths {
        let n = same_stdout(flywheel().args(["nar", "dump"]).arg(p), nix_store().arg("--dump").arg(p))
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(n > 0);
        total += n;
    }
    assert!(total > 100 << 20, "only {total} bytes of NAR compared");
}

#[test]
fn every_path_hashes_as_nix_store_query_hash() {
    let paths = &fixture().paths;
    let ours = ok_str(flywheel().args(["nar", "hash"]).args(paths));
    let nix = ok_str(nix_store().args(["--query", "--hash"]).args(paths));
    assert_eq!(ours.lines().count(), paths.len());
    assert_eq!(ours, nix);

    // NarSize too, single-threaded this time.
    let json: serde_json::Value =
        serde_json::from_slice(&ok(flywheel().args(["nar", "hash", "--json", "--jobs", "1"]).args(paths))).unwrap();
    let sizes = ok_str(nix_store().args(["--query", "--size"]).args(paths));
    for (row, size) in json.as_array().unwrap().iter().zip(sizes.lines()) {
        assert_eq!(row["narSize"].as_u64().unwrap().to_string(), size, "{row}");
    }
}

#[test]
fn hash_works_on_any_directory() {
    let dir = tempdir();
    let tree = dir.path().join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(tree.join("sub/deeper/file"), b"content\n").unwrap();
    fs::write(tree.join("top"), vec![7u8; 100_003]).unwrap();
    symlink("sub/deeper/file", tree.join("link")).unwrap();
    let ours = ok_str(flywheel().args(["nar", "hash"]).arg(&tree));
    let nix = ok_str(Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(&tree));
    assert_eq!(ours.trim(), format!("sha256:{}", nix.trim()));
}

#[test]
fn restore_round_trips_through_nix() {
    let work = tempdir();
    // The edge cases and the largest paths: a Nix-made NAR restored by flywheel dumps the same.
    let mut paths: Vec<&Path> = vec![edge_cases()];
    let mut big: Vec<&Path> = fixture().paths.iter().map(|p| p.as_path()).collect();
    big.sort_by_key(|p| std::cmp::Reverse(fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    paths.extend(big.into_iter().take(3));
    for (i, p) in paths.into_iter().enumerate() {
        let nar = ok(nix_store().arg("--dump").arg(p));
        let ours = work.path().join(format!("ours-{i}"));
        let out = run_with_input(flywheel().args(["nar", "restore"]).arg(&ours), &nar);
        assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        assert_eq!(ok(nix_store().arg("--dump").arg(&ours)), nar, "{}", p.display());

        // And the other way: flywheel's dump restored by Nix.
        let theirs = work.path().join(format!("theirs-{i}"));
        let ours_nar = ok(flywheel().args(["nar", "dump"]).arg(p));
        let out = run_with_input(nix_store().arg("--restore").arg(&theirs), &ours_nar);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(ok(flywheel().args(["nar", "dump"]).arg(&theirs)), nar);
    }
}

/// Feeds `nar` to `flywheel nar restore` and checks it was refused cleanly: exit 1, one error
/// line naming the problem, no target, nothing left beside it, nothing changed outside.
#[track_caller]
fn refused(nar: &[u8], expect: &str) {
    let work = tempdir();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"untouched").unwrap();
    let target = work.path().join("target");
    let before = listing(work.path());
    let out = run_with_input(flywheel().args(["nar", "restore"]).arg(&target), nar);
    assert_eq!(out.status.code(), Some(1), "hostile NAR accepted: {}", String::from_utf8_lossy(&out.stderr));
    let line = one_line_error(&out);
    assert!(line.contains(expect), "error {line:?} does not mention {expect:?}");
    assert_eq!(listing(work.path()), before, "the refused restore changed the directory");
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"untouched");
}

#[test]
fn hostile_nars_are_refused_and_leave_nothing() {
    let outside_abs = b"/tmp/flywheel-e2e-outside-target";
    refused(&RawNar::dir().file(b"../escape", b"x").close().0, "entry name contains `/`");
    refused(&RawNar::dir().file(b"..", b"x").close().0, "entry name is `.` or `..`");
    refused(&RawNar::dir().file(b".", b"x").close().0, "entry name is `.` or `..`");
    refused(&RawNar::dir().file(b"", b"x").close().0, "empty entry name");
    refused(&RawNar::dir().file(b"etc/passwd", b"x").close().0, "contains `/`");
    refused(&RawNar::dir().file(b"a\0b", b"x").close().0, "contains NUL");
    refused(&RawNar::dir().file(b"b", b"1").file(b"a", b"2").close().0, "must be unique and sorted");
    refused(&RawNar::dir().file(b"a", b"1").file(b"a", b"2").close().0, "must be unique and sorted");
    // A symlink out of the tree, then a directory of the same name with a file "through" it.
    refused(
        &RawNar::dir().symlink(b"a", outside_abs).subdir(b"a").file(b"owned", b"x").close_entry_dir().close().0,
        "must be unique and sorted",
    );
    assert!(!Path::new(std::str::from_utf8(outside_abs).unwrap()).exists());

    // Truncations of a real NAR, at several depths, and trailing bytes after one.
    let real = ok(nix_store().arg("--dump").arg(edge_cases()));
    for cut in [0, 7, 8, 20, real.len() / 3, real.len() / 2, real.len() - 8, real.len() - 1] {
        refused(&real[..cut], "truncated");
    }
    let mut trailing = real.clone();
    trailing.extend_from_slice(b"\0\0\0\0\0\0\0\0");
    refused(&trailing, "bytes follow the end of the NAR");
    refused(b"not a nar at all, just some text that goes on", "malformed NAR");
}

#[test]
fn restore_refuses_an_existing_target() {
    let work = tempdir();
    let nar = ok(flywheel().args(["nar", "dump"]).arg(edge_cases()));
    let out = run_with_input(flywheel().args(["nar", "restore"]).arg(work.path()), &nar);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_line_error(&out).contains("already exists"));
}
