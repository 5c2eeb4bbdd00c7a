//! An incremental run equals the full run at the same cutoff, row for row.

use proptest::prelude::*;
use tandem_common::lake::Tombstone;
use tandem_common::schema::Stamp;
use tandem_common::store::MemoryStore;

use super::*;
use crate::views::tests::{lake_of, stamped_with};

const HOUR: i64 = 3_600_000;
pub(crate) const DAY: i64 = 24 * HOUR;
pub(crate) const END: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

pub(crate) fn options(cutoff: i64, full: bool) -> RunOptions {
    RunOptions {
        cutoff_ms: Some(cutoff),
        dry_run: false,
        now_ms: END + 10 * DAY,
        epoch_ms: HOUR,
        lease_ms: 10 * 60_000,
        window_ms: 2 * DAY,
        train: TrainOptions::default(),
        cleanup_grace: std::time::Duration::ZERO,
        run_lease: std::time::Duration::from_secs(60),
        keep_snapshots: 30,
        full,
        full_every_ms: 30 * DAY,
        engine: BatchEngine::Local,
    }
}

/// A run at `cutoff` (a full one on request) that must succeed.
async fn run_to(lake: &Lake, store: &dyn OnlineStore, cutoff: i64, full: bool) -> Summary {
    run(
        lake,
        store,
        &options(cutoff, full),
        &snapshot::NoFaults,
        &(),
    )
    .await
    .unwrap()
}

/// The baskets of snapshot `id`: whether each is a user's, and its items with their latest
/// times (a user's; what the next merge keeps the latest items by), in item order.
async fn baskets(lake: &Lake, id: &str) -> BTreeMap<String, (bool, Vec<(String, Option<i64>)>)> {
    let batches = snapshots::read_parquet(lake, id, "baskets.parquet")
        .await
        .unwrap();
    baskets_by_key(&batches)
        .unwrap()
        .into_iter()
        .map(|(k, b)| {
            let ts: Vec<Option<i64>> = match b.last_ts {
                Some(ts) => ts.into_iter().map(Some).collect(),
                None => vec![None; b.items.len()],
            };
            let mut items: Vec<(String, Option<i64>)> = b.items.into_iter().zip(ts).collect();
            items.sort();
            (k, (b.by_user, items))
        })
        .collect()
}

/// Asserts that the snapshots `a` (of `la`) and `b` (of `lb`) hold the same views.
pub(crate) async fn assert_same_views(la: &Lake, a: &str, lb: &Lake, b: &str) {
    let ma = snapshots::manifest(la, a).await.unwrap().unwrap();
    let mb = snapshots::manifest(lb, b).await.unwrap().unwrap();
    let (ca, cb) = (load(la, &ma).await.unwrap(), load(lb, &mb).await.unwrap());
    assert_eq!((ma.events, ma.set_aside), (mb.events, mb.set_aside), "{a}");
    assert_eq!(ma.rows, mb.rows, "{a}");
    assert_eq!(
        ca.profiles.keys().collect::<Vec<_>>(),
        cb.profiles.keys().collect::<Vec<_>>(),
        "{a}: users"
    );
    for (user, p) in &ca.profiles {
        assert!(
            p.approx_eq(&cb.profiles[user]),
            "{a}: {user}: {p:?} != {:?}",
            cb.profiles[user]
        );
    }
    assert_eq!(ca.user_items, cb.user_items, "{a}: histories");
    assert_eq!(
        ca.items.keys().collect::<Vec<_>>(),
        cb.items.keys().collect::<Vec<_>>(),
        "{a}: items"
    );
    for (item, s) in &ca.items {
        assert!(
            s.approx_eq(&cb.items[item]),
            "{a}: {item}: {s:?} != {:?}",
            cb.items[item]
        );
    }
    assert_eq!(ca.similar, cb.similar, "{a}: similar items");
    assert_eq!(baskets(la, a).await, baskets(lb, b).await, "{a}: baskets");
    // The derived columns as the views compute them.
    let pa = snapshots::read_parquet(la, a, "profiles.parquet")
        .await
        .unwrap();
    let pb = snapshots::read_parquet(lb, b, "profiles.parquet")
        .await
        .unwrap();
    assert_eq!(pa[0].schema(), pb[0].schema(), "{a}: the profiles' columns");
    let derived = |batches: &[RecordBatch]| -> BTreeMap<String, (f64, i64, f64)> {
        let mut out = BTreeMap::new();
        for b in batches {
            let users = cast(b.column_by_name("user_id").unwrap(), &DataType::Utf8).unwrap();
            let users = users.as_string::<i32>();
            let recency = b
                .column_by_name("recency_days")
                .unwrap()
                .as_primitive::<Float64Type>();
            let frequency = cast(b.column_by_name("frequency").unwrap(), &DataType::Int64).unwrap();
            let frequency = frequency.as_primitive::<Int64Type>();
            let monetary = b
                .column_by_name("monetary")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                out.insert(
                    users.value(i).to_string(),
                    (recency.value(i), frequency.value(i), monetary.value(i)),
                );
            }
        }
        out
    };
    assert_eq!(
        derived(&pa),
        derived(&pb),
        "{a}: recency, frequency, monetary"
    );
}

/// Asserts that the store holds what snapshot `id`'s files in the lake hold (the rows are
/// published from them): every user's profile, segment and propensity, and latest items; none
/// of a user erased at or after the cutoff.
pub(crate) async fn assert_published(lake: &Lake, store: &dyn OnlineStore, id: &str) {
    use tandem_common::features::MAX_INTERESTS;
    use tandem_common::store::{UserRow, history_key, user_key};
    let m = snapshots::manifest(lake, id).await.unwrap().unwrap();
    let l = load(lake, &m).await.unwrap();
    assert!(
        l.scores.is_empty() || l.scores.len() == l.profiles.len(),
        "{id}: every user scored, or none"
    );
    let erased = lake.erasures().await.unwrap();
    for (user, p) in &l.profiles {
        let got = store
            .get(&[user_key(user, id), history_key(user, id)])
            .await
            .unwrap();
        let Some(row) = &got[0] else {
            assert!(
                erased.get(user).is_some_and(|at| *at >= m.cutoff_ms),
                "{id}: {user} has no row"
            );
            continue;
        };
        let row: UserRow = serde_json::from_slice(row).unwrap();
        let mut p = p.clone();
        p.keep_strongest_interests(MAX_INTERESTS);
        assert!(row.profile.approx_eq(&p), "{id}: {user}");
        assert_eq!(
            (row.segment, row.propensity),
            l.scores.get(user).copied().unwrap_or((None, None)),
            "{id}: {user}"
        );
        let items: Option<Vec<String>> =
            got[1].as_ref().map(|b| serde_json::from_slice(b).unwrap());
        assert_eq!(items.as_ref(), l.user_items.get(user), "{id}: {user}");
    }
}

/// One history: generated events (5% sent twice, 5% ingested hours late), some sent again
/// days later (a client retrying after a crash: another date folder), an erasure perhaps; and
/// cutoffs hours to days apart.
async fn check(seed: u64, resent: usize, erase_at: Option<i64>, steps: Vec<i64>) {
    let mut events = stamped_with(60, 6, seed);
    let n = events.len();
    for k in 0..resent.min(n) {
        let (e, st) = events[(k * 7919 + seed as usize) % n].clone();
        let later = Stamp {
            ingest_ts: st.ingest_ts + 2 * DAY + (k as i64) * HOUR,
            partition: Some(9),
            offset: Some(1_000_000 + k as i64),
        };
        events.push((e, later));
    }
    // The incremental chain and the full runs, each in a lake of its own (a full run's
    // snapshot would otherwise be the next incremental run's base).
    let (inc_lake, full_lake) = (lake_of(&events).await, lake_of(&events).await);
    if let Some(at) = erase_at {
        let t = Tombstone {
            user_id: events[0].0.user_id.to_string(),
            erased_ms: at,
        };
        for lake in [&inc_lake, &full_lake] {
            lake.record_erasure(&t).await.unwrap();
        }
    }
    let (inc_store, full_store) = (MemoryStore::default(), MemoryStore::default());
    let mut cutoff = END - 3 * DAY;
    for (i, step) in steps.into_iter().enumerate() {
        cutoff += step;
        let inc = run_to(&inc_lake, &inc_store, cutoff, false).await;
        let full = run_to(&full_lake, &full_store, cutoff, true).await;
        assert_eq!(full.full_reason.as_deref(), Some("--full"));
        let prev = cutoff - step;
        let erased_between = erase_at.is_some_and(|at| i > 0 && at >= prev);
        match (i, erased_between) {
            (0, _) => assert!(inc.merged_from.is_none(), "{inc:?}"),
            (_, true) => assert!(
                inc.full_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("erased")),
                "{inc:?}"
            ),
            (_, false) => assert!(inc.merged_from.is_some(), "{inc:?}"),
        }
        assert_same_views(&inc_lake, &inc.snapshot, &full_lake, &full.snapshot).await;
        assert_published(&inc_lake, &inc_store, &inc.snapshot).await;
        assert_published(&full_lake, &full_store, &full.snapshot).await;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5, ..ProptestConfig::default() })]

    /// At every cutoff of a random history — duplicates, late events, ids sent again days
    /// later, an erasure — the snapshot merged from the previous one equals the one recomputed
    /// from the whole lake: every profile, history, item, similar-items list and basket.
    #[test]
    fn an_incremental_snapshot_equals_the_full_one_at_every_cutoff(
        seed in 1u64..1_000,
        resent in 0usize..40,
        erase in proptest::option::of(0i64..8 * DAY),
        steps in proptest::collection::vec(1i64..60, 2..5),
    ) {
        let steps: Vec<i64> = steps.into_iter().map(|h| h * HOUR).collect();
        let erase_at = erase.map(|d| END - 3 * DAY + d);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(seed, resent, erase_at, steps));
    }
}

/// A Redis that restarts without persistence while an incremental run publishes: the base's rows
/// are gone with everything else, so the latest items the run would have copied from them are
/// written from the lake when the run writes its snapshot again; the store ends up holding
/// every row of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_run_whose_store_restarts_while_it_publishes_writes_what_it_copied() {
    use tandem_testkit::{RedisServer, RestartAfter, RestartingRedis};
    let events = stamped_with(60, 6, 3);
    let lake = lake_of(&events).await;
    // The base's publish is one write of rows (fewer than a chunk); the restart comes right
    // after the incremental run's first.
    let store = RestartingRedis::new(RedisServer::start(), RestartAfter::Put(2)).await;
    let base = run_to(&lake, &store, END - DAY, false).await;
    assert_eq!(store.puts(), 1, "the base's rows in one write");
    let s = run_to(&lake, &store, END - DAY + 6 * HOUR, false).await;
    assert_eq!(
        s.merged_from.as_deref(),
        Some(base.snapshot.as_str()),
        "{s:?}"
    );
    assert!(store.puts() > 2, "restarted, written again");
    assert_eq!(store.pointer().await.unwrap().unwrap().snapshot, s.snapshot);
    assert_published(&lake, &store, &s.snapshot).await;
}

#[tokio::test]
async fn a_run_is_full_on_request_on_schedule_and_after_a_bulk_load() {
    let events = stamped_with(40, 4, 5);
    let lake = lake_of(&events).await;
    let store = MemoryStore::default();
    let s = run_to(&lake, &store, END, false).await;
    assert_eq!(
        s.full_reason.as_deref(),
        Some("no earlier snapshot in the lake")
    );
    let s = run_to(&lake, &store, END + HOUR, true).await;
    assert_eq!(s.full_reason.as_deref(), Some("--full"));
    let first = s.snapshot;
    let s = run_to(&lake, &store, END + 2 * HOUR, false).await;
    assert_eq!(s.merged_from.as_deref(), Some(first.as_str()), "{s:?}");
    let m = snapshots::manifest(&lake, &s.snapshot)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.merged_from.as_deref(), Some(first.as_str()));
    assert_eq!(m.full_cutoff_ms, Some(END + HOUR));
    assert_eq!(m.state_version, STATE_VERSION);
    // The models are those of the full run.
    let base = snapshots::manifest(&lake, &first).await.unwrap().unwrap();
    assert_eq!(m.models, base.models);
    // On schedule: the full run is `full_every` old.
    let every = RunOptions {
        full_every_ms: 3 * HOUR,
        ..options(END + 4 * HOUR, false)
    };
    let s = run(&lake, &store, &every, &snapshot::NoFaults, &())
        .await
        .unwrap();
    let why = s.full_reason.unwrap();
    assert!(why.contains("batch.full_every"), "{why}");
    // A snapshot of an older version (no mergeable state) is not merged from.
    let mut old = snapshots::manifest(&lake, &s.snapshot)
        .await
        .unwrap()
        .unwrap();
    old.state_version = 0;
    snapshot::put_file(
        &lake,
        &s.snapshot,
        "manifest.json",
        Bytes::from(serde_json::to_vec(&old).unwrap()),
    )
    .await
    .unwrap();
    let s = run_to(&lake, &store, END + 5 * HOUR, false).await;
    let why = s.full_reason.unwrap();
    assert!(why.contains("no mergeable state"), "{why}");
    // History loaded in bulk below the previous cutoff since it was made.
    let s = run_to(&lake, &store, END + 6 * HOUR, false).await;
    assert!(s.merged_from.is_some(), "{s:?}");
    tandem_common::lake::IngestRun::start(&lake, "a-late-load", END + 7 * HOUR, END - DAY)
        .await
        .unwrap();
    let s = run_to(&lake, &store, END + 7 * HOUR, false).await;
    let why = s.full_reason.unwrap();
    assert!(why.contains("history was loaded"), "{why}");
}
