//! Item-item co-occurrence over baskets, the second half of the similar-items view.
//!
//! `similar_items.sql` builds the baskets (sessions and users' latest items, capped); counting
//! the pairs is a sparse matrix product (`BᵀB` of the basket × item incidence matrix, as
//! ItemKNN implementations do it), which a join and a hash aggregate over ~10⁸ string pairs
//! does 10–20× slower than a dense accumulator per item. The result is the same rows the SQL
//! formulation gave: for each item the [`SIMILAR_K`](super::SIMILAR_K) best by cosine
//! `co(a, b) / sqrt(n(a) · n(b))`, ties to the smaller item id.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};

use tandem_models::latent::Rows;

use crate::error::{Error, Result};

/// Baskets of items, as a compressed sparse row matrix. Items are numbered in id order, so
/// that comparing numbers compares ids.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Baskets {
    /// The item ids, sorted; an item's number is its index here.
    pub items: Vec<String>,
    /// Basket `b` holds `members[offsets[b]..offsets[b + 1]]`, distinct.
    pub offsets: Vec<usize>,
    /// The items of every basket, by number.
    pub members: Vec<u32>,
    /// Whether basket `b` is a user's (the rows of the user × item matrix), not a session's.
    pub by_user: Vec<bool>,
}

impl Baskets {
    /// The baskets of the script's query rows: `by_user BOOLEAN, items LIST<STRING>`.
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Baskets> {
        let mut builder = BasketsBuilder::default();
        for b in batches {
            builder.push(b)?;
        }
        Ok(builder.finish())
    }

    /// Number of baskets.
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    /// Whether there is no basket.
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// The items of basket `b`.
    pub fn basket(&self, b: usize) -> &[u32] {
        &self.members[self.offsets[b]..self.offsets[b + 1]]
    }

    /// For each item, the baskets holding it (the transpose).
    fn holders(&self) -> (Vec<usize>, Vec<u32>) {
        let rows = Rows {
            offsets: &self.offsets,
            members: &self.members,
        };
        rows.transpose(self.items.len())
    }
}

/// [`Baskets`] built a batch of rows at a time (an incremental run streams its baskets file
/// through one): what it holds is the items' numbers, four bytes an entry, not the rows.
#[derive(Default)]
pub struct BasketsBuilder {
    number: HashMap<String, u32>,
    raw: Vec<u32>,
    offsets: Vec<usize>,
    by_user: Vec<bool>,
}

impl BasketsBuilder {
    /// Adds the baskets of a batch of rows (`by_user BOOLEAN, items LIST<STRING>`).
    pub fn push(&mut self, b: &RecordBatch) -> Result<()> {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::Internal(format!("the baskets query has no column `{name}`")))
        };
        let users = cast(col("by_user")?, &DataType::Boolean)?;
        let users: &BooleanArray = users
            .as_boolean_opt()
            .ok_or_else(|| Error::Internal("baskets column `by_user` is not boolean".into()))?;
        let list_of_strings = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        let lists = cast(col("items")?, &list_of_strings)?;
        let lists = lists.as_list::<i32>();
        let offsets_of = lists.value_offsets();
        let values: &StringArray = lists.values().as_string::<i32>();
        for row in 0..b.num_rows() {
            let (from, to) = (offsets_of[row] as usize, offsets_of[row + 1] as usize);
            for j in from..to {
                if values.is_null(j) {
                    continue;
                }
                let id = values.value(j);
                let next = self.number.len() as u32;
                let n = match self.number.get(id) {
                    Some(&n) => n,
                    None => *self.number.entry(id.to_string()).or_insert(next),
                };
                self.raw.push(n);
            }
            self.offsets.push(self.raw.len());
            self.by_user.push(users.is_valid(row) && users.value(row));
        }
        Ok(())
    }

    /// The baskets, their items numbered in id order.
    pub fn finish(self) -> Baskets {
        let mut items: Vec<(String, u32)> = self.number.into_iter().collect();
        items.sort_unstable();
        let mut renumber = vec![0u32; items.len()];
        for (new, (_, old)) in items.iter().enumerate() {
            renumber[*old as usize] = new as u32;
        }
        let members = self.raw.into_iter().map(|n| renumber[n as usize]).collect();
        let offsets = if self.offsets.is_empty() {
            vec![0]
        } else {
            self.offsets
        };
        Baskets {
            items: items.into_iter().map(|(id, _)| id).collect(),
            offsets,
            members,
            by_user: self.by_user,
        }
    }
}

/// One item's neighbour: its number, the baskets holding both, the cosine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// The other item's number.
    pub item: u32,
    /// Baskets holding both.
    pub co: u64,
    /// `co / sqrt(n(a) · n(b))`.
    pub score: f64,
}

/// For each item (by number), its best `k` neighbours, best first: by cosine, ties to the
/// smaller number (id). Items with no neighbour get an empty list. Runs on `threads` threads.
pub fn top_k(baskets: &Baskets, k: usize, threads: usize) -> Vec<Vec<Neighbour>> {
    let n_items = baskets.items.len();
    let (offsets, holders) = baskets.holders();
    let n: Vec<u64> = (0..n_items)
        .map(|i| (offsets[i + 1] - offsets[i]) as u64)
        .collect();
    let threads = threads.clamp(1, 64).min(n_items.max(1));
    let mut out: Vec<Vec<Neighbour>> = vec![Vec::new(); n_items];
    // Item `a` goes to thread `a % threads`: heavy and light items interleave.
    let parts: Vec<Vec<(usize, Vec<Neighbour>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (offsets, holders, n) = (&offsets, &holders, &n);
                scope.spawn(move || {
                    let mut counts = vec![0u32; n_items];
                    let mut touched: Vec<u32> = Vec::new();
                    let mut lists = Vec::new();
                    for a in (t..n_items).step_by(threads) {
                        for &b in &holders[offsets[a]..offsets[a + 1]] {
                            for &other in baskets.basket(b as usize) {
                                if other as usize == a {
                                    continue;
                                }
                                let c = &mut counts[other as usize];
                                if *c == 0 {
                                    touched.push(other);
                                }
                                *c += 1;
                            }
                        }
                        let mut list: Vec<Neighbour> = touched
                            .iter()
                            .map(|&o| {
                                let co = u64::from(counts[o as usize]);
                                // The product in item order, so both directions of a pair get
                                // the same bits.
                                let (x, y) = if (a as u32) < o {
                                    (n[a], n[o as usize])
                                } else {
                                    (n[o as usize], n[a])
                                };
                                Neighbour {
                                    item: o,
                                    co,
                                    score: co as f64 / (x as f64 * y as f64).sqrt(),
                                }
                            })
                            .collect();
                        for &o in &touched {
                            counts[o as usize] = 0;
                        }
                        touched.clear();
                        let order = |p: &Neighbour, q: &Neighbour| {
                            q.score.total_cmp(&p.score).then(p.item.cmp(&q.item))
                        };
                        if list.len() > k {
                            list.select_nth_unstable_by(k, order);
                            list.truncate(k);
                        }
                        list.sort_unstable_by(order);
                        // Kept to the end: without its spare room (an item's candidates run to
                        // thousands; all items' held ~1 GiB at 10M events).
                        list.shrink_to_fit();
                        lists.push((a, list));
                    }
                    lists
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    for (a, list) in parts.into_iter().flatten() {
        out[a] = list;
    }
    out
}

/// The rows of the similar-items view: `item_id, similar_item, co, score, rank` (rank from 1).
pub fn similar_rows(baskets: &Baskets, lists: &[Vec<Neighbour>]) -> Result<RecordBatch> {
    let rows: usize = lists.iter().map(Vec::len).sum();
    let (mut item, mut other) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    let (mut co, mut score, mut rank) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for (a, list) in lists.iter().enumerate() {
        for (r, nb) in list.iter().enumerate() {
            item.push(baskets.items[a].as_str());
            other.push(baskets.items[nb.item as usize].as_str());
            co.push(nb.co as i64);
            score.push(nb.score);
            rank.push(r as u64 + 1);
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("item_id", DataType::Utf8, false),
        Field::new("similar_item", DataType::Utf8, false),
        Field::new("co", DataType::Int64, false),
        Field::new("score", DataType::Float64, false),
        Field::new("rank", DataType::UInt64, false),
    ]));
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(item)),
            Arc::new(StringArray::from(other)),
            Arc::new(Int64Array::from(co)),
            Arc::new(Float64Array::from(score)),
            Arc::new(UInt64Array::from(rank)),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baskets(of: &[&[&str]]) -> Baskets {
        let mut items: Vec<String> = of
            .iter()
            .flat_map(|b| b.iter().map(|s| s.to_string()))
            .collect();
        items.sort();
        items.dedup();
        let mut offsets = vec![0];
        let mut members = Vec::new();
        for b in of {
            members.extend(
                b.iter()
                    .map(|s| items.binary_search(&s.to_string()).unwrap() as u32),
            );
            offsets.push(members.len());
        }
        Baskets {
            items,
            offsets,
            members,
            by_user: vec![false; of.len()],
        }
    }

    #[test]
    fn counts_cosines_and_ties_to_the_smaller_id() {
        let b = baskets(&[&["a", "b", "c"], &["a", "b"], &["c", "d"], &["d"]]);
        for threads in [1, 2, 3] {
            let lists = top_k(&b, 2, threads);
            // n: a 2, b 2, c 2, d 2. a: b co 2 (1.0), c co 1 (0.5).
            assert_eq!(
                lists[0].iter().map(|n| (n.item, n.co)).collect::<Vec<_>>(),
                [(1, 2), (2, 1)]
            );
            assert_eq!(lists[0][0].score, 1.0);
            // c: a, b, d all 0.5: k = 2 keeps the two smallest ids.
            assert_eq!(lists[2].iter().map(|n| n.item).collect::<Vec<_>>(), [0, 1]);
            assert_eq!(lists[3].iter().map(|n| n.item).collect::<Vec<_>>(), [2]);
        }
        let rows = similar_rows(&b, &top_k(&b, 2, 2)).unwrap();
        assert_eq!(rows.num_rows(), 2 + 2 + 2 + 1);
    }

    #[test]
    fn no_basket_no_rows() {
        let b = Baskets::from_batches(&[]).unwrap();
        assert!(b.is_empty() && top_k(&b, 20, 2).is_empty());
        assert_eq!(similar_rows(&b, &[]).unwrap().num_rows(), 0);
    }
}
