//! The closure an image holds: store objects with their NarHash, NarSize and references, read
//! from the Nix database or from a build's `exportReferencesGraph`, and checked to be closed
//! (every reference is in it).

use std::collections::HashMap;

use flywheel_nix::store_db::{StoreDb, StoreDbError};
use flywheel_nix::{NixHash, StoreDir, StorePath};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreObject {
    pub path: StorePath,
    /// SHA-256 of the path's NAR: what identifies its contents.
    pub nar_hash: [u8; 32],
    pub nar_size: u64,
    /// Indexes into `Closure::objects`, self-references left out, sorted.
    pub references: Vec<usize>,
    /// Whether the path refers to itself (kept for the Nix database the image may carry).
    pub self_reference: bool,
}

/// A closed set of store objects, sorted by path.
#[derive(Clone, Debug)]
pub struct Closure {
    pub store_dir: StoreDir,
    pub objects: Vec<StoreObject>,
}

/// One object as `exportReferencesGraph` (with `__structuredAttrs`) and `nix path-info --json`
/// describe it. Other fields (closureSize, deriver, ...) are ignored.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphEntry {
    pub path: String,
    pub nar_hash: String,
    pub nar_size: u64,
    #[serde(default)]
    pub references: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error(transparent)]
    Store(#[from] StoreDbError),
    #[error("{path:?} is not a store path in {store_dir}: {why}")]
    BadPath { path: String, store_dir: String, why: String },
    #[error("{path}: bad narHash {hash:?} (expected a sha256 hash)")]
    BadHash { path: String, hash: String },
    #[error("{path} appears twice in the closure graph")]
    Duplicate { path: String },
    #[error("{path} refers to {reference}, which is not in the closure")]
    MissingReference { path: String, reference: String },
    #[error("{path} is not in the closure graph")]
    NotInGraph { path: String },
}

impl Closure {
    /// The closure of `roots` in the store behind `db`.
    pub fn from_store(db: &StoreDb, roots: &[StorePath]) -> Result<Self, ClosureError> {
        let store_dir = db.store_dir().clone();
        let infos = db.closure(roots)?;
        let entries = infos
            .into_iter()
            .map(|i| GraphEntry {
                path: store_dir.render_path(&i.path),
                nar_hash: i.nar_hash.to_nix_nixbase32_string(),
                nar_size: i.nar_size,
                references: i.references.iter().map(|r| store_dir.render_path(r)).collect(),
            })
            .collect();
        Self::from_graph(store_dir, entries)
    }

    /// A closure from a graph, which must be closed: every reference names an entry.
    pub fn from_graph(store_dir: StoreDir, entries: Vec<GraphEntry>) -> Result<Self, ClosureError> {
        let parse = |p: &str| {
            store_dir.parse_path(p.as_bytes()).map_err(|e| ClosureError::BadPath {
                path: p.to_string(),
                store_dir: store_dir.as_str().to_string(),
                why: e.to_string(),
            })
        };
        let mut rows = Vec::with_capacity(entries.len());
        for e in &entries {
            let path = parse(&e.path)?;
            let nar_hash = match NixHash::parse(&e.nar_hash) {
                Ok(NixHash::Sha256(h)) => h,
                _ => return Err(ClosureError::BadHash { path: e.path.clone(), hash: e.nar_hash.clone() }),
            };
            rows.push((store_dir.render_path(&path), path, nar_hash, e));
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some(w) = rows.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ClosureError::Duplicate { path: w[0].0.clone() });
        }
        let index: HashMap<&str, usize> = rows.iter().enumerate().map(|(i, r)| (r.0.as_str(), i)).collect();
        let mut objects = Vec::with_capacity(rows.len());
        for (i, (rendered, path, nar_hash, e)) in rows.iter().enumerate() {
            let mut references = Vec::with_capacity(e.references.len());
            let mut self_reference = false;
            for r in &e.references {
                // A malformed reference is reported as such, not as missing.
                let rendered_ref = store_dir.render_path(&parse(r)?);
                let j = *index.get(rendered_ref.as_str()).ok_or_else(|| ClosureError::MissingReference {
                    path: rendered.clone(),
                    reference: rendered_ref.clone(),
                })?;
                if j != i {
                    references.push(j);
                } else {
                    self_reference = true;
                }
            }
            references.sort_unstable();
            references.dedup();
            objects.push(StoreObject {
                path: path.clone(),
                nar_hash: *nar_hash,
                nar_size: e.nar_size,
                references,
                self_reference,
            });
        }
        Ok(Closure { store_dir, objects })
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    pub fn render(&self, i: usize) -> String {
        self.store_dir.render_path(&self.objects[i].path)
    }

    /// The index of `path`, or an error naming it.
    pub fn index_of(&self, path: &StorePath) -> Result<usize, ClosureError> {
        let want = self.store_dir.render_path(path);
        self.objects
            .binary_search_by(|o| self.store_dir.render_path(&o.path).cmp(&want))
            .map_err(|_| ClosureError::NotInGraph { path: want })
    }

    /// Marks everything reachable from `roots`, the roots included.
    pub fn reachable(&self, roots: &[usize]) -> Vec<bool> {
        let mut seen = vec![false; self.objects.len()];
        let mut stack: Vec<usize> = roots.to_vec();
        while let Some(i) = stack.pop() {
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            stack.extend(self.objects[i].references.iter().copied().filter(|&j| !seen[j]));
        }
        seen
    }

    /// The objects marked in `keep`, which must hold every reference of a kept object.
    pub fn restrict(&self, keep: &[bool]) -> Closure {
        let mut new_index = vec![usize::MAX; self.objects.len()];
        let mut n = 0;
        for (i, &k) in keep.iter().enumerate() {
            if k {
                new_index[i] = n;
                n += 1;
            }
        }
        let objects = self
            .objects
            .iter()
            .enumerate()
            .filter(|(i, _)| keep[*i])
            .map(|(_, o)| StoreObject {
                references: o.references.iter().map(|&r| new_index[r]).filter(|&r| r != usize::MAX).collect(),
                ..o.clone()
            })
            .collect();
        Closure { store_dir: self.store_dir.clone(), objects }
    }

    /// Every object as a graph entry (NarHash as `sha256:<nix32>`), for reports and specs.
    pub fn entries(&self) -> Vec<GraphEntry> {
        (0..self.len())
            .map(|i| {
                let o = &self.objects[i];
                GraphEntry {
                    path: self.render(i),
                    nar_hash: NixHash::Sha256(o.nar_hash).to_nix_nixbase32_string(),
                    nar_size: o.nar_size,
                    references: o.references.iter().map(|&r| self.render(r)).collect(),
                }
            })
            .collect()
    }
}

impl Closure {
    /// The indexes of every object, each after everything it refers to; ties in path order.
    pub fn references_first(&self) -> Vec<usize> {
        let mut order = Vec::with_capacity(self.len());
        let mut state = vec![0u8; self.len()]; // 0 new, 1 on the stack, 2 done
        for start in 0..self.len() {
            let mut stack = vec![(start, 0usize)];
            while let Some((i, next)) = stack.pop() {
                if next == 0 && state[i] != 0 {
                    continue;
                }
                state[i] = 1;
                match self.objects[i].references.get(next) {
                    Some(&r) => {
                        stack.push((i, next + 1));
                        if state[r] == 0 {
                            stack.push((r, 0));
                        }
                    }
                    None => {
                        state[i] = 2;
                        order.push(i);
                    }
                }
            }
        }
        order
    }

    /// Every object in the format of `nix-store --dump-db`, for `nix-store --load-db`, references
    /// first: what makes Nix in a container know the image's store paths are valid.
    pub fn load_db_text(&self) -> String {
        let mut text = String::new();
        for i in self.references_first() {
            let o = &self.objects[i];
            let mut refs: Vec<&StorePath> = o.references.iter().map(|&r| &self.objects[r].path).collect();
            if o.self_reference {
                refs.push(&o.path);
            }
            refs.sort_by_key(|p| self.store_dir.render_path(p));
            flywheel_nix::store_db::push_load_db_entry(
                &mut text,
                &self.store_dir,
                &o.path,
                &o.nar_hash,
                o.nar_size,
                None,
                refs.into_iter(),
            );
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

    fn entry(name: &str, refs: &[&str]) -> GraphEntry {
        GraphEntry {
            path: format!("/nix/store/{name}"),
            nar_hash: H.to_string(),
            nar_size: 100,
            references: refs.iter().map(|r| format!("/nix/store/{r}")).collect(),
        }
    }

    const A: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-a";
    const B: &str = "11bgd045z0d4icpbc2yyz4gx48ak44la-b";
    const C: &str = "22bgd045z0d4icpbc2yyz4gx48ak44la-c";

    #[test]
    fn a_closed_graph_is_read_and_an_open_one_refused() {
        let c =
            Closure::from_graph(StoreDir::default(), vec![entry(C, &[A, C]), entry(A, &[]), entry(B, &[A])]).unwrap();
        assert_eq!(c.render(0), format!("/nix/store/{A}"));
        assert_eq!(c.objects[2].references, vec![0]); // self-reference kept apart
        assert!(c.objects[2].self_reference && !c.objects[0].self_reference);
        assert_eq!(c.references_first(), vec![0, 1, 2]);
        let text = c.load_db_text();
        assert!(text.starts_with(&format!("/nix/store/{A}\n")), "{text}");
        assert!(text.ends_with(&format!("\n100\n\n2\n/nix/store/{A}\n/nix/store/{C}\n")), "{text}");
        assert_eq!(text.lines().count(), 5 + 6 + 7);
        // References come first even when they sort after their referrer.
        let d = "33bgd045z0d4icpbc2yyz4gx48ak44la-d";
        let c2 = Closure::from_graph(StoreDir::default(), vec![entry(A, &[d]), entry(d, &[])]).unwrap();
        assert_eq!(c2.references_first(), vec![1, 0]);
        assert_eq!(c.reachable(&[1]), vec![true, true, false]);
        let r = c.restrict(&c.reachable(&[1]));
        assert_eq!(r.len(), 2);
        assert_eq!(r.objects[1].references, vec![0]);

        let open = Closure::from_graph(StoreDir::default(), vec![entry(B, &[A])]);
        assert!(matches!(open, Err(ClosureError::MissingReference { .. })), "{open:?}");
        let bad_ref = Closure::from_graph(StoreDir::default(), vec![entry(B, &["not-a-path"])]);
        assert!(matches!(bad_ref, Err(ClosureError::BadPath { .. })), "{bad_ref:?}");
        let dup = Closure::from_graph(StoreDir::default(), vec![entry(A, &[]), entry(A, &[])]);
        assert!(matches!(dup, Err(ClosureError::Duplicate { .. })));
        let mut bad_hash = entry(A, &[]);
        bad_hash.nar_hash = "md5:00".into();
        assert!(matches!(Closure::from_graph(StoreDir::default(), vec![bad_hash]), Err(ClosureError::BadHash { .. })));
    }
}
