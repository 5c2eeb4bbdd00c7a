//! Tandem's speed layer.
//!
//! | module | what |
//! |---|---|
//! | [`bus`] | the event bus: the [`bus::Bus`] trait, its conformance suite, the embedded `local://` log |
//! | [`error`] | the crate's errors |
//!
//! The consumer applying deltas to the online store and the archiver come with issue #4.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::time::Duration;
//! use tandem_stream::bus::{self, Bus};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let bus = bus::open(&format!("local://{}", dir.path().display()), 4).unwrap();
//! let at = bus.produce(vec![("u1".into(), r#"{"kind":"view"}"#.into())]).await.unwrap();
//! let got = bus.fetch(at[0].partition, 0, 10, Duration::ZERO).await.unwrap();
//! assert_eq!(&got[0].value[..], br#"{"kind":"view"}"#);
//! bus.commit("speed", at[0].partition, 1).await.unwrap();
//! assert_eq!(bus.committed("speed", at[0].partition).await.unwrap(), Some(1));
//! # });
//! ```

pub mod bus;
pub mod error;

pub use error::{Error, Result};
