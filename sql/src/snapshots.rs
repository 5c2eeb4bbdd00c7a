//! Reading the snapshots the batch wrote to the lake (ARCHITECTURE.md §5): their manifests,
//! which ones are complete, and their Parquet files; and the Parquet encoding both the batch's
//! snapshot files and the analyst's exports use.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::ObjectStoreExt;
use tandem_common::lake::{Lake, SNAPSHOTS_DIR, snapshot_file};
use tandem_models::manifest::Manifest;

use crate::error::{Error, Result};

/// Parquet bytes of `batches` (zstd).
pub fn parquet_bytes(batches: &[RecordBatch]) -> Result<Bytes> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| Error::Internal("no batches to write (not even an empty one)".into()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, schema, Some(props))?;
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
        let files: Vec<object_store::path::Path> = store
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
