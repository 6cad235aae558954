//! `flywheel lane seed-nix`: the image's /nix copied into the runner's empty /nix volume by the
//! pod's init container, before the runner starts. The volume would otherwise hide the image's
//! store, and with it the store the runner's Nix registers on its first start.
//!
//! Written here rather than as a `cp -a` script because (1) the image need not hold `cp` or a
//! shell that has it (mkRunnerImage guarantees flywheel and bash, not coreutils), and (2) an init
//! container restarted after an interrupted copy would run `cp -a` again into a volume holding
//! read-only store directories and files it made itself, which fails with "Permission denied"
//! as the runner user (seen here). seed-nix clears an unmarked volume and copies again; it fills
//! directories before giving them their read-only modes, and marks the volume seeded only when
//! the copy is whole.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::LaneError;

/// Written last, in the volume's root: the copy is whole.
pub const MARKER: &str = ".flywheel-seeded";

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SeedReport {
    pub already_seeded: bool,
    /// Entries of an interrupted earlier copy removed first.
    pub cleared: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
    pub seconds: f64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LaneError + '_ {
    move |e| LaneError::Io { path: path.to_path_buf(), source: e }
}

/// Copies the tree under `from` into the existing directory `to`, unless `to` is marked seeded.
pub fn seed(from: &Path, to: &Path) -> Result<SeedReport, LaneError> {
    let started = Instant::now();
    let mut report = SeedReport::default();
    if !fs::metadata(to).map_err(io(to))?.is_dir() {
        return Err(LaneError::Other(format!("{}: not a directory (the /nix volume's mount point)", to.display())));
    }
    if to.join(MARKER).exists() {
        report.already_seeded = true;
        return Ok(report);
    }
    if !fs::metadata(from).map_err(io(from))?.is_dir() {
        return Err(LaneError::Other(format!("{}: not a directory", from.display())));
    }
    for entry in fs::read_dir(to).map_err(io(to))? {
        let path = entry.map_err(io(to))?.path();
        crate::hooks::remove_tree_or_file(&path).map_err(io(&path))?;
        report.cleared += 1;
    }

    let as_root = rustix::process::geteuid().is_root();
    // (directory, its mode, its mtime): applied after everything in it is written.
    let mut dirs: Vec<(PathBuf, u32, SystemTime)> = Vec::new();
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src_dir, dst_dir)) = stack.pop() {
        for entry in fs::read_dir(&src_dir).map_err(io(&src_dir))? {
            let entry = entry.map_err(io(&src_dir))?;
            if src_dir == from && entry.file_name() == MARKER {
                continue;
            }
            let (src, dst) = (entry.path(), dst_dir.join(entry.file_name()));
            let meta = fs::symlink_metadata(&src).map_err(io(&src))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                fs::create_dir(&dst).map_err(io(&dst))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o700)).map_err(io(&dst))?;
                dirs.push((dst.clone(), meta.mode() & 0o7777, meta.modified().map_err(io(&src))?));
                stack.push((src, dst.clone()));
                report.dirs += 1;
            } else if kind.is_symlink() {
                let target = fs::read_link(&src).map_err(io(&src))?;
                std::os::unix::fs::symlink(&target, &dst).map_err(io(&dst))?;
                report.symlinks += 1;
            } else if kind.is_file() {
                report.bytes += fs::copy(&src, &dst).map_err(io(&dst))?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(io(&dst))?;
                set_mtime(&dst, meta.modified().map_err(io(&src))?)?;
                report.files += 1;
            } else {
                return Err(LaneError::Other(format!(
                    "{}: not a file, directory or symlink; a Nix store holds nothing else",
                    src.display()
                )));
            }
            if as_root {
                rustix::fs::chownat(
                    rustix::fs::CWD,
                    &dst,
                    Some(rustix::process::Uid::from_raw(meta.uid())),
                    Some(rustix::process::Gid::from_raw(meta.gid())),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| LaneError::Io { path: dst.clone(), source: e.into() })?;
            }
        }
    }
    // Deepest first, so a directory made read-only is already full.
    for (dir, mode, mtime) in dirs.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(io(dir))?;
        set_mtime(dir, *mtime)?;
    }

    let mut marker = tempfile::NamedTempFile::new_in(to).map_err(io(to))?;
    std::io::Write::write_all(&mut marker, format!("seeded from {}\n", from.display()).as_bytes()).map_err(io(to))?;
    marker.persist(to.join(MARKER)).map_err(|e| LaneError::Io { path: to.join(MARKER), source: e.error })?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn set_mtime(path: &Path, mtime: SystemTime) -> Result<(), LaneError> {
    // Nix store files carry mtime 1; keep what the image has, as `cp -a` would.
    let f = fs::File::open(path).map_err(io(path))?;
    let mtime = if mtime < SystemTime::UNIX_EPOCH { SystemTime::UNIX_EPOCH + Duration::from_secs(1) } else { mtime };
    f.set_times(fs::FileTimes::new().set_modified(mtime)).map_err(io(path))
}
