//! The statistics window accumulator (DESIGN §7), sans-IO: inference calls in, a
//! [`StatsWindow`] out when the period is cut.
//!
//! Every input and output feature is binned over the **baseline profile's** bin edges and
//! derived by the profile's own [`FeatureSource`], so a window compares with the baseline bin by
//! bin and merges exactly with windows from other devices and periods. The accumulator owns no
//! clock and no IO: the caller passes latencies, window bounds and sequence numbers, which keeps
//! it deterministic under test.
//!
//! [`PendingCalls`] keeps recording off the inference path: a call's few tensors are copied into
//! flat, bounded buffers (no allocation per call), and folded into the accumulator in batches
//! later, which gives the same window as recording each call directly.
//!
//! Features the profile asks a sketch for ([`FeatureProfile::sketch`]) also feed a KLL sketch
//! (the same finite values the moments count), serialized into the window when it is cut.

use std::collections::BTreeMap;
use std::time::Duration;

#[cfg(doc)]
use outpost_shared::profile::FeatureProfile;
use outpost_shared::profile::{FeatureSource, Profile, TensorView, channel_mean_and_std, top1};
use outpost_shared::stats::kll::Kll;
use outpost_shared::stats::{Histogram, HistogramError, Moments, confidence_edges};
use outpost_shared::wire::{
    ClassifierStats, DeviceId, FeatureStats, LatencyHistogram, MAX_NAME_BYTES, ModelRef,
    ProtocolVersion, StatsWindow,
};

/// Why a profile cannot be turned into a window accumulator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowError {
    #[error("profile feature `{name}` has unusable bin edges: {source}")]
    Edges { name: String, source: HistogramError },
    #[error("profile has two {side} features named `{name}`; window features must be unique")]
    DuplicateFeature { side: &'static str, name: String },
    #[error("profile feature name `{name}…` is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong { name: String },
    #[error("profile's classifier has no classes")]
    NoClasses,
}

/// One feature: where its value comes from and what this window has seen of it.
#[derive(Debug, Clone)]
struct FeatureAccumulator {
    name: String,
    source: FeatureSource,
    histogram: Histogram,
    moments: ShiftedMoments,
    /// The window's KLL sketch, when the profile asks for one.
    kll: Option<Kll>,
    /// Where the feature's tensor was among the views last time: checked first.
    view_hint: usize,
    /// Whether the previous feature reads the same tensor, so its view can be reused.
    same_tensor_as_previous: bool,
}

impl FeatureAccumulator {
    /// The view of the feature's tensor; `None` when the call did not produce it (an output
    /// that was not computed), which contributes nothing.
    fn find_view<'a>(&mut self, views: &[TensorView<'a>]) -> Option<TensorView<'a>> {
        let tensor = self.source.tensor();
        if let Some(view) = views.get(self.view_hint)
            && view.name == tensor
        {
            return Some(*view);
        }
        let index = views.iter().position(|v| v.name == tensor)?;
        self.view_hint = index;
        views.get(index).copied()
    }

    fn observe(&mut self, view: &TensorView<'_>) {
        let samples = view.samples();
        match self.source {
            // The common tabular case, inlined: the element of each sample, exactly as
            // `FeatureSource::value` reads it, without re-deriving the sample layout per value.
            FeatureSource::Element { index, .. } => {
                let sample_len = sample_len(view);
                for sample in 0..samples {
                    let value = view
                        .data
                        .get(sample * sample_len..(sample + 1) * sample_len)
                        .and_then(|values| values.get(index))
                        .map_or(f64::NAN, |v| f64::from(*v));
                    self.count(value);
                }
            }
            _ => {
                for sample in 0..samples {
                    let value = self.source.value(view, sample);
                    self.count(value);
                }
            }
        }
    }

    fn count(&mut self, value: f64) {
        observe_histogram(&mut self.histogram, value);
        self.moments.observe(value);
        if let Some(kll) = &mut self.kll {
            kll.observe(value);
        }
    }

    fn take(&mut self) -> FeatureStats {
        let empty = Histogram {
            edges: self.histogram.edges.clone(),
            counts: vec![0; self.histogram.counts.len()],
            underflow: 0,
            overflow: 0,
            nan: 0,
        };
        FeatureStats {
            name: self.name.clone(),
            histogram: std::mem::replace(&mut self.histogram, empty),
            moments: self.moments.take(),
            kll_sketch: self.kll.as_mut().map(|kll| std::mem::take(kll).to_bytes()),
        }
    }
}

/// Marks the features that read the same tensor as the feature before them.
fn mark_tensor_groups(mut features: Vec<FeatureAccumulator>) -> Vec<FeatureAccumulator> {
    for index in 1..features.len() {
        let same = features[index].source.tensor() == features[index - 1].source.tensor();
        features[index].same_tensor_as_previous = same;
    }
    features
}

/// Records one side's features from `views`. A `ChannelMean` followed by the `ChannelStd` of
/// the same channel (the order profiles list them in) is computed in one pass over the channel.
fn observe_features(features: &mut [FeatureAccumulator], views: &[TensorView<'_>]) {
    let mut index = 0;
    let mut previous_view: Option<TensorView<'_>> = None;
    while index < features.len() {
        let (head, tail) = features.split_at_mut(index + 1);
        let Some(feature) = head.last_mut() else { break };
        // Features of one tensor come together: look the tensor up once per group.
        let view = match previous_view {
            Some(view) if feature.same_tensor_as_previous => Some(view),
            _ => feature.find_view(views),
        };
        previous_view = view;
        let Some(view) = view else {
            index += 1;
            continue;
        };
        let paired_channel = match (&feature.source, tail.first().map(|next| &next.source)) {
            (
                FeatureSource::ChannelMean { tensor, channel },
                Some(FeatureSource::ChannelStd { tensor: next_tensor, channel: next_channel }),
            ) if tensor == next_tensor && channel == next_channel => Some(*channel),
            _ => None,
        };
        match (paired_channel, tail.first_mut()) {
            (Some(channel), Some(std_feature)) => {
                for sample in 0..view.samples() {
                    let (mean, std_dev) = channel_mean_and_std(&view, channel, sample);
                    feature.count(mean);
                    std_feature.count(std_dev);
                }
                index += 2;
            }
            _ => {
                feature.observe(&view);
                index += 1;
            }
        }
    }
}

/// Running moments kept as sums of deviations from a fixed shift (the baseline's mean): an
/// update is a subtraction, a multiplication and a few additions — no division, which is slow
/// on the ARM cores devices have — and with the shift near the data's mean the cancellation is
/// negligible (the "shifted data" algorithm). Turned into [`Moments`] when the window is cut.
#[derive(Debug, Clone)]
struct ShiftedMoments {
    shift: f64,
    count: u64,
    sum: f64,
    sum_of_squares: f64,
    min: f64,
    max: f64,
}

impl ShiftedMoments {
    fn new(shift: f64) -> Self {
        let shift = if shift.is_finite() { shift } else { 0.0 };
        Self {
            shift,
            count: 0,
            sum: 0.0,
            sum_of_squares: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Adds one value; non-finite values are left to the histogram, as in [`Moments`].
    #[inline]
    fn observe(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        let deviation = x - self.shift;
        self.count += 1;
        self.sum += deviation;
        self.sum_of_squares += deviation * deviation;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// The moments so far, starting over.
    fn take(&mut self) -> Moments {
        let taken = std::mem::replace(self, Self::new(self.shift));
        if taken.count == 0 {
            return Moments::default();
        }
        let n = taken.count as f64;
        let mean_deviation = taken.sum / n;
        Moments {
            count: taken.count,
            mean: taken.shift + mean_deviation,
            m2: (taken.sum_of_squares - taken.sum * mean_deviation).max(0.0),
            min: Some(taken.min),
            max: Some(taken.max),
        }
    }
}

/// Elements per sample of a view, as [`TensorView::sample`] lays samples out: everything after
/// the first axis for rank ≥ 2, the whole tensor otherwise.
fn sample_len(view: &TensorView<'_>) -> usize {
    if view.shape.len() >= 2 {
        view.shape[1..].iter().product()
    } else {
        view.shape.iter().product()
    }
}

/// [`Histogram::observe`] with a branch-free bin search: profiles have a handful of edges, and
/// counting the edges at or below `x` costs less than the mispredicted branches of a binary
/// search. Same bins, same underflow/overflow/NaN rules.
fn observe_histogram(histogram: &mut Histogram, x: f64) {
    let (Some(first), Some(last)) = (histogram.edges.first(), histogram.edges.last()) else {
        return;
    };
    if x.is_nan() {
        histogram.nan += 1;
    } else if x < *first {
        histogram.underflow += 1;
    } else if x > *last {
        histogram.overflow += 1;
    } else {
        let at_or_below = count_at_or_below(&histogram.edges, x);
        let bin = at_or_below.saturating_sub(1).min(histogram.counts.len().saturating_sub(1));
        if let Some(count) = histogram.counts.get_mut(bin) {
            *count += 1;
        }
    }
}

/// How many of `edges` are `<= x`, in four independent lanes so the comparisons pipeline (or
/// vectorise) instead of forming one long chain.
#[inline]
fn count_at_or_below(edges: &[f64], x: f64) -> usize {
    // Wrapping adds: at most `edges.len()` ones are added, and without overflow checks the
    // comparisons vectorise.
    let mut lanes = [0u64; 4];
    let chunks = edges.chunks_exact(4);
    let remainder = chunks.remainder();
    for chunk in chunks {
        for (lane, edge) in lanes.iter_mut().zip(chunk) {
            *lane = lane.wrapping_add(u64::from(*edge <= x));
        }
    }
    let mut total = lanes.iter().fold(0u64, |sum, lane| sum.wrapping_add(*lane));
    for edge in remainder {
        total = total.wrapping_add(u64::from(*edge <= x));
    }
    usize::try_from(total).unwrap_or(usize::MAX)
}

/// Class counts and top-1 confidence of a classifier's probability output.
#[derive(Debug, Clone)]
struct ClassifierAccumulator {
    output: String,
    class_counts: Vec<u64>,
    confidence: Histogram,
}

impl ClassifierAccumulator {
    fn observe(&mut self, outputs: &[TensorView<'_>]) {
        let Some(view) = outputs.iter().find(|v| v.name == self.output) else { return };
        for sample in 0..view.samples() {
            // A sample without a top-1 class (NaN probabilities, or more classes than the
            // baseline knew) is left out of both parts, which must agree in total; its NaN
            // still shows in the output feature histograms.
            if let Some((class, probability)) = top1(view.sample(sample))
                && let Some(count) = self.class_counts.get_mut(class)
            {
                *count += 1;
                observe_histogram(&mut self.confidence, f64::from(probability));
            }
        }
    }

    fn take(&mut self) -> ClassifierStats {
        let empty = Histogram {
            edges: self.confidence.edges.clone(),
            counts: vec![0; self.confidence.counts.len()],
            underflow: 0,
            overflow: 0,
            nan: 0,
        };
        let classes = self.class_counts.len();
        ClassifierStats {
            class_counts: std::mem::replace(&mut self.class_counts, vec![0; classes]),
            confidence: std::mem::replace(&mut self.confidence, empty),
        }
    }
}

/// Accumulates one device's inference calls on one model until the window is cut.
#[derive(Debug, Clone)]
pub struct WindowAccumulator {
    device: DeviceId,
    model: ModelRef,
    count: u64,
    errors: BTreeMap<&'static str, u64>,
    latency: LatencyHistogram,
    inputs: Vec<FeatureAccumulator>,
    outputs: Vec<FeatureAccumulator>,
    classifier: Option<ClassifierAccumulator>,
}

impl WindowAccumulator {
    /// An empty window over the features, bin edges and classes of `profile`.
    pub fn new(device: DeviceId, model: ModelRef, profile: &Profile) -> Result<Self, WindowError> {
        let features =
            |side: &'static str, profiles: &[outpost_shared::profile::FeatureProfile]| {
                let mut seen = std::collections::BTreeSet::new();
                profiles
                    .iter()
                    .map(|feature| {
                        if feature.name.len() > MAX_NAME_BYTES {
                            return Err(WindowError::NameTooLong {
                                name: feature.name.chars().take(40).collect(),
                            });
                        }
                        if !seen.insert(feature.name.as_str()) {
                            return Err(WindowError::DuplicateFeature {
                                side,
                                name: feature.name.clone(),
                            });
                        }
                        let histogram =
                            Histogram::new(feature.histogram.edges.clone()).map_err(|source| {
                                WindowError::Edges { name: feature.name.clone(), source }
                            })?;
                        Ok(FeatureAccumulator {
                            name: feature.name.clone(),
                            source: feature.source.clone(),
                            histogram,
                            moments: ShiftedMoments::new(feature.moments.mean),
                            kll: feature.sketch.as_ref().map(|_| Kll::new()),
                            view_hint: 0,
                            same_tensor_as_previous: false,
                        })
                    })
                    .collect::<Result<Vec<_>, WindowError>>()
                    .map(mark_tensor_groups)
            };
        let classifier = match &profile.classifier {
            None => None,
            Some(classifier) if classifier.class_counts.is_empty() => {
                return Err(WindowError::NoClasses);
            }
            Some(classifier) => Some(ClassifierAccumulator {
                output: classifier.output.clone(),
                class_counts: vec![0; classifier.class_counts.len()],
                confidence: Histogram::new(confidence_edges()).map_err(|source| {
                    WindowError::Edges { name: "classifier confidence".into(), source }
                })?,
            }),
        };
        Ok(Self {
            device,
            model,
            count: 0,
            errors: BTreeMap::new(),
            latency: LatencyHistogram::default(),
            inputs: features("input", &profile.inputs)?,
            outputs: features("output", &profile.outputs)?,
            classifier,
        })
    }

    /// Records a successful call: every sample of its input and output tensors, and its latency.
    pub fn record_success(
        &mut self,
        inputs: &[TensorView<'_>],
        outputs: &[TensorView<'_>],
        latency: Duration,
    ) {
        self.count = self.count.saturating_add(1);
        self.latency.observe(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        observe_features(&mut self.inputs, inputs);
        observe_features(&mut self.outputs, outputs);
        if let Some(classifier) = &mut self.classifier {
            classifier.observe(outputs);
        }
    }

    /// Records a failed call by its kind (`InferError::kind`). Failures carry no latency: most
    /// are refusals that take microseconds and would hide the model's real latency.
    pub fn record_failure(&mut self, kind: &'static str) {
        self.count = self.count.saturating_add(1);
        let errors = self.errors.entry(kind).or_insert(0);
        *errors = errors.saturating_add(1);
    }

    /// An empty [`PendingCalls`] for this window: it keeps the tensors the window reads.
    pub fn pending(&self) -> PendingCalls {
        let mut input_tensors: Vec<String> = Vec::new();
        for tensor in self.inputs.iter().map(|f| f.source.tensor()) {
            if !input_tensors.iter().any(|t| t == tensor) {
                input_tensors.push(tensor.to_string());
            }
        }
        let mut output_tensors: Vec<String> = Vec::new();
        let classifier = self.classifier.as_ref().map(|c| c.output.as_str());
        for tensor in self.outputs.iter().map(|f| f.source.tensor()).chain(classifier) {
            if !output_tensors.iter().any(|t| t == tensor) {
                output_tensors.push(tensor.to_string());
            }
        }
        PendingCalls {
            input_tensors,
            output_tensors,
            latencies: Vec::new(),
            spans: Vec::new(),
            shapes: Vec::new(),
            data: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Calls recorded since the last cut, failed ones included.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The model the window is about.
    pub fn model(&self) -> &ModelRef {
        &self.model
    }

    /// Ends the window `[start_ms, end_ms)` with sequence number `seq`, returning everything
    /// recorded since the last cut and starting the next window empty.
    pub fn cut(&mut self, start_ms: u64, end_ms: u64, seq: u64) -> StatsWindow {
        StatsWindow {
            v: ProtocolVersion,
            device: self.device.clone(),
            model: self.model.clone(),
            seq,
            start_ms,
            end_ms: end_ms.max(start_ms),
            count: std::mem::take(&mut self.count),
            errors: std::mem::take(&mut self.errors)
                .into_iter()
                .map(|(kind, count)| (kind.to_string(), count))
                .collect(),
            latency: std::mem::take(&mut self.latency),
            inputs: self.inputs.iter_mut().map(FeatureAccumulator::take).collect(),
            outputs: self.outputs.iter_mut().map(FeatureAccumulator::take).collect(),
            classifier: self.classifier.as_mut().map(ClassifierAccumulator::take),
        }
    }
}

/// Most calls a [`PendingCalls`] holds before it refuses more ([`Full`]).
pub const PENDING_MAX_CALLS: usize = 4096;
/// Most tensor values (f32) a [`PendingCalls`] holds before it refuses more: 1 MiB.
pub const PENDING_MAX_VALUES: usize = 1 << 18;
/// [`PendingCalls::wants_fold`] says it is time to fold well before the limits.
const FOLD_CALLS: usize = PENDING_MAX_CALLS / 16;
const FOLD_VALUES: usize = PENDING_MAX_VALUES / 4;

/// The pending buffer is at its limit: fold it before recording more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pending statistics buffer is full")]
pub struct Full;

/// Where one tensor of one pending call lies in the flat buffers.
#[derive(Debug, Clone, Copy)]
struct Span {
    shape_start: usize,
    shape_len: usize,
    data_start: usize,
    data_len: usize,
}

/// Calls recorded but not yet folded into a [`WindowAccumulator`]: a copy of the few tensors
/// the window reads and the latency of each call, in arrival order, in flat buffers that keep
/// their capacity (recording allocates nothing once they have grown).
///
/// Recording a call here is a few small copies, so the inference path stays cheap; the
/// binning, moments and channel reductions run later in [`PendingCalls::fold_into`], off that
/// path, and give exactly the window that recording every call directly would (same values,
/// same order). The buffer is bounded ([`PENDING_MAX_CALLS`], [`PENDING_MAX_VALUES`]): when it
/// is full, [`PendingCalls::push_success`] refuses the call and the caller folds first — calls
/// are never dropped.
#[derive(Debug, Clone)]
pub struct PendingCalls {
    /// The input tensors the window reads, then the output tensors: a call's spans come in
    /// this order.
    input_tensors: Vec<String>,
    output_tensors: Vec<String>,
    latencies: Vec<Duration>,
    /// `latencies.len() × (input_tensors.len() + output_tensors.len())` entries; `None` for a
    /// tensor the call did not produce.
    spans: Vec<Option<Span>>,
    shapes: Vec<usize>,
    data: Vec<f32>,
    failures: Vec<&'static str>,
}

impl PendingCalls {
    /// Copies what the window needs of a successful call. Refuses it ([`Full`]) when that
    /// would take the buffer over a limit and it holds something already; an empty buffer
    /// takes any call.
    pub fn push_success(
        &mut self,
        inputs: &[TensorView<'_>],
        outputs: &[TensorView<'_>],
        latency: Duration,
    ) -> Result<(), Full> {
        let before = (self.spans.len(), self.shapes.len(), self.data.len());
        let was_empty = self.is_empty();
        self.latencies.push(latency);
        for (names, views) in [(&self.input_tensors, inputs), (&self.output_tensors, outputs)] {
            for name in names {
                let span = views.iter().find(|v| v.name == name.as_str()).map(|view| {
                    let span = Span {
                        shape_start: self.shapes.len(),
                        shape_len: view.shape.len(),
                        data_start: self.data.len(),
                        data_len: view.data.len(),
                    };
                    self.shapes.extend_from_slice(view.shape);
                    self.data.extend_from_slice(view.data);
                    span
                });
                self.spans.push(span);
            }
        }
        // Copied first and taken back when over a limit: the common case checks once.
        if !was_empty && (self.calls() > PENDING_MAX_CALLS || self.data.len() > PENDING_MAX_VALUES)
        {
            self.latencies.pop();
            self.spans.truncate(before.0);
            self.shapes.truncate(before.1);
            self.data.truncate(before.2);
            return Err(Full);
        }
        Ok(())
    }

    /// Records a failed call by its kind, as [`WindowAccumulator::record_failure`] will.
    pub fn push_failure(&mut self, kind: &'static str) -> Result<(), Full> {
        if self.calls() >= PENDING_MAX_CALLS {
            return Err(Full);
        }
        self.failures.push(kind);
        Ok(())
    }

    /// Calls held, failed ones included.
    pub fn calls(&self) -> usize {
        self.latencies.len() + self.failures.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls() == 0
    }

    /// Whether the buffer has filled enough to be folded, well before it refuses calls.
    pub fn wants_fold(&self) -> bool {
        self.calls() >= FOLD_CALLS || self.data.len() >= FOLD_VALUES
    }

    /// Records every held call into `window`, in arrival order, and empties the buffer
    /// (keeping its capacity).
    pub fn fold_into(&mut self, window: &mut WindowAccumulator) {
        let per_call = self.input_tensors.len() + self.output_tensors.len();
        let mut input_views: Vec<TensorView<'_>> = Vec::with_capacity(self.input_tensors.len());
        let mut output_views: Vec<TensorView<'_>> = Vec::with_capacity(self.output_tensors.len());
        for (call, latency) in self.latencies.iter().enumerate() {
            input_views.clear();
            output_views.clear();
            let spans = self.spans.get(call * per_call..(call + 1) * per_call).unwrap_or(&[]);
            let names = self.input_tensors.iter().chain(&self.output_tensors);
            for (index, (name, span)) in names.zip(spans).enumerate() {
                let Some(span) = span else { continue };
                let view = TensorView {
                    name,
                    shape: self
                        .shapes
                        .get(span.shape_start..span.shape_start + span.shape_len)
                        .unwrap_or(&[]),
                    data: self
                        .data
                        .get(span.data_start..span.data_start + span.data_len)
                        .unwrap_or(&[]),
                };
                if index < self.input_tensors.len() {
                    input_views.push(view);
                } else {
                    output_views.push(view);
                }
            }
            window.record_success(&input_views, &output_views, *latency);
        }
        for kind in &self.failures {
            window.record_failure(kind);
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.latencies.clear();
        self.spans.clear();
        self.shapes.clear();
        self.data.clear();
        self.failures.clear();
    }
}

#[cfg(test)]
mod tests {
    use outpost_shared::profile::{ClassifierProfile, FeatureProfile};
    use outpost_shared::wire::{Digest, encode};

    use super::*;

    fn feature(name: &str, tensor: &str, index: usize, edges: Vec<f64>) -> FeatureProfile {
        FeatureProfile {
            name: name.into(),
            source: FeatureSource::Element { tensor: tensor.into(), index },
            histogram: Histogram::new(edges).expect("edges"),
            moments: Moments::default(),
            sketch: None,
        }
    }

    /// Two inputs of tensor `x`, two class probabilities in tensor `p`, a classifier on `p`.
    fn classifier_profile() -> Profile {
        Profile {
            v: 1,
            reference_count: 10,
            inputs: vec![
                feature("a", "x", 0, vec![0.0, 1.0, 2.0]),
                feature("b", "x", 1, vec![-1.0, 0.0, 1.0]),
            ],
            outputs: vec![
                feature("p0", "p", 0, vec![0.0, 0.5, 1.0]),
                feature("p1", "p", 1, vec![0.0, 0.5, 1.0]),
            ],
            classifier: Some(ClassifierProfile {
                output: "p".into(),
                class_counts: vec![5, 5],
                confidence: Histogram::new(confidence_edges()).expect("edges"),
            }),
        }
    }

    fn accumulator(profile: &Profile) -> WindowAccumulator {
        let model =
            ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"bundle") };
        WindowAccumulator::new(DeviceId::new("dev-1").expect("id"), model, profile)
            .expect("accumulator")
    }

    /// Records one call with `rows` of `[x0, x1]` inputs and `[p0, p1]` outputs.
    fn call(window: &mut WindowAccumulator, x: &[f32], p: &[f32], latency_us: u64) {
        let rows = x.len() / 2;
        let shape = [rows, 2];
        window.record_success(
            &[TensorView { name: "x", shape: &shape, data: x }],
            &[TensorView { name: "p", shape: &shape, data: p }],
            Duration::from_micros(latency_us),
        );
    }

    fn encodes(window: &StatsWindow) {
        if let Err(error) = encode(window) {
            panic!("window refused by wire validation: {error}\n{window:#?}");
        }
    }

    #[test]
    fn asked_features_carry_a_kll_sketch_per_window_also_through_pending_calls() {
        let mut profile = classifier_profile();
        let reference = outpost_shared::stats::kll::Kll::new();
        profile.inputs[0].sketch = Some(outpost_shared::profile::FeatureSketch {
            kind: outpost_shared::profile::SketchKind::Kll,
            k: outpost_shared::stats::kll::KLL_K,
            reference: reference.to_bytes(),
        });
        let mut window = accumulator(&profile);
        let mut pending = window.pending();
        for i in 0..500 {
            let x = [i as f32 / 100.0, if i % 10 == 0 { f32::NAN } else { 0.0 }];
            pend(&mut pending, &x, &[0.4, 0.6], 100);
        }
        pending.fold_into(&mut window);
        call(&mut window, &[f32::NAN, 0.0], &[0.4, 0.6], 100);
        let cut = window.cut(0, 60_000, 1);
        encodes(&cut);
        assert_eq!(cut.inputs[1].kll_sketch, None, "not asked for");
        let sketch = Kll::from_bytes(cut.inputs[0].kll_sketch.as_deref().expect("asked for"))
            .expect("decodes");
        assert_eq!(sketch.n(), 500, "the NaN is counted by the histogram only");
        assert_eq!(cut.inputs[0].moments.count, 500);
        let median = sketch.quantiles(&[0.5]).expect("not empty")[0];
        assert!((median - 2.5).abs() <= 5.0 * sketch.rank_error() + 0.01, "median {median}");

        // The next window starts a new sketch.
        call(&mut window, &[1.0, 0.0], &[0.4, 0.6], 100);
        let next = window.cut(60_000, 120_000, 2);
        let sketch = Kll::from_bytes(next.inputs[0].kll_sketch.as_deref().expect("asked for"))
            .expect("decodes");
        assert_eq!(sketch.n(), 1);
    }

    #[test]
    fn counts_calls_samples_latency_and_errors() {
        let mut window = accumulator(&classifier_profile());
        call(&mut window, &[0.5, -0.5], &[0.9, 0.1], 120);
        call(&mut window, &[1.5, 0.5, 2.0, 1.0], &[0.3, 0.7, 0.2, 0.8], 3_000);
        window.record_failure("bad_shape");
        window.record_failure("bad_shape");
        window.record_failure("runtime");
        assert_eq!(window.count(), 5);
        let cut = window.cut(1_000, 61_000, 7);
        encodes(&cut);
        assert_eq!((cut.seq, cut.start_ms, cut.end_ms, cut.count), (7, 1_000, 61_000, 5));
        assert_eq!(cut.errors.get("bad_shape"), Some(&2));
        assert_eq!(cut.errors.get("runtime"), Some(&1));
        assert_eq!(cut.latency.moments.count, 2);
        assert_eq!(cut.latency.counts[2], 1, "120 µs lands in the (100, 200] bucket");
        assert_eq!(cut.latency.counts[6], 1, "3000 µs lands in the (1600, 3200] bucket");
        // Feature `a` saw 0.5, 1.5 and 2.0 (the last edge belongs to the last bin).
        assert_eq!(cut.inputs[0].name, "a");
        assert_eq!(cut.inputs[0].histogram.counts, vec![1, 2]);
        assert_eq!(cut.inputs[0].moments.count, 3);
        assert_eq!(cut.inputs[0].moments.max, Some(2.0));
        assert_eq!(cut.inputs[1].histogram.counts, vec![1, 2]);
    }

    #[test]
    fn nan_underflow_and_overflow_are_counted_apart() {
        let mut window = accumulator(&classifier_profile());
        call(&mut window, &[-3.0, f32::NAN, 9.0, f32::INFINITY], &[0.5, 0.5, 0.5, 0.5], 10);
        let cut = window.cut(0, 1, 0);
        encodes(&cut);
        let a = &cut.inputs[0].histogram;
        assert_eq!((a.underflow, a.overflow, a.nan, a.counts.iter().sum::<u64>()), (1, 1, 0, 0));
        let b = &cut.inputs[1].histogram;
        assert_eq!((b.underflow, b.overflow, b.nan), (0, 1, 1));
        // Moments only hold finite values.
        assert_eq!(cut.inputs[0].moments.count, 2);
        assert_eq!(cut.inputs[1].moments.count, 0);
        assert_eq!(cut.inputs[1].moments.min, None);
    }

    #[test]
    fn classifier_counts_top1_and_confidence_and_skips_nan_rows() {
        let mut window = accumulator(&classifier_profile());
        call(&mut window, &[0.0, 0.0, 0.0, 0.0], &[0.95, 0.05, 0.35, 0.65], 10);
        call(&mut window, &[0.0, 0.0], &[f32::NAN, 0.5], 10);
        call(&mut window, &[0.0, 0.0], &[0.5, 0.5], 10);
        let cut = window.cut(0, 1, 0);
        encodes(&cut);
        let classifier = cut.classifier.expect("classifier statistics");
        assert_eq!(classifier.class_counts, vec![2, 1], "ties go to the first class");
        assert_eq!(classifier.confidence.counts[9], 1);
        assert_eq!(classifier.confidence.counts[6], 1);
        assert_eq!(classifier.confidence.counts[5], 1);
        assert_eq!(classifier.confidence.nan, 0);
        assert_eq!(cut.outputs[0].histogram.nan, 1, "the NaN row shows in the output feature");
    }

    #[test]
    fn regressor_windows_have_no_classifier_part() {
        let mut profile = classifier_profile();
        profile.classifier = None;
        let mut window = accumulator(&profile);
        call(&mut window, &[0.5, 0.5], &[0.2, 0.3], 10);
        let cut = window.cut(0, 1, 0);
        encodes(&cut);
        assert!(cut.classifier.is_none());
    }

    #[test]
    fn cut_resets_everything_and_empty_windows_are_valid() {
        let mut window = accumulator(&classifier_profile());
        call(&mut window, &[0.5, 0.5], &[0.9, 0.1], 10);
        window.record_failure("runtime");
        let first = window.cut(0, 10, 1);
        assert_eq!(first.count, 2);
        let second = window.cut(10, 20, 2);
        encodes(&second);
        assert_eq!(second.count, 0);
        assert!(second.errors.is_empty());
        assert_eq!(second.latency, LatencyHistogram::default());
        assert_eq!(second.inputs[0].histogram.total(), 0);
        assert_eq!(second.inputs[0].histogram.edges, first.inputs[0].histogram.edges);
        assert_eq!(second.inputs[0].moments, Moments::default());
        let classifier = second.classifier.expect("classifier");
        assert_eq!(classifier.class_counts, vec![0, 0]);
        assert_eq!(classifier.confidence.total(), 0);
    }

    #[test]
    fn merging_two_windows_equals_one_window_over_all_calls() {
        let profile = classifier_profile();
        let calls: Vec<(Vec<f32>, Vec<f32>, u64)> = (0..40)
            .map(|i| {
                let t = i as f32 * 0.37;
                let p0 = (t.sin() + 1.0) / 2.0;
                (vec![t.cos() * 2.0, t.sin()], vec![p0, 1.0 - p0], 50 + 97 * i)
            })
            .collect();
        let mut whole = accumulator(&profile);
        let mut parts = accumulator(&profile);
        for (x, p, latency) in &calls {
            call(&mut whole, x, p, *latency);
        }
        whole.record_failure("bad_value");
        let (first, second) = calls.split_at(17);
        for (x, p, latency) in first {
            call(&mut parts, x, p, *latency);
        }
        let mut merged = parts.cut(0, 100, 1);
        for (x, p, latency) in second {
            call(&mut parts, x, p, *latency);
        }
        parts.record_failure("bad_value");
        merged.merge(&parts.cut(100, 200, 2)).expect("merge");
        let whole = whole.cut(0, 200, 2);
        encodes(&merged);
        let close = |a: &Moments, b: &Moments| {
            a.count == b.count
                && (a.mean - b.mean).abs() < 1e-9
                && (a.m2 - b.m2).abs() < 1e-6
                && a.min == b.min
                && a.max == b.max
        };
        assert_eq!(merged.count, whole.count);
        assert_eq!(merged.errors, whole.errors);
        assert_eq!(merged.latency.counts, whole.latency.counts);
        assert!(close(&merged.latency.moments, &whole.latency.moments));
        for (a, b) in merged
            .inputs
            .iter()
            .chain(&merged.outputs)
            .zip(whole.inputs.iter().chain(&whole.outputs))
        {
            assert_eq!(a.histogram, b.histogram, "feature {}", a.name);
            assert!(close(&a.moments, &b.moments), "feature {}", a.name);
        }
        assert_eq!(merged.classifier, whole.classifier);
        assert_eq!((merged.start_ms, merged.end_ms, merged.seq), (0, 200, 2));
    }

    #[test]
    fn shifted_moments_agree_with_welford_whatever_the_shift() {
        let values: Vec<f64> =
            (0..1000).map(|i| (i as f64 * 0.37).sin() * 5.0 + 100.0).chain([f64::NAN]).collect();
        let mut welford = Moments::default();
        values.iter().for_each(|v| welford.observe(*v));
        for shift in [100.0, 0.0, -1e4, f64::NAN] {
            let mut shifted = ShiftedMoments::new(shift);
            values.iter().for_each(|v| shifted.observe(*v));
            let moments = shifted.take();
            assert_eq!(moments.count, welford.count);
            assert!((moments.mean - welford.mean).abs() < 1e-9, "shift {shift}");
            assert!((moments.m2 - welford.m2).abs() < 1e-6 * welford.m2, "shift {shift}");
            assert_eq!((moments.min, moments.max), (welford.min, welford.max));
            assert_eq!(shifted.take(), Moments::default(), "take starts over");
        }
    }

    #[test]
    fn the_branch_free_bin_search_bins_like_the_histogram() {
        let edges = vec![-1.0, 0.0, 0.5, 2.0, 10.0];
        let mut ours = Histogram::new(edges.clone()).expect("edges");
        let mut reference = Histogram::new(edges).expect("edges");
        let values = [-5.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 2.0, 9.99, 10.0, 10.5, f64::NAN]
            .into_iter()
            .chain([f64::INFINITY, f64::NEG_INFINITY, -0.0, f64::MIN_POSITIVE]);
        for value in values {
            observe_histogram(&mut ours, value);
            reference.observe(value);
        }
        assert_eq!(ours, reference);
    }

    /// Records calls like [`call`], into a pending buffer.
    fn pend(pending: &mut PendingCalls, x: &[f32], p: &[f32], latency_us: u64) {
        let shape = [x.len() / 2, 2];
        pending
            .push_success(
                &[TensorView { name: "x", shape: &shape, data: x }],
                &[TensorView { name: "p", shape: &shape, data: p }],
                Duration::from_micros(latency_us),
            )
            .expect("room in the pending buffer");
    }

    #[test]
    fn pending_calls_fold_into_exactly_the_window_of_direct_recording() {
        let profile = classifier_profile();
        let mut direct = accumulator(&profile);
        let mut folded = accumulator(&profile);
        let mut pending = folded.pending();
        for i in 0..100u16 {
            let t = f32::from(i) * 0.37;
            let p0 = (t.sin() + 1.0) / 2.0;
            let (x, p) = ([t.cos() * 2.0, t.sin(), f32::NAN, 3.0], [p0, 1.0 - p0, 0.5, 0.5]);
            let rows = if i % 3 == 0 { 4 } else { 2 };
            let latency = 50 + 97 * u64::from(i);
            call(&mut direct, &x[..rows], &p[..rows], latency);
            pend(&mut pending, &x[..rows], &p[..rows], latency);
            if i % 7 == 0 {
                direct.record_failure("bad_value");
                pending.push_failure("bad_value").expect("room");
            }
            // A call without the classifier's output: only the inputs count.
            if i % 11 == 0 {
                let shape = [1, 2];
                let views = [TensorView { name: "x", shape: &shape, data: &x[..2] }];
                direct.record_success(&views, &[], Duration::from_micros(7));
                pending.push_success(&views, &[], Duration::from_micros(7)).expect("room");
            }
            if i % 30 == 29 {
                pending.fold_into(&mut folded);
                assert!(pending.is_empty());
            }
        }
        assert_eq!(folded.count() + pending.calls() as u64, direct.count());
        pending.fold_into(&mut folded);
        let (direct, folded) = (direct.cut(0, 10, 3), folded.cut(0, 10, 3));
        encodes(&folded);
        assert_eq!(folded, direct, "bit for bit the same window");
        assert_eq!(folded.errors.get("bad_value"), Some(&15));
    }

    #[test]
    fn a_full_pending_buffer_refuses_calls_and_keeps_every_one_it_took() {
        let mut window = accumulator(&classifier_profile());
        let mut pending = window.pending();
        for _ in 0..PENDING_MAX_CALLS {
            pend(&mut pending, &[0.5, 0.5], &[0.9, 0.1], 10);
        }
        assert!(pending.wants_fold());
        let shape = [1, 2];
        let x = [TensorView { name: "x", shape: &shape, data: &[0.5, 0.5] }];
        assert_eq!(pending.push_success(&x, &[], Duration::ZERO), Err(Full));
        assert_eq!(pending.push_failure("runtime"), Err(Full));
        assert_eq!(pending.calls(), PENDING_MAX_CALLS);
        pending.fold_into(&mut window);
        assert_eq!(window.count(), PENDING_MAX_CALLS as u64);
        // Too many values: refused when other calls are held, taken by an empty buffer.
        let big = vec![0.25_f32; PENDING_MAX_VALUES];
        let big_shape = [PENDING_MAX_VALUES / 2, 2];
        let big_view = [TensorView { name: "x", shape: &big_shape, data: &big }];
        pend(&mut pending, &[0.5, 0.5], &[0.9, 0.1], 10);
        assert_eq!(pending.push_success(&big_view, &[], Duration::ZERO), Err(Full));
        assert_eq!(pending.calls(), 1, "the refused call left nothing behind");
        pending.fold_into(&mut window);
        pending.push_success(&big_view, &[], Duration::ZERO).expect("an empty buffer takes it");
        pending.fold_into(&mut window);
        let cut = window.cut(0, 1, 1);
        assert_eq!(cut.count, PENDING_MAX_CALLS as u64 + 2);
        assert_eq!(
            cut.inputs[0].moments.count,
            PENDING_MAX_CALLS as u64 + 1 + big.len() as u64 / 2
        );
    }

    #[test]
    fn profiles_that_would_make_invalid_windows_are_refused() {
        let mut duplicate = classifier_profile();
        duplicate.inputs[1].name = "a".into();
        let model = ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"") };
        let device = DeviceId::new("dev-1").expect("id");
        let error = WindowAccumulator::new(device.clone(), model.clone(), &duplicate)
            .expect_err("duplicate names");
        assert_eq!(error, WindowError::DuplicateFeature { side: "input", name: "a".into() });
        let mut no_classes = classifier_profile();
        if let Some(classifier) = &mut no_classes.classifier {
            classifier.class_counts.clear();
        }
        let error = WindowAccumulator::new(device, model, &no_classes).expect_err("no classes");
        assert_eq!(error, WindowError::NoClasses);
    }
}
