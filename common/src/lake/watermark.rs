//! The lake's ingest watermark: the ingest time below which every bulk-loaded event is in the lake.
//!
//! Each ingest run keeps a record at `_meta/ingest/<run_id>.json`. It is written *before* the
//! run stamps its first event and refreshed each time a file becomes visible, with `watermark`
//! = the lowest `ingest_ts` the run may still write. Events are stamped in increasing order and
//! files close in that order, so everything the run stamped below its watermark is visible.
//! The lake's watermark is the least watermark of the runs still going (or `now` when none is):
//! a batch cutoff at or below it reads every bulk-loaded event it should. A run whose record
//! has not been refreshed for the configured lease is taken for dead; every file it completed
//! is whole, and the rest were never visible, so it holds nothing back.

use serde::{Deserialize, Serialize};

use super::{ARCHIVE_DIR, INGEST_RUNS_DIR, Lake};
use crate::error::Result;

/// The record of one ingest run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRun {
    /// Unique id of the run; also the prefix of its file names.
    pub run_id: String,
    /// When it started, epoch ms.
    pub started_at: i64,
    /// When this record was last written, epoch ms.
    pub updated_at: i64,
    /// The lowest ingest time the run may still write, epoch ms.
    pub watermark: i64,
    /// The `ingest_ts` its events are stamped with (absent in records of older versions,
    /// whose runs stamped each chunk with the time it was read, from `started_at` on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<i64>,
    /// True once the run has closed its last file.
    pub finished: bool,
    /// Events written into visible files so far.
    pub events: u64,
    /// Files made visible so far.
    pub files: u64,
}

impl IngestRun {
    /// Registers a run starting at `now_ms` that stamps its events `stamp` (at most `now_ms`);
    /// call before writing any event.
    pub async fn start(lake: &Lake, run_id: &str, now_ms: i64, stamp: i64) -> Result<IngestRun> {
        let run = IngestRun {
            run_id: run_id.to_string(),
            started_at: now_ms,
            updated_at: now_ms,
            watermark: stamp.min(now_ms),
            stamp: Some(stamp),
            finished: false,
            events: 0,
            files: 0,
        };
        run.save(lake).await?;
        Ok(run)
    }

    /// Records progress: files are visible up to `files`/`events`, and nothing below
    /// `watermark` will be written any more.
    pub async fn advance(
        &mut self,
        lake: &Lake,
        now_ms: i64,
        watermark: i64,
        files: u64,
        events: u64,
    ) -> Result<()> {
        self.updated_at = now_ms;
        self.watermark = self.watermark.max(watermark);
        self.files = files;
        self.events = events;
        self.save(lake).await
    }

    /// Marks the run finished.
    pub async fn finish(
        &mut self,
        lake: &Lake,
        now_ms: i64,
        files: u64,
        events: u64,
    ) -> Result<()> {
        self.finished = true;
        self.advance(lake, now_ms, now_ms, files, events).await
    }

    async fn save(&self, lake: &Lake) -> Result<()> {
        lake.put_json(&format!("{INGEST_RUNS_DIR}/{}.json", self.run_id), self)
            .await
    }

    /// The lowest `ingest_ts` of the run's events.
    pub fn first_stamp(&self) -> i64 {
        self.stamp.unwrap_or(self.started_at)
    }

    /// Every run recorded in the lake.
    pub async fn list(lake: &Lake) -> Result<Vec<IngestRun>> {
        use futures::TryStreamExt;
        let prefix = lake.path(INGEST_RUNS_DIR);
        let metas: Vec<_> = lake.store().list(Some(&prefix)).try_collect().await?;
        let mut runs = Vec::with_capacity(metas.len());
        for m in metas {
            let Some(name) = m.location.filename().and_then(|f| f.strip_suffix(".json")) else {
                continue;
            };
            if let Some(run) = lake
                .get_json::<IngestRun>(&format!("{INGEST_RUNS_DIR}/{name}.json"))
                .await?
            {
                runs.push(run);
            }
        }
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(runs)
    }
}

/// The lake's ingest watermark at `now_ms`: the least watermark of the live unfinished runs,
/// or `now_ms` when there is none. Runs not refreshed within `lease_ms` are ignored.
pub async fn ingest_watermark(lake: &Lake, now_ms: i64, lease_ms: i64) -> Result<i64> {
    let runs = IngestRun::list(lake).await?;
    Ok(runs
        .iter()
        .filter(|r| !r.finished && now_ms - r.updated_at <= lease_ms)
        .map(|r| r.watermark)
        .min()
        .unwrap_or(now_ms))
}

/// The archiver's record of one bus partition (`_meta/archive/p-<partition>.json`): every event
/// of the partition with `ingest_ts < watermark` is in visible files of the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMark {
    /// The partition.
    pub partition: u32,
    /// How many partitions the bus has: the batch layer waits for a record of each.
    pub partitions: u32,
    /// The next offset to archive: everything below it is in visible files.
    pub next_offset: u64,
    /// The identity of the bus log `next_offset` is of (absent in marks of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// The ingest time below which the partition is archived, epoch ms.
    pub watermark: i64,
    /// When the record was written, epoch ms.
    pub updated_at: i64,
}

impl ArchiveMark {
    fn path(partition: u32) -> String {
        format!("{ARCHIVE_DIR}/p-{partition:04}.json")
    }

    /// Publishes this record.
    pub async fn save(&self, lake: &Lake) -> Result<()> {
        lake.put_json(&Self::path(self.partition), self).await
    }

    /// The record of `partition`, if the archiver wrote one.
    pub async fn load(lake: &Lake, partition: u32) -> Result<Option<ArchiveMark>> {
        lake.get_json(&Self::path(partition)).await
    }

    /// Every record in the lake, by partition.
    pub async fn list(lake: &Lake) -> Result<Vec<ArchiveMark>> {
        use futures::TryStreamExt;
        let prefix = lake.path(ARCHIVE_DIR);
        let metas: Vec<_> = lake.store().list(Some(&prefix)).try_collect().await?;
        let mut marks = Vec::new();
        for m in metas {
            let Some(p) = m
                .location
                .filename()
                .and_then(|f| f.strip_prefix("p-")?.strip_suffix(".json")?.parse().ok())
            else {
                continue;
            };
            if let Some(mark) = Self::load(lake, p).await? {
                marks.push(mark);
            }
        }
        marks.sort_by_key(|m| m.partition);
        Ok(marks)
    }
}

/// The archive watermark: the least watermark over the bus partitions, `None` when nothing was
/// ever archived (a lake loaded by `tandem ingest` alone). A partition without a record, while
/// others have one, holds the watermark at the start of time: its events may be missing.
pub async fn archive_watermark(lake: &Lake) -> Result<Option<ArchiveWatermark>> {
    let marks = ArchiveMark::list(lake).await?;
    let Some(partitions) = marks.iter().map(|m| m.partitions).max() else {
        return Ok(None);
    };
    let missing: Vec<u32> = (0..partitions)
        .filter(|p| !marks.iter().any(|m| m.partition == *p))
        .collect();
    let watermark = match missing.is_empty() {
        true => marks.iter().map(|m| m.watermark).min().unwrap_or(i64::MIN),
        false => i64::MIN,
    };
    Ok(Some(ArchiveWatermark { watermark, missing }))
}

/// The archive watermark and the partitions holding it back for want of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveWatermark {
    /// Everything with an earlier ingest time is archived, epoch ms.
    pub watermark: i64,
    /// Bus partitions with no archive record yet.
    pub missing: Vec<u32>,
}
