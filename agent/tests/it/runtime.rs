//! The in-process API, [`outpost_agent::Runtime`], on the generated models: answers match the
//! golden sets, batches work where the batch dimension is variable, refusals are typed and
//! counted and concurrent callers share one plan (its cost is measured by `cargo xtask bench agent`,
//! not here).

use std::sync::Arc;

use outpost_shared::golden::Golden;
use outpost_shared::model::InferError;
use outpost_shared::oip::{InferenceRequest, RequestedOutput, Tensor, TensorData};
use outpost_tests::fixtures::{BUNDLE_MODELS, baseline_request};

use crate::TestDir;

fn golden(model: &str) -> Golden {
    let path = outpost_tests::models_dir().join(format!("{model}.golden.json"));
    serde_json::from_slice(&std::fs::read(path).expect("golden file")).expect("golden set")
}

/// The values of an FP32 tensor.
fn fp32(data: &TensorData) -> &[f32] {
    match data {
        TensorData::Fp32(values) => values,
        other => panic!("expected FP32 data, got {}", other.datatype()),
    }
}

fn request(inputs: Vec<Tensor>) -> InferenceRequest {
    InferenceRequest { id: Some("req-1".into()), parameters: None, inputs, outputs: None }
}

#[test]
fn every_model_reproduces_its_golden_set_through_the_runtime() {
    let test = TestDir::new();
    for model in BUNDLE_MODELS {
        let runtime = test.runtime(model);
        runtime.check_golden().unwrap_or_else(|e| panic!("{model}: {e}"));
        let golden = golden(model);
        for (case, expected) in golden.cases.iter().enumerate() {
            let response = runtime.infer(&request(expected.inputs.clone())).expect("infer");
            assert_eq!(response.model_name, model);
            assert_eq!(response.model_version.as_deref(), Some("1.0.0"));
            assert_eq!(response.id.as_deref(), Some("req-1"));
            golden.compare(case, &response.outputs).unwrap_or_else(|e| panic!("{model}: {e}"));
        }
        assert_eq!(runtime.window_count(), golden.cases.len() as u64, "{model}");
    }
}

#[test]
fn metadata_names_inputs_and_outputs_with_variable_dimensions() {
    let test = TestDir::new();
    let fixed = test.runtime("mlp_classifier").metadata();
    assert_eq!(fixed.name, "mlp_classifier");
    assert_eq!(fixed.versions, ["1.0.0"]);
    assert_eq!(fixed.inputs[0].name, "features");
    assert_eq!(fixed.inputs[0].datatype, "FP32");
    assert_eq!(fixed.inputs[0].shape, [1, 8]);
    assert_eq!(fixed.outputs[0].shape, [1, 3]);
    let batched = test.runtime("batched_classifier");
    assert!(batched.batch_is_variable());
    assert_eq!(batched.metadata().inputs[0].shape, [-1, 8]);
    assert_eq!(batched.metadata().outputs[0].shape, [-1, 3]);
    assert!(batched.ready());
    let cnn = test.runtime("cnn").metadata();
    assert_eq!(cnn.inputs[0].shape, [1, 1, 28, 28]);
}

#[test]
fn batches_run_where_the_batch_dimension_is_variable_and_are_refused_elsewhere() {
    let test = TestDir::new();
    let rows: Vec<f32> = (0..4)
        .flat_map(|i| fp32(&baseline_request("mlp_classifier", i).inputs[0].data).to_vec())
        .collect();
    let batch = request(vec![Tensor::new("features", vec![4, 8], rows.clone())]);
    let batched = test.runtime("batched_classifier");
    let response = batched.infer(&batch).expect("batch of 4");
    assert_eq!(response.outputs[0].shape, [4, 3]);
    // Row for row the same answers as the fixed-batch model.
    let single = test.runtime("mlp_classifier");
    for row in 0..4 {
        let one = single
            .infer(&request(vec![Tensor::new(
                "features",
                vec![1, 8],
                rows[row * 8..row * 8 + 8].to_vec(),
            )]))
            .expect("single row");
        let batch_row = &fp32(&response.outputs[0].data)[row * 3..row * 3 + 3];
        for (a, b) in fp32(&one.outputs[0].data).iter().zip(batch_row) {
            assert!((a - b).abs() < 1e-5, "row {row}: {a} vs {b}");
        }
    }
    let window = batched.cut_window(0, 1, 1);
    assert_eq!(window.count, 1);
    assert_eq!(window.inputs[0].histogram.total(), 4, "every row of the batch is a sample");
    let refused = single.infer(&batch).expect_err("fixed batch of 1");
    assert!(matches!(refused, InferError::Shape { .. }), "{refused}");
}

#[test]
fn refusals_are_typed_and_counted_by_kind() {
    let test = TestDir::new();
    let runtime = test.runtime("mlp_classifier");
    let good = baseline_request("mlp_classifier", 0);
    let data = fp32(&good.inputs[0].data).to_vec();
    let cases: Vec<(InferenceRequest, &str)> = vec![
        (request(vec![Tensor::new("features", vec![1, 7], data[..7].to_vec())]), "bad_shape"),
        (request(vec![Tensor::new("features", vec![1, 8], data[..7].to_vec())]), "bad_shape"),
        (request(vec![Tensor::new("features", vec![1, 8], vec![1i32; 8])]), "bad_datatype"),
        (
            request(vec![Tensor::new("features", vec![1, 8], vec![String::from("1"); 8])]),
            "bad_datatype",
        ),
        (request(vec![]), "bad_input_name"),
        (
            request(vec![good.inputs[0].clone(), Tensor::new("extra", vec![1], vec![0.0f32])]),
            "bad_input_name",
        ),
        (
            request(vec![Tensor::new("features", vec![1, 8], {
                let mut d = data.clone();
                d[3] = f32::NAN;
                d
            })]),
            "bad_value",
        ),
        (
            request(vec![Tensor::new("features", vec![1, 8], {
                let mut d = data.clone();
                d[0] = f32::INFINITY;
                d
            })]),
            "bad_value",
        ),
        (
            InferenceRequest {
                outputs: Some(vec![RequestedOutput::new("logits")]),
                ..good.clone()
            },
            "bad_output_name",
        ),
    ];
    for (bad, kind) in &cases {
        let error = runtime.infer(bad).expect_err("refused");
        assert_eq!(error.kind(), *kind, "{error}");
    }
    runtime.infer(&good).expect("a good request still works");
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, cases.len() as u64 + 1);
    assert_eq!(window.errors.values().sum::<u64>(), cases.len() as u64);
    assert_eq!(window.errors["bad_value"], 2);
    assert_eq!(window.latency.moments.count, 1, "only the answered call has a latency");
    assert_eq!(window.inputs[0].histogram.total(), 1);
}

#[test]
fn requested_outputs_are_filtered() {
    let test = TestDir::new();
    let runtime = test.runtime("mlp_classifier");
    let mut good = baseline_request("mlp_classifier", 1);
    good.outputs = Some(vec![RequestedOutput::new("probabilities")]);
    let response = runtime.infer(&good).expect("infer");
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "probabilities");
}

#[test]
fn concurrent_callers_share_one_runtime_and_every_call_is_counted() {
    let test = TestDir::new();
    let runtime = test.runtime("batched_classifier");
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let runtime = Arc::clone(&runtime);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let request = baseline_request("batched_classifier", (t * 50 + i) % 500);
                    runtime.infer(&request).expect("infer");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("caller thread");
    }
    let window = runtime.cut_window(0, 1, 1);
    assert_eq!(window.count, 200);
    assert_eq!(window.latency.moments.count, 200);
    let classes: u64 = window.classifier.as_ref().expect("classifier").class_counts.iter().sum();
    assert_eq!(classes, 200);
}
