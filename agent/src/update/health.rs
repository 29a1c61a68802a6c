//! What the updater learns from live requests: the serving model's recent latencies (the
//! baseline a new model is compared with), the shadow phase (the candidate runs beside the
//! active model on the same requests; answers still come from the active one) and the health
//! watch after activation.
//!
//! [`UpdateObserver`] is installed on the API's [`ActiveRuntime`](crate::api::ActiveRuntime)
//! once and sees every inference. The decisions are plain functions over plain numbers:
//! [`judge`] (commit, roll back, keep watching) and [`agreement`] (do two answers agree).

use std::collections::VecDeque;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outpost_shared::manifest::Task;
use outpost_shared::model::InferError;
use outpost_shared::oip::{InferenceRequest, InferenceResponse, TensorData};
use outpost_shared::plan::HealthPolicy;
use outpost_shared::profile::{FeatureSource, Profile, TensorView};
use outpost_shared::stats::Histogram;

use crate::api::InferenceObserver;
use crate::runtime::Runtime;

/// Latencies of the serving model kept as the baseline.
const BASELINE_SAMPLES: usize = 512;
/// Latencies of a watched model kept for its p95.
const WATCH_SAMPLES: usize = 4096;
/// Requests waiting for the shadow model; more are skipped (and counted) rather than queued.
const SHADOW_QUEUE: usize = 64;

/// What the watched model's outputs are compared with, from the bundle's profile.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputBaseline {
    /// A classifier: the baseline class counts and the output tensor that holds its class
    /// probabilities; the watch counts the top-1 classes.
    Classes { output: String, class_counts: Vec<u64> },
    /// A regressor (or any model without a classifier profile): each profiled output
    /// feature with its baseline histogram; the watch bins the answered values over the same
    /// edges.
    Values { features: Vec<OutputFeature> },
}

/// One profiled output feature of a regressor.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputFeature {
    pub name: String,
    pub source: FeatureSource,
    /// The profile's histogram: bin edges and reference counts.
    pub baseline: Histogram,
}

impl OutputBaseline {
    /// The baseline a bundle's profile gives: its classifier's class counts, else its output
    /// features' histograms; `None` when the profile has neither.
    pub fn of_profile(profile: &Profile) -> Option<Self> {
        if let Some(classifier) = &profile.classifier {
            return Some(Self::Classes {
                output: classifier.output.clone(),
                class_counts: classifier.class_counts.clone(),
            });
        }
        let features: Vec<OutputFeature> = profile
            .outputs
            .iter()
            .map(|feature| OutputFeature {
                name: feature.name.clone(),
                source: feature.source.clone(),
                baseline: feature.histogram.clone(),
            })
            .collect();
        (!features.is_empty()).then_some(Self::Values { features })
    }
}

/// Counts of a health watch so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchStats {
    pub requests: u64,
    pub errors: u64,
    latencies: Vec<Duration>,
    baseline: Option<OutputBaseline>,
    /// Top-1 classes of the answered samples, with a classifier baseline.
    classes: Vec<u64>,
    /// The answered values of each output feature over the baseline's edges, with a
    /// regressor baseline (in the order of its features).
    values: Vec<Histogram>,
}

impl WatchStats {
    fn new(baseline: Option<OutputBaseline>) -> Self {
        let (classes, values) = match &baseline {
            Some(OutputBaseline::Classes { class_counts, .. }) => {
                (vec![0; class_counts.len()], Vec::new())
            }
            Some(OutputBaseline::Values { features }) => {
                (Vec::new(), features.iter().map(|f| empty_like(&f.baseline)).collect())
            }
            None => (Vec::new(), Vec::new()),
        };
        Self { baseline, classes, values, ..Self::default() }
    }

    /// The largest output-distribution shift against the baseline: PSI of the answered
    /// samples' top-1 classes against the class counts (classifiers), or the largest PSI of
    /// an output feature's histogram against its baseline bins, under- and overflow and NaN
    /// counted as bins (regressors). `None` without a baseline or before any sample.
    pub fn output_psi(&self) -> Option<f64> {
        self.output_shift().map(|(_, psi)| psi)
    }

    /// [`WatchStats::output_psi`] with what shifted most: `predicted classes` or the output
    /// feature's name.
    pub fn output_shift(&self) -> Option<(String, f64)> {
        match self.baseline.as_ref()? {
            OutputBaseline::Classes { class_counts, .. } => {
                outpost_shared::drift::psi(class_counts, &self.classes)
                    .map(|psi| ("the predicted classes".to_string(), psi))
            }
            OutputBaseline::Values { features } => features
                .iter()
                .zip(&self.values)
                .filter_map(|(feature, current)| {
                    let psi = outpost_shared::drift::psi(
                        &feature.baseline.full_counts(),
                        &current.full_counts(),
                    )?;
                    Some((format!("output `{}`", feature.name), psi))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1)),
        }
    }

    /// Counts an answer's outputs for the output-shift check.
    fn count_outputs(&mut self, response: &InferenceResponse) {
        match &self.baseline {
            Some(OutputBaseline::Classes { output, .. }) => {
                let Some(output) = response.outputs.iter().find(|o| &o.name == output) else {
                    return;
                };
                let classes = self.classes.len().max(1);
                let values = output.data.to_f64_vec();
                for row in values.chunks(classes) {
                    if let Some(slot) = argmax(row).and_then(|class| self.classes.get_mut(class)) {
                        *slot += 1;
                    }
                }
            }
            Some(OutputBaseline::Values { features }) => {
                for (feature, histogram) in features.iter().zip(self.values.iter_mut()) {
                    let Some(tensor) =
                        response.outputs.iter().find(|o| o.name == feature.source.tensor())
                    else {
                        continue;
                    };
                    // The values as the window reads them, so the feature is derived as the
                    // profile derived it.
                    let data: Vec<f32> = tensor.data.to_f32_vec();
                    let shape: Vec<usize> = tensor.shape.iter().map(|d| *d as usize).collect();
                    let view = TensorView { name: &tensor.name, shape: &shape, data: &data };
                    for sample in 0..view.samples() {
                        histogram.observe(feature.source.value(&view, sample));
                    }
                }
            }
            None => {}
        }
    }

    pub fn p95(&self) -> Option<Duration> {
        p95(&self.latencies)
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }
    }
}

/// The 95th percentile (nearest rank) of `samples`.
pub fn p95(samples: &[Duration]) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() as f64 * 0.95).ceil() as usize;
    sorted.get(rank.saturating_sub(1).min(sorted.len() - 1)).copied()
}

/// The health watch's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    KeepWatching,
    Commit,
    RollBack { code: &'static str, reason: String },
}

/// Judges a watch: a breach of the policy rolls back as soon as `min_requests` were seen;
/// at the end of the watch (`finished`) anything not breached commits, including a watch that
/// saw fewer requests than it needed to judge.
pub fn judge(
    policy: &HealthPolicy,
    stats: &WatchStats,
    baseline_p95: Option<Duration>,
    finished: bool,
) -> Verdict {
    if stats.requests >= policy.min_requests.max(1) {
        let rate = stats.error_rate();
        if rate > policy.max_error_rate {
            return Verdict::RollBack {
                code: "error_rate",
                reason: format!(
                    "{} of {} requests failed ({:.1}%), over the policy's {:.1}%",
                    stats.errors,
                    stats.requests,
                    rate * 100.0,
                    policy.max_error_rate * 100.0
                ),
            };
        }
        if let (Some(max), Some((what, shift))) = (policy.max_output_psi, stats.output_shift())
            && shift > max
        {
            return Verdict::RollBack {
                code: "output_shift",
                reason: format!(
                    "{what} shifted from the baseline: PSI {shift:.3}, over the policy's {max:.3}"
                ),
            };
        }
        if let (Some(new), Some(old)) = (stats.p95(), baseline_p95)
            && !old.is_zero()
        {
            let ratio = new.as_secs_f64() / old.as_secs_f64();
            if ratio > policy.max_p95_latency_ratio {
                return Verdict::RollBack {
                    code: "latency",
                    reason: format!(
                        "p95 latency {:.3} ms is {ratio:.2}x the previous model's {:.3} ms, over \
                         the policy's {:.2}x",
                        new.as_secs_f64() * 1e3,
                        old.as_secs_f64() * 1e3,
                        policy.max_p95_latency_ratio
                    ),
                };
            }
        }
    }
    if finished { Verdict::Commit } else { Verdict::KeepWatching }
}

/// Whether two answers to the same request agree: the top-1 class of every sample for a
/// classifier (first output, `[batch, classes]`), every value within `tolerance` otherwise.
pub fn agreement(
    task: Task,
    active: &InferenceResponse,
    candidate: &InferenceResponse,
    tolerance: f64,
) -> bool {
    match task {
        Task::Classification => {
            let (Some(a), Some(b)) = (active.outputs.first(), candidate.outputs.first()) else {
                return false;
            };
            if a.shape != b.shape {
                return false;
            }
            let classes = a.shape.last().copied().unwrap_or(1).max(1) as usize;
            let (a, b) = (a.data.to_f64_vec(), b.data.to_f64_vec());
            a.chunks(classes).zip(b.chunks(classes)).all(|(x, y)| argmax(x) == argmax(y))
        }
        Task::Regression | Task::Other => {
            active.outputs.len() == candidate.outputs.len()
                && active.outputs.iter().zip(&candidate.outputs).all(|(a, b)| {
                    a.shape == b.shape
                        && match (&a.data, &b.data) {
                            (TensorData::Bytes(x), TensorData::Bytes(y)) => x == y,
                            (x, y) => {
                                x.len() == y.len()
                                    && x.to_f64_vec()
                                        .iter()
                                        .zip(&y.to_f64_vec())
                                        .all(|(x, y)| (x - y).abs() <= tolerance)
                            }
                        }
                })
        }
    }
}

/// An empty histogram over `histogram`'s edges.
fn empty_like(histogram: &Histogram) -> Histogram {
    Histogram {
        edges: histogram.edges.clone(),
        counts: vec![0; histogram.counts.len()],
        underflow: 0,
        overflow: 0,
        nan: 0,
    }
}

fn argmax(values: &[f64]) -> Option<usize> {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(index, _)| index)
}

/// The shadow phase's numbers so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShadowStats {
    /// Requests both models answered.
    pub compared: u64,
    pub agreed: u64,
    /// Requests the candidate failed (the active model answered them).
    pub candidate_errors: u64,
    /// Requests not shadowed because the candidate was behind.
    pub skipped: u64,
    active_latency: Duration,
    candidate_latency: Duration,
}

impl ShadowStats {
    pub fn agreement_rate(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }

    /// Mean candidate latency minus mean active latency, in milliseconds.
    pub fn latency_delta_ms(&self) -> Option<f64> {
        (self.compared > 0).then(|| {
            (self.candidate_latency.as_secs_f64() - self.active_latency.as_secs_f64()) * 1e3
                / self.compared as f64
        })
    }

    /// Everything the candidate saw: compared or failed.
    pub fn seen(&self) -> u64 {
        self.compared + self.candidate_errors
    }
}

/// One request for the shadow model with the active model's answer.
type ShadowJob = (InferenceRequest, InferenceResponse, Duration);

#[derive(Debug)]
struct Shadow {
    jobs: SyncSender<ShadowJob>,
}

#[derive(Debug)]
struct Watch {
    runtime: Arc<Runtime>,
    stats: WatchStats,
}

#[derive(Debug, Default)]
struct Inner {
    /// Recent latencies of the runtime that served them (compared by pointer).
    baseline: VecDeque<Duration>,
    baseline_runtime: Option<usize>,
    shadow: Option<Shadow>,
    shadow_stats: Arc<Mutex<ShadowStats>>,
    watch: Option<Watch>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct UpdateObserver {
    inner: Mutex<Inner>,
}

fn runtime_key(runtime: &Arc<Runtime>) -> usize {
    Arc::as_ptr(runtime) as usize
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain counters: a panic while holding the lock cannot leave them worse than a
    // partly counted request.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UpdateObserver {
    /// The p95 latency of the serving model over its recent requests.
    pub fn baseline_p95(&self) -> Option<Duration> {
        let inner = lock(&self.inner);
        let samples: Vec<Duration> = inner.baseline.iter().copied().collect();
        p95(&samples)
    }

    /// Starts shadowing: each request the active model answers is also run by `candidate` on
    /// a thread of its own (its answers are only compared, never returned).
    pub fn start_shadow(&self, candidate: Arc<Runtime>, task: Task, tolerance: f64) {
        let (jobs, receiver) = mpsc::sync_channel::<ShadowJob>(SHADOW_QUEUE);
        let stats = Arc::new(Mutex::new(ShadowStats::default()));
        let worker_stats = Arc::clone(&stats);
        let spawned = std::thread::Builder::new().name("outpost-shadow".into()).spawn(move || {
            for (request, active_response, active_latency) in receiver {
                let started = std::time::Instant::now();
                let result = candidate.infer(&request);
                let latency = started.elapsed();
                let mut stats = lock(&worker_stats);
                match result {
                    Ok(response) => {
                        stats.compared += 1;
                        if agreement(task, &active_response, &response, tolerance) {
                            stats.agreed += 1;
                        }
                        stats.active_latency += active_latency;
                        stats.candidate_latency += latency;
                    }
                    Err(_) => stats.candidate_errors += 1,
                }
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the shadow thread; no shadow phase");
            return;
        }
        let mut inner = lock(&self.inner);
        inner.shadow = Some(Shadow { jobs });
        inner.shadow_stats = stats;
    }

    /// The shadow phase's numbers so far.
    pub fn shadow_stats(&self) -> ShadowStats {
        let stats = Arc::clone(&lock(&self.inner).shadow_stats);
        lock(&stats).clone()
    }

    /// Ends the shadow phase (its thread ends when the queue is drained) and returns the
    /// numbers.
    pub fn stop_shadow(&self) -> ShadowStats {
        lock(&self.inner).shadow = None;
        self.shadow_stats()
    }

    /// Starts watching the requests `runtime` serves; with `baseline`, its predicted classes
    /// (classifiers) or output values (regressors) are counted for the output-shift check.
    pub fn start_watch(&self, runtime: Arc<Runtime>, baseline: Option<OutputBaseline>) {
        lock(&self.inner).watch = Some(Watch { runtime, stats: WatchStats::new(baseline) });
    }

    /// The watch's numbers so far.
    pub fn watch_stats(&self) -> WatchStats {
        lock(&self.inner).watch.as_ref().map(|w| w.stats.clone()).unwrap_or_default()
    }

    pub fn stop_watch(&self) -> WatchStats {
        lock(&self.inner).watch.take().map(|w| w.stats).unwrap_or_default()
    }
}

impl InferenceObserver for UpdateObserver {
    fn observe(
        &self,
        runtime: &Arc<Runtime>,
        request: &InferenceRequest,
        outcome: Result<&InferenceResponse, &InferError>,
        latency: Duration,
    ) {
        let mut inner = lock(&self.inner);
        if let Some(watch) = inner.watch.as_mut()
            && Arc::ptr_eq(&watch.runtime, runtime)
        {
            watch.stats.requests += 1;
            match outcome {
                Ok(response) => {
                    if watch.stats.latencies.len() < WATCH_SAMPLES {
                        watch.stats.latencies.push(latency);
                    }
                    watch.stats.count_outputs(response);
                }
                Err(_) => watch.stats.errors += 1,
            }
        }
        let Ok(response) = outcome else { return };
        let key = runtime_key(runtime);
        if inner.baseline_runtime != Some(key) {
            inner.baseline.clear();
            inner.baseline_runtime = Some(key);
        }
        if inner.baseline.len() == BASELINE_SAMPLES {
            inner.baseline.pop_front();
        }
        inner.baseline.push_back(latency);
        if let Some(shadow) = &inner.shadow {
            match shadow.jobs.try_send((request.clone(), response.clone(), latency)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => lock(&inner.shadow_stats).skipped += 1,
                Err(TrySendError::Disconnected(_)) => inner.shadow = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use outpost_shared::oip::Tensor;

    use super::*;

    fn stats(requests: u64, errors: u64, latency_ms: u64) -> WatchStats {
        WatchStats {
            requests,
            errors,
            latencies: vec![Duration::from_millis(latency_ms); (requests - errors) as usize],
            ..WatchStats::default()
        }
    }

    #[test]
    fn a_shift_of_the_predicted_classes_rolls_back_when_the_policy_judges_it() {
        let baseline = OutputBaseline::Classes { output: "y".into(), class_counts: vec![50, 50] };
        let mut stats = WatchStats::new(Some(baseline));
        for _ in 0..20 {
            stats.requests += 1;
            stats.count_outputs(&response(vec![1, 2], vec![0.9, 0.1]));
        }
        let shift = stats.output_psi().expect("psi");
        assert!(shift > 0.5, "all class 0 against an even baseline: {shift}");
        let judged = HealthPolicy { max_output_psi: Some(0.25), ..policy() };
        assert!(matches!(
            judge(&judged, &stats, None, false),
            Verdict::RollBack { code: "output_shift", .. }
        ));
        assert_eq!(judge(&policy(), &stats, None, true), Verdict::Commit, "not judged");
    }

    fn regressor_baseline() -> OutputBaseline {
        let mut baseline = Histogram::new(vec![0.0, 1.0, 2.0, 3.0]).expect("edges");
        baseline.counts = vec![100, 100, 100];
        OutputBaseline::Values {
            features: vec![OutputFeature {
                name: "y[0]".into(),
                source: FeatureSource::Element { tensor: "y".into(), index: 0 },
                baseline,
            }],
        }
    }

    #[test]
    fn a_shift_of_a_regressors_outputs_rolls_back_when_the_policy_judges_it() {
        let judged = HealthPolicy { max_output_psi: Some(0.25), ..policy() };
        // Answers spread like the baseline: no shift.
        let mut steady = WatchStats::new(Some(regressor_baseline()));
        for value in [0.5, 1.5, 2.5].repeat(10) {
            steady.requests += 1;
            steady.count_outputs(&response(vec![1, 1], vec![value]));
        }
        let psi = steady.output_psi().expect("psi");
        assert!(psi < 1e-9, "the baseline's own spread: {psi}");
        assert_eq!(judge(&judged, &steady, None, false), Verdict::KeepWatching);
        // Every answer above the baseline's range (overflow), in a batch of two.
        let mut shifted = WatchStats::new(Some(regressor_baseline()));
        for _ in 0..15 {
            shifted.requests += 1;
            shifted.count_outputs(&response(vec![2, 1], vec![7.0, 2.5]));
        }
        let psi = shifted.output_psi().expect("psi");
        assert!(psi > 1.0, "half the answers in overflow: {psi}");
        match judge(&judged, &shifted, None, false) {
            Verdict::RollBack { code: "output_shift", reason } => {
                assert!(reason.contains("output `y[0]`"), "{reason}");
            }
            other => panic!("not rolled back for the output shift: {other:?}"),
        }
        assert_eq!(judge(&policy(), &shifted, None, true), Verdict::Commit, "not judged");
        // An answer without the profiled output counts nothing.
        let mut other = WatchStats::new(Some(regressor_baseline()));
        other.count_outputs(&InferenceResponse {
            outputs: vec![Tensor::new("z", vec![1, 1], vec![7.0f32])],
            ..response(vec![1, 1], vec![0.0])
        });
        assert_eq!(other.output_psi(), None, "no sample, no shift");
    }

    #[test]
    fn the_profile_names_the_output_baseline() {
        let mut histogram = Histogram::new(vec![0.0, 1.0]).expect("edges");
        histogram.counts = vec![5];
        let mut profile = Profile {
            v: 1,
            reference_count: 5,
            inputs: Vec::new(),
            outputs: vec![outpost_shared::profile::FeatureProfile {
                name: "y[0]".into(),
                source: FeatureSource::Element { tensor: "y".into(), index: 0 },
                histogram,
                moments: outpost_shared::stats::Moments::default(),
                sketch: None,
            }],
            classifier: None,
        };
        assert!(matches!(
            OutputBaseline::of_profile(&profile),
            Some(OutputBaseline::Values { features }) if features.len() == 1
        ));
        profile.classifier = Some(outpost_shared::profile::ClassifierProfile {
            output: "probabilities".into(),
            class_counts: vec![3, 2],
            confidence: Histogram::new(vec![0.0, 1.0]).expect("edges"),
        });
        assert!(matches!(
            OutputBaseline::of_profile(&profile),
            Some(OutputBaseline::Classes { output, .. }) if output == "probabilities"
        ));
        profile.classifier = None;
        profile.outputs.clear();
        assert_eq!(OutputBaseline::of_profile(&profile), None);
    }

    fn policy() -> HealthPolicy {
        HealthPolicy {
            min_requests: 10,
            max_error_rate: 0.1,
            max_p95_latency_ratio: 2.0,
            ..HealthPolicy::default()
        }
    }

    #[test]
    fn the_watch_rolls_back_on_errors_or_latency_and_commits_at_the_end_otherwise() {
        let base = Some(Duration::from_millis(10));
        assert_eq!(judge(&policy(), &stats(20, 1, 12), base, false), Verdict::KeepWatching);
        assert_eq!(judge(&policy(), &stats(20, 1, 12), base, true), Verdict::Commit);
        assert!(matches!(
            judge(&policy(), &stats(20, 5, 12), base, false),
            Verdict::RollBack { code: "error_rate", .. }
        ));
        assert!(matches!(
            judge(&policy(), &stats(20, 0, 25), base, false),
            Verdict::RollBack { code: "latency", .. }
        ));
        // Too few requests to judge: no rollback, and the end of the watch commits.
        assert_eq!(judge(&policy(), &stats(5, 5, 50), base, false), Verdict::KeepWatching);
        assert_eq!(judge(&policy(), &stats(5, 5, 50), base, true), Verdict::Commit);
        // No baseline: latency is not judged.
        assert_eq!(judge(&policy(), &stats(20, 0, 500), None, true), Verdict::Commit);
    }

    fn response(shape: Vec<u64>, data: Vec<f64>) -> InferenceResponse {
        InferenceResponse {
            model_name: "m".into(),
            model_version: None,
            id: None,
            outputs: vec![Tensor::new(
                "y",
                shape,
                data.iter().map(|v| *v as f32).collect::<Vec<f32>>(),
            )],
        }
    }

    #[test]
    fn classifiers_agree_on_the_top_class_and_regressors_within_the_tolerance() {
        let a = response(vec![2, 3], vec![0.1, 0.7, 0.2, 0.5, 0.3, 0.2]);
        let same_top = response(vec![2, 3], vec![0.2, 0.6, 0.2, 0.4, 0.35, 0.25]);
        let other_top = response(vec![2, 3], vec![0.2, 0.6, 0.2, 0.3, 0.5, 0.2]);
        assert!(agreement(Task::Classification, &a, &same_top, 0.0));
        assert!(!agreement(Task::Classification, &a, &other_top, 0.0));
        let r = response(vec![1, 1], vec![1.0]);
        assert!(agreement(Task::Regression, &r, &response(vec![1, 1], vec![1.05]), 0.1));
        assert!(!agreement(Task::Regression, &r, &response(vec![1, 1], vec![1.2]), 0.1));
        assert_eq!(
            p95(&[Duration::from_millis(1); 19]
                .iter()
                .copied()
                .chain([Duration::from_millis(100)])
                .collect::<Vec<_>>()),
            Some(Duration::from_millis(1))
        );
    }
}
