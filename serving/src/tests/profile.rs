//! The merged profile: events in, snapshot ⊕ speed out, old events.

use super::*;

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

#[tokio::test]
async fn snapshot_plus_speed_memory() {
    snapshot_plus_speed(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn snapshot_plus_speed_redis() {
    let server = RedisServer::start();
    snapshot_plus_speed(fixture(redis_store(&server).await).await).await;
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
