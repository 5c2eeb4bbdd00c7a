//! Reading the snapshots the batch wrote to the lake (ARCHITECTURE.md §5): their manifests,
//! which ones are complete, and their Parquet files; and the Parquet encoding both the batch's
//! snapshot files and the analyst's exports use.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::arrow::async_reader::{
    AsyncFileReader, MetadataSuffixFetch, ParquetRecordBatchStream,
};
use datafusion::parquet::arrow::async_writer::AsyncArrowWriter;
use datafusion::parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use datafusion::parquet::file::properties::WriterProperties;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};
use std::ops::Range;
use std::sync::Arc;
use tandem_common::lake::{Lake, SNAPSHOTS_DIR, snapshot_file};
use tandem_models::manifest::Manifest;

use crate::error::{Error, Result};

/// Rows per row group of the files written here: a reader streaming a file (the batch's
/// incremental run and its publish read a snapshot's profiles a group at a time) holds one
/// group, not the file.
pub const ROW_GROUP_ROWS: usize = 8192;

/// The writer properties of every Parquet file written here: zstd, [`ROW_GROUP_ROWS`].
fn writer_properties() -> Result<WriterProperties> {
    Ok(WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build())
}

/// Parquet bytes of `batches`.
pub fn parquet_bytes(batches: &[RecordBatch]) -> Result<Bytes> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::Internal("no batches to write (not even an empty one)".into()))?;
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(writer_properties()?))?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(Bytes::from(out))
}

/// Reads a file of snapshot `id`.
pub async fn read_file(lake: &Lake, id: &str, name: &str) -> Result<Bytes> {
    Ok(lake
        .store()
        .get(&lake.path(&snapshot_file(id, name)))
        .await?
        .bytes()
        .await?)
}

/// Reads a Parquet file of snapshot `id`.
pub async fn read_parquet(lake: &Lake, id: &str, name: &str) -> Result<Vec<RecordBatch>> {
    let bytes = read_file(lake, id, name).await?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// A Parquet file in an object store, read by byte ranges: the footer, then the column chunks
/// of each row group as the reader comes to it.
#[derive(Debug, Clone)]
pub struct ObjectReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
}

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ObjectReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_via_suffix_and_finish(self)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl MetadataSuffixFetch for &mut ObjectReader {
    fn fetch_suffix(&mut self, suffix: usize) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        let options = GetOptions {
            range: Some(GetRange::Suffix(suffix as u64)),
            ..Default::default()
        };
        async move {
            self.store
                .get_opts(&self.path, options)
                .await
                .map_err(parquet_error)?
                .bytes()
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }
}

/// A Parquet file of snapshot `id`, read a row group at a time.
pub async fn stream_parquet(
    lake: &Lake,
    id: &str,
    name: &str,
) -> Result<ParquetRecordBatchStream<ObjectReader>> {
    let reader = ObjectReader {
        store: lake.store().clone(),
        path: lake.path(&snapshot_file(id, name)),
    };
    Ok(ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .with_batch_size(ROW_GROUP_ROWS)
        .build()?)
}

/// A Parquet file of snapshot `id` written as its batches come (uploaded in parts, never held
/// whole); `close` it to finish the file.
pub fn parquet_writer(
    lake: &Lake,
    id: &str,
    name: &str,
    schema: SchemaRef,
) -> Result<AsyncArrowWriter<BufWriter>> {
    let writer = BufWriter::new(lake.store().clone(), lake.path(&snapshot_file(id, name)));
    Ok(AsyncArrowWriter::try_new(
        writer,
        schema,
        Some(writer_properties()?),
    )?)
}

/// Every snapshot complete in the lake (with a manifest), oldest cutoff first.
pub async fn complete(lake: &Lake) -> Result<Vec<Manifest>> {
    let root = lake.path(SNAPSHOTS_DIR);
    let listed = lake.store().list_with_delimiter(Some(&root)).await?;
    let mut out = Vec::new();
    for dir in listed.common_prefixes {
        if let Some(id) = dir.filename()
            && let Some(m) = manifest(lake, id).await?
        {
            out.push(m);
        }
    }
    out.sort_by_key(|m| m.cutoff_ms);
    Ok(out)
}

/// The manifest of snapshot `id`, if that snapshot is complete in the lake.
pub async fn manifest(lake: &Lake, id: &str) -> Result<Option<Manifest>> {
    Ok(lake.get_json(&snapshot_file(id, "manifest.json")).await?)
}

/// Deletes the complete snapshots of the lake beyond the `keep` newest (by cutoff), never
/// `current` (the one the store serves) nor a snapshot without a manifest (a run may be writing
/// it). Returns the ids deleted, oldest first. The analyst catalog lists complete snapshots
/// only, so a half-deleted one (a crash in the middle) is never shown: its manifest goes first.
pub async fn prune(lake: &Lake, keep: usize, current: &str) -> Result<Vec<String>> {
    use futures::TryStreamExt;
    let manifests = complete(lake).await?;
    let n = manifests.len().saturating_sub(keep.max(1));
    let mut deleted = Vec::new();
    for m in manifests.iter().take(n).filter(|m| m.snapshot != current) {
        let store = lake.store();
        store
            .delete(&lake.path(&snapshot_file(&m.snapshot, "manifest.json")))
            .await?;
        let prefix = lake.path(&format!("{SNAPSHOTS_DIR}/{}", m.snapshot));
        let files: Vec<Path> = store
            .list(Some(&prefix))
            .map_ok(|o| o.location)
            .try_collect()
            .await?;
        for f in files {
            store.delete(&f).await?;
        }
        deleted.push(m.snapshot.clone());
    }
    Ok(deleted)
}
