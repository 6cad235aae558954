//! Narinfos as the server takes them and gives them: what it keeps of an uploaded one (every
//! field checked; nothing of it trusted but as a claim the uploaded NAR must bear out), and the
//! signed record it serves from what it kept. Pure functions: the route calls them, and so
//! does the fuzzer (fuzz/fuzz_targets/narinfo.rs).

use flywheel_nix::keys::SecretKey;
use flywheel_nix::narinfo::{self, Compression, FileRef, NarInfo};
use flywheel_nix::store_db::PathInfo;
use flywheel_nix::{CAHash, NixHash, StoreDir};

use crate::index::{NarRecord, PathRecord};

/// What the server keeps of an uploaded narinfo until its NAR is checked against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    /// The full store path.
    pub store_path: String,
    /// Where the client says it put the NAR (`nar/...`): the upload to look for.
    pub url: String,
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Full store paths, sorted.
    pub references: Vec<String>,
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// As sent (`name:base64`), each one token.
    pub sigs: Vec<String>,
}

/// Parses and checks a narinfo uploaded as `<hash_part>.narinfo`: a one-line reason when it is
/// refused.
pub fn accept(store_dir: &StoreDir, hash_part: &str, body: &[u8]) -> Result<(Uploaded, NarInfo), String> {
    let info = NarInfo::parse_in(store_dir, body).map_err(|e| format!("not a valid narinfo: {e}"))?;
    let store_path = store_dir.render_path(info.store_path());
    if !info.store_path().to_basename().starts_with(hash_part) {
        return Err(format!("the narinfo is for {store_path}, not for {hash_part}"));
    }
    let NixHash::Sha256(nar_hash) = info.nar_hash() else {
        return Err("NarHash must be sha256".into());
    };
    // Signatures are kept as tokens: a key name with whitespace would come back as another
    // signature, under a name its uploader never sent.
    let sigs: Vec<String> = info.signatures().iter().map(|s| s.to_string()).collect();
    if let Some(bad) = sigs.iter().find(|s| s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(format!(
            "Sig {:?}: a signature is one token, name:base64",
            bad.chars().take(80).collect::<String>()
        ));
    }
    let uploaded = Uploaded {
        store_path,
        url: info.url().to_string(),
        nar_hash: *nar_hash,
        nar_size: info.nar_size(),
        references: info.references().iter().map(|r| store_dir.render_path(r)).collect(),
        deriver: info.deriver().map(|d| store_dir.render_path(d)),
        ca: info.content_address().map(|c| c.to_string()),
        sigs,
    };
    Ok((uploaded, info))
}

impl Uploaded {
    /// The path as the index keeps it, with the NAR the server checked.
    pub fn with_nar(self, nar: NarRecord) -> PathRecord {
        PathRecord {
            store_path: self.store_path,
            nar,
            references: self.references,
            deriver: self.deriver,
            ca: self.ca,
            sigs: self.sigs,
        }
    }
}

/// The served narinfo of `p`: the stored NAR's URL and hashes, the uploader's signatures and
/// one by `key`.
pub fn render(store_dir: &StoreDir, key: &SecretKey, p: &PathRecord) -> Result<Vec<u8>, String> {
    let parse = |s: &str| store_dir.parse_path(s.as_bytes()).map_err(|e| format!("{s}: {e}"));
    let info = PathInfo {
        path: parse(&p.store_path)?,
        nar_hash: NixHash::Sha256(p.nar.nar_hash),
        nar_size: p.nar.nar_size,
        references: p.references.iter().map(|r| parse(r)).collect::<Result<_, _>>()?,
        deriver: p.deriver.as_deref().map(parse).transpose()?,
        registration_time: 0,
        ultimate: false,
        signatures: p.sigs.iter().filter_map(|s| s.parse().ok()).collect(),
        ca: p.ca.as_deref().map(|c| c.parse::<CAHash>().map_err(|e| format!("CA {c}: {e}"))).transpose()?,
    };
    let file = FileRef {
        url: nar_url(&p.nar.nar_hash),
        compression: Compression::Zstd,
        hash: Some(NixHash::Sha256(p.nar.file_hash)),
        size: Some(p.nar.file_size),
    };
    let record = narinfo::signed(store_dir, &info, file, key).map_err(|e| e.to_string())?;
    Ok(record.to_canonical_bytes())
}

/// Where the server serves a stored NAR.
pub fn nar_url(nar_hash: &[u8; 32]) -> String {
    format!("nar/{}.nar.zst", nix_derivation::nixbase32::encode(nar_hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_with_whitespace_is_refused_not_split() {
        let sd = flywheel_nix::store_path::default_store_dir();
        let body = "StorePath: /nix/store/r8s84s5jn9y9kjyzr4kvjwqlgp08gng4-hello\nURL: nar/x.nar\nCompression: none\n\
                    NarHash: sha256:14a12pvvbdlzx0n4npprjl796ygl9hzmpkpkdmv6jnj98cvl8pk1\nNarSize: 8\nReferences: \n\
                    Sig: upstream-1 other:pKvURIxJVi2CgRXROh/M6pJ/UrTVRZKX+LQ+QtqJI4vBNibkPcs43bCCSIkn7JBPtCBXRDmD6IWFF51QVRr+Yg==\n";
        let e = accept(&sd, "r8s84s5jn9y9kjyzr4kvjwqlgp08gng4", body.as_bytes()).expect_err("refused");
        assert!(e.contains("one token"), "{e}");
        let ok = body.replace("upstream-1 other", "other");
        let (kept, _) = accept(&sd, "r8s84s5jn9y9kjyzr4kvjwqlgp08gng4", ok.as_bytes()).expect("accepted");
        assert_eq!(kept.sigs.len(), 1);
        assert!(accept(&sd, "0000000000000000000000000000000a", ok.as_bytes()).is_err(), "another path's name");
    }
}
