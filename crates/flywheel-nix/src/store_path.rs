//! Store paths: parsing, validation and computation.
//!
//! The algorithms come from `nix-derivation` (nix32, the hash-part and name rules, text,
//! source, fixed-output and derivation-output paths), which this crate re-exports and checks
//! against real Nix in its tests. What is added here is what a command line needs: turning a
//! user's argument (a store path, a path inside one, or a symlink such as `./result`) into the
//! store path it names, as Nix's `followLinksToStorePath` does.
//!
//! ```
//! use flywheel_nix::store_path::{source_path, StorePath};
//! let p: StorePath = "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-net-tools-1.60".parse().unwrap();
//! assert_eq!(p.name(), "net-tools-1.60");
//! assert!("/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44l!-x".parse::<StorePath>().is_err());
//! // `nix-store --add` of a tree whose NAR hash is all zeroes:
//! let added = source_path("src", [0; 32]).unwrap();
//! assert_eq!(added.name(), "src");
//! ```

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use nix_derivation::nixbase32;
pub use nix_derivation::store_path::Error as StorePathError;
pub use nix_derivation::{CAHash, NixHash, StoreDir, StorePath};

/// The store directory Nix uses unless told otherwise (`NIX_STORE_DIR`).
pub fn default_store_dir() -> StoreDir {
    std::env::var("NIX_STORE_DIR").ok().and_then(|d| StoreDir::new(d).ok()).unwrap_or_default()
}

/// Where the files of the store `store_dir` are on disk for a store rooted at `root` (`/` for
/// the system store, or a chroot store's root as in `nix --store /tmp/x`).
pub fn real_store(root: &Path, store_dir: &StoreDir) -> PathBuf {
    root.join(store_dir.as_str().trim_start_matches('/'))
}

/// Why a command-line argument does not name a store path.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not in the Nix store {store}", path.display())]
    NotInStore { path: PathBuf, store: String },
    #[error("{}", path.display())]
    Invalid { path: PathBuf, source: StorePathError },
}

/// The store path an argument names: the path itself, the store path above a path inside a
/// store object, or where a symlink (like `./result`) points.
pub fn resolve(arg: &Path, store_dir: &StoreDir) -> Result<StorePath, ResolveError> {
    if let Ok(p) = store_dir.parse_path(arg.as_os_str().as_bytes()) {
        return Ok(p);
    }
    let real = std::fs::canonicalize(arg).map_err(|source| ResolveError::Io { path: arg.to_path_buf(), source })?;
    let rest = real
        .strip_prefix(store_dir.as_str())
        .map_err(|_| ResolveError::NotInStore { path: arg.to_path_buf(), store: store_dir.as_str().to_string() })?;
    let first = rest
        .components()
        .next()
        .ok_or_else(|| ResolveError::NotInStore { path: arg.to_path_buf(), store: store_dir.as_str().to_string() })?;
    StorePath::from_basename(first.as_os_str().as_bytes())
        .map_err(|source| ResolveError::Invalid { path: arg.to_path_buf(), source })
}

/// The path `nix-store --add` gives a tree whose NAR has SHA-256 `nar_sha256` (no references).
pub fn source_path(name: &str, nar_sha256: [u8; 32]) -> Result<StorePath, StorePathError> {
    StoreDir::default().build_ca_path(name, &CAHash::Nar(NixHash::Sha256(nar_sha256)), &BTreeSet::new(), false)
}

/// The path `builtins.toFile` gives `content` with the given references.
pub fn text_path<'a>(
    name: &str,
    content: &[u8],
    references: impl IntoIterator<Item = &'a StorePath>,
) -> Result<StorePath, StorePathError> {
    StoreDir::default().build_text_path(name, content, references)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ALPHABET: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    proptest! {
        #[test]
        fn nix32_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let encoded = nixbase32::encode(&bytes);
            prop_assert_eq!(encoded.len(), (bytes.len() * 8).div_ceil(5));
            prop_assert!(encoded.chars().all(|c| ALPHABET.contains(c)));
            prop_assert_eq!(nixbase32::decode(encoded.as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn nix32_refuses_letters_outside_its_alphabet(pos in 0usize..52, bad in "[eotuA-Z!-]") {
            let mut s: Vec<u8> = nixbase32::encode(&[0x5a; 32]).into_bytes();
            s[pos] = bad.as_bytes()[0];
            prop_assert!(nixbase32::decode(&s).is_err());
        }

        #[test]
        fn store_paths_render_and_parse_back(digest in any::<[u8; 20]>(), name in "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}") {
            let path = StorePath::from_parts(digest, &name).unwrap();
            let rendered = path.to_string();
            prop_assert_eq!(rendered.len(), "/nix/store/".len() + 32 + 1 + name.len());
            prop_assert_eq!(rendered.parse::<StorePath>().unwrap(), path.clone());
            let dir = tempfile::tempdir().unwrap();
            prop_assert!(resolve(dir.path(), &StoreDir::default()).is_err());
            prop_assert_eq!(resolve(Path::new(&rendered), &StoreDir::default()).unwrap(), path);
        }
    }

    #[test]
    fn resolve_takes_the_store_path_above_a_subpath_and_follows_links() {
        let store = tempfile::tempdir().unwrap();
        let dir = StoreDir::new(store.path().to_str().unwrap()).unwrap();
        let object = store.path().join("00bgd045z0d4icpbc2yyz4gx48ak44la-tool");
        std::fs::create_dir_all(object.join("bin")).unwrap();
        std::fs::write(object.join("bin/tool"), "").unwrap();
        let expected = dir.parse_path(object.as_os_str().as_bytes()).unwrap();
        assert_eq!(resolve(&object.join("bin/tool"), &dir).unwrap(), expected);
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&object, link.path().join("result")).unwrap();
        assert_eq!(resolve(&link.path().join("result"), &dir).unwrap(), expected);
        assert!(matches!(resolve(link.path(), &dir), Err(ResolveError::NotInStore { .. })));
    }
}
