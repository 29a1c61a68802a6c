//! KLL quantile sketches in the Apache DataSketches compact serialization (DESIGN §7): the
//! optional per-feature sketch of baseline profiles and statistics windows, its exact-format
//! merge, quantiles, and a Kolmogorov–Smirnov statistic between two sketches with its error
//! bound.
//!
//! Items are `f32` (the DataSketches `kll_floats_sketch`; model tensors are `f32`, so nothing
//! is lost), `k` is [`KLL_K`] fleet-wide, and the bytes are what Python's
//! `datasketches.kll_floats_sketch.deserialize` reads. Only finite values are observed — the
//! same values the feature's [`Moments`](super::Moments) count — so a sketch's `n` equals its
//! feature's moment count. Bytes from devices are decoded only after a size check
//! ([`MAX_KLL_SKETCH_BYTES`]), and a sketch with another `k` is refused.

use datasketches::common::SearchCriteria;
use datasketches::kll::{KllFloat, KllSketch};

/// The `k` of every sketch in the fleet: normalized rank error ≈ 1.33 % (99 % confidence)
/// per sketch, and at most a few kilobytes serialized.
pub const KLL_K: u16 = 200;

/// Largest serialized sketch accepted. A `k = 200` float sketch stays under 6 kB even for
/// 2⁶⁴ values; the cap bounds what a hostile device can make the receiver decode.
pub const MAX_KLL_SKETCH_BYTES: usize = 16 * 1024;

/// Why sketch bytes were refused or two sketches could not be combined.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KllError {
    #[error("KLL sketch of {found} bytes exceeds the limit of {limit}")]
    TooLarge { found: usize, limit: usize },
    #[error("KLL sketch is not in the DataSketches KLL float format: {reason}")]
    Format { reason: String },
    #[error("KLL sketch has k = {found}; the fleet uses k = {expected}")]
    K { found: u16, expected: u16 },
    #[error("KLL sketches cannot be merged: {reason}")]
    Merge { reason: String },
}

/// Checks the header of a serialized sketch without decoding its items: size, DataSketches
/// KLL family and version, preamble, `m`, `k` = [`KLL_K`]. Returns `n`, the number of values.
///
/// This is what the wire layer checks on every window (and what devices run before sending):
/// no allocation, no item decoding. The items are decoded where a sketch is used ([`Kll::from_bytes`]
/// in merges and drift), which refuses a bad body with an error.
pub fn check_bytes(bytes: &[u8]) -> Result<u64, KllError> {
    const FAMILY_KLL: u8 = 15;
    const FLAG_EMPTY: u8 = 1;
    const FLAG_SINGLE_ITEM: u8 = 4;
    const M: u8 = 8;
    let format = |reason: &str| KllError::Format { reason: reason.to_string() };
    if bytes.len() > MAX_KLL_SKETCH_BYTES {
        return Err(KllError::TooLarge { found: bytes.len(), limit: MAX_KLL_SKETCH_BYTES });
    }
    let [preamble_ints, serial_version, family, flags, k0, k1, m, _, rest @ ..] = bytes else {
        return Err(format("shorter than its 8-byte preamble"));
    };
    if *family != FAMILY_KLL {
        return Err(format("not the KLL family"));
    }
    if *m != M {
        return Err(format("m is not 8"));
    }
    let k = u16::from_le_bytes([*k0, *k1]);
    let empty = flags & FLAG_EMPTY != 0;
    let single = flags & FLAG_SINGLE_ITEM != 0;
    let n = match (empty, single, preamble_ints, serial_version) {
        (true, false, 2, 1) if rest.is_empty() => 0,
        (false, true, 2, 2) if rest.len() == 4 => 1,
        (false, false, 5, 1) => match rest.get(..8).and_then(|n| <[u8; 8]>::try_from(n).ok()) {
            Some(n) => u64::from_le_bytes(n),
            None => return Err(format("shorter than its 20-byte preamble")),
        },
        _ => return Err(format("inconsistent preamble, version and flags")),
    };
    if k != KLL_K {
        return Err(KllError::K { found: k, expected: KLL_K });
    }
    Ok(n)
}

/// A KLL float sketch with `k` = [`KLL_K`].
#[derive(Debug, Clone, PartialEq)]
pub struct Kll {
    sketch: KllSketch<KllFloat<f32>>,
}

impl Default for Kll {
    fn default() -> Self {
        Self::new()
    }
}

impl Kll {
    /// An empty sketch.
    pub fn new() -> Self {
        // `KllSketch::default()` is the DataSketches default k, which is the fleet's k
        // (a unit test checks it), so this cannot fail.
        Kll { sketch: KllSketch::default() }
    }

    /// Observes one value; NaN and infinities are skipped, as [`super::Moments`] skips them.
    /// Finite values beyond the `f32` range saturate to ±∞ in the sketch.
    pub fn observe(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }
        if let Ok(item) = KllFloat::<f32>::new(value as f32) {
            self.sketch.update(item);
        }
    }

    /// Number of values observed.
    pub fn n(&self) -> u64 {
        self.sketch.n()
    }

    pub fn is_empty(&self) -> bool {
        self.sketch.is_empty()
    }

    /// The single-sided normalized rank error of this sketch (99 % confidence): every rank and
    /// quantile answer is within this fraction of `n` of the exact one.
    pub fn rank_error(&self) -> f64 {
        self.sketch.normalized_rank_error()
    }

    /// The compact DataSketches serialization.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.sketch.serialize()
    }

    /// Decodes a serialized sketch: size-checked, then parsed, then its `k` checked.
    pub fn from_bytes(bytes: &[u8]) -> Result<Kll, KllError> {
        if bytes.len() > MAX_KLL_SKETCH_BYTES {
            return Err(KllError::TooLarge { found: bytes.len(), limit: MAX_KLL_SKETCH_BYTES });
        }
        let sketch = KllSketch::<KllFloat<f32>>::deserialize(bytes)
            .map_err(|error| KllError::Format { reason: error.to_string() })?;
        if sketch.k() != KLL_K {
            return Err(KllError::K { found: sketch.k(), expected: KLL_K });
        }
        Ok(Kll { sketch })
    }

    /// Adds `other` (the KLL merge; the result answers for both streams with the same bound).
    /// On error `self` is unchanged.
    pub fn merge(&mut self, other: &Kll) -> Result<(), KllError> {
        let mut merged = self.sketch.clone();
        merged
            .merge(&other.sketch)
            .map_err(|error| KllError::Merge { reason: error.to_string() })?;
        self.sketch = merged;
        Ok(())
    }

    /// The values at normalized ranks `ranks` (each in `[0, 1]`, inclusive search: the smallest
    /// retained value whose rank is at least the requested one); `None` when the sketch is
    /// empty or a rank is out of range.
    pub fn quantiles(&self, ranks: &[f64]) -> Option<Vec<f64>> {
        if ranks.iter().any(|r| !(0.0..=1.0).contains(r)) {
            return None;
        }
        let mut values = Vec::with_capacity(ranks.len());
        for rank in ranks {
            let value = self.sketch.quantile(*rank, SearchCriteria::Inclusive).ok()??;
            values.push(f64::from(*value));
        }
        Some(values)
    }

    /// The sketch's quantiles at the ranks `j / KS_GRID` (`j = 0..=KS_GRID`): between two
    /// consecutive ones the sketch's CDF rises by less than `1 / KS_GRID`.
    fn grid(&self) -> Vec<f32> {
        let view = self.sketch.sorted_view();
        (0..=KS_GRID)
            .filter_map(|j| {
                view.quantile(j as f64 / KS_GRID as f64, SearchCriteria::Inclusive).ok().flatten()
            })
            .map(|item| *item)
            .collect()
    }

    /// The sketch's CDF (inclusive: share of values ≤ x) at each of `points`, which must be
    /// strictly increasing.
    fn cdf_at(&self, points: &[f32]) -> Option<Vec<f64>> {
        let split: Vec<KllFloat<f32>> =
            points.iter().filter_map(|p| KllFloat::<f32>::new(*p).ok()).collect();
        let mut cdf = self.sketch.cdf(&split, SearchCriteria::Inclusive).ok()??;
        cdf.pop(); // the trailing 1.0 past the last split point
        Some(cdf)
    }
}

/// Rank grid of [`sketch_ks`]: the sketches' CDFs are compared at their quantiles at ranks
/// `j / KS_GRID`, which misses the sketches' own supremum by less than `1 / KS_GRID`.
pub const KS_GRID: usize = 2_000;

/// The Kolmogorov–Smirnov statistic between two sketched distributions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SketchKs {
    /// `max |F̂_ref(x) − F̂_cur(x)|` over both sketches' quantiles at ranks `j / KS_GRID`: within
    /// `1 / KS_GRID` below the supremum of the sketches' CDF difference (between consecutive
    /// points neither CDF rises by `1 / KS_GRID` or more).
    pub statistic: f64,
    /// `|statistic − D| ≤ error_bound` for the exact KS statistic `D` of the two full streams,
    /// with the confidence of the KLL bound (99 %): the sum of both sketches' single-sided rank
    /// errors plus `1 / KS_GRID`.
    pub error_bound: f64,
    pub reference_n: u64,
    pub current_n: u64,
}

/// The KS statistic between `reference` and `current`; `None` when either is empty.
pub fn sketch_ks(reference: &Kll, current: &Kll) -> Option<SketchKs> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    let mut points = reference.grid();
    points.extend(current.grid());
    points.sort_by(f32::total_cmp);
    points.dedup();
    let a = reference.cdf_at(&points)?;
    let b = current.cdf_at(&points)?;
    let statistic = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    Some(SketchKs {
        statistic,
        error_bound: reference.rank_error() + current.rank_error() + 1.0 / KS_GRID as f64,
        reference_n: reference.n(),
        current_n: current.n(),
    })
}

/// Merges two serialized sketches into a serialized sketch.
pub fn merge_bytes(a: &[u8], b: &[u8]) -> Result<Vec<u8>, KllError> {
    let mut merged = Kll::from_bytes(a)?;
    merged.merge(&Kll::from_bytes(b)?)?;
    Ok(merged.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic stream shaped like a normal distribution (sum of uniforms).
    fn stream(n: usize, shift: f64, seed: u64) -> Vec<f64> {
        let mut state = seed;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n).map(|_| (0..12).map(|_| next()).sum::<f64>() - 6.0 + shift).collect()
    }

    fn sketch_of(values: &[f64]) -> Kll {
        let mut kll = Kll::new();
        values.iter().for_each(|v| kll.observe(*v));
        kll
    }

    #[test]
    fn default_k_is_the_fleet_k() {
        assert_eq!(Kll::new().sketch.k(), KLL_K);
        assert!((Kll::new().rank_error() - 0.0133).abs() < 0.001);
    }

    #[test]
    fn quantiles_are_within_the_rank_error_and_survive_a_byte_round_trip() {
        let values = stream(50_000, 0.0, 7);
        let kll = sketch_of(&values);
        let decoded = Kll::from_bytes(&kll.to_bytes()).expect("round trip");
        assert_eq!(decoded.n(), 50_000);
        let ranks = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99];
        assert_eq!(decoded.quantiles(&ranks), kll.quantiles(&ranks));
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let quantiles = decoded.quantiles(&ranks).expect("not empty");
        for (rank, q) in ranks.iter().zip(quantiles) {
            // The true rank of the returned value is within the bound of the requested rank.
            let true_rank = sorted.partition_point(|v| *v <= q) as f64 / sorted.len() as f64;
            assert!(
                (true_rank - rank).abs() <= kll.rank_error(),
                "rank {rank}: {q} has true rank {true_rank}"
            );
        }
        assert_eq!(decoded.quantiles(&[1.5]), None);
        assert_eq!(Kll::new().quantiles(&[0.5]), None);
    }

    #[test]
    fn merged_sketches_answer_for_both_streams() {
        let a = stream(20_000, 0.0, 1);
        let b = stream(30_000, 2.0, 2);
        let merged =
            merge_bytes(&sketch_of(&a).to_bytes(), &sketch_of(&b).to_bytes()).expect("mergeable");
        let merged = Kll::from_bytes(&merged).expect("decodes");
        assert_eq!(merged.n(), 50_000);
        let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
        all.sort_by(f64::total_cmp);
        let median = merged.quantiles(&[0.5]).expect("not empty")[0];
        let true_rank = all.partition_point(|v| *v <= median) as f64 / all.len() as f64;
        assert!((true_rank - 0.5).abs() <= merged.rank_error(), "median rank {true_rank}");
    }

    #[test]
    fn sketch_ks_is_within_its_bound_of_the_exact_statistic() {
        let reference = stream(40_000, 0.0, 3);
        for (shift, seed) in [(0.0, 4), (0.3, 5), (1.0, 6)] {
            let current = stream(25_000, shift, seed);
            let ks = sketch_ks(&sketch_of(&reference), &sketch_of(&current)).expect("not empty");
            let exact =
                crate::drift::samples::ks_2samp(&reference, &current).expect("not empty").statistic;
            assert!(
                (ks.statistic - exact).abs() <= ks.error_bound,
                "shift {shift}: sketch {} exact {exact} bound {}",
                ks.statistic,
                ks.error_bound
            );
            assert_eq!((ks.reference_n, ks.current_n), (40_000, 25_000));
        }
        assert_eq!(sketch_ks(&Kll::new(), &sketch_of(&reference)), None);
    }

    #[test]
    fn only_finite_values_are_observed() {
        let kll = sketch_of(&[1.0, f64::NAN, f64::INFINITY, 2.0, 1e300]);
        assert_eq!(kll.n(), 3);
        assert_eq!(kll.quantiles(&[1.0]), Some(vec![f64::INFINITY]));
    }

    #[test]
    fn bad_bytes_are_refused_with_the_reason() {
        let error = Kll::from_bytes(&[0u8; MAX_KLL_SKETCH_BYTES + 1]).expect_err("too large");
        assert_eq!(error.to_string(), "KLL sketch of 16385 bytes exceeds the limit of 16384");
        assert!(matches!(Kll::from_bytes(&[1, 2, 3]), Err(KllError::Format { .. })));
        let mut other_k = KllSketch::<KllFloat<f32>>::new(100).expect("k");
        other_k.update(KllFloat::<f32>::new(1.0).expect("not NaN"));
        assert_eq!(
            Kll::from_bytes(&other_k.serialize()),
            Err(KllError::K { found: 100, expected: KLL_K })
        );
        // The header check agrees with the full decode on valid sketches and on these.
        assert!(matches!(check_bytes(&[1, 2, 3]), Err(KllError::Format { .. })));
        assert_eq!(
            check_bytes(&other_k.serialize()),
            Err(KllError::K { found: 100, expected: KLL_K })
        );
        for n in [0, 1, 2, 5_000] {
            let kll = sketch_of(&stream(n, 0.0, 11));
            assert_eq!(check_bytes(&kll.to_bytes()), Ok(n as u64));
        }
        // Truncating a valid sketch anywhere is an error, never a panic.
        let bytes = sketch_of(&stream(5_000, 0.0, 9)).to_bytes();
        for len in 0..bytes.len() {
            assert!(Kll::from_bytes(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
        }
    }
}
