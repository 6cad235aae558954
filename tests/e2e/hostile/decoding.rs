//! Class 3 and the smaller findings about upload bodies: decompression has a memory bound and a
//! size bound set before the first byte is decoded, a zstd upload holds data frames and nothing
//! else, and refusals are 400 or 413 with one line. Eight bombs at once leave the server's
//! memory where it was, and a real push goes on meanwhile.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::tempdir;

const CACHES: &str = "[caches.main]\n";

fn put_nar(addr: &str, token: &str, name: &str, body: &[u8], extra: &[(&str, &str)]) -> Reply {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    request(addr, "PUT", &format!("/main/nar/{name}"), &headers, body)
}

fn one_line(r: &Reply) -> String {
    let t = r.text();
    assert_eq!(t.trim_end().lines().count(), 1, "one line: {t:?}");
    t
}

#[test]
fn decoders_refuse_what_needs_more_memory_or_more_bytes_than_allowed() {
    let work = tempdir();
    let s = Served::start(work.path(), Backend::Sqlite, "max-nar-size = \"64MiB\"\ndecoder-memory = \"16MiB\"", CACHES);
    let (addr, write) = (s.addr(), s.token("main", "write"));
    let (nar, _) = nar_of(b"a small honest NAR");

    // An xz stream whose block declares a 4 GiB dictionary: refused before it is allocated.
    let started = Instant::now();
    let r = put_nar(&addr, &write, "a.nar.xz", &xz_declaring_4gib(&nar), &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(one_line(&r).contains("bytes of memory"), "{}", r.text());
    // A zstd frame declaring a 2 GiB window.
    let r = put_nar(&addr, &write, "b.nar.zst", &zstd_declaring_2gib(), &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(one_line(&r).contains("memory"), "{}", r.text());
    // A bomb: 40 KB that would be a NAR of one TiB, stopped at max-nar-size...
    let bomb = zstd_nar_bomb(1 << 40, 10_000);
    assert!(bomb.len() < 64 << 10);
    let r = put_nar(&addr, &write, "c.nar.zst", &bomb, &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(one_line(&r).contains(&format!("larger than {} bytes", 64 << 20)), "{}", r.text());
    // ...or at the NarSize the client declared.
    let r = put_nar(&addr, &write, "d.nar.zst", &bomb, &[("X-Nar-Size", "1000")]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(one_line(&r).contains("larger than 1000 bytes (its declared NarSize)"), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(20), "refused quickly: {:?}", started.elapsed());
    // A declared size over the server's limit is refused before the body is read.
    let r = put_nar(&addr, &write, "e.nar", &nar, &[("X-Nar-Size", &(1u64 << 40).to_string())]);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = put_nar(&addr, &write, "e.nar", &nar, &[("X-Nar-Size", "lots")]);
    assert_eq!(r.status, 400, "{}", r.text());

    // The honest NAR in each form, with its true size declared, still goes in.
    let zst = zstd::encode_all(&nar[..], 3).expect("zstd");
    for (name, body) in [("ok.nar", nar.clone()), ("ok.nar.zst", zst)] {
        let r = put_nar(&addr, &write, name, &body, &[("X-Nar-Size", &nar.len().to_string())]);
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    let report = s.verify();
    assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{report}");
}

#[test]
fn a_zstd_upload_is_data_frames_and_nothing_else() {
    let work = tempdir();
    let s = Served::start(work.path(), Backend::Sqlite, "", CACHES);
    let (addr, write) = (s.addr(), s.token("main", "write"));
    let (nar, hash) = nar_of(b"served as stored");
    let frames = zstd::encode_all(&nar[..], 3).expect("zstd");
    let script = zstd_skippable(b"<html><script>alert(1)</script>");
    for (what, body) in [
        ("a skippable frame first", [script.clone(), frames.clone()].concat()),
        ("a skippable frame last", [frames.clone(), script.clone()].concat()),
        ("bytes after the last frame", [frames.clone(), b"<script>".to_vec()].concat()),
        ("a truncated frame", frames[..frames.len() - 2].to_vec()),
    ] {
        let r = put_nar(&addr, &write, &format!("{}.nar.zst", nix32(&hash)), &body, &[]);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(one_line(&r).contains("zstd"), "{what}: {}", r.text());
    }
    // Two data frames are fine (a streaming compressor may write several).
    let half = nar.len() / 2;
    let two =
        [zstd::encode_all(&nar[..half], 3).expect("zstd"), zstd::encode_all(&nar[half..], 3).expect("zstd")].concat();
    let p = store_path("frames");
    let name = format!("nar/{}.nar.zst", nix32(&hash));
    let auth = bearer(&write);
    assert_eq!(request(&addr, "PUT", &format!("/main/{name}"), &[("Authorization", &auth)], &two).status, 200);
    let info = narinfo(&p, &name, flywheel_nix::narinfo::Compression::Zstd, &nar, &[]);
    let r = request(&addr, "PUT", &format!("/main/{}.narinfo", hash_part(&p)), &[("Authorization", &auth)], &info);
    assert_eq!(r.status, 200, "{}", r.text());
    // What is served is what was checked: exactly the two frames.
    assert_eq!(get(&addr, &format!("/main/{name}")).body, two);
}

#[test]
fn eight_bombs_at_once_leave_memory_bounded_and_a_real_push_goes_through() {
    let work = tempdir();
    let w = work.path();
    let s = Served::start(
        w,
        Backend::Sqlite,
        "ingest-jobs = 8\ndecoder-memory = \"16MiB\"\nmax-nar-size = \"256MiB\"",
        CACHES,
    );
    let (addr, write) = (s.addr(), s.token("main", "write"));
    let (nar, _) = nar_of(b"x");
    let before = peak_rss(s.server.pid());
    let bodies: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| match i % 3 {
            0 => (format!("x{i}.nar.xz"), xz_declaring_4gib(&nar)),
            1 => (format!("z{i}.nar.zst"), zstd_declaring_2gib()),
            _ => (format!("b{i}.nar.zst"), zstd_nar_bomb(1 << 40, 4_000)),
        })
        .collect();
    let started = Instant::now();
    let threads: Vec<_> = bodies
        .into_iter()
        .map(|(name, body)| {
            let (addr, write) = (addr.clone(), write.clone());
            std::thread::spawn(move || put_nar(&addr, &write, &name, &body, &[]).status)
        })
        .collect();
    // A real push meanwhile.
    let file = w.join("real.txt");
    std::fs::write(&file, format!("real {:?}", std::time::SystemTime::now())).expect("write");
    let real = crate::support::ok_str(crate::support::nix_store().arg("--add").arg(&file)).trim().to_string();
    crate::support::ok(
        crate::support::flywheel().args(["cache", "push", "--to", &s.server.url("main"), "--token", &write]).arg(&real),
    );
    for t in threads {
        assert_eq!(t.join().expect("thread"), 413);
    }
    let elapsed = started.elapsed();
    let peak = peak_rss(s.server.pid());
    eprintln!("eight bombs: refused in {elapsed:?}; peak RSS {} MiB (before {} MiB)", peak >> 20, before >> 20);
    // Eight decoders of at most 16 MiB each, and the server itself: far from what the bombs
    // declare (8 x 4 GiB).
    assert!(peak < before + 8 * (16 << 20) + (96 << 20), "peak {} MiB, before {} MiB", peak >> 20, before >> 20);
    assert!(served_narinfo(&addr, "main", &real, &s.key("main")).is_some());
}
