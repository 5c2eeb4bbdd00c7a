//! Standardised logistic regression: trained with linfa-logistic, inferred in plain Rust.

use linfa::Dataset;
use linfa::traits::Fit;
use linfa_logistic::LogisticRegression;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Per-feature mean and standard deviation; features are scaled to `(x − mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    /// Mean of each feature over the training rows.
    pub mean: Vec<f64>,
    /// Standard deviation of each feature (1 where a feature is constant).
    pub std: Vec<f64>,
}

impl Scaler {
    /// The scaler of the rows of `x`.
    pub fn fit(x: &Array2<f64>) -> Scaler {
        let n = x.nrows().max(1) as f64;
        let mean: Vec<f64> = x.columns().into_iter().map(|c| c.sum() / n).collect();
        let std = x
            .columns()
            .into_iter()
            .zip(&mean)
            .map(|(c, m)| {
                let s = (c.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
                if s > 1e-12 { s } else { 1.0 }
            })
            .collect();
        Scaler { mean, std }
    }

    /// Scales one row in place.
    pub fn scale(&self, row: &mut [f64]) {
        for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
            *v = (*v - m) / s;
        }
    }

    /// Scales every row of `x` in place.
    pub fn scale_all(&self, x: &mut Array2<f64>) {
        for mut row in x.rows_mut() {
            if let Some(r) = row.as_slice_mut() {
                self.scale(r);
            }
        }
    }
}

/// A logistic model `P(y) = σ(w · scale(x) + b)` over named features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearModel {
    /// The feature names, in the order of the weights.
    pub features: Vec<String>,
    /// The feature scaling learned from the training rows.
    pub scaler: Scaler,
    /// One weight per feature.
    pub weights: Vec<f64>,
    /// The intercept.
    pub intercept: f64,
}

impl LinearModel {
    /// Trains on the rows of `x` with labels `y` (L2 penalty `alpha`).
    pub fn train(features: &[&str], mut x: Array2<f64>, y: &[bool], alpha: f64) -> Result<Self> {
        let positives = y.iter().filter(|v| **v).count();
        if positives == 0 || positives == y.len() {
            return Err(Error::NotEnoughData(format!(
                "a logistic model needs both outcomes among its training rows; got {positives} positive of {}",
                y.len()
            )));
        }
        let scaler = Scaler::fit(&x);
        scaler.scale_all(&mut x);
        let data = Dataset::new(x, Array1::from(y.to_vec()));
        let fitted = LogisticRegression::default()
            .alpha(alpha)
            .max_iterations(200)
            .fit(&data)
            .map_err(|e| Error::Linfa(e.to_string()))?;
        // linfa's probability is of `labels().pos`, the larger class: turn it into P(true).
        let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
        Ok(LinearModel {
            features: features.iter().map(|s| s.to_string()).collect(),
            scaler,
            weights: fitted.params().iter().map(|w| sign * w).collect(),
            intercept: sign * fitted.intercept(),
        })
    }

    /// The log-odds of one row (unscaled features, in [`Self::features`] order): the sum of
    /// the row's [`Self::term`]s, in order, plus the intercept.
    pub fn logit(&self, row: &[f64]) -> f64 {
        self.logit_of_terms(row.iter().enumerate().map(|(i, v)| self.term(i, *v)))
    }

    /// Feature `i`'s part of the logit at value `v`: `(v − mean) / std × weight`. Callers that
    /// score many rows sharing some features compute those terms once and give all of them to
    /// [`Self::logit_of_terms`], which gives exactly what [`Self::logit`] gives.
    #[inline]
    pub fn term(&self, i: usize, v: f64) -> f64 {
        (v - self.scaler.mean[i]) / self.scaler.std[i] * self.weights[i]
    }

    /// The log-odds from every feature's [`Self::term`], in feature order.
    #[inline]
    pub fn logit_of_terms(&self, terms: impl IntoIterator<Item = f64>) -> f64 {
        terms.into_iter().sum::<f64>() + self.intercept
    }

    /// The probability of one row.
    pub fn probability(&self, row: &[f64]) -> f64 {
        Self::logistic(self.logit(row))
    }

    /// The probability of a logit: 1 / (1 + e^−logit).
    pub fn logistic(logit: f64) -> f64 {
        1.0 / (1.0 + (-logit).exp())
    }

    /// Checks that the model was trained on `expected` features (a name, a weight, a mean and
    /// a standard deviation for each).
    pub fn check_features(&self, what: &str, expected: &[&str]) -> Result<()> {
        if self
            .features
            .iter()
            .map(String::as_str)
            .eq(expected.iter().copied())
            && self.weights.len() == expected.len()
            && self.scaler.mean.len() == expected.len()
            && self.scaler.std.len() == expected.len()
        {
            Ok(())
        } else {
            Err(Error::Incompatible(format!(
                "the {what} model was trained on features {:?}; this code computes {expected:?}",
                self.features
            )))
        }
    }
}

/// Area under the ROC curve of `scores` against `labels` (ties count half); `None` with one class.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos, mut i) = (0.0, 0usize, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += mid;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = labels.len() - pos;
    (pos > 0 && neg > 0)
        .then(|| (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64))
}
