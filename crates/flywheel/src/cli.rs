//! The command line, as clap types: what flywheel accepts, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flywheel_cache::{Compression, Target};

#[derive(Parser, Debug)]
#[command(
    name = "flywheel",
    version,
    about = "Reproducible GPU runner images, a Nix binary cache for CI jobs, and the lane canary",
    long_about = None,
    propagate_version = true,
    after_help = "Logs go to stderr: -v for progress, -vv for detail, or RUST_LOG (e.g. RUST_LOG=flywheel_cache=debug).\nExit codes: 0 ok, 1 failure, 2 bad usage."
)]
pub struct Cli {
    /// More log output on stderr (-v: progress, -vv: debug, -vvv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// NAR archives: dump, hash and restore.
    #[command(subcommand)]
    Nar(NarCommand),
    /// Binary cache signing keys in Nix's format.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Binary caches.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show store path info (NarHash, NarSize, references...) from the Nix database.
    PathInfo(PathInfoArgs),
}

impl Command {
    /// Whether the command can take minutes (and so shows progress on a terminal).
    pub fn is_long_running(&self) -> bool {
        matches!(self, Command::Cache(CacheCommand::Push(_)))
    }
}

#[derive(Subcommand, Debug)]
pub enum NarCommand {
    /// Write the NAR of PATH to stdout, byte-identical to `nix-store --dump PATH`.
    Dump {
        /// Any file, directory or symlink (symlinks are stored, not followed).
        path: PathBuf,
    },
    /// Print the NAR hash (`sha256:<nix32>`) of each PATH, as `nix-store --query --hash` does.
    Hash {
        /// Store paths or any other files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print a JSON array of {path, narHash, narSize} instead.
        #[arg(long)]
        json: bool,
        /// Paths hashed at once (0: one per CPU).
        #[arg(short, long, default_value_t = 0)]
        jobs: usize,
    },
    /// Restore the NAR read from stdin at DIR, which must not exist. A malformed or hostile NAR
    /// is refused and leaves nothing behind.
    Restore {
        /// Where to create the file, symlink or directory tree.
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate a secret signing key (`NAME:base64`), as `nix key generate-secret` does.
    Generate {
        /// Key name, by convention the cache's host name and a number: `cache.example.org-1`.
        name: String,
        /// Write the key to FILE (created with mode 0600, never overwritten) instead of stdout,
        /// and print the public key.
        #[arg(short, long)]
        out: Option<PathBuf>,
    },
    /// Print the public key of a secret key file, as `nix key convert-secret-to-public` does.
    Public {
        /// Secret key file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum CacheCommand {
    /// Push the closures of store paths to a binary cache, signed.
    Push(PushArgs),
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The cache: file:///DIR.
    #[arg(long, value_name = "URL", value_parser = parse_target)]
    pub to: Target,
    /// Secret key file to sign narinfos with.
    #[arg(long, value_name = "FILE", env = "FLYWHEEL_SIGNING_KEY_FILE")]
    pub key: PathBuf,
    /// NAR compression: none, zstd or zstd:LEVEL (1-19).
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compression: Compression,
    /// Paths compressed at once (0: one per CPU).
    #[arg(short, long, default_value_t = 0)]
    pub jobs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store paths (or symlinks to them, such as ./result) whose closures to push.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PathInfoArgs {
    /// Include the whole closure of each path.
    #[arg(short, long)]
    pub recursive: bool,
    /// Print JSON, in the shape `nix path-info --json` prints.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Store paths, or symlinks to them.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Root of a chroot store (as in `nix --store /tmp/x`); the system store by default.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub store: PathBuf,
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    Compression::parse(s)
}
