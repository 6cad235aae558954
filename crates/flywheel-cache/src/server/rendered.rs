//! Signed narinfos as served, kept in memory so a repeated GET costs no index query and no
//! signature. A narinfo never changes while its path stays in its cache; when GC (in this
//! process or another) removes paths, the server drops those (from GC's log in the index).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;

pub struct Rendered {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Bumped by each clear: a narinfo rendered from the index before a clear is not kept.
    generation: u64,
    map: HashMap<(String, String), Bytes>,
    /// Insertion order, for eviction: the oldest entry goes first.
    order: VecDeque<(String, String)>,
}

impl Rendered {
    pub fn new(capacity: usize) -> Self {
        Rendered { capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn get(&self, cache: &str, hash: &str) -> Option<Bytes> {
        let inner = self.inner.lock().ok()?;
        inner.map.get(&(cache.to_string(), hash.to_string())).cloned()
    }

    pub fn generation(&self) -> u64 {
        self.inner.lock().map(|i| i.generation).unwrap_or(0)
    }

    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.generation += 1;
            inner.map.clear();
            inner.order.clear();
        }
    }

    /// Drops these (cache, hash part) entries; a render in flight is not kept either.
    pub fn forget(&self, keys: &[(String, String)]) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.generation += 1;
            let gone: std::collections::HashSet<&(String, String)> = keys.iter().collect();
            inner.map.retain(|k, _| !gone.contains(k));
            inner.order.retain(|k| !gone.contains(k));
        }
    }

    /// Keeps `body`, read from the index when [`Rendered::generation`] was `generation`.
    pub fn insert(&self, cache: &str, hash: &str, body: Bytes, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.generation != generation {
            return;
        }
        let key = (cache.to_string(), hash.to_string());
        if inner.map.insert(key.clone(), body).is_none() {
            inner.order.push_back(key);
        }
        while inner.map.len() > self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.map.remove(&old);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_at_most_capacity_dropping_the_oldest() {
        let r = Rendered::new(2);
        r.insert("main", "a", Bytes::from_static(b"1"), 0);
        r.insert("main", "b", Bytes::from_static(b"2"), 0);
        r.insert("pr", "a", Bytes::from_static(b"3"), 0);
        assert_eq!(r.get("main", "a"), None);
        assert_eq!(r.get("main", "b").as_deref(), Some(&b"2"[..]));
        assert_eq!(r.get("pr", "a").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn a_clear_drops_everything_and_refuses_what_was_read_before_it() {
        let r = Rendered::new(4);
        r.insert("main", "a", Bytes::from_static(b"1"), 0);
        let before = r.generation();
        r.clear();
        assert_eq!(r.get("main", "a"), None);
        r.insert("main", "b", Bytes::from_static(b"2"), before);
        assert_eq!(r.get("main", "b"), None, "rendered before the clear");
        r.insert("main", "b", Bytes::from_static(b"2"), r.generation());
        assert!(r.get("main", "b").is_some());
        r.insert("main", "c", Bytes::from_static(b"3"), r.generation());
        r.forget(&[("main".into(), "b".into())]);
        assert_eq!(r.get("main", "b"), None);
        assert!(r.get("main", "c").is_some(), "only what GC removed is dropped");
    }
}
