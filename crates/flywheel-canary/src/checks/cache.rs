//! The lane's binary cache, as a job sees it: the URL and key from nix.conf (or flags),
//! `nix-cache-info` and narinfo latency, a known path pulled and verified (signature, NAR hash
//! and size), and with a write token, a fresh path pushed and pulled back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flywheel_cache::pull::check_path;
use flywheel_nix::narinfo::TrustedPublicKey;
use flywheel_nix::store_path::default_store_dir;
use flywheel_nix::{StoreDir, StorePath};

use crate::checks::command::{output_within, CommandOutcome};
use crate::context::{CacheOptions, Ctx};
use crate::step::Outcome;

/// Substituters that are not the lane's cache.
const PUBLIC_CACHES: [&str; 1] = ["https://cache.nixos.org"];

/// What nix.conf says about substituters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NixConf {
    pub substituters: Vec<String>,
    pub trusted_public_keys: Vec<String>,
}

impl NixConf {
    /// Reads settings the way Nix does: `key = value` lines, `#` comments, later files and
    /// lines override, `extra-` settings append.
    pub fn parse_into(&mut self, text: &str) {
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default().trim();
            let Some((key, value)) = line.split_once('=') else { continue };
            let values = value.split_whitespace().map(str::to_string);
            match key.trim() {
                "substituters" => self.substituters = values.collect(),
                "extra-substituters" => self.substituters.extend(values),
                "trusted-public-keys" => self.trusted_public_keys = values.collect(),
                "extra-trusted-public-keys" => self.trusted_public_keys.extend(values),
                _ => {}
            }
        }
    }

    /// nix.conf files in Nix's order: $NIX_CONF_DIR/nix.conf (/etc/nix), then the user's
    /// ($XDG_CONFIG_HOME or ~/.config), then $NIX_CONFIG.
    pub fn load(explicit: &[PathBuf]) -> NixConf {
        let mut conf = NixConf::default();
        let files: Vec<PathBuf> = if explicit.is_empty() { default_files() } else { explicit.to_vec() };
        for f in files {
            if let Ok(text) = std::fs::read_to_string(&f) {
                conf.parse_into(&text);
            }
        }
        if explicit.is_empty() {
            if let Ok(text) = std::env::var("NIX_CONFIG") {
                conf.parse_into(&text);
            }
        }
        conf
    }

    /// The lane's cache: the first substituter that is not a public one.
    pub fn lane_cache(&self) -> Option<&str> {
        self.substituters
            .iter()
            .map(|s| s.trim_end_matches('/'))
            .find(|s| !PUBLIC_CACHES.contains(s) && (s.starts_with("http://") || s.starts_with("https://")))
    }
}

fn default_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut files = vec![env("NIX_CONF_DIR").unwrap_or_else(|| PathBuf::from("/etc/nix")).join("nix.conf")];
    if let Some(dir) = env("XDG_CONFIG_HOME").or_else(|| env("HOME").map(|h| h.join(".config"))) {
        files.push(dir.join("nix/nix.conf"));
    }
    files
}

/// The cache this run checks: `--cache`, else nix.conf's.
pub fn configured_url(opts: &CacheOptions) -> Result<String, String> {
    if let Some(url) = &opts.url {
        return Ok(url.trim_end_matches('/').to_string());
    }
    NixConf::load(&opts.nix_conf).lane_cache().map(str::to_string).ok_or_else(|| {
        "no binary cache configured (no --cache, and no substituter in nix.conf but cache.nixos.org)".into()
    })
}

pub fn run(ctx: &Ctx) -> Outcome {
    let opts = &ctx.opts.cache;
    let url = match configured_url(opts) {
        Ok(u) => u,
        Err(e) => {
            return Outcome::unavailable(
                e,
                "pass --cache http://HOST/CACHE, or set extra-substituters (and trusted-public-keys) in the runner's nix.conf",
            )
        }
    };
    let key_texts: Vec<String> = if opts.trusted_keys.is_empty() {
        NixConf::load(&opts.nix_conf).trusted_public_keys
    } else {
        opts.trusted_keys.clone()
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let mut o = Outcome::new();
            o.fail(format!("starting the runtime: {e}"), "the machine is out of threads or file descriptors");
            return o;
        }
    };
    runtime.block_on(check(ctx, &url, &key_texts))
}

async fn check(ctx: &Ctx, url: &str, key_texts: &[String]) -> Outcome {
    let opts = &ctx.opts.cache;
    let mut o = Outcome::new();
    o.detail("url", url);
    let mut keys = Vec::new();
    for k in key_texts {
        match TrustedPublicKey::parse(k) {
            Ok(key) => keys.push(key),
            Err(e) => o.fail(
                format!("trusted key {k:?} is not a Nix public key: {e}"),
                "copy the key from the cache (flywheel cache info)",
            ),
        }
    }
    o.detail("trusted_keys", keys.iter().map(|k| k.name.clone()).collect::<Vec<_>>());
    let http = match reqwest::Client::builder().timeout(Duration::from_secs(30)).build() {
        Ok(c) => c,
        Err(e) => {
            o.fail(format!("HTTP client: {e}"), "check the system's TLS setup");
            return o;
        }
    };
    let client = Client { http, url: url.to_string(), token: opts.token.clone() };

    // 1. nix-cache-info.
    let started = Instant::now();
    let store_dir = match client.get_text("nix-cache-info").await {
        Ok((200, text)) => {
            let latency = started.elapsed().as_secs_f64();
            o.metric("cache_info_latency_seconds", latency);
            o.note(format!("{url}/nix-cache-info in {:.1} ms", latency * 1e3));
            let dir = text.lines().find_map(|l| l.strip_prefix("StoreDir:")).map(str::trim).unwrap_or("/nix/store");
            let ours = default_store_dir();
            if dir != ours.as_str() {
                o.fail(
                    format!("the cache is for store {dir}, this runner's is {}", ours.as_str()),
                    "point the runner at the cache for its own store directory",
                );
                return o;
            }
            ours
        }
        Ok((status, _)) => {
            o.fail(
                format!("{url}/nix-cache-info: HTTP {status}"),
                "check the cache's URL (http://HOST/CACHE) and that the cache exists on the server",
            );
            return o;
        }
        Err(e) => {
            o.fail(
                format!("{url}/nix-cache-info: {e}"),
                "check that the cache server runs and that this runner can reach it",
            );
            return o;
        }
    };
    if keys.is_empty() {
        o.fail(
            "no trusted public key for the cache: nothing it serves can be verified",
            "pass --trusted-key, or set trusted-public-keys in nix.conf, with the cache's key (read it from the cache: flywheel cache info)",
        );
    }

    // 2. A known path: hit or miss, verified.
    let (known, explicit) = match &opts.known_path {
        Some(p) => (Some(p.clone()), true),
        None => (own_store_path(&store_dir), false),
    };
    match known.as_deref().map(|p| store_dir.parse_path(p.as_bytes()).map_err(|e| format!("{p}: {e}"))) {
        Some(Ok(path)) => match pull_verified(&client, &store_dir, &path, &keys, &mut o, "known").await {
            Ok(Some(_)) => {}
            Ok(None) if explicit => o.fail(
                format!("{} is not in the cache (miss)", store_dir.render_path(&path)),
                "push it (flywheel cache push) or pass a --known-path the cache holds",
            ),
            Ok(None) => {
                o.note(format!("the canary's own path {} is not in the cache (miss)", store_dir.render_path(&path)))
            }
            Err(e) => o.fail(
                e,
                "the cache serves a path it cannot prove: check its signing key and run flywheel cache verify",
            ),
        },
        Some(Err(e)) => o.fail(format!("--known-path: {e}"), "give a store path (/nix/store/HASH-NAME)"),
        None => {
            // No path to pull: time a narinfo request that must miss.
            let started = Instant::now();
            match client.get_text("00000000000000000000000000000000.narinfo").await {
                Ok((404, _)) => {
                    o.metric("cache_narinfo_latency_seconds", started.elapsed().as_secs_f64());
                    o.note("no known path to pull (pass --known-path): timed a narinfo miss instead");
                }
                Ok((status, _)) => o.fail(
                    format!("a narinfo for a path nobody has: HTTP {status}, expected 404"),
                    "check the cache server",
                ),
                Err(e) => o.fail(e, "check the cache server"),
            }
        }
    }

    // 3. With a write token: a fresh path pushed and pulled back.
    match &opts.token {
        Some(token) => push_and_pull(ctx, &client, &store_dir, token, &keys, &mut o).await,
        None => o.note("no write token: push not checked (pass --token)"),
    }
    o
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Client {
    fn request(&self, path: &str) -> reqwest::RequestBuilder {
        let target = if path.contains("://") { path.to_string() } else { format!("{}/{path}", self.url) };
        let req = self.http.get(target);
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn get_text(&self, path: &str) -> Result<(u16, String), String> {
        let resp = self.request(path).send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, text))
    }
}

/// The canary's own store path, when it runs from the store (`nix run .#canary`).
fn own_store_path(store_dir: &StoreDir) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    flywheel_nix::store_path::resolve(&exe, store_dir).ok().map(|p| store_dir.render_path(&p))
}

/// Fetches `path`'s narinfo and NAR and checks both, with the pull client's own checks
/// (flywheel_cache::pull::check_path). Ok(None) on a miss.
async fn pull_verified(
    client: &Client,
    store_dir: &StoreDir,
    path: &StorePath,
    keys: &[TrustedPublicKey],
    o: &mut Outcome,
    what: &str,
) -> Result<Option<f64>, String> {
    let shown = store_dir.render_path(path);
    let checked = check_path(&client.http, &client.url, client.token.as_deref(), store_dir, keys, path).await?;
    let Some(c) = checked else {
        o.detail(&format!("{what}_path"), serde_json::json!({"path": shown, "result": "miss"}));
        return Ok(None);
    };
    o.metric_with("cache_narinfo_latency_seconds", c.narinfo_seconds, &[("path", what)]);
    let rate = c.nar_size as f64 / c.download_seconds.max(1e-6);
    o.metric_with("cache_pull_bytes_per_second", rate, &[("path", what)]);
    o.detail(
        &format!("{what}_path"),
        serde_json::json!({"path": shown, "result": "hit", "nar_size": c.nar_size, "file_size": c.file_bytes,
            "narinfo_ms": c.narinfo_seconds * 1e3, "download_ms": c.download_seconds * 1e3, "mb_per_s": rate / 1e6}),
    );
    o.note(format!(
        "{what} path {shown}: hit, signature and NAR hash verified, {:.1} MB in {:.0} ms ({:.1} MB/s)",
        c.nar_size as f64 / 1e6,
        c.download_seconds * 1e3,
        rate / 1e6
    ));
    Ok(Some(rate))
}

/// Adds a fresh file to the local store, pushes it with flywheel's client and pulls it back.
async fn push_and_pull(
    ctx: &Ctx,
    client: &Client,
    store_dir: &StoreDir,
    token: &str,
    keys: &[TrustedPublicKey],
    o: &mut Outcome,
) {
    let fresh = match add_fresh_path(ctx) {
        Ok(p) => p,
        Err(e) => {
            o.fail(
                format!("push: making a fresh store path: {e}"),
                "check that this user can add to the Nix store (nix-store --add)",
            );
            return;
        }
    };
    let Ok(path) = store_dir.parse_path(fresh.as_bytes()) else {
        o.fail(format!("push: nix-store --add printed {fresh:?}, not a store path"), "check the runner's Nix");
        return;
    };
    let url = client.url.clone();
    let token = token.to_string();
    let roots = vec![path.clone()];
    let sd = store_dir.clone();
    let pushed = tokio::task::spawn_blocking(move || {
        let db = flywheel_nix::store_db::StoreDb::open_root(Path::new("/"), sd.clone()).map_err(|e| e.to_string())?;
        let opts = flywheel_cache::http_push::HttpPushOptions {
            jobs: 1,
            zstd_level: 3,
            real_store: flywheel_nix::store_path::real_store(Path::new("/"), &sd),
            token: Some(token),
            attempts: 3,
            progress: None,
        };
        flywheel_cache::http_push::push_http(&db, &roots, &url, &opts).map_err(|e| e.to_string())
    })
    .await;
    let report = match pushed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            o.fail(format!("push: {e}"), "check the token's scope (write) and the cache server's log");
            return;
        }
        Err(e) => {
            o.fail(format!("push: {e}"), "a bug in flywheel: report it with events.jsonl");
            return;
        }
    };
    if let Some(f) = report.failed.first() {
        o.fail(format!("push: {}: {}", f.path, f.error), "check the token's scope (write) and the cache server's log");
        return;
    }
    let rate = report.nar_bytes as f64 / report.seconds.max(1e-6);
    o.metric("cache_push_bytes_per_second", rate);
    o.detail("push", serde_json::json!({"path": fresh, "pushed": report.pushed, "nar_bytes": report.nar_bytes, "seconds": report.seconds}));
    o.note(format!("pushed {fresh} ({} B) in {:.0} ms", report.nar_bytes, report.seconds * 1e3));
    match pull_verified(client, store_dir, &path, keys, o, "pushed").await {
        Ok(Some(_)) => {}
        Ok(None) => o.fail(
            format!("{fresh} was pushed but the cache does not serve it"),
            "check the cache server's log and its index (flywheel cache verify)",
        ),
        Err(e) => {
            o.fail(e, "the cache serves what was pushed wrongly: check its signing key and run flywheel cache verify")
        }
    }
}

/// A new store path no cache can have: a small file of random bytes, added with nix-store.
fn add_fresh_path(ctx: &Ctx) -> Result<String, String> {
    let dir = ctx.scratch_dir("push").map_err(|e| format!("scratch directory: {e}"))?;
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| format!("random bytes: {e}"))?;
    let file = dir.join("flywheel-canary-push");
    let body = format!(
        "flywheel canary push check\n{}\n{}\n",
        crate::run::rfc3339(time::OffsetDateTime::now_utc()),
        random.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(&file, body).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut cmd = Command::new("nix-store");
    cmd.arg("--add").arg(&file);
    match output_within(&mut cmd, Duration::from_secs(30)) {
        CommandOutcome::Done(out) if out.status.success() => {
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            ctx.added_store_path(&path);
            Ok(path)
        }
        CommandOutcome::Done(out) => Err(format!("nix-store --add: {}", String::from_utf8_lossy(&out.stderr).trim())),
        CommandOutcome::NotFound => Err("nix-store is not on PATH".into()),
        CommandOutcome::TimedOut => Err("nix-store --add did not finish in 30 s".into()),
        CommandOutcome::Failed(e) => Err(format!("nix-store: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_conf_settings_override_and_extend() {
        let mut c = NixConf::default();
        c.parse_into(
            "substituters = https://cache.nixos.org/ # the default\n\
             trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n\
             extra-substituters = http://attic.nix-cache.svc.cluster.local/main\n\
             # extra-substituters = http://commented.out\n\
             extra-trusted-public-keys = main:AAAA\n",
        );
        assert_eq!(c.substituters, ["https://cache.nixos.org/", "http://attic.nix-cache.svc.cluster.local/main"]);
        assert_eq!(c.lane_cache(), Some("http://attic.nix-cache.svc.cluster.local/main"));
        assert_eq!(c.trusted_public_keys.len(), 2);
        c.parse_into("substituters = https://cache.nixos.org\n");
        assert_eq!(c.lane_cache(), None, "a later substituters line replaces the list");
    }

    #[test]
    fn flag_wins_over_nix_conf() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("nix.conf");
        std::fs::write(&conf, "extra-substituters = http://a.example/main\n").expect("write");
        let mut opts = CacheOptions { nix_conf: vec![conf], ..Default::default() };
        assert_eq!(configured_url(&opts).as_deref(), Ok("http://a.example/main"));
        opts.url = Some("http://b.example/x/".into());
        assert_eq!(configured_url(&opts).as_deref(), Ok("http://b.example/x"));
        opts.url = None;
        opts.nix_conf = vec![dir.path().join("missing.conf")];
        assert!(configured_url(&opts).is_err());
    }
}
