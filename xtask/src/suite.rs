//! `cargo xtask test`: install what is missing, then run every check the project has.
//!
//! Installs (unless `--no-install`): the apt packages of [`TEST_APT_PACKAGES`] (plus
//! `python3-venv` when no Python here can make a venv), the ARM rustup targets, rustfmt and
//! clippy, the Python venv for the model generator, and for the console Node.js/npm, its npm
//! dependencies and tauri-driver. Installing also happens when `CI` is
//! set: CI runs on a fresh clone, maybe on a fresh machine.
//!
//! Checks, all run even when an earlier one fails, so one run shows every problem:
//! the committed test models are reproducible, the supply-chain policy holds (`cargo deny`,
//! [`crate::deny`]), the console frontend builds and its component
//! tests pass (Vitest, svelte-check), `cargo fmt --check`, `cargo clippy -D
//! warnings`, the tests (cargo-nextest when installed, else `cargo test`) with
//! `OUTPOST_SLOW_TESTS=1` unless `--quick`, the doc tests, the console end to end in a real
//! window ([`crate::console::run_e2e`]), the agent's aarch64 test subset
//! under qemu-user, and the crash-safety fault steps with the aarch64 agent under qemu (see
//! `cross/README.md`; none of these three with `--quick` or a test filter).

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

use crate::install::{
    ARM_TARGETS, PYTHON_VENV_APT_PACKAGE, TEST_APT_PACKAGES, ensure_apt_packages,
    ensure_lint_tools, ensure_rust_targets,
};
use crate::process::{cargo, repo_root, run, step, succeeds};
use crate::python::Venv;
use crate::{console, cross, deny, models};

/// The environment variable slow test suites check before they run.
pub const SLOW_TESTS_ENV: &str = "OUTPOST_SLOW_TESTS";

/// Options of `cargo xtask test`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TestOptions {
    /// Skip the slow suites (they run only when OUTPOST_SLOW_TESTS=1, which --quick leaves unset).
    #[arg(long)]
    pub quick: bool,
    /// Install nothing (no apt, rustup or pip); for re-runs on a machine that is set up.
    #[arg(long)]
    pub no_install: bool,
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub skip_lint: bool,
    /// Passed to the test runner, e.g. a test name filter: `cargo xtask test -- drift`.
    /// With a filter the doc tests are not run.
    #[arg(last = true)]
    pub runner_args: Vec<String>,
}

/// One named check; all of them run, and the command fails at the end if any did.
struct Check<'a> {
    name: &'static str,
    run: Box<dyn FnOnce() -> Result<()> + 'a>,
}

pub fn run_test(options: &TestOptions) -> Result<()> {
    let repo = repo_root();
    let venv = Venv::of_repo(&repo);
    if options.no_install {
        step!("--no-install: installing nothing");
        venv.require_usable()?;
    } else {
        install(&repo, &venv, !options.skip_lint)?;
    }

    let mut checks = vec![
        Check {
            name: "test models reproducible",
            run: Box::new(|| models::check_reproducible(&repo, &venv)),
        },
        Check { name: "supply chain (cargo deny)", run: Box::new(|| deny::run_checks(&venv)) },
    ];
    // Before clippy and the tests: the console binary embeds the built frontend.
    checks.push(Check {
        name: "console frontend build and component tests",
        run: Box::new(|| {
            console::build_frontend(&repo)?;
            console::frontend_checks(&repo)
        }),
    });
    if options.skip_lint {
        step!("--skip-lint: not running cargo fmt and cargo clippy");
    } else {
        checks.push(Check {
            name: "cargo fmt",
            run: Box::new(|| {
                run("checking formatting", cargo().args(["fmt", "--all", "--", "--check"]))
            }),
        });
        checks.push(Check {
            name: "cargo clippy",
            run: Box::new(|| {
                run(
                    "linting",
                    cargo().args([
                        "clippy",
                        "--workspace",
                        "--all-targets",
                        "--",
                        "-D",
                        "warnings",
                    ]),
                )
            }),
        });
    }
    if options.runner_args.is_empty() {
        checks.push(Check {
            name: "doc tests",
            run: Box::new(|| {
                let mut command = cargo();
                command.args(["test", "--workspace", "--doc"]);
                set_slow_tests(&mut command, options.quick);
                run("running the doc tests", &mut command)
            }),
        });
    } else {
        step!("a test filter was given: not running the doc tests");
    }
    // The main test run comes after the doc tests so that its summary, not an empty doc-test
    // run, closes the log.
    checks.push(Check {
        name: "tests",
        run: Box::new(|| run("running the tests", &mut test_command(options))),
    });
    if options.quick || !options.runner_args.is_empty() {
        step!("--quick or a test filter: not running the console end-to-end suite");
    } else {
        checks.push(Check {
            name: "console end to end",
            run: Box::new(|| console::run_e2e(&repo, !options.no_install)),
        });
    }
    if options.quick || !options.runner_args.is_empty() {
        step!("--quick or a test filter: not running the aarch64 tests under qemu");
    } else {
        checks.push(Check {
            name: "aarch64 tests under qemu",
            run: Box::new(|| cross::run_qemu_tests(cross::AARCH64, cross::Profile::Debug)),
        });
        checks.push(Check {
            name: "aarch64 agent under qemu: a kill at every install step",
            run: Box::new(|| cross::run_qemu_crash_test(cross::AARCH64)),
        });
    }

    let total = checks.len();
    let mut failed = Vec::new();
    for check in checks {
        if let Err(error) = (check.run)() {
            eprintln!("==> FAILED: {}: {error:#}", check.name);
            failed.push(check.name);
        }
    }
    if failed.is_empty() {
        step!("all {total} checks passed");
        Ok(())
    } else {
        bail!("{} of {total} checks failed: {}", failed.len(), failed.join(", "))
    }
}

/// Everything `cargo xtask test` needs that this machine may lack.
fn install(repo: &Path, venv: &Venv, lint: bool) -> Result<()> {
    let mut packages = TEST_APT_PACKAGES.to_vec();
    if venv.needs_python3_venv_package() {
        packages.push(PYTHON_VENV_APT_PACKAGE);
    }
    ensure_apt_packages(&packages)?;
    ensure_rust_targets(ARM_TARGETS)?;
    if lint {
        ensure_lint_tools()?;
    }
    // The console: Node.js and npm (the frontend build and its tests), tauri-driver (its
    // end-to-end suite).
    console::ensure_node()?;
    console::ensure_npm_dependencies(repo)?;
    console::ensure_tauri_driver()?;
    venv.ensure(repo)
}

/// The test runner's command line: cargo-nextest when it is installed, else `cargo test`.
fn test_command(options: &TestOptions) -> Command {
    let mut command = cargo();
    if succeeds(cargo().args(["nextest", "--version"])) {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        step!("cargo-nextest is not installed: using cargo test");
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command.args(&options.runner_args);
    // The runner builds every binary of the workspace before the tests start; tests that run
    // another package's binary use it instead of building it again for their package alone.
    command.env("OUTPOST_WORKSPACE_BINARIES", "1");
    set_slow_tests(&mut command, options.quick);
    command
}

fn set_slow_tests(command: &mut Command, quick: bool) {
    if quick {
        command.env_remove(SLOW_TESTS_ENV);
    } else {
        command.env(SLOW_TESTS_ENV, "1");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::process::display;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        options: TestOptions,
    }

    fn parse(args: &[&str]) -> Result<TestOptions> {
        Ok(Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))?.options)
    }

    #[test]
    fn flags_and_runner_args_parse() -> Result<()> {
        let options = parse(&["--quick", "--no-install", "--skip-lint", "--", "drift", "--exact"])?;
        assert!(options.quick && options.no_install && options.skip_lint);
        assert_eq!(options.runner_args, ["drift", "--exact"]);
        assert!(parse(&["--frobnicate"]).is_err());
        assert!(parse(&["stray"]).is_err(), "runner arguments go after --");
        Ok(())
    }

    #[test]
    fn slow_suites_are_on_unless_quick() -> Result<()> {
        let full = display(&test_command(&parse(&["--", "bundle"])?));
        assert!(
            full.starts_with("OUTPOST_SLOW_TESTS=1 OUTPOST_WORKSPACE_BINARIES=1 cargo "),
            "{full}"
        );
        assert!(full.ends_with(" --workspace --no-fail-fast bundle"), "{full}");
        let quick = display(&test_command(&parse(&["--quick"])?));
        assert!(!quick.contains("OUTPOST_SLOW_TESTS=1"), "{quick}");
        Ok(())
    }
}
