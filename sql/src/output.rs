//! Query results as a table, CSV, JSON lines or Parquet.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;

use crate::{Error, Result};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table (the default on a terminal).
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row, per line.
    Json,
    /// A Parquet file (zstd).
    Parquet,
}

impl std::str::FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        match s {
            "table" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "parquet" => Ok(Format::Parquet),
            other => Err(Error::User(format!(
                "output format `{other}`: expected table, csv, json or parquet"
            ))),
        }
    }
}

/// Writes `batches` to `out` in `format`.
pub fn write(batches: &[RecordBatch], format: Format, out: &mut dyn Write) -> Result<()> {
    let io = |e: std::io::Error| Error::Internal(format!("writing the result: {e}"));
    match format {
        Format::Table => {
            writeln!(out, "{}", pretty_format_batches(batches)?).map_err(io)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io)?;
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            if batches.is_empty() {
                return Err(Error::User(
                    "the query returned no batches to write as Parquet".into(),
                ));
            }
            out.write_all(&crate::snapshots::parquet_bytes(batches)?)
                .map_err(io)?;
        }
    }
    Ok(())
}
