//! Whole batch runs over a generated lake, into `memory://` and a real `redis-server`.

use std::sync::atomic::Ordering;

use tandem_common::features::recompute;
use tandem_common::schema::Stamp;
use tandem_common::store::{
    ItemRow, MemoryStore, PopularRow, RedisStore, SpeedEvent, UserRow, item_key, snapshot_key,
    user_key,
};
use tandem_testkit::{FaultyStore, RedisServer, RestartAfter, RestartingRedis};

use super::*;
use crate::error::ErrorKind;
use crate::views::tests::{lake_of, stamped_with};

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;
const END: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

fn options(cutoff_ms: Option<i64>) -> RunOptions {
    RunOptions {
        cutoff_ms,
        dry_run: false,
        now_ms: END + 4 * DAY,
        epoch_ms: HOUR,
        lease_ms: 10 * 60_000,
        window_ms: 5 * DAY,
        train: TrainOptions::default(),
        cleanup_grace: std::time::Duration::ZERO,
        run_lease: std::time::Duration::from_secs(60),
        keep_snapshots: 30,
        full: false,
        full_every_ms: 7 * DAY,
        engine: BatchEngine::Local,
    }
}

/// A run at `cutoff` (rounded down to an hour) without injected faults.
async fn run_at(lake: &Lake, store: &dyn OnlineStore, cutoff: i64) -> Result<Summary> {
    run(
        lake,
        store,
        &options(Some(cutoff)),
        &snapshot::NoFaults,
        &(),
    )
    .await
}

/// Fails before one step.
struct FailAt(Step);

impl Checkpoint for FailAt {
    fn before(&self, step: Step) -> Result<()> {
        if step == self.0 {
            Err(Error::Internal(format!("injected failure before {step:?}")))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn a_run_publishes_the_views_and_models_and_a_second_is_a_no_op() {
    let events = stamped_with(400, 16, 11);
    let lake = lake_of(&events).await;
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let cutoff = END + 2 * DAY;

    let s = run_at(&lake, &store, cutoff + 1).await.unwrap();
    assert_eq!(s.outcome, Outcome::Published);
    assert_eq!(s.snapshot, "20251124T0000Z");
    let pointer = store.pointer().await.unwrap().unwrap();
    assert_eq!(
        (pointer.snapshot.as_str(), pointer.cutoff_ms),
        ("20251124T0000Z", cutoff)
    );

    // What serving reads equals the plain-Rust recomputation over the same events.
    let mut before: Vec<_> = events
        .iter()
        .filter(|(_, st)| st.ingest_ts < cutoff)
        .collect();
    before.sort_by_key(|(_, st)| (st.ingest_ts, st.partition, st.offset));
    let (profiles, items) = recompute(before.into_iter().map(|(e, _)| e));
    assert_eq!(s.rows["profiles"], profiles.len() as u64);
    let keys: Vec<String> = profiles.keys().map(|u| user_key(u, &s.snapshot)).collect();
    for ((user, want), got) in profiles.iter().zip(store.get(&keys).await.unwrap()) {
        let row: UserRow = serde_json::from_slice(&got.unwrap()).unwrap();
        assert!(
            row.profile.approx_eq(want),
            "{user}: {:?} != {want:?}",
            row.profile
        );
        assert!(row.segment.is_some() && row.propensity.is_some());
    }
    let keys: Vec<String> = items.keys().map(|i| item_key(i, &s.snapshot)).collect();
    for ((item, want), got) in items.iter().zip(store.get(&keys).await.unwrap()) {
        let row: ItemRow = serde_json::from_slice(&got.unwrap()).unwrap();
        assert!(row.stats.approx_eq(want), "{item}");
    }
    let wide = store
        .get(&[
            snapshot_key(&s.snapshot, "popular"),
            snapshot_key(&s.snapshot, "models"),
            snapshot_key(&s.snapshot, "manifest"),
        ])
        .await
        .unwrap();
    let popular: PopularRow = serde_json::from_slice(wide[0].as_ref().unwrap()).unwrap();
    assert!(!popular.overall.is_empty() && !popular.by_category.is_empty());
    let models = Models::from_json(wide[1].as_ref().unwrap()).unwrap();
    let manifest: Manifest = serde_json::from_slice(wide[2].as_ref().unwrap()).unwrap();
    assert_eq!(manifest.cutoff_ms, cutoff);
    assert_eq!(
        manifest.models,
        ModelsEntry::Trained(models.metrics.clone())
    );
    assert_eq!(
        snapshots::manifest(&lake, &s.snapshot).await.unwrap(),
        Some(manifest.clone())
    );
    for f in ["profiles", "items", "similar_items", "segments"] {
        let rows: usize = snapshots::read_parquet(&lake, &s.snapshot, &format!("{f}.parquet"))
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows as u64, s.rows[f], "{f}");
    }

    // The same cutoff again: nothing recomputed, nothing rewritten.
    let again = run_at(&lake, &store, cutoff).await.unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyPublished);
    assert_eq!(
        snapshots::manifest(&lake, &s.snapshot).await.unwrap(),
        Some(manifest)
    );

    // An older cutoff is refused: its speed epochs are gone.
    let err = run_at(&lake, &store, cutoff - HOUR)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("before the published snapshot"), "{err}");

    // A dry run says what it would do and writes nothing.
    let mut dry = options(Some(cutoff + DAY));
    dry.dry_run = true;
    let d = run(&lake, &store, &dry, &snapshot::NoFaults, &())
        .await
        .unwrap();
    assert_eq!(
        (d.outcome, d.snapshot.as_str()),
        (Outcome::DryRun, "20251125T0000Z")
    );
    assert!(d.event_files > 0);
    assert_eq!(store.pointer().await.unwrap().unwrap().snapshot, s.snapshot);
    assert_eq!(
        snapshots::manifest(&lake, "20251125T0000Z").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn a_failure_at_any_step_leaves_what_serving_reads_untouched() {
    let events = stamped_with(150, 12, 3);
    let (c1, c2) = (END - DAY, END + DAY);
    let store = FaultyStore::default();
    let lake = lake_of(&events).await;
    let first = run_at(&lake, &store, c1).await.unwrap();
    // Speed epochs on both sides of the next cutoff.
    let speed: Vec<SpeedEvent<'static>> = [c2 - HOUR, c2]
        .iter()
        .enumerate()
        .map(|(i, epoch)| {
            let (mut e, _) = events[i].clone();
            e.user_id = "user-x".into();
            SpeedEvent {
                offset: i as u64,
                ingest_ts: *epoch,
                epoch_ms: *epoch,
                event: e,
            }
        })
        .collect();
    store.apply_events(&speed).await.unwrap();
    let speed_epochs = || async { store.speed("user-x", 0).await.unwrap().epochs.len() };
    let served = |keys: Vec<String>| {
        let store = &store;
        async move {
            store
                .get(&keys)
                .await
                .unwrap()
                .into_iter()
                .all(|v| v.is_some())
        }
    };
    let first_keys: Vec<String> = store
        .inner()
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.contains(&first.snapshot))
        .collect();
    assert!(first_keys.len() > 150);

    for step in Step::ALL {
        let err = run(&lake, &store, &options(Some(c2)), &FailAt(step), &())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("injected"), "{step:?}: {err}");
        let pointer = store.pointer().await.unwrap().unwrap();
        if step == Step::Cleanup {
            // Flipped already: serving reads the new snapshot, complete; the rest is garbage
            // that the next run removes.
            assert_eq!(pointer.cutoff_ms, c2);
            let new_keys: Vec<String> = store
                .inner()
                .keys()
                .unwrap()
                .into_iter()
                .filter(|k| k.contains("20251123"))
                .collect();
            assert!(served(new_keys).await);
        } else {
            assert_eq!(pointer.snapshot, first.snapshot, "{step:?}");
            assert!(
                served(first_keys.clone()).await,
                "{step:?}: a key of the served snapshot is gone"
            );
        }
        assert_eq!(
            speed_epochs().await,
            2,
            "{step:?}: speed epochs deleted early"
        );
    }

    // A store failing its writes during materialisation changes nothing served either.
    let fresh = FaultyStore::default();
    let a = run_at(&lake, &fresh, c1).await.unwrap();
    fresh.puts_left.store(0, Ordering::SeqCst);
    let err = run_at(&lake, &fresh, c2).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::External, "{err}");
    assert_eq!(fresh.pointer().await.unwrap().unwrap().snapshot, a.snapshot);

    // Once the failures stop, the run completes: the previous snapshot and the old epochs go.
    let done = run_at(&lake, &store, c2).await.unwrap();
    assert_eq!(
        done.outcome,
        Outcome::AlreadyPublished,
        "the cleanup-step failure had flipped"
    );
    assert!(
        store
            .inner()
            .keys()
            .unwrap()
            .iter()
            .all(|k| !k.contains(&first.snapshot))
    );
    let left = store.speed("user-x", 0).await.unwrap();
    assert_eq!(left.epochs.keys().copied().collect::<Vec<_>>(), vec![c2]);
}

#[tokio::test]
async fn a_snapshot_written_to_the_lake_is_published_without_recomputing() {
    let events = stamped_with(150, 12, 5);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let err = run(
        &lake,
        &store,
        &options(Some(END)),
        &FailAt(Step::Materialise),
        &(),
    )
    .await;
    assert!(err.is_err());
    assert_eq!(store.pointer().await.unwrap(), None);
    let s = run_at(&lake, &store, END).await.unwrap();
    assert_eq!(s.outcome, Outcome::Republished);
    assert!(!s.durations_s.contains_key("views"), "{:?}", s.durations_s);
    let fresh = MemoryStore::default();
    let f = run_at(&lake, &fresh, END).await.unwrap();
    assert_eq!(f.store_rows, s.store_rows);
    assert_eq!(store.keys().unwrap(), fresh.keys().unwrap());
}

#[tokio::test]
async fn a_cutoff_before_every_event_publishes_an_empty_snapshot() {
    let events = stamped_with(50, 4, 3);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let first = events.iter().map(|(_, st)| st.ingest_ts).min().unwrap();
    let s = run_at(&lake, &store, first - 2 * DAY).await.unwrap();
    assert_eq!((s.outcome, s.events), (Outcome::Published, 0), "{s:?}");
    assert!(s.rows.values().all(|n| *n == 0), "{:?}", s.rows);
    let popular = store
        .get(&[snapshot_key(&s.snapshot, "popular")])
        .await
        .unwrap();
    let popular: PopularRow = serde_json::from_slice(popular[0].as_ref().unwrap()).unwrap();
    assert!(popular.overall.is_empty());
}

/// A snapshot whose files were written before a user was erased and published by a later run
/// (the first stopped before materialising): the erased user's rows are left out — the
/// republish path used to materialise the files as they were.
#[tokio::test]
async fn a_user_erased_after_the_snapshot_was_computed_is_not_published() {
    let events = stamped_with(50, 4, 3);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let cutoff = END + 2 * DAY;
    let err = run(
        &lake,
        &store,
        &options(Some(cutoff)),
        &FailAt(Step::Materialise),
        &(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    let erased = events[0].0.user_id.to_string();
    let other = events
        .iter()
        .map(|(e, _)| e.user_id.to_string())
        .find(|u| *u != erased)
        .unwrap();
    lake.record_erasure(&tandem_common::lake::Tombstone {
        user_id: erased.clone(),
        erased_ms: cutoff + HOUR,
    })
    .await
    .unwrap();
    let s = run_at(&lake, &store, cutoff).await.unwrap();
    assert_eq!(s.outcome, Outcome::Republished);
    let rows = store
        .get(&[
            user_key(&erased, &s.snapshot),
            user_key(&other, &s.snapshot),
        ])
        .await
        .unwrap();
    assert!(rows[0].is_none(), "the erased user's row was published");
    assert!(rows[1].is_some());
}

/// Two runs at once: the second is refused while the first holds the lease (naming the
/// holder), and a run's cleanup spares the rows of a newer snapshot another run is writing (it
/// deleted every snapshot's rows but its own). The lease is given back at the end.
#[tokio::test]
async fn the_lake_keeps_the_newest_snapshots_and_the_one_served() {
    let events = stamped_with(50, 4, 3);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let keep = RunOptions {
        keep_snapshots: 2,
        ..options(None)
    };
    let mut ids = Vec::new();
    for day in 0..4 {
        let opts = RunOptions {
            cutoff_ms: Some(END + day * DAY),
            ..keep.clone()
        };
        let s = run(&lake, &store, &opts, &snapshot::NoFaults, &())
            .await
            .unwrap();
        assert_eq!(s.outcome, Outcome::Published, "{s:?}");
        ids.push(s.snapshot.clone());
        if day >= 2 {
            assert_eq!(s.pruned_snapshots, vec![ids[(day - 2) as usize].clone()]);
        }
    }
    let left: Vec<String> = snapshots::complete(&lake)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.snapshot)
        .collect();
    assert_eq!(left, ids[2..].to_vec());
    // Nothing of the deleted ones is left in the lake either.
    let prefix = lake.path(&format!(
        "{}/{}",
        tandem_common::lake::SNAPSHOTS_DIR,
        ids[0]
    ));
    let files = lake
        .store()
        .list_with_delimiter(Some(&prefix))
        .await
        .unwrap()
        .objects;
    assert!(files.is_empty(), "{files:?}");
    // The one the store serves is kept even past the count.
    let served = store.pointer().await.unwrap().unwrap().snapshot;
    let pruned = snapshots::prune(&lake, 1, &ids[2]).await.unwrap();
    assert!(pruned.is_empty(), "{pruned:?} (the served one is {served})");
}

#[tokio::test]
async fn overlapping_runs_are_refused_and_cleanup_spares_newer_snapshots() {
    use tandem_common::store::LeaseOp;
    let events = stamped_with(50, 4, 3);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let cutoff = END + 2 * DAY;
    let other = "another-run";
    let held = store
        .lease(BATCH_LEASE, LeaseOp::Take, other, 60_000)
        .await
        .unwrap();
    assert!(held.held);
    let err = run_at(&lake, &store, cutoff).await.unwrap_err();
    assert!(
        err.to_string().contains("holds the lease") && err.to_string().contains(other),
        "{err}"
    );
    assert_eq!(store.pointer().await.unwrap(), None, "nothing published");
    // A newer snapshot's rows, as a later run writes them, and an older snapshot's.
    let newer = tandem_common::lake::snapshot_id(cutoff + DAY);
    let older = tandem_common::lake::snapshot_id(cutoff - DAY);
    let rows: Vec<(String, Bytes)> = [&newer, &older]
        .iter()
        .map(|id| (user_key("someone", id), Bytes::from_static(b"{}")))
        .collect();
    store.put(&rows).await.unwrap();
    store
        .lease(BATCH_LEASE, LeaseOp::Release, other, 60_000)
        .await
        .unwrap();
    let s = run_at(&lake, &store, cutoff).await.unwrap();
    assert_eq!(s.outcome, Outcome::Published);
    let left = store
        .get(&[user_key("someone", &newer), user_key("someone", &older)])
        .await
        .unwrap();
    assert!(left[0].is_some(), "the newer snapshot's row was deleted");
    assert!(left[1].is_none(), "the older snapshot's row is left");
    let after = store
        .lease(BATCH_LEASE, LeaseOp::Take, other, 60_000)
        .await
        .unwrap();
    assert!(after.held, "the run released its lease: {after:?}");
}

/// Loads JSON lines into the lake as `tandem ingest` does (hour epochs): the events accepted.
async fn ingest_jsonl(lake: &Lake, jsonl: Vec<u8>) -> u64 {
    use tandem_common::ingest::{IngestOptions, InputFormat, Quiet, ingest};
    let config = tandem_common::config::Config::defaults();
    let mut opts = IngestOptions::from_config(&config, InputFormat::Jsonl);
    opts.epoch_ms = HOUR;
    let input = Box::new(std::io::Cursor::new(jsonl));
    let summary = ingest(lake, input, opts, &mut Quiet).await.unwrap();
    summary.accepted
}

/// History loaded in bulk is in the next batch run at once, not an epoch later: a load is
/// stamped into the epoch already closed, below the cutoff a run can pick as soon as it ends.
/// A second load below that cutoff makes the next run publish the next revision at the same
/// cutoff, with both loads in it; a third run has nothing new to do.
#[tokio::test]
async fn a_history_just_loaded_is_in_the_next_batch() {
    use tandem_testkit::generate::{GenerateOptions, Generator};
    let lake = Lake::open("memory://").unwrap();
    let store = MemoryStore::default();
    let load = |seed: u64| {
        let lake = lake.clone();
        async move {
            let now = tandem_common::event::now_ms();
            let mut g = Generator::new(GenerateOptions::new(120, 10, seed, now - DAY)).unwrap();
            let mut jsonl = Vec::new();
            while g.next_json(&mut jsonl) {}
            (g, ingest_jsonl(&lake, jsonl).await)
        }
    };
    let now_options = || RunOptions {
        now_ms: tandem_common::event::now_ms(),
        ..options(None)
    };
    let (_, first) = load(1).await;
    let s = run(&lake, &store, &now_options(), &snapshot::NoFaults, &())
        .await
        .unwrap();
    assert_eq!(s.outcome, Outcome::Published);
    assert_eq!(s.events, first, "the load is in the run right after it");
    let cutoff = store.pointer().await.unwrap().unwrap().cutoff_ms;

    let (_, second) = load(2).await;
    let s = run(&lake, &store, &now_options(), &snapshot::NoFaults, &())
        .await
        .unwrap();
    let pointer = store.pointer().await.unwrap().unwrap();
    if pointer.cutoff_ms == cutoff {
        // Same epoch (the usual case): the next revision at the same cutoff.
        assert_eq!(s.outcome, Outcome::Published);
        assert_eq!(
            s.snapshot,
            format!("{}-r2", tandem_common::lake::snapshot_id(cutoff))
        );
    }
    assert_eq!(s.events, first + second, "both loads are in it");
    let again = run(&lake, &store, &now_options(), &snapshot::NoFaults, &())
        .await
        .unwrap();
    assert_eq!(again.outcome, Outcome::AlreadyPublished);
    assert_eq!(again.snapshot, s.snapshot);
}

/// Events from 1970, 2000 and now, bulk-loaded: every user's snapshot row is finite and equal
/// to the recomputation, interests order by log score whatever their age (the newest category
/// first, whatever the weights), and the items' popularity is finite too.
#[tokio::test]
async fn events_from_1970_2000_and_now_are_scored() {
    use tandem_common::event::{Event, Kind, now_ms};
    let lake = Lake::open("memory://").unwrap();
    let store = MemoryStore::default();
    let now = now_ms() - HOUR;
    const Y2000: i64 = 946_684_800_000;
    let times = [1_000, 1_000 + DAY, Y2000, Y2000 + DAY, now - DAY, now];
    let mut events = Vec::new();
    for u in 0..6 {
        for (k, ts) in times.iter().enumerate() {
            // Each user's categories by age: "old" in 1970, "mid" in 2000, "new" now.
            let category = ["old", "old", "mid", "mid", "new", "new"][k];
            let kind = if (k + u) % 2 == 0 {
                Kind::Purchase
            } else {
                Kind::View
            };
            events.push(Event {
                event_id: format!("e{u}-{k}").into(),
                user_id: format!("u{u}").into(),
                kind,
                item_id: Some(format!("i{}", (u + k) % 4).into()),
                category: Some(category.into()),
                price: (kind == Kind::Purchase).then_some(3.5),
                quantity: 1,
                rating: None,
                query: None,
                ts: *ts,
                session_id: None,
                props: None,
            });
        }
    }
    let jsonl: Vec<u8> = events
        .iter()
        .flat_map(|e| format!("{}\n", e.to_json()).into_bytes())
        .collect();
    assert_eq!(ingest_jsonl(&lake, jsonl).await, events.len() as u64);
    let run_opts = RunOptions {
        now_ms: now_ms(),
        ..options(None)
    };
    let s = run(&lake, &store, &run_opts, &snapshot::NoFaults, &())
        .await
        .unwrap();
    assert_eq!(
        (s.outcome, s.events),
        (Outcome::Published, events.len() as u64),
        "{s:?}"
    );
    let (want, want_items) = recompute(events.iter());
    for (user, want) in &want {
        let row = store.get(&[user_key(user, &s.snapshot)]).await.unwrap();
        let row: UserRow = serde_json::from_slice(row[0].as_ref().expect(user)).unwrap();
        let p = &row.profile;
        assert!(p.approx_eq(want), "{user}:\n got {p:?}\nwant {want:?}");
        assert_eq!(p.affinity.len(), 3, "{user}: {:?}", p.affinity);
        assert!(p.affinity.values().all(|v| v.is_finite()), "{p:?}");
        let mut order: Vec<(&String, &f64)> = p.affinity.iter().collect();
        order.sort_by(|a, b| b.1.total_cmp(a.1));
        let order: Vec<&str> = order.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(order, ["new", "mid", "old"], "{user}: {:?}", p.affinity);
    }
    for (item, want) in &want_items {
        let row = store.get(&[item_key(item, &s.snapshot)]).await.unwrap();
        let row: ItemRow = serde_json::from_slice(row[0].as_ref().expect(item)).unwrap();
        assert!(row.stats.popularity.is_finite(), "{item}: {:?}", row.stats);
        assert!(
            row.stats.approx_eq(want),
            "{item}: {:?} vs {want:?}",
            row.stats
        );
    }
}

/// One popular list per category, up to MAX_POPULAR_CATEGORIES: those whose best item is the
/// most popular (a snapshot of 60,000 categories took serve from 130 to 205 MiB).
#[test]
fn popular_lists_are_kept_for_the_most_popular_categories_only() {
    let n = MAX_POPULAR_CATEGORIES + 500;
    let items: BTreeMap<String, ItemStats> = (0..n)
        .map(|i| {
            let stats = ItemStats {
                popularity: i as f64,
                category: Some((format!("c{i:05}"), 0)),
                ..ItemStats::default()
            };
            (format!("i{i:05}"), stats)
        })
        .collect();
    let row = popular_row(&items);
    assert_eq!(row.by_category.len(), MAX_POPULAR_CATEGORIES);
    assert!(row.by_category.contains_key(&format!("c{:05}", n - 1)));
    assert!(!row.by_category.contains_key("c00000"));
    assert_eq!(
        row.by_category.keys().next().unwrap(),
        &format!("c{:05}", 500)
    );
}

/// Every key of snapshot `id` that serving reads is in `store`: each profile's row, each item's
/// row, the popular lists and the manifest.
async fn assert_whole(store: &dyn OnlineStore, id: &str, users: &[String], items: &[String]) {
    let keys: Vec<String> = users
        .iter()
        .map(|u| user_key(u, id))
        .chain(items.iter().map(|i| item_key(i, id)))
        .chain([snapshot_key(id, "popular"), snapshot_key(id, "manifest")])
        .collect();
    let got = store.get(&keys).await.unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .zip(&got)
        .filter(|(_, v)| v.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "{} keys of {id} missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
}

/// A Redis restarted without persistence while a run writes the snapshot's rows: the run sees
/// its lease gone with them, takes it again, writes the rows again and only then moves the
/// pointer — it never names a snapshot whose rows are not all there (before: the pointer named
/// a snapshot whose first rows were gone, and their users' profiles were blank). Later, the
/// store losing everything after a publish: `restore` publishes the same snapshot again from the
/// lake, and does nothing once the store holds it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_during_materialise_gets_the_whole_snapshot_and_restore_brings_it_back() {
    let events = stamped_with(400, 16, 11);
    let lake = lake_of(&events).await;
    let cutoff = END + 2 * DAY;
    let (profiles, items) = recompute(
        events
            .iter()
            .filter(|(_, st)| st.ingest_ts < cutoff)
            .map(|(e, _)| e),
    );
    let users: Vec<String> = profiles.keys().cloned().collect();
    let items: Vec<String> = items.keys().cloned().collect();
    let store = RestartingRedis::new(RedisServer::start(), RestartAfter::Put(1)).await;
    let s = run_at(&lake, &store, cutoff).await.unwrap();
    assert_eq!(s.outcome, Outcome::Published);
    assert!(store.puts() > 1, "restarted, written again");
    assert_eq!(store.pointer().await.unwrap().unwrap().snapshot, s.snapshot);
    assert_whole(&store, &s.snapshot, &users, &items).await;
    let lease = store
        .lease(BATCH_LEASE, tandem_common::store::LeaseOp::Renew, "x", 1000)
        .await
        .unwrap();
    assert_eq!(lease.holder, None, "the lease is released");

    // The store loses everything after the publish.
    store.restart();
    // The first call after a restart finds the connection gone (and reconnects).
    let _ = store.pointer().await;
    assert_eq!(store.pointer().await.unwrap(), None);
    let r = restore(&lake, &store, &options(None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.outcome, r.snapshot.as_str()),
        (Outcome::Republished, s.snapshot.as_str())
    );
    assert_eq!(store.pointer().await.unwrap().unwrap().snapshot, s.snapshot);
    assert_whole(&store, &s.snapshot, &users, &items).await;
    assert!(
        restore(&lake, &store, &options(None))
            .await
            .unwrap()
            .is_none(),
        "whole: nothing to do"
    );
    // The pointer left, the rows gone: written again.
    tandem_testkit::cli(
        store.port(),
        &["DEL", &snapshot_key(&s.snapshot, "manifest")],
    );
    let again = restore(&lake, &store, &options(None))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.outcome, Outcome::Republished);
    assert_whole(&store, &s.snapshot, &users, &items).await;
}

/// A user with interests in 300 categories: the snapshot's row keeps the 256 strongest
/// ([`MAX_INTERESTS`]), exactly those of the recomputation; every other user's row is whole.
#[tokio::test]
async fn a_user_row_keeps_the_strongest_interests() {
    use tandem_common::features::MAX_INTERESTS;
    let mut events = stamped_with(120, 8, 5);
    let (template, stamp) = events
        .iter()
        .find(|(e, _)| e.category.is_some())
        .cloned()
        .unwrap();
    for i in 0..300i64 {
        let mut e = template.clone();
        e.event_id = format!("wide-{i}").into();
        e.user_id = "wide".into();
        e.category = Some(format!("cat-{i:03}").into());
        // Later events weigh more: the strongest are the latest categories.
        e.ts = END - 3 * DAY + i * 60_000;
        let st = Stamp {
            ingest_ts: e.ts + 1000,
            offset: stamp.offset.map(|o| o + 1_000_000 + i),
            ..stamp
        };
        events.push((e, st));
    }
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let cutoff = END;
    let s = run_at(&lake, &store, cutoff).await.unwrap();
    let (want, _) = recompute(
        events
            .iter()
            .filter(|(_, st)| st.ingest_ts < cutoff)
            .map(|(e, _)| e),
    );
    for (user, full) in &want {
        let row = store.get(&[user_key(user, &s.snapshot)]).await.unwrap();
        let row: UserRow = serde_json::from_slice(row[0].as_ref().unwrap()).unwrap();
        let mut capped = full.clone();
        capped.keep_strongest_interests(MAX_INTERESTS);
        assert!(row.profile.approx_eq(&capped), "{user}");
        if user == "wide" {
            assert_eq!(full.affinity.len(), 300);
            assert_eq!(row.profile.affinity.len(), MAX_INTERESTS);
            assert!(
                row.profile.affinity.contains_key("cat-299")
                    && !row.profile.affinity.contains_key("cat-000")
            );
        } else {
            assert_eq!(row.profile.affinity.len(), full.affinity.len(), "{user}");
        }
    }
}
