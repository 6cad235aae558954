//! flywheel's Nix binary cache: for now, pushing a closure into a signed `file://` cache that
//! real Nix reads with `nix copy --from file:///DIR`. The HTTP server, the pull client and
//! garbage collection build on the same layout and invariants (a narinfo is written only after
//! its NAR and its references).

pub mod canary_runs;
pub mod compression;
pub mod config;
pub mod data_dir;
pub mod file_cache;
pub mod gc;
mod http;
pub mod http_pin;
pub mod http_push;
pub mod index;
pub mod ingest;
pub mod locks;
pub mod migrate;
pub mod progress;
pub mod pull;
pub mod push;
pub mod server;
pub mod stats;
pub mod status;
pub mod storage;
pub mod target;
pub mod token;
pub mod verify;

use std::path::PathBuf;

pub use compression::Compression;
pub use file_cache::FileCache;
pub use push::{push, PushFailure, PushOptions, PushReport};
pub use target::Target;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Nar(#[from] flywheel_nix::nar::NarError),
    #[error(transparent)]
    Store(#[from] flywheel_nix::store_db::StoreDbError),
    #[error("{path}: NAR hash mismatch: the store records {expected}, the contents give {actual} (the path was modified after it was registered)")]
    HashMismatch { path: String, expected: String, actual: String },
    #[error("the cache is for store {cache}, not {ours}")]
    StoreDirMismatch { cache: String, ours: String },
    #[error("{0}")]
    BadTarget(String),
    #[error("{0}")]
    Other(String),
}
