//! The online store conformance suite, run on `memory://` and on a real `redis-server`.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::*;
use crate::event::{Event, Kind};
use crate::features::Profile;
use tandem_testkit::{RedisCluster, RedisServer};

fn rows(id: &str, users: usize) -> Vec<(String, Bytes)> {
    let mut out: Vec<(String, Bytes)> = (0..users)
        .map(|u| {
            (
                user_key(&format!("user-{u}"), id),
                Bytes::from(format!("{id}/{u}")),
            )
        })
        .collect();
    out.push((item_key("item:{odd}", id), Bytes::from_static(b"item")));
    out.push((snapshot_key(id, "popular"), Bytes::from_static(b"[]")));
    out
}

/// Snapshot ids in time order: one on the minute, a later one with seconds (its id sorts
/// before the first as text), a second revision of that.
const A: &str = "20251122T0100Z";
const B: &str = "20251122T010030Z";
const C: &str = "20251122T010030Z-r2";

async fn conformance(store: &dyn OnlineStore) {
    // Rows, read back in order, missing ones as None; pipelines beyond one chunk.
    let a = rows(A, 2_500);
    store.put(&a).await.unwrap();
    let keys = vec![
        a[0].0.clone(),
        "tandem:nothing".to_string(),
        a[2_499].0.clone(),
    ];
    let got = store.get(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![Some(a[0].1.clone()), None, Some(a[2_499].1.clone())]
    );
    assert_eq!(store.get(&[]).await.unwrap(), vec![]);

    // The pointer: compare-and-set.
    assert_eq!(store.pointer().await.unwrap(), None);
    let pa = Pointer {
        snapshot: A.into(),
        cutoff_ms: 3_600_000,
    };
    let pb = Pointer {
        snapshot: B.into(),
        cutoff_ms: 7_200_000,
    };
    assert!(!store.flip(Some(&pa), &pb).await.unwrap(), "no pointer yet");
    assert!(store.flip(None, &pa).await.unwrap());
    assert!(!store.flip(None, &pb).await.unwrap(), "a pointer exists");
    assert_eq!(store.pointer().await.unwrap(), Some(pa.clone()));
    store.put(&rows(B, 10)).await.unwrap();
    // A newer run's rows, being written while the older one cleans up.
    store.put(&rows(C, 3)).await.unwrap();
    assert!(store.flip(Some(&pa), &pb).await.unwrap());
    assert_eq!(store.pointer().await.unwrap(), Some(pb.clone()));

    // Dropping the older snapshots' rows: nothing of the kept snapshot nor of a newer one.
    assert_eq!(store.drop_snapshots_older(B).await.unwrap(), 2_502);
    let left = store
        .get(&[
            user_key("user-0", A),
            user_key("user-0", B),
            item_key("item:{odd}", B),
            snapshot_key(B, "popular"),
            user_key("user-0", C),
            snapshot_key(C, "popular"),
        ])
        .await
        .unwrap();
    let present: Vec<bool> = left.iter().map(Option::is_some).collect();
    assert_eq!(present, [false, true, true, true, true, true]);
    assert_eq!(store.pointer().await.unwrap(), Some(pb));

    // Copies inside the store, beyond one pipeline, each pair within one user's slot: a missing
    // source is reported and writes nothing; an existing target is replaced.
    const D: &str = "20251122T0200Z";
    store.put(&rows(B, 1_200)).await.unwrap();
    store
        .put(&[(user_key("user-1", D), Bytes::from_static(b"stale"))])
        .await
        .unwrap();
    let pairs: Vec<(String, String)> = (0..1_201)
        .map(|u| {
            let user = format!("user-{u}");
            (user_key(&user, B), user_key(&user, D))
        })
        .collect();
    let done = store.copy(&pairs).await.unwrap();
    assert_eq!(done.len(), 1_201);
    assert!(done[..1_200].iter().all(|d| *d));
    assert!(!done[1_200], "user-1200 has no row in {B}");
    let got = store
        .get(&[
            user_key("user-1", D),
            user_key("user-1199", D),
            user_key("user-1200", D),
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Some(Bytes::from(format!("{B}/1"))),
            Some(Bytes::from(format!("{B}/1199"))),
            None
        ]
    );
    assert_eq!(store.copy(&[]).await.unwrap(), Vec::<bool>::new());
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(&MemoryStore::default()).await;
    speed_conformance(&MemoryStore::default()).await;
    epochs_come_and_go(&MemoryStore::default()).await;
    hostile_users(&MemoryStore::default()).await;
    lease_conformance(&MemoryStore::default()).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    conformance(&store).await;
    speed_conformance(&store).await;
    epochs_come_and_go(&store).await;
    hostile_users(&store).await;
    lease_conformance(&store).await;
    reloads_lost_functions(&store, || {
        tandem_testkit::cli(server.port(), &["FUNCTION", "FLUSH"]);
    })
    .await;
}

/// A server that lost the function library (a restart without persistence): the next calls load
/// it again and succeed.
async fn reloads_lost_functions(store: &dyn OnlineStore, flush: impl Fn()) {
    flush();
    let events: Vec<SpeedEvent<'static>> = (0..40)
        .map(|i| SpeedEvent {
            offset: 1_000_000 + i as u64,
            ingest_ts: H,
            epoch_ms: H,
            event: event(
                &format!("lost-{i}"),
                &format!("lost-{}", i % 7),
                Kind::View,
                i,
                H,
            ),
        })
        .collect();
    let counts = store.apply_events(&events).await.unwrap();
    assert_eq!(counts.applied, 40, "{counts:?}");
    flush();
    let state = store.speed("lost-0", 0).await.unwrap();
    assert_eq!(state.merged().events(), 6);
}

#[tokio::test]
async fn redis_store_over_tls_conforms() {
    let server = RedisServer::start_tls();
    let store = open(&server.url()).await.unwrap();
    conformance(store.as_ref()).await;
    speed_conformance(store.as_ref()).await;
    // Plain text to a TLS port is an error that names the store, not a hang.
    let plain = server.url().replace("rediss://", "redis://");
    let err = open(&plain).await.unwrap_err().to_string();
    assert!(err.contains("redis"), "{err}");
}

#[tokio::test]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start();
    let store = open(&cluster.url()).await.unwrap();
    conformance(store.as_ref()).await;
    speed_conformance(store.as_ref()).await;
    epochs_come_and_go(store.as_ref()).await;
    hostile_users(store.as_ref()).await;
    lease_conformance(store.as_ref()).await;
    // The function library is on every primary, and the rows are spread over them.
    for node in cluster.nodes() {
        let keys = tandem_testkit::cli(node.port(), &["DBSIZE"]);
        assert_ne!(keys.trim(), "0", "node {}: no keys", node.port());
        let libs = tandem_testkit::cli(node.port(), &["FUNCTION", "LIST"]);
        assert!(libs.contains("tandem_apply_v5"), "{libs}");
    }
    reloads_lost_functions(store.as_ref(), || {
        for node in cluster.nodes() {
            tandem_testkit::cli(node.port(), &["FUNCTION", "FLUSH"]);
        }
    })
    .await;
}

const H: i64 = 3_600_000;

/// A lease has one holder; only the holder renews or releases it; another takes it only once
/// it is free or has lapsed.
async fn lease_conformance(store: &dyn OnlineStore) {
    use LeaseOp::{Release, Renew, Take};
    let held_by = |s: LeaseState| (s.held, s.holder);
    let call = |op, owner: &'static str, ttl| async move {
        held_by(store.lease("batch", op, owner, ttl).await.unwrap())
    };
    let (a, b) = ("run-a", "run-b");
    assert_eq!(call(Take, a, 60_000).await, (true, Some(a.into())));
    let other = store.lease("batch", Take, b, 60_000).await.unwrap();
    assert_eq!(held_by(other.clone()), (false, Some(a.into())));
    assert!(other.left_ms > 0 && other.left_ms <= 60_000, "{other:?}");
    assert_eq!(call(Renew, b, 60_000).await, (false, Some(a.into())));
    assert_eq!(call(Release, b, 60_000).await, (false, Some(a.into())));
    assert_eq!(call(Renew, a, 60_000).await, (true, Some(a.into())));
    assert_eq!(call(Take, a, 60_000).await, (true, Some(a.into())));
    assert_eq!(call(Release, a, 60_000).await, (false, None));
    assert_eq!(call(Renew, a, 60_000).await, (false, None), "released");
    // A lease its holder let lapse is free.
    assert_eq!(call(Take, b, 30).await, (true, Some(b.into())));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(call(Take, a, 60_000).await, (true, Some(a.into())));
    assert_eq!(call(Release, a, 60_000).await, (false, None));
}

/// Users a hostile client can make, each applied whole, both through the folded fast path
/// (every event new) and event by event (a replayed first event sends the user there):
/// thousands of distinct categories in one epoch (the Lua unpacked them into one command:
/// "too many results to unpack", the partition stalled), and purchases whose money overflows
/// 64 bits (saturated at MAX_MONEY_MICROS, as the fold and the batch do).
async fn hostile_users(store: &dyn OnlineStore) {
    use crate::event::{MAX_PRICE, MAX_QUANTITY};
    use crate::features::MAX_MONEY_MICROS;
    let base = 1_763_800_000_000_i64 / H * H;
    let mut offset = 10_000;
    let mut events = |user: &str, n: usize, purchase: bool| -> Vec<SpeedEvent<'static>> {
        (0..n)
            .map(|i| {
                let kind = if purchase { Kind::Purchase } else { Kind::View };
                let mut e = event(&format!("{user}-{i}"), user, kind, i, base + i as i64);
                if purchase {
                    e.price = Some(if i == 2 { 1.25 } else { MAX_PRICE });
                    e.quantity = if i == 2 { 3 } else { MAX_QUANTITY };
                } else {
                    e.category = Some(format!("category-{i}").into());
                }
                offset += 1;
                SpeedEvent {
                    offset,
                    ingest_ts: base,
                    epoch_ms: base,
                    event: e,
                }
            })
            .collect()
    };
    for (user, n, purchase) in [
        ("many-categories-fast", 5_000, false),
        ("many-categories-slow", 5_000, false),
        ("rich-fast", 4, true),
        ("rich-slow", 4, true),
    ] {
        let batch = events(user, n, purchase);
        if user.ends_with("slow") {
            store.apply_events(&batch[..1]).await.unwrap();
        }
        let counts = store.apply_events(&batch).await.unwrap();
        let fresh = if user.ends_with("slow") { n - 1 } else { n };
        assert_eq!(counts.applied as usize, fresh, "{user}: {counts:?}");
        let mut want = Profile::new();
        for e in &batch {
            want.apply(&e.event);
        }
        let got = store.speed(user, 0).await.unwrap();
        assert_eq!(got.epochs.len(), 1, "{user}");
        let p = &got.epochs[&base];
        assert!(p.approx_eq(&want), "{user}:\n{p:?}\n{want:?}");
        if purchase {
            assert_eq!(p.spend_micros, MAX_MONEY_MICROS, "{user}");
            assert_eq!(p.units, 3 * MAX_QUANTITY as u64 + 3, "{user}");
        } else {
            assert_eq!(p.affinity.len(), n, "{user}");
        }
    }
}

/// Reads between which a user's epochs change (an event in a new epoch, epochs dropped after a
/// snapshot, a later cutoff, an erasure) see each change at once: no backend may answer from
/// what it learnt of the user at an earlier read.
async fn epochs_come_and_go(store: &dyn OnlineStore) {
    let base = 1_763_900_000_000_i64 / H * H;
    let user = "user-epochs";
    let at = |offset: u64, epoch: i64| SpeedEvent {
        offset,
        ingest_ts: epoch + 1,
        epoch_ms: epoch,
        event: event(
            &format!("g{offset}"),
            user,
            Kind::View,
            offset as usize,
            epoch + 2,
        ),
    };
    let epochs = |s: &SpeedState| s.epochs.keys().copied().collect::<Vec<_>>();
    let views = |s: &SpeedState| s.merged().counts[0];
    store.apply_events(&[at(0, base)]).await.unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!((epochs(&s), views(&s), s.offset), (vec![base], 1, Some(0)));
    // More in the same epoch, then a new epoch: each read has all of it.
    store.apply_events(&[at(1, base)]).await.unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!((epochs(&s), views(&s), s.offset), (vec![base], 2, Some(1)));
    store
        .apply_events(&[at(2, base + H), at(3, base + 2 * H)])
        .await
        .unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!(
        (epochs(&s), views(&s), s.offset),
        (vec![base, base + H, base + 2 * H], 4, Some(3))
    );
    // A later cutoff reads fewer epochs; an earlier one all of them again.
    let s = store.speed(user, base + H).await.unwrap();
    assert_eq!((epochs(&s), views(&s)), (vec![base + H, base + 2 * H], 2));
    let s = store.speed(user, base + 3 * H).await.unwrap();
    assert_eq!((epochs(&s), views(&s), s.offset), (vec![], 0, Some(3)));
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!(views(&s), 4);
    // Epochs dropped after a snapshot are gone from the next read.
    store.drop_epochs_before(base + 2 * H).await.unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!((epochs(&s), views(&s)), (vec![base + 2 * H], 1));
    // An erasure: nothing left but the offset and the erasure time.
    store.erase_user(user, base + 3 * H, &[]).await.unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!(
        (epochs(&s), s.offset, s.erased_ms),
        (vec![], Some(3), Some(base + 3 * H))
    );
    store.apply_events(&[at(4, base + 4 * H)]).await.unwrap();
    let s = store.speed(user, 0).await.unwrap();
    assert_eq!(
        (epochs(&s), views(&s), s.offset),
        (vec![base + 4 * H], 1, Some(4))
    );
}

fn event(id: &str, user: &str, kind: Kind, item: usize, ts: i64) -> Event<'static> {
    Event {
        event_id: id.to_string().into(),
        user_id: user.to_string().into(),
        kind,
        item_id: (kind != Kind::Search).then(|| format!("item-{item}").into()),
        category: (!item.is_multiple_of(3)).then(|| format!("cat-{}", item % 5).into()),
        price: (kind == Kind::Purchase).then_some(item as f64 * 1.25),
        quantity: 1 + (item % 3) as u32,
        rating: (kind == Kind::Rate).then_some(4.0),
        query: (kind == Kind::Search).then(|| "q".into()),
        ts,
        session_id: None,
        props: None,
    }
}

/// The speed layer's state: deltas per epoch equal to folding the applied events, replays and
/// recent duplicates skipped, the recent-id set bounded, old epochs dropped.
async fn speed_conformance(store: &dyn OnlineStore) {
    let base = 1_763_800_000_000_i64 / H * H;
    // 3 users, 3 epochs, every kind, more than RECENT_ITEMS items for user-0 in one epoch.
    let mut events = Vec::new();
    let mut offset = 0;
    for i in 0..90_usize {
        let user = format!("user-{}", i % 3);
        let epoch = base + (i as i64 / 30) * H;
        let kind = Kind::ALL[i % Kind::ALL.len()];
        // Event times out of order, some equal, as late events make them.
        let ts = epoch - 86_400_000 + ((i * 7919) % 50) as i64 * 1000;
        events.push(SpeedEvent {
            offset,
            ingest_ts: epoch,
            epoch_ms: epoch,
            event: event(&format!("e{i}"), &user, kind, i % 29, ts),
        });
        offset += 1 + (i as u64 % 2); // gaps: other users' events of the partition
    }
    let counts = store.apply_events(&events[..50]).await.unwrap();
    assert_eq!(counts.applied, 50);
    let counts = store.apply_events(&events).await.unwrap();
    assert_eq!(
        ApplyCounts { calls: 0, ..counts },
        ApplyCounts {
            applied: 40,
            replayed: 50,
            duplicates: 0,
            erased: 0,
            calls: 0,
            users: 3,
        },
        "a replay of applied offsets is skipped"
    );
    // One call for the users (one per user on a cluster), and once more for those that had a
    // replay (the fast path leaves them to the event-by-event one).
    assert!((1..=6).contains(&counts.calls), "{counts:?}");
    let expected = |from: i64, user: &str| {
        let mut by_epoch: BTreeMap<i64, Profile> = BTreeMap::new();
        for e in events
            .iter()
            .filter(|e| e.event.user_id == user && e.epoch_ms >= from)
        {
            by_epoch.entry(e.epoch_ms).or_default().apply(&e.event);
        }
        by_epoch
    };
    for u in ["user-0", "user-1", "user-2"] {
        let got = store.speed(u, 0).await.unwrap();
        let want = expected(0, u);
        assert_eq!(got.epochs.len(), 3, "{u}");
        for ((ea, pa), (eb, pb)) in got.epochs.iter().zip(&want) {
            assert_eq!(ea, eb);
            assert!(pa.approx_eq(pb), "{u} epoch {ea}:\n{pa:?}\n{pb:?}");
        }
        let last = events.iter().rfind(|e| e.event.user_id == u).unwrap();
        assert_eq!(got.offset, Some(last.offset), "{u}");
    }
    assert_eq!(
        store.speed("nobody", 0).await.unwrap(),
        SpeedState::default()
    );

    // A retried producer: the same event_id at a later offset is skipped; a new one applies.
    let mut retry = events[87].clone();
    retry.offset = 1_000;
    let mut fresh = retry.clone();
    fresh.offset = 1_001;
    fresh.event.event_id = "e-new".into();
    fresh.event.user_id = "user-fresh".into();
    let counts = store.apply_events(&[retry, fresh]).await.unwrap();
    assert_eq!((counts.applied, counts.duplicates), (1, 1));

    // The recent-id set keeps the newest SEEN_MAX: an older copy is no longer recognised.
    let user = "user-seen";
    let mut batch = Vec::new();
    for i in 0..(speed::SEEN_MAX + 5) as u64 {
        batch.push(SpeedEvent {
            offset: i,
            ingest_ts: base,
            epoch_ms: base,
            event: event(
                &format!("s{i}"),
                user,
                Kind::View,
                i as usize,
                base + i as i64,
            ),
        });
    }
    // At the boundary: s4 has exactly SEEN_MAX newer ids (s5..s68), so it fell out; then s6
    // has s7..s68 and the new s4 (SEEN_MAX - 1), so it is still there.
    let mut old_copy = batch[4].clone();
    old_copy.offset = 500;
    let mut recent_copy = batch[6].clone();
    recent_copy.offset = 501;
    batch.push(old_copy);
    batch.push(recent_copy);
    let counts = store.apply_events(&batch).await.unwrap();
    assert_eq!(
        (counts.applied, counts.duplicates),
        (speed::SEEN_MAX as u64 + 6, 1)
    );

    // Evictions across calls: a call of new ids only (one bulk add and one trim) evicts the
    // oldest ids exactly as a trim after each event would; a later copy of an evicted id is new,
    // a copy of one still kept is a duplicate.
    let user = "user-evict";
    let seen_event = |i: u64, offset: u64| SpeedEvent {
        offset,
        ingest_ts: base,
        epoch_ms: base,
        event: event(
            &format!("v{i}"),
            user,
            Kind::View,
            i as usize,
            base + i as i64,
        ),
    };
    let first: Vec<_> = (0..speed::SEEN_MAX as u64)
        .map(|i| seen_event(i, i))
        .collect();
    assert_eq!(
        store.apply_events(&first).await.unwrap().applied,
        first.len() as u64
    );
    let more: Vec<_> = (100..103).map(|i| seen_event(i, i)).collect();
    assert_eq!(store.apply_events(&more).await.unwrap().applied, 3);
    // (v3 first: the new copy of v2 itself pushes the oldest kept id, v3, out.)
    let copies = [seen_event(3, 200), seen_event(2, 201)];
    let counts = store.apply_events(&copies).await.unwrap();
    assert_eq!(
        (counts.applied, counts.duplicates),
        (1, 1),
        "v3 is kept (SEEN_MAX - 1 newer ids), v2 fell out"
    );

    // One user with more events in one call than one Redis command takes (chunked), as a
    // user alone in a partition's batch brings: the same deltas as folding them.
    let user = "user-many";
    let many: Vec<_> = (0..1500_u64)
        .map(|i| SpeedEvent {
            offset: i,
            ingest_ts: base,
            epoch_ms: base,
            event: event(
                &format!("m{i}"),
                user,
                Kind::ALL[i as usize % Kind::ALL.len()],
                i as usize % 97,
                base + ((i * 7919) % 1000) as i64,
            ),
        })
        .collect();
    let counts = store.apply_events(&many).await.unwrap();
    assert_eq!(counts.applied, many.len() as u64);
    let mut want = Profile::new();
    many.iter().for_each(|e| want.apply(&e.event));
    let got = store.speed(user, 0).await.unwrap().merged();
    assert!(got.approx_eq(&want), "{got:?}\n{want:?}");
    let again = store.apply_events(&many).await.unwrap();
    assert_eq!(again.replayed, many.len() as u64);
    // Its newest SEEN_MAX ids are kept: a copy of the last is a duplicate, of an older one not.
    let mut last_copy = many[1499].clone();
    last_copy.offset = 2_000;
    let mut old_copy = many[1000].clone();
    old_copy.offset = 2_001;
    let counts = store.apply_events(&[last_copy, old_copy]).await.unwrap();
    assert_eq!((counts.applied, counts.duplicates), (1, 1));

    // Dropping epochs before a cutoff: per user-epoch, the rest kept whole.
    let dropped = store.drop_epochs_before(base + 2 * H).await.unwrap();
    assert_eq!(
        dropped,
        3 * 2 + 3,
        "two old epochs of 3 users, and those of user-seen, user-evict and user-many"
    );
    for u in ["user-0", "user-1"] {
        let got = store.speed(u, 0).await.unwrap();
        let want = expected(base + 2 * H, u);
        assert_eq!(
            got.epochs.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        assert!(
            got.merged()
                .approx_eq(&want.values().fold(Profile::new(), |mut a, p| {
                    a.merge(p);
                    a
                }))
        );
    }
    assert_eq!(store.drop_epochs_before(base + 2 * H).await.unwrap(), 0);
    let later = store.speed("user-0", base + 3 * H).await.unwrap();
    assert!(later.epochs.is_empty() && later.offset.is_some());

    // The latest-items list under evictions, with many items at the same millisecond (ties are
    // settled by item id), applied in calls of different sizes: one item per call, then many.
    let user = "user-ties";
    let tied: Vec<SpeedEvent<'_>> = (0..61_u64)
        .map(|i| SpeedEvent {
            offset: 10_000 + i,
            ingest_ts: base + 5 * H,
            epoch_ms: base + 5 * H,
            event: event(
                &format!("t{i}"),
                user,
                Kind::ALL[i as usize % 3],
                (i as usize * 7) % 45,
                base + (i as i64 % 4) * 1000 + if i > 40 { 500 } else { 0 },
            ),
        })
        .collect();
    let mut want = Profile::new();
    for chunk in [
        &tied[..3],
        &tied[3..4],
        &tied[4..30],
        &tied[30..31],
        &tied[31..],
    ] {
        store.apply_events(chunk).await.unwrap();
        chunk.iter().for_each(|e| want.apply(&e.event));
        let got = store.speed(user, base + 5 * H).await.unwrap().merged();
        assert!(
            got.approx_eq(&want),
            "{:?}\n{:?}",
            got.recent_items,
            want.recent_items
        );
    }
    assert_eq!(want.recent_items.len(), crate::features::RECENT_ITEMS);
    erase_conformance(store).await;
    log_conformance(store).await;
    token_conformance(store).await;
}

/// Offsets are those of one bus log: a replay of the same log is skipped, but the same offsets
/// of a new log (the topic deleted and created again) are new events; a log of unknown
/// identity ("") is taken for the one kept.
async fn log_conformance(store: &dyn OnlineStore) {
    let base = 1_763_900_000_000_i64 / H * H;
    let user = "log-user";
    let at = |offset: u64, id: &str| SpeedEvent {
        offset,
        ingest_ts: base,
        epoch_ms: base,
        event: event(id, user, Kind::View, offset as usize, base - 1000),
    };
    let first: Vec<_> = (0..5).map(|o| at(o, &format!("a{o}"))).collect();
    assert_eq!(store.apply("log-a", &first).await.unwrap().applied, 5);
    let again = store.apply("log-a", &first).await.unwrap();
    assert_eq!(
        (again.applied, again.replayed),
        (0, 5),
        "a replay of the same log"
    );
    let unknown = store.apply("", &first[..2]).await.unwrap();
    assert_eq!(unknown.replayed, 2, "an unknown log is the one kept");
    // A new log from offset 0: new events, and a retried id among them still a duplicate.
    let second: Vec<_> = (0..3)
        .map(|o| at(o, &format!("b{o}")))
        .chain([at(3, "a4")])
        .collect();
    let counts = store.apply("log-b", &second).await.unwrap();
    assert_eq!(
        (counts.applied, counts.replayed, counts.duplicates),
        (3, 0, 1),
        "the offsets of another log are not replays"
    );
    assert_eq!(store.apply("log-b", &second).await.unwrap().replayed, 4);
    let speed = store.speed(user, base).await.unwrap();
    assert_eq!(speed.offset, Some(3));
    assert_eq!(speed.merged().events(), 8);
}

/// Store tokens (`<log>|store:<token>`): a user's state written under another token of the
/// same log (after the store lost its data, before the speed layer noticed) is dropped when the
/// replay under the new token reaches the user, keeping the erasure marker, so that the replay
/// counts every event once — whether it goes the fast way (all new) or one by one; a kept log
/// without a token (from before tokens) is the same log, its offset holds; another log's tokens
/// say nothing of this one.
async fn token_conformance(store: &dyn OnlineStore) {
    use crate::store::speed::log_with_token;
    let base = 1_763_900_000_000_i64 / H * H;
    let at = |user: &str, offset: u64| SpeedEvent {
        offset,
        ingest_ts: base + offset as i64,
        epoch_ms: base,
        event: event(
            &format!("t{offset}"),
            user,
            Kind::View,
            offset as usize,
            base - 1000,
        ),
    };
    let events = |user: &str, offsets: std::ops::Range<u64>| -> Vec<SpeedEvent<'static>> {
        offsets.map(|o| at(user, o)).collect()
    };
    let views = |user: &'static str| async move {
        store.speed(user, base).await.unwrap().merged().events()
    };
    let (old, new) = (
        log_with_token("log-t", "one"),
        log_with_token("log-t", "two"),
    );
    // Written under the old token after the loss: offsets 7..10 (0..7 were lost).
    store
        .apply(&old, &events("stale-user", 7..10))
        .await
        .unwrap();
    store
        .apply(&old, &events("stale-slow", 7..10))
        .await
        .unwrap();
    store.note_erasure("stale-slow", base + 2).await.unwrap();
    // The replay from 0 under the new token: all of it counts, once.
    let all = store
        .apply(&new, &events("stale-user", 0..10))
        .await
        .unwrap();
    assert_eq!(
        (all.applied, all.replayed, all.duplicates),
        (10, 0, 0),
        "{all:?}"
    );
    assert_eq!(views("stale-user").await, 10);
    // In two parts, the erasure kept: offsets 0..=2 were ingested by then.
    let part = store
        .apply(&new, &events("stale-slow", 0..5))
        .await
        .unwrap();
    assert_eq!((part.applied, part.erased), (2, 3), "{part:?}");
    let rest = store
        .apply(&new, &events("stale-slow", 5..10))
        .await
        .unwrap();
    assert_eq!(rest.applied, 5, "{rest:?}");
    assert_eq!(views("stale-slow").await, 7);
    // A replay under the same token is skipped.
    let again = store
        .apply(&new, &events("stale-user", 0..10))
        .await
        .unwrap();
    assert_eq!((again.applied, again.replayed), (0, 10));
    // From before tokens: the same log; its offset holds.
    store
        .apply("log-u", &events("legacy-user", 0..6))
        .await
        .unwrap();
    let later = store
        .apply(
            &log_with_token("log-u", "one"),
            &events("legacy-user", 0..8),
        )
        .await
        .unwrap();
    assert_eq!((later.applied, later.replayed), (2, 6), "{later:?}");
    assert_eq!(views("legacy-user").await, 8);
    // Another log under tokens: counted from the first, nothing dropped (ids dedupe).
    let other = store
        .apply(
            &log_with_token("log-v", "two"),
            &events("legacy-user", 0..2),
        )
        .await
        .unwrap();
    assert_eq!((other.applied, other.duplicates), (0, 2), "{other:?}");
    assert_eq!(views("legacy-user").await, 8);
}

/// Erasure: the user's deltas, recent ids and named snapshot rows go at once, the offset stays;
/// the user's events ingested until the erasure are skipped when they come, later ones apply
/// (a retried id included: its earlier copy was forgotten with the rest).
async fn erase_conformance(store: &dyn OnlineStore) {
    let base = 1_763_900_000_000_i64 / H * H;
    let user = "erased-user";
    let rows: Vec<(String, Bytes)> = ["s1", "s2"]
        .iter()
        .map(|id| (user_key(user, id), Bytes::from_static(b"{}")))
        .chain([(user_key("kept-user", "s1"), Bytes::from_static(b"{}"))])
        .collect();
    store.put(&rows).await.unwrap();
    let at = |offset: u64, ingest_ts: i64, id: &str, who: &str| SpeedEvent {
        offset,
        ingest_ts,
        epoch_ms: ingest_ts / H * H,
        event: event(id, who, Kind::Purchase, offset as usize, base - H),
    };
    let before = [
        at(1, base + 10, "x1", user),
        at(2, base + H + 10, "x2", user),
        at(3, base + H + 20, "k1", "kept-user"),
    ];
    assert_eq!(store.apply_events(&before).await.unwrap().applied, 3);
    let when = base + H + 500;
    assert!(store.erase_user(user, when, &["s1".into()]).await.unwrap() >= 3);
    // An earlier erasure time later on does not move it back.
    store.erase_user(user, when - 100, &[]).await.unwrap();
    let got = store
        .get(&rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    let present: Vec<bool> = got.iter().map(Option::is_some).collect();
    assert_eq!(
        present,
        [false, true, true],
        "only the named snapshot's row goes"
    );
    let state = store.speed(user, 0).await.unwrap();
    assert_eq!(
        (state.offset, state.erased_ms, state.epochs.len()),
        (Some(2), Some(when), 0)
    );
    assert_eq!(store.speed("kept-user", 0).await.unwrap().epochs.len(), 1);
    let after = [
        at(1, base + 10, "x1", user), // a replay: below the offset
        at(5, when, "x3", user),      // ingested at the erasure: erased
        at(6, when + 1, "x1", user),  // after it: counts, though its id was seen
        at(7, when + 2, "x4", user),
    ];
    let counts = store.apply_events(&after).await.unwrap();
    assert_eq!(
        (
            counts.applied,
            counts.replayed,
            counts.erased,
            counts.duplicates
        ),
        (2, 1, 1, 0),
        "{counts:?}"
    );
    let state = store.speed(user, 0).await.unwrap();
    let mut want = Profile::new();
    want.apply(&after[2].event);
    want.apply(&after[3].event);
    assert!(state.merged().approx_eq(&want), "{state:?}");
    assert_eq!(state.merged().recent_purchases.len(), 2);

    // Noting an erasure (from the lake's tombstones) deletes nothing and never moves the
    // marker back; on a user the store forgot, it makes a replay of the bus skip the erased
    // events.
    store.note_erasure(user, when - 1).await.unwrap();
    let noted = store.speed(user, 0).await.unwrap();
    assert_eq!((noted.erased_ms, noted.epochs), (Some(when), state.epochs));
    let forgotten = "forgotten-user";
    store.note_erasure(forgotten, when).await.unwrap();
    let replayed = [
        at(1, when - 5, "f1", forgotten),
        at(2, when + 5, "f2", forgotten),
    ];
    let counts = store.apply_events(&replayed).await.unwrap();
    assert_eq!((counts.applied, counts.erased), (1, 1), "{counts:?}");
}

#[test]
fn the_lua_library_agrees_with_the_rust_constants() {
    let lua = speed::LUA;
    assert!(lua.contains(&format!("local SEEN_MAX = {} ", speed::SEEN_MAX)));
    assert!(lua.contains(&format!("local SEEN_TTL_MS = {} ", speed::SEEN_TTL_MS)));
    assert!(lua.contains(&format!("local STRIDE = {} ", speed::STRIDE)));
    assert!(lua.contains(&format!("local SEEN_FIRST_OUT = '{}' ", speed::SEEN_MAX)));
    assert!(lua.contains(&format!(
        "local RECENT_MAX = '{}' ",
        crate::features::RECENT_ITEMS
    )));
    assert!(lua.contains(&format!(
        "local MAX_MONEY = {}\n",
        crate::features::MAX_MONEY_MICROS
    )));
    let purchase = Kind::ALL.iter().position(|k| *k == Kind::Purchase).unwrap();
    assert!(lua.contains(&format!("local PURCHASE = '{purchase}'")));
}

/// `push_args` writes STRIDE entries per event, in the order the Lua reads them.
#[test]
fn an_event_is_stride_arguments() {
    let args = |e: &SpeedEvent<'_>| {
        let mut pipe = redis::pipe();
        pipe.cmd("FCALL");
        speed::push_args(&mut pipe, e, 2, &mut String::new());
        let cmd = pipe.cmd_iter().next().unwrap();
        cmd.args_iter()
            .skip(1)
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8(b.to_vec()).unwrap(),
                _ => panic!("push_args writes plain arguments only"),
            })
            .collect::<Vec<_>>()
    };
    let ts = 1_763_800_000_000;
    let at = |event| SpeedEvent {
        offset: 7,
        ingest_ts: ts + 5,
        epoch_ms: ts,
        event,
    };
    // A purchase of 2 at 1.25 × 4, in a category: counts, spend in micro-units, an interest term.
    let bought = at(event("e1", "u", Kind::Purchase, 4, ts));
    let term = crate::features::decay_term(crate::features::interest_weight(Kind::Purchase), ts);
    let want: Vec<String> = [
        "7",
        "e1",
        "2",
        &(ts + 5).to_string(),
        "4",
        &ts.to_string(),
        "2",
        "10000000",
        "cat-4",
        &term.to_string(),
        "item-4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(args(&bought), want);
    // A search: no item, no category, no quantity.
    let search = args(&at(event("e2", "u", Kind::Search, 3, ts)));
    assert_eq!(search.len(), speed::STRIDE);
    assert_eq!(&search[6..], ["0", "0", "", "", ""]);
}

#[test]
fn snapshot_ids_order_by_time_then_revision() {
    assert!(snapshot_older(A, B) && snapshot_older(B, C) && snapshot_older(A, C));
    assert!(!snapshot_older(B, A) && !snapshot_older(B, B));
    assert!(snapshot_older("20251122T0100Z-r9", "20251122T0100Z-r10"));
    assert!(snapshot_older("19970301T0000Z", A), "dates from the 1990s");
    for other in [
        "a",
        "20251122T0100",
        "2025112T0100Z",
        "20251122T0100Z-rx",
        "",
    ] {
        assert_eq!(snapshot_rank(other), None, "{other}");
        assert!(
            !snapshot_older(other, A) && !snapshot_older(A, other),
            "{other}"
        );
    }
}

#[test]
fn keys_parse_back() {
    assert_eq!(snapshot_of_key(&user_key("u:{x}", "s1")), Some("s1"));
    assert_eq!(snapshot_of_key(&item_key("i", "s2")), Some("s2"));
    assert_eq!(snapshot_of_key(&snapshot_key("s3", "models")), Some("s3"));
    assert_eq!(snapshot_of_key(&history_key("u:{x}", "s4")), Some("s4"));
    assert_eq!(snapshot_of_key(&epoch_key("u", 5)), None);
}

#[tokio::test]
async fn bad_urls_are_named() {
    let err = open("postgres://x").await.unwrap_err().to_string();
    assert!(
        err.contains("online_store.url") && err.contains("memory://"),
        "{err}"
    );
    let port = tandem_testkit::free_port();
    let err = open(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::External, "{err}");
}

/// A store written by the layout before (`tandem_apply_v4`: latest items in `epoch:<ms>:recent`
/// and `:bought` scored by plus time, recent ids by plus offset) keeps working after an upgrade:
/// its epochs read as before, new events of the same epochs merge with them exactly, a retried
/// id it recorded is still recognised, and cleanup and erasure delete its keys.
#[tokio::test]
async fn a_store_of_the_layout_before_reads_merges_and_is_cleaned() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let base = 1_764_000_000_000_i64 / H * H;
    let at = |offset: u64, id: &str, user: &str, kind: Kind, item: usize, epoch: i64| SpeedEvent {
        offset,
        ingest_ts: epoch + 5,
        epoch_ms: epoch,
        event: event(
            id,
            user,
            kind,
            item,
            base - 3_600_000 + (item as i64 % 7) * 1000,
        ),
    };
    // Two users, two epochs each, more latest items than are kept, purchases among them.
    let kinds = [Kind::View, Kind::Purchase, Kind::Click, Kind::AddToCart];
    let mut old = Vec::new();
    for i in 0..60_u64 {
        let user = if i % 2 == 0 { "old-a" } else { "old-b" };
        let epoch = base + (i as i64 / 30) * H;
        old.push(at(
            i,
            &format!("o{i}"),
            user,
            kinds[i as usize % 4],
            i as usize % 23,
            epoch,
        ));
    }
    assert_eq!(store.apply_events(&old).await.unwrap().applied, 60);
    // Turn what that wrote into the layout before.
    let to_legacy = r#"
        for _, k in ipairs(redis.call('KEYS', 'tandem:u:*')) do
          local legacy = nil
          if string.sub(k, -7) == ':latest' then legacy = string.sub(k, 1, -8) .. ':recent'
          elseif string.sub(k, -14) == ':latest-bought' then legacy = string.sub(k, 1, -15) .. ':bought'
          elseif string.sub(k, -5) == ':seen' then legacy = k end
          if legacy then
            local z = redis.call('ZRANGE', k, 0, -1, 'WITHSCORES')
            redis.call('DEL', k)
            for j = 1, #z, 2 do redis.call('ZADD', legacy, -tonumber(z[j + 1]), z[j]) end
          end
        end
        return 1"#;
    tandem_testkit::cli(server.port(), &["EVAL", to_legacy, "0"]);
    let keys = tandem_testkit::cli(server.port(), &["KEYS", "*:recent"]);
    assert_eq!(keys.lines().count(), 4, "{keys}");
    let fold = |events: &[SpeedEvent<'_>], user: &str| {
        let mut by_epoch: BTreeMap<i64, Profile> = BTreeMap::new();
        for e in events.iter().filter(|e| e.event.user_id == user) {
            by_epoch.entry(e.epoch_ms).or_default().apply(&e.event);
        }
        by_epoch
    };
    let check = |got: SpeedState, want: BTreeMap<i64, Profile>, what: &str| {
        assert_eq!(got.epochs.len(), want.len(), "{what}");
        for ((ea, pa), (eb, pb)) in got.epochs.iter().zip(&want) {
            assert_eq!(ea, eb, "{what}");
            assert!(pa.approx_eq(pb), "{what}, epoch {ea}:\n{pa:?}\n{pb:?}");
        }
    };
    for u in ["old-a", "old-b"] {
        check(store.speed(u, 0).await.unwrap(), fold(&old, u), u);
    }
    // New events in the same epochs (items seen before, at later and earlier times, and new
    // ones), one a retried copy of an id the old set holds.
    let mut new = Vec::new();
    for i in 60..100_u64 {
        let user = if i % 2 == 0 { "old-a" } else { "old-b" };
        let epoch = base + ((i as i64 - 60) / 20) * H;
        new.push(at(
            i,
            &format!("n{i}"),
            user,
            kinds[i as usize % 4],
            (i as usize * 5) % 31,
            epoch,
        ));
    }
    let mut retried = old[58].clone(); // old-a's, id o58
    retried.offset = 100;
    new.push(retried);
    let counts = store.apply_events(&new).await.unwrap();
    assert_eq!((counts.applied, counts.duplicates), (40, 1), "{counts:?}");
    let all: Vec<SpeedEvent<'_>> = old.iter().chain(&new[..40]).cloned().collect();
    for u in ["old-a", "old-b"] {
        check(store.speed(u, 0).await.unwrap(), fold(&all, u), u);
    }
    // Cleanup after a snapshot and an erasure take the old keys with the new.
    assert_eq!(store.drop_epochs_before(base + H).await.unwrap(), 2);
    check(
        store.speed("old-b", 0).await.unwrap(),
        fold(&all, "old-b").split_off(&(base + H)),
        "old-b after the cleanup",
    );
    store.erase_user("old-a", base + 2 * H, &[]).await.unwrap();
    let left = tandem_testkit::cli(server.port(), &["KEYS", "*"]);
    let mut left: Vec<&str> = left.lines().collect();
    left.sort_unstable();
    let b = format!("tandem:u:{{old-b}}:epoch:{}", base + H);
    let mut want = vec![
        "tandem:u:{old-a}:speed".to_string(),
        "tandem:u:{old-b}:epochs".into(),
        "tandem:u:{old-b}:seen".into(),
        "tandem:u:{old-b}:speed".into(),
    ];
    want.extend(["", ":latest", ":latest-bought", ":recent", ":bought"].map(|k| format!("{b}{k}")));
    want.sort_unstable();
    assert_eq!(left, want);
}
