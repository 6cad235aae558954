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
    let result = match path.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!("could not remove partial restore {}: {e}", path.display());
    }
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
}

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
        let fd =
            rustix::fs::openat(dir, &cname, flags, Mode::from_raw_mode(0o666)).map_err(|e| self.error(e.into()))?;
        if executable {
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
        self.stack.pop();
        // The root directory's path is the target itself; only entries were pushed.
        if !self.stack.is_empty() {
            self.path.pop();
        }
        Ok(())
    }
}
