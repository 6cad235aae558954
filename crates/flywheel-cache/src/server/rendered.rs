//! Signed narinfos as served, kept in memory so a repeated GET costs no index query and no
//! signature. A narinfo never changes while its path stays in its cache; whatever removes a
//! path from a cache (GC, issue 6) must also drop its entry here.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::Bytes;

pub struct Rendered {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
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

    pub fn insert(&self, cache: &str, hash: &str, body: Bytes) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else { return };
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
        r.insert("main", "a", Bytes::from_static(b"1"));
        r.insert("main", "b", Bytes::from_static(b"2"));
        r.insert("pr", "a", Bytes::from_static(b"3"));
        assert_eq!(r.get("main", "a"), None);
        assert_eq!(r.get("main", "b").as_deref(), Some(&b"2"[..]));
        assert_eq!(r.get("pr", "a").as_deref(), Some(&b"3"[..]));
    }
}
