//! narinfo records, as the server takes them (`PUT /<cache>/<hash>.narinfo`) and as the pull
//! client reads them from a cache it trusts only once a signature verifies:
//! - parsing never panics, and refuses a record over nix-narinfo's limit;
//! - an accepted record's canonical rendering parses back to an equal record and is a fixed point;
//! - flywheel's fingerprint (what it signs) is nix-narinfo's (what it verifies), and a record
//!   that verifies with the seed key carries exactly the signature flywheel makes with it;
//! - verification never panics, and never accepts a key of the right name but the wrong bytes;
//! - what the server keeps of a record (`server::narinfo::accept`, with the signatures in one
//!   column as the indexes keep them) reads back as it went in, and it renders it again
//!   (`server::narinfo::render`): signed with the cache's key, a record that parses back to the
//!   same values and verifies, with no signature the uploader did not send. A record it refuses
//!   is one with a NarHash that is not sha256 or a signature that is not one token.
#![no_main]

use std::sync::OnceLock;

use flywheel_nix::keys::SecretKey;
use flywheel_nix::narinfo::{NarInfo, NixSignature, TrustedPublicKey};
use flywheel_nix::store_db::PathInfo;
use flywheel_nix::store_path::default_store_dir;
use flywheel_nix::{NixHash, StoreDir};
use libfuzzer_sys::fuzz_target;

/// The key fuzz/seeds/make_seeds.py signs the seed narinfos with.
const SEED_KEY: &str =
    "fuzz-1:XmwBVTEEDWVmzwgfh+dhoVPxT2REfZBqOZpjhh6+85mm5VV1YgRA/GA78bbypPhlMzrNjOaplr93ld8prfWbxQ==";
/// The cache's own key, as the server signs what it serves.
const CACHE_KEY: &str =
    "cache-1:CVt/U6VQzJTt9l1Rbf9NoIMc6D5Y+5OFPe8qUCby/3XTM1lE0JoKe/QEFwV8mz/RDYa/GwCCeoHrsLeJmspbOA==";

struct Fixed {
    store_dir: StoreDir,
    seed: SecretKey,
    cache: SecretKey,
    /// The seed key's name with the cache key's bytes: nothing signed with it.
    impostor: TrustedPublicKey,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let seed = SecretKey::parse(SEED_KEY).expect("seed key");
        let cache = SecretKey::parse(CACHE_KEY).expect("cache key");
        let impostor = TrustedPublicKey { name: seed.name().to_string(), key: cache.public().0.key };
        Fixed { store_dir: default_store_dir(), seed, cache, impostor }
    })
}

fn decoded(sig: &NixSignature) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(&sig.encoded).ok()
}

fn path_info(info: &NarInfo) -> PathInfo {
    PathInfo {
        path: info.store_path().clone(),
        nar_hash: info.nar_hash().clone(),
        nar_size: info.nar_size(),
        references: info.references().clone(),
        deriver: info.deriver().cloned(),
        registration_time: 0,
        ultimate: false,
        signatures: info.signatures().to_vec(),
        ca: info.content_address().cloned(),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixed();
    let sd = &f.store_dir;
    let parsed = NarInfo::parse_in(sd, data);
    if data.len() > nix_narinfo::MAX_NARINFO_SIZE {
        assert!(parsed.is_err(), "a record over the size limit was accepted");
    }
    let Ok(info) = parsed else { return };

    // Canonical rendering: parses back to the same record, and renders to the same bytes.
    // Except for a value that ends in CR (`URL: x\r\r\n`): nix-narinfo keeps the CR, writes
    // the value back with `\n`, and so reads the rendering back without it. flywheel renders
    // only records it built itself, never one it parsed, so that is nix-narinfo's to fix.
    let canonical = info.to_canonical_bytes();
    let again = NarInfo::parse_in(sd, &canonical).unwrap_or_else(|e| {
        panic!("the canonical rendering does not parse: {e}\n{}", String::from_utf8_lossy(&canonical))
    });
    let value_ends_in_cr = std::str::from_utf8(data).is_ok_and(|t| t.lines().any(|l| l.ends_with('\r')));
    if !value_ends_in_cr {
        assert_eq!(again, info, "the canonical rendering parses to another record");
        assert_eq!(again.to_canonical_bytes(), canonical, "the canonical rendering is not a fixed point");
    } else {
        let third = NarInfo::parse_in(sd, &again.to_canonical_bytes()).expect("a second rendering parses");
        assert_eq!(third, again, "the second rendering parses to another record");
    }

    // What flywheel signs is what nix-narinfo (and Nix) verify.
    let pi = path_info(&info);
    let fingerprint = info.fingerprint(sd);
    assert_eq!(pi.fingerprint(sd), fingerprint, "flywheel's fingerprint differs from nix-narinfo's");
    let seed_pub = f.seed.public().0;
    if info.has_valid_signature(sd, std::slice::from_ref(&seed_pub)) {
        // Ed25519 is deterministic: the valid signature is the one flywheel makes.
        let ours = decoded(&f.seed.sign(fingerprint.as_bytes()));
        assert!(
            info.signatures().iter().any(|s| s.key_name == f.seed.name() && decoded(s) == ours),
            "a signature verifies that flywheel's signing would not have made"
        );
    }
    assert!(
        !info.has_valid_signature(sd, std::slice::from_ref(&f.impostor)),
        "a key of the right name but other bytes verifies"
    );
    for sig in info.signatures() {
        let _ = sig.verify(fingerprint.as_bytes(), &[seed_pub.clone(), f.impostor.clone()]);
        let _ = sig.canonicalized();
    }
    let _ = info.is_content_addressed(sd);

    // What the server keeps of it (`server::narinfo::accept`, with the signatures in one column
    // as both indexes keep them), rendered again, signed by the cache, for every GET
    // (`server::narinfo::render`).
    let hash_part = &info.store_path().to_basename()[..32];
    let Ok((uploaded, _)) = flywheel_cache::server::narinfo::accept(sd, hash_part, data) else {
        // Refused: a NarHash that is not sha256, or a signature that is not one token.
        let sha = matches!(info.nar_hash(), NixHash::Sha256(_));
        let tokens = info.signatures().iter().all(|s| !s.to_string().chars().any(|c| c.is_whitespace() || c.is_control()));
        assert!(!(sha && tokens), "the server refused a record it should keep");
        return;
    };
    let sent_sigs = uploaded.sigs.clone();
    let nar = flywheel_cache::index::NarRecord {
        nar_hash: uploaded.nar_hash,
        nar_size: uploaded.nar_size,
        file_hash: [1; 32],
        file_size: 1,
        compression: "zstd".into(),
    };
    let mut kept = uploaded.with_nar(nar);
    kept.sigs = flywheel_cache::index::sigs_of_column(&flywheel_cache::index::sigs_column(&kept.sigs));
    assert_eq!(kept.sigs, sent_sigs, "the index gives back other signatures than it was given");
    let body = flywheel_cache::server::narinfo::render(sd, &f.cache, &kept)
        .unwrap_or_else(|e| panic!("the server cannot render a record it accepted: {e}"));
    let pulled = NarInfo::parse_in(sd, &body).unwrap_or_else(|e| panic!("the server's rendering does not parse: {e}"));
    assert_eq!(pulled.to_canonical_bytes(), body, "the served record is not canonical");
    assert_eq!(pulled.store_path(), info.store_path());
    assert_eq!((pulled.nar_hash(), pulled.nar_size()), (info.nar_hash(), info.nar_size()));
    assert_eq!(pulled.references(), info.references());
    assert_eq!(pulled.deriver(), info.deriver());
    assert_eq!(pulled.content_address(), info.content_address());
    assert!(pulled.has_valid_signature(sd, &[f.cache.public().0]), "the server's own signature does not verify");
    if info.has_valid_signature(sd, std::slice::from_ref(&seed_pub)) {
        assert!(pulled.has_valid_signature(sd, &[seed_pub]), "the uploader's valid signature was lost");
    }
    // Every signature served is the cache's own or one the uploader sent, under the key name
    // it was sent with.
    for sig in pulled.signatures() {
        let sig = sig.to_string();
        assert!(
            sig.starts_with(&format!("{}:", f.cache.name())) || sent_sigs.contains(&sig),
            "the server serves a signature nobody sent: {sig:?} (sent: {sent_sigs:?})"
        );
    }
});
