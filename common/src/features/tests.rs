use std::borrow::Cow;

use proptest::prelude::*;

use super::*;

prop_compose! {
    fn event()(
        n in 0u32..1_000_000,
        user in 0u8..4,
        item in 0u8..30,
        kind in proptest::sample::select(Kind::ALL.to_vec()),
        category in proptest::option::of(0u8..5),
        // Now and then the largest line (1e9 × 1e6): sums saturate, and merges must agree.
        price in prop_oneof![9 => (0u32..100_000).prop_map(|p| p as f64 / 100.0), 1 => Just(1e9)],
        quantity in prop_oneof![9 => 1u32..4, 1 => Just(1_000_000)],
        // Up to ten years after the reference time: the log-space scores stay finite.
        ts in DECAY_REF_MS..DECAY_REF_MS + 3650 * 86_400_000,
    ) -> Event<'static> {
        Event {
            event_id: Cow::Owned(format!("e{n}")),
            user_id: Cow::Owned(format!("u{user}")),
            kind,
            item_id: (kind != Kind::Search).then(|| Cow::Owned(format!("i{item}"))),
            category: category.map(|c| Cow::Owned(format!("c{c}"))),
            price: (kind == Kind::Purchase).then_some(price),
            quantity,
            rating: (kind == Kind::Rate).then_some(4.0),
            query: (kind == Kind::Search).then_some(Cow::Borrowed("q")),
            ts,
            session_id: None,
            props: None,
        }
    }
}

fn fold_profile<'a>(events: impl IntoIterator<Item = &'a Event<'a>>) -> Profile {
    let mut p = Profile::new();
    for e in events {
        p.apply(e);
    }
    p
}

proptest! {
    /// Keeping the recent items sorted as they come equals pushing and sorting each time.
    #[test]
    fn recent_items_kept_in_order(seen in proptest::collection::vec((0u8..40, 0i64..30), 0..200)) {
        let mut kept: Vec<(String, i64)> = Vec::new();
        let mut sorted: Vec<(String, i64)> = Vec::new();
        for (item, ts) in seen {
            let item = format!("i{item}");
            touch_recent(&mut kept, &item, ts);
            match sorted.iter_mut().find(|(i, _)| *i == item) {
                Some(e) => e.1 = e.1.max(ts),
                None => sorted.push((item, ts)),
            }
            sort_recent(&mut sorted);
            prop_assert_eq!(&kept, &sorted);
        }
    }

    /// Split anywhere, fold each side, merge: the same as folding everything.
    #[test]
    fn profiles_merge(events in proptest::collection::vec(event(), 0..80), split in 0usize..80) {
        let split = split.min(events.len());
        let all = fold_profile(&events);
        let mut merged = fold_profile(&events[..split]);
        merged.merge(&fold_profile(&events[split..]));
        prop_assert!(merged.approx_eq(&all), "{merged:?}\n!=\n{all:?}");
        // And the order of events does not matter.
        let reversed = fold_profile(events.iter().rev());
        prop_assert!(reversed.approx_eq(&all));
    }

    #[test]
    fn item_stats_merge(events in proptest::collection::vec(event(), 0..80), split in 0usize..80) {
        let split = split.min(events.len());
        let fold = |es: &[Event<'static>]| { let mut s = ItemStats::default(); es.iter().for_each(|e| s.apply(e)); s };
        let mut merged = fold(&events[..split]);
        merged.merge(&fold(&events[split..]));
        prop_assert!(merged.approx_eq(&fold(&events)));
        let mut rev = ItemStats::default();
        events.iter().rev().for_each(|e| rev.apply(e));
        prop_assert!(rev.approx_eq(&fold(&events)));
    }
}

#[test]
fn money_saturates_at_the_cap() {
    use crate::event::{MAX_PRICE, MAX_QUANTITY};
    assert_eq!(spend_micros(1.25, 3), 3_750_000);
    assert_eq!(spend_micros(0.1, 7), 700_000);
    assert_eq!(spend_micros(MAX_PRICE, MAX_QUANTITY), MAX_MONEY_MICROS);
    assert_eq!(spend_micros(1e300, 1), MAX_MONEY_MICROS);
    assert_eq!(spend_micros(f64::NAN, 1), 0);
    assert_eq!(add_money(MAX_MONEY_MICROS, 1), MAX_MONEY_MICROS);
    assert_eq!(add_money(MAX_MONEY_MICROS - 5, 3), MAX_MONEY_MICROS - 2);
    // Saturated parts add up to the saturated whole, however the lines are split.
    let lines = [
        MAX_MONEY_MICROS / 3,
        17,
        MAX_MONEY_MICROS / 2,
        5,
        MAX_MONEY_MICROS / 4,
    ];
    let whole = lines.iter().fold(0, |a, b| add_money(a, *b));
    assert_eq!(whole, MAX_MONEY_MICROS);
    for split in 0..=lines.len() {
        let a = lines[..split].iter().fold(0, |a, b| add_money(a, *b));
        let b = lines[split..].iter().fold(0, |a, b| add_money(a, *b));
        assert_eq!(add_money(a, b), whole, "split at {split}");
    }
}

#[test]
fn decayed_scores_read_back() {
    let mut p = Profile::new();
    let day = 86_400_000;
    let t0 = DECAY_REF_MS + 2000 * day; // far from the reference: still finite
    for (ts, kind) in [(t0, Kind::View), (t0 + day, Kind::Purchase)] {
        p.apply(&Event {
            event_id: Cow::Borrowed("e"),
            user_id: Cow::Borrowed("u"),
            kind,
            item_id: Some(Cow::Borrowed("i")),
            category: Some(Cow::Borrowed("books")),
            price: Some(2.5),
            quantity: 2,
            rating: None,
            query: None,
            ts,
            session_id: None,
            props: None,
        });
    }
    let at = t0 + day;
    let want = 1.0 * (-1.0f64 / 7.0).exp() + 8.0;
    assert!((decayed_at(p.affinity["books"], at) - want).abs() < 1e-9);
    assert_eq!(p.spend_micros, 5_000_000);
    assert_eq!(p.units, 2);
    assert_eq!(p.recent_items, vec![("i".to_string(), t0 + day)]);
    assert_eq!(p.recent_purchases, vec![("i".to_string(), t0 + day)]);
}
