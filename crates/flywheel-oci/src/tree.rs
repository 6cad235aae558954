//! Small directory trees written from a list of entries: the customisation layer of an image
//! (`/etc/passwd`, scripts, symlinks into the store), built by `flywheel image tree` and by
//! nix/lib's `mkTree` as a Nix build.
//!
//! An entry is a file (`text`, `mode` default `0644`), a symlink (`symlink`) or a directory
//! (`directory: true`, `mode` default `0755`), at an absolute `path`. Parents that no entry
//! names are created as `0755` directories. Everything is checked before anything is written,
//! and the tree appears at the output only when complete (built in a temporary directory
//! beside it, renamed at the end).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// One entry as JSON (the spec file's entries, or the `flywheelTree` structured attribute).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TreeEntry {
    pub path: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub symlink: Option<String>,
    #[serde(default)]
    pub directory: Option<bool>,
    #[serde(default)]
    pub mode: Option<String>,
}

/// What an entry becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File { text: String, mode: u32 },
    Symlink { target: String },
    Directory { mode: u32 },
}

/// Why a tree could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("entry {index}: path {path:?} is not absolute")]
    Relative { index: usize, path: String },
    #[error("entry {index}: path {path:?} has an empty, `.` or `..` component")]
    BadComponent { index: usize, path: String },
    #[error("entry {index}: path {path:?} is the root; name something below /")]
    Root { index: usize, path: String },
    #[error("entry {index}: path {path} is given twice (first as entry {first})")]
    Duplicate { index: usize, path: String, first: usize },
    #[error("entry {index}: path {path} is under {parent}, which is a file or symlink")]
    UnderNonDirectory { index: usize, path: String, parent: String },
    #[error("entry {index} ({path}): mode {mode:?} is not an octal mode such as \"0755\"")]
    BadMode { index: usize, path: String, mode: String },
    #[error("entry {index} ({path}): a symlink has no mode")]
    SymlinkMode { index: usize, path: String },
    #[error("entry {index} ({path}): give exactly one of text, symlink or directory: true")]
    Kind { index: usize, path: String },
    #[error("entry {index} ({path}): the symlink target is empty")]
    EmptyTarget { index: usize, path: String },
    #[error("reading the entries: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{}: exists and is not an empty directory; refusing to replace it", .0.display())]
    Exists(PathBuf),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TreeError + '_ {
    move |source| TreeError::Io { path: path.to_path_buf(), source }
}

/// A checked tree: relative paths (no leading `/`) to nodes, parents before children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
}

fn parse_mode(index: usize, path: &str, mode: &str) -> Result<u32, TreeError> {
    let bad = || TreeError::BadMode { index, path: path.to_string(), mode: mode.to_string() };
    if !(3..=4).contains(&mode.len()) || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    u32::from_str_radix(mode, 8).map_err(|_| bad())
}

/// `/a/b/c` → `a/b/c`, refusing relative paths, `..`, `.` and empty components.
fn relative(index: usize, path: &str) -> Result<String, TreeError> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(TreeError::Relative { index, path: path.to_string() });
    };
    if rest.is_empty() {
        return Err(TreeError::Root { index, path: path.to_string() });
    }
    if rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(TreeError::BadComponent { index, path: path.to_string() });
    }
    Ok(rest.to_string())
}

impl Tree {
    /// Check the entries; nothing is written.
    pub fn from_entries(entries: &[TreeEntry]) -> Result<Tree, TreeError> {
        let mut nodes = BTreeMap::new();
        let mut first: BTreeMap<String, usize> = BTreeMap::new();
        for (index, e) in entries.iter().enumerate() {
            let rel = relative(index, &e.path)?;
            let is_dir = e.directory == Some(true);
            let kinds = usize::from(e.text.is_some()) + usize::from(e.symlink.is_some()) + usize::from(is_dir);
            if kinds != 1 || e.directory == Some(false) {
                return Err(TreeError::Kind { index, path: e.path.clone() });
            }
            let node = if let Some(text) = &e.text {
                let mode = e.mode.as_deref().map(|m| parse_mode(index, &e.path, m)).transpose()?.unwrap_or(0o644);
                Node::File { text: text.clone(), mode }
            } else if let Some(target) = &e.symlink {
                if e.mode.is_some() {
                    return Err(TreeError::SymlinkMode { index, path: e.path.clone() });
                }
                if target.is_empty() {
                    return Err(TreeError::EmptyTarget { index, path: e.path.clone() });
                }
                Node::Symlink { target: target.clone() }
            } else {
                let mode = e.mode.as_deref().map(|m| parse_mode(index, &e.path, m)).transpose()?.unwrap_or(0o755);
                Node::Directory { mode }
            };
            if let Some(&f) = first.get(&rel) {
                return Err(TreeError::Duplicate { index, path: e.path.clone(), first: f });
            }
            first.insert(rel.clone(), index);
            nodes.insert(rel, node);
        }
        // A path under a file or symlink.
        for (rel, _) in nodes.iter() {
            let mut parent = rel.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                if matches!(nodes.get(p), Some(Node::File { .. } | Node::Symlink { .. })) {
                    return Err(TreeError::UnderNonDirectory {
                        index: first[rel],
                        path: format!("/{rel}"),
                        parent: format!("/{p}"),
                    });
                }
                parent = p;
            }
        }
        Ok(Tree { nodes })
    }

    /// Parse a JSON array of entries and check it.
    pub fn from_json(value: serde_json::Value) -> Result<Tree, TreeError> {
        let entries: Vec<TreeEntry> = serde_json::from_value(value)?;
        Tree::from_entries(&entries)
    }

    /// Write the tree at `out` atomically: into a temporary directory beside it, renamed to `out`
    /// at the end. `out` must not exist, or be an empty directory.
    pub fn write(&self, out: &Path) -> Result<(), TreeError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tree".into());
        let tmp =
            tempfile::Builder::new().prefix(&format!(".{base}.tmp-")).tempdir_in(&parent).map_err(io_err(&parent))?;
        let root = tmp.path();
        // Parents first (BTreeMap order puts "a" before "a/b"); directory modes last, so a
        // read-only directory can still be filled.
        let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
        for (rel, node) in &self.nodes {
            let p = root.join(rel);
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            match node {
                Node::File { text, mode } => {
                    fs::write(&p, text).map_err(io_err(&p))?;
                    fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(io_err(&p))?;
                }
                Node::Symlink { target } => std::os::unix::fs::symlink(target, &p).map_err(io_err(&p))?,
                Node::Directory { mode } => {
                    match fs::create_dir(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err(&p)(e)),
                    }
                    dir_modes.push((p, *mode));
                }
            }
        }
        // Implicit parents: 0755 (create_dir_all follows the umask).
        for rel in self.nodes.keys() {
            let mut parent = rel.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                if !self.nodes.contains_key(p) {
                    let d = root.join(p);
                    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).map_err(io_err(&d))?;
                }
                parent = p;
            }
        }
        for (p, mode) in dir_modes.iter().rev() {
            fs::set_permissions(p, fs::Permissions::from_mode(*mode)).map_err(io_err(p))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io_err(root))?;
        match fs::rename(root, out) {
            Ok(()) => {
                // The directory is at `out` now; nothing to remove.
                let _ = tmp.keep();
                Ok(())
            }
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::NOTEMPTY | rustix::io::Errno::EXIST | rustix::io::Errno::NOTDIR)
                ) =>
            {
                Err(TreeError::Exists(out.to_path_buf()))
            }
            Err(e) => Err(io_err(out)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn tree(v: serde_json::Value) -> Result<Tree, TreeError> {
        Tree::from_json(v)
    }

    fn err(v: serde_json::Value) -> String {
        let e = tree(v).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn tree_accepts_files_symlinks_and_directories_with_default_modes() {
        let t = tree(json!([
            { "path": "/home/runner/run.sh", "text": "#!/bin/sh\n", "mode": "0755" },
            { "path": "/etc/passwd", "text": "root:x:0:0::/root:/bin/sh\n" },
            { "path": "/bin/sh", "symlink": "/nix/store/x-bash/bin/bash" },
            { "path": "/tmp", "directory": true, "mode": "1777" },
            { "path": "/home/runner/_work", "directory": true },
        ]))
        .unwrap();
        assert_eq!(t.nodes["home/runner/run.sh"], Node::File { text: "#!/bin/sh\n".into(), mode: 0o755 });
        assert_eq!(t.nodes["etc/passwd"], Node::File { text: "root:x:0:0::/root:/bin/sh\n".into(), mode: 0o644 });
        assert_eq!(t.nodes["tmp"], Node::Directory { mode: 0o1777 });
        assert_eq!(t.nodes["home/runner/_work"], Node::Directory { mode: 0o755 });
    }

    #[test]
    fn tree_refuses_relative_paths_and_dot_dot() {
        assert!(err(json!([{ "path": "etc/passwd", "text": "" }])).contains("not absolute"));
        assert!(err(json!([{ "path": "/etc/../passwd", "text": "" }])).contains("`..`"));
        assert!(err(json!([{ "path": "/etc//passwd", "text": "" }])).contains("empty"));
        assert!(err(json!([{ "path": "/etc/", "text": "" }])).contains("empty"));
        assert!(err(json!([{ "path": "/", "directory": true }])).contains("root"));
    }

    #[test]
    fn tree_refuses_duplicates_and_paths_under_files_or_symlinks() {
        let e = err(json!([{ "path": "/a", "text": "" }, { "path": "/a", "directory": true }]));
        assert!(e.contains("twice") && e.contains("entry 1"), "{e}");
        let e = err(json!([{ "path": "/a/b/c", "text": "" }, { "path": "/a", "text": "" }]));
        assert!(e.contains("/a/b/c is under /a"), "{e}");
        let e = err(json!([{ "path": "/bin", "symlink": "usr/bin" }, { "path": "/bin/sh", "text": "" }]));
        assert!(e.contains("under /bin"), "{e}");
        // Under a directory entry is fine.
        tree(json!([{ "path": "/a", "directory": true }, { "path": "/a/b", "text": "" }])).unwrap();
    }

    #[test]
    fn tree_refuses_bad_modes() {
        for mode in ["755x", "0999", "rwx", "", "12", "07555", "-755"] {
            let e = err(json!([{ "path": "/a", "text": "", "mode": mode }]));
            assert!(e.contains("not an octal mode"), "{mode}: {e}");
        }
        assert!(err(json!([{ "path": "/a", "symlink": "b", "mode": "0777" }])).contains("no mode"));
    }

    #[test]
    fn tree_refuses_entries_of_no_kind_or_several() {
        assert!(err(json!([{ "path": "/a" }])).contains("exactly one"));
        assert!(err(json!([{ "path": "/a", "text": "", "symlink": "b" }])).contains("exactly one"));
        assert!(err(json!([{ "path": "/a", "text": "", "directory": true }])).contains("exactly one"));
        assert!(err(json!([{ "path": "/a", "directory": false }])).contains("exactly one"));
        assert!(err(json!([{ "path": "/a", "text": "", "owner": 3 }])).contains("unknown field"));
        assert!(err(json!([{ "path": "/a", "symlink": "" }])).contains("empty"));
    }

    #[test]
    fn tree_writes_atomically_with_modes() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let t = tree(json!([
            { "path": "/home/runner/run.sh", "text": "#!/bin/sh\necho hi\n", "mode": "0755" },
            { "path": "/bin/sh", "symlink": "/nix/store/x-bash/bin/bash" },
            { "path": "/tmp", "directory": true, "mode": "1777" },
            { "path": "/ro", "directory": true, "mode": "0555" },
            { "path": "/ro/file", "text": "x" },
        ]))
        .unwrap();
        t.write(&out).unwrap();
        let mode = |p: &str| fs::symlink_metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(fs::read_to_string(out.join("home/runner/run.sh")).unwrap(), "#!/bin/sh\necho hi\n");
        assert_eq!(mode("home/runner/run.sh"), 0o755);
        assert_eq!(mode("home"), 0o755);
        assert_eq!(mode("home/runner"), 0o755);
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("ro"), 0o555);
        assert_eq!(mode("ro/file"), 0o644);
        assert_eq!(mode(""), 0o755);
        assert_eq!(fs::read_link(out.join("bin/sh")).unwrap(), PathBuf::from("/nix/store/x-bash/bin/bash"));
        // Nothing else is left beside the output.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out")]);
        // A second write over a non-empty tree is refused, and leaves no temporary directory.
        let e = t.write(&out).unwrap_err();
        assert!(matches!(e, TreeError::Exists(_)), "{e}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        fs::set_permissions(out.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }
}
