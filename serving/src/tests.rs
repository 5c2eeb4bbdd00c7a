//! The API end to end in process: requests through the real router, events through a real
//! `local://` bus and the real speed layer, on the memory store and on a real `redis-server`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tandem_common::config::{ApiKey, Scope, Secret};
use tandem_common::event::{Event, Kind};
use tandem_common::features::{ItemStats, Profile};
use tandem_common::lake::Lake;
use tandem_common::store::{
    ApplyCounts, BATCH_FAILURE_KEY, BatchOutcome, ItemRow, MemoryStore, OnlineStore, Pointer,
    PopularRow, RedisStore, SpeedEvent, SpeedState, UserRow, history_key, item_key, snapshot_key,
    user_key,
};
use tandem_common::testkit::RedisServer;
use tandem_stream::bus::{Bus, Position, Record};
use tandem_stream::speed::{SpeedOptions, run};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::Keys;
use crate::{App, ServeOptions, router};

const HOUR: i64 = 3_600_000;
const KEY: &str = "test-key-all-scopes-0123";
const READ_ONLY: &str = "test-key-read-only-0123";

struct Fixture {
    app: Arc<App>,
    store: Arc<dyn OnlineStore>,
    bus: Arc<dyn Bus>,
    lake: Lake,
    _dir: tempfile::TempDir,
    cancel: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn keys() -> Keys {
    Keys::new(&[
        ApiKey {
            name: "all".into(),
            key: Secret::new(KEY),
            scopes: vec![Scope::Ingest, Scope::Read, Scope::Admin],
        },
        ApiKey {
            name: "reader".into(),
            key: Secret::new(READ_ONLY),
            scopes: vec![Scope::Read],
        },
    ])
}

async fn fixture_with(store: Arc<dyn OnlineStore>, bus: Option<Arc<dyn Bus>>) -> Fixture {
    fixture_opts(store, bus, ServeOptions::default()).await
}

/// A fixture with `opts` (its `poll` made 20 ms, so that tests see the pointer soon).
async fn fixture_opts(
    store: Arc<dyn OnlineStore>,
    bus: Option<Arc<dyn Bus>>,
    opts: ServeOptions,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bus = match bus {
        Some(b) => b,
        None => tandem_stream::bus::open(&format!("local://{}", dir.path().display()), 4)
            .await
            .unwrap(),
    };
    let cancel = CancellationToken::new();
    let opts = ServeOptions {
        poll: Duration::from_millis(20),
        ..opts
    };
    let lake = Lake::open("memory://").unwrap();
    let app = App::start(
        store.clone(),
        bus.clone(),
        lake.clone(),
        keys(),
        opts,
        cancel.clone(),
    )
    .await;
    Fixture {
        app,
        lake,
        store,
        bus,
        _dir: dir,
        cancel,
    }
}

async fn fixture(store: Arc<dyn OnlineStore>) -> Fixture {
    fixture_with(store, None).await
}

impl Fixture {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        key: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(k) = key {
            req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
        let req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, Body::from))
            .unwrap();
        let resp = router(self.app.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let retry = resp.headers().get(header::RETRY_AFTER).cloned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let mut v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if let (Some(r), Value::Object(o)) = (retry, &mut v) {
            o.insert("retry_after".into(), json!(r.to_str().unwrap()));
        }
        (status, v)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call("GET", uri, Some(KEY), None).await
    }

    async fn post(&self, body: &Value) -> (StatusCode, Value) {
        self.call(
            "POST",
            "/v1/events",
            Some(KEY),
            Some(serde_json::to_vec(body).unwrap()),
        )
        .await
    }

    /// Runs the real speed layer until it has applied everything on the bus.
    async fn catch_up(&self) {
        let opts = SpeedOptions {
            until_caught_up: true,
            wait: Duration::from_millis(5),
            ..Default::default()
        };
        run(
            self.bus.clone(),
            self.store.clone(),
            opts,
            CancellationToken::new(),
        )
        .await
        .unwrap();
    }

    /// Publishes a snapshot: `users` rows, `items` rows, popular lists; flips the pointer and
    /// waits for the server to follow it.
    async fn publish(
        &self,
        id: &str,
        cutoff_ms: i64,
        users: &[(&str, Profile)],
        items: &[(&str, ItemRow)],
        popular: PopularRow,
    ) {
        let mut rows: Vec<(String, Bytes)> = Vec::new();
        for (u, p) in users {
            let row = UserRow {
                profile: p.clone(),
                segment: Some(1),
                propensity: Some(0.25),
            };
            rows.push((user_key(u, id), serde_json::to_vec(&row).unwrap().into()));
        }
        for (i, r) in items {
            rows.push((item_key(i, id), serde_json::to_vec(r).unwrap().into()));
        }
        rows.push((
            snapshot_key(id, "popular"),
            serde_json::to_vec(&popular).unwrap().into(),
        ));
        rows.push((
            snapshot_key(id, "manifest"),
            serde_json::to_vec(&json!({"snapshot": id, "created_at": "2026-11-20T00:00:00Z"}))
                .unwrap()
                .into(),
        ));
        self.store.put(&rows).await.unwrap();
        let old = self.store.pointer().await.unwrap();
        let new = Pointer {
            snapshot: id.into(),
            cutoff_ms,
        };
        assert!(self.store.flip(old.as_ref(), &new).await.unwrap());
        for _ in 0..500 {
            if self.app.snapshots.current().is_some_and(|s| s.id() == id) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server did not follow the pointer to {id}");
    }
}

fn event(id: &str, user: &str, kind: Kind, item: &str, cat: &str, ts: i64) -> Event<'static> {
    Event {
        event_id: id.to_string().into(),
        user_id: user.to_string().into(),
        kind,
        item_id: Some(item.to_string().into()),
        category: Some(cat.to_string().into()),
        price: (kind == Kind::Purchase).then_some(10.0),
        quantity: 1,
        rating: None,
        query: None,
        ts,
        session_id: None,
        props: None,
    }
}

fn wire(e: &Event<'_>) -> Value {
    serde_json::from_str(&e.to_json()).unwrap()
}

fn item_row(cat: &str, popularity: f64, similar: &[(&str, f64)]) -> ItemRow {
    ItemRow {
        stats: ItemStats {
            popularity,
            category: Some((cat.into(), 0)),
            ..Default::default()
        },
        similar: similar.iter().map(|(i, s)| (i.to_string(), *s)).collect(),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn redis_store(server: &RedisServer) -> Arc<dyn OnlineStore> {
    Arc::new(RedisStore::connect(&server.url()).await.unwrap())
}

// ---------------------------------------------------------------------------------------------

async fn ingest_then_profile(f: Fixture) {
    let t = now() - 60_000;
    let batch = json!([
        wire(&event("e1", "alice", Kind::View, "i1", "shoes", t)),
        wire(&event("e2", "alice", Kind::Purchase, "i1", "shoes", t + 1000)),
        {"event_id": "bad", "user_id": "alice", "kind": "purchase", "item_id": "i1", "ts": t},
        wire(&event("e3", "bob", Kind::Click, "i2", "hats", t + 2000)),
    ]);
    let (status, body) = f.post(&batch).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["accepted"], 3);
    assert_eq!(body["rejected"], 1);
    assert_eq!(body["errors"][0]["index"], 2);
    assert_eq!(body["errors"][0]["field"], "price");
    // Before the speed layer runs, alice is unknown; after, her events are in her profile.
    let (status, body) = f.get("/v1/users/alice/profile").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
    f.catch_up().await;
    let (status, body) = f.get("/v1/users/alice/profile").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = &body["profile"];
    assert_eq!(p["counts"]["view"], 1);
    assert_eq!(p["counts"]["purchase"], 1);
    assert_eq!(p["events"], 2);
    assert_eq!(p["spend"], 10.0);
    assert_eq!(p["recent_items"][0]["item"], "i1");
    assert_eq!(p["affinity"][0]["category"], "shoes");
    assert!(body["freshness"]["last_offset"].is_u64(), "{body}");
    assert_eq!(body["freshness"]["snapshot"], Value::Null);
    assert!(body["degraded"].is_null());
    // Posting the same events again (a retried request) changes nothing.
    let (status, _) = f.post(&batch).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    f.catch_up().await;
    let (_, again) = f.get("/v1/users/alice/profile").await;
    assert_eq!(again["profile"]["counts"], p["counts"]);
    // One event, not in an array, is accepted too.
    let (status, body) = f
        .post(&wire(&event("e4", "bob", Kind::View, "i3", "hats", t)))
        .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::ACCEPTED, json!(1))
    );
}

#[tokio::test]
async fn ingest_then_profile_memory() {
    ingest_then_profile(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn ingest_then_profile_redis() {
    let server = RedisServer::start();
    ingest_then_profile(fixture(redis_store(&server).await).await).await;
}

/// The profile is the snapshot's row plus the speed epochs at or after its cutoff: epochs
/// before the cutoff are already in the row and must not count twice.
async fn snapshot_plus_speed(f: Fixture) {
    let cutoff = (now() / HOUR - 2) * HOUR;
    let t = cutoff - 10 * HOUR;
    let before = [
        event("a1", "carol", Kind::View, "i1", "shoes", t),
        event("a2", "carol", Kind::AddToCart, "i1", "shoes", t + 1),
    ];
    let after = [
        event("b1", "carol", Kind::Purchase, "i1", "shoes", cutoff + 5),
        event("b2", "carol", Kind::View, "i9", "hats", cutoff + HOUR + 5),
    ];
    let mut row = Profile::new();
    before.iter().for_each(|e| row.apply(e));
    f.publish("s1", cutoff, &[("carol", row)], &[], PopularRow::default())
        .await;
    // The speed layer holds every event: `before` in the epoch below the cutoff (not yet
    // dropped), `after` in the epochs at and after it.
    let speed: Vec<SpeedEvent<'_>> = before
        .iter()
        .chain(&after)
        .enumerate()
        .map(|(i, e)| SpeedEvent {
            offset: i as u64,
            ingest_ts: (e.ts.max(cutoff - HOUR) / HOUR) * HOUR,
            epoch_ms: (e.ts.max(cutoff - HOUR) / HOUR) * HOUR,
            event: e.clone(),
        })
        .collect();
    f.store.apply_events(&speed).await.unwrap();
    let mut expected = Profile::new();
    before.iter().chain(&after).for_each(|e| expected.apply(e));
    let (status, body) = f.get("/v1/users/carol/profile").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p = &body["profile"];
    for k in Kind::ALL {
        assert_eq!(p["counts"][k.as_str()], expected.count(k), "{k} in {body}");
    }
    assert_eq!(p["recent_items"][0]["item"], "i9");
    assert_eq!(body["freshness"]["snapshot"], "s1");
    assert_eq!(body["freshness"]["speed_epochs"], 2);
    assert_eq!(
        body["freshness"]["snapshot_created_at"],
        "2026-11-20T00:00:00Z"
    );
    // No models in this snapshot: segment and propensity are the row's.
    assert_eq!(
        (body["segment"].clone(), body["propensity"].clone()),
        (json!(1), json!(0.25))
    );
    // A user only in the snapshot is known.
    let (status, _) = f.get("/v1/users/carol/profile").await;
    assert_eq!(status, StatusCode::OK);
}

/// Erasure: the user's row and speed deltas go at once, a tombstone is left for the batch, the
/// user's events still on the bus are skipped when they arrive, and what the user does after
/// the erasure counts afresh. Only an admin key may erase.
async fn erasure(f: Fixture) {
    let cutoff = (now() / HOUR - 2) * HOUR;
    let mut row = Profile::new();
    row.apply(&event(
        "old",
        "erin",
        Kind::Purchase,
        "i1",
        "shoes",
        cutoff - HOUR,
    ));
    f.publish(
        "s1",
        cutoff,
        &[("erin", row.clone()), ("finn", row)],
        &[],
        PopularRow::default(),
    )
    .await;
    let t = now() - 60_000;
    f.post(&json!([
        wire(&event("e1", "erin", Kind::View, "i2", "hats", t)),
        wire(&event("f1", "finn", Kind::View, "i2", "hats", t)),
    ]))
    .await;
    f.catch_up().await;
    // Warm the row cache: the erasure must not be undone by it.
    let (status, body) = f.get("/v1/users/erin/profile").await;
    assert_eq!(
        (status, body["profile"]["events"].clone()),
        (StatusCode::OK, json!(2))
    );
    // On the bus, not yet applied: accepted before the erasure, so erased too.
    f.post(&json!([wire(&event(
        "e2",
        "erin",
        Kind::Click,
        "i3",
        "hats",
        t + 1
    ))]))
    .await;

    let (status, body) = f
        .call("DELETE", "/v1/users/erin", Some(READ_ONLY), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = f.call("DELETE", "/v1/users/erin", Some(KEY), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "erin");
    assert!(body["keys_deleted"].as_u64().unwrap() >= 2, "{body}");
    let erased_ms = body["erased_ms"].as_i64().unwrap();
    assert_eq!(
        f.lake
            .erasures()
            .await
            .unwrap()
            .into_iter()
            .collect::<Vec<_>>(),
        [("erin".to_string(), erased_ms)]
    );
    let (status, body) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    f.catch_up().await;
    let (status, body) = f.get("/v1/users/erin/profile").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the event on the bus stays erased: {body}"
    );
    let (_, body) = f.get("/v1/users/erin/recommendations").await;
    assert_eq!(body["cold_start"], true, "{body}");
    // Others keep everything.
    let (_, body) = f.get("/v1/users/finn/profile").await;
    assert_eq!(body["profile"]["events"], 2, "{body}");
    // A row of a snapshot cut before the erasure is left out even where it is still stored
    // (a batch that ran before the tombstone, a server that had cached it).
    let mut stale = Profile::new();
    stale.apply(&event(
        "old",
        "erin",
        Kind::Purchase,
        "i1",
        "shoes",
        cutoff - HOUR,
    ));
    f.publish("s2", cutoff, &[("erin", stale)], &[], PopularRow::default())
        .await;
    let (status, body) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // After the erasure, the user's new events count.
    tokio::time::sleep(Duration::from_millis(2)).await;
    f.post(&json!([wire(&event(
        "e3",
        "erin",
        Kind::View,
        "i4",
        "hats",
        now()
    ))]))
    .await;
    f.catch_up().await;
    let (status, body) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["profile"]["events"], 1, "{body}");
    assert_eq!(body["profile"]["recent_items"][0]["item"], "i4");
}

#[tokio::test]
async fn erasure_memory() {
    erasure(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn erasure_redis() {
    let server = RedisServer::start();
    erasure(fixture(redis_store(&server).await).await).await;
}

#[tokio::test]
async fn snapshot_plus_speed_memory() {
    snapshot_plus_speed(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn snapshot_plus_speed_redis() {
    let server = RedisServer::start();
    snapshot_plus_speed(fixture(redis_store(&server).await).await).await;
}

async fn recommendations(f: Fixture) {
    let t = now() - HOUR;
    let items = [
        ("i1", item_row("shoes", 5.0, &[("i2", 0.9), ("i3", 0.5)])),
        ("i2", item_row("shoes", 4.0, &[("i1", 0.9)])),
        ("i3", item_row("shoes", 3.0, &[])),
        ("i4", item_row("shoes", 2.0, &[])),
        ("h1", item_row("hats", 9.0, &[])),
        ("h2", item_row("hats", 8.0, &[])),
    ];
    let popular = PopularRow {
        overall: vec!["h1".into(), "h2".into(), "i1".into(), "i2".into()],
        by_category: BTreeMap::from([
            (
                "shoes".into(),
                vec!["i1".into(), "i2".into(), "i3".into(), "i4".into()],
            ),
            ("hats".into(), vec!["h1".into(), "h2".into()]),
        ]),
    };
    f.publish("s1", (now() / HOUR - 5) * HOUR, &[], &items, popular)
        .await;
    f.post(&json!([wire(&event(
        "e1",
        "dave",
        Kind::View,
        "i1",
        "shoes",
        t
    ))]))
    .await;
    f.catch_up().await;

    let (status, body) = f.get("/v1/users/dave/recommendations?n=10").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cold_start"], false);
    assert_eq!(body["ranked_by"], "popularity");
    let got: Vec<(String, String)> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["item"].as_str().unwrap().into(),
                r["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    let source = |i: &str| got.iter().find(|(x, _)| x == i).map(|(_, s)| s.as_str());
    assert_eq!(source("i2"), Some("cf:item_knn"), "{got:?}");
    assert_eq!(source("i3"), Some("cf:item_knn"));
    assert_eq!(source("i4"), Some("category:shoes"));
    assert_eq!(source("h1"), Some("popular"));
    // The item just seen is a candidate by category (the user may want it again) but exclusion
    // and the context item take items out.
    let (_, body) = f
        .get("/v1/users/dave/recommendations?n=10&exclude=i2,h1&context_item=i3")
        .await;
    let items: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_str().unwrap())
        .collect();
    for gone in ["i2", "h1", "i3"] {
        assert!(!items.contains(&gone), "{gone} in {items:?}");
    }
    // Once bought, an item is left out, and shows in the profile's purchases.
    f.post(&json!([wire(&event(
        "e2",
        "dave",
        Kind::Purchase,
        "i2",
        "shoes",
        t + 1
    ))]))
    .await;
    f.catch_up().await;
    let (_, body) = f.get("/v1/users/dave/recommendations?n=10").await;
    assert!(
        !body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["item"] == "i2"),
        "{body}"
    );
    let (_, body) = f.get("/v1/users/dave/profile").await;
    assert_eq!(
        body["profile"]["recent_purchases"][0]["item"], "i2",
        "{body}"
    );
    // n bounds the list; scores are in order.
    let (_, body) = f.get("/v1/users/dave/recommendations?n=2").await;
    let scores: Vec<f64> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 2);
    assert!(scores[0] >= scores[1]);
    // A user with no history gets popular items, flagged.
    let (status, body) = f.get("/v1/users/nobody/recommendations?n=3").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cold_start"], true);
    let items: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["item"].as_str().unwrap())
        .collect();
    assert_eq!(items, ["h1", "h2", "i1"]);
    // Items routes.
    let (status, body) = f.get("/v1/items/i1/similar?n=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["items"], json!([{"item": "i2", "score": 0.9}]));
    let (status, body) = f.get("/v1/items/nope/similar").await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (_, body) = f.get("/v1/items/popular?category=hats").await;
    assert_eq!(body["items"][0]["item"], "h1");
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let (_, body) = f.get("/v1/items/popular?n=1").await;
    assert_eq!(body["items"], json!([{"item": "h1", "score": 1.0}]));
}

/// `exclude_seen` leaves out the snapshot's items of the user (beyond the recent ones) and
/// what the speed layer saw since; without it, seen items may come back.
async fn exclude_seen(f: Fixture) {
    let t = now() - HOUR;
    let items = [
        ("i1", item_row("shoes", 5.0, &[("i2", 0.9), ("i3", 0.5)])),
        ("i2", item_row("shoes", 4.0, &[("i1", 0.9)])),
        ("i3", item_row("shoes", 3.0, &[])),
        ("h1", item_row("hats", 9.0, &[])),
        ("h2", item_row("hats", 8.0, &[])),
    ];
    let popular = PopularRow {
        overall: vec![
            "h1".into(),
            "h2".into(),
            "i1".into(),
            "i2".into(),
            "i3".into(),
        ],
        by_category: BTreeMap::from([
            ("shoes".into(), vec!["i1".into(), "i2".into(), "i3".into()]),
            ("hats".into(), vec!["h1".into(), "h2".into()]),
        ]),
    };
    let mut gina = Profile::new();
    gina.apply(&event("g0", "gina", Kind::View, "h1", "hats", t - HOUR));
    f.publish(
        "s1",
        (now() / HOUR - 5) * HOUR,
        &[("gina", gina)],
        &items,
        popular,
    )
    .await;
    // The snapshot's items of gina reach past her recent ones.
    let seen = serde_json::to_vec(&["h1", "h2"]).unwrap();
    f.store
        .put(&[(history_key("gina", "s1"), seen.into())])
        .await
        .unwrap();
    f.post(&json!([wire(&event(
        "g1",
        "gina",
        Kind::View,
        "i1",
        "shoes",
        t
    ))]))
    .await;
    f.catch_up().await;
    let listed = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["item"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, body) = f
        .get("/v1/users/gina/recommendations?n=10&exclude_seen=true")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["degraded"], Value::Null, "{body}");
    let got = listed(&body);
    assert_eq!(got.len(), 2, "{got:?}");
    for gone in ["h1", "h2", "i1"] {
        assert!(!got.contains(&gone.to_string()), "{gone} in {got:?}");
    }
    let (_, body) = f.get("/v1/users/gina/recommendations?n=10").await;
    let got = listed(&body);
    assert!(got.contains(&"h2".to_string()), "{got:?}");
    // A user unknown to the snapshot: nothing to read, popular items.
    let (status, body) = f
        .get("/v1/users/nobody/recommendations?n=2&exclude_seen=true")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(listed(&body), ["h1", "h2"]);
    let (status, body) = f
        .get("/v1/users/gina/recommendations?exclude_seen=maybe")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn exclude_seen_memory() {
    exclude_seen(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn exclude_seen_redis() {
    let server = RedisServer::start();
    exclude_seen(fixture(redis_store(&server).await).await).await;
}

/// Events from 1970 and 2000 beside today's: a snapshot row of 1970, then events of 2000 and
/// now through the API and the speed layer. The profile is answered whole (no degradation,
/// every count), its scores are numbers (0 when read decades later, never null) and its
/// interests are in log-score order: the newest category first.
async fn events_from_long_ago(f: Fixture) {
    const Y2000: i64 = 946_684_800_000;
    let mut old = Profile::new();
    old.apply(&event("o1", "olga", Kind::Purchase, "i1", "old", 1_000));
    old.apply(&event("o2", "olga", Kind::View, "i2", "old", 1_000 + HOUR));
    f.publish(
        "s1",
        (now() / HOUR - 5) * HOUR,
        &[("olga", old)],
        &[],
        PopularRow::default(),
    )
    .await;
    let t = now() - 60_000;
    let (status, body) = f
        .post(&json!([
            wire(&event("o3", "olga", Kind::Purchase, "i3", "mid", Y2000)),
            wire(&event("o4", "olga", Kind::View, "i4", "new", t)),
        ]))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    f.catch_up().await;
    let (status, body) = f.get("/v1/users/olga/profile").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["degraded"], Value::Null, "{body}");
    assert_eq!(body["profile"]["events"], 4, "{body}");
    let affinity = body["profile"]["affinity"].as_array().unwrap();
    let order: Vec<&str> = affinity
        .iter()
        .map(|a| a["category"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["new", "mid", "old"], "{body}");
    for a in affinity {
        assert!(a["score"].as_f64().is_some_and(f64::is_finite), "{body}");
    }
    let first = body["profile"]["first_seen"].as_str().unwrap_or_default();
    assert!(first.starts_with("1970-01-01T00:00:01"), "{body}");
}

#[tokio::test]
async fn events_from_long_ago_memory() {
    events_from_long_ago(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn events_from_long_ago_redis() {
    let server = RedisServer::start();
    events_from_long_ago(fixture(redis_store(&server).await).await).await;
}

#[tokio::test]
async fn recommendations_memory() {
    recommendations(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn recommendations_redis() {
    let server = RedisServer::start();
    recommendations(fixture(redis_store(&server).await).await).await;
}

#[tokio::test]
async fn auth_scopes_and_errors_are_json() {
    let f = fixture(Arc::new(MemoryStore::default())).await;
    let body = serde_json::to_vec(&json!({})).unwrap();
    let (status, b) = f.call("POST", "/v1/events", None, Some(body.clone())).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let (status, b) = f
        .call("POST", "/v1/events", Some(READ_ONLY), Some(body))
        .await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::FORBIDDEN, json!("forbidden"))
    );
    let (status, _) = f
        .call(
            "GET",
            "/v1/items/popular",
            Some("wrong-key-0123456789"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = f
        .call("GET", "/v1/items/popular", Some(READ_ONLY), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Malformed input gets a {code, message} naming what is wrong.
    let (status, b) = f
        .call("POST", "/v1/events", Some(KEY), Some(b"{not json".to_vec()))
        .await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_json"))
    );
    assert!(b["message"].as_str().unwrap().contains("not JSON"), "{b}");
    let (status, b) = f.post(&json!(42)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_body"))
    );
    let (status, b) = f.post(&json!([{"event_id": "x"}])).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_events"))
    );
    assert_eq!(b["errors"][0]["index"], 0);
    let many: Vec<Value> = (0..1001).map(|i| json!({"event_id": i})).collect();
    let (status, b) = f.post(&json!(many)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("too_many_events"))
    );
    // A field given twice is refused, alone or in an array (the second `user_id` used to win),
    // and so is a property key given twice; the good event beside them is kept. Numbers out
    // of bounds are refused by name (a price of 1e300 stopped every later batch run).
    let t = now() - 60_000;
    let event_text = |id: &str, extra: &str| {
        format!(
            r#"{{"event_id":"{id}","user_id":"alice","kind":"purchase","item_id":"i1","price":2.5,"ts":{t}{extra}}}"#
        )
    };
    let twice = event_text("d1", r#","user_id":"mallory""#);
    let (status, b) = f
        .call(
            "POST",
            "/v1/events",
            Some(KEY),
            Some(twice.clone().into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["errors"][0]["field"], "user_id", "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("appears twice"),
        "{b}"
    );
    let batch = format!(
        "[{twice}, {}, {}, {}, {}, {}]",
        event_text("d2", r#","props":{"a":"1","a":"2"}"#),
        event_text("d3", r#","price":1e300"#).replace(r#""price":2.5,"#, ""),
        event_text("d4", r#","quantity":1000001"#),
        event_text("d5", ""),
        event_text("d6", r#","quantity":1000000"#).replace("2.5", "1000000000"),
    );
    let (status, b) = f
        .call("POST", "/v1/events", Some(KEY), Some(batch.into_bytes()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{b}");
    assert_eq!(
        (b["accepted"].clone(), b["rejected"].clone()),
        (json!(2), json!(4)),
        "{b}"
    );
    let fields: Vec<&str> = b["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["user_id", "props", "price", "quantity"], "{b}");
    // Ids in paths are checked as ids in events: a 60,000-character id, or one with a brace
    // (a Redis hash tag's), is a bad request, not an unknown user.
    let long = "u".repeat(60_000);
    for path in [
        format!("/v1/users/{long}/profile"),
        "/v1/users/%7Dx/profile".to_string(),
        "/v1/users/a%7Bb/recommendations".to_string(),
        "/v1/items/%7D/similar".to_string(),
    ] {
        let (status, b) = f.get(&path).await;
        assert_eq!(
            (status, b["code"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_path")),
            "{path}: {b}"
        );
    }
    let big = vec![b' '; crate::api::MAX_BODY + 1];
    let (status, b) = f.call("POST", "/v1/events", Some(KEY), Some(big)).await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::PAYLOAD_TOO_LARGE, json!("invalid_body")),
        "{b}"
    );
    let (status, b) = f.get("/v1/items/popular?n=0").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_query"))
    );
    let (status, b) = f.get("/v1/items/popular?n=abc").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid_query"))
    );
    let (status, b) = f.get("/v2/nothing").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
}

#[tokio::test]
async fn operations_routes() {
    let f = fixture(Arc::new(MemoryStore::default())).await;
    let (status, _) = f.call("GET", "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, b) = f.call("GET", "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["store"], true);
    f.publish("s1", 0, &[], &[], PopularRow::default()).await;
    let (status, b) = f.call("GET", "/readyz", None, None).await;
    assert_eq!(
        (status, b["snapshot"].clone()),
        (StatusCode::OK, json!("s1"))
    );
    let (status, doc) = f.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/events",
        "/v1/users/{id}/profile",
        "/v1/users/{id}/recommendations",
        "/v1/items/{id}/similar",
        "/v1/items/popular",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    let (status, text) = f.call("GET", "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(
        text.contains(r#"tandem_http_request_duration_seconds_bucket{route="/readyz",method="GET",status="200""#),
        "{text}"
    );
    // What the last batch runs recorded is exported for the alerts (infra/observability).
    let outcome = |at_ms| {
        let o = BatchOutcome {
            at_ms,
            snapshot: None,
            error: Some("lake unreachable".into()),
        };
        Bytes::from(serde_json::to_vec(&o).unwrap())
    };
    f.store
        .put(&[(BATCH_FAILURE_KEY.to_string(), outcome(1_700_000_123_000))])
        .await
        .unwrap();
    let want = "tandem_batch_last_failure_timestamp_seconds 1700000123";
    let mut seen = String::new();
    for _ in 0..500 {
        let (_, text) = f.call("GET", "/metrics", None, None).await;
        seen = text.as_str().unwrap().to_string();
        if seen.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen.contains(want), "{seen}");
}

// ---------------------------------------------------------------------------------------------
// Failing dependencies

/// A store whose calls fail while `down` is set.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    speed_down: AtomicBool,
    all_down: AtomicBool,
}

impl Flaky {
    fn check(&self, speed: bool) -> tandem_common::Result<()> {
        if self.all_down.load(Ordering::SeqCst) || (speed && self.speed_down.load(Ordering::SeqCst))
        {
            return Err(tandem_common::Error::Io(std::io::Error::other(
                "connection refused",
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl OnlineStore for Flaky {
    async fn put(&self, rows: &[(String, Bytes)]) -> tandem_common::Result<()> {
        self.inner.put(rows).await
    }
    async fn get(&self, keys: &[String]) -> tandem_common::Result<Vec<Option<Bytes>>> {
        self.check(false)?;
        self.inner.get(keys).await
    }
    async fn pointer(&self) -> tandem_common::Result<Option<Pointer>> {
        self.check(false)?;
        self.inner.pointer().await
    }
    async fn flip(&self, expected: Option<&Pointer>, new: &Pointer) -> tandem_common::Result<bool> {
        self.inner.flip(expected, new).await
    }
    async fn lease(
        &self,
        name: &str,
        op: tandem_common::store::LeaseOp,
        owner: &str,
        ttl_ms: u64,
    ) -> tandem_common::Result<tandem_common::store::LeaseState> {
        self.inner.lease(name, op, owner, ttl_ms).await
    }
    async fn note_erasure(&self, user: &str, at_ms: i64) -> tandem_common::Result<()> {
        self.inner.note_erasure(user, at_ms).await
    }
    async fn drop_snapshots_older(&self, keep: &str) -> tandem_common::Result<u64> {
        self.inner.drop_snapshots_older(keep).await
    }
    async fn drop_epochs_before(&self, cutoff_ms: i64) -> tandem_common::Result<u64> {
        self.inner.drop_epochs_before(cutoff_ms).await
    }
    async fn apply(
        &self,
        log: &str,
        events: &[SpeedEvent<'_>],
    ) -> tandem_common::Result<ApplyCounts> {
        self.inner.apply(log, events).await
    }
    async fn speed(&self, user: &str, from_epoch_ms: i64) -> tandem_common::Result<SpeedState> {
        self.check(true)?;
        self.inner.speed(user, from_epoch_ms).await
    }
    async fn erase_user(
        &self,
        user: &str,
        at_ms: i64,
        snapshots: &[String],
    ) -> tandem_common::Result<u64> {
        self.check(false)?;
        self.inner.erase_user(user, at_ms, snapshots).await
    }
}

#[tokio::test]
async fn a_failing_store_degrades_answers_instead_of_failing() {
    let store = Arc::new(Flaky::default());
    let f = fixture(store.clone()).await;
    let mut row = Profile::new();
    row.apply(&event(
        "a1",
        "erin",
        Kind::View,
        "i1",
        "shoes",
        now() - 10 * HOUR,
    ));
    let popular = PopularRow {
        overall: vec!["h1".into(), "i1".into()],
        ..Default::default()
    };
    f.publish(
        "s1",
        (now() / HOUR - 2) * HOUR,
        &[("erin", row)],
        &[("i1", item_row("shoes", 1.0, &[]))],
        popular,
    )
    .await;
    let (status, b) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["profile"]["counts"]["view"], 1, "{b}");
    // Without the speed state, whether erin was erased is unknown: her row (cached by the call
    // above) is not served alone — unknown counts as erased.
    store.speed_down.store(true, Ordering::SeqCst);
    let (status, b) = f.get("/v1/users/erin/profile").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["degraded"], "popular_only");
    assert_eq!(b["profile"]["counts"]["view"], 0, "{b}");
    let (status, b) = f.get("/v1/users/erin/recommendations?n=5").await;
    assert_eq!(
        (status, b["degraded"].clone()),
        (StatusCode::OK, json!("popular_only")),
        "{b}"
    );
    store.all_down.store(true, Ordering::SeqCst);
    // erin's row is cached from the call above; a user never read gets popular items.
    let (status, b) = f.get("/v1/users/frank/recommendations?n=5").await;
    assert_eq!(status, StatusCode::OK, "{b}");
    assert_eq!(b["degraded"], "popular_only");
    assert_eq!(b["items"][0]["item"], "h1");
    // /readyz answers from the background pointer reads (a probe costs the store nothing):
    // the next one notices, and the store's own words stay off the public listener.
    let mut ready = (StatusCode::OK, Value::Null);
    for _ in 0..250 {
        ready = f.call("GET", "/readyz", None, None).await;
        if ready.1["store"] == json!(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, b) = ready;
    assert_eq!(
        (status, b["store"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(false)),
        "{b}"
    );
    assert!(
        b["problems"][0]
            .as_str()
            .unwrap()
            .contains("admin listener"),
        "{b}"
    );
    let (status, b) = f.get("/v1/items/i9/similar").await;
    assert_eq!(
        (status, b["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("store_unavailable"))
    );
}

/// A bus that refuses every record.
#[derive(Debug)]
struct DownBus;

#[async_trait]
impl Bus for DownBus {
    fn partitions(&self) -> u32 {
        1
    }
    async fn produce(&self, _: Vec<(Bytes, Bytes)>) -> tandem_stream::Result<Vec<Position>> {
        Err(tandem_stream::Error::Io(std::io::Error::other(
            "bus unreachable",
        )))
    }
    async fn fetch(
        &self,
        _: u32,
        _: u64,
        _: usize,
        _: Duration,
    ) -> tandem_stream::Result<Vec<Record>> {
        Ok(Vec::new())
    }
    async fn end_offset(&self, _: u32) -> tandem_stream::Result<u64> {
        Ok(0)
    }
    async fn log_id(&self, _: u32) -> tandem_stream::Result<Option<String>> {
        Ok(None)
    }
    async fn committed(&self, _: &str, _: u32) -> tandem_stream::Result<Option<u64>> {
        Ok(None)
    }
    async fn commit(&self, _: &str, _: u32, _: u64) -> tandem_stream::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unavailable_bus_is_a_503_with_retry_after() {
    let f = fixture_with(Arc::new(MemoryStore::default()), Some(Arc::new(DownBus))).await;
    let (status, b) = f
        .post(&wire(&event(
            "e1",
            "gina",
            Kind::View,
            "i1",
            "shoes",
            now(),
        )))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert_eq!(b["code"], "bus_unavailable");
    assert_eq!(b["retry_after"], "1");
}

/// The ranking path of serving (candidates named by number, features from precomputed parts)
/// gives exactly what the models' own `candidates` and `rank` give over the whole catalog:
/// same items, sources and scores, for listed items, items only on similar lists (listed or
/// not), an item without a row, a category no listed item has, exclusions and recent items of both kinds.
#[tokio::test]
async fn serving_ranks_exactly_as_the_models_do() {
    use std::collections::HashMap;

    use tandem_models::candidates::{CandidateOptions, Catalog, candidates, latent_depth, rank};
    use tandem_models::features::{
        FEATURE_SCHEMA_VERSION, PAIR_FEATURES, USER_FEATURES, cf_scores,
    };
    use tandem_models::latent::{Latent, LatentOptions, Rows};
    use tandem_models::linear::{LinearModel, Scaler};
    use tandem_models::training::personal as models_personal;

    use crate::api::{
        Exclude, candidate_ids, personal, rank_resolved, resolve_rows, similar_sources, unlisted,
    };
    use crate::snapshot::Snapshots;

    let f = fixture(Arc::new(MemoryStore::default())).await;
    let stats = |cat: &str, k: u64| ItemStats {
        counts: [10 + 3 * k, k % 4, k % 3, k % 5, 0, 1, 0],
        popularity: 2.0 + (k as f64) * 0.37,
        category: Some((cat.into(), 0)),
        ..Default::default()
    };
    // l*: on the popular lists; u*: only on similar lists; "ghost": no row at all.
    let mut rows: Vec<(String, ItemRow)> = Vec::new();
    for k in 0..12u64 {
        let cat = ["shoes", "hats", "socks"][k as usize % 3];
        let similar = vec![
            (format!("u{}", k % 5), 0.9),
            (format!("l{}", (k + 1) % 12), 0.8),
            ("ghost".to_string(), 0.7),
            (format!("u{}", (k + 2) % 5), 0.6),
        ];
        rows.push((
            format!("l{k}"),
            ItemRow {
                stats: stats(cat, k),
                similar,
            },
        ));
    }
    for k in 0..5u64 {
        let cat = ["bags", "shoes"][k as usize % 2];
        let similar = vec![(format!("u{}", (k + 1) % 5), 0.5), ("l3".into(), 0.4)];
        rows.push((
            format!("u{k}"),
            ItemRow {
                stats: stats(cat, 20 + k),
                similar,
            },
        ));
    }
    let listed: Vec<String> = (0..12).map(|k| format!("l{k}")).collect();
    let popular = PopularRow {
        overall: listed
            .iter()
            .rev()
            .cloned()
            .chain(["ghost".into()])
            .collect(),
        by_category: ["shoes", "hats", "socks"]
            .iter()
            .enumerate()
            .map(|(c, name)| {
                let list = (0..12).filter(|k| k % 3 == c).map(|k| format!("l{k}"));
                (name.to_string(), list.collect())
            })
            .collect(),
    };
    // The snapshot's models carry this ranker: serving ranks by its snapshot's models, whose
    // item terms it computes when it loads them.
    let ranker = LinearModel {
        features: PAIR_FEATURES.iter().map(|s| s.to_string()).collect(),
        scaler: Scaler {
            mean: vec![0.1, 0.2, 0.3, 0.05, 0.4, 0.1, 0.2, 1.0, 0.3, 0.5, 0.02],
            std: vec![0.5, 0.7, 1.1, 0.2, 0.9, 0.3, 0.4, 2.0, 0.6, 0.8, 0.3],
        },
        weights: vec![0.8, -0.3, 1.2, 2.0, 0.6, 1.5, -0.7, 0.1, 1.7, -0.4, 2.5],
        intercept: -0.4,
    };
    let opts = CandidateOptions {
        recent_for_similar: 4,
        collaborative: 50,
        latent: 4,
        categories: 2,
        per_category: 3,
        popular: 6,
    };
    let (zeros, ones) = (
        vec![0.0; USER_FEATURES.len()],
        vec![1.0; USER_FEATURES.len()],
    );
    // A latent model over the items and one the snapshot has no row of ("zz"), fitted on
    // baskets of neighbouring items.
    let mut ids: Vec<String> = rows.iter().map(|(i, _)| i.clone()).collect();
    ids.extend(["ghost".to_string(), "zz".to_string()]);
    ids.sort();
    let (mut offsets, mut members) = (vec![0], Vec::new());
    for b in 0..40u32 {
        let mut basket: Vec<u32> = (0..4).map(|j| (b * 3 + j * 5) % ids.len() as u32).collect();
        basket.sort_unstable();
        basket.dedup();
        members.extend(basket);
        offsets.push(members.len());
    }
    let rows_of = Rows {
        offsets: &offsets,
        members: &members,
    };
    let opts_latent = LatentOptions {
        factors: 4,
        ..Default::default()
    };
    let latent = Latent::fit(ids, rows_of, &opts_latent).unwrap();
    let models = json!({
        "feature_schema_version": FEATURE_SCHEMA_VERSION,
        "latent": latent,
        "segments": {
            "features": USER_FEATURES, "scaler": {"mean": zeros, "std": ones},
            "centroids": [zeros], "labels": ["all"], "sizes": [1], "silhouettes": [],
        },
        "ranker": ranker,
        "propensity": {
            "features": USER_FEATURES, "scaler": {"mean": zeros, "std": ones},
            "weights": zeros, "intercept": 0.0,
        },
        "candidates": opts,
        "metrics": {
            "split": {"train_from_ms": 0, "holdout_from_ms": 0, "end_ms": 0}, "k": 10,
            "train_users": 0, "train_rows": 0, "eval_users": 0,
            "ranker": {"hit_rate": 0.0, "ndcg": 0.0}, "popularity": {"hit_rate": 0.0, "ndcg": 0.0},
            "candidate_recall": 0.0, "propensity_auc": null, "propensity_base_rate": 0.0,
            "segments": 1, "silhouette": 0.0,
        },
    });
    let refs: Vec<(&str, ItemRow)> = rows.iter().map(|(i, r)| (i.as_str(), r.clone())).collect();
    let models_row = (
        snapshot_key("s1", "models"),
        models.to_string().into_bytes().into(),
    );
    f.store.put(&[models_row]).await.unwrap();
    f.publish("s1", now() - 5 * HOUR, &[], &refs, popular.clone())
        .await;
    let s = f.app.snapshots.current().unwrap();
    assert_eq!(
        s.models.as_ref().and_then(|m| m.ranker.as_ref()),
        Some(&ranker)
    );

    let t = now() - 2 * HOUR;
    let mut p = Profile::new();
    let seen = [
        ("u1", "bags"),
        ("l4", "hats"),
        ("u3", "bags"),
        ("l7", "hats"),
        ("l2", "socks"),
        ("l4", "hats"),
    ];
    for (n, (item, cat)) in seen.iter().enumerate() {
        p.apply(&event(
            &format!("e{n}"),
            "u",
            Kind::View,
            item,
            cat,
            t + n as i64 * 1000,
        ));
    }
    p.apply(&event("b", "u", Kind::Purchase, "l5", "socks", t + 9000));
    let at = now();
    let mut exclude: Exclude = ["l9", "u2"].into_iter().collect();
    exclude.extend(p.recent_purchases.iter().map(|(i, _)| i.as_str()));

    // The models' way, over the whole catalog.
    let by_id: HashMap<&str, &ItemRow> = rows.iter().map(|(i, r)| (i.as_str(), r)).collect();
    let catalog = Catalog {
        items: Default::default(),
        popular: popular.overall.clone(),
        by_category: popular.by_category.clone().into_iter().collect(),
    };
    let cf = cf_scores(similar_sources(&p, &opts), |i| {
        let list = by_id.get(i).into_iter().flat_map(|r| &r.similar);
        list.map(|(s, v)| (s.as_str(), *v))
    });
    assert!(cf.len() > 3, "{cf:?}");
    let (pair, top) = models_personal(&p, cf, Some(&latent), at, exclude.len(), &opts);
    assert!(top.len() >= opts.latent, "{top:?}");
    let want_cands = candidates(&p, &catalog, pair.cf(), &top, &exclude, &opts);
    assert!(
        want_cands
            .iter()
            .any(|c| c.source == tandem_models::candidates::Source::Latent),
        "{want_cands:?}"
    );
    let want_stats: Vec<Option<&ItemStats>> = want_cands
        .iter()
        .map(|c| by_id.get(c.item).map(|r| &r.stats))
        .collect();
    let want = rank(&ranker, &pair, &want_cands, &want_stats, 100);

    // Serving's way: with the rows of the items similar to the listed ones listed too (the
    // app's snapshot: the u* rows), and with only the popular lists' rows listed (a cache of
    // one row: the u* rows come from the cache).
    let timeout = Duration::from_secs(5);
    let small = Snapshots::new(f.store.clone(), 1, timeout);
    assert!(small.refresh().await.unwrap());
    for (s, u_listed) in [(s, true), (small.current().unwrap(), false)] {
        let sources = similar_sources(&p, &opts);
        let store = f.store.as_ref();
        let similar_rows = s.item_rows(store, &sources, timeout).await.unwrap();
        let user = personal(&s, &similar_rows, &sources, exclude.len(), &opts);
        let cands = candidate_ids(&s, &p, &user, &exclude, &opts);
        let unlisted = unlisted(&cands);
        assert!(unlisted.contains(&"ghost"));
        assert_eq!(
            unlisted.iter().any(|i| i.starts_with('u')),
            !u_listed,
            "{unlisted:?}"
        );
        let rows = s.item_rows(store, &unlisted, timeout).await.unwrap();
        let resolved = resolve_rows(&s, &cands, &rows);
        let got = rank_resolved(&s, &p, &user, &cands, &resolved, at, 100).unwrap();

        assert_eq!(got.len(), want_cands.len());
        assert!(got.iter().any(|r| r.score > 0.0 && r.score < 1.0));
        assert_eq!(got, want);

        // Again, the user folded in from the memo: the same answer. And a request excluding
        // more items than the memo's list covers gets a list deep enough for it.
        let again = personal(&s, &similar_rows, &sources, exclude.len(), &opts);
        let cached = Arc::clone(&again.latent.as_ref().unwrap().1);
        assert!(Arc::ptr_eq(&cached, &user.latent.as_ref().unwrap().1));
        assert_eq!(again.latent_top, user.latent_top);
        let deep = latent_depth(&opts, 1000);
        let wider = personal(&s, &similar_rows, &sources, 1000, &opts);
        let wide = &wider.latent.as_ref().unwrap().1;
        assert!(wide.best.len() >= deep.min(latent.items.len()));
        assert_eq!(
            wider.latent_top[..user.latent_top.len()],
            user.latent_top[..]
        );
        assert_eq!(wide.vector, cached.vector);
    }
}

/// The HTTP edge on a real socket, as slow and hostile clients meet it: half-sent headers are
/// cut off after `header_timeout`; an unauthenticated POST announcing 900 KB is answered 401
/// before its body is sent (the body was read first, and held); a body that stalls gets 408
/// after `body_timeout`, and while it is in flight the in-flight limit answers others 503
/// `overloaded` (the health probe excepted); request ids are echoed or made; and at shutdown
/// idle keep-alive connections do not hold the server (they held it for their keep-alive).
/// The guards on each read only stop a broken server from hanging the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_bounds_slow_and_hostile_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let opts = ServeOptions {
        body_timeout: Duration::from_secs(3),
        max_in_flight: 1,
        edge: crate::edge::EdgeOptions {
            header_timeout: Duration::from_millis(300),
            max_connections: 64,
            shutdown_grace: Duration::from_secs(60),
        },
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(crate::serve(listener, app, cancel.clone()));
    let guard = Duration::from_secs(20);
    // Reads until the server closes the connection (or the guard): what it sent.
    async fn answer(s: &mut TcpStream, guard: Duration) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(guard, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.windows(4).any(|w| w == b"\r\n\r\n") && !out.starts_with(b"HTTP/1.1 1") {
                        // Headers are in; the bodies here are small, read what came with them.
                        break;
                    }
                }
                Err(_) => panic!("the server neither answered nor closed within {guard:?}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    // Half-sent headers: the connection is closed.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = answer(&mut slow, guard).await;
    assert!(!got.contains("200 OK"), "{got}");

    // An unauthenticated POST of 900 KB, headers only: 401 at once.
    let mut anon = TcpStream::connect(addr).await.unwrap();
    anon.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n",
    )
    .await
    .unwrap();
    let got = answer(&mut anon, guard).await;
    assert!(got.starts_with("HTTP/1.1 401"), "{got}");

    // An authenticated POST whose body stalls holds the one in-flight slot, then gets 408.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            format!(
                "POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[{{\"event_id\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let get = |path: &str, id: Option<&str>| {
        let id = id.map_or(String::new(), |i| format!("x-request-id: {i}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n{id}\r\n")
    };
    // Once the stalled POST is in its handler, another request finds no slot.
    let mut shed = None;
    for _ in 0..40 {
        let mut other = TcpStream::connect(addr).await.unwrap();
        other
            .write_all(get("/v1/items/popular", None).as_bytes())
            .await
            .unwrap();
        let got = answer(&mut other, guard).await;
        if got.starts_with("HTTP/1.1 503") {
            shed = Some(got);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shed = shed.expect("no request was refused while the only slot was held");
    assert!(shed.contains("retry-after"), "{shed}");
    let mut probe = TcpStream::connect(addr).await.unwrap();
    probe
        .write_all(get("/healthz", None).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut probe, guard).await;
    assert!(got.starts_with("HTTP/1.1 200"), "the health probe: {got}");
    let got = answer(&mut stalled, guard).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");

    // Request ids: a sane one is echoed, an insane one replaced.
    let mut ids = TcpStream::connect(addr).await.unwrap();
    ids.write_all(get("/healthz", Some("abc-123")).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut ids, guard).await;
    assert!(got.contains("x-request-id: abc-123"), "{got}");
    ids.write_all(get("/healthz", Some("bad id with spaces")).as_bytes())
        .await
        .unwrap();
    let got = answer(&mut ids, guard).await;
    assert!(
        got.contains("x-request-id: ") && !got.contains("bad id"),
        "{got}"
    );

    // Idle keep-alive connections (each served a request) do not hold the shutdown.
    let mut idle = Vec::new();
    for _ in 0..5 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(get("/healthz", None).as_bytes()).await.unwrap();
        assert!(answer(&mut c, guard).await.starts_with("HTTP/1.1 200"));
        idle.push(c);
    }
    cancel.cancel();
    tokio::time::timeout(guard, server)
        .await
        .expect("idle connections held the shutdown")
        .unwrap()
        .unwrap();
}

/// CORS for the configured origins only; a wrong method (`OPTIONS` outside a preflight, `PUT`)
/// is a 405 in the `{code, message}` form (it was an empty 405); and `/openapi.json` declares
/// query parameters in the query, optional (it declared `n`, `context_item`, `exclude` and
/// `category` as required path parameters), and the events body and its 400 with `errors`.
#[tokio::test]
async fn cors_method_errors_and_the_openapi_document_are_right() {
    let opts = ServeOptions {
        cors_origins: vec!["https://shop.example".into()],
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let call = |method: &str, uri: &str, headers: &[(&str, &str)]| {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let resp = router(app).oneshot(req).await.unwrap();
            let status = resp.status();
            let headers = resp.headers().clone();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, headers, bytes)
        }
    };
    let shop = ("origin", "https://shop.example");
    let (status, h, _) = call(
        "OPTIONS",
        "/v1/events",
        &[shop, ("access-control-request-method", "POST")],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let auth = format!("Bearer {KEY}");
    let (status, h, _) = call(
        "GET",
        "/v1/items/popular",
        &[shop, ("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], "https://shop.example");
    let (_, h, _) = call(
        "GET",
        "/v1/items/popular",
        &[
            ("origin", "https://evil.example"),
            ("authorization", auth.as_str()),
        ],
    )
    .await;
    assert!(!h.contains_key("access-control-allow-origin"));
    for method in ["OPTIONS", "PUT"] {
        let (status, _, body) = call(method, "/v1/events", &[]).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "method_not_allowed", "{method}: {v}");
    }

    let (_, h, body) = call("GET", "/openapi.json", &[]).await;
    assert!(!h.contains_key("content-encoding"), "not asked for");
    let (status, h, zipped) = call("GET", "/openapi.json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(zipped[..2], [0x1f, 0x8b], "a gzip stream");
    assert!(
        zipped.len() * 3 < body.len(),
        "{} of {}",
        zipped.len(),
        body.len()
    );
    // Small answers go as they are.
    let (_, h, _) = call("GET", "/healthz", &[("accept-encoding", "gzip")]).await;
    assert!(!h.contains_key("content-encoding"));
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let (place, required) = (p["in"].as_str().unwrap(), p["required"] == true);
                if path.contains(&format!("{{{name}}}")) {
                    assert_eq!((place, required), ("path", true), "{method} {path} {name}");
                } else {
                    assert_eq!(
                        (place, required),
                        ("query", false),
                        "{method} {path} {name}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "{checked} parameters");
    let post = &doc["paths"]["/v1/events"]["post"];
    let body_schema = &post["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(
        body_schema["$ref"], "#/components/schemas/EventsBody",
        "{post}"
    );
    let events_body = &doc["components"]["schemas"]["EventsBody"];
    assert_eq!(
        events_body["oneOf"].as_array().map(Vec::len),
        Some(2),
        "{events_body}"
    );
    let event = &doc["components"]["schemas"]["EventDoc"];
    assert_eq!(
        event["properties"]["price"]["maximum"], 1_000_000_000.0,
        "{event}"
    );
    let bad = &post["responses"]["400"]["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(bad, "#/components/schemas/InvalidEventsBody");
    assert!(doc["components"]["schemas"]["InvalidEventsBody"]["properties"]["errors"].is_object());
    cancel.cancel();
}

/// With an admin listener, `/metrics` leaves the public router (it was on the public port) and
/// the admin router serves it, with `/readyz` naming the store's own error.
#[tokio::test]
async fn operations_move_to_the_admin_listener() {
    let opts = ServeOptions {
        admin_listener: true,
        ..Default::default()
    };
    let f = fixture_opts(Arc::new(MemoryStore::default()), None, opts).await;
    let (app, cancel) = (f.app.clone(), f.cancel.clone());
    let get = |r: axum::Router, uri: &'static str| async move {
        let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let resp = r.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    };
    let (status, _) = get(router(app.clone()), "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(crate::admin_router(app.clone()), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = get(crate::admin_router(app.clone()), "/readyz").await;
    // No snapshot yet: not ready, and the store answered.
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains(r#""store":true"#), "{body}");
    cancel.cancel();
}

/// A user erased through another server (its tombstone in the lake, its marker in the store),
/// whose snapshot row this server had cached: when the store loses its data (a Redis restarted
/// without persistence), the marker goes with it, and the cached row came back. The server
/// finds the pointer gone, reads the lake's erasures again, and the user stays erased; the
/// others keep their cached rows meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_lost_its_data_does_not_bring_an_erased_user_back() {
    let mut server = RedisServer::start();
    let f = fixture(redis_store(&server).await).await;
    let cutoff = 1_763_769_600_000;
    let profile = |user: &str| {
        let mut p = Profile::new();
        p.apply(&event(
            "e",
            user,
            Kind::Purchase,
            "i1",
            "shoes",
            cutoff - HOUR,
        ));
        p
    };
    f.publish(
        "s1",
        cutoff,
        &[("gone", profile("gone")), ("kept", profile("kept"))],
        &[],
        PopularRow::default(),
    )
    .await;
    for u in ["gone", "kept"] {
        let (status, body) = f.get(&format!("/v1/users/{u}/profile")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Erased elsewhere: the tombstone, and the store's marker.
    let at = cutoff + HOUR;
    f.lake
        .record_erasure(&tandem_common::lake::Tombstone {
            user_id: "gone".into(),
            erased_ms: at,
        })
        .await
        .unwrap();
    f.store
        .erase_user("gone", at, &["s1".to_string()])
        .await
        .unwrap();
    let (status, body) = f.get("/v1/users/gone/profile").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    server.restart();
    let losses = f.app.snapshots.losses();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while f.app.erased_at("gone").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the lake's erasures were not read again (losses {losses} → {})",
            f.app.snapshots.losses()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = f.get("/v1/users/gone/profile").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the erased user stays erased: {body}"
    );
    let (status, body) = f.get("/v1/users/kept/profile").await;
    assert_eq!(
        (status, body["profile"]["events"].clone()),
        (StatusCode::OK, json!(1)),
        "{body}"
    );
}
