//! One module per command group: each turns parsed arguments into library calls and output.

mod cache;
mod cache_gc;
mod canary;
mod driver;
mod image;
mod key;
mod lane;
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
        Command::Canary(a) => canary::run(*a),
        Command::Lane(c) => lane::run(c),
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
        let real_store = store_path::real_store(&args.store, &store_dir);
        Ok(Self { db, real_store })
    }

    pub fn resolve(&self, paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<flywheel_nix::StorePath>> {
        paths.iter().map(|p| Ok(store_path::resolve(p, self.db.store_dir())?)).collect()
    }
}

pub use flywheel_nix::human_bytes;

/// Whether progress bars may be drawn (no -v).
pub static BARS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// A progress bar for a push or pull, on stderr when it is a terminal (the one-line summary
/// stays either way). The bar is finished and cleared when dropped.
pub struct Bar(Option<indicatif::ProgressBar>);

impl Bar {
    pub fn new(verb: &'static str) -> (Bar, Option<flywheel_cache::progress::ProgressFn>) {
        let wanted = BARS.load(std::sync::atomic::Ordering::Relaxed);
        if !wanted || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return (Bar(None), None);
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} of NAR, {binary_bytes_per_sec}, {elapsed}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        let shown = bar.clone();
        let report = std::sync::Arc::new(move |p: flywheel_cache::progress::Progress| {
            shown.set_length(p.bytes_total);
            shown.set_position(p.bytes_done);
            shown.set_message(format!("{verb} {}/{} paths", p.paths_done, p.paths_total));
        });
        (Bar(Some(bar)), Some(report))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
