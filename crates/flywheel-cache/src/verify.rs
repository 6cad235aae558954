//! `flywheel cache verify`: the index and the NAR storage against each other. A problem is
//! anything a client could see broken: a visible path whose NAR is missing, of the wrong size
//! or (with `full`) the wrong hash, or whose closure the cache does not hold. Leftovers that
//! no client can see (an uploaded NAR whose narinfo never came, a NAR stored just before a
//! crash) are counted apart: garbage collection removes them. So are paths a cache adopted from
//! another before each cache's paths were its own (schema 6): they serve another cache's
//! upload, which the cache's writer never sent; pushing them again replaces them.

use std::collections::HashSet;

use serde::Serialize;

use crate::index::{Index, IndexError};
use crate::storage::NarStorage;

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// (cache, store path) rows: each cache's paths, summed.
    pub paths: u64,
    /// Distinct store paths over all caches.
    pub store_paths: u64,
    pub nars: u64,
    /// One line each: what is wrong, and where.
    pub problems: Vec<String>,
    /// Stored NARs no path uses yet (pending uploads included).
    pub unreferenced_nars: u64,
    pub pending_uploads: u64,
    /// Files in the NAR folder that are not a stored NAR.
    pub strays: Vec<String>,
    /// `cache: store path` of paths adopted from another cache before schema 6.
    pub adopted: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify(index: &dyn Index, storage: &dyn NarStorage, full: bool) -> Result<VerifyReport, IndexError> {
    let mut report = VerifyReport::default();
    let (paths, store_paths) = index.counts()?;
    report.paths = paths;
    report.store_paths = store_paths;
    report.adopted = index.adopted_paths()?.into_iter().map(|(c, p)| format!("{c}: {p}")).collect();
    let nars = index.all_nars()?;
    report.nars = nars.len() as u64;
    let listing = storage.list().map_err(|e| IndexError::Db(format!("listing the NAR storage: {e}")))?;
    let (stored, strays) = (listing.nars, listing.strays);
    let stored_sizes: std::collections::HashMap<[u8; 32], u64> = stored.iter().copied().collect();
    let name = |h: &[u8; 32]| format!("nar/{}.nar.zst", nix_derivation::nixbase32::encode(h));
    for n in &nars {
        match stored_sizes.get(&n.nar_hash) {
            None => report.problems.push(format!("{}: in the index but not in the storage", name(&n.nar_hash))),
            Some(&size) if size != n.file_size => report.problems.push(format!(
                "{}: {size} bytes stored, the index says {}",
                name(&n.nar_hash),
                n.file_size
            )),
            Some(_) if full => match storage.open(&n.nar_hash).and_then(crate::storage::hash_reader).map(|(h, _)| h) {
                Ok(h) if h == n.file_hash => {}
                Ok(_) => report.problems.push(format!("{}: its bytes do not match FileHash", name(&n.nar_hash))),
                Err(e) => report.problems.push(format!("{}: {e}", name(&n.nar_hash))),
            },
            Some(_) => {}
        }
    }
    for (cache, path, reference) in index.broken_references()? {
        report.problems.push(format!("cache {cache}: {path} refers to {reference}, which the cache does not hold"));
    }
    let indexed: HashSet<[u8; 32]> = nars.iter().map(|n| n.nar_hash).collect();
    let pending = index.pending_uploads()?;
    report.pending_uploads = pending.len() as u64;
    report.unreferenced_nars = stored.iter().filter(|(h, _)| !indexed.contains(h)).count() as u64;
    report.strays = strays;
    Ok(report)
}
