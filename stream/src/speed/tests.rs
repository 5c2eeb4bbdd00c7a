//! The speed layer against the plain model: `merge(snapshot(C), speed(≥ C)) == recompute(all)`
//! (ARCHITECTURE.md §3), on the memory store, on a real `redis-server` and on a real Redis Cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use proptest::prelude::*;
use tandem_common::event::{Event, Kind, to_bus_value};
use tandem_common::features::{Profile, recompute};
use tandem_common::store::{MemoryStore, OnlineStore, RedisStore};
use tandem_testkit::{RedisCluster, RedisServer, RestartAfter, RestartingRedis};

use super::*;
use crate::bus::local::LocalBus;

const H: i64 = 3_600_000;
const T0: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

/// One event as the bus carries it, with its ingest time.
#[derive(Debug, Clone)]
struct Sent {
    event: Event<'static>,
    ingest_ts: i64,
}

fn bus(dir: &std::path::Path, partitions: u32) -> Arc<dyn Bus> {
    Arc::new(LocalBus::open(dir, partitions, false, 1 << 16).unwrap())
}

async fn produce(bus: &dyn Bus, sent: &[Sent]) {
    let records = sent
        .iter()
        .map(|s| {
            (
                Bytes::from(s.event.user_id.to_string()),
                Bytes::from(to_bus_value(&s.event, s.ingest_ts)),
            )
        })
        .collect();
    bus.produce(records).await.unwrap();
}

async fn consume(bus: &Arc<dyn Bus>, store: &Arc<dyn OnlineStore>, batch: usize) -> SpeedSummary {
    let opts = SpeedOptions {
        batch,
        epoch_ms: H,
        until_caught_up: true,
        wait: Duration::ZERO,
        ..SpeedOptions::default()
    };
    run(bus.clone(), store.clone(), opts, CancellationToken::new())
        .await
        .unwrap()
}

/// The merged profile of every user: snapshot at `cutoff` (the plain recomputation over the
/// events ingested before it, which the batch layer's tests hold equal to its SQL) plus the
/// speed epochs at or after it.
async fn merged(store: &dyn OnlineStore, sent: &[Sent], cutoff: i64) -> BTreeMap<String, Profile> {
    let before: Vec<&Event<'_>> = sent
        .iter()
        .filter(|s| s.ingest_ts < cutoff)
        .map(|s| &s.event)
        .collect();
    let (mut profiles, _) = recompute(before);
    store.drop_epochs_before(cutoff).await.unwrap();
    let users: std::collections::BTreeSet<String> =
        sent.iter().map(|s| s.event.user_id.to_string()).collect();
    for u in users {
        let speed = store.speed(&u, cutoff).await.unwrap();
        assert!(
            speed.epochs.keys().all(|e| *e >= cutoff),
            "epochs below the cutoff were dropped"
        );
        let p = profiles.entry(u).or_default();
        p.merge(&speed.merged());
    }
    profiles.retain(|_, p| p.events() > 0);
    profiles
}

fn assert_same(got: &BTreeMap<String, Profile>, sent: &[Sent], what: &str) {
    let (want, _) = recompute(sent.iter().map(|s| &s.event));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: users"
    );
    for (u, p) in &want {
        assert!(
            got[u].approx_eq(p),
            "{what}: user {u}\nmerged:     {:?}\nrecomputed: {p:?}",
            got[u]
        );
    }
}

fn event(i: usize, user: u8, kind: usize, item: u8, ts: i64) -> Event<'static> {
    let kind = Kind::ALL[kind % Kind::ALL.len()];
    Event {
        event_id: format!("e{i}").into(),
        user_id: format!("user-{user}").into(),
        kind,
        item_id: (kind != Kind::Search).then(|| format!("item-{item}").into()),
        category: (!item.is_multiple_of(4)).then(|| format!("cat-{}", item % 3).into()),
        price: (kind == Kind::Purchase).then_some(item as f64 * 0.75),
        quantity: 1 + (item % 2) as u32,
        rating: (kind == Kind::Rate).then_some(3.5),
        query: (kind == Kind::Search).then(|| "socks".into()),
        ts,
        session_id: None,
        props: None,
    }
}

/// One step of a stream's life.
#[derive(Debug, Clone)]
enum Step {
    /// A new event: user, kind, item, how late its event time is, time since the last send.
    Send(u8, usize, u8, i64, i64),
    /// A retried producer sends the event `back` sends ago again, `gap` ms later.
    Retry(usize, i64),
    /// The speed layer runs until caught up, then its stored position goes back `rewind`
    /// records on a partition (a crash after applying, before storing the position).
    Consume(u64, u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..6, 0usize..7, 0u8..30, 0i64..3 * 86_400_000, 0i64..25 * 60_000)
            .prop_map(|(u, k, i, late, gap)| Step::Send(u, k, i, late, gap)),
        2 => (1usize..12, 0i64..60_000).prop_map(|(b, g)| Step::Retry(b, g)),
        1 => (0u64..6, 0u32..2).prop_map(|(r, p)| Step::Consume(r, p)),
    ]
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

/// Plays `steps` through a real bus and the speed layer into `store`, then checks the merge at
/// `cutoff_epochs` epochs after the start.
async fn play(store: Arc<dyn OnlineStore>, steps: &[Step], cutoff_epochs: i64, batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let mut sent: Vec<Sent> = Vec::new();
    let mut clock = T0;
    for (i, s) in steps.iter().enumerate() {
        match s {
            Step::Send(user, kind, item, late, gap) => {
                clock += gap;
                let s = Sent {
                    event: event(i, *user, *kind, *item, clock - late),
                    ingest_ts: clock,
                };
                produce(bus.as_ref(), std::slice::from_ref(&s)).await;
                sent.push(s);
            }
            Step::Retry(back, gap) => {
                let Some(orig) = sent.len().checked_sub(*back).map(|k| sent[k].clone()) else {
                    continue;
                };
                clock += gap;
                let s = Sent {
                    ingest_ts: clock,
                    ..orig
                };
                produce(bus.as_ref(), std::slice::from_ref(&s)).await;
                sent.push(s);
            }
            Step::Consume(rewind, p) => {
                consume(&bus, &store, batch).await;
                let at = bus.committed("speed", *p).await.unwrap().unwrap_or(0);
                bus.commit("speed", *p, at.saturating_sub(*rewind))
                    .await
                    .unwrap();
            }
        }
    }
    consume(&bus, &store, batch).await;
    let cutoff = T0 + cutoff_epochs * H;
    let got = merged(store.as_ref(), &sent, cutoff).await;
    assert_same(&got, &sent, &format!("cutoff at epoch {cutoff_epochs}"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The exact merge on the memory store: duplicates, late events, replays from old offsets,
    /// restarts and any cutoff.
    #[test]
    fn merge_equals_recompute_memory(
        steps in proptest::collection::vec(step(), 1..80),
        cutoff in 0i64..12,
        batch in 1usize..9,
    ) {
        runtime().block_on(play(Arc::new(MemoryStore::default()), &steps, cutoff, batch));
    }
}

/// Runs `cases` random cases of the exact merge on the Redis at `url`, flushing it with `flush`
/// before each. A plain runner rather than `proptest!`, so that the test owns its servers and
/// stops them when it ends.
fn merge_on_redis(url: &str, cases: u32, flush: impl Fn()) {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let input = (
        proptest::collection::vec(step(), 1..80),
        0i64..12,
        1usize..9,
    );
    let result = runner.run(&input, |(steps, cutoff, batch)| {
        flush();
        runtime().block_on(async {
            let store = RedisStore::connect(url).await.unwrap();
            play(Arc::new(store), &steps, cutoff, batch).await;
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The same on a real Redis: the Lua functions keep what the memory store keeps.
#[test]
fn merge_equals_recompute_redis() {
    let server = RedisServer::start();
    merge_on_redis(&server.url(), 24, || {
        tandem_testkit::cli(server.port(), &["FLUSHALL"]);
    });
}

/// And on a Redis Cluster, where each user's events go in a call of their own.
#[test]
fn merge_equals_recompute_redis_cluster() {
    let cluster = RedisCluster::start();
    merge_on_redis(&cluster.url(), 8, || cluster.flush());
}

#[tokio::test]
async fn invalid_records_are_skipped_and_counted_and_positions_stored() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 1);
    let good = Sent {
        event: event(1, 1, 0, 3, T0),
        ingest_ts: T0 + 5,
    };
    produce(bus.as_ref(), std::slice::from_ref(&good)).await;
    bus.produce(vec![
        (Bytes::from("user-1"), Bytes::from("not json")),
        (
            Bytes::from("user-1"),
            Bytes::from(r#"{"ingest_ts":1,"event":{"event_id":"x"}}"#),
        ),
    ])
    .await
    .unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(MemoryStore::default());
    let s = consume(&bus, &store, 2).await;
    assert_eq!((s.counts.applied, s.invalid, s.batches), (1, 2, 2));
    assert_eq!(bus.committed("speed", 0).await.unwrap(), Some(3));
    let again = consume(&bus, &store, 2).await;
    assert_eq!(
        again.counts.applied + again.invalid,
        0,
        "nothing read twice"
    );
    let speed = store.speed("user-1", 0).await.unwrap();
    assert_eq!(speed.offset, Some(0));
    assert_eq!(speed.epochs.keys().copied().collect::<Vec<_>>(), vec![T0]);
}

/// Data Redis refuses — here a key of the user's that holds the wrong type, as another tool
/// might leave it — no longer stalls the partition (every Redis error was retried, forever):
/// the refused user's events go to the dead-letter with the reason, the other users' events of
/// the same batches are applied, the position moves on. Once the cause is fixed, a replay
/// brings the events back and they count once. A bus record that is not an event is set
/// aside too. An `OOM` (a full Redis with `noeviction`) is not the data's fault: it is
/// retried until memory is freed, and nothing is set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_users_go_to_the_dead_letter_and_the_partition_moves_on() {
    use crate::dead_letter::{list, replay};
    let server = RedisServer::start();
    let store: Arc<dyn OnlineStore> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 1);
    let lake = Lake::open("memory://").unwrap();
    // user-7's recent-id set is a string: every apply of user-7 fails with WRONGTYPE.
    tandem_testkit::cli(server.port(), &["SET", "tandem:u:{user-7}:seen", "junk"]);
    let sent: Vec<Sent> = (0..60)
        .map(|i| Sent {
            event: event(i, (i % 10) as u8, i, (i % 7) as u8, T0 + i as i64),
            ingest_ts: T0 + 10 + i as i64,
        })
        .collect();
    produce(bus.as_ref(), &sent).await;
    bus.produce(vec![(Bytes::from("user-1"), Bytes::from("not json"))])
        .await
        .unwrap();
    let opts = SpeedOptions {
        batch: 16,
        epoch_ms: H,
        until_caught_up: true,
        wait: Duration::ZERO,
        lake: Some(lake.clone()),
        ..SpeedOptions::default()
    };
    let s = run(
        bus.clone(),
        store.clone(),
        opts.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    // Users applied by a refused call before the refusal count as replayed when the batch is
    // applied again user by user (Redis keeps what a failed call did before failing).
    assert_eq!(
        (s.counts.applied + s.counts.replayed, s.rejected, s.invalid),
        (54, 6, 1),
        "{s:?}"
    );
    assert_eq!(bus.committed("speed", 0).await.unwrap(), Some(61));
    let letters: Vec<_> = list(&lake)
        .await
        .unwrap()
        .into_iter()
        .flat_map(|(_, l)| l)
        .collect();
    assert_eq!(letters.len(), 7);
    let refused: Vec<_> = letters.iter().filter(|l| l.key == "user-7").collect();
    assert_eq!(refused.len(), 6);
    assert!(
        refused.iter().all(|l| l.reason.contains("WRONGTYPE")),
        "{refused:?}"
    );
    assert!(
        letters
            .iter()
            .any(|l| l.value.as_deref() == Some("not json"))
    );
    let others: Vec<Sent> = sent
        .iter()
        .filter(|x| x.event.user_id != "user-7")
        .cloned()
        .collect();
    assert_same(
        &merged(store.as_ref(), &others, 0).await,
        &others,
        "without user-7",
    );

    // The cause fixed, a replay brings user-7's events back; the invalid record stays.
    tandem_testkit::cli(server.port(), &["DEL", "tandem:u:{user-7}:seen"]);
    let r = replay(&lake, bus.as_ref()).await.unwrap();
    assert_eq!((r.replayed, r.kept), (6, 1));
    // Meanwhile Redis is full: the apply waits (OOM passes), and nothing is set aside.
    tandem_testkit::cli(
        server.port(),
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    tandem_testkit::cli(server.port(), &["CONFIG", "SET", "maxmemory", "1"]);
    let consumer = tokio::spawn(run(
        bus.clone(),
        store.clone(),
        opts,
        CancellationToken::new(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    tandem_testkit::cli(server.port(), &["CONFIG", "SET", "maxmemory", "0"]);
    let s = consumer.await.unwrap().unwrap();
    assert_eq!((s.counts.applied, s.rejected), (6, 0), "{s:?}");
    assert_same(&merged(store.as_ref(), &sent, 0).await, &sent, "all");
    let left: usize = list(&lake)
        .await
        .unwrap()
        .iter()
        .map(|(_, l)| l.len())
        .sum();
    assert_eq!(left, 1);
}

/// A store that lost its erasure markers (the in-memory store restarted; a Redis without
/// persistence) replays the bus from the start: the lake's tombstones are noted first, so the
/// erased user's events up to the erasure stay gone, and what the user did after it counts.
/// (The profile came back: post, DELETE, restart.)
#[tokio::test]
async fn a_store_that_forgot_an_erasure_learns_it_from_the_lake() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let lake = Lake::open("memory://").unwrap();
    let sent: Vec<Sent> = (0..40)
        .map(|i| Sent {
            event: event(i, (i % 4) as u8, i, (i % 5) as u8, T0 + i as i64),
            ingest_ts: T0 + 10 * i as i64,
        })
        .collect();
    produce(bus.as_ref(), &sent).await;
    // user-1 was erased after the events ingested before T0 + 200.
    let erased_ms = T0 + 200;
    lake.record_erasure(&tandem_common::lake::Tombstone {
        user_id: "user-1".into(),
        erased_ms,
    })
    .await
    .unwrap();
    let store: Arc<dyn OnlineStore> = Arc::new(MemoryStore::default());
    let opts = SpeedOptions {
        batch: 8,
        epoch_ms: H,
        until_caught_up: true,
        wait: Duration::ZERO,
        lake: Some(lake),
        ..SpeedOptions::default()
    };
    let s = run(bus.clone(), store.clone(), opts, CancellationToken::new())
        .await
        .unwrap();
    let kept: Vec<Sent> = sent
        .iter()
        .filter(|x| x.event.user_id != "user-1" || x.ingest_ts > erased_ms)
        .cloned()
        .collect();
    assert_eq!(s.counts.erased as usize, sent.len() - kept.len(), "{s:?}");
    assert!(s.counts.erased > 0);
    assert_same(
        &merged(store.as_ref(), &kept, 0).await,
        &kept,
        "after the erasure",
    );
    assert_eq!(
        store.speed("user-1", 0).await.unwrap().erased_ms,
        Some(erased_ms)
    );
}

#[tokio::test]
async fn a_stop_finishes_the_batch_in_hand_and_stores_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let sent: Vec<Sent> = (0..500)
        .map(|i| Sent {
            event: event(i, (i % 7) as u8, i, (i % 30) as u8, T0 + i as i64),
            ingest_ts: T0 + i as i64,
        })
        .collect();
    produce(bus.as_ref(), &sent).await;
    let store: Arc<dyn OnlineStore> = Arc::new(MemoryStore::default());
    let stop = CancellationToken::new();
    stop.cancel();
    let opts = SpeedOptions {
        epoch_ms: H,
        ..SpeedOptions::default()
    };
    // Stopped before it starts: nothing applied, nothing stored, exit without error.
    let s = run(bus.clone(), store.clone(), opts, stop).await.unwrap();
    assert_eq!(s.counts.applied, 0);
    assert_eq!(bus.committed("speed", 0).await.unwrap(), None);
    // Then a full run applies everything once.
    let s = consume(&bus, &store, 64).await;
    assert_eq!(s.counts.applied, 500);
    let got = merged(store.as_ref(), &sent, T0).await;
    assert_same(&got, &sent, "after a stop and a restart");
}

#[tokio::test]
async fn a_partition_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let opts = SpeedOptions {
        partitions: vec![1, 5],
        ..SpeedOptions::default()
    };
    let store: Arc<dyn OnlineStore> = Arc::new(MemoryStore::default());
    let err = run(bus, store, opts, CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "partition 5 does not exist: the bus has partitions 0..1"
    );
}

/// A Redis restarted without persistence — between two runs of the speed layer, and in the
/// middle of one, after positions were stored past what it lost — loses nothing: the speed
/// layer finds its partition markers gone, notes the lake's erasures again, replays every
/// partition from the start under a new store token (what it applied after the loss, before it
/// noticed, is dropped user by user and rebuilt), and asks for the snapshot to be published
/// again; every event counts once and the erased user's events stay gone. (Before: the replay
/// stopped at the stored positions, and everything before them was gone from the profiles.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_without_persistence_is_replayed_and_counts_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bus(dir.path(), 2);
    let lake = Lake::open("memory://").unwrap();
    let wave = |from: usize| -> Vec<Sent> {
        (from..from + 200)
            .map(|i| Sent {
                event: event(i, (i % 12) as u8, i, (i % 9) as u8, T0 + i as i64),
                ingest_ts: T0 + 10 * i as i64,
            })
            .collect()
    };
    let asked = Arc::new(AtomicU64::new(0));
    let opts = |store_lost: bool| SpeedOptions {
        batch: 16,
        epoch_ms: H,
        until_caught_up: true,
        wait: Duration::ZERO,
        commit_interval: Duration::ZERO,
        lake: Some(lake.clone()),
        on_store_lost: store_lost.then(|| {
            let asked = asked.clone();
            OnStoreLost(Arc::new(move || {
                asked.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok("noted".to_string()) })
            }))
        }),
        ..SpeedOptions::default()
    };
    let speed_run = |store: Arc<dyn OnlineStore>| {
        run(bus.clone(), store, opts(true), CancellationToken::new()).map(Result::unwrap)
    };
    let mut server = RedisServer::start();
    let url = server.url();
    let plain =
        || async { Arc::new(RedisStore::connect(&url).await.unwrap()) as Arc<dyn OnlineStore> };

    let mut sent = wave(0);
    produce(bus.as_ref(), &sent).await;
    let first = speed_run(plain().await).await;
    assert_eq!(first.counts.applied, 200, "{first:?}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "a new deployment asks for nothing"
    );
    // user-5 is erased after the first wave.
    let erased_ms = T0 + 10 * 200;
    lake.record_erasure(&tandem_common::lake::Tombstone {
        user_id: "user-5".into(),
        erased_ms,
    })
    .await
    .unwrap();
    let erased = |all: &[Sent]| -> Vec<Sent> {
        all.iter()
            .filter(|x| x.event.user_id != "user-5" || x.ingest_ts > erased_ms)
            .cloned()
            .collect()
    };

    // Between runs.
    server.restart();
    sent.extend(wave(200));
    produce(bus.as_ref(), &sent[200..]).await;
    speed_run(plain().await).await;
    let store = plain().await;
    let kept = erased(&sent);
    assert_same(
        &merged(store.as_ref(), &kept, 0).await,
        &kept,
        "restarted between runs",
    );
    assert!(
        asked.load(Ordering::SeqCst) >= 1,
        "a snapshot was asked for"
    );

    // In the middle of a run, positions stored at every batch: after the 5th apply of 25.
    sent.extend(wave(400));
    produce(bus.as_ref(), &sent[400..]).await;
    let restarts: Arc<dyn OnlineStore> =
        Arc::new(RestartingRedis::new(server, RestartAfter::Apply(5)).await);
    let asked_before = asked.load(Ordering::SeqCst);
    speed_run(restarts.clone()).await;
    let kept = erased(&sent);
    assert_same(
        &merged(restarts.as_ref(), &kept, 0).await,
        &kept,
        "restarted during a run",
    );
    assert!(
        asked.load(Ordering::SeqCst) > asked_before,
        "a snapshot was asked for again"
    );
    // And a run after it reads nothing again.
    let after = speed_run(restarts.clone()).await;
    assert_eq!(after.counts.applied + after.counts.replayed, 0, "{after:?}");
}
