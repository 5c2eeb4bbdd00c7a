//! The lake's Arrow schema of events, and conversion between [`Event`]s and record batches.
//!
//! The lake adds three columns to the wire fields: `ingest_ts` (stamped once, at acceptance),
//! and `partition`/`offset` (the bus position; null for events bulk-loaded by `tandem ingest`).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int32Builder, Int64Builder, MapBuilder,
    MapFieldNames, RecordBatch, StringBuilder, TimestampMillisecondBuilder, UInt32Builder,
};
use arrow::datatypes::{
    DataType, Field, Fields, Float64Type, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit,
    TimestampMillisecondType, UInt32Type,
};

use crate::error::{Error, Result};
use crate::event::{Event, Kind};

/// Where and when the lake got an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Ingest time, epoch milliseconds: the time the event was accepted. The batch/speed boundary.
    pub ingest_ts: i64,
    /// The bus partition, when the event came through the bus.
    pub partition: Option<i32>,
    /// The bus offset, when the event came through the bus.
    pub offset: Option<i64>,
}

impl Stamp {
    /// The stamp of an event bulk-loaded at `ingest_ts`, not through the bus.
    pub fn bulk(ingest_ts: i64) -> Self {
        Stamp {
            ingest_ts,
            partition: None,
            offset: None,
        }
    }
}

fn utc_ms() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn props_type() -> DataType {
    let entries = Fields::from(vec![
        Field::new("keys", DataType::Utf8, false),
        Field::new("values", DataType::Utf8, true),
    ]);
    DataType::Map(
        Arc::new(Field::new("entries", DataType::Struct(entries), false)),
        false,
    )
}

/// The Arrow schema of events in the lake.
pub fn event_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new("event_id", DataType::Utf8, false),
                Field::new("user_id", DataType::Utf8, false),
                Field::new("kind", DataType::Utf8, false),
                Field::new("item_id", DataType::Utf8, true),
                Field::new("category", DataType::Utf8, true),
                Field::new("price", DataType::Float64, true),
                Field::new("quantity", DataType::UInt32, false),
                Field::new("rating", DataType::Float64, true),
                Field::new("query", DataType::Utf8, true),
                Field::new("ts", utc_ms(), false),
                Field::new("session_id", DataType::Utf8, true),
                Field::new("props", props_type(), true),
                Field::new("ingest_ts", utc_ms(), false),
                Field::new("partition", DataType::Int32, true),
                Field::new("offset", DataType::Int64, true),
            ]))
        })
        .clone()
}

/// Appends events to Arrow builders and finishes them as record batches of [`event_schema`].
pub struct EventBatchBuilder {
    event_id: StringBuilder,
    user_id: StringBuilder,
    kind: StringBuilder,
    item_id: StringBuilder,
    category: StringBuilder,
    price: Float64Builder,
    quantity: UInt32Builder,
    rating: Float64Builder,
    query: StringBuilder,
    ts: TimestampMillisecondBuilder,
    session_id: StringBuilder,
    props: MapBuilder<StringBuilder, StringBuilder>,
    ingest_ts: TimestampMillisecondBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    len: usize,
}

impl Default for EventBatchBuilder {
    fn default() -> Self {
        Self::with_capacity(1024)
    }
}

impl EventBatchBuilder {
    /// A builder sized for `rows` events.
    pub fn with_capacity(rows: usize) -> Self {
        let s = || StringBuilder::with_capacity(rows, rows * 16);
        let names = MapFieldNames {
            entry: "entries".into(),
            key: "keys".into(),
            value: "values".into(),
        };
        EventBatchBuilder {
            event_id: s(),
            user_id: s(),
            kind: s(),
            item_id: s(),
            category: s(),
            price: Float64Builder::with_capacity(rows),
            quantity: UInt32Builder::with_capacity(rows),
            rating: Float64Builder::with_capacity(rows),
            query: StringBuilder::new(),
            ts: TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"),
            session_id: s(),
            props: MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new()),
            ingest_ts: TimestampMillisecondBuilder::with_capacity(rows).with_timezone("UTC"),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            len: 0,
        }
    }

    /// Events appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing was appended since the last [`finish`](Self::finish).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one event with its stamp.
    pub fn append(&mut self, e: &Event<'_>, stamp: Stamp) {
        self.event_id.append_value(&e.event_id);
        self.user_id.append_value(&e.user_id);
        self.kind.append_value(e.kind.as_str());
        self.item_id.append_option(e.item_id.as_deref());
        self.category.append_option(e.category.as_deref());
        self.price.append_option(e.price);
        self.quantity.append_value(e.quantity);
        self.rating.append_option(e.rating);
        self.query.append_option(e.query.as_deref());
        self.ts.append_value(e.ts);
        self.session_id.append_option(e.session_id.as_deref());
        match &e.props {
            Some(props) => {
                for (k, v) in props {
                    self.props.keys().append_value(k);
                    self.props.values().append_value(v);
                }
                // Cannot fail: keys and values were appended in pairs.
                let _ = self.props.append(true);
            }
            None => {
                let _ = self.props.append(false);
            }
        }
        self.ingest_ts.append_value(stamp.ingest_ts);
        self.partition.append_option(stamp.partition);
        self.offset.append_option(stamp.offset);
        self.len += 1;
    }

    /// Finishes the appended events as one batch and resets the builder.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.item_id.finish()),
            Arc::new(self.category.finish()),
            Arc::new(self.price.finish()),
            Arc::new(self.quantity.finish()),
            Arc::new(self.rating.finish()),
            Arc::new(self.query.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.session_id.finish()),
            Arc::new(self.props.finish()),
            Arc::new(self.ingest_ts.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
        ];
        self.len = 0;
        Ok(RecordBatch::try_new(event_schema(), columns)?)
    }
}

/// Reads events and their stamps back out of a batch of [`event_schema`].
pub fn events_from_batch(batch: &RecordBatch) -> Result<Vec<(Event<'static>, Stamp)>> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::Input(format!("event batch has no column `{name}`")))
    };
    let strings = |name: &str| -> Result<Vec<Option<String>>> {
        let a = col(name)?;
        let a = a
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::Input(format!("column `{name}` is not Utf8")))?;
        Ok(a.iter().map(|v| v.map(str::to_string)).collect())
    };
    let event_id = strings("event_id")?;
    let user_id = strings("user_id")?;
    let kind = strings("kind")?;
    let item_id = strings("item_id")?;
    let category = strings("category")?;
    let query = strings("query")?;
    let session_id = strings("session_id")?;
    let price = col("price")?.as_primitive::<Float64Type>().clone();
    let rating = col("rating")?.as_primitive::<Float64Type>().clone();
    let quantity = col("quantity")?.as_primitive::<UInt32Type>().clone();
    let ts = col("ts")?
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let ingest_ts = col("ingest_ts")?
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let partition = col("partition")?.as_primitive::<Int32Type>().clone();
    let offset = col("offset")?.as_primitive::<Int64Type>().clone();
    let props = col("props")?.as_map().clone();

    let opt = |a: &dyn Array, i: usize| a.is_valid(i);
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let k = kind[i].as_deref().unwrap_or_default();
        let kind =
            Kind::parse(k).ok_or_else(|| Error::Input(format!("unknown kind `{k}` in row {i}")))?;
        let props = if props.is_valid(i) {
            let entries = props.value(i);
            let keys = entries.column(0).as_string::<i32>();
            let values = entries.column(1).as_string::<i32>();
            let mut m = BTreeMap::new();
            for j in 0..entries.len() {
                m.insert(
                    Cow::Owned(keys.value(j).to_string()),
                    Cow::Owned(values.value(j).to_string()),
                );
            }
            Some(m)
        } else {
            None
        };
        let event = Event {
            event_id: Cow::Owned(event_id[i].clone().unwrap_or_default()),
            user_id: Cow::Owned(user_id[i].clone().unwrap_or_default()),
            kind,
            item_id: item_id[i].clone().map(Cow::Owned),
            category: category[i].clone().map(Cow::Owned),
            price: opt(&price, i).then(|| price.value(i)),
            quantity: quantity.value(i),
            rating: opt(&rating, i).then(|| rating.value(i)),
            query: query[i].clone().map(Cow::Owned),
            ts: ts.value(i),
            session_id: session_id[i].clone().map(Cow::Owned),
            props,
        };
        let stamp = Stamp {
            ingest_ts: ingest_ts.value(i),
            partition: opt(&partition, i).then(|| partition.value(i)),
            offset: opt(&offset, i).then(|| offset.value(i)),
        };
        out.push((event, stamp));
    }
    Ok(out)
}
