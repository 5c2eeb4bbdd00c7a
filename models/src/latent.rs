//! A latent-factor model of implicit feedback: alternating least squares (ALS) as Hu, Koren and
//! Volinsky define it for implicit data, each least-squares step solved by a few conjugate
//! gradient steps as Takács et al. and the `implicit` library do.
//!
//! The rows are users' baskets (each user's latest items, the same baskets the similar items
//! count): preference 1 for an item in the basket, with confidence `1 + alpha`, and preference 0
//! with confidence 1 for every other item. Only the item factors are kept. A user's vector is
//! computed when needed from the user's recent items by one exact least-squares solve against
//! the item factors ([`Latent::user`], "folding in"), so that a user's latest event counts at
//! once, and the training's features and serving compute it the same way, to the bit.
//!
//! The factors are not mergeable: each batch run fits them again over its baskets (the item
//! factors of the previous fit would do as a start, but the run is cheap next to the views).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// How the model is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatentOptions {
    /// Factors per item (and user).
    pub factors: usize,
    /// Alternations (users, then items).
    pub iterations: usize,
    /// L2 regularisation `λ`.
    pub regularization: f64,
    /// Confidence of an observed item: `1 + alpha`.
    pub alpha: f64,
    /// Conjugate gradient steps per least-squares row.
    pub cg_steps: usize,
    /// Items kept: those in the most rows (ties to the smaller id). A user's scores cost one
    /// dot product per kept item, on every request; the long tail has little to learn from.
    pub max_items: usize,
}

impl Default for LatentOptions {
    fn default() -> Self {
        LatentOptions {
            factors: 32,
            iterations: 10,
            regularization: 0.05,
            alpha: 4.0,
            cg_steps: 3,
            max_items: 10_000,
        }
    }
}

/// The item factors of a fitted model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latent {
    /// Factors per item.
    pub factors: usize,
    /// Regularisation and confidence the factors were fitted with (a user is folded in with
    /// the same).
    pub regularization: f64,
    /// See [`LatentOptions::alpha`].
    pub alpha: f64,
    /// The items, sorted by id; item `i`'s factors are `vectors[i·factors..(i + 1)·factors]`.
    pub items: Vec<String>,
    /// The item factors, row by row.
    pub vectors: Vec<f32>,
    /// `YᵀY + λI`, row-major `factors × factors`: computed once when fitted, so that every
    /// reader folds users in against the same matrix.
    pub gram: Vec<f64>,
    /// The items by the length of their factors, for [`Self::best`]: derived, not stored.
    #[serde(skip)]
    by_norm: ByNorm,
}

/// The items by the length of their factors, longest first (ties to the smaller number), with
/// their factors copied in that order: derived from a model's factors when first needed, so
/// equal whenever the models are.
#[derive(Debug, Clone, Default)]
struct ByNorm(OnceLock<NormOrder>);

impl PartialEq for ByNorm {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

#[derive(Debug, Clone)]
struct NormOrder {
    items: Vec<u32>,
    norms: Vec<f64>,
    vectors: Vec<f32>,
}

impl NormOrder {
    fn of(m: &Latent) -> NormOrder {
        let n = m.items.len() as u32;
        let length = |i: u32| {
            let y = m.vector(i);
            y.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt()
        };
        let all: Vec<f64> = (0..n).map(length).collect();
        let mut items: Vec<u32> = (0..n).collect();
        items.sort_unstable_by(|a, b| all[*b as usize].total_cmp(&all[*a as usize]).then(a.cmp(b)));
        NormOrder {
            norms: items.iter().map(|&i| all[i as usize]).collect(),
            vectors: items.iter().flat_map(|&i| m.vector(i)).copied().collect(),
            items,
        }
    }
}

/// An item and its score, ordered worst first (lower score, then the larger number), so that
/// a max-heap keeps the worst of the best on top.
#[derive(Debug, Clone, Copy)]
struct Ranked {
    score: f64,
    item: u32,
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.item.cmp(&other.item))
    }
}

/// Rows of item numbers (a user's basket each): `members[offsets[r]..offsets[r + 1]]`.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    /// Row starts, one more than the rows.
    pub offsets: &'a [usize],
    /// Item numbers.
    pub members: &'a [u32],
}

impl Rows<'_> {
    /// The transpose, for `columns` columns (member numbers below it): for each column, the
    /// rows holding it, in row order, as (offsets, members).
    pub fn transpose(&self, columns: usize) -> (Vec<usize>, Vec<u32>) {
        let mut offsets = vec![0usize; columns + 1];
        for &i in self.members {
            offsets[i as usize + 1] += 1;
        }
        for i in 0..columns {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut members = vec![0u32; self.members.len()];
        for r in 0..self.len() {
            for &i in self.row(r) {
                members[next[i as usize]] = r as u32;
                next[i as usize] += 1;
            }
        }
        (offsets, members)
    }

    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }
    fn row(&self, r: usize) -> &[u32] {
        &self.members[self.offsets[r]..self.offsets[r + 1]]
    }
}

impl Latent {
    /// Fits item factors for `items` (sorted ids) from the user rows `rows`, whose members
    /// number `items`; the items of no row are left out, and all but the
    /// [`LatentOptions::max_items`] in most rows. `None` when there is nothing to learn from
    /// (no row with two items).
    pub fn fit(items: Vec<String>, rows: Rows<'_>, opts: &LatentOptions) -> Option<Latent> {
        let (items, offsets, members) = keep_items(items, rows, opts.max_items);
        let rows = Rows {
            offsets: &offsets,
            members: &members,
        };
        let k = opts.factors.max(1);
        let n_items = items.len();
        if n_items == 0 || !(0..rows.len()).any(|r| rows.row(r).len() >= 2) {
            return None;
        }
        // The transpose: for each item, the rows holding it.
        let (t_offsets, t_members) = rows.transpose(n_items);
        let columns = Rows {
            offsets: &t_offsets,
            members: &t_members,
        };
        let mut users = initial(rows.len(), k, 1);
        let mut vectors = initial(n_items, k, 2);
        let (lambda, alpha) = (opts.regularization as f32, opts.alpha as f32);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for _ in 0..opts.iterations {
            let g = gram(&vectors, k, lambda);
            solve_rows(
                &mut users,
                rows,
                &vectors,
                &g,
                k,
                alpha,
                opts.cg_steps,
                threads,
            );
            let g = gram(&users, k, lambda);
            solve_rows(
                &mut vectors,
                columns,
                &users,
                &g,
                k,
                alpha,
                opts.cg_steps,
                threads,
            );
        }
        let gram = gram(&vectors, k, lambda)
            .into_iter()
            .map(f64::from)
            .collect();
        Some(Latent {
            factors: k,
            regularization: opts.regularization,
            alpha: opts.alpha,
            items,
            vectors,
            gram,
            by_norm: ByNorm::default(),
        })
    }

    /// The number of `id`, if the model has it.
    pub fn index(&self, id: &str) -> Option<u32> {
        self.items
            .binary_search_by(|i| i.as_str().cmp(id))
            .ok()
            .map(|i| i as u32)
    }

    /// The factors of item `i`.
    pub fn vector(&self, i: u32) -> &[f32] {
        let k = self.factors;
        &self.vectors[i as usize * k..(i as usize + 1) * k]
    }

    /// The vector of a user who interacted with `items` (numbers; repeats count once, in their
    /// first place): the exact least-squares solution against the item factors,
    /// `(YᵀY + λI + α Σ yᵢyᵢᵀ)⁻¹ (1 + α) Σ yᵢ`. `None` for no item.
    pub fn user(&self, items: impl IntoIterator<Item = u32>) -> Option<Vec<f64>> {
        let k = self.factors;
        let mut seen = Vec::new();
        let mut a = self.gram.clone();
        let mut b = vec![0.0f64; k];
        for i in items {
            if seen.contains(&i) {
                continue;
            }
            seen.push(i);
            let y = self.vector(i);
            for r in 0..k {
                let yr = f64::from(y[r]);
                b[r] += (1.0 + self.alpha) * yr;
                let row = &mut a[r * k..(r + 1) * k];
                for (c, cell) in row.iter_mut().enumerate() {
                    *cell += self.alpha * yr * f64::from(y[c]);
                }
            }
        }
        if seen.is_empty() {
            return None;
        }
        cholesky_solve(&mut a, &mut b, k).then_some(b)
    }

    /// The vector ([`Self::user`]) of the user who interacted with `items` (ids; the model's
    /// unknown ones left out). `None` when none of the items is known.
    pub fn user_of<'a>(&self, items: impl IntoIterator<Item = &'a str>) -> Option<Vec<f64>> {
        self.user(items.into_iter().filter_map(|i| self.index(i)))
    }

    /// The numbers of the `n` items the user of vector `user` ([`Self::user`]) scores best
    /// ([`Self::score`]), best first, ties to the smaller number.
    ///
    /// Exact, though most items are never scored: the items are visited longest factors first,
    /// and the visit stops once no item left can reach the `n`th best score, since a score is at
    /// most `|user|·|item|` (Cauchy–Schwarz; a relative margin of 10⁻⁹ covers the rounding of
    /// both sides, some 10⁻¹⁴ for a sum of a few dozen products).
    pub fn best(&self, user: &[f64], n: usize) -> Vec<u32> {
        if n == 0 {
            return Vec::new();
        }
        let order = self.by_norm.0.get_or_init(|| NormOrder::of(self));
        let length = user.iter().map(|v| v * v).sum::<f64>().sqrt();
        let k = self.factors;
        let mut heap: BinaryHeap<Ranked> = BinaryHeap::with_capacity(n + 1);
        for (at, (&item, &norm)) in order.items.iter().zip(&order.norms).enumerate() {
            let worst = match heap.peek() {
                Some(w) if heap.len() == n => *w,
                _ => {
                    let score = dot_wide(user, &order.vectors[at * k..(at + 1) * k]);
                    heap.push(Ranked { score, item });
                    continue;
                }
            };
            if length * norm * (1.0 + 1e-9) < worst.score {
                break;
            }
            let score = dot_wide(user, &order.vectors[at * k..(at + 1) * k]);
            let r = Ranked { score, item };
            if r < worst {
                heap.pop();
                heap.push(r);
            }
        }
        heap.into_sorted_vec().into_iter().map(|r| r.item).collect()
    }

    /// Derives what [`Self::best`] needs now rather than on its first call (a server does it
    /// when it loads a model, not in a request).
    pub fn prepare(&self) {
        self.by_norm.0.get_or_init(|| NormOrder::of(self));
    }

    /// A user's score of item `i`: the dot product of their vectors (summed in four lanes, in
    /// a fixed order: every caller gets the same bits).
    #[inline]
    pub fn score(&self, user: &[f64], i: u32) -> f64 {
        dot_wide(user, self.vector(i))
    }
}

/// `user · y`, summed in four lanes in a fixed order ([`Latent::score`]).
#[inline]
fn dot_wide(user: &[f64], y: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 4];
    let (cu, cy) = (user.chunks_exact(4), y.chunks_exact(4));
    let (ru, ry) = (cu.remainder(), cy.remainder());
    for (u, v) in cu.zip(cy) {
        for l in 0..4 {
            lanes[l] += u[l] * f64::from(v[l]);
        }
    }
    let tail: f64 = ru.iter().zip(ry).map(|(u, v)| u * f64::from(*v)).sum();
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + tail
}

/// The items of at least one row, at most `max` of those in most rows (ties to the smaller
/// number), renumbered in their order, and the rows over them.
fn keep_items(
    items: Vec<String>,
    rows: Rows<'_>,
    max: usize,
) -> (Vec<String>, Vec<usize>, Vec<u32>) {
    let mut count = vec![0u32; items.len()];
    for &i in rows.members {
        count[i as usize] += 1;
    }
    let mut kept: Vec<u32> = (0..items.len() as u32)
        .filter(|&i| count[i as usize] > 0)
        .collect();
    if kept.len() > max {
        kept.sort_unstable_by(|a, b| count[*b as usize].cmp(&count[*a as usize]).then(a.cmp(b)));
        kept.truncate(max);
        kept.sort_unstable();
    }
    let mut number = vec![u32::MAX; items.len()];
    for (new, &old) in kept.iter().enumerate() {
        number[old as usize] = new as u32;
    }
    let (mut offsets, mut members) = (vec![0], Vec::with_capacity(rows.members.len()));
    for r in 0..rows.len() {
        let row = rows.row(r).iter().map(|&i| number[i as usize]);
        members.extend(row.filter(|&n| n != u32::MAX));
        offsets.push(members.len());
    }
    let mut items: Vec<Option<String>> = items.into_iter().map(Some).collect();
    let items = kept
        .iter()
        .filter_map(|&i| items[i as usize].take())
        .collect();
    (items, offsets, members)
}

/// Small deterministic starting factors in `[0, 0.01)`.
fn initial(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..rows * k)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 0.01
        })
        .collect()
}

/// `VᵀV + λI` of the row-major `n × k` matrix `v`.
fn gram(v: &[f32], k: usize, lambda: f32) -> Vec<f32> {
    let mut g = vec![0.0f64; k * k];
    for row in v.chunks_exact(k) {
        for r in 0..k {
            let x = f64::from(row[r]);
            for c in r..k {
                g[r * k + c] += x * f64::from(row[c]);
            }
        }
    }
    let mut out = vec![0.0f32; k * k];
    for r in 0..k {
        for c in r..k {
            out[r * k + c] = g[r * k + c] as f32;
            out[c * k + r] = g[r * k + c] as f32;
        }
        out[r * k + r] += lambda;
    }
    out
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight lanes, so that the compiler vectorises the sum.
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[inline]
fn axpy(out: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o += a * v;
    }
}

fn mat_vec(g: &[f32], x: &[f32], out: &mut [f32], k: usize) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot(&g[r * k..(r + 1) * k], x);
    }
}

/// One half of an alternation: each row of `x` (`rows.len() × k`) re-solved against the fixed
/// factors `y` with Gram matrix `g` (with λ), by `cg_steps` conjugate gradient steps from its
/// current value.
#[allow(clippy::too_many_arguments)]
fn solve_rows(
    x: &mut [f32],
    rows: Rows<'_>,
    y: &[f32],
    g: &[f32],
    k: usize,
    alpha: f32,
    cg_steps: usize,
    threads: usize,
) {
    let n = rows.len();
    let per = n.div_ceil(threads.max(1)).max(1);
    std::thread::scope(|scope| {
        for (t, chunk) in x.chunks_mut(per * k).enumerate() {
            scope.spawn(move || {
                let (mut r, mut p, mut ap) = (vec![0.0f32; k], vec![0.0f32; k], vec![0.0f32; k]);
                for (j, xu) in chunk.chunks_exact_mut(k).enumerate() {
                    let items = rows.row(t * per + j);
                    if items.is_empty() {
                        xu.fill(0.0);
                        continue;
                    }
                    // r = b − A x, A = G + α Σ yyᵀ, b = (1 + α) Σ y.
                    mat_vec(g, xu, &mut r, k);
                    r.iter_mut().for_each(|v| *v = -*v);
                    for &i in items {
                        let yi = &y[i as usize * k..(i as usize + 1) * k];
                        axpy(&mut r, (1.0 + alpha) - alpha * dot(yi, xu), yi);
                    }
                    p.copy_from_slice(&r);
                    let mut rs = dot(&r, &r);
                    for _ in 0..cg_steps {
                        if rs < 1e-20 {
                            break;
                        }
                        mat_vec(g, &p, &mut ap, k);
                        for &i in items {
                            let yi = &y[i as usize * k..(i as usize + 1) * k];
                            axpy(&mut ap, alpha * dot(yi, &p), yi);
                        }
                        let step = rs / dot(&p, &ap);
                        axpy(xu, step, &p);
                        axpy(&mut r, -step, &ap);
                        let next = dot(&r, &r);
                        let beta = next / rs;
                        for (pv, rv) in p.iter_mut().zip(&r) {
                            *pv = rv + beta * *pv;
                        }
                        rs = next;
                    }
                }
            });
        }
    });
}

/// Solves `a x = b` in place (`x` in `b`) for the symmetric positive definite `k × k` matrix
/// `a` by Cholesky; false when `a` is not positive definite.
fn cholesky_solve(a: &mut [f64], b: &mut [f64], k: usize) -> bool {
    for j in 0..k {
        let mut d = a[j * k + j];
        for m in 0..j {
            d -= a[j * k + m] * a[j * k + m];
        }
        if d.is_nan() || d <= 0.0 {
            return false;
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for m in 0..j {
                s -= a[i * k + m] * a[j * k + m];
            }
            a[i * k + j] = s / d;
        }
    }
    // L z = b, then Lᵀ x = z.
    for i in 0..k {
        let mut s = b[i];
        for m in 0..i {
            s -= a[i * k + m] * b[m];
        }
        b[i] = s / a[i * k + i];
    }
    for i in (0..k).rev() {
        let mut s = b[i];
        for m in i + 1..k {
            s -= a[m * k + i] * b[m];
        }
        b[i] = s / a[i * k + i];
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two groups of users, each interacting with its own half of the items.
    fn two_tastes() -> (Vec<String>, Vec<usize>, Vec<u32>) {
        let items: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
        let (mut offsets, mut members) = (vec![0], Vec::new());
        for u in 0..200u32 {
            let base = if u % 2 == 0 { 0 } else { 10 };
            // Each user sees 4 of the group's 10 items.
            for j in 0..4 {
                members.push(base + (u / 2 + j * 3) % 10);
            }
            members[offsets[offsets.len() - 1]..].sort_unstable();
            members.dedup();
            offsets.push(members.len());
        }
        (items, offsets, members)
    }

    #[test]
    fn users_score_their_group_above_the_other() {
        let (items, offsets, members) = two_tastes();
        let rows = Rows {
            offsets: &offsets,
            members: &members,
        };
        // Few factors for few items: with as many factors as items, each user's own items
        // would be all the model learns.
        let opts = LatentOptions {
            factors: 4,
            ..Default::default()
        };
        let m = Latent::fit(items, rows, &opts).unwrap();
        assert_eq!(m.vectors.len(), 20 * m.factors);
        // A new user of the first group's items 0 and 1: the rest of the first group first.
        let u = m.user([0, 1]).unwrap();
        let own: Vec<f64> = (2..10).map(|i| m.score(&u, i)).collect();
        let other: Vec<f64> = (10..20).map(|i| m.score(&u, i)).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!(mean(&own) > mean(&other) + 0.1, "{own:?} {other:?}");
        let top = m.best(&m.user_of(["i00", "i01"]).unwrap(), 4);
        assert!(top.iter().all(|&i| i < 10), "{top:?}");
        // Repeats count once; no item, no vector.
        assert_eq!(m.user([0, 1, 0]), Some(u));
        assert_eq!(m.user([]), None);
        assert_eq!(m.index("i03"), Some(3));
        assert_eq!(m.index("nope"), None);
    }

    /// Every item scored, sorted: what [`Latent::best`] must equal.
    fn every_score(m: &Latent, user: &[f64], n: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (0..m.items.len() as u32).collect();
        all.sort_by(|a, b| {
            m.score(user, *b)
                .total_cmp(&m.score(user, *a))
                .then(a.cmp(b))
        });
        all.truncate(n);
        all
    }

    #[test]
    fn the_best_items_are_exactly_those_every_score_finds() {
        let (items, offsets, members) = two_tastes();
        let rows = Rows {
            offsets: &offsets,
            members: &members,
        };
        let m = Latent::fit(items, rows, &LatentOptions::default()).unwrap();
        for n in [0, 1, 3, 20, 25] {
            for basket in [vec![0], vec![0, 1], vec![12, 3, 17], (0..20).collect()] {
                let u = m.user(basket).unwrap();
                assert_eq!(m.best(&u, n), every_score(&m, &u, n));
            }
        }
        // Random factors of many lengths, with exact ties (repeated vectors) and users of
        // either sign: the pruned visit still finds every one of the best.
        let mut state = 7u64;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
        };
        let k = 8;
        let n_items = 3000;
        let mut vectors = Vec::with_capacity(n_items * k);
        for i in 0..n_items {
            let scale = 1.0 + 9.0 * ((i * 7919) % 101) as f64 / 100.0;
            if i % 5 == 4 {
                let prev = vectors[(i - 1) * k..i * k].to_vec();
                vectors.extend(prev);
            } else {
                vectors.extend((0..k).map(|_| (next() * scale) as f32));
            }
        }
        let m = Latent {
            factors: k,
            regularization: 0.05,
            alpha: 4.0,
            items: (0..n_items).map(|i| format!("i{i:05}")).collect(),
            vectors,
            gram: vec![0.0; k * k],
            by_norm: ByNorm::default(),
        };
        for _ in 0..50 {
            let u: Vec<f64> = (0..k).map(|_| next() * 3.0).collect();
            for n in [1, 10, 64, 500] {
                assert_eq!(m.best(&u, n), every_score(&m, &u, n));
            }
        }
        // Fewer items than asked: all of them.
        assert_eq!(m.best(&[1.0; 8], 5000).len(), n_items);
    }

    #[test]
    fn keeps_the_items_of_most_rows() {
        let (items, offsets, members) = two_tastes();
        let rows = Rows {
            offsets: &offsets,
            members: &members,
        };
        let opts = LatentOptions {
            max_items: 5,
            ..Default::default()
        };
        let m = Latent::fit(items, rows, &opts).unwrap();
        assert_eq!(m.items.len(), 5);
        assert!(m.items.windows(2).all(|w| w[0] < w[1]));
        // An item of no row is left out.
        let rows = Rows {
            offsets: &[0, 2, 4],
            members: &[0, 1, 1, 2],
        };
        let three = vec!["a".to_string(), "b".into(), "c".into(), "unseen".into()];
        let m = Latent::fit(three, rows, &LatentOptions::default()).unwrap();
        assert_eq!(m.items, ["a", "b", "c"]);
    }

    #[test]
    fn nothing_to_learn_from_no_model() {
        let rows = Rows {
            offsets: &[0, 1],
            members: &[0],
        };
        assert!(Latent::fit(vec!["a".into()], rows, &LatentOptions::default()).is_none());
    }

    #[test]
    fn cholesky_solves() {
        // [[4, 2], [2, 3]] x = [2, 1] → x = [0.5, 0].
        let (mut a, mut b) = (vec![4.0, 2.0, 2.0, 3.0], vec![2.0, 1.0]);
        assert!(cholesky_solve(&mut a, &mut b, 2));
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12);
        let (mut a, mut b) = (vec![0.0, 0.0, 0.0, 0.0], vec![1.0, 1.0]);
        assert!(!cholesky_solve(&mut a, &mut b, 2));
    }

    #[test]
    fn fits_the_same_twice() {
        let (items, offsets, members) = two_tastes();
        let rows = Rows {
            offsets: &offsets,
            members: &members,
        };
        let a = Latent::fit(items.clone(), rows, &LatentOptions::default());
        let b = Latent::fit(items, rows, &LatentOptions::default());
        assert_eq!(a, b);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Option<Latent>>(&json).unwrap(), a);
    }
}
