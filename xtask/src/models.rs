//! The committed test models in `tests/models/`: checking that `make_models.py` reproduces
//! them byte for byte, and regenerating them (`cargo xtask models`).
//!
//! Both generate into a temporary folder first and compare with the committed files, so a
//! check never touches the work tree and a regeneration reports exactly what changed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::process::{run_quietly, step};
use crate::python::Venv;

/// The folder of committed models, relative to the repository root.
pub const MODELS_DIR: &str = "tests/models";

/// One generated file that is not what is committed.
#[derive(Debug, PartialEq, Eq)]
pub enum Difference {
    /// The generator writes a file that is not committed.
    NotCommitted { name: String },
    /// Both exist and differ.
    Differs {
        name: String,
        committed_len: usize,
        generated_len: usize,
        first_differing_byte: usize,
    },
}

impl Difference {
    fn name(&self) -> &str {
        match self {
            Self::NotCommitted { name } | Self::Differs { name, .. } => name,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotCommitted { name } => {
                write!(f, "{MODELS_DIR}/{name}: generated but not committed")
            }
            Self::Differs { name, committed_len, generated_len, first_differing_byte } => write!(
                f,
                "{MODELS_DIR}/{name}: differs from the generated file \
                 from byte {first_differing_byte} \
                 on (committed {committed_len} bytes, generated {generated_len} bytes)"
            ),
        }
    }
}

/// Fails unless a fresh run of `make_models.py` writes exactly the committed bytes.
pub fn check_reproducible(repo: &Path, venv: &Venv) -> Result<()> {
    step!("checking that {MODELS_DIR}/ is reproducible: make_models.py into a temporary folder");
    let generated = generate(repo, venv)?;
    let differences = compare(generated.path(), &repo.join(MODELS_DIR))?;
    if differences.is_empty() {
        step!("{MODELS_DIR}/: every generated file matches the committed one");
        return Ok(());
    }
    let list: Vec<String> =
        differences.iter().map(|difference| format!("  {difference}")).collect();
    bail!(
        "the committed test models are not what make_models.py generates:\n{}\n\
         Regenerate them with `cargo xtask models`, review and commit the result.",
        list.join("\n")
    )
}

/// Regenerates the committed models in place and reports which files changed.
pub fn regenerate(repo: &Path, venv: &Venv) -> Result<()> {
    step!("regenerating {MODELS_DIR}/ with make_models.py");
    let generated = generate(repo, venv)?;
    let committed_dir = repo.join(MODELS_DIR);
    let differences = compare(generated.path(), &committed_dir)?;
    if differences.is_empty() {
        step!("{MODELS_DIR}/ is already what make_models.py generates; nothing changed");
        return Ok(());
    }
    for difference in &differences {
        let name = difference.name();
        replace_file(&generated.path().join(name), &committed_dir.join(name))?;
        eprintln!("    updated {difference}");
    }
    step!("updated {} file(s) in {MODELS_DIR}/; review and commit them", differences.len());
    Ok(())
}

/// Runs `make_models.py --out <temporary folder>`; its output is shown only if it fails.
fn generate(repo: &Path, venv: &Venv) -> Result<TempDir> {
    let out = tempfile::Builder::new()
        .prefix("outpost-models-")
        .tempdir()
        .context("creating a temporary folder")?;
    run_quietly(
        Command::new(venv.python())
            .arg(repo.join(MODELS_DIR).join("make_models.py"))
            .arg("--out")
            .arg(out.path())
            .current_dir(repo),
    )
    .context("make_models.py failed")?;
    Ok(out)
}

/// Compares every file in `generated_dir` with the file of the same name in `committed_dir`.
/// Committed files the generator does not write (the README, the script) are not compared.
fn compare(generated_dir: &Path, committed_dir: &Path) -> Result<Vec<Difference>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(generated_dir)
        .with_context(|| format!("listing {}", generated_dir.display()))?
    {
        let entry = entry.with_context(|| format!("listing {}", generated_dir.display()))?;
        if entry.file_type().is_ok_and(|kind| kind.is_file()) {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if names.is_empty() {
        bail!("make_models.py wrote no files into {}", generated_dir.display());
    }
    names.sort();
    let mut differences = Vec::new();
    for name in names {
        let generated = read(&generated_dir.join(&name))?;
        let committed_path = committed_dir.join(&name);
        if !committed_path.exists() {
            differences.push(Difference::NotCommitted { name });
            continue;
        }
        let committed = read(&committed_path)?;
        if let Some(first_differing_byte) = first_difference(&committed, &generated) {
            differences.push(Difference::Differs {
                name,
                committed_len: committed.len(),
                generated_len: generated.len(),
                first_differing_byte,
            });
        }
    }
    Ok(differences)
}

/// The offset of the first differing byte, counting a length difference as one.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Replaces `target` with a copy of `source` through a temporary file and a rename, so an
/// interrupted regeneration leaves either the old or the new file, never half of one.
fn replace_file(source: &Path, target: &Path) -> Result<()> {
    let mut temporary = PathBuf::from(target);
    temporary.as_mut_os_string().push(".tmp");
    std::fs::copy(source, &temporary)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, target).with_context(|| format!("replacing {}", target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_difference_finds_changed_bytes_and_length_changes() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
        assert_eq!(first_difference(b"", b"x"), Some(0));
    }

    #[test]
    fn compare_names_every_generated_file_that_is_not_committed_as_is() -> Result<()> {
        let generated = tempfile::tempdir()?;
        let committed = tempfile::tempdir()?;
        for (name, bytes) in
            [("same.onnx", "123"), ("changed.json", "{\"a\":1}"), ("new.csv", "f0")]
        {
            std::fs::write(generated.path().join(name), bytes)?;
        }
        std::fs::write(committed.path().join("same.onnx"), "123")?;
        std::fs::write(committed.path().join("changed.json"), "{\"a\":2}")?;
        std::fs::write(committed.path().join("README.md"), "not generated, not compared")?;

        let differences = compare(generated.path(), committed.path())?;
        assert_eq!(
            differences,
            [
                Difference::Differs {
                    name: "changed.json".into(),
                    committed_len: 7,
                    generated_len: 7,
                    first_differing_byte: 5
                },
                Difference::NotCommitted { name: "new.csv".into() },
            ]
        );
        assert_eq!(
            differences[0].to_string(),
            "tests/models/changed.json: differs from the generated file from byte 5 on \
             (committed 7 bytes, generated 7 bytes)"
        );
        Ok(())
    }

    #[test]
    fn an_empty_generation_is_an_error() -> Result<()> {
        let generated = tempfile::tempdir()?;
        let committed = tempfile::tempdir()?;
        assert!(compare(generated.path(), committed.path()).is_err());
        Ok(())
    }

    #[test]
    fn replace_file_swaps_content_and_leaves_no_temporary() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let source = dir.path().join("new");
        let target = dir.path().join("model.onnx");
        std::fs::write(&source, "new bytes")?;
        std::fs::write(&target, "old bytes")?;
        replace_file(&source, &target)?;
        assert_eq!(std::fs::read_to_string(&target)?, "new bytes");
        assert!(!dir.path().join("model.onnx.tmp").exists());
        Ok(())
    }
}
