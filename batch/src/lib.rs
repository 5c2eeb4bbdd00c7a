//! Tandem's batch layer (ARCHITECTURE.md §1, §5): recomputes every view from the master dataset up to a
//! cutoff, with DataFusion, in the lake session of `tandem_sql::context`.
//!
//! | module | what |
//! |---|---|
//! | [`cutoff`] | the snapshot cutoff: an epoch boundary at or below the lake's watermark |
//! | `engine` | where a full run's views run: here, or on a Ballista cluster (feature `ballista`) |
//! | [`views`] | the views as SQL files (profiles, items, similar items); the first two compute `tandem_common::features` |
//! | [`snapshot`] | the snapshot: Parquet + models + manifest in the lake, materialisation, the pointer flip |
//! | [`run`] | `tandem batch run`: every step in order, with a JSON summary |
//! | [`error`] | the crate's errors |
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tandem_batch::views::View;
//! use tandem_sql::context::LakeContext;
//! use tandem_common::lake::Lake;
//!
//! let lake = Lake::open("memory://").unwrap();
//! let lc = LakeContext::new(&lake).await.unwrap().with_cutoff(1_763_769_600_000).await.unwrap();
//! let profiles = View::Profiles.collect(&lc).await.unwrap();
//! assert_eq!(profiles.iter().map(|b| b.num_rows()).sum::<usize>(), 0); // an empty lake
//! # });
//! ```

pub mod cutoff;
#[cfg(feature = "ballista")]
pub mod engine;
pub mod error;
pub mod run;
pub mod snapshot;
pub mod views;

pub use error::{Error, Result};
