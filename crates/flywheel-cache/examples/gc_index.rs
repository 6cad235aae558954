//! A synthetic cache index shaped like CI, for the garbage-collection benchmark (bench/gc.sh).
//!
//! A CI job builds a closure of `WIDTH` (300) paths in `LAYERS` layers, plus one root (the
//! job's output) that refers to the top layer. Each revision rebuilds about 10% of the
//! paths (new store paths) and keeps the rest from the previous revision. A rebuilt path
//! refers to 4 to 6 paths of lower layers as they are in its revision; a kept path keeps
//! the references it had (so older versions of a dependency stay referenced, as with a
//! pinned input). Every reference goes to an older or same-revision path: a DAG, like Nix.
//!
//! Times: revision r of R is spread over the past 90 days (the newest 2 hours ago, so outside
//! the default 1 h grace period). `added_at` is the revision that introduced
//! a path; `last_access` is the last revision whose closure held it (CI reads the narinfo of
//! its whole closure each run). NAR sizes are log-uniform between 4 KiB and 64 MiB per slot,
//! varying by up to ±20% between versions; roots are 1 KiB.
//!
//! The index is made with `DataDir::open_or_create` and `create_cache("main")`, then filled
//! through rusqlite directly: secondary indexes dropped and rebuilt after the bulk insert,
//! large transactions, `synchronous=OFF`. With `--nar-files`, every NAR also gets a (empty)
//! file in `nar/`, so GC really unlinks.
//!
//! usage: gc_index --data DIR --paths N [--nar-files] [--hashes FILE] [--seed S]
//! Prints one JSON line: {"paths", "refs", "bytes", "revisions", "nar_files", "seconds"}.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use flywheel_cache::data_dir::DataDir;
use flywheel_cache::index::Visibility;
use flywheel_cache::storage::dir::DirStorage;
use rayon::prelude::*;
use rusqlite::{params, Connection};

/// Paths per revision (without the root).
const WIDTH: usize = 300;
const LAYERS: usize = 6;
/// Slots rebuilt per revision (10%).
const CHANGED: usize = WIDTH / 10;
const DAY: i64 = 86_400;
/// Rows per transaction.
const TX_ROWS: usize = 200_000;

const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// splitmix64: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bytes32(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        out
    }

    fn hash_part(&mut self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let (mut bits, mut left) = (0u64, 0);
        for c in &mut out {
            if left < 5 {
                bits = self.next();
                left = 64;
            }
            *c = NIX32[(bits & 31) as usize];
            bits >>= 5;
            left -= 5;
        }
        out
    }
}

struct Path {
    hash_part: [u8; 32],
    /// Slot in the closure, or `None` for a revision's root.
    slot: Option<u16>,
    /// Revision that introduced it, and the last revision whose closure held it.
    first: u32,
    last: u32,
    file_size: u64,
    refs: std::ops::Range<usize>,
}

struct Args {
    data: PathBuf,
    paths: usize,
    nar_files: bool,
    hashes: Option<PathBuf>,
    seed: u64,
}

fn usage() -> ! {
    eprintln!("usage: gc_index --data DIR --paths N [--nar-files] [--hashes FILE] [--seed S]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args { data: PathBuf::new(), paths: 0, nar_files: false, hashes: None, seed: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--data" => a.data = PathBuf::from(value()),
            "--paths" => a.paths = value().parse().unwrap_or_else(|_| usage()),
            "--nar-files" => a.nar_files = true,
            "--hashes" => a.hashes = Some(PathBuf::from(value())),
            "--seed" => a.seed = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.data.as_os_str().is_empty() || a.paths < WIDTH + 1 {
        eprintln!("gc_index: --data is required and --paths must be at least {}", WIDTH + 1);
        usage();
    }
    a
}

/// The layer of a slot: `WIDTH / LAYERS` slots each, layer 0 first.
fn layer(slot: usize) -> usize {
    slot / (WIDTH / LAYERS)
}

/// Generates the paths (in id order) and their references (indices into the paths).
fn generate(n: usize, rng: &mut Rng) -> (Vec<Path>, Vec<u32>, u32) {
    let mut paths: Vec<Path> = Vec::with_capacity(n);
    let mut refs: Vec<u32> = Vec::with_capacity(n * 6);
    // The current path of each slot, and its typical size.
    let mut current = vec![0u32; WIDTH];
    let base: Vec<f64> = (0..WIDTH).map(|_| (4096f64.ln() + rng.unit() * (16384f64).ln()).exp()).collect();
    let per_layer = WIDTH / LAYERS;
    let mut rev = 0u32;
    let mut changed: Vec<usize> = (0..WIDTH).collect();
    loop {
        if rev > 0 {
            // Those paths of the previous revision that are replaced end their life there.
            let left = n - paths.len();
            let k = CHANGED.min(left - 1);
            // A partial Fisher-Yates: k distinct slots.
            let mut all: Vec<usize> = (0..WIDTH).collect();
            for i in 0..k {
                let j = i + rng.below(WIDTH - i);
                all.swap(i, j);
            }
            changed = all[..k].to_vec();
            changed.sort_unstable();
            for &s in &changed {
                paths[current[s] as usize].last = rev - 1;
            }
        }
        // Lower layers first, so a new path refers to the new versions of its dependencies.
        for &s in &changed {
            let id = paths.len() as u32;
            let start = refs.len();
            let l = layer(s);
            if l > 0 {
                let want = 4 + rng.below(3);
                let below = l * per_layer;
                while refs.len() - start < want {
                    let t = current[rng.below(below)];
                    if !refs[start..].contains(&t) {
                        refs.push(t);
                    }
                }
            }
            let size = base[s] * (0.8 + 0.4 * rng.unit());
            paths.push(Path {
                hash_part: rng.hash_part(),
                slot: Some(s as u16),
                first: rev,
                last: u32::MAX,
                file_size: size as u64,
                refs: start..refs.len(),
            });
            current[s] = id;
        }
        // The root: the job's output, referring to the top layer.
        let start = refs.len();
        refs.extend(current[(LAYERS - 1) * per_layer..].iter().copied());
        paths.push(Path {
            hash_part: rng.hash_part(),
            slot: None,
            first: rev,
            last: rev,
            file_size: 1024,
            refs: start..refs.len(),
        });
        if paths.len() >= n {
            break;
        }
        rev += 1;
    }
    for p in &mut paths {
        if p.last == u32::MAX {
            p.last = rev;
        }
    }
    (paths, refs, rev + 1)
}

fn store_path(p: &Path) -> String {
    let hash = std::str::from_utf8(&p.hash_part).unwrap_or("");
    match p.slot {
        Some(s) => format!("/nix/store/{hash}-pkg{s}-l{}-r{}", layer(s as usize), p.first),
        None => format!("/nix/store/{hash}-ci-root-r{}", p.first),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let started = Instant::now();
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    if a.data.join(flywheel_cache::data_dir::INDEX_FILE).exists() {
        return Err(format!("{}: already holds an index; give a fresh directory", a.data.display()).into());
    }
    let data = DataDir::open_or_create(&a.data)?;
    data.create_cache("main", Visibility::Public, 30, None, now)?;
    drop(data);

    let mut rng = Rng(a.seed);
    let (paths, refs, revisions) = generate(a.paths, &mut rng);
    // Revision r's time: the newest 2 hours ago, the oldest 90 days before that.
    let span = 90 * DAY;
    let newest = now - 2 * 3600;
    let time_of = |r: u32| -> i64 {
        if revisions <= 1 {
            newest
        } else {
            newest - span * i64::from(revisions - 1 - r) / i64::from(revisions - 1)
        }
    };
    let nar_hashes: Vec<[u8; 32]> = (0..paths.len()).map(|_| rng.bytes32()).collect();
    eprintln!(
        "gc_index: {} paths, {} references, {revisions} revisions generated in {:.1}s",
        paths.len(),
        refs.len(),
        started.elapsed().as_secs_f64()
    );

    let mut conn = Connection::open(a.data.join(flywheel_cache::data_dir::INDEX_FILE))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -1_000_000i64)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let cache_id: i64 = conn.query_row("SELECT id FROM caches WHERE name = 'main'", [], |r| r.get(0))?;
    // Secondary indexes: dropped for the bulk insert and made again from sorted data (the
    // migration's own SQL, as stored in the schema).
    let indexes: Vec<(String, String)> = {
        let mut stmt = conn.prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL
             AND tbl_name IN ('paths', 'refs', 'nars')",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, _) in &indexes {
        conn.execute_batch(&format!("DROP INDEX \"{name}\""))?;
    }

    let mut total_bytes = 0u64;
    let mut done = 0;
    while done < paths.len() {
        let end = (done + TX_ROWS / 6).min(paths.len());
        let tx = conn.transaction()?;
        {
            let mut nar = tx.prepare_cached(
                "INSERT INTO nars (nar_hash, nar_size, file_hash, file_size, compression, stored_at)
                 VALUES (?1, ?2, ?3, ?4, 'zstd', ?5)",
            )?;
            let mut path = tx.prepare_cached(
                "INSERT INTO paths (id, cache, hash_part, store_path, nar_hash, deriver, ca, sigs, added_at, last_access)
                 VALUES (?1, ?7, ?2, ?3, ?4, NULL, NULL, '', ?5, ?6)",
            )?;
            let mut reference = tx.prepare_cached("INSERT INTO refs (path, reference) VALUES (?1, ?2)")?;
            for i in done..end {
                let p = &paths[i];
                let id = i as i64 + 1;
                let added = time_of(p.first);
                let file_hash = rng.bytes32();
                nar.execute(params![
                    &nar_hashes[i][..],
                    (p.file_size * 3) as i64,
                    &file_hash[..],
                    p.file_size as i64,
                    added
                ])?;
                let hash = std::str::from_utf8(&p.hash_part)?;
                path.execute(params![id, hash, store_path(p), &nar_hashes[i][..], added, time_of(p.last), cache_id])?;
                let mut targets: Vec<String> =
                    refs[p.refs.clone()].iter().map(|&t| store_path(&paths[t as usize])).collect();
                targets.sort_unstable();
                for t in &targets {
                    reference.execute(params![id, t])?;
                }
                total_bytes += p.file_size;
            }
        }
        tx.commit()?;
        done = end;
    }
    let inserted = started.elapsed().as_secs_f64();
    for (_, sql) in &indexes {
        conn.execute_batch(sql)?;
    }
    // No ANALYZE: the server never runs it, so GC's queries are planned as in production.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    drop(conn);
    eprintln!(
        "gc_index: index written in {:.1}s (rows {inserted:.1}s, indexes {:.1}s)",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() - inserted
    );

    if a.nar_files {
        let t = Instant::now();
        let storage = DirStorage::new(&a.data.join("nar"));
        let files: Vec<PathBuf> = nar_hashes.iter().map(|h| storage.file_of(h)).collect();
        let mut shards: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(|p| p.to_path_buf())).collect();
        shards.sort_unstable();
        shards.dedup();
        for s in &shards {
            std::fs::create_dir_all(s)?;
        }
        files.par_iter().try_for_each(|f| std::fs::File::create(f).map(drop))?;
        eprintln!("gc_index: {} NAR files created in {:.1}s", files.len(), t.elapsed().as_secs_f64());
    }
    if let Some(out) = &a.hashes {
        let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
        for p in &paths {
            w.write_all(&p.hash_part)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    println!(
        "{}",
        serde_json::json!({
            "paths": paths.len(),
            "refs": refs.len(),
            "bytes": total_bytes,
            "revisions": revisions,
            "nar_files": a.nar_files,
            "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        })
    );
    Ok(())
}
