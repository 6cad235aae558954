//! What goes into a layer: entries gathered from store paths and directory trees, sorted by
//! their full path, with modes and owners from the header policy, and the checks a layer's
//! entries must pass (no symlink loops, no path claimed by two layers, overrides that exist).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::LayerError;

/// One entry of a layer. `path` is relative to the image root, without leading or trailing `/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file, read from `source` when the layer is written; `size` is checked then.
    File {
        source: PathBuf,
        size: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A regular file whose contents flywheel writes itself (the Nix registration).
    Data {
        bytes: Vec<u8>,
    },
}

impl Entry {
    pub fn dir(path: &[u8], mode: u32) -> Self {
        Entry { path: path.to_vec(), kind: EntryKind::Dir, mode, uid: 0, gid: 0 }
    }

    pub fn display_path(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }
}

/// How modes are taken from the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modes {
    /// As a store path holds them, which is all a NAR records: directories and executables
    /// 0555, other files 0444. Independent of the filesystem the store sits on.
    Nar,
    /// The permission bits found on disk (for directory layers, e.g. a customisation tree).
    OnDisk,
}

/// Every entry of the tree at `source`, placed at `dest` in the image (`dest` empty: the
/// image root, which gets no entry of its own). Symlinks are stored, never followed; hard
/// links become regular files; sockets, fifos and devices are refused.
pub fn gather(source: &Path, dest: &[u8], modes: Modes, out: &mut Vec<Entry>) -> Result<(), LayerError> {
    let fs_error = |path: &Path, source| LayerError::Fs { path: path.to_path_buf(), source };
    let mut stack: Vec<(PathBuf, Vec<u8>)> = vec![(source.to_path_buf(), dest.to_vec())];
    while let Some((src, dst)) = stack.pop() {
        let meta = fs::symlink_metadata(&src).map_err(|e| fs_error(&src, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            if !dst.is_empty() {
                out.push(Entry::dir(&dst, mode_of(&meta, modes, true)));
            }
            for child in fs::read_dir(&src).map_err(|e| fs_error(&src, e))? {
                let child = child.map_err(|e| fs_error(&src, e))?;
                let name = child.file_name();
                stack.push((child.path(), join(&dst, name.as_bytes())));
            }
        } else if ft.is_file() {
            let mode = mode_of(&meta, modes, false);
            out.push(Entry {
                path: dst,
                kind: EntryKind::File { source: src, size: meta.len() },
                mode,
                uid: 0,
                gid: 0,
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(|e| fs_error(&src, e))?;
            out.push(Entry {
                path: dst,
                kind: EntryKind::Symlink { target: target.as_os_str().as_bytes().to_vec() },
                mode: 0o777,
                uid: 0,
                gid: 0,
            });
        } else {
            return Err(LayerError::Unsupported { path: src });
        }
    }
    Ok(())
}

fn mode_of(meta: &fs::Metadata, modes: Modes, is_dir: bool) -> u32 {
    match modes {
        Modes::Nar if is_dir || meta.mode() & 0o100 != 0 => 0o555,
        Modes::Nar => 0o444,
        Modes::OnDisk => meta.mode() & 0o7777,
    }
}

/// `a/b`, or `b` when `a` is empty.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        return name.to_vec();
    }
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

/// Directory entries for every ancestor of `path` and `path` itself (`usr`, `usr/lib`, ...).
pub fn parents(path: &[u8], mode: u32) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' {
            out.push(Entry::dir(&path[..i], mode));
        }
    }
    if !path.is_empty() {
        out.push(Entry::dir(path, mode));
    }
    out
}

/// Sorts entries by full path and drops exact repeats of a directory (an implied parent that
/// the tree also holds keeps the tree's entry). Any other repeat is an error.
pub fn sort_entries(entries: &mut Vec<Entry>, layer: &str) -> Result<(), LayerError> {
    // Stable: for equal paths the later entry (from the tree) wins over the implied parent.
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        match out.last_mut() {
            Some(last) if last.path == e.path => {
                if last.kind != EntryKind::Dir || e.kind != EntryKind::Dir {
                    return Err(LayerError::Duplicate { layer: layer.to_string(), path: e.display_path() });
                }
                *last = e;
            }
            _ => out.push(e),
        }
    }
    *entries = out;
    Ok(())
}

/// A change to the owner or mode of entries of a directory layer (`/tmp` 1777, a home
/// directory owned by the runner user). `path` is absolute in the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Override {
    pub path: String,
    /// Octal, as a string: "1777".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Also everything below `path`.
    #[serde(default)]
    pub recursive: bool,
}

impl Override {
    pub fn parsed_mode(&self) -> Result<Option<u32>, String> {
        match &self.mode {
            None => Ok(None),
            Some(m) => match u32::from_str_radix(m, 8) {
                Ok(v) if v <= 0o7777 => Ok(Some(v)),
                _ => Err(format!("override for {}: mode {m:?} is not an octal mode such as \"0755\"", self.path)),
            },
        }
    }
}

/// Applies `overrides` in order. Each must name an entry of the layer.
pub fn apply_overrides(entries: &mut [Entry], overrides: &[Override], layer: &str) -> Result<(), LayerError> {
    for o in overrides {
        let mode = o.parsed_mode().map_err(|why| LayerError::BadOverride { layer: layer.to_string(), why })?;
        let target = o.path.trim_matches('/').as_bytes();
        let mut found = false;
        for e in entries.iter_mut() {
            let under = o.recursive
                && (target.is_empty() || (e.path.starts_with(target) && e.path.get(target.len()) == Some(&b'/')));
            if e.path == target || under {
                found = true;
                if let Some(m) = mode {
                    if !matches!(e.kind, EntryKind::Symlink { .. }) {
                        e.mode = m;
                    }
                }
                if let Some(uid) = o.uid {
                    e.uid = uid;
                }
                if let Some(gid) = o.gid {
                    e.gid = gid;
                }
            }
        }
        if !found {
            return Err(LayerError::BadOverride {
                layer: layer.to_string(),
                why: format!("override for {}: no such path in the layer", o.path),
            });
        }
    }
    Ok(())
}

/// Refuses a symlink that, resolved among the layer's own entries, never ends (`a -> b`,
/// `b -> a`). Targets that leave the layer (into the store, into another layer) end the walk:
/// this layer cannot judge them.
pub fn check_symlink_loops(entries: &[Entry], layer: &str) -> Result<(), LayerError> {
    const MAX_HOPS: usize = 40; // Linux's own limit (MAXSYMLINKS)
    let by_path: HashMap<&[u8], &EntryKind> = entries.iter().map(|e| (e.path.as_slice(), &e.kind)).collect();
    for e in entries {
        let EntryKind::Symlink { target } = &e.kind else { continue };
        let mut resolved: Vec<&[u8]> = e.path.split(|&b| b == b'/').collect();
        resolved.pop();
        let mut pending: Vec<&[u8]> = Vec::new(); // a stack: next component last
        push_components(&mut pending, &mut resolved, target);
        let mut hops = 1;
        while let Some(c) = pending.pop() {
            match c {
                b"" | b"." => continue,
                b".." => {
                    resolved.pop();
                    continue;
                }
                _ => resolved.push(c),
            }
            let here = resolved.join(&b'/');
            match by_path.get(here.as_slice()) {
                Some(EntryKind::Symlink { target }) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(LayerError::SymlinkLoop { layer: layer.to_string(), link: e.display_path() });
                    }
                    resolved.pop();
                    push_components(&mut pending, &mut resolved, target);
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    Ok(())
}

fn push_components<'a>(pending: &mut Vec<&'a [u8]>, resolved: &mut Vec<&'a [u8]>, target: &'a [u8]) {
    if target.first() == Some(&b'/') {
        resolved.clear();
    }
    pending.extend(target.split(|&b| b == b'/').rev());
}

/// Refuses a path that two directory layers both hold, unless both hold it as a directory:
/// one would silently hide the other in the image.
pub fn check_collisions(layers: &[(&str, &[Entry])]) -> Result<(), LayerError> {
    let mut seen: BTreeMap<&[u8], (&str, bool)> = BTreeMap::new();
    for (name, entries) in layers {
        for e in entries.iter() {
            let is_dir = e.kind == EntryKind::Dir;
            if let Some((other, other_dir)) = seen.insert(&e.path, (name, is_dir)) {
                if !(is_dir && other_dir) {
                    return Err(LayerError::Collision {
                        path: e.display_path(),
                        first: other.to_string(),
                        second: name.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// The image path of a store object: `nix/store/<hash>-<name>` for store dir `/nix/store`.
pub fn store_entry_path(store_dir: &str, basename: &str) -> Vec<u8> {
    join(store_dir.trim_matches('/').as_bytes(), OsStr::new(basename).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind: EntryKind::Symlink { target: target.as_bytes().to_vec() },
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn loops_are_found_and_other_links_pass() {
        let ok = vec![
            Entry::dir(b"etc", 0o755),
            link("etc/self", "."),
            link("etc/up", "../etc/self"),
            link("bin", "/nix/store/x-bash/bin"),
            link("dangling", "nowhere"),
        ];
        check_symlink_loops(&ok, "t").unwrap();
        for bad in [
            vec![link("a", "a")],
            vec![link("a", "b"), link("b", "/a")],
            vec![Entry::dir(b"d", 0o755), link("d/x", "../d/x/y")],
        ] {
            assert!(matches!(check_symlink_loops(&bad, "t"), Err(LayerError::SymlinkLoop { .. })), "{bad:?}");
        }
    }

    #[test]
    fn overrides_set_owner_and_mode_and_must_match() {
        let mut entries =
            vec![Entry::dir(b"home", 0o555), Entry::dir(b"home/runner", 0o555), Entry::dir(b"tmp", 0o555)];
        let o = |path: &str, mode: Option<&str>, uid: Option<u32>, recursive| Override {
            path: path.into(),
            mode: mode.map(String::from),
            uid,
            gid: uid,
            recursive,
        };
        apply_overrides(&mut entries, &[o("/tmp", Some("1777"), None, false), o("/home", None, Some(1001), true)], "t")
            .unwrap();
        assert_eq!((entries[2].mode, entries[2].uid), (0o1777, 0));
        assert_eq!((entries[0].uid, entries[1].uid, entries[1].gid), (1001, 1001, 1001));
        assert!(apply_overrides(&mut entries, &[o("/nope", None, Some(1), false)], "t").is_err());
        assert!(apply_overrides(&mut entries, &[o("/tmp", Some("999"), None, false)], "t").is_err());
    }

    #[test]
    fn collisions_between_layers() {
        let a = vec![Entry::dir(b"etc", 0o755), link("etc/x", "y")];
        let b = vec![Entry::dir(b"etc", 0o755)];
        let c = vec![link("etc/x", "z")];
        check_collisions(&[("a", &a), ("b", &b)]).unwrap();
        assert!(matches!(check_collisions(&[("a", &a), ("c", &c)]), Err(LayerError::Collision { .. })));
    }

    #[test]
    fn sorting_is_by_full_path_and_keeps_the_trees_directory_entry() {
        let mut entries = parents(b"usr/lib", 0o755);
        entries.push(Entry::dir(b"usr/lib", 0o700));
        entries.push(link("usr/lib-x", "lib"));
        entries.push(link("usr/lib/a", "b"));
        sort_entries(&mut entries, "t").unwrap();
        let paths: Vec<&[u8]> = entries.iter().map(|e| e.path.as_slice()).collect();
        assert_eq!(paths, vec![&b"usr"[..], b"usr/lib", b"usr/lib-x", b"usr/lib/a"]);
        assert_eq!(entries[1].mode, 0o700);
        let mut dup = vec![link("a", "b"), link("a", "c")];
        assert!(sort_entries(&mut dup, "t").is_err());
    }
}
