//! Open Inference Protocol v2 (KServe v2) request, response and metadata bodies as JSON.
//!
//! Tensors carry their data flattened in row-major order. Only numeric datatypes are supported;
//! JSON numbers are read as `f64` and converted to the tensor's datatype by the runtime.

use serde::{Deserialize, Serialize};

/// Numeric OIP v2 datatypes Outpost serves.
pub const DATATYPES: &[&str] = &[
    "FP32", "FP64", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64",
];

/// One tensor in a request or response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<u64>,
    pub data: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a tensor is not acceptable as it stands.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor `{name}`: unsupported datatype {datatype:?} (supported: {})", DATATYPES.join(", "))]
    Datatype { name: String, datatype: String },
    #[error("tensor `{name}`: shape {shape:?} holds {expected} elements but data has {actual}")]
    ElementCount { name: String, shape: Vec<u64>, expected: u64, actual: usize },
}

impl Tensor {
    pub fn new(name: &str, datatype: &str, shape: Vec<u64>, data: Vec<f64>) -> Self {
        Self { name: name.into(), datatype: datatype.into(), shape, data, parameters: None }
    }

    /// Checks datatype and that the data length matches the shape.
    pub fn validate(&self) -> Result<(), TensorError> {
        if !DATATYPES.contains(&self.datatype.as_str()) {
            return Err(TensorError::Datatype {
                name: self.name.clone(),
                datatype: self.datatype.clone(),
            });
        }
        let expected = self.shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d));
        match expected {
            Some(expected) if expected == self.data.len() as u64 => Ok(()),
            expected => Err(TensorError::ElementCount {
                name: self.name.clone(),
                shape: self.shape.clone(),
                expected: expected.unwrap_or(u64::MAX),
                actual: self.data.len(),
            }),
        }
    }
}

/// Requested output, by name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
}

/// `POST /v2/models/{name}/infer` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, serde_json::Value>>,
    pub inputs: Vec<Tensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// `POST /v2/models/{name}/infer` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// Input or output description in model metadata; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_and_datatype_are_checked() {
        assert!(Tensor::new("x", "FP32", vec![1, 2], vec![1.0, 2.0]).validate().is_ok());
        let wrong = Tensor::new("x", "FP32", vec![2, 2], vec![1.0]).validate();
        assert!(matches!(wrong, Err(TensorError::ElementCount { expected: 4, actual: 1, .. })));
        let overflow = Tensor::new("x", "FP32", vec![u64::MAX, 3], vec![]).validate();
        assert!(matches!(overflow, Err(TensorError::ElementCount { .. })));
        let datatype = Tensor::new("x", "BYTES", vec![1], vec![1.0]).validate();
        assert!(matches!(datatype, Err(TensorError::Datatype { .. })));
    }
}
