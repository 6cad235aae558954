//! One module per command group: each turns parsed arguments into library calls and output.

mod cache;
mod driver;
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
        Command::Driver(c) => driver::run(c),
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

pub use flywheel_nix::human_bytes;
