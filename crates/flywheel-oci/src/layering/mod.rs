//! Which store paths share a layer.
//!
//! A registry stores and a node downloads layers, not paths, so after an update everything in
//! a layer that holds one changed path moves again. When one package changes, it and every
//! path that depends on it (its referrers, up to the image root) get new store paths; what a
//! layering should do is keep those changes in small layers and out of large stable ones,
//! within a limit on the number of layers (overlayfs and registries cap it; the default is 100).
//!
//! Three strategies, measured against each other on the fixture (docs/benchmarks.md):
//! - `cost` (the default): chooses the grouping that minimises the bytes a registry push
//!   re-uploads when one package of the closure changes, each package equally likely. A path
//!   changes when anything in its closure changes, so a layer changes when anything in the
//!   union of its members' closures does; its expected cost is its size times the size of that
//!   union. Starting from one layer per path, the pair of layers whose merge adds the least
//!   expected cost is merged, until the limit is met. Large, deep-down paths (libc, compilers)
//!   end up alone or with paths that change as rarely; small paths near the root are grouped.
//! - `auto`: nixpkgs' auto-layer (dockerTools, late 2024): the largest paths become primaries
//!   with their own layers; every other path goes to the layer of the set of primaries that
//!   need it; primaries are added by size until the limit.
//! - `popularity`: the older dockerTools / nix2container approach: the paths most depended
//!   upon get a layer each, the rest share the last one.
//!
//! Ties are broken by store path *name* before hash, because a changed package keeps its name
//! but not its hash, and the grouping of unchanged paths should not move with it.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::closure::Closure;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Cost,
    Auto,
    Popularity,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "cost" => Ok(Strategy::Cost),
            "auto" => Ok(Strategy::Auto),
            "popularity" => Ok(Strategy::Popularity),
            _ => Err(format!("unknown layering {s:?}: use cost, auto or popularity")),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Strategy::Cost => "cost",
            Strategy::Auto => "auto",
            Strategy::Popularity => "popularity",
        })
    }
}

/// Groups the objects of `closure` not marked in `excluded` into at most `max_layers` layers
/// (at least one when anything is left). Each layer lists indexes in ascending order; layers
/// come with the most stable (the fewest paths below them) first.
pub fn plan(closure: &Closure, excluded: &[bool], max_layers: usize, strategy: Strategy) -> Vec<Vec<usize>> {
    let max_layers = max_layers.max(1);
    let graph = Graph::new(closure);
    let members: Vec<usize> = (0..closure.len()).filter(|&i| !excluded.get(i).copied().unwrap_or(false)).collect();
    if members.is_empty() {
        return Vec::new();
    }
    let mut layers = match strategy {
        Strategy::Cost => cost(&graph, &members, max_layers),
        Strategy::Auto => auto(&graph, &members, max_layers),
        Strategy::Popularity => popularity(&graph, &members, max_layers),
    };
    for l in &mut layers {
        l.sort_unstable();
    }
    // Stable first: by how many paths can change the layer, then by the layer's first path name.
    layers.sort_by_cached_key(|l| {
        let mut below = BitSet::new(graph.n);
        for &m in l {
            below.union_with(&graph.closure[m]);
        }
        (below.count(), graph.key(l[0]))
    });
    layers
}

/// The reference graph with each object's closure (itself and everything it refers to,
/// transitively) as a bit set.
struct Graph<'a> {
    c: &'a Closure,
    n: usize,
    closure: Vec<BitSet>,
}

impl<'a> Graph<'a> {
    fn new(c: &'a Closure) -> Self {
        let n = c.len();
        // References first, so each closure is the union of its references' closures.
        let order = references_first(c);
        let mut closure: Vec<BitSet> = vec![BitSet::new(0); n];
        for &i in &order {
            let mut set = BitSet::new(n);
            set.insert(i);
            for &r in &c.objects[i].references {
                set.union_with(&closure[r]);
            }
            closure[i] = set;
        }
        Graph { c, n, closure }
    }

    fn size(&self, i: usize) -> u64 {
        self.c.objects[i].nar_size
    }

    /// Name first, then hash: what stays put when a package is rebuilt.
    fn key(&self, i: usize) -> (&str, String) {
        let p = &self.c.objects[i].path;
        (p.name(), p.to_basename())
    }

    /// Everything that refers to each object, transitively, itself included.
    fn referrers(&self) -> Vec<BitSet> {
        let mut up = vec![BitSet::new(self.n); self.n];
        for (i, set) in self.closure.iter().enumerate() {
            for j in set.iter() {
                up[j].insert(i);
            }
        }
        up
    }
}

fn references_first(c: &Closure) -> Vec<usize> {
    let n = c.len();
    let mut state = vec![0u8; n]; // 0 new, 1 on the stack, 2 done
    let mut order = Vec::with_capacity(n);
    for start in 0..n {
        if state[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some((node, next)) = stack.pop() {
            if let Some(&child) = c.objects[node].references.get(next) {
                stack.push((node, next + 1));
                // A reference cycle cannot come from Nix; if a hand-written graph has one, its
                // back edge is ignored here and the closure sets are merely smaller.
                if state[child] == 0 {
                    state[child] = 1;
                    stack.push((child, 0));
                }
            } else {
                state[node] = 2;
                order.push(node);
            }
        }
    }
    order
}

// ---- cost: merge the pair that adds the least expected re-upload ------------------------------

struct Group {
    members: Vec<usize>,
    size: u64,
    below: BitSet,
    count: u64,
    /// The smallest member key, for tie-breaks.
    key: usize,
}

fn cost(g: &Graph<'_>, members: &[usize], max_layers: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Option<Group>> = members
        .iter()
        .map(|&m| {
            Some(Group {
                members: vec![m],
                size: g.size(m),
                below: g.closure[m].clone(),
                count: g.closure[m].count(),
                key: m,
            })
        })
        .collect();
    let mut live = groups.len();
    if live <= max_layers {
        return groups.into_iter().flatten().map(|gr| gr.members).collect();
    }
    let key_cmp = |a: usize, b: usize| g.key(a).cmp(&g.key(b));
    let delta = |a: &Group, b: &Group| -> u128 {
        let union = a.below.union_count(&b.below);
        u128::from(a.size + b.size) * u128::from(union)
            - u128::from(a.size) * u128::from(a.count)
            - u128::from(b.size) * u128::from(b.count)
    };
    // best[i]: the cheapest partner of group i and the cost of merging with it.
    let best_of = |groups: &[Option<Group>], i: usize| -> Option<(u128, usize)> {
        let a = groups[i].as_ref()?;
        let mut best: Option<(u128, usize)> = None;
        for (j, b) in groups.iter().enumerate() {
            let Some(b) = b else { continue };
            if j == i {
                continue;
            }
            let d = delta(a, b);
            let better = match best {
                None => true,
                Some((bd, bj)) => {
                    d < bd
                        || (d == bd && key_cmp(b.key, groups[bj].as_ref().map_or(b.key, |x| x.key)) == Ordering::Less)
                }
            };
            if better {
                best = Some((d, j));
            }
        }
        best
    };
    let mut best: Vec<Option<(u128, usize)>> = (0..groups.len()).map(|i| best_of(&groups, i)).collect();

    while live > max_layers {
        // The cheapest merge overall; ties by the pair's keys.
        let mut pick: Option<(u128, usize, usize)> = None;
        for (i, b) in best.iter().enumerate() {
            let (Some((d, j)), Some(gi)) = (b, &groups[i]) else { continue };
            let better = match pick {
                None => true,
                Some((pd, pi, _)) => {
                    *d < pd
                        || (*d == pd
                            && key_cmp(gi.key, groups[pi].as_ref().map_or(gi.key, |x| x.key)) == Ordering::Less)
                }
            };
            if better {
                pick = Some((*d, i, *j));
            }
        }
        let Some((_, a, b)) = pick else { break };
        let Some(gb) = groups[b].take() else { break };
        if let Some(ga) = groups[a].as_mut() {
            ga.members.extend(gb.members);
            ga.size += gb.size;
            ga.below.union_with(&gb.below);
            ga.count = ga.below.count();
            if key_cmp(gb.key, ga.key) == Ordering::Less {
                ga.key = gb.key;
            }
        }
        best[b] = None;
        live -= 1;
        best[a] = best_of(&groups, a);
        for x in 0..groups.len() {
            if x == a || groups[x].is_none() {
                continue;
            }
            match best[x] {
                Some((_, p)) if p == a || p == b => best[x] = best_of(&groups, x),
                Some((d, p)) => {
                    if let (Some(gx), Some(ga)) = (&groups[x], &groups[a]) {
                        let nd = delta(gx, ga);
                        let pk = groups[p].as_ref().map_or(usize::MAX, |q| q.key);
                        if nd < d || (nd == d && key_cmp(ga.key, pk) == Ordering::Less) {
                            best[x] = Some((nd, a));
                        }
                    }
                }
                None => best[x] = best_of(&groups, x),
            }
        }
    }
    groups.into_iter().flatten().map(|gr| gr.members).collect()
}

// ---- auto: nixpkgs' auto-layer ----------------------------------------------------------------

fn auto(g: &Graph<'_>, members: &[usize], max_layers: usize) -> Vec<Vec<usize>> {
    let is_member = {
        let mut v = vec![false; g.n];
        for &m in members {
            v[m] = true;
        }
        v
    };
    let up = g.referrers();
    // Each object's layer is identified by the set of primaries it is assigned to.
    let mut split: Vec<Vec<usize>> = vec![Vec::new(); g.n];
    let mut counts: HashMap<Vec<usize>, usize> = HashMap::new();
    counts.insert(Vec::new(), members.len());
    let mut by_size: Vec<usize> = members.to_vec();
    // Largest first; ties by name.
    by_size.sort_by(|&a, &b| g.size(b).cmp(&g.size(a)).then_with(|| g.key(a).cmp(&g.key(b))));

    for &primary in &by_size {
        let deps: Vec<usize> = g.closure[primary].iter().filter(|&d| d != primary).collect();
        let users = &up[primary];
        let mut changes: Vec<(usize, Vec<usize>)> = Vec::new();
        let mut set =
            |i: usize, new: Vec<usize>, split: &mut Vec<Vec<usize>>, changes: &mut Vec<(usize, Vec<usize>)>| {
                let old = std::mem::replace(&mut split[i], new);
                if is_member[i] {
                    *counts.entry(old.clone()).or_default() -= 1;
                    *counts.entry(split[i].clone()).or_default() += 1;
                }
                changes.push((i, old));
            };
        set(primary, vec![primary], &mut split, &mut changes);
        for &d in &deps {
            let mut s: Vec<usize> = split[d].iter().copied().filter(|&p| !users.contains(p) || p == primary).collect();
            if !s.iter().any(|&p| p != primary && g.closure[primary].contains(p)) {
                s.push(primary);
                s.sort_unstable();
                s.dedup();
            }
            if s != split[d] {
                set(d, s, &mut split, &mut changes);
            }
        }
        counts.retain(|_, c| *c > 0);
        if counts.len() > max_layers {
            // Undo this primary: the previous split is the answer.
            for (i, old) in changes.into_iter().rev() {
                let new = std::mem::replace(&mut split[i], old);
                if is_member[i] {
                    *counts.entry(new).or_default() -= 1;
                    *counts.entry(split[i].clone()).or_default() += 1;
                }
            }
            break;
        }
    }
    let mut layers: HashMap<&Vec<usize>, Vec<usize>> = HashMap::new();
    for &m in members {
        layers.entry(&split[m]).or_default().push(m);
    }
    layers.into_values().collect()
}

// ---- popularity: dockerTools' referencesByPopularity, as nix2container uses it ------------------

fn popularity(g: &Graph<'_>, members: &[usize], max_layers: usize) -> Vec<Vec<usize>> {
    let up = g.referrers();
    let mut ranked: Vec<usize> = members.to_vec();
    ranked.sort_by(|&a, &b| {
        up[b].count().cmp(&up[a].count()).then_with(|| g.size(b).cmp(&g.size(a))).then_with(|| g.key(a).cmp(&g.key(b)))
    });
    if ranked.len() <= max_layers {
        return ranked.into_iter().map(|m| vec![m]).collect();
    }
    let rest = ranked.split_off(max_layers - 1);
    let mut layers: Vec<Vec<usize>> = ranked.into_iter().map(|m| vec![m]).collect();
    layers.push(rest);
    layers
}

// ---- a small bit set --------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(n: usize) -> Self {
        BitSet(vec![0; n.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn union_with(&mut self, other: &BitSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    fn union_count(&self, other: &BitSet) -> u64 {
        self.0.iter().zip(&other.0).map(|(a, b)| u64::from((a | b).count_ones())).sum()
    }
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, &bits)| (0..64).filter(move |b| bits & (1 << b) != 0).map(move |b| w * 64 + b))
    }
}

#[cfg(test)]
mod tests;
