//! Garbage collection: keeps what the pins, the grace period and the policies (quota, maximum
//! age) keep, with whole closures, and removes the rest without ever breaking a closure or
//! serving a narinfo whose NAR is gone.
//!
//! 1. For each cache, a snapshot of its members and references, and a [`plan`] in memory.
//! 2. Released pin revisions are forgotten; then the doomed paths leave the index in short
//!    transactions, referrers first, each checked again (see [`Retention::gc_remove`]). A NAR
//!    that no path uses any more is recorded as dead, not yet unlinked.
//! 3. Uploads whose narinfo never came are forgotten after the grace period.
//! 4. Dead NARs are unlinked once [`SETTLE`] has passed, so servers (which poll the index) have
//!    dropped the narinfos they kept in memory; under the exclusive NAR lock, each checked
//!    again against new uploads.
//! 5. Orphans (stored NARs the index does not know: a crash between storing and recording)
//!    older than the grace period are unlinked the same way.

pub mod plan;
mod summary;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::index::retention::{DeleteGuard, Usage};
use crate::index::{Index, IndexError, IndexLock};
use crate::storage::NarStorage;
pub use plan::{Policy, Reason};
pub use summary::{latest as summary_latest, CacheGcSummary, GcSummary, HistoryRetention};

/// How long a dead NAR stays on disk after its last narinfo left the index: longer than the
/// servers' poll of the index (a tenth of a second).
pub const SETTLE: Duration = Duration::from_millis(500);
/// Paths removed per transaction: each transaction takes about a hundred milliseconds (the write lock is held that long; readers never wait).
/// (Commits are not synced one by one: see [`crate::index::Retention::gc_mode`].)
const BATCH: usize = 2500;
/// NARs unlinked per hold of the exclusive NAR lock (uploads wait that long at most).
const BURY_BATCH: usize = 256;
/// Temporaries in the object store older than this are leftovers of a server that died.
const TEMPORARY_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("another garbage collection is running on this cache")]
    AlreadyRunning,
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("NAR storage: {0}")]
    Io(#[from] std::io::Error),
}

pub struct GcOptions<'a> {
    /// The caches to collect, each with its policy.
    pub caches: Vec<(String, Policy)>,
    pub dry_run: bool,
    /// Accesses the index has not recorded yet (a server's), by cache and hash part.
    pub in_use: &'a (dyn Fn(&str, &str) -> bool + Sync),
    /// Progress lines for people.
    pub log: &'a (dyn Fn(&str) + Sync),
    /// Paths removed per transaction (0: the default, 2500).
    pub batch: usize,
    /// How long the status page's history is kept (canary runs, hourly counters, summaries).
    pub history: HistoryRetention,
}

/// Paths removed for one reason.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Group {
    pub paths: Vec<String>,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CacheGc {
    pub cache: String,
    pub policy: Policy,
    pub before: Usage,
    pub kept: Usage,
    /// By reason: quota, age, unpinned-revision.
    pub removed: BTreeMap<&'static str, Group>,
    /// Paths the plan removed but the delete found in use again (a new referrer, a read, a
    /// pin since the snapshot): kept.
    pub spared: u64,
    /// Pin revisions released: (pin, revision).
    pub released_revisions: Vec<(String, i64)>,
    /// Bytes the pins and the grace period alone keep beyond the quota.
    pub over_quota_bytes: Option<u64>,
}

/// Stored NAR files removed (or, in a dry run, that would be).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Freed {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub caches: Vec<CacheGc>,
    /// NARs of removed paths, unlinked.
    pub nars: Freed,
    /// Stored NARs the index did not know (crash leftovers, uploads whose narinfo never came).
    pub orphans: Freed,
    pub expired_uploads: u64,
    /// Canary runs forgotten (older than the retention, or beyond the runs kept per lane).
    pub canary_runs_removed: u64,
    pub seconds: f64,
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn collect(index: &dyn Index, storage: &dyn NarStorage, opts: &GcOptions<'_>) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let _gc = index.try_gc_lock()?.ok_or(GcError::AlreadyRunning)?;
    let mut report = GcReport {
        dry_run: opts.dry_run,
        caches: Vec::new(),
        nars: Freed::default(),
        orphans: Freed::default(),
        expired_uploads: 0,
        canary_runs_removed: 0,
        seconds: 0.0,
    };
    let mut dead_sizes: HashMap<[u8; 32], u64> = HashMap::new();
    index.gc_mode(true)?;
    let result = (|| {
        // Servers read the log every tenth of a second; an hour is far beyond any of them.
        if !opts.dry_run {
            index.trim_gc_log(now_secs() - 3600)?;
        }
        for (cache, policy) in &opts.caches {
            report.caches.push(collect_cache(index, cache, policy, opts, &mut dead_sizes)?);
        }
        let grace = opts.caches.iter().map(|(_, p)| p.grace).max().unwrap_or(plan::DEFAULT_GRACE);
        if !opts.dry_run {
            report.expired_uploads = index.expire_uploads(now_secs() - grace, now_ms())?;
            // A NAR is unlinked only once the removals that made it dead are on disk: one
            // synced commit makes every earlier one durable.
            let names: Vec<String> = opts.caches.iter().map(|(c, _)| c.clone()).collect();
            index.gc_barrier(&names)?;
            let burying = Instant::now();
            report.nars = bury_dead(index, storage, &dead_sizes)?;
            (opts.log)(&format!(
                "unlinked {} dead NARs in {:.2}s (after waiting {:?} for servers)",
                report.nars.files,
                burying.elapsed().as_secs_f64(),
                SETTLE
            ));
        }
        let sweeping = Instant::now();
        report.orphans = sweep_orphans(index, storage, grace, opts.dry_run)?;
        (opts.log)(&format!("orphan sweep: {} in {:.2}s", report.orphans.files, sweeping.elapsed().as_secs_f64()));
        Ok::<(), GcError>(())
    })();
    index.gc_mode(false)?;
    result?;
    if !opts.dry_run {
        report.canary_runs_removed = summary::trim_history(index, &opts.history, now_secs())?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    if !opts.dry_run {
        summary::record(index, &report, now_secs())?;
    }
    Ok(report)
}

fn collect_cache(
    index: &dyn Index,
    cache: &str,
    policy: &Policy,
    opts: &GcOptions<'_>,
    dead_sizes: &mut HashMap<[u8; 32], u64>,
) -> Result<CacheGc, GcError> {
    let snapshot_at = now_secs();
    let builder = std::cell::RefCell::new(plan::GraphBuilder::default());
    index.gc_snapshot(cache, &mut |m| builder.borrow_mut().member(m), &mut |from, to| {
        builder.borrow_mut().reference(from, to)
    })?;
    let graph = builder.into_inner().build();
    let before = Usage { paths: graph.len() as u64, bytes: graph.members.iter().map(|m| m.file_size).sum() };
    let pins = index.pins(cache)?;
    let plan = plan::plan(&graph, &pins, policy, snapshot_at);
    (opts.log)(&format!(
        "{cache}: {} paths, {} to remove{}",
        graph.len(),
        plan.doomed.len(),
        if opts.dry_run { " (dry run)" } else { "" }
    ));
    let mut out = CacheGc {
        cache: cache.to_string(),
        policy: *policy,
        before,
        kept: Usage { paths: plan.kept_paths, bytes: plan.kept_bytes },
        removed: BTreeMap::new(),
        spared: 0,
        released_revisions: plan.released.clone(),
        over_quota_bytes: plan.over_quota,
    };
    let reason_of: HashMap<i64, Reason> = plan.doomed.iter().map(|&(i, r)| (graph.members[i as usize].id, r)).collect();
    let ids: Vec<i64> = plan.doomed.iter().map(|&(i, _)| graph.members[i as usize].id).collect();
    if opts.dry_run {
        for chunk in ids.chunks(BATCH) {
            for (id, path) in index.store_paths(chunk)? {
                let (Some(&reason), Some(i)) = (reason_of.get(&id), graph.index_of_id(id)) else { continue };
                let g = out.removed.entry(reason.as_str()).or_default();
                g.paths.push(path);
                g.bytes += graph.members[i as usize].file_size;
            }
        }
        return Ok(out);
    }
    drop(graph);
    if !plan.released.is_empty() {
        index.release_pin_revisions(cache, &plan.released)?;
    }
    let guard =
        DeleteGuard { added_before: snapshot_at - policy.grace, accessed_before: snapshot_at, in_use: opts.in_use };
    let mut removed_count = 0usize;
    let removing = Instant::now();
    let batch = if opts.batch == 0 { BATCH } else { opts.batch };
    for chunk in ids.chunks(batch) {
        let removed = index.gc_remove(cache, chunk, &guard, now_ms())?;
        removed_count += removed.len();
        out.spared += (chunk.len() - removed.len()) as u64;
        for r in removed {
            let reason = reason_of.get(&r.id).copied().unwrap_or(Reason::Quota);
            let g = out.removed.entry(reason.as_str()).or_default();
            g.paths.push(r.store_path);
            g.bytes += r.file_size;
            if let Some(nar) = r.dead_nar {
                dead_sizes.insert(nar, r.file_size);
            }
        }
    }
    (opts.log)(&format!("{cache}: {removed_count} paths out of the index in {:.2}s", removing.elapsed().as_secs_f64()));
    out.kept.paths = out.before.paths - removed_count as u64;
    out.kept.bytes = out.before.bytes - out.removed.values().map(|g| g.bytes).sum::<u64>();
    Ok(out)
}

/// Unlinks the dead NARs once they have settled, in batches under the exclusive NAR lock.
fn bury_dead(index: &dyn Index, storage: &dyn NarStorage, sizes: &HashMap<[u8; 32], u64>) -> Result<Freed, GcError> {
    let mut freed = Freed::default();
    // Those of this run died just now; those of a run cut short may have too.
    if !index.dead_nars(i64::MAX, 1)?.is_empty() {
        std::thread::sleep(SETTLE);
    }
    let settled = now_ms() - SETTLE.as_millis() as i64;
    loop {
        let dead = index.dead_nars(settled, BURY_BATCH)?;
        if dead.is_empty() {
            return Ok(freed);
        }
        let _lock = index.lock(IndexLock::NarExclusive)?;
        // Sizes of NARs a run cut short left dead are read from the storage itself.
        let earlier: HashMap<[u8; 32], u64> =
            dead.iter().filter(|n| !sizes.contains_key(*n)).filter_map(|n| Some((*n, storage.size(n).ok()?))).collect();
        let buried = index.bury_nars(&dead, &|nar| storage.remove(nar))?;
        for nar in &buried {
            freed.bytes += sizes.get(nar).or_else(|| earlier.get(nar)).copied().unwrap_or(0);
        }
        freed.files += buried.len() as u64;
    }
}

/// Stored NARs the index knows in no state, stored longer ago than the grace period, and
/// temporaries interrupted writes left in the storage.
fn sweep_orphans(index: &dyn Index, storage: &dyn NarStorage, grace: i64, dry_run: bool) -> Result<Freed, GcError> {
    let listing = storage.list()?;
    let known = index.known_nars()?;
    let cutoff = SystemTime::now() - Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    let orphans: Vec<([u8; 32], u64)> = listing
        .nars
        .into_iter()
        .filter(|(h, _)| !known.contains(h))
        .filter(|(h, _)| storage.modified(h).is_ok_and(|t| t <= cutoff))
        .collect();
    drop(known);
    let mut freed = Freed::default();
    if dry_run {
        freed.files = orphans.len() as u64;
        freed.bytes = orphans.iter().map(|(_, s)| s).sum();
        return Ok(freed);
    }
    let sizes: HashMap<[u8; 32], u64> = orphans.iter().copied().collect();
    for chunk in orphans.chunks(BURY_BATCH) {
        let hashes: Vec<[u8; 32]> = chunk.iter().map(|(h, _)| *h).collect();
        let _lock = index.lock(IndexLock::NarExclusive)?;
        let buried = index.bury_nars(&hashes, &|nar| storage.remove(nar))?;
        freed.files += buried.len() as u64;
        freed.bytes += buried.iter().filter_map(|h| sizes.get(h)).sum::<u64>();
    }
    // Uploads take seconds to minutes; a day-old temporary belongs to no running upload.
    let (files, bytes) = storage.sweep_temporaries(cutoff.min(SystemTime::now() - TEMPORARY_AGE))?;
    freed.files += files;
    freed.bytes += bytes;
    Ok(freed)
}
