//! Recommendations: candidates, excluded items, ranking as the models rank.

use super::*;

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

#[tokio::test]
async fn recommendations_memory() {
    recommendations(fixture(Arc::new(MemoryStore::default())).await).await;
}

#[tokio::test]
async fn recommendations_redis() {
    let server = RedisServer::start();
    recommendations(fixture(redis_store(&server).await).await).await;
}

/// The ranking path of serving (candidates named by number, features from precomputed parts)
/// gives exactly what the models' own `candidates` and `rank` give over the whole pool:
/// same items, sources and scores, for listed items, items only on similar lists (listed or
/// not), an item without a row, a category no listed item has, exclusions and recent items of both kinds.
#[tokio::test]
async fn serving_ranks_exactly_as_the_models_do() {
    use std::collections::HashMap;

    use tandem_models::candidates::{CandidateOptions, ItemPool, candidates, latent_depth, rank};
    use tandem_models::latent::{Latent, LatentOptions, Rows};
    use tandem_models::linear::{LinearModel, Scaler};
    use tandem_models::training::personal as models_personal;
    use tandem_models::vectors::{FEATURE_SCHEMA_VERSION, PAIR_FEATURES, USER_FEATURES, cf_scores};

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

    // The models' way, over the whole pool.
    let by_id: HashMap<&str, &ItemRow> = rows.iter().map(|(i, r)| (i.as_str(), r)).collect();
    let pool = ItemPool {
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
    let want_cands = candidates(&p, &pool, pair.cf(), &top, &exclude, &opts);
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
