//! Processes holding a GPU: any process this user can see with a GPU device node open. In a
//! runner pod that is the job's own leftovers (the runner itself never opens one), found
//! through /proc, which works where NVML's view of PIDs (the host's) does not.

use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub command: String,
}

/// Every process but this one with a file open whose path starts with one of `prefixes`.
pub fn holders(prefixes: &[String]) -> Result<Vec<Holder>, String> {
    let me = std::process::id();
    let rd = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
    let mut out = Vec::new();
    for entry in rd.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        // Another user's process: unreadable, and not the job's.
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| opens_gpu(&target, prefixes)));
        if holds {
            let command = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
            out.push(Holder { pid, command });
        }
    }
    out.sort_by_key(|h| h.pid);
    Ok(out)
}

fn opens_gpu(target: &Path, prefixes: &[String]) -> bool {
    let t = target.to_string_lossy();
    prefixes.iter().any(|p| t.starts_with(p.as_str()))
}
