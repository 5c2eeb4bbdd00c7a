//! The ground every Tandem layer stands on.
//!
//! | module | what |
//! |---|---|
//! | [`event`] | the event of ARCHITECTURE.md §2: wire type, validation with messages naming the field |
//! | [`features`] | the mergeable profile and item features both layers compute, defined once |
//! | [`schema`] | the lake's Arrow schema and conversion between events and record batches |
//! | [`bus`] | the event bus's contract: the `Bus` trait, records, positions, partitioning, options |
//! | [`config`] | the configuration tree: embedded defaults, file, `TANDEM__…` variables, flags |
//! | [`lake`] | the Parquet lake in object storage: layout, whole-or-invisible files, ingest watermark |
//! | [`store`] | the online store: trait, key layout, `memory://` and `redis://` backends |
//! | [`ingest`] | bulk loading of JSON lines and CSV into the lake, streaming |
//! | [`error`] | the error type and the error kinds all crates share |
//! | [`task`] | the task supervisor of every process: named tasks that stop together |
//! | [`telemetry`] | the process's one Prometheus recorder, for every layer |
//!
//! # Example
//!
//! Generate a day of a small storefront (with the test kit's generator), ingest it as JSON lines into an in-memory lake and
//! read it back:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tandem_testkit::generate::{GenerateOptions, Generator};
//! use tandem_common::ingest::{ingest, IngestOptions, InputFormat, Quiet};
//! use tandem_common::{config::Config, lake::Lake};
//!
//! let mut generator = Generator::new(GenerateOptions::new(50, 1, 7, 1_763_800_000_000)).unwrap();
//! let mut jsonl = Vec::new();
//! while generator.next_json(&mut jsonl) {}
//!
//! let lake = Lake::open("memory://").unwrap();
//! let options = IngestOptions::from_config(&Config::defaults(), InputFormat::Jsonl);
//! let summary = ingest(&lake, Box::new(std::io::Cursor::new(jsonl)), options, &mut Quiet).await.unwrap();
//! assert_eq!(summary.accepted, generator.emitted());
//! let rows: usize = lake.read_events().await.unwrap().iter().map(|b| b.num_rows()).sum();
//! assert_eq!(rows as u64, summary.accepted);
//! # });
//! ```

pub mod bus;
pub mod config;
pub mod error;
pub mod event;
pub mod features;
pub mod ingest;
pub mod lake;
pub mod schema;
pub mod store;
pub mod sys;
pub mod task;
pub mod telemetry;
pub mod tls;

pub use error::{Error, ErrorKind, Result};
