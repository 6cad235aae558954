//! The command line, as clap types: what flywheel accepts, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use flywheel_cache::{Compression, Target};
use flywheel_oci::{Format, Strategy};

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
    /// OCI images from Nix closures: build, push, diff.
    #[command(subcommand)]
    Image(ImageCommand),
    /// NVIDIA driver userspace: collect it as an image layer, describe it as CDI, check it
    /// against the kernel module.
    #[command(subcommand)]
    Driver(DriverCommand),
    /// Prove the GPU lane healthy: bootstrap, gpu, cuda, vulkan, cache, queue and cleanup
    /// steps, with traces for people and CI. Exit 0 only when every required step passes.
    #[command(after_help = "Steps, reports and the events schema: docs/canary.md.\nExamples:\n  \
flywheel canary --report-dir canary-report\n  \
flywheel canary --require bootstrap,vulkan,cache --cache http://cache:8080/main --token \"$TOKEN\"\n  \
nix run .#canary -- --report-dir canary-report")]
    Canary(Box<CanaryArgs>),
    /// The shared GPU lane: render its ARC runner scale set and canary workflow from a lane
    /// spec, check the spec against its image, and the runner's job hooks.
    #[command(subcommand)]
    Lane(LaneCommand),
}

impl Command {
    /// A server logs every request (at info) wherever its stderr goes.
    pub fn is_server(&self) -> bool {
        matches!(self, Command::Cache(CacheCommand::Serve(_)))
    }

    /// Whether the command reads or writes network sockets (a server, or an HTTP client).
    pub fn uses_sockets(&self) -> bool {
        matches!(
            self,
            Command::Cache(CacheCommand::Serve(_) | CacheCommand::Push(_) | CacheCommand::Pull(_))
                | Command::Image(ImageCommand::Push(_))
                | Command::Canary(_)
                | Command::Lane(LaneCommand::Check(_) | LaneCommand::Hook(_))
        )
    }

    /// Whether the command can take minutes (and so shows progress on a terminal).
    pub fn is_long_running(&self) -> bool {
        matches!(
            self,
            Command::Image(ImageCommand::Build(_) | ImageCommand::Push(_)) | Command::Driver(DriverCommand::Collect(_))
        )
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
    /// Realise store paths and their closures from a binary cache into the local store,
    /// checking every narinfo's signature and every NAR's hash.
    Pull(PullArgs),
    /// Create a named cache (with its own signing key) in a server's data directory.
    Create(CacheCreateArgs),
    /// Show a cache's public key (`name:base64`, for trusted-public-keys), visibility and priority.
    Info(CacheInfoArgs),
    /// Access tokens for a cache.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check a server's index and NAR storage against each other: exit 0 when consistent, 1 otherwise.
    Verify(VerifyArgs),
    /// Serve the caches of a data directory over HTTP, as Nix binary caches
    /// (http://ADDR/NAME); creates a public cache `main` when there is none.
    Serve(ServeArgs),
    /// Pin a store path (and so its closure) in a cache as the newest revision of a named pin;
    /// older revisions are released as --keep-revisions and --keep-days say.
    Pin(PinArgs),
    /// Collect garbage: remove what the pins, the grace period and the policies (quota, maximum
    /// age) do not keep, whole closures at a time; prints what it freed, by reason.
    Gc(GcArgs),
    /// Paths, bytes, hit rate and bytes served by age, per cache: what a quota needs.
    Stats(StatsArgs),
    /// Copy everything a server holds (caches and keys, tokens, NARs, paths, pins) to other
    /// backends (a directory and SQLite, S3 and PostgreSQL), resumably, then verify the copy.
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The config file of the backends to copy from (its data, storage, index, [s3], [postgres]).
    #[arg(long, value_name = "CONFIG")]
    pub from: PathBuf,
    /// The config file of the backends to copy to.
    #[arg(long, value_name = "CONFIG")]
    pub to: PathBuf,
    /// NARs copied at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub jobs: usize,
    /// Hash every NAR in the destination at the end, not only those this run copied.
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The cache, when pinning in a data directory.
    #[arg(long, value_name = "NAME", required_unless_present = "to", conflicts_with = "to")]
    pub cache: Option<String>,
    /// Pin over HTTP instead, with a write token (what a CI job does): http://HOST:PORT/CACHE.
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
    /// Access token with the write scope (for --to).
    #[arg(long, value_name = "TOKEN", env = "FLYWHEEL_CACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The pin's name (for example the branch: main).
    pub pin: String,
    /// The store path to pin; the cache must hold it.
    pub path: PathBuf,
    /// Keep this many newest revisions (with neither setting, only the newest).
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<u32>::new().range(1..))]
    pub keep_revisions: Option<u32>,
    /// Keep revisions pinned within this many days.
    #[arg(long, value_name = "D")]
    pub keep_days: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Collect only this cache [default: all of them].
    #[arg(long, value_name = "NAME")]
    pub cache: Option<String>,
    /// Evict least-recently-used paths until the cache's NARs take at most this (64GiB)
    /// [default: the config's max-size, else none].
    #[arg(long, value_name = "SIZE", value_parser = flywheel_cache::config::parse_size)]
    pub max_size: Option<u64>,
    /// Remove paths not read (narinfo GET or HEAD) for this long (90d, 12h)
    /// [default: the config's max-age, else none].
    #[arg(long, value_name = "DURATION", value_parser = flywheel_cache::config::parse_duration)]
    pub max_age: Option<flywheel_cache::config::Duration>,
    /// Keep paths a cache got this recently, whatever else applies
    /// [default: the config's grace, else 1h].
    #[arg(long, value_name = "DURATION", value_parser = flywheel_cache::config::parse_duration)]
    pub grace: Option<flywheel_cache::config::Duration>,
    /// Print what would be removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The report as JSON, with every removed path.
    #[arg(long)]
    pub json: bool,
    /// Paths removed per index transaction (tuning; the tests make it small to stop GC midway).
    #[arg(long, hide = true, default_value_t = 0)]
    pub batch_size: usize,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Also hash every stored NAR (reads them all).
    #[arg(long)]
    pub full: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Address to listen on (port 0: any free port; the URLs printed name the real one)
    /// [default: 127.0.0.1:5480].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// The largest NAR upload accepted, compressed as sent: bytes, or with a unit (64GiB)
    /// [default: 64GiB].
    #[arg(long, value_name = "SIZE", value_parser = flywheel_cache::config::parse_size)]
    pub max_nar_bytes: Option<u64>,
    /// Requests one client address may have in progress at once; more wait [default: 64].
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_requests_per_client: Option<usize>,
    /// Collect garbage this often (1h), with each cache's policy from the config
    /// [default: the config's gc-interval, else never].
    #[arg(long, value_name = "DURATION", value_parser = flywheel_cache::config::parse_duration)]
    pub gc_interval: Option<flywheel_cache::config::Duration>,
}

#[derive(Args, Debug)]
pub struct DataArgs {
    /// The server's data directory (index and NARs) [default: the config's `data`, else
    /// ./flywheel-cache].
    #[arg(long, value_name = "DIR", env = "FLYWHEEL_CACHE_DATA")]
    pub data: Option<PathBuf>,
    /// The server's config file (TOML: data, listen, limits, caches with their visibility,
    /// priority and upstream keys; docs/cache-server.md).
    #[arg(long, value_name = "FILE", env = "FLYWHEEL_CACHE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl DataArgs {
    pub fn config(&self) -> anyhow::Result<Option<flywheel_cache::config::Config>> {
        self.config.as_deref().map(flywheel_cache::config::Config::load).transpose().map_err(Into::into)
    }

    /// The backends: the config file's (storage, index), with the data directory from --data,
    /// else the config file's, else ./flywheel-cache.
    pub fn backend(&self) -> anyhow::Result<flywheel_cache::data_dir::Backend> {
        let config = self.config()?.unwrap_or_default();
        Ok(flywheel_cache::data_dir::Backend::from_config(&config, self.data.as_deref()))
    }
}

#[derive(Args, Debug)]
pub struct CacheCreateArgs {
    /// The cache's name, its URL path: http://HOST:PORT/NAME.
    pub name: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Anyone may read (the default).
    #[arg(long, conflicts_with = "private")]
    pub public: bool,
    /// Reads need a token with the read scope.
    #[arg(long)]
    pub private: bool,
    /// Nix's priority for the cache: lower is tried first (cache.nixos.org has 40).
    #[arg(long, default_value_t = flywheel_cache::data_dir::DEFAULT_PRIORITY)]
    pub priority: u32,
    /// Name of the signing key (default NAME-1), as it appears in signatures and trusted-public-keys.
    #[arg(long, value_name = "KEY-NAME")]
    pub key_name: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheInfoArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_name = "NAME")]
    pub cache: String,
    /// Everything as JSON (the key as public_key); otherwise the public key alone.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Make a token and print it alone on stdout; it is stored hashed and cannot be shown again.
    Create(TokenCreateArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[arg(long, value_name = "NAME")]
    pub cache: String,
    /// read, write (includes read), admin (includes write), or canary (only publishes canary
    /// runs: `flywheel canary --publish`).
    #[arg(long, value_parser = parse_scope)]
    pub scope: flywheel_cache::index::Scope,
    /// When it stops working: a duration (90m, 12h, 30d) from now, or an RFC 3339 UTC time.
    #[arg(long, value_name = "WHEN")]
    pub expires: Option<String>,
    /// What the token is for, kept in the index.
    #[arg(long)]
    pub description: Option<String>,
}

fn parse_scope(s: &str) -> Result<flywheel_cache::index::Scope, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The cache: http://HOST:PORT/CACHE (a flywheel server, which signs) or file:///DIR.
    #[arg(long, value_name = "URL", value_parser = parse_target, env = "FLYWHEEL_CACHE_URL")]
    pub to: Target,
    /// Access token with the write scope (for http:// caches).
    #[arg(long, value_name = "TOKEN", env = "FLYWHEEL_CACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Secret key file to sign narinfos with (for file:// caches).
    #[arg(long, value_name = "FILE", env = "FLYWHEEL_SIGNING_KEY_FILE")]
    pub key: Option<PathBuf>,
    /// NAR compression: none, zstd or zstd:LEVEL (1-19); http:// caches always get zstd (at LEVEL).
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compression: Compression,
    /// Paths compressed (and, for http://, uploaded) at once (0: one per CPU).
    #[arg(short, long, default_value_t = 0)]
    pub jobs: usize,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Also push every path registered in the Nix database after WHEN (what a CI job built or
    /// fetched): an RFC 3339 time or Unix seconds, e.g. recorded with `date +%s` at the job's start.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Store paths (or symlinks to them, such as ./result) whose closures to push.
    #[arg(required_unless_present = "since")]
    pub paths: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The cache: http://HOST:PORT/CACHE (a flywheel server), or any Nix HTTP binary cache's URL.
    #[arg(long, value_name = "URL", value_parser = parse_http_url, env = "FLYWHEEL_CACHE_URL")]
    pub from: String,
    /// Access token with the read scope (for private caches).
    #[arg(long, value_name = "TOKEN", env = "FLYWHEEL_CACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A public key (`name:base64`, as `flywheel cache info` prints) whose signatures are
    /// trusted; repeat for several. Default: Nix's own trusted-public-keys.
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// NAR downloads at once (0: 8).
    #[arg(short, long, default_value_t = 0)]
    pub jobs: usize,
    /// How paths enter the store: `direct` (restored in place under Nix's path locks, then
    /// registered with `nix-store --load-db`), `import` (`nix-store --import`, for a store
    /// behind the Nix daemon), or `auto` (direct when the store is writable and no daemon).
    #[arg(long, default_value = "auto")]
    pub install: flywheel_cache::pull::Install,
    /// Do not sync the store's filesystem before registering the pulled paths (Nix's own
    /// substitution does not): faster, for runners whose store does not outlive a power cut.
    #[arg(long)]
    pub no_sync: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Store paths to realise (with their closures).
    #[arg(required = true)]
    pub paths: Vec<String>,
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

fn parse_http_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') && !s.contains(['?', '#']) => {
            Ok(s.trim_end_matches('/').to_string())
        }
        _ => Err(format!(
            "{s}: expected an http:// or https:// cache URL (file:// caches are read by `nix copy --from`)"
        )),
    }
}

/// A server's base URL: http(s)://HOST[:PORT], without a path.
fn parse_server_url(s: &str) -> Result<String, String> {
    let trimmed = s.trim_end_matches('/');
    match trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://")) {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', '@']) => Ok(trimmed.to_string()),
        _ => Err(format!("{s}: expected the cache server's address, http://HOST:PORT (no cache name)")),
    }
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.to_string())
}

fn parse_compression(s: &str) -> Result<Compression, String> {
    Compression::parse(s)
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build a reproducible, layered OCI image from Nix closures and directory layers.
    #[command(
        after_help = "The image spec's schema is in docs/image-spec.md. Prints the image manifest's digest on stdout \
(the report with --json).\nExamples:\n  flywheel image build --closure ./result --entrypoint /bin/sh --out image\n  \
flywheel image build --spec image.json --format docker-archive --out image.tar"
    )]
    Build(Box<ImageBuildArgs>),
    /// Push an OCI layout to a registry (OCI distribution API); prints the manifest digest last.
    Push(ImagePushArgs),
    /// Which layers and bytes two images share: what a node holding A downloads for B.
    Diff(ImageDiffArgs),
    /// Write a small directory tree (files, symlinks, directories) from a list of entries: an
    /// image's customisation layer. nix/lib's mkTree builds so.
    #[command(
        after_help = "Entries (a JSON array): {\"path\": \"/home/runner/run.sh\", \"text\": \"...\", \"mode\": \"0755\"}, \
{\"path\": \"/bin/sh\", \"symlink\": \"/nix/store/...-bash/bin/bash\"}, {\"path\": \"/tmp\", \"directory\": true, \"mode\": \"1777\"}.\n\
Example:\n  flywheel image tree --spec entries.json --out tree"
    )]
    Tree(ImageTreeArgs),
}

#[derive(Args, Debug)]
pub struct ImageTreeArgs {
    /// The entries: a JSON array of {path, text | symlink | directory, mode}.
    #[arg(long, value_name = "FILE", required_unless_present = "nix_attrs")]
    pub spec: Option<PathBuf>,
    /// Read the entries (`flywheelTree`) and the output (`outputs.out`) from a Nix build's
    /// structured attributes ($NIX_ATTRS_JSON_FILE, or ./.attrs.json).
    #[arg(long, conflicts_with = "spec")]
    pub nix_attrs: bool,
    /// Where to write the tree (must not exist, or be empty); written atomically.
    #[arg(long, value_name = "DIR", required_unless_present = "nix_attrs")]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImageBuildArgs {
    /// Image spec (JSON, written by nix/lib's mkImageSpec); the options below add to it or override it.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Read the spec, closure graph and output path from a Nix build's structured attributes
    /// (`__structuredAttrs`: $NIX_ATTRS_JSON_FILE, or ./.attrs.json). nix/lib's mkImage builds so.
    #[arg(long, conflicts_with = "spec")]
    pub nix_attrs: bool,
    /// Store paths (or symlinks to them, such as ./result) whose closures the image holds.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub closure: Vec<PathBuf>,
    /// A directory layer: the tree at DIR, placed at PREFIX (default /). Always a layer of its own.
    #[arg(long, value_name = "DIR[:PREFIX]")]
    pub layer: Vec<String>,
    /// A driver layer: a tree written by `flywheel driver collect`; labels the image with its version.
    #[arg(long, value_name = "DIR")]
    pub driver: Option<PathBuf>,
    /// Entrypoint, one argument per use: --entrypoint /bin/sh --entrypoint -c.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Cmd, one argument per use.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Environment variable (NAME=VALUE); replaces one of the same name.
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the container (absolute).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (and group) the container runs as: NAME, UID or UID:GID.
    #[arg(long)]
    pub user: Option<String>,
    /// Label of the image config.
    #[arg(long, value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Annotation of the image manifest.
    #[arg(long, value_name = "KEY=VALUE")]
    pub annotation: Vec<String>,
    /// Port the image exposes: 8080 or 8080/tcp.
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,
    /// A volume the container expects mounted at DIR.
    #[arg(long, value_name = "DIR")]
    pub volume: Vec<String>,
    /// Signal that stops the container, e.g. SIGTERM.
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Repository name, e.g. flywheel/gpu-runner (docker-archive RepoTags, SBOM name).
    #[arg(long)]
    pub name: Option<String>,
    /// Tag written in index.json (default latest).
    #[arg(long)]
    pub tag: Option<String>,
    /// amd64 or arm64.
    #[arg(long)]
    pub architecture: Option<String>,
    /// Creation time, RFC 3339 UTC (default: the source date epoch).
    #[arg(long, value_name = "TIME")]
    pub created: Option<String>,
    /// mtime of every file in the layers (default 1), unless the spec sets one.
    #[arg(long, env = "SOURCE_DATE_EPOCH", value_name = "SECONDS")]
    pub source_date_epoch: Option<u64>,
    /// Layer compression: zstd (default), zstd:LEVEL, gzip, gzip:LEVEL or none (gzip for docker-archive unless given).
    #[arg(long, value_parser = parse_oci_compression)]
    pub compression: Option<flywheel_oci::Compression>,
    /// Threads for tar, hashing and compression (0: one per CPU). The image does not depend on it.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Most layers in the image, pinned and directory layers included (default 100).
    #[arg(long, value_name = "N")]
    pub max_layers: Option<usize>,
    /// How store paths are grouped into layers: cost (default), auto (nixpkgs' auto-layer) or popularity.
    #[arg(long, value_parser = Strategy::parse)]
    pub layering: Option<Strategy>,
    /// Owner of every store-path entry (and /nix, /nix/store): the spec's nixStore.owner.
    #[arg(long, value_name = "UID:GID", value_parser = parse_uid_gid)]
    pub nix_store_owner: Option<(u32, u32)>,
    /// Add the nix-db layer: Nix's state directories and /nix/.flywheel-registration for
    /// `nix-store --load-db` (the spec's nixStore.registration).
    #[arg(long)]
    pub nix_registration: bool,
    /// oci (a layout directory), oci-archive (a tar of it) or docker-archive (for docker load).
    #[arg(long, default_value = "oci", value_parser = Format::parse)]
    pub format: Format,
    /// Layer cache directory (default: ~/.cache/flywheel/layers).
    #[arg(long, value_name = "DIR")]
    pub layer_cache: Option<PathBuf>,
    /// Build every layer; use and fill no layer cache.
    #[arg(long, conflicts_with = "layer_cache")]
    pub no_layer_cache: bool,
    /// Also write the SPDX SBOM to FILE.
    #[arg(long, value_name = "FILE")]
    pub sbom: Option<PathBuf>,
    /// Print the build report (layers with their paths, sizes and digests) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Plan the layers and print them; build nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Where to write the image: a directory (oci) or a file (archives). Replaced atomically.
    #[arg(long, value_name = "OUT", required_unless_present_any = ["dry_run", "nix_attrs"])]
    pub out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ImagePushArgs {
    /// The OCI layout: DIR, or DIR:TAG when it holds several images.
    pub layout: String,
    /// Where to: HOST[:PORT]/REPOSITORY[:TAG] (the tag defaults to the layout's).
    pub reference: String,
    /// Plain HTTP, or HTTPS without verifying the certificate.
    #[arg(long)]
    pub insecure: bool,
    /// Blobs uploaded at once.
    #[arg(short, long, default_value_t = 4)]
    pub jobs: usize,
    /// Docker config with registry credentials (default: $DOCKER_CONFIG/config.json or ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Print the push report as JSON on stdout (the digest is in it).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ImageDiffArgs {
    /// The image a node has: an OCI layout DIR or DIR:TAG.
    pub a: String,
    /// The image it is updated to.
    pub b: String,
    #[arg(long)]
    pub json: bool,
}

fn parse_oci_compression(s: &str) -> Result<flywheel_oci::Compression, String> {
    flywheel_oci::Compression::parse(s)
}

#[derive(Subcommand, Debug)]
pub enum DriverCommand {
    /// Collect a driver's userspace into a deterministic tree, ready to be an image layer
    /// (a `driver` layer of the image spec), with manifest.json listing every file.
    #[command(after_help = "Layout and rationale: docs/driver.md.\nExample:\n  \
flywheel driver collect --driver-root /usr/local/nvidia --capabilities utility,compute --out driver-580")]
    Collect(DriverCollectArgs),
    /// Print a CDI spec (cdiVersion 0.5.0) that injects the driver at run time, as
    /// `nvidia-ctk cdi generate` does.
    Cdi(DriverCdiArgs),
    /// Compare the NVIDIA userspace of an image or tree with the running kernel module: exit 0
    /// when they match, 1 naming both versions otherwise. Works as a runner's pre-job hook.
    Check(DriverCheckArgs),
}

#[derive(Args, Debug)]
pub struct DriverRootArgs {
    /// Where the driver is: a host tree (/, /usr/local/nvidia), NixOS's /run/opengl-driver, or
    /// an output of nixpkgs' NVIDIA driver package. Repeat for several (e.g. the package's out,
    /// bin and firmware outputs); earlier roots win.
    #[arg(long = "driver-root", value_name = "DIR", required = true)]
    pub roots: Vec<PathBuf>,
    /// amd64 or arm64 (default: this machine's); libraries of other architectures are skipped.
    #[arg(long, value_parser = parse_arch)]
    pub arch: Option<flywheel_driver::Arch>,
    /// Do not ask NVML (loaded from the driver root) for the driver version.
    #[arg(long)]
    pub no_nvml: bool,
}

#[derive(Args, Debug)]
pub struct DriverCollectArgs {
    #[command(flatten)]
    pub root: DriverRootArgs,
    /// Comma-separated: utility, compute, video, graphics, display, ngx; a named capability
    /// whose main library is missing is an error. `all`: every capability the driver has.
    #[arg(long, default_value = "utility,compute", value_parser = parse_capabilities)]
    pub capabilities: flywheel_driver::Capabilities,
    /// Fail unless the driver is this version (e.g. the one the nodes run).
    #[arg(long, value_name = "VERSION")]
    pub expect_version: Option<String>,
    /// The tree to write: a new path, an empty folder, or an earlier tree (replaced atomically).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Print the manifest on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DriverCdiArgs {
    #[command(flatten)]
    pub root: DriverRootArgs,
    /// Capabilities whose files are mounted (default: every one the driver root has).
    #[arg(long, value_parser = parse_capabilities)]
    pub capabilities: Option<flywheel_driver::Capabilities>,
    /// Where dev/nvidia* and proc/driver/nvidia/gpus are read.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub dev_root: PathBuf,
    /// The OCI hook program on the host that makes links and the ld cache (the NVIDIA container toolkit's).
    #[arg(long, value_name = "PATH", default_value = "/usr/bin/nvidia-cdi-hook")]
    pub hook_path: String,
    #[arg(long, default_value = "yaml", value_parser = ["yaml", "json"])]
    pub format: String,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").args(["tree", "image"])))]
pub struct DriverCheckArgs {
    /// A collected tree or a root filesystem (default: /, the running container).
    #[arg(long, value_name = "DIR")]
    pub tree: Option<PathBuf>,
    /// An OCI layout (DIR or DIR:TAG) built with a driver layer.
    #[arg(long, value_name = "OCI-DIR")]
    pub image: Option<String>,
    /// The kernel module's version file.
    #[arg(long, value_name = "FILE", default_value = "/proc/driver/nvidia/version")]
    pub kernel_version_file: PathBuf,
}

fn parse_capabilities(s: &str) -> Result<flywheel_driver::Capabilities, String> {
    s.parse()
}

fn parse_arch(s: &str) -> Result<flywheel_driver::Arch, String> {
    s.parse()
}

#[derive(Args, Debug)]
pub struct CanaryArgs {
    /// Write events.jsonl, junit.xml, summary.md and canary.prom here (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
    /// Steps that must pass, comma-separated, or `all` [default: every step but queue]. A step
    /// that is not required still runs, and is skipped when what it needs is missing.
    #[arg(long, value_name = "STEP,...", value_parser = parse_steps)]
    pub require: Option<StepList>,
    /// Steps not to run at all, comma-separated.
    #[arg(long, value_name = "STEP,...", value_parser = parse_steps)]
    pub skip: Option<StepList>,
    /// Time limit for every step, or for one with STEP=SECONDS; repeatable.
    #[arg(long = "step-timeout", value_name = "[STEP=]SECONDS", value_parser = parse_step_timeout)]
    pub step_timeouts: Vec<(Option<flywheel_canary::StepName>, std::time::Duration)>,

    /// The binary cache to check, `http://HOST/CACHE` [default: nix.conf's substituter].
    #[arg(long, value_name = "URL", value_parser = parse_http_url)]
    pub cache: Option<String>,
    /// The cache's public key (`name:base64`); repeatable [default: nix.conf's
    /// trusted-public-keys].
    #[arg(long = "trusted-key", value_name = "KEY")]
    pub trusted_keys: Vec<String>,
    /// A write token for the cache: push a fresh path and pull it back.
    #[arg(long, value_name = "TOKEN", env = "FLYWHEEL_CACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A store path the cache should hold, pulled and verified [default: the canary's own].
    #[arg(long, value_name = "PATH")]
    pub known_path: Option<String>,
    /// nix.conf files to read instead of Nix's own (repeatable).
    #[arg(long = "nix-conf", value_name = "FILE")]
    pub nix_conf: Vec<PathBuf>,

    /// When the job was queued (RFC 3339), where no GitHub environment tells.
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub queued_at: Option<time::OffsetDateTime>,
    /// For GitHub's API (the job's queue time).
    #[arg(long, value_name = "TOKEN", env = "GITHUB_TOKEN", hide_env_values = true)]
    pub github_token: Option<String>,
    /// A longer queue time fails the queue step.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = flywheel_cache::config::parse_duration)]
    pub max_queue: flywheel_cache::config::Duration,

    /// After the run, send it to this cache server's status page (`http://HOST:PORT`, the
    /// server, not one cache). A failed publish is reported and does not fail the canary.
    #[arg(long, value_name = "URL", value_parser = parse_server_url)]
    pub publish: Option<String>,
    /// A token of the canary scope (`flywheel cache token create --scope canary`).
    #[arg(long, value_name = "TOKEN", env = "FLYWHEEL_CANARY_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,
    /// The lane the run is published under: the runner scale set's name.
    #[arg(long, value_name = "NAME", env = "FLYWHEEL_LANE", default_value = "default")]
    pub lane: String,

    /// The runner image's digest [default: $FLYWHEEL_IMAGE_DIGEST].
    #[arg(long, value_name = "DIGEST")]
    pub image_digest: Option<String>,
    /// The image's driver version [default: $FLYWHEEL_DRIVER_VERSION, the labels, or the
    /// image's driver manifest].
    #[arg(long, value_name = "VERSION")]
    pub image_driver_version: Option<String>,
    /// The image's labels as JSON (its OCI config, or an object of labels).
    #[arg(long, value_name = "FILE")]
    pub image_labels: Option<PathBuf>,
    /// Warn when the image's runner was released more days ago than this (GitHub stops
    /// queueing jobs to a runner that cannot update itself 30 days after a newer release). A
    /// lane's runner pods set it from the spec's image.runner_max_age_days.
    #[arg(long, value_name = "DAYS", env = "FLYWHEEL_RUNNER_MAX_AGE_DAYS",
          default_value_t = flywheel_lane::runner::DEFAULT_MAX_AGE_DAYS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub runner_max_age_days: u32,
    /// Warn when the image's runner is older than this version (GitHub's minimum). A lane's
    /// runner pods set it from the spec's image.runner_min_version.
    #[arg(long, value_name = "VERSION", env = "FLYWHEEL_RUNNER_MIN_VERSION",
          default_value_t = flywheel_lane::runner::DEFAULT_MIN_VERSION,
          value_parser = flywheel_lane::runner::RunnerVersion::parse)]
    pub runner_min_version: flywheel_lane::runner::RunnerVersion,
    /// Programs jobs need on PATH, comma-separated.
    #[arg(long, value_name = "TOOL,...", value_delimiter = ',', default_value = "nix,git,tar,gzip")]
    pub tools: Vec<String>,
    /// Least free space on the work and store volumes, in GiB.
    #[arg(long, value_name = "GIB", default_value_t = 5.0)]
    pub min_free_gib: f64,

    /// NVML's library [default: libnvidia-ml.so.1 from the loader's path].
    #[arg(long, value_name = "FILE")]
    pub nvml_lib: Option<PathBuf>,
    /// CUDA's driver library [default: libcuda.so.1].
    #[arg(long, value_name = "FILE")]
    pub cuda_lib: Option<PathBuf>,
    /// The Vulkan loader [default: libvulkan.so.1].
    #[arg(long, value_name = "FILE", env = "FLYWHEEL_VULKAN_LOADER")]
    pub vulkan_loader: Option<PathBuf>,
    /// MiB per bandwidth copy (pinned host memory).
    #[arg(long, value_name = "MIB", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=16384))]
    pub copy_mib: u32,
}

/// Steps named on the command line.
#[derive(Clone, Debug)]
pub struct StepList(pub Vec<flywheel_canary::StepName>);

fn parse_steps(s: &str) -> Result<StepList, String> {
    if s.trim() == "all" {
        return Ok(StepList(flywheel_canary::StepName::ALL.to_vec()));
    }
    s.split(',')
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(StepList)
}

fn parse_step_timeout(s: &str) -> Result<(Option<flywheel_canary::StepName>, std::time::Duration), String> {
    let (step, secs) = match s.split_once('=') {
        Some((step, secs)) => (Some(step.trim().parse()?), secs),
        None => (None, s),
    };
    let secs: f64 = secs.trim().parse().map_err(|_| format!("{secs:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{secs} s: a step's time limit is between 0 and 3600 seconds"));
    }
    Ok((step, std::time::Duration::from_secs_f64(secs)))
}

fn parse_rfc3339(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time like 2026-11-25T10:00:00Z: {e}"))
}

/// `UID:GID`, two numbers.
fn parse_uid_gid(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not UID:GID such as 1001:1001");
    let (u, g) = s.split_once(':').ok_or_else(bad)?;
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

#[derive(Subcommand, Debug)]
pub enum LaneCommand {
    /// Render a lane spec: Helm values for gha-runner-scale-set 0.13, the lane's canary
    /// workflow and an operator README, into DIR. Same spec, same bytes; a spec with any
    /// problem renders nothing.
    #[command(after_help = "The spec's schema and the lane contract: docs/lane.md.\nExample:\n  \
flywheel lane render docs/lanes/honey-gpu.toml --out rendered/honey-gpu")]
    Render(LaneRenderArgs),
    /// Check a lane spec: its fields, then the image it pins (from an OCI layout, or the
    /// registry) against the driver version it names.
    #[command(after_help = "Examples:\n  \
flywheel lane check docs/lanes/honey-gpu.toml\n  \
flywheel lane check docs/lanes/honey-gpu.toml --layout ./gpu-runner-image")]
    Check(LaneCheckArgs),
    /// Print a lane spec as flywheel reads it (defaults filled in), after checking its fields.
    Show {
        /// The lane spec (TOML).
        spec: PathBuf,
    },
    /// The runner's job hooks (ACTIONS_RUNNER_HOOK_JOB_STARTED / _COMPLETED), as the runner
    /// image runs them. Each prints one line for the job log.
    #[command(subcommand)]
    Hook(LaneHookCommand),
    /// Copy the image's /nix into the runner's empty /nix volume (the lane pod's init
    /// container runs it): directories filled before they are made read-only, an interrupted
    /// copy redone, the volume marked seeded only when whole; nothing to do once seeded.
    SeedNix {
        /// The image's store root.
        #[arg(long, value_name = "DIR", default_value = "/nix")]
        from: PathBuf,
        /// The volume, mounted somewhere else than /nix in the init container.
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct LaneRenderArgs {
    /// The lane spec (TOML).
    pub spec: PathBuf,
    /// Where the files go (created if missing; the rendered files in it are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Also check the image first, as `flywheel lane check --layout LAYOUT` does.
    #[arg(long, value_name = "OCI-DIR")]
    pub layout: Option<String>,
}

#[derive(Args, Debug)]
pub struct LaneCheckArgs {
    /// The lane spec (TOML).
    pub spec: PathBuf,
    /// Read the image from this OCI layout (DIR or DIR:TAG) instead of its registry.
    #[arg(long, value_name = "OCI-DIR")]
    pub layout: Option<String>,
    /// Reach the registry over plain HTTP (a registry on 127.0.0.1).
    #[arg(long)]
    pub insecure: bool,
    /// Docker's config.json with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json).
    #[arg(long, value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// The day to measure the runner's age on (YYYY-MM-DD; default today, UTC).
    #[arg(long, value_name = "DATE", value_parser = flywheel_lane::runner::days_of)]
    pub today: Option<i64>,
}

#[derive(Subcommand, Debug)]
pub enum LaneHookCommand {
    /// Before the job: the image's driver against the node's kernel module (a mismatch
    /// refuses the job, exit 1), the cache's reachability, and the job's start for the
    /// completed hook. Reads FLYWHEEL_DRIVER_ROOT, FLYWHEEL_KERNEL_VERSION_FILE,
    /// FLYWHEEL_CACHE_URL, FLYWHEEL_HOOK_STATE_DIR.
    JobStarted {
        /// The image has no driver layer: skip the driver check.
        #[arg(long)]
        no_driver: bool,
    },
    /// After the job: push what it built (`flywheel cache push --since START`) unless it came
    /// from a pull request, remove its temporary files, check the GPU is free. Always exits 0.
    /// Reads FLYWHEEL_CACHE_URL, FLYWHEEL_CACHE_TOKEN, GITHUB_EVENT_NAME, GITHUB_WORKSPACE,
    /// FLYWHEEL_PUSH_PATHS, FLYWHEEL_PUSH_TIMEOUT, FLYWHEEL_HOOK_STATE_DIR.
    JobCompleted,
}
