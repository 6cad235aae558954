//! The tar + sha256 throughput of one layer: `cargo bench -p flywheel-oci --bench tar_sha256 --
//! [--runs N] STORE-PATH...` tars the store paths as one layer (the image's header policy,
//! files read from the page cache) into SHA-256, and prints bytes, seconds and MB/s of the
//! best of N runs. bench/images.sh runs it beside `tar -c --sort=name | openssl dgst -sha256`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use flywheel_oci::tar::{entries, Modes, DIR_MODE};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let mut runs = 5;
    if let Some(i) = args.iter().position(|a| a == "--runs") {
        runs = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(5);
        args.drain(i..=(i + 1).min(args.len() - 1));
    }
    if args.is_empty() {
        eprintln!("usage: cargo bench -p flywheel-oci --bench tar_sha256 -- [--runs N] STORE-PATH...");
        return ExitCode::from(2);
    }
    let mut list = entries::parents(b"nix/store", DIR_MODE);
    for p in &args {
        let path = Path::new(p);
        let base = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Err(e) = entries::gather(path, &entries::store_entry_path("/nix/store", base), Modes::Nar, &mut list) {
            eprintln!("tar_sha256: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(e) = entries::sort_entries(&mut list, "bench") {
        eprintln!("tar_sha256: {e}");
        return ExitCode::FAILURE;
    }
    let mut best = f64::MAX;
    let mut digest = None;
    for _ in 0..runs {
        let started = Instant::now();
        match flywheel_oci::layer::tar_digest(&list, 1) {
            Ok(d) => digest = Some(d),
            Err(e) => {
                eprintln!("tar_sha256: {e}");
                return ExitCode::FAILURE;
            }
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    let Some(d) = digest else { return ExitCode::FAILURE };
    println!("bytes {} seconds {:.4} mb_per_s {:.0} sha256 {}", d.size, best, d.size as f64 / best / 1e6, d.to_sri());
    ExitCode::SUCCESS
}
