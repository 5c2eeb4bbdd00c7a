use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::bus::check_contiguous;
use crate::bus::conformance::{self, Harness};

struct Local {
    root: tempfile::TempDir,
    n: AtomicU32,
    segment_bytes: u64,
}

impl Local {
    fn new(segment_bytes: u64) -> Self {
        Local {
            root: tempfile::tempdir().unwrap(),
            n: AtomicU32::new(0),
            segment_bytes,
        }
    }
}

#[async_trait]
impl Harness for Local {
    type Id = PathBuf;
    async fn fresh(&self, partitions: u32) -> (PathBuf, Arc<dyn Bus>) {
        let dir = self
            .root
            .path()
            .join(self.n.fetch_add(1, Ordering::Relaxed).to_string());
        let bus = LocalBus::open(&dir, partitions, false, self.segment_bytes).unwrap();
        (dir, Arc::new(bus))
    }
    async fn reopen(&self, id: &PathBuf, partitions: u32) -> Arc<dyn Bus> {
        Arc::new(LocalBus::open(id, partitions, true, self.segment_bytes).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_default_segments() {
    conformance::run_all(&Local::new(DEFAULT_SEGMENT_BYTES)).await;
}

/// Tiny segments: every check also crosses segment boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_tiny_segments() {
    conformance::run_all(&Local::new(300)).await;
}

fn last_segment(dir: &Path, p: u32) -> PathBuf {
    let bases = segments(dir, p).unwrap();
    segment_path(dir, p, *bases.last().unwrap())
}

#[tokio::test]
async fn a_torn_tail_is_never_returned_and_is_cut_by_the_next_producer() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    bus.produce(
        (0..10)
            .map(|i| (Bytes::from("k"), Bytes::from(format!("v{i}"))))
            .collect(),
    )
    .await
    .unwrap();
    drop(bus);
    let seg = last_segment(dir.path(), 0);
    let whole = fs::metadata(&seg).unwrap().len();
    // Half of an eleventh record, as a crash mid-write leaves it.
    let mut rec = Vec::new();
    encode(&mut rec, 10, 0, b"k", b"torn-value");
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&rec[..rec.len() / 2])
        .unwrap();

    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let got = bus.fetch(0, 0, 100, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 10, "readers stop before the torn record");
    assert_eq!(bus.end_offset(0).await.unwrap(), 10);
    let pos = bus
        .produce(vec![(Bytes::from("k"), Bytes::from("after"))])
        .await
        .unwrap();
    assert_eq!(pos[0].offset, 10, "the torn record's offset is reused");
    let got = bus.fetch(0, 0, 100, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 11);
    assert_eq!(&got[10].value[..], b"after");
    assert_eq!(
        fs::metadata(&seg).unwrap().len(),
        whole + (rec.len() as u64 - 10 + 5),
        "the tail was cut before appending"
    );
}

/// Disk full mid-produce: the produce fails (the API answers 503) with part of it written;
/// once space is back, later produces are read after the last whole record, and nothing
/// acknowledged is lost, in this process or after a restart.
#[tokio::test]
async fn a_produce_that_fails_mid_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), 2, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let batch = |tag: &str| -> Vec<(Bytes, Bytes)> {
        (0..20)
            .map(|i| {
                (
                    Bytes::from(format!("k{i}")),
                    Bytes::from(format!("{tag}-{i}")),
                )
            })
            .collect()
    };
    let mut acked: Vec<String> = Vec::new();
    bus.produce(batch("a")).await.unwrap();
    acked.extend((0..20).map(|i| format!("a-{i}")));
    // Room for a record and a half of the next produce.
    *bus.inner.space.lock().unwrap() = Some(60);
    bus.produce(batch("failed")).await.unwrap_err();
    *bus.inner.space.lock().unwrap() = None;
    for round in 0..10 {
        let tag = format!("b{round}");
        bus.produce(batch(&tag)).await.unwrap();
        acked.extend((0..20).map(|i| format!("{tag}-{i}")));
    }
    let read_all = |bus: LocalBus| async move {
        let mut values = Vec::new();
        for p in 0..2 {
            let mut next = 0;
            loop {
                let got = bus.fetch(p, next, 7, Duration::ZERO).await.unwrap();
                if got.is_empty() {
                    break;
                }
                for r in &got {
                    assert_eq!(r.offset, next, "partition {p} is contiguous");
                    next += 1;
                    values.push(String::from_utf8(r.value.to_vec()).unwrap());
                }
            }
            assert_eq!(next, bus.end_offset(p).await.unwrap());
        }
        values
    };
    let check = |values: Vec<String>| {
        for v in &acked {
            assert!(values.contains(v), "acknowledged {v} is read back");
        }
        // Whole records of the failed produce may stay (never acknowledged; a retry is a
        // duplicate by event id); the torn one never shows.
        let extra = values.iter().filter(|v| v.starts_with("failed")).count();
        assert_eq!(values.len(), acked.len() + extra);
        assert!(extra <= 1, "{extra}");
    };
    check(read_all(bus.clone()).await);
    drop(bus);
    let bus = LocalBus::open(dir.path(), 2, false, DEFAULT_SEGMENT_BYTES).unwrap();
    check(read_all(bus.clone()).await);
    bus.produce(batch("c")).await.unwrap();
}

/// A one-partition bus of three records, closed, with the byte at `at(segment length)` of its
/// segment flipped: (bus dir, segment, its bytes now).
async fn three_records_with_a_flipped_byte(
    at: impl Fn(usize) -> usize,
) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    bus.produce(
        (0..3)
            .map(|i| (Bytes::from("k"), Bytes::from(format!("v{i}"))))
            .collect(),
    )
    .await
    .unwrap();
    drop(bus);
    let seg = last_segment(dir.path(), 0);
    let mut bytes = fs::read(&seg).unwrap();
    let i = at(bytes.len());
    bytes[i] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    (dir, seg, bytes)
}

#[tokio::test]
async fn a_record_with_a_bad_checksum_ends_the_log() {
    // The last value byte of record 2.
    let (dir, _, _) = three_records_with_a_flipped_byte(|len| len - 1).await;
    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    assert_eq!(bus.fetch(0, 0, 10, Duration::ZERO).await.unwrap().len(), 2);
    let pos = bus
        .produce(vec![(Bytes::from("k"), Bytes::from("v2-again"))])
        .await
        .unwrap();
    assert_eq!(pos[0].offset, 2);
}

/// A damaged record with records after it is reported, not waited on as a tail being written.
#[tokio::test]
async fn a_damaged_record_before_more_data_is_reported() {
    // The last value byte of record 0 (the three are the same size).
    let (dir, seg, bytes) = three_records_with_a_flipped_byte(|len| len / 3 - 1).await;
    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let err = bus.fetch(0, 0, 10, Duration::ZERO).await.unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    // The producer refuses rather than cutting the records after the damage.
    let err = bus
        .produce(vec![(Bytes::from("k"), Bytes::from("v3"))])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("damaged"), "{err}");
    assert_eq!(fs::read(&seg).unwrap(), bytes);
}

/// A fetch of 4,096 large records stops at the record that takes it to `FETCH_BYTES` (a
/// record larger than that comes alone or last), and the fetches after it hand out the rest,
/// in order.
#[tokio::test]
async fn a_fetch_is_bounded_by_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let big = Bytes::from(vec![b'x'; 440 << 10]);
    let records: Vec<(Bytes, Bytes)> = (0..40)
        .map(|i| (Bytes::from(format!("k{i}")), big.clone()))
        .collect();
    bus.produce(records).await.unwrap();
    let huge = Bytes::from(vec![b'y'; FETCH_BYTES + 1]);
    bus.produce(vec![(Bytes::from("k"), huge)]).await.unwrap();
    let mut offset = 0;
    let mut fetches = 0;
    while offset < 41 {
        let got = bus.fetch(0, offset, 4096, Duration::ZERO).await.unwrap();
        assert!(!got.is_empty(), "nothing at {offset}");
        check_contiguous(0, offset, &got).unwrap();
        let before_last: usize = got[..got.len() - 1].iter().map(|r| r.value.len()).sum();
        assert!(
            before_last < FETCH_BYTES,
            "{} records, {before_last} bytes before the last",
            got.len()
        );
        offset += got.len() as u64;
        fetches += 1;
    }
    assert!(fetches >= 3, "{fetches} fetches");
}

#[tokio::test]
async fn the_partition_count_is_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    LocalBus::open(dir.path(), 4, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let err = LocalBus::open(dir.path(), 8, false, DEFAULT_SEGMENT_BYTES)
        .err()
        .unwrap();
    assert!(err.to_string().contains("has 4 partitions, not 8"), "{err}");
}

#[tokio::test]
async fn one_producer_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let a = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    let b = LocalBus::open(dir.path(), 1, false, DEFAULT_SEGMENT_BYTES).unwrap();
    a.produce(vec![(Bytes::from("k"), Bytes::from("a"))])
        .await
        .unwrap();
    let err = b
        .produce(vec![(Bytes::from("k"), Bytes::from("b"))])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("another process is producing"),
        "{err}"
    );
    // A reader beside the producer is fine.
    assert_eq!(b.fetch(0, 0, 10, Duration::ZERO).await.unwrap().len(), 1);
}

#[tokio::test]
async fn urls_and_groups_are_checked() {
    assert!(LocalBus::open_url("local://", 1).is_err());
    let err = LocalBus::open_url("local:///tmp/x?fsync=sometimes", 1)
        .err()
        .unwrap();
    assert!(err.to_string().contains("fsync=sometimes"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bus =
        LocalBus::open_url(&format!("local://{}?fsync=never", dir.path().display()), 2).unwrap();
    assert!(bus.commit("../evil", 0, 1).await.is_err());
    assert!(
        bus.fetch(2, 0, 1, Duration::ZERO).await.is_err(),
        "partition out of range"
    );
    let err = crate::bus::open("fluvio://localhost:9003", 2)
        .await
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "bus `fluvio://localhost:9003`: expected fluvio://HOST:PORT/TOPIC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_follows_a_writer_in_another_handle() {
    let dir = tempfile::tempdir().unwrap();
    let writer = LocalBus::open(dir.path(), 1, false, 4096).unwrap();
    // A second handle stands for another process: it learns of records by polling the files.
    let reader = LocalBus::open(dir.path(), 1, false, 4096).unwrap();
    let total = 2000u64;
    let follow = tokio::spawn(async move {
        let mut next = 0u64;
        let mut values = Vec::new();
        while next < total {
            let got = reader
                .fetch(0, next, 64, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(
                !got.is_empty(),
                "the reader waited 30s with records still to come"
            );
            for r in got {
                assert_eq!(r.offset, next);
                values.push(r.value);
                next += 1;
            }
        }
        values
    });
    for chunk in 0..(total / 50) {
        let batch = (0..50)
            .map(|i| (Bytes::from("k"), Bytes::from(format!("{}", chunk * 50 + i))))
            .collect();
        writer.produce(batch).await.unwrap();
        tokio::task::yield_now().await;
    }
    let values = follow.await.unwrap();
    let expected: Vec<Bytes> = (0..total).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(values, expected);
}

/// Child side of [`survives_kill_9`]: produces until killed, printing each acknowledged record.
/// Does nothing unless started by that test with `TANDEM_KILL9_BUS`.
#[test]
fn kill9_child_entry() {
    let Ok(dir) = std::env::var("TANDEM_KILL9_BUS") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = LocalBus::open(Path::new(&dir), 2, false, 64 << 10).unwrap();
        let mut out = std::io::stdout().lock();
        for i in 0u64.. {
            // Values of varied size so that a kill lands mid-record now and then.
            let batch: Vec<_> = (0..8)
                .map(|j| {
                    let n = i * 8 + j;
                    (
                        Bytes::from(format!("u{}", n % 13)),
                        Bytes::from(format!("{n}:{}", "x".repeat((n % 997) as usize * 7))),
                    )
                })
                .collect();
            let pos = bus.produce(batch).await.unwrap();
            for (j, p) in pos.iter().enumerate() {
                writeln!(out, "ack {} {} {}", i * 8 + j as u64, p.partition, p.offset).unwrap();
            }
            out.flush().unwrap();
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, u32, u64)> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "bus::local::tests::kill9_child_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TANDEM_KILL9_BUS", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut n = 0;
        let goal = 3000 + round * 1000;
        while n < goal {
            let line = lines
                .next()
                .expect("the child acknowledges records")
                .unwrap();
            if let Some(rest) = line.strip_prefix("ack ") {
                let v: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap()).collect();
                acked.push((v[0] + round as u64 * 1_000_000_000, v[1] as u32, v[2]));
                n += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL, mid-produce
        child.wait().unwrap();
    }
    let bus = LocalBus::open(dir.path(), 2, false, 64 << 10).unwrap();
    let mut logs = Vec::new();
    for p in 0..2 {
        let mut all = Vec::new();
        loop {
            let got = bus
                .fetch(p, all.len() as u64, 500, Duration::ZERO)
                .await
                .unwrap();
            if got.is_empty() {
                break;
            }
            all.extend(got);
        }
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.offset, i as u64, "offsets are gap-free after three kills");
        }
        logs.push(all);
    }
    for (n, p, off) in &acked {
        let r = logs[*p as usize]
            .get(*off as usize)
            .unwrap_or_else(|| panic!("acknowledged record {n} at {p}/{off} was lost"));
        let v = String::from_utf8_lossy(&r.value);
        assert_eq!(
            v.split(':').next().unwrap(),
            (n % 1_000_000_000).to_string(),
            "record at {p}/{off}"
        );
    }
    // And the log takes new records after the last kill.
    let pos = bus
        .produce(vec![(Bytes::from("u0"), Bytes::from("after"))])
        .await
        .unwrap();
    assert_eq!(pos[0].offset, logs[pos[0].partition as usize].len() as u64);
}
