//! Replays the cargo-fuzz corpus (`shared/fuzz/corpus/<target>/`) through the same entry points
//! the fuzz targets call, on stable Rust, so every input the fuzzer ever kept stays panic-free.
//! Set `OUTPOST_WRITE_FUZZ_SEEDS=1` to (re)write the generated seeds into the corpus.

use std::path::PathBuf;

use outpost_shared::fuzzing;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(target)
}

fn run(target: &str, data: &[u8]) {
    match target {
        "envelope" => fuzzing::envelope(data),
        "bundle" => fuzzing::bundle(data),
        "documents" => fuzzing::documents(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn corpus_replays_without_panics() {
    let mut replayed = 0;
    for target in ["envelope", "bundle", "documents"] {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("dir entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            run(target, &data);
            fuzzing::all(&data);
            replayed += 1;
        }
    }
    assert!(replayed >= 100, "the corpus should hold the fuzzer's inputs, found {replayed}");
}

#[test]
fn seeds_are_valid_documents_and_replay() {
    let trust = fuzzing::fixture_trust_root();
    let now = time::macros::datetime!(2026-06-01 0:00 UTC);
    let write = std::env::var_os("OUTPOST_WRITE_FUZZ_SEEDS").is_some();
    for (target, name, data) in fuzzing::seeds() {
        match name {
            "bundle" => {
                outpost_shared::bundle::verify(&data, &trust, now).expect("seed bundle verifies");
            }
            "plan" if target == "envelope" => {
                outpost_shared::plan::verify(&data, &trust, now).expect("seed plan verifies");
            }
            "trust-root" => {
                outpost_shared::trust::verify_initial(&data, now).expect("seed root verifies");
            }
            _ => {}
        }
        run(target, &data);
        if write {
            std::fs::create_dir_all(corpus_dir(target)).expect("mkdir");
            std::fs::write(corpus_dir(target).join(format!("seed-{name}")), &data)
                .expect("write seed");
        }
    }
}
