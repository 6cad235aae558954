//! How far a push or pull has got, for the CLI's progress bar: reported after each path.

use std::sync::Arc;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub paths_done: usize,
    pub paths_total: usize,
    /// NAR bytes of the paths done.
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Called after each path (from any thread).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Counts paths as they finish and reports to an optional callback.
pub(crate) struct Tracker {
    report: Option<ProgressFn>,
    state: std::sync::Mutex<Progress>,
}

impl Tracker {
    pub fn new(report: Option<ProgressFn>, paths_total: usize, bytes_total: u64) -> Self {
        let state = Progress { paths_total, bytes_total, ..Progress::default() };
        Tracker { report, state: std::sync::Mutex::new(state) }
    }

    /// One more path finished (`nar_bytes` of it): returns its number.
    pub fn path_done(&self, nar_bytes: u64) -> usize {
        let now = match self.state.lock() {
            Ok(mut s) => {
                s.paths_done += 1;
                s.bytes_done += nar_bytes;
                *s
            }
            Err(_) => return 0,
        };
        if let Some(f) = &self.report {
            f(now);
        }
        now.paths_done
    }
}
