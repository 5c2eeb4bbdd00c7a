//! Incremental runs: the snapshot at a new cutoff `C₂` as the snapshot at `C₁` merged with the
//! fold of the events ingested in `[C₁, C₂)` (ARCHITECTURE.md §5, "Incremental runs").
//!
//! Every feature a snapshot serves is mergeable: counts and sums add, first and last times take
//! the min and the max, the decayed interests add in log space, the "latest N" lists keep the
//! latest N of the union. The similar items are not (a top K of cosines), but the baskets they
//! are counted from are: a session's basket keeps its first items by id, a user's basket the
//! latest items, so a basket at `C₂` is the basket at `C₁` merged with the new events' basket
//! of the same key. The snapshot keeps its baskets (`baskets.parquet`) and the times of the
//! profiles' `history`; the pairs are counted and the best K kept again from the merged
//! baskets.
//!
//! The new events are those the full run at `C₂` holds and the one at `C₁` does not
//! ([`LakeContext::materialise_since`]): a duplicate of an event ingested before `C₁` is not
//! counted again. What cannot be merged makes the run a full one ([`basis`]): a previous
//! snapshot of another layout, users erased since `C₁` (their rows at `C₁` hold events that must
//! go), history loaded in bulk below `C₁` since, `--full`, and the schedule `batch.full_every`
//! — the models train on full runs only (their features at `T₁` fold the whole history), and
//! an incremental run scores every user with the models of the full run it descends from.

use super::*;
use datafusion::arrow::array::{ArrayRef, BooleanArray, ListArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use serde_json::{Value, json};
use std::collections::HashSet;
use tandem_common::store::HISTORY_ITEMS;

use crate::views::{MAX_SESSION_ITEMS, MAX_USER_ITEMS, timed_histories_from};

/// The layout version of a snapshot's mergeable state: `baskets.parquet` and the timed
/// `history` of `profiles.parquet`. A snapshot of another version is not merged from.
pub const STATE_VERSION: u32 = 1;

/// What a run starts from.
#[derive(Debug)]
pub enum Basis {
    /// Recompute from the whole lake, for this reason.
    Full(String),
    /// Merge the events since this snapshot's cutoff into it.
    Merge(Box<Manifest>),
}

/// Whether a run at `cutoff` can merge from the lake's latest complete snapshot before it, and
/// which; or why it cannot.
pub async fn basis(lake: &Lake, cutoff: i64, opts: &RunOptions) -> Result<Basis> {
    let full = |why: String| Ok(Basis::Full(why));
    if opts.full {
        return full("--full".into());
    }
    if opts.full_every_ms <= 0 {
        return full("batch.full_every is 0: every run is a full one".into());
    }
    let Some(base) = snapshots::complete(lake)
        .await?
        .into_iter()
        .rfind(|m| m.cutoff_ms < cutoff)
    else {
        return full("no earlier snapshot in the lake".into());
    };
    if base.state_version != STATE_VERSION {
        return full(format!(
            "snapshot {} has no mergeable state of this version (state {}, this version reads {STATE_VERSION})",
            base.snapshot, base.state_version
        ));
    }
    if base.feature_schema_version != FEATURE_SCHEMA_VERSION {
        return full(format!(
            "snapshot {} has feature schema {}, this version {FEATURE_SCHEMA_VERSION}",
            base.snapshot, base.feature_schema_version
        ));
    }
    let last_full = base.full_cutoff_ms.unwrap_or(base.cutoff_ms);
    if cutoff - last_full >= opts.full_every_ms {
        return full(format!(
            "the last full run (cutoff {}) is batch.full_every ({}) old or more",
            format_rfc3339_ms(last_full),
            humantime::format_duration(std::time::Duration::from_millis(opts.full_every_ms as u64))
        ));
    }
    let erased = lake
        .erasures()
        .await?
        .values()
        .filter(|at| **at >= base.cutoff_ms)
        .count();
    if erased > 0 {
        return full(format!(
            "{erased} users erased since snapshot {}'s cutoff",
            base.snapshot
        ));
    }
    let inputs = snapshot::inputs_below(lake, base.cutoff_ms).await?;
    if base.inputs.is_empty() || inputs != base.inputs {
        return full(format!(
            "history was loaded below snapshot {}'s cutoff since it was made ({} then, {inputs} now)",
            base.snapshot,
            if base.inputs.is_empty() {
                "unknown"
            } else {
                &base.inputs
            }
        ));
    }
    Ok(Basis::Merge(Box::new(base)))
}

/// The snapshot at `cutoff`: `base` merged with the events ingested from its cutoff on.
pub(super) async fn merge(
    lake: &Lake,
    base: &Manifest,
    cutoff: i64,
    checkpoint: &dyn Checkpoint,
    progress: &dyn Progress,
    durations: &mut BTreeMap<String, f64>,
) -> Result<Computed> {
    begin(Step::Views, checkpoint, progress)?;
    let t = Instant::now();
    let from = base.cutoff_ms;
    let lc = LakeContext::new(lake).await?.with_cutoff(cutoff).await?;
    let events = lc.materialise_since(from).await?;
    let n_events: u64 = events.iter().map(|b| b.num_rows() as u64).sum();
    drop(events);
    let set_aside = base.set_aside + lc.set_aside_since(from).await?;
    let new_profiles = View::Profiles.collect(&lc).await?;
    let new_items = View::Items.collect(&lc).await?;
    let new_baskets = basket_rows(&lc, i64::MAX).await?;
    drop(lc);
    tracing::info!(
        events = n_events,
        since = %base.snapshot,
        seconds = t.elapsed().as_secs_f64(),
        "New events folded."
    );

    let id = &base.snapshot;
    let old_profiles = snapshots::read_parquet(lake, id, "profiles.parquet").await?;
    let mut profiles = profiles_from(&old_profiles)?;
    let mut histories = timed_histories_from(&old_profiles)?;
    drop(old_profiles);
    for (user, p) in profiles_from(&new_profiles)? {
        profiles.entry(user).or_default().merge(&p);
    }
    for (user, h) in timed_histories_from(&new_profiles)? {
        merge_latest(histories.entry(user).or_default(), &h, HISTORY_ITEMS);
    }
    let mut items = items_from(&snapshots::read_parquet(lake, id, "items.parquet").await?)?;
    for (item, s) in items_from(&new_items)? {
        match items.get_mut(&item) {
            Some(mine) => mine.merge(&s),
            None => {
                items.insert(item, s);
            }
        }
    }
    let old_baskets = snapshots::read_parquet(lake, id, "baskets.parquet").await?;
    let baskets = merge_baskets(old_baskets, &new_baskets)?;
    drop(new_baskets);
    let similar_batches = similar_of(Arc::new(Baskets::from_batches(&baskets)?)).await?;
    let similar = similar_from(&similar_batches)?;
    let profile_batches = profile_rows(new_profiles[0].schema(), &profiles, &histories, cutoff)?;
    let item_batches = item_rows(new_items[0].schema(), &items)?;
    durations.insert(name(Step::Views).into(), t.elapsed().as_secs_f64());

    // The models of the full run this snapshot descends from, applied to the merged profiles.
    begin(Step::Train, checkpoint, progress)?;
    let t = Instant::now();
    let models = match &base.models {
        ModelsEntry::Trained(_) => Some(Models::from_json(
            &snapshots::read_file(lake, id, "models.json").await?,
        )?),
        ModelsEntry::Skipped(_) => None,
    };
    let scores = scores_of(models.as_ref(), &profiles, cutoff);
    durations.insert(name(Step::Train).into(), t.elapsed().as_secs_f64());
    let user_items = histories
        .into_iter()
        .map(|(u, h)| (u, h.into_iter().map(|(i, _)| i).collect()))
        .collect();
    Ok(Computed {
        events: base.events + n_events,
        set_aside,
        rows: rows_of(&profiles, &items, &similar, &scores),
        profiles,
        user_items,
        items,
        similar,
        scores,
        models,
        models_entry: base.models.clone(),
        batches: Some([profile_batches, item_batches, similar_batches]),
        baskets: Some(baskets),
        full_cutoff_ms: Some(base.full_cutoff_ms.unwrap_or(base.cutoff_ms)),
    })
}

/// Adds `other`'s items to a "latest N" list (newest first, ties by id): the union, the newest
/// time per item, the first `n`.
fn merge_latest(mine: &mut Vec<(String, i64)>, other: &[(String, i64)], n: usize) {
    let mut at: HashMap<String, i64> = mine.drain(..).collect();
    for (item, ts) in other {
        let t = at.entry(item.clone()).or_insert(*ts);
        *t = (*t).max(*ts);
    }
    mine.extend(at);
    mine.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    mine.truncate(n);
}

/// One basket: its items, and for a user's basket each item's latest time.
struct Basket {
    by_user: bool,
    items: Vec<String>,
    last_ts: Option<Vec<i64>>,
}

impl Basket {
    /// Adds `other`'s items (a basket of the same key over other events): a session keeps its
    /// first [`MAX_SESSION_ITEMS`] items by id, a user the latest [`MAX_USER_ITEMS`] — what
    /// `similar_items.sql` keeps of all the events.
    fn merge(&mut self, other: Basket) {
        match (self.last_ts.take(), other.last_ts) {
            (Some(ts), Some(other_ts)) if self.by_user => {
                let mut latest: Vec<(String, i64)> = std::mem::take(&mut self.items)
                    .into_iter()
                    .zip(ts)
                    .collect();
                let other: Vec<(String, i64)> = other.items.into_iter().zip(other_ts).collect();
                merge_latest(&mut latest, &other, MAX_USER_ITEMS);
                let (items, ts) = latest.into_iter().unzip();
                self.items = items;
                self.last_ts = Some(ts);
            }
            _ => {
                let mut all: Vec<String> = std::mem::take(&mut self.items);
                all.extend(other.items);
                all.sort_unstable();
                all.dedup();
                all.truncate(MAX_SESSION_ITEMS);
                self.items = all;
            }
        }
    }
}

/// The rows of a baskets query or file, by key.
fn baskets_by_key(batches: &[RecordBatch]) -> Result<HashMap<String, Basket>> {
    let mut out = HashMap::new();
    for b in batches {
        let cols = BasketColumns::of(b)?;
        for row in 0..b.num_rows() {
            out.insert(cols.key(row).to_string(), cols.basket(row));
        }
    }
    Ok(out)
}

/// The columns of a baskets batch.
struct BasketColumns {
    keys: StringArray,
    by_user: BooleanArray,
    items: ListArray,
    last_ts: ListArray,
}

impl BasketColumns {
    fn of(b: &RecordBatch) -> Result<BasketColumns> {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("baskets have no column `{name}`")))
        };
        let list = |name: &str, of: DataType| -> Result<ListArray> {
            let t = DataType::List(Arc::new(Field::new_list_field(of, true)));
            Ok(cast(col(name)?, &t)?.as_list::<i32>().clone())
        };
        Ok(BasketColumns {
            keys: cast(col("basket")?, &DataType::Utf8)?
                .as_string::<i32>()
                .clone(),
            by_user: cast(col("by_user")?, &DataType::Boolean)?
                .as_boolean()
                .clone(),
            items: list("items", DataType::Utf8)?,
            last_ts: list("last_ts", DataType::Int64)?,
        })
    }

    fn key(&self, row: usize) -> &str {
        self.keys.value(row)
    }

    fn basket(&self, row: usize) -> Basket {
        let items: Vec<String> = if self.items.is_null(row) {
            Vec::new()
        } else {
            self.items
                .value(row)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect()
        };
        let last_ts = (!self.last_ts.is_null(row)).then(|| {
            self.last_ts
                .value(row)
                .as_primitive::<Int64Type>()
                .iter()
                .map(|t| t.unwrap_or(i64::MIN))
                .collect::<Vec<i64>>()
        });
        Basket {
            by_user: self.by_user.is_valid(row) && self.by_user.value(row),
            // A user basket's two lists have one entry per item; anything else is read as a
            // session's.
            last_ts: last_ts.filter(|t| t.len() == items.len()),
            items,
        }
    }
}

/// The baskets at the new cutoff: those of `old` that no new basket touches, as they are, and
/// each basket of `new` merged with the old one of its key.
fn merge_baskets(old: Vec<RecordBatch>, new: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let mut touched = baskets_by_key(new)?;
    let keys: HashSet<String> = touched.keys().cloned().collect();
    let mut out = Vec::with_capacity(old.len() + 1);
    let schema = match new.first().or(old.first()) {
        Some(b) => b.schema(),
        None => return Ok(Vec::new()),
    };
    for b in old {
        let cols = BasketColumns::of(&b)?;
        let mut keep = Vec::with_capacity(b.num_rows());
        for row in 0..b.num_rows() {
            let key = cols.key(row);
            match touched.get_mut(key) {
                Some(fresh) => {
                    let mut merged = cols.basket(row);
                    merged.merge(std::mem::replace(
                        fresh,
                        Basket {
                            by_user: false,
                            items: Vec::new(),
                            last_ts: None,
                        },
                    ));
                    *fresh = merged;
                    keep.push(false);
                }
                None => keep.push(true),
            }
        }
        let b = filter_record_batch(&b, &BooleanArray::from(keep))?;
        // The old file's column types, cast to the query's, so that every batch has one schema.
        out.push(cast_to(&b, &schema)?);
    }
    let mut keys: Vec<String> = keys.into_iter().collect();
    keys.sort_unstable();
    let rows: Vec<Value> = keys
        .iter()
        .map(|k| {
            let b = &touched[k];
            json!({
                "basket": k,
                "by_user": b.by_user,
                "items": b.items,
                "last_ts": b.last_ts,
            })
        })
        .collect();
    out.extend(decode(schema, &rows)?);
    Ok(out)
}

/// `b` with its columns cast to `schema`'s types (same names, same order).
fn cast_to(
    b: &RecordBatch,
    schema: &datafusion::arrow::datatypes::SchemaRef,
) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let c = b
                .column_by_name(f.name())
                .ok_or_else(|| Error::Internal(format!("baskets have no column `{}`", f.name())))?;
            Ok(cast(c, f.data_type())?)
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// JSON rows as record batches of `schema` (names and types of the view's own output).
fn decode(
    schema: datafusion::arrow::datatypes::SchemaRef,
    rows: &[Value],
) -> Result<Vec<RecordBatch>> {
    use datafusion::arrow::json::ReaderBuilder;
    let mut out = Vec::new();
    for chunk in rows.chunks(8192) {
        let mut decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(chunk.len().max(1))
            .build_decoder()?;
        decoder.serialize(chunk)?;
        if let Some(b) = decoder.flush()? {
            out.push(b);
        }
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

/// A latest-items list as the views write it (`[{item_id, ts}]`), or null when empty.
fn timed_list(items: &[(String, i64)]) -> Value {
    if items.is_empty() {
        return Value::Null;
    }
    items
        .iter()
        .map(|(i, t)| json!({"item_id": i, "ts": t}))
        .collect()
}

/// The profiles view's rows for `profiles` (the columns of `profiles.sql`, in `schema`), a chunk
/// of users at a time. The `history` lists (up to 1000 items a user) are built as Arrow arrays
/// directly; the other columns through JSON.
fn profile_rows(
    schema: datafusion::arrow::datatypes::SchemaRef,
    profiles: &BTreeMap<String, Profile>,
    histories: &BTreeMap<String, Vec<(String, i64)>>,
    cutoff: i64,
) -> Result<Vec<RecordBatch>> {
    let history_at = schema.index_of("history")?;
    let rest: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| i != history_at)
        .collect();
    let rest_schema = Arc::new(schema.project(&rest)?);
    let users: Vec<(&String, &Profile)> = profiles.iter().collect();
    let mut out = Vec::new();
    for chunk in users.chunks(8192) {
        let rows: Vec<Value> = chunk
            .iter()
            .map(|(user, p)| profile_json(user, p, cutoff))
            .collect();
        let decoded = decode(rest_schema.clone(), &rows)?;
        let history = history_array(
            chunk
                .iter()
                .map(|(user, _)| histories.get(*user).map_or(&[][..], Vec::as_slice)),
        )?;
        let history = cast(&history, schema.field(history_at).data_type())?;
        let rest_batch = datafusion::arrow::compute::concat_batches(&rest_schema, &decoded)?;
        let mut columns = rest_batch.columns().to_vec();
        columns.insert(history_at, history);
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    if out.is_empty() {
        out.push(RecordBatch::new_empty(schema));
    }
    Ok(out)
}

/// A user's profile row but `history`, as JSON.
fn profile_json(user: &str, p: &Profile, cutoff: i64) -> Value {
    let mut row = serde_json::Map::new();
    row.insert("user_id".into(), json!(user));
    for (name, n) in tandem_common::features::COUNT_COLUMNS.iter().zip(p.counts) {
        row.insert((*name).into(), json!(n));
    }
    let affinity: Value = if p.affinity.is_empty() {
        Value::Null
    } else {
        p.affinity
            .iter()
            .map(|(c, s)| json!({"category": c, "score": s}))
            .collect()
    };
    for (k, v) in [
        ("units", json!(p.units)),
        ("spend_micros", json!(p.spend_micros)),
        ("first_ts", json!(p.first_ts)),
        ("last_ts", json!(p.last_ts)),
        ("last_purchase_ts", json!(p.last_purchase_ts)),
        ("affinity", affinity),
        ("recent", timed_list(&p.recent_items)),
        ("bought", timed_list(&p.recent_purchases)),
        // As profiles.sql computes them, in the same floating-point operations.
        (
            "recency_days",
            json!((cutoff as f64 - p.last_ts as f64) / 86_400_000.0),
        ),
        ("frequency", json!(p.count(Kind::Purchase))),
        ("monetary", json!(p.spend_micros as f64 / 1_000_000.0)),
    ] {
        row.insert(k.into(), v);
    }
    Value::Object(row)
}

/// A `LIST<STRUCT<item_id, ts>>` column of latest-items lists (null for an empty one).
fn history_array<'a>(lists: impl Iterator<Item = &'a [(String, i64)]>) -> Result<ArrayRef> {
    use datafusion::arrow::array::{Int64Builder, ListBuilder, StringBuilder, StructBuilder};
    let fields = vec![
        Field::new("item_id", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
    ];
    let mut b = ListBuilder::new(StructBuilder::new(
        fields,
        vec![
            Box::new(StringBuilder::new()),
            Box::new(Int64Builder::new()),
        ],
    ));
    for list in lists {
        if list.is_empty() {
            b.append(false);
            continue;
        }
        let s = b.values();
        for (item, ts) in list {
            s.field_builder::<StringBuilder>(0)
                .ok_or_else(|| Error::Internal("history builder".into()))?
                .append_value(item);
            s.field_builder::<Int64Builder>(1)
                .ok_or_else(|| Error::Internal("history builder".into()))?
                .append_value(*ts);
            s.append(true);
        }
        b.append(true);
    }
    Ok(Arc::new(b.finish()))
}

/// The items view's rows for `items` (the columns of `items.sql`, in `schema`).
fn item_rows(
    schema: datafusion::arrow::datatypes::SchemaRef,
    items: &BTreeMap<String, ItemStats>,
) -> Result<Vec<RecordBatch>> {
    let rows: Vec<Value> = items
        .iter()
        .map(|(item, s)| {
            let mut row = serde_json::Map::new();
            row.insert("item_id".into(), json!(item));
            for (name, n) in tandem_common::features::COUNT_COLUMNS.iter().zip(s.counts) {
                row.insert((*name).into(), json!(n));
            }
            let (views, purchases) = (s.count(Kind::View), s.count(Kind::Purchase));
            for (k, v) in [
                ("units", json!(s.units)),
                ("revenue_micros", json!(s.revenue_micros)),
                (
                    "popularity",
                    if s.popularity.is_finite() {
                        json!(s.popularity)
                    } else {
                        Value::Null
                    },
                ),
                ("category", json!(s.category.as_ref().map(|c| &c.0))),
                ("category_ts", json!(s.category.as_ref().map(|c| c.1))),
                (
                    "conversion",
                    if views == 0 {
                        Value::Null
                    } else {
                        json!(purchases as f64 / views as f64)
                    },
                ),
            ] {
                row.insert(k.into(), v);
            }
            Value::Object(row)
        })
        .collect();
    decode(schema, &rows)
}

#[cfg(test)]
pub(crate) mod tests;
