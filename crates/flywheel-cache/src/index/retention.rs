//! What garbage collection, pins and `flywheel cache stats` need from the index.
//!
//! GC reads one consistent snapshot of a cache (its members and their references), decides in
//! memory, then deletes in short transactions that check again, path by path, what may have
//! changed since the snapshot: a new path that refers to a doomed one, a new pin, a narinfo
//! read. So a concurrent push or pin never loses a path its closure needs.

use super::IndexError;

/// A path a cache holds, as GC sees it.
#[derive(Clone, Copy, Debug)]
pub struct GcMember {
    pub id: i64,
    /// The 32 characters of the store path's hash part.
    pub hash_part: [u8; 32],
    /// The stored NAR's size (what the path costs this cache).
    pub file_size: u64,
    /// Unix seconds of the latest narinfo GET or HEAD (or of the upload).
    pub last_access: i64,
    /// When this cache got the path.
    pub added_at: i64,
}

/// A pin's name: 1 to 128 of `[A-Za-z0-9._-]` (a branch, `main`, `release-24.11`), so it is
/// one URL path segment.
pub fn check_pin_name(name: &str) -> Result<(), IndexError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IndexError::BadPinName(name.to_string()))
    }
}

/// A pin with its revisions, newest first.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Pin {
    pub name: String,
    pub keep_revisions: Option<u32>,
    pub keep_days: Option<u32>,
    pub revisions: Vec<PinRevision>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinRevision {
    pub revision: i64,
    pub store_path: String,
    pub pinned_at: i64,
}

/// What the delete transaction checks again for each doomed path.
pub struct DeleteGuard<'a> {
    /// A path whose membership is newer than this is in its grace period.
    pub added_before: i64,
    /// A path read (narinfo) after this was in use after the snapshot.
    pub accessed_before: i64,
    /// Accesses the index has not seen yet (a server's unflushed ones), by cache and hash part.
    pub in_use: &'a (dyn Fn(&str, &str) -> bool + Sync),
}

/// A path GC removed from a cache.
#[derive(Clone, Debug)]
pub struct Removed {
    pub id: i64,
    pub store_path: String,
    pub file_size: u64,
    /// The NAR, when no path on the server uses it any more (it now waits in `dead_nars`).
    pub dead_nar: Option<[u8; 32]>,
}

/// Paths, stored bytes and NAR bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub paths: u64,
    pub bytes: u64,
}

pub trait Retention {
    /// Streams a cache's members, then every reference of those members (path id, referenced
    /// store path), from one read snapshot.
    fn gc_snapshot(
        &self,
        cache: &str,
        member: &mut dyn FnMut(GcMember),
        reference: &mut dyn FnMut(i64, &str),
    ) -> Result<(), IndexError>;
    /// Full store paths of the given path ids (those that still exist).
    fn store_paths(&self, ids: &[i64]) -> Result<Vec<(i64, String)>, IndexError>;
    /// Removes `ids` (in this order: referrers before what they refer to) from `cache`, one
    /// transaction, skipping each path that a member of the cache still refers to, that a pin
    /// names, or that `guard` says is new or in use. Paths no cache holds any more are
    /// forgotten, and their NARs, when no path uses them, are recorded as dead.
    fn gc_remove(
        &self,
        cache: &str,
        ids: &[i64],
        guard: &DeleteGuard<'_>,
        now: i64,
    ) -> Result<Vec<Removed>, IndexError>;

    fn pins(&self, cache: &str) -> Result<Vec<Pin>, IndexError>;
    /// Pins `store_path` (which the cache must hold) as the newest revision of `name`, unless it
    /// already is; the settings replace the pin's. Counts as an access of the path, so a GC
    /// that started before cannot take it.
    fn pin(
        &self,
        cache: &str,
        name: &str,
        store_path: &str,
        keep_revisions: Option<u32>,
        keep_days: Option<u32>,
        now: i64,
    ) -> Result<PinRevision, IndexError>;
    /// Forgets pin revisions that are no longer kept: (pin name, revision).
    fn release_pin_revisions(&self, cache: &str, released: &[(String, i64)]) -> Result<(), IndexError>;

    /// Forgets the removal log (what servers read to drop narinfos) from before `before`.
    fn trim_gc_log(&self, before: i64) -> Result<(), IndexError>;
    /// Forgets uploads whose narinfo never came, older than `before`; their NARs, unless a path
    /// uses them, become dead. Returns how many uploads were forgotten.
    fn expire_uploads(&self, before: i64, now: i64) -> Result<u64, IndexError>;
    /// Dead NARs recorded before `before`, at most `limit`.
    fn dead_nars(&self, before: i64, limit: usize) -> Result<Vec<[u8; 32]>, IndexError>;
    /// In one transaction: for each NAR, unless a path or an upload uses it again, calls
    /// `unlink`; the NAR is then no longer dead. Returns those unlinked. Also used for orphans
    /// (stored NARs the index does not know), with the same checks.
    fn bury_nars(
        &self,
        nars: &[[u8; 32]],
        unlink: &(dyn Fn(&[u8; 32]) -> std::io::Result<()> + Sync),
    ) -> Result<Vec<[u8; 32]>, IndexError>;
    /// Every NAR the index knows in any state: stored, uploaded, or dead.
    fn known_nars(&self) -> Result<std::collections::HashSet<[u8; 32]>, IndexError>;

    /// GC's connection: `fast` trades durability of each commit for speed (a crash may undo the
    /// latest removals, which only keeps paths longer) and gives the connection a larger page
    /// cache; leaving it makes the connection durable again.
    fn gc_mode(&self, fast: bool) -> Result<(), IndexError>;
    /// Makes every commit so far durable (one synced commit: it adds 1 to each cache's
    /// `gc_runs`), staying in GC's mode.
    fn gc_barrier(&self, caches: &[String]) -> Result<(), IndexError>;
    /// Adds to a cache's counters.
    fn add_stats(&self, deltas: &[(String, String, i64)]) -> Result<(), IndexError>;
    /// A cache's counters.
    fn stats(&self, cache: &str) -> Result<Vec<(String, i64)>, IndexError>;
    /// A cache's paths and stored bytes, by time since last access: for each of `bounds`
    /// (seconds), those accessed at most that long before `now`, and last, all of them.
    fn usage_by_access(&self, cache: &str, now: i64, bounds: &[i64]) -> Result<Vec<Usage>, IndexError>;
    /// Bytes the NARs themselves take on the server (each once), and how many there are.
    fn stored_usage(&self) -> Result<Usage, IndexError>;
}
