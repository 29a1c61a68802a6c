//! Metrics on raw samples: the two-sample Kolmogorov–Smirnov test with its p-value, and the
//! Wasserstein-1 distance. These need every value, so they run on CSV data (`outpost drift`),
//! not on windows (windows carry histograms; see [`super::binned`]).

use serde::{Deserialize, Serialize};

use super::special::kolmogorov_sf;

/// The two-sample Kolmogorov–Smirnov test (two-sided).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KsTest {
    /// `D = sup |F_ref(x) - F_cur(x)|` over the empirical distribution functions.
    pub statistic: f64,
    /// `P(D ≥ observed)` under the hypothesis that both samples come from one distribution.
    pub p_value: f64,
    /// How the p-value was computed.
    pub method: KsMethod,
}

/// How a Kolmogorov–Smirnov p-value was computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KsMethod {
    /// The exact null distribution of D for these sample sizes (lattice path counting, the same
    /// quantity as scipy's `ks_2samp(method="exact")`).
    Exact,
    /// The Kolmogorov limit distribution of `√(nm/(n+m))·D`, used when the exact computation
    /// would take more than [`EXACT_WORK_LIMIT`] steps (very large samples with a large D, where
    /// the p-value is vanishingly small either way).
    Asymptotic,
}

/// Largest number of inner steps the exact p-value may take before the asymptotic one is used.
pub const EXACT_WORK_LIMIT: u64 = 400_000_000;

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Every distinct value of either sample with how many values of each are at or below it (the
/// two ECDFs' counts, right-continuous), in increasing order.
fn ecdf_steps(reference: &[f64], current: &[f64]) -> Vec<(f64, usize, usize)> {
    let mut a = reference.to_vec();
    let mut b = current.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let mut steps = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        let x = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.min(*y),
            (Some(x), None) => *x,
            (None, Some(y)) => *y,
            (None, None) => break,
        };
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        steps.push((x, i, j));
    }
    steps
}

/// The two-sided two-sample KS test of two samples of finite values (sorted or not).
///
/// Returns `None` when either sample is empty. Ties are handled like scipy: both empirical
/// distribution functions are evaluated right-continuously at every observed value.
pub fn ks_2samp(reference: &[f64], current: &[f64]) -> Option<KsTest> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    let steps = ecdf_steps(reference, current);
    let (n1, n2) = (reference.len() as u64, current.len() as u64);
    let g = gcd(n1, n2);
    let (n1g, n2g) = (n1 / g, n2 / g);
    // D·lcm(n1, n2) as an exact integer: |c1·n2/g − c2·n1/g| at every jump of either ECDF.
    let h = steps
        .iter()
        .map(|(_, i, j)| (*i as u64 * n2g).abs_diff(*j as u64 * n1g))
        .max()
        .unwrap_or(0);
    let lcm = n1g * n2;
    let statistic = h as f64 / lcm as f64;
    let (p_value, method) = match exact_p_value(n1, n2, g, h) {
        Some(p) => (p, KsMethod::Exact),
        None => {
            let (m, n) = (n1 as f64, n2 as f64);
            let z = (m * n / (m + n)).sqrt() * statistic;
            (kolmogorov_sf(z), KsMethod::Asymptotic)
        }
    };
    Some(KsTest { statistic, p_value: p_value.clamp(0.0, 1.0), method })
}

/// `P(D ≥ h / lcm(m, n))` exactly, or `None` when that would exceed [`EXACT_WORK_LIMIT`].
///
/// Counts monotone lattice paths from (0, 0) to (m, n) that leave the band
/// `|x·n/g − y·m/g| < h`. Instead of counts (which overflow) it carries, for every lattice point
/// inside the band, the *fraction* of paths to that point that have already left it. With
/// `O(x, y)` that fraction and `O = 1` outside the band,
/// `O(x, y) = (x·O(x−1, y) + y·O(x, y−1)) / (x + y)`, because `x/(x+y)` of the paths to (x, y)
/// arrive from the left and `y/(x+y)` from below. The answer is `O(m, n)`. Working with the
/// complement directly keeps small p-values accurate (no `1 − p` cancellation).
fn exact_p_value(n1: u64, n2: u64, g: u64, h: u64) -> Option<f64> {
    if h == 0 {
        return Some(1.0);
    }
    // Iterate over the longer side, keep a window over the shorter one.
    let (m, n) = if n1 >= n2 { (n1, n2) } else { (n2, n1) };
    let (mg, ng) = (m / g, n / g);
    // The band is |x·ng − y·mg| < h, so column x holds rows y with
    // (x·ng − h)/mg < y < (x·ng + h)/mg.
    let window_width = (2 * h).div_ceil(mg) + 1;
    if m.saturating_mul(window_width.min(n + 1)) > EXACT_WORK_LIMIT {
        return None;
    }
    let rows = |x: u64| -> (u64, u64) {
        let centre = x * ng;
        let low = if centre >= h { (centre - h) / mg + 1 } else { 0 };
        let high = ((centre + h).div_ceil(mg)).min(n + 1);
        (low.min(n), high)
    };
    let (mut previous_low, previous_high) = rows(0);
    let mut previous: Vec<f64> = vec![0.0; (previous_high - previous_low) as usize];
    let mut column: Vec<f64> = Vec::with_capacity(window_width as usize + 1);
    for x in 1..=m {
        let (low, high) = rows(x);
        if high <= low {
            // No lattice point of this column lies inside the band: every path leaves it.
            return Some(1.0);
        }
        column.clear();
        let xf = x as f64;
        for y in low..high {
            let from_left = if y >= previous_low && y < previous_low + previous.len() as u64 {
                previous[(y - previous_low) as usize]
            } else {
                1.0
            };
            let from_below = if y == low {
                if y == 0 { 0.0 } else { 1.0 }
            } else {
                column[(y - 1 - low) as usize]
            };
            let yf = y as f64;
            column.push((xf * from_left + yf * from_below) / (xf + yf));
        }
        std::mem::swap(&mut previous, &mut column);
        previous_low = low;
    }
    // The last column ends at row n (the band always contains (m, n)).
    previous.last().copied()
}

/// The Wasserstein-1 (earth mover's) distance between two samples: `∫ |F_ref − F_cur| dx`.
/// Returns `None` when either sample is empty.
pub fn wasserstein(reference: &[f64], current: &[f64]) -> Option<f64> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    let steps = ecdf_steps(reference, current);
    let (na, nb) = (reference.len() as f64, current.len() as f64);
    // Between consecutive values both ECDFs are constant: sum |F_a − F_b| times the gap.
    let total = steps
        .windows(2)
        .map(|pair| {
            let ((x, i, j), (next, _, _)) = (pair[0], pair[1]);
            (i as f64 / na - j as f64 / nb).abs() * (next - x)
        })
        .sum();
    Some(total)
}

/// The population standard deviation (ddof = 0) of a sample, the scale of the normed
/// Wasserstein distance.
pub fn std_dev(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut moments = crate::stats::Moments::default();
    for v in values {
        moments.observe(*v);
    }
    Some(moments.std_dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_samples_have_no_distance() {
        let a = [1.0, 2.0, 3.0, 4.0];
        let ks = ks_2samp(&a, &a).expect("samples");
        assert_eq!(ks.statistic, 0.0);
        assert_eq!(ks.p_value, 1.0);
        assert_eq!(wasserstein(&a, &a), Some(0.0));
    }

    #[test]
    fn disjoint_samples_have_d_one_and_tiny_p() {
        let a: Vec<f64> = (0..50).map(f64::from).collect();
        let b: Vec<f64> = (100..150).map(f64::from).collect();
        let ks = ks_2samp(&a, &b).expect("samples");
        assert_eq!(ks.statistic, 1.0);
        // P(D = 1) for n = m = 50 is 2 / C(100, 50).
        assert!(ks.p_value < 1e-27 && ks.p_value > 0.0, "{}", ks.p_value);
        assert_eq!(ks.method, KsMethod::Exact);
        // Every unit of mass moves 100.
        assert!((wasserstein(&a, &b).expect("samples") - 100.0).abs() < 1e-12);
    }

    #[test]
    fn small_exact_p_values_match_enumeration() {
        // n = m = 2: the 6 orderings of {a1, a2} vs {b1, b2}; D = 1 for the 2 separated ones.
        let ks = ks_2samp(&[1.0, 2.0], &[3.0, 4.0]).expect("samples");
        assert!((ks.p_value - 2.0 / 6.0).abs() < 1e-15);
        // D = 1/2 for the interleaved orders: all 6 have D ≥ 1/2.
        let ks = ks_2samp(&[1.0, 3.0], &[2.0, 4.0]).expect("samples");
        assert_eq!(ks.statistic, 0.5);
        assert!((ks.p_value - 1.0).abs() < 1e-15);
        // n = 1, m = 3: D = 3/4 or more for the two extreme positions of the single value.
        let ks = ks_2samp(&[0.0], &[1.0, 2.0, 3.0]).expect("samples");
        assert_eq!(ks.statistic, 1.0);
        assert!((ks.p_value - 0.5).abs() < 1e-15);
    }

    #[test]
    fn ties_are_evaluated_right_continuously() {
        let ks = ks_2samp(&[1.0, 1.0, 2.0], &[1.0, 2.0, 2.0]).expect("samples");
        assert!((ks.statistic - 1.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn empty_samples_have_no_result() {
        assert_eq!(ks_2samp(&[], &[1.0]), None);
        assert_eq!(wasserstein(&[1.0], &[]), None);
        assert_eq!(std_dev(&[]), None);
    }

    #[test]
    fn huge_samples_fall_back_to_the_asymptotic_p_value() {
        let a: Vec<f64> = (0..400_000).map(|i| f64::from(i) / 400_000.0).collect();
        let b: Vec<f64> = (0..300_000).map(|i| 0.5 + f64::from(i) / 300_000.0).collect();
        let ks = ks_2samp(&a, &b).expect("samples");
        assert_eq!(ks.method, KsMethod::Asymptotic);
        assert!((ks.statistic - 0.5).abs() < 1e-5, "{}", ks.statistic);
        assert!(ks.p_value < 1e-100);
    }
}
