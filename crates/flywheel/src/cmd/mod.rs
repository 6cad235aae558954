//! One module per command group: each turns parsed arguments into library calls and output.

mod cache;
mod image;
mod key;
mod nar;
mod path_info;

use flywheel_nix::store_db::StoreDb;
use flywheel_nix::store_path::{self, StoreDir};

use crate::cli::{Command, StoreArgs};

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Nar(c) => nar::run(c),
        Command::Key(c) => key::run(c),
        Command::Cache(c) => cache::run(c),
        Command::PathInfo(a) => path_info::run(a),
        Command::Image(c) => image::run(c),
    }
}

/// The store a command reads: its database and where its files are on disk.
pub struct Store {
    pub db: StoreDb,
    pub real_store: std::path::PathBuf,
}

impl Store {
    pub fn open(args: &StoreArgs) -> anyhow::Result<Self> {
        let store_dir: StoreDir = store_path::default_store_dir();
        let db = StoreDb::open_root(&args.store, store_dir.clone())?;
        let real_store = args.store.join(store_dir.as_str().trim_start_matches('/'));
        Ok(Self { db, real_store })
    }

    pub fn resolve(&self, paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<flywheel_nix::StorePath>> {
        paths.iter().map(|p| Ok(store_path::resolve(p, self.db.store_dir())?)).collect()
    }
}

/// Bytes for people: 1.5 MiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
