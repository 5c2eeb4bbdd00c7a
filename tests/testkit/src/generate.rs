//! A synthetic storefront: realistic event streams, deterministic by seed.
//!
//! Users and items in categories with prices; item popularity is Zipf-like within and across
//! categories; each user has a few preferred categories, an activity level (a few heavy users,
//! many light ones) and a buying propensity; sessions follow the day's rhythm and walk the
//! view → click → add_to_cart → purchase funnel, with searches, removals from the cart,
//! ratings after purchases, and loyal users coming back to buy again. Events come out in
//! event-time order, day by day. `bad_rate` mixes in invalid events of several sorts, and
//! `dup_rate` repeats events as a retrying producer would (same `event_id`).
//!
//! One file (~700 lines), on purpose: the storefront (catalogue, users, sessions, the funnel) is
//! one simulation drawing from one seeded generator; split, the order of its draws — what makes a
//! seed reproduce the same events — would span files.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Write;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, LogNormal, Poisson, Zipf};

use tandem_common::event::{Event, Kind, write_rfc3339_ms};

const DAY_MS: i64 = 86_400_000;

const CATEGORY_NAMES: [&str; 24] = [
    "electronics",
    "books",
    "fashion",
    "home",
    "beauty",
    "sports",
    "toys",
    "grocery",
    "garden",
    "automotive",
    "music",
    "movies",
    "games",
    "office",
    "pets",
    "baby",
    "health",
    "jewelry",
    "shoes",
    "tools",
    "kitchen",
    "outdoors",
    "art",
    "travel",
];
const SEARCH_WORDS: [&str; 12] = [
    "cheap", "best", "new", "gift", "sale", "premium", "small", "large", "black", "wireless",
    "organic", "set",
];
const DEVICES: [&str; 3] = ["mobile", "desktop", "tablet"];
const CHANNELS: [&str; 5] = ["direct", "search", "email", "social", "ads"];
/// Relative session starts per hour of the day: quiet nights, a lunch bump, a busy evening.
const HOURLY: [f64; 24] = [
    0.3, 0.2, 0.15, 0.1, 0.1, 0.15, 0.3, 0.6, 0.8, 0.9, 1.0, 1.1, 1.3, 1.2, 1.0, 1.0, 1.1, 1.3,
    1.6, 1.9, 2.0, 1.8, 1.2, 0.6,
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Number of users.
    pub users: u32,
    /// Number of items.
    pub items: u32,
    /// Number of categories.
    pub categories: u32,
    /// Days of history, ending at `end_ms`.
    pub days: u32,
    /// Average sessions per user per day.
    pub sessions_per_user_day: f64,
    /// The seed: the same options give the same events.
    pub seed: u64,
    /// Share of invalid events mixed in (JSON output only).
    pub bad_rate: f64,
    /// Share of events sent twice (same `event_id`), as by a retrying producer.
    pub dup_rate: f64,
    /// End of the history, epoch ms; no event is later.
    pub end_ms: i64,
    /// Stop after this many events (good, bad and repeated).
    pub max_events: Option<u64>,
}

impl GenerateOptions {
    /// Options for `users` users over `days` days ending at `end_ms`, with the other knobs at
    /// their defaults: 5 items per 10 users (at least 100), 24 categories, 0.5 sessions a day.
    pub fn new(users: u32, days: u32, seed: u64, end_ms: i64) -> Self {
        GenerateOptions {
            users,
            items: (users / 2).max(100),
            categories: 24,
            days,
            sessions_per_user_day: 0.5,
            seed,
            bad_rate: 0.0,
            dup_rate: 0.0,
            end_ms,
            max_events: None,
        }
    }
}

struct Item {
    category: u32,
    price_cents: u64,
}

struct User {
    /// Expected sessions a day.
    rate: f64,
    /// Preferred categories with cumulative weights.
    prefs: Vec<(u32, f64)>,
    /// Multiplies the cart and purchase probabilities.
    buyer: f64,
    loyal: bool,
    first_day: u32,
    bought: Vec<u32>,
}

/// A generated event, compact until it is written.
#[derive(Debug, Clone)]
struct Gen {
    id: u64,
    user: u32,
    kind: Kind,
    item: u32,
    ts: i64,
    session: u64,
    quantity: u32,
    rating: u8,
    query: Option<(u8, u8)>,
    first_of_session: bool,
    bad: Option<u8>,
}

/// The generator: an iterator of JSON lines (or events), day by day in time order.
pub struct Generator {
    opts: GenerateOptions,
    rng: SmallRng,
    items: Vec<Item>,
    /// Items of each category, most popular first.
    by_category: Vec<Vec<u32>>,
    category_zipf: Zipf<f64>,
    item_zipf: Vec<Zipf<f64>>,
    users: Vec<User>,
    /// Real names while they last, then `category0024`, ….
    category_names: Vec<String>,
    day: u32,
    today: Vec<Gen>,
    next: usize,
    /// Events of `today` that may be handed out.
    ready: usize,
    emitted: u64,
    next_id: u64,
    id_salt: u64,
    last: Option<Gen>,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Generator {
    /// A generator for `opts`. Fails when the options make no sense.
    pub fn new(opts: GenerateOptions) -> tandem_common::Result<Generator> {
        let bad = |m: String| tandem_common::Error::Config(m);
        if opts.users == 0 || opts.items == 0 || opts.categories == 0 || opts.days == 0 {
            return Err(bad(
                "users, items, categories and days must all be at least 1".into(),
            ));
        }
        if opts.categories > opts.items {
            return Err(bad(format!(
                "{} categories need at least as many items",
                opts.categories
            )));
        }
        if !(0.0..=1.0).contains(&opts.bad_rate) || !(0.0..=1.0).contains(&opts.dup_rate) {
            return Err(bad("bad_rate and dup_rate must be between 0 and 1".into()));
        }
        if !(opts.sessions_per_user_day > 0.0 && opts.sessions_per_user_day <= 100.0) {
            return Err(bad("sessions per user and day must be in (0, 100]".into()));
        }
        let mut rng = SmallRng::seed_from_u64(opts.seed);
        let zipf = |n: u32, s: f64| Zipf::new(n as f64, s).map_err(|e| bad(format!("zipf: {e}")));
        let category_zipf = zipf(opts.categories, 0.8)?;
        let mut items = Vec::with_capacity(opts.items as usize);
        let mut by_category = vec![Vec::new(); opts.categories as usize];
        // Every category gets one item; the rest follow category popularity.
        let median_price: Vec<f64> = (0..opts.categories)
            .map(|_| 5.0 * 60f64.powf(rng.random::<f64>()))
            .collect();
        for i in 0..opts.items {
            let c = if i < opts.categories {
                i
            } else {
                category_zipf.sample(&mut rng) as u32 - 1
            };
            let price = LogNormal::new(median_price[c as usize].ln(), 0.6)
                .map_err(|e| bad(e.to_string()))?;
            let cents = (price.sample(&mut rng) * 100.0).round().max(99.0) as u64;
            items.push(Item {
                category: c,
                price_cents: cents,
            });
            by_category[c as usize].push(i);
        }
        let item_zipf = by_category
            .iter()
            .map(|v| zipf(v.len() as u32, 1.1))
            .collect::<tandem_common::Result<Vec<_>>>()?;
        let activity = LogNormal::new(0.0, 1.0).map_err(|e| bad(e.to_string()))?;
        // E[lognormal(0,1)] = e^0.5: scale so the mean rate is as asked.
        let scale = opts.sessions_per_user_day / 0.5f64.exp();
        let users = (0..opts.users)
            .map(|_| {
                let n = rng.random_range(1..=3);
                let mut prefs = Vec::with_capacity(n);
                let mut total = 0.0;
                for _ in 0..n {
                    total += rng.random::<f64>() + 0.2;
                    prefs.push((category_zipf.sample(&mut rng) as u32 - 1, total));
                }
                for p in &mut prefs {
                    p.1 /= total;
                }
                let loyal = rng.random_bool(0.2);
                User {
                    rate: activity.sample(&mut rng) * scale * if loyal { 1.5 } else { 1.0 },
                    prefs,
                    buyer: 0.4 + rng.random::<f64>() * 1.2,
                    loyal,
                    first_day: if rng.random_bool(0.7) {
                        0
                    } else {
                        rng.random_range(0..opts.days)
                    },
                    bought: Vec::new(),
                }
            })
            .collect();
        let category_names = (0..opts.categories as usize)
            .map(|c| match CATEGORY_NAMES.get(c) {
                Some(name) => name.to_string(),
                None => format!("category{c:04}"),
            })
            .collect();
        Ok(Generator {
            category_names,
            id_salt: splitmix(opts.seed ^ 0x007A_4DE3),
            opts,
            rng,
            items,
            by_category,
            category_zipf,
            item_zipf,
            users,
            day: 0,
            today: Vec::new(),
            next: 0,
            ready: 0,
            emitted: 0,
            next_id: 0,
            last: None,
        })
    }

    fn pick_item(&mut self, user: usize) -> u32 {
        let rng = &mut self.rng;
        let c = if rng.random_bool(0.75) {
            let x: f64 = rng.random();
            let prefs = &self.users[user].prefs;
            prefs
                .iter()
                .find(|p| x <= p.1)
                .unwrap_or(&prefs[prefs.len() - 1])
                .0
        } else {
            self.category_zipf.sample(rng) as u32 - 1
        };
        let rank = self.item_zipf[c as usize].sample(rng) as usize - 1;
        self.by_category[c as usize][rank]
    }

    fn session(&mut self, user: usize, start: i64) {
        let gap = Exp::new(1.0 / 40_000.0).expect("positive rate");
        let session = self.rng.random::<u64>();
        let mut t = start;
        let mut out: Vec<Gen> = Vec::new();
        let mut cart: Vec<u32> = Vec::new();
        let buyer = self.users[user].buyer;
        let loyal = self.users[user].loyal;
        let push = |out: &mut Vec<Gen>,
                    t: i64,
                    kind: Kind,
                    item: u32,
                    quantity: u32,
                    rating: u8,
                    query: Option<(u8, u8)>| {
            out.push(Gen {
                id: 0,
                user: user as u32,
                kind,
                item,
                ts: t,
                session,
                quantity,
                rating,
                query,
                first_of_session: false,
                bad: None,
            });
        };
        // Loyal users come back for what they bought before.
        if loyal && !self.users[user].bought.is_empty() && self.rng.random_bool(0.25) {
            let bought = &self.users[user].bought;
            let item = bought[self.rng.random_range(0..bought.len())];
            push(&mut out, t, Kind::View, item, 1, 0, None);
            t += gap.sample(&mut self.rng) as i64 + 1000;
            push(&mut out, t, Kind::AddToCart, item, 1, 0, None);
            cart.push(item);
        }
        let steps = 1 + (self.rng.random::<f64>().ln() / (5.0f64 / 6.0).ln()) as u32;
        for _ in 0..steps.min(40) {
            t += gap.sample(&mut self.rng) as i64 + 1000;
            let item = if self.rng.random_bool(0.12) {
                let item = self.pick_item(user);
                let c = self.items[item as usize].category as u8;
                let w = self.rng.random_range(0..SEARCH_WORDS.len()) as u8;
                push(&mut out, t, Kind::Search, 0, 1, 0, Some((c, w)));
                t += gap.sample(&mut self.rng) as i64 / 4 + 500;
                item
            } else {
                self.pick_item(user)
            };
            if self.rng.random_bool(0.3) {
                push(&mut out, t, Kind::Click, item, 1, 0, None);
                t += 500 + self.rng.random_range(0..3000);
            }
            push(&mut out, t, Kind::View, item, 1, 0, None);
            if self.rng.random_bool((0.09 * buyer).min(1.0)) {
                t += gap.sample(&mut self.rng) as i64 / 2 + 1000;
                let q = if self.rng.random_bool(0.85) {
                    1
                } else {
                    self.rng.random_range(2..=4)
                };
                push(&mut out, t, Kind::AddToCart, item, q, 0, None);
                cart.push(item);
            }
        }
        let p_buy = ((if loyal { 0.7 } else { 0.45 }) * buyer).min(0.95);
        for item in cart {
            t += gap.sample(&mut self.rng) as i64 + 1000;
            if self.rng.random_bool(p_buy) {
                let q = if self.rng.random_bool(0.9) {
                    1
                } else {
                    self.rng.random_range(2..=3)
                };
                push(&mut out, t, Kind::Purchase, item, q, 0, None);
                let bought = &mut self.users[user].bought;
                if bought.len() < 32 && !bought.contains(&item) {
                    bought.push(item);
                }
                if self.rng.random_bool(0.12) {
                    t += gap.sample(&mut self.rng) as i64 * 3 + 60_000;
                    let stars = [1u8, 2, 3, 3, 4, 4, 4, 5, 5, 5][self.rng.random_range(0..10)];
                    push(&mut out, t, Kind::Rate, item, 1, stars, None);
                }
            } else if self.rng.random_bool(0.3) {
                push(&mut out, t, Kind::RemoveFromCart, item, 1, 0, None);
            }
        }
        if let Some(first) = out.first_mut() {
            first.first_of_session = true;
        }
        self.today.extend(out);
    }

    fn fill_day(&mut self) -> bool {
        if self.day >= self.opts.days {
            return false;
        }
        let day_start = self.opts.end_ms - (self.opts.days - self.day) as i64 * DAY_MS;
        let hourly_total: f64 = HOURLY.iter().sum();
        // Sessions that ran past midnight left their tail for today.
        self.today.drain(..self.next);
        self.next = 0;
        for u in 0..self.users.len() {
            if self.users[u].first_day > self.day {
                continue;
            }
            let rate = self.users[u].rate;
            let n = Poisson::new(rate)
                .map(|p| p.sample(&mut self.rng) as u32)
                .unwrap_or(0);
            for _ in 0..n {
                let mut x = self.rng.random::<f64>() * hourly_total;
                let mut hour = 0;
                while hour < 23 && x > HOURLY[hour] {
                    x -= HOURLY[hour];
                    hour += 1;
                }
                let start =
                    day_start + hour as i64 * 3_600_000 + self.rng.random_range(0..3_600_000);
                self.session(u, start);
            }
        }
        let end = self.opts.end_ms;
        self.today.retain(|g| g.ts <= end);
        self.today.sort_by_key(|g| g.ts);
        self.day += 1;
        // Hand out only what happened before tomorrow's first sessions can start; the rest
        // waits in `today` (past `ready`) to be merged with tomorrow's.
        let day_end = day_start + DAY_MS;
        self.ready = if self.day < self.opts.days {
            self.today.partition_point(|g| g.ts < day_end)
        } else {
            self.today.len()
        };
        true
    }

    fn next_gen(&mut self) -> Option<Gen> {
        if self.opts.max_events.is_some_and(|m| self.emitted >= m) {
            return None;
        }
        if self.opts.dup_rate > 0.0
            && self.last.is_some()
            && self.rng.random_bool(self.opts.dup_rate)
        {
            self.emitted += 1;
            return self.last.take();
        }
        while self.next >= self.ready {
            if !self.fill_day() {
                return None;
            }
        }
        let mut g = self.today[self.next].clone();
        self.next += 1;
        g.id = self.next_id;
        self.next_id += 1;
        if self.opts.bad_rate > 0.0 && self.rng.random_bool(self.opts.bad_rate) {
            g.bad = Some(self.rng.random_range(0..8));
        }
        self.emitted += 1;
        self.last = g.bad.is_none().then(|| g.clone());
        Some(g)
    }

    /// Events generated so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// Writes the next event as one JSON line into `out`; false when the history is complete.
    pub fn next_json(&mut self, out: &mut Vec<u8>) -> bool {
        match self.next_gen() {
            Some(g) => {
                self.write_json(&g, out);
                true
            }
            None => false,
        }
    }

    /// The next valid event (invalid ones are skipped: they cannot be represented as events).
    pub fn next_event(&mut self) -> Option<Event<'static>> {
        loop {
            let g = self.next_gen()?;
            if g.bad.is_none() {
                return Some(self.to_event(&g).into_owned());
            }
        }
    }

    fn event_id(&self, id: u64) -> String {
        // splitmix64 is a bijection, so distinct ids give distinct `h`: unique, and random-looking.
        let h = splitmix(self.id_salt ^ id);
        format!("{h:016x}{:016x}", splitmix(h))
    }

    fn to_event(&self, g: &Gen) -> Event<'_> {
        let item = &self.items[g.item as usize];
        let priced = matches!(
            g.kind,
            Kind::AddToCart | Kind::Purchase | Kind::RemoveFromCart
        );
        Event {
            event_id: Cow::Owned(self.event_id(g.id)),
            user_id: Cow::Owned(format!("u{:07}", g.user)),
            kind: g.kind,
            item_id: (g.kind != Kind::Search).then(|| Cow::Owned(format!("i{:06}", g.item))),
            category: Some(Cow::Borrowed(self.category_name(
                if g.kind == Kind::Search {
                    g.query.map_or(0, |q| q.0 as u32)
                } else {
                    item.category
                },
            ))),
            price: priced.then(|| item.price_cents as f64 / 100.0),
            quantity: g.quantity,
            rating: (g.kind == Kind::Rate).then_some(g.rating as f64),
            query: g.query.map(|(c, w)| {
                Cow::Owned(format!(
                    "{} {}",
                    SEARCH_WORDS[w as usize],
                    self.category_name(c as u32)
                ))
            }),
            ts: g.ts,
            session_id: Some(Cow::Owned(format!("s{:016x}", g.session))),
            props: g.first_of_session.then(|| {
                let d = DEVICES[(g.session % 3) as usize];
                let c = CHANNELS[(g.session / 3 % 5) as usize];
                BTreeMap::from([
                    (Cow::Borrowed("channel"), Cow::Borrowed(c)),
                    (Cow::Borrowed("device"), Cow::Borrowed(d)),
                ])
            }),
        }
    }

    fn category_name(&self, c: u32) -> &str {
        &self.category_names[c as usize]
    }

    fn write_json(&self, g: &Gen, out: &mut Vec<u8>) {
        if let Some(sort) = g.bad {
            self.write_bad(g, sort, out);
            return;
        }
        // Hand-written rather than serde: this is the generator's hot path. The shape is the
        // same as `Event::to_json` (a unit test holds them equal).
        let e = self.to_event(g);
        let ts = {
            let mut b = [0u8; 24];
            write_rfc3339_ms(e.ts, &mut b);
            b
        };
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(e.event_id.as_bytes());
        out.extend_from_slice(b"\",\"user_id\":\"");
        out.extend_from_slice(e.user_id.as_bytes());
        out.extend_from_slice(b"\",\"kind\":\"");
        out.extend_from_slice(e.kind.as_str().as_bytes());
        out.push(b'"');
        if let Some(i) = &e.item_id {
            out.extend_from_slice(b",\"item_id\":\"");
            out.extend_from_slice(i.as_bytes());
            out.push(b'"');
        }
        if let Some(c) = &e.category {
            out.extend_from_slice(b",\"category\":\"");
            out.extend_from_slice(c.as_bytes());
            out.push(b'"');
        }
        if let Some(p) = e.price {
            let _ = write!(out, ",\"price\":{p}");
        }
        let _ = write!(out, ",\"quantity\":{}", e.quantity);
        if let Some(r) = e.rating {
            let _ = write!(out, ",\"rating\":{r:?}");
        }
        if let Some(q) = &e.query {
            out.extend_from_slice(b",\"query\":\"");
            out.extend_from_slice(q.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"ts\":\"");
        out.extend_from_slice(&ts);
        out.push(b'"');
        if let Some(s) = &e.session_id {
            out.extend_from_slice(b",\"session_id\":\"");
            out.extend_from_slice(s.as_bytes());
            out.push(b'"');
        }
        if let Some(p) = &e.props {
            out.extend_from_slice(b",\"props\":{");
            for (i, (k, v)) in p.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = write!(out, "\"{k}\":\"{v}\"");
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"}\n");
    }

    fn write_bad(&self, g: &Gen, sort: u8, out: &mut Vec<u8>) {
        let mut e = self.to_event(g);
        let mut v = serde_json::to_value(&e).unwrap_or_default();
        let o = v.as_object_mut().expect("an event serialises to an object");
        match sort {
            0 => {
                o.remove("user_id");
            }
            1 => {
                o.insert("kind".into(), "purchase".into());
                o.insert(
                    "price".into(),
                    (-(self.items[g.item as usize].price_cents as f64) / 100.0).into(),
                );
                o.insert("item_id".into(), format!("i{:06}", g.item).into());
            }
            2 => {
                o.insert("kind".into(), "like".into());
            }
            3 => {
                o.insert("ts".into(), "9999-01-01T00:00:00Z".into());
            }
            4 => {
                o.insert("price".into(), "12,99".into());
            }
            5 => {
                o.insert("event_id".into(), "".into());
            }
            6 => {
                o.insert("kind".into(), "rate".into());
                o.remove("rating");
                o.insert("item_id".into(), format!("i{:06}", g.item).into());
            }
            _ => {
                // A line cut short, as by a crashed writer.
                e.props = None;
                let s = e.to_json();
                out.extend_from_slice(&s.as_bytes()[..s.len() / 2]);
                out.push(b'\n');
                return;
            }
        }
        let _ = serde_json::to_writer(&mut *out, &v);
        out.push(b'\n');
    }
}

/// Generates straight into the lake, as `tandem ingest` would store the same events (invalid
/// ones are skipped: they cannot be stored), stamped as a bulk load is
/// ([`tandem_common::lake::bulk_stamp`]).
pub async fn write_to_lake(
    mut generator: Generator,
    lake: &tandem_common::lake::Lake,
    options: tandem_common::ingest::IngestOptions,
) -> tandem_common::Result<tandem_common::ingest::IngestSummary> {
    use tandem_common::lake::{RunWriter, new_run_id};
    use tandem_common::schema::{EventBatchBuilder, Stamp};
    let started = std::time::Instant::now();
    let mut writer = RunWriter::start(
        lake,
        &new_run_id("generate"),
        options.writer.clone(),
        options.lease,
        options.epoch_ms,
    )
    .await?;
    let run_id = writer.run_id().to_string();
    let stamp = writer.stamp();
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let make = tokio::task::spawn_blocking(move || {
        loop {
            let mut b = EventBatchBuilder::with_capacity(65_536);
            while b.len() < 65_536 {
                match generator.next_event() {
                    Some(e) => b.append(&e, Stamp::bulk(stamp)),
                    None => break,
                }
            }
            let done = b.len() < 65_536;
            if !b.is_empty() && tx.blocking_send(b.finish()).is_err() {
                return;
            }
            if done {
                return;
            }
        }
    });
    let mut accepted = 0u64;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        writer.write(&batch).await?;
        accepted += batch.num_rows() as u64;
    }
    make.await
        .map_err(|e| tandem_common::Error::Internal(format!("generator failed: {e}")))?;
    let files = writer.finish().await?;
    Ok(tandem_common::ingest::IngestSummary::new(
        run_id, accepted, 0, &files, 0, started,
    ))
}

/// Writes the generated events into `lake` as the archiver would have written them had they
/// streamed in: each stamped with its event time plus a delivery delay (100 ms to 10 minutes;
/// 5% hours to 3 days late, as from a device that was offline), a bus partition by user and an
/// offset, into the folder of its ingest date. A history spread over ingest time, for the
/// incremental batch runs' benchmark and tests; no bulk-load run is recorded. Returns the
/// events written and the files.
pub async fn write_streamed_to_lake(
    mut generator: Generator,
    lake: &tandem_common::lake::Lake,
    writer: tandem_common::lake::WriterOptions,
    seed: u64,
) -> tandem_common::Result<(u64, Vec<tandem_common::lake::FileWritten>)> {
    use tandem_common::event::date_of_ms;
    use tandem_common::lake::EventFileWriter;
    use tandem_common::schema::{EventBatchBuilder, Stamp};
    const PARTITIONS: u64 = 4;
    const DAY: i64 = 86_400_000;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed_0fa4_c4c4);
    let mut files = EventFileWriter::new(lake.clone(), "streamed", writer)?;
    let mut offsets = [0i64; PARTITIONS as usize];
    // Events buffered per ingest date; a date is written once event time is two days past it
    // (the late ones beyond that go into a batch of their own date when it fills or at the end).
    let mut open: BTreeMap<String, (i64, EventBatchBuilder)> = BTreeMap::new();
    let mut written = 0u64;
    loop {
        let e = generator.next_event();
        let now = e.as_ref().map_or(i64::MAX, |e| e.ts);
        let due: Vec<String> = open
            .iter()
            .filter(|(_, (at, b))| *at < now.saturating_sub(2 * DAY) || b.len() >= 1 << 20)
            .map(|(d, _)| d.clone())
            .collect();
        for d in due {
            if let Some((at, mut b)) = open.remove(&d) {
                written += b.len() as u64;
                files.write(&b.finish()?, at).await?;
            }
        }
        let Some(e) = e else { break };
        let delay = if rng.random_bool(0.05) {
            rng.random_range(3_600_000..3 * DAY)
        } else {
            rng.random_range(100..600_000)
        };
        let partition = e
            .user_id
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
            % PARTITIONS;
        offsets[partition as usize] += 1;
        let stamp = Stamp {
            ingest_ts: e.ts + delay,
            partition: Some(partition as i32),
            offset: Some(offsets[partition as usize]),
        };
        let (_, b) = open
            .entry(date_of_ms(stamp.ingest_ts))
            .or_insert_with(|| (stamp.ingest_ts, EventBatchBuilder::with_capacity(65_536)));
        b.append(&e, stamp);
    }
    Ok((written, files.finish().await?))
}

#[cfg(test)]
mod tests;
