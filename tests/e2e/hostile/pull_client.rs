//! Class 4, and class 3 on the client's side: `flywheel cache pull` against a malicious cache
//! (or a man in the middle on http://). Its narinfos are validly signed, since what a signature
//! does not cover (lengths, `Compression:`, `URL:`) is what an attacker changes. The client
//! stops at the signed NarSize, bounds every reply before reading it, does not retry a NAR
//! that cannot be right, and sends its token only to the cache's own origin.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flywheel_nix::keys::SecretKey;
use flywheel_nix::narinfo::{self, Compression, FileRef};
use flywheel_nix::store_db::PathInfo;
use flywheel_nix::{NixHash, StoreDir};

use crate::harness::*;
use crate::support::{flywheel, tempdir};

/// A request the evil cache saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// What the evil cache answers: given the request's path, writes a whole reply (or an endless
/// one) to the stream.
type Answer = dyn Fn(&str, &mut TcpStream) + Send + Sync;

/// An HTTP server on 127.0.0.1 that answers as it is told and records what it was asked.
struct EvilCache {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl EvilCache {
    fn start(answer: Arc<Answer>) -> EvilCache {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (answer, s) = (answer.clone(), s.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or("").to_string();
                    let mut authorization = None;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("authorization") {
                                authorization = Some(v.trim().to_string());
                            }
                        }
                    }
                    if let Ok(mut s) = s.lock() {
                        s.push(Seen { path: path.clone(), authorization });
                    }
                    answer(&path, &mut conn);
                    let _ = conn.flush();
                });
            }
        });
        EvilCache { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/cache", self.addr)
    }

    fn asked(&self, suffix: &str) -> Vec<Seen> {
        self.seen.lock().expect("lock").iter().filter(|s| s.path.ends_with(suffix)).cloned().collect()
    }
}

fn reply(conn: &mut TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// Writes `head` then `fill` again and again until the client goes (or `max` bytes).
fn endless(conn: &mut TcpStream, head: &[u8], fill: &[u8], max: u64, sent: &AtomicU64) {
    let start = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n";
    if conn.write_all(start.as_bytes()).is_err() || conn.write_all(head).is_err() {
        return;
    }
    let mut n = 0u64;
    while n < max {
        match conn.write(fill) {
            Ok(k) => {
                n += k as u64;
                sent.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(_) => return,
        }
    }
}

const CACHE_INFO: &[u8] = b"StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";

/// A path's narinfo, signed by `key`, describing `nar` at `url` with `compression`.
fn signed_narinfo(key: &SecretKey, path: &str, nar: &[u8], url: &str, compression: Compression) -> Vec<u8> {
    let sd = StoreDir::default();
    let info = PathInfo {
        path: sd.parse_path(path.as_bytes()).expect("a store path"),
        nar_hash: NixHash::Sha256(sha(nar)),
        nar_size: nar.len() as u64,
        references: Default::default(),
        deriver: None,
        registration_time: 0,
        ultimate: false,
        signatures: vec![],
        ca: None,
    };
    let file = FileRef { url: url.to_string(), compression, hash: None, size: None };
    narinfo::signed(&sd, &info, file, key).expect("signed").to_canonical_bytes()
}

fn pull(cache: &str, key: &SecretKey, store: &Path, path: &str) -> Output {
    flywheel()
        .args(["cache", "pull", "--from", cache, "--token", "fwc_the-token", "--store"])
        .arg(store)
        .args(["--trusted-key", &key.public().to_nix_string(), path])
        .output()
        .expect("pull")
}

fn failed(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "the pull must fail: {err}");
    err
}

fn nothing_in(store: &Path, path: &str) {
    assert!(!store.join(path.trim_start_matches('/')).exists(), "{path} is not in the store");
}

#[test]
fn a_nar_longer_than_its_signed_nar_size_is_cut_off_not_stored_and_not_retried() {
    let work = tempdir();
    let key = SecretKey::generate("evil-1").expect("key");
    let p = store_path("filler");
    let (nar, _) = nar_of(b"short and signed");
    let info = signed_narinfo(&key, &p, &nar, "nar/long.nar", Compression::None);
    let nar_len = nar.len();
    let sent = Arc::new(AtomicU64::new(0));
    let s2 = sent.clone();
    let evil = EvilCache::start(Arc::new(move |path: &str, conn: &mut TcpStream| match path {
        "/cache/nix-cache-info" => reply(conn, "200 OK", "text/plain", CACHE_INFO),
        p if p.ends_with(".narinfo") => reply(conn, "200 OK", "text/x-nix-narinfo", &info),
        // The signed NAR, then zeros without end and without a length.
        _ => endless(conn, &nar, &[0u8; 1 << 16], 1 << 34, &s2),
    }));
    let store = work.path().join("store");
    let err = failed(&pull(&evil.url(), &key, &store, &p));
    assert!(err.contains("larger than") || err.contains("more than"), "{err}");
    nothing_in(&store, &p);
    assert_eq!(evil.asked("long.nar").len(), 1, "not retried");
    // Socket buffers take some; the client read no more than a bound of the NarSize.
    let taken = sent.load(Ordering::Relaxed);
    assert!(taken < 64 << 20, "the client stopped reading: {taken} bytes sent for a NAR of {nar_len}");
}

#[test]
fn a_declared_length_over_the_bound_and_an_endless_narinfo_are_refused_unread() {
    let work = tempdir();
    let key = SecretKey::generate("evil-1").expect("key");
    let (p, q) = (store_path("declared"), store_path("endless-narinfo"));
    let (nar, _) = nar_of(b"signed");
    let info = signed_narinfo(&key, &p, &nar, "nar/declared.nar", Compression::None);
    let sent = Arc::new(AtomicU64::new(0));
    let (s2, q2) = (sent.clone(), hash_part(&q).to_string());
    let evil = EvilCache::start(Arc::new(move |path: &str, conn: &mut TcpStream| match path {
        "/cache/nix-cache-info" => reply(conn, "200 OK", "text/plain", CACHE_INFO),
        p if p.contains(&q2) => endless(conn, b"StorePath: ", &[b'x'; 1 << 16], 1 << 34, &s2),
        p if p.ends_with(".narinfo") => reply(conn, "200 OK", "text/x-nix-narinfo", &info),
        _ => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\nConnection: close\r\n\r\n";
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&nar);
        }
    }));
    let store = work.path().join("store");
    let err = failed(&pull(&evil.url(), &key, &store, &p));
    assert!(err.contains("refused"), "{err}");
    assert_eq!(evil.asked("declared.nar").len(), 1, "not retried");
    nothing_in(&store, &p);
    let err = failed(&pull(&evil.url(), &key, &store, &q));
    assert!(err.contains("longer than"), "{err}");
    assert!(sent.load(Ordering::Relaxed) < 64 << 20, "the narinfo was not read to its end");
    assert_eq!(evil.asked(&format!("{}.narinfo", hash_part(&q))).len(), 1, "not retried");
}

#[test]
fn a_nar_that_cannot_be_right_is_not_retried() {
    let work = tempdir();
    let key = SecretKey::generate("evil-1").expect("key");
    let (nar, _) = nar_of(b"the signed contents");
    let (other, _) = nar_of(b"the signed Contents");
    let cases: Vec<(&str, Vec<u8>, Compression, &str)> = vec![
        ("hash", other, Compression::None, "hash mismatch"),
        ("garbage", b"not a NAR at all, padded to length....".to_vec(), Compression::None, "NAR"),
        ("bomb", xz_declaring_4gib(&nar), Compression::Xz, "memory"),
        (
            "skippable",
            [zstd_skippable(b"x"), zstd::encode_all(&nar[..], 3).expect("zstd")].concat(),
            Compression::Zstd,
            "skippable",
        ),
    ];
    for (name, body, compression, expect) in cases {
        let p = store_path(name);
        let info = signed_narinfo(&key, &p, &nar, &format!("nar/{name}"), compression);
        let body = Arc::new(body);
        let evil = EvilCache::start(Arc::new(move |path: &str, conn: &mut TcpStream| match path {
            "/cache/nix-cache-info" => reply(conn, "200 OK", "text/plain", CACHE_INFO),
            p if p.ends_with(".narinfo") => reply(conn, "200 OK", "text/x-nix-narinfo", &info),
            _ => reply(conn, "200 OK", "application/octet-stream", &body),
        }));
        let store = work.path().join(format!("store-{name}"));
        let err = failed(&pull(&evil.url(), &key, &store, &p));
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(evil.asked(&format!("nar/{name}")).len(), 1, "{name}: not retried");
        nothing_in(&store, &p);
    }
}

#[test]
fn the_token_goes_only_to_the_caches_own_origin() {
    let work = tempdir();
    let key = SecretKey::generate("evil-1").expect("key");
    let (nar, _) = nar_of(b"served from elsewhere");
    let nar = Arc::new(nar);
    let n2 = nar.clone();
    let elsewhere = EvilCache::start(Arc::new(move |_: &str, conn: &mut TcpStream| {
        reply(conn, "200 OK", "application/octet-stream", &n2)
    }));
    let (p, q) = (store_path("elsewhere"), store_path("here"));
    let far = signed_narinfo(&key, &p, &nar, &format!("http://{}/nar/far.nar", elsewhere.addr), Compression::None);
    let near = signed_narinfo(&key, &q, &nar, "nar/near.nar", Compression::None);
    let r = store_path("file-url");
    let bad = signed_narinfo(&key, &r, &nar, "file:///etc/passwd", Compression::None);
    let (qh, rh, n3) = (hash_part(&q).to_string(), hash_part(&r).to_string(), nar.clone());
    let cache = EvilCache::start(Arc::new(move |path: &str, conn: &mut TcpStream| match path {
        "/cache/nix-cache-info" => reply(conn, "200 OK", "text/plain", CACHE_INFO),
        p if p.ends_with(".narinfo") && p.contains(&qh) => reply(conn, "200 OK", "text/x-nix-narinfo", &near),
        p if p.ends_with(".narinfo") && p.contains(&rh) => reply(conn, "200 OK", "text/x-nix-narinfo", &bad),
        p if p.ends_with(".narinfo") => reply(conn, "200 OK", "text/x-nix-narinfo", &far),
        _ => reply(conn, "200 OK", "application/octet-stream", &n3),
    }));
    let store = work.path().join("store");
    for path in [&p, &q] {
        let out = pull(&cache.url(), &key, &store, path);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(store.join(path.trim_start_matches('/'))).expect("pulled"), b"served from elsewhere");
    }
    let far_asked = elsewhere.asked("far.nar");
    assert_eq!(far_asked.len(), 1);
    assert_eq!(far_asked[0].authorization, None, "no token to another origin");
    let near_asked = cache.asked("near.nar");
    assert_eq!(near_asked[0].authorization.as_deref(), Some("Bearer fwc_the-token"), "the cache's own origin gets it");
    // A URL that is not http(s) is refused before anything is fetched.
    let err = failed(&pull(&cache.url(), &key, &store, &r));
    assert!(err.contains("not an http or https URL"), "{err}");
    nothing_in(&store, &r);
}
