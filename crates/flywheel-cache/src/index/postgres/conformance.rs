//! One suite, both backends: each check runs on a [`SqliteIndex`] and on a [`PostgresIndex`],
//! asserts what it expects of each, and writes a transcript of every answer; the two
//! transcripts must be the same (ids, which differ by design, are left out). PostgreSQL's test
//! databases sort text with ICU (`en-US`), so an ordering that is not bytewise shows.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Mutex;

use super::tests::{nar, path, store_path, test_db};
use super::PostgresIndex;
use crate::index::history::StoredRun;
use crate::index::retention::DeleteGuard;
use crate::index::sqlite::SqliteIndex;
use crate::index::test_cache as cache;
use crate::index::{
    Access, Added, Index, IndexError, NarRecord, PathRecord, Scope, StoredFile, TokenRecord, Visibility,
};

#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    /// Records `what` = `v` and gives `v` back.
    fn note<T: Debug>(&mut self, what: &str, v: T) -> T {
        self.0.push(format!("{what} = {v:?}"));
        v
    }

    /// Records a result; an `IndexError::Db` by its variant only (the messages are each
    /// database's own).
    fn outcome<T: Debug>(&mut self, what: &str, r: Result<T, IndexError>) -> Result<T, IndexError> {
        let shown = match &r {
            Ok(v) => format!("Ok({v:?})"),
            Err(IndexError::Db(_)) => "Err(Db)".into(),
            Err(e) => format!("Err({e})"),
        };
        self.0.push(format!("{what} -> {shown}"));
        r
    }
}

fn on_both(check: impl Fn(&dyn Index, &mut Transcript)) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteIndex::open(&dir.path().join("index.db")).unwrap();
    let mut a = Transcript::default();
    check(&sqlite, &mut a);
    let db = test_db();
    let pg = PostgresIndex::connect(&db.url, 3).unwrap();
    let mut b = Transcript::default();
    check(&pg, &mut b);
    for (i, (x, y)) in a.0.iter().zip(&b.0).enumerate() {
        assert_eq!(x, y, "answer {i}: SQLite (left) and PostgreSQL (right) differ");
    }
    assert_eq!(a.0.len(), b.0.len());
    assert!(a.0.len() >= 5, "a check with answers");
}

fn hp(i: usize) -> String {
    format!("{i:032}")
}

fn push(idx: &dyn Index, cache: &str, p: &PathRecord, now: i64) -> Added {
    let url = format!("nar/{cache}/{}.nar.zst", p.store_path);
    idx.record_upload(cache, &url, &p.nar, now).unwrap();
    idx.add_path(cache, p, Some(&url), now).unwrap()
}

fn token(hash: u8, cache: &str, created_at: i64) -> TokenRecord {
    TokenRecord {
        hash: [hash; 32],
        cache: cache.into(),
        scope: Scope::Write,
        created_at,
        expires_at: Some(99),
        description: Some(format!("t{hash}")),
    }
}

#[test]
fn caches_and_tokens() {
    on_both(|idx, t| {
        for n in ["main", "Zeta", "alpha", "b-c"] {
            idx.create_cache(&cache(n)).unwrap();
        }
        assert!(
            matches!(t.outcome("dup", idx.create_cache(&cache("main"))), Err(IndexError::CacheExists(n)) if n == "main")
        );
        let names: Vec<String> = idx.caches().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(t.note("caches", names), ["Zeta", "alpha", "b-c", "main"], "bytewise, as SQLite");
        idx.configure_cache("alpha", Visibility::Private, 7).unwrap();
        assert!(matches!(
            t.outcome("configure nope", idx.configure_cache("nope", Visibility::Public, 1)),
            Err(IndexError::NoSuchCache(_))
        ));
        let alpha = t.note("alpha", idx.cache("alpha").unwrap().unwrap());
        assert_eq!((alpha.visibility, alpha.priority, alpha.created_at), (Visibility::Private, 7, 1));
        assert_eq!(alpha.secret_key, "alpha-1:secret");
        assert!(t.note("ALPHA", idx.cache("ALPHA").unwrap()).is_none());

        idx.add_token(&token(9, "main", 5)).unwrap();
        idx.add_token(&token(3, "main", 5)).unwrap();
        idx.add_token(&token(1, "main", 7)).unwrap();
        idx.add_token(&TokenRecord { expires_at: None, description: None, scope: Scope::Admin, ..token(2, "Zeta", 9) })
            .unwrap();
        assert!(matches!(
            t.outcome("token nope", idx.add_token(&token(4, "nope", 1))),
            Err(IndexError::NoSuchCache(_))
        ));
        assert!(matches!(t.outcome("token dup", idx.add_token(&token(9, "alpha", 1))), Err(IndexError::Db(_))));
        let tokens = t.note("tokens", idx.tokens().unwrap());
        let order: Vec<u8> = tokens.iter().map(|t| t.hash[0]).collect();
        assert_eq!(order, [2, 3, 9, 1], "by cache, then creation, then hash");
        assert_eq!(t.note("token 9", idx.token(&[9; 32]).unwrap()), Some(token(9, "main", 5)));
        assert_eq!(idx.token(&[2; 32]).unwrap().unwrap().scope, Scope::Admin);
        assert!(t.note("token 8", idx.token(&[8; 32]).unwrap()).is_none());
    });
}

#[test]
fn uploads_paths_and_their_answers() {
    on_both(|idx, t| {
        for c in ["main", "other", "third"] {
            idx.create_cache(&cache(c)).unwrap();
        }
        idx.record_upload("main", "nar/1", &nar(2), 10).unwrap();
        idx.record_upload("main", "nar/1", &nar(1), 11).unwrap();
        assert_eq!(t.note("upload", idx.upload("main", "nar/1").unwrap()), Some(nar(1)), "replaced");
        assert!(idx.upload("other", "nar/1").unwrap().is_none());
        assert!(matches!(
            t.outcome("upload nope", idx.record_upload("nope", "x", &nar(1), 1)),
            Err(IndexError::NoSuchCache(_))
        ));

        let mut p1 = path(1, &[]);
        p1.sigs = vec!["k-1:abc".into(), "k-2:def".into()];
        p1.deriver = Some("/nix/store/00000000000000000000000000000000-p1.drv".into());
        p1.ca = Some("fixed:r:sha256:xyz".into());
        assert_eq!(t.outcome("add 1", idx.add_path("main", &p1, Some("nar/1"), 20)).unwrap(), Added::New);
        assert!(t.note("consumed", idx.upload("main", "nar/1").unwrap()).is_none());
        // Its own NAR (a path of the cache uses it): no upload needed.
        assert_eq!(t.outcome("again", idx.add_path("main", &p1, None, 21)).unwrap(), Added::Present);
        // Another cache naming that NarHash, or main's upload URL, gets nothing: it never
        // uploaded the NAR, and whether main holds it is none of its business.
        assert!(matches!(t.outcome("plant", idx.add_path("other", &p1, None, 22)), Err(IndexError::NarGone(_))));
        assert!(matches!(
            t.outcome("plant url", idx.add_path("other", &p1, Some("nar/1"), 22)),
            Err(IndexError::NarGone(_))
        ));
        // An upload to the cache under that URL, but of another NAR, does not count either.
        idx.record_upload("other", "ten", &nar(10), 22).unwrap();
        assert!(matches!(
            t.outcome("wrong nar", idx.add_path("other", &p1, Some("ten"), 22)),
            Err(IndexError::NarGone(_))
        ));
        assert!(t.note("nothing planted", idx.path("other", &hp(1)).unwrap()).is_none());
        // The same store path with other contents, uploaded to another cache: each cache
        // serves its own (non-reproducible builds do this).
        idx.record_upload("third", "nine", &nar(9), 23).unwrap();
        let p1_third = PathRecord { nar: nar(9), sigs: vec!["t-1:xyz".into()], ..path(1, &[]) };
        assert_eq!(t.outcome("own 9", idx.add_path("third", &p1_third, Some("nine"), 23)).unwrap(), Added::New);
        assert_eq!(t.note("third's 1", idx.path("third", &hp(1)).unwrap().unwrap()), p1_third);
        assert_eq!(idx.path("main", &hp(1)).unwrap().unwrap(), p1, "main's is untouched");
        // A second upload of the path to the same cache: the first stays.
        idx.record_upload("third", "eleven", &nar(11), 24).unwrap();
        let p1_eleven = PathRecord { nar: nar(11), ..path(1, &[]) };
        assert_eq!(t.outcome("own 11", idx.add_path("third", &p1_eleven, Some("eleven"), 24)).unwrap(), Added::Present);
        assert_eq!(idx.path("third", &hp(1)).unwrap().unwrap().nar, nar(9));

        let p2 = path(2, &[1, 2, 3]);
        assert!(matches!(t.outcome("gone", idx.add_path("main", &p2, None, 30)), Err(IndexError::NarGone(_))));
        assert!(matches!(
            t.outcome("gone url", idx.add_path("main", &p2, Some("nope"), 30)),
            Err(IndexError::NarGone(_))
        ));
        idx.record_upload("main", "nar/2", &nar(2), 30).unwrap();
        match t.outcome("missing refs", idx.add_path("main", &path(2, &[4, 1, 2, 3]), Some("nar/2"), 30)) {
            Err(IndexError::MissingReferences { path, missing }) => {
                assert_eq!(path, store_path(2));
                assert_eq!(missing, [store_path(3), store_path(4)]);
            }
            other => panic!("{other:?}"),
        }
        assert!(idx.upload("main", "nar/2").unwrap().is_some(), "a refused path keeps its upload");
        // Upstream's paths count as present.
        idx.record_upstream("main", &store_path(3), "cache.nixos.org-1", None, 31).unwrap();
        assert_eq!(t.outcome("add 2", idx.add_path("main", &p2, Some("nar/2"), 32)).unwrap(), Added::New);
        let missing = idx.missing("main", &[store_path(1), store_path(4), store_path(3), store_path(5)]).unwrap();
        assert_eq!(t.note("missing", missing), [store_path(4), store_path(5)]);
        assert!(matches!(t.outcome("missing nope", idx.missing("nope", &[])), Err(IndexError::NoSuchCache(_))));
        assert!(matches!(t.outcome("missing bad", idx.missing("main", &["bad".into()])), Err(IndexError::Db(_))));
        // Errors come in SQLite's order: the NAR before a malformed reference or path.
        let bad_ref = PathRecord { references: vec!["bad".into()], ..path(6, &[]) };
        assert!(matches!(
            t.outcome("bad ref, no NAR", idx.add_path("main", &bad_ref, None, 1)),
            Err(IndexError::NarGone(_))
        ));
        idx.record_upload("main", "six", &nar(6), 1).unwrap();
        assert!(matches!(t.outcome("bad ref", idx.add_path("main", &bad_ref, Some("six"), 1)), Err(IndexError::Db(_))));
        let bad_path = PathRecord { store_path: "/nix/store/short-p6".into(), ..path(6, &[]) };
        assert!(matches!(
            t.outcome("bad path", idx.add_path("main", &bad_path, Some("six"), 1)),
            Err(IndexError::Db(_))
        ));
        assert!(idx.upload("main", "six").unwrap().is_some());

        let got = t.note("path 1", idx.path("main", &hp(1)).unwrap().unwrap());
        assert_eq!(got, p1);
        let got = t.note("path 2", idx.path("main", &hp(2)).unwrap().unwrap());
        assert_eq!(got.references, [store_path(1), store_path(2), store_path(3)]);
        assert!(t.note("path 2 other", idx.path("other", &hp(2)).unwrap()).is_none());
        assert!(idx.path("nope", &hp(1)).unwrap().is_none());
        let (n, stored_at) = t.note("nar in cache", idx.nar_in_cache("main", &nar(1).nar_hash).unwrap().unwrap());
        assert_eq!((n, stored_at), (nar(1), 20));
        assert!(t.note("nar 2 other", idx.nar_in_cache("other", &nar(2).nar_hash).unwrap()).is_none());
        assert!(t.note("nar 9 third", idx.nar_in_cache("third", &nar(9).nar_hash).unwrap()).is_some());
        assert!(t.note("nar 9 main", idx.nar_in_cache("main", &nar(9).nar_hash).unwrap()).is_none());
        assert!(t.note("nar 1 third", idx.nar_in_cache("third", &nar(1).nar_hash).unwrap()).is_none());
        assert_eq!(t.note("nar 9", idx.nar(&nar(9).nar_hash).unwrap()), Some(nar(9)));
        assert!(idx.nar(&nar(7).nar_hash).unwrap().is_none());

        assert_eq!(t.note("counts", idx.counts().unwrap()), (3, 2));
        assert_eq!(
            t.note("stored", idx.stored_bytes().unwrap()),
            nar(1).file_size + nar(2).file_size + nar(9).file_size
        );
        let all: Vec<NarRecord> = t.note("all nars", idx.all_nars().unwrap());
        assert_eq!(all, [nar(1), nar(2), nar(9)]);
        idx.record_upload("other", "pending", &nar(8), 40).unwrap();
        idx.record_upload("third", "pending", &nar(8), 40).unwrap();
        let mut pending = idx.pending_uploads().unwrap();
        pending.sort();
        // The upload of a path the cache already held was consumed all the same.
        assert_eq!(t.note("pending", pending), [nar(6).nar_hash, nar(8).nar_hash, nar(10).nar_hash]);

        // A reference the cache has only under another name with the same hash part is
        // missing: references are whole store paths.
        idx.record_upstream("other", &format!("/nix/store/{}-elsewhere", hp(3)), "up-1", None, 41).unwrap();
        idx.record_upload("other", "nar/1", &nar(1), 42).unwrap();
        assert_eq!(idx.add_path("other", &p1, Some("nar/1"), 42).unwrap(), Added::New);
        idx.record_upload("other", "nar/2", &nar(2), 42).unwrap();
        match t.outcome("same hash, other name", idx.add_path("other", &p2, Some("nar/2"), 42)) {
            Err(IndexError::MissingReferences { missing, .. }) => assert_eq!(missing, [store_path(3)]),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            t.note("missing by name", idx.missing("other", &[format!("/nix/store/{}-p3", hp(3))]).unwrap()).len(),
            1
        );
        assert!(t.note("broken", idx.broken_references().unwrap()).is_empty());
    });
}

#[test]
fn upstream_paths_and_files() {
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        idx.record_upload("main", "nar/6", &nar(6), 1).unwrap();
        idx.record_upstream("main", &store_path(7), "k1", None, 2).unwrap();
        idx.record_upstream("main", &store_path(6), "k2", Some("nar/6"), 3).unwrap();
        assert!(t.note("consumed", idx.upload("main", "nar/6").unwrap()).is_none());
        idx.record_upstream("main", &store_path(7), "k3", None, 4).unwrap();
        let up = t.note("upstream", idx.upstream_paths("main").unwrap());
        assert_eq!(up, [(store_path(6), "k2".into()), (store_path(7), "k3".into())]);
        assert!(t.note("upstream nope", idx.upstream_paths("nope").unwrap()).is_empty());
        assert!(matches!(
            t.outcome("upstream nope", idx.record_upstream("nope", &store_path(1), "k", None, 1)),
            Err(IndexError::NoSuchCache(_))
        ));
        assert!(matches!(
            t.outcome("upstream bad", idx.record_upstream("main", "bad", "k", None, 1)),
            Err(IndexError::Db(_))
        ));
        assert!(t.note("missing", idx.missing("main", &[store_path(6), store_path(7)]).unwrap()).is_empty());

        let file = |body: &str, enc: Option<&str>| StoredFile {
            body: body.as_bytes().to_vec(),
            content_type: "text/plain".into(),
            content_encoding: enc.map(str::to_string),
        };
        for (name, body) in [("log/x.drv", "log"), ("a.ls", "a"), ("B.ls", "b"), ("_.ls", "_")] {
            idx.put_file("main", name, &file(body, None), 5).unwrap();
        }
        idx.put_file("main", "a.ls", &file("a2", Some("br")), 6).unwrap();
        assert_eq!(t.note("a.ls", idx.file("main", "a.ls").unwrap()), Some(file("a2", Some("br"))));
        assert!(idx.file("main", "A.ls").unwrap().is_none());
        assert!(idx.file("nope", "a.ls").unwrap().is_none());
        let names = t.note("names", idx.file_names("main").unwrap());
        assert_eq!(names, ["B.ls", "_.ls", "a.ls", "log/x.drv"], "bytewise");
        assert!(idx.file_names("nope").unwrap().is_empty());
        assert!(matches!(
            t.outcome("file nope", idx.put_file("nope", "x", &file("", None), 1)),
            Err(IndexError::NoSuchCache(_))
        ));
    });
}

#[test]
fn accesses_counters_and_usage() {
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        for i in 1..=3 {
            push(idx, "main", &path(i, &[]), 100);
        }
        idx.touch(&[]).unwrap();
        let at = |i: usize, at: i64| Access { cache: "main".into(), hash_part: hp(i), at };
        // Another cache's reads of the same hash part are not main's.
        let elsewhere = Access { cache: "other".into(), hash_part: hp(3), at: 990 };
        idx.touch(&[at(1, 50), at(1, 300), at(2, 200), at(1, 250), at(9, 900), elsewhere]).unwrap();
        let mut seen = Vec::new();
        idx.gc_snapshot(
            "main",
            &mut |m| seen.push((m.hash_part, m.last_access, m.added_at, m.file_size)),
            &mut |_, _| {},
        )
        .unwrap();
        seen.sort();
        let accesses: Vec<i64> = seen.iter().map(|s| s.1).collect();
        assert_eq!(t.note("accesses", accesses), [300, 200, 100], "the latest, never an older one");
        let usage = t.note("usage", idx.usage_by_access("main", 400, &[150, 250, 1000]).unwrap());
        let paths: Vec<u64> = usage.iter().map(|u| u.paths).collect();
        assert_eq!(paths, [1, 2, 3, 3]);
        assert_eq!(usage[3].bytes, nar(1).file_size + nar(2).file_size + nar(3).file_size);
        assert!(matches!(
            t.outcome("usage nope", idx.usage_by_access("nope", 1, &[])),
            Err(IndexError::NoSuchCache(_))
        ));

        idx.add_stats(&[
            ("main".into(), "hits".into(), 2),
            ("main".into(), "hits".into(), 3),
            ("main".into(), "Misses".into(), 1),
            ("nope".into(), "hits".into(), 5),
        ])
        .unwrap();
        idx.add_stats(&[]).unwrap();
        idx.gc_mode(true).unwrap();
        idx.gc_barrier(&["main".into(), "nope".into()]).unwrap();
        idx.gc_barrier(&["main".into()]).unwrap();
        idx.gc_mode(false).unwrap();
        let stats = t.note("stats", idx.stats("main").unwrap());
        assert_eq!(stats, [("Misses".into(), 1), ("gc_runs".into(), 2), ("hits".into(), 5)]);
        assert!(matches!(t.outcome("stats nope", idx.stats("nope")), Err(IndexError::NoSuchCache(_))));
        let stored = t.note("stored usage", idx.stored_usage().unwrap());
        assert_eq!((stored.paths, stored.bytes), (3, usage[3].bytes));
    });
}

#[test]
fn pins_and_their_revisions() {
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        idx.create_cache(&cache("other")).unwrap();
        for i in 1..=2 {
            push(idx, "main", &path(i, &[]), 100);
        }
        push(idx, "other", &path(3, &[]), 100);
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(matches!(
                t.outcome("bad name", idx.pin("main", bad, &store_path(1), None, None, 1)),
                Err(IndexError::BadPinName(_))
            ));
        }
        assert!(matches!(
            t.outcome("not in cache", idx.pin("main", "main", &store_path(3), None, None, 1)),
            Err(IndexError::NotInCache { .. })
        ));
        let wrong_name = format!("/nix/store/{}-other-name", hp(1));
        assert!(matches!(
            t.outcome("other name", idx.pin("main", "main", &wrong_name, None, None, 1)),
            Err(IndexError::NotInCache { .. })
        ));
        assert!(matches!(
            t.outcome("pin nope", idx.pin("nope", "main", &store_path(1), None, None, 1)),
            Err(IndexError::NoSuchCache(_))
        ));
        let r = t.outcome("pin 1", idx.pin("main", "main", &store_path(1), Some(3), None, 10)).unwrap();
        assert_eq!((r.revision, r.pinned_at), (1, 10));
        let r = t.outcome("pin 1 again", idx.pin("main", "main", &store_path(1), Some(3), None, 11)).unwrap();
        assert_eq!((r.revision, r.pinned_at), (1, 11), "the newest already: only its time");
        let r = t.outcome("pin 2", idx.pin("main", "main", &store_path(2), Some(5), Some(30), 12)).unwrap();
        assert_eq!(r.revision, 2);
        t.outcome("release pin", idx.pin("main", "Release", &store_path(1), None, Some(7), 5_000)).unwrap();
        let pins = t.note("pins", idx.pins("main").unwrap());
        let names: Vec<&str> = pins.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Release", "main"]);
        assert_eq!((pins[1].keep_revisions, pins[1].keep_days), (Some(5), Some(30)));
        let revs: Vec<(i64, i64)> = pins[1].revisions.iter().map(|r| (r.revision, r.pinned_at)).collect();
        assert_eq!(revs, [(2, 12), (1, 11)]);
        // Pinning counts as an access.
        let mut access = Vec::new();
        idx.gc_snapshot("main", &mut |m| access.push((m.hash_part, m.last_access)), &mut |_, _| {}).unwrap();
        access.sort();
        assert_eq!(t.note("access", access.iter().map(|a| a.1).collect::<Vec<_>>()), [5_000, 100]);

        idx.release_pin_revisions("main", &[("main".into(), 2)]).unwrap();
        idx.release_pin_revisions("main", &[]).unwrap();
        let r = t.outcome("pin 2 again", idx.pin("main", "main", &store_path(2), None, None, 13)).unwrap();
        assert_eq!(r.revision, 2, "numbered after the newest kept");
        idx.release_pin_revisions("main", &[("main".into(), 1), ("nope".into(), 4), ("Release".into(), 9)]).unwrap();
        let pins = t.note("pins after", idx.pins("main").unwrap());
        assert_eq!(pins[1].revisions.len(), 1);
        assert_eq!(pins[0].revisions.len(), 1);
        assert!(matches!(
            t.outcome("release nope", idx.release_pin_revisions("nope", &[])),
            Err(IndexError::NoSuchCache(_))
        ));
        assert!(matches!(t.outcome("pins nope", idx.pins("nope")), Err(IndexError::NoSuchCache(_))));
        assert!(t.note("pins other", idx.pins("other").unwrap()).is_empty());
    });
}

#[test]
fn collection_removes_what_it_may_and_records_it() {
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        idx.create_cache(&cache("other")).unwrap();
        // 3 -> 2 -> 1; 4 and 5 share a NAR; 6 pinned; 7 also in `other`; 8 in use; 9 new;
        // 10 read after the snapshot.
        push(idx, "main", &path(1, &[]), 100);
        push(idx, "main", &path(2, &[1]), 100);
        push(idx, "main", &path(3, &[2, 3]), 100);
        push(idx, "main", &path(4, &[]), 100);
        push(idx, "main", &PathRecord { nar: nar(4), ..path(5, &[]) }, 100);
        for i in [6, 7, 8, 10] {
            push(idx, "main", &path(i, &[]), 100);
        }
        push(idx, "main", &path(9, &[]), 1_000);
        push(idx, "other", &path(7, &[]), 100);
        idx.pin("main", "keep", &store_path(6), None, None, 100).unwrap();
        idx.touch(&[Access { cache: "main".into(), hash_part: hp(10), at: 600 }]).unwrap();
        let listing =
            StoredFile { body: b"{}".to_vec(), content_type: "application/json".into(), content_encoding: None };
        idx.put_file("main", &format!("{}.ls", hp(3)), &listing, 100).unwrap();
        idx.put_file("main", &format!("{}.ls", hp(6)), &listing, 100).unwrap();

        let mut members = Vec::new();
        let mut refs = Vec::new();
        idx.gc_snapshot("main", &mut |m| members.push(m), &mut |from, to| refs.push((from, to.to_string()))).unwrap();
        assert!(matches!(
            t.outcome("snapshot nope", idx.gc_snapshot("nope", &mut |_| {}, &mut |_, _| {})),
            Err(IndexError::NoSuchCache(_))
        ));
        let id_of = |i: usize| members.iter().find(|m| m.hash_part == hp(i).as_bytes()).unwrap().id;
        let name_of = |id: i64| {
            let m = members.iter().find(|m| m.id == id).unwrap();
            String::from_utf8(m.hash_part.to_vec()).unwrap()
        };
        let mut shown: Vec<(String, u64, i64, i64)> = members
            .iter()
            .map(|m| (String::from_utf8(m.hash_part.to_vec()).unwrap(), m.file_size, m.last_access, m.added_at))
            .collect();
        shown.sort();
        assert_eq!(t.note("members", &shown).len(), 10);
        let mut shown_refs: Vec<(String, String)> = refs.iter().map(|(f, r)| (name_of(*f), r.clone())).collect();
        shown_refs.sort();
        assert_eq!(t.note("refs", &shown_refs).len(), 3);
        let sp = idx.store_paths(&[id_of(2), 999_999, id_of(1), id_of(2)]).unwrap();
        let sp: Vec<&str> = sp.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(t.note("store paths", sp), [store_path(2), store_path(1), store_path(2)]);

        let in_use = hp(8);
        let guard = DeleteGuard {
            added_before: 500,
            accessed_before: 500,
            in_use: &|c: &str, h: &str| c == "main" && h == in_use,
        };
        // Decided one by one in the order given: 1 is still referred to by 2, and 2 by 3.
        let removed = idx.gc_remove("main", &[id_of(1), id_of(2)], &guard, 1_000_000).unwrap();
        assert!(t.note("out of order", removed.len()) == 0);
        let order: Vec<i64> = [3, 2, 1, 4, 5, 6, 7, 8, 9, 10, 1].iter().map(|&i| id_of(i)).collect();
        let removed = idx.gc_remove("main", &order, &guard, 2_000_000).unwrap();
        let shown: Vec<(String, u64, Option<[u8; 32]>)> =
            removed.iter().map(|r| (r.store_path.clone(), r.file_size, r.dead_nar)).collect();
        t.note("removed", &shown);
        let gone: Vec<&str> = removed.iter().map(|r| r.store_path.as_str()).collect();
        assert_eq!(gone, [store_path(3), store_path(2), store_path(1), store_path(4), store_path(5), store_path(7)]);
        let dead: Vec<Option<[u8; 32]>> = removed.iter().map(|r| r.dead_nar).collect();
        assert_eq!(
            dead,
            [Some(nar(3).nar_hash), Some(nar(2).nar_hash), Some(nar(1).nar_hash), None, Some(nar(4).nar_hash), None],
            "a shared NAR dies with its last path; one still in another cache does not"
        );
        let ids: Vec<i64> = removed.iter().map(|r| r.id).collect();
        assert_eq!(ids, [3, 2, 1, 4, 5, 7].map(id_of));
        assert!(idx.gc_remove("main", &[], &guard, 1).unwrap().is_empty());
        assert!(matches!(
            t.outcome("remove nope", idx.gc_remove("nope", &[1], &guard, 1)),
            Err(IndexError::NoSuchCache(_))
        ));

        assert!(t.note("listing 3", idx.file("main", &format!("{}.ls", hp(3))).unwrap()).is_none());
        assert!(idx.file("main", &format!("{}.ls", hp(6))).unwrap().is_some());
        assert!(t.note("7 in other", idx.path("other", &hp(7)).unwrap()).is_some());
        assert!(idx.path("main", &hp(7)).unwrap().is_none());
        assert_eq!(t.note("counts", idx.counts().unwrap()), (5, 5));
        let stats = t.note("stats", idx.stats("main").unwrap());
        assert_eq!(stats, [("gc_removed".into(), 6)]);
        let mut dead_now = idx.dead_nars(i64::MAX, 100).unwrap();
        assert_eq!(t.note("dead", &dead_now).len(), 4);
        dead_now.sort();
        assert_eq!(idx.dead_nars(i64::MAX, 2).unwrap(), dead_now[..2], "the first ones, by hash");
        assert!(idx.dead_nars(1_999_999, 100).unwrap().is_empty(), "not dead before the removal");
        let mut known: Vec<[u8; 32]> = idx.known_nars().unwrap().into_iter().collect();
        known.sort();
        assert_eq!(t.note("known", known).len(), 9);

        let log = t.note("log", idx.removed_since(Some(0)).unwrap());
        let hashes: Vec<&str> = log
            .paths
            .iter()
            .map(|(c, h)| {
                assert_eq!(c, "main");
                h.as_str()
            })
            .collect();
        assert_eq!(hashes, [hp(3), hp(2), hp(1), hp(4), hp(5), hp(7)]);
        assert!(log.complete);
        assert_eq!(log.last, 6);

        // Burying: unused NARs are unlinked and forgotten; a used one is only forgotten.
        let unlinked = Mutex::new(Vec::new());
        let mut asked = dead_now.clone();
        asked.push(nar(6).nar_hash);
        let buried = idx
            .bury_nars(&asked, &|n| {
                unlinked.lock().unwrap().push(*n);
                if *n == nar(1).nar_hash {
                    Err(std::io::ErrorKind::NotFound.into())
                } else {
                    Ok(())
                }
            })
            .unwrap();
        let mut u = unlinked.into_inner().unwrap();
        u.sort();
        assert_eq!(t.note("unlinked", &u), &dead_now, "never a NAR in use");
        let buried: HashSet<[u8; 32]> = t.note("buried", buried).into_iter().collect();
        assert_eq!(buried.len(), 3, "one was gone already");
        assert!(!buried.contains(&nar(1).nar_hash));
        assert!(idx.dead_nars(i64::MAX, 100).unwrap().is_empty());

        // An unlink error undoes the transaction: the NARs stay dead.
        idx.record_upload("main", "u1", &nar(20), 10).unwrap();
        idx.record_upload("main", "u2", &nar(6), 10).unwrap();
        idx.record_upload("main", "u3", &nar(21), 5_000).unwrap();
        idx.record_upload("other", "u4", &nar(20), 5_000).unwrap();
        idx.record_upload("other", "u5", &nar(22), 20).unwrap();
        assert_eq!(t.note("expired", idx.expire_uploads(100, 3_000_000).unwrap()), 3);
        let dead: Vec<[u8; 32]> = t.note("dead after expiry", idx.dead_nars(i64::MAX, 100).unwrap());
        assert_eq!(dead, [nar(22).nar_hash], "not one an upload or a path still uses");
        assert!(idx.upload("main", "u3").unwrap().is_some() && idx.upload("main", "u1").unwrap().is_none());
        let failed = idx.bury_nars(&dead, &|_| Err(std::io::Error::other("disk on fire")));
        assert!(matches!(t.outcome("bury error", failed), Err(IndexError::Db(_))));
        assert_eq!(idx.dead_nars(i64::MAX, 100).unwrap(), dead);
    });
}

#[test]
fn the_snapshot_lists_a_caches_paths_in_the_order_they_came() {
    // GC removes in the snapshot's order (referrers first, otherwise as listed): in id order,
    // each batch touches neighbouring rows of `paths` and `refs`; in hash order, rows all over
    // both tables (half again the time at 100k paths: docs/benchmarks.md).
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        idx.create_cache(&cache("other")).unwrap();
        for i in (1..=9).rev() {
            let refs: Vec<usize> = if i < 9 { vec![i + 1] } else { vec![] };
            push(idx, "main", &path(i, &refs), 100);
            push(idx, "other", &path(i + 20, &[]), 100);
        }
        let (mut members, mut refs) = (Vec::new(), Vec::new());
        idx.gc_snapshot("main", &mut |m| members.push(m), &mut |from, _| refs.push(from)).unwrap();
        let ids: Vec<i64> = members.iter().map(|m| m.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "members in id order: {ids:?}");
        assert!(refs.windows(2).all(|w| w[0] <= w[1]), "references by their path's id: {refs:?}");
        for (k, m) in members.iter().enumerate() {
            t.note(&format!("member {k}"), String::from_utf8_lossy(&m.hash_part));
        }
        t.note("references listed", refs.len());
    });
}

#[test]
fn the_removal_log_tells_servers_exactly_what_went_or_that_it_cannot() {
    on_both(|idx, t| {
        idx.create_cache(&cache("main")).unwrap();
        let all = DeleteGuard { added_before: i64::MAX, accessed_before: i64::MAX, in_use: &|_, _| false };
        let mut next = 1;
        // Removes `n` fresh paths at `at` seconds (the log records seconds).
        let mut log = |n: usize, at: i64| {
            let mut ids = Vec::new();
            for i in next..next + n {
                push(idx, "main", &path(i, &[]), 1);
                let mut id = None;
                idx.gc_snapshot(
                    "main",
                    &mut |m| {
                        if m.hash_part == hp(i).as_bytes() {
                            id = Some(m.id)
                        }
                    },
                    &mut |_, _| {},
                )
                .unwrap();
                ids.push(id.unwrap());
            }
            next += n;
            assert_eq!(idx.gc_remove("main", &ids, &all, at * 1000).unwrap().len(), n);
        };
        let start = t.note("start", idx.removed_since(None).unwrap());
        assert_eq!((start.last, start.paths.len(), start.complete), (0, 0, true));
        log(3, 10);
        let r = t.note("after 3", idx.removed_since(Some(start.last)).unwrap());
        assert!(r.complete);
        assert_eq!(r.paths.iter().map(|(_, h)| h.clone()).collect::<Vec<_>>(), [hp(1), hp(2), hp(3)]);
        assert_eq!(t.note("now", idx.removed_since(None).unwrap()).last, r.last);
        log(2, 20);
        let tail = t.note("tail", idx.removed_since(Some(4)).unwrap());
        assert_eq!((tail.paths.len(), tail.last, tail.complete), (1, 5, true));
        assert!(t.note("ahead", idx.removed_since(Some(9)).unwrap()).complete);
        // Trimmed past a server's position: it must drop everything.
        idx.trim_gc_log(15).unwrap();
        let cut = t.note("cut", idx.removed_since(Some(1)).unwrap());
        assert!(!cut.complete);
        assert!(t.note("still", idx.removed_since(Some(3)).unwrap()).complete);
        // Trimmed to nothing: positions still go on from where they were.
        idx.trim_gc_log(100).unwrap();
        let empty = t.note("empty", idx.removed_since(Some(5)).unwrap());
        assert!(empty.complete && empty.paths.is_empty());
        assert_eq!(empty.last, 5);
        assert_eq!(idx.removed_since(None).unwrap().last, 5);
        log(1, 30);
        let again = t.note("again", idx.removed_since(Some(5)).unwrap());
        assert!(again.complete);
        assert_eq!((again.paths.len(), again.last), (1, 6));
        assert!(!t.note("old", idx.removed_since(Some(0)).unwrap()).complete, "rows before the trim are gone");
    });
}

#[test]
fn the_status_pages_history() {
    on_both(|idx, t| {
        for c in ["main", "other", "Zeta"] {
            idx.create_cache(&cache(c)).unwrap();
        }
        // Totals, each as usage counts it from the paths.
        let totals = |t: &mut Transcript, what: &str| {
            let totals = t.note(what, idx.cache_totals().unwrap());
            let names: Vec<&str> = totals.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["Zeta", "main", "other"], "every cache, bytewise");
            for (name, usage) in &totals {
                assert_eq!(*usage, *idx.usage_by_access(name, 0, &[]).unwrap().last().unwrap(), "{what}: {name}");
            }
        };
        totals(t, "totals empty");
        push(idx, "main", &path(1, &[]), 100);
        push(idx, "main", &path(2, &[1]), 100);
        push(idx, "main", &PathRecord { nar: nar(1), ..path(3, &[]) }, 100);
        push(idx, "other", &path(4, &[]), 100);
        assert_eq!(t.note("own 1", push(idx, "other", &path(1, &[]), 101)), Added::New);
        assert_eq!(t.outcome("again", idx.add_path("other", &path(1, &[]), None, 102)).unwrap(), Added::Present);
        totals(t, "totals added");
        let mut ids = std::collections::HashMap::new();
        idx.gc_snapshot(
            "main",
            &mut |m| {
                ids.insert(m.hash_part, m.id);
            },
            &mut |_, _| {},
        )
        .unwrap();
        let order: Vec<i64> = [2, 1, 3].iter().map(|&i| ids[hp(i).as_bytes()]).collect();
        let all = DeleteGuard { added_before: i64::MAX, accessed_before: i64::MAX, in_use: &|_, _| false };
        let removed = idx.gc_remove("main", &order, &all, 1_000).unwrap();
        let dead: Vec<Option<[u8; 32]>> = t.note("removed", removed.iter().map(|r| r.dead_nar).collect());
        assert_eq!(dead, [Some(nar(2).nar_hash), None, None], "1's NAR is still used by 1 in other");
        totals(t, "totals collected");
        let mut one = None;
        idx.gc_snapshot(
            "other",
            &mut |m| one = one.or((m.hash_part == hp(1).as_bytes()).then_some(m.id)),
            &mut |_, _| {},
        )
        .unwrap();
        let one = one.unwrap();
        assert_eq!(idx.gc_remove("other", &[one], &all, 2_000).unwrap()[0].dead_nar, Some(nar(1).nar_hash));
        totals(t, "totals collected again");

        // Canary runs: bytewise lanes and run ids (ICU would put `a` before `B`, `q` before `R`).
        let run = |lane: &str, id: &str, started_at: i64, received_at: i64| StoredRun {
            lane: lane.into(),
            run_id: id.into(),
            started_at,
            status: "pass".into(),
            received_at,
            record: format!("{{\"id\":\"{id}\"}}"),
        };
        for r in [
            run("main", "r1", 100, 101),
            run("main", "R", 200, 201),
            run("main", "q", 200, 201),
            run("main", "r3", 200, 199),
            run("main", "r4", 50, 300),
            run("a", "x", 10, 11),
            run("B", "y", 500, 501),
            run("pr", "z", 70, 21),
        ] {
            idx.put_canary_run(&r).unwrap();
        }
        let again = StoredRun { status: "fail".into(), record: "{}".into(), ..run("main", "r1", 150, 400) };
        idx.put_canary_run(&again).unwrap();
        let main = t.note("runs", idx.canary_runs("main", 0, 10).unwrap());
        let ids: Vec<&str> = main.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(ids, ["q", "R", "r3", "r1", "r4"]);
        assert_eq!(main[3], again);
        assert_eq!(t.note("runs 2", idx.canary_runs("main", 0, 2).unwrap()), main[..2]);
        assert_eq!(t.note("runs 2 after 2", idx.canary_runs("main", 2, 2).unwrap()), main[2..4]);
        assert!(t.note("runs past the end", idx.canary_runs("main", 5, 2).unwrap()).is_empty());
        assert!(t.note("runs nope", idx.canary_runs("nope", 0, 2).unwrap()).is_empty());
        assert_eq!(t.note("lanes", idx.canary_lanes().unwrap()), ["B", "a", "main", "pr"]);
        assert_eq!(t.note("trimmed", idx.trim_canary_runs(60, 3).unwrap()), 3, "x and r4 by age, r1 beyond 3");
        let ids: Vec<String> = idx.canary_runs("main", 0, 10).unwrap().into_iter().map(|r| r.run_id).collect();
        assert_eq!(t.note("runs after", ids), ["q", "R", "r3"]);
        assert_eq!(t.note("trimmed to 1", idx.trim_canary_runs(0, 1).unwrap()), 2);
        assert_eq!(t.note("lanes after", idx.canary_lanes().unwrap()), ["B", "main", "pr"]);

        // Publishing: at most 3 lanes (a fourth is refused, a known one is not), each lane
        // keeping its newest 2.
        assert!(matches!(
            t.outcome("a fourth lane", idx.publish_canary_run(&run("new", "n1", 900, 901), 3, 2)),
            Err(IndexError::TooManyLanes(3))
        ));
        for (id, at) in [("p1", 600), ("p2", 700), ("p0", 100)] {
            t.outcome("publish", idx.publish_canary_run(&run("main", id, at, at + 1), 3, 2)).unwrap();
        }
        let ids: Vec<String> = idx.canary_runs("main", 0, 10).unwrap().into_iter().map(|r| r.run_id).collect();
        assert_eq!(t.note("kept 2", ids), ["p2", "p1"], "an older run published late goes at once");
        t.outcome("a known lane", idx.publish_canary_run(&run("pr", "z2", 800, 801), 3, 2)).unwrap();
        assert_eq!(t.note("lanes published", idx.canary_lanes().unwrap()), ["B", "main", "pr"]);

        // Collection summaries: newest first (by time, then as recorded).
        for (at, s) in [(10, "a"), (30, "c"), (20, "b"), (30, "d")] {
            idx.record_gc_summary(at, s).unwrap();
        }
        let all_summaries = t.note("summaries", idx.gc_summaries(10).unwrap());
        assert_eq!(all_summaries, [(30, "d".into()), (30, "c".into()), (20, "b".into()), (10, "a".into())]);
        assert_eq!(t.note("summaries 1", idx.gc_summaries(1).unwrap()), all_summaries[..1]);
        idx.trim_gc_summaries(2).unwrap();
        assert_eq!(t.note("summaries kept", idx.gc_summaries(10).unwrap()), all_summaries[..2]);

        // Hourly counters (the hour itself is the clock's: only checked, not compared).
        let d = |c: &str, k: &str, v: i64| (c.to_string(), k.to_string(), v);
        idx.add_stats(&[
            d("main", "narinfo_hits", 2),
            d("main", "nar_bytes_age_1d", 100),
            d("Zeta", "nar_bytes_age_30d", 50),
            d("main", "nar_bytes_age_30d", 5),
            d("main", "narinfo_misses", 3),
            d("main", "narinfo_hits", 1),
            d("other", "nar_downloads", 1),
            d("nope", "narinfo_hits", 5),
        ])
        .unwrap();
        idx.gc_barrier(&["main".into()]).unwrap();
        let rows = idx.hourly_stats(0).unwrap();
        let hour = rows[0].hour;
        assert!(hour % 3600 == 0 && rows.iter().all(|r| r.hour == hour), "{rows:?}");
        let shown: Vec<(String, String, i64)> = rows.into_iter().map(|r| (r.cache, r.key, r.value)).collect();
        let shown = t.note("hourly", shown);
        assert_eq!(shown.len(), 5);
        assert_eq!(shown[0], ("Zeta".into(), "nar_bytes".into(), 50));
        assert_eq!(shown[1], ("main".into(), "nar_bytes".into(), 105));
        assert!(t.note("hourly later", idx.hourly_stats(hour + 3600).unwrap()).is_empty());
        idx.trim_hourly_stats(hour).unwrap();
        assert_eq!(idx.hourly_stats(hour).unwrap().len(), 5);
        idx.trim_hourly_stats(hour + 1).unwrap();
        assert!(t.note("hourly trimmed", idx.hourly_stats(0).unwrap()).is_empty());
        assert!(t.note("stats", idx.stats("main").unwrap()).contains(&("gc_runs".into(), 1)));

        // A canary token.
        let canary = TokenRecord { scope: Scope::Canary, ..token(6, "other", 3) };
        t.outcome("canary token", idx.add_token(&canary)).unwrap();
        assert_eq!(t.note("canary", idx.token(&[6; 32]).unwrap()), Some(canary));
    });
}
