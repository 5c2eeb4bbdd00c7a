//! Tandem's analyst SQL (ARCHITECTURE.md §1): one DataFusion catalog over the lake (events) and the
//! snapshots (profiles, items, similar items, segments), with output as a table, CSV, JSON or
//! Parquet.
//!
//! | module | what |
//! |---|---|
//! | [`catalog`] | the tables: `events`, `events_all`, a snapshot's views, `snapshots` |
//! | [`output`] | writing results as table, CSV, JSON lines or Parquet |
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
//! tandem_sql::output::write(&batches, tandem_sql::output::Format::Csv, &mut out).unwrap();
//! assert_eq!(String::from_utf8(out).unwrap(), "n\n0\n");
//! # });
//! ```

pub mod catalog;
pub mod output;

/// Errors of the SQL layer: DataFusion's own messages, and the catalog's.
pub type Error = tandem_batch::Error;
/// The SQL crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
