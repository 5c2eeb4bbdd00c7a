use std::borrow::Cow;
use std::collections::BTreeMap;

use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::schema::{EventBatchBuilder, Stamp, events_from_batch};

const NOW: i64 = 1_763_800_000_000; // 2025-11-22T08:26:40Z

fn at() -> Acceptance {
    Acceptance::at(NOW)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    // Quotes, backslashes, controls and non-ASCII exercise JSON escaping and char counting.
    proptest::string::string_regex(&format!("[a-zA-Z0-9 _:./\\-\"\\\\é€😀\\t]{{1,{max}}}")).unwrap()
}

/// [`text`] without control characters: ids that name Redis keys (`user_id`, `item_id`).
fn key_text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 _:./\\-\"\\\\é€😀]{{1,{max}}}")).unwrap()
}

fn opt_text(max: usize) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text(max))
}

prop_compose! {
    fn valid_event()(
        event_id in text(40),
        user_id in key_text(40),
        kind in proptest::sample::select(Kind::ALL.to_vec()),
        item_id in key_text(40),
        search_item in proptest::option::of(key_text(20)),
        category in opt_text(20),
        price in proptest::option::of(0.0f64..1.0e7),
        quantity in 1u32..5000,
        rating in proptest::option::of(-100.0f64..100.0),
        query in text(60),
        other_query in opt_text(20),
        ts in 0i64..=NOW + 300_000,
        session_id in opt_text(30),
        props in proptest::option::of(proptest::collection::btree_map(text(12), proptest::string::string_regex("[a-z0-9 é\"]{0,20}").unwrap(), 0..4)),
    ) -> Event<'static> {
        Event {
            event_id: Cow::Owned(event_id),
            user_id: Cow::Owned(user_id),
            kind,
            item_id: if kind == Kind::Search { search_item.map(Cow::Owned) } else { Some(Cow::Owned(item_id)) },
            category: category.map(Cow::Owned),
            price: if kind == Kind::Purchase { Some(price.unwrap_or(9.99)) } else { price },
            quantity,
            rating: if kind == Kind::Rate { Some(rating.unwrap_or(4.0)) } else { rating },
            query: if kind == Kind::Search { Some(Cow::Owned(query)) } else { other_query.map(Cow::Owned) },
            ts,
            session_id: session_id.map(Cow::Owned),
            props: props.map(|p| p.into_iter().map(|(k, v)| (Cow::Owned(k), Cow::Owned(v))).collect()),
        }
    }
}

fn through_parquet(events: &[Event<'_>], stamp: Stamp) -> Vec<(Event<'static>, Stamp)> {
    let mut b = EventBatchBuilder::default();
    for e in events {
        b.append(e, stamp);
    }
    let batch = b.finish().unwrap();
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        assert_eq!(
            batch.schema(),
            crate::schema::event_schema(),
            "the schema survives Parquet"
        );
        out.extend(events_from_batch(&batch).unwrap());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// An event through a bus record comes back equal, with its ingest time.
    #[test]
    fn valid_events_survive_the_bus_record(e in valid_event(), ingest in -1_000_i64..NOW * 2) {
        let value = to_bus_value(&e, ingest);
        prop_assert_eq!(from_bus_value(&value).unwrap(), (ingest, e));
    }

    /// JSON → event → Arrow → Parquet → Arrow → event: nothing changes.
    #[test]
    fn valid_events_survive_json_arrow_parquet(events in proptest::collection::vec(valid_event(), 1..20)) {
        let json: Vec<String> = events.iter().map(Event::to_json).collect();
        let parsed: Vec<Event<'_>> = json.iter().map(|j| parse_event(j.as_bytes(), at()).unwrap()).collect();
        prop_assert_eq!(&parsed, &events);
        let stamp = Stamp { ingest_ts: NOW, partition: Some(3), offset: Some(77) };
        let back = through_parquet(&parsed, stamp);
        prop_assert_eq!(back.len(), events.len());
        for ((e, s), orig) in back.iter().zip(&events) {
            prop_assert_eq!(e, orig);
            prop_assert_eq!(*s, stamp);
        }
    }

    /// Every sort of invalid event is rejected, naming the field at fault.
    #[test]
    fn invalid_events_are_rejected_naming_the_field(e in valid_event(), sort in 0usize..16) {
        let mut v: Value = serde_json::to_value(&e).unwrap();
        let o = v.as_object_mut().unwrap();
        let expected: &str = match sort {
            0 => { o.remove("event_id"); "event_id" }
            1 => { o.remove("user_id"); "user_id" }
            2 => { o.insert("kind".into(), json!("like")); "kind" }
            3 => { o.insert("kind".into(), json!("purchase")); o.insert("item_id".into(), json!("i")); o.remove("price"); "price" }
            4 => { o.insert("price".into(), json!(-0.01)); "price" }
            5 => { o.insert("ts".into(), json!(NOW + 300_001)); "ts" }
            6 => { o.insert("kind".into(), json!("view")); o.remove("item_id"); "item_id" }
            7 => { o.insert("quantity".into(), json!(0)); "quantity" }
            8 => { o.insert("kind".into(), json!("rate")); o.insert("item_id".into(), json!("i")); o.remove("rating"); "rating" }
            9 => { o.insert("kind".into(), json!("search")); o.remove("query"); "query" }
            10 => { o.insert("event_id".into(), json!("x".repeat(129))); "event_id" }
            11 => { o.insert("price".into(), json!("12.50")); "price" }
            12 => { o.insert("ts".into(), json!("yesterday")); "ts" }
            13 => { o.insert("user_id".into(), json!("")); "user_id" }
            14 => { o.insert("quantity".into(), json!(-1)); "quantity" }
            _ => { o.insert("ts".into(), json!(-1)); "ts" }
        };
        let text = v.to_string();
        let err = parse_event(text.as_bytes(), at()).expect_err("must be rejected");
        prop_assert_eq!(err.field(), Some(expected), "{}", err);
        prop_assert!(err.to_string().contains(&format!("field `{expected}`")), "{}", err);
    }
}

#[test]
fn messages_read_well() {
    let cases: Vec<(&str, &str)> = vec![
        (
            r#"{"event_id":"e","user_id":"u","kind":"purchase","item_id":"i","ts":1}"#,
            "field `price`: required for purchase",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","ts":1}"#,
            "field `item_id`: required for view",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"like","item_id":"i","ts":1}"#,
            "field `kind`: unknown kind `like`; expected one of view, click, add_to_cart, remove_from_cart, purchase, search, rate",
        ),
        (
            r#"{"event_id":"e","kind":"view","item_id":"i"}"#,
            "field `user_id`: required; field `ts`: required",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":"2025-11-22T09:00:00Z"}"#,
            "field `ts`: 2025-11-22T09:00:00.000Z is more than 300s in the future (accepted at 2025-11-22T08:26:40.000Z)",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"colour":"red"}"#,
            "unknown field `colour`; expected one of event_id, user_id, kind, item_id, category, price, quantity, rating, query, ts, session_id, props (column 73)",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"ts":2}"#,
            "field `ts`: appears twice (column 69)",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"price":"3"}"#,
            "field `price`: invalid type: string \"3\", expected f64 (column 76)",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"props":{"a":1}}"#,
            "field `props`: invalid type: integer `1`, expected a string (column 79)",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"purchase","item_id":"i","ts":1,"price":1e300,"quantity":0}"#,
            "field `price`: must be a number from 0 to 1000000000, got 1e300; field `quantity`: must be from 1 to 1000000, got 0",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"purchase","item_id":"i","ts":1,"price":-0.5,"quantity":1000001}"#,
            "field `price`: must be a number from 0 to 1000000000, got -0.5; field `quantity`: must be from 1 to 1000000, got 1000001",
        ),
        (
            r#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"props":{"a":"1","a":"2"}}"#,
            "field `props`: key `a` appears twice (column 90)",
        ),
        (
            r#"{"event_id":"e","user_id":"}u","kind":"view","item_id":"a\tb","ts":1}"#,
            "field `user_id`: must not contain `{`, `}` or control characters, got '}'; field `item_id`: must not contain `{`, `}` or control characters, got '\\t'",
        ),
        (
            r#"{"event_id":"e","user_id":"u""#,
            "EOF while parsing an object (column 29)",
        ),
        (
            r#"[1,2]"#,
            "invalid type: sequence, expected an event object",
        ),
    ];
    for (json, want) in cases {
        let err = parse_event(json.as_bytes(), at()).expect_err(json);
        assert_eq!(err.to_string(), want, "for {json}");
    }
}

#[test]
fn accepted_forms() {
    let rfc = parse_event(br#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":"2025-11-22T09:26:40+01:00","category":null}"#, at()).unwrap();
    let ms = parse_event(
        br#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1763800000000}"#,
        at(),
    )
    .unwrap();
    assert_eq!(
        rfc, ms,
        "an offset and epoch ms mean the same instant; null is absent"
    );
    assert_eq!(rfc.quantity, 1, "quantity defaults to 1");
    let search = parse_event(
        br#"{"event_id":"e","user_id":"u","kind":"search","query":"red shoes","ts":1}"#,
        at(),
    )
    .unwrap();
    assert_eq!(search.item_id, None, "search needs no item");
    let escaped = parse_event(
        br#"{"event_id":"e\"1","user_id":"u","kind":"view","item_id":"i","ts":1}"#,
        at(),
    )
    .unwrap();
    assert_eq!(escaped.event_id, "e\"1");
    let plain = parse_event(
        br#"{"event_id":"e1","user_id":"u","kind":"view","item_id":"i","ts":1}"#,
        at(),
    )
    .unwrap();
    assert!(
        matches!(plain.event_id, Cow::Borrowed(_)),
        "strings without escapes are borrowed from the input"
    );
    let five_min = format!(
        r#"{{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":{}}}"#,
        NOW + 300_000
    );
    assert!(
        parse_event(five_min.as_bytes(), at()).is_ok(),
        "exactly five minutes ahead is accepted"
    );
    let props = parse_event(br#"{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"props":{"b":"2","a":"1"}}"#, at()).unwrap();
    assert_eq!(
        props.props,
        Some(BTreeMap::from([
            (Cow::Borrowed("a"), Cow::Borrowed("1")),
            (Cow::Borrowed("b"), Cow::Borrowed("2"))
        ]))
    );
}

#[test]
fn bad_bus_records_are_named() {
    let framing = |v: &[u8]| from_bus_value(v).unwrap_err().to_string();
    for bad in [
        &b""[..],
        br#"{"event_id":"e1"}"#,
        br#"{"ingest_ts":,"event":{}}"#,
        br#"{"ingest_ts":12"event":{}}"#,
        br#"{"ingest_ts":12,"event":{}"#.strip_suffix(b"}").unwrap(),
    ] {
        assert!(
            framing(bad).contains("not a Tandem bus record"),
            "{}",
            framing(bad)
        );
    }
    let err = from_bus_value(br#"{"ingest_ts":12,"event":{"event_id":"e1"}}"#).unwrap_err();
    assert!(
        err.to_string().contains("field `user_id`: required"),
        "{err}"
    );
}

/// An event over MAX_EVENT_BYTES is refused whole, though each field is within its limit.
#[test]
fn an_event_is_at_most_max_event_bytes() {
    let props: Vec<String> = (0..MAX_PROPS)
        .map(|i| format!(r#""k{i}":"{}""#, "é".repeat(MAX_PROP_VALUE_CHARS)))
        .collect();
    let json = format!(
        r#"{{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"props":{{{}}}}}"#,
        props.join(",")
    );
    assert!(json.len() > MAX_EVENT_BYTES);
    let err = parse_event(json.as_bytes(), at()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the event is {} bytes of JSON; at most 65536", json.len())
    );
    let small = format!(
        r#"{{"event_id":"e","user_id":"u","kind":"view","item_id":"i","ts":1,"props":{{{}}}}}"#,
        props[..8].join(",")
    );
    assert!(parse_event(small.as_bytes(), at()).is_ok());
}
