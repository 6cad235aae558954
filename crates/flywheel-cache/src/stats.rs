//! `flywheel cache stats`: what a person needs to choose a quota and a maximum age: each
//! cache's paths and bytes, how much of it was read recently, the narinfo hit rate, and the
//! bytes served by the age of the NAR (if old NARs are still served, a short max-age costs
//! rebuilds).

use serde::Serialize;

use crate::index::retention::{Pin, Usage};
use crate::index::{Index, IndexError};

/// Age classes, by their upper bound in seconds; anything older is "older".
pub const AGES: &[(&str, i64)] =
    &[("1h", 3600), ("1d", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400), ("90d", 90 * 86_400)];

/// The counters a server adds NAR downloads' bytes to: one per age class, then "older".
pub const SERVED: [&str; 6] = [
    "nar_bytes_age_1h",
    "nar_bytes_age_1d",
    "nar_bytes_age_7d",
    "nar_bytes_age_30d",
    "nar_bytes_age_90d",
    "nar_bytes_age_older",
];

/// The age class of a NAR `age_secs` old: an index into [`SERVED`].
pub fn served_class(age_secs: i64) -> usize {
    AGES.iter().position(|&(_, bound)| age_secs <= bound).unwrap_or(AGES.len())
}

#[derive(Clone, Debug, Serialize)]
pub struct AgeRow {
    /// "1h", "1d", ..., "older" (for reads: "all").
    pub age: String,
    pub paths: Option<u64>,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CacheStats {
    pub cache: String,
    pub paths: u64,
    pub bytes: u64,
    pub narinfo_hits: i64,
    pub narinfo_misses: i64,
    /// Hits over all narinfo requests, when there were any.
    pub hit_rate: Option<f64>,
    pub nar_downloads: i64,
    /// Bytes of NARs served, by how old the NAR was when served.
    pub served_by_nar_age: Vec<AgeRow>,
    /// Paths and bytes read (narinfo) within each age: a max-age of that long keeps these.
    pub read_within: Vec<AgeRow>,
    pub pins: Vec<Pin>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub caches: Vec<CacheStats>,
    /// The NAR files themselves (shared ones once).
    pub stored: Usage,
}

/// Hits over all narinfo requests, when there were any.
pub fn hit_rate(hits: i64, misses: i64) -> Option<f64> {
    (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
}

pub fn gather(index: &dyn Index, now: i64) -> Result<Stats, IndexError> {
    let mut caches = Vec::new();
    let bounds: Vec<i64> = AGES.iter().map(|&(_, b)| b).collect();
    for c in index.caches()? {
        let counters = index.stats(&c.name)?;
        let get = |k: &str| counters.iter().find(|(key, _)| key == k).map_or(0, |(_, v)| *v);
        let by_access = index.usage_by_access(&c.name, now, &bounds)?;
        let all = by_access.last().copied().unwrap_or_default();
        let (hits, misses) = (get("narinfo_hits"), get("narinfo_misses"));
        let served: Vec<AgeRow> = AGES
            .iter()
            .map(|&(age, _)| age)
            .chain(std::iter::once("older"))
            .zip(SERVED)
            .map(|(age, key)| AgeRow { age: age.to_string(), paths: None, bytes: u64::try_from(get(key)).unwrap_or(0) })
            .collect();
        let read_within = AGES
            .iter()
            .map(|&(age, _)| age.to_string())
            .chain(std::iter::once("all".to_string()))
            .zip(&by_access)
            .map(|(age, u)| AgeRow { age, paths: Some(u.paths), bytes: u.bytes })
            .collect();
        caches.push(CacheStats {
            paths: all.paths,
            bytes: all.bytes,
            narinfo_hits: hits,
            narinfo_misses: misses,
            hit_rate: hit_rate(hits, misses),
            nar_downloads: get("nar_downloads"),
            served_by_nar_age: served,
            read_within,
            pins: index.pins(&c.name)?,
            cache: c.name,
        });
    }
    Ok(Stats { caches, stored: index.stored_usage()? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_age_class_has_its_counter() {
        assert_eq!(SERVED.len(), AGES.len() + 1);
        for (&(age, _), key) in AGES.iter().zip(SERVED) {
            assert_eq!(key, format!("nar_bytes_age_{age}"));
        }
    }

    #[test]
    fn ages_fall_in_the_first_class_that_holds_them() {
        let key = |age| SERVED[served_class(age)];
        assert_eq!(key(0), "nar_bytes_age_1h");
        assert_eq!(key(3600), "nar_bytes_age_1h");
        assert_eq!(key(3601), "nar_bytes_age_1d");
        assert_eq!(key(90 * 86_400), "nar_bytes_age_90d");
        assert_eq!(key(90 * 86_400 + 1), "nar_bytes_age_older");
    }
}
