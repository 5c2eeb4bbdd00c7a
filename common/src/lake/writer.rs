//! [`EventFileWriter`]: streams event batches into rolling Parquet files in the lake.

use std::sync::Arc;

use arrow::array::RecordBatch;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use super::Lake;
use crate::error::Result;
use crate::event::date_of_ms;
use crate::schema::event_schema;

/// How event files are cut and encoded.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Rows per file before the next file is started.
    pub file_max_rows: usize,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            file_max_rows: 4 * 1024 * 1024,
            row_group_rows: 1024 * 1024,
            zstd_level: 1,
        }
    }
}

impl From<&crate::config::LakeConfig> for WriterOptions {
    fn from(c: &crate::config::LakeConfig) -> Self {
        WriterOptions {
            file_max_rows: c.file_max_rows,
            row_group_rows: c.row_group_rows,
            zstd_level: c.zstd_level,
        }
    }
}

/// A file the writer completed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileWritten {
    /// Its path in the object store.
    pub path: String,
    /// Rows in it.
    pub rows: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

struct OpenFile {
    date: String,
    path: Path,
    writer: AsyncArrowWriter<BufWriter>,
    rows: usize,
}

/// Writes event batches into `events/date=<ingest date>/<prefix>-<seq>.parquet` files.
///
/// Each batch must hold events of one ingest date (callers stamp a batch at once). A file is
/// closed when it reaches `file_max_rows`, when the date changes, and by [`finish`](Self::finish);
/// until closed it is invisible, so a crash leaves no partial file behind.
pub struct EventFileWriter {
    lake: Lake,
    prefix: String,
    options: WriterOptions,
    props: Arc<WriterProperties>,
    open: Option<OpenFile>,
    seq: u32,
    written: Vec<FileWritten>,
}

impl EventFileWriter {
    /// A writer naming its files `<prefix>-<seq>.parquet`; `prefix` must be unique to this writer.
    pub fn new(lake: Lake, prefix: impl Into<String>, options: WriterOptions) -> Result<Self> {
        let level = ZstdLevel::try_new(options.zstd_level)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(level))
            .set_max_row_group_row_count(Some(options.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            // Identifiers are near-unique: a dictionary would only be abandoned after costing time.
            .set_column_dictionary_enabled(ColumnPath::from("event_id"), false)
            .build();
        Ok(EventFileWriter {
            lake,
            prefix: prefix.into(),
            options,
            props: Arc::new(props),
            open: None,
            seq: 0,
            written: Vec::new(),
        })
    }

    /// Writes a batch of events of one ingest date (`ingest_date_ms` is any ingest time in it).
    pub async fn write(&mut self, batch: &RecordBatch, ingest_date_ms: i64) -> Result<()> {
        let date = date_of_ms(ingest_date_ms);
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.open.as_ref().is_some_and(|f| f.date != date) {
                self.close_file().await?;
            }
            if self.open.is_none() {
                let name = format!("{}-{:05}", self.prefix, self.seq);
                self.seq += 1;
                let path = self.lake.event_file(&date, &name);
                let object = BufWriter::new(self.lake.store().clone(), path.clone());
                let writer =
                    AsyncArrowWriter::try_new(object, event_schema(), Some((*self.props).clone()))?;
                self.open = Some(OpenFile {
                    date: date.clone(),
                    path,
                    writer,
                    rows: 0,
                });
            }
            let file = self.open.as_mut().expect("opened above");
            let room = self.options.file_max_rows - file.rows;
            let n = room.min(batch.num_rows() - offset);
            file.writer.write(&batch.slice(offset, n)).await?;
            file.rows += n;
            offset += n;
            if file.rows >= self.options.file_max_rows {
                self.close_file().await?;
            }
        }
        Ok(())
    }

    async fn close_file(&mut self) -> Result<()> {
        if let Some(f) = self.open.take() {
            let writer = f.writer;
            let bytes = writer.bytes_written() as u64;
            writer.close().await?;
            let bytes = match self.lake.store().head(&f.path).await {
                Ok(meta) => meta.size,
                Err(_) => bytes,
            };
            self.written.push(FileWritten {
                path: f.path.to_string(),
                rows: f.rows as u64,
                bytes,
            });
        }
        Ok(())
    }

    /// Files completed so far.
    pub fn written(&self) -> &[FileWritten] {
        &self.written
    }

    /// Rows written into the file still open (not yet visible).
    pub fn pending_rows(&self) -> usize {
        self.open.as_ref().map_or(0, |f| f.rows)
    }

    /// Closes the open file, if any, and returns every file written.
    pub async fn finish(mut self) -> Result<Vec<FileWritten>> {
        self.close_file().await?;
        Ok(self.written)
    }
}
