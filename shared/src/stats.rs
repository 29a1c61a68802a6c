//! Mergeable statistics: moments with the parallel-variance merge, and histograms over fixed
//! bin edges with underflow, overflow and NaN counts.
//!
//! These are the building blocks of baseline profiles ([`crate::profile`]) and of the agent's
//! statistics windows: both bin over the *baseline's* edges, so windows from any device and any
//! period merge exactly and compare with the baseline bin by bin.

use serde::{Deserialize, Serialize};

pub mod kll;

/// Count, mean, M2 (sum of squared deviations), min and max of a stream of finite values.
///
/// Merging uses Chan et al.'s parallel algorithm, so merging windows gives the same moments (up
/// to rounding) as observing all values in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Moments {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    /// `None` until a value is observed; JSON has no infinities.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Default for Moments {
    fn default() -> Self {
        Self { count: 0, mean: 0.0, m2: 0.0, min: None, max: None }
    }
}

impl Moments {
    /// Adds one value; non-finite values are ignored (histograms count NaN separately).
    pub fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
    }

    /// Combines two sets of moments as if all values had been observed by one.
    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n_a = self.count as f64;
        let n_b = other.count as f64;
        let n = n_a + n_b;
        let delta = other.mean - self.mean;
        self.mean += delta * n_b / n;
        self.m2 += other.m2 + delta * delta * n_a * n_b / n;
        self.count = self.count.saturating_add(other.count);
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max = match (self.max, other.max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Population variance (divides by n).
    pub fn variance(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.m2 / self.count as f64 }
    }

    /// Sample variance (divides by n - 1).
    pub fn sample_variance(&self) -> f64 {
        if self.count < 2 { 0.0 } else { self.m2 / (self.count - 1) as f64 }
    }

    pub fn std_dev(&self) -> f64 {
        self.variance().sqrt()
    }
}

/// Counts of values per bin of fixed, strictly increasing `edges`.
///
/// With edges `e0 < e1 < … < ek` there are `k` bins; bin `i` holds `ei <= x < e(i+1)`, the last
/// bin also holds `x == ek`. Values below `e0` are underflow, above `ek` overflow, NaN apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub counts: Vec<u64>,
    pub underflow: u64,
    pub overflow: u64,
    pub nan: u64,
}

/// At least two finite, strictly increasing edges.
fn check_edges(edges: &[f64]) -> Result<(), HistogramError> {
    if edges.len() < 2
        || edges.iter().any(|e| !e.is_finite())
        || edges.windows(2).any(|w| w[0] >= w[1])
    {
        return Err(HistogramError::BadEdges);
    }
    Ok(())
}

/// Why a histogram cannot be built or merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistogramError {
    #[error("bin edges must be at least two finite, strictly increasing values")]
    BadEdges,
    #[error("histograms have different bin edges and cannot be merged")]
    EdgesDiffer,
    #[error("histogram has {counts} counts for {bins} bins")]
    CountsMismatch { counts: usize, bins: usize },
}

impl Histogram {
    /// An empty histogram over `edges`.
    pub fn new(edges: Vec<f64>) -> Result<Self, HistogramError> {
        check_edges(&edges)?;
        let bins = edges.len() - 1;
        Ok(Self { edges, counts: vec![0; bins], underflow: 0, overflow: 0, nan: 0 })
    }

    /// Checks the invariants of a histogram that came from outside (a file or the wire).
    pub fn validate(&self) -> Result<(), HistogramError> {
        check_edges(&self.edges)?;
        if self.counts.len() + 1 != self.edges.len() {
            return Err(HistogramError::CountsMismatch {
                counts: self.counts.len(),
                bins: self.edges.len() - 1,
            });
        }
        Ok(())
    }

    /// Counts one value.
    pub fn observe(&mut self, x: f64) {
        if x.is_nan() {
            self.nan += 1;
            return;
        }
        let (first, last) = (self.edges[0], self.edges[self.edges.len() - 1]);
        if x < first {
            self.underflow += 1;
        } else if x > last {
            self.overflow += 1;
        } else {
            // Index of the last edge <= x, clamped so that x == last lands in the last bin.
            let upper = self.edges.partition_point(|e| *e <= x);
            let bin = upper.saturating_sub(1).min(self.counts.len() - 1);
            self.counts[bin] += 1;
        }
    }

    /// Adds another histogram over the same edges.
    pub fn merge(&mut self, other: &Histogram) -> Result<(), HistogramError> {
        if self.edges != other.edges {
            return Err(HistogramError::EdgesDiffer);
        }
        other.validate()?;
        // Counts come from the network: saturate rather than overflow on hostile values.
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
        self.underflow = self.underflow.saturating_add(other.underflow);
        self.overflow = self.overflow.saturating_add(other.overflow);
        self.nan = self.nan.saturating_add(other.nan);
        Ok(())
    }

    /// Every count including underflow, overflow and NaN.
    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |acc, c| acc.saturating_add(*c))
            .saturating_add(self.underflow)
            .saturating_add(self.overflow)
            .saturating_add(self.nan)
    }

    /// Counts laid out as `[underflow, bins…, overflow, nan]`, the vector drift metrics compare.
    pub fn full_counts(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.counts.len() + 3);
        out.push(self.underflow);
        out.extend_from_slice(&self.counts);
        out.push(self.overflow);
        out.push(self.nan);
        out
    }
}

/// Bin edges at the quantiles `0, 1/bins, …, 1` of `values` (non-finite values skipped),
/// with duplicate edges removed. A constant feature gets the edges `[v - 0.5, v + 0.5]`.
pub fn quantile_edges(values: &[f64], bins: usize) -> Result<Vec<f64>, HistogramError> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() || bins == 0 {
        return Err(HistogramError::BadEdges);
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mut edges: Vec<f64> = Vec::with_capacity(bins + 1);
    for i in 0..=bins {
        // Linear interpolation between order statistics (numpy's default "linear" method).
        let position = (n - 1) as f64 * i as f64 / bins as f64;
        let low = position.floor() as usize;
        let high = position.ceil() as usize;
        let fraction = position - low as f64;
        let edge = sorted[low] + (sorted[high] - sorted[low]) * fraction;
        if edges.last().is_none_or(|last| edge > *last) {
            edges.push(edge);
        }
    }
    if edges.len() < 2 {
        let v = edges[0];
        edges = vec![v - 0.5, v + 0.5];
    }
    Ok(edges)
}

/// Fixed latency bucket upper bounds in microseconds (roughly ×2 steps from 50 µs to 10 s),
/// shared by every device so latency histograms merge fleet-wide.
pub const LATENCY_BUCKETS_US: [u64; 19] = [
    50, 100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 51_200, 102_400, 204_800, 409_600,
    819_200, 1_638_400, 3_276_800, 6_553_600, 10_000_000,
];

/// Confidence histogram edges for classifier top-1 probability: ten bins over `[0, 1]`.
pub fn confidence_edges() -> Vec<f64> {
    (0..=10).map(|i| i as f64 / 10.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_moments_equal_one_pass() {
        let values: Vec<f64> = (0..100).map(|i| (i as f64 * 0.37).sin() * 10.0 + 3.0).collect();
        let mut all = Moments::default();
        values.iter().for_each(|v| all.observe(*v));
        let (a, b) = values.split_at(37);
        let mut left = Moments::default();
        let mut right = Moments::default();
        a.iter().for_each(|v| left.observe(*v));
        b.iter().for_each(|v| right.observe(*v));
        left.merge(&right);
        assert_eq!(left.count, all.count);
        assert!((left.mean - all.mean).abs() < 1e-12);
        assert!((left.m2 - all.m2).abs() < 1e-9);
        assert_eq!(left.min, all.min);
        assert_eq!(left.max, all.max);
    }

    #[test]
    fn histogram_bins_edges_and_specials() {
        let mut h = Histogram::new(vec![0.0, 1.0, 2.0]).expect("edges");
        for x in [-1.0, 0.0, 0.5, 1.0, 2.0, 2.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            h.observe(x);
        }
        assert_eq!(h.counts, vec![2, 2]);
        assert_eq!((h.underflow, h.overflow, h.nan), (2, 2, 1));
        assert_eq!(h.total(), 9);
        assert_eq!(h.full_counts(), vec![2, 2, 2, 2, 1]);
    }

    #[test]
    fn bad_edges_and_mismatched_merges_are_refused() {
        assert_eq!(Histogram::new(vec![1.0]), Err(HistogramError::BadEdges));
        assert_eq!(Histogram::new(vec![1.0, 1.0]), Err(HistogramError::BadEdges));
        assert_eq!(Histogram::new(vec![0.0, f64::NAN]), Err(HistogramError::BadEdges));
        let mut a = Histogram::new(vec![0.0, 1.0]).expect("edges");
        let b = Histogram::new(vec![0.0, 2.0]).expect("edges");
        assert_eq!(a.merge(&b), Err(HistogramError::EdgesDiffer));
    }

    #[test]
    fn quantile_edges_follow_numpy_linear() {
        let values: Vec<f64> = (1..=5).map(f64::from).collect();
        // numpy.quantile([1,2,3,4,5], [0, .25, .5, .75, 1]) == [1, 2, 3, 4, 5]
        assert_eq!(quantile_edges(&values, 4).expect("edges"), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(quantile_edges(&[3.0, 3.0], 4).expect("edges"), vec![2.5, 3.5]);
    }
}
