//! The server's status (`GET /api/v1/status`, and the page at `GET /` built from it): per cache,
//! what a person looking at the lane wants first: how much it holds, whether it is earning its
//! keep (hit rate, downloads), how close it is to its quota, and the lines a Nix user pastes to
//! use it. Private caches appear by name only: their contents are not for anonymous readers.

pub mod html;

use serde::Serialize;

use crate::config::CacheConfig;
use crate::index::{CacheRecord, Index, IndexError, Visibility};

#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Unix seconds when this was gathered.
    pub generated_at: i64,
    pub caches: Vec<CacheStatus>,
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
}

/// Gathers the status of every cache; `base` is `http://HOST` as the client reached the server.
pub fn gather(
    index: &dyn Index,
    configs: &std::collections::BTreeMap<String, CacheConfig>,
    base: &str,
    now: i64,
) -> Result<Status, IndexError> {
    let stats = crate::stats::gather(index, now)?;
    let mut caches = Vec::new();
    for record in index.caches()? {
        let c = stats.caches.iter().find(|c| c.cache == record.name);
        let public_key = public_key(&record)?;
        let url = format!("{base}/{}", record.name);
        let quota_bytes = configs.get(&record.name).and_then(|c| c.max_size).map(crate::config::Size::bytes);
        let figures = match (record.visibility, c) {
            (Visibility::Public, Some(c)) => Some(Figures {
                paths: c.paths,
                bytes: c.bytes,
                narinfo_hits: c.narinfo_hits,
                narinfo_misses: c.narinfo_misses,
                hit_rate: c.hit_rate,
                nar_downloads: c.nar_downloads,
                bytes_served: c.served_by_nar_age.iter().map(|r| r.bytes).sum(),
                quota_bytes,
                quota_used: quota_bytes.filter(|q| *q > 0).map(|q| c.bytes as f64 / q as f64),
            }),
            _ => None,
        };
        let nix_conf = vec![format!("extra-substituters = {url}"), format!("extra-trusted-public-keys = {public_key}")];
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
    Ok(Status { generated_at: now, caches })
}

fn public_key(record: &CacheRecord) -> Result<String, IndexError> {
    flywheel_nix::keys::SecretKey::parse(&record.secret_key)
        .map(|k| k.public().to_string())
        .map_err(|e| IndexError::Db(format!("cache {}: its signing key: {e}", record.name)))
}
