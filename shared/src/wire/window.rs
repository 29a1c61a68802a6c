//! The statistics window (DESIGN §7): what one device's model saw and said during one period,
//! in a form that merges exactly across devices and time.
//!
//! Every count here can come from a hostile or buggy device, so [`StatsWindow::validate`] checks
//! the invariants with checked arithmetic and [`StatsWindow::merge`] adds with checked
//! arithmetic too: a window can be refused, but never make the receiver panic.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::fields::{MAX_NAME_BYTES, check_id, check_text};
use super::{Channel, DeviceId, ModelRef, ProtocolVersion, TopicMessage, WireError, WireMessage};
#[cfg(test)]
use crate::stats::kll::Kll;
use crate::stats::kll::KllError;
use crate::stats::{Histogram, HistogramError, LATENCY_BUCKETS_US, Moments, confidence_edges};

/// Latencies in microseconds over the fleet-wide buckets [`LATENCY_BUCKETS_US`].
///
/// `counts[i]` holds latencies `l` with `LATENCY_BUCKETS_US[i-1] < l <= LATENCY_BUCKETS_US[i]`
/// (bucket 0 from 0); `overflow` those above the last bound. `moments` are over the same
/// observations, so their count equals the histogram's total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyHistogram {
    pub counts: Vec<u64>,
    pub overflow: u64,
    pub moments: Moments,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; LATENCY_BUCKETS_US.len()],
            overflow: 0,
            moments: Moments::default(),
        }
    }
}

impl LatencyHistogram {
    /// Counts one latency.
    pub fn observe(&mut self, latency_us: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|bound| *bound < latency_us);
        match self.counts.get_mut(bucket) {
            Some(count) => *count = count.saturating_add(1),
            None => self.overflow = self.overflow.saturating_add(1),
        }
        self.moments.observe(latency_us as f64);
    }

    /// Sum of all buckets and the overflow.
    pub fn total(&self) -> Option<u64> {
        checked_sum(self.counts.iter().copied().chain([self.overflow]))
    }

    fn validate(&self) -> Result<(), StatsWindowError> {
        if self.counts.len() != LATENCY_BUCKETS_US.len() {
            return Err(StatsWindowError::LatencyBuckets {
                expected: LATENCY_BUCKETS_US.len(),
                found: self.counts.len(),
            });
        }
        let total = self.total().ok_or_else(|| overflow("latency"))?;
        check_moments(|| "latency", &self.moments)?;
        if total != self.moments.count {
            return Err(StatsWindowError::CountsDisagree {
                what: "latency".into(),
                histogram: total,
                moments: self.moments.count,
            });
        }
        Ok(())
    }

    fn merged(&self, other: &LatencyHistogram) -> Result<LatencyHistogram, StatsWindowError> {
        let mut moments = self.moments;
        moments.merge(&other.moments);
        Ok(LatencyHistogram {
            counts: add_counts(&self.counts, &other.counts, "latency")?,
            overflow: add(self.overflow, other.overflow, "latency")?,
            moments,
        })
    }
}

/// One input feature or output: a histogram over the baseline profile's bin edges and the
/// moments of its finite values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureStats {
    pub name: String,
    pub histogram: Histogram,
    pub moments: Moments,
    /// A KLL quantile sketch of the finite values in the Apache DataSketches compact
    /// serialization (float items, `k` = [`crate::stats::kll::KLL_K`]), base64 on the wire;
    /// present only where the profile asks for one. Its `n` equals `moments.count`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "base64_bytes")]
    pub kll_sketch: Option<Vec<u8>>,
}

impl FeatureStats {
    fn validate(&self, side: &'static str) -> Result<(), StatsWindowError> {
        let what = || format!("{side} `{}`", self.name);
        self.histogram
            .validate()
            .map_err(|source| StatsWindowError::Histogram { what: what(), source })?;
        let total = histogram_total(&self.histogram).ok_or_else(|| overflow(&what()))?;
        check_moments(what, &self.moments)?;
        // NaN and infinities are counted by the histogram but are not part of the moments.
        if self.moments.count > total {
            return Err(StatsWindowError::CountsDisagree {
                what: what(),
                histogram: total,
                moments: self.moments.count,
            });
        }
        // The sketch's header (format, k, n); its items are decoded where they are merged.
        if let Some(bytes) = &self.kll_sketch {
            let n = crate::stats::kll::check_bytes(bytes)
                .map_err(|source| StatsWindowError::Sketch { what: what(), source })?;
            if n != self.moments.count {
                return Err(StatsWindowError::SketchCount {
                    what: what(),
                    sketch: n,
                    moments: self.moments.count,
                });
            }
        }
        Ok(())
    }

    fn merged(
        &self,
        other: &FeatureStats,
        side: &'static str,
    ) -> Result<FeatureStats, StatsWindowError> {
        let what = format!("{side} `{}`", self.name);
        if self.name != other.name {
            return Err(not_mergeable(format!("{side} `{}` meets `{}`", self.name, other.name)));
        }
        // A sketch describes all of a feature's values or nothing: when only one side has one
        // (an agent that does not sketch, a profile without sketches), the merge has none.
        let kll_sketch = match (&self.kll_sketch, &other.kll_sketch) {
            (Some(a), Some(b)) => Some(
                crate::stats::kll::merge_bytes(a, b)
                    .map_err(|source| StatsWindowError::Sketch { what: what.clone(), source })?,
            ),
            _ => None,
        };
        let mut moments = self.moments;
        moments.merge(&other.moments);
        Ok(FeatureStats {
            name: self.name.clone(),
            histogram: merged_histogram(&self.histogram, &other.histogram, &what)?,
            moments,
            kll_sketch,
        })
    }
}

/// Classifier outputs: how often each class was the top-1 answer, and the top-1 confidence
/// over the fixed edges [`confidence_edges`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierStats {
    pub class_counts: Vec<u64>,
    pub confidence: Histogram,
}

impl ClassifierStats {
    fn validate(&self) -> Result<(), StatsWindowError> {
        if self.confidence.edges != confidence_edges() {
            return Err(StatsWindowError::ConfidenceEdges);
        }
        self.confidence
            .validate()
            .map_err(|source| StatsWindowError::Histogram { what: "confidence".into(), source })?;
        let classes = checked_sum(self.class_counts.iter().copied())
            .ok_or_else(|| overflow("class counts"))?;
        let confidences =
            histogram_total(&self.confidence).ok_or_else(|| overflow("confidence"))?;
        if classes != confidences {
            return Err(StatsWindowError::ClassCountsDisagree { classes, confidences });
        }
        Ok(())
    }

    fn merged(&self, other: &ClassifierStats) -> Result<ClassifierStats, StatsWindowError> {
        if self.class_counts.len() != other.class_counts.len() {
            return Err(not_mergeable(format!(
                "{} classes meet {} classes",
                self.class_counts.len(),
                other.class_counts.len()
            )));
        }
        Ok(ClassifierStats {
            class_counts: add_counts(&self.class_counts, &other.class_counts, "class counts")?,
            confidence: merged_histogram(&self.confidence, &other.confidence, "confidence")?,
        })
    }
}

/// `outpost/v1/<dev>/stats`: one statistics window of one device and model.
///
/// `seq` increases by one per window and device and survives restarts; the control counts a
/// window once per (device, seq), so redelivery after a reconnect changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsWindow {
    pub v: ProtocolVersion,
    pub device: DeviceId,
    pub model: ModelRef,
    pub seq: u64,
    /// Window start, inclusive, unix milliseconds.
    pub start_ms: u64,
    /// Window end, exclusive, unix milliseconds.
    pub end_ms: u64,
    /// Inference requests in the window, failed ones included.
    pub count: u64,
    /// Failed requests by kind (`input_shape`, `runtime`, …); their sum is at most `count`.
    pub errors: BTreeMap<String, u64>,
    pub latency: LatencyHistogram,
    pub inputs: Vec<FeatureStats>,
    pub outputs: Vec<FeatureStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierStats>,
}

/// Why a statistics window is refused or cannot be merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsWindowError {
    #[error("window ends at {end_ms} before it starts at {start_ms}")]
    EndsBeforeStart { start_ms: u64, end_ms: u64 },
    #[error("latency histogram has {found} buckets, expected {expected}")]
    LatencyBuckets { expected: usize, found: usize },
    #[error("{what} count {total} exceeds the window's {count} requests")]
    ExceedsCount { what: String, total: u64, count: u64 },
    #[error("{what}: the histogram holds {histogram} values but the moments count {moments}")]
    CountsDisagree { what: String, histogram: u64, moments: u64 },
    #[error("{what}: {source}")]
    Histogram { what: String, source: HistogramError },
    #[error("{what}: {source}")]
    Sketch { what: String, source: KllError },
    #[error("{what}: the KLL sketch holds {sketch} values but the moments count {moments}")]
    SketchCount { what: String, sketch: u64, moments: u64 },
    #[error("{what}: inconsistent moments ({reason})")]
    Moments { what: String, reason: &'static str },
    #[error("{what}: counts overflow")]
    Overflow { what: String },
    #[error("{side} feature `{name}` appears twice")]
    DuplicateFeature { side: &'static str, name: String },
    #[error("classifier confidence histogram must use the fixed edges 0, 0.1, …, 1")]
    ConfidenceEdges,
    #[error("class counts add up to {classes} but the confidence histogram holds {confidences}")]
    ClassCountsDisagree { classes: u64, confidences: u64 },
    #[error("windows cannot be merged: {reason}")]
    NotMergeable { reason: String },
}

impl WireMessage for StatsWindow {
    const NAME: &'static str = "StatsWindow";

    fn validate(&self) -> Result<(), WireError> {
        let name = Self::NAME;
        for kind in self.errors.keys() {
            check_id(name, "errors", kind)?;
        }
        for feature in self.inputs.iter().chain(&self.outputs) {
            check_text(name, "name", &feature.name, MAX_NAME_BYTES, false)?;
        }
        self.check_statistics()?;
        Ok(())
    }
}

impl TopicMessage for StatsWindow {
    const CHANNEL: Channel = Channel::Stats;

    fn device(&self) -> Option<&DeviceId> {
        Some(&self.device)
    }
}

impl StatsWindow {
    /// Checks the statistical invariants: sizes of every histogram, counts that add up, moments
    /// that are consistent, feature names unique per side.
    pub fn check_statistics(&self) -> Result<(), StatsWindowError> {
        if self.end_ms < self.start_ms {
            return Err(StatsWindowError::EndsBeforeStart {
                start_ms: self.start_ms,
                end_ms: self.end_ms,
            });
        }
        let errors =
            checked_sum(self.errors.values().copied()).ok_or_else(|| overflow("errors"))?;
        self.within_count("errors", errors)?;
        self.latency.validate()?;
        self.within_count("latency", self.latency.moments.count)?;
        for (side, features) in [("input", &self.inputs), ("output", &self.outputs)] {
            let mut names = BTreeSet::new();
            for feature in features {
                if !names.insert(feature.name.as_str()) {
                    return Err(StatsWindowError::DuplicateFeature {
                        side,
                        name: feature.name.clone(),
                    });
                }
                feature.validate(side)?;
            }
        }
        if let Some(classifier) = &self.classifier {
            classifier.validate()?;
        }
        Ok(())
    }

    fn within_count(&self, what: &str, total: u64) -> Result<(), StatsWindowError> {
        if total > self.count {
            return Err(StatsWindowError::ExceedsCount {
                what: what.into(),
                total,
                count: self.count,
            });
        }
        Ok(())
    }

    /// Adds `other` into `self`: two windows of the same device and model with the same
    /// features over the same edges (for example, two unsent windows the agent folds together
    /// when its queue is full). The result spans both periods and takes the higher `seq`.
    /// On error `self` is unchanged.
    /// KLL sketches merge with the KLL merge; a feature with a sketch on one side only loses it.
    pub fn merge(&mut self, other: &StatsWindow) -> Result<(), StatsWindowError> {
        if self.device != other.device {
            return Err(not_mergeable(format!(
                "device {} meets device {}",
                self.device, other.device
            )));
        }
        if self.model != other.model {
            return Err(not_mergeable(format!("model {} meets model {}", self.model, other.model)));
        }
        let merged = StatsWindow {
            v: ProtocolVersion,
            device: self.device.clone(),
            model: self.model.clone(),
            seq: self.seq.max(other.seq),
            start_ms: self.start_ms.min(other.start_ms),
            end_ms: self.end_ms.max(other.end_ms),
            count: add(self.count, other.count, "count")?,
            errors: {
                let mut errors = self.errors.clone();
                for (kind, count) in &other.errors {
                    let entry = errors.entry(kind.clone()).or_insert(0);
                    *entry = add(*entry, *count, "errors")?;
                }
                errors
            },
            latency: self.latency.merged(&other.latency)?,
            inputs: merged_features(&self.inputs, &other.inputs, "input")?,
            outputs: merged_features(&self.outputs, &other.outputs, "output")?,
            classifier: match (&self.classifier, &other.classifier) {
                (None, None) => None,
                (Some(a), Some(b)) => Some(a.merged(b)?),
                _ => return Err(not_mergeable("only one window has classifier statistics".into())),
            },
        };
        *self = merged;
        Ok(())
    }
}

fn merged_features(
    ours: &[FeatureStats],
    theirs: &[FeatureStats],
    side: &'static str,
) -> Result<Vec<FeatureStats>, StatsWindowError> {
    if ours.len() != theirs.len() {
        return Err(not_mergeable(format!("{} {side}s meet {} {side}s", ours.len(), theirs.len())));
    }
    ours.iter().zip(theirs).map(|(a, b)| a.merged(b, side)).collect()
}

fn merged_histogram(
    a: &Histogram,
    b: &Histogram,
    what: &str,
) -> Result<Histogram, StatsWindowError> {
    if a.edges != b.edges {
        return Err(not_mergeable(format!("{what}: bin edges differ")));
    }
    Ok(Histogram {
        edges: a.edges.clone(),
        counts: add_counts(&a.counts, &b.counts, what)?,
        underflow: add(a.underflow, b.underflow, what)?,
        overflow: add(a.overflow, b.overflow, what)?,
        nan: add(a.nan, b.nan, what)?,
    })
}

fn add_counts(a: &[u64], b: &[u64], what: &str) -> Result<Vec<u64>, StatsWindowError> {
    if a.len() != b.len() {
        return Err(not_mergeable(format!("{what}: {} counts meet {} counts", a.len(), b.len())));
    }
    a.iter().zip(b).map(|(x, y)| add(*x, *y, what)).collect()
}

fn add(a: u64, b: u64, what: &str) -> Result<u64, StatsWindowError> {
    a.checked_add(b).ok_or_else(|| overflow(what))
}

fn checked_sum(values: impl IntoIterator<Item = u64>) -> Option<u64> {
    values.into_iter().try_fold(0u64, u64::checked_add)
}

/// Like [`Histogram::total`], but `None` instead of a panic when hostile counts overflow.
fn histogram_total(histogram: &Histogram) -> Option<u64> {
    checked_sum(histogram.counts.iter().copied().chain([
        histogram.underflow,
        histogram.overflow,
        histogram.nan,
    ]))
}

/// `what` names the statistics in the error; called only when there is one (no text is built
/// for the windows that pass).
fn check_moments<W: Into<String>>(
    what: impl FnOnce() -> W,
    moments: &Moments,
) -> Result<(), StatsWindowError> {
    let problem = |reason| Err(StatsWindowError::Moments { what: what().into(), reason });
    if !moments.mean.is_finite() || !moments.m2.is_finite() {
        return problem("mean and m2 must be finite");
    }
    if moments.m2 < 0.0 {
        return problem("m2 must not be negative");
    }
    match (moments.count, moments.min, moments.max) {
        (0, None, None) => Ok(()),
        (0, _, _) => problem("min and max must be absent when count is 0"),
        (_, Some(min), Some(max)) if min.is_finite() && max.is_finite() && min <= max => Ok(()),
        _ => problem("min and max must be finite with min <= max when count is above 0"),
    }
}

fn overflow(what: &str) -> StatsWindowError {
    StatsWindowError::Overflow { what: what.into() }
}

fn not_mergeable(reason: String) -> StatsWindowError {
    StatsWindowError::NotMergeable { reason }
}

/// `Option<Vec<u8>>` as an optional standard base64 string.
mod base64_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&B64.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| B64.decode(text).map_err(serde::de::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tests::sample_stats_window;

    #[test]
    fn latency_buckets_are_upper_bounds() {
        let mut latency = LatencyHistogram::default();
        for us in [0, 50, 51, 100, 10_000_000, 10_000_001, u64::MAX] {
            latency.observe(us);
        }
        assert_eq!(&latency.counts[..3], &[2, 2, 0]);
        assert_eq!(latency.counts[18], 1);
        assert_eq!(latency.overflow, 2);
        assert_eq!(latency.total(), Some(7));
        assert_eq!(latency.moments.count, 7);
    }

    fn check_refused(mutate: impl FnOnce(&mut StatsWindow), expected: &str) {
        let mut window = sample_stats_window();
        assert_eq!(window.check_statistics(), Ok(()));
        mutate(&mut window);
        let error = window.validate().expect_err("invalid window accepted");
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn invalid_windows_are_refused_with_the_reason() {
        check_refused(
            |w| w.end_ms = w.start_ms - 1,
            "invalid statistics window: window ends at 1717171199999 before it starts at 1717171200000",
        );
        check_refused(
            |w| {
                w.latency.counts.pop();
            },
            "invalid statistics window: latency histogram has 18 buckets, expected 19",
        );
        check_refused(
            |w| w.latency.overflow += 1,
            "invalid statistics window: latency: the histogram holds 1201 values but the moments count 1200",
        );
        check_refused(
            |w| w.latency.overflow = u64::MAX,
            "invalid statistics window: latency: counts overflow",
        );
        check_refused(
            |w| w.count = 10,
            "invalid statistics window: errors count 12 exceeds the window's 10 requests",
        );
        check_refused(
            |w| w.inputs[0].histogram.counts.push(1),
            "invalid statistics window: input `temperature`: histogram has 5 counts for 4 bins",
        );
        check_refused(
            |w| w.inputs[0].histogram.edges.reverse(),
            "invalid statistics window: input `temperature`: bin edges must be at least two finite, strictly increasing values",
        );
        check_refused(
            |w| w.inputs[0].histogram.nan = u64::MAX,
            "invalid statistics window: input `temperature`: counts overflow",
        );
        check_refused(
            |w| w.inputs[0].moments.count = 5000,
            "invalid statistics window: input `temperature`: the histogram holds 1212 values but the moments count 5000",
        );
        check_refused(
            |w| w.inputs[0].moments.min = None,
            "invalid statistics window: input `temperature`: inconsistent moments (min and max must be finite with min <= max when count is above 0)",
        );
        check_refused(
            |w| w.inputs[0].moments.m2 = -1.0,
            "invalid statistics window: input `temperature`: inconsistent moments (m2 must not be negative)",
        );
        check_refused(
            |w| w.outputs[0].moments.mean = f64::NAN,
            "invalid statistics window: output `score`: inconsistent moments (mean and m2 must be finite)",
        );
        check_refused(
            |w| {
                let copy = w.inputs[0].clone();
                w.inputs.push(copy);
            },
            "invalid statistics window: input feature `temperature` appears twice",
        );
        check_refused(
            |w| {
                if let Some(c) = w.classifier.as_mut() {
                    c.class_counts[0] += 1;
                }
            },
            "invalid statistics window: class counts add up to 1201 but the confidence histogram holds 1200",
        );
        check_refused(
            |w| {
                if let Some(c) = w.classifier.as_mut() {
                    c.confidence.edges[1] = 0.15;
                }
            },
            "invalid statistics window: classifier confidence histogram must use the fixed edges 0, 0.1, …, 1",
        );
        check_refused(
            |w| {
                w.errors.insert("bad kind".into(), 0);
            },
            "invalid errors in StatsWindow: `bad kind` contains ' '; ids have no whitespace or control characters",
        );
    }

    #[test]
    fn merging_adds_counts_and_spans_both_periods() {
        let first = sample_stats_window();
        let mut second = first.clone();
        second.seq += 1;
        second.start_ms = first.end_ms;
        second.end_ms = first.end_ms + 60_000;
        let mut merged = first.clone();
        merged.merge(&second).expect("mergeable");
        assert_eq!(merged.seq, second.seq);
        assert_eq!((merged.start_ms, merged.end_ms), (first.start_ms, second.end_ms));
        assert_eq!(merged.count, 2 * first.count);
        assert_eq!(merged.errors["runtime"], 2 * first.errors["runtime"]);
        assert_eq!(merged.latency.moments.count, 2 * first.latency.moments.count);
        assert_eq!(merged.inputs[0].histogram.counts[1], 2 * first.inputs[0].histogram.counts[1]);
        assert_eq!(merged.validate(), Ok(()));
        let sketch = Kll::from_bytes(merged.inputs[1].kll_sketch.as_deref().expect("merged"))
            .expect("decodes");
        assert_eq!(sketch.n(), 2 * first.inputs[1].moments.count);

        // A sketch on one side only: the merge keeps histograms and moments, not the sketch.
        let mut unsketched = second.clone();
        unsketched.inputs[1].kll_sketch = None;
        let mut merged = first.clone();
        merged.merge(&unsketched).expect("mergeable");
        assert_eq!(merged.inputs[1].kll_sketch, None);
        assert_eq!(merged.validate(), Ok(()));
    }

    #[test]
    fn a_sketch_must_decode_and_count_the_moments() {
        check_refused(
            |w| w.inputs[1].kll_sketch = Some(vec![0; 20_000]),
            "invalid statistics window: input `vibration_rms`: KLL sketch of 20000 bytes exceeds the limit of 16384",
        );
        check_refused(
            |w| w.inputs[1].moments.count = 7,
            "invalid statistics window: input `vibration_rms`: the KLL sketch holds 8 values but the moments count 7",
        );
    }

    #[test]
    fn windows_without_sketches_still_parse() {
        let mut window = sample_stats_window();
        window.inputs[1].kll_sketch = None;
        let json = serde_json::to_string(&window).expect("encode");
        assert!(!json.contains("kll_sketch"));
        assert_eq!(crate::wire::decode::<StatsWindow>(json.as_bytes()), Ok(window));
    }

    #[test]
    fn unmergeable_windows_leave_the_target_unchanged() {
        let original = sample_stats_window();
        let mut other = sample_stats_window();
        other.inputs[0].histogram.edges[0] = -50.0;
        let mut target = original.clone();
        let mut bad_sketch = sample_stats_window();
        bad_sketch.inputs[1].kll_sketch = Some(vec![1, 2, 3]);
        let error = target.merge(&bad_sketch).expect_err("bad sketch merged");
        assert!(
            error.to_string().starts_with(
                "input `vibration_rms`: KLL sketch is not in the DataSketches KLL float format"
            ),
            "{error}"
        );
        let error = target.merge(&other).expect_err("different edges merged");
        assert_eq!(
            error.to_string(),
            "windows cannot be merged: input `temperature`: bin edges differ"
        );
        assert_eq!(target, original);

        let mut huge = sample_stats_window();
        huge.count = u64::MAX;
        assert_eq!(target.merge(&huge), Err(StatsWindowError::Overflow { what: "count".into() }));
        assert_eq!(target, original);
    }
}
