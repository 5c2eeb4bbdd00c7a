//! The analyst catalog: every event and a snapshot's views, as tables of one DataFusion session.
//!
//! | table | what |
//! |---|---|
//! | `events` | every event ingested so far, one per user and `event_id`, less what erasures removed and the rows set aside |
//! | `events_all` | every stored row, duplicates and erased users' rows included, with the `date` (ingest date) partition |
//! | `erasures` | each erased user and the time of their latest erasure (`erased_ms`) |
//! | `profiles`, `items`, `similar_items`, `segments` | the snapshot's views (Parquet in the lake) |
//! | `snapshots` | every complete snapshot: id, cutoff, creation time, events, model metrics |
//!
//! The snapshot is the newest complete one in the lake unless one is named by id.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use tandem_common::lake::{Lake, snapshot_file};
use tandem_models::manifest::{Manifest, ModelsEntry};

use crate::context::{LAKE_URL, LakeContext};
use crate::snapshots::complete;

use crate::{Error, Result};

/// The snapshot views, as tables.
pub const SNAPSHOT_TABLES: [&str; 4] = ["profiles", "items", "similar_items", "segments"];

/// A session with the catalog's tables.
pub struct Catalog {
    /// The DataFusion session.
    pub ctx: SessionContext,
    /// The snapshot whose views are the tables, if there is one.
    pub snapshot: Option<String>,
}

impl Catalog {
    /// The catalog of `lake`, with the views of `snapshot` (default: the newest complete one).
    pub async fn open(lake: &Lake, snapshot: Option<&str>) -> Result<Catalog> {
        // Every event so far: a cutoff a day ahead of now.
        let lc = LakeContext::new(lake)
            .await?
            .with_cutoff(tandem_common::event::now_ms() + 86_400_000)
            .await?;
        let ctx = lc.ctx;
        let manifests = complete(lake).await?;
        ctx.register_table("snapshots", Arc::new(snapshots_table(&manifests)?))?;
        let chosen = match snapshot {
            Some(id) => {
                if !manifests.iter().any(|m| m.snapshot == id) {
                    let known: Vec<&str> = manifests.iter().map(|m| m.snapshot.as_str()).collect();
                    return Err(Error::User(format!(
                        "no complete snapshot `{id}` in the lake; there are: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
                Some(id.to_string())
            }
            None => manifests.last().map(|m| m.snapshot.clone()),
        };
        if let Some(id) = &chosen {
            for table in SNAPSHOT_TABLES {
                let url = ListingTableUrl::parse(format!(
                    "{LAKE_URL}/{}",
                    lake.path(&snapshot_file(id, &format!("{table}.parquet")))
                ))?;
                let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                    .with_file_extension(".parquet");
                let config = ListingTableConfig::new(url)
                    .with_listing_options(options)
                    .infer_schema(&ctx.state())
                    .await?;
                ctx.register_table(table, Arc::new(ListingTable::try_new(config)?))?;
            }
        }
        Ok(Catalog {
            ctx,
            snapshot: chosen,
        })
    }

    /// Runs one statement and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.ctx.sql(sql).await?.collect().await?)
    }
}

fn snapshots_table(manifests: &[Manifest]) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("snapshot", DataType::Utf8, false),
        Field::new("cutoff", DataType::Utf8, false),
        Field::new("created_at", DataType::Utf8, false),
        Field::new("events", DataType::Int64, false),
        Field::new("profiles", DataType::Int64, true),
        Field::new("ranker_hit_rate", DataType::Float64, true),
        Field::new("popularity_hit_rate", DataType::Float64, true),
        Field::new("ranker_ndcg", DataType::Float64, true),
        Field::new("segments", DataType::Int64, true),
        Field::new("manifest", DataType::Utf8, false),
    ]));
    let metric = |f: &dyn Fn(&tandem_models::training::Metrics) -> Option<f64>| -> Float64Array {
        manifests
            .iter()
            .map(|m| match &m.models {
                ModelsEntry::Trained(x) => f(x),
                ModelsEntry::Skipped(_) => None,
            })
            .collect()
    };
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                manifests.iter().map(|m| &m.snapshot),
            )),
            Arc::new(StringArray::from_iter_values(
                manifests.iter().map(|m| &m.cutoff),
            )),
            Arc::new(StringArray::from_iter_values(
                manifests.iter().map(|m| &m.created_at),
            )),
            Arc::new(Int64Array::from_iter_values(
                manifests.iter().map(|m| m.events as i64),
            )),
            Arc::new(Int64Array::from_iter(
                manifests
                    .iter()
                    .map(|m| m.rows.get("profiles").map(|n| *n as i64)),
            )),
            Arc::new(metric(&|x| x.ranker.map(|r| r.hit_rate))),
            Arc::new(metric(&|x| Some(x.popularity.hit_rate))),
            Arc::new(metric(&|x| x.ranker.map(|r| r.ndcg))),
            Arc::new(Int64Array::from_iter(manifests.iter().map(
                |m| match &m.models {
                    ModelsEntry::Trained(x) if x.segments > 0 => Some(x.segments as i64),
                    _ => None,
                },
            ))),
            Arc::new(StringArray::from_iter_values(
                manifests
                    .iter()
                    .map(|m| serde_json::to_string(m).unwrap_or_default()),
            )),
        ],
    )?;
    Ok(MemTable::try_new(schema, vec![vec![batch]])?)
}
