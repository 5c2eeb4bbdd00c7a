//! Times the batch views over a lake: `cargo run --release -p tandem-batch --example views_bench -- LAKE_URL`.
//!
//! Prints one JSON line: the cutoff, rows in, and seconds and rows out per view. Used by
//! `bench/run.sh`; not a test.

use std::time::Instant;

use tandem_batch::context::LakeContext;
use tandem_batch::views::View;
use tandem_common::lake::Lake;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: views_bench LAKE_URL")?;
    let lake = Lake::open(&url)?;
    let now = tandem_common::event::now_ms();
    let cutoff = tandem_batch::cutoff::for_lake(&lake, None, now, 3_600_000, 600_000).await?;
    // The cutoff is an hour boundary at or below now: look an hour ahead so a fresh lake is in.
    let lc = LakeContext::new(&lake)
        .await?
        .with_cutoff(cutoff + 3_600_000)
        .await?;
    let t = Instant::now();
    let rows_in = lc
        .ctx
        .sql("SELECT count(*) FROM events")
        .await?
        .collect()
        .await?;
    let dedupe_s = t.elapsed().as_secs_f64();
    let rows_in = datafusion::arrow::array::AsArray::as_primitive::<
        datafusion::arrow::datatypes::Int64Type,
    >(rows_in[0].column(0))
    .value(0);
    let mut views = serde_json::Map::new();
    for view in View::ALL {
        let t = Instant::now();
        let rows: usize = view.collect(&lc).await?.iter().map(|b| b.num_rows()).sum();
        views.insert(
            view.name().into(),
            serde_json::json!({"seconds": t.elapsed().as_secs_f64(), "rows": rows}),
        );
    }
    println!(
        "{}",
        serde_json::json!({"events": rows_in, "dedupe_scan_seconds": dedupe_s, "views": views,
                           "peak_rss_mb": tandem_common::sys::peak_rss_bytes().map(|b| b / (1 << 20))})
    );
    Ok(())
}
