//! The batch views, as SQL that analysts can read (`views/*.sql`), run over the `events` view
//! of a [`LakeContext`](tandem_sql::context::LakeContext).
//!
//! Each view computes the features `tandem_common::features` defines; the tests hold the two
//! equal on generated data.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use tandem_common::event::Kind;
use tandem_common::features::{
    DECAY_REF_MS, DECAY_TAU_MS, ItemStats, MAX_MONEY_MICROS, Profile, RECENT_ITEMS,
    interest_weight, sort_recent,
};
use tandem_common::store::HISTORY_ITEMS;

pub use self::cooccurrence::Baskets;
use crate::error::{Error, Result};
use tandem_sql::context::LakeContext;

/// A view of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// One row per user: counts, spend, first/last seen, category affinity, recent items,
    /// items bought lately.
    Profiles,
    /// One row per item: counts, units, revenue, popularity, category.
    Items,
    /// Up to [`SIMILAR_K`] rows per item: the items most often in the same sessions and users'
    /// latest items.
    SimilarItems,
}

/// Similar items kept per item.
pub const SIMILAR_K: usize = 20;
/// Items of one session that count toward co-occurrence: bounds the pairs a heavy session adds.
pub const MAX_SESSION_ITEMS: usize = 50;
/// A user's latest items that count toward co-occurrence (the user's basket): bounds the pairs a
/// heavy user adds.
pub const MAX_USER_ITEMS: usize = 50;

impl View {
    /// Every view.
    pub const ALL: [View; 3] = [View::Profiles, View::Items, View::SimilarItems];

    /// The table name of the view.
    pub fn name(self) -> &'static str {
        match self {
            View::Profiles => "profiles",
            View::Items => "items",
            View::SimilarItems => "similar_items",
        }
    }

    /// The SQL text, with placeholders.
    pub fn sql_template(self) -> &'static str {
        match self {
            View::Profiles => include_str!("views/profiles.sql"),
            View::Items => include_str!("views/items.sql"),
            View::SimilarItems => include_str!("views/similar_items.sql"),
        }
    }

    /// The SQL for a cutoff: placeholders filled in.
    pub fn sql(self, cutoff_ms: i64) -> String {
        fill(self.sql_template(), cutoff_ms)
    }

    /// The view, computed.
    pub async fn collect(self, lc: &LakeContext) -> Result<Vec<RecordBatch>> {
        self.collect_before(lc, i64::MAX).await
    }

    /// The view over the events of event time before `ts_before_ms` only, where the view reads
    /// event time (the similar items, which the models' training needs as they were at the
    /// start of their label period); the others are [`Self::collect`]'s.
    pub async fn collect_before(
        self,
        lc: &LakeContext,
        ts_before_ms: i64,
    ) -> Result<Vec<RecordBatch>> {
        match self {
            View::SimilarItems => {
                similar_of(Arc::new(baskets_before(lc, ts_before_ms).await?)).await
            }
            _ => {
                run_script(
                    lc,
                    &fill_before(self.sql_template(), cutoff_of(lc)?, ts_before_ms),
                )
                .await
            }
        }
    }
}

fn cutoff_of(lc: &LakeContext) -> Result<i64> {
    lc.cutoff_ms
        .ok_or_else(|| Error::Internal("a view needs a LakeContext with a cutoff".into()))
}

/// The baskets of the similar-items view (`similar_items.sql`): sessions and users' latest
/// items, of the interest events of event time before `ts_before_ms`.
pub async fn baskets_before(lc: &LakeContext, ts_before_ms: i64) -> Result<Baskets> {
    Baskets::from_batches(&basket_rows(lc, ts_before_ms).await?)
}

/// The rows of the baskets query (`basket`, `by_user`, `items`, `last_ts`): what
/// [`baskets_before`] reads, and the state an incremental run merges into.
pub async fn basket_rows(lc: &LakeContext, ts_before_ms: i64) -> Result<Vec<RecordBatch>> {
    let sql = fill_before(
        View::SimilarItems.sql_template(),
        cutoff_of(lc)?,
        ts_before_ms,
    );
    run_script(lc, &sql).await
}

/// The similar-items view's rows from its baskets: the pairs counted, the best
/// [`SIMILAR_K`] per item, on the blocking threads.
pub async fn similar_of(baskets: Arc<Baskets>) -> Result<Vec<RecordBatch>> {
    tokio::task::spawn_blocking(move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lists = cooccurrence::top_k(&baskets, SIMILAR_K, threads);
        cooccurrence::similar_rows(&baskets, &lists).map(|b| vec![b])
    })
    .await
    .map_err(|e| Error::Internal(format!("similar items task: {e}")))?
}

/// `template` with its placeholders filled in for `cutoff_ms`.
pub fn fill(template: &str, cutoff_ms: i64) -> String {
    fill_before(template, cutoff_ms, i64::MAX)
}

/// [`fill`], for the events of event time before `ts_before_ms` only.
fn fill_before(template: &str, cutoff_ms: i64, ts_before_ms: i64) -> String {
    template
        .replace("${TS_BEFORE}", &ts_before_ms.to_string())
        .replace("${CUTOFF_MS}", &format!("{cutoff_ms}.0"))
        .replace("${R}", &format!("{DECAY_REF_MS}.0"))
        .replace("${TAU}", &format!("{DECAY_TAU_MS:.1}"))
        .replace("${RECENT}", &RECENT_ITEMS.to_string())
        .replace("${HISTORY}", &HISTORY_ITEMS.to_string())
        .replace("${K}", &SIMILAR_K.to_string())
        .replace("${MAX_SESSION_ITEMS}", &MAX_SESSION_ITEMS.to_string())
        .replace("${MAX_USER_ITEMS}", &MAX_USER_ITEMS.to_string())
        .replace("${WEIGHT}", &weight_case())
        .replace("${MONEY}", &money_sum())
}

/// The purchases' money in micro-units as [`Profile::apply`](tandem_common::features::Profile)
/// sums it: each line `round(price × 10⁶) × quantity` capped at [`MAX_MONEY_MICROS`] (exact, as
/// in `features::spend_micros`), the lines summed as `DECIMAL(38, 0)` (an `Int64` sum would
/// wrap or fail), the sum capped again.
fn money_sum() -> String {
    let max = MAX_MONEY_MICROS;
    format!(
        "CAST(least(coalesce(sum(CAST(least(round(price * 1000000) * quantity, {max}.0) AS DECIMAL(38, 0))) \
         FILTER (WHERE kind = 'purchase'), 0), {max}) AS BIGINT)"
    )
}

/// The first line of a statement that is not blank or a comment, upper-cased ("" if none).
fn first_code_line(statement: &str) -> String {
    statement
        .lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with("--"))
        .unwrap_or("")
        .to_ascii_uppercase()
}

/// The statements of a script: split after each `;` that ends a line; blank ones and ones of
/// comments only dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        current.push_str(line);
        current.push('\n');
        if line.trim_end().ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    out.push(current);
    out.into_iter()
        .map(|s| s.trim().trim_end_matches(';').to_string())
        .filter(|s| !first_code_line(s).is_empty())
        .collect()
}

/// Runs a view's SQL: a single query, or a script of statements of which exactly one is a
/// query (`SELECT …` or `WITH …`), whose rows are returned. The others create the script's
/// intermediate tables (`CREATE OR REPLACE TABLE … AS`, computed once however often the query
/// reads them) and drop them; the drops after the query also run when a statement fails.
pub async fn run_script(lc: &LakeContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let statements = statements(sql);
    let is_query = |s: &str| {
        let code = first_code_line(s);
        code.starts_with("SELECT") || code.starts_with("WITH")
    };
    let query = match statements.iter().filter(|s| is_query(s)).count() {
        1 => statements.iter().position(|s| is_query(s)).unwrap_or(0),
        n => {
            return Err(Error::Internal(format!(
                "a view's SQL has one query; this one has {n}"
            )));
        }
    };
    let mut result = Ok(Vec::new());
    for (i, s) in statements.iter().enumerate() {
        let cleanup = i > query && first_code_line(s).starts_with("DROP");
        if result.is_err() && !cleanup {
            continue;
        }
        let batches = match lc.ctx.sql(s).await {
            Ok(df) => {
                // An empty result still has a schema: keep it as one empty batch, so that an
                // empty view (a cutoff before every event) is written as an empty file.
                let schema = Arc::new(df.schema().as_arrow().clone());
                df.collect().await.map(|b| match b.is_empty() {
                    true => vec![RecordBatch::new_empty(schema)],
                    false => b,
                })
            }
            Err(e) => Err(e),
        };
        match batches {
            Ok(b) if i == query => result = Ok(b),
            Ok(_) => {}
            Err(e) if result.is_ok() => result = Err(e.into()),
            Err(_) => {}
        }
    }
    result
}

/// The rows of the profiles view as [`Profile`]s, by user.
pub fn profiles_from(batches: &[RecordBatch]) -> Result<BTreeMap<String, Profile>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let c = Columns(b);
        let users = c.strings("user_id")?;
        let counts = c.counts()?;
        let (units, spend) = (c.i64s("units")?, c.i64s("spend_micros")?);
        let (first, last, last_buy) = (
            c.i64s("first_ts")?,
            c.i64s("last_ts")?,
            c.i64s("last_purchase_ts")?,
        );
        let (affinity, recent) = (c.structs("affinity")?, c.structs("recent")?);
        let bought = c.structs("bought")?;
        for i in 0..b.num_rows() {
            let mut p = Profile::new();
            p.counts = counts(i);
            p.units = units.value(i) as u64;
            p.spend_micros = spend.value(i);
            p.first_ts = first.value(i);
            p.last_ts = last.value(i);
            p.last_purchase_ts = last_buy.is_valid(i).then(|| last_buy.value(i));
            if let Some(s) = affinity.row(i)? {
                let (names, scores) = (field_strings(&s, "category")?, field_f64s(&s, "score")?);
                for j in 0..s.len() {
                    p.affinity
                        .insert(names.value(j).to_string(), scores.value(j));
                }
            }
            for (list, to) in [
                (&recent, &mut p.recent_items),
                (&bought, &mut p.recent_purchases),
            ] {
                if let Some(s) = list.row(i)? {
                    let (ids, ts) = (field_strings(&s, "item_id")?, field_i64s(&s, "ts")?);
                    *to = (0..s.len())
                        .map(|j| (ids.value(j).to_string(), ts.value(j)))
                        .collect();
                    sort_recent(to);
                }
            }
            out.insert(users.value(i).to_string(), p);
        }
    }
    Ok(out)
}

/// The `history` column of the profiles view (each user's latest items, at most
/// [`HISTORY_ITEMS`]), by user, newest first; empty for a snapshot written before it existed.
pub fn histories_from(batches: &[RecordBatch]) -> Result<BTreeMap<String, Vec<String>>> {
    Ok(timed_histories_from(batches)?
        .into_iter()
        .map(|(u, items)| (u, items.into_iter().map(|(i, _)| i).collect()))
        .collect())
}

/// The `history` column with each item's latest time, by user, newest first (ties by item id).
/// A snapshot of an older version holds the items alone: their times read as 0.
pub fn timed_histories_from(
    batches: &[RecordBatch],
) -> Result<BTreeMap<String, Vec<(String, i64)>>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let Some(col) = b.column_by_name("history") else {
            continue;
        };
        let list = col
            .as_list_opt::<i32>()
            .ok_or_else(|| Error::Internal("view column `history` is not a list".into()))?;
        let users = Columns(b).strings("user_id")?;
        for i in 0..b.num_rows() {
            if list.is_null(i) {
                continue;
            }
            let row = list.value(i);
            let mut items: Vec<(String, i64)> = match row.as_struct_opt() {
                Some(s) => {
                    let (ids, ts) = (field_strings(s, "item_id")?, field_i64s(s, "ts")?);
                    (0..s.len())
                        .filter(|&j| ids.is_valid(j))
                        .map(|j| (ids.value(j).to_string(), ts.value(j)))
                        .collect()
                }
                None => cast(&row, &DataType::Utf8)?
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(|id| (id.to_string(), 0))
                    .collect(),
            };
            items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            if !items.is_empty() {
                out.insert(users.value(i).to_string(), items);
            }
        }
    }
    Ok(out)
}

/// The rows of the items view as [`ItemStats`], by item.
pub fn items_from(batches: &[RecordBatch]) -> Result<BTreeMap<String, ItemStats>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let c = Columns(b);
        let ids = c.strings("item_id")?;
        let counts = c.counts()?;
        let (units, revenue) = (c.i64s("units")?, c.i64s("revenue_micros")?);
        let popularity = c.get("popularity")?.as_primitive::<Float64Type>().clone();
        let (category, category_ts) = (c.strings("category")?, c.i64s("category_ts")?);
        for i in 0..b.num_rows() {
            let s = ItemStats {
                counts: counts(i),
                units: units.value(i) as u64,
                revenue_micros: revenue.value(i),
                popularity: if popularity.is_valid(i) {
                    popularity.value(i)
                } else {
                    f64::NEG_INFINITY
                },
                category: category
                    .is_valid(i)
                    .then(|| (category.value(i).to_string(), category_ts.value(i))),
            };
            out.insert(ids.value(i).to_string(), s);
        }
    }
    Ok(out)
}

/// `CASE kind WHEN 'view' THEN 1.0 … ELSE 0.0 END`, from [`interest_weight`]: the weights are
/// defined once, in Rust.
fn weight_case() -> String {
    let arms: String = Kind::ALL
        .iter()
        .map(|k| format!(" WHEN '{}' THEN {:?}", k.as_str(), interest_weight(*k)))
        .collect();
    format!("CASE kind{arms} ELSE 0.0 END")
}

/// One similar item.
#[derive(Debug, Clone, PartialEq)]
pub struct Similar {
    /// The similar item.
    pub item: String,
    /// Sessions holding both.
    pub co: u64,
    /// Cosine similarity of the two items' session sets.
    pub score: f64,
}

/// The rows of the similar-items view, by item, best first.
pub fn similar_from(batches: &[RecordBatch]) -> Result<BTreeMap<String, Vec<Similar>>> {
    let mut out: BTreeMap<String, Vec<(i64, Similar)>> = BTreeMap::new();
    for b in batches {
        let c = Columns(b);
        let (items, others) = (c.strings("item_id")?, c.strings("similar_item")?);
        let (co, rank) = (c.i64s("co")?, c.i64s("rank")?);
        let score = c.get("score")?.as_primitive::<Float64Type>().clone();
        for i in 0..b.num_rows() {
            out.entry(items.value(i).to_string()).or_default().push((
                rank.value(i),
                Similar {
                    item: others.value(i).to_string(),
                    co: co.value(i) as u64,
                    score: score.value(i),
                },
            ));
        }
    }
    Ok(out
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by_key(|(rank, _)| *rank);
            (k, v.into_iter().map(|(_, s)| s).collect())
        })
        .collect())
}

struct Columns<'a>(&'a RecordBatch);

impl Columns<'_> {
    fn get(&self, name: &str) -> Result<&ArrayRef> {
        self.0
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("view has no column `{name}`")))
    }
    fn strings(&self, name: &str) -> Result<StringArray> {
        let a = cast(self.get(name)?, &DataType::Utf8)?;
        Ok(a.as_string::<i32>().clone())
    }
    fn i64s(&self, name: &str) -> Result<Int64Array> {
        let a = cast(self.get(name)?, &DataType::Int64)?;
        Ok(a.as_primitive::<Int64Type>().clone())
    }
    /// The per-kind count columns, read as `[u64; 7]` per row.
    fn counts(&self) -> Result<impl Fn(usize) -> [u64; 7]> {
        let cols = tandem_common::features::COUNT_COLUMNS
            .iter()
            .map(|n| self.i64s(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(move |i| std::array::from_fn(|k| cols[k].value(i) as u64))
    }

    fn structs(&self, name: &str) -> Result<StructList> {
        let list = self
            .get(name)?
            .as_list_opt::<i32>()
            .cloned()
            .ok_or_else(|| Error::Internal(format!("view column `{name}` is not a list")))?;
        Ok(StructList(list, name.to_string()))
    }
}

/// A list-of-struct column.
struct StructList(ListArray, String);

impl StructList {
    /// The structs of row `i`, or `None` when the row is null.
    fn row(&self, i: usize) -> Result<Option<StructArray>> {
        if self.0.is_null(i) {
            return Ok(None);
        }
        let v = self.0.value(i);
        v.as_struct_opt().cloned().map(Some).ok_or_else(|| {
            Error::Internal(format!("view column `{}` is not a list of structs", self.1))
        })
    }
}

fn field<'a>(s: &'a StructArray, name: &str) -> Result<&'a ArrayRef> {
    s.column_by_name(name)
        .ok_or_else(|| Error::Internal(format!("view struct has no field `{name}`")))
}

fn field_strings(s: &StructArray, name: &str) -> Result<StringArray> {
    Ok(cast(field(s, name)?, &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

fn field_f64s(s: &StructArray, name: &str) -> Result<Float64Array> {
    Ok(cast(field(s, name)?, &DataType::Float64)?
        .as_primitive::<Float64Type>()
        .clone())
}

fn field_i64s(s: &StructArray, name: &str) -> Result<Int64Array> {
    Ok(cast(field(s, name)?, &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

pub mod cooccurrence;
#[cfg(test)]
pub(crate) mod tests;
