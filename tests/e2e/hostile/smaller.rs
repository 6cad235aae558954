//! Class 8, the smaller findings: references are whole store paths (a reference to `H-foo`
//! is not satisfied by `H-bar`), and route names are checked before anything else.

use crate::harness::*;
use crate::support::tempdir;

#[test]
fn a_reference_is_the_whole_store_path_not_its_hash_part() {
    for backend in BOTH {
        let work = tempdir();
        let s = Served::start(work.path(), backend, "", "[caches.main]\n");
        let addr = s.addr();
        let write = s.token("main", "write");
        let bar = store_path("bar");
        let foo = format!("/nix/store/{}-foo", hash_part(&bar));
        let (nar, _) = nar_of(b"bar");
        assert_eq!(push_raw(&addr, "main", &write, &bar, &nar, &[]).1.status, 200);
        let (app, _) = nar_of(b"app");
        let (_, r) = push_raw(&addr, "main", &write, &store_path("app"), &app, &[&foo]);
        assert_eq!(r.status, 400, "{backend:?}: {}", r.text());
        assert!(r.text().contains(&foo), "{}", r.text());
        let body = serde_json::to_vec(&[&foo, &bar]).expect("json");
        let r = request(&addr, "POST", "/main/api/v1/missing", &[("Authorization", &bearer(&write))], &body);
        let missing: Vec<String> = serde_json::from_slice(&r.body).expect("json");
        assert_eq!(missing, [foo]);
    }
}

#[test]
fn malformed_names_are_400_before_the_index_is_asked() {
    let work = tempdir();
    let s = Served::start(work.path(), Backend::Sqlite, "", "[caches.main]\n");
    let addr = s.addr();
    for path in [
        "/main/nar/..%2Findex.sqlite",
        "/main/log/../../index.sqlite",
        "/Main/nix-cache-info",
        &format!("/main/{}.narinfo", "e".repeat(32)),
        &format!("/main/nar/{}", "a".repeat(600)),
    ] {
        let r = get(&addr, path);
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert!(r.text().trim_end().lines().count() == 1 && r.text().len() < 200, "{path}: {}", r.text());
    }
}
