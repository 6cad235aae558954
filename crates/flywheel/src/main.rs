//! `flywheel`: parses the command line and calls the libraries; nothing else lives here.

mod cli;
mod cmd;

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print and exit 0; usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    // Commands on sockets keep SIGPIPE ignored: a peer that hangs up mid-response is an error
    // for that request (EPIPE), not the end of the server.
    if !cli.command.uses_sockets() {
        restore_sigpipe();
    }
    // Held to the end: dropping it flushes the log lines a server has queued.
    let _log_guard = init_logging(cli.verbose, cli.command.is_long_running(), cli.command.is_server());
    // Push and pull draw a progress bar on a terminal; with -v, the log lines say it instead.
    cmd::BARS.store(cli.verbose == 0, std::sync::atomic::Ordering::Relaxed);
    match cmd::run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first.
            eprintln!("flywheel: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `progress`: a command that can run for minutes shows its progress lines on a terminal even
/// without `-v`, so a person is not left looking at nothing.
fn init_logging(verbose: u8, progress: bool, server: bool) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let default = match verbose {
        0 if server => "warn,flywheel_cache=info",
        0 if progress && stderr_is_terminal => "warn,flywheel_cache=info,flywheel_oci=info",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(verbose >= 2)
        .with_ansi(stderr_is_terminal)
        .without_time();
    if server {
        // A server's line per request goes through a queue to a writer thread, so a request
        // does not wait on stderr; only a full queue (the writer far behind) makes it wait, and
        // no line is dropped.
        let (writer, guard) =
            tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stderr());
        builder.with_writer(writer).init();
        Some(guard)
    } else {
        builder.with_writer(std::io::stderr).init();
        None
    }
}

/// Rust ignores SIGPIPE, so `flywheel nar dump P | head -c 100` would end in a "Broken pipe"
/// error; like other Unix tools, die quietly instead. Called before any thread exists.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    // SAFETY: called first in main, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
