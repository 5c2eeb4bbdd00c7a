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
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use object_store::buffered::BufWriter;
use std::collections::HashSet;
use tandem_common::store::HISTORY_ITEMS;

use crate::views::timed_histories_from;

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

/// The snapshot `id` at `cutoff`: `base` merged with the events ingested from its cutoff on.
///
/// What is held is in proportion to the new events and the catalogue, not the history: the
/// new events' rows by user, item and basket, and the items; the users' files
/// (`profiles.parquet`, `segments.parquet`) and the baskets are streamed — `base`'s file read a
/// row group at a time, the rows of users and baskets no new event touches passed through as
/// they are (the profiles' cutoff-dependent `recency_days` computed again), the touched ones
/// decoded and merged, every row group written to the new snapshot's file as it comes. The
/// similar items are counted from the merged baskets, held as item numbers.
pub(super) async fn merge(
    lake: &Lake,
    base: &Manifest,
    id: &str,
    cutoff: i64,
    checkpoint: &dyn Checkpoint,
    progress: &dyn Progress,
    durations: &mut BTreeMap<String, f64>,
) -> Result<Computed> {
    begin(Step::Views, checkpoint, progress)?;
    let t = Instant::now();
    let mut at = Instant::now();
    let from = base.cutoff_ms;
    let lc = LakeContext::new(lake).await?.with_cutoff(cutoff).await?;
    let events = lc.materialise_since(from).await?;
    let n_events: u64 = events.iter().map(|b| b.num_rows() as u64).sum();
    drop(events);
    let set_aside = base.set_aside + lc.set_aside_since(from).await?;
    lap(durations, &mut at, "new_events");
    let new_profiles = View::Profiles.collect(&lc).await?;
    let new_items = View::Items.collect(&lc).await?;
    let new_baskets = basket_rows(&lc, i64::MAX).await?;
    drop(lc);
    lap(durations, &mut at, "delta_views");
    tracing::info!(
        events = n_events,
        since = %base.snapshot,
        seconds = t.elapsed().as_secs_f64(),
        "New events folded."
    );

    let old = &base.snapshot;
    // The models of the full run this snapshot descends from score the users as they merge.
    let models = match &base.models {
        ModelsEntry::Trained(_) => Some(Models::from_json(
            &snapshots::read_file(lake, old, "models.json").await?,
        )?),
        ModelsEntry::Skipped(_) => None,
    };

    // Items: a row per item, merged whole.
    let mut items = items_from(&snapshots::read_parquet(lake, old, "items.parquet").await?)?;
    for (item, s) in items_from(&new_items)? {
        match items.get_mut(&item) {
            Some(mine) => mine.merge(&s),
            None => {
                items.insert(item, s);
            }
        }
    }
    let item_batches = item_rows(new_items[0].schema(), &items)?;

    // The users' files and the baskets stream side by side, each mostly one core's work.
    let models = models.map(Arc::new);
    let users = tokio::spawn(merge_users(
        lake.clone(),
        id.to_string(),
        old.clone(),
        new_profiles,
        models.clone(),
        cutoff,
    ));
    let baskets = tokio::spawn(merge_baskets(
        lake.clone(),
        id.to_string(),
        old.clone(),
        new_baskets,
    ));
    let joined =
        |e: tokio::task::JoinError| Error::Internal(format!("incremental merge task: {e}"));
    let users = match users.await.map_err(joined) {
        Ok(Ok(u)) => u,
        Ok(Err(e)) | Err(e) => {
            baskets.abort();
            return Err(e);
        }
    };
    let (similar_batches, baskets_s, similar_s) = baskets.await.map_err(joined)??;
    let n_similar = similar_batches.iter().map(|b| b.num_rows()).sum();
    let views = name(Step::Views);
    durations.insert(format!("{views}.profiles"), users.seconds);
    durations.insert(format!("{views}.baskets"), baskets_s);
    durations.insert(format!("{views}.similar"), similar_s);
    lap(durations, &mut at, "users_and_baskets");
    durations.insert(views.into(), t.elapsed().as_secs_f64());
    // The models were not trained again: the users were scored with the base's as they merged.
    begin(Step::Train, checkpoint, progress)?;
    durations.insert(name(Step::Train).into(), users.scoring_s);
    let models = models.map(|m| Arc::try_unwrap(m).unwrap_or_else(|m| (*m).clone()));

    Ok(Computed {
        events: base.events + n_events,
        set_aside,
        rows: rows_of(users.rows, items.len(), n_similar, users.scored),
        models,
        models_entry: base.models.clone(),
        files: vec![("items", item_batches), ("similar_items", similar_batches)],
        full_cutoff_ms: Some(base.full_cutoff_ms.unwrap_or(base.cutoff_ms)),
        carry: Some((old.clone(), users.touched)),
    })
}

/// What [`merge_users`] did.
struct UsersMerged {
    /// Profile rows written.
    rows: usize,
    /// Users scored (segment rows written).
    scored: usize,
    /// Seconds spent scoring.
    scoring_s: f64,
    /// Seconds in all.
    seconds: f64,
    /// The users the new events touched.
    touched: HashSet<String>,
}

/// The profiles and segments of snapshot `id`: those of `old` merged with the new events'
/// profiles `new`, a row group at a time, the users scored with `models`.
async fn merge_users(
    lake: Lake,
    id: String,
    old: String,
    new: Vec<RecordBatch>,
    models: Option<Arc<Models>>,
    cutoff: i64,
) -> Result<UsersMerged> {
    use futures::TryStreamExt;
    let t = Instant::now();
    let schema = new[0].schema();
    let touched = profiles_from(&new)?;
    let touched_users: HashSet<String> = touched.keys().cloned().collect();
    let mut users = UserMerge {
        touched,
        histories: timed_histories_from(&new)?,
        schema: schema.clone(),
        cutoff,
        models: models.as_deref(),
        profiles: snapshots::parquet_writer(&lake, &id, "profiles.parquet", schema)?,
        segments: snapshots::parquet_writer(&lake, &id, "segments.parquet", segments_schema())?,
        rows: 0,
        scored: 0,
        scoring_s: 0.0,
    };
    drop(new);
    let mut groups = snapshots::stream_parquet(&lake, &old, "profiles.parquet").await?;
    while let Some(group) = groups.try_next().await? {
        users.old_group(&group).await?;
    }
    let (rows, scored, scoring_s) = users.finish().await?;
    Ok(UsersMerged {
        rows,
        scored,
        scoring_s,
        seconds: t.elapsed().as_secs_f64(),
        touched: touched_users,
    })
}

/// The profiles and segments of an incremental run, merged a row group of the base snapshot's
/// profiles at a time and written as they come.
struct UserMerge<'a> {
    /// The new events' profiles of the users not merged yet.
    touched: BTreeMap<String, Profile>,
    /// Their latest items.
    histories: BTreeMap<String, Vec<(String, i64)>>,
    /// The profiles view's columns.
    schema: SchemaRef,
    cutoff: i64,
    models: Option<&'a Models>,
    profiles: AsyncArrowWriter<BufWriter>,
    segments: AsyncArrowWriter<BufWriter>,
    rows: usize,
    scored: usize,
    /// Seconds spent scoring the users.
    scoring_s: f64,
}

impl UserMerge<'_> {
    /// One row group of the base's profiles: the rows of users without new events as they are
    /// (`recency_days` at the new cutoff), the others merged with their new events.
    async fn old_group(&mut self, group: &RecordBatch) -> Result<()> {
        let users = cast(
            group
                .column_by_name("user_id")
                .ok_or_else(|| Error::Internal("profiles have no column `user_id`".into()))?,
            &DataType::Utf8,
        )?;
        let users = users.as_string::<i32>();
        let touched: BooleanArray = users
            .iter()
            .map(|u| Some(u.is_some_and(|u| self.touched.contains_key(u))))
            .collect();
        let same = filter_record_batch(group, &not(&touched)?)?;
        let same = with_recency(&cast_to(&same, &self.schema)?, self.cutoff)?;
        let same_profiles = profiles_from(std::slice::from_ref(&same))?;
        self.write(same, &same_profiles).await?;

        let changed = filter_record_batch(group, &touched)?;
        let changed = std::slice::from_ref(&changed);
        let mut histories = timed_histories_from(changed)?;
        let mut profiles = profiles_from(changed)?;
        for (user, p) in profiles.iter_mut() {
            if let Some(new) = self.touched.remove(user) {
                p.merge(&new);
            }
            if let Some(new) = self.histories.remove(user) {
                merge_latest(
                    histories.entry(user.clone()).or_default(),
                    &new,
                    HISTORY_ITEMS,
                );
            }
        }
        self.merged(&profiles, &histories).await
    }

    /// Rows of merged (or new) users, computed from their profiles and histories.
    async fn merged(
        &mut self,
        profiles: &BTreeMap<String, Profile>,
        histories: &BTreeMap<String, Vec<(String, i64)>>,
    ) -> Result<()> {
        if profiles.is_empty() {
            return Ok(());
        }
        // A row group of users at a time: the rows of a day's new users are never all held.
        let users: Vec<(&String, &Profile)> = profiles.iter().collect();
        for chunk in users.chunks(snapshots::ROW_GROUP_ROWS) {
            let rows = profile_rows(self.schema.clone(), chunk, histories, self.cutoff)?;
            self.write_rows(rows).await?;
        }
        self.score(profiles).await
    }

    /// Writes profile rows and their users' segments.
    async fn write(
        &mut self,
        rows: RecordBatch,
        profiles: &BTreeMap<String, Profile>,
    ) -> Result<()> {
        self.write_rows(rows).await?;
        self.score(profiles).await
    }

    /// Writes profile rows.
    async fn write_rows(&mut self, rows: RecordBatch) -> Result<()> {
        if rows.num_rows() > 0 {
            self.rows += rows.num_rows();
            self.profiles.write(&rows).await?;
        }
        Ok(())
    }

    /// Scores `profiles` and writes their segment rows.
    async fn score(&mut self, profiles: &BTreeMap<String, Profile>) -> Result<()> {
        let t = Instant::now();
        let scores = scores_of(self.models, profiles, self.cutoff);
        self.scoring_s += t.elapsed().as_secs_f64();
        if !scores.is_empty() {
            self.scored += scores.len();
            self.segments
                .write(&segments_batch(&scores, self.models)?)
                .await?;
        }
        Ok(())
    }

    /// The users new since the base, then both files closed; their rows, and the seconds spent
    /// scoring.
    async fn finish(mut self) -> Result<(usize, usize, f64)> {
        let profiles = std::mem::take(&mut self.touched);
        let histories = std::mem::take(&mut self.histories);
        self.merged(&profiles, &histories).await?;
        // An empty file still has its columns.
        if self.rows == 0 {
            self.profiles
                .write(&RecordBatch::new_empty(self.schema.clone()))
                .await?;
        }
        if self.scored == 0 {
            self.segments
                .write(&RecordBatch::new_empty(segments_schema()))
                .await?;
        }
        self.profiles.close().await?;
        self.segments.close().await?;
        Ok((self.rows, self.scored, self.scoring_s))
    }
}

/// `b` with its `recency_days` at `cutoff`, from its `last_ts` — as `profiles.sql` computes it,
/// in the same floating-point operations.
fn with_recency(b: &RecordBatch, cutoff: i64) -> Result<RecordBatch> {
    let schema = b.schema();
    let at = schema.index_of("recency_days")?;
    let last = cast(
        b.column_by_name("last_ts")
            .ok_or_else(|| Error::Internal("profiles have no column `last_ts`".into()))?,
        &DataType::Int64,
    )?;
    let recency: Float64Array = last
        .as_primitive::<Int64Type>()
        .iter()
        .map(|t| t.map(|t| (cutoff as f64 - t as f64) / 86_400_000.0))
        .collect();
    let mut columns = b.columns().to_vec();
    columns[at] = cast(&recency, schema.field(at).data_type())?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Records the seconds since `at` as the views step's part `part` (`views.<part>`), logs them
/// with the resident memory, and starts the next part.
fn lap(durations: &mut BTreeMap<String, f64>, at: &mut Instant, part: &str) {
    let seconds = at.elapsed().as_secs_f64();
    durations.insert(format!("{}.{part}", name(Step::Views)), seconds);
    tracing::info!(
        part,
        seconds,
        rss_mb = tandem_common::sys::rss_bytes().map(|b| b >> 20),
        "Part of the views step done."
    );
    *at = Instant::now();
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

mod baskets;
mod rows;

use baskets::*;
use rows::*;

#[cfg(test)]
pub(crate) mod tests;
