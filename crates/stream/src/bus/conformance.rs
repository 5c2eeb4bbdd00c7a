//! The bus conformance suite, written once and run against every backend.
//!
//! A backend's test implements [`Harness`] (make a fresh empty bus; open the same bus again as
//! after a restart) and calls [`run_all`]. Each check panics with its name and what differed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Bus, Position, partition_for};

/// How the suite gets buses.
#[async_trait]
pub trait Harness: Send + Sync {
    /// Identifies a bus so it can be opened again.
    type Id: Send + Sync;
    /// A new, empty bus with `partitions` partitions.
    async fn fresh(&self, partitions: u32) -> (Self::Id, Arc<dyn Bus>);
    /// The bus `id` opened anew, as by a restarted process (the old handle is dropped first).
    async fn reopen(&self, id: &Self::Id, partitions: u32) -> Arc<dyn Bus>;
}

/// Runs every check.
pub async fn run_all<H: Harness>(h: &H) {
    empty_bus(h).await;
    produce_then_fetch_in_order(h).await;
    keys_spread_over_partitions(h).await;
    fetch_from_an_offset_with_a_limit(h).await;
    positions_are_stored_per_group(h).await;
    survives_reopen(h).await;
    waiting_fetch_wakes_on_produce(h).await;
    large_values(h).await;
    concurrent_producers_keep_per_key_order(h).await;
}

fn kv(key: &str, value: String) -> (Bytes, Bytes) {
    (Bytes::copy_from_slice(key.as_bytes()), Bytes::from(value))
}

async fn fetch_all<B: Bus + ?Sized>(bus: &B, partition: u32) -> Vec<super::Record> {
    let mut out = Vec::new();
    loop {
        let got = bus
            .fetch(partition, out.len() as u64, 1000, Duration::ZERO)
            .await
            .expect("fetch");
        if got.is_empty() {
            return out;
        }
        out.extend(got);
    }
}

/// A new bus is empty everywhere.
pub async fn empty_bus<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(3).await;
    assert_eq!(bus.partitions(), 3, "empty_bus: partition count");
    for p in 0..3 {
        assert_eq!(
            bus.end_offset(p).await.unwrap(),
            0,
            "empty_bus: end offset of {p}"
        );
        assert!(
            bus.fetch(p, 0, 10, Duration::ZERO)
                .await
                .unwrap()
                .is_empty(),
            "empty_bus: fetch {p}"
        );
        assert_eq!(
            bus.committed("g", p).await.unwrap(),
            None,
            "empty_bus: committed {p}"
        );
    }
}

/// Records come back with gap-free offsets from 0, in the partition of their key, in the
/// order produced per key, at the positions produce reported.
pub async fn produce_then_fetch_in_order<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(4).await;
    let mut sent = Vec::new();
    let mut positions: Vec<Position> = Vec::new();
    for round in 0..3 {
        let batch: Vec<_> = (0..100)
            .map(|i| kv(&format!("user-{}", i % 30), format!("{round}:{i}")))
            .collect();
        sent.extend(batch.clone());
        positions.extend(bus.produce(batch).await.expect("produce"));
    }
    assert_eq!(
        positions.len(),
        sent.len(),
        "produce_then_fetch: one position per record"
    );
    let mut by_pos = HashMap::new();
    let mut total = 0;
    for p in 0..4 {
        let got = fetch_all(&*bus, p).await;
        assert_eq!(
            bus.end_offset(p).await.unwrap(),
            got.len() as u64,
            "produce_then_fetch: end offset of {p}"
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.offset, i as u64,
                "produce_then_fetch: offsets of {p} have no gaps"
            );
            assert_eq!(r.partition, p);
            assert_eq!(
                partition_for(&r.key, 4),
                p,
                "produce_then_fetch: record in its key's partition"
            );
            by_pos.insert((p, r.offset), (r.key.clone(), r.value.clone()));
        }
        total += got.len();
    }
    assert_eq!(
        total,
        sent.len(),
        "produce_then_fetch: every record is there once"
    );
    let mut per_key: BTreeMap<Bytes, Vec<Bytes>> = BTreeMap::new();
    for (pos, (k, v)) in positions.iter().zip(&sent) {
        assert_eq!(
            by_pos.get(&(pos.partition, pos.offset)),
            Some(&(k.clone(), v.clone())),
            "produce_then_fetch: record at its reported position"
        );
        per_key.entry(k.clone()).or_default().push(v.clone());
    }
    for p in 0..4 {
        let mut seen: BTreeMap<Bytes, Vec<Bytes>> = BTreeMap::new();
        for r in fetch_all(&*bus, p).await {
            seen.entry(r.key).or_default().push(r.value);
        }
        for (k, vs) in seen {
            assert_eq!(
                Some(&vs),
                per_key.get(&k),
                "produce_then_fetch: order of key {k:?}"
            );
        }
    }
}

/// Many keys reach every partition.
pub async fn keys_spread_over_partitions<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(8).await;
    let batch: Vec<_> = (0..2000)
        .map(|i| kv(&format!("u{i:07}"), "x".into()))
        .collect();
    bus.produce(batch).await.unwrap();
    for p in 0..8 {
        let n = bus.end_offset(p).await.unwrap();
        assert!(
            n > 100,
            "keys_spread: partition {p} got only {n} of 2000 records"
        );
    }
}

/// A fetch starts at the offset asked and returns at most `max` records.
pub async fn fetch_from_an_offset_with_a_limit<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(1).await;
    bus.produce((0..50).map(|i| kv("k", i.to_string())).collect())
        .await
        .unwrap();
    let got = bus.fetch(0, 17, 5, Duration::ZERO).await.unwrap();
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        vec![17, 18, 19, 20, 21],
        "fetch_from_an_offset: offsets"
    );
    assert_eq!(&got[0].value[..], b"17");
    assert!(
        bus.fetch(0, 50, 5, Duration::ZERO)
            .await
            .unwrap()
            .is_empty(),
        "fetch at the end is empty"
    );
    let tail = bus.fetch(0, 45, 100, Duration::ZERO).await.unwrap();
    assert_eq!(tail.len(), 5, "fetch near the end returns what is there");
}

/// Each group has its own stored position per partition, and it can move either way.
pub async fn positions_are_stored_per_group<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(2).await;
    bus.commit("speed", 1, 10).await.unwrap();
    assert_eq!(
        bus.committed("speed", 1).await.unwrap(),
        Some(10),
        "positions: read back"
    );
    assert_eq!(
        bus.committed("speed", 0).await.unwrap(),
        None,
        "positions: per partition"
    );
    assert_eq!(
        bus.committed("archive", 1).await.unwrap(),
        None,
        "positions: per group"
    );
    bus.commit("speed", 1, 25).await.unwrap();
    bus.commit("speed", 1, 20).await.unwrap();
    assert_eq!(
        bus.committed("speed", 1).await.unwrap(),
        Some(20),
        "positions: last write wins"
    );
}

/// Records and positions survive a restart; offsets continue after it.
pub async fn survives_reopen<H: Harness>(h: &H) {
    let (id, bus) = h.fresh(2).await;
    bus.produce(
        (0..40)
            .map(|i| kv(&format!("u{}", i % 5), i.to_string()))
            .collect(),
    )
    .await
    .unwrap();
    bus.commit("speed", 0, 3).await.unwrap();
    let before: Vec<_> = [fetch_all(&*bus, 0).await, fetch_all(&*bus, 1).await].concat();
    drop(bus);
    let bus = h.reopen(&id, 2).await;
    let after: Vec<_> = [fetch_all(&*bus, 0).await, fetch_all(&*bus, 1).await].concat();
    assert_eq!(before, after, "survives_reopen: same records");
    assert_eq!(
        bus.committed("speed", 0).await.unwrap(),
        Some(3),
        "survives_reopen: position kept"
    );
    let ends = [
        bus.end_offset(0).await.unwrap(),
        bus.end_offset(1).await.unwrap(),
    ];
    let more = bus.produce(vec![kv("u0", "new".into())]).await.unwrap();
    assert_eq!(
        more[0].offset, ends[more[0].partition as usize],
        "survives_reopen: offsets continue"
    );
}

/// A fetch waiting on an empty partition returns the record produced while it waits.
pub async fn waiting_fetch_wakes_on_produce<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(1).await;
    let reader = {
        let bus = bus.clone();
        // The wait bound only keeps a broken backend from hanging the suite.
        tokio::spawn(async move { bus.fetch(0, 0, 10, Duration::from_secs(60)).await })
    };
    tokio::task::yield_now().await;
    bus.produce(vec![kv("k", "hello".into())]).await.unwrap();
    let got = reader.await.unwrap().unwrap();
    assert_eq!(got.len(), 1, "waiting_fetch: got the record");
    assert_eq!(&got[0].value[..], b"hello");
}

/// Values of a megabyte and more round-trip intact.
pub async fn large_values<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(1).await;
    let big: String = (0..1_200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    bus.produce(vec![
        kv("k", "small".into()),
        kv("k", big.clone()),
        kv("k", "after".into()),
    ])
    .await
    .unwrap();
    let got = fetch_all(&*bus, 0).await;
    assert_eq!(got.len(), 3, "large_values: count");
    assert_eq!(got[1].value.len(), big.len(), "large_values: size");
    assert_eq!(&got[1].value[..], big.as_bytes(), "large_values: content");
    assert_eq!(&got[2].value[..], b"after");
}

/// Producers running at once lose nothing and keep each key's order.
pub async fn concurrent_producers_keep_per_key_order<H: Harness>(h: &H) {
    let (_, bus) = h.fresh(4).await;
    let mut tasks = Vec::new();
    for t in 0..4 {
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..25 {
                let batch = (0..10)
                    .map(|i| kv(&format!("t{t}-k{}", i % 3), format!("{round}.{i}")))
                    .collect();
                bus.produce(batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut per_key: BTreeMap<Bytes, Vec<String>> = BTreeMap::new();
    for p in 0..4 {
        for r in fetch_all(&*bus, p).await {
            per_key
                .entry(r.key)
                .or_default()
                .push(String::from_utf8_lossy(&r.value).into_owned());
        }
    }
    assert_eq!(
        per_key.values().map(Vec::len).sum::<usize>(),
        1000,
        "concurrent: every record once"
    );
    for (k, vs) in per_key {
        let parsed: Vec<(u32, u32)> = vs
            .iter()
            .map(|v| {
                let (a, b) = v.split_once('.').unwrap();
                (a.parse().unwrap(), b.parse().unwrap())
            })
            .collect();
        let mut sorted = parsed.clone();
        sorted.sort();
        assert_eq!(parsed, sorted, "concurrent: order of key {k:?}");
    }
}
