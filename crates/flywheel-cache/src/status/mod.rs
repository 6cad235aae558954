//! The server's status (`GET /api/v1/status`, and the page at `GET /` built from it): per cache,
//! what a person looking at the lane wants first: how much it holds, whether it is earning its
//! keep (hit rate, downloads), how close it is to its quota, and the lines a Nix user pastes to
//! use it. Private caches appear by name only: their contents are not for anonymous readers.
//! And per lane, the canary runs it published: a pass/fail timeline, step times, bandwidth and
//! cache pull rates over time, the image and driver, and the last failure with its remedy.

pub mod html;
pub mod svg;

use serde::Serialize;

use crate::canary_runs::CanaryRun;
use crate::config::CacheConfig;
use crate::gc::{CacheGcSummary, GcSummary};
use crate::index::history::HourRow;
use crate::index::{CacheRecord, Index, IndexError, Visibility};

/// How far back the page's per-cache plots reach.
pub const HISTORY_SECS: i64 = 7 * 86_400;
/// Runs per lane the page shows (the timeline), and looked through for the last failure.
pub const LANE_RUNS: usize = 30;
const FAILURE_LOOKBACK: usize = 200;

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Unix seconds when this was gathered.
    pub generated_at: i64,
    pub caches: Vec<CacheStatus>,
    pub lanes: Vec<LaneStatus>,
    /// The latest garbage collection, all caches together.
    pub last_gc: Option<GcSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CacheStatus {
    pub name: String,
    pub visibility: Visibility,
    pub priority: u32,
    /// `http://HOST/NAME`, as the request reached the server.
    pub url: String,
    pub public_key: String,
    /// Only for public caches.
    pub figures: Option<Figures>,
    /// The lines to add to nix.conf to use the cache.
    pub nix_conf: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Figures {
    pub paths: u64,
    pub bytes: u64,
    pub narinfo_hits: i64,
    pub narinfo_misses: i64,
    pub hit_rate: Option<f64>,
    pub nar_downloads: i64,
    /// Bytes of NARs served, all ages together.
    pub bytes_served: u64,
    /// The config's `max-size`, and the share of it in use.
    pub quota_bytes: Option<u64>,
    pub quota_used: Option<f64>,
    /// Hour by hour over the last [`HISTORY_SECS`], the hours with traffic, oldest first.
    pub hourly: Vec<Hour>,
    /// What the latest collection did to this cache.
    pub last_gc: Option<CacheGcSummary>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Hour {
    /// Unix seconds at the start of the hour.
    pub hour: i64,
    pub narinfo_hits: i64,
    pub narinfo_misses: i64,
    pub hit_rate: Option<f64>,
    pub nar_downloads: i64,
    pub bytes_served: i64,
}

/// A lane's canary runs.
#[derive(Clone, Debug, Serialize)]
pub struct LaneStatus {
    pub lane: String,
    /// Up to [`LANE_RUNS`], newest first.
    pub runs: Vec<CanaryRun>,
    /// Of those runs.
    pub passed: usize,
    pub failed: usize,
    /// From the newest run.
    pub image_digest: Option<String>,
    pub driver_version: Option<String>,
    pub last_failure: Option<Failure>,
}

/// The newest failed run of a lane, and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Failure {
    pub run_id: String,
    pub started_at: String,
    pub runner: String,
    pub url: Option<String>,
    pub step: Option<String>,
    pub reason: Option<String>,
    pub remedy: Option<String>,
}

/// `GET /api/v1/canary/runs?lane=NAME`.
#[derive(Clone, Debug, Serialize)]
pub struct LaneRuns {
    pub lane: String,
    /// Newest first.
    pub runs: Vec<CanaryRun>,
    /// Where the next page starts (`&offset=`), when there is one.
    pub next_offset: Option<usize>,
}

/// Gathers the status of every cache and lane, with URLs relative to the server (see
/// [`Status::with_base`]). Reads only aggregates: totals, counters, the hourly rows, the latest
/// collection and the lanes' latest runs, never the paths themselves. What anyone may read:
/// private caches appear by name only (no figures, not in the collection's summary), and runs
/// carry their steps' times, not their messages (the last failure's own are kept).
pub fn gather(
    index: &dyn Index,
    configs: &std::collections::BTreeMap<String, CacheConfig>,
    now: i64,
) -> Result<Status, IndexError> {
    let totals = index.cache_totals()?;
    let hourly = index.hourly_stats(now - HISTORY_SECS)?;
    let records = index.caches()?;
    let mut last_gc = crate::gc::summary_latest(index)?;
    if let Some(gc) = &mut last_gc {
        let public = |name: &str| records.iter().any(|r| r.name == name && r.visibility == Visibility::Public);
        gc.caches.retain(|c| public(&c.cache));
    }
    let mut caches = Vec::new();
    for record in records {
        let public_key = public_key(&record)?;
        let url = format!("/{}", record.name);
        let figures = match record.visibility {
            Visibility::Public => {
                let usage = totals.iter().find(|(n, _)| *n == record.name).map(|(_, u)| *u).unwrap_or_default();
                let quota_bytes = configs.get(&record.name).and_then(|c| c.max_size).map(crate::config::Size::bytes);
                let counters = index.stats(&record.name)?;
                let get = |k: &str| counters.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
                let (hits, misses) = (get("narinfo_hits"), get("narinfo_misses"));
                Some(Figures {
                    paths: usage.paths,
                    bytes: usage.bytes,
                    narinfo_hits: hits,
                    narinfo_misses: misses,
                    hit_rate: crate::stats::hit_rate(hits, misses),
                    nar_downloads: get("nar_downloads"),
                    bytes_served: crate::stats::SERVED.iter().map(|k| u64::try_from(get(k)).unwrap_or(0)).sum(),
                    quota_used: quota_bytes.filter(|q| *q > 0).map(|q| usage.bytes as f64 / q as f64),
                    quota_bytes,
                    hourly: hours(&hourly, &record.name),
                    last_gc: last_gc.as_ref().and_then(|g| g.caches.iter().find(|c| c.cache == record.name).cloned()),
                })
            }
            Visibility::Private => None,
        };
        let nix_conf = Vec::new();
        caches.push(CacheStatus {
            name: record.name.clone(),
            visibility: record.visibility,
            priority: record.priority,
            url,
            public_key,
            figures,
            nix_conf,
        });
    }
    let mut lanes = Vec::new();
    for lane in index.canary_lanes()? {
        let runs: Vec<CanaryRun> =
            index.canary_runs(&lane, 0, FAILURE_LOOKBACK)?.iter().filter_map(CanaryRun::from_stored).collect();
        lanes.push(lane_status(lane, runs));
    }
    Ok(Status { generated_at: now, caches, lanes, last_gc })
}

impl Status {
    /// The same with absolute URLs and nix.conf lines for `base` (`http://HOST` as the client
    /// reached the server).
    pub fn with_base(&self, base: &str) -> Status {
        let mut s = self.clone();
        for c in &mut s.caches {
            c.url = format!("{base}{}", c.url);
            c.nix_conf = vec![
                format!("extra-substituters = {}", c.url),
                format!("extra-trusted-public-keys = {}", c.public_key),
            ];
        }
        s
    }
}

/// A cache's hours from the index's rows (ordered by cache, hour, key).
fn hours(rows: &[HourRow], cache: &str) -> Vec<Hour> {
    let mut out: Vec<Hour> = Vec::new();
    for r in rows.iter().filter(|r| r.cache == cache) {
        if out.last().is_none_or(|h| h.hour != r.hour) {
            out.push(Hour { hour: r.hour, ..Hour::default() });
        }
        let Some(h) = out.last_mut() else { continue };
        match r.key.as_str() {
            "narinfo_hits" => h.narinfo_hits = r.value,
            "narinfo_misses" => h.narinfo_misses = r.value,
            "nar_downloads" => h.nar_downloads = r.value,
            "nar_bytes" => h.bytes_served = r.value,
            _ => {}
        }
    }
    for h in &mut out {
        h.hit_rate = crate::stats::hit_rate(h.narinfo_hits, h.narinfo_misses);
    }
    out
}

/// `runs` newest first.
fn lane_status(lane: String, mut runs: Vec<CanaryRun>) -> LaneStatus {
    let last_failure = runs.iter().find(|r| !r.passed()).map(|r| {
        let step = r.failed_step();
        Failure {
            run_id: r.run_id.clone(),
            started_at: r.started_at.clone(),
            runner: r.runner.clone(),
            url: r.url.clone(),
            step: step.map(|s| s.name.clone()),
            reason: step.and_then(|s| s.reason.clone()),
            remedy: step.and_then(|s| s.remedy.clone()),
        }
    });
    runs.truncate(LANE_RUNS);
    // The page plots steps' times; their messages are the last failure's business only.
    for r in &mut runs {
        for s in &mut r.steps {
            s.reason = None;
            s.remedy = None;
        }
    }
    let passed = runs.iter().filter(|r| r.passed()).count();
    LaneStatus {
        lane,
        failed: runs.len() - passed,
        passed,
        image_digest: runs.first().and_then(|r| r.image_digest.clone()),
        driver_version: runs.first().and_then(|r| r.driver_version.clone()),
        runs,
        last_failure,
    }
}

fn public_key(record: &CacheRecord) -> Result<String, IndexError> {
    flywheel_nix::keys::SecretKey::parse(&record.secret_key)
        .map(|k| k.public().to_string())
        .map_err(|e| IndexError::Db(format!("cache {}: its signing key: {e}", record.name)))
}
