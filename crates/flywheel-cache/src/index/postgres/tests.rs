//! The PostgreSQL index against a real server (a throwaway cluster, one database per test):
//! what SQLite cannot show, several servers at once.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use flywheel_fixture::postgres::PgCluster;

use super::*;
use crate::index::retention::DeleteGuard;
use crate::index::test_cache as cache;
use crate::index::{Access, Retention};

/// A fresh database on the cluster the tests share (started by the first test that needs it,
/// stopped when the last one holding it is done).
pub(crate) struct TestDb {
    pub(crate) url: String,
    pub(crate) pg: Arc<PgCluster>,
}

pub(crate) fn test_db() -> TestDb {
    static CLUSTER: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let pg = {
        let mut shared = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
        match shared.upgrade() {
            Some(pg) => pg,
            None => {
                let pg = Arc::new(PgCluster::start().unwrap_or_else(|e| panic!("{e}")));
                *shared = Arc::downgrade(&pg);
                pg
            }
        }
    };
    let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let url = pg.create_database(&name).unwrap_or_else(|e| panic!("{e}"));
    TestDb { url, pg }
}

pub(crate) fn store_path(i: usize) -> String {
    format!("/nix/store/{i:032}-p{i}")
}

pub(crate) fn nar(i: usize) -> NarRecord {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&(i as u64).to_be_bytes());
    NarRecord {
        nar_hash: h,
        nar_size: 100 + i as u64,
        file_hash: [i as u8; 32],
        file_size: 10 + i as u64,
        compression: "zstd".into(),
    }
}

pub(crate) fn path(i: usize, refs: &[usize]) -> PathRecord {
    let mut references: Vec<String> = refs.iter().map(|&r| store_path(r)).collect();
    references.sort();
    PathRecord { store_path: store_path(i), nar: nar(i), references, deriver: None, ca: None, sigs: vec![] }
}

/// Pushes path `i` to `cache` as a server does: the NAR's upload, then the narinfo.
fn push(idx: &dyn Index, cache: &str, i: usize, refs: &[usize], url: &str, now: i64) -> Result<Added, IndexError> {
    idx.record_upload(cache, url, &nar(i), now)?;
    idx.add_path(cache, &path(i, refs), Some(url), now)
}

#[test]
fn a_newer_schema_is_refused_and_a_current_one_is_not_migrated_again() {
    let db = test_db();
    drop(PostgresIndex::connect(&db.url, 2).unwrap());
    drop(PostgresIndex::connect(&db.url, 2).unwrap());
    let mut c = postgres::Client::connect(&db.url, NoTls).unwrap();
    let versions: i64 = c.query_one("SELECT count(*) FROM schema_version", &[]).unwrap().get(0);
    assert_eq!(versions, MIGRATIONS.len() as i64);
    c.execute("INSERT INTO schema_version VALUES (99, 0)", &[]).unwrap();
    match PostgresIndex::connect(&db.url, 2) {
        Err(IndexError::NewerSchema { found: 99, known }) => assert_eq!(known, MIGRATIONS.len() as i64),
        other => panic!("expected NewerSchema, got {:?}", other.map(|_| ())),
    }
}

/// Every cache's kept totals are what `usage_by_access` counts from its paths.
fn assert_totals_agree(idx: &dyn Index) -> Vec<(String, u64, u64)> {
    let totals = idx.cache_totals().unwrap();
    let names: Vec<String> = idx.caches().unwrap().into_iter().map(|c| c.name).collect();
    assert_eq!(totals.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names, "every cache, by name");
    for (name, usage) in &totals {
        let counted = *idx.usage_by_access(name, 0, &[]).unwrap().last().unwrap();
        assert_eq!(*usage, counted, "{name}: kept totals and the paths' sum differ");
    }
    totals.into_iter().map(|(n, u)| (n, u.paths, u.bytes)).collect()
}

#[test]
fn migrating_a_database_of_schema_1_counts_its_totals_and_allows_canary_tokens() {
    let db = test_db();
    let mut c = postgres::Client::connect(&db.url, NoTls).unwrap();
    // Made as the flywheel with only migration 1 made it, and filled the way it filled it.
    c.batch_execute(MIGRATIONS[0]).unwrap();
    c.batch_execute(
        "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL);
         INSERT INTO schema_version VALUES (1, 0);
         INSERT INTO caches (name, visibility, priority, secret_key, created_at) VALUES
           ('main', 'public', 40, 'k', 1), ('other', 'private', 41, 'k', 1), ('idle', 'public', 41, 'k', 1);
         INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at) VALUES
           ('\\x01', 1000, '\\x01', 100, 'zstd', 1), ('\\x02', 2000, '\\x02', 200, 'zstd', 1);
         INSERT INTO paths (hash_part, store_path, nar_hash, sigs, uploaded_at, last_access) VALUES
           ('a', '/nix/store/a-a', '\\x01', '', 1, 1), ('b', '/nix/store/b-b', '\\x02', '', 1, 1),
           ('c', '/nix/store/c-c', '\\x02', '', 1, 1);
         INSERT INTO members (cache, path, added_at)
           SELECT c.id, p.id, 1 FROM caches c JOIN paths p ON (c.name, p.hash_part) IN
             (('main', 'a'), ('main', 'b'), ('other', 'a'), ('other', 'b'), ('other', 'c'));
         INSERT INTO tokens (hash, cache, scope, created_at, expires_at, description)
           SELECT '\\x0000000000000000000000000000000000000000000000000000000000000000', id, 'admin', 5, 9, 'ci'
           FROM caches WHERE name = 'other';",
    )
    .unwrap();
    let idx = PostgresIndex::connect(&db.url, 2).unwrap();
    let versions: Vec<i64> =
        c.query("SELECT version FROM schema_version ORDER BY version", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    assert_eq!(assert_totals_agree(&idx), [("idle".into(), 0, 0), ("main".into(), 2, 300), ("other".into(), 3, 500)]);
    // Each membership is a path of its cache now; those that joined a path main held first
    // (the same second: the lower cache id came first) are marked adopted.
    assert_eq!(
        idx.adopted_paths().unwrap(),
        [("other".to_string(), "/nix/store/a-a".to_string()), ("other".to_string(), "/nix/store/b-b".to_string())]
    );
    let old = idx.token(&[0; 32]).unwrap().unwrap();
    assert_eq!((old.cache.as_str(), old.scope, old.expires_at), ("other", Scope::Admin, Some(9)));
    let canary = TokenRecord {
        hash: [3; 32],
        cache: "main".into(),
        scope: Scope::Canary,
        created_at: 7,
        expires_at: None,
        description: Some("runner".into()),
    };
    idx.add_token(&canary).unwrap();
    assert_eq!(idx.token(&[3; 32]).unwrap(), Some(canary));
    let bogus = c.execute(
        "INSERT INTO tokens (hash, cache, scope, created_at) SELECT '\\x04', id, 'root', 1 FROM caches WHERE name = 'main'",
        &[],
    );
    assert!(bogus.is_err(), "the scope is still checked");
    // The triggers count from there on.
    push(&idx, "idle", 7, &[], "seven", 1).unwrap();
    assert_eq!(assert_totals_agree(&idx)[0], ("idle".into(), 1, nar(7).file_size));
}

#[test]
fn totals_stay_right_when_one_statement_removes_paths_of_several_caches() {
    let db = test_db();
    let idx = PostgresIndex::connect(&db.url, 2).unwrap();
    for c in ["main", "other"] {
        idx.create_cache(&cache(c)).unwrap();
    }
    push(&idx, "main", 1, &[], "one", 1).unwrap();
    push(&idx, "main", 2, &[], "two", 1).unwrap();
    push(&idx, "other", 1, &[], "one", 2).unwrap();
    assert_totals_agree(&idx);
    // GC removes one cache's paths at a time; the statement trigger sums any statement.
    let mut c = postgres::Client::connect(&db.url, NoTls).unwrap();
    c.execute("DELETE FROM paths WHERE hash_part = $1", &[&format!("{:032}", 1)]).unwrap();
    assert_eq!(assert_totals_agree(&idx), [("main".into(), 1, nar(2).file_size), ("other".into(), 0, 0)]);
}

#[test]
fn servers_starting_together_migrate_once() {
    let db = test_db();
    let url = db.url.clone();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PostgresIndex::connect(&url, 1).map(|_| ()))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut c = postgres::Client::connect(&db.url, NoTls).unwrap();
    let rows = c.query("SELECT version FROM schema_version ORDER BY version", &[]).unwrap();
    let versions: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
}

#[test]
fn connection_errors_are_one_line_without_the_password() {
    let db = test_db();
    // Nothing listens there.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let urls = [
        format!("postgresql://someone:s3cr3t-pw@127.0.0.1:{closed_port}/flywheel"),
        // The server answers: no such role.
        db.pg.url_with("nobody", "s3cr3t-pw"),
        "postgresql://someone:s3cr3t-pw@127.0.0.1:notaport/flywheel".to_string(),
        format!("host=127.0.0.1 port={closed_port} user=someone password=s3cr3t-pw dbname=flywheel"),
    ];
    for url in urls {
        let e = PostgresIndex::connect(&url, 1).err().unwrap().to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.len() > 20, "{e}");
    }
}

#[test]
fn a_statement_error_is_one_line_and_names_no_row() {
    let db = test_db();
    let idx = PostgresIndex::connect(&db.url, 1).unwrap();
    idx.create_cache(&cache("main")).unwrap();
    let t = TokenRecord {
        hash: [7; 32],
        cache: "main".into(),
        scope: Scope::Read,
        created_at: 1,
        expires_at: None,
        description: None,
    };
    idx.add_token(&t).unwrap();
    let e = idx.add_token(&t).unwrap_err();
    assert!(matches!(&e, IndexError::Db(m) if m.contains("23505") && !m.contains('\n')), "{e}");
}

#[test]
fn the_gc_lock_is_exclusive_across_pools_and_released_when_dropped() {
    let db = test_db();
    let a = PostgresIndex::connect(&db.url, 2).unwrap();
    let b = PostgresIndex::connect(&db.url, 2).unwrap();
    let held = a.try_gc_lock().unwrap().expect("free at first");
    assert!(b.try_gc_lock().unwrap().is_none());
    assert!(a.another().unwrap().try_gc_lock().unwrap().is_none(), "another handle is another holder");
    drop(held);
    let held = b.try_gc_lock().unwrap().expect("released by the drop");
    assert!(a.try_gc_lock().unwrap().is_none());
    drop(held);
    // A session given back after its lock was released holds nothing: taking the NAR lock
    // exclusively on every idle session works while the GC lock is taken elsewhere.
    let g = a.try_gc_lock().unwrap().unwrap();
    let x = b.lock(IndexLock::NarExclusive).unwrap();
    drop(x);
    drop(g);
    assert_eq!(advisory_locks(&db), 0, "every lock released");
}

/// Advisory locks held in the test's database (other tests share the server).
fn advisory_locks(db: &TestDb) -> i64 {
    let mut c = postgres::Client::connect(&db.url, NoTls).unwrap();
    c.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Waits up to `within` for `f` to hold.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn a_lock_goes_with_its_session_when_the_backend_is_terminated() {
    let db = test_db();
    let a = PostgresIndex::connect(&db.url, 2).unwrap();
    let b = PostgresIndex::connect(&db.url, 2).unwrap();
    let held = a.try_gc_lock().unwrap().unwrap();
    let nar = a.lock(IndexLock::NarExclusive).unwrap();
    let mut admin = postgres::Client::connect(&db.url, NoTls).unwrap();
    // As a server killed with -9 (or cut off) loses its sessions.
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND classid = $1::int::oid AND granted
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&LOCK_CLASS],
        )
        .unwrap()
        .get(0);
    assert_eq!(killed, 2);
    assert!(eventually(Duration::from_secs(10), || b.try_gc_lock().unwrap().is_some()));
    let got = b.lock(IndexLock::NarExclusive).unwrap();
    drop(got);
    // The holder finds out only when it releases: no panic, and its dead sessions are not reused.
    drop(held);
    drop(nar);
    let again = a.try_gc_lock().unwrap().expect("a works again");
    assert!(b.try_gc_lock().unwrap().is_none());
    drop(again);
}

#[test]
fn nar_locks_are_shared_or_exclusive_and_store_locks_per_nar() {
    let db = test_db();
    let a = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    let b = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    let s1 = a.lock(IndexLock::NarShared).unwrap();
    let s2 = b.lock(IndexLock::NarShared).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || {
        let held = b2.lock(IndexLock::NarExclusive).unwrap();
        tx.send(()).unwrap();
        drop(held);
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "exclusive while shared is held");
    drop(s1);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "one shared holder left");
    drop(s2);
    rx.recv_timeout(Duration::from_secs(10)).expect("granted once both are released");
    waiter.join().unwrap();

    let h1 = [1u8; 32];
    let mut h2 = [1u8; 32];
    h2[0] = 2;
    let x = a.lock(IndexLock::Store(h1)).unwrap();
    let y = b.lock(IndexLock::Store(h2)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    let waiter = std::thread::spawn(move || {
        let held = b2.lock(IndexLock::Store(h1)).unwrap();
        tx.send(()).unwrap();
        drop(held);
    });
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "the same NAR waits");
    drop(x);
    rx.recv_timeout(Duration::from_secs(10)).expect("granted on release");
    waiter.join().unwrap();
    drop(y);
    assert!(eventually(Duration::from_secs(5), || advisory_locks(&db) == 0));
}

#[test]
fn the_index_works_from_spawn_blocking_and_locks_drop_in_async_code() {
    let db = test_db();
    for flavor in ["multi", "current"] {
        let rt = match flavor {
            "multi" => tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build(),
            _ => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        }
        .unwrap();
        let url = db.url.clone();
        rt.block_on(async move {
            let idx = tokio::task::spawn_blocking(move || PostgresIndex::connect(&url, 2)).await.unwrap().unwrap();
            let idx = Arc::new(idx);
            let i = idx.clone();
            let name = format!("c-{flavor}");
            let (held, caches) = tokio::task::spawn_blocking(move || {
                i.create_cache(&cache(&name)).unwrap();
                let held = i.lock(IndexLock::NarShared).unwrap();
                let gc = i.try_gc_lock().unwrap().unwrap();
                ((held, gc), i.caches().unwrap())
            })
            .await
            .unwrap();
            assert!(caches.iter().any(|c| c.name == format!("c-{flavor}")));
            // Many requests at once, as a server's handlers make them.
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let i = idx.clone();
                    tokio::task::spawn_blocking(move || i.removed_since(None).map(|r| r.last))
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().unwrap(), 0);
            }
            // Dropped on a runtime thread: released there without the client's block_on panicking.
            drop(held);
            let i = idx.clone();
            let free = tokio::task::spawn_blocking(move || i.try_gc_lock().unwrap().is_some()).await.unwrap();
            assert!(free, "the GC lock was released by the drop in async code");
            // And the index itself (its pool, its idle lock sessions).
            drop(idx);
        });
    }
}

#[test]
fn concurrent_servers_adding_the_same_paths_stay_consistent() {
    let db = test_db();
    let a = Arc::new(PostgresIndex::connect(&db.url, 4).unwrap());
    let b = Arc::new(PostgresIndex::connect(&db.url, 4).unwrap());
    for c in ["x", "y"] {
        a.create_cache(&cache(c)).unwrap();
    }
    // A DAG: path i refers to i-1 and i/2 (and itself, every seventh).
    const N: usize = 60;
    let refs = |i: usize| -> Vec<usize> {
        let mut r = Vec::new();
        if i > 0 {
            r.push(i - 1);
            r.push(i / 2);
        }
        if i.is_multiple_of(7) {
            r.push(i);
        }
        r.sort();
        r.dedup();
        r
    };
    let results: Arc<Mutex<Vec<(String, usize, Added)>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let idx = if t % 2 == 0 { a.clone() } else { b.clone() };
            let results = results.clone();
            std::thread::spawn(move || {
                let cache = if t % 4 < 2 { "x" } else { "y" };
                for i in 0..N {
                    let url = format!("nar/t{t}-{i}.nar.zst");
                    let added = push(&*idx, cache, i, &refs(i), &url, 1000 + i as i64).unwrap();
                    results.lock().unwrap().push((cache.to_string(), i, added));
                    let access = Access { cache: cache.into(), hash_part: format!("{i:032}"), at: 5000 + t as i64 };
                    idx.touch(&[access]).unwrap();
                    idx.add_stats(&[("x".into(), "hits".into(), 1), ("y".into(), "hits".into(), 2)]).unwrap();
                    if i % 5 == 0 {
                        idx.pin(cache, "main", &store_path(i), Some(3), None, 2000 + i as i64).unwrap();
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let results = results.lock().unwrap();
    assert_eq!(results.len(), 8 * N, "every add_path answered");
    let mut new: HashMap<(String, usize), usize> = HashMap::new();
    for (cache, i, added) in results.iter() {
        assert_ne!(*added, Added::Replaced);
        if *added == Added::New {
            *new.entry((cache.clone(), *i)).or_default() += 1;
        }
    }
    assert!(new.values().all(|&n| n == 1), "each cache's path new exactly once: {new:?}");
    assert_eq!(new.len(), 2 * N);
    assert_eq!(a.counts().unwrap(), (2 * N as u64, N as u64));
    assert!(a.broken_references().unwrap().is_empty());
    assert!(a.pending_uploads().unwrap().is_empty(), "every upload consumed");
    assert_eq!(a.all_nars().unwrap().len(), N);
    for i in 0..N {
        for c in ["x", "y"] {
            let p = b.path(c, &format!("{i:032}")).unwrap().unwrap();
            assert_eq!(p.references, path(i, &refs(i)).references);
        }
    }
    let stats: HashMap<String, i64> = a.stats("y").unwrap().into_iter().collect();
    assert_eq!(stats.get("hits"), Some(&(8 * N as i64 * 2)));
    for c in ["x", "y"] {
        let pins = a.pins(c).unwrap();
        assert_eq!(pins.len(), 1);
        let revs: Vec<i64> = pins[0].revisions.iter().map(|r| r.revision).collect();
        let expected: Vec<i64> = (1..=revs.len() as i64).rev().collect();
        assert_eq!(revs, expected, "revisions numbered without gaps or duplicates");
    }
    assert_eq!(assert_totals_agree(&*a).iter().map(|t| t.1).collect::<Vec<_>>(), [N as u64, N as u64]);
    // Accesses: the latest of the concurrent touches of each cache won (x: threads 0, 1, 4, 5).
    let mut latest = Vec::new();
    a.gc_snapshot("x", &mut |m| latest.push(m.last_access), &mut |_, _| {}).unwrap();
    assert!(latest.iter().all(|&at| at == 5005), "{latest:?}");
}

#[test]
fn collecting_while_servers_push_never_breaks_a_closure() {
    let db = test_db();
    let gc = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    let servers =
        [Arc::new(PostgresIndex::connect(&db.url, 3).unwrap()), Arc::new(PostgresIndex::connect(&db.url, 3).unwrap())];
    gc.create_cache(&cache("c")).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Pushers: the base path 0 (again whenever GC took it), then a path referring to it, and
    // pins of the newest.
    let pushers: Vec<_> = (0..4)
        .map(|t| {
            let idx = servers[t % 2].clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for round in 0..40 {
                    let i = 1 + t * 1000 + round;
                    push(&*idx, "c", 0, &[], &format!("base-{t}-{round}"), 1).unwrap();
                    match push(&*idx, "c", i, &[0], &format!("top-{t}-{round}"), 1) {
                        Ok(_) => ok += 1,
                        // GC took the base in between: a correct answer; the upload stays.
                        Err(IndexError::MissingReferences { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if round % 4 != 0 {
                        continue;
                    }
                    match idx.pin("c", &format!("p{t}"), &store_path(i), Some(1), None, 1) {
                        Ok(_) | Err(IndexError::NotInCache { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let collector = {
        let gc = gc.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let everything = DeleteGuard { added_before: i64::MAX, accessed_before: i64::MAX, in_use: &|_, _| false };
            let mut removed = 0;
            while !stop.load(Ordering::Relaxed) {
                let _held = gc.try_gc_lock().unwrap().unwrap();
                // Each pin keeps its newest revision only.
                for pin in gc.pins("c").unwrap() {
                    let old: Vec<(String, i64)> =
                        pin.revisions.iter().skip(1).map(|r| (pin.name.clone(), r.revision)).collect();
                    gc.release_pin_revisions("c", &old).unwrap();
                }
                let mut ids = Vec::new();
                gc.gc_snapshot("c", &mut |m| ids.push(m.id), &mut |_, _| {}).unwrap();
                // Referrers first: the base (the smallest id ever… not always: it is re-added)
                // goes last whatever its id.
                let base = gc.store_paths(&ids).unwrap();
                let mut order: Vec<i64> = base.iter().filter(|(_, p)| *p != store_path(0)).map(|(id, _)| *id).collect();
                order.extend(base.iter().filter(|(_, p)| *p == store_path(0)).map(|(id, _)| *id));
                removed += gc.gc_remove("c", &order, &everything, 5).unwrap().len();
                assert!(gc.broken_references().unwrap().is_empty());
            }
            removed
        })
    };
    let pushed: usize = pushers.into_iter().map(|p| p.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    let removed = collector.join().unwrap();
    assert!(pushed > 0 && removed > 0, "pushed {pushed}, removed {removed}");
    assert!(gc.broken_references().unwrap().is_empty());
    // Every member's narinfo can be served: its NAR is known, not dead.
    let dead: std::collections::HashSet<[u8; 32]> = gc.dead_nars(i64::MAX, usize::MAX).unwrap().into_iter().collect();
    let mut hashes = Vec::new();
    gc.gc_snapshot("c", &mut |m| hashes.push(m.hash_part), &mut |_, _| {}).unwrap();
    for h in hashes {
        let p = gc.path("c", std::str::from_utf8(&h).unwrap()).unwrap().expect("a member is served");
        assert!(!dead.contains(&p.nar.nar_hash) || gc.nar(&p.nar.nar_hash).unwrap().is_some());
    }
    // The totals the triggers kept while both went on.
    assert_totals_agree(&*gc);
    // Pinned paths are members.
    for pin in gc.pins("c").unwrap() {
        for r in pin.revisions {
            assert!(
                gc.missing("c", std::slice::from_ref(&r.store_path)).unwrap().is_empty(),
                "{} pinned, not held",
                r.store_path
            );
        }
    }
}

/// The id of path `i` in `cache`.
fn member_id(idx: &dyn Index, cache: &str, i: usize) -> i64 {
    let mut id = None;
    let want = format!("{i:032}");
    idx.gc_snapshot(
        cache,
        &mut |m| {
            if m.hash_part == want.as_bytes() {
                id = Some(m.id)
            }
        },
        &mut |_, _| {},
    )
    .unwrap();
    id.unwrap()
}

const EVERYTHING: DeleteGuard<'static> =
    DeleteGuard { added_before: i64::MAX, accessed_before: i64::MAX, in_use: &|_, _| false };

/// The interleavings the concurrent tests may or may not hit, forced: a raw transaction holds
/// a row one side needs next, so that it stops halfway while the other side runs.
#[test]
fn a_push_and_a_collection_racing_for_a_reference_serialize() {
    let db = test_db();
    let server = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    let gc = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    server.create_cache(&cache("c")).unwrap();
    push(&*server, "c", 0, &[], "base", 1).unwrap();
    let base = member_id(&*gc, "c", 0);

    // 1. The push checks its reference first, then stops (inserting its NAR, which a raw
    //    transaction is inserting too); GC must wait for it and then keep the base.
    server.record_upload("c", "top", &nar(1), 1).unwrap();
    let mut raw = postgres::Client::connect(&db.url, NoTls).unwrap();
    let mut blocker = raw.transaction().unwrap();
    blocker
        .execute(
            "INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at)
             VALUES ($1, 1, $1, 1, 'zstd', 1)",
            &[&&nar(1).nar_hash[..]],
        )
        .unwrap();
    let s = server.clone();
    let pushing = std::thread::spawn(move || s.add_path("c", &path(1, &[0]), Some("top"), 1));
    std::thread::sleep(Duration::from_millis(300));
    let g = gc.clone();
    let collecting = std::thread::spawn(move || g.gc_remove("c", &[base], &EVERYTHING, 1).unwrap().len());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!pushing.is_finished() && !collecting.is_finished(), "the push waits for the NAR, GC for the push");
    blocker.rollback().unwrap();
    assert_eq!(pushing.join().unwrap().unwrap(), Added::New);
    assert_eq!(collecting.join().unwrap(), 0, "the base is referred to now");
    assert!(gc.missing("c", &[store_path(0), store_path(1)]).unwrap().is_empty());
    assert!(gc.broken_references().unwrap().is_empty());

    // 2. GC first: it has locked the base and stops (deleting the base's listing, which a raw
    //    transaction holds); the push must wait and then find its reference gone.
    let top = member_id(&*gc, "c", 1);
    assert_eq!(gc.gc_remove("c", &[top], &EVERYTHING, 1).unwrap().len(), 1);
    let listing = StoredFile { body: b"{}".to_vec(), content_type: "application/json".into(), content_encoding: None };
    server.put_file("c", &format!("{:032}.ls", 0), &listing, 1).unwrap();
    let mut blocker = raw.transaction().unwrap();
    blocker.execute("SELECT 1 FROM files WHERE name = $1 FOR UPDATE", &[&format!("{:032}.ls", 0)]).unwrap();
    let g = gc.clone();
    let collecting = std::thread::spawn(move || g.gc_remove("c", &[base], &EVERYTHING, 1).unwrap().len());
    std::thread::sleep(Duration::from_millis(300));
    server.record_upload("c", "top2", &nar(2), 1).unwrap();
    let s = server.clone();
    let pushing = std::thread::spawn(move || s.add_path("c", &path(2, &[0]), Some("top2"), 1));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!pushing.is_finished() && !collecting.is_finished(), "GC waits for the listing, the push for GC");
    blocker.rollback().unwrap();
    assert_eq!(collecting.join().unwrap(), 1);
    assert!(matches!(pushing.join().unwrap(), Err(IndexError::MissingReferences { .. })));
    assert!(server.upload("c", "top2").unwrap().is_some(), "a refused push keeps its upload");
    assert!(gc.broken_references().unwrap().is_empty());
}

#[test]
fn a_pin_and_a_collection_racing_for_a_path_serialize() {
    let db = test_db();
    let server = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    let gc = Arc::new(PostgresIndex::connect(&db.url, 2).unwrap());
    server.create_cache(&cache("c")).unwrap();
    push(&*server, "c", 0, &[], "p", 1).unwrap();
    let id = member_id(&*gc, "c", 0);
    // The pin finds the path in the cache, then stops (updating its access time, a row a raw
    // transaction holds); GC must wait for the pin and then keep the path.
    let mut raw = postgres::Client::connect(&db.url, NoTls).unwrap();
    let mut blocker = raw.transaction().unwrap();
    blocker.execute("SELECT 1 FROM paths WHERE id = $1 FOR NO KEY UPDATE", &[&id]).unwrap();
    let s = server.clone();
    let pinning = std::thread::spawn(move || s.pin("c", "main", &store_path(0), None, None, 7));
    std::thread::sleep(Duration::from_millis(300));
    let g = gc.clone();
    let collecting = std::thread::spawn(move || g.gc_remove("c", &[id], &EVERYTHING, 1).unwrap().len());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!pinning.is_finished() && !collecting.is_finished());
    blocker.rollback().unwrap();
    assert_eq!(pinning.join().unwrap().unwrap().revision, 1);
    assert_eq!(collecting.join().unwrap(), 0, "pinned now");
    assert!(gc.missing("c", &[store_path(0)]).unwrap().is_empty());
}
