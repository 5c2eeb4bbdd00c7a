//! Tandem's speed layer.
//!
//! | module | what |
//! |---|---|
//! | [`bus`] | the event bus: the [`bus::Bus`] trait, its conformance suite, the embedded `local://` log |
//! | [`speed`] | the speed layer: bus → deltas in the online store, exactly once in effect |
//! | [`archive`] | the archiver: bus → Parquet files in the lake, with per-partition watermarks |
//! | [`dead_letter`] | records a consumer set aside with their reasons, in the lake; listed and replayed |
//! | [`task`] | per-partition tasks that stop together; retries of retryable errors |
//! | [`error`] | the crate's errors |
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use tandem_stream::bus::{self, Bus};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let bus = bus::open(&format!("local://{}", dir.path().display()), 4).await.unwrap();
//! let at = bus.produce(vec![("u1".into(), r#"{"kind":"view"}"#.into())]).await.unwrap();
//! let got = bus.fetch(at[0].partition, 0, 10, Duration::ZERO).await.unwrap();
//! assert_eq!(&got[0].value[..], br#"{"kind":"view"}"#);
//! bus.commit("speed", at[0].partition, 1).await.unwrap();
//! assert_eq!(bus.committed("speed", at[0].partition).await.unwrap(), Some(1));
//! # });
//! ```

pub mod archive;
pub mod bus;
pub mod dead_letter;
pub mod error;
pub mod speed;
pub mod task;

pub use error::{Error, Result};
