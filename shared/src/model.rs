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
use crate::oip::{Datatype, InferenceRequest, Tensor, TensorData, TensorError, TensorSpec};
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
    #[error("unknown output `{0}` requested")]
    UnknownOutput(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
    #[error("model execution failed: {0}")]
    Run(String),
}

impl InferError {
    /// A short stable kind for error counters in statistics windows ([`crate::oip::kind`]);
    /// `runtime` is the only one that is the model's fault.
    pub fn kind(&self) -> &'static str {
        use crate::oip::kind;
        match self {
            InferError::MissingInput(_) | InferError::UnknownInput { .. } => kind::BAD_INPUT_NAME,
            InferError::Datatype { .. } | InferError::Tensor(TensorError::Datatype { .. }) => {
                kind::BAD_DATATYPE
            }
            InferError::Shape { .. } | InferError::Tensor(TensorError::ElementCount { .. }) => {
                kind::BAD_SHAPE
            }
            InferError::NonFinite { .. } => kind::BAD_VALUE,
            InferError::UnknownOutput(_) => kind::BAD_OUTPUT_NAME,
            InferError::Run(_) => "runtime",
        }
    }

    /// Whether the caller caused the error (everything but a failing model).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, InferError::Run(_))
    }
}

/// An output tensor as the runtime produced it, in its own datatype.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
    /// The values as statistics read them, for every datatype but FP32 (whose data is read
    /// directly) and BYTES (which statistics do not read as numbers).
    numbers: Vec<f32>,
}

impl Output {
    pub fn new(name: &str, shape: Vec<usize>, data: TensorData) -> Self {
        let numbers = statistics_numbers(&data);
        Self { name: name.into(), shape, data, numbers }
    }

    pub fn datatype(&self) -> Datatype {
        self.data.datatype()
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            name: &self.name,
            shape: &self.shape,
            data: numbers_of(&self.data, &self.numbers),
        }
    }

    /// The OIP v2 tensor.
    pub fn to_oip(&self) -> Tensor {
        self.clone().into_oip()
    }

    /// The OIP v2 tensor, taking the data.
    pub fn into_oip(self) -> Tensor {
        Tensor {
            name: self.name,
            shape: self.shape.iter().map(|d| *d as u64).collect(),
            data: self.data,
            parameters: None,
        }
    }
}

/// An input after validation: the request's data, borrowed, and its values as statistics
/// read them.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: &'a TensorData,
    numbers: Vec<f32>,
}

impl Input<'_> {
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            name: self.name,
            shape: &self.shape,
            data: numbers_of(self.data, &self.numbers),
        }
    }
}

/// The `f32` values statistics windows read, when they are not the data itself.
fn statistics_numbers(data: &TensorData) -> Vec<f32> {
    match data {
        TensorData::Fp32(_) => Vec::new(),
        other => other.to_f32_vec(),
    }
}

fn numbers_of<'a>(data: &'a TensorData, numbers: &'a [f32]) -> &'a [f32] {
    match data {
        TensorData::Fp32(values) => values,
        _ => numbers,
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

/// The OIP datatype of a tract datum type; `None` for types OIP has no name for (quantized,
/// complex), which are served as FP32.
fn oip_datatype(dt: DatumType) -> Option<Datatype> {
    Some(match dt {
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        DatumType::I64 | DatumType::TDim => Datatype::Int64,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::Bool => Datatype::Bool,
        DatumType::String => Datatype::Bytes,
        _ => return None,
    })
}

fn datatype_name(dt: DatumType) -> &'static str {
    oip_datatype(dt).unwrap_or(Datatype::Fp32).as_str()
}

/// A request tensor as a tract tensor of its own datatype (one copy).
fn tract_tensor(shape: &[usize], data: &TensorData) -> TractResult<tract_onnx::prelude::Tensor> {
    use tract_onnx::prelude::Tensor as T;
    match data {
        TensorData::Bool(v) => T::from_shape(shape, v),
        TensorData::Uint8(v) => T::from_shape(shape, v),
        TensorData::Uint16(v) => T::from_shape(shape, v),
        TensorData::Uint32(v) => T::from_shape(shape, v),
        TensorData::Uint64(v) => T::from_shape(shape, v),
        TensorData::Int8(v) => T::from_shape(shape, v),
        TensorData::Int16(v) => T::from_shape(shape, v),
        TensorData::Int32(v) => T::from_shape(shape, v),
        TensorData::Int64(v) => T::from_shape(shape, v),
        TensorData::Fp16(v) => T::from_shape(shape, v),
        TensorData::Fp32(v) => T::from_shape(shape, v),
        TensorData::Fp64(v) => T::from_shape(shape, v),
        TensorData::Bytes(v) => {
            Ok(tract_ndarray::ArrayD::from_shape_vec(shape, v.clone())?.into_tensor())
        }
    }
}

/// A tract output as OIP data in its own datatype; types OIP has no name for become FP32.
fn output_data(tensor: &tract_onnx::prelude::Tensor) -> TractResult<TensorData> {
    fn plain<D: Datum + Clone>(tensor: &tract_onnx::prelude::Tensor) -> TractResult<Vec<D>> {
        Ok(tensor.to_plain_array_view::<D>()?.iter().cloned().collect())
    }
    Ok(match tensor.datum_type() {
        DatumType::Bool => TensorData::Bool(plain(tensor)?),
        DatumType::U8 => TensorData::Uint8(plain(tensor)?),
        DatumType::U16 => TensorData::Uint16(plain(tensor)?),
        DatumType::U32 => TensorData::Uint32(plain(tensor)?),
        DatumType::U64 => TensorData::Uint64(plain(tensor)?),
        DatumType::I8 => TensorData::Int8(plain(tensor)?),
        DatumType::I16 => TensorData::Int16(plain(tensor)?),
        DatumType::I32 => TensorData::Int32(plain(tensor)?),
        DatumType::I64 => TensorData::Int64(plain(tensor)?),
        DatumType::TDim => TensorData::Int64(plain(&*tensor.cast_to::<i64>()?)?),
        DatumType::F16 => TensorData::Fp16(plain(tensor)?),
        DatumType::F32 => TensorData::Fp32(plain(tensor)?),
        DatumType::F64 => TensorData::Fp64(plain(tensor)?),
        DatumType::String => TensorData::Bytes(plain(tensor)?),
        _ => TensorData::Fp32(plain(&*tensor.cast_to::<f32>()?)?),
    })
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

    /// Validates request tensors against the model's inputs: names, datatypes, shapes, element
    /// counts, finite floats. The inputs borrow the request's data.
    pub fn prepare<'a>(&self, request: &'a InferenceRequest) -> Result<Vec<Input<'a>>, InferError> {
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
                if tensor.datatype().as_str() != spec.datatype {
                    return Err(InferError::Datatype {
                        name: spec.name.clone(),
                        expected: spec.datatype.clone(),
                        actual: tensor.datatype().as_str().into(),
                    });
                }
                if !spec.fits(&tensor.shape) {
                    return Err(InferError::Shape {
                        name: spec.name.clone(),
                        expected: spec.shape.clone(),
                        actual: tensor.shape.clone(),
                    });
                }
                if let Some(index) = tensor.data.first_non_finite() {
                    return Err(InferError::NonFinite { name: spec.name.clone(), index });
                }
                Ok(Input {
                    name: &tensor.name,
                    shape: tensor.shape.iter().map(|d| *d as usize).collect(),
                    data: &tensor.data,
                    numbers: statistics_numbers(&tensor.data),
                })
            })
            .collect()
    }

    /// Runs validated inputs (from [`Model::prepare`]) and returns every output.
    pub fn run_prepared(&self, inputs: &[Input<'_>]) -> Result<Vec<Output>, InferError> {
        let mut values: TVec<TValue> = tvec!();
        for (index, input) in inputs.iter().enumerate() {
            let mut tensor =
                tract_tensor(&input.shape, input.data).map_err(|e| InferError::Run(chain(&e)))?;
            // The datatypes match by name; a type OIP has no name for is reached by a cast.
            if let Some(dt) = self.input_types.get(index).copied()
                && dt != tensor.datum_type()
            {
                tensor =
                    tensor.cast_to_dt(dt).map_err(|e| InferError::Run(chain(&e)))?.into_owned();
            }
            values.push(TValue::from(tensor));
        }
        let results = self.plan.run(values).map_err(|e| InferError::Run(chain(&e)))?;
        results
            .into_iter()
            .zip(&self.outputs)
            .map(|(value, spec)| {
                let data = output_data(&value).map_err(|e| InferError::Run(chain(&e)))?;
                Ok(Output::new(&spec.name, value.shape().to_vec(), data))
            })
            .collect()
    }

    /// Validates and runs a request, returning the requested outputs (all when none named).
    pub fn infer(&self, request: &InferenceRequest) -> Result<Vec<Output>, InferError> {
        let inputs = self.prepare(request)?;
        let mut outputs = self.run_prepared(&inputs)?;
        if let Some(requested) = &request.outputs {
            outputs.retain(|o| requested.iter().any(|r| r.name == o.name));
        }
        Ok(outputs)
    }

    /// Runs every golden case and compares the outputs with the expectation.
    pub fn check_golden(&self, golden: &Golden) -> Result<(), GoldenCheckError> {
        for (case, expected) in golden.cases.iter().enumerate() {
            let request = InferenceRequest::new(expected.inputs.clone());
            let outputs =
                self.infer(&request).map_err(|source| GoldenCheckError::Run { case, source })?;
            let tensors: Vec<Tensor> = outputs.iter().map(Output::to_oip).collect();
            golden.compare(case, &tensors)?;
        }
        Ok(())
    }

    /// Generated inputs for a smoke run: every variable dimension set to 1, values in `[0, 1)`
    /// from a fixed sequence (integers 0 to 9, booleans alternating, text `"0"`, `"1"`…).
    pub fn sample_request(&self) -> InferenceRequest {
        let inputs = self
            .inputs
            .iter()
            .map(|spec| {
                let shape: Vec<u64> =
                    spec.shape.iter().map(|d| if *d > 0 { *d as u64 } else { 1 }).collect();
                let n: u64 = shape.iter().product();
                let datatype = Datatype::parse(&spec.datatype).unwrap_or(Datatype::Fp32);
                let data = match datatype {
                    Datatype::Bytes => {
                        TensorData::Bytes((0..n).map(|i| (i % 10).to_string()).collect())
                    }
                    Datatype::Bool => TensorData::Bool((0..n).map(|i| i % 2 == 1).collect()),
                    dt if matches!(dt, Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64) => {
                        let values: Vec<f64> =
                            (0..n).map(|i| ((i * 7919) % 1000) as f64 / 1000.0).collect();
                        TensorData::from_f64(dt, &values).unwrap_or(TensorData::Fp64(values))
                    }
                    dt => {
                        let values: Vec<f64> = (0..n).map(|i| ((i * 7919) % 10) as f64).collect();
                        TensorData::from_f64(dt, &values).unwrap_or(TensorData::Fp64(values))
                    }
                };
                Tensor { name: spec.name.clone(), shape, data, parameters: None }
            })
            .collect();
        InferenceRequest::new(inputs)
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
        let outputs =
            model.run_prepared(&inputs).map_err(|source| ProfileBuildError::Run { row, source })?;
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
