//! A snapshot's files in the lake: written by a run, read back by a later one.

use super::*;

/// Writes the run's files still to write, the models, and last the manifest (which marks the
/// snapshot complete).
pub(super) async fn write_lake(
    lake: &Lake,
    id: &str,
    c: Computed,
    manifest: &mut Manifest,
) -> Result<()> {
    for (name, batches) in c.files {
        snapshot::put_file(
            lake,
            id,
            &format!("{name}.parquet"),
            snapshots::parquet_bytes(&batches)?,
        )
        .await?;
    }
    if let Some(m) = &c.models {
        snapshot::put_file(lake, id, "models.json", Bytes::from(m.to_json()?)).await?;
    }
    // Last: the manifest marks the snapshot complete.
    snapshot::put_file(
        lake,
        id,
        "manifest.json",
        Bytes::from(serde_json::to_vec_pretty(manifest)?),
    )
    .await
}

/// What a complete snapshot in the lake holds, read back whole (the tests compare snapshots).
#[cfg(test)]
pub(super) struct Loaded {
    pub profiles: BTreeMap<String, Profile>,
    pub user_items: BTreeMap<String, Vec<String>>,
    pub items: BTreeMap<String, ItemStats>,
    pub similar: BTreeMap<String, Vec<crate::views::Similar>>,
    pub scores: BTreeMap<String, (Option<u32>, Option<f64>)>,
}

/// A complete snapshot read back from the lake.
#[cfg(test)]
pub(super) async fn load(lake: &Lake, m: &Manifest) -> Result<Loaded> {
    let id = &m.snapshot;
    let profile_batches = snapshots::read_parquet(lake, id, "profiles.parquet").await?;
    Ok(Loaded {
        profiles: profiles_from(&profile_batches)?,
        user_items: crate::views::histories_from(&profile_batches)?,
        items: items_from(&snapshots::read_parquet(lake, id, "items.parquet").await?)?,
        similar: similar_from(&snapshots::read_parquet(lake, id, "similar_items.parquet").await?)?,
        scores: snapshot::scores(lake, id).await?,
    })
}
