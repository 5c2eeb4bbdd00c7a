//! The speed layer's state in the online store (ARCHITECTURE.md §3–4): per user and ingest epoch, the
//! mergeable deltas of [`Profile`]; per user, the last bus offset applied and a bounded set of
//! recent event ids. Both backends keep exactly this; `speed.lua` is the Redis side.

use std::collections::BTreeMap;

use crate::event::{Event, Kind};
use crate::features::{Profile, decay_term, interest_weight, kind_index, spend_micros};

/// Recent event ids kept per user to catch a retried producer's second copy (a duplicate
/// `event_id` at a later offset). A copy arriving more than this many events of the same user
/// after the first is counted twice by the speed layer until the next snapshot (whose batch
/// dedupes by (`user_id`, `event_id`) over all time) replaces that epoch.
pub const SEEN_MAX: usize = 64;

/// How long Redis keeps a user's recent event ids after their last event: retries happen
/// within seconds, and an idle user's set is memory for nothing.
pub const SEEN_TTL_MS: u64 = 3_600_000;

/// What separates a bus log's identity from the token of the store's copy of a partition's
/// work in the log identity the speed layer applies with: `<log>|store:<token>`. A store that
/// lost its data (a Redis restarted without persistence, or flushed) loses the partition's
/// marker holding the token ([`partition_marker_key`]); the speed layer then replays the
/// partition from its start under a new token, and a user whose state was written under the old
/// token after the loss (before the speed layer noticed it) has that state dropped and rebuilt
/// from the replay ([`LogMatch::Stale`]) instead of the replay being skipped by its offsets.
pub const TOKEN_SEP: &str = "|store:";

/// The log identity `log` with the store token `token` ([`TOKEN_SEP`]).
pub fn log_with_token(log: &str, token: &str) -> String {
    format!("{log}{TOKEN_SEP}{token}")
}

/// The key of the speed layer's marker for `partition` of consumer `group`: the store token of
/// its work ([`TOKEN_SEP`]). Absent while the bus holds a position for the partition: the store
/// lost the partition's work.
pub fn partition_marker_key(group: &str, partition: u32) -> String {
    format!("tandem:speed:{group}:p{partition}")
}

/// How the log identity kept with a user's offset relates to the one an apply comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMatch {
    /// The same log (or either unknown, or the kept one from before store tokens): the kept
    /// offset holds.
    Same,
    /// The same log under another store token: what is kept was written after the store lost
    /// its data and is replayed now — drop the user's speed state (keeping the erasure marker)
    /// and apply from the first event.
    Stale,
    /// Another log (the topic was deleted and created again): the kept offset says nothing;
    /// count from the first event.
    Other,
}

/// Compares the log identity `kept` with a user's offset to `log`, the one applied with.
pub fn compare_logs(kept: Option<&str>, log: &str) -> LogMatch {
    let Some(kept) = kept.filter(|k| !log.is_empty() && *k != log) else {
        return LogMatch::Same;
    };
    let split = |l: &'_ str| -> (String, Option<String>) {
        match l.rsplit_once(TOKEN_SEP) {
            Some((base, token)) => (base.to_string(), Some(token.to_string())),
            None => (l.to_string(), None),
        }
    };
    match (split(kept), split(log)) {
        ((a, _), (b, _)) if a != b => LogMatch::Other,
        ((_, Some(_)), (_, Some(_))) => LogMatch::Stale,
        _ => LogMatch::Same,
    }
}

/// One event for the speed layer: where it is on the bus and the ingest epoch it is filed under.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedEvent<'a> {
    /// Its offset in its partition (each user lives in one partition).
    pub offset: u64,
    /// When it was accepted, epoch ms (an erasure skips the user's events up to its time).
    pub ingest_ts: i64,
    /// The start of its ingest epoch, epoch ms.
    pub epoch_ms: i64,
    /// The event.
    pub event: Event<'a>,
}

/// What [`OnlineStore::apply_events`](super::OnlineStore::apply_events) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApplyCounts {
    /// Events whose deltas were added.
    pub applied: u64,
    /// Events at or below their user's last applied offset (a replay): skipped.
    pub replayed: u64,
    /// Events whose `event_id` the user had recently (a retried producer): skipped.
    pub duplicates: u64,
    /// Events of an erased user ingested at or before the erasure: skipped.
    pub erased: u64,
    /// Store calls made (Redis: function calls, each holding whole users' events; memory: one
    /// per user of each batch).
    pub calls: u64,
    /// Users whose events were applied, counted once per batch: each user's events of a batch
    /// are applied as one atomic step.
    pub users: u64,
}

impl std::ops::AddAssign for ApplyCounts {
    fn add_assign(&mut self, o: ApplyCounts) {
        self.applied += o.applied;
        self.replayed += o.replayed;
        self.duplicates += o.duplicates;
        self.erased += o.erased;
        self.calls += o.calls;
        self.users += o.users;
    }
}

/// A user's speed state as read for serving.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeedState {
    /// The last bus offset applied for the user, if any.
    pub offset: Option<u64>,
    /// When the user was last erased (ingest time, epoch ms), if ever: a snapshot whose cutoff
    /// is not after it may hold what was erased, and serving must not use its row.
    pub erased_ms: Option<i64>,
    /// The deltas per ingest epoch (start ms), in epoch order.
    pub epochs: BTreeMap<i64, Profile>,
}

impl SpeedState {
    /// The deltas of every epoch read, merged.
    pub fn merged(&self) -> Profile {
        let mut p = Profile::new();
        for e in self.epochs.values() {
            p.merge(e);
        }
        p
    }
}

/// The Lua library of the Redis backend.
pub(crate) const LUA: &str = include_str!("speed.lua");
/// Entries of ARGV per event in `tandem_apply_v5` (its `STRIDE`): what `push_args` writes, held
/// equal to the Lua's by a test.
#[cfg(test)]
pub(crate) const STRIDE: usize = 11;

/// Appends one event's ARGV entries for `tandem_apply_v5` (see `speed.lua`) to the last command
/// of `pipe`, written straight into its buffer (integers without an intermediate `String`);
/// `buf` is scratch space for the one float.
pub(crate) fn push_args(
    pipe: &mut redis::Pipeline,
    e: &SpeedEvent<'_>,
    slot: usize,
    buf: &mut String,
) {
    use std::fmt::Write;
    let ev = &e.event;
    let purchase = ev.kind == Kind::Purchase;
    let w = interest_weight(ev.kind);
    let (quantity, spend) = match purchase {
        true => (
            ev.quantity,
            spend_micros(ev.price.unwrap_or(0.0), ev.quantity),
        ),
        false => (0, 0),
    };
    pipe.arg(e.offset)
        .arg(ev.event_id.as_ref())
        .arg(slot)
        .arg(e.ingest_ts)
        .arg(kind_index(ev.kind))
        .arg(ev.ts)
        .arg(quantity)
        .arg(spend);
    match (&ev.category, w > 0.0) {
        (Some(c), true) => {
            buf.clear();
            // `Display` of an f64: the shortest text that parses back to the same number.
            let _ = write!(buf, "{}", decay_term(w, ev.ts));
            pipe.arg(c.as_ref()).arg(buf.as_str());
        }
        _ => {
            pipe.arg("").arg("");
        }
    }
    pipe.arg(ev.item_id.as_deref().unwrap_or(""));
}

/// Appends an epoch's delta for `tandem_apply_fast_v2` (see `speed.lua`'s `add_delta`): the
/// fold `p` of the events of one user and epoch, as the fields of the epoch hash it adds to
/// (`c<kind>`, `units`, `spend`, `first`, `last`, `lastbuy`, `a:<category>`) and its latest
/// items and items bought as (time, item).
pub(crate) fn push_delta(pipe: &mut redis::Pipeline, p: &Profile, buf: &mut String) {
    use std::fmt::Write;
    let purchases = p.counts[kind_index(Kind::Purchase)] > 0;
    let fields = p.counts.iter().filter(|c| **c > 0).count()
        + if purchases { 2 } else { 0 }
        + 2
        + usize::from(p.last_purchase_ts.is_some())
        + p.affinity.len();
    pipe.arg(fields)
        .arg(p.recent_items.len())
        .arg(p.recent_purchases.len());
    for (i, c) in p.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        buf.clear();
        let _ = write!(buf, "c{i}");
        pipe.arg(buf.as_str()).arg(*c);
    }
    if purchases {
        pipe.arg("units")
            .arg(p.units)
            .arg("spend")
            .arg(p.spend_micros);
    }
    pipe.arg("first").arg(p.first_ts).arg("last").arg(p.last_ts);
    if let Some(t) = p.last_purchase_ts {
        pipe.arg("lastbuy").arg(t);
    }
    for (c, l) in &p.affinity {
        buf.clear();
        let _ = write!(buf, "a:{c}");
        pipe.arg(buf.as_str());
        buf.clear();
        // `Display` of an f64: the shortest text that parses back to the same number.
        let _ = write!(buf, "{l}");
        pipe.arg(buf.as_str());
    }
    // Minus the time: the zsets' scores (`speed.lua` says why).
    for (item, ts) in p.recent_items.iter().chain(&p.recent_purchases) {
        pipe.arg(-*ts).arg(item.as_str());
    }
}

/// A profile from an epoch hash's fields, its recent items and its items bought (item, time),
/// as Redis keeps them.
pub(crate) fn profile_from_redis(
    fields: &[(String, String)],
    recent: &[(String, String)],
    bought: &[(String, String)],
) -> Result<Profile, String> {
    let int = |f: &str, v: &str| -> Result<i64, String> {
        v.parse::<i64>()
            .map_err(|e| format!("field `{f}` = `{v}`: {e}"))
    };
    let mut p = Profile::new();
    for (f, v) in fields {
        match f.as_str() {
            "units" => p.units = int(f, v)? as u64,
            "spend" => p.spend_micros = int(f, v)?,
            "first" => p.first_ts = int(f, v)?,
            "last" => p.last_ts = int(f, v)?,
            "lastbuy" => p.last_purchase_ts = Some(int(f, v)?),
            _ => {
                if let Some(cat) = f.strip_prefix("a:") {
                    let score: f64 = v.parse().map_err(|e| format!("field `{f}` = `{v}`: {e}"))?;
                    p.affinity.insert(cat.to_string(), score);
                } else if let Some(i) = f.strip_prefix('c').and_then(|i| i.parse::<usize>().ok())
                    && i < p.counts.len()
                {
                    p.counts[i] = int(f, v)? as u64;
                } else {
                    return Err(format!("unknown field `{f}`"));
                }
            }
        }
    }
    // Scores are minus the time, or plus it in a zset of the layout before (`speed.lua`); times
    // are never negative. An item in both keeps its latest time.
    for (what, from, to) in [
        ("recent item", recent, &mut p.recent_items),
        ("item bought", bought, &mut p.recent_purchases),
    ] {
        let items = from
            .iter()
            .map(|(item, score)| {
                let ts = score
                    .parse::<f64>()
                    .map_err(|e| format!("{what} `{item}` score `{score}`: {e}"))?;
                Ok((item.clone(), ts.abs() as i64))
            })
            .collect::<Result<Vec<_>, String>>()?;
        crate::features::merge_recent(to, &items);
    }
    Ok(p)
}

/// The key of a user's speed metadata (hash: `offset`, `erased`).
pub(crate) fn speed_key(user: &str) -> String {
    format!("tandem:u:{{{user}}}:speed")
}

/// The key of a user's recent event ids (zset scored by minus the offset).
pub(crate) fn seen_key(user: &str) -> String {
    format!("tandem:u:{{{user}}}:seen")
}

/// The key of a user's epoch index (zset: member = score = epoch ms).
pub(crate) fn epochs_key(user: &str) -> String {
    format!("tandem:u:{{{user}}}:epochs")
}

/// The prefix of a user's epoch keys: `<prefix><ms>` is the hash, `<prefix><ms>:latest` and
/// `<prefix><ms>:latest-bought` the zsets.
pub(crate) fn epoch_prefix(user: &str) -> String {
    format!("tandem:u:{{{user}}}:epoch:")
}

/// The events of `events` grouped by user, each group in input (offset) order; groups in the
/// order of their first event.
pub(crate) fn by_user<'a, 'e>(events: &'a [SpeedEvent<'e>]) -> Vec<Vec<&'a SpeedEvent<'e>>> {
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<&SpeedEvent<'e>>> = Vec::new();
    for e in events {
        let n = groups.len();
        let g = *index.entry(e.event.user_id.as_ref()).or_insert(n);
        if g == n {
            groups.push(Vec::new());
        }
        groups[g].push(e);
    }
    groups
}
