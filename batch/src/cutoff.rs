//! Picking a snapshot's cutoff (ARCHITECTURE.md §3): an epoch boundary `C`, never past what the lake has
//! fully written, so that `ingest_ts < C` selects a complete set of events.

use tandem_common::event::format_rfc3339_ms;
use tandem_common::lake::{Lake, archive_watermark, ingest_watermark};

use crate::error::{Error, Result};

/// The cutoff for `requested` (epoch ms; `None` = as late as possible), given the lake's
/// `watermark` and the epoch length: `requested` rounded down to an epoch boundary, and refused
/// when that boundary is past the watermark's.
pub fn pick(requested: Option<i64>, watermark_ms: i64, epoch_ms: i64) -> Result<i64> {
    if epoch_ms <= 0 {
        return Err(Error::User(format!(
            "epoch length must be positive, got {epoch_ms} ms"
        )));
    }
    let latest = watermark_ms.div_euclid(epoch_ms) * epoch_ms;
    match requested {
        None => Ok(latest),
        Some(t) => {
            let c = t.div_euclid(epoch_ms) * epoch_ms;
            if c > latest {
                Err(Error::User(format!(
                    "cutoff {} is past what the lake has fully written (watermark {}); the latest possible cutoff is {}",
                    format_rfc3339_ms(c),
                    format_rfc3339_ms(watermark_ms),
                    format_rfc3339_ms(latest)
                )))
            } else {
                Ok(c)
            }
        }
    }
}

/// The cutoff for `requested` in `lake` at `now_ms`: at or below both the ingest watermark
/// (bulk loads still running) and the archive watermark (the least over the bus partitions of
/// the ingest time below which the archiver has written everything).
pub async fn for_lake(
    lake: &Lake,
    requested: Option<i64>,
    now_ms: i64,
    epoch_ms: i64,
    lease_ms: i64,
) -> Result<i64> {
    let mut watermark = ingest_watermark(lake, now_ms, lease_ms).await?;
    if let Some(archive) = archive_watermark(lake).await? {
        if !archive.missing.is_empty() {
            return Err(Error::User(format!(
                "the archiver has written no record yet for bus partition(s) {:?}: their events may be missing from the lake, so no cutoff is safe until `tandem stream archive` covers them",
                archive.missing
            )));
        }
        watermark = watermark.min(archive.watermark);
    }
    pick(requested, watermark, epoch_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_common::lake::IngestRun;

    const H: i64 = 3_600_000;
    const T: i64 = 1_763_769_600_000; // 2025-11-22T00:00:00Z

    #[test]
    fn cutoffs_are_epoch_boundaries_at_or_below_the_watermark() {
        assert_eq!(pick(None, T + 90 * 60_000, H).unwrap(), T + H);
        assert_eq!(pick(Some(T + 30 * 60_000), T + 5 * H, H).unwrap(), T);
        assert_eq!(
            pick(Some(T + H), T + H, H).unwrap(),
            T + H,
            "a boundary equal to the watermark is fine"
        );
        let err = pick(Some(T + 2 * H), T + H + 1, H).unwrap_err().to_string();
        assert_eq!(
            err,
            "cutoff 2025-11-22T02:00:00.000Z is past what the lake has fully written (watermark 2025-11-22T01:00:00.001Z); \
             the latest possible cutoff is 2025-11-22T01:00:00.000Z"
        );
        assert!(pick(None, T, 0).is_err());
    }

    #[tokio::test]
    async fn a_running_ingest_holds_the_cutoff_back() {
        let lake = Lake::open("memory://").unwrap();
        let lease = 10 * 60_000;
        assert_eq!(
            for_lake(&lake, None, T + 5 * H + 7, H, lease)
                .await
                .unwrap(),
            T + 5 * H
        );
        let mut run =
            IngestRun::start(&lake, "r", T + 2 * H + 30 * 60_000, T + 2 * H + 30 * 60_000)
                .await
                .unwrap();
        assert_eq!(
            for_lake(&lake, None, T + 2 * H + 40 * 60_000, H, lease)
                .await
                .unwrap(),
            T + 2 * H
        );
        run.finish(&lake, T + 3 * H, 1, 10).await.unwrap();
        assert_eq!(
            for_lake(&lake, None, T + 3 * H + 1, H, lease)
                .await
                .unwrap(),
            T + 3 * H
        );
    }

    #[tokio::test]
    async fn the_archive_holds_the_cutoff_back() {
        use tandem_common::lake::ArchiveMark;
        let lake = Lake::open("memory://").unwrap();
        let lease = 10 * 60_000;
        let mark = |partition, watermark| ArchiveMark {
            partition,
            partitions: 2,
            next_offset: 10,
            log: None,
            watermark,
            updated_at: T,
        };
        mark(0, T + 3 * H + 5).save(&lake).await.unwrap();
        let err = for_lake(&lake, None, T + 5 * H, H, lease)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("partition(s) [1]"), "{err}");
        mark(1, T + H + 5).save(&lake).await.unwrap();
        assert_eq!(
            for_lake(&lake, None, T + 5 * H, H, lease).await.unwrap(),
            T + H,
            "the slowest partition decides"
        );
        assert!(
            for_lake(&lake, Some(T + 2 * H), T + 5 * H, H, lease)
                .await
                .is_err()
        );
    }
}
