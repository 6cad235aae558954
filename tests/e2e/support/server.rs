//! A `flywheel cache serve` on 127.0.0.1 with a free port, stopped when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct Server {
    child: Child,
    pub data: PathBuf,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The public key of each cache, by name, as the server printed them.
    pub keys: Vec<(String, String)>,
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data, extra, &[])
    }

    /// With these environment variables set for the server (credentials, a database URL).
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, String)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flywheel"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["cache", "serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            // The server's request log, beside its data directory, for reading after a failure.
            .stderr(
                std::fs::File::create(data.with_extension("log")).map(Stdio::from).unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start flywheel cache serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut keys = Vec::new();
        let mut base = String::new();
        // One line per cache: URL KEY VISIBILITY; the first tells the port.
        if let Some(Ok(first)) = lines.next() {
            let mut parts = first.split_whitespace();
            let url = parts.next().unwrap_or_default().to_string();
            let (b, name) = url.rsplit_once('/').unwrap_or_default();
            base = b.to_string();
            keys.push((name.to_string(), parts.next().unwrap_or_default().to_string()));
        }
        if !base.starts_with("http://127.0.0.1:") {
            let _ = child.wait();
            let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
            panic!("the server printed no URL; its log:\n{log}");
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, data: data.to_path_buf(), base, keys }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, cache: &str) -> String {
        format!("{}/{cache}", self.base)
    }

    pub fn host_port(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// A netrc file giving `token` for this server, as Nix reads it.
    pub fn netrc(&self, dir: &Path, token: &str) -> PathBuf {
        let host = self.host_port().split(':').next().unwrap_or("127.0.0.1");
        let path = dir.join("netrc");
        std::fs::write(&path, format!("machine {host} login flywheel password {token}\n")).expect("write netrc");
        path
    }

    /// Stops the server as an operator would (SIGTERM): it finishes what is in flight and
    /// writes what it kept in memory (access times, counters) to the index.
    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
