//! Installing what the commands need on a Debian or Ubuntu machine: apt packages, rustup
//! targets and the rustfmt/clippy components. Each check looks first and installs only what is
//! missing, so a second run costs a few process starts.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::{cargo, run, step, succeeds};

/// Debian packages `cargo xtask test` needs, and why.
pub const TEST_APT_PACKAGES: &[&str] = &[
    // Cross linkers and qemu for the ARM agent builds and their tests.
    "gcc-aarch64-linux-gnu",
    "gcc-arm-linux-gnueabihf",
    "qemu-user",
    // Building the Tauri console.
    "libwebkit2gtk-4.1-dev",
    "libgtk-3-dev",
    "librsvg2-dev",
    "libayatana-appindicator3-dev",
    // A real MQTT broker for the fleet tests.
    "mosquitto",
    "mosquitto-clients",
    // Driving the console end to end: a virtual display and WebKitWebDriver.
    "xvfb",
    "webkit2gtk-driver",
    // The PostgreSQL storage tests start their own server from these binaries.
    "postgresql",
    // A clock days ahead for one process (`faketime -f +2d outpost serve`): token expiry.
    "faketime",
];

/// The apt package that lets Debian's own `python3` create virtual environments. Only needed
/// when no `python3` on the machine can (a pyenv or python.org build already can).
pub const PYTHON_VENV_APT_PACKAGE: &str = "python3-venv";

/// The ARM targets the agent ships for.
pub const ARM_TARGETS: &[&str] = &["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"];

/// Installs the packages of `wanted` that dpkg does not report as installed: one
/// `apt-get update`, then one `apt-get install`. Without root it prints the command and fails.
pub fn ensure_apt_packages(wanted: &[&str]) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    step!("checking apt packages: {}", wanted.join(" "));
    let missing = missing_apt_packages(wanted)?;
    if missing.is_empty() {
        step!("apt packages: all {} present", wanted.len());
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root()? {
        bail!(
            "these apt packages are missing: {list}\n\
             Install them as root, then run this command again:\n\n    \
             sudo apt-get update && \
             sudo DEBIAN_FRONTEND=noninteractive apt-get install -y {list}\n\n\
             (or pass --no-install to skip all installs)"
        );
    }
    step!("missing apt packages: {list}");
    run("updating the apt package lists", Command::new("apt-get").arg("update"))?;
    run(
        "installing apt packages",
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    let still_missing = missing_apt_packages(wanted)?;
    if !still_missing.is_empty() {
        bail!(
            "apt-get finished but dpkg still lists as not installed: {}",
            still_missing.join(" ")
        );
    }
    Ok(())
}

/// The packages of `wanted` that are not installed, asking dpkg about all of them at once.
fn missing_apt_packages(wanted: &[&str]) -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package}\t${Status}\n")
        .args(wanted)
        .output()
        .context(
            "could not run dpkg-query: installing needs Debian or Ubuntu; elsewhere install the \
             packages listed in xtask/src/install.rs yourself and pass --no-install",
        )?;
    // dpkg-query exits 1 when it knows nothing about some of the packages; they are missing.
    if !matches!(output.status.code(), Some(0 | 1)) {
        bail!(
            "dpkg-query failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let installed = installed_packages(&stdout);
    Ok(wanted
        .iter()
        .filter(|package| !installed.iter().any(|name| name == *package))
        .map(|package| package.to_string())
        .collect())
}

/// The names of installed packages in `dpkg-query -W -f='${Package}\t${Status}\n'` output.
/// A package counts as installed when the status' last word is `installed`; a package known
/// to dpkg but removed (`deinstall ok config-files`, `unknown ok not-installed`) or half
/// installed does not.
fn installed_packages(dpkg_output: &str) -> Vec<&str> {
    dpkg_output
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.split_whitespace().nth(2) == Some("installed"))
        .map(|(package, _)| package.trim())
        .collect()
}

fn is_root() -> Result<bool> {
    let output = Command::new("id").arg("-u").output().context("could not run `id -u`")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Adds the rustup targets of `wanted` that are not installed for the current toolchain.
pub fn ensure_rust_targets(wanted: &[&str]) -> Result<()> {
    step!("checking rustup targets: {}", wanted.join(" "));
    let output = Command::new("rustup").args(["target", "list", "--installed"]).output().context(
        "could not run rustup (install it from https://rustup.rs, or pass --no-install)",
    )?;
    if !output.status.success() {
        bail!(
            "`rustup target list --installed` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let installed = String::from_utf8_lossy(&output.stdout).into_owned();
    let missing = missing_lines(wanted, &installed);
    if missing.is_empty() {
        step!("rustup targets: all present");
        return Ok(());
    }
    run("adding rustup targets", Command::new("rustup").args(["target", "add"]).args(&missing))
}

/// The entries of `wanted` that are not a line of `listing`.
fn missing_lines<'a>(wanted: &[&'a str], listing: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|item| !listing.lines().any(|line| line.trim() == *item))
        .collect()
}

/// Adds the rustfmt and clippy components when `cargo fmt` or `cargo clippy` does not run (a
/// `minimal` rustup profile lacks them).
pub fn ensure_lint_tools() -> Result<()> {
    let fmt = succeeds(cargo().args(["fmt", "--version"]));
    let clippy = succeeds(cargo().args(["clippy", "--version"]));
    if fmt && clippy {
        return Ok(());
    }
    run(
        "adding rustup components",
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_statuses_count_as_installed_only_when_fully_installed() {
        let output = "mosquitto\tinstall ok installed\n\
                      xvfb\tdeinstall ok config-files\n\
                      postgresql\tunknown ok not-installed\n\
                      qemu-user\tinstall ok half-configured\n\
                      libgtk-3-dev\tinstall ok installed\n\
                      libgtk-3-dev\tinstall ok installed\n\
                      garbage line without a tab\n";
        assert_eq!(installed_packages(output), ["mosquitto", "libgtk-3-dev", "libgtk-3-dev"]);
        assert!(installed_packages("").is_empty());
    }

    #[test]
    fn rustup_targets_missing_from_the_listing_are_reported() {
        let listing = "x86_64-unknown-linux-gnu\naarch64-unknown-linux-gnu\n";
        assert_eq!(missing_lines(ARM_TARGETS, listing), ["armv7-unknown-linux-gnueabihf"]);
        let both = "aarch64-unknown-linux-gnu\narmv7-unknown-linux-gnueabihf";
        assert!(missing_lines(ARM_TARGETS, both).is_empty());
        // A prefix of an installed name is not the name.
        assert_eq!(missing_lines(&["aarch64"], listing), ["aarch64"]);
    }

    #[test]
    fn asking_dpkg_about_a_package_that_does_not_exist_says_missing() -> Result<()> {
        if !succeeds(Command::new("dpkg-query").arg("--version")) {
            return Ok(()); // Not a Debian machine; the parser tests above still ran.
        }
        let missing = missing_apt_packages(&["outpost-no-such-package-xyz"])?;
        assert_eq!(missing, ["outpost-no-such-package-xyz"]);
        Ok(())
    }
}
