//! At the end: nothing of this job left behind. No process of ours (this process or its
//! children) on a GPU, the scratch files and store paths the run made removed, and GPU memory
//! back to its level at the start.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::checks::command::{output_within, CommandOutcome};
use crate::context::Ctx;
use crate::step::Outcome;

/// GPU memory that may differ from the start without a leak (driver bookkeeping).
const MEMORY_SLACK: u64 = 64 << 20;

pub fn run(ctx: &Ctx) -> Outcome {
    let mut o = Outcome::new();
    files(ctx, &mut o);
    store_paths(ctx, &mut o);
    gpu(ctx, &mut o);
    o
}

fn files(ctx: &Ctx, o: &mut Outcome) {
    let scratch = ctx.scratch();
    let mut left = Vec::new();
    for path in &scratch {
        let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        if let Err(e) = removed {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!("removing {}: {e}", path.display());
            }
        }
        if std::fs::symlink_metadata(path).is_ok() {
            left.push(path.display().to_string());
        }
    }
    o.detail("scratch_removed", scratch.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    o.metric("cleanup_paths_left", left.len() as f64);
    if left.is_empty() {
        o.note(format!("{} scratch path(s) removed", scratch.len()));
    } else {
        o.fail(
            format!("scratch paths left behind: {}", left.join(", ")),
            "check the permissions of the temp directory; the runner's next job inherits what is left",
        );
    }
}

fn store_paths(ctx: &Ctx, o: &mut Outcome) {
    for path in ctx.store_paths() {
        let mut cmd = Command::new("nix-store");
        cmd.arg("--delete").arg(&path);
        let outcome = output_within(&mut cmd, Duration::from_secs(30));
        let gone = !std::path::Path::new(&path).exists();
        match outcome {
            CommandOutcome::Done(_) if gone => o.note(format!("deleted {path} from the local store")),
            CommandOutcome::Done(out) => o.fail(
                format!("{path} is still in the local store: {}", String::from_utf8_lossy(&out.stderr).trim()),
                "something holds a GC root to it: nix-store --query --roots PATH",
            ),
            _ => o.fail(format!("{path}: nix-store --delete did not run"), "check the runner's Nix"),
        }
    }
}

fn gpu(ctx: &Ctx, o: &mut Outcome) {
    let Some(start) = ctx.gpu_baseline() else {
        o.note("GPU not checked: the gpu step saw no GPU");
        return;
    };
    let now = match crate::probe::open(&ctx.opts.gpu).and_then(|p| p.read()) {
        Ok(r) => r.snapshot,
        Err(e) => {
            o.fail(
                format!("GPU state at the end: {e}"),
                "the GPU answered at the start and not now: check dmesg for Xid errors",
            );
            return;
        }
    };
    let ours = own_processes();
    for d in &now.devices {
        let left: Vec<u32> = d.compute_processes.iter().map(|p| p.pid).filter(|p| ours.contains(p)).collect();
        if !left.is_empty() {
            o.fail(
                format!("processes of this job still on GPU {}: {left:?}", d.index),
                "a CUDA context was not destroyed: the job must end its GPU processes before it exits",
            );
        }
        let Some(before) = start.devices.iter().find(|b| b.uuid == d.uuid) else {
            o.fail(
                format!("GPU {} ({}) was not there at the start", d.index, d.uuid),
                "a GPU came or went during the job: check the node",
            );
            continue;
        };
        let grew = d.memory_used_bytes.saturating_sub(before.memory_used_bytes);
        o.metric_with(
            "cleanup_gpu_memory_delta_bytes",
            d.memory_used_bytes as f64 - before.memory_used_bytes as f64,
            &[("gpu", &d.index.to_string())],
        );
        o.note(format!(
            "GPU {}: {} MiB used at the start, {} MiB now",
            d.index,
            before.memory_used_bytes >> 20,
            d.memory_used_bytes >> 20
        ));
        if grew > MEMORY_SLACK {
            o.fail(
                format!("GPU {} holds {} MiB more than at the start", d.index, grew >> 20),
                "memory was not freed: look for a leaked context (nvidia-smi --query-compute-apps=pid,used_memory --format=csv)",
            );
        }
    }
    for b in &start.devices {
        if !now.devices.iter().any(|d| d.uuid == b.uuid) {
            o.fail(
                format!("GPU {} ({}) is gone", b.index, b.uuid),
                "the GPU fell off the bus: check dmesg for Xid 79 and drain the node",
            );
        }
    }
}

/// This process and its descendants.
fn own_processes() -> BTreeSet<u32> {
    let me = std::process::id();
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The command name may hold spaces and parentheses: the fields after it start past the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut ours = BTreeSet::from([me]);
    loop {
        let before = ours.len();
        for (pid, ppid) in &parents {
            if ours.contains(ppid) {
                ours.insert(*pid);
            }
        }
        if ours.len() == before {
            return ours;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_processes_include_children() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("sleep");
        let ours = own_processes();
        let _ = child.kill();
        let _ = child.wait();
        assert!(ours.contains(&std::process::id()));
        assert!(ours.contains(&child.id()));
        assert!(!ours.contains(&1));
    }
}
