//! `flywheel cache serve --config FILE`: the server's settings and its caches, in TOML.
//!
//! ```toml
//! data = "/var/lib/flywheel-cache"     # relative paths are relative to this file
//! listen = "0.0.0.0:5480"
//! max-nar-bytes = "64GiB"
//! max-requests-per-client = 64
//! gc-interval = "1h"
//! # Canary runs published to the status page: kept 90 days, at most 1000 per lane, at most
//! # 32 lanes.
//! canary-max-age = "90d"
//! canary-keep-runs = 1000
//! max-lanes = 32
//!
//! # What one client or upload may cost the server (docs/security.md; these are the defaults).
//! max-nar-size = "64GiB"           # a NAR, decompressed
//! decoder-memory = "128MiB"        # one upload's xz dictionary or zstd window
//! ingest-timeout = "30m"           # checking one received upload
//! header-timeout = "30s"           # receiving a request's headers
//! idle-timeout = "60s"             # a connection, body or response with no byte moving
//! max-connections = 1024
//! max-connections-per-client = 128
//!
//! [caches.main]
//! visibility = "public"
//! priority = 30
//! # Paths these keys signed are declined: Nix fetches them from there anyway.
//! upstream-keys = ["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="]
//!
//! # Retention (see `flywheel cache gc`): a quota, a maximum time since last read, and how
//! # long new uploads are safe; the server collects every gc-interval.
//! max-size = "200GiB"
//! max-age = "90d"
//! grace = "1h"
//!
//! [caches.pr]
//! visibility = "private"
//! max-age = "14d"
//! ```
//!
//! Several servers share one cache through object storage and PostgreSQL
//! (docs/cache-deployment.md):
//!
//! ```toml
//! storage = "s3"          # "dir" (the default: DATA/nar) or "s3"
//! index = "postgres"      # "sqlite" (the default: DATA/index.sqlite) or "postgres"
//! [s3]
//! bucket = "nix-cache"
//! endpoint = "http://minio.minio.svc:9000"   # AWS S3 when unset
//! region = "us-east-1"
//! prefix = "flywheel"
//! allow-http = true
//! # credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY from the environment, or
//! # access-key-id and secret-access-key here
//! [postgres]
//! url = "postgresql://flywheel@postgres.db.svc/flywheel"   # or FLYWHEEL_DATABASE_URL
//! pool-size = 16
//! ```
//!
//! Every field is optional; flags given on the command line win over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use flywheel_nix::keys::PublicKey;
use flywheel_nix::narinfo::TrustedPublicKey;
use serde::Deserialize;

use crate::index::Visibility;

/// cache.nixos.org's public key, the usual upstream.
pub const CACHE_NIXOS_ORG_KEY: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// The data directory.
    pub data: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// The largest NAR upload, as sent (compressed).
    pub max_nar_bytes: Option<Size>,
    pub max_narinfo_bytes: Option<Size>,
    /// The largest `.ls` listing or build log.
    pub max_file_bytes: Option<Size>,
    /// Requests one client address may have in progress at once; more wait their turn.
    pub max_requests_per_client: Option<usize>,
    /// zstd level of stored NARs (1-19).
    pub zstd_level: Option<i32>,
    /// Uploads checked and recompressed at once.
    pub ingest_jobs: Option<usize>,
    /// How often the server collects garbage (none when unset).
    pub gc_interval: Option<Duration>,
    /// Canary runs (`flywheel canary --publish`) are kept this long (default 90d)...
    pub canary_max_age: Option<Duration>,
    /// ...and at most this many per lane (default 1000); a publish beyond it drops the oldest.
    pub canary_keep_runs: Option<usize>,
    /// Lanes the status page keeps runs for (default 32): a run for a new lane beyond it is
    /// refused.
    pub max_lanes: Option<usize>,
    /// The largest NAR accepted, decompressed (default 64 GiB).
    pub max_nar_size: Option<Size>,
    /// Memory one upload's decoder may use (default 128 MiB).
    pub decoder_memory: Option<Size>,
    /// How long checking one received upload may take (default 30 minutes).
    pub ingest_timeout: Option<Duration>,
    /// How long a client may take to send a request's headers (default 30 s).
    pub header_timeout: Option<Duration>,
    /// A connection on which no byte moves either way this long is closed (default 60 s).
    pub idle_timeout: Option<Duration>,
    /// Connections open at once (default 1024); more wait in the listen queue.
    pub max_connections: Option<usize>,
    /// Connections one client address may have open (default 128); more are closed at once.
    pub max_connections_per_client: Option<usize>,
    #[serde(default)]
    pub caches: BTreeMap<String, CacheConfig>,
    /// Where NARs live.
    pub storage: Option<StorageKind>,
    /// Where the index lives.
    pub index: Option<IndexKind>,
    pub s3: Option<crate::storage::s3::S3Config>,
    pub postgres: Option<PostgresConfig>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// `DATA/nar`.
    #[default]
    Dir,
    /// The `[s3]` bucket.
    S3,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    /// `DATA/index.sqlite`.
    #[default]
    Sqlite,
    /// The `[postgres]` database.
    Postgres,
}

/// `[postgres]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PostgresConfig {
    /// `postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`; `FLYWHEEL_DATABASE_URL` wins, so
    /// the password can come from a secret.
    pub url: Option<String>,
    /// Connections each server keeps open (default 16).
    pub pool_size: Option<u32>,
}

/// The environment variable with the PostgreSQL URL.
pub const DATABASE_URL_ENV: &str = "FLYWHEEL_DATABASE_URL";

impl PostgresConfig {
    /// The URL to connect to: the environment's, else the file's.
    pub fn url(&self) -> Option<String> {
        std::env::var(DATABASE_URL_ENV).ok().filter(|u| !u.is_empty()).or_else(|| self.url.clone())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CacheConfig {
    #[serde(default = "public")]
    pub visibility: Visibility,
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Public keys (`name:base64`) of upstream caches: a path one of them signed is declined.
    #[serde(default)]
    pub upstream_keys: Vec<String>,
    /// GC: evict least-recently-used paths until the cache's NARs take at most this.
    pub max_size: Option<Size>,
    /// GC: drop paths not read (narinfo GET or HEAD) for this long.
    pub max_age: Option<Duration>,
    /// GC: paths the cache got this recently are kept (default one hour).
    pub grace: Option<Duration>,
}

fn public() -> Visibility {
    Visibility::Public
}

fn default_priority() -> u32 {
    crate::data_dir::DEFAULT_PRIORITY
}

/// A byte count: a number, or a string with a unit (`512KiB`, `64MiB`, `64GiB`, or K, M, G).
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"64GiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n).map(Size).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Size, E> {
                parse_size(s).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a size such as 1048576, 512KiB or 64GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => return Err(format!("{s:?}: unknown unit {other:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?}: too large"))
}

/// A length of time: a number of seconds, or a string such as `"90d"`, `"12h"`, `"1h 30m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub fn secs(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(Duration(std::time::Duration::from_secs(n)));
    }
    humantime::parse_duration(t)
        .map(Duration)
        .map_err(|e| format!("{s:?}: {e} (expected a duration such as 90d, 12h, 30m or 1h 30m)"))
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration: a number of seconds, or a string such as \"90d\"")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Duration, E> {
                u64::try_from(n)
                    .map(|n| Duration(std::time::Duration::from_secs(n)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Duration, E> {
                Ok(Duration(std::time::Duration::from_secs(n)))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Duration, E> {
                parse_duration(s).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl CacheConfig {
    /// The cache's GC policy from the file (a grace of one hour unless set).
    pub fn policy(&self) -> crate::gc::Policy {
        crate::gc::Policy {
            max_size: self.max_size.map(Size::bytes),
            max_age: self.max_age.map(Duration::secs),
            grace: self.grace.map_or(crate::gc::plan::DEFAULT_GRACE, Duration::secs),
        }
    }
}

impl Config {
    /// Reads and checks `path`; a relative `data` is taken relative to the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.to_path_buf(), message };
        // toml's messages span several lines (with a caret); the first names what is wrong.
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            let first = e.message().lines().next().unwrap_or("invalid TOML").to_string();
            match e.span() {
                Some(span) => invalid(format!("line {}: {first}", text[..span.start].lines().count().max(1))),
                None => invalid(first),
            }
        })?;
        if let Some(data) = &config.data {
            if data.is_relative() {
                let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                config.data = Some(base.join(data));
            }
        }
        if let Some(level) = config.zstd_level {
            if !(1..=19).contains(&level) {
                return Err(invalid(format!("zstd-level {level}: expected 1 to 19")));
            }
        }
        if config.gc_interval.is_some_and(|d| d.0.is_zero()) {
            return Err(invalid("gc-interval must be longer than zero".into()));
        }
        if config.max_requests_per_client == Some(0) {
            return Err(invalid("max-requests-per-client must be at least 1".into()));
        }
        let zero = |name: &str, v: Option<u64>| match v {
            Some(0) => Err(invalid(format!("{name} must be more than zero"))),
            _ => Ok(()),
        };
        zero("max-lanes", config.max_lanes.map(|n| n as u64))?;
        zero("max-connections", config.max_connections.map(|n| n as u64))?;
        zero("max-connections-per-client", config.max_connections_per_client.map(|n| n as u64))?;
        zero("max-nar-size", config.max_nar_size.map(Size::bytes))?;
        for (name, d) in [
            ("ingest-timeout", config.ingest_timeout),
            ("header-timeout", config.header_timeout),
            ("idle-timeout", config.idle_timeout),
        ] {
            zero(name, d.map(|d| d.0.as_millis() as u64))?;
        }
        if config.decoder_memory.is_some_and(|m| m.bytes() < 1 << 20) {
            return Err(invalid("decoder-memory must be at least 1MiB".into()));
        }
        if config.storage == Some(StorageKind::S3) && config.s3.is_none() {
            return Err(invalid("storage = \"s3\" needs an [s3] table with the bucket".into()));
        }
        if config.s3.as_ref().is_some_and(|s3| s3.bucket.is_empty()) {
            return Err(invalid("[s3] bucket is empty".into()));
        }
        if config.postgres.as_ref().and_then(|p| p.pool_size) == Some(0) {
            return Err(invalid("[postgres] pool-size must be at least 1".into()));
        }
        for (name, cache) in &config.caches {
            crate::data_dir::check_cache_name(name).map_err(|e| invalid(format!("[caches.{name}]: {e}")))?;
            cache.upstream().map_err(|e| invalid(format!("[caches.{name}]: {e}")))?;
        }
        Ok(config)
    }
}

impl CacheConfig {
    pub fn upstream(&self) -> Result<Vec<TrustedPublicKey>, String> {
        self.upstream_keys
            .iter()
            .map(|k| PublicKey::parse(k).map(|p| p.0).map_err(|e| format!("upstream key {k:?}: {e}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn reads_every_setting_and_resolves_data_beside_the_file() {
        let c = load(&format!(
            "data = \"d\"\nlisten = \"127.0.0.1:1\"\nmax-nar-bytes = \"2GiB\"\nmax-requests-per-client = 4\n\
             gc-interval = \"30m\"\n[caches.main]\nupstream-keys = [\"{CACHE_NIXOS_ORG_KEY}\"]\nmax-size = \"1GiB\"\n\
             max-age = \"90d\"\n[caches.pr]\nvisibility = \"private\"\npriority = 41\ngrace = 60\n"
        ))
        .unwrap();
        assert_eq!(c.gc_interval.map(Duration::secs), Some(1800));
        let main = c.caches["main"].policy();
        assert_eq!((main.max_size, main.max_age, main.grace), (Some(1 << 30), Some(90 * 86_400), 3600));
        assert_eq!(c.caches["pr"].policy().grace, 60);
        assert!(c.data.unwrap().ends_with("d"));
        assert_eq!(c.max_nar_bytes.unwrap().bytes(), 2 << 30);
        assert_eq!(c.caches["main"].visibility, Visibility::Public);
        assert_eq!(c.caches["main"].upstream().unwrap()[0].name, "cache.nixos.org-1");
        assert_eq!((c.caches["pr"].visibility, c.caches["pr"].priority), (Visibility::Private, 41));
    }

    #[test]
    fn mistakes_are_named_on_one_line() {
        for (text, expect) in [
            ("listen = 5", "line 1"),
            ("unknown-field = 1", "unknown field"),
            ("[caches.nar]", "server's own routes"),
            ("[caches.main]\nupstream-keys = [\"nope\"]", "upstream key"),
            ("max-nar-bytes = \"5 parsecs\"", "unknown unit"),
            ("zstd-level = 30", "1 to 19"),
            ("[caches.main]\nmax-age = \"3 fortnights\"", "duration"),
            ("gc-interval = \"0s\"", "longer than zero"),
            ("storage = \"s3\"", "needs an [s3] table"),
            ("storage = \"tape\"", "unknown variant"),
            ("[s3]\nbucket = \"b\"\nregion = 5", "line 3"),
            ("[postgres]\npool-size = 0", "at least 1"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(e.contains(expect), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10").unwrap(), 10);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("3M").unwrap(), 3 << 20);
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }
}
