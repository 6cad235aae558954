//! Class 6: uploaded logs and listings are served from the status page's origin, so nothing a
//! writer uploads may run there: logs are plain text, listings JSON, whatever Content-Type they
//! came with; every response says `nosniff` and carries a policy that allows no script.

use crate::harness::*;
use crate::support::tempdir;

#[test]
fn logs_and_listings_are_served_inert_and_every_response_forbids_scripts() {
    let work = tempdir();
    let s = Served::start(work.path(), Backend::Sqlite, "", "[caches.main]\n");
    let addr = s.addr();
    let write = s.token("main", "write");
    let auth = bearer(&write);
    let p = store_path("listed");
    let (nar, _) = nar_of(b"x");
    assert_eq!(push_raw(&addr, "main", &write, &p, &nar, &[]).1.status, 200);
    let script = b"<html><body><script>fetch('/api/v1/status').then(r => r.text()).then(alert)</script>";
    let log = format!("log/{}-evil.drv", hash_part(&store_path("x")));
    let listing = format!("{}.ls", hash_part(&p));
    for name in [&log, &listing] {
        let r = request(
            &addr,
            "PUT",
            &format!("/main/{name}"),
            &[("Authorization", &auth), ("Content-Type", "text/html; charset=utf-8")],
            script,
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
    }
    let served = get(&addr, &format!("/main/{log}"));
    assert_eq!(served.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(served.body, script, "kept as sent, served as text");
    let served = get(&addr, &format!("/main/{listing}"));
    assert_eq!(served.header("content-type"), Some("application/json"));

    // An encoding that is no token is refused; Nix's own are kept.
    for (enc, status) in [("br", 200), ("xz", 200), ("text/html\" onload=x", 400), ("a b", 400)] {
        let r = request(
            &addr,
            "PUT",
            &format!("/main/{log}"),
            &[("Authorization", &auth), ("Content-Encoding", enc)],
            b"x",
        );
        assert_eq!(r.status, status, "{enc}: {}", r.text());
    }

    // Every response of the origin: the page, a narinfo, a NAR, an error, a log.
    for path in [
        "/",
        "/api/v1/status",
        &format!("/main/{}.narinfo", hash_part(&p)),
        "/main/nope",
        "/nope",
        &format!("/main/{log}"),
    ] {
        let r = get(&addr, path);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{path}");
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{path}: {csp}");
    }
}
