//! `outpost-shared`: everything the device, the control site and the console must agree on.
//!
//! - [`wire`]: MQTT topics (both directions) and the versioned JSON messages on them.
//! - [`dsse`]: DSSE envelopes over ed25519; [`keys`]: key ids, public key files and
//!   passphrase-encrypted private keys.
//! - [`trust`], [`manifest`], [`bundle`], [`plan`]: the signed documents of the trust model and
//!   their verification, which yields [`Verified`] values or a [`VerifyError`] naming the problem.
//! - [`stats`], [`profile`]: mergeable statistics and the baseline profile format; [`drift`]:
//!   drift metrics (PSI, Jensen–Shannon, KS, Wasserstein, chi-square) and verdicts.
//! - [`oip`]: Open Inference Protocol v2 tensors as JSON.
//! - [`selector`]: device tag selectors (`site=berlin,hw=rpi4`).
//! - `model` (feature `runtime`): ONNX execution with tract, shared by the agent and the bundle
//!   tooling so a profile or golden check means the same at publish time and on the device.
//!
//! This crate does no IO and has no async runtime: callers hand it bytes and the current time.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod dedupe;
pub mod drift;
pub mod dsse;
pub mod fuzzing;
pub mod golden;
pub mod keys;
pub mod manifest;
#[cfg(feature = "runtime")]
pub mod model;
pub mod oip;
pub mod plan;
pub mod profile;
pub mod selector;
pub mod stats;
pub mod trust;
pub mod verify;
pub mod wire;

pub use verify::{Verified, VerifyError};

/// Hex-encoded SHA-256 of `bytes`, prefixed with `sha256:` as everywhere in Outpost documents.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}
