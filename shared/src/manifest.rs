//! The bundle manifest: what a bundle contains (sha256 and size of every file), the model's
//! input/output schema, its task and lineage, and when it was created and expires. Signed by a
//! publisher key as a DSSE envelope (`manifest.dsse.json` inside the bundle).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::oip::TensorSpec;
use crate::verify::VerifyError;

/// `manifest.dsse.json`'s payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub v: u32,
    pub name: String,
    pub version: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<OffsetDateTime>,
    pub files: Vec<FileEntry>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub task: Task,
    pub lineage: Lineage,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    /// `sha256:<hex>`.
    pub sha256: String,
    pub size: u64,
}

/// What the model's first output means, which decides how outputs are summarised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The first output holds class probabilities `[batch, classes]`.
    Classification,
    Regression,
    Other,
}

/// Where the model came from: training data, code, metrics, hyper-parameters, and anything else
/// the pipeline records.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_data_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_revision: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Checks a model name: 1-64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model name {name:?} must be 1-64 characters of a-z 0-9 . _ - starting with a letter or digit"
        ))
    }
}

/// Checks a version string: 1-64 printable ASCII characters without spaces or `@`.
pub fn validate_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version.chars().all(|c| c.is_ascii_graphic() && c != '@' && c != '/');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "model version {version:?} must be 1-64 printable characters without spaces, @ or /"
        ))
    }
}

impl Manifest {
    pub fn validate(&self) -> Result<(), VerifyError> {
        let bad = |reason: String| VerifyError::Malformed { what: "manifest", reason };
        if self.v != 1 {
            return Err(bad(format!("unsupported v {}", self.v)));
        }
        validate_name(&self.name).map_err(bad)?;
        validate_version(&self.version).map_err(bad)?;
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(bad("the model must declare inputs and outputs".into()));
        }
        Ok(())
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}
