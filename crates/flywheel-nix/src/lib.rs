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

/// Bytes for people, as every flywheel crate logs and prints them: `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(5 << 30), "5.0 GiB");
    }
}
