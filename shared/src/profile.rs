//! The baseline profile (`profile.json`): what the model's inputs and outputs looked like on the
//! data it was validated on, summarised as histograms over bins cut at the baseline's quantiles
//! (plus underflow, overflow and NaN) and mergeable moments.
//!
//! Features are derived from tensors by a [`FeatureSource`]: one element of a tabular row, or a
//! per-channel mean or standard deviation for images and other large tensors. The same
//! extraction runs at publish time (building the profile) and on the device (filling statistics
//! windows over the profile's bin edges), so the two compare bin by bin.
//!
//! Where the profile asks for it ([`FeatureSketch`], chosen at `outpost bundle create`), a
//! feature also carries the baseline's KLL quantile sketch, and devices sketch that feature in
//! every window ([`crate::stats::kll`]).

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::oip::TensorSpec;
use crate::stats::kll::{KLL_K, Kll};
use crate::stats::{Histogram, HistogramError, Moments, confidence_edges, quantile_edges};

/// Default number of quantile bins per feature.
pub const DEFAULT_BINS: usize = 10;

/// Tensors with at most this many elements per sample are profiled element by element;
/// larger ones by per-channel mean and standard deviation.
pub const MAX_ELEMENT_FEATURES: usize = 64;

/// `profile.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub v: u32,
    /// Number of baseline samples (batch rows) the profile was computed from.
    pub reference_count: u64,
    pub inputs: Vec<FeatureProfile>,
    pub outputs: Vec<FeatureProfile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierProfile>,
}

/// Baseline distribution of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureProfile {
    pub name: String,
    pub source: FeatureSource,
    /// Bins cut at the baseline's quantiles, holding the reference counts.
    pub histogram: Histogram,
    pub moments: Moments,
    /// The profile asks devices to sketch this feature; holds the baseline's sketch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sketch: Option<FeatureSketch>,
}

/// A quantile sketch of one feature: `{"kind": "kll", "k": 200, "reference": "<base64>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSketch {
    pub kind: SketchKind,
    /// Fixed fleet-wide ([`KLL_K`]); a profile with another `k` is refused.
    pub k: u16,
    /// The baseline's sketch in the DataSketches compact serialization (base64 in JSON).
    #[serde(serialize_with = "b64_serialize", deserialize_with = "b64_deserialize")]
    pub reference: Vec<u8>,
}

/// Sketch families a profile can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SketchKind {
    /// KLL over `f32` items, Apache DataSketches format.
    Kll,
}

impl FeatureSketch {
    /// The baseline sketch, decoded (size-checked, `k` checked).
    pub fn reference(&self) -> Result<Kll, crate::stats::kll::KllError> {
        Kll::from_bytes(&self.reference)
    }
}

fn b64_serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&B64.encode(bytes))
}

fn b64_deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(deserializer)?;
    B64.decode(text).map_err(serde::de::Error::custom)
}

/// Which features of a profile get a KLL sketch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SketchSelection {
    #[default]
    None,
    /// Every input feature and output.
    All,
    /// These features (inputs or outputs, by name); an unknown name is an error.
    Named(BTreeSet<String>),
}

impl SketchSelection {
    /// Parses the `--kll` argument: `all`, or feature names separated by commas.
    pub fn parse(text: &str) -> SketchSelection {
        match text.trim() {
            "" => SketchSelection::None,
            "all" => SketchSelection::All,
            names => SketchSelection::Named(
                names.split(',').map(|n| n.trim().to_string()).filter(|n| !n.is_empty()).collect(),
            ),
        }
    }

    fn wants(&self, name: &str) -> bool {
        match self {
            SketchSelection::None => false,
            SketchSelection::All => true,
            SketchSelection::Named(names) => names.contains(name),
        }
    }
}

/// How a feature's value is derived from one sample (one batch row) of a tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureSource {
    /// The element at `index` of the flattened sample.
    Element { tensor: String, index: usize },
    /// Mean of channel `channel` (the sample's first axis; the whole sample when it has one axis).
    ChannelMean { tensor: String, channel: usize },
    /// Population standard deviation of channel `channel`.
    ChannelStd { tensor: String, channel: usize },
}

/// Baseline class distribution of a classifier output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierProfile {
    /// The output tensor holding class probabilities, `[batch, classes]`.
    pub output: String,
    pub class_counts: Vec<u64>,
    /// Histogram of the top-1 probability over [`confidence_edges`].
    pub confidence: Histogram,
}

/// A borrowed tensor: the name, the concrete shape and the row-major data.
#[derive(Debug, Clone, Copy)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

impl TensorView<'_> {
    /// Number of samples: the first axis for tensors of rank ≥ 2, otherwise one.
    pub fn samples(&self) -> usize {
        if self.shape.len() >= 2 { self.shape[0] } else { 1 }
    }

    fn sample_shape(&self) -> &[usize] {
        if self.shape.len() >= 2 { &self.shape[1..] } else { self.shape }
    }

    /// The flattened data of sample `i`.
    pub fn sample(&self, i: usize) -> &[f32] {
        let len: usize = self.sample_shape().iter().product();
        self.data.get(i * len..(i + 1) * len).unwrap_or(&[])
    }
}

impl FeatureSource {
    pub fn tensor(&self) -> &str {
        match self {
            FeatureSource::Element { tensor, .. }
            | FeatureSource::ChannelMean { tensor, .. }
            | FeatureSource::ChannelStd { tensor, .. } => tensor,
        }
    }

    /// The feature's value for sample `i` of `view`; NaN when the sample does not have it.
    pub fn value(&self, view: &TensorView<'_>, i: usize) -> f64 {
        let sample = view.sample(i);
        match self {
            FeatureSource::Element { index, .. } => {
                sample.get(*index).map_or(f64::NAN, |v| f64::from(*v))
            }
            FeatureSource::ChannelMean { channel, .. } => channel_mean_and_std(view, *channel, i).0,
            FeatureSource::ChannelStd { channel, .. } => channel_mean_and_std(view, *channel, i).1,
        }
    }
}

/// Mean and population standard deviation of channel `channel` of sample `i` of `view` —
/// the values of the `ChannelMean` and `ChannelStd` features, computed together for callers
/// that need both. NaN for both when the sample has no such channel or holds a NaN.
pub fn channel_mean_and_std(view: &TensorView<'_>, channel: usize, i: usize) -> (f64, f64) {
    let sample = view.sample(i);
    let sample_shape = view.sample_shape();
    let channel_data = if sample_shape.len() >= 2 {
        let size: usize = sample_shape[1..].iter().product();
        sample.get(channel * size..(channel + 1) * size).unwrap_or(&[])
    } else if channel == 0 {
        sample
    } else {
        &[]
    };
    if channel_data.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    channel_summary(channel_data).unwrap_or((f64::NAN, f64::NAN))
}

/// Mean and population standard deviation of the finite values of `data` (infinities are
/// skipped, as [`Moments::observe`] skips them); `None` when a value is NaN.
///
/// This runs on every image the device serves, so it is two passes over four interleaved
/// partial sums: no division per element and a loop the compiler vectorises. The additions
/// happen in a fixed order, so the result is the same on every platform and a profile computed
/// at publish time bins exactly like a window computed on the device.
fn channel_summary(data: &[f32]) -> Option<(f64, f64)> {
    if data.is_empty() {
        return Some((0.0, 0.0));
    }
    let n = data.len() as f64;
    let sum = sum_in_four_lanes(data, f64::from);
    // f32 values cannot overflow an f64 sum, so a non-finite sum means a NaN or an infinity.
    if !sum.is_finite() {
        if data.iter().any(|v| v.is_nan()) {
            return None;
        }
        // Rare (only outputs can hold infinities): drop them, then the same computation.
        let finite: Vec<f32> = data.iter().copied().filter(|v| v.is_finite()).collect();
        return channel_summary(&finite);
    }
    let mean = sum / n;
    let m2 = sum_in_four_lanes(data, |v| {
        let deviation = f64::from(v) - mean;
        deviation * deviation
    });
    Some((mean, (m2 / n).sqrt()))
}

/// `Σ f(v)` over `data` in four interleaved partial sums added in a fixed order.
#[inline(always)]
fn sum_in_four_lanes(data: &[f32], f: impl Fn(f32) -> f64) -> f64 {
    let mut lanes = [0.0f64; 4];
    let chunks = data.chunks_exact(4);
    let remainder = chunks.remainder();
    for chunk in chunks {
        lanes[0] += f(chunk[0]);
        lanes[1] += f(chunk[1]);
        lanes[2] += f(chunk[2]);
        lanes[3] += f(chunk[3]);
    }
    for (lane, value) in remainder.iter().enumerate() {
        lanes[lane] += f(*value);
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

/// The features to profile for a tensor: element-wise for small samples (named after
/// `column_names` when given), per-channel mean and standard deviation otherwise; none for a
/// BYTES tensor (BOOL elements count as 0 and 1).
pub fn sources_for(
    spec: &TensorSpec,
    column_names: Option<&[String]>,
) -> Vec<(String, FeatureSource)> {
    // Text has no numbers to bin: BYTES tensors are no features, at publish and on devices.
    if spec.datatype == crate::oip::Datatype::Bytes.as_str() {
        return Vec::new();
    }
    let sample_shape: Vec<i64> =
        if spec.shape.len() >= 2 { spec.shape[1..].to_vec() } else { spec.shape.clone() };
    let known = sample_shape.iter().all(|d| *d > 0);
    let elements: i64 = sample_shape.iter().product();
    let tensor = spec.name.clone();
    if known && (elements as usize) <= MAX_ELEMENT_FEATURES {
        return (0..elements as usize)
            .map(|index| {
                let name = column_names
                    .and_then(|names| names.get(index).cloned())
                    .unwrap_or_else(|| format!("{tensor}[{index}]"));
                (name, FeatureSource::Element { tensor: tensor.clone(), index })
            })
            .collect();
    }
    let channels =
        if sample_shape.len() >= 2 && sample_shape[0] > 0 { sample_shape[0] as usize } else { 1 };
    (0..channels)
        .flat_map(|channel| {
            [
                (
                    format!("{tensor}.mean[{channel}]"),
                    FeatureSource::ChannelMean { tensor: tensor.clone(), channel },
                ),
                (
                    format!("{tensor}.std[{channel}]"),
                    FeatureSource::ChannelStd { tensor: tensor.clone(), channel },
                ),
            ]
        })
        .collect()
}

/// The index and value of the largest element (first on ties); `None` for an empty slice or NaN.
pub fn top1(probabilities: &[f32]) -> Option<(usize, f32)> {
    let mut best: Option<(usize, f32)> = None;
    for (i, p) in probabilities.iter().enumerate() {
        if p.is_nan() {
            return None;
        }
        if best.is_none_or(|(_, b)| *p > b) {
            best = Some((i, *p));
        }
    }
    best
}

/// Why a profile could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    #[error("baseline has no samples")]
    Empty,
    #[error("feature `{feature}`: {source}")]
    Histogram { feature: String, source: HistogramError },
    #[error("a KLL sketch was asked for `{0}`, which is not a feature of this model")]
    UnknownSketchFeature(String),
}

/// Collects baseline values and turns them into a [`Profile`].
#[derive(Debug)]
pub struct ProfileBuilder {
    bins: usize,
    samples: u64,
    inputs: Vec<(String, FeatureSource, Vec<f64>)>,
    outputs: Vec<(String, FeatureSource, Vec<f64>)>,
    classifier: Option<(String, Vec<u64>, Histogram)>,
    sketches: SketchSelection,
}

impl ProfileBuilder {
    /// `classifier` names the probability output and its class count when the model is one.
    pub fn new(
        inputs: Vec<(String, FeatureSource)>,
        outputs: Vec<(String, FeatureSource)>,
        classifier: Option<(String, usize)>,
        bins: usize,
    ) -> Self {
        let collect = |sources: Vec<(String, FeatureSource)>| {
            sources.into_iter().map(|(name, source)| (name, source, Vec::new())).collect()
        };
        Self {
            bins,
            samples: 0,
            inputs: collect(inputs),
            outputs: collect(outputs),
            classifier: classifier.and_then(|(output, classes)| {
                Histogram::new(confidence_edges())
                    .ok()
                    .map(|confidence| (output, vec![0; classes], confidence))
            }),
            sketches: SketchSelection::None,
        }
    }

    /// Also sketch the `selection` features (the baseline sketch goes into the profile).
    pub fn with_sketches(mut self, selection: SketchSelection) -> Self {
        self.sketches = selection;
        self
    }

    /// Records one model call: its input and output tensors.
    pub fn observe(&mut self, inputs: &[TensorView<'_>], outputs: &[TensorView<'_>]) {
        let samples = inputs.first().map_or(0, |v| v.samples());
        self.samples += samples as u64;
        for (features, views) in [(&mut self.inputs, inputs), (&mut self.outputs, outputs)] {
            for (_, source, values) in features.iter_mut() {
                if let Some(view) = views.iter().find(|v| v.name == source.tensor()) {
                    values.extend((0..view.samples()).map(|i| source.value(view, i)));
                }
            }
        }
        if let Some((output, counts, confidence)) = &mut self.classifier
            && let Some(view) = outputs.iter().find(|v| v.name == output)
        {
            for i in 0..view.samples() {
                match top1(view.sample(i)) {
                    Some((class, p)) if class < counts.len() => {
                        counts[class] += 1;
                        confidence.observe(f64::from(p));
                    }
                    _ => confidence.observe(f64::NAN),
                }
            }
        }
    }

    /// The profile: quantile bins per feature with the reference counts and moments.
    pub fn finish(self) -> Result<Profile, ProfileError> {
        if self.samples == 0 {
            return Err(ProfileError::Empty);
        }
        let bins = self.bins;
        if let SketchSelection::Named(names) = &self.sketches
            && let Some(unknown) = names.iter().find(|name| {
                !self.inputs.iter().chain(&self.outputs).any(|(feature, _, _)| feature == *name)
            })
        {
            return Err(ProfileError::UnknownSketchFeature(unknown.clone()));
        }
        let sketches = &self.sketches;
        let summarise = |features: Vec<(String, FeatureSource, Vec<f64>)>| {
            features
                .into_iter()
                .map(|(name, source, values)| {
                    let edges = quantile_edges(&values, bins).map_err(|source| {
                        ProfileError::Histogram { feature: name.clone(), source }
                    })?;
                    let mut histogram = Histogram::new(edges).map_err(|source| {
                        ProfileError::Histogram { feature: name.clone(), source }
                    })?;
                    let mut moments = Moments::default();
                    for v in &values {
                        histogram.observe(*v);
                        moments.observe(*v);
                    }
                    let sketch = sketches.wants(&name).then(|| {
                        let mut kll = Kll::new();
                        values.iter().for_each(|v| kll.observe(*v));
                        FeatureSketch { kind: SketchKind::Kll, k: KLL_K, reference: kll.to_bytes() }
                    });
                    Ok(FeatureProfile { name, source, histogram, moments, sketch })
                })
                .collect::<Result<Vec<_>, ProfileError>>()
        };
        Ok(Profile {
            v: 1,
            reference_count: self.samples,
            inputs: summarise(self.inputs)?,
            outputs: summarise(self.outputs)?,
            classifier: self.classifier.map(|(output, class_counts, confidence)| {
                ClassifierProfile { output, class_counts, confidence }
            }),
        })
    }
}

impl Profile {
    /// Checks the invariants of a profile read from a bundle.
    pub fn validate(&self) -> Result<(), String> {
        if self.v != 1 {
            return Err(format!("unsupported profile version {}", self.v));
        }
        for feature in self.inputs.iter().chain(&self.outputs) {
            feature.histogram.validate().map_err(|e| format!("feature `{}`: {e}", feature.name))?;
            if let Some(sketch) = &feature.sketch {
                if sketch.k != KLL_K {
                    return Err(format!(
                        "feature `{}`: KLL sketch k = {}, the fleet uses k = {KLL_K}",
                        feature.name, sketch.k
                    ));
                }
                // The header (format, k, n); the items are decoded where drift uses them.
                let n = crate::stats::kll::check_bytes(&sketch.reference)
                    .map_err(|e| format!("feature `{}`: {e}", feature.name))?;
                if n != feature.moments.count {
                    return Err(format!(
                        "feature `{}`: the KLL sketch holds {n} values but the moments count {}",
                        feature.name, feature.moments.count
                    ));
                }
            }
        }
        if let Some(classifier) = &self.classifier {
            classifier.confidence.validate().map_err(|e| format!("classifier confidence: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabular_inputs_are_profiled_per_column_and_images_per_channel() {
        let tabular =
            TensorSpec { name: "features".into(), datatype: "FP32".into(), shape: vec![-1, 3] };
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let sources = sources_for(&tabular, Some(&names));
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[1].0, "b");
        let image =
            TensorSpec { name: "image".into(), datatype: "FP32".into(), shape: vec![1, 3, 28, 28] };
        let sources = sources_for(&image, None);
        assert_eq!(sources.len(), 6);
        assert_eq!(sources[0].0, "image.mean[0]");
        assert_eq!(sources[5].0, "image.std[2]");
    }

    #[test]
    fn channel_reductions_and_elements() {
        // Two samples of shape [2, 2]: channel 0 = first two values, channel 1 = last two.
        let data = [1.0, 3.0, 10.0, 10.0, 0.0, 0.0, 2.0, 4.0];
        let view = TensorView { name: "x", shape: &[2, 2, 2], data: &data };
        let mean0 = FeatureSource::ChannelMean { tensor: "x".into(), channel: 0 };
        let std1 = FeatureSource::ChannelStd { tensor: "x".into(), channel: 1 };
        assert_eq!(mean0.value(&view, 0), 2.0);
        assert_eq!(std1.value(&view, 0), 0.0);
        assert_eq!(std1.value(&view, 1), 1.0);
        let element = FeatureSource::Element { tensor: "x".into(), index: 3 };
        assert_eq!(element.value(&view, 1), 4.0);
        let missing = FeatureSource::Element { tensor: "x".into(), index: 9 };
        assert!(missing.value(&view, 0).is_nan());
    }

    #[test]
    fn channel_summary_agrees_with_moments_and_handles_specials() {
        let values: Vec<f32> = (0..787).map(|i| ((i as f32) * 0.37).sin() * 3.0 + 1.0).collect();
        let mut moments = Moments::default();
        values.iter().for_each(|v| moments.observe(f64::from(*v)));
        let (mean, std_dev) = channel_summary(&values).expect("finite values");
        assert!((mean - moments.mean).abs() < 1e-12, "{mean} vs {}", moments.mean);
        assert!((std_dev - moments.std_dev()).abs() < 1e-12);
        assert_eq!(channel_summary(&[1.0, f32::INFINITY, 3.0]), Some((2.0, 1.0)));
        assert_eq!(channel_summary(&[f32::INFINITY]), Some((0.0, 0.0)));
        assert_eq!(channel_summary(&[1.0, f32::NAN]), None);
    }

    #[test]
    fn builder_counts_every_sample_and_classes() {
        let sources =
            vec![("f".to_string(), FeatureSource::Element { tensor: "x".into(), index: 0 })];
        let out = vec![("p0".to_string(), FeatureSource::Element { tensor: "p".into(), index: 0 })];
        let mut builder = ProfileBuilder::new(sources, out, Some(("p".into(), 2)), 4);
        for i in 0..100 {
            let x = [i as f32];
            let p = if i % 4 == 0 { [0.95, 0.05] } else { [0.2, 0.8] };
            builder.observe(
                &[TensorView { name: "x", shape: &[1, 1], data: &x }],
                &[TensorView { name: "p", shape: &[1, 2], data: &p }],
            );
        }
        let profile = builder.finish().expect("profile");
        assert_eq!(profile.reference_count, 100);
        assert_eq!(profile.inputs[0].histogram.total(), 100);
        assert_eq!(profile.inputs[0].histogram.counts.len(), 4);
        assert_eq!(profile.inputs[0].moments.max, Some(99.0));
        let classifier = profile.classifier.expect("classifier");
        assert_eq!(classifier.class_counts, vec![25, 75]);
        assert_eq!(classifier.confidence.counts[8], 75);
        assert_eq!(classifier.confidence.counts[9], 25);
        profile.outputs[0].histogram.validate().expect("valid");
    }

    #[test]
    fn asked_features_carry_the_baseline_sketch_and_profiles_check_it() {
        let sources = vec![
            ("a".to_string(), FeatureSource::Element { tensor: "x".into(), index: 0 }),
            ("b".to_string(), FeatureSource::Element { tensor: "x".into(), index: 1 }),
        ];
        let build = |selection: SketchSelection| {
            let mut builder =
                ProfileBuilder::new(sources.clone(), vec![], None, 4).with_sketches(selection);
            for i in 0..1000 {
                let x = [i as f32, if i % 10 == 0 { f32::NAN } else { (i % 7) as f32 }];
                builder.observe(&[TensorView { name: "x", shape: &[1, 2], data: &x }], &[]);
            }
            builder.finish()
        };
        let profile = build(SketchSelection::parse("a")).expect("profile");
        assert_eq!(profile.inputs[1].sketch, None);
        let sketch = profile.inputs[0].sketch.as_ref().expect("asked for");
        assert_eq!((sketch.kind, sketch.k), (SketchKind::Kll, KLL_K));
        let reference = sketch.reference().expect("decodes");
        assert_eq!(reference.n(), 1000);
        let median = reference.quantiles(&[0.5]).expect("not empty")[0];
        assert!((median - 500.0).abs() <= 1000.0 * reference.rank_error(), "median {median}");
        assert_eq!(profile.validate(), Ok(()));

        let json = serde_json::to_string(&profile).expect("encode");
        assert!(json.contains(r#""sketch":{"kind":"kll","k":200,"reference":""#), "{json}");
        let parsed: Profile = serde_json::from_str(&json).expect("decode");
        assert_eq!(parsed, profile);

        let all = build(SketchSelection::All).expect("profile");
        // NaN is binned but not sketched, as it is not in the moments.
        assert_eq!(
            all.inputs[1].sketch.as_ref().map(|s| s.reference().map(|r| r.n())),
            Some(Ok(900))
        );
        assert_eq!(all.validate(), Ok(()));
        assert_eq!(
            build(SketchSelection::parse("a, c")),
            Err(ProfileError::UnknownSketchFeature("c".into()))
        );

        let mut other_k = profile.clone();
        if let Some(sketch) = other_k.inputs[0].sketch.as_mut() {
            sketch.k = 100;
        }
        assert_eq!(
            other_k.validate(),
            Err("feature `a`: KLL sketch k = 100, the fleet uses k = 200".into())
        );
        let mut miscounted = profile.clone();
        miscounted.inputs[0].moments.count = 999;
        assert_eq!(
            miscounted.validate(),
            Err("feature `a`: the KLL sketch holds 1000 values but the moments count 999".into())
        );
    }

    #[test]
    fn top1_picks_first_maximum_and_refuses_nan() {
        assert_eq!(top1(&[0.1, 0.7, 0.7]), Some((1, 0.7)));
        assert_eq!(top1(&[0.1, f32::NAN]), None);
        assert_eq!(top1(&[]), None);
    }
}
