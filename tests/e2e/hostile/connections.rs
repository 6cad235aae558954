//! Class 5: slow and half-open connections. Hundreds of connections that never finish their
//! headers, bodies that trickle and stop: `/healthz` and a real push are still served, the
//! half-open connections are closed by the header deadline, a client beyond its share of
//! connections is closed at once, and a stalled body gets 408.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::support::{flywheel, nix_store, ok, ok_str, tempdir};

const LIMITS: &str = "header-timeout = \"2s\"\nidle-timeout = \"3s\"\nmax-connections-per-client = 40\n\
                      max-connections = 1000\nmax-requests-per-client = 8";

/// Whether the server has closed `s` (EOF or reset) within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue, // a 408 or 400 reply before the close
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_open_connections_do_not_stop_health_checks_or_pushes() {
    let work = tempdir();
    let w = work.path();
    let s = Served::start(w, Backend::Sqlite, LIMITS, "[caches.main]\n");
    let addr = s.addr();
    let write = s.token("main", "write");

    // 300 connections from another address: half a request line each, then nothing.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut c = connect_from([127, 0, 0, 2], &addr).expect("connect");
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        held.push(c);
    }
    // Those beyond the client's 40 are closed at once.
    std::thread::sleep(Duration::from_millis(300));
    for c in &mut held {
        if closed_within(c, Duration::from_millis(50)) {
            refused += 1;
        }
    }
    assert!(refused >= 300 - 40, "{refused} of 300 closed at once");

    // Meanwhile this client is served: health checks, and a push with `flywheel cache push`.
    let started = Instant::now();
    let r = get(&addr, "/healthz");
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    let file = w.join("pushed.txt");
    std::fs::write(&file, format!("pushed while under attack {:?}", std::time::SystemTime::now())).expect("write");
    let path = ok_str(nix_store().arg("--add").arg(&file)).trim().to_string();
    ok(flywheel().args(["cache", "push", "--to", &s.server.url("main"), "--token", &write]).arg(&path));
    assert!(served_narinfo(&addr, "main", &path, &s.key("main")).is_some());

    // The ones held are closed by the header deadline (2 s).
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut open = 0;
    for c in &mut held {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(10));
        if !closed_within(c, left) {
            open += 1;
        }
    }
    assert_eq!(open, 0, "every half-open connection closed by the header deadline");
    // And the address may connect again.
    let mut again = connect_from([127, 0, 0, 2], &addr).expect("connect");
    again.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    assert_eq!(read_reply(&mut again).status, 200);
}

#[test]
fn a_body_that_stops_gets_408_and_frees_its_clients_share() {
    let work = tempdir();
    let s = Served::start(work.path(), Backend::Sqlite, LIMITS, "[caches.main]\n");
    let addr = s.addr();
    let auth = bearer(&s.token("main", "write"));
    // More stalled uploads than the client's request share (8), each announcing 1 MB.
    let started = Instant::now();
    let stalled: Vec<_> = (0..10)
        .map(|i| {
            let (addr, auth) = (addr.clone(), auth.clone());
            std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(&addr).expect("connect");
                let head = format!(
                    "PUT /main/nar/stall{i}.nar HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 1000000\r\n\r\n"
                );
                c.write_all(head.as_bytes()).expect("head");
                c.write_all(b"nix-arch").expect("a few bytes");
                c.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                read_reply(&mut c)
            })
        })
        .collect();
    // The same client's health check is not queued behind them.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert_eq!(get(&addr, "/healthz").status, 200);
    assert!(t.elapsed() < Duration::from_secs(1));
    for h in stalled {
        let r = h.join().expect("thread");
        assert!(r.status == 408 || r.status == 503, "{} {}", r.status, r.text());
    }
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    // Its share is free again.
    let r = request(&addr, "POST", "/main/api/v1/missing", &[("Authorization", &auth)], b"[]");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn connection_limits_are_in_the_config_and_checked() {
    let work = tempdir();
    let w = work.path();
    let config = w.join("bad.toml");
    for bad in ["max-connections = 0", "idle-timeout = \"0s\"", "decoder-memory = \"4KiB\"", "max-lanes = 0"] {
        std::fs::write(&config, format!("{bad}\n")).expect("write");
        let out = flywheel()
            .args(["cache", "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(w.join("d"))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("serve");
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = crate::support::one_line_error(&out);
        assert!(err.contains(bad.split(' ').next().unwrap_or(bad)), "{bad}: {err}");
    }
}
