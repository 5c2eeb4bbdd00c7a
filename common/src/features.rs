//! The features both layers compute, defined once (ARCHITECTURE.md §3): every one is mergeable, so that
//! `merge(snapshot(C), speed(≥ C)) == recompute(all events)`.
//!
//! [`Profile`] (per user) and [`ItemStats`] (per item) are folds over deduplicated events:
//!
//! - counters and sums are integers (money in micro-units), so merging is exact;
//! - first/last times are min/max;
//! - `recent_items` and `recent_purchases` are bounded "latest N" sets, merged by union (newest
//!   time per item) then top N by time, ties broken by item id;
//! - decayed scores (category affinity, item popularity) are kept as `ln Σ wᵢ·e^((tsᵢ − R)/τ)`
//!   at the fixed reference time [`DECAY_REF_MS`]: adding events adds terms, so two partial
//!   scores merge with `logaddexp`, and the score at any time `T` is `e^(L − (T − R)/τ)`.
//!   Logarithms keep the sum finite however far `T` moves from `R`. Being floating point, a
//!   merged score equals a recomputed one to about 1e-12, not bit for bit.
//!
//! The batch layer computes the same features in SQL (`batch/src/views/*.sql`); its tests
//! hold the two equal. The speed layer applies [`Profile::apply`]'s deltas to Redis.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::{Event, Kind};

/// Reference time of decayed scores: 2020-01-01T00:00:00Z.
pub const DECAY_REF_MS: i64 = 1_577_836_800_000;
/// Decay time constant τ: 7 days (a half-life of about 4.9 days).
pub const DECAY_TAU_MS: f64 = 7.0 * 86_400_000.0;
/// Items kept in `recent_items`.
pub const RECENT_ITEMS: usize = 20;
/// Interests a snapshot's user row keeps: the strongest at its cutoff. A row is read on every
/// request, and one user of 60,000 categories made it megabytes; the lake's views keep every
/// interest. A category beyond them that the user comes back to counts from the speed layer's
/// deltas alone until the next snapshot.
pub const MAX_INTERESTS: usize = 256;
/// Micro-units per currency unit: money is summed as integers.
pub const MICROS: f64 = 1_000_000.0;

/// How much an event of `kind` says about interest in its category or item (0: nothing).
pub fn interest_weight(kind: Kind) -> f64 {
    match kind {
        Kind::View => 1.0,
        Kind::Click => 2.0,
        Kind::AddToCart => 4.0,
        Kind::RemoveFromCart => 0.0,
        Kind::Purchase => 8.0,
        Kind::Search => 1.0,
        Kind::Rate => 2.0,
    }
}

/// The log-space decay term of one event of weight `w > 0` at `ts`: `ln w + (ts − R)/τ`.
pub fn decay_term(w: f64, ts: i64) -> f64 {
    w.ln() + (ts - DECAY_REF_MS) as f64 / DECAY_TAU_MS
}

/// `ln(e^a + e^b)`, exact for infinities.
pub fn logaddexp(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// The columns of the counts per kind in the snapshot's `profiles` and `items` (and the
/// analysts' `live_profiles`), in [`Kind::ALL`](crate::event::Kind::ALL) order.
pub const COUNT_COLUMNS: [&str; 7] = [
    "views",
    "clicks",
    "add_to_carts",
    "remove_from_carts",
    "purchases",
    "searches",
    "rates",
];

/// A log-space decayed score read at time `now_ms`.
pub fn decayed_at(log_score: f64, now_ms: i64) -> f64 {
    (log_score - (now_ms - DECAY_REF_MS) as f64 / DECAY_TAU_MS).exp()
}

/// The most money a sum holds, in micro-units: 2⁵³ − 1 (9,007,199,254.740991 currency units),
/// the largest integer that every layer holds exactly — Redis's Lua numbers are doubles. Money
/// sums saturate there: `min(a + b, MAX)` of saturated parts is the saturated whole, so the
/// exact merge holds for them too.
pub const MAX_MONEY_MICROS: i64 = (1 << 53) - 1;

/// Money of one purchase line in micro-units: `round(price × 10⁶) × quantity`, at most
/// [`MAX_MONEY_MICROS`] (a negative or NaN price counts 0). The product of two whole numbers is
/// exact in a double below 2⁵³, and rounds to 2⁵³ or more above it, so the cap is exact too;
/// `profiles.sql` computes the same in SQL.
pub fn spend_micros(price: f64, quantity: u32) -> i64 {
    ((price * MICROS).round() * quantity as f64).clamp(0.0, MAX_MONEY_MICROS as f64) as i64
}

/// Adds two sums of money, saturating at [`MAX_MONEY_MICROS`].
pub fn add_money(a: i64, b: i64) -> i64 {
    a.saturating_add(b).clamp(0, MAX_MONEY_MICROS)
}

/// A user's profile features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Events per kind, in [`Kind::ALL`] order.
    pub counts: [u64; 7],
    /// Units bought.
    pub units: u64,
    /// Money spent, micro-units.
    pub spend_micros: i64,
    /// Earliest event time, epoch ms.
    pub first_ts: i64,
    /// Latest event time, epoch ms.
    pub last_ts: i64,
    /// Latest purchase time, epoch ms.
    pub last_purchase_ts: Option<i64>,
    /// Per category, the decayed interest in log space (see the module docs).
    pub affinity: BTreeMap<String, f64>,
    /// The latest distinct items with their latest time, newest first.
    pub recent_items: Vec<(String, i64)>,
    /// The latest distinct items bought, with their latest purchase time, newest first
    /// (recommendations leave them out).
    #[serde(default)]
    pub recent_purchases: Vec<(String, i64)>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            counts: [0; 7],
            units: 0,
            spend_micros: 0,
            first_ts: i64::MAX,
            last_ts: i64::MIN,
            last_purchase_ts: None,
            affinity: BTreeMap::new(),
            recent_items: Vec::new(),
            recent_purchases: Vec::new(),
        }
    }
}

/// The index of `kind` in [`Kind::ALL`] (also the `c<i>` field of a speed epoch in Redis).
pub(crate) fn kind_index(kind: Kind) -> usize {
    Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

/// Records that `item` was seen at `ts` in a recent-items list kept sorted by
/// [`sort_recent`]: the same list as pushing it and sorting, without sorting.
fn touch_recent(items: &mut Vec<(String, i64)>, item: &str, ts: i64) {
    let ahead = |(i, t): &(String, i64)| *t > ts || (*t == ts && i.as_str() < item);
    let name = match items.iter().position(|(i, _)| i == item) {
        Some(pos) if items[pos].1 >= ts => return,
        Some(pos) => items.remove(pos).0,
        None if items.len() >= RECENT_ITEMS && items.last().is_some_and(ahead) => {
            return;
        }
        None => item.to_string(),
    };
    let pos = items.partition_point(ahead);
    items.insert(pos, (name, ts));
    items.truncate(RECENT_ITEMS);
}

/// Newest first, then by item id: the one order of `recent_items`; keeps the first
/// [`RECENT_ITEMS`].
pub fn sort_recent(items: &mut Vec<(String, i64)>) {
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    items.truncate(RECENT_ITEMS);
}

/// Adds `other`'s items to a "latest N" list: the union, newest time per item, then the first
/// [`RECENT_ITEMS`] by [`sort_recent`]'s order.
pub(crate) fn merge_recent(mine: &mut Vec<(String, i64)>, other: &[(String, i64)]) {
    for (item, ts) in other {
        match mine.iter_mut().find(|(i, _)| i == item) {
            Some(entry) => entry.1 = entry.1.max(*ts),
            None => mine.push((item.clone(), *ts)),
        }
    }
    sort_recent(mine);
}

impl Profile {
    /// The profile of no events.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many events it folds (of every kind).
    pub fn events(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Keeps the `n` strongest interests (ties by name); returns how many it dropped.
    pub fn keep_strongest_interests(&mut self, n: usize) -> usize {
        let extra = self.affinity.len().saturating_sub(n);
        if extra == 0 {
            return 0;
        }
        let mut ranked: Vec<(&String, f64)> = self.affinity.iter().map(|(c, v)| (c, *v)).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let weakest: Vec<String> = ranked[n..].iter().map(|(c, _)| (*c).clone()).collect();
        for c in weakest {
            self.affinity.remove(&c);
        }
        extra
    }

    /// Events of `kind`.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind_index(kind)]
    }

    /// Adds one (deduplicated) event of this user.
    pub fn apply(&mut self, e: &Event<'_>) {
        self.counts[kind_index(e.kind)] += 1;
        self.first_ts = self.first_ts.min(e.ts);
        self.last_ts = self.last_ts.max(e.ts);
        if e.kind == Kind::Purchase {
            self.units += e.quantity as u64;
            self.spend_micros = add_money(
                self.spend_micros,
                spend_micros(e.price.unwrap_or(0.0), e.quantity),
            );
            self.last_purchase_ts = Some(self.last_purchase_ts.map_or(e.ts, |t| t.max(e.ts)));
        }
        let w = interest_weight(e.kind);
        if let (Some(c), true) = (&e.category, w > 0.0) {
            let term = decay_term(w, e.ts);
            match self.affinity.get_mut(c.as_ref()) {
                Some(l) => *l = logaddexp(*l, term),
                None => {
                    self.affinity.insert(c.to_string(), term);
                }
            }
        }
        if let Some(item) = &e.item_id {
            touch_recent(&mut self.recent_items, item, e.ts);
            if e.kind == Kind::Purchase {
                touch_recent(&mut self.recent_purchases, item, e.ts);
            }
        }
    }

    /// Adds another profile of the same user, computed over other events.
    pub fn merge(&mut self, other: &Profile) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.units += other.units;
        self.spend_micros = add_money(self.spend_micros, other.spend_micros);
        self.first_ts = self.first_ts.min(other.first_ts);
        self.last_ts = self.last_ts.max(other.last_ts);
        self.last_purchase_ts = match (self.last_purchase_ts, other.last_purchase_ts) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for (c, l) in &other.affinity {
            let mine = self.affinity.entry(c.clone()).or_insert(f64::NEG_INFINITY);
            *mine = logaddexp(*mine, *l);
        }
        merge_recent(&mut self.recent_items, &other.recent_items);
        merge_recent(&mut self.recent_purchases, &other.recent_purchases);
    }

    /// Equal up to floating-point rounding in the decayed scores (relative 1e-9).
    pub fn approx_eq(&self, other: &Profile) -> bool {
        self.counts == other.counts
            && self.units == other.units
            && self.spend_micros == other.spend_micros
            && self.first_ts == other.first_ts
            && self.last_ts == other.last_ts
            && self.last_purchase_ts == other.last_purchase_ts
            && self.recent_items == other.recent_items
            && self.recent_purchases == other.recent_purchases
            && self.affinity.len() == other.affinity.len()
            && self
                .affinity
                .iter()
                .zip(&other.affinity)
                .all(|((c1, a), (c2, b))| c1 == c2 && close(*a, *b))
    }
}

/// An item's features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemStats {
    /// Events per kind, in [`Kind::ALL`] order.
    pub counts: [u64; 7],
    /// Units sold.
    pub units: u64,
    /// Revenue, micro-units.
    pub revenue_micros: i64,
    /// Decayed popularity in log space (see the module docs); −∞ without interest events
    /// (JSON `null`).
    #[serde(with = "log_score")]
    pub popularity: f64,
    /// The category of the latest event naming one, with that event's time.
    pub category: Option<(String, i64)>,
}

impl Default for ItemStats {
    fn default() -> Self {
        ItemStats {
            counts: [0; 7],
            units: 0,
            revenue_micros: 0,
            popularity: f64::NEG_INFINITY,
            category: None,
        }
    }
}

/// Keeps in `slot` the later of it and (`name`, `ts`); at the same time the greater name, so
/// that the choice is order-free.
fn keep_later(slot: &mut Option<(String, i64)>, name: &str, ts: i64) {
    let newer = match slot {
        Some((current, t)) => (ts, name) > (*t, current.as_str()),
        None => true,
    };
    if newer {
        *slot = Some((name.to_string(), ts));
    }
}

impl ItemStats {
    /// Events of `kind`.
    pub fn count(&self, kind: Kind) -> u64 {
        self.counts[kind_index(kind)]
    }

    /// Purchases per view (0 without views).
    pub fn conversion(&self) -> f64 {
        let views = self.count(Kind::View);
        if views == 0 {
            0.0
        } else {
            self.count(Kind::Purchase) as f64 / views as f64
        }
    }

    /// Adds one (deduplicated) event about this item.
    pub fn apply(&mut self, e: &Event<'_>) {
        self.counts[kind_index(e.kind)] += 1;
        if e.kind == Kind::Purchase {
            self.units += e.quantity as u64;
            self.revenue_micros = add_money(
                self.revenue_micros,
                spend_micros(e.price.unwrap_or(0.0), e.quantity),
            );
        }
        let w = interest_weight(e.kind);
        if w > 0.0 {
            self.popularity = logaddexp(self.popularity, decay_term(w, e.ts));
        }
        if let Some(c) = &e.category {
            keep_later(&mut self.category, c, e.ts);
        }
    }

    /// Adds another item's stats computed over other events.
    pub fn merge(&mut self, other: &ItemStats) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.units += other.units;
        self.revenue_micros = add_money(self.revenue_micros, other.revenue_micros);
        self.popularity = logaddexp(self.popularity, other.popularity);
        if let Some((name, ts)) = &other.category {
            keep_later(&mut self.category, name, *ts);
        }
    }

    /// Equal up to floating-point rounding in the popularity (relative 1e-9).
    pub fn approx_eq(&self, other: &ItemStats) -> bool {
        self.counts == other.counts
            && self.units == other.units
            && self.revenue_micros == other.revenue_micros
            && self.category == other.category
            && close(self.popularity, other.popularity)
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Profiles and item stats of a set of events, deduplicated per user by `event_id` (the first
/// seen wins; two users may use the same id).
pub fn recompute<'a>(
    events: impl IntoIterator<Item = &'a Event<'a>>,
) -> (BTreeMap<String, Profile>, BTreeMap<String, ItemStats>) {
    let mut seen = std::collections::HashSet::new();
    let mut profiles: BTreeMap<String, Profile> = BTreeMap::new();
    let mut items: BTreeMap<String, ItemStats> = BTreeMap::new();
    for e in events {
        if !seen.insert((e.user_id.as_ref(), e.event_id.as_ref())) {
            continue;
        }
        profiles.entry(e.user_id.to_string()).or_default().apply(e);
        if let Some(i) = &e.item_id {
            items.entry(i.to_string()).or_default().apply(e);
        }
    }
    (profiles, items)
}

/// A log-space score in JSON: −∞ (no events) as `null`, which JSON cannot otherwise hold.
mod log_score {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
    }
}

#[cfg(test)]
mod tests;
