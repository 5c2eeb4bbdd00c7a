//! The platform on a real Fluvio cluster (issue #27): one SC and one SPU started by the test
//! ([`FluvioCluster`]), the real `tandem` binary, a real Redis. Every record the topic holds is
//! applied and archived exactly once; the whole lambda merges exactly; and when the SPU, the SC
//! or `stream run` is killed with SIGKILL, every event the API answered 202 for is in the lake
//! and counted once in the speed layer's profiles.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Int32Type, Int64Type};
use serde_json::{Value, json};
use tandem_common::features::recompute;
use tandem_testkit::{FluvioCluster, RedisServer};

use crate::harness::{Running, Scratch, summary};
use crate::serve::{Server, http};
use crate::stream::{assert_profiles_equal, bus_events, generate_to_bus, speed_profiles};

const KEY: &str = "e2e-fluvio-key-0123456789";

/// A scratch directory whose bus is the topic `events` (8 partitions) of `fluvio`, with an API
/// key, quick archive rolls and a short produce timeout.
fn scratch(fluvio: &FluvioCluster, extra: &[&str]) -> Scratch {
    let s = Scratch::new().with_bus(fluvio.url("events"));
    let path = s.path("tandem.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\napi_keys = [{{ name = \"e2e\", key = \"{KEY}\", scopes = [\"ingest\", \"read\", \"admin\"] }}]\n"
        ),
    )
    .unwrap();
    let mut args = vec![
        "--config".to_string(),
        path.display().to_string(),
        "--set".into(),
        "bus.produce_timeout=3s".into(),
        "--set".into(),
        "stream.archive_roll_age=1s".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    s.with_args(&args)
}

/// Every row of the lake as (partition, offset, user_id, event_id).
pub fn lake_rows(s: &Scratch) -> Vec<(i32, i64, String, String)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let lake = tandem_common::lake::Lake::open(&s.lake_url()).unwrap();
        let mut out = Vec::new();
        for b in lake.read_events().await.unwrap() {
            let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
            let (p, o) = (col("partition"), col("offset"));
            let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
            let (u, e) = (col("user_id"), col("event_id"));
            let (u, e) = (u.as_string::<i32>(), e.as_string::<i32>());
            for i in 0..b.num_rows() {
                assert!(
                    !p.is_null(i) && !o.is_null(i),
                    "an archived row has its position"
                );
                out.push((p.value(i), o.value(i), u.value(i).into(), e.value(i).into()));
            }
        }
        out
    })
}

/// Checks that the lake holds each record of every partition exactly once: offsets 0..end.
pub fn assert_lake_is_the_bus(s: &Scratch, ends: &[u64]) {
    let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for (p, o, _, _) in lake_rows(s) {
        by_partition.entry(p).or_default().push(o);
    }
    for (p, end) in ends.iter().enumerate() {
        let mut offsets = by_partition.remove(&(p as i32)).unwrap_or_default();
        offsets.sort_unstable();
        let want: Vec<i64> = (0..*end as i64).collect();
        if offsets != want {
            let missing: Vec<i64> = want
                .iter()
                .filter(|o| offsets.binary_search(o).is_err())
                .copied()
                .take(10)
                .collect();
            panic!(
                "partition {p}: the lake holds {} rows for {end} records; first missing offsets {missing:?}",
                offsets.len()
            );
        }
    }
}

/// Each partition's end offset, from the bus.
pub fn ends(s: &Scratch) -> Vec<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = tandem_stream::bus::open(&s.bus_url(), 8).await.unwrap();
        let mut v = Vec::new();
        for p in 0..8 {
            v.push(bus.end_offset(p).await.unwrap());
        }
        v
    })
}

/// The sequence of the issue: a generated history onto a real topic, then `stream run` and
/// `stream archive` until caught up. Before the fix, ~2% of the records were skipped for good
/// (a gap per partition after its first megabyte) and the stored positions went past them.
#[test]
fn every_record_of_a_topic_is_applied_and_archived_once() {
    let fluvio = FluvioCluster::start();
    let redis = RedisServer::start();
    let s = scratch(&fluvio, &[]);
    let sent = summary(&s.ok(
        &[
            "generate",
            "--users",
            "2000",
            "--days",
            "3",
            "--seed",
            "5",
            "--end",
            "2026-11-01T00:00:00Z",
            "--bus",
            "config",
        ],
        b"",
    ))["sent"]
        .as_u64()
        .unwrap();
    let ends = ends(&s);
    assert_eq!(
        ends.iter().sum::<u64>(),
        sent,
        "the topic holds what was sent"
    );
    // The SC's own view of the high watermarks catches up within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fluvio.high_watermarks("events") != ends {
        assert!(Instant::now() < deadline, "the SC's high watermarks");
        std::thread::sleep(Duration::from_millis(200));
    }

    let speed = summary(&s.ok(
        &[
            "stream",
            "run",
            "--store",
            &redis.url(),
            "--until-caught-up",
        ],
        b"",
    ));
    assert_eq!(
        speed["applied"].as_u64().unwrap() + speed["duplicates"].as_u64().unwrap(),
        sent,
        "{speed}"
    );
    let archived = summary(&s.ok(&["stream", "archive", "--until-caught-up"], b""));
    assert_eq!(archived["events"].as_u64().unwrap(), sent, "{archived}");
    assert_lake_is_the_bus(&s, &ends);

    // The stored positions are at the ends: nothing more to apply, nothing replayed.
    let again = summary(&s.ok(
        &[
            "stream",
            "run",
            "--store",
            &redis.url(),
            "--until-caught-up",
        ],
        b"",
    ));
    assert_eq!(
        (again["applied"].as_u64(), again["replayed"].as_u64()),
        (Some(0), Some(0)),
        "{again}"
    );
    let events = bus_events(&s);
    let (want, _) = recompute(events.iter().map(|(_, e)| e));
    let users: Vec<String> = want.keys().cloned().collect();
    assert_profiles_equal(&speed_profiles(&redis.url(), &users, 0), &want);
}

/// `n` valid events for the API, ids `f{first}`… over 40 users.
fn events(first: usize, n: usize) -> Value {
    let ts = tandem_common::event::now_ms();
    Value::Array(
        (first..first + n)
            .map(|i| {
                json!({"event_id": format!("f{i}"), "user_id": format!("u{}", i % 40),
                       "kind": if i % 5 == 0 { "purchase" } else { "view" },
                       "item_id": format!("i{}", i % 17), "category": format!("c{}", i % 3),
                       "price": 3.5, "ts": ts})
            })
            .collect(),
    )
}

/// Posts batches of events to the API and remembers which were answered 202 (all accepted).
struct Poster {
    port: u16,
    next: usize,
    acked: BTreeSet<String>,
    statuses: Vec<u16>,
    /// Batches answered otherwise, to post again (as a client retries).
    retry: Vec<(usize, usize)>,
}

impl Poster {
    fn new(port: u16) -> Poster {
        Poster {
            port,
            next: 0,
            acked: BTreeSet::new(),
            statuses: Vec::new(),
            retry: Vec::new(),
        }
    }

    fn post(&mut self, first: usize, n: usize) -> u16 {
        let (status, body) = http(
            self.port,
            "POST",
            "/v1/events",
            Some(KEY),
            Some(&events(first, n)),
        );
        self.statuses.push(status);
        match status {
            202 => {
                assert_eq!(body["accepted"], n, "{body}");
                self.acked
                    .extend((first..first + n).map(|i| format!("f{i}")));
            }
            503 => {
                assert_eq!(body["code"], "bus_unavailable", "{body}");
                self.retry.push((first, n));
            }
            other => panic!("POST /v1/events answered {other}: {body}"),
        }
        status
    }

    /// A new batch of 25.
    fn post_new(&mut self) -> u16 {
        let first = self.next;
        self.next += 25;
        self.post(first, 25)
    }

    /// Posts the batches that failed again, until each is answered 202 (or `patience` passes).
    fn retry_all(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        while let Some((first, n)) = self.retry.pop() {
            assert!(
                Instant::now() < deadline,
                "batches still refused after {patience:?}"
            );
            if self.post(first, n) != 202 {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// The processes of the speed side: serve, the speed layer and the archiver, on the topic.
struct Platform {
    server: Server,
    speed: Running,
    archive: Running,
}

impl Platform {
    fn start(s: &Scratch, redis: &str) -> Platform {
        let server = Server::start(s, &["--store", redis]);
        let speed = Running::start(s.tandem(&["stream", "run", "--store", redis]));
        let archive = Running::start(s.tandem(&["stream", "archive"]));
        Platform {
            server,
            speed,
            archive,
        }
    }
}

/// Waits until the running speed layer and archiver have everything the topic holds, then
/// stops them (SIGTERM, a clean exit) and checks: every record in the lake once, every event
/// answered 202 on the bus and in the lake, and the speed layer's profiles equal to the
/// recomputation over the bus.
fn settle_and_check(s: &Scratch, redis: &str, platform: Platform, acked: &BTreeSet<String>) {
    let Platform {
        server,
        mut speed,
        mut archive,
    } = platform;
    let deadline = Instant::now() + Duration::from_secs(120);
    let want = loop {
        speed.assert_running();
        archive.assert_running();
        let events = bus_events(s);
        let (want, _) = recompute(events.iter().map(|(_, e)| e));
        let users: Vec<String> = want.keys().cloned().collect();
        let got = speed_profiles(redis, &users, 0);
        let archived = lake_rows(s).len();
        if got.len() == want.len()
            && want
                .iter()
                .all(|(u, p)| got.get(u).is_some_and(|g| g.approx_eq(p)))
            && archived == events.len()
        {
            break (events, want);
        }
        assert!(
            Instant::now() < deadline,
            "the running speed layer and archiver did not catch up in 120 s ({archived} of {} archived)",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let (events, profiles) = want;
    speed.stop();
    archive.stop();
    assert!(server.stop(), "serve stops cleanly");
    let on_bus: BTreeSet<String> = events.iter().map(|(_, e)| e.event_id.to_string()).collect();
    let missing: Vec<&String> = acked.difference(&on_bus).take(10).collect();
    assert!(
        missing.is_empty(),
        "events answered 202 but not on the bus: {missing:?}"
    );
    assert_lake_is_the_bus(s, &ends(s));
    let in_lake: BTreeSet<String> = lake_rows(s).into_iter().map(|r| r.3).collect();
    assert!(
        acked.is_subset(&in_lake),
        "every event answered 202 is in the lake"
    );
    let users: Vec<String> = profiles.keys().cloned().collect();
    assert_profiles_equal(&speed_profiles(redis, &users, 0), &profiles);
    // A restart of both finds nothing left to do.
    let again = summary(&s.ok(
        &["stream", "run", "--store", redis, "--until-caught-up"],
        b"",
    ));
    assert_eq!(again["applied"], 0, "{again}");
}

/// The SPU (the partition leader) killed with SIGKILL while events are posted and consumed,
/// then started again: the API answers 503 while it is down (a retry then succeeds) and 202
/// only for events that are kept; the speed layer and the archiver resume by themselves.
#[test]
fn the_spu_killed_and_restarted_loses_nothing_acknowledged() {
    let mut fluvio = FluvioCluster::start();
    let redis = RedisServer::start();
    let s = scratch(&fluvio, &[]);
    let platform = Platform::start(&s, &redis.url());
    let mut poster = Poster::new(platform.server.port());
    for _ in 0..20 {
        assert_eq!(poster.post_new(), 202);
    }
    fluvio.kill_spu();
    let down = Instant::now();
    let mut refused = 0;
    while down.elapsed() < Duration::from_secs(8) {
        if poster.post_new() == 503 {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "with the SPU down the API refuses events: {:?}",
        poster.statuses
    );
    fluvio.start_spu();
    poster.retry_all(Duration::from_secs(120));
    for _ in 0..20 {
        assert_eq!(poster.post_new(), 202, "after the SPU is back");
    }
    settle_and_check(&s, &redis.url(), platform, &poster.acked);
}

/// The SC killed with SIGKILL and started again while events flow: nothing acknowledged is
/// lost, nothing is counted twice.
#[test]
fn the_sc_killed_and_restarted_loses_nothing_acknowledged() {
    let mut fluvio = FluvioCluster::start();
    let redis = RedisServer::start();
    let s = scratch(&fluvio, &[]);
    let platform = Platform::start(&s, &redis.url());
    let mut poster = Poster::new(platform.server.port());
    for _ in 0..20 {
        assert_eq!(poster.post_new(), 202);
    }
    fluvio.kill_sc();
    let down = Instant::now();
    while down.elapsed() < Duration::from_secs(5) {
        poster.post_new();
    }
    fluvio.start_sc();
    poster.retry_all(Duration::from_secs(120));
    for _ in 0..20 {
        let status = poster.post_new();
        if status != 202 {
            poster.retry_all(Duration::from_secs(60));
        }
    }
    settle_and_check(&s, &redis.url(), platform, &poster.acked);
}

/// `stream run` on Fluvio killed with SIGKILL while it applies small batches, then started
/// again: every user exactly right (nothing lost, nothing counted twice).
#[test]
fn the_speed_layer_on_fluvio_killed_mid_batch_loses_nothing() {
    let fluvio = FluvioCluster::start();
    let redis = RedisServer::start();
    let s = scratch(&fluvio, &["--set", "stream.commit_interval=50ms"]);
    let sent = generate_to_bus(&s, "300", "5")["sent"].as_u64().unwrap();
    let mut child =
        Running::start(s.tandem(&["stream", "run", "--store", &redis.url(), "--batch", "40"]));
    // Kill it once it has applied part of the bus.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        child.assert_running();
        let applied: u64 = redis_keys(&redis, "tandem:u:*:speed");
        if applied > 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the speed layer applied nothing in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill();
    let rest = summary(&s.ok(
        &[
            "stream",
            "run",
            "--store",
            &redis.url(),
            "--until-caught-up",
        ],
        b"",
    ));
    assert!(rest["applied"].as_u64().unwrap() > 0, "{rest}");
    let events = bus_events(&s);
    assert_eq!(events.len() as u64, sent);
    let (want, _) = recompute(events.iter().map(|(_, e)| e));
    let users: Vec<String> = want.keys().cloned().collect();
    assert_profiles_equal(&speed_profiles(&redis.url(), &users, 0), &want);
}

/// How many keys match `pattern` in `redis`.
fn redis_keys(redis: &RedisServer, pattern: &str) -> u64 {
    tandem_testkit::cli(
        redis.port(),
        &["EVAL", "return #redis.call('KEYS', ARGV[1])", "0", pattern],
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

/// The whole lambda on Fluvio: events through the API and `generate --bus` in two waves, the
/// speed layer and the archiver on the topic, a batch run at a cutoff between the waves; every
/// user's snapshot ⊕ speed equals the recomputation over every event, and the topic's high
/// watermarks equal what was applied and archived.
#[test]
fn the_whole_lambda_on_fluvio_merges_exactly() {
    let fluvio = FluvioCluster::start();
    let redis = RedisServer::start();
    let s = scratch(
        &fluvio,
        &[
            "--set",
            "events.epoch=1s",
            "--set",
            "bus.max_produce_delay=1s",
            "--set",
            "batch.window=2d",
        ],
    );
    let server = Server::start(&s, &["--store", &redis.url()]);
    let mut poster = Poster::new(server.port());
    generate_to_bus(&s, "200", "7");
    for _ in 0..10 {
        assert_eq!(poster.post_new(), 202);
    }
    std::thread::sleep(Duration::from_millis(1_100));
    let cutoff = tandem_common::event::now_ms() / 1000 * 1000;
    std::thread::sleep(Duration::from_millis(1_100));
    generate_to_bus(&s, "200", "8");
    for _ in 0..10 {
        assert_eq!(poster.post_new(), 202);
    }
    assert!(server.stop());

    let run = |args: &[&str]| summary(&s.ok(args, b""));
    let events = bus_events(&s);
    let archived = run(&["stream", "archive", "--until-caught-up"]);
    assert_eq!(
        archived["events"].as_u64().unwrap(),
        events.len() as u64,
        "{archived}"
    );
    let ends = ends(&s);
    assert_lake_is_the_bus(&s, &ends);
    std::thread::sleep(Duration::from_millis(1_100));
    let speed = run(&[
        "stream",
        "run",
        "--store",
        &redis.url(),
        "--until-caught-up",
    ]);
    assert_eq!(
        speed["applied"].as_u64().unwrap() + speed["duplicates"].as_u64().unwrap(),
        ends.iter().sum::<u64>(),
        "{speed}"
    );
    let batch = run(&[
        "batch",
        "run",
        "--store",
        &redis.url(),
        "--cutoff",
        &cutoff.to_string(),
    ]);
    assert_eq!(batch["outcome"], "published", "{batch}");
    let before = events.iter().filter(|(i, _)| *i < cutoff).count();
    assert!(
        before > 0 && before < events.len(),
        "the cutoff splits the events"
    );
    crate::stream::assert_merged_equals_recompute(&redis.url(), cutoff, &events);
    let acked_on_bus = events
        .iter()
        .filter(|(_, e)| poster.acked.contains(e.event_id.as_ref()))
        .count();
    assert_eq!(
        acked_on_bus,
        poster.acked.len(),
        "every posted event is on the bus once"
    );
}
