//! The online store (ARCHITECTURE.md §4, §5): where the snapshot's views and the speed layer's deltas
//! live for serving. Backends by URL: `redis://` / `rediss://` (a real Redis) and `memory://`
//! (embedded, one process: the demo and tests). Both pass the same conformance tests
//! (`store/tests.rs`).
//!
//! # Key layout
//!
//! Every key starts with `tandem:`. A user's keys share the hash tag `{user}`, so that they live
//! in one Redis Cluster slot and can be updated together atomically.
//!
//! | key | value |
//! |---|---|
//! | `tandem:snapshot:current` | the [`Pointer`] serving follows (JSON) |
//! | `tandem:u:{<user>}:snap:<id>` | the user's row of snapshot `<id>` (JSON) |
//! | `tandem:u:{<user>}:snap:<id>:items` | the user's items before the cutoff of snapshot `<id>`, at most [`HISTORY_ITEMS`] (JSON array; read only for `exclude_seen`) |
//! | `tandem:i:{<item>}:snap:<id>` | the item's row of snapshot `<id>` (JSON) |
//! | `tandem:snap:<id>:<name>` | a snapshot-wide value: `popular`, `models`, `manifest` |
//! | `tandem:u:{<user>}:epoch:<ms>` | the speed layer's deltas for one ingest epoch (hash) |
//! | `tandem:u:{<user>}:epoch:<ms>:latest` | the epoch's latest items (zset by minus time) |
//! | `tandem:u:{<user>}:epoch:<ms>:latest-bought` | the epoch's latest items bought (zset by minus time) |
//! | `tandem:u:{<user>}:epochs` | the epochs the user has deltas in (zset) |
//! | `tandem:u:{<user>}:speed` | the last bus offset applied for the user (hash field `offset`); when the user was erased (`erased`) |
//! | `tandem:u:{<user>}:seen` | the user's recent event ids (zset by minus offset, bounded) |
//! | `tandem:speed:<group>:p<N>` | the speed layer's marker of its work on partition N: the store token its applies carry ([`speed::TOKEN_SEP`]); gone when the store lost its data |
//! | `tandem:lease:<name>` | a lease ([`OnlineStore::lease`]): the batch run's |
//!
//! A snapshot's rows are written before the pointer names it (its manifest's key last) and
//! removed only after the pointer has moved on, so serving never sees a half-written snapshot.
//!
//! # A store that loses its data
//!
//! A Redis restarted without persistence (or flushed) comes back empty. Nothing of Tandem's is
//! only there: the snapshot is in the lake, the speed layer's events on the bus, erasures in the
//! lake's tombstones. The speed layer finds its partition markers gone and replays the bus from
//! the start under new store tokens, after noting the tombstones again; it has the snapshot
//! published again from the lake (`batch::run::restore`); a batch run writing its rows meanwhile
//! finds its lease gone with them and writes them again; serving reads the tombstones again.
//!
//! The speed keys are described in [`speed`] and `store/speed.lua`.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod memory;
mod redis_store;
pub mod speed;

pub use memory::MemoryStore;
pub use redis_store::RedisStore;
pub use speed::{ApplyCounts, SpeedEvent, SpeedState};

/// The key of the snapshot pointer.
pub const POINTER_KEY: &str = "tandem:snapshot:current";

/// The key of a user's row of snapshot `id`.
pub fn user_key(user: &str, id: &str) -> String {
    format!("tandem:u:{{{user}}}:snap:{id}")
}

/// The key of a user's items (every item the user had an event with before the snapshot's
/// cutoff, the latest [`HISTORY_ITEMS`]) of snapshot `id`: what `exclude_seen` leaves out,
/// beside the speed layer's recent items.
pub fn history_key(user: &str, id: &str) -> String {
    format!("tandem:u:{{{user}}}:snap:{id}:items")
}

/// The most items a snapshot keeps per user for `exclude_seen` (the latest ones).
pub const HISTORY_ITEMS: usize = 1000;

/// The key of an item's row of snapshot `id`.
pub fn item_key(item: &str, id: &str) -> String {
    format!("tandem:i:{{{item}}}:snap:{id}")
}

/// The key of a snapshot-wide value.
pub fn snapshot_key(id: &str, name: &str) -> String {
    format!("tandem:snap:{id}:{name}")
}

/// The key of a user's speed deltas for the epoch starting at `epoch_ms`.
pub fn epoch_key(user: &str, epoch_ms: i64) -> String {
    format!("tandem:u:{{{user}}}:epoch:{epoch_ms}")
}

/// The key of lease `name`.
pub fn lease_key(name: &str) -> String {
    format!("tandem:lease:{name}")
}

/// What [`OnlineStore::lease`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    /// Take the lease if nobody holds it (or its holder let it lapse); renew it if `owner`
    /// holds it already.
    Take,
    /// Extend the lease if `owner` still holds it.
    Renew,
    /// Give the lease up if `owner` holds it.
    Release,
}

/// Who holds a lease after a [`OnlineStore::lease`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// The caller holds it.
    pub held: bool,
    /// The holder, if any.
    pub holder: Option<String>,
    /// Milliseconds until it lapses (0 when nobody holds it).
    pub left_ms: i64,
}

/// Where a snapshot id falls in time, to compare ids: its cutoff as the number
/// `YYYYMMDDHHMMSS`, then its revision (`-rN`, 1 without). `None` for an id Tandem does not
/// make (ids are `20251122T0100Z`, `20251122T010030Z`, `20251122T0100Z-r2`).
pub fn snapshot_rank(id: &str) -> Option<(u64, u32)> {
    let (base, revision) = match id.split_once("-r") {
        Some((base, r)) => (base, r.parse().ok()?),
        None => (id, 1),
    };
    let (date, time) = base.strip_suffix('Z')?.split_once('T')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if date.len() != 8 || !(time.len() == 4 || time.len() == 6) || !digits(date) || !digits(time) {
        return None;
    }
    let seconds = if time.len() == 4 { "00" } else { "" };
    Some((format!("{date}{time}{seconds}").parse().ok()?, revision))
}

/// Whether snapshot `id` is older than `keep` (neither `None` by [`snapshot_rank`]).
pub fn snapshot_older(id: &str, keep: &str) -> bool {
    matches!((snapshot_rank(id), snapshot_rank(keep)), (Some(a), Some(b)) if a < b)
}

/// The snapshot id a key belongs to, if it is a snapshot key.
pub fn snapshot_of_key(key: &str) -> Option<&str> {
    if let Some(rest) = key.strip_prefix("tandem:snap:") {
        return rest.split(':').next();
    }
    if key.starts_with("tandem:u:") || key.starts_with("tandem:i:") {
        let close = key.rfind('}')?;
        // `…}:snap:<id>` or `…}:snap:<id>:items`; snapshot ids hold no `:`
        return key[close..]
            .strip_prefix("}:snap:")
            .and_then(|rest| rest.split(':').next());
    }
    None
}

/// The key of the record of the last batch run that published a snapshot.
pub const BATCH_SUCCESS_KEY: &str = "tandem:batch:last_success";
/// The key of the record of the last batch run that failed (as far as it could say so).
pub const BATCH_FAILURE_KEY: &str = "tandem:batch:last_failure";

/// What `batch run` leaves in the store when it ends, under [`BATCH_SUCCESS_KEY`] or
/// [`BATCH_FAILURE_KEY`]: serving exports both times as gauges, so that an alert can say a
/// run failed (a run killed before it could write this is caught by the snapshot's age).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOutcome {
    /// When the run ended, epoch ms.
    pub at_ms: i64,
    /// The snapshot it published (success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Why it failed (failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What serving follows: the current snapshot and its cutoff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pointer {
    /// The snapshot id.
    pub snapshot: String,
    /// Its cutoff, epoch ms: serving adds the speed epochs at or after it.
    pub cutoff_ms: i64,
}

/// A user's row of a snapshot: what serving merges the speed epochs into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRow {
    /// The profile at the snapshot's cutoff.
    pub profile: crate::features::Profile,
    /// The user's segment at the cutoff, if the snapshot has models.
    pub segment: Option<u32>,
    /// P(the user buys within the next window) at the cutoff, if the snapshot has models.
    pub propensity: Option<f64>,
}

/// An item's row of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRow {
    /// The item's stats at the cutoff.
    pub stats: crate::features::ItemStats,
    /// The most similar items, best first, with their cosine similarity.
    pub similar: Vec<(String, f64)>,
}

/// The snapshot-wide popular lists (key `tandem:snap:<id>:popular`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PopularRow {
    /// Items by popularity, best first.
    pub overall: Vec<String>,
    /// Per category, its items by popularity, best first.
    pub by_category: std::collections::BTreeMap<String, Vec<String>>,
}

/// An online store backend.
#[async_trait]
pub trait OnlineStore: Send + Sync + std::fmt::Debug {
    /// Writes `rows` (key, value), pipelined; not atomic as a whole.
    async fn put(&self, rows: &[(String, Bytes)]) -> Result<()>;
    /// The values of `keys`, in order (one round trip).
    async fn get(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>>;
    /// Copies the value of each pair's first key to its second (replacing it), pipelined, in
    /// the store: the value never travels. For each pair, whether its first key existed (when
    /// it did not, nothing was written). The two keys of a pair share a hash tag (one slot of
    /// a cluster).
    async fn copy(&self, pairs: &[(String, String)]) -> Result<Vec<bool>>;
    /// The current snapshot pointer.
    async fn pointer(&self) -> Result<Option<Pointer>>;
    /// Sets the pointer to `new` if it still is `expected`, atomically; false if it was not.
    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> Result<bool>;
    /// Deletes the keys of every snapshot older than `keep` ([`snapshot_rank`]); returns how
    /// many. A newer snapshot's keys stay: another batch run may be writing them (deleting
    /// every snapshot but `keep` took a newer run's rows away as it wrote them).
    async fn drop_snapshots_older(&self, keep: &str) -> Result<u64>;
    /// Takes, renews or releases the lease `name` for `owner` ([`LeaseOp`]), atomically; the
    /// lease lapses `ttl_ms` after it was last taken or renewed. Returns who holds it now.
    async fn lease(&self, name: &str, op: LeaseOp, owner: &str, ttl_ms: u64) -> Result<LeaseState>;
    /// Deletes the speed epochs before `cutoff_ms`; returns how many user-epochs it deleted.
    async fn drop_epochs_before(&self, cutoff_ms: i64) -> Result<u64>;
    /// Applies the speed layer's deltas of `events`, read from the bus log `log` (ARCHITECTURE.md §3–4).
    /// Per user, atomically: the deltas are filed under each event's epoch and the user's last
    /// applied offset advances, with `log` kept beside it. An event at or below that offset (a
    /// replay), or whose `event_id` is among the user's recent ones (a retried producer), is
    /// skipped — but an offset kept for another log says nothing about this one (the topic was
    /// deleted and created again, its offsets starting from 0): the user's events then count
    /// from the first. `""` is a log of unknown identity (taken for the one kept). One user's
    /// events must come in offset order.
    async fn apply(&self, log: &str, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts>;
    /// [`apply`](Self::apply) from a log of unknown identity.
    async fn apply_events(&self, events: &[SpeedEvent<'_>]) -> Result<ApplyCounts> {
        self.apply("", events).await
    }
    /// A user's speed state: the last offset applied and the epochs at or after `from_epoch_ms`.
    async fn speed(&self, user: &str, from_epoch_ms: i64) -> Result<SpeedState>;
    /// Erases a user (ARCHITECTURE.md §7), atomically: deletes the user's speed deltas, recent event ids
    /// and rows of the snapshots `snapshots`, and records `at_ms` (an ingest time) so that the
    /// user's events ingested until then are skipped if they are applied later. Returns how
    /// many keys it deleted.
    async fn erase_user(&self, user: &str, at_ms: i64, snapshots: &[String]) -> Result<u64>;
    /// Records that `user` was erased at `at_ms` (the later of it and any erasure recorded),
    /// deleting nothing: the erasure's deletions were done when it happened, and what the user
    /// did after it stays. For a store that may have lost its markers, from the lake's
    /// tombstones.
    async fn note_erasure(&self, user: &str, at_ms: i64) -> Result<()>;
}

/// Opens the store at `url`: `memory://`, `redis://…` / `rediss://…` (one server) or
/// `redis+cluster://host:port[,host:port…]` / `rediss+cluster://…` (a Redis Cluster).
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn OnlineStore>> {
    if url == "memory://" || url.starts_with("memory://") {
        return Ok(std::sync::Arc::new(MemoryStore::default()));
    }
    let redis = [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ];
    if redis.iter().any(|s| url.starts_with(s)) {
        return Ok(std::sync::Arc::new(RedisStore::connect(url).await?));
    }
    Err(Error::Config(format!(
        "online_store.url: `{}` is not a store URL; use memory://, redis://host:port or redis+cluster://host:port,…",
        crate::config::Secret::new(url).redacted()
    )))
}

#[cfg(test)]
mod tests;
