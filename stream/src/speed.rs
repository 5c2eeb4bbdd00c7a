//! The speed layer (ARCHITECTURE.md §3–4): consumes the bus and applies each event's deltas to the
//! online store, exactly once in effect.
//!
//! One task per partition: fetch up to `batch` records from the stored position, check they are
//! exactly the next ones, parse them, hand them to [`OnlineStore::apply_events`] (on Redis: one
//! function call per user of the batch, all pipelined). The position is stored beside the
//! loop, at most every `commit_interval` and when stopping, so that a slow position store (a
//! Fluvio consumer-offset commit takes a few round trips) never delays the next event. A crash
//! replays what came after the stored position, which the store skips by each user's last
//! applied offset. Memory is bounded by `batch` records per partition: a task fetches again
//! only once its batch is applied, so a slow store slows the reading (backpressure), never
//! piles records up.
//!
//! One file (~740 lines), on purpose: the partition loop, the in-flight apply of a batch and the
//! recovery of a store that lost its data are one state machine over each user's stored position;
//! split, its invariant would span files.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use serde::Serialize;
use tandem_common::event::from_bus_value;
use tandem_common::lake::Lake;
use tandem_common::store::speed::{log_with_token, partition_marker_key};
use tandem_common::store::{ApplyCounts, OnlineStore, SpeedEvent};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::bus::{Bus, Record, check_contiguous};
use crate::dead_letter::{DeadLetters, Letter};
use crate::error::{Error, Result};
use crate::task::{Tasks, retry};

/// How the speed layer runs.
#[derive(Debug, Clone)]
pub struct SpeedOptions {
    /// The consumer group whose positions are stored on the bus.
    pub group: String,
    /// The partitions to consume; empty means all.
    pub partitions: Vec<u32>,
    /// Records per fetch and per pipelined apply.
    pub batch: usize,
    /// How long a fetch waits when there is nothing to read.
    pub wait: Duration,
    /// How often the position is stored while running (always when stopping).
    pub commit_interval: Duration,
    /// The ingest epoch length, ms: deltas are filed under `ingest_ts` rounded down to it.
    pub epoch_ms: i64,
    /// Stop once every partition has reached the end it had at start (catch-up runs, tests,
    /// the bench) instead of following the bus.
    pub until_caught_up: bool,
    /// The lake. Its erasure tombstones are noted in the store at start and before each replay
    /// of a partition whose work the store lost, so that a store that lost its erasure markers
    /// (an in-memory store restarted, a Redis without persistence) does not bring an erased
    /// user back when the bus is replayed; and records are set aside
    /// in its dead-letter (`dead_letter/speed/`, see [`crate::dead_letter`]): bus records
    /// that are not valid events, and the events of a user the store refuses. Without a lake,
    /// invalid records are logged and skipped, and a refusal stops the partition.
    pub lake: Option<Lake>,
    /// Called when the store is found to have lost a partition's work (a Redis restarted
    /// without persistence, or flushed): the binary publishes the lake's snapshot again. In the
    /// background, one call at a time, calls asked for meanwhile folded into one.
    pub on_store_lost: Option<OnStoreLost>,
}

/// What the speed layer calls when the store lost its work: a future that says what it did, or
/// why it failed (it is called again, a few times, after a pause).
#[derive(Clone)]
pub struct OnStoreLost(
    pub  Arc<
        dyn Fn() -> futures::future::BoxFuture<'static, std::result::Result<String, String>>
            + Send
            + Sync,
    >,
);

impl std::fmt::Debug for OnStoreLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnStoreLost(..)")
    }
}

impl Default for SpeedOptions {
    fn default() -> Self {
        SpeedOptions {
            group: "speed".into(),
            partitions: Vec::new(),
            batch: 4096,
            wait: Duration::from_millis(200),
            commit_interval: Duration::from_secs(1),
            epoch_ms: 3_600_000,
            until_caught_up: false,
            lake: None,
            on_store_lost: None,
        }
    }
}

impl SpeedOptions {
    /// The options of the configuration (`[stream]`, `events.epoch`), all partitions.
    pub fn from_config(c: &tandem_common::config::Config) -> SpeedOptions {
        SpeedOptions {
            batch: c.stream.batch,
            wait: c.stream.wait,
            commit_interval: c.stream.commit_interval,
            epoch_ms: c.events.epoch.as_millis() as i64,
            ..SpeedOptions::default()
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpeedSummary {
    /// Events applied; replays, duplicates and erased users' events skipped.
    #[serde(flatten)]
    pub counts: ApplyCounts,
    /// Bus records that are not valid events (logged, skipped, set aside in the dead-letter).
    pub invalid: u64,
    /// Events the store refused (a data error no retry fixes), set aside in the dead-letter.
    pub rejected: u64,
    /// Batches applied.
    pub batches: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: u64,
    /// Records consumed per second (applied, skipped and invalid alike).
    pub records_per_second: f64,
}

#[derive(Default)]
struct Totals {
    applied: AtomicU64,
    replayed: AtomicU64,
    duplicates: AtomicU64,
    erased: AtomicU64,
    calls: AtomicU64,
    users: AtomicU64,
    invalid: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
}

impl Totals {
    fn records(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
            + self.replayed.load(Ordering::Relaxed)
            + self.duplicates.load(Ordering::Relaxed)
            + self.erased.load(Ordering::Relaxed)
            + self.invalid.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
    }
}

/// Runs the speed layer until `stop` is cancelled (then finishes the batches in flight and
/// stores their positions) or, with `until_caught_up`, until it has caught up. Fails when a
/// partition meets an error that retrying cannot fix; the other partitions then stop too.
pub async fn run(
    bus: Arc<dyn Bus>,
    store: Arc<dyn OnlineStore>,
    opts: SpeedOptions,
    stop: CancellationToken,
) -> Result<SpeedSummary> {
    let partitions = crate::task::partitions(bus.as_ref(), &opts.partitions)?;
    if opts.epoch_ms <= 0 || opts.batch == 0 {
        return Err(Error::Config(
            "the speed layer needs a positive epoch and batch size".into(),
        ));
    }
    let started = Instant::now();
    if let Some(lake) = &opts.lake {
        note_erasures(lake, store.as_ref(), &stop).await?;
    }
    let totals = Arc::new(Totals::default());
    let recovery = Arc::new(Recovery::default());
    let drained = CancellationToken::new();
    let recoverer = opts
        .on_store_lost
        .clone()
        .map(|hook| tokio::spawn(recovery.clone().work(hook, stop.clone(), drained.clone())));
    let mut tasks = Tasks::new(stop.clone());
    for p in partitions.iter().copied() {
        let (bus, store, opts, totals, recovery) = (
            bus.clone(),
            store.clone(),
            opts.clone(),
            totals.clone(),
            recovery.clone(),
        );
        tasks.spawn(format!("speed partition {p}"), move |stop| async move {
            consume(bus, store, p, &opts, &totals, &recovery, stop).await
        });
    }
    let progress = {
        let totals = totals.clone();
        let stop = tasks.token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            let mut last = (Instant::now(), 0);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let records = totals.records();
                let rate = (records - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), records);
                info!(
                    records,
                    records_per_second = rate.round(),
                    applied = totals.applied.load(Ordering::Relaxed),
                    "Speed layer progress."
                );
            }
        })
    };
    let result = tasks.join().await;
    progress.abort();
    // A snapshot asked for is published before a catch-up run returns.
    drained.cancel();
    if let Some(r) = recoverer {
        let _ = r.await;
    }
    result?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = SpeedSummary {
        counts: ApplyCounts {
            applied: totals.applied.load(Ordering::Relaxed),
            replayed: totals.replayed.load(Ordering::Relaxed),
            duplicates: totals.duplicates.load(Ordering::Relaxed),
            erased: totals.erased.load(Ordering::Relaxed),
            calls: totals.calls.load(Ordering::Relaxed),
            users: totals.users.load(Ordering::Relaxed),
        },
        invalid: totals.invalid.load(Ordering::Relaxed),
        rejected: totals.rejected.load(Ordering::Relaxed),
        batches: totals.batches.load(Ordering::Relaxed),
        seconds,
        peak_rss_mb: tandem_common::sys::peak_rss_bytes().unwrap_or(0) >> 20,
        records_per_second: totals.records() as f64 / seconds.max(1e-9),
    };
    info!(
        applied = summary.counts.applied,
        replayed = summary.counts.replayed,
        duplicates = summary.counts.duplicates,
        erased = summary.counts.erased,
        invalid = summary.invalid,
        rejected = summary.rejected,
        "Speed layer stopped."
    );
    Ok(summary)
}

async fn consume(
    bus: Arc<dyn Bus>,
    store: Arc<dyn OnlineStore>,
    partition: u32,
    opts: &SpeedOptions,
    totals: &Totals,
    recovery: &Recovery,
    stop: CancellationToken,
) -> Result<()> {
    let label = partition.to_string();
    let lag = metrics::gauge!("tandem_stream_lag_records", "layer" => "speed", "partition" => label.clone());
    let apply_seconds = metrics::histogram!("tandem_stream_batch_apply_seconds");
    let events = |outcome: &'static str| metrics::counter!("tandem_stream_events_total", "outcome" => outcome);
    let (applied_c, replayed_c, dup_c, erased_c, invalid_c, rejected_c) = (
        events("applied"),
        events("replayed"),
        events("duplicate"),
        events("erased"),
        events("invalid"),
        events("rejected"),
    );
    let dead_letters = opts.lake.clone().map(|l| DeadLetters::new(l, "speed"));
    let mut next = retry(&stop, "read the stored position", || {
        bus.committed(&opts.group, partition)
    })
    .await?
    .unwrap_or(0);
    let end_at_start = match opts.until_caught_up {
        true => Some(retry(&stop, "read the end offset", || bus.end_offset(partition)).await?),
        false => None,
    };
    // The store's copy of the partition's work: its token, or a replay from the start when the
    // bus holds a position the store knows nothing of.
    let marker = partition_marker_key(&opts.group, partition);
    let held = retry(&stop, "read the partition's marker", || {
        store.get(std::slice::from_ref(&marker))
    })
    .await?;
    let token = match held.into_iter().next().flatten() {
        Some(t) => String::from_utf8_lossy(&t).into_owned(),
        None => {
            let replay = next > 0;
            next = 0;
            start_in_store(
                &bus,
                store.as_ref(),
                partition,
                opts,
                recovery,
                replay,
                &stop,
            )
            .await?
        }
    };
    info!(partition, offset = next, "Speed layer consuming.");
    // The identity of the partition's log, kept beside each user's offset (known once the
    // partition has a record), with the store token.
    let mut log: Option<String> = None;
    let positions_at = |at: u64, token: String| {
        let marker = Marker {
            store: store.clone(),
            key: marker.clone(),
            token,
        };
        Positions::new(bus.clone(), opts.group.clone(), partition, at, marker)
    };
    let mut positions = positions_at(next, token);
    let mut lag_checked = Instant::now() - Duration::from_secs(10);
    loop {
        let caught_up = end_at_start.is_some_and(|end| next >= end);
        let stopping = stop.is_cancelled();
        let kept = match caught_up {
            true => positions.finish(&stop).await?,
            false => positions.tick(opts.commit_interval),
        };
        if !kept {
            // The store lost the partition's work: nothing more is stored of this position.
            if stopping {
                return Ok(());
            }
            let token =
                start_in_store(&bus, store.as_ref(), partition, opts, recovery, true, &stop)
                    .await?;
            next = 0;
            positions = positions_at(0, token);
            continue;
        }
        if caught_up {
            lag.set(0.0);
            return Ok(());
        }
        if lag_checked.elapsed() >= Duration::from_secs(1) {
            if let Ok(end) = bus.end_offset(partition).await {
                lag.set(end.saturating_sub(next) as f64);
            }
            lag_checked = Instant::now();
        }
        let records = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                positions.finish(&stop).await?;
                return Ok(());
            }
            r = retry(&stop, "fetch", || bus.fetch(partition, next, opts.batch, opts.wait)) => r?,
        };
        check_contiguous(partition, next, &records)?;
        let Some(last) = records.last().map(|r| r.offset) else {
            continue;
        };
        let mut batch = Vec::with_capacity(records.len());
        let mut letters = Vec::new();
        for r in &records {
            match from_bus_value(&r.value) {
                Ok((ingest_ts, event)) => batch.push(SpeedEvent {
                    offset: r.offset,
                    ingest_ts,
                    epoch_ms: ingest_ts.div_euclid(opts.epoch_ms) * opts.epoch_ms,
                    event,
                }),
                Err(e) => {
                    invalid_c.increment(1);
                    totals.invalid.fetch_add(1, Ordering::Relaxed);
                    warn!(partition, offset = r.offset, error = %e, "Skipped an invalid bus record.");
                    if let Some(dead) = &dead_letters {
                        letters.push(Letter::of(
                            dead.layer(),
                            r,
                            format!("not a valid event: {e}"),
                        ));
                    }
                }
            }
        }
        // The batch in hand is finished even when a stop is asked for meanwhile: apply, then
        // mark the position (a retry gives up only when stopping, leaving the batch to replay).
        if log.is_none() {
            log = retry(&stop, "read the log's identity", || bus.log_id(partition)).await?;
        }
        let log = log_with_token(log.as_deref().unwrap_or(""), &positions.marker.token);
        let log = log.as_str();
        let t = Instant::now();
        let counts = match retry(&stop, "apply events", || store.apply(log, &batch)).await {
            Ok(counts) => counts,
            Err(e) => {
                let Some(dead) = dead_letters.as_ref().filter(|_| e.is_rejected()) else {
                    return Err(e);
                };
                warn!(partition, error = %e, "The store refused a batch; applying it user by user to set the refused users' events aside.");
                let (counts, refused) =
                    apply_by_user(store.as_ref(), log, &batch, &records, dead.layer(), &stop)
                        .await?;
                rejected_c.increment(refused.len() as u64);
                totals
                    .rejected
                    .fetch_add(refused.len() as u64, Ordering::Relaxed);
                letters.extend(refused);
                letters.sort_by_key(|l| l.offset);
                counts
            }
        };
        if let Some(dead) = &dead_letters {
            retry(&stop, "set records aside", || dead.set_aside(&letters)).await?;
        }
        apply_seconds.record(t.elapsed().as_secs_f64());
        next = last + 1;
        positions.done(next);
        applied_c.increment(counts.applied);
        replayed_c.increment(counts.replayed);
        dup_c.increment(counts.duplicates);
        erased_c.increment(counts.erased);
        totals.erased.fetch_add(counts.erased, Ordering::Relaxed);
        totals.applied.fetch_add(counts.applied, Ordering::Relaxed);
        totals
            .replayed
            .fetch_add(counts.replayed, Ordering::Relaxed);
        totals
            .duplicates
            .fetch_add(counts.duplicates, Ordering::Relaxed);
        totals.calls.fetch_add(counts.calls, Ordering::Relaxed);
        totals.users.fetch_add(counts.users, Ordering::Relaxed);
        totals.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// Notes every erasure tombstone of the lake in the store ([`OnlineStore::note_erasure`]): an
/// erasure marker lives in the store, and a store that lost it (an in-memory store restarted,
/// a Redis without persistence after a restart or failover) replayed the erased user's
/// events from the bus — the profile came back.
async fn note_erasures(
    lake: &Lake,
    store: &dyn OnlineStore,
    stop: &CancellationToken,
) -> Result<()> {
    let erasures = retry(stop, "read the lake's erasures", || lake.erasures()).await?;
    let erasures: Vec<(String, i64)> = erasures.into_iter().collect();
    // 64 at a time: a store call each, and a replay waits for all of them.
    for chunk in erasures.chunks(64) {
        let mut calls = Vec::with_capacity(chunk.len());
        for (user, at) in chunk {
            calls.push(async move {
                retry(stop, "note an erasure", || store.note_erasure(user, *at)).await
            });
        }
        for r in futures::future::join_all(calls).await {
            r?;
        }
    }
    if !erasures.is_empty() {
        info!(
            users = erasures.len(),
            "Noted the lake's erasures in the store."
        );
    }
    Ok(())
}

/// Applies `batch` one user at a time, after the store refused it whole: the users it refuses
/// again get their events back as dead letters (the record of each, with the refusal), the
/// others are applied (those of the refused call that Redis had applied before the failing
/// user are skipped now as replays, by their offsets).
async fn apply_by_user(
    store: &dyn OnlineStore,
    log: &str,
    batch: &[SpeedEvent<'_>],
    records: &[Record],
    layer: &str,
    stop: &CancellationToken,
) -> Result<(ApplyCounts, Vec<Letter>)> {
    let mut users: Vec<&str> = batch.iter().map(|e| e.event.user_id.as_ref()).collect();
    users.sort_unstable();
    users.dedup();
    let first = records.first().map_or(0, |r| r.offset);
    let mut counts = ApplyCounts::default();
    let mut refused = Vec::new();
    for user in users {
        let own: Vec<SpeedEvent<'_>> = batch
            .iter()
            .filter(|e| e.event.user_id == user)
            .cloned()
            .collect();
        match retry(stop, "apply events", || store.apply(log, &own)).await {
            Ok(c) => counts += c,
            Err(e) if e.is_rejected() => {
                warn!(user, events = own.len(), error = %e, "Set a user's events aside: the store refuses them.");
                for ev in &own {
                    if let Some(r) = records.get((ev.offset - first) as usize) {
                        refused.push(Letter::of(layer, r, e.to_string()));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((counts, refused))
}

/// Starts a partition's work afresh in a store that does not hold it (a Redis restarted
/// without persistence or flushed — or a new store): when the bus holds a position (`replay`),
/// the erasures of the lake are noted again, the position goes back to the start, and a
/// snapshot is asked for; then the partition's marker gets a new token, which goes with every
/// apply ([`log_with_token`]), so that what the store got under the old one after it lost its
/// data is dropped user by user as the replay reaches them. The position is stored back before
/// the marker is written: a crash in between finds no marker and starts here again.
async fn start_in_store(
    bus: &Arc<dyn Bus>,
    store: &dyn OnlineStore,
    partition: u32,
    opts: &SpeedOptions,
    recovery: &Recovery,
    replay: bool,
    stop: &CancellationToken,
) -> Result<String> {
    if replay {
        warn!(
            partition,
            "The online store does not hold this partition's work (it restarted without persistence, was flushed, or is new): replaying the partition from its start."
        );
        metrics::counter!("tandem_stream_store_losses_total", "partition" => partition.to_string())
            .increment(1);
        if let Some(lake) = &opts.lake {
            note_erasures(lake, store, stop).await?;
        }
        retry(stop, "store the position", || {
            bus.commit(&opts.group, partition, 0)
        })
        .await?;
        recovery.ask();
    }
    let token = format!(
        "{:x}-{:x}-{partition}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
        std::process::id()
    );
    let row = [(
        partition_marker_key(&opts.group, partition),
        Bytes::from(token.clone()),
    )];
    retry(stop, "write the partition's marker", || store.put(&row)).await?;
    Ok(token)
}

/// The snapshots asked for after the store lost its work, published one at a time.
#[derive(Default)]
struct Recovery {
    asked: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Recovery {
    fn ask(&self) {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Calls `hook` whenever asked (asks meanwhile folded into one call), until `stop`, or until
    /// `drained` once nothing is asked for. A failed call is tried again after a pause, up to
    /// five times.
    async fn work(
        self: Arc<Self>,
        hook: OnStoreLost,
        stop: CancellationToken,
        drained: CancellationToken,
    ) {
        let mut done = 0;
        loop {
            let asked = self.asked.load(Ordering::SeqCst);
            if asked == done {
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    _ = self.wake.notified() => continue,
                    _ = drained.cancelled() => return,
                }
            }
            for attempt in 1..=5 {
                match (hook.0)().await {
                    Ok(what) => {
                        info!(what = %what, "Published the snapshot again into the online store.");
                        break;
                    }
                    Err(e) => {
                        warn!(attempt, error = %e, "Could not publish the snapshot again into the online store.");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(2 * attempt)) => {}
                        }
                    }
                }
            }
            done = asked;
        }
    }
}

/// The store's marker of a partition's work: its key and the token it must hold.
struct Marker {
    store: Arc<dyn OnlineStore>,
    key: String,
    token: String,
}

impl Marker {
    /// Whether the store still holds the partition's work.
    async fn holds(&self) -> Result<bool> {
        let v = self.store.get(std::slice::from_ref(&self.key)).await?;
        Ok(v.first()
            .and_then(Option::as_ref)
            .is_some_and(|t| t.as_ref() == self.token.as_bytes()))
    }
}

/// How often an idle partition checks that the store still holds its work.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A partition's consumer position, stored beside the consume loop: at most one store in
/// flight, started when the interval has passed, and a last one awaited when stopping. A
/// position is stored only after the store is seen to hold the partition's work ([`Marker`]):
/// when it lost it, nothing more is stored and the partition starts again.
struct Positions {
    bus: Arc<dyn Bus>,
    group: String,
    partition: u32,
    marker: Arc<Marker>,
    /// Everything below it is applied.
    done: u64,
    /// What the bus holds (or is being given).
    stored: u64,
    stored_at: Instant,
    /// Ok(false): not stored, the store lost the work.
    in_flight: Option<tokio::task::JoinHandle<Result<bool>>>,
}

impl Positions {
    fn new(bus: Arc<dyn Bus>, group: String, partition: u32, at: u64, marker: Marker) -> Positions {
        Positions {
            bus,
            group,
            partition,
            marker: Arc::new(marker),
            done: at,
            stored: at,
            stored_at: Instant::now(),
            in_flight: None,
        }
    }

    /// Everything below `next` is applied.
    fn done(&mut self, next: u64) {
        self.done = next;
    }

    /// Starts storing the position when it moved, the last store finished and `interval` has
    /// passed since it started. A failed store is logged; the next tick stores again. False
    /// when the last store found that the store lost the partition's work.
    fn tick(&mut self, interval: Duration) -> bool {
        if let Some(h) = &self.in_flight {
            if !h.is_finished() {
                return true;
            }
            let h = self.in_flight.take().expect("checked above");
            match h.now_or_never() {
                Some(Ok(Ok(true))) => {}
                Some(Ok(Ok(false))) => return false,
                Some(Ok(Err(e))) => {
                    warn!(partition = self.partition, error = %e, "Could not store the position; trying again.");
                    self.stored = u64::MAX; // unknown: store again
                }
                _ => self.stored = u64::MAX,
            }
        }
        // An idle partition checks the marker now and then all the same: a store that lost its
        // data is replayed before new events come.
        let moved = self.done != self.stored;
        let wait = match moved {
            true => interval,
            false => interval.max(IDLE_CHECK),
        };
        if self.stored_at.elapsed() < wait {
            return true;
        }
        let (bus, group, p, at, marker) = (
            self.bus.clone(),
            self.group.clone(),
            self.partition,
            self.done,
            self.marker.clone(),
        );
        self.stored = at;
        self.stored_at = Instant::now();
        self.in_flight = Some(tokio::spawn(async move {
            if !marker.holds().await? {
                return Ok(false);
            }
            if moved {
                bus.commit(&group, p, at).await?;
            }
            Ok(true)
        }));
        true
    }

    /// Waits for a store in flight, then stores the final position: retrying what may succeed
    /// when caught up, once when stopping (what is not stored is replayed, as no-ops, at the
    /// next start). False, storing nothing, when the store lost the partition's work.
    async fn finish(&mut self, stop: &CancellationToken) -> Result<bool> {
        if let Some(h) = self.in_flight.take() {
            match h.await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return Ok(false),
                _ => self.stored = u64::MAX,
            }
        }
        if self.done != self.stored {
            if !retry(stop, "read the partition's marker", || self.marker.holds()).await? {
                return Ok(false);
            }
            let (bus, group, p, at) = (&self.bus, &self.group, self.partition, self.done);
            retry(stop, "store the position", || bus.commit(group, p, at)).await?;
            self.stored = at;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests;
