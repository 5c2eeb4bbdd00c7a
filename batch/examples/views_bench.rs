//! Times the batch views over a lake:
//! `cargo run --release -p tandem-batch --example views_bench -- LAKE_URL [SQL_DIR]`.
//!
//! The deduplicated events are materialised once (as `tandem batch run` does), then each view is
//! computed over them. Prints one JSON line: the cutoff, rows in, seconds and rows out per view.
//! With `SQL_DIR`, also writes the profile SQL with its placeholders filled in
//! (`SQL_DIR/profiles.sql`) and the cutoff (`SQL_DIR/cutoff_ms`), for the DuckDB peer in
//! `bench/duck_profiles.py`. With `VIEWS_BENCH_EXPLAIN=1` in the environment, also prints each
//! view's `EXPLAIN ANALYZE` on stderr; with `VIEWS_BENCH_SQL=a.sql,b.sql`, times only those files. Used by `bench/run.sh`; not a test.

use std::time::Instant;

use tandem_batch::views::View;
use tandem_common::lake::Lake;
use tandem_sql::context::LakeContext;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .ok_or("usage: views_bench LAKE_URL [SQL_DIR]")?;
    let lake = Lake::open(&url)?;
    let now = tandem_common::event::now_ms();
    let cutoff = tandem_batch::cutoff::for_lake(&lake, None, now, 3_600_000, 600_000).await?;
    // The cutoff is an hour boundary at or below now: look an hour ahead so a fresh lake is in.
    let cutoff = cutoff + 3_600_000;
    if let Some(dir) = std::env::args().nth(2) {
        std::fs::write(format!("{dir}/profiles.sql"), View::Profiles.sql(cutoff))?;
        std::fs::write(format!("{dir}/cutoff_ms"), cutoff.to_string())?;
    }
    let lc = LakeContext::new(&lake).await?.with_cutoff(cutoff).await?;
    let t = Instant::now();
    let events = lc.materialise().await?;
    let dedupe_s = t.elapsed().as_secs_f64();
    let rows_in: usize = events.iter().map(|b| b.num_rows()).sum();
    let mut views = serde_json::Map::new();
    // With VIEWS_BENCH_SQL, only those files.
    let standard = if std::env::var_os("VIEWS_BENCH_SQL").is_some() {
        &[][..]
    } else {
        &View::ALL[..]
    };
    for &view in standard {
        if std::env::var_os("VIEWS_BENCH_EXPLAIN").is_some() {
            // Where the time goes, per operator, on stderr.
            let sql = format!("EXPLAIN ANALYZE {}", view.sql(cutoff));
            let plan = lc.ctx.sql(&sql).await?.collect().await?;
            eprintln!(
                "{}\n{}",
                view.name(),
                datafusion::arrow::util::pretty::pretty_format_batches(&plan)?
            );
        }
        let t = Instant::now();
        let rows: usize = view.collect(&lc).await?.iter().map(|b| b.num_rows()).sum();
        views.insert(
            view.name().into(),
            serde_json::json!({"seconds": t.elapsed().as_secs_f64(), "rows": rows}),
        );
    }
    // Experiments: more SQL files (placeholders filled as for the views), timed the same way.
    for path in std::env::var("VIEWS_BENCH_SQL")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
    {
        let sql = tandem_batch::views::fill(&std::fs::read_to_string(path)?, cutoff);
        let t = Instant::now();
        let rows: usize = tandem_batch::views::run_script(&lc, &sql)
            .await?
            .iter()
            .map(|b| b.num_rows())
            .sum();
        views.insert(
            path.into(),
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
