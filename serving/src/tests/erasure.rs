//! Erasure, and a store that lost its data.

use super::*;

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
