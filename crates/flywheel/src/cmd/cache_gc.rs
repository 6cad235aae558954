//! `flywheel cache pin | gc | stats`: retention on a server's data directory.

use anyhow::{bail, Context};
use flywheel_cache::gc::{self, GcOptions, GcReport, Policy};
use flywheel_nix::human_bytes;

use super::cache::{now, open_existing};
use crate::cli::{GcArgs, PinArgs, StatsArgs};

pub fn pin(a: PinArgs) -> anyhow::Result<()> {
    // `./result` and other links name the store path they point to.
    let store_dir = flywheel_nix::store_path::default_store_dir();
    let path = store_dir.render_path(&flywheel_nix::store_path::resolve(&a.path, &store_dir)?);
    let path = path.as_str();
    let (cache, rev) = match (&a.to, &a.cache) {
        (Some(url), _) => {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                bail!("--to {url}: expected http://HOST:PORT/CACHE");
            }
            let opts = flywheel_cache::http_pin::PinOptions {
                token: a.token.as_deref(),
                keep_revisions: a.keep_revisions,
                keep_days: a.keep_days,
                attempts: 5,
            };
            (url.clone(), flywheel_cache::http_pin::pin_http(url, &a.pin, path, &opts)?)
        }
        (None, Some(cache)) => {
            let data = open_existing(&a.data)?;
            (cache.clone(), data.index().pin(cache, &a.pin, path, a.keep_revisions, a.keep_days, now())?)
        }
        (None, None) => bail!("give --cache NAME (with --data) or --to URL"),
    };
    if a.json {
        println!("{}", serde_json::json!({ "cache": cache, "pin": a.pin, "revision": rev }));
    } else {
        println!("{cache}: pin {} revision {} is {}", a.pin, rev.revision, rev.store_path);
    }
    Ok(())
}

pub fn gc(a: GcArgs) -> anyhow::Result<()> {
    let config = a.data.config()?;
    let data = open_existing(&a.data)?;
    let names: Vec<String> = match &a.cache {
        Some(name) => {
            data.index().cache(name)?.with_context(|| format!("no cache named {name:?}"))?;
            vec![name.clone()]
        }
        None => data.index().caches()?.into_iter().map(|c| c.name).collect(),
    };
    let caches = names
        .into_iter()
        .map(|name| {
            let base = config.as_ref().and_then(|c| c.caches.get(&name)).map(|c| c.policy()).unwrap_or_default();
            let policy = Policy {
                max_size: a.max_size.or(base.max_size),
                max_age: a.max_age.map(|d| d.secs()).or(base.max_age),
                grace: a.grace.map_or(base.grace, |d| d.secs()),
            };
            (name, policy)
        })
        .collect();
    let quiet = a.json;
    let log = move |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    };
    let opts = GcOptions {
        caches,
        dry_run: a.dry_run,
        in_use: &|_, _| false,
        log: &log,
        batch: a.batch_size,
        history: gc::HistoryRetention::from_config(config.as_ref()),
    };
    let report = gc::collect(data.index(), data.storage().as_ref(), &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &GcReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for c in &r.caches {
        let paths: usize = c.removed.values().map(|g| g.paths.len()).sum();
        let bytes: u64 = c.removed.values().map(|g| g.bytes).sum();
        println!(
            "{}: {verb} {paths} of {} paths ({} of {}); keeps {} paths ({})",
            c.cache,
            c.before.paths,
            human_bytes(bytes),
            human_bytes(c.before.bytes),
            c.kept.paths,
            human_bytes(c.kept.bytes)
        );
        for (reason, g) in &c.removed {
            println!("  {reason}: {} paths, {}", g.paths.len(), human_bytes(g.bytes));
        }
        if !c.released_revisions.is_empty() {
            let revs: Vec<String> = c.released_revisions.iter().map(|(p, r)| format!("{p}#{r}")).collect();
            println!("  released pin revisions: {}", revs.join(" "));
        }
        if c.spared > 0 {
            println!("  {} paths kept after all: used again since GC looked", c.spared);
        }
        if let Some(over) = c.over_quota_bytes {
            println!("  warning: pins and new uploads alone exceed the quota by {}", human_bytes(over));
        }
    }
    if r.dry_run {
        println!("orphan NARs: would unlink {} ({})", r.orphans.files, human_bytes(r.orphans.bytes));
    } else {
        println!(
            "unlinked {} NARs ({}) and {} orphan NARs ({}); forgot {} abandoned uploads; {:.2}s",
            r.nars.files,
            human_bytes(r.nars.bytes),
            r.orphans.files,
            human_bytes(r.orphans.bytes),
            r.expired_uploads,
            r.seconds
        );
        if r.canary_runs_removed > 0 {
            println!("forgot {} canary runs past their retention", r.canary_runs_removed);
        }
    }
}

pub fn stats(a: StatsArgs) -> anyhow::Result<()> {
    let data = open_existing(&a.data)?;
    let stats = flywheel_cache::stats::gather(data.index(), now())?;
    if a.json {
        println!("{}", serde_json::to_string(&stats)?);
        return Ok(());
    }
    println!("stored NARs: {} ({})", stats.stored.paths, human_bytes(stats.stored.bytes));
    for c in &stats.caches {
        let rate = c.hit_rate.map_or("-".to_string(), |r| format!("{:.1}%", r * 100.0));
        println!(
            "{}: {} paths, {}; narinfo hit rate {rate} ({} hits, {} misses); {} NAR downloads",
            c.cache,
            c.paths,
            human_bytes(c.bytes),
            c.narinfo_hits,
            c.narinfo_misses,
            c.nar_downloads
        );
        let read: Vec<String> = c
            .read_within
            .iter()
            .map(|r| format!("{} {} paths {}", r.age, r.paths.unwrap_or(0), human_bytes(r.bytes)))
            .collect();
        println!("  read within: {}", read.join(", "));
        let served: Vec<String> =
            c.served_by_nar_age.iter().map(|r| format!("{} {}", r.age, human_bytes(r.bytes))).collect();
        println!("  served by NAR age: {}", served.join(", "));
        for p in &c.pins {
            let revs: Vec<String> = p.revisions.iter().map(|r| format!("#{} {}", r.revision, r.store_path)).collect();
            println!("  pin {}: {}", p.name, revs.join(", "));
        }
    }
    Ok(())
}
