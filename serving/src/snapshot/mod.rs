//! The snapshot serving follows (ARCHITECTURE.md §5): the pointer `tandem:snapshot:current` is polled,
//! and when it names a new snapshot, that snapshot's popular lists, models, manifest and hot item
//! rows are loaded before requests see it. Rows of an immutable snapshot never change, so user and item
//! rows are cached in memory (bounded, per snapshot) and most requests make one store round trip:
//! the speed layer's state.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use quick_cache::Weighter;
use quick_cache::sync::Cache;
use tandem_common::features::sort_recent;
use tandem_common::store::{
    BATCH_FAILURE_KEY, BATCH_SUCCESS_KEY, BatchOutcome, ItemRow, OnlineStore, Pointer, PopularRow,
    UserRow, history_key, item_key, snapshot_key, user_key,
};
use tandem_models::candidates::ItemPool;
use tandem_models::latent::Latent;
use tandem_models::linear::LinearModel;
use tandem_models::manifest::Manifest;
use tandem_models::training::Models;
use tandem_models::vectors::{ItemSide, ItemTerms};
use tokio_util::sync::CancellationToken;

mod listed;
mod store_call;
mod weights;

pub use listed::{ItemId, ItemRef, ListedItem};
use listed::{Listed, fetch_item_rows};
use store_call::bad_row;
pub use store_call::{StoreFailure, timed};
use weights::{ByBytes, ENTRY_BYTES, Weighed, item_bytes, user_bytes};

/// One loaded snapshot.
pub struct Loaded {
    /// The pointer that named it.
    pub pointer: Pointer,
    /// Its manifest as the batch wrote it, if present and readable.
    pub manifest: Option<Manifest>,
    /// Its models, if the batch trained them (and this code can use them).
    pub models: Option<Models>,
    /// Its popular lists (the pool's `items` are left empty: rows come from the cache).
    pub pool: ItemPool,
    /// When this process loaded it.
    pub loaded_at: Instant,
    /// A number no other snapshot loaded by this process has (memos of per-row values key on it).
    pub serial: u64,
    /// The rows of every item on the popular lists and of the items similar to them (ring by
    /// ring, up to the cache's size: `Snapshots::listed_rows`), loaded with the snapshot: most
    /// of a request's candidates are among them, and reading them costs no cache lock, no
    /// reference count shared between threads and, by [`ItemId::Listed`], no string hashing.
    listed: Listed,
    users: Cache<String, Weighed<Option<Arc<UserRow>>>, ByBytes>,
    items: Cache<String, Weighed<Option<Arc<ItemRow>>>, ByBytes>,
    /// Users folded into the latent model, by the model's numbers of their recent items: a
    /// user whose recent items did not change since their last request costs no visit of the
    /// model's items.
    folded: Cache<Box<[u32]>, Weighed<Arc<Folded>>, ByBytes>,
}

/// A user folded into a snapshot's latent model: their vector ([`Latent::user`]) and the
/// model's best items for them ([`Latent::best`]), best first.
#[derive(Debug)]
pub struct Folded {
    /// The user's vector.
    pub vector: Vec<f64>,
    /// The best items' numbers, at least as many as the request that made it asked for.
    pub best: Vec<u32>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("pointer", &self.pointer)
            .field("models", &self.models.is_some())
            .finish_non_exhaustive()
    }
}

impl Loaded {
    /// The user whose recent items (most recent first) are `sources`, folded into the latent
    /// model `m` (the snapshot's), with at least `depth` best items (fewer only when the model
    /// has fewer): from the memo when the same items were folded before, else computed and
    /// kept. `None` when the model knows none of the items.
    pub fn folded(&self, m: &Latent, sources: &[&str], depth: usize) -> Option<Arc<Folded>> {
        let key: Vec<u32> = sources.iter().filter_map(|i| m.index(i)).collect();
        let want = depth.min(m.items.len());
        if let Some(f) = self.folded.get(key.as_slice())
            && f.value.best.len() >= want
        {
            return Some(f.value);
        }
        let vector = m.user(key.iter().copied())?;
        // Rounded up, so that requests excluding a few more items reuse the same list: the
        // best `d` items are the first `d` of any longer list of the best.
        let best = m.best(&vector, depth.next_multiple_of(32));
        let bytes = ENTRY_BYTES + 4 * key.len() + 8 * vector.len() + 4 * best.len();
        let f = Arc::new(Folded { vector, best });
        let weighed = Weighed {
            value: f.clone(),
            bytes: bytes as u64,
        };
        self.folded.insert(key.into_boxed_slice(), weighed);
        Some(f)
    }

    /// The snapshot id.
    pub fn id(&self) -> &str {
        &self.pointer.snapshot
    }

    /// When the batch run that made it started (RFC 3339), from the manifest.
    pub fn created_at(&self) -> Option<&str> {
        Some(&self.manifest.as_ref()?.created_at)
    }

    /// The user's row, from the cache or the store (`None`: the user is not in the snapshot).
    pub async fn user_row(
        &self,
        store: &dyn OnlineStore,
        user: &str,
        timeout: Duration,
    ) -> Result<Option<Arc<UserRow>>, StoreFailure> {
        if let Some(row) = self.users.get(user) {
            return Ok(row.value);
        }
        let key = user_key(user, self.id());
        let got = timed("get_user", timeout, store.get(std::slice::from_ref(&key))).await?;
        let row = match got.into_iter().next().flatten() {
            Some(b) => {
                let mut row =
                    serde_json::from_slice::<UserRow>(&b).map_err(|e| bad_row("user", &key, e))?;
                // In the order a merge leaves them, so that a user without speed epochs is
                // served the row as it is, exactly as merged with nothing.
                sort_recent(&mut row.profile.recent_items);
                sort_recent(&mut row.profile.recent_purchases);
                Some(Arc::new(row))
            }
            None => None,
        };
        let bytes = user_bytes(user, row.as_deref());
        let weighed = Weighed {
            value: row.clone(),
            bytes,
        };
        self.users.insert(user.to_string(), weighed);
        Ok(row)
    }

    /// The user's items before the cutoff (the latest `HISTORY_ITEMS`), for `exclude_seen`:
    /// one store read, not cached (only requests that leave seen items out pay for it).
    pub async fn user_items(
        &self,
        store: &dyn OnlineStore,
        user: &str,
        timeout: Duration,
    ) -> Result<Vec<String>, StoreFailure> {
        let key = history_key(user, self.id());
        let got = timed(
            "get_user_items",
            timeout,
            store.get(std::slice::from_ref(&key)),
        )
        .await?;
        match got.into_iter().next().flatten() {
            Some(b) => serde_json::from_slice(&b).map_err(|e| bad_row("user_items", &key, e)),
            None => Ok(Vec::new()),
        }
    }

    /// Forgets the user's cached row (after an erasure).
    pub fn forget_user(&self, user: &str) {
        self.users.remove(user);
    }

    /// How `item` is named among this snapshot's rows: by its place among the listed rows if
    /// it is one of them (then always so), else by its id.
    pub fn resolve<'a>(&'a self, item: &'a str) -> ItemId<'a> {
        match self.listed.index.get(item) {
            Some(&k) => ItemId::Listed(k),
            None => ItemId::Unlisted(item),
        }
    }

    /// The id of `item`.
    pub fn name<'a>(&'a self, item: ItemId<'a>) -> &'a str {
        match item {
            ItemId::Listed(k) => &self.listed(k).id,
            ItemId::Unlisted(i) => i,
        }
    }

    /// How many rows are listed (their numbers are `0..listed_len()`).
    pub fn listed_len(&self) -> usize {
        self.listed.items.len()
    }

    /// The listed row `k` (of an [`ItemId::Listed`]).
    pub fn listed(&self, k: u32) -> &ListedItem {
        &self.listed.items[k as usize]
    }

    /// The number of `category` among the listed rows' categories (`ListedItem::category`).
    pub fn category_number(&self, category: &str) -> Option<u32> {
        self.listed.categories.get(category).copied()
    }

    /// The popular list, resolved.
    pub fn popular_ids(&self) -> impl Iterator<Item = ItemId<'_>> + '_ {
        let names = self.pool.popular.iter();
        names
            .zip(&self.listed.popular)
            .map(|(n, k)| ItemId::of(n, *k))
    }

    /// The popular list of `category`, resolved (empty for a category without one).
    pub fn category_ids(&self, category: &str) -> impl Iterator<Item = ItemId<'_>> + '_ {
        let names = self.pool.by_category.get(category).into_iter().flatten();
        let ks = self.listed.by_category.get(category).into_iter().flatten();
        names.zip(ks).map(|(n, k)| ItemId::of(n, *k))
    }

    /// The similar items of the item of `row`, best first, each with its similarity, resolved:
    /// by the numbers stored with a listed row, by id for any other.
    pub fn similar_scored<'a>(
        &'a self,
        row: &'a ItemRef<'a>,
    ) -> impl Iterator<Item = (ItemId<'a>, f64)> + use<'a> {
        let known = match row {
            ItemRef::Listed(l) => Some(&l.similar),
            ItemRef::Cached(_) => None,
        };
        row.similar
            .iter()
            .enumerate()
            .map(move |(j, (name, score))| match known {
                Some(ks) => (ItemId::of(name, ks[j]), *score),
                None => (self.resolve(name), *score),
            })
    }

    /// The rows of `items` (in order; `None` for an item not in the snapshot): those of the
    /// listed rows and cached ones from memory, the rest in one store round trip.
    pub async fn item_rows(
        &self,
        store: &dyn OnlineStore,
        items: &[&str],
        timeout: Duration,
    ) -> Result<Vec<Option<ItemRef<'_>>>, StoreFailure> {
        let mut out: Vec<Option<Option<ItemRef<'_>>>> = items
            .iter()
            .map(|i| match self.listed.index.get(*i) {
                Some(&k) => Some(Some(ItemRef::Listed(self.listed(k)))),
                None => self.items.get(*i).map(|r| r.value.map(ItemRef::Cached)),
            })
            .collect();
        let missing: Vec<usize> = (0..items.len()).filter(|&i| out[i].is_none()).collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|&i| items[i]).collect();
            let got = fetch_item_rows(store, self.id(), &names, "get_items", timeout).await?;
            for (&i, row) in missing.iter().zip(got) {
                let row = row.map(Arc::new);
                let bytes = item_bytes(items[i], row.as_deref());
                let weighed = Weighed {
                    value: row.clone(),
                    bytes,
                };
                self.items.insert(items[i].to_string(), weighed);
                out[i] = Some(row.map(ItemRef::Cached));
            }
        }
        Ok(out.into_iter().map(Option::flatten).collect())
    }
}

/// Follows the snapshot pointer.
#[derive(Debug)]
pub struct Snapshots {
    store: Arc<dyn OnlineStore>,
    current: RwLock<Option<Arc<Loaded>>>,
    cache_rows: usize,
    cache_bytes: u64,
    timeout: Duration,
    /// The outcome of the last pointer read: when it succeeded, or why it failed.
    health: RwLock<StoreHealth>,
    /// How many times the pointer was found gone while a snapshot was followed: the store lost
    /// its data (a Redis restarted without persistence, or flushed).
    losses: AtomicU64,
    /// The pointer is gone now.
    lost: std::sync::atomic::AtomicBool,
}

/// What the last pointer read said of the online store (`/readyz` answers from it, so that
/// probes cost the store nothing).
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    /// When a read last succeeded.
    pub ok_at: Option<Instant>,
    /// Why the last read failed, if it did.
    pub error: Option<String>,
}

impl Snapshots {
    /// A follower of `store`'s pointer, caching up to `cache_rows` user rows and as many item
    /// rows of the current snapshot.
    pub fn new(store: Arc<dyn OnlineStore>, cache_rows: usize, timeout: Duration) -> Self {
        Snapshots {
            store,
            current: RwLock::new(None),
            cache_rows: cache_rows.max(1),
            cache_bytes: 512 << 20,
            timeout,
            health: RwLock::new(StoreHealth::default()),
            losses: Default::default(),
            lost: Default::default(),
        }
    }

    /// How many times the pointer was found gone while a snapshot was followed (the store lost
    /// its data): the server then learns the erasures from the lake again, since the store's
    /// erasure markers went with it.
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::SeqCst)
    }

    /// The follower with its caches bounded to `bytes` of memory, weighed by each entry's
    /// size: half for user rows, 3/8 for item rows, 1/8 for users folded into the latent model
    /// (512 MiB unless set).
    pub fn with_cache_bytes(mut self, bytes: u64) -> Self {
        self.cache_bytes = bytes.max(1);
        self
    }

    /// What the last pointer read said of the online store.
    pub fn health(&self) -> StoreHealth {
        self.health.read().expect("health lock").clone()
    }

    /// [`refresh`](Self::refresh), its outcome kept for [`health`](Self::health).
    pub async fn refresh_noted(&self) -> Result<bool, StoreFailure> {
        let r = self.refresh().await;
        let mut h = self.health.write().expect("health lock");
        match &r {
            Ok(_) => {
                h.ok_at = Some(Instant::now());
                h.error = None;
            }
            Err(e) => h.error = Some(e.to_string()),
        }
        r
    }

    /// The snapshot serving uses now, if one is loaded.
    pub fn current(&self) -> Option<Arc<Loaded>> {
        self.current.read().expect("snapshot lock").clone()
    }

    /// Reads the pointer and, if it names another snapshot, loads that one and switches to it.
    /// Returns whether it switched.
    pub async fn refresh(&self) -> Result<bool, StoreFailure> {
        // The pointer and the snapshot's values are read with a longer patience than requests:
        // this runs in the background and a slow store only delays the switch.
        let patience = self.timeout.max(Duration::from_secs(5));
        let Some(pointer) = timed("pointer", patience, self.store.pointer()).await? else {
            if self.current().is_some() && !self.lost.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    "The snapshot pointer is gone (the online store lost its data?): serving the cached snapshot until one is published again."
                );
                self.losses.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(false);
        };
        self.lost.store(false, Ordering::SeqCst);
        if self
            .current()
            .is_some_and(|c| c.pointer.snapshot == pointer.snapshot)
        {
            return Ok(false);
        }
        let keys = ["popular", "models", "manifest"].map(|n| snapshot_key(&pointer.snapshot, n));
        let mut got = timed("load_snapshot", patience, self.store.get(&keys))
            .await?
            .into_iter();
        let (popular, models, manifest) = (
            got.next().flatten(),
            got.next().flatten(),
            got.next().flatten(),
        );
        let popular: PopularRow = match popular {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreFailure::Error(format!("{}: not valid: {e}", keys[0])))?,
            None => PopularRow::default(),
        };
        let models = match models.map(|b| Models::from_json(&b)) {
            Some(Ok(m)) => Some(m),
            Some(Err(e)) => {
                tracing::warn!(snapshot = %pointer.snapshot, error = %e, "the snapshot's models cannot be used; ranking by popularity");
                None
            }
            None => None,
        };
        let manifest = manifest.and_then(|b| match serde_json::from_slice::<Manifest>(&b) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(snapshot = %pointer.snapshot, error = %e, "the snapshot's manifest cannot be read; answers carry no snapshot time");
                None
            }
        });
        let rows = self
            .listed_rows(&pointer.snapshot, &popular, patience)
            .await?;
        let pool = ItemPool {
            items: Default::default(),
            popular: popular.overall,
            by_category: popular.by_category.into_iter().collect(),
        };
        if let Some(m) = models.as_ref().and_then(|m| m.latent.as_ref()) {
            m.prepare();
        }
        let listed = Listed::new(
            rows,
            &pool,
            models.as_ref().and_then(|m| m.ranker.as_ref()),
            models.as_ref().and_then(|m| m.latent.as_ref()),
        );
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let loaded = Arc::new(Loaded {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            pool,
            models,
            manifest,
            loaded_at: Instant::now(),
            listed,
            users: ByBytes::cache(self.cache_rows, self.cache_bytes / 2),
            items: ByBytes::cache(self.cache_rows, self.cache_bytes * 3 / 8),
            folded: ByBytes::cache(self.cache_rows, self.cache_bytes / 8),
            pointer,
        });
        tracing::info!(snapshot = %loaded.pointer.snapshot, cutoff_ms = loaded.pointer.cutoff_ms, models = loaded.models.is_some(), "Serving snapshot.");
        *self.current.write().expect("snapshot lock") = Some(loaded);
        Ok(true)
    }

    /// The item rows loaded with snapshot `snapshot`, ring by ring: those of the items on the
    /// popular lists (always), then those of the items similar to them, and so on, while fewer
    /// than `cache_rows` are loaded. A request's candidates are those items' similar items and
    /// the popular lists, so most of them are found here, by number.
    async fn listed_rows(
        &self,
        snapshot: &str,
        popular: &PopularRow,
        patience: Duration,
    ) -> Result<Vec<(String, ItemRow)>, StoreFailure> {
        let mut known: HashSet<String, foldhash::fast::RandomState> = HashSet::default();
        let lists = popular
            .overall
            .iter()
            .chain(popular.by_category.values().flatten());
        let mut ring: Vec<String> = lists
            .filter(|i| known.insert((*i).clone()))
            .cloned()
            .collect();
        ring.sort_unstable();
        let mut rows: Vec<(String, ItemRow)> = Vec::with_capacity(ring.len());
        while !ring.is_empty() {
            let first = rows.len();
            // One store call per 4,096 rows, not one for them all.
            for names in ring.chunks(4096) {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let store = self.store.as_ref();
                let got = fetch_item_rows(store, snapshot, &names, "load_snapshot", patience);
                for (name, row) in names.iter().zip(got.await?) {
                    if let Some(row) = row {
                        rows.push((name.to_string(), row));
                    }
                }
            }
            let room = self.cache_rows.saturating_sub(rows.len());
            ring.clear();
            for (_, row) in &rows[first..] {
                for (i, _) in &row.similar {
                    if ring.len() < room && known.insert(i.clone()) {
                        ring.push(i.clone());
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Sets `tandem_batch_last_success_timestamp_seconds` and
    /// `tandem_batch_last_failure_timestamp_seconds` from what the last batch runs recorded.
    async fn export_batch_outcomes(&self) {
        let keys = [BATCH_SUCCESS_KEY, BATCH_FAILURE_KEY].map(String::from);
        let Ok(got) = timed("batch_outcomes", self.timeout, self.store.get(&keys)).await else {
            return;
        };
        let seconds = |v: Option<&bytes::Bytes>| {
            let o: BatchOutcome = serde_json::from_slice(v?).ok()?;
            Some(o.at_ms as f64 / 1000.0)
        };
        if let Some(s) = seconds(got.first().and_then(Option::as_ref)) {
            metrics::gauge!("tandem_batch_last_success_timestamp_seconds").set(s);
        }
        if let Some(s) = seconds(got.get(1).and_then(Option::as_ref)) {
            metrics::gauge!("tandem_batch_last_failure_timestamp_seconds").set(s);
        }
    }

    /// Polls the pointer every `every` until `cancel`, and keeps the snapshot-age gauge
    /// (`tandem_serving_snapshot_age_seconds`: now − the cutoff) current.
    pub async fn follow(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.refresh_noted().await {
                tracing::warn!(error = %e, "could not follow the snapshot pointer");
            }
            if let Some(c) = self.current() {
                let age = chrono::Utc::now().timestamp_millis() - c.pointer.cutoff_ms;
                metrics::gauge!("tandem_serving_snapshot_age_seconds").set(age as f64 / 1000.0);
            }
            self.export_batch_outcomes().await;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_are_bounded_by_entries_and_by_bytes() {
        // Small entries: the entry bound is met first.
        let cache = ByBytes::cache::<String, u32>(100, 100_000);
        for i in 0..1000 {
            cache.insert(
                format!("k{i}"),
                Weighed {
                    value: i,
                    bytes: 10,
                },
            );
        }
        assert!(cache.len() <= 100, "{}", cache.len());
        // Large ones: the memory bound.
        let cache = ByBytes::cache::<String, u32>(100, 100_000);
        for i in 0..1000 {
            let big = Weighed {
                value: i,
                bytes: 5_000,
            };
            cache.insert(format!("k{i}"), big);
        }
        assert!(cache.len() <= 20, "{}", cache.len());
        assert!(cache.weight() <= 100_000, "{}", cache.weight());

        // A row weighs its categories and items: a user of 5,000 categories is not one entry
        // among 200,000 alike.
        let mut profile = tandem_common::features::Profile::default();
        let small = user_bytes(
            "u1",
            Some(&UserRow {
                profile: profile.clone(),
                segment: None,
                propensity: None,
            }),
        );
        for c in 0..5000 {
            profile.affinity.insert(format!("category-{c:05}"), 1.0);
        }
        profile.recent_items = (0..50).map(|i| (format!("item-{i}"), i)).collect();
        let row = UserRow {
            profile,
            segment: None,
            propensity: None,
        };
        let big = user_bytes("u1", Some(&row));
        assert!(big > small + 5000 * 38, "{small} {big}");
        assert!(user_bytes("u1", None) < small);
        let item = ItemRow {
            stats: Default::default(),
            similar: (0..30).map(|i| (format!("item-{i}"), 0.5)).collect(),
        };
        assert!(item_bytes("i1", Some(&item)) > item_bytes("i1", None) + 30 * 30);
    }
}
