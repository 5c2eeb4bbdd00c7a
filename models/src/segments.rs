//! User segments: k-means (linfa) over the scaled [`user_features`](crate::vectors::user_features).
//!
//! The number of segments `k` is chosen by the **mean silhouette** over a fixed sample of users,
//! trying `k = 2..=max_k` and keeping the best (the smaller `k` on a tie): each segment should be
//! both tight and apart from the others. Assignment is the nearest centroid, in plain Rust.

use linfa::DatasetBase;
use linfa::traits::Fit;
use linfa_clustering::KMeans;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linear::Scaler;
use crate::vectors::USER_FEATURES;

/// Users used to choose `k` (the silhouette is quadratic in them).
pub const SILHOUETTE_SAMPLE: usize = 2_000;

/// A trained segmentation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    /// The feature names, in order.
    pub features: Vec<String>,
    /// The feature scaling.
    pub scaler: Scaler,
    /// One centroid per segment, in scaled feature space.
    pub centroids: Vec<Vec<f64>>,
    /// A short description per segment: its most distinctive features.
    pub labels: Vec<String>,
    /// Users per segment among the training users.
    pub sizes: Vec<u64>,
    /// Mean silhouette per `k` tried, `(k, silhouette)`.
    pub silhouettes: Vec<(usize, f64)>,
}

impl Segments {
    /// Chooses `k` in `2..=max_k` and fits k-means on `rows` (unscaled user features).
    pub fn train(rows: &Array2<f64>, max_k: usize) -> Result<Segments> {
        let n = rows.nrows();
        if n < 4 {
            return Err(Error::NotEnoughData(format!(
                "segments need at least 4 users, got {n}"
            )));
        }
        let scaler = Scaler::fit(rows);
        let mut x = rows.clone();
        scaler.scale_all(&mut x);
        // A fixed, spread sample: every n/SAMPLE-th row.
        let step = n.div_ceil(SILHOUETTE_SAMPLE).max(1);
        let sample = x.select(ndarray::Axis(0), &(0..n).step_by(step).collect::<Vec<_>>());
        let max_k = max_k.clamp(2, sample.nrows() - 1);
        let mut silhouettes = Vec::new();
        for k in 2..=max_k {
            let model = fit(&sample, k)?;
            let assign: Vec<usize> = sample
                .rows()
                .into_iter()
                .map(|r| nearest(&model, r.as_slice().unwrap_or(&[])))
                .collect();
            silhouettes.push((k, silhouette(&sample, &assign, k)));
        }
        let best = silhouettes
            .iter()
            .fold((2, f64::NEG_INFINITY), |b, &(k, s)| {
                if s > b.1 + 1e-9 { (k, s) } else { b }
            })
            .0;
        let centroids = fit(&x, best)?;
        let mut sizes = vec![0u64; best];
        for r in x.rows() {
            sizes[nearest(&centroids, r.as_slice().unwrap_or(&[]))] += 1;
        }
        let labels = centroids.iter().map(|c| describe(c)).collect();
        Ok(Segments {
            features: USER_FEATURES.iter().map(|s| s.to_string()).collect(),
            scaler,
            centroids,
            labels,
            sizes,
            silhouettes,
        })
    }

    /// The segment of one user (unscaled features, [`USER_FEATURES`] order).
    pub fn assign(&self, features: &[f64]) -> usize {
        let mut row = features.to_vec();
        self.scaler.scale(&mut row);
        nearest(&self.centroids, &row)
    }

    /// The number of segments.
    pub fn k(&self) -> usize {
        self.centroids.len()
    }
}

/// The centroids of k-means on `x` (linfa's fixed seed: the same data gives the same model).
fn fit(x: &Array2<f64>, k: usize) -> Result<Vec<Vec<f64>>> {
    let model = KMeans::params(k)
        .n_runs(3)
        .max_n_iterations(200)
        .tolerance(1e-5)
        .fit(&DatasetBase::from(x.clone()))
        .map_err(|e| Error::Linfa(e.to_string()))?;
    Ok(model
        .centroids()
        .rows()
        .into_iter()
        .map(|r| r.to_vec())
        .collect())
}

fn dist2(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
}

fn nearest(centroids: &[Vec<f64>], row: &[f64]) -> usize {
    let mut best = (0, f64::INFINITY);
    for (i, c) in centroids.iter().enumerate() {
        let d = dist2(c, row);
        if d < best.1 {
            best = (i, d);
        }
    }
    best.0
}

/// Mean silhouette `(b − a) / max(a, b)` of the rows of `x` under `assign`; a point alone in its
/// segment scores 0.
pub fn silhouette(x: &Array2<f64>, assign: &[usize], k: usize) -> f64 {
    let rows: Vec<&[f64]> = x
        .rows()
        .into_iter()
        .map(|r| r.to_slice().unwrap_or(&[]))
        .collect();
    let mut total = 0.0;
    for (i, ri) in rows.iter().enumerate() {
        let mut sum = vec![0.0; k];
        let mut count = vec![0usize; k];
        for (j, rj) in rows.iter().enumerate() {
            if i != j {
                sum[assign[j]] += dist2(ri, rj).sqrt();
                count[assign[j]] += 1;
            }
        }
        let own = assign[i];
        if count[own] == 0 {
            continue;
        }
        let a = sum[own] / count[own] as f64;
        let b = (0..k)
            .filter(|&c| c != own && count[c] > 0)
            .map(|c| sum[c] / count[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b);
        }
    }
    total / rows.len().max(1) as f64
}

/// "purchases +1.8σ, spend +1.6σ": the two features furthest from the mean.
fn describe(centroid: &[f64]) -> String {
    let mut by: Vec<(usize, f64)> = centroid.iter().copied().enumerate().collect();
    by.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    by.iter()
        .take(2)
        .map(|(i, z)| format!("{} {:+.1}σ", USER_FEATURES[*i].trim_start_matches("ln_"), z))
        .collect::<Vec<_>>()
        .join(", ")
}
