//! narinfo records: parsing, rendering and verification come from `nix-narinfo`; this adds
//! building a signed record from a store path's info.
//!
//! ```
//! use flywheel_nix::{keys::SecretKey, narinfo, store_db::PathInfo, NixHash, StoreDir};
//! let key = SecretKey::generate("test-1").unwrap();
//! let info = PathInfo {
//!     path: "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-hello".parse().unwrap(),
//!     nar_hash: NixHash::Sha256([7; 32]),
//!     nar_size: 128,
//!     references: Default::default(),
//!     deriver: None,
//!     registration_time: 0,
//!     ultimate: true,
//!     signatures: vec![],
//!     ca: None,
//! };
//! let file = narinfo::FileRef { url: "nar/x.nar.zst".into(), compression: narinfo::Compression::Zstd, hash: None, size: None };
//! let record = narinfo::signed(&StoreDir::default(), &info, file, &key).unwrap();
//! assert!(record.has_valid_signature(&StoreDir::default(), &[key.public().0]));
//! ```

pub use nix_narinfo::{BuildError, Compression, NarInfo, NixSignature, ParseError, TrustedPublicKey};

use crate::keys::SecretKey;
use crate::store_db::PathInfo;
use crate::{NixHash, StoreDir};

/// Where and how the NAR of a narinfo is stored.
#[derive(Clone, Debug)]
pub struct FileRef {
    pub url: String,
    pub compression: Compression,
    pub hash: Option<NixHash>,
    pub size: Option<u64>,
}

/// A narinfo for `info`, carrying the signatures the store already has plus one by `key`
/// (replacing an older signature by a key of the same name).
pub fn signed(store_dir: &StoreDir, info: &PathInfo, file: FileRef, key: &SecretKey) -> Result<NarInfo, BuildError> {
    let own = key.sign(info.fingerprint(store_dir).as_bytes());
    let mut signatures: Vec<NixSignature> =
        info.signatures.iter().filter(|s| s.key_name != key.name()).cloned().collect();
    signatures.push(own);
    NarInfo::builder_in(store_dir.clone(), info.path.clone(), file.url, info.nar_hash.clone(), info.nar_size)
        .compression(file.compression)
        .file_hash(file.hash)
        .file_size(file.size)
        .references(info.references.iter().cloned())
        .deriver(info.deriver.clone())
        .content_address(info.ca.clone())
        .signatures(signatures)
        .build()
}
