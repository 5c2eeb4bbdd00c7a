//! The lake: the master dataset of immutable Parquet event files in object storage.
//!
//! Layout under the lake root:
//!
//! | path | what |
//! |---|---|
//! | `events/date=YYYY-MM-DD/<writer>-<seq>.parquet` | events, partitioned by the UTC date of `ingest_ts` |
//! | `_meta/ingest/<run_id>.json` | one record per ingest run, holding back the ingest watermark while it runs |
//! | `_meta/archive/p-<partition>.json` | the archiver's watermark of one bus partition ([`ArchiveMark`]) |
//! | `_meta/erasures/<ms>-<id>.json` | one erasure ([`Tombstone`]): every later batch leaves out the user's events ingested until then |
//!
//! Files are partitioned by *ingest* date because the batch layer's cutoff is an ingest time:
//! a batch run prunes whole date folders past its cutoff. A file is either whole or not visible:
//! [`EventFileWriter`] streams it through a multipart upload that becomes visible only when
//! completed (a rename on `file://`, the completing request on S3/GCS/Azure).

use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod run_writer;
mod watermark;
mod writer;
pub use run_writer::{RunWriter, bulk_stamp, new_run_id};
pub use watermark::{
    ArchiveMark, ArchiveWatermark, IngestRun, archive_watermark, ingest_watermark,
};
pub use writer::{EventFileWriter, FileWritten, WriterOptions};

/// The folder of event files.
pub const EVENTS_DIR: &str = "events";
/// The folder of ingest run records.
pub const INGEST_RUNS_DIR: &str = "_meta/ingest";
/// The folder of the archiver's per-partition records.
pub const ARCHIVE_DIR: &str = "_meta/archive";
/// The folder of erasure tombstones.
pub const ERASURES_DIR: &str = "_meta/erasures";

/// An erasure (ARCHITECTURE.md §7): the user's events ingested at or before `erased_ms` are gone for
/// every batch run after it (the event files keep them until a compaction rewrites them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The user erased.
    pub user_id: String,
    /// When, as an ingest time (epoch ms): events ingested later are the user's new activity.
    pub erased_ms: i64,
}

/// A lake: an object store and the root of Tandem's layout in it.
#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake").field("url", &self.url).finish()
    }
}

impl Lake {
    /// Opens the lake at `url`: `file:///abs/path`, `file://./rel/path`, a bare path, `memory://`,
    /// or a cloud URL (`s3://bucket/prefix`, `gs://…`, `az://…`) whose credentials come from the
    /// usual environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(url: &str) -> Result<Lake> {
        let bad = |why: String| Error::Config(format!("lake url `{url}`: {why}"));
        let (scheme, rest) = url.split_once("://").unwrap_or(("file", url));
        match scheme {
            "memory" => Ok(Lake {
                store: Arc::new(InMemory::new()),
                root: Path::from(rest.trim_matches('/')),
                url: url.to_string(),
            }),
            "file" => {
                let dir = std::path::PathBuf::from(if rest.is_empty() { "." } else { rest });
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let dir = dir
                    .canonicalize()
                    .map_err(|e| bad(format!("cannot resolve {}: {e}", dir.display())))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_automatic_cleanup(true);
                Ok(Lake {
                    store: Arc::new(store),
                    root: Path::default(),
                    url: format!("file://{}", dir.display()),
                })
            }
            _ => {
                crate::tls::init();
                let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
                let opts: Vec<(String, String)> = std::env::vars()
                    .filter(|(k, _)| {
                        ["AWS_", "GOOGLE_", "AZURE_"]
                            .iter()
                            .any(|p| k.starts_with(p))
                    })
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect();
                let (store, root) =
                    object_store::parse_url_opts(&parsed, opts).map_err(|e| bad(e.to_string()))?;
                Ok(Lake {
                    store: Arc::from(store),
                    root,
                    url: url.to_string(),
                })
            }
        }
    }

    /// The URL the lake was opened with (a `file://` URL resolved to an absolute path).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The object store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// A path under the lake root.
    pub fn path(&self, relative: &str) -> Path {
        let mut p = self.root.clone();
        for part in relative.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// The path of an event file: `events/date=<date>/<name>.parquet`.
    pub fn event_file(&self, date: &str, name: &str) -> Path {
        self.path(&format!("{EVENTS_DIR}/date={date}/{name}.parquet"))
    }

    /// Every event file, sorted by path.
    pub async fn event_files(&self) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        let prefix = self.path(EVENTS_DIR);
        let mut files: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
            .try_collect()
            .await?;
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(files)
    }

    /// Reads every event in the lake into record batches (for tests and small lakes; the batch
    /// layer scans with DataFusion instead).
    pub async fn read_events(&self) -> Result<Vec<arrow::array::RecordBatch>> {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let mut out = Vec::new();
        for meta in self.event_files().await? {
            let bytes = self.store.get(&meta.location).await?.bytes().await?;
            for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()? {
                out.push(batch?);
            }
        }
        Ok(out)
    }

    /// Records an erasure: a tombstone file of its own, so that concurrent erasures never
    /// overwrite each other.
    pub async fn record_erasure(&self, t: &Tombstone) -> Result<()> {
        let name = format!(
            "{ERASURES_DIR}/{:013}-{:016x}.json",
            t.erased_ms,
            rand::random::<u64>()
        );
        self.put_json(&name, t).await
    }

    /// Every erased user with their latest erasure time.
    pub async fn erasures(&self) -> Result<std::collections::BTreeMap<String, i64>> {
        use futures::TryStreamExt;
        let prefix = self.path(ERASURES_DIR);
        let files: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        let mut out = std::collections::BTreeMap::new();
        for f in files {
            let bytes = self.store.get(&f.location).await?.bytes().await?;
            let t: Tombstone = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Input(format!(
                    "erasure tombstone {} is not valid: {e}",
                    f.location
                ))
            })?;
            let at = out.entry(t.user_id).or_insert(t.erased_ms);
            *at = (*at).max(t.erased_ms);
        }
        Ok(out)
    }

    /// Writes a small JSON document in one put (atomic on every backend).
    pub async fn put_json<T: Serialize>(&self, relative: &str, value: &T) -> Result<()> {
        let body = serde_json::to_vec_pretty(value)?;
        self.store
            .put(&self.path(relative), PutPayload::from(body))
            .await?;
        Ok(())
    }

    /// Reads a small JSON document; `None` when it does not exist.
    pub async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        relative: &str,
    ) -> Result<Option<T>> {
        match self.store.get(&self.path(relative)).await {
            Ok(r) => {
                let bytes = r.bytes().await?;
                Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Input(format!("{relative} in the lake is not valid: {e}"))
                })?))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;

/// The lake folder of snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// The snapshot id of a cutoff: `YYYYMMDDTHHMMZ`, or `YYYYMMDDTHHMMSSZ` for a cutoff between
/// minutes (epochs shorter than a minute; they are whole seconds). Ids are not ordered across
/// the two forms: order snapshots by their manifests' `cutoff_ms`.
///
/// ```
/// use tandem_common::lake::snapshot_id;
/// assert_eq!(snapshot_id(1_763_773_200_000), "20251122T0100Z");
/// assert_eq!(snapshot_id(1_763_773_210_000), "20251122T010010Z");
/// ```
pub fn snapshot_id(cutoff_ms: i64) -> String {
    let t = crate::event::format_rfc3339_ms(cutoff_ms); // 2025-11-22T01:00:00.000Z
    let seconds = if cutoff_ms.rem_euclid(60_000) == 0 {
        ""
    } else {
        &t[17..19]
    };
    format!(
        "{}{}{}T{}{}{seconds}Z",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16]
    )
}

/// The id of revision `revision` (1, 2, …) of the snapshot at `cutoff_ms`: the first has the
/// plain id, later ones `-r<revision>` after it.
pub fn revision_id(cutoff_ms: i64, revision: u32) -> String {
    match revision {
        0 | 1 => snapshot_id(cutoff_ms),
        r => format!("{}-r{r}", snapshot_id(cutoff_ms)),
    }
}

/// The lake path of a file of snapshot `id`.
pub fn snapshot_file(id: &str, name: &str) -> String {
    format!("{SNAPSHOTS_DIR}/{id}/{name}")
}
