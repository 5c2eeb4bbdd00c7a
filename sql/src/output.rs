//! Query results as a table, CSV, JSON lines or Parquet, written as they stream.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use crate::{Error, Result};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned text table (the default on a terminal).
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row, per line; a null is written as `null`, not left out.
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

/// What a write wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Rows written.
    pub rows: usize,
    /// Whether the table stopped at its row limit with rows left.
    pub truncated: bool,
}

fn io(e: std::io::Error) -> Error {
    Error::Internal(format!("writing the result: {e}"))
}

/// Writes `batches` (of `schema`) to `out` in `format`.
pub fn write(
    schema: SchemaRef,
    batches: &[RecordBatch],
    format: Format,
    out: &mut (dyn Write + Send),
) -> Result<Written> {
    // Owned: the stream outlives the borrow (a stream of record batches is 'static).
    let owned: Vec<RecordBatch> = batches.to_vec();
    let stream = futures::stream::iter(owned.into_iter().map(Ok));
    let stream =
        Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream));
    futures::executor::block_on(write_stream(stream, format, out, None))
}

/// Writes the rows of `stream` to `out` in `format` as they come, so that an export of any
/// size holds one batch in memory. A table is aligned over all its rows, so it is collected:
/// up to `table_limit` rows when given (then the stream is dropped, which stops the query).
pub async fn write_stream(
    mut stream: SendableRecordBatchStream,
    format: Format,
    out: &mut (dyn Write + Send),
    table_limit: Option<usize>,
) -> Result<Written> {
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        Format::Table => {
            let limit = table_limit.unwrap_or(usize::MAX);
            let mut batches = Vec::new();
            let mut truncated = false;
            while let Some(b) = stream.next().await {
                let b = b?;
                if rows + b.num_rows() > limit {
                    batches.push(b.slice(0, limit - rows));
                    rows = limit;
                    truncated = true;
                    break;
                }
                rows += b.num_rows();
                batches.push(b);
            }
            drop(stream);
            // With the schema, an empty result still shows its header.
            writeln!(
                out,
                "{}",
                pretty_format_batches_with_schema(schema, &batches)?
            )
            .map_err(io)?;
            if truncated {
                writeln!(
                    out,
                    "(first {rows} rows shown; more were left out — add a LIMIT, or use \
                     --format csv|json|parquet to get every row; sql.max_display_rows sets \
                     the limit)"
                )
                .map_err(io)?;
            } else {
                writeln!(out, "({rows} row{})", if rows == 1 { "" } else { "s" }).map_err(io)?;
            }
            return Ok(Written { rows, truncated });
        }
        Format::Csv => {
            let mut w = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut any = false;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                w.write(&b)?;
                any = true;
            }
            if !any {
                // The header alone: an empty result is still a CSV file with its columns.
                w.write(&RecordBatch::new_empty(schema))?;
            }
        }
        Format::Json => {
            let mut w = datafusion::arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut *out);
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                w.write(&b)?;
            }
            w.finish()?;
        }
        Format::Parquet => {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
                .build();
            let mut w = ArrowWriter::try_new(&mut *out, schema, Some(props))?;
            while let Some(b) = stream.next().await {
                let b = b?;
                rows += b.num_rows();
                w.write(&b)?;
            }
            w.close()?;
        }
    }
    Ok(Written {
        rows,
        truncated: false,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])),
            ],
        )
        .unwrap();
        (schema, b)
    }

    fn text(schema: SchemaRef, batches: &[RecordBatch], format: Format) -> String {
        let mut out = Vec::new();
        write(schema, batches, format, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_empty_result_keeps_its_header() {
        let (schema, _) = batch();
        let t = text(schema.clone(), &[], Format::Table);
        assert!(t.contains("| n | s |"), "{t}");
        assert!(t.ends_with("(0 rows)\n"), "{t}");
        assert_eq!(text(schema, &[], Format::Csv), "n,s\n");
    }

    #[test]
    fn json_keeps_nulls() {
        let (schema, b) = batch();
        let j = text(schema, &[b], Format::Json);
        assert_eq!(j.lines().nth(1), Some(r#"{"n":2,"s":null}"#), "{j}");
    }

    #[test]
    fn a_table_stops_at_its_limit_and_says_so() {
        let (schema, b) = batch();
        let stream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                schema,
                futures::stream::iter(vec![Ok(b.clone()), Ok(b)]),
            ),
        );
        let mut out = Vec::new();
        let w = futures::executor::block_on(write_stream(stream, Format::Table, &mut out, Some(4)))
            .unwrap();
        assert_eq!(
            w,
            Written {
                rows: 4,
                truncated: true
            }
        );
        let t = String::from_utf8(out).unwrap();
        assert!(t.contains("first 4 rows shown"), "{t}");
    }
}
