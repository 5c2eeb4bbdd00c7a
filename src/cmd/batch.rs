//! `tandem batch run`: the views, the models and a snapshot at a cutoff.

use std::io::IsTerminal;

use anyhow::Result;
use clap::{Args, Subcommand};
use tandem_common::config::Config;
use tandem_common::event::now_ms;

use super::{open_lake, open_shared_store, parse_time};

#[derive(Subcommand)]
pub(crate) enum BatchCommand {
    /// One batch run (the nightly CronJob): exit 0 only when the snapshot is published; one
    /// JSON summary line on standard output.
    Run(BatchRunArgs),
}

#[derive(Args)]
pub(crate) struct BatchRunArgs {
    /// The cutoff: `now` (the latest the lake allows) or a time (RFC 3339 or epoch ms), rounded
    /// down to an epoch boundary.
    #[arg(long, default_value = "now")]
    cutoff: String,
    /// Say what would be done (cutoff, snapshot id, files) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Recompute every view from the whole lake and retrain the models, even when the previous
    /// snapshot could be merged with the events since (see `batch.full_every`).
    #[arg(long)]
    full: bool,
    /// The lake URL [default: lake.url of the configuration].
    #[arg(long, value_name = "URL")]
    lake: Option<String>,
    /// The online store URL [default: online_store.url of the configuration].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// No progress display even on a terminal.
    #[arg(long)]
    no_progress: bool,
}

pub(crate) async fn batch_run(args: BatchRunArgs, config: &Config) -> Result<()> {
    use tandem_batch::run::{RunOptions, run};
    let cutoff_ms = match args.cutoff.as_str() {
        "now" => None,
        s => Some(parse_time(s, "--cutoff")?),
    };
    let lake = open_lake(args.lake.as_deref(), config)?;
    let store = open_shared_store(
        args.store.as_deref(),
        config,
        (!args.dry_run).then_some("a batch run would publish into nothing"),
    )
    .await?;
    let opts = RunOptions {
        cutoff_ms,
        dry_run: args.dry_run,
        full: args.full,
        ..RunOptions::from_config(config)
    };
    let show = !args.no_progress && std::io::stderr().is_terminal();
    let steps = crate::progress::Steps::new(show);
    let summary = run(
        &lake,
        store.as_ref(),
        &opts,
        &tandem_batch::snapshot::NoFaults,
        &steps,
    )
    .await;
    steps.finish();
    if !args.dry_run {
        record_batch_outcome(store.as_ref(), &summary).await;
    }
    let summary = summary?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// Leaves the run's outcome in the store for serving's `tandem_batch_last_*` gauges; a store
/// that cannot take it is logged, not fatal (the run's own result stands).
pub(crate) async fn record_batch_outcome(
    store: &dyn tandem_common::store::OnlineStore,
    summary: &tandem_batch::Result<tandem_batch::run::Summary>,
) {
    use tandem_common::store::{BATCH_FAILURE_KEY, BATCH_SUCCESS_KEY, BatchOutcome};
    let (key, outcome) = match summary {
        Ok(s) => (
            BATCH_SUCCESS_KEY,
            BatchOutcome {
                at_ms: now_ms(),
                snapshot: Some(s.snapshot.clone()),
                error: None,
            },
        ),
        Err(e) => (
            BATCH_FAILURE_KEY,
            BatchOutcome {
                at_ms: now_ms(),
                snapshot: None,
                error: Some(e.to_string()),
            },
        ),
    };
    let row = match serde_json::to_vec(&outcome) {
        Ok(v) => (key.to_string(), bytes::Bytes::from(v)),
        Err(e) => return tracing::warn!(error = %e, "could not encode the batch outcome"),
    };
    if let Err(e) = store.put(&[row]).await {
        tracing::warn!(error = %e, key, "could not record the batch outcome in the online store");
    }
}
