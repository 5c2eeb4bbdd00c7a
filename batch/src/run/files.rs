//! A snapshot's files in the lake: written by a run, read back by a later one.

use super::*;

pub(super) async fn write_lake(
    lake: &Lake,
    id: &str,
    c: &Computed,
    manifest: &mut Manifest,
) -> Result<()> {
    let [p, i, s] = c
        .batches
        .as_ref()
        .ok_or_else(|| Error::Internal("no view batches to write".into()))?;
    for (name, batches) in [("profiles", p), ("items", i), ("similar_items", s)] {
        snapshot::put_file(
            lake,
            id,
            &format!("{name}.parquet"),
            snapshots::parquet_bytes(batches)?,
        )
        .await?;
    }
    if let Some(b) = &c.baskets {
        snapshot::put_file(lake, id, "baskets.parquet", snapshots::parquet_bytes(b)?).await?;
    }
    let seg = segments_batch(&c.scores, c.models.as_ref())?;
    snapshot::put_file(
        lake,
        id,
        "segments.parquet",
        snapshots::parquet_bytes(&[seg])?,
    )
    .await?;
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

/// A complete snapshot read back from the lake, to publish it without recomputing.
pub(super) async fn load(lake: &Lake, m: &Manifest) -> Result<Computed> {
    let id = &m.snapshot;
    let profile_batches = snapshots::read_parquet(lake, id, "profiles.parquet").await?;
    let profiles = profiles_from(&profile_batches)?;
    let user_items = histories_from(&profile_batches)?;
    let items = items_from(&snapshots::read_parquet(lake, id, "items.parquet").await?)?;
    let similar = similar_from(&snapshots::read_parquet(lake, id, "similar_items.parquet").await?)?;
    let mut scores = BTreeMap::new();
    for b in snapshots::read_parquet(lake, id, "segments.parquet").await? {
        let users = cast(b.column(0), &DataType::Utf8)?;
        let users = users.as_string::<i32>();
        let seg = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let prop = b.column(3).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            scores.insert(
                users.value(i).to_string(),
                (
                    seg.is_valid(i).then(|| seg.value(i)),
                    prop.is_valid(i).then(|| prop.value(i)),
                ),
            );
        }
    }
    let models = match &m.models {
        ModelsEntry::Trained(_) => Some(Models::from_json(
            &snapshots::read_file(lake, id, "models.json").await?,
        )?),
        ModelsEntry::Skipped(_) => None,
    };
    Ok(Computed {
        events: m.events,
        set_aside: m.set_aside,
        profiles,
        user_items,
        items,
        similar,
        scores,
        models,
        models_entry: m.models.clone(),
        rows: m.rows.clone(),
        batches: None,
        baskets: None,
        full_cutoff_ms: m.full_cutoff_ms,
    })
}
