//! [`RunWriter`]: an [`EventFileWriter`] that keeps its ingest run record (and so the lake's
//! ingest watermark) true as files become visible.

use super::{EventFileWriter, FileWritten, IngestRun, Lake, WriterOptions};
use crate::error::{Error, Result};
use crate::event::now_ms;

/// How often a run refreshes its record when no file has closed.
const REFRESH_MS: i64 = 30_000;

/// The `ingest_ts` of a bulk load started at `now_ms`: the last millisecond of the epoch before
/// the current one. A bulk load never goes through the speed layer, so its events must be below
/// a batch cutoff to be seen at all; stamped into the epoch that is already closed, they are
/// below the cutoff a `batch run` can pick as soon as the load has finished (the current
/// epoch's start), not only after the next epoch boundary. A snapshot already published at that
/// cutoff is then published again (a new revision): its inputs changed.
pub fn bulk_stamp(now_ms: i64, epoch_ms: i64) -> i64 {
    now_ms.div_euclid(epoch_ms.max(1)) * epoch_ms.max(1) - 1
}

/// Writes the events of one ingest run, all stamped with the run's [`bulk_stamp`].
pub struct RunWriter {
    lake: Lake,
    run: IngestRun,
    writer: EventFileWriter,
    lease_ms: i64,
    /// The `ingest_ts` of every event of the run.
    stamp: i64,
    /// Events in visible files.
    visible: u64,
}

impl RunWriter {
    /// Registers a new run and opens its writer. Stamp events only after this returns.
    pub async fn start(
        lake: &Lake,
        run_id: &str,
        options: WriterOptions,
        lease: std::time::Duration,
        epoch_ms: i64,
    ) -> Result<RunWriter> {
        let now = now_ms();
        let stamp = bulk_stamp(now, epoch_ms);
        let run = IngestRun::start(lake, run_id, now, stamp).await?;
        Ok(RunWriter {
            lake: lake.clone(),
            writer: EventFileWriter::new(lake.clone(), run_id, options)?,
            run,
            lease_ms: lease.as_millis() as i64,
            stamp,
            visible: 0,
        })
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.run.run_id
    }

    /// The `ingest_ts` to stamp every event of the run with.
    pub fn stamp(&self) -> i64 {
        self.stamp
    }

    /// Writes a batch of events stamped with [`stamp`](Self::stamp).
    pub async fn write(&mut self, batch: &arrow::array::RecordBatch) -> Result<()> {
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
        self.writer.write(batch, self.stamp).await?;
        let closed = &self.writer.written()[files_before..];
        self.visible += closed.iter().map(|f| f.rows).sum::<u64>();
        if !closed.is_empty() || now - self.run.updated_at > REFRESH_MS {
            // Every event of the run has the one stamp: the run holds the watermark at it
            // until it finishes.
            let files = self.writer.written().len() as u64;
            self.run
                .advance(&self.lake, now, self.stamp, files, self.visible)
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
