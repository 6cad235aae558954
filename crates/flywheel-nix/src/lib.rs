//! Nix's formats, for flywheel: NAR, store paths, narinfo and signatures, signing keys, and
//! the local store database.
//!
//! One module per format. Where a maintained crate does the job it is used and re-exported
//! (`nix-derivation` for store paths, nix32 and derivations; `nix-narinfo` for narinfo and
//! signature verification); what is written here is what no crate does well: a streaming NAR
//! writer that hashes in the same pass, a strict streaming NAR reader and a restore that
//! cannot escape its target, Nix's secret-key format, and reading Nix's SQLite database.
//! docs/dependencies.md says why for each.

#![forbid(unsafe_code)]

pub mod derivation;
pub mod keys;
pub mod nar;
pub mod narinfo;
pub mod store_db;
pub mod store_path;

pub use nix_derivation::{CAHash, NixHash, StoreDir, StorePath};
