//! Writing an OCI image layout atomically: everything goes into a temporary directory beside
//! the output and appears at the output's name only when complete, as the layout itself, or as
//! an OCI archive or a docker-archive (a tar of it). An interrupted build leaves nothing at
//! the output; a previous layout there is replaced in one step.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::digest::Digest;
use crate::oci::{Descriptor, Index};
use crate::tar::{self, entries, Modes};

/// What `--format` writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout directory.
    #[default]
    Oci,
    /// A tar of the layout (`skopeo ... oci-archive:FILE`).
    OciArchive,
    /// A tar `docker load` reads: the layout plus a `manifest.json`.
    DockerArchive,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "oci" => Ok(Format::Oci),
            "oci-archive" => Ok(Format::OciArchive),
            "docker-archive" => Ok(Format::DockerArchive),
            _ => Err(format!("unknown format {s:?}: use oci, oci-archive or docker-archive")),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Oci => "oci",
            Format::OciArchive => "oci-archive",
            Format::DockerArchive => "docker-archive",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: exists and is not an OCI layout written before; refusing to replace it", .0.display())]
    Exists(PathBuf),
    #[error("{}: is a directory; an archive is written to a file", .0.display())]
    IsDirectory(PathBuf),
    #[error(transparent)]
    Archive(#[from] tar::LayerError),
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io { path: path.to_path_buf(), source }
}

/// A layout under construction.
pub struct LayoutWriter {
    tmp: tempfile::TempDir,
    blobs: PathBuf,
}

impl LayoutWriter {
    /// A new, empty layout in a temporary directory beside `out`.
    pub fn new(out: &Path) -> Result<Self, OutputError> {
        let parent = parent_of(out);
        let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
        let tmp =
            tempfile::Builder::new().prefix(&format!(".{name}.tmp-")).tempdir_in(&parent).map_err(io_at(&parent))?;
        let blobs = tmp.path().join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_at(&blobs))?;
        fs::write(tmp.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_at(tmp.path()))?;
        Ok(LayoutWriter { tmp, blobs })
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// `blobs/sha256`, where layer blobs are written.
    pub fn blobs(&self) -> &Path {
        &self.blobs
    }

    pub fn put_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, OutputError> {
        let digest = Digest::of(bytes);
        let path = self.blobs.join(digest.hex());
        fs::write(&path, bytes).map_err(io_at(&path))?;
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    pub fn put_json<T: Serialize>(&self, media_type: &str, value: &T) -> Result<(Descriptor, Vec<u8>), OutputError> {
        let bytes = crate::json::canonical(value).map_err(|e| io_at(&self.blobs)(io::Error::other(e)))?;
        Ok((self.put_bytes(media_type, &bytes)?, bytes))
    }

    pub fn write_index(&self, index: &Index) -> Result<(), OutputError> {
        let bytes = crate::json::canonical(index).map_err(|e| io_at(self.tmp.path())(io::Error::other(e)))?;
        fs::write(self.tmp.path().join("index.json"), bytes).map_err(io_at(self.tmp.path()))
    }

    pub fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), OutputError> {
        fs::write(self.tmp.path().join(name), bytes).map_err(io_at(self.tmp.path()))
    }

    /// Makes everything readable by others (temporary files are created 0600) and syncs it.
    fn seal(&self) -> Result<(), OutputError> {
        let root = self.tmp.path();
        for dir in [root.to_path_buf(), root.join("blobs"), self.blobs.clone()] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(io_at(&dir))?;
        }
        for e in fs::read_dir(&self.blobs).map_err(io_at(&self.blobs))? {
            let p = e.map_err(io_at(&self.blobs))?.path();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).map_err(io_at(&p))?;
        }
        for dir in [self.blobs.clone(), root.to_path_buf()] {
            fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_at(&dir))?;
        }
        Ok(())
    }

    /// Moves the layout to `out`, replacing an earlier layout there in one step.
    pub fn commit_dir(self, out: &Path) -> Result<(), OutputError> {
        self.seal()?;
        let tmp = self.tmp.keep();
        let result = replace_dir(&tmp, out);
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Writes the layout as a tar (with `mtime` on every entry) to the file `out`.
    pub fn commit_archive(self, out: &Path, mtime: u64) -> Result<(), OutputError> {
        if out.is_dir() {
            return Err(OutputError::IsDirectory(out.to_path_buf()));
        }
        self.seal()?;
        let mut list = Vec::new();
        entries::gather(self.tmp.path(), b"", Modes::OnDisk, &mut list)?;
        for e in &mut list {
            e.mode = if e.kind == entries::EntryKind::Dir { 0o755 } else { 0o644 };
        }
        entries::sort_entries(&mut list, "archive")?;
        let parent = parent_of(out);
        let mut file = tempfile::Builder::new().prefix(".archive-").tempfile_in(&parent).map_err(io_at(&parent))?;
        {
            let mut w = io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
            tar::write_entries(&list, mtime, &mut w)?;
            w.flush().map_err(io_at(out))?;
        }
        file.as_file().set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_at(out))?;
        file.as_file().sync_all().map_err(io_at(out))?;
        file.persist(out).map_err(|e| OutputError::Io { path: out.to_path_buf(), source: e.error })?;
        Ok(())
    }
}

/// Writes a small file whole or not at all: a temporary file beside `path`, readable by others,
/// synced and renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = tempfile::Builder::new().prefix(".tmp-").tempfile_in(parent_of(path))?;
    f.write_all(bytes)?;
    f.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
    f.as_file().sync_all()?;
    f.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn parent_of(out: &Path) -> PathBuf {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn replace_dir(tmp: &Path, out: &Path) -> Result<(), OutputError> {
    match fs::symlink_metadata(out) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::rename(tmp, out).map_err(io_at(out)),
        Err(e) => Err(io_at(out)(e)),
        Ok(m) if m.is_dir() && out.join("oci-layout").is_file() => {
            let cwd = rustix::fs::CWD;
            match rustix::fs::renameat_with(cwd, tmp, cwd, out, rustix::fs::RenameFlags::EXCHANGE) {
                Ok(()) => {}
                Err(_) => {
                    // No RENAME_EXCHANGE on this filesystem: move the old one aside first.
                    let aside = tmp.with_extension("old");
                    fs::rename(out, &aside).map_err(io_at(out))?;
                    fs::rename(tmp, out).map_err(io_at(out))?;
                    let _ = fs::remove_dir_all(&aside);
                    return Ok(());
                }
            }
            // `tmp` now holds the old layout.
            fs::remove_dir_all(tmp).map_err(io_at(tmp))
        }
        Ok(_) => Err(OutputError::Exists(out.to_path_buf())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::oci::media_type;

    fn layout(out: &Path, text: &[u8]) -> LayoutWriter {
        let w = LayoutWriter::new(out).unwrap();
        let d = w.put_bytes(media_type::MANIFEST, text).unwrap();
        w.write_index(&Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![d],
            annotations: Default::default(),
        })
        .unwrap();
        w
    }

    #[test]
    fn a_layout_replaces_an_older_one_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("img");
        layout(&out, b"one").commit_dir(&out).unwrap();
        layout(&out, b"two").commit_dir(&out).unwrap();
        let blobs: Vec<_> = fs::read_dir(out.join("blobs/sha256")).unwrap().collect();
        assert_eq!(blobs.len(), 1);
        assert_eq!(fs::read(out.join("blobs/sha256").join(Digest::of(b"two").hex())).unwrap(), b"two");
        // Nothing left beside it.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);

        let other = tmp.path().join("notes");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("keep"), b"x").unwrap();
        assert!(matches!(layout(&other, b"x").commit_dir(&other), Err(OutputError::Exists(_))));
        assert!(other.join("keep").exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_dropped_writer_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        drop(layout(&tmp.path().join("img"), b"x"));
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_archive_is_a_sorted_tar_of_the_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("img.tar");
        layout(&out, b"x").commit_archive(&out, 1).unwrap();
        let mut a = ::tar::Archive::new(fs::File::open(&out).unwrap());
        let names: Vec<String> =
            a.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(
            names,
            vec![
                "blobs/",
                "blobs/sha256/",
                &format!("blobs/sha256/{}", Digest::of(b"x").hex()),
                "index.json",
                "oci-layout"
            ]
        );
    }
}
