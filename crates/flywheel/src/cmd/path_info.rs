use std::collections::BTreeMap;
use std::io::Write;

use anyhow::anyhow;
use flywheel_nix::store_db::PathInfo;

use super::Store;
use crate::cli::PathInfoArgs;

/// The fields and order of `nix path-info --json` (Nix 2.8).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoJson {
    path: String,
    nar_hash: String,
    nar_size: u64,
    references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deriver: Option<String>,
    registration_time: i64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    ultimate: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    signatures: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
}

pub fn run(args: PathInfoArgs) -> anyhow::Result<()> {
    let store = Store::open(&args.store)?;
    let dir = store.db.store_dir().clone();
    let paths = store.resolve(&args.paths)?;
    // In the order Nix prints them: references first, whether or not the closure is asked for.
    let infos: Vec<PathInfo> = if args.recursive {
        store.db.closure(&paths)?
    } else {
        let mut given = BTreeMap::new();
        for p in &paths {
            let info = store.db.query(p)?.ok_or_else(|| anyhow!("{} is not valid", dir.render_path(p)))?;
            given.insert(dir.render_path(p), info);
        }
        flywheel_nix::store_db::references_first(given.into_values().collect(), &dir)
    };
    let infos: Vec<(String, PathInfo)> = infos.into_iter().map(|i| (dir.render_path(&i.path), i)).collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        let rows: Vec<PathInfoJson> = infos
            .into_iter()
            .map(|(path, i)| PathInfoJson {
                path,
                nar_hash: i.nar_hash.to_sri_string(),
                nar_size: i.nar_size,
                references: i.references.iter().map(|r| dir.render_path(r)).collect(),
                deriver: i.deriver.as_ref().map(|d| dir.render_path(d)),
                registration_time: i.registration_time,
                ultimate: i.ultimate,
                signatures: i.signatures.iter().map(|s| s.to_nix_string()).collect(),
                ca: i.ca.as_ref().map(|c| c.to_nix_string()),
            })
            .collect();
        serde_json::to_writer(&mut out, &rows)?;
        writeln!(out)?;
    } else {
        for (path, _) in &infos {
            writeln!(out, "{path}")?;
        }
    }
    Ok(())
}
