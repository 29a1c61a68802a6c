//! Statistics windows from real models: a window over the baseline data reproduces the bundle's
//! profile bin for bin (same edges, same feature extraction), windows pass the wire protocol's
//! validation, and windows of two runtimes merge into the window of one.

use outpost_shared::model::Model;
use outpost_shared::wire::{self, StatsWindow};
use outpost_tests::fixtures::{BUNDLE_MODELS, baseline};

use crate::TestDir;

fn encodes(window: &StatsWindow) {
    let bytes = wire::encode(window).unwrap_or_else(|e| panic!("window refused: {e}"));
    let back: StatsWindow = wire::decode(&bytes).expect("window decodes");
    assert_eq!(&back, window);
}

#[test]
fn a_window_over_the_baseline_reproduces_the_profile_exactly() {
    let test = TestDir::new();
    for model_name in BUNDLE_MODELS {
        let bundle = test.fixture.verified_bundle(model_name);
        let runtime = test.runtime(model_name);
        let model = Model::load(&bundle.model).expect("model");
        let (requests, _) = baseline(model_name, &model);
        for request in &requests {
            runtime.infer(request).expect("baseline row");
        }
        let window = runtime.cut_window(1_000, 2_000, 9);
        encodes(&window);
        assert_eq!(window.count, requests.len() as u64);
        assert!(window.errors.is_empty());
        let profile = &bundle.profile;
        for (side, features, expected) in [
            ("input", &window.inputs, &profile.inputs),
            ("output", &window.outputs, &profile.outputs),
        ] {
            assert_eq!(features.len(), expected.len(), "{model_name} {side}s");
            for (got, want) in features.iter().zip(expected.iter()) {
                assert_eq!(got.name, want.name);
                assert_eq!(got.histogram, want.histogram, "{model_name} {side} {}", got.name);
                assert_eq!(got.moments.count, want.moments.count);
                assert!(
                    (got.moments.mean - want.moments.mean).abs()
                        <= 1e-9 * want.moments.mean.abs().max(1.0)
                );
            }
        }
        match (&window.classifier, &profile.classifier) {
            (Some(got), Some(want)) => {
                assert_eq!(got.class_counts, want.class_counts, "{model_name}");
                assert_eq!(got.confidence, want.confidence, "{model_name}");
            }
            (None, None) => {}
            (got, want) => panic!("{model_name}: classifier parts differ: {got:?} vs {want:?}"),
        }
    }
}

#[test]
fn image_models_are_summarised_per_channel() {
    let test = TestDir::new();
    let runtime = test.runtime("cnn");
    let model = Model::load(&test.fixture.verified_bundle("cnn").model).expect("model");
    let (requests, _) = baseline("cnn", &model);
    runtime.infer(&requests[0]).expect("image");
    let window = runtime.cut_window(0, 1, 1);
    let names: Vec<&str> = window.inputs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["image.mean[0]", "image.std[0]"]);
    assert_eq!(window.classifier.as_ref().map(|c| c.class_counts.len()), Some(10));
    encodes(&window);
}

#[test]
fn regressor_windows_carry_outputs_without_class_counts() {
    let test = TestDir::new();
    let runtime = test.runtime("regressor");
    let model = Model::load(&test.fixture.verified_bundle("regressor").model).expect("model");
    let (requests, _) = baseline("regressor", &model);
    for request in requests.iter().take(10) {
        runtime.infer(request).expect("row");
    }
    let window = runtime.cut_window(0, 1, 1);
    encodes(&window);
    assert!(window.classifier.is_none());
    assert_eq!(window.outputs.len(), 1);
    assert_eq!(window.outputs[0].moments.count, 10);
}

#[test]
fn windows_of_two_runtimes_merge_into_the_window_of_one() {
    let test = TestDir::new();
    let model = Model::load(&test.fixture.verified_bundle("mlp_classifier").model).expect("model");
    let (requests, _) = baseline("mlp_classifier", &model);
    let (first, second) = requests.split_at(200);
    let one = test.runtime("mlp_classifier");
    for request in &requests {
        one.infer(request).expect("row");
    }
    let whole = one.cut_window(0, 200, 2);
    let parts = test.runtime("mlp_classifier");
    for request in first {
        parts.infer(request).expect("row");
    }
    let mut merged = parts.cut_window(0, 100, 1);
    for request in second {
        parts.infer(request).expect("row");
    }
    merged.merge(&parts.cut_window(100, 200, 2)).expect("merge");
    encodes(&merged);
    assert_eq!(merged.count, whole.count);
    for (a, b) in
        merged.inputs.iter().chain(&merged.outputs).zip(whole.inputs.iter().chain(&whole.outputs))
    {
        assert_eq!(a.histogram, b.histogram, "{}", a.name);
        assert_eq!(a.moments.count, b.moments.count);
        assert!((a.moments.mean - b.moments.mean).abs() < 1e-9 * b.moments.mean.abs().max(1.0));
    }
    assert_eq!(merged.classifier, whole.classifier);
    // Latencies differ between runs; their counts do not.
    assert_eq!(merged.latency.moments.count, whole.latency.moments.count);
}
