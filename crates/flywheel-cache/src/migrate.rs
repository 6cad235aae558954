//! `flywheel cache migrate --from CONFIG --to CONFIG`: copies everything a cache holds from one
//! pair of backends to another (directory + SQLite to object storage + PostgreSQL, or back):
//! the caches with their signing keys, tokens, NARs, paths with their references and access
//! times, upstream records, listings and logs, and pins.
//!
//! - **Resumable**: each step skips what the destination already has, so running it again
//!   after an interruption finishes the job; nothing is done twice.
//! - **Never a broken closure**: paths are added in dependency order, a chunk at a time right
//!   after their NARs are copied, through the same checked insert the server uses, so the
//!   destination holds whole closures at every moment.
//! - **Verified**: each NAR copied is hashed on the way and must match its FileHash; at the end
//!   the destination is checked like `flywheel cache verify` does, and every path's record
//!   (hashes, sizes, references, signatures) is compared with the source's. Same keys and same
//!   records give byte-identical narinfos.
//!
//! Counters (`flywheel cache stats`) are not copied: they describe the old server's traffic.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::data_dir::DataDir;
use crate::index::sqlite::hash_part_of;
use crate::index::{IndexError, IndexLock, NarRecord, PathRecord};
use crate::verify::VerifyReport;

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("cache {0:?} exists in the destination with another signing key: its narinfos would not match; remove it there or migrate elsewhere")]
    KeyDiffers(String),
    #[error("the source's NAR {nar}: {problem}")]
    BadSource { nar: String, problem: String },
    #[error("the source and the destination are the same backends")]
    SameBackends,
}

pub struct MigrateOptions<'a> {
    /// NARs copied at once.
    pub jobs: usize,
    /// Hash every NAR in the destination at the end, not only those this run copied.
    pub full: bool,
    pub log: &'a (dyn Fn(&str) + Sync),
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrateReport {
    pub caches: u64,
    pub tokens_copied: u64,
    pub nars_copied: u64,
    pub nars_present: u64,
    pub bytes_copied: u64,
    pub paths_added: u64,
    pub paths_present: u64,
    pub upstream_records: u64,
    pub files_copied: u64,
    pub pin_revisions_copied: u64,
    /// Canary runs the status page shows (the hourly counters and collection summaries are
    /// not copied, like the counters).
    pub canary_runs_copied: u64,
    /// The destination, checked after the copy.
    pub verify: VerifyReport,
    /// Paths whose record in the destination differs from the source's (or is missing).
    pub mismatches: Vec<String>,
    pub seconds: f64,
}

impl MigrateReport {
    pub fn ok(&self) -> bool {
        self.verify.ok() && self.mismatches.is_empty()
    }
}

/// Paths added per chunk: their NARs are copied in parallel, then the paths are added in order.
const CHUNK: usize = 64;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

pub fn migrate(from: &DataDir, to: &DataDir, opts: &MigrateOptions<'_>) -> Result<MigrateReport, MigrateError> {
    if from.backend() == to.backend() {
        return Err(MigrateError::SameBackends);
    }
    (opts.log)(&format!("{} -> {}", from.backend().describe(), to.backend().describe()));
    let started = Instant::now();
    let mut report = MigrateReport::default();
    let (src, dst) = (from.index(), to.index());
    let scratch = to.scratch().map_err(|e| MigrateError::Io { what: "scratch space".into(), source: io_of(e) })?.0;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.jobs.max(1))
        .build()
        .map_err(|e| MigrateError::Io { what: "threads".into(), source: std::io::Error::other(e.to_string()) })?;

    let caches = src.caches()?;
    for c in &caches {
        match dst.cache(&c.name)? {
            None => dst.create_cache(c)?,
            Some(d) if d.secret_key != c.secret_key => return Err(MigrateError::KeyDiffers(c.name.clone())),
            Some(_) => dst.configure_cache(&c.name, c.visibility, c.priority)?,
        }
    }
    report.caches = caches.len() as u64;
    for t in src.tokens()? {
        if dst.token(&t.hash)?.is_none() {
            dst.add_token(&t)?;
            report.tokens_copied += 1;
        }
    }
    for lane in src.canary_lanes()? {
        let kept: HashSet<String> = dst.canary_runs(&lane, 0, usize::MAX)?.into_iter().map(|r| r.run_id).collect();
        for run in src.canary_runs(&lane, 0, usize::MAX)? {
            if !kept.contains(&run.run_id) {
                dst.put_canary_run(&run)?;
                report.canary_runs_copied += 1;
            }
        }
    }

    let mut records_of: Vec<(String, Vec<PathRecord>)> = Vec::new();
    let adopted = src.adopted_paths()?;
    for c in &caches {
        let cache = c.name.as_str();
        for (store_path, key) in src.upstream_paths(cache)? {
            if !dst.missing(cache, std::slice::from_ref(&store_path))?.is_empty() {
                dst.record_upstream(cache, &store_path, &key, None, now())?;
            }
            report.upstream_records += 1;
        }
        let (records, times) = paths_in_order(from, cache)?;
        let wanted: Vec<String> = records.iter().map(|r| r.store_path.clone()).collect();
        let missing: HashSet<String> = dst.missing(cache, &wanted)?.into_iter().collect();
        report.paths_present += (records.len() - missing.len()) as u64;
        (opts.log)(&format!("{cache}: {} paths, {} to copy", records.len(), missing.len()));
        let todo: Vec<&PathRecord> = records.iter().filter(|r| missing.contains(&r.store_path)).collect();
        for (i, chunk) in todo.chunks(CHUNK).enumerate() {
            // Until the chunk's paths are recorded, a GC on the destination must not take their NARs.
            let _shared = dst.lock(IndexLock::NarShared)?;
            let nars: Vec<&NarRecord> = unique_nars(chunk);
            let copied = pool.install(|| {
                use rayon::prelude::*;
                nars.par_iter().map(|n| copy_nar(from, to, scratch.path(), n)).collect::<Result<Vec<_>, _>>()
            })?;
            for bytes in copied {
                match bytes {
                    Some(b) => {
                        report.nars_copied += 1;
                        report.bytes_copied += b;
                    }
                    None => report.nars_present += 1,
                }
            }
            for r in chunk {
                let url = format!("migrate/{}", nix_derivation::nixbase32::encode(&r.nar.nar_hash));
                let added_at = times.get(&r.store_path).map_or_else(now, |t| t.0);
                dst.record_upload(cache, &url, &r.nar, added_at)?;
                dst.add_path(cache, r, Some(&url), added_at)?;
                report.paths_added += 1;
            }
            let done = ((i + 1) * CHUNK).min(todo.len());
            (opts.log)(&format!("{cache}: {done}/{} paths, {} MiB copied", todo.len(), report.bytes_copied >> 20));
        }
        // Retention in the destination sees the same last reads.
        let accesses = times
            .iter()
            .map(|(p, t)| {
                Ok(crate::index::Access { cache: cache.to_string(), hash_part: hash_part_of(p)?.to_string(), at: t.1 })
            })
            .collect::<Result<Vec<_>, IndexError>>()?;
        dst.touch(&accesses)?;
        // Paths adopted from another cache before the per-cache rule stay marked as such.
        for (_, store_path) in adopted.iter().filter(|(c, _)| c == cache) {
            dst.mark_adopted(cache, store_path)?;
        }

        for name in src.file_names(cache)? {
            if dst.file(cache, &name)?.is_none() {
                if let Some(f) = src.file(cache, &name)? {
                    dst.put_file(cache, &name, &f, now())?;
                    report.files_copied += 1;
                }
            }
        }
        let have = dst.pins(cache)?;
        for pin in src.pins(cache)? {
            let known: HashSet<&str> = have
                .iter()
                .filter(|p| p.name == pin.name)
                .flat_map(|p| p.revisions.iter().map(|r| r.store_path.as_str()))
                .collect();
            // Oldest first, so the newest stays the newest.
            for rev in pin.revisions.iter().rev().filter(|r| !known.contains(r.store_path.as_str())) {
                dst.pin(cache, &pin.name, &rev.store_path, pin.keep_revisions, pin.keep_days, rev.pinned_at)?;
                report.pin_revisions_copied += 1;
            }
        }
        records_of.push((cache.to_string(), records));
    }

    (opts.log)("verifying the destination");
    report.verify = crate::verify::verify(dst, to.storage().as_ref(), opts.full)?;
    for (cache, records) in &records_of {
        for r in records {
            match dst.path(cache, hash_part_of(&r.store_path)?)? {
                Some(d) if d == *r => {}
                Some(_) => report.mismatches.push(format!("cache {cache}: {} differs", r.store_path)),
                None => report.mismatches.push(format!("cache {cache}: {} is missing", r.store_path)),
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn io_of(e: crate::data_dir::DataError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn unique_nars<'a>(chunk: &[&'a PathRecord]) -> Vec<&'a NarRecord> {
    let mut seen = HashSet::new();
    chunk.iter().map(|r| &r.nar).filter(|n| seen.insert(n.nar_hash)).collect()
}

/// A cache's paths, each after what it refers to, with (added, last read) times.
#[allow(clippy::type_complexity)]
fn paths_in_order(from: &DataDir, cache: &str) -> Result<(Vec<PathRecord>, HashMap<String, (i64, i64)>), MigrateError> {
    let idx = from.index();
    let mut members = Vec::new();
    idx.gc_snapshot(cache, &mut |m| members.push(m), &mut |_, _| {})?;
    let mut records: HashMap<String, PathRecord> = HashMap::new();
    let mut times = HashMap::new();
    for m in &members {
        let hash_part = String::from_utf8_lossy(&m.hash_part).into_owned();
        if let Some(r) = idx.path(cache, &hash_part)? {
            times.insert(r.store_path.clone(), (m.added_at, m.last_access));
            records.insert(r.store_path.clone(), r);
        }
    }
    // Depth-first, references first; an explicit stack, since closures can be deep.
    let mut names: Vec<&String> = records.keys().collect();
    names.sort();
    let mut done: HashSet<String> = HashSet::new();
    let mut order: Vec<String> = Vec::with_capacity(records.len());
    for root in names {
        let mut stack: Vec<(&String, bool)> = vec![(root, false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(p) {
                continue;
            }
            if expanded {
                done.insert(p.clone());
                order.push(p.clone());
                continue;
            }
            stack.push((p, true));
            if let Some(r) = records.get(p) {
                for reference in r.references.iter().rev() {
                    if reference != p && records.contains_key(reference) && !done.contains(reference) {
                        stack.push((reference, false));
                    }
                }
            }
        }
    }
    let ordered = order.into_iter().filter_map(|p| records.remove(&p)).collect();
    Ok((ordered, times))
}

/// Copies one NAR unless the destination has it: `Some(bytes)` when copied. The bytes are
/// hashed on the way and must be what the source's index says.
fn copy_nar(
    from: &DataDir,
    to: &DataDir,
    scratch: &std::path::Path,
    n: &NarRecord,
) -> Result<Option<u64>, MigrateError> {
    let name = crate::storage::nar_name(&n.nar_hash);
    let io = |what: &str| {
        let what = format!("{what} {name}");
        move |source| MigrateError::Io { what, source }
    };
    let storage = to.storage();
    if storage.contains(&n.nar_hash).map_err(io("checking the destination for"))? {
        return Ok(None);
    }
    let mut reader = from.storage().open(&n.nar_hash).map_err(io("reading the source's"))?;
    let tmp = tempfile::Builder::new().prefix("migrate-").tempfile_in(scratch).map_err(io("a scratch file for"))?;
    let mut writer = flywheel_nix::nar::HashingWriter::new(std::io::BufWriter::new(tmp));
    std::io::copy(&mut reader, &mut writer).map_err(io("copying"))?;
    let (buffered, digest) = writer.finish();
    let tmp = buffered.into_inner().map_err(|e| io("writing")(e.into_error()))?;
    if digest.sha256 != n.file_hash || digest.size != n.file_size {
        return Err(MigrateError::BadSource {
            nar: name,
            problem: format!(
                "its bytes ({} bytes) do not match the index's FileHash and FileSize ({} bytes): run flywheel cache verify --full on the source",
                digest.size, n.file_size
            ),
        });
    }
    tmp.as_file().sync_all().map_err(io("syncing"))?;
    let path = tmp.into_temp_path().keep().map_err(|e| io("keeping")(e.error))?;
    let _store = to.index().lock(IndexLock::Store(n.nar_hash))?;
    storage.put(&n.nar_hash, &path).map_err(io("storing"))?;
    Ok(Some(digest.size))
}
