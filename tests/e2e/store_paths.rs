//! nix32, store path rules, and text, source, fixed-output and derivation output paths,
//! computed by flywheel-nix and compared with what real Nix makes.

#![allow(clippy::unwrap_used)] // a test that cannot read its own fixture should panic

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use flywheel_nix::derivation::Derivations;
use flywheel_nix::nar::hash_path;
use flywheel_nix::store_db::StoreDb;
use flywheel_nix::store_path::{nixbase32, source_path, text_path, CAHash, NixHash, StoreDir, StorePath};
use sha2::{Digest, Sha256};
use support::*;

fn store_path(s: &str) -> StorePath {
    s.trim().trim_matches('"').parse().unwrap_or_else(|e| panic!("{s}: {e:?}"))
}

#[test]
fn nix32_matches_nix_hash_both_ways() {
    for seed in 0..24u32 {
        let digest: [u8; 32] = Sha256::digest(seed.to_le_bytes()).into();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let nix = ok_str(Command::new("nix-hash").args(["--type", "sha256", "--to-base32", &hex]));
        assert_eq!(nixbase32::encode(&digest), nix.trim());
        assert_eq!(nixbase32::decode(nix.trim().as_bytes()).unwrap(), digest);
        let back = ok_str(Command::new("nix-hash").args(["--type", "sha256", "--to-base16", nix.trim()]));
        assert_eq!(back.trim(), hex);
    }
    // 20-byte digests, as in store path hash parts.
    let path = &fixture().root;
    let hash_part = &path.file_name().unwrap().to_str().unwrap()[..32];
    let decoded = nixbase32::decode(hash_part.as_bytes()).unwrap();
    assert_eq!(decoded.len(), 20);
    assert_eq!(nixbase32::encode(&decoded), hash_part);
    assert!(nixbase32::decode(b"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee").is_err(), "e is not in Nix's alphabet");
}

#[test]
fn store_path_names_are_validated_as_nix_does() {
    let accepted_by_both = ["x", "x?=+", "a-b.c_d", "...x", "+", &"n".repeat(211)];
    let refused_by_both = ["a b", "a/b", "ümlaut", "a:b", "", &"n".repeat(212), ".", ".."];
    // Newer Nix refuses names starting `.-` or `..-`, which 2.8 still accepted; we follow the newer rule.
    let newer_rule = [".-x", "..-x"];
    let hash = "00bgd045z0d4icpbc2yyz4gx48ak44la";
    let nix_accepts = |name: &str| {
        let expr = format!("builtins.toFile \"{name}\" \"x\"");
        Command::new("nix-instantiate").args(["--eval", "-E", &expr]).output().unwrap().status.success()
    };
    for name in accepted_by_both {
        assert!(format!("/nix/store/{hash}-{name}").parse::<StorePath>().is_ok(), "{name}");
        assert!(nix_accepts(name), "{name}");
    }
    for name in refused_by_both {
        assert!(format!("/nix/store/{hash}-{name}").parse::<StorePath>().is_err(), "{name}");
        if !name.is_empty() && name != "." && name != ".." {
            assert!(!nix_accepts(name), "{name}");
        }
    }
    for name in newer_rule {
        assert!(format!("/nix/store/{hash}-{name}").parse::<StorePath>().is_err(), "{name}");
    }
    for bad_hash in
        ["00bgd045z0d4icpbc2yyz4gx48ak44l", "00bgd045z0d4icpbc2yyz4gx48ak44le", "00BGD045Z0D4ICPBC2YYZ4GX48AK44LA"]
    {
        assert!(format!("/nix/store/{bad_hash}-x").parse::<StorePath>().is_err(), "{bad_hash}");
    }
    assert!("/usr/store/00bgd045z0d4icpbc2yyz4gx48ak44la-x".parse::<StorePath>().is_err());
}

#[test]
fn text_paths_match_builtins_to_file() {
    let eval = |expr: &str| ok_str(Command::new("nix-instantiate").args(["--eval", "-E", expr]));
    let plain = eval(r#"builtins.toFile "greeting" "hello, world\n""#);
    assert_eq!(text_path("greeting", b"hello, world\n", []).unwrap(), store_path(&plain));

    let dep = store_path(&plain);
    let with_ref = eval(r#"let g = builtins.toFile "greeting" "hello, world\n"; in builtins.toFile "uses" "cat ${g}""#);
    let content = format!("cat {dep}");
    assert_eq!(text_path("uses", content.as_bytes(), [&dep]).unwrap(), store_path(&with_ref));
    assert_ne!(text_path("uses", content.as_bytes(), []).unwrap(), store_path(&with_ref), "references must count");
}

#[test]
fn source_and_fixed_output_paths_match_nix_store_add() {
    let work = tempdir();
    let tree = work.path().join("src-tree");
    fs::create_dir_all(tree.join("lib")).unwrap();
    fs::write(tree.join("lib/a.txt"), b"a\n").unwrap();
    fs::write(tree.join("run"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("lib/a.txt", tree.join("link")).unwrap();

    // nix-store --add: a "source" path from the NAR hash.
    let added = store_path(&ok_str(nix_store().arg("--add").arg(&tree)));
    let nar = hash_path(&tree).unwrap();
    assert_eq!(source_path("src-tree", nar.sha256).unwrap(), added);

    // --add-fixed --recursive sha256 is the same kind of path; flat --add-fixed hashes the bytes.
    let file = work.path().join("blob");
    fs::write(&file, b"some bytes\n").unwrap();
    let recursive = store_path(&ok_str(nix_store().args(["--add-fixed", "--recursive", "sha256"]).arg(&file)));
    let ca = CAHash::Nar(NixHash::Sha256(hash_path(&file).unwrap().sha256));
    assert_eq!(StoreDir::default().build_ca_path("blob", &ca, &BTreeSet::new(), false).unwrap(), recursive);

    let flat = store_path(&ok_str(nix_store().args(["--add-fixed", "sha256"]).arg(&file)));
    let ca = CAHash::Flat(NixHash::Sha256(Sha256::digest(b"some bytes\n").into()));
    assert_eq!(StoreDir::default().build_ca_path("blob", &ca, &BTreeSet::new(), false).unwrap(), flat);
}

/// `nix-store --query --outputs` of a derivation, by output path name.
fn nix_outputs(drv: &Path) -> BTreeSet<String> {
    ok_str(nix_store().args(["--query", "--outputs"]).arg(drv)).lines().map(str::to_string).collect()
}

fn ours(derivations: &mut Derivations, drv: &StorePath) -> BTreeSet<String> {
    derivations
        .output_paths(drv)
        .unwrap_or_else(|e| panic!("{drv}: {e}"))
        .into_values()
        .map(|p| p.expect("input-addressed or fixed output").to_string())
        .collect()
}

#[test]
fn derivation_output_paths_match_nix_for_the_whole_fixture() {
    let db = StoreDb::open_default().unwrap();
    let mut derivations = Derivations::new(StoreDir::default(), PathBuf::from("/nix/store"));
    let mut checked = 0;
    for p in &fixture().paths {
        let info = db.query(&store_path(p.to_str().unwrap())).unwrap().expect("valid path");
        let Some(drv) = info.deriver else { continue };
        let drv_file = PathBuf::from(drv.to_string());
        if !drv_file.exists() {
            continue;
        }
        assert_eq!(derivations.drv_path(&drv).unwrap(), drv, "recomputed .drv path");
        let computed = ours(&mut derivations, &drv);
        assert_eq!(computed, nix_outputs(&drv_file), "{drv}");
        assert!(computed.contains(p.to_str().unwrap()));
        checked += 1;
    }
    assert!(checked > 50, "only {checked} derivations checked");
}

#[test]
fn fixed_output_and_multi_output_derivations_match_nix() {
    let work = tempdir();
    let expr = work.path().join("drvs.nix");
    fs::write(
        &expr,
        r#"
        let
          base = { system = builtins.currentSystem; builder = "/bin/sh"; };
          fixed = derivation (base // {
            name = "fetched"; args = [ "-c" "echo hi > $out" ];
            outputHashMode = "flat"; outputHashAlgo = "sha256";
            outputHash = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
          });
          recursive = derivation (base // {
            name = "unpacked"; args = [ "-c" "mkdir $out" ];
            outputHashMode = "recursive"; outputHashAlgo = "sha256";
            outputHash = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
          });
        in {
          inherit fixed recursive;
          multi = derivation (base // {
            name = "multi"; outputs = [ "out" "dev" "doc" ];
            args = [ "-c" "echo ${fixed} ${recursive}" ];
          });
          chained = derivation (base // { name = "chained"; args = [ "-c" "echo ${fixed}" ]; });
        }
        "#,
    )
    .unwrap();
    let drvs = ok_str(Command::new("nix-instantiate").arg(&expr));
    let mut derivations = Derivations::new(StoreDir::default(), PathBuf::from("/nix/store"));
    let drvs: Vec<&str> = drvs.lines().collect();
    assert_eq!(drvs.len(), 4);
    for drv in drvs {
        let path = store_path(drv);
        assert_eq!(derivations.drv_path(&path).unwrap(), path);
        assert_eq!(ours(&mut derivations, &path), nix_outputs(Path::new(drv)), "{drv}");
    }
}
