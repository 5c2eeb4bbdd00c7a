//! [`RunWriter`]: an [`EventFileWriter`] that keeps its ingest run record (and so the lake's
//! ingest watermark) true as files become visible.

use super::{EventFileWriter, FileWritten, IngestRun, Lake, WriterOptions};
use crate::error::{Error, Result};
use crate::event::now_ms;

/// How often a run refreshes its record when no file has closed.
const REFRESH_MS: i64 = 30_000;

/// Writes stamped chunks of events for one ingest run.
pub struct RunWriter {
    lake: Lake,
    run: IngestRun,
    writer: EventFileWriter,
    lease_ms: i64,
    /// Events in visible files.
    visible: u64,
    /// Stamp of the oldest chunk with rows in the open file.
    oldest_pending: Option<i64>,
    last_stamp: i64,
}

impl RunWriter {
    /// Registers a new run and opens its writer. Stamp events only after this returns.
    pub async fn start(
        lake: &Lake,
        run_id: &str,
        options: WriterOptions,
        lease: std::time::Duration,
    ) -> Result<RunWriter> {
        let now = now_ms();
        let run = IngestRun::start(lake, run_id, now).await?;
        Ok(RunWriter {
            lake: lake.clone(),
            writer: EventFileWriter::new(lake.clone(), run_id, options)?,
            run,
            lease_ms: lease.as_millis() as i64,
            visible: 0,
            oldest_pending: None,
            last_stamp: now,
        })
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run.run_id
    }

    /// Writes a batch whose events were all stamped at `stamp` (stamps never decrease).
    pub async fn write(&mut self, batch: &arrow::array::RecordBatch, stamp: i64) -> Result<()> {
        let now = now_ms();
        if now - self.run.updated_at > self.lease_ms {
            return Err(Error::Internal(format!(
                "ingest run {} went {}s without refreshing its record, past its lease; \
                 the batch layer may have moved past its events, so it stops here",
                self.run.run_id,
                (now - self.run.updated_at) / 1000
            )));
        }
        let files_before = self.writer.written().len();
        if batch.num_rows() > 0 {
            self.oldest_pending.get_or_insert(stamp);
        }
        self.writer.write(batch, stamp).await?;
        self.last_stamp = stamp;
        let closed = &self.writer.written()[files_before..];
        if !closed.is_empty() {
            self.visible += closed.iter().map(|f| f.rows).sum::<u64>();
            // What is still pending was written from this batch, stamped `stamp`.
            self.oldest_pending = (self.writer.pending_rows() > 0).then_some(stamp);
        }
        if !closed.is_empty() || now - self.run.updated_at > REFRESH_MS {
            let watermark = self.oldest_pending.unwrap_or(self.last_stamp);
            let files = self.writer.written().len() as u64;
            self.run
                .advance(&self.lake, now, watermark, files, self.visible)
                .await?;
        }
        Ok(())
    }

    /// Closes the last file and marks the run finished.
    pub async fn finish(mut self) -> Result<Vec<FileWritten>> {
        let files = self.writer.finish().await?;
        let events = files.iter().map(|f| f.rows).sum();
        self.run
            .finish(&self.lake, now_ms(), files.len() as u64, events)
            .await?;
        Ok(files)
    }
}

/// A fresh run id: `<prefix>-<UTC time>-<random>`, sortable by start time.
pub fn new_run_id(prefix: &str) -> String {
    let now = chrono::Utc::now();
    format!(
        "{prefix}-{}-{:08x}",
        now.format("%Y%m%dT%H%M%S%3f"),
        rand::random::<u32>()
    )
}
