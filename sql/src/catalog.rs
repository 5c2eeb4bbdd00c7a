//! The analyst catalog: every event and a snapshot's views, as tables of one DataFusion session.
//!
//! | table | what |
//! |---|---|
//! | `events` | every event ingested so far, one per user and `event_id`, less what erasures removed and the rows set aside |
//! | `events_all` | every stored row, duplicates and erased users' rows included, with the `date` (ingest date) partition |
//! | `erasures` | each erased user and the time of their latest erasure (`erased_ms`) |
//! | `profiles`, `affinity`, `items`, `similar_items`, `segments` | the snapshot's views, typed for analysts ([`typed_column`]) |
//! | `raw.profiles`, `raw.items`, `raw.similar_items`, `raw.segments` | the same files as the engine wrote them (epoch-ms times, money in micros, log-space scores) |
//! | `live_profiles` | what the API answers now per user, from the online store (when one is given: [`Catalog::with_live`]) |
//! | `snapshots` | every complete snapshot: id, cutoff, creation time, events, model metrics |
//! | `profiles_at('ID')`, `affinity_at`, `items_at`, `similar_items_at`, `segments_at` | the views of another complete snapshot |
//!
//! The snapshot is the newest complete one in the lake unless one is named by id. A long-lived
//! catalog (`tandem sql serve`) follows the lake with [`Catalog::refresh`].

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::TimeUnit;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{MemorySchemaProvider, TableFunctionImpl, TableProvider};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, cast};
use datafusion::prelude::{
    DataFrame, SessionContext, col, exp, get_field, lit, to_timestamp_millis,
};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use tandem_common::features::{DECAY_REF_MS, DECAY_TAU_MS};
use tandem_common::lake::{Lake, snapshot_file};
use tandem_common::store::OnlineStore;
use tandem_models::manifest::{Manifest, ModelsEntry};

use crate::context::{LAKE_URL, LakeContext, replace_table};
use crate::guard;
use crate::live::LiveProfiles;
use crate::snapshots::complete;

use crate::{Error, Result};

/// A snapshot's tables for analysts, with typed columns ([`typed_column`]); `affinity` is
/// `profiles`' interest list, one row per (user, category).
pub const SNAPSHOT_TABLES: [&str; 5] =
    ["profiles", "affinity", "items", "similar_items", "segments"];

/// A snapshot's files, as the engine wrote them: the schema `raw` holds them.
pub const RAW_TABLES: [&str; 4] = ["profiles", "items", "similar_items", "segments"];

/// One snapshot's tables.
struct Views {
    /// By name of [`SNAPSHOT_TABLES`].
    typed: BTreeMap<&'static str, Arc<dyn TableProvider>>,
    /// By name of [`RAW_TABLES`].
    raw: BTreeMap<&'static str, Arc<dyn TableProvider>>,
}

/// A session with the catalog's tables.
pub struct Catalog {
    /// The DataFusion session.
    pub ctx: SessionContext,
    /// The snapshot whose views are the tables, if there is one.
    pub snapshot: Option<String>,
    /// The snapshot asked for by id; `None` follows the newest.
    pinned: Option<String>,
    lake: Lake,
    /// Every complete snapshot's tables, by id.
    as_of: BTreeMap<String, Arc<Views>>,
}

impl Catalog {
    /// The catalog of `lake`, with the views of `snapshot` (default: the newest complete one).
    pub async fn open(lake: &Lake, snapshot: Option<&str>) -> Result<Catalog> {
        let lc = LakeContext::new(lake).await?;
        let catalog = lc
            .ctx
            .catalog("datafusion")
            .ok_or_else(|| Error::Internal("the session has no catalog `datafusion`".into()))?;
        catalog.register_schema("raw", Arc::new(MemorySchemaProvider::new()))?;
        let mut catalog = Catalog {
            ctx: lc.ctx.clone(),
            snapshot: None,
            pinned: snapshot.map(str::to_string),
            lake: lake.clone(),
            as_of: BTreeMap::new(),
        };
        catalog.refresh().await?;
        Ok(catalog)
    }

    /// Brings the tables up to the lake: `events` over every event ingested so far (a cutoff a
    /// day ahead of now), `snapshots`, the `*_at` functions, and the views of the newest
    /// complete snapshot (or of the one asked for). The tables are replaced in place: every
    /// session over this catalog sees the new ones at its next query.
    pub async fn refresh(&mut self) -> Result<()> {
        let lc = LakeContext::over(self.ctx.clone(), &self.lake)
            .await?
            .with_cutoff(tandem_common::event::now_ms() + 86_400_000)
            .await?;
        let ctx = lc.ctx;
        let manifests = complete(&self.lake).await?;
        replace_table(&ctx, "snapshots", Arc::new(snapshots_table(&manifests)?))?;
        let chosen = match &self.pinned {
            Some(id) => Some(known(&manifests, id)?.to_string()),
            None => manifests.last().map(|m| m.snapshot.clone()),
        };
        // Every complete snapshot's tables: the new ones opened (a footer read each), the
        // deleted ones dropped.
        let mut as_of = BTreeMap::new();
        for m in &manifests {
            let views = match self.as_of.remove(&m.snapshot) {
                Some(v) => v,
                None => Arc::new(snapshot_views(&ctx, &self.lake, m).await?),
            };
            as_of.insert(m.snapshot.clone(), views);
        }
        self.as_of = as_of;
        if chosen != self.snapshot {
            if let Some(views) = chosen.as_ref().and_then(|id| self.as_of.get(id)) {
                for (name, t) in &views.typed {
                    replace_table(&ctx, name, t.clone())?;
                }
                for (name, t) in &views.raw {
                    replace_table(&ctx, &format!("raw.{name}"), t.clone())?;
                }
            }
            self.snapshot = chosen;
        }
        for table in SNAPSHOT_TABLES {
            let by_id = self
                .as_of
                .iter()
                .map(|(id, v)| (id.clone(), v.typed[table].clone()))
                .collect();
            ctx.register_udtf(&format!("{table}_at"), Arc::new(AsOf { table, by_id }));
        }
        Ok(())
    }

    /// Adds `live_profiles` over `store` (see [`crate::live`]).
    pub fn with_live(self, store: Arc<dyn OnlineStore>, scan_limit: usize) -> Result<Catalog> {
        let live = LiveProfiles::new(store, self.ctx.clone(), scan_limit);
        replace_table(&self.ctx, "live_profiles", Arc::new(live))?;
        Ok(self)
    }

    /// Parses `sql` into its statements (as many as it holds, split by the parser, so a `;`
    /// inside a string or a comment is not an end).
    pub fn parse(&self, sql: &str) -> Result<Vec<DfStatement>> {
        let dialect = self.ctx.copied_config().options().sql_parser.dialect;
        let dialect = datafusion::sql::sqlparser::dialect::dialect_from_str(dialect)
            .ok_or_else(|| Error::Internal(format!("SQL dialect `{dialect}`")))?;
        Ok(DFParser::parse_sql_with_dialect(sql, dialect.as_ref())?.into())
    }

    /// Plans one statement, read-only ([`crate::guard`]), as a DataFrame to collect or stream.
    pub async fn plan(&self, statement: DfStatement) -> Result<DataFrame> {
        match &statement {
            DfStatement::Statement(s) => guard::check_statement(s)?,
            DfStatement::Explain(e) => {
                if let DfStatement::Statement(s) = e.statement.as_ref() {
                    guard::check_statement(s)?
                }
            }
            DfStatement::CreateExternalTable(_) => {
                return Err(Error::User(
                    "read-only: CREATE EXTERNAL TABLE is refused (analyst SQL reads the lake's \
                     tables only)"
                        .into(),
                ));
            }
            DfStatement::CopyTo(_) => {
                return Err(Error::User(
                    "read-only: COPY is refused (write results with `tandem sql --format csv|json|\
                     parquet --output FILE`)"
                        .into(),
                ));
            }
            DfStatement::Reset(_) => {}
        }
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        guard::check_plan(&plan)?;
        Ok(self.ctx.execute_logical_plan(plan).await?)
    }

    /// Runs one statement (read-only) and collects its result.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        let mut statements = self.parse(sql)?;
        if statements.len() != 1 {
            return Err(Error::User(format!(
                "expected one statement, got {}",
                statements.len()
            )));
        }
        Ok(self.plan(statements.remove(0)).await?.collect().await?)
    }
}

fn known<'a>(manifests: &'a [Manifest], id: &str) -> Result<&'a str> {
    match manifests.iter().find(|m| m.snapshot == id) {
        Some(m) => Ok(&m.snapshot),
        None => {
            let known: Vec<&str> = manifests.iter().map(|m| m.snapshot.as_str()).collect();
            Err(Error::User(format!(
                "no complete snapshot `{id}` in the lake; there are: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )))
        }
    }
}

/// One view of snapshot `id` as a table (its Parquet file in the lake).
async fn snapshot_table(
    ctx: &SessionContext,
    lake: &Lake,
    id: &str,
    table: &str,
) -> Result<Arc<dyn TableProvider>> {
    let url = ListingTableUrl::parse(format!(
        "{LAKE_URL}/{}",
        lake.path(&snapshot_file(id, &format!("{table}.parquet")))
    ))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await?;
    Ok(Arc::new(ListingTable::try_new(config)?))
}

/// The tables of snapshot `m`: its files (raw), and the analysts' views of them.
async fn snapshot_views(ctx: &SessionContext, lake: &Lake, m: &Manifest) -> Result<Views> {
    let mut raw = BTreeMap::new();
    for t in RAW_TABLES {
        raw.insert(t, snapshot_table(ctx, lake, &m.snapshot, t).await?);
    }
    // Log-space scores read at the cutoff: exp(score − (cutoff − R) / τ), as the API reads
    // them at the time of a request (features::decayed_at).
    let shift = (m.cutoff_ms - DECAY_REF_MS) as f64 / DECAY_TAU_MS;
    let mut typed = BTreeMap::new();
    for t in RAW_TABLES {
        let df = ctx.read_table(raw[t].clone())?;
        let columns: Vec<Expr> = raw[t]
            .schema()
            .fields()
            .iter()
            .filter_map(|f| typed_column(f, shift))
            .collect();
        typed.insert(t, df.select(columns)?.into_view());
    }
    let affinity = ctx
        .read_table(raw["profiles"].clone())?
        .select(vec![col("user_id"), col("affinity")])?
        .unnest_columns(&["affinity"])?
        .select(vec![
            col("user_id"),
            get_field(col("affinity"), "category").alias("category"),
            exp(get_field(col("affinity"), "score") - lit(shift)).alias("score"),
        ])?;
    typed.insert("affinity", affinity.into_view());
    Ok(Views { typed, raw })
}

/// A raw snapshot column as analysts read it:
/// - `*_ts` (epoch ms) as a `TIMESTAMP` (UTC) of the same name;
/// - `*_micros` (money in millionths) as a `DECIMAL(20,6)` without the suffix (`spend`,
///   `revenue`), exact;
/// - `popularity` (log-space) decayed to the snapshot's cutoff;
/// - `affinity` (a log-space list) left to the `affinity` table.
///
/// The rest as stored. `raw.<table>` keeps every column as the engine wrote it.
fn typed_column(f: &Field, shift: f64) -> Option<Expr> {
    let name = f.name();
    let c = Expr::Column(Column::new_unqualified(name));
    Some(match f.data_type() {
        DataType::Int64 if name.ends_with("_ts") => to_timestamp_millis(vec![c]).alias(name),
        DataType::Int64 if name.ends_with("_micros") => {
            // micros / 10⁶ in decimals: exact (the quotient has six decimals at most).
            let micros = cast(c, DataType::Decimal128(20, 0));
            let million = lit(ScalarValue::Decimal128(Some(1_000_000), 7, 0));
            cast(micros / million, DataType::Decimal128(20, 6))
                .alias(name.trim_end_matches("_micros"))
        }
        DataType::Float64 if name == "popularity" => exp(c - lit(shift)).alias(name),
        DataType::List(_) if name == "affinity" => return None,
        _ => c,
    })
}

/// `profiles_at('ID')` and its siblings: the tables of another complete snapshot.
struct AsOf {
    table: &'static str,
    /// The table of each complete snapshot, by id.
    by_id: BTreeMap<String, Arc<dyn TableProvider>>,
}

impl std::fmt::Debug for AsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_at", self.table)
    }
}

impl TableFunctionImpl for AsOf {
    fn call(&self, args: &[Expr]) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let ids = || {
            if self.by_id.is_empty() {
                "none".to_string()
            } else {
                self.by_id.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let id = match args {
            [Expr::Literal(ScalarValue::Utf8(Some(id)), _)] => id,
            _ => {
                return Err(DataFusionError::Plan(format!(
                    "{t}_at takes one snapshot id as a string, e.g. {t}_at('{e}'); there are: {}",
                    ids(),
                    t = self.table,
                    e = self
                        .by_id
                        .keys()
                        .last()
                        .map_or("20261205T0200Z", String::as_str),
                )));
            }
        };
        self.by_id.get(id).cloned().ok_or_else(|| {
            DataFusionError::Plan(format!(
                "no complete snapshot `{id}` in the lake; there are: {}",
                ids()
            ))
        })
    }
}

fn snapshots_table(manifests: &[Manifest]) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("snapshot", DataType::Utf8, false),
        Field::new(
            "cutoff",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
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
            Arc::new(TimestampMillisecondArray::from_iter_values(
                manifests.iter().map(|m| m.cutoff_ms),
            )),
            // RFC 3339 text in the manifest; a value that does not parse is null.
            datafusion::arrow::compute::cast_with_options(
                &StringArray::from_iter_values(manifests.iter().map(|m| &m.created_at)),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
                &datafusion::arrow::compute::CastOptions {
                    safe: true,
                    ..Default::default()
                },
            )?,
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
