//! Deciding, in memory, what a cache keeps: the reference graph of its members, the roots
//! (kept pin revisions, paths in their grace period), then the paths the policies let live,
//! most recently used first, each with its whole closure, until the quota is reached.
//! Memory is a few dozen bytes per path and four per reference; nothing is per byte of NAR.

use std::collections::HashMap;

use crate::index::retention::{GcMember, Pin};

/// A cache's retention settings, in seconds and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Evict least-recently-used paths until the cache's NARs take at most this.
    pub max_size: Option<u64>,
    /// Drop paths not read (narinfo GET or HEAD) for this long.
    pub max_age: Option<i64>,
    /// Paths a cache got this recently are kept whatever the other settings say.
    pub grace: i64,
}

pub const DEFAULT_GRACE: i64 = 3600;

impl Default for Policy {
    fn default() -> Self {
        Policy { max_size: None, max_age: None, grace: DEFAULT_GRACE }
    }
}

/// Why a path goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Over the size quota, least recently used.
    Quota,
    /// Not read for longer than the maximum age.
    Age,
    /// Kept only by a pin revision that was released (then over quota or too old).
    UnpinnedRevision,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Quota => "quota",
            Reason::Age => "age",
            Reason::UnpinnedRevision => "unpinned-revision",
        }
    }
}

/// A cache's members and the references among them.
pub struct Graph {
    pub members: Vec<GcMember>,
    by_hash: HashMap<[u8; 32], u32>,
    by_id: HashMap<i64, u32>,
    /// References of member `i`: `targets[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

/// Builds a [`Graph`] from a snapshot: members first, then references.
#[derive(Default)]
pub struct GraphBuilder {
    members: Vec<GcMember>,
    by_hash: HashMap<[u8; 32], u32>,
    by_id: HashMap<i64, u32>,
    edges: Vec<(u32, u32)>,
}

/// The hash part of a full store path, as the index keeps it.
pub fn hash_part(store_path: &str) -> Option<[u8; 32]> {
    let base = store_path.rsplit('/').next()?;
    base.as_bytes().get(..32)?.try_into().ok()
}

impl GraphBuilder {
    pub fn member(&mut self, m: GcMember) {
        let i = self.members.len() as u32;
        self.by_hash.insert(m.hash_part, i);
        self.by_id.insert(m.id, i);
        self.members.push(m);
    }

    /// A reference from the member with id `from` to `target`; references to paths outside
    /// the cache (upstream ones) and self-references do not matter for GC.
    pub fn reference(&mut self, from: i64, target: &str) {
        let (Some(&f), Some(t)) = (self.by_id.get(&from), hash_part(target).and_then(|h| self.by_hash.get(&h))) else {
            return;
        };
        if f != *t {
            self.edges.push((f, *t));
        }
    }

    pub fn build(mut self) -> Graph {
        let n = self.members.len();
        let mut offsets = vec![0u32; n + 1];
        for &(f, _) in &self.edges {
            offsets[f as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; self.edges.len()];
        for &(f, t) in &self.edges {
            targets[fill[f as usize] as usize] = t;
            fill[f as usize] += 1;
        }
        self.edges = Vec::new();
        Graph { members: self.members, by_hash: self.by_hash, by_id: self.by_id, offsets, targets }
    }
}

impl Graph {
    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn index_of(&self, store_path: &str) -> Option<u32> {
        hash_part(store_path).and_then(|h| self.by_hash.get(&h).copied())
    }

    pub fn index_of_id(&self, id: i64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    fn refs(&self, i: u32) -> &[u32] {
        &self.targets[self.offsets[i as usize] as usize..self.offsets[i as usize + 1] as usize]
    }

    /// Marks the closure of `start` in `mark`, calling `added` for each node newly marked.
    fn close(&self, start: u32, mark: &mut [bool], stack: &mut Vec<u32>, mut added: impl FnMut(u32)) {
        if mark[start as usize] {
            return;
        }
        mark[start as usize] = true;
        added(start);
        stack.push(start);
        while let Some(i) = stack.pop() {
            for &r in self.refs(i) {
                if !mark[r as usize] {
                    mark[r as usize] = true;
                    added(r);
                    stack.push(r);
                }
            }
        }
    }
}

/// Which pin revisions stay: the newest always; then those within `keep_revisions` or younger
/// than `keep_days`; a pin with neither setting keeps only its newest.
pub fn kept_revisions(pin: &Pin, now: i64) -> (Vec<&str>, Vec<(String, i64)>) {
    let (mut kept, mut released) = (Vec::new(), Vec::new());
    for (i, rev) in pin.revisions.iter().enumerate() {
        let by_count = pin.keep_revisions.is_some_and(|n| (i as u64) < u64::from(n));
        let by_age = pin.keep_days.is_some_and(|d| rev.pinned_at >= now - i64::from(d) * 86_400);
        if i == 0 || by_count || by_age {
            kept.push(rev.store_path.as_str());
        } else {
            released.push((pin.name.clone(), rev.revision));
        }
    }
    (kept, released)
}

/// What GC decided for one cache.
pub struct Plan {
    /// Member indices to remove, referrers before what they refer to, with the reason.
    pub doomed: Vec<(u32, Reason)>,
    /// Pin revisions no longer kept: (pin, revision).
    pub released: Vec<(String, i64)>,
    /// What stays.
    pub kept_paths: u64,
    pub kept_bytes: u64,
    /// Bytes the roots alone (pins, grace) take beyond the quota.
    pub over_quota: Option<u64>,
}

pub fn plan(graph: &Graph, pins: &[Pin], policy: &Policy, now: i64) -> Plan {
    let n = graph.len();
    let mut kept = vec![false; n];
    let mut kept_bytes = 0u64;
    let mut kept_paths = 0u64;
    let mut stack = Vec::new();
    let size = |i: u32| graph.members[i as usize].file_size;

    let mut released = Vec::new();
    let mut released_roots = Vec::new();
    for pin in pins {
        let (keep, gone) = kept_revisions(pin, now);
        for path in keep {
            if let Some(i) = graph.index_of(path) {
                graph.close(i, &mut kept, &mut stack, |j| {
                    kept_bytes += size(j);
                    kept_paths += 1;
                });
            }
        }
        for (name, rev) in gone {
            if let Some(r) = pin.revisions.iter().find(|r| r.revision == rev) {
                released_roots.extend(graph.index_of(&r.store_path));
            }
            released.push((name, rev));
        }
    }
    let grace_cutoff = now - policy.grace;
    for (i, m) in graph.members.iter().enumerate() {
        if m.added_at > grace_cutoff {
            graph.close(i as u32, &mut kept, &mut stack, |j| {
                kept_bytes += size(j);
                kept_paths += 1;
            });
        }
    }
    let over_quota = policy.max_size.and_then(|q| kept_bytes.checked_sub(q)).filter(|&b| b > 0);

    let age_cutoff = policy.max_age.map(|a| now - a);
    let mut live: Vec<u32> = (0..n as u32)
        .filter(|&i| !kept[i as usize] && age_cutoff.is_none_or(|c| graph.members[i as usize].last_access >= c))
        .collect();
    // Most recently used first; among equals, the newest upload.
    live.sort_unstable_by_key(|&i| {
        let m = &graph.members[i as usize];
        (std::cmp::Reverse(m.last_access), std::cmp::Reverse(m.added_at), std::cmp::Reverse(m.id))
    });
    let mut tentative = vec![false; n];
    let mut added = Vec::new();
    for i in live {
        if kept[i as usize] {
            continue;
        }
        // The closure this path would add: all of it fits, or the quota is reached.
        added.clear();
        let mut add_bytes = 0u64;
        stack.push(i);
        tentative[i as usize] = true;
        while let Some(j) = stack.pop() {
            added.push(j);
            add_bytes += size(j);
            for &r in graph.refs(j) {
                if !kept[r as usize] && !tentative[r as usize] {
                    tentative[r as usize] = true;
                    stack.push(r);
                }
            }
        }
        for &j in &added {
            tentative[j as usize] = false;
        }
        if policy.max_size.is_some_and(|q| kept_bytes + add_bytes > q) {
            break;
        }
        for &j in &added {
            kept[j as usize] = true;
        }
        kept_bytes += add_bytes;
        kept_paths += added.len() as u64;
    }

    let mut in_released = vec![false; n];
    for r in released_roots {
        graph.close(r, &mut in_released, &mut stack, |_| {});
    }
    let reason = |i: u32| {
        if in_released[i as usize] {
            Reason::UnpinnedRevision
        } else if age_cutoff.is_some_and(|c| graph.members[i as usize].last_access < c) {
            Reason::Age
        } else {
            Reason::Quota
        }
    };
    let doomed = removal_order(graph, &kept).into_iter().map(|i| (i, reason(i))).collect();
    Plan { doomed, released, kept_paths, kept_bytes, over_quota }
}

/// The members not kept, each before the members it refers to (reversed post-order), so a
/// path is removed only once nothing that refers to it is left.
fn removal_order(graph: &Graph, kept: &[bool]) -> Vec<u32> {
    let n = graph.len();
    let mut done = vec![false; n];
    let mut post = Vec::new();
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for start in 0..n as u32 {
        if kept[start as usize] || done[start as usize] {
            continue;
        }
        done[start as usize] = true;
        stack.push((start, 0));
        while let Some((i, pos)) = stack.last_mut() {
            let refs = graph.refs(*i);
            if let Some(&r) = refs.get(*pos) {
                *pos += 1;
                if !kept[r as usize] && !done[r as usize] {
                    done[r as usize] = true;
                    stack.push((r, 0));
                }
            } else {
                post.push(*i);
                stack.pop();
            }
        }
    }
    post.reverse();
    post
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::retention::PinRevision;
    use proptest::prelude::*;

    fn hash(i: usize) -> [u8; 32] {
        let mut h = [b'0'; 32];
        h[..8].copy_from_slice(format!("{i:08}").as_bytes());
        h
    }

    fn path(i: usize) -> String {
        format!("/nix/store/{}-p{i}", String::from_utf8_lossy(&hash(i)))
    }

    /// Members 0..n with (size, last_access, added_at), and edges (from, to).
    fn graph(members: &[(u64, i64, i64)], edges: &[(usize, usize)]) -> Graph {
        let mut b = GraphBuilder::default();
        for (i, &(file_size, last_access, added_at)) in members.iter().enumerate() {
            b.member(GcMember { id: i as i64 + 100, hash_part: hash(i), file_size, last_access, added_at });
        }
        for &(f, t) in edges {
            b.reference(f as i64 + 100, &path(t));
        }
        b.build()
    }

    fn doomed(p: &Plan) -> Vec<(u32, Reason)> {
        let mut d = p.doomed.clone();
        d.sort();
        d
    }

    const NOW: i64 = 1_000_000;

    #[test]
    fn quota_keeps_the_most_recent_closures_that_fit() {
        // 0 -> 1 -> 2; 3 alone (oldest); 4 alone (newest).
        let g = graph(
            &[(10, NOW - 50, 0), (10, NOW - 500, 0), (10, NOW - 500, 0), (10, NOW - 900, 0), (10, NOW - 10, 0)],
            &[(0, 1), (1, 2)],
        );
        let policy = Policy { max_size: Some(45), max_age: None, grace: 0 };
        let p = plan(&g, &[], &policy, NOW);
        assert_eq!(doomed(&p), vec![(3, Reason::Quota)]);
        assert_eq!((p.kept_paths, p.kept_bytes), (4, 40));
        // The closure of 0 does not fit beside 4 in 35: 0, 1, 2 and then 3 go.
        let p = plan(&g, &[], &Policy { max_size: Some(35), ..policy }, NOW);
        assert_eq!(doomed(&p), vec![(0, Reason::Quota), (1, Reason::Quota), (2, Reason::Quota), (3, Reason::Quota)]);
    }

    #[test]
    fn age_spares_what_a_fresh_path_refers_to_and_grace_protects_new_uploads() {
        let g =
            graph(&[(1, NOW - 10, 0), (1, NOW - 9_999, 0), (1, NOW - 9_999, 0), (1, NOW - 9_999, NOW - 5)], &[(0, 1)]);
        let p = plan(&g, &[], &Policy { max_size: None, max_age: Some(100), grace: 60 }, NOW);
        assert_eq!(doomed(&p), vec![(2, Reason::Age)]);
    }

    #[test]
    fn pins_keep_their_newest_revisions_and_release_the_rest() {
        let g = graph(&[(1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0)], &[(2, 3)]);
        let rev = |r: i64, i: usize, at: i64| PinRevision { revision: r, store_path: path(i), pinned_at: at };
        let pin = Pin {
            name: "main".into(),
            keep_revisions: Some(2),
            keep_days: None,
            revisions: vec![rev(3, 0, NOW), rev(2, 1, NOW - 10), rev(1, 2, NOW - 20)],
        };
        let p = plan(&g, &[pin], &Policy { max_size: None, max_age: Some(1), grace: 0 }, NOW);
        assert_eq!(p.released, vec![("main".to_string(), 1)]);
        assert_eq!(doomed(&p), vec![(2, Reason::UnpinnedRevision), (3, Reason::UnpinnedRevision)]);
        let days = Pin {
            name: "x".into(),
            keep_revisions: None,
            keep_days: Some(1),
            revisions: vec![rev(2, 0, NOW), rev(1, 1, NOW - 10)],
        };
        assert_eq!(kept_revisions(&days, NOW + 86_400 - 20).0.len(), 2);
        assert_eq!(kept_revisions(&days, NOW + 86_400 + 5).0, vec![path(0).as_str()], "the newest always stays");
        let neither = Pin { keep_days: None, ..days };
        assert_eq!(kept_revisions(&neither, NOW).1, vec![("x".to_string(), 1)]);
    }

    proptest! {
        /// Whatever the graph and the policy: what is kept is closed under references, fits
        /// the quota unless the roots alone do not, and every doomed path comes before the
        /// doomed paths it refers to.
        #[test]
        fn kept_sets_are_closed_and_removal_is_referrers_first(
            members in prop::collection::vec((1u64..100, 0i64..1000, 0i64..1000), 1..60),
            raw_edges in prop::collection::vec((0usize..60, 0usize..60), 0..120),
            max_size in prop::option::of(0u64..3000),
            max_age in prop::option::of(0i64..1000),
            grace in 0i64..200,
        ) {
            let n = members.len();
            // Store paths refer only to older paths: edges go from higher to lower indices.
            let edges: Vec<(usize, usize)> = raw_edges.into_iter()
                .map(|(a, b)| (a % n, b % n)).filter(|(a, b)| a > b).collect();
            let g = graph(&members, &edges);
            let policy = Policy { max_size, max_age, grace };
            let p = plan(&g, &[], &policy, 1000);
            let mut kept = vec![true; n];
            for &(i, _) in &p.doomed { kept[i as usize] = false; }
            for &(f, t) in &edges {
                prop_assert!(!kept[f] || kept[t], "kept {f} refers to removed {t}");
            }
            let bytes: u64 = (0..n).filter(|&i| kept[i]).map(|i| members[i].0).sum();
            prop_assert_eq!(bytes, p.kept_bytes);
            if let (Some(q), None) = (max_size, p.over_quota) {
                prop_assert!(bytes <= q);
            }
            for (i, m) in members.iter().enumerate() {
                if m.2 > 1000 - grace { prop_assert!(kept[i], "{i} is in its grace period"); }
            }
            let pos: HashMap<u32, usize> = p.doomed.iter().enumerate().map(|(k, &(i, _))| (i, k)).collect();
            for &(f, t) in &edges {
                if let (Some(a), Some(b)) = (pos.get(&(f as u32)), pos.get(&(t as u32))) {
                    prop_assert!(a < b, "{f} refers to {t} but is removed after it");
                }
            }
        }
    }
}
