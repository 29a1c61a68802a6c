//! The tract runtime on the project's generated models (`tests/models/`): loading, schemas,
//! golden checks, request validation, batching, profiles and concurrent use of one plan.

use std::path::PathBuf;

use outpost_shared::golden::Golden;
use outpost_shared::model::{InferError, LoadError, Model, build_profile};
use outpost_shared::oip::{InferenceRequest, Tensor, TensorData};

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

fn load(name: &str) -> Model {
    let bytes = std::fs::read(models_dir().join(name)).expect("model file");
    Model::load(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn golden(name: &str) -> Golden {
    serde_json::from_slice(&std::fs::read(models_dir().join(name)).expect("golden file"))
        .expect("golden json")
}

fn request(tensors: Vec<Tensor>) -> InferenceRequest {
    InferenceRequest { id: None, parameters: None, inputs: tensors, outputs: None }
}

#[test]
fn schemas_are_read_from_the_models() {
    let cases = [
        ("mlp_classifier.onnx", "features", vec![1, 8], "probabilities", vec![1, 3]),
        ("batched_classifier.onnx", "features", vec![-1, 8], "probabilities", vec![-1, 3]),
        ("regressor.onnx", "features", vec![1, 6], "prediction", vec![1, 1]),
        ("cnn.onnx", "image", vec![1, 1, 28, 28], "probabilities", vec![1, 10]),
    ];
    for (file, input, input_shape, output, output_shape) in cases {
        let model = load(file);
        assert_eq!(model.inputs()[0].name, input, "{file}");
        assert_eq!(model.inputs()[0].shape, input_shape, "{file}");
        assert_eq!(model.inputs()[0].datatype, "FP32", "{file}");
        assert_eq!(model.outputs()[0].name, output, "{file}");
        assert_eq!(model.outputs()[0].shape, output_shape, "{file}");
        assert_eq!(model.batch_is_variable(), file.starts_with("batched"), "{file}");
    }
}

#[test]
fn golden_sets_pass_and_a_wrong_expectation_fails() {
    for name in ["mlp_classifier", "batched_classifier", "regressor", "cnn"] {
        load(&format!("{name}.onnx"))
            .check_golden(&golden(&format!("{name}.golden.json")))
            .expect(name);
    }
    let error = load("mlp_classifier.onnx")
        .check_golden(&golden("mlp_classifier.bad_golden.json"))
        .expect_err("bad golden must fail");
    assert!(error.to_string().contains("golden case 0: output `probabilities`[0]"), "{error}");
}

#[test]
fn unloadable_models_name_the_reason() {
    let invalid = Model::load(&std::fs::read(models_dir().join("invalid.onnx")).expect("file"));
    assert!(matches!(invalid, Err(LoadError::Parse(_))), "{invalid:?}");
    let unsupported =
        Model::load(&std::fs::read(models_dir().join("unsupported_op.onnx")).expect("file"));
    match unsupported {
        Err(LoadError::UnsupportedOperator { op, node }) => {
            assert_eq!(op, "Frobnicate");
            assert_eq!(node, "frobnicate1");
        }
        other => panic!("expected an unsupported operator, got {other:?}"),
    }
    assert!(matches!(Model::load(b""), Err(LoadError::Parse(_)) | Err(LoadError::Optimize(_))));
}

#[test]
fn batches_run_when_the_model_allows() {
    let model = load("batched_classifier.onnx");
    let data: Vec<f32> = (0..24).map(|i| i as f32 / 10.0).collect();
    let outputs =
        model.infer(&request(vec![Tensor::new("features", vec![3, 8], data)])).expect("batch of 3");
    assert_eq!(outputs[0].shape, vec![3, 3]);
    let TensorData::Fp32(probabilities) = &outputs[0].data else { panic!("FP32 output") };
    for row in probabilities.chunks(3) {
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "softmax rows sum to one: {row:?}");
    }
    let fixed = load("mlp_classifier.onnx");
    let data: Vec<f32> = (0..16u8).map(f32::from).collect();
    let error = fixed
        .infer(&request(vec![Tensor::new("features", vec![2, 8], data)]))
        .expect_err("fixed batch");
    assert!(matches!(error, InferError::Shape { .. }), "{error}");
}

#[test]
fn bad_requests_are_refused_with_the_reason() {
    let model = load("mlp_classifier.onnx");
    let good = || Tensor::new("features", vec![1, 8], vec![0.5f32; 8]);
    let check = |tensors: Vec<Tensor>, kind: &str, needle: &str| {
        let error = model.infer(&request(tensors)).expect_err("must be refused");
        assert_eq!(error.kind(), kind, "{error}");
        assert!(error.to_string().contains(needle), "`{error}` should contain `{needle}`");
    };
    check(vec![], "bad_input_name", "missing input `features`");
    check(
        vec![good(), Tensor::new("extra", vec![1], vec![1.0f32])],
        "bad_input_name",
        "unknown input `extra`",
    );
    check(vec![Tensor::new("features", vec![1, 7], vec![0.5f32; 7])], "bad_shape", "shape [1, 7]");
    check(
        vec![Tensor::new("features", vec![1, 8], vec![0.5f32; 7])],
        "bad_shape",
        "holds 8 elements but data has 7",
    );
    check(
        vec![Tensor::new("features", vec![1, 8], vec![1i64; 8])],
        "bad_datatype",
        "datatype INT64, the model expects FP32",
    );
    check(
        vec![Tensor::new("features", vec![1, 8], vec![String::new(); 8])],
        "bad_datatype",
        "datatype BYTES, the model expects FP32",
    );
    let mut values = vec![0.5f32; 8];
    values[3] = f32::NAN;
    check(
        vec![Tensor::new("features", vec![1, 8], values)],
        "bad_value",
        "element 3 is not a finite number",
    );
    let mut values = vec![0.5f32; 8];
    values[0] = f32::INFINITY;
    check(vec![Tensor::new("features", vec![1, 8], values)], "bad_value", "element 0");
    let mut unknown_output = request(vec![good()]);
    unknown_output.outputs = Some(vec![outpost_shared::oip::RequestedOutput::new("nope")]);
    assert!(matches!(model.infer(&unknown_output), Err(InferError::UnknownOutput(_))));
    // The model still answers after every refusal.
    assert_eq!(model.infer(&request(vec![good()])).expect("good request")[0].shape, vec![1, 3]);
}

#[test]
fn profile_matches_the_reference_implementation() {
    let model = load("mlp_classifier.onnx");
    let text =
        std::fs::read_to_string(models_dir().join("mlp_classifier.baseline.csv")).expect("csv");
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().expect("header").split(',').map(String::from).collect();
    let requests: Vec<InferenceRequest> = lines
        .map(|line| {
            let values: Vec<f32> =
                line.split(',').map(|v| v.parse::<f32>().expect("number")).collect();
            request(vec![Tensor::new("features", vec![1, 8], values)])
        })
        .collect();
    let profile = build_profile(&model, &requests, Some(&header), true, 10).expect("profile");
    assert_eq!(profile.reference_count, 500);
    assert_eq!(profile.inputs.len(), 8);
    assert_eq!(profile.inputs[2].name, "f2");
    assert_eq!(profile.inputs[2].histogram.counts.len(), 10);
    assert_eq!(profile.inputs[2].histogram.total(), 500);
    // Quantile bins hold about a tenth of the baseline each.
    assert!(profile.inputs[2].histogram.counts.iter().all(|c| (45..=55).contains(c)));
    assert_eq!(profile.outputs.len(), 3);
    let classifier = profile.classifier.expect("classifier");
    // Class counts computed by make_models.py with onnx's reference evaluator.
    assert_eq!(classifier.class_counts, vec![134, 215, 151]);
}

#[test]
fn one_plan_serves_concurrent_requests() {
    let model = load("cnn.onnx");
    let expected = model.infer(&model.sample_request()).expect("reference run");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..5 {
                    let outputs = model.infer(&model.sample_request()).expect("concurrent run");
                    assert_eq!(outputs[0].data, expected[0].data);
                }
            });
        }
    });
}
