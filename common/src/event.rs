//! The event model of ARCHITECTURE.md §2: the wire type, its validation, and the time helpers it needs.
//!
//! An event arrives as one JSON object. [`parse_event`] reads it (borrowing strings from the
//! input where it can), then validates it; every problem names its field, and the caller adds
//! the position (`line 17`, `index 3`). Nothing is ever silently fixed: an event is either
//! accepted as sent or rejected with a reason.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

mod time;
pub(crate) use time::write_rfc3339_ms;
pub use time::{date_of_ms, format_rfc3339_ms, now_ms, parse_rfc3339_ms, rfc3339_ascii};

/// Longest `event_id`, `user_id`, `item_id`, `category`, `session_id` and property key, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// Longest search `query`, in characters.
pub const MAX_QUERY_CHARS: usize = 512;
/// Most entries in `props`.
pub const MAX_PROPS: usize = 64;
/// Longest property value, in characters.
pub const MAX_PROP_VALUE_CHARS: usize = 1024;
/// Longest event, in bytes of JSON: the field limits alone allowed ~440 KB (64 properties of
/// 1,024 escaped characters), and a consumer holds a whole fetch of events in memory.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Highest unit `price`: a billion currency units. With [`MAX_QUANTITY`] it keeps every
/// purchase line's money finite in micro-units; sums of money saturate at
/// [`MAX_MONEY_MICROS`](crate::features::MAX_MONEY_MICROS).
pub const MAX_PRICE: f64 = 1e9;
/// Highest `quantity` of one purchase line.
pub const MAX_QUANTITY: u32 = 1_000_000;
/// Latest accepted event time, 9999-12-31T23:59:59.999Z, so that every event can be written back as RFC 3339.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// What the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Looked at an item's page.
    View,
    /// Clicked an item (in a list, a recommendation, a search result).
    Click,
    /// Put an item in the cart.
    AddToCart,
    /// Took an item out of the cart.
    RemoveFromCart,
    /// Bought `quantity` of an item at `price` each.
    Purchase,
    /// Searched for `query`.
    Search,
    /// Rated an item with `rating`.
    Rate,
}

impl Kind {
    /// Every kind, in a fixed order (the order of ARCHITECTURE.md §2).
    pub const ALL: [Kind; 7] = [
        Kind::View,
        Kind::Click,
        Kind::AddToCart,
        Kind::RemoveFromCart,
        Kind::Purchase,
        Kind::Search,
        Kind::Rate,
    ];

    /// The wire name of the kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Click => "click",
            Kind::AddToCart => "add_to_cart",
            Kind::RemoveFromCart => "remove_from_cart",
            Kind::Purchase => "purchase",
            Kind::Search => "search",
            Kind::Rate => "rate",
        }
    }

    /// The kind with this wire name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A valid event. Strings borrow from the input where possible; [`Event::into_owned`] detaches it.
///
/// Serialises to the wire JSON (with `ts` as RFC 3339 in milliseconds, absent fields left out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event<'a> {
    /// The dedupe key, made by the client (a UUID or ULID).
    pub event_id: Cow<'a, str>,
    /// The user; also the bus key.
    pub user_id: Cow<'a, str>,
    /// What happened.
    pub kind: Kind,
    /// The item; present for every kind but `search`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_id: Option<Cow<'a, str>>,
    /// The item's category.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Cow<'a, str>>,
    /// Unit price; present and ≥ 0 for `purchase`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<f64>,
    /// Units; 1 unless the client says otherwise.
    pub quantity: u32,
    /// The rating given; present for `rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rating: Option<f64>,
    /// The search text; present for `search`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<Cow<'a, str>>,
    /// Event time, epoch milliseconds UTC (finer precision on input is truncated to the millisecond).
    #[serde(serialize_with = "serialize_ts")]
    pub ts: i64,
    /// The storefront session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<Cow<'a, str>>,
    /// Free-form string properties.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub props: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

fn serialize_ts<S: Serializer>(ts: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_ms(*ts))
}

impl Event<'_> {
    /// This event with every string owned.
    pub fn into_owned(self) -> Event<'static> {
        fn own(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        Event {
            event_id: own(self.event_id),
            user_id: own(self.user_id),
            kind: self.kind,
            item_id: self.item_id.map(own),
            category: self.category.map(own),
            price: self.price,
            quantity: self.quantity,
            rating: self.rating,
            query: self.query.map(own),
            ts: self.ts,
            session_id: self.session_id.map(own),
            props: self
                .props
                .map(|p| p.into_iter().map(|(k, v)| (own(k), own(v))).collect()),
        }
    }

    /// The wire JSON of this event, on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serialises")
    }
}

/// Where and when events are accepted; the bounds validation checks against.
#[derive(Debug, Clone, Copy)]
pub struct Acceptance {
    /// The ingest time being stamped, epoch milliseconds.
    pub now_ms: i64,
    /// How far past `now_ms` an event time may be.
    pub max_future_ms: i64,
}

impl Acceptance {
    /// Acceptance at `now_ms` with ARCHITECTURE.md §2's five-minute allowance for clock skew.
    pub fn at(now_ms: i64) -> Self {
        Acceptance {
            now_ms,
            max_future_ms: 5 * 60 * 1000,
        }
    }
}

/// One thing wrong with an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The field at fault, or `None` when the JSON itself is malformed.
    pub field: Option<&'static str>,
    /// What is wrong, in words.
    pub message: String,
}

/// Why an event was rejected: every problem found in it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventError {
    /// The problems, in field order.
    pub problems: Vec<Problem>,
}

impl EventError {
    fn one(field: Option<&'static str>, message: impl Into<String>) -> Self {
        EventError {
            problems: vec![Problem {
                field,
                message: message.into(),
            }],
        }
    }

    /// The first field at fault, if any.
    pub fn field(&self) -> Option<&'static str> {
        self.problems.iter().find_map(|p| p.field)
    }
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            match p.field {
                Some(field) => write!(f, "field `{field}`: {}", p.message)?,
                None => f.write_str(&p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for EventError {}

/// Parses and validates one event from its JSON text.
///
/// ```
/// use tandem_common::event::{parse_event, Acceptance, Kind};
/// let now = 1_763_800_000_000;
/// let e = parse_event(br#"{"event_id":"e1","user_id":"u1","kind":"view","item_id":"i1","ts":1763799999000}"#,
///                     Acceptance::at(now)).unwrap();
/// assert_eq!(e.kind, Kind::View);
/// assert_eq!(e.quantity, 1);
/// let err = parse_event(br#"{"event_id":"e2","user_id":"u1","kind":"purchase","item_id":"i1","ts":1763799999000}"#,
///                       Acceptance::at(now)).unwrap_err();
/// assert_eq!(err.to_string(), "field `price`: required for purchase");
/// ```
pub fn parse_event(json: &[u8], at: Acceptance) -> Result<Event<'_>, EventError> {
    if json.len() > MAX_EVENT_BYTES {
        return Err(EventError::one(
            None,
            format!(
                "the event is {} bytes of JSON; at most {MAX_EVENT_BYTES}",
                json.len()
            ),
        ));
    }
    let raw: RawEvent<'_> = serde_json::from_slice(json).map_err(json_error)?;
    raw.validate(at)
}

/// The bus record value of an event accepted at `ingest_ts`:
/// `{"ingest_ts":<epoch ms>,"event":<the event's wire JSON>}`. The ingest time travels with
/// the event, so the speed layer and the archiver file it under the same epoch.
pub fn to_bus_value(event: &Event<'_>, ingest_ts: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(BUS_PREFIX);
    out.extend_from_slice(ingest_ts.to_string().as_bytes());
    out.extend_from_slice(BUS_EVENT);
    serde_json::to_writer(&mut out, event).expect("an event always serialises");
    out.push(b'}');
    out
}

const BUS_PREFIX: &[u8] = br#"{"ingest_ts":"#;
const BUS_EVENT: &[u8] = br#","event":"#;

/// Reads a bus record value written by [`to_bus_value`]: the ingest time and the event,
/// validated again (a bus may hold records Tandem did not write). How far in the future an
/// event may be was checked at acceptance, with the configured bound, and is not checked again.
pub fn from_bus_value(value: &[u8]) -> Result<(i64, Event<'_>), EventError> {
    let framing = || {
        EventError::one(
            None,
            r#"not a Tandem bus record: expected {"ingest_ts":<ms>,"event":{…}}"#,
        )
    };
    let rest = value.strip_prefix(BUS_PREFIX).ok_or_else(framing)?;
    let digits = rest
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'-'))
        .ok_or_else(framing)?;
    let ingest_ts: i64 = std::str::from_utf8(&rest[..digits])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(framing)?;
    let event = rest[digits..]
        .strip_prefix(BUS_EVENT)
        .and_then(|e| e.strip_suffix(b"}"))
        .ok_or_else(framing)?;
    let at = Acceptance {
        now_ms: ingest_ts,
        max_future_ms: i64::MAX / 4,
    };
    Ok((ingest_ts, parse_event(event, at)?))
}

/// Turns a serde_json error into a problem. serde_json appends "at line L column C" (twice for
/// errors raised inside a field); the caller reports the line itself, so keep only the column.
fn json_error(e: serde_json::Error) -> EventError {
    let text = e.to_string();
    let mut message = match text.find(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let field = FIELDS
        .iter()
        .copied()
        .find(|f| message.starts_with(&format!("field `{f}`: ")));
    if let Some(f) = field {
        message = message[f.len() + 10..].to_string();
    }
    if e.column() > 0 {
        message.push_str(&format!(" (column {})", e.column()));
    }
    EventError::one(field, message)
}

const FIELDS: [&str; 12] = [
    "event_id",
    "user_id",
    "kind",
    "item_id",
    "category",
    "price",
    "quantity",
    "rating",
    "query",
    "ts",
    "session_id",
    "props",
];

/// A string that borrows from the input when the input has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'a> PartialEq for CowStr<'a> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl<'a> Eq for CowStr<'a> {}
impl<'a> PartialOrd for CowStr<'a> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<'a> Ord for CowStr<'a> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// `props` as sent: string keys and values, a key given twice an error (a JSON object with a
/// repeated key means two things; the last one would silently win).
struct Props<'a>(BTreeMap<Cow<'a, str>, Cow<'a, str>>);

impl<'de> Deserialize<'de> for Props<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Props<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Props<'de>, A::Error> {
                let mut props = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<CowStr<'de>, CowStr<'de>>()? {
                    if props.contains_key(&k.0) {
                        return Err(de::Error::custom(format!("key `{}` appears twice", k.0)));
                    }
                    props.insert(k.0, v.0);
                }
                Ok(Props(props))
            }
        }
        d.deserialize_map(V)
    }
}

/// Event time as sent: epoch milliseconds or RFC 3339 text.
struct RawTs(Result<i64, String>);

impl<'de> Deserialize<'de> for RawTs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 time or epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawTs, E> {
                Ok(RawTs(Ok(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTs, E> {
                Ok(RawTs(
                    i64::try_from(v).map_err(|_| format!("{v} is out of range")),
                ))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawTs, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(RawTs(Ok(v as i64)))
                } else {
                    Ok(RawTs(Err(format!(
                        "epoch milliseconds must be a whole number, got {v}"
                    ))))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTs, E> {
                Ok(RawTs(parse_rfc3339_ms(v).ok_or_else(|| {
                    format!(
                        "`{v}` is neither RFC 3339 (2026-11-22T10:00:00Z) nor epoch milliseconds"
                    )
                })))
            }
        }
        d.deserialize_any(V)
    }
}

/// An event as sent, before validation: every field optional, nothing checked but JSON types.
#[derive(Default)]
struct RawEvent<'a> {
    event_id: Option<Cow<'a, str>>,
    user_id: Option<Cow<'a, str>>,
    kind: Option<Cow<'a, str>>,
    item_id: Option<Cow<'a, str>>,
    category: Option<Cow<'a, str>>,
    price: Option<f64>,
    quantity: Option<u32>,
    rating: Option<f64>,
    query: Option<Cow<'a, str>>,
    ts: Option<RawTs>,
    session_id: Option<Cow<'a, str>>,
    props: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent<'de>, A::Error> {
                let mut ev = RawEvent::default();
                let mut seen = [false; FIELDS.len()];
                while let Some(key) = map.next_key::<CowStr<'de>>()? {
                    let Some(i) = FIELDS.iter().position(|f| *f == key.0) else {
                        return Err(de::Error::custom(format!(
                            "unknown field `{}`; expected one of {}",
                            key.0,
                            FIELDS.join(", ")
                        )));
                    };
                    let name = FIELDS[i];
                    if std::mem::replace(&mut seen[i], true) {
                        return Err(de::Error::custom(format!("field `{name}`: appears twice")));
                    }
                    let in_field = |e: A::Error| de::Error::custom(format!("field `{name}`: {e}"));
                    let s = |v: Option<CowStr<'de>>| v.map(|c| c.0);
                    match i {
                        0 => ev.event_id = s(map.next_value().map_err(in_field)?),
                        1 => ev.user_id = s(map.next_value().map_err(in_field)?),
                        2 => ev.kind = s(map.next_value().map_err(in_field)?),
                        3 => ev.item_id = s(map.next_value().map_err(in_field)?),
                        4 => ev.category = s(map.next_value().map_err(in_field)?),
                        5 => ev.price = map.next_value().map_err(in_field)?,
                        6 => ev.quantity = map.next_value().map_err(in_field)?,
                        7 => ev.rating = map.next_value().map_err(in_field)?,
                        8 => ev.query = s(map.next_value().map_err(in_field)?),
                        9 => ev.ts = map.next_value().map_err(in_field)?,
                        10 => ev.session_id = s(map.next_value().map_err(in_field)?),
                        _ => {
                            let props: Option<Props<'de>> = map.next_value().map_err(in_field)?;
                            ev.props = props.map(|p| p.0);
                        }
                    }
                }
                Ok(ev)
            }
        }
        d.deserialize_map(V)
    }
}

/// Why `id` cannot be a `user_id` or an `item_id`, if it cannot: 1 to [`MAX_ID_CHARS`]
/// characters, none of them `{`, `}` or a control character. These ids are part of Redis keys,
/// between the braces of a hash tag (`tandem:u:{<user>}:…`): an id starting with `}` made an
/// empty tag, so that a user's keys fell in different Redis Cluster slots and every call for
/// that user failed.
pub fn key_id_problem(id: &str) -> Option<String> {
    let n = id.chars().count();
    if !(1..=MAX_ID_CHARS).contains(&n) {
        return Some(format!("must be 1–{MAX_ID_CHARS} characters, got {n}"));
    }
    id.chars()
        .find(|c| matches!(c, '{' | '}') || c.is_control())
        .map(|c| format!("must not contain `{{`, `}}` or control characters, got {c:?}"))
}

/// A number as a reader wants it in a message: `1e300`, not its 301 digits.
fn short(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Collects the problems of one event.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(Problem {
            field: Some(field),
            message: message.into(),
        });
    }

    fn key_id(&mut self, field: &'static str, v: &str) {
        if let Some(problem) = key_id_problem(v) {
            self.add(field, problem);
        }
    }

    fn required<T>(&mut self, field: &'static str, v: Option<T>, why: &str) -> Option<T> {
        if v.is_none() {
            self.add(field, format!("required{why}"));
        }
        v
    }

    /// Checks a length bound in characters (bytes are a cheap upper bound to try first).
    fn text(&mut self, field: &'static str, v: &str, min: usize, max: usize) {
        if v.len() >= min && v.len() <= max {
            return;
        }
        let n = v.chars().count();
        if n < min || n > max {
            self.add(field, format!("must be {min}–{max} characters, got {n}"));
        }
    }
}

impl<'a> RawEvent<'a> {
    fn validate(self, at: Acceptance) -> Result<Event<'a>, EventError> {
        let mut p = Problems::default();
        let event_id = p.required("event_id", self.event_id, "");
        if let Some(v) = &event_id {
            p.text("event_id", v, 1, MAX_ID_CHARS);
        }
        let user_id = p.required("user_id", self.user_id, "");
        if let Some(v) = &user_id {
            p.key_id("user_id", v);
        }
        let kind = match p.required("kind", self.kind, "") {
            Some(k) => match Kind::parse(&k) {
                Some(kind) => Some(kind),
                None => {
                    let all: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                    p.add(
                        "kind",
                        format!("unknown kind `{k}`; expected one of {}", all.join(", ")),
                    );
                    None
                }
            },
            None => None,
        };
        match (&self.item_id, kind) {
            (Some(v), _) => p.key_id("item_id", v),
            (None, Some(k)) if k != Kind::Search => p.add("item_id", format!("required for {k}")),
            _ => {}
        }
        if let Some(v) = &self.category {
            p.text("category", v, 1, MAX_ID_CHARS);
        }
        match self.price {
            Some(v) if !(v.is_finite() && (0.0..=MAX_PRICE).contains(&v)) => p.add(
                "price",
                format!(
                    "must be a number from 0 to {MAX_PRICE:.0}, got {}",
                    short(v)
                ),
            ),
            None if kind == Some(Kind::Purchase) => p.add("price", "required for purchase"),
            _ => {}
        }
        if let Some(q) = self.quantity
            && !(1..=MAX_QUANTITY).contains(&q)
        {
            p.add(
                "quantity",
                format!("must be from 1 to {MAX_QUANTITY}, got {q}"),
            );
        }
        match self.rating {
            Some(v) if !v.is_finite() => {
                p.add("rating", format!("must be a finite number, got {v}"))
            }
            None if kind == Some(Kind::Rate) => p.add("rating", "required for rate"),
            _ => {}
        }
        match &self.query {
            Some(v) => p.text("query", v, 1, MAX_QUERY_CHARS),
            None if kind == Some(Kind::Search) => p.add("query", "required for search"),
            None => {}
        }
        let ts = match self.ts {
            None => {
                p.add("ts", "required");
                None
            }
            Some(RawTs(Err(e))) => {
                p.add("ts", e);
                None
            }
            Some(RawTs(Ok(ts))) => {
                let latest = at.now_ms.saturating_add(at.max_future_ms);
                if ts < 0 {
                    p.add("ts", format!("{ts} is before 1970-01-01"));
                    None
                } else if ts > latest.min(MAX_TS_MS) {
                    let shown = if ts <= MAX_TS_MS {
                        format_rfc3339_ms(ts)
                    } else {
                        ts.to_string()
                    };
                    p.add(
                        "ts",
                        format!(
                            "{shown} is more than {}s in the future (accepted at {})",
                            at.max_future_ms / 1000,
                            format_rfc3339_ms(at.now_ms)
                        ),
                    );
                    None
                } else {
                    Some(ts)
                }
            }
        };
        if let Some(v) = &self.session_id {
            p.text("session_id", v, 1, MAX_ID_CHARS);
        }
        if let Some(props) = &self.props {
            if props.len() > MAX_PROPS {
                p.add(
                    "props",
                    format!("at most {MAX_PROPS} entries, got {}", props.len()),
                );
            }
            for (k, v) in props {
                p.text("props", k, 1, MAX_ID_CHARS);
                p.text("props", v, 0, MAX_PROP_VALUE_CHARS);
            }
        }
        if !p.0.is_empty() {
            return Err(EventError { problems: p.0 });
        }
        // Every `None` below was reported above, so the problems list would not be empty.
        match (event_id, user_id, kind, ts) {
            (Some(event_id), Some(user_id), Some(kind), Some(ts)) => Ok(Event {
                event_id,
                user_id,
                kind,
                item_id: self.item_id,
                category: self.category,
                price: self.price,
                quantity: self.quantity.unwrap_or(1),
                rating: self.rating,
                query: self.query,
                ts,
                session_id: self.session_id,
                props: self.props,
            }),
            _ => Err(EventError::one(
                None,
                "internal: incomplete event passed validation",
            )),
        }
    }
}

#[cfg(test)]
mod tests;
