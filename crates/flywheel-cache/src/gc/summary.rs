//! What a collection leaves for the status page: a summary of its report (counts, not the
//! removed paths' names, so it stays small), and the trimming of the page's own history.

use serde::{Deserialize, Serialize};

use super::{Freed, GcReport};
use crate::config::Config;
use crate::index::retention::Usage;
use crate::index::{Index, IndexError};

/// How long the status page's history is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryRetention {
    /// Canary runs older than this (seconds) are forgotten...
    pub canary_max_age: i64,
    /// ...and in each lane, all but the newest this many.
    pub canary_keep: usize,
    /// Hourly counters older than this (seconds).
    pub hourly_max_age: i64,
    /// Collection summaries kept.
    pub gc_summaries: usize,
}

impl Default for HistoryRetention {
    fn default() -> Self {
        HistoryRetention {
            canary_max_age: 90 * 86_400,
            canary_keep: 1000,
            hourly_max_age: 35 * 86_400,
            gc_summaries: 100,
        }
    }
}

impl HistoryRetention {
    /// The config's `canary-max-age` and `canary-keep-runs`, else the defaults.
    pub fn from_config(config: Option<&Config>) -> Self {
        let d = Self::default();
        let Some(c) = config else { return d };
        HistoryRetention {
            canary_max_age: c.canary_max_age.map_or(d.canary_max_age, |a| a.secs()),
            canary_keep: c.canary_keep_runs.unwrap_or(d.canary_keep),
            ..d
        }
    }
}

/// A finished collection, as the status page shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GcSummary {
    /// Unix seconds when it finished.
    pub at: i64,
    pub seconds: f64,
    pub caches: Vec<CacheGcSummary>,
    /// NARs of removed paths, unlinked.
    pub nars: Freed,
    /// Stored NARs nothing knew, unlinked.
    pub orphans: Freed,
    pub expired_uploads: u64,
    pub canary_runs_removed: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheGcSummary {
    pub cache: String,
    pub before: Usage,
    pub kept: Usage,
    /// Paths and their NARs' bytes removed from the cache, all reasons together.
    pub removed: Usage,
    pub spared: u64,
}

impl GcSummary {
    pub fn of(report: &GcReport, at: i64) -> Self {
        GcSummary {
            at,
            seconds: report.seconds,
            caches: report
                .caches
                .iter()
                .map(|c| CacheGcSummary {
                    cache: c.cache.clone(),
                    before: c.before,
                    kept: c.kept,
                    removed: Usage {
                        paths: c.removed.values().map(|g| g.paths.len() as u64).sum(),
                        bytes: c.removed.values().map(|g| g.bytes).sum(),
                    },
                    spared: c.spared,
                })
                .collect(),
            nars: report.nars,
            orphans: report.orphans,
            expired_uploads: report.expired_uploads,
            canary_runs_removed: report.canary_runs_removed,
        }
    }

    /// Bytes of stored NARs the collection unlinked.
    pub fn freed_bytes(&self) -> u64 {
        self.nars.bytes + self.orphans.bytes
    }
}

/// Forgets history beyond `r`; returns the canary runs forgotten.
pub(super) fn trim_history(index: &dyn Index, r: &HistoryRetention, now: i64) -> Result<u64, IndexError> {
    index.trim_hourly_stats(now - r.hourly_max_age)?;
    index.trim_gc_summaries(r.gc_summaries.saturating_sub(1))?;
    index.trim_canary_runs((now - r.canary_max_age).saturating_mul(1000), r.canary_keep)
}

pub(super) fn record(index: &dyn Index, report: &GcReport, now: i64) -> Result<(), IndexError> {
    let summary = serde_json::to_string(&GcSummary::of(report, now))
        .map_err(|e| IndexError::Db(format!("the collection's summary: {e}")))?;
    index.record_gc_summary(now, &summary)
}

/// The latest collection's summary, if any was recorded (one the index cannot read is skipped:
/// a page must not fail for it).
pub fn latest(index: &dyn Index) -> Result<Option<GcSummary>, IndexError> {
    Ok(index.gc_summaries(1)?.into_iter().find_map(|(_, text)| serde_json::from_str(&text).ok()))
}
