//! Class 2: a private cache read through a public one. A writer of a public cache who knows a
//! private path's store path, NarHash and NarSize (every machine's Nix database has them) must
//! not be able to make the private NAR readable, nor learn whether it exists anywhere.

use crate::harness::*;
use crate::support::tempdir;

const CACHES: &str = "[caches.main]\n[caches.secret]\nvisibility = \"private\"\n";

#[test]
fn a_private_nar_cannot_be_named_into_a_public_cache_nor_found_out() {
    for backend in BOTH {
        let work = tempdir();
        let s = Served::start(work.path(), backend, "", CACHES);
        let addr = s.addr();
        let (secret_write, public_write) = (s.token("secret", "write"), s.token("main", "write"));
        let q = store_path("private-thing");
        let (nar, hash) = nar_of(b"the private build's bytes");
        assert_eq!(push_raw(&addr, "secret", &secret_write, &q, &nar, &[]).1.status, 200);
        let auth = bearer(&public_write);

        // The public cache's writer names the private NAR in a narinfo of its own: for the
        // same store path, and for another one.
        let url = format!("nar/{}.nar.zst", nix32(&hash));
        let mut answers = Vec::new();
        for (path, claimed) in [(q.clone(), hash), (store_path("decoy"), hash), (store_path("random"), sha(b"nothing"))]
        {
            let info = narinfo_claiming(&path, &url, claimed, nar.len() as u64);
            let r = request(
                &addr,
                "PUT",
                &format!("/main/{}.narinfo", hash_part(&path)),
                &[("Authorization", &auth)],
                &info,
            );
            assert_eq!(r.status, 400, "{backend:?}: {}", r.text());
            // The answer is the same whether the NAR exists elsewhere or not.
            answers.push(r.text().replace(&url, "URL"));
        }
        assert!(answers.windows(2).all(|a| a[0] == a[1]), "{answers:?}");
        assert!(answers[0].contains("was not uploaded to this cache"), "{}", answers[0]);

        // Nothing of it is readable anonymously, and the public cache lacks the path.
        assert_eq!(get(&addr, &format!("/main/nar/{}.nar.zst", nix32(&hash))).status, 404);
        assert_eq!(request(&addr, "HEAD", &format!("/main/nar/{}.nar.zst", nix32(&hash)), &[], b"").status, 404);
        assert_eq!(get(&addr, &format!("/main/{}.narinfo", hash_part(&q))).status, 404);
        assert_eq!(get(&addr, &format!("/secret/{}.narinfo", hash_part(&q))).status, 401);
        let body = serde_json::to_vec(&[&q]).expect("json");
        let missing = request(&addr, "POST", "/main/api/v1/missing", &[("Authorization", &auth)], &body);
        let missing: Vec<String> = serde_json::from_slice(&missing.body).expect("json");
        assert_eq!(missing, std::slice::from_ref(&q), "what the public cache lacks, and nothing about others");

        // The public writer may upload the same bytes itself (had it them): then it is its own.
        let (put, info) = push_raw(&addr, "main", &public_write, &q, &nar, &[]);
        assert_eq!((put.status, info.status), (200, 200));
        assert_eq!(get(&addr, &format!("/main/nar/{}.nar.zst", nix32(&hash))).status, 200);
        let report = s.verify();
        assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{report}");
        assert_eq!(report["nars"], 1, "the bytes are stored once: {report}");
    }
}
