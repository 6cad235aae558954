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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_library_in_the_usual_folders() {
        // libc is in one of them on every Linux this runs on.
        let libc = locate("libc.so.6").expect("libc.so.6");
        assert!(libc.is_file());
        assert_eq!(locate("libflywheel-does-not-exist.so.1"), None);
    }
}
