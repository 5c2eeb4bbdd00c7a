//! Tandem's lake as SQL (ARCHITECTURE.md §1): the DataFusion session over the lake that the batch
//! layer computes its views in, the reader of the snapshots it writes, and the analyst catalog
//! over both, with output as a table, CSV, JSON or Parquet. The batch layer builds on this crate.
//!
//! | module | what |
//! |---|---|
//! | [`context`] | a DataFusion session over the lake: `events_all`, and `events` up to a cutoff, deduplicated |
//! | [`log_sum_exp`] | the `log_sum_exp` aggregate the views decay interest with |
//! | [`snapshots`] | the snapshots in the lake: manifests, complete ones, their Parquet files |
//! | [`catalog`] | the tables: `events`, `events_all`, a snapshot's views, `snapshots` |
//! | [`guard`] | read-only: the statements and plans an analyst may run |
//! | [`script`] | where a statement of a script ends |
//! | [`live`] | `live_profiles`: what the API answers now, read from the online store |
//! | [`output`] | writing results as table, CSV, JSON lines or Parquet |
//! | [`wire`] | `tandem sql serve`: the catalog over the Postgres wire protocol |
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tandem_common::lake::Lake;
//! use tandem_sql::catalog::Catalog;
//!
//! let lake = Lake::open("memory://").unwrap();
//! let catalog = Catalog::open(&lake, None).await.unwrap();
//! let batches = catalog.sql("SELECT count(*) AS n FROM events").await.unwrap();
//! let mut out = Vec::new();
//! let schema = batches[0].schema();
//! tandem_sql::output::write(schema, &batches, tandem_sql::output::Format::Csv, &mut out).unwrap();
//! assert_eq!(String::from_utf8(out).unwrap(), "n\n0\n");
//! # });
//! ```

pub mod catalog;
pub mod context;
pub mod error;
pub mod guard;
pub mod live;
pub mod log_sum_exp;
pub mod output;
pub mod script;
pub mod snapshots;
pub mod wire;

/// The DataFusion this crate is built on, for callers that stream its results.
pub use datafusion;
pub use error::{Error, Result};
