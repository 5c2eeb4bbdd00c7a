use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ndarray::Array2;
use tandem_common::event::{Event, Kind};
use tandem_common::features::{ItemStats, Profile, recompute};
use tandem_testkit::generate::{GenerateOptions, Generator};

use crate::candidates::{CandidateOptions, ItemPool, SimilarLists, Source, candidates};
use crate::latent::{Latent, LatentOptions, Rows};
use crate::linear::{LinearModel, auc};
use crate::segments::Segments;
use crate::training::{History, Models, Split, TrainOptions, score_list, train};
use crate::vectors::{
    FEATURE_SCHEMA_VERSION, ItemSide, ItemTerms, PAIR_FEATURES, USER_FEATURES, cf_scores,
};

const END: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z
const DAY: i64 = 86_400_000;

#[test]
fn logistic_learns_the_direction_of_its_labels() {
    // y = (x0 + noise > 0), x1 is noise: the weight of x0 must be clearly positive.
    let mut rows = Vec::new();
    let mut y = Vec::new();
    for i in 0..400 {
        let x0 = (i as f64 / 400.0 - 0.5) * 4.0;
        let x1 = ((i * 7919) % 400) as f64 / 100.0;
        rows.extend([x0, x1]);
        y.push(x0 + ((i * 31) % 7) as f64 * 0.1 - 0.3 > 0.0);
    }
    let x = Array2::from_shape_vec((400, 2), rows).unwrap();
    let m = LinearModel::train(&["x0", "x1"], x, &y, 0.1).unwrap();
    assert!(m.weights[0] > 1.0, "{m:?}");
    assert!(m.weights[1].abs() < m.weights[0] / 4.0, "{m:?}");
    assert!(m.probability(&[1.5, 2.0]) > 0.9);
    assert!(m.probability(&[-1.5, 2.0]) < 0.1);
    // The same model whichever class is the larger one.
    let flipped: Vec<bool> = y.iter().map(|b| !b).collect();
    let x = Array2::from_shape_vec((400, 2), (0..800).map(|_| 0.0).collect()).unwrap();
    assert!(LinearModel::train(&["x0", "x1"], x, &flipped, 0.1).is_ok());
    let err = LinearModel::train(&["a"], Array2::zeros((3, 1)), &[true; 3], 1.0).unwrap_err();
    assert!(err.to_string().contains("both outcomes"), "{err}");
}

#[test]
fn auc_and_ndcg_on_known_cases() {
    assert_eq!(
        auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
        Some(0.75)
    );
    assert_eq!(auc(&[0.5, 0.5], &[false, true]), Some(0.5));
    assert_eq!(auc(&[0.1, 0.2], &[true, true]), None);
    let truth: HashSet<String> = ["b".to_string(), "z".to_string()].into();
    let ranked: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let (hit, ndcg) = score_list(ranked.iter().map(String::as_str), &truth, 10);
    assert_eq!(hit, 1.0);
    let ideal = 1.0 + 1.0 / 3f64.log2();
    assert!((ndcg - (1.0 / 3f64.log2()) / ideal).abs() < 1e-12);
    assert_eq!(
        score_list(ranked.iter().map(String::as_str), &truth, 1),
        (0.0, 0.0)
    );
}

#[test]
fn segments_find_separated_groups_and_assign_them() {
    // Three groups of users, far apart in two of the features.
    let mut rows = Vec::new();
    for g in 0..3 {
        for i in 0..120 {
            let mut r = [1.0; 8];
            r[0] = g as f64 * 5.0 + (i % 10) as f64 * 0.05;
            r[3] = (2 - g) as f64 * 4.0 + (i % 7) as f64 * 0.05;
            rows.extend(r);
        }
    }
    let x = Array2::from_shape_vec((360, 8), rows).unwrap();
    let s = Segments::train(&x, 6).unwrap();
    assert_eq!(s.k(), 3, "silhouettes {:?}", s.silhouettes);
    assert_eq!(s.sizes, vec![120, 120, 120]);
    let a = |g: f64| {
        let mut r = [1.0; 8];
        r[0] = g * 5.0;
        r[3] = (2.0 - g) * 4.0;
        s.assign(&r)
    };
    let groups: HashSet<usize> = [a(0.0), a(1.0), a(2.0)].into();
    assert_eq!(groups.len(), 3);
    assert_eq!(s.labels.len(), 3);
    assert!(Segments::train(&Array2::zeros((3, 8)), 4).is_err());
}

fn stats(pop: f64, category: &str) -> ItemStats {
    ItemStats {
        popularity: pop,
        category: Some((category.to_string(), 0)),
        ..ItemStats::default()
    }
}

#[test]
fn candidates_keep_their_first_source_and_leave_out_excluded_items() {
    let items: HashMap<String, ItemStats> = [
        ("a", stats(5.0, "shoes")),
        ("b", stats(4.0, "shoes")),
        ("c", stats(3.0, "hats")),
        ("d", stats(9.0, "hats")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let pool = ItemPool::new(items, 10);
    assert_eq!(pool.popular, ["d", "a", "b", "c"]);
    let mut p = Profile::new();
    p.affinity.insert("shoes".into(), 3.0);
    p.affinity.insert("hats".into(), 1.0);
    p.recent_items = vec![("x".into(), 10)];
    // Collaborative scores of the items similar to "x": "a" (excluded), "b", "e" (equal to b).
    let similar: SimilarLists = [(
        "x".to_string(),
        vec![("a".to_string(), 0.9), ("e".into(), 0.5), ("b".into(), 0.5)],
    )]
    .into();
    let cf = cf_scores(
        crate::candidates::similar_sources(&p, &CandidateOptions::default()),
        |i| {
            let list = similar.get(i).into_iter().flatten();
            list.map(|(s, v)| (s.as_str(), *v))
        },
    );
    let exclude: HashSet<&str> = ["a"].into();
    let opts = CandidateOptions {
        categories: 1,
        ..CandidateOptions::default()
    };
    let named = |cands: Vec<crate::candidates::Candidate>| -> Vec<(String, String)> {
        cands
            .into_iter()
            .map(|c| (c.item.to_string(), c.source.to_string()))
            .collect()
    };
    let pairs = |want: &[(&str, &str)]| -> Vec<(String, String)> {
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let got = named(candidates(&p, &pool, &cf, &[], &exclude, &opts));
    let want = [
        ("b", "cf:item_knn"),
        ("e", "cf:item_knn"),
        ("d", "popular"),
        ("c", "popular"),
    ];
    assert_eq!(got, pairs(&want));
    // The latent model's best items follow, each once, the excluded left out: "b" is taken.
    let got = named(candidates(
        &p,
        &pool,
        &cf,
        &["a", "b", "c"],
        &exclude,
        &opts,
    ));
    let want = [
        ("b", "cf:item_knn"),
        ("e", "cf:item_knn"),
        ("c", "cf:als"),
        ("d", "popular"),
    ];
    assert_eq!(got, pairs(&want));
    // The best by score only: "b" before "e" by id at equal scores.
    let one = CandidateOptions {
        collaborative: 1,
        ..opts
    };
    let got = named(candidates(&p, &pool, &cf, &[], &exclude, &one));
    let want = [("b", "cf:item_knn"), ("d", "popular"), ("c", "popular")];
    assert_eq!(got, pairs(&want));
    // A cold user gets popular items only.
    let nobody = Profile::new();
    let cold = candidates(
        &nobody,
        &pool,
        &Default::default(),
        &[],
        &HashSet::new(),
        &opts,
    );
    assert!(cold.iter().all(|c| c.source == Source::Popular));
}

/// Generated history: 3 weeks, dedupicated by event id as the batch layer does.
fn generated(users: u32, seed: u64) -> Vec<Event<'static>> {
    let mut opts = GenerateOptions::new(users, 21, seed, END);
    opts.dup_rate = 0.0;
    let mut g = Generator::new(opts).unwrap();
    std::iter::from_fn(|| g.next_event()).collect()
}

/// The latent-factor model of the users' latest 50 interest items before `ts_before`, as the
/// batch fits it from the similar items' user baskets.
fn latent_before(events: &[Event<'_>], ts_before: i64) -> Latent {
    let mut users: BTreeMap<&str, BTreeMap<&str, i64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.ts < ts_before) {
        let Some(item) = &e.item_id else { continue };
        if matches!(
            e.kind,
            Kind::View | Kind::Click | Kind::AddToCart | Kind::Purchase
        ) {
            let last = users
                .entry(&e.user_id)
                .or_default()
                .entry(item)
                .or_insert(e.ts);
            *last = (*last).max(e.ts);
        }
    }
    let items: BTreeSet<&str> = users.values().flat_map(|m| m.keys().copied()).collect();
    let items: Vec<String> = items.into_iter().map(str::to_string).collect();
    let (mut offsets, mut members) = (vec![0], Vec::new());
    for latest in users.into_values() {
        let mut latest: Vec<(i64, &str)> = latest.into_iter().map(|(i, t)| (t, i)).collect();
        latest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        members.extend(
            latest
                .into_iter()
                .take(50)
                .map(|(_, i)| items.binary_search_by(|x| x.as_str().cmp(i)).unwrap() as u32),
        );
        offsets.push(members.len());
    }
    let rows = Rows {
        offsets: &offsets,
        members: &members,
    };
    Latent::fit(items.clone(), rows, &LatentOptions::default()).unwrap()
}

/// Similar-item lists of the events before `ts_before`, as the batch view computes them: the
/// 20 best items by cosine over sessions and users' latest 50 items.
fn similar_before(events: &[Event<'_>], ts_before: i64) -> SimilarLists {
    let mut baskets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut users: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.ts < ts_before) {
        let Some(item) = &e.item_id else { continue };
        if !matches!(
            e.kind,
            Kind::View | Kind::Click | Kind::AddToCart | Kind::Purchase
        ) {
            continue;
        }
        let session = e.session_id.as_deref().unwrap_or("-");
        let key = format!("s:{}:{session}", e.user_id);
        baskets.entry(key).or_default().insert(item.to_string());
        let t = users.entry(e.user_id.to_string()).or_default();
        let last = t.entry(item.to_string()).or_insert(e.ts);
        *last = (*last).max(e.ts);
    }
    for (u, items) in users {
        let mut latest: Vec<(i64, String)> = items.into_iter().map(|(i, t)| (t, i)).collect();
        latest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let basket = latest.into_iter().take(50).map(|(_, i)| i).collect();
        baskets.insert(format!("u:{u}"), basket);
    }
    let (mut n, mut co) = (HashMap::<&str, f64>::new(), HashMap::new());
    for b in baskets.values() {
        let b: Vec<&str> = b.iter().map(String::as_str).take(50).collect();
        for a in &b {
            *n.entry(*a).or_default() += 1.0;
            for c in &b {
                if a != c {
                    *co.entry((*a, *c)).or_insert(0.0) += 1.0;
                }
            }
        }
    }
    let mut out = SimilarLists::new();
    for ((a, b), c) in co {
        let score = c / (n[a] * n[b]).sqrt();
        out.entry(a.to_string())
            .or_default()
            .push((b.to_string(), score));
    }
    for list in out.values_mut() {
        list.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        list.truncate(20);
    }
    out
}

#[test]
fn trained_models_beat_popularity_and_round_trip() {
    let events = generated(1_500, 7);
    let split = Split::new(END, 7 * DAY);
    // Folded in two parts and merged equals folded whole: the folds are mergeable.
    let (mut h, mut h2) = (History::new(split), History::new(split));
    for (i, e) in events.iter().enumerate() {
        if i % 2 == 0 { h.add(e) } else { h2.add(e) }
    }
    h.merge(h2);
    assert_eq!(h.events(), events.len() as u64);
    let (profiles, _) = recompute(&events);
    let similar = similar_before(&events, split.train_from_ms);
    let latent = latent_before(&events, split.train_from_ms);
    let models = train(
        h,
        &profiles,
        &similar,
        Some(&latent),
        &TrainOptions::default(),
    )
    .unwrap();
    let m = &models.metrics;
    assert!(m.eval_users > 500, "{m:?}");
    assert!(m.train_rows > m.train_users * 10, "{m:?}");
    let r = m.ranker.expect("the ranker is trained");
    assert!(
        r.hit_rate > m.popularity.hit_rate && r.ndcg > m.popularity.ndcg,
        "the ranker must beat popularity: {m:?}"
    );
    assert!(m.skipped.is_empty(), "{m:?}");
    assert!(m.propensity_auc.unwrap() > 0.6, "{m:?}");
    // Items similar to the user's recent ones are likelier: the ranker learns it.
    let ranker = models.ranker.as_ref().unwrap();
    let cf = PAIR_FEATURES.iter().position(|f| *f == "cf_share").unwrap();
    assert!(ranker.weights[cf] > 0.0, "{ranker:?}");
    // So are items the latent model scores high for the user.
    let latent_w = PAIR_FEATURES
        .iter()
        .position(|f| *f == "latent_score")
        .unwrap();
    assert!(ranker.weights[latent_w] > 0.0, "{ranker:?}");
    assert_eq!(models.latent.as_ref(), Some(&latent));
    assert!((2..=8).contains(&m.segments));

    // Trained twice on the same events, folded the same way: the same models, to the bit.
    let (mut again, mut again2) = (History::new(split), History::new(split));
    for (i, e) in events.iter().enumerate() {
        if i % 2 == 0 {
            again.add(e)
        } else {
            again2.add(e)
        }
    }
    again.merge(again2);
    assert_eq!(
        train(
            again,
            &profiles,
            &similar,
            Some(&latent),
            &TrainOptions::default()
        )
        .unwrap(),
        models
    );

    // Serialised with the feature schema version; another version or feature list is refused.
    let json = models.to_json().unwrap();
    assert_eq!(Models::from_json(&json).unwrap(), models);
    let mut other = models.clone();
    other.feature_schema_version = FEATURE_SCHEMA_VERSION + 1;
    let err = Models::from_json(&other.to_json().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature schema version"), "{err}");
    let mut other = models.clone();
    other.propensity.as_mut().unwrap().features[0] = "something_else".into();
    let err = Models::from_json(&other.to_json().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("propensity"), "{err}");

    // Segment assignment in plain Rust agrees with the segment sizes of training.
    let segments = models.segments.as_ref().unwrap();
    let mut sizes = vec![0u64; segments.k()];
    for p in profiles.values() {
        sizes[segments.assign(&crate::vectors::user_features(p, END))] += 1;
    }
    assert_eq!(sizes, segments.sizes);
    assert_eq!(USER_FEATURES.len(), segments.centroids[0].len());
    let _ = Kind::View;

    // The ranker's logit from precomputed terms is its logit of the features, to the bit, for
    // every user and item: recent or not, of the user's categories or not, similar to the
    // user's recent items or not, at two times.
    let (_, items) = recompute(&events);
    let ranker = models.ranker.as_ref().unwrap();
    let (mut recent_pairs, mut cf_pairs, mut latent_pairs) = (0, 0, 0);
    for now in [END, END + 3 * DAY + 12_345] {
        for (uid, p) in profiles.iter().take(200) {
            let cf = cf_scores(
                crate::candidates::similar_sources(p, &models.candidates),
                |i| {
                    let list = similar.get(i).into_iter().flatten();
                    list.map(|(s, v)| (s.as_str(), *v))
                },
            );
            let (user, _) =
                crate::training::personal(p, cf.clone(), Some(&latent), now, 0, &models.candidates);
            let scorer = user.scorer(ranker);
            for (id, stats) in &items {
                let side = ItemSide::of(stats);
                let interest = stats
                    .category
                    .as_ref()
                    .map_or((0.0, 0.0), |(c, _)| user.interest(c));
                let recent = user.recent_position(id);
                recent_pairs += recent.is_some() as usize;
                let score = cf.get(id.as_str()).copied().unwrap_or(0.0);
                cf_pairs += (score > 0.0) as usize;
                let latent_score = user.latent_score(id);
                latent_pairs += (latent_score != 0.0) as usize;
                let scores = (score, latent_score);
                let want = ranker.logit(&user.features_with(interest, recent, scores, &side));
                assert_eq!(
                    want.to_bits(),
                    ranker.logit(&user.features(id, stats)).to_bits()
                );
                let got = scorer.logit(
                    scorer.interest_terms(interest),
                    scorer.popularity_term(side.popularity),
                    recent,
                    scores,
                    &ItemTerms::of(&side, ranker),
                );
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "user {uid}, item {id}, at {now}"
                );
            }
        }
    }
    assert!(recent_pairs > 100, "{recent_pairs}");
    assert!(cf_pairs > 1_000, "{cf_pairs}");
    assert!(latent_pairs > 10_000, "{latent_pairs}");
}

/// The collaborative candidates come first, by logit; the others (the latent model's among them)
/// fill in after them, by logit.
#[test]
fn collaborative_candidates_rank_first() {
    use crate::candidates::rank_logits;
    let rows = [
        ("p1", Source::Popular, 3.0),
        ("c1", Source::Collaborative, -1.0),
        ("k1", Source::Category("hats"), 2.0),
        ("c2", Source::Collaborative, 0.5),
        ("c3", Source::Collaborative, 0.5),
        ("a1", Source::Latent, 1.0),
    ];
    let top = |n| -> Vec<&str> {
        rank_logits(rows.iter().copied(), n)
            .iter()
            .map(|s| s.item)
            .collect()
    };
    assert_eq!(top(6), ["c2", "c3", "c1", "p1", "k1", "a1"]);
    assert_eq!(top(2), ["c2", "c3"]);
    assert_eq!(top(5), ["c2", "c3", "c1", "p1", "k1"]);
}

#[test]
fn keep_best_equals_a_full_sort_then_truncation() {
    use crate::candidates::keep_best;
    // Scores with ties, so that the item id decides among equals.
    let items: Vec<(f64, String)> = (0..200u64)
        .map(|i| (((i * 7919) % 13) as f64, format!("i{:03}", (i * 31) % 200)))
        .collect();
    for n in [0, 1, 5, 10, 199, 200, 300] {
        let mut want = items.clone();
        want.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        want.truncate(n);
        let mut got = items.clone();
        keep_best(&mut got, n, |(s, i)| (*s, i));
        assert_eq!(got, want, "n = {n}");
    }
}

/// Each model trains or is skipped on its own: a storefront log without a purchase (a public
/// rating log, say) trains the segments and the ranker, and skips the propensity model with
/// its reason, instead of shipping no model at all.
#[test]
fn each_model_trains_or_is_skipped_on_its_own() {
    let events: Vec<Event<'static>> = generated(600, 3)
        .into_iter()
        .filter(|e| e.kind != Kind::Purchase)
        .collect();
    let split = Split::new(END, 7 * DAY);
    let mut h = History::new(split);
    events.iter().for_each(|e| h.add(e));
    let (profiles, _) = recompute(&events);
    let similar = similar_before(&events, split.train_from_ms);
    let models = train(h, &profiles, &similar, None, &TrainOptions::default()).unwrap();
    assert!(models.propensity.is_none());
    assert!(models.ranker.is_some() && models.segments.is_some());
    let why = &models.metrics.skipped["propensity"];
    assert!(why.contains("no user bought"), "{why}");
    assert_eq!(
        models.metrics.skipped.len(),
        1,
        "{:?}",
        models.metrics.skipped
    );
    assert!(models.metrics.propensity_auc.is_none());
    // The models round-trip with a model missing.
    assert_eq!(
        Models::from_json(&models.to_json().unwrap()).unwrap(),
        models
    );
    // With no event at all, nothing can be trained: one error naming every model's reason.
    let err = train(
        History::new(split),
        &Default::default(),
        &Default::default(),
        None,
        &TrainOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("segments:") && err.contains("ranker:") && err.contains("propensity:"),
        "{err}"
    );
}

/// The window widens when the last weeks of a log hold too few events for it (a public log of
/// a few months whose activity fades), and stays as configured on dense data.
#[test]
fn the_window_widens_for_sparse_ends() {
    // Dense: one event an hour over 30 days.
    let mut dense: Vec<i64> = (0..30 * 24)
        .map(|h| END - 30 * DAY + h * 3_600_000)
        .collect();
    assert_eq!(
        crate::training::adapt_window(&mut dense, END, 7 * DAY),
        7 * DAY
    );
    // Fading: 90% of the events in the first 150 days of 210, a trickle after.
    let mut fading: Vec<i64> = (0..9_000)
        .map(|i| END - 210 * DAY + (i % 150) * DAY)
        .chain((0..1_000).map(|i| END - 60 * DAY + (i % 60) * DAY))
        .collect();
    let w = crate::training::adapt_window(&mut fading, END, 7 * DAY);
    assert!((30 * DAY..=70 * DAY).contains(&w), "{} days", w / DAY);
    let held_out = fading.iter().filter(|t| **t >= END - w).count();
    assert!(held_out >= 1_000, "{held_out}");
    // Never more than a third of the span.
    let mut short: Vec<i64> = vec![END - 3 * DAY, END - DAY];
    assert_eq!(
        crate::training::adapt_window(&mut short, END, 7 * DAY),
        7 * DAY
    );
}
