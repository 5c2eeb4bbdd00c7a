//! Tandem's models (DESIGN §6): k-means user segments and the (user, item) ranker, trained with
//! linfa in the batch layer and inferred in plain Rust by the serving layer.
//!
//! Nothing lives here yet; issue #3 builds it. The modules it will hold:
//!
//! | module | what |
//! |---|---|
//! | `segments` | k-means over scaled profile features, k chosen by a stated criterion |
//! | `ranker` | logistic regression over (user, item) features, trained on a time split |
//! | `eval` | hit rate and NDCG at k against the popularity baseline |
