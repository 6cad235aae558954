//! Restore a NAR to the filesystem without ever writing outside the target.
//!
//! Everything is created relative to directory descriptors the restore itself opened, with
//! `O_EXCL`/`O_NOFOLLOW`, so a symlink from the NAR is never followed, and names were already
//! checked by the parser (no `/`, `.`, `..`, duplicates). The tree is built under a temporary
//! name beside the target and renamed into place only when the whole NAR was read and
//! checked: a bad NAR leaves nothing behind.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{Mode, OFlags, RenameFlags};

use super::reader::{read_nar_to_end, Visitor};
use super::NarError;

const BUFFER: usize = 256 * 1024;

/// What a restore created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub nar_size: u64,
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Restores the NAR read from `input` at `target`, which must not exist yet.
///
/// The input must be exactly one NAR: trailing bytes are an error, as is any malformed input.
/// On error nothing is left at `target` or beside it.
pub fn restore<R: Read>(input: R, target: &Path) -> Result<Restored, NarError> {
    restore_with(input, target, false)
}

/// As [`restore`], with the metadata Nix gives store paths (what its `canonicalisePathMetaData`
/// sets): files 0444 or 0555, directories 0555, every modification time 1. A tree restored
/// this way can be registered with `nix-store --load-db`, which does not walk it again.
pub fn restore_canonical<R: Read>(input: R, target: &Path) -> Result<Restored, NarError> {
    restore_with(input, target, true)
}

fn restore_with<R: Read>(input: R, target: &Path, canonical: bool) -> Result<Restored, NarError> {
    let name = target
        .file_name()
        .filter(|n| *n != OsStr::new(".") && *n != OsStr::new(".."))
        .ok_or_else(|| NarError::BadTarget(target.to_path_buf()))?;
    if target.symlink_metadata().is_ok() {
        return Err(NarError::TargetExists(target.to_path_buf()));
    }
    let parent_path = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = rustix::fs::open(&parent_path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| NarError::Fs { path: parent_path.clone(), source: e.into() })?;
    let temp = temp_name(name);

    let mut r = Restorer {
        parent: parent.as_fd(),
        temp: temp.clone(),
        stack: Vec::new(),
        path: target.to_path_buf(),
        buf: vec![0; BUFFER],
        done: Restored::default(),
        canonical,
    };
    let result = read_nar_to_end(BufReader::with_capacity(BUFFER, input), &mut r).and_then(|nar_size| {
        rustix::fs::renameat_with(&parent, &temp, &parent, name, RenameFlags::NOREPLACE).map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                NarError::TargetExists(target.to_path_buf())
            } else {
                NarError::Fs { path: target.to_path_buf(), source: e.into() }
            }
        })?;
        Ok(nar_size)
    });
    let done = r.done;
    drop(r);
    match result {
        Ok(nar_size) => Ok(Restored { nar_size, ..done }),
        Err(e) => {
            remove_partial(&parent_path.join(OsStr::from_bytes(temp.as_bytes())));
            Err(e)
        }
    }
}

fn temp_name(name: &OsStr) -> CString {
    let mut random = [0u8; 6];
    // Uniqueness only matters against a concurrent restore; the pid alone covers the rest.
    let _ = getrandom::fill(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let mut bytes = b".".to_vec();
    bytes.extend_from_slice(&name.as_bytes()[..name.len().min(200)]);
    bytes.extend_from_slice(format!(".flywheel-restore-{}-{suffix}", std::process::id()).as_bytes());
    // The name came from a Path component: it holds no NUL.
    CString::new(bytes).unwrap_or_else(|_| c".flywheel-restore".to_owned())
}

fn remove_partial(path: &Path) {
    if let Err(e) = remove_tree(path) {
        tracing::warn!("could not remove partial restore {}: {e}", path.display());
    }
}

/// Removes a file, symlink or directory tree, including trees with read-only directories (a
/// canonical restore's, or a store path's): each directory is made writable before it is
/// emptied. A missing path is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match path.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path);
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    std::fs::remove_dir(path)
}

struct Restorer<'p> {
    parent: BorrowedFd<'p>,
    temp: CString,
    /// Descriptors of the directories being filled, innermost last.
    stack: Vec<OwnedFd>,
    /// The path being written, for error messages (the final name, not the temporary one).
    path: PathBuf,
    buf: Vec<u8>,
    done: Restored,
    canonical: bool,
}

/// Nix's store modification time, with the access time left alone.
const STORE_TIMES: rustix::fs::Timestamps = rustix::fs::Timestamps {
    last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
    last_modification: rustix::fs::Timespec { tv_sec: 1, tv_nsec: 0 },
};

impl Restorer<'_> {
    /// The directory and name to create a node at.
    fn place(&self, name: Option<&[u8]>) -> Result<(BorrowedFd<'_>, CString), NarError> {
        match (name, self.stack.last()) {
            (None, _) => Ok((self.parent, self.temp.clone())),
            (Some(name), Some(dir)) => {
                let c = CString::new(name).map_err(|_| self.error(io::ErrorKind::InvalidInput.into()))?;
                Ok((dir.as_fd(), c))
            }
            (Some(_), None) => Err(self.error(io::Error::other("entry outside a directory"))),
        }
    }

    fn push(&mut self, name: Option<&[u8]>) {
        if let Some(n) = name {
            self.path.push(OsStr::from_bytes(n));
        }
    }

    fn pop(&mut self, name: Option<&[u8]>) {
        if name.is_some() {
            self.path.pop();
        }
    }

    fn error(&self, source: io::Error) -> NarError {
        NarError::Fs { path: self.path.clone(), source }
    }

    fn write_file(&mut self, name: Option<&[u8]>, executable: bool, contents: &mut dyn Read) -> Result<(), NarError> {
        let (dir, cname) = self.place(name)?;
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let create = match (self.canonical, executable) {
            (false, _) => 0o666,
            (true, false) => 0o444,
            (true, true) => 0o555,
        };
        let fd =
            rustix::fs::openat(dir, &cname, flags, Mode::from_raw_mode(create)).map_err(|e| self.error(e.into()))?;
        if executable && !self.canonical {
            // As nix-store --restore: the creation mode under the umask, plus every x bit.
            let st = rustix::fs::fstat(&fd).map_err(|e| self.error(e.into()))?;
            let mode = Mode::from_raw_mode(st.st_mode & 0o7777) | Mode::XUSR | Mode::XGRP | Mode::XOTH;
            rustix::fs::fchmod(&fd, mode).map_err(|e| self.error(e.into()))?;
        }
        let mut file = File::from(fd);
        loop {
            let n = match contents.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NarError::Read(e)),
            };
            file.write_all(&self.buf[..n]).map_err(|e| self.error(e))?;
            self.done.bytes += n as u64;
        }
        if self.canonical {
            // The umask may have taken bits from the creation mode.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(create)).map_err(|e| self.error(e.into()))?;
            rustix::fs::futimens(&file, &STORE_TIMES).map_err(|e| self.error(e.into()))?;
        }
        self.done.files += 1;
        Ok(())
    }
}

impl Visitor for Restorer<'_> {
    fn file(
        &mut self,
        name: Option<&[u8]>,
        executable: bool,
        _size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), NarError> {
        self.push(name);
        self.write_file(name, executable, contents)?;
        self.pop(name);
        Ok(())
    }

    fn symlink(&mut self, name: Option<&[u8]>, target: &[u8]) -> Result<(), NarError> {
        self.push(name);
        let (dir, cname) = self.place(name)?;
        rustix::fs::symlinkat(target, dir, &cname).map_err(|e| self.error(e.into()))?;
        if self.canonical {
            rustix::fs::utimensat(dir, &cname, &STORE_TIMES, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| self.error(e.into()))?;
        }
        self.done.symlinks += 1;
        self.pop(name);
        Ok(())
    }

    fn enter_directory(&mut self, name: Option<&[u8]>) -> Result<(), NarError> {
        self.push(name);
        let (dir, cname) = self.place(name)?;
        rustix::fs::mkdirat(dir, &cname, Mode::from_raw_mode(0o777)).map_err(|e| self.error(e.into()))?;
        let fd = rustix::fs::openat(
            dir,
            &cname,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.error(e.into()))?;
        self.stack.push(fd);
        self.done.directories += 1;
        Ok(())
    }

    fn leave_directory(&mut self) -> Result<(), NarError> {
        let dir = self.stack.pop();
        if let (true, Some(dir)) = (self.canonical, dir) {
            // Last, once nothing more is written into it. Renaming the finished tree into place
            // changes neither (the parent stays the same).
            rustix::fs::fchmod(&dir, Mode::from_raw_mode(0o555)).map_err(|e| self.error(e.into()))?;
            rustix::fs::futimens(&dir, &STORE_TIMES).map_err(|e| self.error(e.into()))?;
        }
        // The root directory's path is the target itself; only entries were pushed.
        if !self.stack.is_empty() {
            self.path.pop();
        }
        Ok(())
    }
}
