//! What the end-to-end tests share: the fixture closure, and running flywheel and real Nix.
#![allow(dead_code)] // each test binary uses a different part of this

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use flywheel_fixture::{Closure, Spec};

/// The closure the tests run over, built once per test binary. `FLYWHEEL_TEST_BUDGET_MB` sets
/// its size (default 300 MiB of Debian packages).
pub fn fixture() -> &'static Closure {
    static CLOSURE: OnceLock<Closure> = OnceLock::new();
    CLOSURE.get_or_init(|| {
        assert!(
            flywheel_fixture::nix_available(),
            "these tests need Debian's Nix: apt-get install nix-bin (tests/run installs it)"
        );
        let budget_mb = std::env::var("FLYWHEEL_TEST_BUDGET_MB").ok().and_then(|s| s.parse().ok()).unwrap_or(300);
        let spec = Spec { budget_mb, ..Spec::default() };
        flywheel_fixture::build(&spec).unwrap_or_else(|e| panic!("building the fixture closure: {e}"))
    })
}

pub fn edge_cases() -> &'static Path {
    fixture().paths.iter().find(|p| p.to_string_lossy().ends_with("-flywheel-edge-cases")).expect("edge-case path")
}

pub fn flywheel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_flywheel"))
}

/// The `nix` command with the features and offline settings these tests need.
pub fn nix() -> Command {
    let mut c = Command::new("nix");
    c.args(["--extra-experimental-features", "nix-command flakes"]).args(flywheel_fixture::NIX_OFFLINE_OPTIONS);
    c
}

pub fn nix_store() -> Command {
    Command::new("nix-store")
}

/// Runs `cmd`, requires success, returns stdout.
#[track_caller]
pub fn ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[track_caller]
pub fn ok_str(cmd: &mut Command) -> String {
    String::from_utf8(ok(cmd)).expect("utf-8 output")
}

/// Runs `cmd` with `stdin`, returns the whole output whatever the status.
pub fn run_with_input(cmd: &mut Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    // A writer thread, so a child that stops reading early cannot deadlock the test.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("waiting for child");
    let _ = writer.join();
    out
}

/// Whether two commands write the same bytes to stdout, compared as they stream.
pub fn same_stdout(a: &mut Command, b: &mut Command) -> Result<u64, String> {
    let mut ca = a.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("{a:?}: {e}"))?;
    let mut cb = b.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(|e| format!("{b:?}: {e}"))?;
    let (mut ra, mut rb) = (ca.stdout.take().expect("stdout"), cb.stdout.take().expect("stdout"));
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut offset = 0u64;
    let verdict = loop {
        let na = read_full(&mut ra, &mut ba);
        let nb = read_full(&mut rb, &mut bb);
        if let Some(i) = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y) {
            break Err(format!("outputs differ at byte {}", offset + i as u64));
        }
        if na != nb {
            break Err(format!("outputs differ in length after byte {}", offset + na.min(nb) as u64));
        }
        if na == 0 {
            break Ok(offset);
        }
        offset += na as u64;
    };
    drop((ra, rb));
    let (sa, sb) = (ca.wait().map_err(|e| e.to_string())?, cb.wait().map_err(|e| e.to_string())?);
    if verdict.is_ok() && !(sa.success() && sb.success()) {
        return Err(format!("exit statuses {sa} and {sb}"));
    }
    verdict
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

/// A fresh temporary directory that lives as long as the returned guard.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("flywheel-e2e-").tempdir().expect("temp dir")
}

/// Every entry under `dir`, recursively, as relative paths: to show nothing appeared or vanished.
pub fn listing(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// stderr of a failed flywheel run: exactly one line, starting `flywheel: error:`.
#[track_caller]
pub fn one_line_error(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("flywheel: error: "), "unexpected error line: {stderr}");
    lines[0].to_string()
}

/// A NAR built token by token: for NARs no honest writer produces.
pub struct RawNar(pub Vec<u8>);

impl RawNar {
    pub fn new() -> Self {
        RawNar(Vec::new()).s(b"nix-archive-1")
    }
    pub fn s(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(&(b.len() as u64).to_le_bytes());
        self.0.extend_from_slice(b);
        self.0.resize(self.0.len() + (8 - b.len() % 8) % 8, 0);
        self
    }
    pub fn tokens(self, tokens: &[&[u8]]) -> Self {
        tokens.iter().fold(self, |r, t| r.s(t))
    }
    pub fn dir() -> Self {
        RawNar::new().tokens(&[b"(", b"type", b"directory"])
    }
    pub fn file(self, name: &[u8], data: &[u8]) -> Self {
        self.tokens(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"regular", b"contents", data, b")", b")"])
    }
    pub fn symlink(self, name: &[u8], target: &[u8]) -> Self {
        self.tokens(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"symlink", b"target", target, b")", b")"])
    }
    pub fn subdir(self, name: &[u8]) -> Self {
        self.tokens(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"directory"])
    }
    /// Closes a directory node (and, inside a parent, its entry).
    pub fn close(self) -> Self {
        self.s(b")")
    }
    pub fn close_entry_dir(self) -> Self {
        self.tokens(&[b")", b")"])
    }
}
pub mod driver_root;
pub mod registry;
pub mod server;

/// A volume as Kubernetes gives a pod with fsGroup 1001 (group-owned, setgid), with every
/// directory above it open to the runner user.
pub fn fsgroup_volume(vol: &Path) {
    std::fs::create_dir_all(vol).expect("create the volume");
    ok(Command::new("chown").arg("1001:1001").arg(vol));
    std::fs::set_permissions(vol, std::os::unix::fs::PermissionsExt::from_mode(0o2775)).expect("chmod the volume");
    let mut dir = vol.parent();
    while let Some(d) = dir.filter(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir()) {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("open the parent to uid 1001");
        dir = d.parent();
    }
}

/// A canary with no GitHub environment, no nix.conf of the machine's, and tools every CI
/// machine has.
pub fn canary(args: &[&str]) -> Command {
    let mut c = flywheel();
    c.arg("canary").args(["--tools", "nix,tar", "--min-free-gib", "0.1"]).args(args);
    for var in [
        "GITHUB_ACTIONS",
        "GITHUB_RUN_ID",
        "GITHUB_STEP_SUMMARY",
        "GITHUB_EVENT_PATH",
        "GITHUB_TOKEN",
        "FLYWHEEL_CACHE_TOKEN",
        "FLYWHEEL_VULKAN_LOADER",
        "FLYWHEEL_CANARY_TOKEN",
        "FLYWHEEL_LANE",
        "FLYWHEEL_RUNNER_VERSION",
        "FLYWHEEL_RUNNER_RELEASED",
        "FLYWHEEL_RUNNER_MAX_AGE_DAYS",
        "FLYWHEEL_RUNNER_MIN_VERSION",
        "NIX_CONFIG",
    ] {
        c.env_remove(var);
    }
    c.env("NIX_CONF_DIR", "/nonexistent").env("XDG_CONFIG_HOME", "/nonexistent");
    c
}
