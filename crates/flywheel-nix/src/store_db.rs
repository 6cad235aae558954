//! Read the local Nix store's database (`/nix/var/nix/db/db.sqlite`) directly.
//!
//! Path info and closures come from two tables: `ValidPaths` (id, path, hash, registrationTime,
//! deriver, narSize, ultimate, sigs, ca) and `Refs` (referrer, reference). The database is
//! opened read-only; Nix keeps its own locks and this never takes one, so a running Nix is
//! not disturbed. One query answers a whole closure, so pushing or layering a large closure
//! needs no `nix` process and no per-path round trip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix_derivation::{CAHash, NixHash, StoreDir, StorePath};
use nix_narinfo::NixSignature;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// What the store knows about one valid path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: NixHash,
    pub nar_size: u64,
    /// Store paths this one refers to, possibly itself.
    pub references: BTreeSet<StorePath>,
    pub deriver: Option<StorePath>,
    /// Seconds since the epoch.
    pub registration_time: i64,
    /// Built locally rather than substituted.
    pub ultimate: bool,
    pub signatures: Vec<NixSignature>,
    pub ca: Option<CAHash>,
}

impl PathInfo {
    /// The string a binary-cache signature covers:
    /// `1;<path>;<sha256:nix32 NarHash>;<NarSize>;<references, sorted, comma-joined>`.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        let refs: Vec<String> = self.references.iter().map(|r| store_dir.render_path(r)).collect();
        format!(
            "1;{};{};{};{}",
            store_dir.render_path(&self.path),
            self.nar_hash.to_nix_nixbase32_string(),
            self.nar_size,
            refs.join(",")
        )
    }
}

/// Appends one path in the format `nix-store --dump-db` prints and `nix-store --load-db` reads:
/// the path, its NarHash in base16 (sha256, without a prefix), its NarSize, its deriver (an
/// empty line when none), the number of references, then each reference on its own line.
/// `--load-db` takes the hashes as given and does not read the store paths.
pub fn push_load_db_entry<'a>(
    text: &mut String,
    store_dir: &StoreDir,
    path: &StorePath,
    nar_sha256: &[u8; 32],
    nar_size: u64,
    deriver: Option<&StorePath>,
    references: impl ExactSizeIterator<Item = &'a StorePath>,
) {
    use std::fmt::Write as _;
    text.push_str(&store_dir.render_path(path));
    text.push('\n');
    for b in nar_sha256 {
        let _ = write!(text, "{b:02x}");
    }
    let _ = write!(text, "\n{nar_size}\n");
    if let Some(d) = deriver {
        text.push_str(&store_dir.render_path(d));
    }
    let _ = writeln!(text, "\n{}", references.len());
    for r in references {
        text.push_str(&store_dir.render_path(r));
        text.push('\n');
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreDbError {
    #[error("opening the Nix database {}", path.display())]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("no Nix database at {} (is Nix installed, and is this the right store?)", .0.display())]
    Missing(PathBuf),
    #[error("reading the Nix database")]
    Query(#[from] rusqlite::Error),
    #[error("{0} is not a valid path in the Nix store")]
    NotValid(String),
    #[error("the Nix database holds a bad {field} for {path}: {value:?}")]
    Corrupt { path: String, field: &'static str, value: String },
}

/// A read-only view of a Nix store's database.
pub struct StoreDb {
    conn: Connection,
    store_dir: StoreDir,
}

impl StoreDb {
    /// The database of the store at `root` (`/` for the system store, or a chroot store's root).
    pub fn open_root(root: &Path, store_dir: StoreDir) -> Result<Self, StoreDbError> {
        let state = match std::env::var_os("NIX_STATE_DIR") {
            Some(dir) if root == Path::new("/") => PathBuf::from(dir),
            _ => root.join("nix/var/nix"),
        };
        Self::open(&state.join("db/db.sqlite"), store_dir)
    }

    /// The system store's database, honouring `NIX_STATE_DIR` and `NIX_STORE_DIR`.
    pub fn open_default() -> Result<Self, StoreDbError> {
        Self::open_root(Path::new("/"), crate::store_path::default_store_dir())
    }

    pub fn open(path: &Path, store_dir: StoreDir) -> Result<Self, StoreDbError> {
        let open_error = |source| StoreDbError::Open { path: path.to_path_buf(), source };
        if !path.exists() {
            return Err(StoreDbError::Missing(path.to_path_buf()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(open_error)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(open_error)?;
        // A user who may read the database but not its directory cannot open it in WAL mode
        // read-only (SQLite wants the -shm file); immutable mode reads without locks instead.
        let conn = match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)) {
            Ok(_) => conn,
            Err(e) => {
                tracing::debug!("read-only open failed ({e}); retrying the Nix database as immutable");
                let uri = format!("file:{}?immutable=1", path.display());
                Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI).map_err(open_error)?
            }
        };
        Ok(Self { conn, store_dir })
    }

    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Path info for `path`, or `None` when the store does not hold it.
    pub fn query(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreDbError> {
        let rendered = self.store_dir.render_path(path);
        let row = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM ValidPaths WHERE path = ?1"))?
            .query_row([&rendered], Row::read)
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        let refs = self
            .conn
            .prepare_cached("SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?1")?
            .query_map([row.id], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(row.into_info(&self.store_dir, refs)?))
    }

    /// Paths registered after `since` (seconds since the epoch): what builds and substitutions
    /// since then added, e.g. during one CI job. Derivations (`.drv`) are left out.
    pub fn registered_since(&self, since: i64) -> Result<Vec<StorePath>, StoreDbError> {
        let paths = self
            .conn
            .prepare_cached(
                "SELECT path FROM ValidPaths WHERE registrationTime > ?1 AND path NOT LIKE '%.drv' ORDER BY path",
            )?
            .query_map([since], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        paths
            .iter()
            .map(|p| {
                self.store_dir.parse_path(p.as_bytes()).map_err(|e| StoreDbError::Corrupt {
                    path: p.clone(),
                    field: "path",
                    value: e.to_string(),
                })
            })
            .collect()
    }

    /// Whether the store holds `path`.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, StoreDbError> {
        let rendered = self.store_dir.render_path(path);
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM ValidPaths WHERE path = ?1")?
            .query_row([&rendered], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The closure of `roots`, every path after the paths it refers to (so a cache that
    /// receives them in this order never holds a path without its references).
    pub fn closure(&self, roots: &[StorePath]) -> Result<Vec<PathInfo>, StoreDbError> {
        let rendered: Vec<String> = roots.iter().map(|p| self.store_dir.render_path(p)).collect();
        let json = serde_json::to_string(&rendered).map_err(|e| StoreDbError::NotValid(e.to_string()))?;
        let cte = "WITH RECURSIVE closure(id) AS ( \
                     SELECT id FROM ValidPaths WHERE path IN (SELECT value FROM json_each(?1)) \
                     UNION SELECT r.reference FROM Refs r JOIN closure c ON r.referrer = c.id)";

        let mut rows: HashMap<i64, Row> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(&format!("{cte} SELECT {COLUMNS} FROM ValidPaths JOIN closure c ON ValidPaths.id = c.id"))?;
        for row in stmt.query_map([&json], Row::read)? {
            let row = row?;
            rows.insert(row.id, row);
        }
        let found: BTreeSet<&str> = rows.values().map(|r| r.path.as_str()).collect();
        if let Some(missing) = rendered.iter().find(|p| !found.contains(p.as_str())) {
            return Err(StoreDbError::NotValid(missing.clone()));
        }

        let mut refs: HashMap<i64, Vec<i64>> = HashMap::new();
        let mut stmt = self.conn.prepare(&format!(
            "{cte} SELECT r.referrer, r.reference FROM Refs r JOIN closure c ON r.referrer = c.id"
        ))?;
        for pair in stmt.query_map([&json], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
            let (from, to) = pair?;
            refs.entry(from).or_default().push(to);
        }

        let path_of: HashMap<i64, String> = rows.iter().map(|(id, r)| (*id, r.path.clone())).collect();
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_path: HashMap<String, PathInfo> = HashMap::with_capacity(rows.len());
        for (id, row) in rows {
            let mut targets: Vec<String> =
                refs.get(&id).map(|ts| ts.iter().filter_map(|t| path_of.get(t).cloned()).collect()).unwrap_or_default();
            targets.sort_unstable();
            edges.insert(row.path.clone(), targets.clone());
            by_path.insert(row.path.clone(), row.into_info(&self.store_dir, targets)?);
        }
        let order = topological(&edges);
        Ok(order.into_iter().filter_map(|p| by_path.remove(&p)).collect())
    }
}

/// `infos` in the order `nix path-info` prints given paths: references first, as far as they
/// are among `infos` (Nix sorts the paths it is given topologically, recursive or not).
pub fn references_first(infos: Vec<PathInfo>, store_dir: &StoreDir) -> Vec<PathInfo> {
    let mut by_path: HashMap<String, PathInfo> =
        infos.into_iter().map(|i| (store_dir.render_path(&i.path), i)).collect();
    let edges: BTreeMap<String, Vec<String>> = by_path
        .iter()
        .map(|(p, i)| {
            let refs =
                i.references.iter().map(|r| store_dir.render_path(r)).filter(|r| by_path.contains_key(r)).collect();
            (p.clone(), refs)
        })
        .collect();
    topological(&edges).into_iter().filter_map(|p| by_path.remove(&p)).collect()
}

/// References first. Roots and references are visited in path order, depth first, which is
/// the order `nix path-info --recursive` prints. Self-references are ignored.
fn topological(edges: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut order = Vec::with_capacity(edges.len());
    let mut state: HashMap<&str, bool> = HashMap::new(); // false: in progress, true: done
    for start in edges.keys() {
        if state.contains_key(start.as_str()) {
            continue;
        }
        // Iterative depth-first post-order, so long chains cannot overflow the stack.
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        state.insert(start, false);
        while let Some((node, next)) = stack.pop() {
            let children = edges.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(child) = children.get(next) {
                stack.push((node, next + 1));
                if child != node && !state.contains_key(child.as_str()) {
                    state.insert(child, false);
                    stack.push((child, 0));
                }
            } else {
                state.insert(node, true);
                order.push(node.to_string());
            }
        }
    }
    order
}

const COLUMNS: &str = "ValidPaths.id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca";

struct Row {
    id: i64,
    path: String,
    hash: String,
    registration_time: i64,
    deriver: Option<String>,
    nar_size: Option<i64>,
    ultimate: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Row {
            id: r.get(0)?,
            path: r.get(1)?,
            hash: r.get(2)?,
            registration_time: r.get(3)?,
            deriver: r.get(4)?,
            nar_size: r.get(5)?,
            ultimate: r.get(6)?,
            sigs: r.get(7)?,
            ca: r.get(8)?,
        })
    }

    fn into_info(self, store_dir: &StoreDir, refs: Vec<String>) -> Result<PathInfo, StoreDbError> {
        let corrupt =
            |field, value: &str| StoreDbError::Corrupt { path: self.path.clone(), field, value: value.to_string() };
        let parse = |field, p: &str| store_dir.parse_path(p.as_bytes()).map_err(|_| corrupt(field, p));
        let references = refs.iter().map(|r| parse("reference", r)).collect::<Result<_, _>>()?;
        let deriver = match self.deriver.as_deref() {
            None | Some("") => None,
            Some(d) => Some(parse("deriver", d)?),
        };
        let ca = match self.ca.as_deref() {
            None | Some("") => None,
            Some(c) => Some(CAHash::parse(c).map_err(|_| corrupt("ca", c))?),
        };
        let signatures = self
            .sigs
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|s| match NixSignature::parse(s) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    tracing::warn!("{}: ignoring an unreadable signature {s:?}: {e}", self.path);
                    None
                }
            })
            .collect();
        let nar_size = self.nar_size.unwrap_or(0);
        Ok(PathInfo {
            path: parse("path", &self.path)?,
            nar_hash: NixHash::parse(&self.hash).map_err(|_| corrupt("hash", &self.hash))?,
            nar_size: u64::try_from(nar_size).map_err(|_| corrupt("narSize", &nar_size.to_string()))?,
            references,
            deriver,
            registration_time: self.registration_time,
            ultimate: self.ultimate.unwrap_or(0) != 0,
            signatures,
            ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_come_first() {
        let edges: BTreeMap<String, Vec<String>> =
            [("app", vec!["lib", "app"]), ("lib", vec!["libc"]), ("libc", vec![]), ("tool", vec!["libc", "lib"])]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
                .collect();
        let order = topological(&edges);
        let pos = |p: &str| order.iter().position(|x| x == p).unwrap();
        assert_eq!(order.len(), 4);
        assert!(pos("libc") < pos("lib") && pos("lib") < pos("app") && pos("lib") < pos("tool"));
    }

    #[test]
    fn given_paths_come_references_first_whatever_their_names() {
        let dir = StoreDir::default();
        let info = |base: &str, refs: &[&str]| PathInfo {
            path: dir.parse_path(format!("/nix/store/{base}").as_bytes()).unwrap(),
            nar_hash: NixHash::Sha256([0; 32]),
            nar_size: 1,
            references: refs.iter().map(|r| dir.parse_path(format!("/nix/store/{r}").as_bytes()).unwrap()).collect(),
            deriver: None,
            registration_time: 0,
            ultimate: false,
            signatures: vec![],
            ca: None,
        };
        let root = "00000000000000000000000000000000-root";
        let leaf = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-leaf";
        let mid = "11111111111111111111111111111111-mid";
        // root refers to leaf directly; mid is not given, so nothing links through it.
        let sorted = references_first(vec![info(root, &[leaf, mid]), info(leaf, &[])], &dir);
        let names: Vec<&str> = sorted.iter().map(|i| i.path.name()).collect();
        assert_eq!(names, vec!["leaf", "root"]);
    }
}
