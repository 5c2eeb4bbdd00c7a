//! The event as it arrives: borrowed JSON fields read without copies where the input allows,
//! then checked field by field, every problem named with its field ([`RawEvent::validate`]).

use super::*;

/// The event's fields, as JSON keys and CSV columns name them.
pub const FIELDS: [&str; 12] = [
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
pub(super) struct CowStr<'a>(Cow<'a, str>);

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
pub(super) struct Props<'a>(BTreeMap<Cow<'a, str>, Cow<'a, str>>);

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
pub(super) struct RawTs(Result<i64, String>);

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
pub(super) struct RawEvent<'a> {
    pub(super) event_id: Option<Cow<'a, str>>,
    pub(super) user_id: Option<Cow<'a, str>>,
    pub(super) kind: Option<Cow<'a, str>>,
    pub(super) item_id: Option<Cow<'a, str>>,
    pub(super) category: Option<Cow<'a, str>>,
    pub(super) price: Option<f64>,
    pub(super) quantity: Option<u32>,
    pub(super) rating: Option<f64>,
    pub(super) query: Option<Cow<'a, str>>,
    pub(super) ts: Option<RawTs>,
    pub(super) session_id: Option<Cow<'a, str>>,
    pub(super) props: Option<BTreeMap<Cow<'a, str>, Cow<'a, str>>>,
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
pub(super) fn short(v: f64) -> String {
    if v.is_finite() && v.abs() >= 1e15 {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Collects the problems of one event.
#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

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
    pub(super) fn validate(self, at: Acceptance) -> Result<Event<'a>, EventError> {
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
