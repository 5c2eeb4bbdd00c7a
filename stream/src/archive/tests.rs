//! The archiver: every valid record in the lake exactly once, files named by partition and
//! first offset, restarts rewriting rather than duplicating, watermarks that hold the batch back.

use std::collections::BTreeMap;

use bytes::Bytes;
use tandem_common::event::{Event, Kind, to_bus_value};
use tandem_common::schema::events_from_batch;

use super::*;
use crate::bus::local::LocalBus;

const T0: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z
const DAY: i64 = 86_400_000;

fn event(i: usize) -> Event<'static> {
    Event {
        event_id: format!("e{i}").into(),
        user_id: format!("user-{}", i % 5).into(),
        kind: Kind::View,
        item_id: Some(format!("item-{}", i % 11).into()),
        category: None,
        price: None,
        quantity: 1,
        rating: None,
        query: None,
        ts: T0 + i as i64,
        session_id: None,
        props: None,
    }
}

/// `n` events; the ingest date changes two thirds of the way; an invalid record every 17th.
async fn fill(bus: &dyn Bus, n: usize) -> BTreeMap<String, i64> {
    let mut records = Vec::new();
    let mut want = BTreeMap::new();
    for i in 0..n {
        let e = event(i);
        let ingest = if i < n * 2 / 3 {
            T0 + DAY - 1000 + i as i64
        } else {
            T0 + DAY + i as i64
        };
        records.push((
            Bytes::from(e.user_id.to_string()),
            Bytes::from(to_bus_value(&e, ingest)),
        ));
        want.insert(e.event_id.to_string(), ingest);
        if i % 17 == 0 {
            records.push((Bytes::from(e.user_id.to_string()), Bytes::from("garbage")));
        }
    }
    bus.produce(records).await.unwrap();
    want
}

fn options(roll_rows: usize) -> ArchiveOptions {
    ArchiveOptions {
        fetch: 10,
        roll_rows,
        wait: Duration::ZERO,
        until_caught_up: true,
        ..ArchiveOptions::default()
    }
}

/// Every event in the lake: event_id → (ingest_ts, partition, offset), and the file names.
async fn lake_events(lake: &Lake) -> (BTreeMap<String, (i64, i32, i64)>, Vec<String>, usize) {
    let mut got = BTreeMap::new();
    let mut rows = 0;
    for batch in lake.read_events().await.unwrap() {
        for (e, s) in events_from_batch(&batch).unwrap() {
            rows += 1;
            got.insert(
                e.event_id.to_string(),
                (s.ingest_ts, s.partition.unwrap(), s.offset.unwrap()),
            );
        }
    }
    let files = lake
        .event_files()
        .await
        .unwrap()
        .iter()
        .map(|f| f.location.to_string())
        .collect();
    (got, files, rows)
}

#[tokio::test]
async fn every_event_lands_once_in_files_named_by_partition_and_first_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> =
        Arc::new(LocalBus::open(&dir.path().join("bus"), 2, false, 1 << 16).unwrap());
    let want = fill(bus.as_ref(), 200).await;
    let lake = Lake::open("memory://").unwrap();
    let summary = run(
        bus.clone(),
        lake.clone(),
        options(25),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(summary.events, 200);
    assert_eq!(summary.invalid, 12);
    let (got, files, rows) = lake_events(&lake).await;
    assert_eq!(rows, 200, "no event twice");
    assert_eq!(
        got.iter()
            .map(|(k, v)| (k.clone(), v.0))
            .collect::<BTreeMap<_, _>>(),
        want
    );
    // Files: per date folder, named by partition and the offset of their first row.
    for f in &files {
        let name = f.rsplit('/').next().unwrap();
        // bus-<log>-p<partition>-o<offset>-<n>.parquet
        let (p, o) = name
            .strip_prefix("bus-")
            .and_then(|r| r.split_once("-p"))
            .and_then(|(_, r)| r.split_once("-o"))
            .unwrap();
        let p: i32 = p.parse().unwrap();
        let first: i64 = o.split('-').next().unwrap().parse().unwrap();
        let min = got
            .values()
            .filter(|(_, gp, _)| *gp == p)
            .map(|v| v.2)
            .filter(|off| *off >= first)
            .min()
            .unwrap();
        assert_eq!(min, first, "{f} starts at its first record");
    }
    assert!(files.iter().any(|f| f.contains("date=2025-11-22/")));
    assert!(files.iter().any(|f| f.contains("date=2025-11-23/")));
    for p in 0..2 {
        let end = bus.end_offset(p).await.unwrap();
        assert_eq!(bus.committed("archive", p).await.unwrap(), Some(end));
        let mark = ArchiveMark::load(&lake, p).await.unwrap().unwrap();
        assert_eq!((mark.next_offset, mark.partitions), (end, 2));
        assert!(
            mark.watermark > T0 + DAY,
            "caught up: the watermark follows the clock"
        );
    }
}

#[tokio::test]
async fn a_restart_from_a_stored_position_rewrites_instead_of_duplicating() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> =
        Arc::new(LocalBus::open(&dir.path().join("bus"), 2, false, 1 << 16).unwrap());
    fill(bus.as_ref(), 150).await;
    let lake = Lake::open(&format!("file://{}", dir.path().join("lake").display())).unwrap();
    run(
        bus.clone(),
        lake.clone(),
        options(20),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let (before, files_before, _) = lake_events(&lake).await;
    // A crash after the last file became visible, before its position was stored: the stored
    // position is that file's first record (every earlier file's position was stored).
    let start: u64 = files_before
        .iter()
        .filter_map(|f| Some(f.rsplit('/').next()?.split_once("-p0001-o")?.1))
        .map(|o| o.split('-').next().unwrap().parse::<u64>().unwrap())
        .max()
        .unwrap();
    bus.commit("archive", 1, start).await.unwrap();
    let again = run(
        bus.clone(),
        lake.clone(),
        options(20),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(
        again.events > 0,
        "it archived partition 1 again from {start}"
    );
    let (after, files_after, rows) = lake_events(&lake).await;
    assert_eq!(rows, before.len(), "no event twice");
    assert_eq!(after, before);
    assert_eq!(files_after, files_before, "the same files, rewritten");
}

#[tokio::test]
async fn the_watermark_waits_for_the_first_record_not_archived() {
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> =
        Arc::new(LocalBus::open(&dir.path().join("bus"), 1, false, 1 << 16).unwrap());
    let lake = Lake::open("memory://").unwrap();
    let e = event(1);
    bus.produce(vec![(
        Bytes::from("user-1"),
        Bytes::from(to_bus_value(&e, T0 + 50_000)),
    )])
    .await
    .unwrap();
    let opts = ArchiveOptions {
        max_produce_delay_ms: 30_000,
        ..options(10)
    };
    let mut part = Partition::new(bus.clone(), lake.clone(), 0, opts, CancellationToken::new())
        .await
        .unwrap();
    part.publish(None).await.unwrap();
    let mark = ArchiveMark::load(&lake, 0).await.unwrap().unwrap();
    assert_eq!(
        mark.watermark,
        T0 + 20_000,
        "first pending ingest time less the produce delay"
    );
    assert_eq!(mark.next_offset, 0);
    // After a restart the published watermark never goes back.
    let mut part = Partition::new(
        bus.clone(),
        lake.clone(),
        0,
        options(10),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    part.watermark = i64::MAX - 1;
    part.publish(Some(T0)).await.unwrap();
    assert_eq!(
        ArchiveMark::load(&lake, 0)
            .await
            .unwrap()
            .unwrap()
            .watermark,
        i64::MAX - 1
    );
}
