//! `live_profiles`: what the API would answer right now for each user — the current snapshot's
//! row merged with the speed layer's epochs since its cutoff, and the snapshot's models applied
//! to the result — read from the online store, so that an analyst can set what was served
//! beside the lake.
//!
//! The store is read one user at a time (a row and the speed state per user), so:
//! - `WHERE user_id = '…'` and `WHERE user_id IN (…)` are pushed down: only those users are
//!   read (users the speed layer knows but the snapshot does not included);
//! - without one, the scan covers the snapshot's users and stops with an error past
//!   `scan_limit` of them, naming the way out.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use futures::{StreamExt, TryStreamExt};
use tandem_common::event::{Kind, key_id_problem};
use tandem_common::features::{COUNT_COLUMNS, Profile};
use tandem_common::store::{OnlineStore, SpeedState, UserRow, snapshot_key, user_key};
use tandem_models::training::Models;
use tandem_models::vectors::user_features;

/// Users read from the store at once.
const CONCURRENCY: usize = 32;

/// The `live_profiles` table.
pub struct LiveProfiles {
    store: Arc<dyn OnlineStore>,
    /// The catalog's session, for the snapshot's user list of a full scan.
    ctx: SessionContext,
    scan_limit: usize,
    schema: SchemaRef,
}

impl std::fmt::Debug for LiveProfiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveProfiles")
            .field("store", &self.store)
            .field("scan_limit", &self.scan_limit)
            .finish()
    }
}

impl LiveProfiles {
    /// The table over `store`; a scan without a user filter reads at most `scan_limit` users.
    pub fn new(store: Arc<dyn OnlineStore>, ctx: SessionContext, scan_limit: usize) -> Self {
        let ts = || DataType::Timestamp(TimeUnit::Millisecond, None);
        let mut fields = vec![Field::new("user_id", DataType::Utf8, false)];
        fields.extend(
            COUNT_COLUMNS
                .iter()
                .map(|c| Field::new(*c, DataType::Int64, false)),
        );
        fields.extend([
            Field::new("events", DataType::Int64, false),
            Field::new("units", DataType::Int64, false),
            Field::new("spend", DataType::Decimal128(20, 6), false),
            Field::new("first_ts", ts(), true),
            Field::new("last_ts", ts(), true),
            Field::new("last_purchase_ts", ts(), true),
            Field::new("segment", DataType::UInt32, true),
            Field::new("propensity", DataType::Float64, true),
            Field::new("snapshot", DataType::Utf8, true),
            Field::new("speed_epochs", DataType::Int64, false),
            Field::new("last_offset", DataType::Int64, true),
        ]);
        LiveProfiles {
            store,
            ctx,
            scan_limit,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

/// The user ids a filter names: `user_id = 'x'`, `user_id IN ('x', …)`, or an OR of those.
fn named_users(e: &Expr) -> Option<BTreeSet<String>> {
    let is_user = |e: &Expr| matches!(e, Expr::Column(c) if c.name == "user_id");
    let text = |e: &Expr| match e {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _)
        | Expr::Literal(ScalarValue::Utf8View(Some(s)), _) => Some(s.clone()),
        _ => None,
    };
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) => {
            let v = if is_user(left) {
                text(right)
            } else if is_user(right) {
                text(left)
            } else {
                None
            }?;
            Some(BTreeSet::from([v]))
        }
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Or,
            right,
        }) => {
            let mut a = named_users(left)?;
            a.extend(named_users(right)?);
            Some(a)
        }
        Expr::InList(l) if !l.negated && is_user(&l.expr) => {
            l.list.iter().map(text).collect::<Option<BTreeSet<_>>>()
        }
        _ => None,
    }
}

fn external(e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Execution(format!("live_profiles: {e}"))
}

#[async_trait]
impl TableProvider for LiveProfiles {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match named_users(f) {
                Some(_) => TableProviderFilterPushDown::Exact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let pointer = self.store.pointer().await.map_err(external)?;
        // The users asked for: the intersection of the pushed-down filters, or the snapshot's.
        let mut named: Option<BTreeSet<String>> = None;
        for f in filters {
            if let Some(users) = named_users(f) {
                named = Some(match named {
                    Some(n) => n.intersection(&users).cloned().collect(),
                    None => users,
                });
            }
        }
        let users: Vec<String> = match named {
            Some(n) => {
                // The ids go into store keys: the API's id rules first.
                for u in &n {
                    if let Some(problem) = key_id_problem(u) {
                        return Err(DataFusionError::Plan(format!(
                            "live_profiles: user_id `{}` {problem}",
                            u.escape_debug()
                        )));
                    }
                }
                n.into_iter().collect()
            }
            None => match &pointer {
                None => Vec::new(),
                Some(p) => self.snapshot_users(&p.snapshot).await?,
            },
        };
        let (snapshot, cutoff) = match &pointer {
            Some(p) => (Some(p.snapshot.as_str()), p.cutoff_ms),
            None => (None, i64::MIN),
        };
        let models = match snapshot {
            Some(id) => match self.store.get(&[snapshot_key(id, "models")]).await {
                Ok(got) => got
                    .into_iter()
                    .next()
                    .flatten()
                    .and_then(|b| Models::from_json(&b).ok()),
                Err(e) => return Err(external(e)),
            },
            None => None,
        };
        let now = tandem_common::event::now_ms();
        let store = &self.store;
        let rows: Vec<Option<Live>> = futures::stream::iter(users)
            .map(|user| async move {
                let row = match snapshot {
                    Some(id) => store
                        .get(&[user_key(&user, id)])
                        .await?
                        .into_iter()
                        .next()
                        .flatten()
                        .map(|b| serde_json::from_slice::<UserRow>(&b))
                        .transpose()
                        .map_err(|e| {
                            tandem_common::Error::Internal(format!("the row of `{user}`: {e}"))
                        })?,
                    None => None,
                };
                let speed = store.speed(&user, cutoff).await?;
                Ok::<_, tandem_common::Error>(Live::merge(user, row, speed, cutoff))
            })
            .buffered(CONCURRENCY)
            .try_collect()
            .await
            .map_err(external)?;
        let rows: Vec<Live> = rows.into_iter().flatten().collect();
        let batch = self.batch(&rows, snapshot, models.as_ref(), now)?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}

/// One user's merged state.
struct Live {
    user: String,
    profile: Profile,
    /// The snapshot row's segment and propensity (what a snapshot without models serves).
    row_scores: (Option<u32>, Option<f64>),
    speed_epochs: usize,
    last_offset: Option<u64>,
}

impl Live {
    /// The snapshot row ⊕ the speed epochs at or after the cutoff, as serving merges them: a
    /// row from before the user's latest erasure is left out; a user with neither is unknown.
    fn merge(user: String, row: Option<UserRow>, speed: SpeedState, cutoff: i64) -> Option<Live> {
        let row = row.filter(|_| speed.erased_ms.is_none_or(|e| cutoff > e));
        if row.is_none() && speed.epochs.is_empty() {
            return None;
        }
        let mut profile = Profile::new();
        let mut row_scores = (None, None);
        if let Some(r) = &row {
            profile.merge(&r.profile);
            row_scores = (r.segment, r.propensity);
        }
        for e in speed.epochs.values() {
            profile.merge(e);
        }
        Some(Live {
            user,
            profile,
            row_scores,
            speed_epochs: speed.epochs.len(),
            last_offset: speed.offset,
        })
    }
}

impl LiveProfiles {
    /// The snapshot's users, at most `scan_limit` of them, else an error.
    async fn snapshot_users(&self, snapshot: &str) -> datafusion::error::Result<Vec<String>> {
        let sql = format!(
            "SELECT user_id FROM profiles_at('{snapshot}') ORDER BY user_id LIMIT {}",
            self.scan_limit + 1
        );
        let batches = self.ctx.sql(&sql).await?.collect().await?;
        let mut users = Vec::new();
        for b in &batches {
            let col = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let col = col
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| external("user_id is not text"))?;
            users.extend(col.iter().flatten().map(str::to_string));
        }
        if users.len() > self.scan_limit {
            return Err(DataFusionError::Plan(format!(
                "live_profiles reads the online store user by user: a scan without a user filter \
                 reads at most {} users, and the snapshot has more. Name them: WHERE user_id IN \
                 ('…', …), or query `profiles` (the snapshot) instead",
                self.scan_limit
            )));
        }
        Ok(users)
    }

    fn batch(
        &self,
        rows: &[Live],
        snapshot: Option<&str>,
        models: Option<&Models>,
        now: i64,
    ) -> datafusion::error::Result<RecordBatch> {
        let seen = |p: &Profile| p.last_ts >= p.first_ts;
        let scores: Vec<(Option<u32>, Option<f64>)> = rows
            .iter()
            .map(|r| match models {
                Some(m) => {
                    let x = user_features(&r.profile, now);
                    (
                        m.segments.as_ref().map(|s| s.assign(&x) as u32),
                        m.propensity.as_ref().map(|p| p.probability(&x)),
                    )
                }
                None => r.row_scores,
            })
            .collect();
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| &r.user),
        ))];
        for k in Kind::ALL {
            columns.push(Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.profile.count(k) as i64),
            )));
        }
        columns.extend([
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.profile.events() as i64),
            )) as ArrayRef,
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.profile.units as i64),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(
                    rows.iter().map(|r| i128::from(r.profile.spend_micros)),
                )
                .with_precision_and_scale(20, 6)?,
            ),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter()
                    .map(|r| seen(&r.profile).then_some(r.profile.first_ts)),
            )),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter()
                    .map(|r| seen(&r.profile).then_some(r.profile.last_ts)),
            )),
            Arc::new(TimestampMillisecondArray::from_iter(
                rows.iter().map(|r| r.profile.last_purchase_ts),
            )),
            Arc::new(UInt32Array::from_iter(scores.iter().map(|s| s.0))),
            Arc::new(Float64Array::from_iter(scores.iter().map(|s| s.1))),
            Arc::new(StringArray::from_iter(rows.iter().map(|_| snapshot))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.speed_epochs as i64),
            )),
            Arc::new(Int64Array::from_iter(
                rows.iter().map(|r| r.last_offset.map(|o| o as i64)),
            )),
        ]);
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    #[test]
    fn user_filters_are_read_off_the_predicate() {
        let one = col("user_id").eq(lit("u-1"));
        assert_eq!(named_users(&one), Some(BTreeSet::from(["u-1".to_string()])));
        let list = col("user_id").in_list(vec![lit("a"), lit("b")], false);
        assert_eq!(named_users(&list).map(|s| s.len()), Some(2));
        let or = col("user_id").eq(lit("a")).or(col("user_id").eq(lit("c")));
        assert_eq!(named_users(&or).map(|s| s.len()), Some(2));
        assert_eq!(named_users(&col("events").eq(lit(1))), None);
        let not_in = col("user_id").in_list(vec![lit("a")], true);
        assert_eq!(named_users(&not_in), None);
    }
}
