//! The tar writer checked by an independent reader (the `tar` crate), on generated trees.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;

use proptest::prelude::*;

use super::entries::{gather, sort_entries};
use super::*;

/// What a reader sees of one entry.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
}

fn read_back(bytes: &[u8]) -> Vec<(Vec<u8>, Seen)> {
    let mut archive = ::tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path_bytes().into_owned();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        assert_eq!(h.username_bytes(), Some(&b""[..]));
        assert_eq!(h.groupname_bytes(), Some(&b""[..]));
        out.push((
            path,
            Seen {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: h.mtime().unwrap(),
                data,
                link,
            },
        ));
    }
    out
}

#[derive(Debug, Clone)]
enum Node {
    File { data: Vec<u8>, exec: bool },
    Link(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(|s| s.into_bytes()),
        // long names force PAX path records; odd bytes must pass through untouched
        proptest::collection::vec(prop_oneof![Just(b'x'), Just(b'-'), Just(0xffu8), Just(b' ')], 90..200),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (proptest::collection::vec(any::<u8>(), 0..2000), any::<bool>())
            .prop_map(|(data, exec)| Node::File { data, exec }),
        proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'/'), Just(b'.')], 1..150).prop_map(Node::Link),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| proptest::collection::btree_map(name(), inner, 0..6).prop_map(Node::Dir))
}

fn create(path: &std::path::Path, node: &Node) {
    match node {
        Node::File { data, exec } => {
            std::fs::write(path, data).unwrap();
            let mode = if *exec { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        Node::Link(target) => std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), path).unwrap(),
        Node::Dir(children) => {
            std::fs::create_dir(path).unwrap();
            for (n, c) in children {
                create(&path.join(std::ffi::OsStr::from_bytes(n)), c);
            }
        }
    }
}

fn expect(prefix: &[u8], node: &Node, out: &mut BTreeMap<Vec<u8>, Seen>) {
    let seen = |kind, mode, data: Vec<u8>, link| Seen { kind, mode, uid: 0, gid: 0, mtime: 7, data, link };
    match node {
        Node::File { data, exec } => {
            out.insert(prefix.to_vec(), seen(b'0', if *exec { 0o555 } else { 0o444 }, data.clone(), None));
        }
        Node::Link(t) => {
            out.insert(prefix.to_vec(), seen(b'2', 0o777, vec![], Some(t.clone())));
        }
        Node::Dir(children) => {
            let mut p = prefix.to_vec();
            p.push(b'/');
            out.insert(p, seen(b'5', 0o555, vec![], None));
            for (n, c) in children {
                expect(&entries::join(prefix, n), c, out);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_tree_reads_back_exactly_in_full_path_order(children in proptest::collection::btree_map(name(), node(), 0..6)) {
        let root = Node::Dir(children);
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        create(&src, &root);

        let mut list = Vec::new();
        gather(&src, b"nix/store/abc-x", Modes::Nar, &mut list).unwrap();
        sort_entries(&mut list, "t").unwrap();
        let mut bytes = Vec::new();
        write_entries(&list, 7, &mut bytes).unwrap();
        prop_assert_eq!(bytes.len() % 512, 0);

        let got = read_back(&bytes);
        // Sorted by full path (ignoring a directory's trailing slash).
        let keys: Vec<Vec<u8>> = got.iter().map(|(p, _)| p.strip_suffix(b"/").unwrap_or(p).to_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        prop_assert_eq!(&keys, &sorted);

        let mut want = BTreeMap::new();
        expect(b"nix/store/abc-x", &root, &mut want);
        let got: BTreeMap<Vec<u8>, Seen> = got.into_iter().collect();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn hard_links_become_regular_files_and_directory_layers_keep_disk_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("tmp")).unwrap();
    std::fs::set_permissions(src.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(src.join("a"), b"same").unwrap();
    std::fs::hard_link(src.join("a"), src.join("b")).unwrap();
    let mut list = entries::parents(b"opt", DIR_MODE);
    gather(&src, b"opt", Modes::OnDisk, &mut list).unwrap();
    sort_entries(&mut list, "t").unwrap();
    let mut bytes = Vec::new();
    write_entries(&list, 1, &mut bytes).unwrap();
    let got = read_back(&bytes);
    let names: Vec<&[u8]> = got.iter().map(|(p, _)| p.as_slice()).collect();
    assert_eq!(names, vec![&b"opt/"[..], b"opt/a", b"opt/b", b"opt/tmp/"]);
    assert_eq!((got[1].1.kind, got[2].1.kind), (b'0', b'0'));
    assert_eq!(got[2].1.data, b"same");
    assert_eq!(got[3].1.mode, 0o1777);
}

#[test]
fn huge_sizes_and_ids_use_pax_records() {
    let mut out = Vec::new();
    let h = header::Header {
        path: b"big",
        kind: header::Kind::File { size: 9 << 30 },
        mode: 0o644,
        uid: 3_000_000,
        gid: 1,
        mtime: 1,
    };
    header::write_header(&mut out, &h).unwrap();
    let records = String::from_utf8_lossy(&out[512..1024]);
    assert!(records.contains(" size=9663676416\n") && records.contains(" uid=3000000\n"), "{records}");
}

#[test]
fn a_file_that_changes_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, b"1234").unwrap();
    let list =
        vec![Entry { path: b"f".to_vec(), kind: EntryKind::File { source: f, size: 3 }, mode: 0o444, uid: 0, gid: 0 }];
    assert!(matches!(write_entries(&list, 1, &mut Vec::new()), Err(LayerError::Changed { .. })));
}
