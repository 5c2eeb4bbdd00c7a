//! `tandem serve` (issue #5): the real binary and a real Redis. Events posted to the API show in
//! the profile once the speed layer applies them; after a batch run, the same totals come from
//! the snapshot with the speed part emptied; an erased user is gone from the API at once and
//! stays gone after the next batch run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tandem_testkit::{RedisServer, free_port};

use crate::harness::{Listening, Scratch, summary};

pub const KEY: &str = "e2e-key-0123456789abcdef";

/// One HTTP/1.1 request on a fresh connection; the status and the body as JSON (or a string).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(&body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let payload = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let v = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
    (status, v)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A running `tandem serve`, stopped with SIGTERM when dropped.
pub struct Server(Listening);

impl Server {
    pub fn start(s: &Scratch, args: &[&str]) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["serve", "--listen", &listen];
        all.extend_from_slice(args);
        Server(Listening::start(
            s.tandem(&all),
            port,
            Duration::from_secs(60),
        ))
    }

    pub fn port(&self) -> u16 {
        self.0.port
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        http(self.0.port, "GET", path, Some(KEY), None)
    }

    /// Stops with SIGTERM and returns whether it exited cleanly.
    pub fn stop(self) -> bool {
        self.0.stop().0
    }
}

pub fn config(s: &Scratch) -> String {
    let path = s.path("tandem.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\napi_keys = [{{ name = \"e2e\", key = \"{KEY}\", scopes = [\"ingest\", \"read\", \"admin\"] }}]\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// A scratch directory whose commands all use [`config`] (the API key), one-second epochs, one
/// bus partition, and `extra`.
pub fn keyed_scratch(extra: &[&str]) -> Scratch {
    let s = Scratch::new();
    let conf = config(&s);
    let mut args = vec![
        "--config",
        conf.as_str(),
        "--set",
        "events.epoch=1s",
        "--set",
        "bus.partitions=1",
    ];
    args.extend_from_slice(extra);
    s.with_args(&args)
}

fn event(id: usize, user: &str, kind: &str, item: &str, ts: i64) -> Value {
    let mut e = json!({"event_id": format!("e{id}"), "user_id": user, "kind": kind, "item_id": item, "category": "c1", "ts": ts});
    if kind == "purchase" {
        e["price"] = json!(2.5);
        e["quantity"] = json!(2);
    }
    e
}

fn counts(v: &Value) -> Value {
    v["profile"]["counts"].clone()
}

#[test]
fn posted_events_show_in_the_profile_and_survive_a_batch_run() {
    let s = keyed_scratch(&[
        "--set",
        "bus.max_produce_delay=1s",
        "--set",
        "batch.window=2d",
    ]);
    let redis = RedisServer::start();
    let store = redis.url();
    let run = |args: &[&str]| summary(&s.ok(args, b""));
    let server = Server::start(&s, &["--store", &store]);
    let (status, _) = http(server.port(), "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    // Not ready: no snapshot yet.
    let (status, ready) = http(server.port(), "GET", "/readyz", None, None);
    assert_eq!(status, 503, "{ready}");

    let now = tandem_common::event::now_ms();
    let mut batch: Vec<Value> = Vec::new();
    for i in 0..60 {
        let user = format!("user-{}", i % 4);
        let kind = ["view", "click", "add_to_cart", "purchase"][i % 4];
        batch.push(event(
            i,
            &user,
            kind,
            &format!("item-{}", i % 7),
            now - 60_000 + i as i64,
        ));
    }
    batch.push(json!({"event_id": "bad", "user_id": "user-0", "kind": "purchase", "item_id": "x", "ts": now}));
    let (status, body) = http(
        server.port(),
        "POST",
        "/v1/events",
        Some(KEY),
        Some(&json!(batch)),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(60), Some(1))
    );
    assert_eq!(body["errors"][0]["index"], 60);
    let (status, _) = http(
        server.port(),
        "POST",
        "/v1/events",
        None,
        Some(&json!(batch)),
    );
    assert_eq!(status, 401);

    // The speed layer applies them: the profile shows them.
    let speed = run(&["stream", "run", "--store", &store, "--until-caught-up"]);
    assert_eq!(speed["applied"], 60, "{speed}");
    let (status, before) = server.get("/v1/users/user-3/profile");
    assert_eq!(status, 200, "{before}");
    assert_eq!(counts(&before)["purchase"], 15, "{before}");
    assert_eq!(before["profile"]["spend"], 75.0);
    assert!(
        before["freshness"]["speed_epochs"].as_u64().unwrap() >= 1,
        "{before}"
    );

    // Archive, then a batch with a cutoff after every event: the same totals, from the
    // snapshot, and the speed epochs below the cutoff are gone. (The archive watermark trails
    // the clock by the produce delay: the waits let the cutoff pass every event.)
    // The archiver's watermark is the clock minus the produce delay (1 s) when caught up: past
    // the end of the events' 1-second ingest epoch from 2 s after their ingest time.
    let ingest_ts = body["ingest_ts"].as_i64().unwrap();
    let pause = ingest_ts + 2_300 - tandem_common::event::now_ms();
    std::thread::sleep(Duration::from_millis(pause.max(0) as u64));
    run(&["stream", "archive", "--until-caught-up"]);
    std::thread::sleep(Duration::from_millis(2_200));
    let batch_run = run(&["batch", "run", "--store", &store]);
    assert_eq!(batch_run["outcome"], "published", "{batch_run}");
    let snapshot = batch_run["snapshot"].as_str().unwrap().to_string();
    let cutoff =
        tandem_common::event::parse_rfc3339_ms(batch_run["cutoff"].as_str().unwrap()).unwrap();
    assert!(
        cutoff > ingest_ts,
        "the cutoff {cutoff} is after every event ({ingest_ts})"
    );
    let start = Instant::now();
    let after = loop {
        let (status, after) = server.get("/v1/users/user-3/profile");
        assert_eq!(status, 200, "{after}");
        if after["freshness"]["snapshot"] == json!(snapshot) {
            break after;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not follow the pointer: {after}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(counts(&after), counts(&before), "{after}");
    assert_eq!(after["profile"]["spend"], 75.0);
    assert_eq!(after["freshness"]["speed_epochs"], 0, "{after}");
    for u in 0..4 {
        let (_, p) = server.get(&format!("/v1/users/user-{u}/profile"));
        assert_eq!(p["profile"]["events"], 15, "{p}");
    }
    let (status, ready) = http(server.port(), "GET", "/readyz", None, None);
    assert_eq!((status, ready["snapshot"].clone()), (200, json!(snapshot)));
    let (status, recs) = server.get("/v1/users/user-0/recommendations?n=3");
    assert_eq!(status, 200, "{recs}");
    assert!(!recs["items"].as_array().unwrap().is_empty(), "{recs}");
    // user-3 bought every one of the 7 items: nothing is left to recommend.
    let (status, recs) = server.get("/v1/users/user-3/recommendations?n=3");
    assert_eq!((status, recs["items"].clone()), (200, json!([])), "{recs}");

    // Erase user-2: gone at once, with a tombstone the next batch run honours, while a user
    // active after the erasure and the other users keep everything.
    let (status, erased) = http(server.port(), "DELETE", "/v1/users/user-2", Some(KEY), None);
    assert_eq!(status, 200, "{erased}");
    let (status, body) = server.get("/v1/users/user-2/profile");
    assert_eq!(status, 404, "{body}");
    let (_, recs) = server.get("/v1/users/user-2/recommendations");
    assert_eq!(recs["cold_start"], true, "{recs}");
    std::thread::sleep(Duration::from_millis(5));
    let late = json!([event(
        100,
        "user-0",
        "view",
        "item-1",
        tandem_common::event::now_ms()
    )]);
    let (status, body) = http(server.port(), "POST", "/v1/events", Some(KEY), Some(&late));
    assert_eq!(status, 202, "{body}");
    let ingest_ts = body["ingest_ts"].as_i64().unwrap();
    run(&["stream", "run", "--store", &store, "--until-caught-up"]);
    let pause = ingest_ts + 2_300 - tandem_common::event::now_ms();
    std::thread::sleep(Duration::from_millis(pause.max(0) as u64));
    run(&["stream", "archive", "--until-caught-up"]);
    std::thread::sleep(Duration::from_millis(2_200));
    let second = run(&["batch", "run", "--store", &store]);
    assert_eq!(second["outcome"], "published", "{second}");
    assert_eq!(second["events"], 46, "61 events less user-2's 15: {second}");
    let start = Instant::now();
    while server.get("/v1/users/user-0/profile").1["freshness"]["snapshot"] != second["snapshot"] {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the server did not follow"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = server.get("/v1/users/user-2/profile");
    assert_eq!(status, 404, "{body}");
    let (_, p) = server.get("/v1/users/user-0/profile");
    assert_eq!(p["profile"]["events"], 16, "{p}");
    let n = s.ok(
        &[
            "sql",
            "-e",
            "SELECT count(*) AS n FROM events WHERE user_id = 'user-2'",
            "--format",
            "csv",
        ],
        b"",
    );
    assert_eq!(
        n, "n\n0\n",
        "analysts' events leave the erased user out too"
    );

    let (status, metrics) = http(server.port(), "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tandem_http_request_duration_seconds_bucket"),
        "{metrics}"
    );
    // The batch runs left their outcome in Redis; serve exports it for the alerts.
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("tandem_batch_last_success_timestamp_seconds "),
        "{metrics}"
    );
    assert!(server.stop(), "tandem serve exits cleanly on SIGTERM");
}

#[test]
fn serve_refuses_to_start_without_keys_or_with_the_memory_store() {
    let s = Scratch::new();
    let out = s.run(&["serve", "--store", "redis://127.0.0.1:1"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.api_keys is empty"), "{err}");
    let conf = config(&s);
    let out = s.run(&["serve", "--config", &conf, "--store", "memory://"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("memory://"), "{err}");
    let out = s.run(
        &[
            "serve",
            "--config",
            &conf,
            "--store",
            "redis://127.0.0.1:1",
            "--lake",
            "memory://",
        ],
        b"",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lake `memory://`"), "{err}");
    let out = s.run(&["serve", "--config", &conf, "--listen", "nonsense"], b"");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
}
