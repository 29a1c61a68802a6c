//! [`Runtime`]: one verified bundle's model, ready to serve — the in-process inference API that
//! the REST server and the window ticker share.
//!
//! The model is loaded into one optimized tract plan when the runtime is built and reused by
//! every call; tract gives each run its own scratch state, so concurrent calls need no copy of
//! the model and no lock around it.
//!
//! Every call is recorded in the current statistics window, mostly off the inference path: the
//! request thread copies the few tensors the window reads and the latency into a bounded
//! [`PendingCalls`] buffer (a short lock, no allocation once the buffers have grown), and a
//! folder thread (`outpost-stats`) bins them into the [`WindowAccumulator`] in batches. Cutting
//! a window folds whatever is pending first, so a window holds exactly the calls made before
//! the cut. When the folder falls behind and the buffer is full, the request thread folds it
//! itself: calls are never dropped. Locks are taken in one order: window, then pending.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use outpost_shared::Verified;
use outpost_shared::bundle::Bundle;
use outpost_shared::golden::Golden;
use outpost_shared::manifest::Manifest;
use outpost_shared::model::{GoldenCheckError, InferError, Input, LoadError, Model, Output};
use outpost_shared::oip::{InferenceRequest, InferenceResponse, ModelMetadata, TensorSpec};
use outpost_shared::profile::TensorView;
use outpost_shared::wire::{DeviceId, Digest, DigestError, ModelRef, StatsWindow};

use crate::window::{Full, PendingCalls, WindowAccumulator, WindowError};

/// How long the folder thread sleeps when the pending buffer is not asking to be folded; it
/// folds whatever is pending when it wakes, so a quiet device's buffers stay small.
const IDLE_FOLD: Duration = Duration::from_secs(1);

/// The platform name reported in model metadata.
pub const PLATFORM: &str = "onnx-tract";

/// Why a bundle cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("model {model} cannot be loaded: {source}")]
    Load { model: String, source: LoadError },
    #[error("model {model}: the bundle's profile cannot drive statistics windows: {source}")]
    Profile { model: String, source: WindowError },
    #[error("model {model}: bundle digest is not usable: {source}")]
    Digest { model: String, source: DigestError },
}

/// A loaded model with its statistics window.
#[derive(Debug)]
pub struct Runtime {
    model: Model,
    manifest: Manifest,
    golden: Golden,
    model_ref: ModelRef,
    statistics: Arc<Statistics>,
    /// The folder thread; `None` when it could not be started (the request threads then fold
    /// whenever the pending buffer is full).
    folder: Option<JoinHandle<()>>,
}

/// The statistics window and the calls not yet folded into it.
#[derive(Debug)]
struct Statistics {
    window: Mutex<Folding>,
    pending: Mutex<Pending>,
    /// Wakes the folder thread; paired with `pending`.
    wake: Condvar,
}

/// What the window lock guards: the accumulator and a spare pending buffer, swapped with the
/// live one to fold it without holding the pending lock.
#[derive(Debug)]
struct Folding {
    window: WindowAccumulator,
    spare: PendingCalls,
}

#[derive(Debug)]
struct Pending {
    calls: PendingCalls,
    /// The folder was woken for this buffer already.
    woken: bool,
    /// The runtime is being dropped: the folder thread ends.
    stop: bool,
}

impl Statistics {
    fn new(window: WindowAccumulator) -> Self {
        let pending = Pending { calls: window.pending(), woken: false, stop: false };
        let spare = window.pending();
        Self {
            window: Mutex::new(Folding { window, spare }),
            pending: Mutex::new(pending),
            wake: Condvar::new(),
        }
    }

    // Both parts hold plain counters and buffers: a panic elsewhere while holding a lock cannot
    // leave them in a state worse than a partly counted call.
    fn lock_window(&self) -> MutexGuard<'_, Folding> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the pending calls into the window (the caller holds the window lock).
    fn fold(&self, folding: &mut Folding) {
        {
            let mut pending = self.lock_pending();
            std::mem::swap(&mut pending.calls, &mut folding.spare);
            pending.woken = false;
        }
        let Folding { window, spare } = folding;
        spare.fold_into(window);
    }

    fn record_success(
        &self,
        inputs: &[TensorView<'_>],
        outputs: &[TensorView<'_>],
        latency: Duration,
    ) {
        let mut pending = self.lock_pending();
        match pending.calls.push_success(inputs, outputs, latency) {
            Ok(()) => self.wake_folder_if_due(pending),
            Err(Full) => {
                drop(pending);
                let mut folding = self.lock_window();
                self.fold(&mut folding);
                folding.window.record_success(inputs, outputs, latency);
            }
        }
    }

    fn record_failure(&self, kind: &'static str) {
        let mut pending = self.lock_pending();
        match pending.calls.push_failure(kind) {
            Ok(()) => self.wake_folder_if_due(pending),
            Err(Full) => {
                drop(pending);
                let mut folding = self.lock_window();
                self.fold(&mut folding);
                folding.window.record_failure(kind);
            }
        }
    }

    /// Wakes the folder once per buffer, when the buffer asks to be folded.
    fn wake_folder_if_due(&self, mut pending: MutexGuard<'_, Pending>) {
        if !pending.woken && pending.calls.wants_fold() {
            pending.woken = true;
            drop(pending);
            self.wake.notify_one();
        }
    }

    /// The folder thread: folds when woken, or every [`IDLE_FOLD`] when anything is pending,
    /// until the runtime is dropped.
    fn fold_until_stopped(&self) {
        loop {
            {
                let mut pending = self.lock_pending();
                loop {
                    if pending.stop {
                        return;
                    }
                    if pending.calls.wants_fold() {
                        break;
                    }
                    let (guard, wait) = self
                        .wake
                        .wait_timeout(pending, IDLE_FOLD)
                        .unwrap_or_else(PoisonError::into_inner);
                    pending = guard;
                    if wait.timed_out() && !pending.calls.is_empty() && !pending.stop {
                        break;
                    }
                }
            }
            let mut folding = self.lock_window();
            self.fold(&mut folding);
        }
    }
}

impl Runtime {
    /// Loads the bundle's model into an optimized plan and prepares an empty statistics window
    /// for `device` over the bundle's profile.
    pub fn new(bundle: &Verified<Bundle>, device: DeviceId) -> Result<Self, RuntimeError> {
        let model_id = bundle.manifest.id();
        let digest = Digest::parse(&bundle.digest)
            .map_err(|source| RuntimeError::Digest { model: model_id.clone(), source })?;
        let model_ref = ModelRef {
            name: bundle.manifest.name.clone(),
            version: bundle.manifest.version.clone(),
            digest,
        };
        let window = WindowAccumulator::new(device, model_ref.clone(), &bundle.profile)
            .map_err(|source| RuntimeError::Profile { model: model_id.clone(), source })?;
        let model = Model::load(&bundle.model)
            .map_err(|source| RuntimeError::Load { model: model_id, source })?;
        let statistics = Arc::new(Statistics::new(window));
        let folder = {
            let statistics = Arc::clone(&statistics);
            std::thread::Builder::new()
                .name("outpost-stats".into())
                .spawn(move || statistics.fold_until_stopped())
        };
        let folder = match folder {
            Ok(handle) => Some(handle),
            Err(error) => {
                tracing::warn!(
                    "no statistics folder thread ({error}): requests fold the statistics buffer"
                );
                None
            }
        };
        Ok(Self {
            model,
            manifest: bundle.manifest.clone(),
            golden: bundle.golden.clone(),
            model_ref,
            statistics,
            folder,
        })
    }

    /// Runs `request` and records it in the statistics window, successful or not.
    pub fn infer(&self, request: &InferenceRequest) -> Result<InferenceResponse, InferError> {
        let started = Instant::now();
        match self.run(request) {
            Ok((inputs, outputs)) => {
                let latency = started.elapsed();
                self.record_success(&inputs, &outputs, latency);
                Ok(self.respond(request, outputs))
            }
            Err(error) => {
                self.statistics.record_failure(error.kind());
                Err(error)
            }
        }
    }

    /// Records a call for the window. Models have a handful of tensors: their views go on the
    /// stack, so recording allocates nothing once the pending buffers have grown.
    fn record_success(&self, inputs: &[Input<'_>], outputs: &[Output], latency: Duration) {
        const ON_STACK: usize = 4;
        const EMPTY: TensorView<'static> = TensorView { name: "", shape: &[], data: &[] };
        if inputs.len() <= ON_STACK && outputs.len() <= ON_STACK {
            let mut input_views = [EMPTY; ON_STACK];
            let mut output_views = [EMPTY; ON_STACK];
            for (view, input) in input_views.iter_mut().zip(inputs) {
                *view = input.view();
            }
            for (view, output) in output_views.iter_mut().zip(outputs) {
                *view = output.view();
            }
            self.statistics.record_success(
                &input_views[..inputs.len()],
                &output_views[..outputs.len()],
                latency,
            );
        } else {
            let input_views: Vec<TensorView<'_>> = inputs.iter().map(Input::view).collect();
            let output_views: Vec<TensorView<'_>> = outputs.iter().map(Output::view).collect();
            self.statistics.record_success(&input_views, &output_views, latency);
        }
    }

    /// Counts a request for this model that was refused before it reached [`Runtime::infer`]
    /// (malformed JSON, a body over the limit), under `kind`.
    pub fn record_refusal(&self, kind: &'static str) {
        self.statistics.record_failure(kind);
    }

    /// Validates, converts and runs; every output is returned for the statistics.
    fn run<'a>(
        &self,
        request: &'a InferenceRequest,
    ) -> Result<(Vec<Input<'a>>, Vec<Output>), InferError> {
        let inputs = self.model.prepare(request)?;
        let outputs = self.model.run_prepared(&inputs)?;
        Ok((inputs, outputs))
    }

    /// The OIP v2 response to `request` from the model's `outputs`, as [`Runtime::infer`]
    /// answers: the requested outputs only, taken apart rather than copying their names.
    pub fn respond(&self, request: &InferenceRequest, outputs: Vec<Output>) -> InferenceResponse {
        let wanted = |output: &Output| match &request.outputs {
            Some(requested) => requested.iter().any(|r| r.name == output.name),
            None => true,
        };
        InferenceResponse {
            model_name: self.manifest.name.clone(),
            model_version: Some(self.manifest.version.clone()),
            id: request.id.clone(),
            outputs: outputs.into_iter().filter(wanted).map(Output::into_oip).collect(),
        }
    }

    /// OIP v2 model metadata: inputs and outputs with datatype and shape (`-1` variable).
    pub fn metadata(&self) -> ModelMetadata {
        ModelMetadata {
            name: self.manifest.name.clone(),
            versions: vec![self.manifest.version.clone()],
            platform: PLATFORM.into(),
            inputs: self.model.inputs().to_vec(),
            outputs: self.model.outputs().to_vec(),
        }
    }

    /// Whether the runtime serves requests. A runtime exists only once its plan is built, so
    /// this is always true; the REST API reports not-ready when there is no runtime at all.
    pub fn ready(&self) -> bool {
        true
    }

    /// The model's name, as requests address it (`/v2/models/{name}`).
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Name, version and bundle digest, as windows and `hello` report them.
    pub fn model_ref(&self) -> &ModelRef {
        &self.model_ref
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        self.model.inputs()
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        self.model.outputs()
    }

    /// Whether requests may carry more than one sample (the batch dimension is variable).
    pub fn batch_is_variable(&self) -> bool {
        self.model.batch_is_variable()
    }

    /// Runs the bundle's golden set on this device (not recorded in the window): the self-test
    /// before a model serves, which also warms the plan up.
    pub fn check_golden(&self) -> Result<(), GoldenCheckError> {
        self.model.check_golden(&self.golden)
    }

    /// Calls recorded in the current window so far.
    pub fn window_count(&self) -> u64 {
        let folding = self.statistics.lock_window();
        let pending = self.statistics.lock_pending().calls.calls();
        folding.window.count().saturating_add(u64::try_from(pending).unwrap_or(u64::MAX))
    }

    /// Ends the current window as `[start_ms, end_ms)` with sequence number `seq` and starts
    /// the next one empty.
    pub fn cut_window(&self, start_ms: u64, end_ms: u64, seq: u64) -> StatsWindow {
        let mut folding = self.statistics.lock_window();
        self.statistics.fold(&mut folding);
        folding.window.cut(start_ms, end_ms, seq)
    }
}

impl Drop for Runtime {
    /// Stops the folder thread; calls still pending go with the window they belong to.
    fn drop(&mut self) {
        self.statistics.lock_pending().stop = true;
        self.statistics.wake.notify_all();
        if let Some(folder) = self.folder.take() {
            // A folder that panicked has nothing left to report.
            let _ = folder.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use outpost_shared::model::Model;
    use outpost_shared::wire::DeviceId;
    use outpost_tests::fixtures::{Fixture, baseline};

    use super::Runtime;

    /// Concurrent callers with the folder thread running and a cut in the middle of the load:
    /// every call lands in exactly one window, with its latency and its class.
    #[test]
    fn every_call_lands_in_exactly_one_window_while_the_folder_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fixture = Fixture::new(dir.path());
        let bundle = fixture.verified_bundle("mlp_classifier");
        let model = Model::load(&bundle.model).expect("model");
        let (requests, _) = baseline("mlp_classifier", &model);
        let device = DeviceId::new("dev-test").expect("device id");
        let runtime = Arc::new(Runtime::new(&bundle, device).expect("runtime"));
        const THREADS: usize = 4;
        const CALLS: usize = 1500;
        let first = std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let (runtime, requests) = (&runtime, &requests);
                scope.spawn(move || {
                    for call in 0..CALLS {
                        let request = &requests[(thread * CALLS + call) % requests.len()];
                        runtime.infer(request).expect("infer");
                    }
                });
            }
            // Cut while the callers run, once some calls have been made.
            let deadline = Instant::now() + Duration::from_secs(120);
            while runtime.window_count() < 1000 {
                assert!(Instant::now() < deadline, "the callers made no progress");
                std::thread::yield_now();
            }
            runtime.cut_window(0, 1, 1)
        });
        let second = runtime.cut_window(1, 2, 2);
        let total = (THREADS * CALLS) as u64;
        assert!(first.count >= 1000 && first.count < total, "cut mid-load: {}", first.count);
        assert_eq!(first.count + second.count, total);
        for window in [&first, &second] {
            assert_eq!(window.latency.moments.count, window.count);
            assert_eq!(window.inputs[0].histogram.total(), window.count);
            let classifier = window.classifier.as_ref().expect("classifier");
            assert_eq!(classifier.class_counts.iter().sum::<u64>(), window.count);
        }
        assert_eq!(runtime.window_count(), 0);
    }
}
