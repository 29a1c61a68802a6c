//! The project's Python virtual environment at `<repo>/.venv`, with the pinned packages of
//! `tests/models/requirements.txt` that regenerate the test models byte for byte.
//!
//! pip runs only when the requirements changed: a stamp file inside the venv holds the SHA-256
//! of the requirements file that was last installed.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::process::{run, step, succeeds};

/// The requirements file, relative to the repository root.
pub const REQUIREMENTS: &str = "tests/models/requirements.txt";

/// Name of the stamp file inside the venv.
const STAMP: &str = ".outpost-requirements.sha256";

/// The virtual environment of a repository.
#[derive(Debug, Clone)]
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    pub fn of_repo(repo: &Path) -> Self {
        Self { dir: repo.join(".venv") }
    }

    pub fn python(&self) -> PathBuf {
        self.bin("python")
    }

    /// A program the venv's packages installed (`bin/<name>`).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    /// Whether the venv exists and its Python runs pip (a venv made without `ensurepip`, or
    /// whose base interpreter was removed, does not).
    pub fn is_usable(&self) -> bool {
        succeeds(Command::new(self.python()).args(["-m", "pip", "--version"]))
    }

    /// Fails with a hint when the venv is not usable; for runs that must not install.
    pub fn require_usable(&self) -> Result<()> {
        if self.is_usable() {
            Ok(())
        } else {
            bail!(
                "there is no usable Python venv at {} (needed to check the test models); \
                 run without --no-install, or `cargo xtask models`, to create it",
                self.dir.display()
            )
        }
    }

    /// Whether apt must provide `python3-venv` before [`Venv::ensure`] can work: only when the
    /// venv is not usable and no Python on the machine can create one.
    pub fn needs_python3_venv_package(&self) -> bool {
        !self.is_usable() && python_that_makes_venvs().is_none()
    }

    /// Creates the venv when it is missing or broken, and installs the requirements when they
    /// changed since the last install.
    pub fn ensure(&self, repo: &Path) -> Result<()> {
        if !self.is_usable() {
            let Some(base) = python_that_makes_venvs() else {
                bail!(
                    "no python3 on this machine can create a virtual environment; install \
                     Python 3.11 or newer with venv support \
                     (on Debian: apt-get install python3-venv)"
                );
            };
            run(
                &format!("creating the Python venv at {}", self.dir.display()),
                Command::new(&base).args(["-m", "venv", "--clear"]).arg(&self.dir),
            )?;
        }
        let requirements_path = repo.join(REQUIREMENTS);
        let requirements = std::fs::read(&requirements_path)
            .with_context(|| format!("reading {}", requirements_path.display()))?;
        let wanted_stamp = stamp_for(&requirements);
        let stamp_path = self.dir.join(STAMP);
        if std::fs::read_to_string(&stamp_path).is_ok_and(|stamp| stamp.trim() == wanted_stamp) {
            step!("Python packages: up to date ({REQUIREMENTS} unchanged since the last install)");
            return Ok(());
        }
        run(
            "installing Python packages",
            Command::new(self.python())
                .args(["-m", "pip", "install", "--disable-pip-version-check", "-r", REQUIREMENTS])
                .current_dir(repo),
        )?;
        std::fs::write(&stamp_path, format!("{wanted_stamp}\n"))
            .with_context(|| format!("writing {}", stamp_path.display()))
    }
}

/// The stamp recorded for a requirements file: its SHA-256 in hex.
fn stamp_for(requirements: &[u8]) -> String {
    hex::encode(Sha256::digest(requirements))
}

/// The first Python that can create a venv with pip in it: `python3` on PATH (pyenv, a
/// python.org build, or Debian's with python3-venv), then Debian's `/usr/bin/python3`.
fn python_that_makes_venvs() -> Option<PathBuf> {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .map(PathBuf::from)
        .find(|python| succeeds(Command::new(python).args(["-c", "import venv, ensurepip"])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stamp_changes_exactly_when_the_requirements_do() {
        let pinned = stamp_for(b"onnx==1.23.2\nnumpy==2.4.6\n");
        assert_eq!(pinned, stamp_for(b"onnx==1.23.2\nnumpy==2.4.6\n"));
        assert_ne!(pinned, stamp_for(b"onnx==1.23.2\nnumpy==2.4.7\n"));
        assert_eq!(pinned.len(), 64);
    }

    #[test]
    fn a_missing_venv_is_not_usable() -> Result<()> {
        let repo = tempfile::tempdir()?;
        let venv = Venv::of_repo(repo.path());
        assert!(!venv.is_usable());
        let error = venv.require_usable().expect_err("no venv there");
        assert!(format!("{error:#}").contains("no usable Python venv"), "{error:#}");
        Ok(())
    }
}
