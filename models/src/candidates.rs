//! Candidates and ranking (ARCHITECTURE.md §6): items similar to the user's recent items, the top items of
//! the user's strongest categories, and popular items; each candidate keeps its source, and the
//! ranker orders them. Used offline by the evaluation and online by the serving layer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};

use serde::{Deserialize, Serialize};
use tandem_common::features::{ItemStats, Profile};

use crate::linear::LinearModel;
use crate::vectors::{Cf, PairContext, PairRow};

/// Where a candidate came from (borrowing the category it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source<'a> {
    /// One of the best items by collaborative score: similar to the user's recent items
    /// ([`crate::vectors::cf_scores`], item-item collaborative filtering over the similar lists).
    Collaborative,
    /// One of the best items by the latent-factor model's score for the user
    /// ([`crate::latent::Latent::score`]).
    Latent,
    /// A top item of this category, one of the user's strongest.
    Category(&'a str),
    /// Popular overall (also the cold-start fallback).
    Popular,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Collaborative => f.write_str("cf:item_knn"),
            Source::Latent => f.write_str("cf:als"),
            Source::Category(c) => write!(f, "category:{c}"),
            Source::Popular => f.write_str("popular"),
        }
    }
}

/// How many candidates each source gives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CandidateOptions {
    /// Recent items whose similar lists give the collaborative scores.
    pub recent_for_similar: usize,
    /// The best items by collaborative score taken (ranked before the others).
    pub collaborative: usize,
    /// The best items by the latent-factor model's score taken (ranked before the others).
    pub latent: usize,
    /// The user's strongest categories used.
    pub categories: usize,
    /// Top items taken per category.
    pub per_category: usize,
    /// Popular items taken.
    pub popular: usize,
}

impl CandidateOptions {
    /// The most candidates these options give (every source full, no item twice).
    pub fn most(&self) -> usize {
        self.collaborative + self.latent + self.categories * self.per_category + self.popular
    }
}

impl Default for CandidateOptions {
    fn default() -> Self {
        CandidateOptions {
            recent_for_similar: 20,
            collaborative: 15,
            latent: 15,
            categories: 3,
            per_category: 30,
            popular: 50,
        }
    }
}

/// The item side of ranking: stats per item, and the popular lists. Popularity is a log-space
/// score at a fixed reference time, so its order does not change with the time it is read at.
#[derive(Debug, Clone, Default)]
pub struct ItemPool {
    /// Stats per item.
    pub items: HashMap<String, ItemStats>,
    /// Items by popularity, best first.
    pub popular: Vec<String>,
    /// Per category, its items by popularity, best first.
    pub by_category: HashMap<String, Vec<String>>,
}

impl ItemPool {
    /// The pool of `items`, keeping `top` items overall and per category.
    pub fn new(items: HashMap<String, ItemStats>, top: usize) -> ItemPool {
        let mut order: Vec<(&String, &ItemStats)> = items
            .iter()
            .filter(|(_, s)| s.popularity > f64::NEG_INFINITY)
            .collect();
        order.sort_by(|a, b| {
            b.1.popularity
                .total_cmp(&a.1.popularity)
                .then_with(|| a.0.cmp(b.0))
        });
        let mut by_category: HashMap<String, Vec<String>> = HashMap::new();
        for (id, s) in &order {
            if let Some((c, _)) = &s.category {
                let list = by_category.entry(c.clone()).or_default();
                if list.len() < top {
                    list.push((*id).clone());
                }
            }
        }
        let popular = order
            .iter()
            .take(top)
            .map(|(id, _)| (*id).clone())
            .collect();
        ItemPool {
            items,
            popular,
            by_category,
        }
    }
}

/// One candidate, borrowing its id from the profile, the pool or the similar lists: building
/// the candidates of a request allocates only their list (serving builds ~200 per request).
/// `T` is how the item is named: its id, or (in serving) a handle into the snapshot's rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate<'a, T = &'a str> {
    /// The item.
    pub item: T,
    /// Where it came from.
    pub source: Source<'a>,
}

/// The candidates for the user of `profile`: the best items by the collaborative scores `cf`
/// ([`crate::vectors::cf_scores`]; ties by item id), the best by the latent-factor model
/// (`latent`, best first: [`crate::latent::Latent::best`]), top items of the strongest
/// categories, popular items; each item once, under its first source; items in `exclude` left
/// out.
pub fn candidates<'a, S: BuildHasher>(
    profile: &'a Profile,
    pool: &'a ItemPool,
    cf: &Cf<&'a str>,
    latent: &[&'a str],
    exclude: &HashSet<&str, S>,
    opts: &CandidateOptions,
) -> Vec<Candidate<'a>> {
    let mut seen: HashSet<&str, foldhash::fast::FixedState> =
        HashSet::with_capacity_and_hasher(opts.most(), Default::default());
    gather(
        profile,
        cf,
        latent.iter().copied(),
        |i| i,
        |c| {
            pool.by_category
                .get(c)
                .into_iter()
                .flatten()
                .map(String::as_str)
        },
        pool.popular.iter().map(String::as_str),
        |i| !exclude.contains(i) && seen.insert(i),
        opts,
    )
}

/// [`candidates`] for items named by any `T`: `cf` are the collaborative scores, `latent` the
/// latent-factor model's best items, best first; `id(item)` the item's id (ties of scores go by
/// it); `category(c)` the items of category `c` by popularity;
/// `popular` the items by popularity. `admit(item)` says whether an item is a candidate: false
/// for an excluded item and for one admitted before (it keeps each item once, under its first
/// source; [`candidates`] uses a set, serving marks its rows by number).
#[allow(clippy::too_many_arguments)]
pub fn gather<'a, T, K, Cat>(
    profile: &'a Profile,
    cf: &Cf<T>,
    latent: impl IntoIterator<Item = T>,
    id: impl Fn(T) -> K,
    category: impl Fn(&'a str) -> Cat,
    popular: impl IntoIterator<Item = T>,
    mut admit: impl FnMut(T) -> bool,
    opts: &CandidateOptions,
) -> Vec<Candidate<'a, T>>
where
    T: Copy + Hash + Eq,
    K: Ord,
    Cat: IntoIterator<Item = T>,
{
    let mut out = Vec::with_capacity(opts.most());
    let mut by_score: Vec<(T, f64)> = cf.iter().map(|(i, s)| (*i, *s)).collect();
    by_score.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then_with(|| id(a.0).cmp(&id(b.0))));
    for (item, _) in by_score {
        if out.len() == opts.collaborative {
            break;
        }
        if admit(item) {
            out.push(Candidate {
                item,
                source: Source::Collaborative,
            });
        }
    }
    let mut taken = 0;
    for item in latent {
        if taken == opts.latent {
            break;
        }
        if admit(item) {
            taken += 1;
            out.push(Candidate {
                item,
                source: Source::Latent,
            });
        }
    }
    let mut push = |item: T, source: Source<'a>| {
        if admit(item) {
            out.push(Candidate { item, source });
        }
    };
    let mut cats: Vec<(&String, &f64)> = profile.affinity.iter().collect();
    cats.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
    for (c, _) in cats.into_iter().take(opts.categories) {
        for i in category(c).into_iter().take(opts.per_category) {
            push(i, Source::Category(c));
        }
    }
    for i in popular.into_iter().take(opts.popular) {
        push(i, Source::Popular);
    }
    out
}

/// The recent items of the user of `profile` whose similar lists give the collaborative scores
/// ([`crate::vectors::cf_scores`]), most recent first.
pub fn similar_sources<'a>(
    profile: &'a Profile,
    opts: &CandidateOptions,
) -> impl Iterator<Item = &'a str> + use<'a> {
    let recent = profile.recent_items.iter().take(opts.recent_for_similar);
    recent.map(|(i, _)| i.as_str())
}

/// How many of the latent model's best items a user's candidates are drawn from: enough that
/// [`CandidateOptions::latent`] of them are new after the collaborative candidates and
/// `excluded` excluded items took theirs.
pub fn latent_depth(opts: &CandidateOptions, excluded: usize) -> usize {
    match opts.latent {
        0 => 0,
        n => n + opts.collaborative + excluded,
    }
}

/// A ranked recommendation.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'a> {
    /// The item.
    pub item: &'a str,
    /// Where it came from.
    pub source: Source<'a>,
    /// The ranker's probability of interest.
    pub score: f64,
}

/// The `n` best of `candidates` for the user of `profile` at `now_ms`, by the ranker; ties by
/// item id. `stats[i]` are the stats of `candidates[i]` (`None`: the item has none); `user` the
/// user's side of the features at the ranking time, with the collaborative and latent scores
/// ([`PairContext::with_cf`], [`PairContext::with_latent`]).
pub fn rank<'a>(
    ranker: &LinearModel,
    user: &PairContext<'_>,
    candidates: &[Candidate<'a>],
    stats: &[Option<&ItemStats>],
    n: usize,
) -> Vec<Scored<'a>> {
    let none = ItemStats::default();
    let rows = candidates.iter().enumerate().map(|(i, c)| {
        let s = stats.get(i).copied().flatten().unwrap_or(&none);
        (c.item, c.source, user.features(c.item, s))
    });
    rank_rows(ranker, rows, n)
}

/// The `n` best of `(item, source, pair features)` rows by the ranker; ties by item id. What
/// [`rank`] does once the features are computed (serving computes them from its own rows).
///
/// Rows are ordered by the ranker's logit, and the probability (the `score`) is computed for
/// the `n` kept only: the logistic is monotone, so this is the order of the probabilities,
/// except that two logits a rounding apart may share one probability and then keep the logits'
/// order rather than the ids'. Serving ranks ~200 candidates per request and returns ~10.
pub fn rank_rows<'a>(
    ranker: &LinearModel,
    rows: impl Iterator<Item = (&'a str, Source<'a>, PairRow)>,
    n: usize,
) -> Vec<Scored<'a>> {
    let logits = rows.map(|(item, source, features)| (item, source, ranker.logit(&features)));
    rank_logits(logits, n)
}

/// [`rank_rows`] over rows whose logits ([`LinearModel::logit`], or
/// [`LinearModel::logit_of_terms`]) are computed: the `n` best, each with its probability as the
/// score. The collaborative candidates come first, by logit, then the others (the latent
/// model's among them) by logit (ties by item id): the ranker orders the items similar to the
/// user's history, and never puts an item the history does not point to as directly before
/// them (the label window of a rating log, say, favours
/// popular items over similar ones, which the user's own next items do not).
pub fn rank_logits<'a>(
    rows: impl Iterator<Item = (&'a str, Source<'a>, f64)>,
    n: usize,
) -> Vec<Scored<'a>> {
    let (mut scored, mut others): (Vec<Scored>, Vec<Scored>) = rows
        .map(|(item, source, score)| Scored {
            item,
            source,
            score,
        })
        .partition(|s| s.source == Source::Collaborative);
    keep_best(&mut scored, n, |s| (s.score, s.item));
    keep_best(&mut others, n - scored.len(), |s| (s.score, s.item));
    scored.append(&mut others);
    for s in &mut scored {
        s.score = LinearModel::logistic(s.score);
    }
    scored
}

/// Sorts `items` best first by score, ties by item id (so that equal scores rank alike
/// wherever items are ranked), and keeps the first `n`.
pub fn keep_best<T>(items: &mut Vec<T>, n: usize, key: impl Fn(&T) -> (f64, &str)) {
    let order = |a: &T, b: &T| {
        let ((sa, ia), (sb, ib)) = (key(a), key(b));
        sb.total_cmp(&sa).then_with(|| ia.cmp(ib))
    };
    // The n best first (linear), then only those sorted.
    if n == 0 {
        items.clear();
        return;
    }
    if items.len() > n {
        items.select_nth_unstable_by(n - 1, order);
        items.truncate(n);
    }
    items.sort_unstable_by(order);
}

/// Similar-item lists by item, as the batch view gives them: best first, each with its
/// similarity.
pub type SimilarLists = BTreeMap<String, Vec<(String, f64)>>;
