//! [`Runtime`]: one verified bundle's model, ready to serve — the in-process inference API that
//! the REST server and the window ticker share.
//!
//! The model is loaded into one optimized tract plan when the runtime is built and reused by
//! every call; tract gives each run its own scratch state, so concurrent calls need no copy of
//! the model and no lock around it. Every call is recorded into the current statistics window
//! ([`crate::window::WindowAccumulator`]) under a mutex taken once per call, after the model
//! ran, for the few feature updates.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use outpost_shared::Verified;
use outpost_shared::bundle::Bundle;
use outpost_shared::golden::Golden;
use outpost_shared::manifest::Manifest;
use outpost_shared::model::{GoldenCheckError, InferError, Input, LoadError, Model, Output};
use outpost_shared::oip::{InferenceRequest, InferenceResponse, ModelMetadata, Tensor, TensorSpec};
use outpost_shared::profile::TensorView;
use outpost_shared::wire::{DeviceId, Digest, DigestError, ModelRef, StatsWindow};

use crate::window::{WindowAccumulator, WindowError};

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
    window: Mutex<WindowAccumulator>,
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
        Ok(Self {
            model,
            manifest: bundle.manifest.clone(),
            golden: bundle.golden.clone(),
            model_ref,
            window: Mutex::new(window),
        })
    }

    /// Runs `request` and records it in the statistics window, successful or not.
    pub fn infer(&self, request: &InferenceRequest) -> Result<InferenceResponse, InferError> {
        let started = Instant::now();
        match self.run(request) {
            Ok((inputs, outputs)) => {
                let latency = started.elapsed();
                self.record_success(&inputs, &outputs, latency);
                Ok(self.response(request, outputs))
            }
            Err(error) => {
                self.lock_window().record_failure(error.kind());
                Err(error)
            }
        }
    }

    /// Records a call in the window. Models have a handful of tensors: their views go on the
    /// stack, so recording allocates nothing.
    fn record_success(&self, inputs: &[Input], outputs: &[Output], latency: Duration) {
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
            self.lock_window().record_success(
                &input_views[..inputs.len()],
                &output_views[..outputs.len()],
                latency,
            );
        } else {
            let input_views: Vec<TensorView<'_>> = inputs.iter().map(Input::view).collect();
            let output_views: Vec<TensorView<'_>> = outputs.iter().map(Output::view).collect();
            self.lock_window().record_success(&input_views, &output_views, latency);
        }
    }

    /// Counts a request for this model that was refused before it reached [`Runtime::infer`]
    /// (malformed JSON, a body over the limit), under `kind`.
    pub fn record_refusal(&self, kind: &'static str) {
        self.lock_window().record_failure(kind);
    }

    /// Validates, converts and runs; every output is returned for the statistics.
    fn run(&self, request: &InferenceRequest) -> Result<(Vec<Input>, Vec<Output>), InferError> {
        let inputs = self.model.prepare(request)?;
        // JSON numbers beyond the f32 range become infinities when converted: refuse them as
        // the caller's error rather than feed the model an infinity.
        for input in &inputs {
            // `all` over the whole slice vectorises; the position is looked up only on failure.
            if input.data.iter().all(|v| v.is_finite()) {
                continue;
            }
            if let Some(index) = input.data.iter().position(|v| !v.is_finite()) {
                let value = request
                    .inputs
                    .iter()
                    .find(|t| t.name == input.name)
                    .and_then(|t| t.data.get(index).copied())
                    .unwrap_or(f64::NAN);
                let datatype = self
                    .model
                    .inputs()
                    .iter()
                    .find(|spec| spec.name == input.name)
                    .map_or_else(String::new, |spec| spec.datatype.clone());
                return Err(InferError::NotRepresentable {
                    name: input.name.clone(),
                    index,
                    value,
                    datatype,
                });
            }
        }
        let outputs = self.model.run_prepared(request, &inputs)?;
        Ok((inputs, outputs))
    }

    /// The response, taking the outputs apart rather than copying their names.
    fn response(&self, request: &InferenceRequest, outputs: Vec<Output>) -> InferenceResponse {
        let wanted = |output: &Output| match &request.outputs {
            Some(requested) => requested.iter().any(|r| r.name == output.name),
            None => true,
        };
        InferenceResponse {
            model_name: self.manifest.name.clone(),
            model_version: Some(self.manifest.version.clone()),
            id: request.id.clone(),
            outputs: outputs
                .into_iter()
                .filter(wanted)
                .map(|output| Tensor {
                    name: output.name,
                    datatype: output.datatype,
                    shape: output.shape.iter().map(|d| *d as u64).collect(),
                    data: output.data.iter().map(|v| f64::from(*v)).collect(),
                    parameters: None,
                })
                .collect(),
        }
    }

    fn lock_window(&self) -> MutexGuard<'_, WindowAccumulator> {
        // The accumulator holds plain counters: a panic elsewhere while holding the lock
        // cannot leave it in a state worse than a partly counted call.
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
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
        self.lock_window().count()
    }

    /// Ends the current window as `[start_ms, end_ms)` with sequence number `seq` and starts
    /// the next one empty.
    pub fn cut_window(&self, start_ms: u64, end_ms: u64, seq: u64) -> StatsWindow {
        self.lock_window().cut(start_ms, end_ms, seq)
    }
}
