//! Push a closure to a binary cache: every path after its references, each NAR checked
//! against the store's NarHash while it is compressed, each narinfo signed.
//!
//! NARs are made in parallel (hashing and compression are CPU work); narinfos are then written
//! in dependency order, and only for paths whose NAR and references are all in the cache, so
//! the cache never advertises a path it cannot serve whole, even after a failure or a crash.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use flywheel_nix::keys::SecretKey;
use flywheel_nix::nar::write_nar_digested;
use flywheel_nix::narinfo::{self, FileRef};
use flywheel_nix::store_db::{PathInfo, StoreDb};
use flywheel_nix::{NixHash, StorePath};
use rayon::prelude::*;

use crate::compression::Compression;
use crate::file_cache::FileCache;
use crate::CacheError;

#[derive(Clone)]
pub struct PushOptions {
    pub compression: Compression,
    /// Paths compressed at once; 0 means one per CPU.
    pub jobs: usize,
    /// Where the store's files are on disk: the store directory itself, or inside a chroot store.
    pub real_store: PathBuf,
    pub progress: Option<crate::progress::ProgressFn>,
}

/// What a push did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PushReport {
    /// Paths in the closure of what was asked for.
    pub closure: usize,
    /// Paths the cache already had.
    pub present: usize,
    /// Paths uploaded now.
    pub pushed: usize,
    /// Paths the server declined because an upstream cache (cache.nixos.org) signed them.
    pub upstream: usize,
    /// Uncompressed NAR bytes uploaded.
    pub nar_bytes: u64,
    /// Compressed bytes uploaded.
    pub file_bytes: u64,
    pub seconds: f64,
    /// Paths that could not be pushed, with the reason; their dependents are left out too.
    pub failed: Vec<PushFailure>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct PushFailure {
    pub path: String,
    pub error: String,
}

/// Pushes the closure of `roots` from the store behind `db` to `cache`, signing with `key`.
pub fn push(
    db: &StoreDb,
    roots: &[StorePath],
    cache: &FileCache,
    key: &SecretKey,
    opts: &PushOptions,
) -> Result<PushReport, CacheError> {
    let started = Instant::now();
    let store_dir = db.store_dir().clone();
    let closure = db.closure(roots)?;
    let mut report = PushReport { closure: closure.len(), ..Default::default() };

    let (present, missing): (Vec<&PathInfo>, Vec<&PathInfo>) = closure.iter().partition(|i| cache.has_narinfo(&i.path));
    report.present = present.len();
    tracing::info!(
        "{} paths in the closure, {} already in the cache, {} to push",
        closure.len(),
        present.len(),
        missing.len()
    );

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs)
        .build()
        .map_err(|e| CacheError::Other(format!("starting workers: {e}")))?;
    let total = missing.len();
    let tracker = crate::progress::Tracker::new(opts.progress.clone(), total, missing.iter().map(|i| i.nar_size).sum());
    // Largest first, so one big path does not run alone at the end.
    let mut order: Vec<&PathInfo> = missing.clone();
    order.sort_by_key(|i| std::cmp::Reverse(i.nar_size));
    let mut uploads: HashMap<StorePath, Result<FileRef, CacheError>> = pool.install(|| {
        order
            .par_iter()
            .map(|info| {
                let result = upload_nar(info, cache, opts);
                let n = tracker.path_done(info.nar_size);
                match &result {
                    Ok(file) => tracing::info!(
                        "[{n}/{total}] {} ({} -> {} bytes)",
                        store_dir.render_path(&info.path),
                        info.nar_size,
                        file.size.unwrap_or(0)
                    ),
                    Err(e) => {
                        tracing::warn!("[{n}/{total}] {}: {e}", store_dir.render_path(&info.path))
                    }
                }
                (info.path.clone(), result)
            })
            .collect()
    });

    let mut in_cache: HashSet<&StorePath> = present.iter().map(|i| &i.path).collect();
    for info in &missing {
        let shown = store_dir.render_path(&info.path);
        let file_ref = match uploads.remove(&info.path) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                report.failed.push(PushFailure { path: shown, error: e.to_string() });
                continue;
            }
            None => continue,
        };
        if let Some(r) = info.references.iter().find(|r| *r != &info.path && !in_cache.contains(r)) {
            let error = format!("not advertised: its reference {} is not in the cache", store_dir.render_path(r));
            report.failed.push(PushFailure { path: shown, error });
            continue;
        }
        report.file_bytes += file_ref.size.unwrap_or(0);
        let record = narinfo::signed(&store_dir, info, file_ref, key)
            .map_err(|e| CacheError::Other(format!("{shown}: building its narinfo: {e}")))?;
        cache.put_narinfo(&record)?;
        in_cache.insert(&info.path);
        report.pushed += 1;
        report.nar_bytes += info.nar_size;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Dumps, checks and compresses one path into the cache.
fn upload_nar(info: &PathInfo, cache: &FileCache, opts: &PushOptions) -> Result<FileRef, CacheError> {
    let real = opts.real_store.join(info.path.to_basename());
    let (url, file) = cache.put_nar(opts.compression, |out: &mut dyn Write| {
        let (_, nar) = write_nar_digested(&real, out)?;
        // Checked before the narinfo exists: a modified store path is never advertised.
        if NixHash::Sha256(nar.sha256) != info.nar_hash || nar.size != info.nar_size {
            return Err(CacheError::HashMismatch {
                path: real.display().to_string(),
                expected: format!("{} ({} bytes)", info.nar_hash.to_nix_nixbase32_string(), info.nar_size),
                actual: format!("{} ({} bytes)", nar.to_nix32(), nar.size),
            });
        }
        Ok(())
    })?;
    Ok(FileRef { url, compression: opts.compression.narinfo(), hash: Some(file.hash()), size: Some(file.size) })
}
