use anyhow::{bail, Context};
use flywheel_cache::{FileCache, PushOptions, Target};
use flywheel_nix::keys::SecretKey;

use super::{human_bytes, Store};
use crate::cli::{CacheCommand, PushArgs};

pub fn run(command: CacheCommand) -> anyhow::Result<()> {
    match command {
        CacheCommand::Push(args) => push(args),
    }
}

fn push(args: PushArgs) -> anyhow::Result<()> {
    let key = SecretKey::read_file(&args.key).with_context(|| format!("reading signing key {}", args.key.display()))?;
    let store = Store::open(&args.store)?;
    let roots = store.resolve(&args.paths)?;
    let Target::File(dir) = &args.to;
    let cache = FileCache::open_or_create(dir, store.db.store_dir().clone())
        .with_context(|| format!("opening cache {}", dir.display()))?;
    let opts = PushOptions { compression: args.compression, jobs: args.jobs, real_store: store.real_store.clone() };
    let report = flywheel_cache::push(&store.db, &roots, &cache, &key, &opts)?;

    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    eprintln!(
        "pushed {} of {} paths to {} ({} NAR, {} {}) in {:.1} s; {} were already there",
        report.pushed,
        report.closure,
        dir.display(),
        human_bytes(report.nar_bytes),
        human_bytes(report.file_bytes),
        args.compression,
        report.seconds,
        report.present
    );
    if !report.failed.is_empty() {
        for f in &report.failed {
            eprintln!("  not pushed: {}: {}", f.path, f.error);
        }
        bail!("{} of {} paths could not be pushed", report.failed.len(), report.closure);
    }
    Ok(())
}
