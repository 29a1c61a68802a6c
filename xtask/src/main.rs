//! Outpost's developer commands, run as `cargo xtask <command>` (the alias is in
//! `.cargo/config.toml`):
//!
//! - `test [--quick] [--no-install] [--skip-lint] [-- RUNNER ARGS]`: installs what is missing
//!   on a Debian machine (apt packages, rustup targets, the Python venv), then runs every check:
//!   the test models are reproducible, rustfmt, clippy, the tests (slow suites included unless
//!   `--quick`) and the doc tests. See [`suite`].
//! - `demo`: builds the `outpost` CLI and the agent and walks through the trust model in
//!   `target/demo/` (keys, trust root, signed bundles, tampering and unauthorised keys refused,
//!   k-of-n rollout approvals, cohorts), then runs a live fleet on the embedded defaults: the
//!   control server with SQLite and its MQTT broker, four real agents serving the signed model,
//!   inference traffic, statistics windows, a lost device, a clean shutdown. See [`demo`].
//! - `models`: regenerates `tests/models/` with `make_models.py` in the project venv.
//! - `cross [--target aarch64|armv7|all] [--release] [--test] [--package]`: the agent for ARM
//!   boards: cross builds, its tests under qemu-user, `.deb` packages. See [`cross`].
//! - `bench agent [--skip-cross] [--rounds N] [--models …] [--check]`: the agent's benchmarks,
//!   written to `docs/results/` and `docs/benchmarks.md`. See [`bench`].
//! - `bench ingest [--devices N] [--windows-per-device K] [--backends …] [--check]`: the
//!   control's statistics ingest against a bare subscriber, same outputs.
//! - `bench drift [--drift-devices N] [--drift-buckets B] [--drift-features F] [--check]`:
//!   fleet drift from stored aggregates, same outputs.
//! - `console-e2e [--no-install]`: the console driven end to end against a real fleet under
//!   Xvfb (tauri-driver, WebKitWebDriver); screenshots into `docs/screenshots/`. See [`console`].
//!
//! Every step is announced on stderr as `==> …`. Exit code 0 means everything held, 1 that
//! something failed (the last `error:` line says what).

#![forbid(unsafe_code)]

mod bench;
mod console;
mod cross;
mod demo;
mod deny;
mod install;
mod models;
mod process;
mod python;
mod suite;
mod tamper;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::install::{PYTHON_VENV_APT_PACKAGE, ensure_apt_packages};
use crate::process::repo_root;
use crate::python::Venv;

/// Outpost's developer commands.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing, then run every check (models, fmt, clippy, tests, doc tests).
    Test(suite::TestOptions),
    /// Walk through Outpost's trust model, then run a live fleet of real agents, in target/demo/.
    Demo,
    /// Regenerate tests/models/ with make_models.py (creating the Python venv if needed).
    Models,
    /// Cross-compile the agent for ARM, test it under qemu-user, package it as .deb files.
    Cross(cross::CrossOptions),
    /// Run the benchmarks and write docs/results/ and docs/benchmarks.md.
    Bench(bench::BenchOptions),
    /// Drive the console end to end against a real fleet (Xvfb, tauri-driver) and write
    /// docs/screenshots/.
    ConsoleE2e {
        /// Install nothing (apt, npm's packages, tauri-driver).
        #[arg(long)]
        no_install: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Test(options) => suite::run_test(&options),
        Task::Demo => demo::run_demo(),
        Task::Models => {
            let repo = repo_root();
            let venv = Venv::of_repo(&repo);
            if venv.needs_python3_venv_package() {
                ensure_apt_packages(&[PYTHON_VENV_APT_PACKAGE])?;
            }
            venv.ensure(&repo)?;
            models::regenerate(&repo, &venv)
        }
        Task::Cross(options) => cross::run_cross(&options),
        Task::Bench(options) => bench::run_bench(&options),
        Task::ConsoleE2e { no_install } => console::run_e2e(&repo_root(), !no_install),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn ci_runs_the_test_command() -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;

        let script_path = repo_root().join(".ci/run");
        let script = std::fs::read_to_string(&script_path)?;
        assert!(script.starts_with("#!/usr/bin/env bash\n"), "{script}");
        assert!(script.contains("set -euo pipefail"));
        assert!(script.contains("exec cargo xtask test"));
        let mode = std::fs::metadata(&script_path)?.permissions().mode();
        assert_ne!(mode & 0o111, 0, ".ci/run must be executable");
        Ok(())
    }
}
