//! The documents the server keeps built in memory ([`DocState`]), least recently used first
//! out, bounded by their total weight (update bytes applied, a proxy for memory).
//!
//! A collection actor takes a document's state out while a job checks writes against it and
//! puts it back afterwards, so a state is never used by two jobs at once and a state that is
//! out cannot be evicted.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::crdt::DocState;

type Key = (String, String);

#[derive(Default)]
struct Inner {
    /// Ordered by collection, so one collection's documents are one range.
    entries: BTreeMap<Key, (DocState, u64)>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    weight: u64,
}

/// See the module docs.
pub struct DocCache {
    inner: Mutex<Inner>,
    max_weight: u64,
}

impl DocCache {
    pub fn new(max_weight: u64) -> Self {
        DocCache {
            inner: Mutex::default(),
            max_weight,
        }
    }

    /// Takes the state of document `d` of collection `c` out, if cached.
    pub fn take(&self, c: &str, d: &str) -> Option<DocState> {
        let mut inner = self.inner.lock().ok()?;
        let (state, tick) = inner.entries.remove(&(c.to_string(), d.to_string()))?;
        inner.order.remove(&tick);
        inner.weight -= state.weight();
        Some(state)
    }

    /// Puts a state (back) in, evicting the least recently used past the weight bound. A state
    /// heavier than the whole bound is not kept.
    pub fn put(&self, c: &str, d: &str, state: DocState) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let key = (c.to_string(), d.to_string());
        if let Some((old, tick)) = inner.entries.remove(&key) {
            inner.order.remove(&tick);
            inner.weight -= old.weight();
        }
        if state.weight() > self.max_weight {
            return;
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.weight += state.weight();
        inner.order.insert(tick, key.clone());
        inner.entries.insert(key, (state, tick));
        while inner.weight > self.max_weight {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.entries.remove(&oldest) {
                inner.weight -= old.weight();
            }
        }
    }

    /// Forgets document `d` (its state no longer matches the store).
    pub fn forget(&self, c: &str, d: &str) {
        drop(self.take(c, d));
    }

    /// Forgets document `d` if its cached state weighs more than `limit` (it has outgrown
    /// what a rebuild would hold; see `CollectionActor::shed_outgrown`). A state taken out by
    /// a running check is left alone. Answers whether it was forgotten.
    pub fn shed_if_heavier(&self, c: &str, d: &str, limit: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let key = (c.to_string(), d.to_string());
        match inner.entries.get(&key) {
            Some((state, _)) if state.weight() > limit => {}
            _ => return false,
        }
        if let Some((state, tick)) = inner.entries.remove(&key) {
            inner.order.remove(&tick);
            inner.weight -= state.weight();
        }
        true
    }

    /// Forgets every document of collection `c` (another node wrote to it, or its actor
    /// stopped idle). Costs the collection's entries, not the cache's.
    pub fn forget_collection(&self, c: &str) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let from = (c.to_string(), String::new());
        let keys: Vec<Key> = inner
            .entries
            .range(from..)
            .take_while(|((kc, _), _)| kc == c)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some((state, tick)) = inner.entries.remove(&key) {
                inner.order.remove(&tick);
                inner.weight -= state.weight();
            }
        }
    }

    /// The bound on the total weight.
    pub fn capacity(&self) -> u64 {
        self.max_weight
    }

    /// (documents, total weight) held.
    pub fn size(&self) -> (usize, u64) {
        self.inner
            .lock()
            .map(|i| (i.entries.len(), i.weight))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crdt::YjsLimits;

    fn state_of_weight(bytes: usize) -> DocState {
        let mut s = DocState::new();
        // A v1 update holding one string item of `bytes` ASCII characters at root "t".
        let mut u = vec![1, 1, 1, 0, 4, 1, 1, b't'];
        let mut n = bytes;
        while n >= 0x80 {
            u.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        u.push(n as u8);
        u.extend(std::iter::repeat_n(b'a', bytes));
        u.push(0);
        let limits = YjsLimits::default();
        s.apply("t", &u, &limits, limits.write_budget).unwrap();
        s
    }

    #[test]
    fn evicts_least_recently_used_past_the_weight() {
        let one = state_of_weight(100).weight();
        let cache = DocCache::new(one * 2);
        cache.put("c", "a", state_of_weight(100));
        cache.put("c", "b", state_of_weight(100));
        // Use "a", so "b" is the oldest.
        let a = cache.take("c", "a").unwrap();
        cache.put("c", "a", a);
        cache.put("c", "c", state_of_weight(100));
        assert_eq!(cache.size(), (2, one * 2));
        assert!(cache.take("c", "b").is_none());
        assert!(cache.take("c", "a").is_some());
        // Too heavy to keep at all.
        cache.put("c", "big", state_of_weight(10_000));
        assert!(cache.take("c", "big").is_none());
    }

    #[test]
    fn sheds_a_state_only_past_the_limit() {
        let cache = DocCache::new(1 << 20);
        let weight = state_of_weight(100).weight();
        cache.put("c", "a", state_of_weight(100));
        assert!(!cache.shed_if_heavier("c", "a", weight));
        assert!(!cache.shed_if_heavier("c", "missing", 0));
        assert_eq!(cache.size(), (1, weight));
        assert!(cache.shed_if_heavier("c", "a", weight - 1));
        assert_eq!(cache.size(), (0, 0));
        assert!(cache.take("c", "a").is_none());
    }
}
