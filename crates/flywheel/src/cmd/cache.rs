use anyhow::{bail, Context};
use flywheel_cache::{FileCache, PushOptions, Target};
use flywheel_nix::keys::SecretKey;

use super::{human_bytes, Store};
use crate::cli::{
    CacheCommand, CacheCreateArgs, CacheInfoArgs, PullArgs, PushArgs, ServeArgs, TokenCommand, TokenCreateArgs,
    VerifyArgs,
};
use flywheel_cache::data_dir::{CacheInfo, DataDir};
use flywheel_cache::index::Visibility;

pub fn run(command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Push(args) => push(args),
        CacheCommand::Pull(args) => pull(args),
        CacheCommand::Create(args) => create(args),
        CacheCommand::Info(args) => info(args),
        CacheCommand::Token(TokenCommand::Create(args)) => token_create(args),
        CacheCommand::Serve(args) => serve(args),
        CacheCommand::Verify(args) => verify(args),
        CacheCommand::Pin(args) => super::cache_gc::pin(args),
        CacheCommand::Gc(args) => super::cache_gc::gc(args),
        CacheCommand::Stats(args) => super::cache_gc::stats(args),
        CacheCommand::Migrate(args) => migrate(args),
    }
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let data = open_existing(&a.data)?;
    let report = flywheel_cache::verify::verify(data.index(), data.storage().as_ref(), a.full)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        for p in &report.adopted {
            println!("adopted: {p} (another cache's upload, adopted before flywheel kept each cache's paths apart: push it again to replace it)");
        }
        println!(
            "{} paths in all caches ({} store paths), {} NARs; {} stored NARs not used by a path ({} uploads waiting for a narinfo); {} stray files; {} adopted paths",
            report.paths,
            report.store_paths,
            report.nars,
            report.unreferenced_nars,
            report.pending_uploads,
            report.strays.len(),
            report.adopted.len()
        );
    }
    if !report.ok() {
        bail!("{} problems in {}", report.problems.len(), data.backend().describe());
    }
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    use flywheel_cache::server::{self, ServerOptions};
    let config = a.data.config()?.unwrap_or_default();
    let backend = a.data.backend()?;
    let data = open_data(&backend)?;
    let defaults = ServerOptions::default();
    // Flags, then the config file, then the defaults.
    let opts = ServerOptions {
        listen: a.listen.or(config.listen).unwrap_or(defaults.listen),
        max_nar_bytes: a.max_nar_bytes.or(config.max_nar_bytes.map(|s| s.bytes())).unwrap_or(defaults.max_nar_bytes),
        max_narinfo_bytes: config.max_narinfo_bytes.map_or(defaults.max_narinfo_bytes, |s| s.bytes() as usize),
        max_file_bytes: config.max_file_bytes.map_or(defaults.max_file_bytes, |s| s.bytes() as usize),
        max_requests_per_client: a
            .max_requests_per_client
            .or(config.max_requests_per_client)
            .unwrap_or(defaults.max_requests_per_client),
        zstd_level: config.zstd_level.unwrap_or(defaults.zstd_level),
        ingest_jobs: config.ingest_jobs.unwrap_or(defaults.ingest_jobs),
        history: flywheel_cache::gc::HistoryRetention::from_config(Some(&config)),
        limits: server::Limits::from_config(&config),
        caches: config.caches,
        gc_interval: a.gc_interval.or(config.gc_interval).map(|d| d.0).filter(|d| !d.is_zero()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    let dir = backend.describe();
    runtime.block_on(server::serve(data, opts, |l| {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for c in &l.caches {
            let key =
                flywheel_nix::keys::SecretKey::parse(&c.secret_key).map(|k| k.public().to_string()).unwrap_or_default();
            let _ = writeln!(out, "http://{}/{} {} {}", l.addr, c.name, key, c.visibility.as_str());
        }
        let _ = out.flush();
        eprintln!("flywheel cache: serving {dir} on http://{} (Ctrl-C stops)", l.addr);
    }))?;
    Ok(())
}

/// The backends the arguments name, which must exist: only `create` and `serve` make them.
pub(super) fn open_existing(data: &crate::cli::DataArgs) -> anyhow::Result<DataDir> {
    let backend = data.backend()?;
    if !backend.exists() {
        bail!("{}: no cache data directory here (flywheel cache create makes one)", backend.data.display());
    }
    open_data(&backend)
}

pub(super) fn open_data(backend: &flywheel_cache::data_dir::Backend) -> anyhow::Result<DataDir> {
    DataDir::open(backend).with_context(|| format!("opening the cache {}", backend.describe()))
}

fn migrate(a: crate::cli::MigrateArgs) -> anyhow::Result<()> {
    use flywheel_cache::config::Config;
    use flywheel_cache::data_dir::Backend;
    let load = |p: &std::path::Path| -> anyhow::Result<Backend> { Ok(Backend::from_config(&Config::load(p)?, None)) };
    let (from, to) = (load(&a.from)?, load(&a.to)?);
    if !from.exists() {
        bail!("{}: no cache here to migrate from", from.describe());
    }
    let source = open_data(&from)?;
    let dest = open_data(&to)?;
    let log = |line: &str| eprintln!("migrate: {line}");
    let opts = flywheel_cache::migrate::MigrateOptions { jobs: a.jobs, full: a.full, log: &log };
    let report = flywheel_cache::migrate::migrate(&source, &dest, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for p in report.verify.problems.iter().chain(&report.mismatches) {
            println!("problem: {p}");
        }
        println!(
            "{} caches, {} paths copied ({} there already), {} NARs copied ({}; {} there already), {} tokens, {} pin revisions, {} files, in {:.1}s",
            report.caches,
            report.paths_added,
            report.paths_present,
            report.nars_copied,
            human_bytes(report.bytes_copied),
            report.nars_present,
            report.tokens_copied,
            report.pin_revisions_copied,
            report.files_copied,
            report.seconds
        );
    }
    if !report.ok() {
        bail!(
            "the copy in {} does not match: {} problems",
            to.describe(),
            report.verify.problems.len() + report.mismatches.len()
        );
    }
    Ok(())
}

pub(super) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn print_info(info: &CacheInfo, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(info)?);
    } else {
        println!("{}", info.public_key);
    }
    Ok(())
}

fn create(a: CacheCreateArgs) -> anyhow::Result<()> {
    // A bad name creates no data directory.
    flywheel_cache::data_dir::check_cache_name(&a.name)?;
    let data = open_data(&a.data.backend()?)?;
    let visibility = if a.private { Visibility::Private } else { Visibility::Public };
    let info = data.create_cache(&a.name, visibility, a.priority, a.key_name.as_deref(), now())?;
    eprintln!("created {} cache {} (priority {}); its public key:", info.visibility.as_str(), info.name, info.priority);
    print_info(&info, a.json)
}

fn info(a: CacheInfoArgs) -> anyhow::Result<()> {
    let data = open_existing(&a.data)?;
    print_info(&data.cache_info(&a.cache)?, a.json)
}

fn token_create(a: TokenCreateArgs) -> anyhow::Result<()> {
    let now = now();
    let expires_at = a.expires.as_deref().map(|w| parse_when(w, now)).transpose()?;
    let data = open_existing(&a.data)?;
    let token = data.create_token(&a.cache, a.scope, expires_at, a.description.as_deref(), now)?;
    println!("{token}");
    Ok(())
}

/// `90m`, `12h`, `30d` from `now`, or an RFC 3339 time; Unix seconds.
fn parse_when(when: &str, now: i64) -> anyhow::Result<i64> {
    let unit = |c: char| match c {
        's' => Some(1),
        'm' => Some(60),
        'h' => Some(3600),
        'd' => Some(86400),
        'w' => Some(7 * 86400),
        _ => None,
    };
    if let Some(last) = when.chars().last() {
        if let (Some(mult), Ok(n)) = (unit(last), when[..when.len() - last.len_utf8()].parse::<i64>()) {
            if n > 0 {
                return n.checked_mul(mult).and_then(|d| now.checked_add(d)).context("--expires is too far away");
            }
        }
    }
    let t = time::OffsetDateTime::parse(when, &time::format_description::well_known::Rfc3339)
        .map_err(|_| anyhow::anyhow!("--expires {when:?}: expected a duration (90m, 12h, 30d) or an RFC 3339 time"))?;
    if t.unix_timestamp() <= now {
        bail!("--expires {when:?} is in the past");
    }
    Ok(t.unix_timestamp())
}

fn push(args: PushArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store)?;
    let mut roots = store.resolve(&args.paths)?;
    if let Some(since) = &args.since {
        let t = match since.parse::<i64>() {
            Ok(secs) => secs,
            Err(_) => time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
                .map_err(|_| anyhow::anyhow!("--since {since:?}: expected an RFC 3339 time or Unix seconds"))?
                .unix_timestamp(),
        };
        let new = store.db.registered_since(t)?;
        tracing::info!("{} paths registered since {since}", new.len());
        roots.extend(new);
    }
    let dir = match &args.to {
        Target::File(dir) => dir,
        Target::Http(url) => {
            let level = match args.compression {
                flywheel_cache::Compression::Zstd { level } => level,
                flywheel_cache::Compression::None => 3,
            };
            let (_bar, progress) = super::Bar::new("pushed");
            let opts = flywheel_cache::http_push::HttpPushOptions {
                jobs: args.jobs,
                zstd_level: level,
                real_store: store.real_store.clone(),
                token: args.token.clone(),
                attempts: 5,
                progress,
            };
            let report = flywheel_cache::http_push::push_http(&store.db, &roots, url, &opts)?;
            return push_summary(&args, url, &report);
        }
    };
    let Some(key_file) = &args.key else {
        bail!("a file:// cache needs --key (or FLYWHEEL_SIGNING_KEY_FILE) to sign with");
    };
    let key = SecretKey::read_file(key_file).with_context(|| format!("reading signing key {}", key_file.display()))?;
    let cache = FileCache::open_or_create(dir, store.db.store_dir().clone())
        .with_context(|| format!("opening cache {}", dir.display()))?;
    let (bar, progress) = super::Bar::new("pushed");
    let opts =
        PushOptions { compression: args.compression, jobs: args.jobs, real_store: store.real_store.clone(), progress };
    let report = flywheel_cache::push(&store.db, &roots, &cache, &key, &opts)?;
    drop(bar);

    push_summary(&args, &dir.display().to_string(), &report)
}

fn pull(args: PullArgs) -> anyhow::Result<()> {
    let url = &args.from;
    let store_dir = flywheel_nix::store_path::default_store_dir();
    let roots = args
        .paths
        .iter()
        .map(|p| store_dir.parse_path(p.trim_end_matches('/').as_bytes()).map_err(|e| anyhow::anyhow!("{p}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = if args.trusted_keys.is_empty() { nix_trusted_keys()? } else { args.trusted_keys.clone() };
    let trusted_keys = keys
        .iter()
        .map(|k| {
            flywheel_nix::keys::PublicKey::parse(k).map(|p| p.0).map_err(|e| {
                // The key error's cause says what is wrong with it.
                let why = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
                anyhow::anyhow!("--trusted-key {k:?}: {why} (expected name:base64, as `flywheel cache info` prints)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let store = flywheel_cache::pull::LocalStore::new(&args.store.store, store_dir);
    let (bar, progress) = super::Bar::new("pulled");
    let opts = flywheel_cache::pull::PullOptions {
        jobs: args.jobs,
        trusted_keys,
        token: args.token.clone(),
        attempts: 5,
        install: args.install,
        sync: !args.no_sync,
        progress,
    };
    let report = flywheel_cache::pull::pull(&store, &roots, url, &opts)?;
    drop(bar);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    let rate = report.nar_bytes as f64 / report.seconds.max(1e-6) / 1e6;
    eprintln!(
        "pulled {} paths from {url} ({} NAR, {} downloaded) in {:.1} s ({rate:.0} MB/s of NAR, {}); {} of {} were already in the store",
        report.pulled,
        human_bytes(report.nar_bytes),
        human_bytes(report.file_bytes),
        report.seconds,
        report.install,
        report.present,
        report.closure
    );
    if !report.failed.is_empty() {
        for f in &report.failed {
            eprintln!("  not pulled: {}: {}", f.path, f.error);
        }
        bail!("{} paths could not be pulled", report.failed.len());
    }
    Ok(())
}

/// Nix's own trusted-public-keys (`nix show-config`), for a pull given no --trusted-key.
fn nix_trusted_keys() -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("nix")
        .args(["--extra-experimental-features", "nix-command", "show-config", "--json"])
        .output()
        .context("no --trusted-key given, and running `nix show-config` for Nix's trusted-public-keys failed")?;
    if !out.status.success() {
        bail!("no --trusted-key given, and `nix show-config` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).context("reading `nix show-config --json`")?;
    let keys: Vec<String> = config["trusted-public-keys"]["value"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if keys.is_empty() {
        bail!("no --trusted-key given, and Nix trusts no public keys (trusted-public-keys is empty)");
    }
    Ok(keys)
}

fn push_summary(args: &PushArgs, to: &str, report: &flywheel_cache::PushReport) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    let rate = report.nar_bytes as f64 / report.seconds.max(1e-6) / 1e6;
    eprintln!(
        "pushed {} of {} paths to {} ({} NAR, {} {}) in {:.1} s ({rate:.0} MB/s of NAR); {} were already there{}",
        report.pushed,
        report.closure,
        to,
        human_bytes(report.nar_bytes),
        human_bytes(report.file_bytes),
        args.compression,
        report.seconds,
        report.present,
        if report.upstream > 0 {
            format!(", {} declined as upstream's (signed by an upstream key)", report.upstream)
        } else {
            String::new()
        }
    );
    if !report.failed.is_empty() {
        for f in &report.failed {
            eprintln!("  not pushed: {}: {}", f.path, f.error);
        }
        bail!("{} of {} paths could not be pushed", report.failed.len(), report.closure);
    }
    Ok(())
}
