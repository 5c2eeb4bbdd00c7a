//! `tandem batch run`: one whole batch run, fit for a CronJob — pick the cutoff, compute the
//! views, train the models, write the snapshot into the lake, materialise it into the online
//! store, flip the pointer, clean up (ARCHITECTURE.md §5). See [`crate::snapshot`] for the guarantees.
//! The views and models are computed in `compute`, the snapshot's files written and read back in
//! `files`; here the run's steps, its lease and its summary.

use crate::error::{Error, Result};
use crate::snapshot::{self, Checkpoint, Materialised, Step};
use crate::views::{
    Baskets, View, basket_rows, baskets_before, items_from, profiles_from, similar_from, similar_of,
};
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Schema, TimestampMillisecondType,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;
use tandem_common::config::BatchEngine;
use tandem_common::event::{Event, Kind, format_rfc3339_ms};
use tandem_common::features::{ItemStats, Profile};
use tandem_common::lake::Lake;
use tandem_common::lake::revision_id;
use tandem_common::store::{OnlineStore, Pointer, PopularRow};
use tandem_models::candidates::ItemPool;
use tandem_models::candidates::SimilarLists;
use tandem_models::latent::{Latent, LatentOptions, Rows};
use tandem_models::manifest::{Manifest, ModelsEntry};
use tandem_models::training::{History, Models, Split, TrainOptions, train};
use tandem_models::vectors::{FEATURE_SCHEMA_VERSION, user_features};
use tandem_sql::context::LakeContext;
use tandem_sql::snapshots;

mod compute;
mod files;
pub mod incremental;

use compute::*;
pub use compute::{MAX_POPULAR_CATEGORIES, POPULAR_TOP};
use files::*;

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The requested cutoff, epoch ms (rounded down to an epoch); `None`: the latest possible.
    pub cutoff_ms: Option<i64>,
    /// Only say what would be done.
    pub dry_run: bool,
    /// Now, epoch ms.
    pub now_ms: i64,
    /// The epoch length, ms.
    pub epoch_ms: i64,
    /// The ingest lease, ms (a dead ingest run stops holding the watermark back after it).
    pub lease_ms: i64,
    /// The length of the training and the held-out periods, ms.
    pub window_ms: i64,
    /// Training options.
    pub train: TrainOptions,
    /// The wait between the pointer flip and the cleanup, so that servers still on the previous
    /// snapshot (they follow the pointer within their poll interval) never read its keys or the
    /// speed epochs below the new cutoff after they are gone.
    pub cleanup_grace: std::time::Duration,
    /// How long the run's lease on the store ([`BATCH_LEASE`]) lives unless renewed (every
    /// third of it): how long a killed run holds the next one back.
    pub run_lease: std::time::Duration,
    /// Complete snapshots kept in the lake; older ones are deleted after a publish.
    pub keep_snapshots: usize,
    /// Recompute from the whole lake even when the previous snapshot could be merged.
    pub full: bool,
    /// A run is a full one when the last full run's cutoff is at least this much older (ms;
    /// 0: always full). See [`incremental`].
    pub full_every_ms: i64,
    /// Where the views run.
    pub engine: BatchEngine,
}

impl RunOptions {
    /// The options of the configuration (`[events]`, `[lake]`, `[batch]`): the latest cutoff,
    /// now.
    pub fn from_config(c: &tandem_common::config::Config) -> RunOptions {
        RunOptions {
            cutoff_ms: None,
            dry_run: false,
            now_ms: tandem_common::event::now_ms(),
            epoch_ms: c.events.epoch.as_millis() as i64,
            lease_ms: c.lake.ingest_lease.as_millis() as i64,
            window_ms: c.batch.window.as_millis() as i64,
            train: TrainOptions {
                max_segments: c.batch.max_segments,
                ..TrainOptions::default()
            },
            cleanup_grace: c.batch.cleanup_grace,
            run_lease: c.batch.lease,
            keep_snapshots: c.batch.keep_snapshots,
            full: false,
            full_every_ms: c.batch.full_every.as_millis() as i64,
            // Validated with the configuration.
            engine: BatchEngine::parse(&c.batch.engine).unwrap_or(BatchEngine::Local),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new snapshot was computed and published.
    Published,
    /// The snapshot's files were already in the lake (an earlier run stopped after writing
    /// them): they were materialised and published without recomputing.
    Republished,
    /// The pointer already named this snapshot: nothing to do but clean up.
    AlreadyPublished,
    /// `--dry-run`: nothing was written.
    DryRun,
}

/// The final summary of a run (one JSON line on stdout).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// How the run ended.
    pub outcome: Outcome,
    /// The snapshot id.
    pub snapshot: String,
    /// The cutoff, RFC 3339.
    pub cutoff: String,
    /// The snapshot the pointer named before the run.
    pub previous: Option<String>,
    /// The snapshot this run merged with the events ingested since its cutoff (an incremental
    /// run); `None` when it recomputed from the whole lake or loaded a snapshot already written.
    pub merged_from: Option<String>,
    /// Why the run recomputed from the whole lake (a full run).
    pub full_reason: Option<String>,
    /// Deduplicated events read (0 when nothing was recomputed).
    pub events: u64,
    /// Stored events set aside: rows that validation refuses today, e.g. a price above the
    /// bound (left out of every view, see `LakeContext::set_aside`).
    pub set_aside: u64,
    /// Event files under the cutoff's dates (what a run reads at most).
    pub event_files: usize,
    /// Users erased so far: their events ingested until their erasure are left out.
    pub erased_users: usize,
    /// Rows per output.
    pub rows: BTreeMap<String, u64>,
    /// Rows written to the online store.
    pub store_rows: u64,
    /// Keys of older snapshots and speed epochs before the cutoff deleted.
    pub deleted_keys: u64,
    /// Snapshots deleted from the lake, beyond `batch.keep_snapshots`.
    pub pruned_snapshots: Vec<String>,
    /// Seconds per step, and `total`.
    pub durations_s: BTreeMap<String, f64>,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: Option<u64>,
    /// The models' evaluation, or why there are none.
    pub models: Option<ModelsEntry>,
}

/// Reports progress: called with each step as it starts.
pub trait Progress: Send + Sync {
    /// A step starts.
    fn step(&self, step: Step);
}

impl Progress for () {
    fn step(&self, _: Step) {}
}

fn name(step: Step) -> &'static str {
    match step {
        Step::Views => "views",
        Step::Train => "train",
        Step::WriteLake => "write_lake",
        Step::Materialise => "materialise",
        Step::Flip => "flip",
        Step::Cleanup => "cleanup",
    }
}

/// Logs the start of `step`, shows it, and asks the checkpoint whether to go on.
fn begin(step: Step, checkpoint: &dyn Checkpoint, progress: &dyn Progress) -> Result<()> {
    // The fault tests kill the process before a chosen step (`FAILPOINTS=batch-<step>=return`
    // with the `failpoints` feature): an abort, as a kill -9 would.
    fail::fail_point!(&format!("batch-{}", name(step)), |_| std::process::abort());
    tracing::info!(step = name(step), "Step started.");
    progress.step(step);
    checkpoint.before(step)
}

/// What a run computed: its counts and models, and the snapshot files still to write.
struct Computed {
    events: u64,
    set_aside: u64,
    models: Option<Models>,
    models_entry: ModelsEntry,
    rows: BTreeMap<String, u64>,
    /// The Parquet files to write into the lake (name without `.parquet`, batches). An
    /// incremental run wrote its users' files as it merged them, a row group at a time.
    files: Vec<(&'static str, Vec<RecordBatch>)>,
    /// The cutoff of the full run whose models this snapshot carries (an incremental run);
    /// `None`: this run's own.
    full_cutoff_ms: Option<i64>,
    /// An incremental run's base snapshot and the users its new events touched: the others'
    /// rows that do not depend on the cutoff are copied from the base's in the store.
    carry: Option<(String, HashSet<String>)>,
}

/// The online store's lease a batch run holds from start to end: two runs at once would
/// publish and clean up over each other (a run's cleanup deleted the rows a newer run was
/// writing).
pub const BATCH_LEASE: &str = "batch";

/// Runs the batch: see the module docs. Holds the store's [`BATCH_LEASE`] throughout (a dry
/// run excepted): when another run holds it, fails at once naming the holder; when the lease
/// is lost (this process stalled past its time to live and another run took it), stops before
/// publishing anything more.
pub async fn run(
    lake: &Lake,
    store: &dyn OnlineStore,
    opts: &RunOptions,
    checkpoint: &dyn Checkpoint,
    progress: &dyn Progress,
) -> Result<Summary> {
    use tandem_common::store::LeaseOp;
    if opts.dry_run {
        return run_leased(lake, store, opts, checkpoint, progress, None).await;
    }
    let started_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let owner = format!(
        "{}:{}:{started_ns:x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "batch".into()),
        std::process::id(),
    );
    let lease = Lease {
        owner,
        ttl_ms: (opts.run_lease.as_millis() as u64).max(3),
        regained: std::sync::atomic::AtomicBool::new(false),
    };
    let took = store
        .lease(BATCH_LEASE, LeaseOp::Take, &lease.owner, lease.ttl_ms)
        .await?;
    if !took.held {
        return Err(Error::User(format!(
            "another batch run holds the lease (`{}`, held by {}, lapsing in {:.0} s unless renewed): \
             two runs at once would publish over each other; try again when it has finished",
            tandem_common::store::lease_key(BATCH_LEASE),
            took.holder.as_deref().unwrap_or("?"),
            took.left_ms as f64 / 1000.0
        )));
    }
    let renew = async {
        let every = std::time::Duration::from_millis(lease.ttl_ms / 3);
        loop {
            tokio::time::sleep(every).await;
            match lease.keep(store).await {
                Ok(()) => {}
                Err(e @ Error::User(_)) => return e,
                Err(e) => tracing::warn!(error = %e, "Could not renew the batch lease; retrying."),
            }
        }
    };
    let out = tokio::select! {
        r = run_leased(lake, store, opts, checkpoint, progress, Some(&lease)) => r,
        lost = renew => Err(lost),
    };
    if let Err(e) = store
        .lease(BATCH_LEASE, LeaseOp::Release, &lease.owner, lease.ttl_ms)
        .await
    {
        tracing::warn!(error = %e, "Could not release the batch lease; it lapses by itself.");
    }
    out
}

/// Publishes a snapshot of the lake again into a store that lost it (a Redis restarted without
/// persistence, or flushed; the speed layer notices and calls this): the snapshot the store's
/// pointer names if its keys are gone, or the lake's newest complete snapshot when there is no
/// pointer. Nothing when the pointer's snapshot is whole (`Ok(None)`), or when the lake has no
/// snapshot. A run of its own ([`run`] at that snapshot's cutoff: it is loaded from the lake, not
/// recomputed, and users erased since are left out), under the batch lease.
pub async fn restore(
    lake: &Lake,
    store: &dyn OnlineStore,
    opts: &RunOptions,
) -> Result<Option<Summary>> {
    let cutoff = match store.pointer().await? {
        Some(p) if snapshot::materialised(store, &p.snapshot).await? => return Ok(None),
        Some(p) => p.cutoff_ms,
        None => match snapshots::complete(lake).await?.last() {
            Some(m) => m.cutoff_ms,
            None => return Ok(None),
        },
    };
    let opts = RunOptions {
        cutoff_ms: Some(cutoff),
        dry_run: false,
        ..opts.clone()
    };
    run(lake, store, &opts, &snapshot::NoFaults, &())
        .await
        .map(Some)
}

/// A run's hold on the store's [`BATCH_LEASE`].
struct Lease {
    owner: String,
    ttl_ms: u64,
    /// The lease was taken again after nobody held it: it lapsed, or the store lost its data
    /// (a Redis restarted without persistence, or flushed) — and with it what the run wrote.
    regained: std::sync::atomic::AtomicBool,
}

impl Lease {
    /// Renews the lease; takes it again when nobody holds it (noting that in `regained`). A user
    /// error when another run holds it now: this run must stop publishing.
    async fn keep(&self, store: &dyn OnlineStore) -> Result<()> {
        use tandem_common::store::LeaseOp;
        let mut state = store
            .lease(BATCH_LEASE, LeaseOp::Renew, &self.owner, self.ttl_ms)
            .await?;
        if !state.held && state.holder.is_none() {
            state = store
                .lease(BATCH_LEASE, LeaseOp::Take, &self.owner, self.ttl_ms)
                .await?;
            if state.held {
                tracing::warn!(
                    "The batch lease was gone (it lapsed, or the online store lost its data); took it again."
                );
                self.regained
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if state.held {
            return Ok(());
        }
        Err(Error::User(format!(
            "the batch lease was lost to {} while this run was working (it stalled longer than {} s): stopped before publishing more",
            state.holder.as_deref().unwrap_or("nobody"),
            self.ttl_ms / 1000
        )))
    }

    /// Whether the store still holds what the run wrote since the last call: false when the
    /// lease had to be taken again meanwhile.
    async fn intact(&self, store: &dyn OnlineStore) -> Result<bool> {
        snapshot::retrying("renew the batch lease", || self.keep(store)).await?;
        Ok(!self
            .regained
            .swap(false, std::sync::atomic::Ordering::SeqCst))
    }
}

/// How many times a run writes its snapshot into a store that keeps losing it before it gives
/// up.
const MATERIALISE_ATTEMPTS: u32 = 3;

async fn run_leased(
    lake: &Lake,
    store: &dyn OnlineStore,
    opts: &RunOptions,
    checkpoint: &dyn Checkpoint,
    progress: &dyn Progress,
    lease: Option<&Lease>,
) -> Result<Summary> {
    let started = Instant::now();
    let mut durations = BTreeMap::new();
    let cutoff = crate::cutoff::for_lake(
        lake,
        opts.cutoff_ms,
        opts.now_ms,
        opts.epoch_ms,
        opts.lease_ms,
    )
    .await?;
    let previous = store.pointer().await?;
    if let Some(p) = previous.as_ref().filter(|p| p.cutoff_ms > cutoff) {
        return Err(Error::User(format!(
            "cutoff {} is before the published snapshot {}'s ({}): the speed epochs before that are deleted, so an older snapshot cannot be served",
            format_rfc3339_ms(cutoff),
            p.snapshot,
            format_rfc3339_ms(p.cutoff_ms)
        )));
    }
    let cutoff_date = tandem_common::event::date_of_ms(cutoff);
    let event_files = lake
        .event_files()
        .await?
        .iter()
        .filter(|f| {
            f.location
                .as_ref()
                .split("date=")
                .nth(1)
                .is_some_and(|d| d[..10.min(d.len())] <= cutoff_date[..])
        })
        .count();
    // The latest revision at this cutoff is reused (published already, or its files written by
    // a run that stopped before publishing) unless the bulk loads below the cutoff changed.
    let inputs = snapshot::inputs_below(lake, cutoff).await?;
    let (id, existing) = match snapshot::latest_revision(lake, cutoff).await? {
        Some((r, m)) if m.inputs.is_empty() || m.inputs == inputs => {
            (revision_id(cutoff, r), Some(m))
        }
        Some((r, m)) => {
            tracing::info!(
                snapshot = %m.snapshot,
                was = %m.inputs,
                now = %inputs,
                "The lake below the cutoff changed since the last snapshot at it; making the next revision."
            );
            (revision_id(cutoff, r + 1), None)
        }
        None => (revision_id(cutoff, 1), None),
    };
    let new = Pointer {
        snapshot: id.clone(),
        cutoff_ms: cutoff,
    };
    let mut summary = Summary {
        outcome: Outcome::DryRun,
        snapshot: id.clone(),
        cutoff: format_rfc3339_ms(cutoff),
        previous: previous.as_ref().map(|p| p.snapshot.clone()),
        merged_from: None,
        full_reason: None,
        events: 0,
        set_aside: 0,
        event_files,
        erased_users: lake.erasures().await?.len(),
        rows: BTreeMap::new(),
        store_rows: 0,
        deleted_keys: 0,
        pruned_snapshots: Vec::new(),
        durations_s: BTreeMap::new(),
        peak_rss_mb: None,
        models: existing.as_ref().map(|m| m.models.clone()),
    };
    let finish = |mut s: Summary, mut durations: BTreeMap<String, f64>| {
        durations.insert("total".into(), started.elapsed().as_secs_f64());
        s.durations_s = durations;
        s.peak_rss_mb = tandem_common::sys::peak_rss_bytes().map(|b| b >> 20);
        s
    };
    if opts.dry_run {
        return Ok(finish(summary, durations));
    }
    if previous.as_ref() == Some(&new)
        && existing.is_some()
        && snapshot::materialised(store, &id).await?
    {
        begin(Step::Cleanup, checkpoint, progress)?;
        let (a, b) = snapshot::cleanup(store, &new).await?;
        summary.deleted_keys = a + b;
        summary.pruned_snapshots = snapshots::prune(lake, opts.keep_snapshots, &id).await?;
        summary.outcome = Outcome::AlreadyPublished;
        return Ok(finish(summary, durations));
    }

    let mut carry = None;
    let manifest = match existing {
        Some(m) => {
            summary.outcome = Outcome::Republished;
            summary.events = m.events;
            summary.set_aside = m.set_aside;
            summary.rows = m.rows.clone();
            summary.models = Some(m.models.clone());
            m
        }
        None => {
            let mut computed = match incremental::basis(lake, cutoff, opts).await? {
                incremental::Basis::Merge(base) => {
                    summary.merged_from = Some(base.snapshot.clone());
                    incremental::merge(
                        lake,
                        &base,
                        &id,
                        cutoff,
                        checkpoint,
                        progress,
                        &mut durations,
                    )
                    .await?
                }
                incremental::Basis::Full(why) => {
                    tracing::info!(reason = %why, "Recomputing from the whole lake.");
                    summary.full_reason = Some(why);
                    compute(lake, cutoff, opts, checkpoint, progress, &mut durations).await?
                }
            };
            summary.outcome = Outcome::Published;
            summary.events = computed.events;
            summary.set_aside = computed.set_aside;
            summary.rows = computed.rows.clone();
            summary.models = Some(computed.models_entry.clone());
            begin(Step::WriteLake, checkpoint, progress)?;
            let t = Instant::now();
            let mut m = Manifest {
                snapshot: id.clone(),
                cutoff: format_rfc3339_ms(cutoff),
                cutoff_ms: cutoff,
                created_at: format_rfc3339_ms(opts.now_ms),
                code_version: env!("CARGO_PKG_VERSION").to_string(),
                feature_schema_version: FEATURE_SCHEMA_VERSION,
                events: computed.events,
                set_aside: computed.set_aside,
                rows: computed.rows.clone(),
                durations_s: durations.clone(),
                models: computed.models_entry.clone(),
                inputs: inputs.clone(),
                merged_from: summary.merged_from.clone(),
                full_cutoff_ms: Some(computed.full_cutoff_ms.unwrap_or(cutoff)),
                state_version: incremental::STATE_VERSION,
            };
            carry = computed.carry.take();
            write_lake(lake, &id, computed, &mut m).await?;
            durations.insert(name(Step::WriteLake).into(), t.elapsed().as_secs_f64());
            m
        }
    };

    begin(Step::Materialise, checkpoint, progress)?;
    let t = Instant::now();
    // Users erased since the views read the tombstones — or since a republished snapshot's
    // files were written — lose their rows here: an erasure at or after the cutoff removes
    // every event the snapshot holds of them (an earlier one the views applied already).
    let leave_out: HashSet<String> = lake
        .erasures()
        .await?
        .into_iter()
        .filter(|(_, at)| *at >= cutoff)
        .map(|(u, _)| u)
        .collect();
    if !leave_out.is_empty() {
        tracing::info!(
            users = leave_out.len(),
            "Leaving out the rows of users erased since the snapshot's cutoff."
        );
    }
    // The items' files are small (a row per item); the users' are streamed by `materialise`.
    let items = items_from(&snapshots::read_parquet(lake, &id, "items.parquet").await?)?;
    let similar =
        similar_from(&snapshots::read_parquet(lake, &id, "similar_items.parquet").await?)?;
    let popular = popular_row(&items);
    let models_bytes = match &manifest.models {
        ModelsEntry::Trained(_) => Some(snapshots::read_file(lake, &id, "models.json").await?),
        ModelsEntry::Skipped(_) => None,
    };
    let rows = Materialised {
        id: &id,
        lake,
        leave_out: &leave_out,
        items: &items,
        similar: &similar,
        popular: &popular,
        models: models_bytes,
        manifest: &manifest,
        carry: carry
            .as_ref()
            .map(|(from, touched)| snapshot::Carry { from, touched }),
    };
    // A store that loses its data meanwhile (a Redis restarted without persistence) loses the
    // rows written so far, and the pointer: the lease, gone with them, says so (the run takes
    // it again). The rows are then written again, so that the pointer never names a snapshot
    // whose rows are not all there.
    let mut expected = previous.clone();
    let mut attempt = 1;
    loop {
        if let Some(l) = lease {
            l.regained.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        summary.store_rows = snapshot::materialise(store, &rows).await?;
        durations.insert(name(Step::Materialise).into(), t.elapsed().as_secs_f64());
        let lost = match lease {
            Some(l) => !l.intact(store).await?,
            None => false,
        };
        if !lost {
            begin(Step::Flip, checkpoint, progress)?;
            if store.flip(expected.as_ref(), &new).await? {
                break;
            }
            let lost = match lease {
                Some(l) => !l.intact(store).await?,
                None => false,
            };
            if !lost {
                return Err(Error::User(format!(
                    "the snapshot pointer changed during the run (expected {:?}); another batch run published meanwhile, nothing was flipped",
                    expected.as_ref().map(|p| &p.snapshot)
                )));
            }
        }
        if attempt == MATERIALISE_ATTEMPTS {
            return Err(Error::Common(tandem_common::Error::External(format!(
                "the online store lost the snapshot's rows {attempt} times while this run wrote them (is it restarting, or being flushed?): nothing published"
            ))));
        }
        tracing::warn!(
            attempt,
            "The online store lost what this run wrote (it restarted without persistence, or was flushed): writing the snapshot again."
        );
        attempt += 1;
        expected = store.pointer().await?;
    }
    tracing::info!(snapshot = %id, cutoff = %summary.cutoff, "Published snapshot.");

    begin(Step::Cleanup, checkpoint, progress)?;
    let t = Instant::now();
    tokio::time::sleep(opts.cleanup_grace).await;
    let (a, b) = snapshot::cleanup(store, &new).await?;
    summary.deleted_keys = a + b;
    summary.pruned_snapshots = snapshots::prune(lake, opts.keep_snapshots, &id).await?;
    durations.insert(name(Step::Cleanup).into(), t.elapsed().as_secs_f64());
    Ok(finish(summary, durations))
}

#[cfg(test)]
mod tests;
