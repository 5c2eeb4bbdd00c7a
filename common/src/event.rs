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

mod raw;
mod time;
pub use raw::FIELDS;
use raw::RawEvent;
pub use raw::key_id_problem;
pub use time::write_rfc3339_ms;
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
/// `features::MAX_MONEY_MICROS`.
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

#[cfg(test)]
mod tests;
