use std::collections::{HashMap, HashSet};

use super::*;
use std::io::Cursor;

use tandem_common::config::Config;
use tandem_common::event::{Acceptance, parse_event};
use tandem_common::ingest::{IngestOptions, InputFormat, Quiet, ingest};
use tandem_common::lake::Lake;
use tandem_common::schema::events_from_batch;

const END: i64 = 1_763_769_600_000;

fn lines(opts: GenerateOptions) -> Vec<String> {
    let mut g = Generator::new(opts).unwrap();
    let mut out = Vec::new();
    while g.next_json(&mut out) {}
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_events() {
    let a = lines(GenerateOptions::new(200, 2, 5, END));
    let b = lines(GenerateOptions::new(200, 2, 5, END));
    let c = lines(GenerateOptions::new(200, 2, 6, END));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn hand_written_json_matches_serde() {
    let mut g = Generator::new(GenerateOptions::new(100, 2, 3, END)).unwrap();
    let mut n = 0;
    while let Some(gen_) = g.next_gen() {
        let mut ours = Vec::new();
        g.write_json(&gen_, &mut ours);
        let serde = g.to_event(&gen_).to_json() + "\n";
        assert_eq!(String::from_utf8(ours).unwrap(), serde);
        n += 1;
    }
    assert!(n > 100);
}

#[test]
fn a_storefront_that_looks_real() {
    let opts = GenerateOptions::new(2000, 14, 1, END);
    let all = lines(opts);
    let at = Acceptance::at(END);
    let events: Vec<_> = all
        .iter()
        .map(|l| parse_event(l.as_bytes(), at).expect(l).into_owned())
        .collect();
    let mut kinds: HashMap<Kind, usize> = HashMap::new();
    for e in &events {
        *kinds.entry(e.kind).or_default() += 1;
    }
    for k in Kind::ALL {
        assert!(kinds.get(&k).copied().unwrap_or(0) > 0, "some {k} events");
    }
    // The funnel narrows.
    let (v, c, a, p) = (
        kinds[&Kind::View],
        kinds[&Kind::Click],
        kinds[&Kind::AddToCart],
        kinds[&Kind::Purchase],
    );
    assert!(
        v > c && c > a && a > p,
        "view {v} > click {c} > cart {a} > purchase {p}"
    );
    // Time order, inside the window.
    assert!(events.windows(2).all(|w| w[0].ts <= w[1].ts));
    assert!(events.first().unwrap().ts >= END - 14 * DAY_MS && events.last().unwrap().ts <= END);
    // Popularity is skewed: the top 1% of items get far more than 1% of views.
    let mut views: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::View) {
        *views.entry(e.item_id.as_deref().unwrap()).or_default() += 1;
    }
    let mut counts: Vec<usize> = views.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top: usize = counts.iter().take(counts.len() / 100 + 1).sum();
    assert!(
        top * 100 / v >= 8,
        "top 1% of items have {}% of views",
        top * 100 / v
    );
    // Repeat buyers exist.
    let mut buys: HashMap<&str, usize> = HashMap::new();
    for e in events.iter().filter(|e| e.kind == Kind::Purchase) {
        *buys.entry(&e.user_id).or_default() += 1;
    }
    assert!(
        buys.values().filter(|n| **n >= 2).count() > 10,
        "repeat buyers"
    );
    // event_ids are unique without --dup-rate.
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_id.as_ref())
            .collect::<HashSet<_>>()
            .len(),
        events.len()
    );
}

#[test]
fn bad_and_repeated_events_when_asked() {
    let mut opts = GenerateOptions::new(300, 3, 2, END);
    opts.bad_rate = 0.05;
    opts.dup_rate = 0.05;
    let all = lines(opts);
    let at = Acceptance::at(END);
    let mut bad = 0;
    let mut ids = HashSet::new();
    let mut dups = 0;
    for l in &all {
        match parse_event(l.as_bytes(), at) {
            Ok(e) => {
                if !ids.insert(e.event_id.to_string()) {
                    dups += 1;
                }
            }
            Err(_) => bad += 1,
        }
    }
    let n = all.len();
    assert!(bad > n / 40 && bad < n / 10, "{bad} bad of {n}");
    assert!(dups > n / 40 && dups < n / 10, "{dups} repeated of {n}");
}

#[test]
fn max_events_and_bad_options() {
    let mut opts = GenerateOptions::new(300, 3, 2, END);
    opts.max_events = Some(123);
    assert_eq!(lines(opts).len(), 123);
    let mut opts = GenerateOptions::new(10, 3, 2, END);
    opts.categories = 200;
    opts.items = 100;
    assert!(Generator::new(opts).is_err());
}

/// The ingest path over the generator's output: every valid line is stored, in order, and the
/// bad ones are counted.
#[tokio::test]
async fn generated_history_round_trips_through_ingest_in_count_and_content_round_trips_in_count_and_content()
 {
    let mut opts = GenerateOptions::new(300, 3, 11, 1_763_769_600_000);
    opts.bad_rate = 0.02;
    opts.dup_rate = 0.01;
    let mut g = Generator::new(opts.clone()).unwrap();
    let mut jsonl = Vec::new();
    while g.next_json(&mut jsonl) {}
    let lines = jsonl.iter().filter(|b| **b == b'\n').count() as u64;
    let lake = Lake::open("memory://").unwrap();
    let mut o = IngestOptions::from_config(&Config::defaults(), InputFormat::Jsonl);
    o.chunk_bytes = 64 << 10;
    let s = ingest(&lake, Box::new(Cursor::new(jsonl)), o, &mut Quiet)
        .await
        .unwrap();
    assert_eq!(s.accepted + s.rejected, lines);
    assert!(
        s.rejected > 0 && s.rejected < lines / 20,
        "about 2% bad: {} of {lines}",
        s.rejected
    );
    // The valid events of the same generator are exactly what the lake holds.
    opts.bad_rate = 0.02;
    let mut again = Generator::new(opts).unwrap();
    let mut expected = Vec::new();
    while let Some(e) = again.next_event() {
        expected.push(e);
    }
    let got: Vec<_> = lake
        .read_events()
        .await
        .unwrap()
        .iter()
        .flat_map(|b| events_from_batch(b).unwrap())
        .map(|(e, _)| e)
        .collect();
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "the lake holds the generator's valid events, in order"
    );
}
