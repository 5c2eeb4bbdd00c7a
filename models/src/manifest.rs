//! The manifest of a snapshot (`snapshots/<id>/manifest.json` in the lake, and the row
//! `tandem:snap:<id>:manifest` in the online store): what the batch run made, from how many
//! events, and how its models scored. The batch writes it; the analyst catalog and serving read
//! it with this one type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The manifest of a snapshot (`snapshots/<id>/manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The snapshot id.
    pub snapshot: String,
    /// The cutoff, RFC 3339.
    pub cutoff: String,
    /// The cutoff, epoch ms.
    pub cutoff_ms: i64,
    /// When the run that made it started, RFC 3339.
    pub created_at: String,
    /// The `tandem` version that made it.
    pub code_version: String,
    /// The feature schema version of the models.
    pub feature_schema_version: u32,
    /// Deduplicated events read (`ingest_ts < cutoff`).
    pub events: u64,
    /// Stored events set aside as invalid (see `LakeContext::set_aside`).
    #[serde(default)]
    pub set_aside: u64,
    /// Rows per output file.
    pub rows: BTreeMap<String, u64>,
    /// Seconds per step of the run that made it.
    pub durations_s: BTreeMap<String, f64>,
    /// The models' offline evaluation, or why there are no models.
    pub models: ModelsEntry,
    /// The bulk loads below the cutoff when it was made (`tandem_batch::snapshot::inputs_below`; empty in manifests
    /// of older versions, taken as unchanged).
    #[serde(default)]
    pub inputs: String,
    /// The snapshot this one was merged from (an incremental run: that snapshot and the events
    /// ingested between the two cutoffs); `None`: recomputed from the whole lake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<String>,
    /// The cutoff of the full run this snapshot descends from through incremental runs (its
    /// own for a full run), epoch ms; the models were trained then. `None` in manifests of older
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_cutoff_ms: Option<i64>,
    /// The layout version of the snapshot's mergeable state (`baskets.parquet`, the profiles'
    /// timed `history`) an incremental run starts from; 0 (older versions): none, the next run
    /// is a full one.
    #[serde(default)]
    pub state_version: u32,
}

/// The models of a snapshot, in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelsEntry {
    /// Trained; `models.json` holds them, with these metrics.
    Trained(crate::training::Metrics),
    /// Not trained, and why (too little history, say); serving ranks by popularity.
    Skipped(String),
}
