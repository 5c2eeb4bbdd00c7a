use super::*;
use crate::event::{Acceptance, parse_event};
use crate::schema::{EventBatchBuilder, Stamp};

fn batch(n: usize, ingest_ts: i64) -> arrow::array::RecordBatch {
    let mut b = EventBatchBuilder::default();
    for i in 0..n {
        let json = format!(
            r#"{{"event_id":"e{i}","user_id":"u{}","kind":"view","item_id":"i{}","ts":1000}}"#,
            i % 7,
            i % 11
        );
        b.append(
            &parse_event(json.as_bytes(), Acceptance::at(ingest_ts)).unwrap(),
            Stamp::bulk(ingest_ts),
        );
    }
    b.finish().unwrap()
}

const DAY1: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

#[tokio::test]
async fn files_roll_by_rows_and_by_ingest_date() {
    let lake = Lake::open("memory://").unwrap();
    let opts = WriterOptions {
        file_max_rows: 2500,
        row_group_rows: 1024,
        zstd_level: 1,
    };
    let mut w = EventFileWriter::new(lake.clone(), "t", opts).unwrap();
    w.write(&batch(2000, DAY1 + 1000), DAY1 + 1000)
        .await
        .unwrap();
    w.write(&batch(2000, DAY1 + 2000), DAY1 + 2000)
        .await
        .unwrap();
    assert_eq!(w.written().len(), 1, "the first file closed at 2500 rows");
    w.write(&batch(10, DAY1 + 86_400_000), DAY1 + 86_400_000)
        .await
        .unwrap();
    let files = w.finish().await.unwrap();
    let rows: Vec<u64> = files.iter().map(|f| f.rows).collect();
    assert_eq!(rows, vec![2500, 1500, 10]);
    assert_eq!(files[0].path, "events/date=2025-11-22/t-00000.parquet");
    assert_eq!(files[2].path, "events/date=2025-11-23/t-00002.parquet");
    let listed = lake.event_files().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed.iter().map(|m| m.size).sum::<u64>(),
        files.iter().map(|f| f.bytes).sum::<u64>()
    );
    let total: usize = lake
        .read_events()
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(total, 4010);
}

#[tokio::test]
async fn an_unfinished_file_is_not_visible() {
    let dir = tempfile::tempdir().unwrap();
    let lake = Lake::open(&format!("file://{}", dir.path().display())).unwrap();
    let mut w = EventFileWriter::new(lake.clone(), "t", WriterOptions::default()).unwrap();
    w.write(&batch(5000, DAY1), DAY1).await.unwrap();
    assert_eq!(w.pending_rows(), 5000);
    assert!(
        lake.event_files().await.unwrap().is_empty(),
        "nothing visible before the file is closed"
    );
    drop(w); // as a crash would
    assert!(
        lake.event_files().await.unwrap().is_empty(),
        "an abandoned file never becomes visible"
    );
}

#[tokio::test]
async fn the_watermark_waits_for_live_runs_only() {
    let lake = Lake::open("memory://").unwrap();
    let lease = 600_000;
    assert_eq!(
        ingest_watermark(&lake, DAY1, lease).await.unwrap(),
        DAY1,
        "no runs: now"
    );
    let mut a = IngestRun::start(&lake, "a", DAY1, DAY1).await.unwrap();
    let mut b = IngestRun::start(&lake, "b", DAY1 + 10, DAY1 + 10)
        .await
        .unwrap();
    assert_eq!(
        ingest_watermark(&lake, DAY1 + 20, lease).await.unwrap(),
        DAY1
    );
    a.advance(&lake, DAY1 + 30, DAY1 + 25, 1, 100)
        .await
        .unwrap();
    assert_eq!(
        ingest_watermark(&lake, DAY1 + 40, lease).await.unwrap(),
        DAY1 + 10,
        "b holds it now"
    );
    b.finish(&lake, DAY1 + 50, 2, 200).await.unwrap();
    assert_eq!(
        ingest_watermark(&lake, DAY1 + 60, lease).await.unwrap(),
        DAY1 + 25
    );
    // a stops refreshing: after its lease it no longer holds the watermark back.
    let later = DAY1 + 30 + lease + 1;
    assert_eq!(ingest_watermark(&lake, later, lease).await.unwrap(), later);
    let runs = IngestRun::list(&lake).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[1].finished && runs[1].events == 200);
}

#[test]
fn urls_open_the_right_store() {
    let dir = tempfile::tempdir().unwrap();
    let plain = Lake::open(dir.path().to_str().unwrap()).unwrap();
    assert!(plain.url().starts_with("file:///"), "{}", plain.url());
    assert!(Lake::open("memory://").is_ok());
    let err = Lake::open("s3://").unwrap_err().to_string();
    assert!(err.starts_with("lake url `s3://`"), "{err}");
}

#[tokio::test]
async fn erasures_keep_each_users_latest_tombstone() {
    let lake = Lake::open("memory://").unwrap();
    assert!(lake.erasures().await.unwrap().is_empty());
    for (user, at) in [
        ("u1", 500),
        ("u2", 300),
        ("u1", 900),
        ("u1", 700),
        ("u1", 900),
    ] {
        let t = Tombstone {
            user_id: user.into(),
            erased_ms: at,
        };
        lake.record_erasure(&t).await.unwrap();
    }
    let got = lake.erasures().await.unwrap();
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        [("u1".into(), 900), ("u2".into(), 300)]
    );
    // A damaged tombstone is an error naming it, not an erasure silently lost.
    lake.store()
        .put(
            &lake.path("_meta/erasures/0000000000001-bad.json"),
            PutPayload::from_static(b"{\"user_id\": 7}"),
        )
        .await
        .unwrap();
    let err = lake.erasures().await.unwrap_err().to_string();
    assert!(err.contains("0000000000001-bad.json"), "{err}");
}
