//! What the row caches weigh: entries bounded by memory, each row weighed once when cached.

use super::*;

/// A cached value and what it weighs in memory, estimated once, when it is cached.
#[derive(Debug, Clone)]
pub(super) struct Weighed<T> {
    pub(super) value: T,
    pub(super) bytes: u64,
}

/// Weighs the entries of a row cache by their [`Weighed::bytes`], so that the caches are
/// bounded by memory (a user with 5,000 categories weighs what it weighs), but at least by a
/// floor: with `capacity / rows` as the floor, the cache holds at most `rows` entries and
/// `capacity` bytes, whichever bound is met first. (At least 64 entries: the cache's shards
/// refuse an entry heavier than about their share of the capacity.)
#[derive(Debug, Clone, Copy)]
pub(super) struct ByBytes {
    pub(super) floor: u64,
}

impl ByBytes {
    /// A cache of at most `rows` entries (64 at least) and `bytes` of memory.
    pub(super) fn cache<K, T>(rows: usize, bytes: u64) -> Cache<K, Weighed<T>, ByBytes>
    where
        K: Eq + std::hash::Hash,
        T: Clone,
    {
        let floor = (bytes / rows.max(64) as u64).max(1);
        Cache::with_weighter(rows, bytes.max(1), ByBytes { floor })
    }
}

impl<K, T> Weighter<K, Weighed<T>> for ByBytes {
    fn weight(&self, _: &K, v: &Weighed<T>) -> u64 {
        v.bytes.max(self.floor)
    }
}

/// What a cache entry costs beside its key and value (its slot, the Arc's counts), roughly.
pub(super) const ENTRY_BYTES: usize = 64;

fn text_bytes(s: &str) -> usize {
    size_of::<String>() + s.len()
}

/// The memory of a cached user row under `key`.
pub(super) fn user_bytes(key: &str, row: Option<&UserRow>) -> u64 {
    let mut n = ENTRY_BYTES + text_bytes(key);
    if let Some(r) = row {
        let p = &r.profile;
        // A B-tree entry: the key, the value and about a node slot's share.
        let categories = p.affinity.keys().map(|c| text_bytes(c) + 16);
        let items = p.recent_items.iter().chain(&p.recent_purchases);
        n += size_of::<UserRow>()
            + categories.sum::<usize>()
            + items.map(|(i, _)| text_bytes(i) + 8).sum::<usize>();
    }
    n as u64
}

/// The memory of a cached item row under `key`.
pub(super) fn item_bytes(key: &str, row: Option<&ItemRow>) -> u64 {
    let mut n = ENTRY_BYTES + text_bytes(key);
    if let Some(r) = row {
        let category = r.stats.category.as_ref().map_or(0, |(c, _)| c.len());
        let similar = r.similar.iter().map(|(i, _)| text_bytes(i) + 8);
        n += size_of::<ItemRow>() + category + similar.sum::<usize>();
    }
    n as u64
}
