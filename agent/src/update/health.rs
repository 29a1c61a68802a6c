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
use outpost_shared::oip::{InferenceRequest, InferenceResponse};
use outpost_shared::plan::HealthPolicy;

use crate::api::InferenceObserver;
use crate::runtime::Runtime;

/// Latencies of the serving model kept as the baseline.
const BASELINE_SAMPLES: usize = 512;
/// Latencies of a watched model kept for its p95.
const WATCH_SAMPLES: usize = 4096;
/// Requests waiting for the shadow model; more are skipped (and counted) rather than queued.
const SHADOW_QUEUE: usize = 64;

/// What the watched model's outputs are compared with: a classifier's baseline class counts
/// (the bundle profile's) and the output tensor that holds its class probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputBaseline {
    pub output: String,
    pub class_counts: Vec<u64>,
}

/// Counts of a health watch so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchStats {
    pub requests: u64,
    pub errors: u64,
    latencies: Vec<Duration>,
    baseline: Option<OutputBaseline>,
    /// Top-1 classes of the answered samples, when a baseline is known.
    classes: Vec<u64>,
}

impl WatchStats {
    fn new(baseline: Option<OutputBaseline>) -> Self {
        let classes = baseline.as_ref().map_or_else(Vec::new, |b| vec![0; b.class_counts.len()]);
        Self { baseline, classes, ..Self::default() }
    }

    /// PSI of the answered samples' top-1 classes against the baseline's class counts; `None`
    /// without a classifier baseline or before any sample.
    pub fn output_psi(&self) -> Option<f64> {
        let baseline = self.baseline.as_ref()?;
        outpost_shared::drift::psi(&baseline.class_counts, &self.classes)
    }

    fn count_classes(&mut self, response: &InferenceResponse) {
        let Some(baseline) = &self.baseline else { return };
        let Some(output) = response.outputs.iter().find(|o| o.name == baseline.output) else {
            return;
        };
        let classes = self.classes.len().max(1);
        for row in output.data.chunks(classes) {
            if let Some(slot) = argmax(row).and_then(|class| self.classes.get_mut(class)) {
                *slot += 1;
            }
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
        if let (Some(max), Some(shift)) = (policy.max_output_psi, stats.output_psi())
            && shift > max
        {
            return Verdict::RollBack {
                code: "output_shift",
                reason: format!(
                    "the predicted classes shifted from the baseline: PSI {shift:.3}, over the \
                     policy's {max:.3}"
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
            a.data.chunks(classes).zip(b.data.chunks(classes)).all(|(x, y)| argmax(x) == argmax(y))
        }
        Task::Regression | Task::Other => {
            active.outputs.len() == candidate.outputs.len()
                && active.outputs.iter().zip(&candidate.outputs).all(|(a, b)| {
                    a.shape == b.shape
                        && a.data.iter().zip(&b.data).all(|(x, y)| (x - y).abs() <= tolerance)
                })
        }
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
    /// are counted for the output-shift check.
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
                    watch.stats.count_classes(response);
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
        let baseline = OutputBaseline { output: "y".into(), class_counts: vec![50, 50] };
        let mut stats = WatchStats::new(Some(baseline));
        for _ in 0..20 {
            stats.requests += 1;
            stats.count_classes(&response(vec![1, 2], vec![0.9, 0.1]));
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
            outputs: vec![Tensor::new("y", "FP32", shape, data)],
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
