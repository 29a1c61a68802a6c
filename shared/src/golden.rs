//! The golden test set of a bundle (`golden.json`): inputs with the outputs the model must
//! produce, within `atol + rtol * |expected|` element-wise. Checked at publish time and again
//! on the device before a new model is activated.

use serde::{Deserialize, Serialize};

use crate::oip::{Datatype, Tensor, TensorData};

/// `golden.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub atol: f64,
    pub rtol: f64,
    pub cases: Vec<GoldenCase>,
}

/// One input set and the outputs expected for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenCase {
    pub inputs: Vec<Tensor>,
    pub outputs: Vec<Tensor>,
}

/// The first disagreement between a model's output and the golden expectation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GoldenMismatch {
    #[error("golden case {case}: output `{output}` missing from the model's answer")]
    MissingOutput { case: usize, output: String },
    #[error("golden case {case}: output `{output}` has shape {actual:?}, expected {expected:?}")]
    Shape { case: usize, output: String, expected: Vec<u64>, actual: Vec<u64> },
    #[error(
        "golden case {case}: output `{output}`[{index}] = {actual}, expected {expected} (tolerance {tolerance})"
    )]
    Value { case: usize, output: String, index: usize, expected: f64, actual: f64, tolerance: f64 },
    #[error("golden case {case}: output `{output}`[{index}] = {actual:?}, expected {expected:?}")]
    Text { case: usize, output: String, index: usize, expected: String, actual: String },
    #[error("golden case {case}: output `{output}` is {actual}, expected {expected}")]
    Datatype { case: usize, output: String, expected: Datatype, actual: Datatype },
}

impl Golden {
    /// Checks tolerances are sensible and every tensor is well formed.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.atol.is_finite() && self.atol >= 0.0 && self.rtol.is_finite() && self.rtol >= 0.0)
        {
            return Err("atol and rtol must be finite and non-negative".into());
        }
        if self.cases.is_empty() {
            return Err("golden set has no cases".into());
        }
        for (i, case) in self.cases.iter().enumerate() {
            for tensor in case.inputs.iter().chain(&case.outputs) {
                tensor.validate().map_err(|e| format!("case {i}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Compares `actual` outputs of case `case` with the expectation.
    pub fn compare(&self, case: usize, actual: &[Tensor]) -> Result<(), GoldenMismatch> {
        let Some(expected_case) = self.cases.get(case) else {
            return Ok(());
        };
        for expected in &expected_case.outputs {
            let Some(got) = actual.iter().find(|t| t.name == expected.name) else {
                return Err(GoldenMismatch::MissingOutput { case, output: expected.name.clone() });
            };
            if got.shape != expected.shape {
                return Err(GoldenMismatch::Shape {
                    case,
                    output: expected.name.clone(),
                    expected: expected.shape.clone(),
                    actual: got.shape.clone(),
                });
            }
            if let (TensorData::Bytes(e), TensorData::Bytes(a)) = (&expected.data, &got.data) {
                if let Some(index) = e.iter().zip(a).position(|(e, a)| e != a) {
                    return Err(GoldenMismatch::Text {
                        case,
                        output: expected.name.clone(),
                        index,
                        expected: e[index].clone(),
                        actual: a[index].clone(),
                    });
                }
                continue;
            }
            if expected.datatype() == Datatype::Bytes || got.datatype() == Datatype::Bytes {
                return Err(GoldenMismatch::Datatype {
                    case,
                    output: expected.name.clone(),
                    expected: expected.datatype(),
                    actual: got.datatype(),
                });
            }
            // Numbers of any datatype compare as numbers (an INT64 label and the golden 2.0).
            for index in 0..expected.data.len().min(got.data.len()) {
                let e = expected.data.value_f64(index).unwrap_or(f64::NAN);
                let a = got.data.value_f64(index).unwrap_or(f64::NAN);
                let tolerance = self.atol + self.rtol * e.abs();
                // NaN compares false, so a NaN output is a mismatch.
                let within = (a - e).abs() <= tolerance;
                if !within {
                    return Err(GoldenMismatch::Value {
                        case,
                        output: expected.name.clone(),
                        index,
                        expected: e,
                        actual: a,
                        tolerance,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden() -> Golden {
        Golden {
            atol: 1e-3,
            rtol: 0.0,
            cases: vec![GoldenCase {
                inputs: vec![Tensor::new("x", vec![1], vec![1.0f32])],
                outputs: vec![Tensor::new("y", vec![2], vec![0.5f32, 0.5])],
            }],
        }
    }

    #[test]
    fn within_tolerance_passes_and_outside_names_the_element() {
        let g = golden();
        assert!(g.compare(0, &[Tensor::new("y", vec![2], vec![0.5004f32, 0.4996])]).is_ok());
        let err = g.compare(0, &[Tensor::new("y", vec![2], vec![0.5f32, 0.6])]);
        assert!(matches!(err, Err(GoldenMismatch::Value { index: 1, .. })));
        let nan = g.compare(0, &[Tensor::new("y", vec![2], vec![f32::NAN, 0.5])]);
        assert!(matches!(nan, Err(GoldenMismatch::Value { index: 0, .. })));
        let label = g.compare(0, &[Tensor::new("y", vec![2], vec![1i64, 0])]);
        assert!(matches!(label, Err(GoldenMismatch::Value { index: 0, .. })));
        let text = g.compare(0, &[Tensor::new("y", vec![2], vec!["a".to_string(), "b".into()])]);
        assert!(matches!(text, Err(GoldenMismatch::Datatype { .. })));
        let missing = g.compare(0, &[]);
        assert!(matches!(missing, Err(GoldenMismatch::MissingOutput { .. })));
    }
}
