//! `tandem stream run` and `tandem stream archive` (issue #4): the real binary, a real Redis.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tandem_common::event::{Event, from_bus_value};
use tandem_common::features::{Profile, recompute};
use tandem_common::store::speed::partition_marker_key;
use tandem_common::store::{OnlineStore, RedisStore, UserRow, user_key};
use tandem_testkit::{RedisCluster, RedisServer};

use crate::harness::{Scratch, summary};

/// Every event on the scratch bus (8 partitions) with its ingest time, in offset order per
/// partition.
pub fn bus_events(s: &Scratch) -> Vec<(i64, Event<'static>)> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = tandem_stream::bus::open(&s.bus_url(), 8).await.unwrap();
        let mut out = Vec::new();
        for p in 0..bus.partitions() {
            let end = bus.end_offset(p).await.unwrap();
            let mut offset = 0;
            while offset < end {
                let got = bus.fetch(p, offset, 10_000, Duration::ZERO).await.unwrap();
                for r in &got {
                    assert_eq!(
                        r.offset, offset,
                        "the bus's records of partition {p} in order"
                    );
                    offset += 1;
                    let (ingest, e) = from_bus_value(&r.value).unwrap();
                    out.push((ingest, e.into_owned()));
                }
            }
        }
        out
    })
}

pub fn generate_to_bus(s: &Scratch, users: &str, seed: &str) -> serde_json::Value {
    summary(&s.ok(
        &[
            "generate",
            "--users",
            users,
            "--days",
            "6",
            "--end",
            "2026-11-01T00:00:00Z",
            "--seed",
            seed,
            "--dup-rate",
            "0.05",
            "--bus",
            "config",
        ],
        b"",
    ))
}

/// Each user's speed deltas (all epochs from `from`), merged, from the real Redis.
pub fn speed_profiles(url: &str, users: &[String], from: i64) -> BTreeMap<String, Profile> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = RedisStore::connect(url).await.unwrap();
        let mut out = BTreeMap::new();
        for u in users {
            let p = store.speed(u, from).await.unwrap().merged();
            if p.events() > 0 {
                out.insert(u.clone(), p);
            }
        }
        out
    })
}

pub fn assert_profiles_equal(got: &BTreeMap<String, Profile>, want: &BTreeMap<String, Profile>) {
    assert_eq!(got.len(), want.len(), "users with events");
    for (u, p) in want {
        let g = got.get(u).unwrap_or_else(|| panic!("user {u} is missing"));
        assert!(g.approx_eq(p), "user {u}:\ngot  {g:?}\nwant {p:?}");
    }
}

/// `tandem stream run --until-caught-up` on `store`; its summary.
pub fn catch_up(s: &Scratch, store: &str) -> serde_json::Value {
    summary(&s.ok(
        &["stream", "run", "--store", store, "--until-caught-up"],
        b"",
    ))
}

/// Checks every user's speed deltas against the recomputation over every event on the bus;
/// returns how many events the bus holds.
pub fn assert_speed_matches_bus(s: &Scratch, store: &str) -> usize {
    let events = bus_events(s);
    let (want, _) = recompute(events.iter().map(|(_, e)| e));
    let users: Vec<String> = want.keys().cloned().collect();
    assert_profiles_equal(&speed_profiles(store, &users, 0), &want);
    events.len()
}

/// The sum of the positions a consumer group stored on the local bus (`p-NNNN` files in
/// `dir`; 0 before any), skipping the temporary file of a write in flight.
fn stored_positions(dir: &std::path::Path) -> u64 {
    let Ok(files) = std::fs::read_dir(dir) else {
        return 0;
    };
    files
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_none())
        .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok())
        .sum()
}

/// Waits until the positions in `dir` differ from `before` (up to 120 s), checking that
/// `child`, if given, is still running.
fn wait_for_a_new_position(
    dir: &std::path::Path,
    before: u64,
    mut child: Option<&mut std::process::Child>,
    what: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_positions(dir) == before {
        assert!(
            Instant::now() < deadline,
            "{what} stored no position in 120 s"
        );
        if let Some(c) = child.as_deref_mut() {
            assert!(c.try_wait().unwrap().is_none(), "{what} exited early");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_speed_layer_killed_mid_batch_loses_nothing_and_counts_nothing_twice() {
    // Positions stored as it goes (by default once a second), so that the kill comes after one.
    let s = Scratch::new().with_args(&["--set", "stream.commit_interval=10ms"]);
    let redis = RedisServer::start();
    let sent = generate_to_bus(&s, "300", "5");
    assert!(sent["sent"].as_u64().unwrap() > 5_000, "{sent}");

    // Small batches, so that a kill lands between applying a batch and storing its position.
    let mut child = s
        .tandem(&["stream", "run", "--store", &redis.url(), "--batch", "40"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let positions = s.path("bus").join("consumers").join("speed");
    let deadline = Instant::now() + Duration::from_secs(120);
    let has_position = || {
        positions.exists()
            && std::fs::read_dir(&positions)
                .unwrap()
                .any(|f| f.unwrap().path().extension().is_none())
    };
    while !has_position() {
        assert!(
            Instant::now() < deadline,
            "the speed layer stored no position in 120 s"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the speed layer exited early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let rest = catch_up(&s, &redis.url());
    assert!(rest["applied"].as_u64().unwrap() > 0, "{rest}");

    let events = assert_speed_matches_bus(&s, &redis.url());
    assert_eq!(events as u64, sent["sent"].as_u64().unwrap());

    // A graceful stop (SIGTERM) finishes its batch: the next start replays nothing.
    generate_to_bus(&s, "300", "6");
    let child = s
        .tandem(&["stream", "run", "--store", &redis.url(), "--batch", "40"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Once it has stored a new position it is running (its signal handlers are in place).
    let before = stored_positions(&positions);
    wait_for_a_new_position(&positions, before, None, "the speed layer");
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "SIGTERM is a clean exit: {}",
        out.status
    );
    summary(&String::from_utf8(out.stdout).unwrap());
    let after = catch_up(&s, &redis.url());
    assert_eq!(after["replayed"], 0, "{after}");
    assert_speed_matches_bus(&s, &redis.url());
}

/// The archiver killed (SIGKILL) in four rounds, each after it made a file visible and at a
/// later moment of its work each time — a file half uploaded, a file visible whose position
/// is not stored yet — with new events on the bus every round; then run until caught up: the
/// lake holds every record of the bus exactly once (offsets 0..end of each partition), and no
/// half-uploaded file is visible.
#[test]
fn the_archiver_killed_again_and_again_archives_every_record_once() {
    use crate::fluvio::{assert_lake_is_the_bus, ends};
    let s = Scratch::new().with_args(&[
        "--set",
        "stream.archive_roll_rows=300",
        "--set",
        "stream.archive_roll_age=20ms",
    ]);
    let positions = s.path("bus").join("consumers").join("archive");
    let mut sent = 0;
    for round in 0..4u64 {
        let seed = (10 + round).to_string();
        sent += generate_to_bus(&s, "200", &seed)["sent"].as_u64().unwrap();
        let before = stored_positions(&positions);
        let mut child = s
            .tandem(&["stream", "archive"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_a_new_position(&positions, before, Some(&mut child), "the archiver");
        // Later into its work each round; where exactly the kill lands is not asserted, only
        // what the lake holds in the end.
        std::thread::sleep(Duration::from_millis(15 * round));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    summary(&s.ok(&["stream", "archive", "--until-caught-up"], b""));
    let ends = ends(&s);
    assert_eq!(ends.iter().sum::<u64>(), sent);
    assert_lake_is_the_bus(&s, &ends);
}

/// The whole lambda: the bus archived into the lake, a batch run over it at a cutoff between
/// two waves of events, the speed layer over everything; snapshot ⊕ speed epochs after the
/// cutoff equals the recomputation over every event, for every user.
#[test]
fn archive_then_batch_then_speed_merge_exactly() {
    let redis = RedisServer::start();
    lambda_merges_exactly(&redis.url());
}

/// The same on a Redis Cluster of three nodes.
#[test]
fn archive_then_batch_then_speed_merge_exactly_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    lambda_merges_exactly(&cluster.url());
}

/// A scratch with one-second epochs (and `extra` settings), and two waves of 250 users' events
/// on its bus (`seeds`), a second-aligned cutoff between them: the cutoff.
fn two_waves(extra: &[&str], seeds: [&str; 2]) -> (Scratch, i64) {
    let mut args = vec![
        "--set",
        "events.epoch=1s",
        "--set",
        "bus.max_produce_delay=1s",
        "--set",
        "batch.window=2d",
    ];
    args.extend_from_slice(extra);
    let s = Scratch::new().with_args(&args);
    generate_to_bus(&s, "250", seeds[0]);
    std::thread::sleep(Duration::from_millis(1_100));
    let cutoff = tandem_common::event::now_ms() / 1000 * 1000;
    std::thread::sleep(Duration::from_millis(1_100));
    generate_to_bus(&s, "250", seeds[1]);
    (s, cutoff)
}

fn lambda_merges_exactly(store: &str) {
    let (s, cutoff) = two_waves(&[], ["7", "8"]);
    let run = |args: &[&str]| summary(&s.ok(args, b""));

    let archived = run(&[
        "stream",
        "archive",
        "--until-caught-up",
        "--roll-rows",
        "5000",
    ]);
    let events = bus_events(&s);
    assert_eq!(
        archived["events"].as_u64().unwrap(),
        events.len() as u64,
        "{archived}"
    );
    // The archive watermark trails the clock by the produce delay: wait past it for the cutoff.
    std::thread::sleep(Duration::from_millis(1_100));
    let speed = run(&["stream", "run", "--store", store, "--until-caught-up"]);
    assert_eq!(
        speed["applied"].as_u64().unwrap() + speed["duplicates"].as_u64().unwrap(),
        events.len() as u64,
        "{speed}"
    );
    let batch = run(&[
        "batch",
        "run",
        "--store",
        store,
        "--cutoff",
        &cutoff.to_string(),
    ]);
    assert_eq!(batch["outcome"], "published", "{batch}");
    let before = events.iter().filter(|(i, _)| *i < cutoff).count();
    assert!(
        before > 0 && before < events.len(),
        "the cutoff splits the events"
    );

    assert_merged_equals_recompute(store, cutoff, &events);
}

/// Every user's snapshot row ⊕ speed epochs at or after the snapshot's cutoff (which must be
/// `cutoff`) equals the recomputation over `events`.
pub fn assert_merged_equals_recompute(store: &str, cutoff: i64, events: &[(i64, Event<'static>)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (want, _) = recompute(events.iter().map(|(_, e)| e));
    let merged: BTreeMap<String, Profile> = rt.block_on(async {
        let store = RedisStore::connect(store).await.unwrap();
        let pointer = store.pointer().await.unwrap().unwrap();
        assert_eq!(pointer.cutoff_ms, cutoff);
        let mut out = BTreeMap::new();
        for u in want.keys() {
            let row = store.get(&[user_key(u, &pointer.snapshot)]).await.unwrap();
            let mut p = match &row[0] {
                Some(v) => serde_json::from_slice::<UserRow>(v).unwrap().profile,
                None => Profile::new(),
            };
            let speed = store.speed(u, pointer.cutoff_ms).await.unwrap();
            assert!(speed.epochs.keys().all(|e| *e >= cutoff));
            p.merge(&speed.merged());
            out.insert(u.clone(), p);
        }
        out
    });
    assert_profiles_equal(&merged, &want);
}

/// `batch run` killed with SIGKILL while it publishes (as the kill falls: materialising, or
/// just after the flip): the next run is refused while the dead run's lease lives (two runs at
/// once published over each other), then publishes or finds published the snapshot, and every
/// user's snapshot ⊕ speed epochs still equals the recomputation over every event.
#[test]
fn batch_run_killed_while_publishing_then_rerun_merges_exactly() {
    use std::io::BufRead;
    let redis = RedisServer::start();
    let store = redis.url();
    let (s, cutoff) = two_waves(
        &[
            "--set",
            "batch.lease=10s",
            "--set",
            "batch.cleanup_grace=0s",
        ],
        ["9", "10"],
    );
    let run = |args: &[&str]| summary(&s.ok(args, b""));
    run(&["stream", "archive", "--until-caught-up"]);
    let events = bus_events(&s);
    std::thread::sleep(Duration::from_millis(1_100));
    run(&["stream", "run", "--store", &store, "--until-caught-up"]);

    let cutoff_arg = cutoff.to_string();
    let batch = ["batch", "run", "--store", &store, "--cutoff", &cutoff_arg];
    let mut child = s
        .tandem(&batch)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let reached = loop {
        match lines.next() {
            Some(Ok(line)) => {
                let at_step = line.contains(r#""step":"materialise""#);
                seen.push_str(&line);
                seen.push('\n');
                if at_step {
                    break true;
                }
            }
            _ => break false,
        }
    };
    assert!(reached, "the run ended before materialising:\n{seen}");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let refused = s.run(&batch, b"");
    let words = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && words.contains("holds the lease"),
        "a second run while the dead one's lease lives: {words}"
    );
    let published = rerun_once_the_lease_lapses(&s, &batch);
    assert!(
        ["republished", "already_published", "published"]
            .contains(&published["outcome"].as_str().unwrap()),
        "{published}"
    );
    assert_merged_equals_recompute(&store, cutoff, &events);
}

/// Redis restarted without persistence (SIGKILL, then empty) under a running lambda — the speed
/// layer following the bus, the server answering — with a user erased before the restart,
/// another erased while the store is empty, and events posted after it: the speed layer finds
/// its partition markers gone, replays the bus under new store tokens and has the snapshot
/// published again from the lake; once caught up, every user's snapshot ⊕ speed equals the
/// recomputation over every event on the bus less the erased users' events up to their
/// erasures, and both erased users answer 404. (Before: the speed layer went on from its stored
/// positions, the snapshot was gone, and profiles were blank but for the newest events.)
#[test]
fn a_redis_restarted_without_persistence_under_the_running_lambda_comes_back_whole() {
    use crate::serve::{KEY, Server, http};
    use serde_json::json;
    let mut redis = RedisServer::start();
    let store = redis.url();
    let conf = tempfile::tempdir().unwrap();
    let conf_path = conf.path().join("tandem.toml");
    std::fs::write(
        &conf_path,
        format!(
            "[server]\napi_keys = [{{ name = \"e2e\", key = \"{KEY}\", scopes = [\"ingest\", \"read\", \"admin\"] }}]\n"
        ),
    )
    .unwrap();
    let conf_arg = conf_path.display().to_string();
    let store_arg = format!("online_store.url={store}");
    let (s, cutoff) = two_waves(
        &[
            "--config",
            &conf_arg,
            "--set",
            &store_arg,
            "--set",
            "batch.cleanup_grace=0s",
            "--set",
            "stream.commit_interval=10ms",
        ],
        ["15", "16"],
    );
    let run = |args: &[&str]| summary(&s.ok(args, b""));
    run(&["stream", "archive", "--until-caught-up"]);
    std::thread::sleep(Duration::from_millis(1_100));
    let batch = run(&["batch", "run", "--cutoff", &cutoff.to_string()]);
    assert_eq!(batch["outcome"], "published", "{batch}");
    let snapshot = batch["snapshot"].as_str().unwrap().to_string();

    let mut speed = crate::harness::Running::start(s.tandem(&["stream", "run"]));
    let server = Server::start(&s, &[]);
    let positions = s.path("bus").join("consumers").join("speed");
    let caught_up = |what: &str, speed: &mut crate::harness::Running| {
        let total = bus_events(&s).len() as u64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while stored_positions(&positions) != total {
            speed.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what}: the speed layer did not catch up in 120 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    caught_up("at first", &mut speed);
    let users: Vec<String> = {
        let (want, _) = recompute(bus_events(&s).iter().map(|(_, e)| e));
        want.keys().cloned().collect()
    };
    // DELETE is idempotent: a client retries a 503 (the server's first call after the restart
    // finds its connection gone).
    let erase = |user: &str| -> i64 {
        for _ in 0..50 {
            let (status, body) = http(
                server.port(),
                "DELETE",
                &format!("/v1/users/{user}"),
                Some(KEY),
                None,
            );
            if status == 503 {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            assert_eq!(status, 200, "{body}");
            return body["erased_ms"].as_i64().unwrap();
        }
        panic!("DELETE answered 503 for 5 s");
    };
    let (first, second, active) = (&users[0], &users[1], &users[2]);
    let mut erasures = vec![(first.clone(), erase(first))];

    redis.restart();
    erasures.push((second.clone(), erase(second)));
    let now = tandem_common::event::now_ms();
    let posted: Vec<serde_json::Value> = (0..5)
        .map(|i| json!({"event_id": format!("after-restart-{i}"), "user_id": active, "kind": "view", "item_id": format!("item-{i}"), "ts": now - 1000 + i}))
        .collect();
    let (status, body) = http(
        server.port(),
        "POST",
        "/v1/events",
        Some(KEY),
        Some(&json!(posted)),
    );
    assert_eq!(status, 202, "{body}");

    // Every partition found the loss (its marker is back, written after its position went back
    // to the start), every position is at the end again, and the pointer is back.
    let port = redis.port();
    let get = |key: &str| tandem_testkit::cli(port, &["GET", key]).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(0..8).all(|p| !get(&partition_marker_key("speed", p)).is_empty()) {
        speed.assert_running();
        assert!(
            Instant::now() < deadline,
            "a partition did not find the loss in 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    caught_up("after the restart", &mut speed);
    while get(tandem_common::store::POINTER_KEY).is_empty() {
        speed.assert_running();
        assert!(
            Instant::now() < deadline,
            "the snapshot was not published again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = server.get(&format!("/v1/users/{active}/profile"));
    assert_eq!(
        (status, body["freshness"]["snapshot"].clone()),
        (200, json!(snapshot)),
        "{body}"
    );
    speed.stop();
    for (user, _) in &erasures {
        let (status, body) = server.get(&format!("/v1/users/{user}/profile"));
        assert_eq!(status, 404, "{user}: {body}");
    }
    assert!(server.stop());

    let kept: Vec<(i64, Event<'static>)> = bus_events(&s)
        .into_iter()
        .filter(|(ingest, e)| {
            !erasures
                .iter()
                .any(|(u, at)| e.user_id == u.as_str() && ingest <= at)
        })
        .collect();
    assert!(kept.iter().any(|(_, e)| e.event_id == "after-restart-0"));
    assert_merged_equals_recompute(&store, cutoff, &kept);
}

/// Runs `batch` (a `batch run`) until it succeeds — refused, with the reason, while a killed
/// run's lease lives (up to 60 s) — and returns its summary.
fn rerun_once_the_lease_lapses(s: &Scratch, batch: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.run(batch, b"");
        if out.status.success() {
            return summary(&String::from_utf8(out.stdout).unwrap());
        }
        let words = String::from_utf8_lossy(&out.stderr);
        assert!(words.contains("holds the lease"), "{words}");
        assert!(Instant::now() < deadline, "the lease never lapsed: {words}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs `args` with the fail point `point` armed (`FAILPOINTS`): asserts the process died there
/// (SIGABRT, as a kill -9 would leave it: nothing flushed, nothing released) and returns what it
/// had written to standard error.
fn killed_at(s: &Scratch, args: &[&str], point: &str) -> String {
    use std::os::unix::process::ExitStatusExt;
    let out = s
        .tandem(args)
        .env("FAILPOINTS", format!("{point}=return"))
        .stdout(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{args:?} did not die at {point} ({}):\n{err}",
        out.status
    );
    err
}

/// The archiver killed at each point of a file's life, chosen exactly (fail points): with rows
/// handed to the file's upload, not complete; with the file complete, its position not stored
/// (the next run writes the same file again instead of a second copy). Run again, the lake holds
/// every record of the bus exactly once.
#[test]
fn the_archiver_killed_at_each_point_of_a_file_archives_every_record_once() {
    use crate::fluvio::{assert_lake_is_the_bus, ends};
    for (i, point) in ["archive-file-open", "archive-file-done"]
        .iter()
        .enumerate()
    {
        let s = Scratch::new().with_args(&["--set", "stream.archive_roll_rows=300"]);
        let sent = generate_to_bus(&s, "150", &(30 + i).to_string())["sent"]
            .as_u64()
            .unwrap();
        killed_at(&s, &["stream", "archive", "--until-caught-up"], point);
        let files_after_kill = crate::fluvio::lake_rows(&s).len();
        if *point == "archive-file-open" {
            assert_eq!(
                files_after_kill, 0,
                "{point}: no half-uploaded file is visible"
            );
        } else {
            assert!(files_after_kill > 0, "{point}: the file was complete");
        }
        summary(&s.ok(&["stream", "archive", "--until-caught-up"], b""));
        let ends = ends(&s);
        assert_eq!(ends.iter().sum::<u64>(), sent, "{point}");
        assert_lake_is_the_bus(&s, &ends);
    }
}

/// `batch run` killed exactly between writing the snapshot's rows and moving the pointer, and
/// exactly after moving it, before the cleanup (fail points): the pointer never names a
/// snapshot with rows missing; the next run (once the dead run's lease lapsed) publishes or
/// finds published the snapshot; every user's snapshot ⊕ speed equals the recomputation.
#[test]
fn batch_run_killed_before_and_after_the_flip_then_rerun_merges_exactly() {
    let (s, cutoff) = two_waves(
        &["--set", "batch.lease=3s", "--set", "batch.cleanup_grace=0s"],
        ["17", "18"],
    );
    let run = |args: &[&str]| summary(&s.ok(args, b""));
    run(&["stream", "archive", "--until-caught-up"]);
    let events = bus_events(&s);
    std::thread::sleep(Duration::from_millis(1_100));
    let cutoff_arg = cutoff.to_string();
    for point in ["batch-flip", "batch-cleanup"] {
        // A store of its own each time: the rows and pointer as a first publish leaves them.
        let redis = RedisServer::start();
        let store = redis.url();
        run(&["stream", "run", "--store", &store, "--until-caught-up"]);
        let batch = ["batch", "run", "--store", &store, "--cutoff", &cutoff_arg];
        killed_at(&s, &batch, point);
        let named = tandem_testkit::cli(redis.port(), &["GET", tandem_common::store::POINTER_KEY]);
        match point {
            "batch-flip" => assert!(named.trim().is_empty(), "nothing published yet: {named}"),
            _ => assert!(named.contains(&cutoff_arg), "published: {named}"),
        }
        let done = rerun_once_the_lease_lapses(&s, &batch);
        let want = match point {
            "batch-flip" => "republished",
            _ => "already_published",
        };
        assert_eq!(done["outcome"], want, "{point}: {done}");
        assert_merged_equals_recompute(&store, cutoff, &events);
    }
}

/// Hostile records written onto the bus by something other than Tandem's API (the bus is a
/// trust boundary): ids that would break a Redis Cluster's hash tags or hold control
/// characters, a price of 1e300, a quantity of 10¹¹, a record that is not JSON — beside a valid
/// event from 1995 (public logs are old). Through the whole lambda on a Redis Cluster: the
/// speed layer sets each poison record aside in the dead-letter with its reason and moves on,
/// the archiver skips them (counted), the batch run publishes, and every user's snapshot ⊕
/// speed equals the recomputation over the valid events, the 1995 one included.
#[test]
fn poison_records_on_the_bus_are_set_aside_through_the_whole_lambda_on_a_redis_cluster() {
    use tandem_common::event::{Kind, to_bus_value};
    let cluster = RedisCluster::start();
    let store = cluster.url();
    let (s, cutoff) = two_waves(&[], ["19", "20"]);
    let mut events = bus_events(&s);
    let now = tandem_common::event::now_ms();
    let old = Event {
        event_id: "from-1995".into(),
        user_id: "user:1995 é".into(),
        kind: Kind::Purchase,
        item_id: Some("item-1995".into()),
        category: Some("books".into()),
        price: Some(12.5),
        quantity: 2,
        rating: None,
        query: None,
        ts: 800_000_000_000, // 1995-05-09
        session_id: None,
        props: None,
    };
    let raw = |user: &str, rest: &str| {
        format!(
            r#"{{"ingest_ts":{now},"event":{{"event_id":"poison-{}","user_id":{},{rest},"ts":{now}}}}}"#,
            user.len(),
            serde_json::to_string(user).unwrap()
        )
    };
    let poison: Vec<(String, String)> = vec![
        (
            "a{b}".into(),
            raw("a{b}", r#""kind":"view","item_id":"i1""#),
        ),
        (
            "tab\tuser".into(),
            raw("tab\tuser", r#""kind":"view","item_id":"i1""#),
        ),
        (
            "rich".into(),
            raw(
                "rich",
                r#""kind":"purchase","item_id":"i1","price":1e300,"quantity":1"#,
            ),
        ),
        (
            "many".into(),
            raw(
                "many",
                r#""kind":"purchase","item_id":"i1","price":1.5,"quantity":100000000000"#,
            ),
        ),
        ("junk".into(), "not json at all".into()),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bus = tandem_stream::bus::open(&s.bus_url(), 8).await.unwrap();
        let mut records: Vec<(bytes::Bytes, bytes::Bytes)> = poison
            .iter()
            .map(|(k, v)| (bytes::Bytes::from(k.clone()), bytes::Bytes::from(v.clone())))
            .collect();
        records.push((
            bytes::Bytes::from(old.user_id.to_string()),
            bytes::Bytes::from(to_bus_value(&old, now)),
        ));
        bus.produce(records).await.unwrap();
    });
    events.push((now, old));
    let run = |args: &[&str]| summary(&s.ok(args, b""));

    let archived = run(&["stream", "archive", "--until-caught-up"]);
    assert_eq!(archived["invalid"], poison.len(), "{archived}");
    assert_eq!(
        archived["events"].as_u64().unwrap(),
        events.len() as u64,
        "{archived}"
    );
    std::thread::sleep(Duration::from_millis(1_100));
    let speed = run(&["stream", "run", "--store", &store, "--until-caught-up"]);
    assert_eq!(speed["invalid"], poison.len(), "{speed}");
    assert_eq!(
        speed["applied"].as_u64().unwrap() + speed["duplicates"].as_u64().unwrap(),
        events.len() as u64,
        "{speed}"
    );
    let letters: Vec<serde_json::Value> = s
        .ok(&["stream", "dead-letter", "list"], b"")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), poison.len(), "{letters:?}");
    for l in &letters {
        let reason = l["reason"].as_str().unwrap();
        assert!(reason.starts_with("not a valid event"), "{reason}");
    }
    let reasons = letters
        .iter()
        .map(|l| l["reason"].to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        "`{`, `}` or control characters",
        "price",
        "quantity",
        "not a Tandem bus record",
    ] {
        assert!(
            reasons.contains(expected),
            "no reason names {expected}:\n{reasons}"
        );
    }
    let batch = run(&[
        "batch",
        "run",
        "--store",
        &store,
        "--cutoff",
        &cutoff.to_string(),
    ]);
    assert_eq!(batch["outcome"], "published", "{batch}");
    assert_merged_equals_recompute(&store, cutoff, &events);
}

/// `stream run --metrics-listen`: the process's one recorder (the buckets `serve` uses) as
/// Prometheus text while it runs; every record consumed is counted under one outcome.
#[test]
fn the_speed_layer_shows_its_metrics_at_metrics_listen() {
    use std::io::{Read, Write};

    use crate::harness::Listening;

    let s = Scratch::new();
    let redis = RedisServer::start();
    let sent = generate_to_bus(&s, "100", "7")["sent"].as_u64().unwrap();
    let port = tandem_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let cmd = s.tandem(&[
        "stream",
        "run",
        "--store",
        &redis.url(),
        "--metrics-listen",
        &listen,
    ]);
    let running = Listening::start(cmd, port, Duration::from_secs(60));
    let scrape = || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            c,
            "GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text
    };
    let counted = |text: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with("tandem_stream_events_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut text = scrape();
    while counted(&text) < sent {
        assert!(
            Instant::now() < deadline,
            "{sent} records sent, the metrics count {}:\n{text}",
            counted(&text)
        );
        std::thread::sleep(Duration::from_millis(100));
        text = scrape();
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(counted(&text), sent, "{text}");
    assert!(
        text.contains("tandem_stream_batch_apply_seconds_bucket{le=\"0.00025\"}"),
        "the apply histogram has the shared buckets:\n{text}"
    );
    let (clean, err) = running.stop();
    assert!(clean, "SIGTERM is a clean exit: {err}");
}
