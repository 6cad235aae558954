//! The job's temporary files: what appeared in the temp dirs between the two hooks, and only
//! what this user may remove (another user's files are not the job's).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Each dir's entries now.
pub fn snapshot(dirs: &[PathBuf]) -> BTreeMap<String, BTreeSet<String>> {
    dirs.iter().map(|d| (d.to_string_lossy().into_owned(), entries(d))).collect()
}

fn entries(dir: &PathBuf) -> BTreeSet<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// Removes the entries not in `before`; a summary for the hook's line.
pub fn remove_new(dirs: &[PathBuf], before: &BTreeMap<String, BTreeSet<String>>) -> String {
    let uid = rustix::process::geteuid().as_raw();
    let (mut removed, mut left) = (0usize, Vec::new());
    for dir in dirs {
        let known = before.get(dir.to_string_lossy().as_ref());
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for entry in rd.filter_map(Result::ok) {
            let name = entry.file_name();
            if known.is_some_and(|k| k.contains(name.to_string_lossy().as_ref())) {
                continue;
            }
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
            if std::os::unix::fs::MetadataExt::uid(&meta) != uid {
                continue;
            }
            let result = remove_tree_or_file(&path);
            match result {
                Ok(()) => removed += 1,
                Err(e) => left.push(format!("{} ({e})", path.display())),
            }
        }
    }
    if left.is_empty() {
        format!("removed {removed} temporary entr{}", if removed == 1 { "y" } else { "ies" })
    } else {
        format!("removed {removed} temporary entries, could not remove {}", left.join(", "))
    }
}

/// A file or symlink, or a whole directory (see [`remove_tree`]).
pub fn remove_tree_or_file(path: &std::path::Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path)?.is_dir() {
        remove_tree(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// remove_dir_all, after making read-only directories writable (Nix builds leave them 0555).
fn remove_tree(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::symlink_metadata(&dir) {
            if meta.is_dir() {
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(&dir) {
                    stack.extend(rd.filter_map(Result::ok).map(|e| e.path()));
                }
            }
        }
    }
    std::fs::remove_dir_all(path)
}
