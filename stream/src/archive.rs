//! The archiver (ARCHITECTURE.md §1, §3): the bus → Parquet event files in the lake, the master dataset
//! the batch layer reads.
//!
//! One task per partition appends records to an open file and makes it visible (rolls it) when
//! it reaches `roll_rows`, when it is `roll_age` old, when the next record's ingest date differs
//! (the lake is partitioned by ingest date) and when stopping. A file is named by the bus log's
//! identity, its partition and the offset of its first record —
//! `events/date=<d>/bus-<log>-p0003-o00000000000000000100-00000.parquet` — and the position is
//! stored only after the file is visible, so a restart reads the same records again and writes
//! the same name: it rewrites, never duplicates. A topic deleted and created again (offsets
//! from 0 again) is another log, so its files never overwrite the old one's.
//!
//! After each roll the task publishes the partition's [`ArchiveMark`]: every event of the
//! partition with `ingest_ts` below its watermark is in visible files. The watermark is the
//! ingest time of the first record not archived yet — or now, when there is none — minus
//! `max_produce_delay`: an event stamped at acceptance may reach the bus up to that much later,
//! behind records stamped after it. The batch layer's cutoff stays at or below the least
//! watermark of all partitions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_common::event::{date_of_ms, from_bus_value, now_ms};
use tandem_common::lake::{ArchiveMark, EventFileWriter, Lake, WriterOptions};
use tandem_common::schema::{EventBatchBuilder, Stamp};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::bus::{Bus, Record, check_contiguous};
use crate::error::Result;
use crate::task::{Tasks, retry};

/// How the archiver runs.
#[derive(Debug, Clone)]
pub struct ArchiveOptions {
    /// The consumer group whose positions are stored on the bus.
    pub group: String,
    /// The partitions to archive; empty means all.
    pub partitions: Vec<u32>,
    /// Records per fetch.
    pub fetch: usize,
    /// Rows after which a file is made visible.
    pub roll_rows: usize,
    /// Age after which a file with rows is made visible.
    pub roll_age: Duration,
    /// How long a fetch waits when there is nothing to read.
    pub wait: Duration,
    /// How much later than its ingest time an event may reach the bus, ms.
    pub max_produce_delay_ms: i64,
    /// Parquet encoding (`file_max_rows` is ignored: files roll by the options above).
    pub writer: WriterOptions,
    /// Stop once every partition has reached the end it had at start.
    pub until_caught_up: bool,
}

impl Default for ArchiveOptions {
    fn default() -> Self {
        ArchiveOptions {
            group: "archive".into(),
            partitions: Vec::new(),
            fetch: 8192,
            roll_rows: 1 << 20,
            roll_age: Duration::from_secs(300),
            wait: Duration::from_millis(500),
            max_produce_delay_ms: 30_000,
            writer: WriterOptions::default(),
            until_caught_up: false,
        }
    }
}

impl ArchiveOptions {
    /// The options of the configuration (`[stream]`, `[lake]`, `bus.max_produce_delay`), all
    /// partitions.
    pub fn from_config(c: &tandem_common::config::Config) -> ArchiveOptions {
        ArchiveOptions {
            roll_rows: c.stream.archive_roll_rows,
            roll_age: c.stream.archive_roll_age,
            wait: c.stream.wait.max(Duration::from_millis(500)),
            max_produce_delay_ms: c.bus.max_produce_delay.as_millis() as i64,
            writer: (&c.lake).into(),
            ..ArchiveOptions::default()
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ArchiveSummary {
    /// Events written into visible files.
    pub events: u64,
    /// Files made visible.
    pub files: u64,
    /// Bus records that are not valid events (logged and skipped).
    pub invalid: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: u64,
    /// Events archived per second.
    pub events_per_second: f64,
}

#[derive(Default)]
struct Totals {
    events: AtomicU64,
    files: AtomicU64,
    invalid: AtomicU64,
}

/// Runs the archiver until `stop` is cancelled (then makes the open files visible and stores
/// their positions) or, with `until_caught_up`, until it has caught up.
pub async fn run(
    bus: Arc<dyn Bus>,
    lake: Lake,
    opts: ArchiveOptions,
    stop: CancellationToken,
) -> Result<ArchiveSummary> {
    let partitions = crate::task::partitions(bus.as_ref(), &opts.partitions)?;
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let mut tasks = Tasks::new(stop);
    for p in partitions {
        let (bus, lake, opts, totals) = (bus.clone(), lake.clone(), opts.clone(), totals.clone());
        tasks.spawn(format!("archive partition {p}"), move |stop| async move {
            let mut part = Partition::new(bus, lake, p, opts, stop).await?;
            let r = part.run(&totals).await;
            if r.is_ok() {
                info!(partition = p, next_offset = part.next, "Archiver stopped.");
            }
            r
        });
    }
    tasks.join().await?;
    let seconds = started.elapsed().as_secs_f64();
    let events = totals.events.load(Ordering::Relaxed);
    Ok(ArchiveSummary {
        events,
        files: totals.files.load(Ordering::Relaxed),
        invalid: totals.invalid.load(Ordering::Relaxed),
        seconds,
        peak_rss_mb: tandem_common::sys::peak_rss_bytes().unwrap_or(0) >> 20,
        events_per_second: events as f64 / seconds.max(1e-9),
    })
}

/// The file being written.
struct OpenFile {
    writer: EventFileWriter,
    date: String,
    /// An ingest time of the file's date (what the writer needs to name the date folder).
    day_ms: i64,
    opened: Instant,
    rows: usize,
}

struct Partition {
    bus: Arc<dyn Bus>,
    lake: Lake,
    partition: u32,
    opts: ArchiveOptions,
    stop: CancellationToken,
    /// The next offset to store as the position: everything below is visible (or invalid).
    next: u64,
    /// The next offset to fetch.
    read: u64,
    open: Option<OpenFile>,
    /// Rows parsed but not yet handed to the open file's writer.
    rows: EventBatchBuilder,
    /// The published watermark (it never goes back).
    watermark: i64,
    /// The bus log's identity, once the partition has a record.
    log: Option<String>,
    marked_at: Instant,
}

impl Partition {
    async fn new(
        bus: Arc<dyn Bus>,
        lake: Lake,
        partition: u32,
        opts: ArchiveOptions,
        stop: CancellationToken,
    ) -> Result<Partition> {
        let next = retry(&stop, "read the stored position", || {
            bus.committed(&opts.group, partition)
        })
        .await?
        .unwrap_or(0);
        let log = retry(&stop, "read the log's identity", || bus.log_id(partition)).await?;
        let watermark = match ArchiveMark::load(&lake, partition).await? {
            Some(m) if m.next_offset == next && (m.log.is_none() || m.log == log) => m.watermark,
            _ => i64::MIN,
        };
        Ok(Partition {
            bus,
            lake,
            partition,
            opts,
            stop,
            next,
            read: next,
            open: None,
            rows: EventBatchBuilder::with_capacity(0),
            watermark,
            log,
            marked_at: Instant::now(),
        })
    }

    async fn run(&mut self, totals: &Totals) -> Result<()> {
        let p = self.partition;
        let label = p.to_string();
        let lag = metrics::gauge!("tandem_stream_lag_records", "layer" => "archive", "partition" => label);
        let invalid_c = metrics::counter!("tandem_archive_invalid_records_total");
        let end_at_start = match self.opts.until_caught_up {
            true => {
                Some(retry(&self.stop, "read the end offset", || self.bus.end_offset(p)).await?)
            }
            false => None,
        };
        info!(partition = p, offset = self.next, "Archiver consuming.");
        // A record for the partition at once, so the batch layer knows it is covered.
        self.publish(None).await?;
        let mut lag_checked = Instant::now() - Duration::from_secs(10);
        loop {
            if end_at_start.is_some_and(|end| self.read >= end) {
                self.roll(totals).await?;
                lag.set(0.0);
                return Ok(());
            }
            if lag_checked.elapsed() >= Duration::from_secs(1) {
                if let Ok(end) = self.bus.end_offset(p).await {
                    lag.set(end.saturating_sub(self.read) as f64);
                }
                lag_checked = Instant::now();
            }
            let (bus, read, fetch, wait) =
                (self.bus.clone(), self.read, self.opts.fetch, self.opts.wait);
            let records = tokio::select! {
                biased;
                _ = self.stop.cancelled() => {
                    self.roll(totals).await?;
                    return Ok(());
                }
                r = retry(&self.stop, "fetch", || bus.fetch(p, read, fetch, wait)) => r?,
            };
            check_contiguous(p, read, &records)?;
            for r in &records {
                self.append(r, totals, &invalid_c).await?;
            }
            if let Some(last) = records.last() {
                self.read = last.offset + 1;
            }
            self.flush_rows().await?;
            let due = self.open.as_ref().is_some_and(|f| {
                f.rows >= self.opts.roll_rows || f.opened.elapsed() >= self.opts.roll_age
            });
            if due {
                self.roll(totals).await?;
            } else if self.open.is_none()
                && self.marked_at.elapsed() >= self.opts.roll_age.min(Duration::from_secs(30))
            {
                // No file open: store the position past any invalid records read, and move the
                // watermark on with the clock.
                self.roll(totals).await?;
            }
        }
    }

    /// Adds one record to the rows of the open file, rolling first when its date differs.
    async fn append(
        &mut self,
        r: &Record,
        totals: &Totals,
        invalid_c: &metrics::Counter,
    ) -> Result<()> {
        let (ingest_ts, event) = match from_bus_value(&r.value) {
            Ok(v) => v,
            Err(e) => {
                invalid_c.increment(1);
                totals.invalid.fetch_add(1, Ordering::Relaxed);
                warn!(partition = self.partition, offset = r.offset, error = %e, "Skipped an invalid bus record.");
                return Ok(());
            }
        };
        let date = date_of_ms(ingest_ts);
        if self.open.as_ref().is_some_and(|f| f.date != date) {
            self.flush_rows().await?;
            self.read = r.offset;
            self.roll_with_next(totals, Some(ingest_ts)).await?;
        }
        if self.open.is_none() {
            if self.log.is_none() {
                let (bus, p) = (self.bus.clone(), self.partition);
                self.log = retry(&self.stop, "read the log's identity", || bus.log_id(p)).await?;
            }
            let log = self.log.as_deref().unwrap_or("unknown");
            let name = format!("bus-{log}-p{:04}-o{:020}", self.partition, r.offset);
            let options = WriterOptions {
                file_max_rows: usize::MAX,
                ..self.opts.writer.clone()
            };
            self.open = Some(OpenFile {
                writer: EventFileWriter::new(self.lake.clone(), name, options)?,
                date,
                day_ms: ingest_ts,
                opened: Instant::now(),
                rows: 0,
            });
        }
        let stamp = Stamp {
            ingest_ts,
            partition: Some(self.partition as i32),
            offset: Some(r.offset as i64),
        };
        if self.rows.is_empty() {
            self.rows = EventBatchBuilder::with_capacity(self.opts.fetch.min(65_536));
        }
        self.rows.append(&event, stamp);
        Ok(())
    }

    /// Hands the parsed rows to the open file's writer (which streams them out).
    async fn flush_rows(&mut self) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let batch = self.rows.finish()?;
        let f = self
            .open
            .as_mut()
            .expect("rows are parsed into an open file");
        f.writer.write(&batch, f.day_ms).await?;
        f.rows += batch.num_rows();
        Ok(())
    }

    /// Makes the open file visible, stores the position after what it holds and publishes the
    /// watermark.
    async fn roll(&mut self, totals: &Totals) -> Result<()> {
        self.flush_rows().await?;
        self.roll_with_next(totals, None).await
    }

    /// As [`roll`](Self::roll), with the records from `self.read` on not in the file; `next_ingest`
    /// is the ingest time of the first of them when known.
    async fn roll_with_next(&mut self, totals: &Totals, next_ingest: Option<i64>) -> Result<()> {
        if let Some(f) = self.open.take() {
            let rows = f.rows as u64;
            // The fault tests kill the process here (`FAILPOINTS=<name>=return` with the
            // `failpoints` feature; an abort, as a kill -9 would): with the rows handed to the
            // file's upload, which is not complete; and with the file complete, its position not
            // stored.
            fail::fail_point!("archive-file-open", |_| std::process::abort());
            let files = f.writer.finish().await?;
            fail::fail_point!("archive-file-done", |_| std::process::abort());
            let (p, group, read) = (self.partition, self.opts.group.clone(), self.read);
            retry(&self.stop, "store the position", || {
                self.bus.commit(&group, p, read)
            })
            .await?;
            self.next = read;
            totals.events.fetch_add(rows, Ordering::Relaxed);
            totals
                .files
                .fetch_add(files.len() as u64, Ordering::Relaxed);
            metrics::counter!("tandem_archive_events_total").increment(rows);
            metrics::counter!("tandem_archive_files_total").increment(files.len() as u64);
            debug!(partition = p, rows, next_offset = read, "Archived a file.");
        } else if self.next < self.read {
            let (p, group, read) = (self.partition, self.opts.group.clone(), self.read);
            retry(&self.stop, "store the position", || {
                self.bus.commit(&group, p, read)
            })
            .await?;
            self.next = read;
        }
        self.publish(next_ingest).await
    }

    /// Publishes the partition's mark. The watermark is the ingest time of the first record not
    /// archived (`next_ingest`, or read from the bus), or now when there is none, minus the
    /// produce delay; it never goes back.
    async fn publish(&mut self, next_ingest: Option<i64>) -> Result<()> {
        let p = self.partition;
        let delay = self.opts.max_produce_delay_ms;
        let candidate = match next_ingest {
            Some(t) => Some(t - delay),
            None => {
                let end =
                    retry(&self.stop, "read the end offset", || self.bus.end_offset(p)).await?;
                if end <= self.next {
                    Some(now_ms() - delay)
                } else {
                    let (bus, next) = (self.bus.clone(), self.next);
                    let peek = retry(&self.stop, "fetch", || {
                        bus.fetch(p, next, 1, Duration::ZERO)
                    })
                    .await?;
                    check_contiguous(p, next, &peek)?;
                    // Behind an invalid record the watermark waits for the next roll.
                    peek.first()
                        .and_then(|r| from_bus_value(&r.value).ok())
                        .map(|(t, _)| t - delay)
                }
            }
        };
        let candidate = candidate.unwrap_or(self.watermark);
        self.watermark = self.watermark.max(candidate);
        let mark = ArchiveMark {
            partition: p,
            partitions: self.bus.partitions(),
            next_offset: self.next,
            log: self.log.clone(),
            watermark: self.watermark,
            updated_at: now_ms(),
        };
        mark.save(&self.lake).await?;
        metrics::gauge!("tandem_archive_watermark_seconds", "partition" => p.to_string())
            .set(self.watermark as f64 / 1000.0);
        self.marked_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
