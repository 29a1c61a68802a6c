//! Metrics on binned counts: PSI, Jensen–Shannon distance, the chi-square test of homogeneity
//! and bounds on the KS statistic.
//!
//! Both inputs are count vectors over the *same* bins (for numeric features the reference's
//! quantile bins plus underflow and overflow; for categorical features one bin per category),
//! so these work alike on raw CSV data and on merged statistics windows, whose histograms share
//! the baseline's edges. PSI, JS and chi-square are exact functions of the bin counts; the KS
//! statistic is not (the order of values inside a bin is unknown), so [`ks_bounds`] returns
//! the interval it must lie in.

use serde::{Deserialize, Serialize};

use super::special::chi_square_sf;

/// What PSI puts in place of an empty bin's proportion, so `ln(p/q)` stays finite. The same
/// value as Evidently's default; it caps one empty bin's contribution at about
/// `p · ln(p / 0.0001)`.
pub const PSI_EPSILON: f64 = 1e-4;

fn proportions(counts: &[u64]) -> Option<Vec<f64>> {
    let total: f64 = counts.iter().map(|c| *c as f64).sum();
    (total > 0.0).then(|| counts.iter().map(|c| *c as f64 / total).collect())
}

/// Population stability index `Σ (q_i − p_i) · ln(q_i / p_i)` with reference proportions `p`
/// and current proportions `q`; empty bins count as [`PSI_EPSILON`]. `None` when either side
/// has no observations or the vectors differ in length.
pub fn psi(reference: &[u64], current: &[u64]) -> Option<f64> {
    if reference.len() != current.len() {
        return None;
    }
    let p = proportions(reference)?;
    let q = proportions(current)?;
    Some(
        p.iter()
            .zip(&q)
            .map(|(p, q)| {
                let (p, q) = (p.max(PSI_EPSILON), q.max(PSI_EPSILON));
                (q - p) * (q / p).ln()
            })
            .sum(),
    )
}

/// Jensen–Shannon *distance* (the square root of the divergence) in base 2, so it lies in
/// `[0, 1]`; the same quantity as `scipy.spatial.distance.jensenshannon(p, q, base=2)`.
pub fn js_distance(reference: &[u64], current: &[u64]) -> Option<f64> {
    if reference.len() != current.len() {
        return None;
    }
    let p = proportions(reference)?;
    let q = proportions(current)?;
    let relative_entropy = |a: f64, m: f64| if a > 0.0 { a * (a / m).ln() } else { 0.0 };
    let divergence: f64 = p
        .iter()
        .zip(&q)
        .map(|(p, q)| {
            let m = (p + q) / 2.0;
            relative_entropy(*p, m) + relative_entropy(*q, m)
        })
        .sum::<f64>()
        / std::f64::consts::LN_2
        / 2.0;
    Some(divergence.max(0.0).sqrt())
}

/// Pearson's chi-square test of homogeneity on the 2 × k table of counts (no continuity
/// correction; scipy's `chi2_contingency(table, correction=False)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChiSquare {
    pub statistic: f64,
    /// `k − 1`, counting only bins that are non-empty in at least one sample.
    pub dof: u64,
    pub p_value: f64,
}

/// The chi-square test of homogeneity of two count vectors. `None` when either side is empty
/// or the vectors differ in length. Bins empty on both sides are left out.
pub fn chi_square(reference: &[u64], current: &[u64]) -> Option<ChiSquare> {
    if reference.len() != current.len() {
        return None;
    }
    let columns: Vec<(f64, f64)> = reference
        .iter()
        .zip(current)
        .filter(|(a, b)| **a + **b > 0)
        .map(|(a, b)| (*a as f64, *b as f64))
        .collect();
    let row_a: f64 = columns.iter().map(|c| c.0).sum();
    let row_b: f64 = columns.iter().map(|c| c.1).sum();
    if row_a == 0.0 || row_b == 0.0 {
        return None;
    }
    let total = row_a + row_b;
    let statistic: f64 = columns
        .iter()
        .map(|(a, b)| {
            let column = a + b;
            let expected_a = row_a * column / total;
            let expected_b = row_b * column / total;
            (a - expected_a).powi(2) / expected_a + (b - expected_b).powi(2) / expected_b
        })
        .sum();
    let dof = columns.len().saturating_sub(1) as u64;
    let p_value = if dof == 0 { 1.0 } else { chi_square_sf(statistic, dof as f64) };
    Some(ChiSquare { statistic, dof, p_value })
}

/// The least expected count per cell [`chi_square_ordered`] merges adjacent bins up to: the
/// usual condition for the chi-square approximation to hold.
pub const MIN_EXPECTED: f64 = 5.0;

/// The chi-square test of homogeneity over *ordered* bins (a histogram), after merging
/// adjacent bins until every cell's expected count is at least [`MIN_EXPECTED`]. Without the
/// merge, one value beyond the reference's range (an underflow or overflow bin the reference
/// never filled) would make the statistic explode and any sample look significant. Merging
/// only loses resolution, never counts. `None` as for [`chi_square`].
pub fn chi_square_ordered(reference: &[u64], current: &[u64]) -> Option<ChiSquare> {
    if reference.len() != current.len() {
        return None;
    }
    let row_a: f64 = reference.iter().map(|c| *c as f64).sum();
    let row_b: f64 = current.iter().map(|c| *c as f64).sum();
    if row_a == 0.0 || row_b == 0.0 {
        return None;
    }
    // A column of `c` values has expected counts row·c/total in each row; the smaller row
    // decides how many values a column needs.
    let needed = MIN_EXPECTED * (row_a + row_b) / row_a.min(row_b);
    let (mut merged_a, mut merged_b) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (0u64, 0u64);
    for (x, y) in reference.iter().zip(current) {
        a += x;
        b += y;
        if (a + b) as f64 >= needed {
            merged_a.push(a);
            merged_b.push(b);
            (a, b) = (0, 0);
        }
    }
    if a + b > 0 {
        // The remainder joins the last full column (or is the only one).
        match (merged_a.last_mut(), merged_b.last_mut()) {
            (Some(last_a), Some(last_b)) => {
                *last_a += a;
                *last_b += b;
            }
            _ => {
                merged_a.push(a);
                merged_b.push(b);
            }
        }
    }
    chi_square(&merged_a, &merged_b)
}

/// Where the KS statistic of the underlying values must lie, given only binned counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsBounds {
    /// The largest ECDF difference at a bin boundary: attained by the raw data too.
    pub lower: f64,
    /// The largest difference any arrangement of values inside the bins could produce.
    pub upper: f64,
}

/// Bounds on the two-sample KS statistic from counts over ordered bins (underflow first,
/// overflow last). Inside bin `k` the two ECDFs rise by `p_k` and `q_k` in an unknown way, so
/// their difference stays within `[Δ_k − q_k, Δ_k + p_k]` where `Δ_k` is the difference at the
/// bin's left boundary; `upper − lower` is therefore at most the largest bin's mass.
pub fn ks_bounds(reference: &[u64], current: &[u64]) -> Option<KsBounds> {
    if reference.len() != current.len() {
        return None;
    }
    let p = proportions(reference)?;
    let q = proportions(current)?;
    let (mut cumulative_p, mut cumulative_q) = (0.0_f64, 0.0_f64);
    let (mut lower, mut upper) = (0.0_f64, 0.0_f64);
    for (p, q) in p.iter().zip(&q) {
        let delta = cumulative_p - cumulative_q;
        upper = upper.max((delta + p).abs()).max((delta - q).abs());
        cumulative_p += p;
        cumulative_q += q;
        lower = lower.max((cumulative_p - cumulative_q).abs());
        upper = upper.max(lower);
    }
    Some(KsBounds { lower, upper: upper.min(1.0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_distributions_score_zero() {
        let a = [10, 20, 30, 40];
        let b = [1, 2, 3, 4];
        assert_eq!(psi(&a, &b), Some(0.0));
        assert!(js_distance(&a, &b).expect("counts") < 1e-7);
        let chi = chi_square(&a, &b).expect("counts");
        assert!(chi.statistic < 1e-12 && (chi.p_value - 1.0).abs() < 1e-9 && chi.dof == 3);
        let ks = ks_bounds(&a, &b).expect("counts");
        assert!(ks.lower < 1e-12);
        assert!((ks.upper - 0.4).abs() < 1e-12, "the largest bin bounds the gap: {ks:?}");
    }

    #[test]
    fn disjoint_distributions_score_maximal() {
        let a = [5, 0];
        let b = [0, 5];
        assert!((js_distance(&a, &b).expect("counts") - 1.0).abs() < 1e-12);
        // (1 − ε)·ln(1/ε) twice.
        let expected = 2.0 * (1.0 - PSI_EPSILON) * (1.0 / PSI_EPSILON).ln();
        assert!((psi(&a, &b).expect("counts") - expected).abs() < 1e-9);
        let ks = ks_bounds(&a, &b).expect("counts");
        assert_eq!((ks.lower, ks.upper), (1.0, 1.0));
    }

    #[test]
    fn chi_square_matches_a_hand_computed_table() {
        // Table [[10, 20], [20, 10]]: expected 15 everywhere, statistic 4 · 25/15.
        let chi = chi_square(&[10, 20], &[20, 10]).expect("counts");
        assert!((chi.statistic - 100.0 / 15.0).abs() < 1e-12);
        assert_eq!(chi.dof, 1);
        assert!((chi.p_value - 0.009_823_274_507_519_235).abs() < 1e-12, "{}", chi.p_value);
        // Bins empty on both sides do not count as degrees of freedom.
        assert_eq!(chi_square(&[10, 0, 20], &[20, 0, 10]), Some(chi));
    }

    #[test]
    fn ordered_bins_merge_until_expected_counts_are_large_enough() {
        // 5000 reference values in ten bins, none beyond the range; 60 current values like
        // them, two of them beyond the maximum.
        let reference = [0, 500, 500, 500, 500, 500, 500, 500, 500, 500, 500, 0];
        let current = [0, 6, 6, 6, 6, 6, 6, 6, 6, 5, 5, 2];
        let raw = chi_square(&reference, &current).expect("counts");
        let merged = chi_square_ordered(&reference, &current).expect("counts");
        assert!(raw.p_value < 1e-6, "one value beyond the range dominates: {raw:?}");
        assert!(merged.p_value > 0.5, "merged, it is what it is, noise: {merged:?}");
        assert!(merged.dof < raw.dof);
        // A real shift is still found.
        let shifted = [0, 0, 0, 0, 0, 0, 6, 12, 12, 12, 12, 6];
        assert!(chi_square(&reference, &shifted).expect("counts").p_value < 1e-6);
        assert!(chi_square_ordered(&reference, &shifted).expect("counts").p_value < 1e-6);
        // Large samples keep every bin.
        let big: Vec<u64> = reference.iter().map(|c| c * 10 + 50).collect();
        let same = chi_square_ordered(&big, &big).expect("counts");
        assert_eq!(same.dof, 11);
    }

    #[test]
    fn nothing_to_compare_gives_none() {
        assert_eq!(psi(&[0, 0], &[1, 1]), None);
        assert_eq!(js_distance(&[1], &[1, 2]), None);
        assert_eq!(chi_square(&[0, 0], &[0, 0]), None);
        assert_eq!(ks_bounds(&[1, 2], &[0, 0]), None);
    }
}
