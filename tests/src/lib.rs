//! Shared helpers for the cross-crate scenarios in `tests/tests/`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
