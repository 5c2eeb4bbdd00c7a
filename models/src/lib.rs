//! Tandem's models (ARCHITECTURE.md §6): user segments, a (user, item) ranker and a purchase-propensity
//! model, trained with linfa in the batch layer and inferred in plain Rust by the serving layer.
//! Depends on nothing but `tandem_common` and linfa.
//!
//! | module | what |
//! |---|---|
//! | [`vectors`] | the model feature vectors, from the mergeable profile and item features (`tandem_common::features`) at a time; versioned |
//! | [`latent`] | implicit-feedback ALS: item factors, users folded in from their recent items |
//! | [`segments`] | k-means over scaled user features, `k` chosen by the mean silhouette |
//! | [`linear`] | standardised logistic regression (the ranker, the propensity model), AUC |
//! | [`candidates`] | candidates by source (item-item, latent factors, category, popular) and ranking |
//! | [`training`] | the time split, the history fold, training and the offline evaluation |
//! | [`manifest`] | a snapshot's manifest: what the run made and how its models scored |
//! | [`error`] | the crate's errors |
//!
//! # Example
//!
//! ```
//! use tandem_testkit::generate::{GenerateOptions, Generator};
//! use tandem_models::training::{History, Split, TrainOptions, train};
//!
//! let end = 1_763_769_600_000; // 2025-11-22
//! let mut generator = Generator::new(GenerateOptions::new(300, 21, 1, end)).unwrap();
//! let mut history = History::new(Split::new(end, 7 * 86_400_000));
//! let mut all = Vec::new();
//! while let Some(e) = generator.next_event() {
//!     history.add(&e);
//!     all.push(e);
//! }
//! let (profiles, _) = tandem_common::features::recompute(&all);
//! // No similar lists nor latent model here: the candidates are categories' and popular items.
//! let similar = Default::default();
//! let models = train(history, &profiles, &similar, None, &TrainOptions::default()).unwrap();
//! assert!(models.segments.is_some_and(|s| s.k() >= 2));
//! println!("hit rate at 10: {:.3}", models.metrics.ranker.unwrap().hit_rate);
//! ```

pub mod candidates;
pub mod error;
pub mod latent;
pub mod linear;
pub mod manifest;
pub mod segments;
pub mod training;
pub mod vectors;

pub use error::{Error, Result};

#[cfg(test)]
mod tests;
