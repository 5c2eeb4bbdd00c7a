//! CSV input: a header row naming event fields, one event a record. Each record is turned into
//! the JSON object it stands for, so that CSV and JSON lines share one validation path and the
//! same messages. Empty cells are absent fields; `price`, `quantity`, `rating` and an all-digit
//! `ts` are numbers when they read as numbers (otherwise validation names them); `props` is the
//! text of a JSON object.

use std::io::Read;

use super::{Chunk, CountingReader, Lines, Stamper};
use crate::error::{Error, Result};

/// The columns a CSV header may name: the event's fields.
const COLUMNS: [&str; 12] = crate::event::FIELDS;

pub(super) fn read_csv(
    input: CountingReader,
    chunk_bytes: usize,
    tx: &tokio::sync::mpsc::Sender<Result<Chunk>>,
) -> Result<()> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_reader(Box::new(input) as Box<dyn Read + Send>);
    let headers = reader
        .byte_headers()
        .map_err(|e| Error::Input(format!("CSV header (line 1): {e}")))?
        .clone();
    let mut names = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let h = String::from_utf8_lossy(h).trim().to_string();
        if !COLUMNS.contains(&h.as_str()) {
            return Err(Error::Input(format!(
                "CSV header (line 1), column {}: unknown column `{h}`; expected some of {}",
                i + 1,
                COLUMNS.join(", ")
            )));
        }
        if names.contains(&h) {
            return Err(Error::Input(format!(
                "CSV header (line 1): column `{h}` appears twice"
            )));
        }
        names.push(h);
    }

    let mut stamper = Stamper::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let mut data = Vec::with_capacity(chunk_bytes + 4096);
        let mut lines = Vec::new();
        let mut originals = Vec::new();
        while data.len() < chunk_bytes {
            let line = reader.position().line() + 1;
            match reader.read_byte_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let line = record.position().map_or(line, |p| p.line());
                    lines.push(line);
                    originals.push(original(&record));
                    if record.len() != names.len() {
                        // A JSON text that cannot parse as an event, carrying the reason.
                        let why = format!("expected {} columns, got {}", names.len(), record.len());
                        data.extend_from_slice(
                            serde_json::to_string(&why).unwrap_or_default().as_bytes(),
                        );
                    } else {
                        to_json(&names, &record, &mut data);
                    }
                    data.push(b'\n');
                }
                Err(e) => {
                    lines.push(line);
                    originals.push(Vec::new());
                    let why = format!("unreadable CSV record: {e}");
                    data.extend_from_slice(
                        serde_json::to_string(&why).unwrap_or_default().as_bytes(),
                    );
                    data.push(b'\n');
                }
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        let chunk = Chunk {
            data,
            lines: Lines::Each(lines),
            originals: Some(originals),
            stamp: stamper.next(),
        };
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(());
        }
    }
}

/// The record as CSV text again, for the reject file.
fn original(record: &csv::ByteRecord) -> Vec<u8> {
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    let _ = w.write_byte_record(record);
    let mut out = w.into_inner().unwrap_or_default();
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

fn to_json(names: &[String], record: &csv::ByteRecord, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (name, cell) in names.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        let text = String::from_utf8_lossy(cell);
        let raw_ok = match name.as_str() {
            "price" | "rating" => text.parse::<f64>().is_ok_and(f64::is_finite),
            "quantity" => text.parse::<u64>().is_ok(),
            "ts" => text.bytes().all(|b| b.is_ascii_digit()),
            "props" => {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).is_ok()
            }
            _ => false,
        };
        if raw_ok {
            out.extend_from_slice(text.trim().as_bytes());
        } else {
            out.extend_from_slice(serde_json::to_string(&text).unwrap_or_default().as_bytes());
        }
    }
    out.push(b'}');
}
