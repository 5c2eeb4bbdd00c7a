//! Bulk loading: JSON lines or CSV into the lake, with `ingest_ts` stamped at acceptance.
//!
//! The pipeline streams, so memory stays flat in the input size:
//! a reader thread cuts the input into chunks of whole lines (about 4 MiB) and stamps each with
//! the time it was read; up to two chunks are parsed and validated in parallel into Arrow
//! batches; one writer puts them, in input order, into rolling Parquet files ([`RunWriter`]).
//! Bad lines are reported with their line number and reason and never stop the good ones.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::event::{Acceptance, now_ms, parse_event};
use crate::lake::{Lake, RunWriter, WriterOptions, new_run_id};
use crate::schema::{EventBatchBuilder, Stamp};

mod csv_input;

/// The format of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object a line.
    Jsonl,
    /// CSV with a header row naming event fields; `props` as a JSON object text.
    Csv,
}

impl InputFormat {
    /// The format a file name suggests: `.csv` is CSV, anything else JSON lines.
    pub fn from_path(path: &str) -> InputFormat {
        if path.to_ascii_lowercase().ends_with(".csv") {
            InputFormat::Csv
        } else {
            InputFormat::Jsonl
        }
    }
}

/// How to ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Input format.
    pub format: InputFormat,
    /// File layout and encoding.
    pub writer: WriterOptions,
    /// Largest accepted lead of event time over ingest time, ms.
    pub max_future_ms: i64,
    /// The ingest run's lease (see [`crate::lake::ingest_watermark`]).
    pub lease: Duration,
    /// Approximate bytes per chunk.
    pub chunk_bytes: usize,
    /// The ingest epoch, ms: events are stamped into the one before the load's start
    /// ([`crate::lake::bulk_stamp`]).
    pub epoch_ms: i64,
}

impl IngestOptions {
    /// Options from the configuration.
    pub fn from_config(config: &crate::config::Config, format: InputFormat) -> Self {
        IngestOptions {
            format,
            writer: WriterOptions::from(&config.lake),
            max_future_ms: config.events.max_future.as_millis() as i64,
            lease: config.lake.ingest_lease,
            chunk_bytes: 4 << 20,
            epoch_ms: config.events.epoch.as_millis() as i64,
        }
    }
}

/// A rejected line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// 1-based line number in the input.
    pub line: u64,
    /// Why it was rejected, naming the field.
    pub message: String,
    /// The line as it was (without its newline), for a reject file.
    pub raw: Vec<u8>,
}

/// What an ingest did; printed as the one summary line.
#[derive(Debug, Clone, Serialize)]
pub struct IngestSummary {
    /// The ingest run (prefix of its files, name of its record).
    pub run_id: String,
    /// Events written to the lake.
    pub accepted: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Bytes read.
    pub input_bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// Accepted events per second.
    pub events_per_s: f64,
    /// Peak resident memory of the process, when the OS tells.
    pub peak_rss_mb: Option<f64>,
}

impl IngestSummary {
    /// The summary of a run that wrote `files` and started at `started`; reads the peak RSS now.
    pub fn new(
        run_id: String,
        accepted: u64,
        rejected: u64,
        files: &[crate::lake::FileWritten],
        input_bytes: u64,
        started: Instant,
    ) -> Self {
        let seconds = started.elapsed().as_secs_f64();
        IngestSummary {
            run_id,
            accepted,
            rejected,
            files: files.len() as u64,
            bytes: files.iter().map(|f| f.bytes).sum(),
            input_bytes,
            seconds,
            events_per_s: accepted as f64 / seconds.max(1e-9),
            peak_rss_mb: crate::sys::peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0)),
        }
    }
}

/// Called as the ingest goes: each rejected line, and progress after each chunk.
pub trait IngestObserver: Send {
    /// A line was rejected.
    fn rejected(&mut self, reject: &Reject);
    /// Progress: input bytes read so far, events accepted and lines rejected so far.
    fn progress(&mut self, _input_bytes: u64, _accepted: u64, _rejected: u64) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl IngestObserver for Quiet {
    fn rejected(&mut self, _: &Reject) {}
}

/// A chunk of whole input lines, stamped with the time it was read.
struct Chunk {
    /// Newline-separated JSON objects.
    data: Vec<u8>,
    /// Line number of the first line; for CSV, the line number of every line.
    lines: Lines,
    /// For CSV: the original record of every line, for rejects.
    originals: Option<Vec<Vec<u8>>>,
    stamp: i64,
}

enum Lines {
    From(u64),
    Each(Vec<u64>),
}

struct Parsed {
    batch: arrow::array::RecordBatch,
    rejects: Vec<Reject>,
}

/// Ingests `input` into the lake. Returns the summary once the last file is visible.
pub async fn ingest(
    lake: &Lake,
    input: Box<dyn Read + Send>,
    options: IngestOptions,
    observer: &mut dyn IngestObserver,
) -> Result<IngestSummary> {
    let started = Instant::now();
    let mut writer = RunWriter::start(
        lake,
        &new_run_id("ingest"),
        options.writer.clone(),
        options.lease,
        options.epoch_ms,
    )
    .await?;
    let run_id = writer.run_id().to_string();
    let ingest_ts = writer.stamp();
    let bytes_read = Arc::new(AtomicU64::new(0));

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Chunk>>(4);
    let reader = {
        let bytes_read = bytes_read.clone();
        let (format, chunk_bytes) = (options.format, options.chunk_bytes);
        tokio::task::spawn_blocking(move || {
            let counted = CountingReader {
                inner: input,
                count: bytes_read,
            };
            let res = match format {
                InputFormat::Jsonl => read_jsonl(counted, chunk_bytes, &tx),
                InputFormat::Csv => csv_input::read_csv(counted, chunk_bytes, &tx),
            };
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(e));
            }
        })
    };

    let max_future_ms = options.max_future_ms;
    let parsed =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .map(move |chunk| async move {
                let chunk = chunk?;
                tokio::task::spawn_blocking(move || parse_chunk(chunk, max_future_ms, ingest_ts))
                    .await
                    .map_err(|e| Error::Internal(format!("parse task failed: {e}")))
            })
            .buffered(2);
    let mut parsed = std::pin::pin!(parsed);

    let (mut accepted, mut rejected) = (0u64, 0u64);
    while let Some(p) = parsed.next().await {
        let p = p?;
        writer.write(&p.batch).await?;
        accepted += p.batch.num_rows() as u64;
        rejected += p.rejects.len() as u64;
        for r in &p.rejects {
            observer.rejected(r);
        }
        observer.progress(bytes_read.load(Ordering::Relaxed), accepted, rejected);
    }
    reader
        .await
        .map_err(|e| Error::Internal(format!("reader task failed: {e}")))?;
    let files = writer.finish().await?;
    Ok(IngestSummary::new(
        run_id,
        accepted,
        rejected,
        &files,
        bytes_read.load(Ordering::Relaxed),
        started,
    ))
}

struct CountingReader {
    inner: Box<dyn Read + Send>,
    count: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Stamps never go backwards, even if the wall clock does.
pub(crate) struct Stamper(i64);

impl Stamper {
    pub(crate) fn new() -> Self {
        Stamper(i64::MIN)
    }
    pub(crate) fn next(&mut self) -> i64 {
        self.0 = self.0.max(now_ms());
        self.0
    }
}

fn read_jsonl(
    input: CountingReader,
    chunk_bytes: usize,
    tx: &tokio::sync::mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut stamper = Stamper::new();
    let mut next_line = 1u64;
    loop {
        let mut data = Vec::with_capacity(chunk_bytes + 4096);
        let mut lines = 0u64;
        // Whole lines until the chunk is full: a line is never split between chunks.
        while data.len() < chunk_bytes {
            let n = input.read_until(b'\n', &mut data)?;
            if n == 0 {
                break;
            }
            lines += 1;
        }
        if lines == 0 {
            return Ok(());
        }
        let chunk = Chunk {
            data,
            lines: Lines::From(next_line),
            originals: None,
            stamp: stamper.next(),
        };
        next_line += lines;
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(()); // the pipeline stopped on an error of its own
        }
    }
}

/// Parses a chunk read at `chunk.stamp` (what an event time is checked against) into events
/// stamped `ingest_ts`.
fn parse_chunk(chunk: Chunk, max_future_ms: i64, ingest_ts: i64) -> Parsed {
    let at = Acceptance {
        now_ms: chunk.stamp,
        max_future_ms,
    };
    let stamp = Stamp::bulk(ingest_ts);
    let mut builder = EventBatchBuilder::with_capacity(chunk.data.len() / 200 + 16);
    let mut rejects = Vec::new();
    for (i, raw) in chunk.data.split(|b| *b == b'\n').enumerate() {
        let line = match &chunk.lines {
            Lines::From(first) => first + i as u64,
            Lines::Each(v) => match v.get(i) {
                Some(l) => *l,
                None => continue, // the empty piece after the final newline
            },
        };
        let text = raw.strip_suffix(b"\r").unwrap_or(raw);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The CSV reader puts a JSON string where a record could not become an object: its reason.
        if chunk.originals.is_some() && text.first() == Some(&b'"') {
            let message = serde_json::from_slice::<String>(text).unwrap_or_default();
            rejects.push(Reject {
                line,
                message,
                raw: chunk
                    .originals
                    .as_ref()
                    .and_then(|o| o.get(i).cloned())
                    .unwrap_or_default(),
            });
            continue;
        }
        match parse_event(text, at) {
            Ok(event) => builder.append(&event, stamp),
            Err(e) => rejects.push(Reject {
                line,
                message: e.to_string(),
                raw: match &chunk.originals {
                    Some(o) => o.get(i).cloned().unwrap_or_default(),
                    None => text.to_vec(),
                },
            }),
        }
    }
    let batch = builder
        .finish()
        .expect("the builder's columns match the event schema");
    Parsed { batch, rejects }
}

#[cfg(test)]
mod tests;
