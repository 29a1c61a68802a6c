//! The Outpost Console (`ui/`) in the developer commands: its npm dependencies and Vite build,
//! its frontend checks (Prettier, ESLint, svelte-check, Vitest), its end-to-end suite through tauri-driver and
//! WebKitWebDriver under Xvfb (`cargo xtask console-e2e`, and a check of `cargo xtask test`),
//! and opening it on the demo fleet (`cargo xtask demo`, when a display is present).
//!
//! npm runs only here, never from cargo: `ui/build.rs` builds with whatever `ui/dist/` holds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::install::ensure_apt_packages;
use crate::process::{cargo, run, step, succeeds, target_dir};

/// The tauri-driver release the suite drives the console with (2.x: the newest are 3.0
/// alphas).
pub const TAURI_DRIVER_VERSION: &str = "2.1.0";

/// The virtual screen the end-to-end suite runs on (the console's window is 1280×800).
const XVFB_SCREEN: &str = "-screen 0 1280x800x24";

fn ui_dir(repo: &Path) -> PathBuf {
    repo.join("ui")
}

fn npm(repo: &Path) -> Command {
    let mut command = Command::new("npm");
    command.current_dir(ui_dir(repo)).env("CI", "true");
    command
}

/// Node.js and npm from apt when `npm` does not run.
pub fn ensure_node() -> Result<()> {
    if succeeds(Command::new("npm").arg("--version")) {
        return Ok(());
    }
    ensure_apt_packages(&["nodejs", "npm"])
}

/// `npm ci` when `ui/node_modules` is missing or older than `package-lock.json`.
pub fn ensure_npm_dependencies(repo: &Path) -> Result<()> {
    let ui = ui_dir(repo);
    let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let installed = modified(ui.join("node_modules/.package-lock.json"));
    let wanted = modified(ui.join("package-lock.json"));
    if installed.is_some() && installed >= wanted {
        step!("console npm dependencies: up to date");
        return Ok(());
    }
    run(
        "installing the console's npm dependencies (npm ci)",
        npm(repo).args(["ci", "--no-audit", "--no-fund"]),
    )
}

/// Builds the frontend into `ui/dist/` (Vite), which the console binary embeds.
pub fn build_frontend(repo: &Path) -> Result<()> {
    ensure_npm_dependencies(repo)?;
    run("building the console frontend (vite build)", npm(repo).args(["run", "build"]))
}

/// The frontend's own checks: formatting (Prettier), lints (ESLint), TypeScript and Svelte
/// (`svelte-check`), then Vitest.
pub fn frontend_checks(repo: &Path) -> Result<()> {
    ensure_npm_dependencies(repo)?;
    run(
        "checking the console frontend's formatting (prettier)",
        npm(repo).args(["run", "format:check"]),
    )?;
    run("linting the console frontend (eslint)", npm(repo).args(["run", "lint"]))?;
    run("type-checking the console frontend (svelte-check)", npm(repo).args(["run", "check"]))?;
    run("running the console's component tests (vitest)", npm(repo).args(["test"]))
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// tauri-driver, installed with cargo when missing or of another version. (tauri-driver has
/// no `--version`: the version is read from `cargo install --list`.)
pub fn ensure_tauri_driver() -> Result<PathBuf> {
    let path = cargo_bin_dir().join("tauri-driver");
    let listed = cargo()
        .args(["install", "--list"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).to_string())
        .unwrap_or_default();
    let wanted = format!("tauri-driver v{TAURI_DRIVER_VERSION}:");
    if path.is_file() && listed.lines().any(|line| line.trim() == wanted) {
        step!("tauri-driver {TAURI_DRIVER_VERSION}: present");
        return Ok(path);
    }
    run(
        "installing tauri-driver",
        cargo().args([
            "install",
            &format!("tauri-driver@{TAURI_DRIVER_VERSION}"),
            "--locked",
            "--force",
        ]),
    )?;
    Ok(path)
}

/// Whether `driver` runs (it answers `--help`).
fn driver_runs(driver: &Path) -> bool {
    driver.is_file() && succeeds(Command::new(driver).arg("--help"))
}

/// The apt packages the end-to-end suite needs (also in `TEST_APT_PACKAGES`).
pub const E2E_APT_PACKAGES: &[&str] = &["xvfb", "webkit2gtk-driver"];

/// Builds everything the end-to-end suite runs: the frontend, `outpost`, `outpost-agent`,
/// `outpost-console`.
fn build_for_e2e(repo: &Path) -> Result<()> {
    build_frontend(repo)?;
    run(
        "building outpost, outpost-agent and the console",
        cargo().args([
            "build",
            "-p",
            "outpost-control",
            "-p",
            "outpost-agent",
            "-p",
            "outpost-console",
        ]),
    )
}

/// `cargo xtask console-e2e`: installs what is missing (unless `install` is false), builds,
/// and runs `ui/tests/e2e.rs` under `xvfb-run`. Screenshots land in `docs/screenshots/`.
pub fn run_e2e(repo: &Path, install: bool) -> Result<()> {
    let driver = if install {
        ensure_apt_packages(E2E_APT_PACKAGES)?;
        ensure_node()?;
        ensure_tauri_driver()?
    } else {
        cargo_bin_dir().join("tauri-driver")
    };
    if !driver_runs(&driver) {
        bail!(
            "no tauri-driver at {}: run `cargo install tauri-driver@{TAURI_DRIVER_VERSION} --locked`",
            driver.display()
        );
    }
    build_for_e2e(repo)?;
    let mut command = Command::new("xvfb-run");
    command
        .args(["-a", "-s", XVFB_SCREEN])
        .arg(crate::process::cargo_program())
        .args(["test", "-p", "outpost-console", "--test", "e2e", "--", "--ignored", "--nocapture"])
        .env("TAURI_DRIVER", &driver)
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(repo);
    run("running the console end to end (tauri-driver, WebKitWebDriver, Xvfb)", &mut command)
        .context("the console end-to-end suite failed; its output is above")
}

/// Whether a display is there to open a window on.
pub fn has_display() -> bool {
    std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty())
}

/// Opens the console connected to `url` with `token` and waits until its window is closed.
/// Without a display it says so and returns.
pub fn open_on(repo: &Path, url: &str, token: &str) -> Result<String> {
    if !has_display() {
        step!("no DISPLAY: not opening the console (run the demo on a desktop to see it)");
        return Ok("skipped: no display".into());
    }
    ensure_node()?;
    build_frontend(repo)?;
    run("building the console", cargo().args(["build", "-p", "outpost-console"]))?;
    let binary = target_dir().join("debug").join("outpost-console");
    step!("opening the console on {url}; close its window to let the demo finish");
    let status = Command::new(&binary)
        .env("OUTPOST_CONSOLE_URL", url)
        .env("OUTPOST_CONSOLE_TOKEN", token)
        .status()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    if !status.success() {
        bail!("the console exited with {status}");
    }
    Ok("the console was opened and closed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_e2e_runs_under_a_screen_as_big_as_the_window() {
        let config =
            std::fs::read_to_string(crate::process::repo_root().join("ui/tauri.conf.json"))
                .expect("tauri.conf.json");
        assert!(config.contains("\"width\": 1280") && config.contains("\"height\": 800"));
        assert!(XVFB_SCREEN.contains("1280x800"));
        for package in E2E_APT_PACKAGES {
            assert!(crate::install::TEST_APT_PACKAGES.contains(package), "{package}");
        }
    }
}
