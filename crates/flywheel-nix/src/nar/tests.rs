use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use proptest::prelude::*;

use super::*;

/// A filesystem tree as the NAR sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tree {
    File { executable: bool, data: Vec<u8> },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Tree>),
}

fn materialize(tree: &Tree, path: &Path) {
    match tree {
        Tree::File { executable, data } => {
            fs::write(path, data).unwrap();
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        }
        Tree::Link(target) => symlink(OsStr::from_bytes(target), path).unwrap(),
        Tree::Dir(entries) => {
            fs::create_dir(path).unwrap();
            for (name, child) in entries {
                materialize(child, &path.join(OsStr::from_bytes(name)));
            }
        }
    }
}

fn read_back(path: &Path) -> Tree {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.file_type().is_symlink() {
        Tree::Link(fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec())
    } else if meta.is_dir() {
        let mut entries = BTreeMap::new();
        for e in fs::read_dir(path).unwrap() {
            let e = e.unwrap();
            entries.insert(e.file_name().as_bytes().to_vec(), read_back(&e.path()));
        }
        Tree::Dir(entries)
    } else {
        Tree::File { executable: meta.permissions().mode() & 0o100 != 0, data: fs::read(path).unwrap() }
    }
}

/// The NAR of a tree, written the obvious recursive way: an oracle for the streaming writer.
fn oracle(tree: &Tree) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(b);
        out.resize(out.len() + (8 - b.len() % 8) % 8, 0);
    }
    fn node(out: &mut Vec<u8>, t: &Tree) {
        s(out, b"(");
        s(out, b"type");
        match t {
            Tree::File { executable, data } => {
                s(out, b"regular");
                if *executable {
                    s(out, b"executable");
                    s(out, b"");
                }
                s(out, b"contents");
                s(out, data);
            }
            Tree::Link(target) => {
                s(out, b"symlink");
                s(out, b"target");
                s(out, target);
            }
            Tree::Dir(entries) => {
                s(out, b"directory");
                for (name, child) in entries {
                    s(out, b"entry");
                    s(out, b"(");
                    s(out, b"name");
                    s(out, name);
                    s(out, b"node");
                    node(out, child);
                    s(out, b")");
                }
            }
        }
        s(out, b")");
    }
    let mut out = Vec::new();
    s(&mut out, b"nix-archive-1");
    node(&mut out, tree);
    out
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0), 1..10)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..70))
            .prop_map(|(executable, data)| Tree::File { executable, data }),
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..40).prop_map(Tree::Link),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| prop::collection::btree_map(name(), inner, 0..6).prop_map(Tree::Dir))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn write_read_restore_round_trip(t in tree()) {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        materialize(&t, &src);

        let bytes = write_nar(&src, Vec::new()).unwrap();
        prop_assert_eq!(&bytes, &oracle(&t));
        let digest = hash_path(&src).unwrap();
        prop_assert_eq!(digest.size, bytes.len() as u64);
        prop_assert_eq!(validate(&bytes[..]).unwrap(), bytes.len() as u64);

        let dst = work.path().join("dst");
        let restored = restore(&bytes[..], &dst).unwrap();
        prop_assert_eq!(restored.nar_size, bytes.len() as u64);
        prop_assert_eq!(read_back(&dst), t);
        prop_assert_eq!(write_nar(&dst, Vec::new()).unwrap(), bytes);
    }

    #[test]
    fn canonical_restore_has_store_metadata(t in tree()) {
        use std::os::unix::fs::MetadataExt;
        let bytes = oracle(&t);
        let work = tempfile::tempdir().unwrap();
        let dst = work.path().join("dst");
        restore_canonical(&bytes[..], &dst).unwrap();
        prop_assert_eq!(write_nar(&dst, Vec::new()).unwrap(), bytes);
        let mut stack = vec![dst.clone()];
        while let Some(p) = stack.pop() {
            let m = fs::symlink_metadata(&p).unwrap();
            prop_assert_eq!(m.mtime(), 1, "{}", p.display());
            if m.is_dir() {
                prop_assert_eq!(m.mode() & 0o7777, 0o555);
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if m.is_file() {
                let mode = m.mode() & 0o7777;
                prop_assert!(mode == 0o444 || mode == 0o555, "{:o}", mode);
            }
        }
        remove_tree(&dst).unwrap();
        prop_assert!(!dst.exists());
    }

    #[test]
    fn every_truncation_is_refused(t in tree(), cut in any::<prop::sample::Index>()) {
        let bytes = oracle(&t);
        let at = cut.index(bytes.len());
        let err = validate(&bytes[..at]).unwrap_err();
        prop_assert!(matches!(err, NarError::Malformed { what: Malformed::Truncated, .. }), "{}", err);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = validate(&bytes[..]);
    }
}

/// Builds NAR bytes token by token, including ones the writer would never produce.
struct Raw(Vec<u8>);

impl Raw {
    fn new() -> Self {
        Raw(Vec::new()).s(b"nix-archive-1")
    }
    fn s(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len() + (8 - b.len() % 8) % 8, 0);
        self
    }
    fn all(self, tokens: &[&[u8]]) -> Self {
        tokens.iter().fold(self, |r, t| r.s(t))
    }
    fn file(self, name: &[u8], data: &[u8]) -> Self {
        self.all(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", data, b")", b")"])
    }
    fn link(self, name: &[u8], target: &[u8]) -> Self {
        self.all(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"symlink", b"target", target, b")", b")"])
    }
    fn dir() -> Self {
        Raw::new().all(&[b"(", b"type", b"directory"])
    }
    fn end(self) -> Vec<u8> {
        self.s(b")").0
    }
}

fn malformed(bytes: &[u8]) -> Malformed {
    match validate(bytes) {
        Err(NarError::Malformed { what, .. }) => what,
        other => panic!("expected a malformed NAR, got {other:?}"),
    }
}

#[test]
fn hostile_names_are_refused() {
    for bad in [&b""[..], b".", b"..", b"a/b", b"../../etc", b"x\0y"] {
        let nar = Raw::dir().file(bad, b"pwned").end();
        assert!(matches!(malformed(&nar), Malformed::BadName { .. }), "{bad:?}");
    }
}

#[test]
fn unsorted_and_duplicate_entries_are_refused() {
    let nar = Raw::dir().file(b"b", b"1").file(b"a", b"2").end();
    assert!(matches!(malformed(&nar), Malformed::NotSorted { .. }));
    let nar = Raw::dir().link(b"a", b"/tmp").file(b"a", b"2").end();
    assert!(matches!(malformed(&nar), Malformed::NotSorted { .. }));
}

#[test]
fn trailing_bytes_padding_and_tokens_are_checked() {
    let mut nar = Raw::dir().file(b"a", b"x").end();
    nar.push(0);
    assert_eq!(malformed(&nar), Malformed::TrailingData);

    let mut nar = Raw::new().all(&[b"(", b"type", b"regular", b"contents", b"abc", b")"]).0;
    // The padding after "abc" sits 8 bytes past the length field.
    let pad = nar.len() - 16 - 5;
    nar[pad] = 1;
    assert_eq!(malformed(&nar), Malformed::BadPadding);

    let nar = Raw::new().all(&[b"(", b"type", b"fifo", b")"]).0;
    assert!(matches!(malformed(&nar), Malformed::UnexpectedToken { .. }));

    let nar = Raw(Vec::new()).s(b"nix-archive-2").all(&[b"(", b"type", b"directory", b")"]).0;
    assert!(matches!(malformed(&nar), Malformed::UnexpectedToken { .. }));
}

#[test]
fn huge_lengths_do_not_allocate() {
    let mut nar = Raw::dir().all(&[b"entry", b"(", b"name"]).0;
    nar.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(malformed(&nar), Malformed::TooLong { .. }));
}

#[test]
fn deep_nesting_is_bounded() {
    let mut r = Raw::dir();
    for _ in 0..MAX_DEPTH + 1 {
        r = r.all(&[b"entry", b"(", b"name", b"d", b"node", b"(", b"type", b"directory"]);
    }
    assert_eq!(malformed(&r.0), Malformed::TooDeep);
}

#[test]
fn failed_restore_leaves_nothing_behind() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let target = work.path().join("target");
    // A symlink out of the tree, then an entry that would write through it.
    let nar = Raw::dir()
        .link(b"a", outside.as_os_str().as_bytes())
        .all(&[b"entry", b"(", b"name", b"a", b"node", b"(", b"type", b"directory"])
        .file(b"owned", b"x")
        .all(&[b")", b")"])
        .end();
    let err = restore(&nar[..], &target).unwrap_err();
    assert!(err.is_malformed(), "{err}");
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    let left: Vec<_> = fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![OsStr::new("outside").to_owned()]);
}

#[test]
fn restore_refuses_an_existing_target() {
    let work = tempfile::tempdir().unwrap();
    let nar = Raw::dir().file(b"a", b"x").end();
    let err = restore(&nar[..], work.path()).unwrap_err();
    assert!(matches!(err, NarError::TargetExists(_)), "{err}");
}

#[test]
fn restores_a_single_file_and_a_single_symlink() {
    let work = tempfile::tempdir().unwrap();
    let nar = Raw::new().all(&[b"(", b"type", b"regular", b"executable", b"", b"contents", b"#!/bin/sh\n", b")"]).0;
    restore(&nar[..], &work.path().join("f")).unwrap();
    let meta = fs::metadata(work.path().join("f")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o111, 0o111);
    assert_eq!(fs::read(work.path().join("f")).unwrap(), b"#!/bin/sh\n");

    let nar = Raw::new().all(&[b"(", b"type", b"symlink", b"target", b"/etc/passwd", b")"]).0;
    restore(&nar[..], &work.path().join("l")).unwrap();
    assert_eq!(fs::read_link(work.path().join("l")).unwrap(), Path::new("/etc/passwd"));
}

#[test]
fn special_files_cannot_be_written() {
    let work = tempfile::tempdir().unwrap();
    let fifo = work.path().join("fifo");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o644), 0)
        .unwrap();
    let err = write_nar(work.path(), Vec::new()).unwrap_err();
    assert!(matches!(err, NarError::UnsupportedFileType { .. }), "{err}");
}
