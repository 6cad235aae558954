//! What the started hook leaves for the completed hook, in one small JSON file written by
//! temp file and rename.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE: &str = "job.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    /// Unix seconds at the job's start: paths registered later are what the job built.
    pub started_at: u64,
    /// Each temp dir's entries at the start (names, lossily as UTF-8).
    pub temp_entries: BTreeMap<String, BTreeSet<String>>,
}

impl JobState {
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let bytes = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        tmp.write_all(&bytes).map_err(|e| format!("{}: {e}", tmp.path().display()))?;
        tmp.persist(dir.join(FILE)).map_err(|e| format!("{}: {}", dir.join(FILE).display(), e.error))?;
        Ok(())
    }

    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FILE);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Forgets the job: the next job on a reused runner starts clean.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
    let _ = std::fs::remove_dir(dir);
}
