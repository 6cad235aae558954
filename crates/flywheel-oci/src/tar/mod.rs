//! Deterministic tar streams for image layers.
//!
//! The policy, in one place: entries sorted by full path; the store directory's own entries
//! (`nix`, `nix/store`) once, first, 0755; store objects with the modes a NAR records
//! (directories and executables 0555, other files 0444, symlinks 0777); every mtime the same
//! (SOURCE_DATE_EPOCH or 1); uid and gid 0 with empty user and group names unless a directory
//! layer's override or the spec's `nixStore.owner` (store layers) says otherwise; hard links
//! written as regular files; no sparse entries,
//! no xattrs, no atime or ctime; ustar headers with PAX records only where a value does not
//! fit (`header`). Nothing about the machine, the filesystem or the order of the input reaches
//! the bytes.

pub mod entries;
pub mod header;

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};

pub use entries::{Entry, EntryKind, Modes, Override};
use header::{Header, Kind};

/// Version of the header policy above. It is part of every layer cache key: change it
/// whenever a change here changes a layer's bytes.
pub const POLICY_VERSION: u32 = 1;

/// Mode of the store directory's own entries and of implied parent directories.
pub const DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{}: {source}", path.display())]
    Fs { path: PathBuf, source: io::Error },
    #[error("{}: a socket, fifo or device file; an image layer holds only files, directories and symlinks", path.display())]
    Unsupported { path: PathBuf },
    #[error("{}: changed while the layer was being written", path.display())]
    Changed { path: PathBuf },
    #[error("writing the layer: {0}")]
    Write(#[from] io::Error),
    #[error("layer {layer}: symbolic link loop at {link}")]
    SymlinkLoop { layer: String, link: String },
    #[error("{path} is in both layer {first} and layer {second}")]
    Collision { path: String, first: String, second: String },
    #[error("layer {layer}: {path} appears twice")]
    Duplicate { layer: String, path: String },
    #[error("layer {layer}: {why}")]
    BadOverride { layer: String, why: String },
}

/// Size of the buffer file contents are read through.
const COPY_BUFFER: usize = 1 << 20;

/// Writes `entries` (already sorted) as a tar stream to `out`, all with mtime `mtime`.
pub fn write_entries<W: Write + ?Sized>(entries: &[Entry], mtime: u64, out: &mut W) -> Result<(), LayerError> {
    let mut buf = vec![0u8; COPY_BUFFER];
    for e in entries {
        let kind = match &e.kind {
            EntryKind::Dir => Kind::Dir,
            EntryKind::File { size, .. } => Kind::File { size: *size },
            EntryKind::Data { bytes } => Kind::File { size: bytes.len() as u64 },
            EntryKind::Symlink { target } => Kind::Symlink { target },
        };
        let h = Header { path: &e.path, kind, mode: e.mode, uid: e.uid, gid: e.gid, mtime };
        header::write_header(out, &h).map_err(LayerError::Write)?;
        match &e.kind {
            EntryKind::File { source, size } => {
                copy_file(source, *size, out, &mut buf)?;
                header::write_padding(out, *size).map_err(LayerError::Write)?;
            }
            EntryKind::Data { bytes } => {
                out.write_all(bytes).map_err(LayerError::Write)?;
                header::write_padding(out, bytes.len() as u64).map_err(LayerError::Write)?;
            }
            EntryKind::Dir | EntryKind::Symlink { .. } => {}
        }
    }
    header::write_end(out).map_err(LayerError::Write)
}

/// Copies exactly `size` bytes of the regular file at `source` (never through a symlink).
fn copy_file<W: Write + ?Sized>(source: &PathBuf, size: u64, out: &mut W, buf: &mut [u8]) -> Result<(), LayerError> {
    let fs_error = |e: io::Error| LayerError::Fs { path: source.clone(), source: e };
    let fd = rustix::fs::open(source, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| fs_error(e.into()))?;
    let mut file = File::from(fd);
    let meta = file.metadata().map_err(fs_error)?;
    if !meta.is_file() || meta.len() != size {
        return Err(LayerError::Changed { path: source.clone() });
    }
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => return Err(LayerError::Changed { path: source.clone() }),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fs_error(e)),
        };
        out.write_all(&buf[..n]).map_err(LayerError::Write)?;
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
