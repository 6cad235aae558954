//! Serialise a filesystem tree as a NAR, streaming, in one pass.
//!
//! The walk works relative to open directory descriptors (`openat`, `O_NOFOLLOW`), so
//! symlinks are never followed and each step costs one path component, not a full path.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::hashing::{Digested, HashingWriter};
use super::wire::{self, write_string, write_tokens};
use super::NarError;

/// Output buffer: large enough that file contents are read straight into it in big chunks.
const BUFFER: usize = 256 * 1024;

/// Writes the NAR of `path` to `out` and returns `out`. Symlinks are stored, never followed.
///
/// ```
/// # let dir = tempfile::tempdir().unwrap();
/// std::fs::write(dir.path().join("hello"), "hi\n").unwrap();
/// let nar = flywheel_nix::nar::write_nar(dir.path(), Vec::new()).unwrap();
/// assert_eq!(&nar[8..21], b"nix-archive-1");
/// ```
pub fn write_nar<W: Write>(path: &Path, out: W) -> Result<W, NarError> {
    let mut dumper = Dumper { out: BufWriter::with_capacity(BUFFER, out), path: path.to_path_buf() };
    write_tokens(&mut dumper.out, &[wire::MAGIC]).map_err(NarError::Write)?;
    dumper.root(path)?;
    dumper.out.into_inner().map_err(|e| NarError::Write(e.into_error()))
}

/// Writes the NAR of `path` to `out` and returns its NarHash and NarSize with `out`.
pub fn write_nar_digested<W: Write>(path: &Path, out: W) -> Result<(W, Digested), NarError> {
    let hashing = write_nar(path, HashingWriter::new(out))?;
    Ok(hashing.finish())
}

/// NarHash and NarSize of `path`, as `nix-store --query --hash` and `nix path-info` report.
pub fn hash_path(path: &Path) -> Result<Digested, NarError> {
    Ok(write_nar_digested(path, io::sink())?.1)
}

/// NarHash and NarSize of each of `paths`, in order, hashing `jobs` paths at once (0: one per
/// CPU). Paths are handed out one at a time, so one large path does not hold up the rest.
pub fn hash_paths<P: AsRef<Path> + Sync>(paths: &[P], jobs: usize) -> Vec<Result<Digested, NarError>> {
    let hash_all = || paths.par_iter().with_max_len(1).map(|p| hash_path(p.as_ref())).collect();
    match rayon::ThreadPoolBuilder::new().num_threads(jobs).build() {
        Ok(pool) => pool.install(hash_all),
        // No threads to be had: hash on this one.
        Err(_) => paths.iter().map(|p| hash_path(p.as_ref())).collect(),
    }
}

struct Dumper<W: Write> {
    out: BufWriter<W>,
    /// The path being written, for error messages.
    path: PathBuf,
}

impl<W: Write> Dumper<W> {
    fn root(&mut self, path: &Path) -> Result<(), NarError> {
        let meta = std::fs::symlink_metadata(path).map_err(|e| self.fs_error(e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(|e| self.fs_error(e))?;
            self.symlink(target.as_os_str().as_bytes())
        } else if ft.is_file() {
            let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                .map_err(|e| self.fs_error(e.into()))?;
            self.regular(fd)
        } else if ft.is_dir() {
            let fd = rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| self.fs_error(e.into()))?;
            self.directory(fd, 0)
        } else {
            Err(self.unsupported())
        }
    }

    fn regular(&mut self, fd: OwnedFd) -> Result<(), NarError> {
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| self.fs_error(e))?;
        if !meta.file_type().is_file() {
            return Err(self.unsupported());
        }
        let size = meta.len();
        // Nix stores one executable bit: the owner's.
        let tokens: &[&[u8]] = if meta.mode() & 0o100 != 0 {
            &[wire::OPEN, wire::TYPE, wire::REGULAR, wire::EXECUTABLE, b"", wire::CONTENTS]
        } else {
            &[wire::OPEN, wire::TYPE, wire::REGULAR, wire::CONTENTS]
        };
        write_tokens(&mut self.out, tokens).map_err(NarError::Write)?;
        self.out.write_all(&size.to_le_bytes()).map_err(NarError::Write)?;
        // io::copy reads straight into the BufWriter's spare capacity, or lets the kernel
        // move the bytes when the output is itself a file or a pipe.
        let copied = io::copy(&mut (&file).take(size), &mut self.out).map_err(|e| {
            // io::copy does not say which side failed; a closed output is the one common write error.
            if e.kind() == io::ErrorKind::BrokenPipe {
                NarError::Write(e)
            } else {
                self.fs_error(e)
            }
        })?;
        if copied != size {
            return Err(NarError::FileChanged { path: self.path.clone() });
        }
        self.out.write_all(&wire::ZEROS[..wire::padding(size)]).map_err(NarError::Write)?;
        write_tokens(&mut self.out, &[wire::CLOSE]).map_err(NarError::Write)
    }

    fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        write_tokens(&mut self.out, &[wire::OPEN, wire::TYPE, wire::SYMLINK, wire::TARGET])
            .and_then(|()| write_string(&mut self.out, target))
            .and_then(|()| write_tokens(&mut self.out, &[wire::CLOSE]))
            .map_err(NarError::Write)
    }

    fn directory(&mut self, fd: OwnedFd, depth: usize) -> Result<(), NarError> {
        if depth >= wire::MAX_DEPTH {
            return Err(NarError::TooDeep { path: self.path.clone() });
        }
        let mut dir = Dir::read_from(&fd).map_err(|e| self.fs_error(e.into()))?;
        let mut entries: Vec<(CString, FileType)> = Vec::new();
        for entry in &mut dir {
            let entry = entry.map_err(|e| self.fs_error(e.into()))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            entries.push((name.to_owned(), entry.file_type()));
        }
        drop(dir);
        // NAR entries are sorted by the bytes of their names; CString orders that way.
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        write_tokens(&mut self.out, &[wire::OPEN, wire::TYPE, wire::DIRECTORY]).map_err(NarError::Write)?;
        for (name, file_type) in entries {
            self.path.push(OsStr::from_bytes(name.as_bytes()));
            write_tokens(&mut self.out, &[wire::ENTRY, wire::OPEN, wire::NAME])
                .and_then(|()| write_string(&mut self.out, name.as_bytes()))
                .and_then(|()| write_tokens(&mut self.out, &[wire::NODE]))
                .map_err(NarError::Write)?;
            self.child(fd.as_fd(), &name, file_type, depth)?;
            write_tokens(&mut self.out, &[wire::CLOSE]).map_err(NarError::Write)?;
            self.path.pop();
        }
        write_tokens(&mut self.out, &[wire::CLOSE]).map_err(NarError::Write)
    }

    fn child(&mut self, dir: BorrowedFd<'_>, name: &CStr, known: FileType, depth: usize) -> Result<(), NarError> {
        // The type from getdents saves a stat; filesystems that do not fill it in get one.
        let file_type = match known {
            FileType::Unknown => {
                let st =
                    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| self.fs_error(e.into()))?;
                FileType::from_raw_mode(st.st_mode)
            }
            t => t,
        };
        match file_type {
            FileType::RegularFile => {
                let fd =
                    rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
                        .map_err(|e| self.fs_error(e.into()))?;
                self.regular(fd)
            }
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(|e| self.fs_error(e.into()))?;
                self.symlink(target.as_bytes())
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.fs_error(e.into()))?;
                self.directory(fd, depth + 1)
            }
            _ => Err(self.unsupported()),
        }
    }

    fn fs_error(&self, source: io::Error) -> NarError {
        NarError::Fs { path: self.path.clone(), source }
    }

    fn unsupported(&self) -> NarError {
        NarError::UnsupportedFileType { path: self.path.clone() }
    }
}
