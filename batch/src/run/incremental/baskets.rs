//! The baskets of an incremental run: the base's file streamed, the baskets no new event touches
//! passed through, the touched ones merged; and the similar items counted from all of them.

use super::*;
use crate::views::cooccurrence::BasketsBuilder;
use crate::views::{MAX_SESSION_ITEMS, MAX_USER_ITEMS};
use datafusion::arrow::array::{BooleanArray, ListArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::Int64Type;

/// The baskets of snapshot `id` — those of `old` merged with the new events' baskets `new`,
/// streamed into the new file and into the numbered baskets the pairs are counted from — and
/// the similar items counted from them; with the seconds each took.
pub(super) async fn merge_baskets(
    lake: Lake,
    id: String,
    old: String,
    new: Vec<RecordBatch>,
) -> Result<(Vec<RecordBatch>, f64, f64)> {
    use futures::TryStreamExt;
    let t = Instant::now();
    let mut groups = snapshots::stream_parquet(&lake, &old, "baskets.parquet").await?;
    let schema = new
        .first()
        .map_or_else(|| groups.schema().clone(), |b| b.schema());
    let mut baskets = BasketMerge::new(&new, schema.clone())?;
    drop(new);
    let mut out = snapshots::parquet_writer(&lake, &id, "baskets.parquet", schema.clone())?;
    let mut numbered = BasketsBuilder::default();
    while let Some(group) = groups.try_next().await? {
        let kept = baskets.old_group(&group)?;
        numbered.push(&kept)?;
        out.write(&kept).await?;
    }
    // The touched baskets, a row group at a time: what is held is the baskets, not their rows.
    for chunk in baskets.finish().chunks(snapshots::ROW_GROUP_ROWS) {
        let b = basket_batch(&schema, chunk)?;
        numbered.push(&b)?;
        out.write(&b).await?;
    }
    out.close().await?;
    let baskets_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let similar = similar_of(Arc::new(numbered.finish())).await?;
    Ok((similar, baskets_s, t.elapsed().as_secs_f64()))
}

/// One basket: its items, and for a user's basket each item's latest time.
pub(super) struct Basket {
    pub(super) by_user: bool,
    pub(super) items: Vec<String>,
    pub(super) last_ts: Option<Vec<i64>>,
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
pub(super) fn baskets_by_key(batches: &[RecordBatch]) -> Result<HashMap<String, Basket>> {
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
pub(super) struct BasketColumns {
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

/// The baskets at the new cutoff, a row group of the old file at a time: the old baskets no new
/// basket touches as they are, then each new basket merged with the old one of its key.
pub(super) struct BasketMerge {
    /// The new baskets by key, each merged with its old one once that has been read.
    touched: HashMap<String, Basket>,
    /// The baskets query's columns.
    schema: SchemaRef,
}

impl BasketMerge {
    fn new(new: &[RecordBatch], schema: SchemaRef) -> Result<BasketMerge> {
        Ok(BasketMerge {
            touched: baskets_by_key(new)?,
            schema,
        })
    }

    /// The untouched baskets of an old row group (in the query's column types); the touched
    /// ones merged into the new.
    fn old_group(&mut self, b: &RecordBatch) -> Result<RecordBatch> {
        let cols = BasketColumns::of(b)?;
        let mut keep = Vec::with_capacity(b.num_rows());
        for row in 0..b.num_rows() {
            match self.touched.get_mut(cols.key(row)) {
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
        let b = filter_record_batch(b, &BooleanArray::from(keep))?;
        cast_to(&b, &self.schema)
    }

    /// The touched baskets, merged, in key order.
    fn finish(self) -> Vec<(String, Basket)> {
        let mut baskets: Vec<(String, Basket)> = self.touched.into_iter().collect();
        baskets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        baskets
    }
}

/// The rows of `baskets` in the baskets query's columns `schema`: a user's basket with its
/// items' latest times, a session's with none (null).
fn basket_batch(schema: &SchemaRef, baskets: &[(String, Basket)]) -> Result<RecordBatch> {
    use datafusion::arrow::array::{
        ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, StringBuilder,
    };
    let mut keys = StringBuilder::new();
    let mut by_user = BooleanBuilder::new();
    let mut items = ListBuilder::new(StringBuilder::new());
    let mut last_ts = ListBuilder::new(Int64Builder::new());
    for (key, b) in baskets {
        keys.append_value(key);
        by_user.append_value(b.by_user);
        for item in &b.items {
            items.values().append_value(item);
        }
        items.append(true);
        match &b.last_ts {
            Some(ts) => {
                last_ts.values().append_slice(ts);
                last_ts.append(true);
            }
            None => last_ts.append(false),
        }
    }
    let b = RecordBatch::try_from_iter([
        ("basket", Arc::new(keys.finish()) as ArrayRef),
        ("by_user", Arc::new(by_user.finish())),
        ("items", Arc::new(items.finish())),
        ("last_ts", Arc::new(last_ts.finish())),
    ])?;
    cast_to(&b, schema)
}
