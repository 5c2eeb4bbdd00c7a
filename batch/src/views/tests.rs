use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tandem_common::event::{Event, Kind, date_of_ms};
use tandem_common::features::recompute;
use tandem_common::lake::{EventFileWriter, Lake, WriterOptions};
use tandem_common::schema::{EventBatchBuilder, Stamp};
use tandem_testkit::generate::{GenerateOptions, Generator};

use super::*;

const HOUR: i64 = 3_600_000;
const END: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

/// Generated events with stamps: most ingested within minutes of their time, some hours or
/// days late, and repeats (same event_id) ingested again up to two days later, so that
/// duplicates and late events fall on both sides of the cutoffs.
fn stamped(seed: u64) -> Vec<(Event<'static>, Stamp)> {
    stamped_with(150, 4, seed)
}

/// [`stamped`] for `users` over `days`.
pub(crate) fn stamped_with(users: u32, days: u32, seed: u64) -> Vec<(Event<'static>, Stamp)> {
    let mut opts = GenerateOptions::new(users, days, seed, END);
    opts.dup_rate = 0.05;
    let mut g = Generator::new(opts).unwrap();
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out: Vec<(Event<'static>, Stamp)> = Vec::new();
    let mut offset = 0i64;
    while let Some(e) = g.next_event() {
        let repeat = out.last().is_some_and(|(p, _)| p.event_id == e.event_id);
        let delay = if repeat {
            out.last().unwrap().1.ingest_ts - e.ts + rng.random_range(0..48 * HOUR)
        } else if rng.random_bool(0.05) {
            rng.random_range(HOUR..72 * HOUR)
        } else {
            rng.random_range(100..600_000)
        };
        offset += 1;
        let stamp = Stamp {
            ingest_ts: e.ts + delay,
            partition: Some((offset % 4) as i32),
            offset: Some(offset),
        };
        out.push((e, stamp));
    }
    out
}

pub(crate) async fn lake_of(events: &[(Event<'static>, Stamp)]) -> Lake {
    let lake = Lake::open("memory://").unwrap();
    let mut sorted: Vec<_> = events.to_vec();
    sorted.sort_by_key(|(_, s)| s.ingest_ts);
    let opts = WriterOptions {
        file_max_rows: 4096,
        row_group_rows: 1024,
        zstd_level: 1,
    };
    let mut w = EventFileWriter::new(lake.clone(), "test", opts).unwrap();
    let mut i = 0;
    while i < sorted.len() {
        let date = date_of_ms(sorted[i].1.ingest_ts);
        let mut b = EventBatchBuilder::default();
        while i < sorted.len() && date_of_ms(sorted[i].1.ingest_ts) == date {
            b.append(&sorted[i].0, sorted[i].1);
            i += 1;
        }
        let first = sorted[i - 1].1.ingest_ts;
        w.write(&b.finish().unwrap(), first).await.unwrap();
    }
    w.finish().await.unwrap();
    lake
}

/// The Rust definition over the same input: ingested before the cutoff, first copy wins.
fn expected(
    events: &[(Event<'static>, Stamp)],
    cutoff: i64,
) -> (BTreeMap<String, Profile>, BTreeMap<String, ItemStats>) {
    expected_erased(events, cutoff, &BTreeMap::new())
}

/// [`expected`] after `erased` (user → erasure time): an erased user's events ingested until
/// the erasure are gone before the first copy is chosen.
fn expected_erased(
    events: &[(Event<'static>, Stamp)],
    cutoff: i64,
    erased: &BTreeMap<String, i64>,
) -> (BTreeMap<String, Profile>, BTreeMap<String, ItemStats>) {
    let mut before: Vec<_> = events
        .iter()
        .filter(|(_, s)| s.ingest_ts < cutoff)
        .filter(|(e, s)| {
            erased
                .get(e.user_id.as_ref())
                .is_none_or(|at| s.ingest_ts > *at)
        })
        .collect();
    before.sort_by_key(|(_, s)| (s.ingest_ts, s.partition, s.offset));
    recompute(before.into_iter().map(|(e, _)| e))
}

async fn check_views(
    lc: &LakeContext,
    cutoff: i64,
    events: &str,
    want_profiles: &BTreeMap<String, Profile>,
    want_items: &BTreeMap<String, ItemStats>,
) {
    let batches = View::Profiles.collect(lc).await.unwrap();
    let profiles = profiles_from(&batches).unwrap();
    // Each user's items for exclude_seen: distinct, every recent item among them.
    let histories = histories_from(&batches).unwrap();
    for (user, p) in &profiles {
        let items = histories.get(user).map_or(&[][..], Vec::as_slice);
        let set: std::collections::BTreeSet<&String> = items.iter().collect();
        assert_eq!(set.len(), items.len(), "{user}: {items:?}");
        assert!(items.len() <= HISTORY_ITEMS);
        assert!(items.len() >= p.recent_items.len());
        for (i, _) in &p.recent_items {
            assert!(set.contains(i), "{user}: recent {i} not in {items:?}");
        }
    }
    assert_eq!(
        profiles.len(),
        want_profiles.len(),
        "users at cutoff {cutoff}, {events}"
    );
    for (user, want) in want_profiles {
        let got = &profiles[user];
        assert!(
            got.approx_eq(want),
            "profile of {user} at cutoff {cutoff}, {events}:\n got {got:?}\nwant {want:?}"
        );
    }
    let items = items_from(&View::Items.collect(lc).await.unwrap()).unwrap();
    assert_eq!(
        items.len(),
        want_items.len(),
        "items at cutoff {cutoff}, {events}"
    );
    for (item, want) in want_items {
        assert!(
            items[item].approx_eq(want),
            "item {item} at cutoff {cutoff}, {events}:\n got {:?}\nwant {want:?}",
            items[item]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_equal_the_feature_definitions_at_every_cutoff() {
    let events = stamped(3);
    let repeats = events.len()
        - events
            .iter()
            .map(|(e, _)| &e.event_id)
            .collect::<std::collections::HashSet<_>>()
            .len();
    assert!(repeats > 100, "the input has duplicates: {repeats}");
    let lake = lake_of(&events).await;
    let first = events.iter().map(|(_, s)| s.ingest_ts).min().unwrap();
    let last = events.iter().map(|(_, s)| s.ingest_ts).max().unwrap();
    // Before everything, three cutoffs inside (one per ingest day), after everything.
    let mut cutoffs = vec![first / HOUR * HOUR, last / HOUR * HOUR + HOUR];
    for k in 1..=3 {
        cutoffs.push((first + (last - first) * k / 4) / HOUR * HOUR);
    }
    let mut largest = 0;
    for cutoff in cutoffs {
        let lc = LakeContext::new(&lake)
            .await
            .unwrap()
            .with_cutoff(cutoff)
            .await
            .unwrap();
        let (want_profiles, want_items) = expected(&events, cutoff);
        // Over the SQL view (deduplicated by a window), then over the materialised events
        // (deduplicated by a hash in Rust): both equal the definition.
        check_views(&lc, cutoff, "the SQL view", &want_profiles, &want_items).await;
        let kept: usize = lc
            .materialise()
            .await
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        let want_rows: u64 = want_profiles.values().map(|p| p.events()).sum();
        assert_eq!(
            kept as u64, want_rows,
            "materialised rows at cutoff {cutoff}"
        );
        check_views(&lc, cutoff, "materialised", &want_profiles, &want_items).await;
        largest = largest.max(
            want_profiles
                .values()
                .filter(|p| p.count(Kind::Purchase) > 0)
                .count(),
        );
    }
    assert!(largest > 20, "some cutoff sees many buyers: {largest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_users_events_are_left_out_until_their_erasure() {
    use tandem_common::lake::Tombstone;
    let events = stamped(7);
    let lake = lake_of(&events).await;
    let first = events.iter().map(|(_, s)| s.ingest_ts).min().unwrap();
    let last = events.iter().map(|(_, s)| s.ingest_ts).max().unwrap();
    // Every tenth user: erased before anything, in the middle of their own events, or after
    // everything (each twice: the later counts); a user no event names, too.
    let mut users: Vec<&str> = events.iter().map(|(e, _)| e.user_id.as_ref()).collect();
    users.sort();
    users.dedup();
    let mut erased = BTreeMap::new();
    for (k, user) in users.iter().step_by(10).enumerate() {
        let mut own: Vec<i64> = events
            .iter()
            .filter(|(e, _)| e.user_id == *user)
            .map(|(_, s)| s.ingest_ts)
            .collect();
        own.sort();
        let at = match k % 3 {
            0 => first - 1,
            1 => own[own.len() / 2],
            _ => last,
        };
        erased.insert(user.to_string(), at);
    }
    erased.insert("nobody".to_string(), last);
    for (user, at) in &erased {
        for t in [at - 10 * HOUR, *at] {
            let t = Tombstone {
                user_id: user.clone(),
                erased_ms: t,
            };
            lake.record_erasure(&t).await.unwrap();
        }
    }
    let cutoff = last / HOUR * HOUR + HOUR;
    let lc = LakeContext::new(&lake)
        .await
        .unwrap()
        .with_cutoff(cutoff)
        .await
        .unwrap();
    assert_eq!(lc.erased_users, erased.len());
    let (want_profiles, want_items) = expected_erased(&events, cutoff, &erased);
    let (all, _) = expected(&events, cutoff);
    let gone = all.len() - want_profiles.len();
    assert!(gone >= 3, "some users have nothing left: {gone}");
    let partly = erased
        .keys()
        .filter(|u| {
            want_profiles
                .get(*u)
                .is_some_and(|p| Some(p) != all.get(*u))
        })
        .count();
    assert!(
        partly >= 3,
        "some keep their events after the erasure: {partly}"
    );
    check_views(&lc, cutoff, "the SQL view", &want_profiles, &want_items).await;
    lc.materialise().await.unwrap();
    check_views(&lc, cutoff, "materialised", &want_profiles, &want_items).await;
}

/// Rows a run used to choke on, or count wrong, beside ordinary ones: an `event_id` two users
/// share (each counts: ids are unique per user, as the speed layer dedupes), a price of 1e300,
/// a quantity over the bound and a user id that breaks Redis hash tags (written before the
/// rules, or by another tool: set aside,
/// counted, the run goes on — a price of 1e300 made every run fail with "Can't cast value
/// 1e306 to type Int64"), and purchases whose money overflows 64 bits (saturated at
/// MAX_MONEY_MICROS, as the speed layer does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_ids_count_per_user_and_poison_numbers_are_set_aside() {
    use tandem_common::event::{MAX_PRICE, MAX_QUANTITY};
    use tandem_common::features::MAX_MONEY_MICROS;
    let mut events = stamped_with(40, 2, 11);
    let t0 = events.iter().map(|(_, s)| s.ingest_ts).max().unwrap();
    let mut offset = 1_000_000;
    let mut add = |user: &str, id: &str, price: f64, quantity: u32| {
        offset += 1;
        let e = Event {
            event_id: id.to_string().into(),
            user_id: user.to_string().into(),
            kind: Kind::Purchase,
            item_id: Some("item-rich".into()),
            category: Some("cat-rich".into()),
            price: Some(price),
            quantity,
            rating: None,
            query: None,
            ts: t0 - HOUR,
            session_id: None,
            props: None,
        };
        let stamp = Stamp {
            ingest_ts: t0 + offset - 1_000_000,
            partition: Some(0),
            offset: Some(offset),
        };
        (e, stamp)
    };
    let good = vec![
        add("user-a", "shared-id", 2.5, 1),
        add("user-b", "shared-id", 4.0, 2),
        add("user-rich", "r1", MAX_PRICE, MAX_QUANTITY),
        add("user-rich", "r2", MAX_PRICE, MAX_QUANTITY),
        add("user-rich", "r3", 1.25, 3),
    ];
    let bad = vec![
        add("user-poison", "p1", 1e300, 1),
        add("user-a", "p2", 5.0, MAX_QUANTITY + 1),
        add("}user-c", "p3", 5.0, 1),
    ];
    events.extend(good);
    let mut all = events.clone();
    all.extend(bad);
    let lake = lake_of(&all).await;
    let cutoff = t0 / HOUR * HOUR + 2 * HOUR;
    let lc = LakeContext::new(&lake)
        .await
        .unwrap()
        .with_cutoff(cutoff)
        .await
        .unwrap();
    assert_eq!(lc.set_aside().await.unwrap(), 3);
    let (want_profiles, want_items) = expected(&events, cutoff);
    assert_eq!(want_profiles["user-a"].spend_micros, 2_500_000);
    assert_eq!(want_profiles["user-b"].spend_micros, 8_000_000);
    assert_eq!(want_profiles["user-rich"].spend_micros, MAX_MONEY_MICROS);
    assert_eq!(want_items["item-rich"].revenue_micros, MAX_MONEY_MICROS);
    assert!(!want_profiles.contains_key("user-poison"));
    check_views(&lc, cutoff, "the SQL view", &want_profiles, &want_items).await;
    lc.materialise().await.unwrap();
    check_views(&lc, cutoff, "materialised", &want_profiles, &want_items).await;
}

#[tokio::test]
async fn the_events_view_prunes_dates_after_the_cutoff() {
    let events = stamped(5);
    let lake = lake_of(&events).await;
    // With an erasure on record, so that the plan holds its join too.
    let t = tandem_common::lake::Tombstone {
        user_id: events[0].0.user_id.to_string(),
        erased_ms: END - 72 * HOUR,
    };
    lake.record_erasure(&t).await.unwrap();
    let cutoff = END - 48 * HOUR;
    let lc = LakeContext::new(&lake)
        .await
        .unwrap()
        .with_cutoff(cutoff)
        .await
        .unwrap();
    let plan = lc
        .ctx
        .sql("EXPLAIN SELECT count(*) FROM events")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    assert!(
        text.contains(&format!("date={}", date_of_ms(cutoff - HOUR))),
        "the plan lists the files it reads:\n{text}"
    );
    assert!(
        !text.contains(&format!("date={}", date_of_ms(END - HOUR))),
        "the last day's folder is not scanned:\n{text}"
    );
}

/// Similar items the plain way: sessions as sets, every pair counted, cosine, top K.
fn similar_reference(
    events: &[(Event<'static>, Stamp)],
    cutoff: i64,
    ts_before: i64,
) -> BTreeMap<String, Vec<Similar>> {
    use std::collections::{BTreeSet, HashSet};
    let mut before: Vec<_> = events
        .iter()
        .filter(|(_, s)| s.ingest_ts < cutoff)
        .collect();
    before.sort_by_key(|(_, s)| (s.ingest_ts, s.partition, s.offset));
    let mut seen = HashSet::new();
    let mut sessions: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Per user, each item's latest time.
    let mut users: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (e, _) in before {
        if !seen.insert(e.event_id.to_string()) {
            continue;
        }
        let interest = matches!(
            e.kind,
            Kind::View | Kind::Click | Kind::AddToCart | Kind::Purchase
        );
        if let (Some(item), true) = (&e.item_id, interest && e.ts < ts_before) {
            let s = match &e.session_id {
                Some(s) => s.to_string(),
                None => format!("{}:{}", e.user_id, e.ts / 86_400_000),
            };
            sessions.entry(s).or_default().insert(item.to_string());
            let last = users
                .entry(e.user_id.to_string())
                .or_default()
                .entry(item.to_string())
                .or_insert(e.ts);
            *last = (*last).max(e.ts);
        }
    }
    // The baskets: each session's first items by id, each user's latest items.
    let mut baskets: Vec<Vec<String>> = sessions
        .into_values()
        .map(|items| items.into_iter().take(MAX_SESSION_ITEMS).collect())
        .collect();
    for items in users.into_values() {
        let mut latest: Vec<(i64, String)> = items.into_iter().map(|(i, t)| (t, i)).collect();
        latest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        baskets.push(
            latest
                .into_iter()
                .take(MAX_USER_ITEMS)
                .map(|(_, i)| i)
                .collect(),
        );
    }
    let mut n: BTreeMap<String, u64> = BTreeMap::new();
    let mut co: BTreeMap<(String, String), u64> = BTreeMap::new();
    for capped in &baskets {
        for a in capped {
            *n.entry((*a).clone()).or_default() += 1;
            for b in capped {
                if a != b {
                    *co.entry((a.clone(), b.clone())).or_default() += 1;
                }
            }
        }
    }
    let mut out: BTreeMap<String, Vec<Similar>> = BTreeMap::new();
    for ((a, b), c) in co {
        let score = c as f64 / (n[&a] as f64 * n[&b] as f64).sqrt();
        out.entry(a).or_default().push(Similar {
            item: b,
            co: c,
            score,
        });
    }
    for v in out.values_mut() {
        v.sort_by(|x, y| {
            y.score
                .total_cmp(&x.score)
                .then_with(|| x.item.cmp(&y.item))
        });
        v.truncate(SIMILAR_K);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_items_equal_a_plain_recomputation() {
    let mut events = stamped(9);
    // A few events without a session, which fall back to the user's day.
    for (e, _) in events.iter_mut().step_by(17) {
        e.session_id = None;
    }
    let lake = lake_of(&events).await;
    let last = events.iter().map(|(_, s)| s.ingest_ts).max().unwrap();
    let (early, late) = (last / HOUR * HOUR - 24 * HOUR, last / HOUR * HOUR + HOUR);
    // The whole lake below each cutoff, and the events of the first two days only (the lists
    // the models' training reads).
    for (cutoff, ts_before) in [(early, i64::MAX), (late, i64::MAX), (late, END - 48 * HOUR)] {
        let lc = LakeContext::new(&lake)
            .await
            .unwrap()
            .with_cutoff(cutoff)
            .await
            .unwrap();
        let view = View::SimilarItems.collect_before(&lc, ts_before);
        let got = similar_from(&view.await.unwrap()).unwrap();
        let want = similar_reference(&events, cutoff, ts_before);
        assert!(
            want.len() > 50,
            "many items have neighbours: {}",
            want.len()
        );
        assert_eq!(
            got.len(),
            want.len(),
            "items with similar items at {cutoff}"
        );
        for (item, w) in &want {
            let g = &got[item];
            let same = g.len() == w.len()
                && g.iter().zip(w).all(|(a, b)| {
                    a.item == b.item && a.co == b.co && (a.score - b.score).abs() < 1e-12
                });
            assert!(
                same,
                "similar to {item} at {cutoff} before {ts_before}:\n got {g:?}\nwant {w:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_heavy_session_and_user_add_bounded_pairs() {
    // One session of one user touching 500 items: without the caps it would add 249,500 pairs
    // twice. The session's basket is its first items by id, the user's its latest.
    let mut events = Vec::new();
    for i in 0..500 {
        let json = format!(
            r#"{{"event_id":"h{i}","user_id":"bot","kind":"view","item_id":"i{i:03}","session_id":"s","ts":{}}}"#,
            END - 10 * HOUR + i
        );
        let e = tandem_common::event::parse_event(
            json.as_bytes(),
            tandem_common::event::Acceptance::at(END),
        )
        .unwrap()
        .into_owned();
        events.push((
            e,
            Stamp {
                ingest_ts: END - HOUR,
                partition: None,
                offset: None,
            },
        ));
    }
    let lake = lake_of(&events).await;
    let lc = LakeContext::new(&lake)
        .await
        .unwrap()
        .with_cutoff(END)
        .await
        .unwrap();
    let got = similar_from(&View::SimilarItems.collect(&lc).await.unwrap()).unwrap();
    assert_eq!(
        got.len(),
        MAX_SESSION_ITEMS + MAX_USER_ITEMS,
        "only the capped items have neighbours"
    );
    assert!(got.contains_key("i000") && got.contains_key("i499"));
    assert!(!got.contains_key("i250"));
    assert!(got.values().all(|v| v.len() == SIMILAR_K));
}

#[tokio::test]
async fn a_script_drops_its_tables_even_when_its_query_fails() {
    let lake = lake_of(&stamped_with(5, 1, 1)).await;
    let lc = LakeContext::new(&lake)
        .await
        .unwrap()
        .with_cutoff(END)
        .await
        .unwrap();
    let script = "-- two steps\nCREATE OR REPLACE TABLE step AS SELECT 1 AS x;\n\
                  SELECT x FROM step;\nDROP TABLE IF EXISTS step;\n";
    let rows = run_script(&lc, script).await.unwrap();
    assert_eq!(rows.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    assert!(
        lc.ctx.table("step").await.is_err(),
        "dropped after the query"
    );

    let failing = "CREATE OR REPLACE TABLE step AS SELECT 1 AS x;\n\
                   SELECT no_such_column FROM step;\n-- clean up\nDROP TABLE IF EXISTS step;\n";
    let err = run_script(&lc, failing).await.unwrap_err().to_string();
    assert!(err.contains("no_such_column"), "the query's error: {err}");
    assert!(
        lc.ctx.table("step").await.is_err(),
        "dropped after the failure too"
    );

    let two = "SELECT 1;\nSELECT 2;\n";
    let err = run_script(&lc, two).await.unwrap_err().to_string();
    assert!(err.contains("has 2"), "{err}");
}
