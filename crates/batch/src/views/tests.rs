use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tandem_common::event::{Event, date_of_ms};
use tandem_common::features::recompute;
use tandem_common::generate::{GenerateOptions, Generator};
use tandem_common::lake::{EventFileWriter, Lake, WriterOptions};
use tandem_common::schema::{EventBatchBuilder, Stamp};

use super::*;

const HOUR: i64 = 3_600_000;
const END: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

/// Generated events with stamps: most ingested within minutes of their time, some hours or
/// days late, and repeats (same event_id) ingested again up to two days later, so that
/// duplicates and late events fall on both sides of the cutoffs.
fn stamped(seed: u64) -> Vec<(Event<'static>, Stamp)> {
    let mut opts = GenerateOptions::new(150, 4, seed, END);
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

async fn lake_of(events: &[(Event<'static>, Stamp)]) -> Lake {
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
    let mut before: Vec<_> = events
        .iter()
        .filter(|(_, s)| s.ingest_ts < cutoff)
        .collect();
    before.sort_by_key(|(_, s)| (s.ingest_ts, s.partition, s.offset));
    recompute(before.into_iter().map(|(e, _)| e))
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
        let profiles = profiles_from(&View::Profiles.collect(&lc).await.unwrap()).unwrap();
        assert_eq!(
            profiles.len(),
            want_profiles.len(),
            "users at cutoff {cutoff}"
        );
        for (user, want) in &want_profiles {
            let got = &profiles[user];
            assert!(
                got.approx_eq(want),
                "profile of {user} at cutoff {cutoff}:\n got {got:?}\nwant {want:?}"
            );
        }
        largest = largest.max(
            want_profiles
                .values()
                .filter(|p| p.count(tandem_common::event::Kind::Purchase) > 0)
                .count(),
        );
        let items = items_from(&View::Items.collect(&lc).await.unwrap()).unwrap();
        assert_eq!(items.len(), want_items.len(), "items at cutoff {cutoff}");
        for (item, want) in &want_items {
            assert!(
                items[item].approx_eq(want),
                "item {item} at cutoff {cutoff}:\n got {:?}\nwant {want:?}",
                items[item]
            );
        }
    }
    assert!(largest > 20, "some cutoff sees many buyers: {largest}");
}

#[tokio::test]
async fn the_events_view_prunes_dates_after_the_cutoff() {
    let events = stamped(5);
    let lake = lake_of(&events).await;
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
