//! What the status page shows over time, kept by the index as it changes so that a page view
//! reads a handful of rows instead of every path: each cache's paths and bytes (kept by
//! triggers on its paths), its counters by the hour, the last collections' summaries, and
//! the canary runs the lane publishes.

use serde::{Deserialize, Serialize};

use super::retention::Usage;
use super::IndexError;

/// The counters kept by the hour (the server adds to them with [`super::Retention::add_stats`]):
/// `nar_bytes` is the sum of the `nar_bytes_age_*` counters, the bytes of NARs served.
pub const HOURLY: [&str; 4] = ["narinfo_hits", "narinfo_misses", "nar_downloads", "nar_bytes"];

/// One hour of one counter of one cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HourRow {
    pub cache: String,
    /// Unix seconds at the start of the hour (a multiple of 3600).
    pub hour: i64,
    pub key: String,
    pub value: i64,
}

/// A canary run as the server keeps it: the columns it is found and trimmed by, and the whole
/// published record (JSON, [`crate::canary_runs::CanaryRun`]) as it came.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRun {
    pub lane: String,
    pub run_id: String,
    /// Unix milliseconds.
    pub started_at: i64,
    /// `pass` or `fail`.
    pub status: String,
    /// Unix seconds when the server received it.
    pub received_at: i64,
    pub record: String,
}

pub trait History {
    /// Every cache's paths and the bytes of their stored NARs, by name, from the totals the
    /// index keeps as paths come and go (the same figures as the last row of
    /// [`super::Retention::usage_by_access`], without reading the paths).
    fn cache_totals(&self) -> Result<Vec<(String, Usage)>, IndexError>;
    /// The hourly rows of every cache's [`HOURLY`] counters from `since` (unix seconds) on,
    /// ordered by cache, hour and key. [`super::Retention::add_stats`] fills them: it adds each
    /// delta to the hour of `now` as well, `nar_bytes_age_*` deltas to `nar_bytes`.
    fn hourly_stats(&self, since: i64) -> Result<Vec<HourRow>, IndexError>;
    /// Forgets hourly rows from before `before`.
    fn trim_hourly_stats(&self, before: i64) -> Result<(), IndexError>;

    /// Records a finished collection's summary (JSON, [`crate::gc::GcSummary`]) made at `at`.
    fn record_gc_summary(&self, at: i64, summary: &str) -> Result<(), IndexError>;
    /// The latest summaries, newest first, at most `limit`: (at, summary).
    fn gc_summaries(&self, limit: usize) -> Result<Vec<(i64, String)>, IndexError>;
    /// Forgets all but the newest `keep` summaries.
    fn trim_gc_summaries(&self, keep: usize) -> Result<(), IndexError>;

    /// Keeps a canary run; one with the lane and run id of a kept one replaces it (a publish
    /// that is retried).
    fn put_canary_run(&self, run: &StoredRun) -> Result<(), IndexError>;
    /// What a runner publishes: keeps `run` as [`History::put_canary_run`] does, in one
    /// transaction with the bounds: a run for a lane the index has no run of is refused when
    /// `max_lanes` lanes have runs already, and the lane keeps only its newest `keep` runs.
    fn publish_canary_run(&self, run: &StoredRun, max_lanes: usize, keep: usize) -> Result<(), IndexError>;
    /// A lane's runs, newest (by `started_at`, then `received_at`) first: at most `limit`,
    /// after skipping `offset`.
    fn canary_runs(&self, lane: &str, offset: usize, limit: usize) -> Result<Vec<StoredRun>, IndexError>;
    /// Every lane with a kept run, sorted bytewise.
    fn canary_lanes(&self) -> Result<Vec<String>, IndexError>;
    /// Forgets runs that started before `before` (unix milliseconds), and in each lane all but
    /// the newest `keep`.
    /// Returns how many were forgotten.
    fn trim_canary_runs(&self, before: i64, keep: usize) -> Result<u64, IndexError>;
}
