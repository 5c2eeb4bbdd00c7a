//! The rows an incremental run computes itself, in the views' columns: the touched users'
//! profiles and every item, built from the merged features.

use super::*;
use datafusion::arrow::array::ArrayRef;
use serde_json::{Value, json};

/// `b` with its columns cast to `schema`'s types (same names, same order).
pub(super) fn cast_to(b: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
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
pub(super) fn decode(schema: SchemaRef, rows: &[Value]) -> Result<Vec<RecordBatch>> {
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
pub(super) fn timed_list(items: &[(String, i64)]) -> Value {
    if items.is_empty() {
        return Value::Null;
    }
    items
        .iter()
        .map(|(i, t)| json!({"item_id": i, "ts": t}))
        .collect()
}

/// The profiles view's rows for `users` (the columns of `profiles.sql`, in `schema`): the
/// `history` lists (up to 1000 items a user) built as Arrow arrays directly, the other columns
/// through JSON. Callers pass a row group's worth of users at a time.
pub(super) fn profile_rows(
    schema: SchemaRef,
    users: &[(&String, &Profile)],
    histories: &BTreeMap<String, Vec<(String, i64)>>,
    cutoff: i64,
) -> Result<RecordBatch> {
    let history_at = schema.index_of("history")?;
    let rest: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| i != history_at)
        .collect();
    let rest_schema = Arc::new(schema.project(&rest)?);
    let rows: Vec<Value> = users
        .iter()
        .map(|(user, p)| profile_json(user, p, cutoff))
        .collect();
    let decoded = decode(rest_schema.clone(), &rows)?;
    drop(rows);
    let history = history_array(
        users
            .iter()
            .map(|(user, _)| histories.get(*user).map_or(&[][..], Vec::as_slice)),
    )?;
    let history = cast(&history, schema.field(history_at).data_type())?;
    let rest_batch = datafusion::arrow::compute::concat_batches(&rest_schema, &decoded)?;
    let mut columns = rest_batch.columns().to_vec();
    columns.insert(history_at, history);
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// A user's profile row but `history`, as JSON.
pub(super) fn profile_json(user: &str, p: &Profile, cutoff: i64) -> Value {
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
pub(super) fn history_array<'a>(
    lists: impl Iterator<Item = &'a [(String, i64)]>,
) -> Result<ArrayRef> {
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
pub(super) fn item_rows(
    schema: SchemaRef,
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
