//! A DataFusion session over the lake.
//!
//! The lake's object store (whatever its backend) is registered under one URL, `tandem://lake/`,
//! and the event files become the listing table `events_all`, partitioned by `date` (the ingest
//! date, a string). [`LakeContext::with_cutoff`] adds the view `events`: exactly the events with
//! `ingest_ts < cutoff`, one per `event_id` (the first ingested), with date folders after the
//! cutoff's date pruned unread.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::prelude::{SessionConfig, SessionContext};
use tandem_common::event::date_of_ms;
use tandem_common::lake::{EVENTS_DIR, Lake};
use tandem_common::schema::event_schema;

use crate::error::Result;

/// The object-store URL the lake is registered under.
pub const LAKE_URL: &str = "tandem://lake";

/// A DataFusion session with the lake's tables.
pub struct LakeContext {
    /// The session; register more tables or run SQL on it.
    pub ctx: SessionContext,
    /// The cutoff of the `events` view, epoch ms, if set.
    pub cutoff_ms: Option<i64>,
}

impl LakeContext {
    /// A session over `lake` with the table `events_all` (every event file).
    pub async fn new(lake: &Lake) -> Result<LakeContext> {
        let config = SessionConfig::new()
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        let url = ObjectStoreUrl::parse(LAKE_URL)?;
        ctx.register_object_store(url.as_ref(), lake.store().clone());
        let root = lake.path(EVENTS_DIR);
        let table_url = ListingTableUrl::parse(format!("{LAKE_URL}/{root}/"))?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(event_schema());
        ctx.register_table("events_all", Arc::new(ListingTable::try_new(config)?))?;
        Ok(LakeContext {
            ctx,
            cutoff_ms: None,
        })
    }

    /// Adds the view `events`: events ingested before `cutoff_ms`, deduplicated by `event_id`.
    pub async fn with_cutoff(mut self, cutoff_ms: i64) -> Result<LakeContext> {
        let sql = format!(
            "CREATE OR REPLACE VIEW events AS \
             SELECT event_id, user_id, kind, item_id, category, price, quantity, rating, query, ts, \
                    session_id, props, ingest_ts, \"partition\", \"offset\" \
             FROM (SELECT *, row_number() OVER (PARTITION BY event_id \
                       ORDER BY ingest_ts, \"partition\" NULLS FIRST, \"offset\" NULLS FIRST) AS copy \
                   FROM events_all \
                   WHERE date <= '{date}' AND ingest_ts < to_timestamp_millis({cutoff_ms})) \
             WHERE copy = 1",
            date = date_of_ms(cutoff_ms),
        );
        self.ctx.sql(&sql).await?.collect().await?;
        self.cutoff_ms = Some(cutoff_ms);
        Ok(self)
    }

    /// Computes the `events` view once, keeps the columns the views and the models read in
    /// memory, and makes `events` that table: the deduplication then runs once per batch run,
    /// not once per view. Returns the batches.
    pub async fn materialise(&self) -> Result<Vec<RecordBatch>> {
        let df = self
            .ctx
            .sql(
                "SELECT user_id, kind, item_id, category, price, quantity, ts, session_id FROM events",
            )
            .await?;
        let schema = df.schema().as_arrow().clone();
        let batches = df.collect().await?;
        let table = MemTable::try_new(Arc::new(schema), vec![batches.clone()])?;
        self.ctx.deregister_table("events")?;
        self.ctx.register_table("events", Arc::new(table))?;
        Ok(batches)
    }
}
