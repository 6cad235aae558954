use std::fs::File;
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;

use anyhow::{bail, Context};
use flywheel_nix::nar;

use crate::cli::NarCommand;

pub fn run(command: NarCommand) -> anyhow::Result<()> {
    match command {
        NarCommand::Dump { path } => {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write a binary NAR to a terminal; redirect stdout to a file or a pipe");
            }
            // A plain file on fd 1 (not Stdout's line buffer) lets the kernel copy file contents.
            let out = File::from(stdout.as_fd().try_clone_to_owned().context("duplicating stdout")?);
            nar::write_nar(&path, out).with_context(|| format!("dumping {}", path.display()))?;
            Ok(())
        }
        NarCommand::Hash { paths, json, jobs } => hash(&paths, json, jobs),
        NarCommand::Restore { dir } => {
            let restored =
                nar::restore(io::stdin().lock(), &dir).with_context(|| format!("restoring into {}", dir.display()))?;
            tracing::info!(
                "restored {} bytes of NAR: {} files ({} bytes), {} directories, {} symlinks",
                restored.nar_size,
                restored.files,
                restored.bytes,
                restored.directories,
                restored.symlinks
            );
            Ok(())
        }
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HashJson {
    path: String,
    nar_hash: String,
    nar_size: u64,
}

fn hash(paths: &[std::path::PathBuf], json: bool, jobs: usize) -> anyhow::Result<()> {
    let digests = nar::hash_paths(paths, jobs)
        .into_iter()
        .zip(paths)
        .map(|(d, p)| d.with_context(|| format!("hashing {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = io::stdout().lock();
    if json {
        let rows: Vec<HashJson> = paths
            .iter()
            .zip(&digests)
            .map(|(p, d)| HashJson { path: p.display().to_string(), nar_hash: d.to_nix32(), nar_size: d.size })
            .collect();
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        for d in &digests {
            writeln!(out, "{}", d.to_nix32())?;
        }
    }
    Ok(())
}
