//! `tandem lake status`.

use anyhow::Result;
use clap::Subcommand;
use tandem_common::config::Config;
use tandem_common::event::now_ms;
use tandem_common::lake::{IngestRun, ingest_watermark};

use super::open_lake;

#[derive(Subcommand)]
pub(crate) enum LakeCommand {
    /// Event files, rows, bytes and the ingest watermark, as JSON.
    Status,
}

pub(crate) async fn lake_status(config: &Config) -> Result<()> {
    let lake = open_lake(None, config)?;
    let files = lake.event_files().await?;
    let runs = IngestRun::list(&lake).await?;
    let now = now_ms();
    let watermark =
        ingest_watermark(&lake, now, config.lake.ingest_lease.as_millis() as i64).await?;
    let status = serde_json::json!({
        "lake": lake.url(),
        "event_files": files.len(),
        "event_bytes": files.iter().map(|f| f.size).sum::<u64>(),
        "events_in_finished_runs": runs.iter().filter(|r| r.finished).map(|r| r.events).sum::<u64>(),
        "ingest_runs": runs.len(),
        "ingest_runs_unfinished": runs.iter().filter(|r| !r.finished).count(),
        "ingest_watermark": tandem_common::event::format_rfc3339_ms(watermark),
    });
    println!("{}", serde_json::to_string_pretty(&status)?);
    Ok(())
}
