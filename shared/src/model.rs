//! Model execution with tract: load ONNX bytes into one optimized plan, describe its inputs and
//! outputs, run Open Inference Protocol v2 requests on it, and build baseline profiles and golden
//! checks with it.
//!
//! This is the only module that links tract. The agent serves with it and the bundle tooling
//! profiles and checks with it, so a profile or golden result computed at publish time means
//! the same on the device. A [`Model`] is immutable and `Sync`: one plan serves concurrent
//! requests, each run getting its own scratch state.

use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::golden::{Golden, GoldenMismatch};
use crate::oip::{InferenceRequest, Tensor, TensorError, TensorSpec};
use crate::profile::{ProfileBuilder, TensorView, sources_for};

type Plan = Arc<TypedRunnableModel>;

/// Why a model could not be loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoadError {
    #[error("not a readable ONNX model: {0}")]
    Parse(String),
    #[error("operator {op} (node `{node}`) is not supported by the runtime")]
    UnsupportedOperator { op: String, node: String },
    #[error("input `{name}` has no usable type or shape: {reason}")]
    InputFact { name: String, reason: String },
    #[error("the runtime cannot prepare this model: {0}")]
    Optimize(String),
}

/// Why an inference request was refused or failed. Everything but `Run` is the caller's fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("unknown input `{name}` (the model's inputs are: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input `{name}`: datatype {actual}, the model expects {expected}")]
    Datatype { name: String, expected: String, actual: String },
    #[error("input `{name}`: shape {actual:?} does not fit the model's {expected:?}")]
    Shape { name: String, expected: Vec<i64>, actual: Vec<u64> },
    #[error("input `{name}`: element {index} is not a finite number")]
    NonFinite { name: String, index: usize },
    #[error("input `{name}`: element {index} ({value}) is not a valid {datatype}")]
    NotRepresentable { name: String, index: usize, value: f64, datatype: String },
    #[error("unknown output `{0}` requested")]
    UnknownOutput(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("model execution failed: {0}")]
    Run(String),
}

impl InferError {
    /// A short stable kind for error counters in statistics windows.
    pub fn kind(&self) -> &'static str {
        match self {
            InferError::MissingInput(_) | InferError::UnknownInput { .. } => "bad_input_name",
            InferError::Datatype { .. } | InferError::Tensor(TensorError::Datatype { .. }) => {
                "bad_datatype"
            }
            InferError::Shape { .. } | InferError::Tensor(TensorError::ElementCount { .. }) => {
                "bad_shape"
            }
            InferError::NonFinite { .. } | InferError::NotRepresentable { .. } => "bad_value",
            InferError::UnknownOutput(_) => "bad_output_name",
            InferError::Run(_) => "runtime",
        }
    }
}

/// An output tensor as the runtime produced it, converted to `f32` for statistics.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Output {
    pub fn view(&self) -> TensorView<'_> {
        TensorView { name: &self.name, shape: &self.shape, data: &self.data }
    }

    /// The OIP v2 tensor.
    pub fn to_oip(&self) -> Tensor {
        Tensor::new(
            &self.name,
            &self.datatype,
            self.shape.iter().map(|d| *d as u64).collect(),
            self.data.iter().map(|v| f64::from(*v)).collect(),
        )
    }
}

/// An input after validation, converted to `f32` for statistics.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Input {
    pub fn view(&self) -> TensorView<'_> {
        TensorView { name: &self.name, shape: &self.shape, data: &self.data }
    }
}

/// A loaded, optimized model.
#[derive(Clone)]
pub struct Model {
    plan: Plan,
    inputs: Vec<TensorSpec>,
    input_types: Vec<DatumType>,
    outputs: Vec<TensorSpec>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

fn datatype_name(dt: DatumType) -> &'static str {
    match dt {
        DatumType::F32 => "FP32",
        DatumType::F64 => "FP64",
        DatumType::F16 => "FP16",
        DatumType::I8 => "INT8",
        DatumType::I16 => "INT16",
        DatumType::I32 => "INT32",
        DatumType::I64 | DatumType::TDim => "INT64",
        DatumType::U8 => "UINT8",
        DatumType::U16 => "UINT16",
        DatumType::U32 => "UINT32",
        DatumType::U64 => "UINT64",
        DatumType::Bool => "BOOL",
        _ => "BYTES",
    }
}

fn spec_of(name: &str, fact: &TypedFact) -> TensorSpec {
    TensorSpec {
        name: name.to_string(),
        datatype: datatype_name(fact.datum_type).to_string(),
        shape: fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect(),
    }
}

fn chain(e: &TractError) -> String {
    format!("{e:#}")
}

impl Model {
    /// Loads ONNX bytes and builds the optimized plan. Variable dimensions (a symbolic batch)
    /// stay variable; everything else must be known.
    pub fn load(bytes: &[u8]) -> Result<Self, LoadError> {
        let mut reader = bytes;
        let inference = tract_onnx::onnx()
            .model_for_read(&mut reader)
            .map_err(|e| LoadError::Parse(chain(&e)))?;
        // tract keeps unknown operators as placeholders and fails later with a long chain;
        // name the first one plainly instead.
        for node in inference.nodes() {
            let op = node.op.name();
            if let Some(inner) = op.strip_prefix("Unimplemented(").and_then(|s| s.strip_suffix(')'))
            {
                return Err(LoadError::UnsupportedOperator {
                    op: inner.to_string(),
                    node: node.name.clone(),
                });
            }
        }
        let input_names: Vec<String> = inference
            .input_outlets()
            .map_err(|e| LoadError::Optimize(chain(&e)))?
            .iter()
            .map(|o| inference.node(o.node).name.clone())
            .collect();
        let output_names: Vec<String> = inference
            .output_outlets()
            .map_err(|e| LoadError::Optimize(chain(&e)))?
            .iter()
            .map(|o| {
                inference
                    .outlet_label(*o)
                    .map_or_else(|| inference.node(o.node).name.clone(), str::to_string)
            })
            .collect();
        let typed = inference.into_typed().map_err(|e| {
            let text = chain(&e);
            match input_names.first() {
                Some(name) if text.contains("input") => {
                    LoadError::InputFact { name: name.clone(), reason: text }
                }
                _ => LoadError::Optimize(text),
            }
        })?;
        let mut inputs = Vec::new();
        let mut input_types = Vec::new();
        for (i, name) in input_names.iter().enumerate() {
            let fact = typed.input_fact(i).map_err(|e| LoadError::Optimize(chain(&e)))?;
            input_types.push(fact.datum_type);
            inputs.push(spec_of(name, fact));
        }
        let mut outputs = Vec::new();
        for (i, name) in output_names.iter().enumerate() {
            let fact = typed.output_fact(i).map_err(|e| LoadError::Optimize(chain(&e)))?;
            outputs.push(spec_of(name, fact));
        }
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| LoadError::Optimize(chain(&e)))?;
        Ok(Self { plan, inputs, input_types, outputs })
    }

    pub fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Whether the first input's leading dimension is variable (batches of any size).
    pub fn batch_is_variable(&self) -> bool {
        self.inputs.first().and_then(|s| s.shape.first()).is_some_and(|d| *d < 0)
    }

    /// Validates request tensors against the model's inputs and converts them.
    pub fn prepare(&self, request: &InferenceRequest) -> Result<Vec<Input>, InferError> {
        for tensor in &request.inputs {
            if !self.inputs.iter().any(|s| s.name == tensor.name) {
                return Err(InferError::UnknownInput {
                    name: tensor.name.clone(),
                    expected: self
                        .inputs
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        if let Some(requested) = &request.outputs {
            for output in requested {
                if !self.outputs.iter().any(|s| s.name == output.name) {
                    return Err(InferError::UnknownOutput(output.name.clone()));
                }
            }
        }
        self.inputs
            .iter()
            .map(|spec| {
                let tensor = request
                    .inputs
                    .iter()
                    .find(|t| t.name == spec.name)
                    .ok_or_else(|| InferError::MissingInput(spec.name.clone()))?;
                tensor.validate()?;
                if tensor.datatype != spec.datatype {
                    return Err(InferError::Datatype {
                        name: spec.name.clone(),
                        expected: spec.datatype.clone(),
                        actual: tensor.datatype.clone(),
                    });
                }
                let fits = tensor.shape.len() == spec.shape.len()
                    && tensor.shape.iter().zip(&spec.shape).all(|(a, e)| *e < 0 || *a as i64 == *e)
                    && tensor.shape.iter().all(|d| *d > 0);
                if !fits {
                    return Err(InferError::Shape {
                        name: spec.name.clone(),
                        expected: spec.shape.clone(),
                        actual: tensor.shape.clone(),
                    });
                }
                if let Some(index) = tensor.data.iter().position(|v| !v.is_finite()) {
                    return Err(InferError::NonFinite { name: spec.name.clone(), index });
                }
                Ok(Input {
                    name: spec.name.clone(),
                    shape: tensor.shape.iter().map(|d| *d as usize).collect(),
                    data: tensor.data.iter().map(|v| *v as f32).collect(),
                })
            })
            .collect()
    }

    fn to_tract(&self, index: usize, input: &Input, source: &[f64]) -> Result<TValue, InferError> {
        let dt = self.input_types.get(index).copied().unwrap_or(DatumType::F32);
        let not_representable = |i: usize, v: f64| InferError::NotRepresentable {
            name: input.name.clone(),
            index: i,
            value: v,
            datatype: datatype_name(dt).to_string(),
        };
        let tensor = match dt {
            DatumType::F32 => tract_onnx::prelude::Tensor::from_shape(&input.shape, &input.data),
            DatumType::F64 => tract_onnx::prelude::Tensor::from_shape(&input.shape, source),
            DatumType::I64 | DatumType::I32 | DatumType::U8 | DatumType::I8 => {
                let mut ints = Vec::with_capacity(source.len());
                for (i, v) in source.iter().enumerate() {
                    if v.fract() != 0.0 || v.abs() > 9.007_199_254_740_992e15 {
                        return Err(not_representable(i, *v));
                    }
                    ints.push(*v as i64);
                }
                tract_onnx::prelude::Tensor::from_shape(&input.shape, &ints)
                    .and_then(|t| t.cast_to_dt(dt).map(|c| c.into_owned()))
            }
            other => {
                return Err(InferError::Datatype {
                    name: input.name.clone(),
                    expected: datatype_name(other).into(),
                    actual: "unsupported by the runtime".into(),
                });
            }
        };
        tensor.map(TValue::from).map_err(|e| InferError::Run(chain(&e)))
    }

    /// Runs validated inputs (from [`Model::prepare`]) and returns every output.
    pub fn run_prepared(
        &self,
        request: &InferenceRequest,
        inputs: &[Input],
    ) -> Result<Vec<Output>, InferError> {
        let mut values: TVec<TValue> = tvec!();
        for (i, input) in inputs.iter().enumerate() {
            let source = request
                .inputs
                .iter()
                .find(|t| t.name == input.name)
                .map(|t| t.data.as_slice())
                .unwrap_or(&[]);
            values.push(self.to_tract(i, input, source)?);
        }
        let results = self.plan.run(values).map_err(|e| InferError::Run(chain(&e)))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| {
                let tensor = value.into_tensor();
                let as_f32 = if tensor.datum_type() == DatumType::TDim {
                    tensor.cast_to::<i64>().and_then(|t| t.cast_to::<f32>().map(|c| c.into_owned()))
                } else {
                    tensor.cast_to::<f32>().map(|c| c.into_owned())
                }
                .map_err(|e| InferError::Run(chain(&e)))?;
                let data: Vec<f32> = as_f32
                    .to_plain_array_view::<f32>()
                    .map_err(|e| InferError::Run(chain(&e)))?
                    .iter()
                    .copied()
                    .collect();
                Ok(Output {
                    name: spec.name.clone(),
                    datatype: datatype_name(tensor.datum_type()).to_string(),
                    shape: tensor.shape().to_vec(),
                    data,
                })
            })
            .collect()
    }

    /// Validates and runs a request, returning the requested outputs (all when none named).
    pub fn infer(&self, request: &InferenceRequest) -> Result<Vec<Output>, InferError> {
        let inputs = self.prepare(request)?;
        let mut outputs = self.run_prepared(request, &inputs)?;
        if let Some(requested) = &request.outputs {
            outputs.retain(|o| requested.iter().any(|r| r.name == o.name));
        }
        Ok(outputs)
    }

    /// Runs every golden case and compares the outputs with the expectation.
    pub fn check_golden(&self, golden: &Golden) -> Result<(), GoldenCheckError> {
        for (case, expected) in golden.cases.iter().enumerate() {
            let request = InferenceRequest {
                id: None,
                parameters: None,
                inputs: expected.inputs.clone(),
                outputs: None,
            };
            let outputs =
                self.infer(&request).map_err(|source| GoldenCheckError::Run { case, source })?;
            let tensors: Vec<Tensor> = outputs.iter().map(Output::to_oip).collect();
            golden.compare(case, &tensors)?;
        }
        Ok(())
    }

    /// Generated inputs for a smoke run: every variable dimension set to 1, values in `[0, 1)`
    /// from a fixed sequence.
    pub fn sample_request(&self) -> InferenceRequest {
        let inputs = self
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<u64> =
                    spec.shape.iter().map(|d| if *d > 0 { *d as u64 } else { 1 }).collect();
                let n: u64 = shape.iter().product();
                let data = (0..n).map(|i| ((i * 7919) % 1000) as f64 / 1000.0).collect();
                Tensor::new(&spec.name, &spec.datatype, shape, data)
            })
            .collect();
        InferenceRequest { id: None, parameters: None, inputs, outputs: None }
    }
}

/// Why a golden check failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GoldenCheckError {
    #[error("golden case {case}: the model refused the inputs: {source}")]
    Run { case: usize, source: InferError },
    #[error(transparent)]
    Mismatch(#[from] GoldenMismatch),
}

/// Builds a baseline profile by running `model` over `requests`.
///
/// `column_names` names the features of the first input when it is tabular (a CSV header).
/// When `classifier` is set, the first output is summarised as class probabilities.
pub fn build_profile(
    model: &Model,
    requests: &[InferenceRequest],
    column_names: Option<&[String]>,
    classifier: bool,
    bins: usize,
) -> Result<crate::profile::Profile, ProfileBuildError> {
    build_profile_with_sketches(
        model,
        requests,
        column_names,
        classifier,
        bins,
        crate::profile::SketchSelection::None,
    )
}

/// [`build_profile`], with the baseline KLL sketch of the `sketches` features in the profile
/// (devices then sketch those features in every window).
pub fn build_profile_with_sketches(
    model: &Model,
    requests: &[InferenceRequest],
    column_names: Option<&[String]>,
    classifier: bool,
    bins: usize,
    sketches: crate::profile::SketchSelection,
) -> Result<crate::profile::Profile, ProfileBuildError> {
    let input_sources = model
        .inputs()
        .iter()
        .enumerate()
        .flat_map(|(i, spec)| sources_for(spec, if i == 0 { column_names } else { None }))
        .collect();
    let output_sources = model.outputs().iter().flat_map(|spec| sources_for(spec, None)).collect();
    let classifier = if classifier {
        model.outputs().first().map(|spec| {
            (spec.name.clone(), spec.shape.last().copied().unwrap_or(0).max(0) as usize)
        })
    } else {
        None
    };
    let mut builder = ProfileBuilder::new(input_sources, output_sources, classifier, bins)
        .with_sketches(sketches);
    for (row, request) in requests.iter().enumerate() {
        let inputs =
            model.prepare(request).map_err(|source| ProfileBuildError::Run { row, source })?;
        let outputs = model
            .run_prepared(request, &inputs)
            .map_err(|source| ProfileBuildError::Run { row, source })?;
        let input_views: Vec<TensorView<'_>> = inputs.iter().map(Input::view).collect();
        let output_views: Vec<TensorView<'_>> = outputs.iter().map(Output::view).collect();
        builder.observe(&input_views, &output_views);
    }
    builder.finish().map_err(ProfileBuildError::Profile)
}

/// Why a profile could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileBuildError {
    #[error("baseline sample {row}: {source}")]
    Run { row: usize, source: InferError },
    #[error(transparent)]
    Profile(crate::profile::ProfileError),
}
