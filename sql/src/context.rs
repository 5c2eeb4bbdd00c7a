//! A DataFusion session over the lake.
//!
//! The lake's object store (whatever its backend) is registered under one URL, `tandem://lake/`,
//! and the event files become the listing table `events_all`, partitioned by `date` (the ingest
//! date, a string). [`LakeContext::with_cutoff`] adds the view `events`: exactly the events with
//! `ingest_ts < cutoff`, one per user and `event_id` (the first ingested), with date folders
//! after the cutoff's date pruned unread, without rows that validation refuses today (set
//! aside and counted: [`LakeContext::set_aside`]), and without the events that erasures removed: the lake's
//! tombstones become the table `erasures` (`user_id`, `erased_ms`: the latest per user), and an
//! event of an erased user counts only if it was ingested after the erasure. Erasure comes
//! before deduplication, as in the speed layer, which forgets an erased user's recent ids.

use std::sync::Arc;

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMillisecondType};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};
use tandem_common::event::{MAX_PRICE, MAX_QUANTITY, date_of_ms};
use tandem_common::lake::{EVENTS_DIR, Lake};
use tandem_common::schema::event_schema;

use crate::error::{Error, Result};

/// The object-store URL the lake is registered under.
pub const LAKE_URL: &str = "tandem://lake";

/// A DataFusion session with the lake's tables.
pub struct LakeContext {
    /// The session; register more tables or run SQL on it.
    pub ctx: SessionContext,
    /// The cutoff of the `events` view, epoch ms, if set.
    pub cutoff_ms: Option<i64>,
    /// Users erased (rows of the `erasures` table).
    pub erased_users: usize,
}

impl LakeContext {
    /// A session over `lake` with the table `events_all` (every event file).
    pub async fn new(lake: &Lake) -> Result<LakeContext> {
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        ctx.register_udaf(crate::log_sum_exp::udaf());
        let url = ObjectStoreUrl::parse(LAKE_URL)?;
        ctx.register_object_store(url.as_ref(), lake.store().clone());
        LakeContext::over(ctx, lake).await
    }

    /// The lake's tables registered (again) on `ctx`, a session made by [`LakeContext::new`]:
    /// `events_all`, and `erasures` as the lake holds it now (a long-lived session refreshes
    /// with this).
    pub async fn over(ctx: SessionContext, lake: &Lake) -> Result<LakeContext> {
        let root = lake.path(EVENTS_DIR);
        let table_url = ListingTableUrl::parse(format!("{LAKE_URL}/{root}/"))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(event_schema());
        replace_table(&ctx, "events_all", Arc::new(ListingTable::try_new(config)?))?;
        let erasures = lake.erasures().await?;
        let table = erasures_table(&erasures)?;
        replace_table(&ctx, "erasures", Arc::new(table))?;
        Ok(LakeContext {
            ctx,
            cutoff_ms: None,
            erased_users: erasures.len(),
        })
    }

    /// `FROM … WHERE …` of the stored rows ingested before `cutoff_ms` (as `a`), less those
    /// erasures removed and those set aside ([`valid_row`]); the join is left out when nobody
    /// was erased.
    fn kept_rows(&self, cutoff_ms: i64) -> String {
        let before = format!("{} AND {}", before(cutoff_ms), valid_row());
        if self.erased_users == 0 {
            return format!("FROM events_all a WHERE {before}");
        }
        format!(
            "FROM events_all a LEFT JOIN erasures x ON a.user_id = x.user_id \
             WHERE {before} AND (x.user_id IS NULL OR a.ingest_ts > to_timestamp_millis(x.erased_ms))"
        )
    }

    /// Stored rows ingested before the cutoff that validation would refuse today
    /// ([`valid_row`]): they are left out of `events`, and the batch's summary counts them.
    pub async fn set_aside(&self) -> Result<u64> {
        self.set_aside_since(i64::MIN).await
    }

    /// [`Self::set_aside`], of the rows ingested at or after `from_ms` only.
    pub async fn set_aside_since(&self, from_ms: i64) -> Result<u64> {
        let cutoff = self
            .cutoff_ms
            .ok_or_else(|| Error::Internal("set_aside needs a LakeContext with a cutoff".into()))?;
        let sql = format!(
            "SELECT count(*) FROM events_all a WHERE {} AND {} AND NOT ({})",
            before(cutoff),
            since(from_ms),
            valid_row()
        );
        let batches = self.ctx.sql(&sql).await?.collect().await?;
        let n = batches
            .first()
            .and_then(|b| b.column(0).as_primitive_opt::<Int64Type>())
            .map_or(0, |c| c.value(0));
        Ok(n as u64)
    }

    /// Adds the view `events`: events ingested before `cutoff_ms`, one per user and
    /// `event_id` (an id is the client's, unique per user only: the speed layer dedupes per user
    /// too).
    pub async fn with_cutoff(mut self, cutoff_ms: i64) -> Result<LakeContext> {
        let sql = format!(
            "CREATE OR REPLACE VIEW events AS \
             SELECT event_id, user_id, kind, item_id, category, price, quantity, rating, query, ts, \
                    session_id, props, ingest_ts, \"partition\", \"offset\" \
             FROM (SELECT a.*, row_number() OVER (PARTITION BY a.user_id, a.event_id \
                       ORDER BY a.ingest_ts, a.\"partition\" NULLS FIRST, a.\"offset\" NULLS FIRST) AS copy \
                   {rows}) \
             WHERE copy = 1",
            rows = self.kept_rows(cutoff_ms),
        );
        self.ctx.sql(&sql).await?.collect().await?;
        self.cutoff_ms = Some(cutoff_ms);
        Ok(self)
    }

    /// Computes the `events` view once, keeps the columns the views and the models read in
    /// memory ([`MATERIALISED_COLUMNS`]), and makes `events` that table: the deduplication then
    /// runs once per batch run, not once per view. Returns the batches.
    ///
    /// The rows are those of the SQL view [`with_cutoff`](Self::with_cutoff) defines, found by
    /// a hash of the (user, event) ids instead of a sort: one scan of the files before the
    /// cutoff, then the first copy of each (`user_id`, `event_id`) by (`ingest_ts`,
    /// `partition`, `offset`) is kept.
    pub async fn materialise(&self) -> Result<Vec<RecordBatch>> {
        let cutoff = self.cutoff_ms.ok_or_else(|| {
            Error::Internal("materialise needs a LakeContext with a cutoff".into())
        })?;
        let sql = format!(
            "SELECT {cols}, a.event_id, a.ingest_ts, a.\"partition\", a.\"offset\" {rows}",
            cols = MATERIALISED_COLUMNS.map(|c| format!("a.{c}")).join(", "),
            rows = self.kept_rows(cutoff),
        );
        let scanned = self.ctx.sql(&sql).await?.collect().await?;
        let keep = first_copies(&scanned)?;
        self.register_events(scanned, keep)
    }

    /// The events an incremental batch run adds to the snapshot at `from_ms`: those of the view
    /// `events` at the cutoff that the view at `from_ms` does not hold — ingested in
    /// `[from_ms, cutoff)`, first copies among themselves, and whose (`user_id`, `event_id`) no
    /// kept row ingested before `from_ms` holds already (a duplicate sent again later). Only the
    /// date folders from `from_ms`'s date on are read whole; the earlier ones are read for the
    /// columns of the ids and of validation, semi-joined with the new ids. Makes `events` these
    /// rows and returns them, as [`Self::materialise`] does.
    ///
    /// Erasures at or after `from_ms` are not handled here (they remove rows the snapshot at
    /// `from_ms` holds): the caller recomputes fully then.
    pub async fn materialise_since(&self, from_ms: i64) -> Result<Vec<RecordBatch>> {
        let cutoff = self.cutoff_ms.ok_or_else(|| {
            Error::Internal("materialise_since needs a LakeContext with a cutoff".into())
        })?;
        let sql = format!(
            "SELECT {cols}, a.event_id, a.ingest_ts, a.\"partition\", a.\"offset\" {rows} AND {since}",
            cols = MATERIALISED_COLUMNS.map(|c| format!("a.{c}")).join(", "),
            rows = self.kept_rows(cutoff),
            since = since(from_ms),
        );
        let scanned = self.ctx.sql(&sql).await?.collect().await?;
        let mut keep = first_copies(&scanned)?;
        // The new rows' ids (as strings, once per batch), to find those kept before `from_ms`.
        let id_cols = scanned
            .iter()
            .map(|b| {
                let n = b.num_columns();
                Ok((
                    cast(b.column(0), &DataType::Utf8)?
                        .as_string::<i32>()
                        .clone(),
                    cast(b.column(n - 4), &DataType::Utf8)?
                        .as_string::<i32>()
                        .clone(),
                ))
            })
            .collect::<Result<Vec<(StringArray, StringArray)>>>()?;
        let kept =
            |mask: &Option<BooleanArray>, row: usize| mask.as_ref().is_none_or(|m| m.value(row));
        let (mut users, mut ids) = (Vec::new(), Vec::new());
        for ((u, e), mask) in id_cols.iter().zip(&keep) {
            for row in (0..u.len()).filter(|&r| kept(mask, r)) {
                users.push(u.value(row));
                ids.push(e.value(row));
            }
        }
        if !users.is_empty() && from_ms > i64::MIN {
            use datafusion::arrow::datatypes::{Field, Schema};
            let schema = Arc::new(Schema::new(vec![
                Field::new("user_id", DataType::Utf8, false),
                Field::new("event_id", DataType::Utf8, false),
            ]));
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(users)),
                    Arc::new(StringArray::from(ids)),
                ],
            )?;
            replace_table(
                &self.ctx,
                "new_ids",
                Arc::new(MemTable::try_new(schema, vec![vec![batch]])?),
            )?;
            // The new ids are the join's small side: the older rows stream past them.
            let sql = format!(
                "SELECT n.user_id, n.event_id FROM new_ids n LEFT SEMI JOIN \
                 (SELECT a.user_id, a.event_id {}) k \
                 ON n.user_id = k.user_id AND n.event_id = k.event_id",
                self.kept_rows(from_ms)
            );
            let seen = self.ctx.sql(&sql).await?.collect().await;
            self.ctx.deregister_table("new_ids")?;
            let seen = seen?
                .iter()
                .map(|b| {
                    Ok((
                        cast(b.column(0), &DataType::Utf8)?
                            .as_string::<i32>()
                            .clone(),
                        cast(b.column(1), &DataType::Utf8)?
                            .as_string::<i32>()
                            .clone(),
                    ))
                })
                .collect::<Result<Vec<(StringArray, StringArray)>>>()?;
            let known: std::collections::HashSet<(&str, &str)> = seen
                .iter()
                .flat_map(|(u, e)| (0..u.len()).map(move |r| (u.value(r), e.value(r))))
                .collect();
            if !known.is_empty() {
                for ((u, e), mask) in id_cols.iter().zip(keep.iter_mut()) {
                    let bits: Vec<bool> = (0..u.len())
                        .map(|r| kept(mask, r) && !known.contains(&(u.value(r), e.value(r))))
                        .collect();
                    *mask = Some(BooleanArray::from(bits));
                }
            }
        }
        self.register_events(scanned, keep)
    }

    /// Makes `events` the rows of `scanned` that `keep` keeps (all of a batch with `None`),
    /// projected to [`MATERIALISED_COLUMNS`]; returns them.
    fn register_events(
        &self,
        scanned: Vec<RecordBatch>,
        keep: Vec<Option<BooleanArray>>,
    ) -> Result<Vec<RecordBatch>> {
        let kept: Vec<usize> = (0..MATERIALISED_COLUMNS.len()).collect();
        let mut batches = Vec::with_capacity(scanned.len());
        for (b, keep) in scanned.into_iter().zip(keep) {
            let b = b.project(&kept)?;
            batches.push(match keep {
                Some(mask) => filter_record_batch(&b, &mask)?,
                None => b,
            });
        }
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(
                event_schema().project(
                    &MATERIALISED_COLUMNS
                        .iter()
                        .map(|c| event_schema().index_of(c))
                        .collect::<std::result::Result<Vec<_>, _>>()?,
                )?,
            ),
        };
        // One partition per target partition, so that the views scan it in parallel.
        let n = self.ctx.copied_config().target_partitions().max(1);
        let mut parts = vec![Vec::new(); n];
        for (i, b) in batches.iter().enumerate() {
            parts[i % n].push(b.clone());
        }
        let table = MemTable::try_new(schema, parts)?;
        replace_table(&self.ctx, "events", Arc::new(table))?;
        Ok(batches)
    }
}

/// Registers `table` as `name` on `ctx`, in place of the table of that name if there is one.
pub fn replace_table(
    ctx: &SessionContext,
    name: &str,
    table: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<()> {
    ctx.deregister_table(name)?;
    ctx.register_table(name, table)?;
    Ok(())
}

/// The rows ingested before `cutoff_ms`, by the date folders (pruned unread) and `ingest_ts`.
fn before(cutoff_ms: i64) -> String {
    let date = date_of_ms(cutoff_ms);
    format!("a.date <= '{date}' AND a.ingest_ts < to_timestamp_millis({cutoff_ms})")
}

/// The rows ingested at or after `from_ms`, by the date folders (pruned unread) and `ingest_ts`
/// (`TRUE` for `i64::MIN`).
fn since(from_ms: i64) -> String {
    if from_ms == i64::MIN {
        return "TRUE".into();
    }
    let date = date_of_ms(from_ms);
    format!("a.date >= '{date}' AND a.ingest_ts >= to_timestamp_millis({from_ms})")
}

/// Rows an event's validation accepts today. Events accepted before the price, quantity and id
/// rules existed (a price of 1e300 made every later run fail), or files written by other
/// tools, may break them: such rows are set aside — left out of every view, counted — so
/// that one bad row does not stop the batch. The speed layer refuses the same records when
/// it reads them from the bus.
fn valid_row() -> String {
    format!(
        "(a.price IS NULL OR (a.price >= 0 AND a.price <= {MAX_PRICE:.1})) \
         AND a.quantity BETWEEN 1 AND {MAX_QUANTITY} \
         AND NOT regexp_like(a.user_id, '{KEY_UNSAFE}') \
         AND (a.item_id IS NULL OR NOT regexp_like(a.item_id, '{KEY_UNSAFE}'))"
    )
}

/// The characters an id naming Redis keys may not hold (`event::key_id_problem`).
const KEY_UNSAFE: &str = r"[{}\p{Cc}]";

/// The `erasures` table: each erased user and their latest erasure (epoch ms).
fn erasures_table(erasures: &std::collections::BTreeMap<String, i64>) -> Result<MemTable> {
    let batch = erasures_batch(erasures)?;
    Ok(MemTable::try_new(batch.schema(), vec![vec![batch]])?)
}

/// The rows of the `erasures` table (`user_id`, `erased_ms`), for an engine that reads them
/// from a file rather than memory.
pub fn erasures_batch(erasures: &std::collections::BTreeMap<String, i64>) -> Result<RecordBatch> {
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, false),
        Field::new("erased_ms", DataType::Int64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(erasures.keys())),
            Arc::new(Int64Array::from_iter_values(erasures.values().copied())),
        ],
    )?)
}

/// The columns of `events` that [`LakeContext::materialise`] keeps: those the views and the
/// models read.
pub const MATERIALISED_COLUMNS: [&str; 8] = [
    "user_id",
    "kind",
    "item_id",
    "category",
    "price",
    "quantity",
    "ts",
    "session_id",
];

/// Per batch, which rows are the first copy of their (`user_id`, `event_id`) by (`ingest_ts`,
/// `partition` nulls first, `offset` nulls first); `None` for a batch whose rows all are. Ties
/// keep the copy met first. The batches start with `user_id` and end with the columns
/// `event_id`, `ingest_ts`, `partition`, `offset`.
fn first_copies(batches: &[RecordBatch]) -> Result<Vec<Option<BooleanArray>>> {
    struct Key<'a> {
        users: StringArray,
        ids: StringArray,
        ingest: &'a [i64],
        partition: &'a Int32Array,
        offset: &'a Int64Array,
    }
    let mut keys = Vec::with_capacity(batches.len());
    for b in batches {
        let n = b.num_columns();
        let col = |i: usize, name: &str| -> Result<&ArrayRef> {
            let c = b.column(i);
            if b.schema().field(i).name() != name {
                return Err(Error::Internal(format!("expected column `{name}` at {i}")));
            }
            Ok(c)
        };
        let users = cast(col(0, "user_id")?, &DataType::Utf8)?;
        let ids = cast(col(n - 4, "event_id")?, &DataType::Utf8)?;
        let ingest = col(n - 3, "ingest_ts")?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::Internal("ingest_ts is not a timestamp".into()))?;
        let partition = col(n - 2, "partition")?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| Error::Internal("partition is not an Int32".into()))?;
        let offset = col(n - 1, "offset")?
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(|| Error::Internal("offset is not an Int64".into()))?;
        keys.push(Key {
            users: users.as_string::<i32>().clone(),
            ids: ids.as_string::<i32>().clone(),
            ingest: ingest.values(),
            partition,
            offset,
        });
    }
    let order = |k: &Key<'_>, row: usize| {
        (
            k.ingest[row],
            k.partition.is_valid(row).then(|| k.partition.value(row)),
            k.offset.is_valid(row).then(|| k.offset.value(row)),
        )
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut first: HashMap<(&str, &str), (u32, u32), foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(rows, Default::default());
    let mut dropped: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
    for (bi, k) in keys.iter().enumerate() {
        for row in 0..k.ids.len() {
            let id = (k.users.value(row), k.ids.value(row));
            match first.entry(id) {
                Entry::Vacant(v) => {
                    v.insert((bi as u32, row as u32));
                }
                Entry::Occupied(mut o) => {
                    let (b0, r0) = *o.get();
                    if order(k, row) < order(&keys[b0 as usize], r0 as usize) {
                        dropped[b0 as usize].push(r0);
                        o.insert((bi as u32, row as u32));
                    } else {
                        dropped[bi].push(row as u32);
                    }
                }
            }
        }
    }
    Ok(dropped
        .into_iter()
        .zip(batches)
        .map(|(rows, b)| {
            (!rows.is_empty()).then(|| {
                let mut mask = vec![true; b.num_rows()];
                for r in rows {
                    mask[r as usize] = false;
                }
                BooleanArray::from(mask)
            })
        })
        .collect())
}
