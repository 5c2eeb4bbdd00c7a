//! The snapshot (ARCHITECTURE.md §5): the views as Parquet, the models and `manifest.json` under
//! `snapshots/<id>/` in the lake; then materialised into the online store under keys carrying
//! the id, the pointer flipped, and only then the previous snapshots' keys and the speed epochs
//! before the cutoff deleted.
//!
//! The id is the cutoff (`20251122T0000Z`): the same cutoff reads the same events, so it makes
//! the same snapshot, and a second run reuses the first one's files instead of recomputing —
//! unless the lake below the cutoff changed since: a bulk load stamped into the closed epoch
//! (`tandem_common::lake::bulk_stamp`) after the snapshot was made. The manifest records the
//! bulk loads below its cutoff ([`inputs_below`]); when they differ, the run makes the next
//! revision (`20251122T0000Z-r2`, …) at the same cutoff and publishes it. `manifest.json` is
//! written last: a snapshot folder without it is an unfinished run's, and is rewritten.

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use tandem_common::features::{ItemStats, MAX_INTERESTS};
use tandem_common::lake::{Lake, revision_id, snapshot_file};
use tandem_common::store::{
    ItemRow, OnlineStore, Pointer, PopularRow, UserRow, history_key, item_key, snapshot_key,
    user_key,
};
use tandem_models::manifest::Manifest;
use tandem_sql::snapshots::manifest;

use crate::error::Result;
use crate::views::{Similar, histories_from, profiles_from};

/// Rows written to the online store per call (each call is pipelined).
const MATERIALISE_CHUNK: usize = 10_000;

/// What the lake holds below `cutoff_ms` besides the archived bus, which the archive watermark
/// fixes: the bulk loads stamped below it, as a fingerprint of each run's id, events and
/// whether it finished. It changes when a load below the cutoff is added or grows.
pub async fn inputs_below(lake: &Lake, cutoff_ms: i64) -> Result<String> {
    let runs = tandem_common::lake::IngestRun::list(lake).await?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut n = 0;
    for r in runs.iter().filter(|r| r.first_stamp() < cutoff_ms) {
        n += 1;
        for b in format!("{}:{}:{};", r.run_id, r.events, r.finished).bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    Ok(format!("{n} loads, {h:016x}"))
}

/// The latest revision of the snapshot at `cutoff_ms` with a manifest, if any: its revision
/// number and manifest.
pub async fn latest_revision(lake: &Lake, cutoff_ms: i64) -> Result<Option<(u32, Manifest)>> {
    let mut latest = None;
    for r in 1.. {
        match manifest(lake, &revision_id(cutoff_ms, r)).await? {
            Some(m) => latest = Some((r, m)),
            None => return Ok(latest),
        }
    }
    unreachable!("the loop returns")
}

/// The steps of a run, in order; a failure at any of them leaves what serving reads unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Computing the views over the lake.
    Views,
    /// Training and evaluating the models.
    Train,
    /// Writing the snapshot's files into the lake.
    WriteLake,
    /// Writing the snapshot's rows into the online store.
    Materialise,
    /// Moving the pointer to the new snapshot.
    Flip,
    /// Deleting older snapshots' keys and speed epochs before the cutoff.
    Cleanup,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::Views,
        Step::Train,
        Step::WriteLake,
        Step::Materialise,
        Step::Flip,
        Step::Cleanup,
    ];
}

/// Called before each step; a test makes one fail to check that nothing serving reads changes.
pub trait Checkpoint: Send + Sync {
    /// Ok to go on with `step`.
    fn before(&self, step: Step) -> Result<()>;
}

/// No failures.
pub struct NoFaults;

impl Checkpoint for NoFaults {
    fn before(&self, _: Step) -> Result<()> {
        Ok(())
    }
}

/// Writes a file of snapshot `id`.
pub async fn put_file(lake: &Lake, id: &str, name: &str, bytes: Bytes) -> Result<()> {
    lake.store()
        .put(
            &lake.path(&snapshot_file(id, name)),
            PutPayload::from(bytes),
        )
        .await?;
    Ok(())
}

/// What a snapshot materialises: per user (streamed from the snapshot's files in the lake), per
/// item, and snapshot-wide rows.
pub struct Materialised<'a> {
    /// The snapshot id.
    pub id: &'a str,
    /// The lake holding the snapshot's files: the users' rows are read from its
    /// `profiles.parquet` and `segments.parquet` a row group at a time.
    pub lake: &'a Lake,
    /// Users left out (erased since the snapshot was computed).
    pub leave_out: &'a HashSet<String>,
    /// Item stats by item.
    pub items: &'a BTreeMap<String, ItemStats>,
    /// Similar items by item.
    pub similar: &'a BTreeMap<String, Vec<Similar>>,
    /// The popular lists.
    pub popular: &'a PopularRow,
    /// The models' JSON, if trained.
    pub models: Option<Bytes>,
    /// The manifest.
    pub manifest: &'a Manifest,
    /// What an incremental run can take from the snapshot it merged from.
    pub carry: Option<Carry<'a>>,
}

/// The rows a snapshot merged from `from` shares with it: the latest items of every user no new
/// event touched are the same, and are copied in the store (`COPY`, the value never leaves it)
/// rather than read from the lake and written again. A row `from` lacks in the store (it was
/// lost, or never published there) is written from the lake as any other.
pub struct Carry<'a> {
    /// The snapshot merged from.
    pub from: &'a str,
    /// The users the new events touched.
    pub touched: &'a HashSet<String>,
}

/// Segment and propensity by user, from a snapshot's `segments.parquet`.
pub async fn scores(lake: &Lake, id: &str) -> Result<BTreeMap<String, (Option<u32>, Option<f64>)>> {
    use datafusion::arrow::datatypes::{Float64Type, UInt32Type};
    let mut out = BTreeMap::new();
    for b in tandem_sql::snapshots::read_parquet(lake, id, "segments.parquet").await? {
        let users = cast(b.column(0), &DataType::Utf8)?;
        let users = users.as_string::<i32>();
        let seg = b.column(1).as_primitive::<UInt32Type>();
        let prop = b.column(3).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            out.insert(
                users.value(i).to_string(),
                (
                    seg.is_valid(i).then(|| seg.value(i)),
                    prop.is_valid(i).then(|| prop.value(i)),
                ),
            );
        }
    }
    Ok(out)
}

/// Calls `f` until it succeeds or fails with an error retrying cannot fix, six times at most
/// over about six seconds: a Redis restarting drops its connections for a moment.
pub(crate) async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut pause = std::time::Duration::from_millis(100);
    for _ in 0..6 {
        match f().await {
            Err(e) if e.kind() == crate::error::ErrorKind::External => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "Could not {what}; retrying.");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            r => return r,
        }
    }
    f().await
}

/// Writes a snapshot's rows into the store, pipelined in chunks, the manifest's key last (so
/// that its presence says every row is there); returns the rows written. The users' rows come
/// from the snapshot's files a row group at a time: what is held is one group's profiles, the
/// scores and the items, never every user's history.
pub async fn materialise(store: &dyn OnlineStore, m: &Materialised<'_>) -> Result<u64> {
    use futures::TryStreamExt;
    let mut chunk: Vec<(String, Bytes)> = Vec::with_capacity(MATERIALISE_CHUNK);
    let mut written = 0u64;
    async fn flush(
        store: &dyn OnlineStore,
        chunk: &mut Vec<(String, Bytes)>,
        written: &mut u64,
    ) -> Result<()> {
        let rows: &[(String, Bytes)] = chunk;
        retrying("write snapshot rows", || async move {
            Ok(store.put(rows).await?)
        })
        .await?;
        *written += chunk.len() as u64;
        chunk.clear();
        Ok(())
    }
    let scores = scores(m.lake, m.id).await?;
    let mut capped = 0u64;
    let (mut copied, mut copy_failed) = (0u64, 0u64);
    let mut groups =
        tandem_sql::snapshots::stream_parquet(m.lake, m.id, "profiles.parquet").await?;
    while let Some(group) = groups.try_next().await? {
        // The latest items of the users carried over: copied in the store; those whose row in
        // the earlier snapshot is not there, and everybody else's, read from the group.
        let mut read = None;
        if let Some(c) = &m.carry {
            let users = profile_users(&group)?;
            let carried: Vec<usize> = (0..users.len())
                .filter(|&i| {
                    let u = users.value(i);
                    !c.touched.contains(u) && !m.leave_out.contains(u)
                })
                .collect();
            let pairs: Vec<(String, String)> = carried
                .iter()
                .map(|&i| {
                    let u = users.value(i);
                    (history_key(u, c.from), history_key(u, m.id))
                })
                .collect();
            let pairs = &pairs;
            let done = retrying("copy snapshot rows", || async move {
                Ok(store.copy(pairs).await?)
            })
            .await?;
            let mut mask = vec![true; users.len()];
            for (&i, ok) in carried.iter().zip(&done) {
                mask[i] = !ok;
                copied += u64::from(*ok);
                copy_failed += u64::from(!ok);
                written += u64::from(*ok);
            }
            read = Some(datafusion::arrow::compute::filter_record_batch(
                &group,
                &datafusion::arrow::array::BooleanArray::from(mask),
            )?);
        }
        let mut histories = histories_from(std::slice::from_ref(read.as_ref().unwrap_or(&group)))?;
        let group = std::slice::from_ref(&group);
        for (user, mut profile) in profiles_from(group)? {
            if m.leave_out.contains(&user) {
                continue;
            }
            let (segment, propensity) = scores.get(&user).copied().unwrap_or((None, None));
            capped += u64::from(profile.keep_strongest_interests(MAX_INTERESTS) > 0);
            let row = UserRow {
                profile,
                segment,
                propensity,
            };
            chunk.push((
                user_key(&user, m.id),
                Bytes::from(serde_json::to_vec(&row)?),
            ));
            if let Some(items) = histories.remove(&user) {
                chunk.push((
                    history_key(&user, m.id),
                    Bytes::from(serde_json::to_vec(&items)?),
                ));
            }
            if chunk.len() >= MATERIALISE_CHUNK {
                flush(store, &mut chunk, &mut written).await?;
            }
        }
    }
    if m.carry.is_some() {
        tracing::info!(
            copied,
            not_there = copy_failed,
            "Copied the latest items of the users no new event touched from the snapshot merged from."
        );
    }
    if capped > 0 {
        tracing::info!(
            users = capped,
            kept = MAX_INTERESTS,
            "Kept only the strongest interests in the rows of users with more."
        );
    }
    for (item, stats) in m.items {
        let similar = m
            .similar
            .get(item)
            .map(|v| v.iter().map(|s| (s.item.clone(), s.score)).collect())
            .unwrap_or_default();
        let row = ItemRow {
            stats: stats.clone(),
            similar,
        };
        chunk.push((item_key(item, m.id), Bytes::from(serde_json::to_vec(&row)?)));
        if chunk.len() == MATERIALISE_CHUNK {
            flush(store, &mut chunk, &mut written).await?;
        }
    }
    chunk.push((
        snapshot_key(m.id, "popular"),
        Bytes::from(serde_json::to_vec(m.popular)?),
    ));
    chunk.push((
        snapshot_key(m.id, "manifest"),
        Bytes::from(serde_json::to_vec(m.manifest)?),
    ));
    if let Some(models) = &m.models {
        chunk.push((snapshot_key(m.id, "models"), models.clone()));
    }
    flush(store, &mut chunk, &mut written).await?;
    Ok(written)
}

/// The `user_id` column of a profiles batch, as strings.
fn profile_users(b: &RecordBatch) -> Result<StringArray> {
    let users = b
        .column_by_name("user_id")
        .ok_or_else(|| crate::error::Error::Internal("profiles have no column `user_id`".into()))?;
    Ok(cast(users, &DataType::Utf8)?.as_string::<i32>().clone())
}

/// Whether the store holds every key of snapshot `id` (its manifest's key, written last, is
/// there): false after a store lost its data (a Redis restarted without persistence).
pub async fn materialised(store: &dyn OnlineStore, id: &str) -> Result<bool> {
    let manifest = snapshot_key(id, "manifest");
    Ok(store
        .get(&[manifest])
        .await?
        .first()
        .is_some_and(Option::is_some))
}

/// Deletes every other snapshot's keys and the speed epochs before the cutoff; returns both counts.
pub async fn cleanup(store: &dyn OnlineStore, new: &Pointer) -> Result<(u64, u64)> {
    let snapshots = store.drop_snapshots_older(&new.snapshot).await?;
    let epochs = store.drop_epochs_before(new.cutoff_ms).await?;
    Ok((snapshots, epochs))
}
