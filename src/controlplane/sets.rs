//! Subscription name sets shared across streams.
//!
//! Proxies of one kind subscribe to the same names: a thousand gateways each name the
//! same few thousand EDS clusters. Each stream's set is interned here after it changes,
//! so identical sets are held once however many streams hold them; a stream that
//! changes its set gets its own copy first (copy on write).
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

/// A set whose content hash does not depend on iteration order.
pub(crate) trait NameSet: Eq + Send + Sync + 'static {
    fn content_hash(&self) -> u64;
}

fn order_free_hash<'a>(len: usize, names: impl Iterator<Item = &'a str>) -> u64 {
    names.fold(len as u64, |acc, n| {
        let mut h = DefaultHasher::new();
        n.hash(&mut h);
        acc.wrapping_add(h.finish())
    })
}

impl NameSet for HashSet<Arc<str>> {
    fn content_hash(&self) -> u64 {
        order_free_hash(self.len(), self.iter().map(|n| &**n))
    }
}

impl NameSet for BTreeSet<String> {
    fn content_hash(&self) -> u64 {
        order_free_hash(self.len(), self.iter().map(String::as_str))
    }
}

/// Interned sets of one kind.
pub(crate) struct SetInterner<S> {
    map: Mutex<Slots<S>>,
}

struct Slots<S> {
    by_hash: HashMap<u64, Vec<Weak<S>>>,
    /// Insertions since dead slots were last swept.
    inserted: usize,
}

impl<S> Default for SetInterner<S> {
    fn default() -> SetInterner<S> {
        SetInterner {
            map: Mutex::new(Slots {
                by_hash: HashMap::new(),
                inserted: 0,
            }),
        }
    }
}

impl<S: NameSet> SetInterner<S> {
    /// The shared set equal to `set` (`set` itself if there is none yet).
    pub fn intern(&self, set: Arc<S>) -> Arc<S> {
        let key = set.content_hash();
        let mut slots = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = slots.by_hash.get(&key).and_then(|v| {
            v.iter()
                .filter_map(Weak::upgrade)
                .find(|s| Arc::ptr_eq(s, &set) || **s == *set)
        }) {
            return found;
        }
        slots
            .by_hash
            .entry(key)
            .or_default()
            .push(Arc::downgrade(&set));
        slots.inserted += 1;
        // Amortized: a sweep visits at most twice the insertions since the last one.
        if slots.inserted >= 64 && slots.inserted * 2 >= slots.by_hash.len() {
            slots.by_hash.retain(|_, v| {
                v.retain(|w| w.strong_count() > 0);
                !v.is_empty()
            });
            slots.inserted = 0;
        }
        set
    }

    /// Distinct live sets (for tests and debugging).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        let slots = self.map.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> Arc<HashSet<Arc<str>>> {
        Arc::new(names.iter().map(|n| Arc::from(*n)).collect())
    }

    #[test]
    fn equal_sets_are_held_once_and_dead_ones_are_swept() {
        let interner = SetInterner::default();
        let a = interner.intern(set(&["x", "y", "z"]));
        let b = interner.intern(set(&["z", "x", "y"]));
        assert!(Arc::ptr_eq(&a, &b));
        let c = interner.intern(set(&["x", "y"]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(interner.len(), 2);
        drop((a, b));
        assert_eq!(interner.len(), 1);
        for i in 0..200 {
            interner.intern(set(&[&format!("n{i}")]));
        }
        let slots = interner.map.lock().unwrap();
        assert!(slots.by_hash.len() < 100, "{}", slots.by_hash.len());
    }

    #[test]
    fn btree_sets_intern_too() {
        let interner = SetInterner::<BTreeSet<String>>::default();
        let a = interner.intern(Arc::new(["a".to_string(), "b".into()].into()));
        let b = interner.intern(Arc::new(["b".to_string(), "a".into()].into()));
        assert!(Arc::ptr_eq(&a, &b));
    }
}
