//! Tandem's batch layer (DESIGN §1, §5): recomputes every view from the master dataset up to a
//! cutoff, with DataFusion.
//!
//! | module | what |
//! |---|---|
//! | [`cutoff`] | the snapshot cutoff: an epoch boundary at or below the lake's watermark |
//! | [`context`] | a DataFusion session over the lake: `events_all`, and `events` up to a cutoff, deduplicated |
//! | [`views`] | the views as SQL files (profiles, items, similar items); the first two compute `tandem_common::features` |
//! | [`error`] | the crate's errors |
//!
//! Still to come with issue #3: the models, the snapshot (Parquet + manifest in
//! the lake, materialisation into the online store, the pointer flip) and `tandem batch run`.
//!
//! # Example
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use tandem_batch::{context::LakeContext, views::View};
//! use tandem_common::lake::Lake;
//!
//! let lake = Lake::open("memory://").unwrap();
//! let lc = LakeContext::new(&lake).await.unwrap().with_cutoff(1_763_769_600_000).await.unwrap();
//! let profiles = View::Profiles.collect(&lc).await.unwrap();
//! assert_eq!(profiles.iter().map(|b| b.num_rows()).sum::<usize>(), 0); // an empty lake
//! # });
//! ```

pub mod context;
pub mod cutoff;
pub mod error;
pub mod views;

pub use error::{Error, Result};
