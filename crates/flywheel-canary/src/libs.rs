//! Finding the driver's libraries. They are opened by SONAME first, as the image's dynamic
//! loader resolves them. A binary built by Nix (`nix run .#canary` on a host that is not NixOS)
//! has a loader that does not search the host's /usr/lib, so the usual folders are tried after.

use std::path::PathBuf;

/// Where driver libraries usually are, after `LD_LIBRARY_PATH`.
pub const LIB_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/run/opengl-driver/lib",
];

/// The first `name` (a SONAME such as `libcuda.so.1`) in `LD_LIBRARY_PATH` or [`LIB_DIRS`].
pub fn locate(name: &str) -> Option<PathBuf> {
    let env_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default();
    env_dirs.into_iter().chain(LIB_DIRS.iter().map(PathBuf::from)).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The library a failed dlopen of `name` could not find when that is another one: a library
/// `name` links (the NVIDIA driver's link libdl, libpthread and librt), so `name` itself was
/// found. `error` is dlerror's text, which names the file it could not open first.
pub fn missing_dependency(name: &str, error: &str) -> Option<String> {
    let (file, rest) = error.split_once(": ")?;
    if !rest.starts_with("cannot open shared object file") {
        return None;
    }
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    (base(file) != base(name)).then(|| base(file))
}

/// What to say when dlopen of `name` failed: that it is not there, or that it is and a library
/// it needs is not.
pub fn open_failure(name: &str, error: &str) -> String {
    match missing_dependency(name, error) {
        Some(dep) => format!("{name} is there but cannot be loaded: it needs {dep}, which is missing ({error})"),
        None => format!("{name} not found ({error})"),
    }
}

/// The remedy for a driver library whose dependency `dep` is missing.
pub fn missing_dependency_remedy(dep: &str) -> String {
    format!(
        "the job's image lacks {dep}, which the NVIDIA driver's libraries link: put glibc's {dep} where the image's dynamic loader looks (nixpkgs' glibc has it in its own lib folder; an image built on another glibc needs it in /lib or beside libc)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_dependency_is_told_from_a_missing_library() {
        let dep = "libdl.so.2: cannot open shared object file: No such file or directory";
        assert_eq!(missing_dependency("libcuda.so.1", dep).as_deref(), Some("libdl.so.2"));
        assert_eq!(missing_dependency("/usr/lib/x86_64-linux-gnu/libcuda.so.1", dep).as_deref(), Some("libdl.so.2"));
        assert!(open_failure("libcuda.so.1", dep)
            .starts_with("libcuda.so.1 is there but cannot be loaded: it needs libdl.so.2"));
        for own in [
            "libcuda.so.1: cannot open shared object file: No such file or directory",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1: cannot open shared object file: No such file or directory",
            "cannot open shared object file",
            "/x/libcuda.so.1: invalid ELF header",
        ] {
            assert_eq!(missing_dependency("libcuda.so.1", own), None, "{own}");
            assert!(open_failure("libcuda.so.1", own).starts_with("libcuda.so.1 not found ("), "{own}");
        }
    }

    #[test]
    fn finds_a_library_in_the_usual_folders() {
        // libc is in one of them on every Linux this runs on.
        let libc = locate("libc.so.6").expect("libc.so.6");
        assert!(libc.is_file());
        assert_eq!(locate("libflywheel-does-not-exist.so.1"), None);
    }
}
