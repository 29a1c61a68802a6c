//! Test kit shared by the integration tests of every crate and the fleet scenarios in
//! `tests/tests/`: real brokers on free loopback ports, signed fixtures made from the generated
//! models, and waiting with timeouts instead of sleeping.
#![forbid(unsafe_code)]

pub mod broker;
pub mod fixtures;
pub mod mosquitto_tls;
pub mod postgres;
pub mod wait;

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The directory of the generated test models.
pub fn models_dir() -> PathBuf {
    repo_root().join("tests").join("models")
}
