//! `cargo xtask cross`: the agent for ARM boards — cross builds with the Debian cross linkers,
//! the agent's test subset under qemu-user, and `.deb` packages with a systemd unit.
//!
//! What runs under qemu, why, and how the packages are laid out is written down in
//! `cross/README.md`; this module is the executable version of that page. The linkers and
//! qemu runners themselves are configured in `.cargo/config.toml`, so a plain
//! `cargo test --target aarch64-unknown-linux-gnu` works too once the packages are installed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::install::{ensure_apt_packages, ensure_rust_targets};
use crate::process::{cargo, repo_root, run, step, target_dir};

/// An ARM target the agent ships for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArmTarget {
    /// The name used on the command line and in results: `aarch64`, `armv7`.
    pub short: &'static str,
    pub triple: &'static str,
    /// The Debian architecture of the `.deb`.
    pub deb_arch: &'static str,
    /// The Debian package with the cross gcc (the linker) and binutils (strip).
    pub gcc_package: &'static str,
    /// The GNU tool prefix: `<prefix>-gcc`, `<prefix>-strip`; also the qemu sysroot
    /// `/usr/<prefix>`.
    pub tool_prefix: &'static str,
    /// `e_machine` in the ELF header of the target's binaries.
    pub elf_machine: u16,
}

pub const AARCH64: ArmTarget = ArmTarget {
    short: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    deb_arch: "arm64",
    gcc_package: "gcc-aarch64-linux-gnu",
    tool_prefix: "aarch64-linux-gnu",
    elf_machine: 0xb7,
};

pub const ARMV7: ArmTarget = ArmTarget {
    short: "armv7",
    triple: "armv7-unknown-linux-gnueabihf",
    deb_arch: "armhf",
    gcc_package: "gcc-arm-linux-gnueabihf",
    tool_prefix: "arm-linux-gnueabihf",
    elf_machine: 0x28,
};

/// `e_machine` of x86_64 binaries, for the host build the benchmarks measure.
pub const X86_64_ELF_MACHINE: u16 = 0x3e;

/// The Debian package with qemu-aarch64 and qemu-arm.
const QEMU_APT_PACKAGE: &str = "qemu-user";

/// The agent's package and binary name.
const AGENT: &str = "outpost-agent";

/// Which targets a command works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetChoice {
    Aarch64,
    Armv7,
    All,
}

impl TargetChoice {
    pub fn targets(self) -> Vec<ArmTarget> {
        match self {
            Self::Aarch64 => vec![AARCH64],
            Self::Armv7 => vec![ARMV7],
            Self::All => vec![AARCH64, ARMV7],
        }
    }
}

/// Options of `cargo xtask cross`.
#[derive(Debug, Clone, clap::Args)]
pub struct CrossOptions {
    /// Which ARM target to build.
    #[arg(long, value_enum, default_value_t = TargetChoice::All)]
    pub target: TargetChoice,
    /// Build with the size-tuned release profile (5-12 minutes per target on 2 cores).
    #[arg(long)]
    pub release: bool,
    /// Run the agent's test subset under qemu-user (see cross/README.md).
    #[arg(long)]
    pub test: bool,
    /// Build `target/outpost-agent_<version>_<arch>.deb` and check it (implies --release).
    #[arg(long)]
    pub package: bool,
    /// Install nothing (no apt packages, no rustup targets).
    #[arg(long)]
    pub no_install: bool,
}

/// The cargo profile of a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    /// The device build: cargo's `device` profile (release, dependencies size-tuned harder;
    /// root `Cargo.toml`).
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "device",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Debug => &[],
            Self::Release => &["--profile", "device"],
        }
    }
}

pub fn run_cross(options: &CrossOptions) -> Result<()> {
    let targets = options.target.targets();
    if !options.no_install {
        ensure_cross_tools(&targets)?;
    }
    let profile =
        if options.release || options.package { Profile::Release } else { Profile::Debug };
    let version = if options.package { Some(agent_version()?) } else { None };
    for target in &targets {
        let binary = build_agent(*target, profile)?;
        if options.test {
            run_qemu_tests(*target, Profile::Debug)?;
            run_qemu_crash_test(*target)?;
        }
        if let Some(version) = &version {
            let deb = package(*target, &binary, version)?;
            check_package(
                &deb,
                &PackageExpectation {
                    version,
                    deb_arch: target.deb_arch,
                    elf_machine: target.elf_machine,
                },
            )?;
            step!("{}: {} checked", target.short, deb.display());
        }
    }
    Ok(())
}

/// Installs the cross gcc and qemu-user Debian packages and the rustup targets of `targets`.
pub fn ensure_cross_tools(targets: &[ArmTarget]) -> Result<()> {
    let mut packages: Vec<&str> = targets.iter().map(|target| target.gcc_package).collect();
    packages.push(QEMU_APT_PACKAGE);
    ensure_apt_packages(&packages)?;
    let triples: Vec<&str> = targets.iter().map(|target| target.triple).collect();
    ensure_rust_targets(&triples)
}

/// Extra compiler flags of the device build of the agent for ARM targets.
pub const DEVICE_RUSTFLAGS: &str = "-C force-unwind-tables=no";

/// The environment variable cargo reads target-specific compiler flags from, e.g.
/// `CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS`.
fn target_rustflags_variable(target: ArmTarget) -> String {
    format!("CARGO_TARGET_{}_RUSTFLAGS", target.triple.to_uppercase().replace(['-', '.'], "_"))
}

/// Builds the `outpost-agent` binary for `target` and returns its path.
pub fn build_agent(target: ArmTarget, profile: Profile) -> Result<PathBuf> {
    let started = Instant::now();
    let mut command = cargo();
    command
        .args(["build", "--package", AGENT, "--bin", AGENT, "--target", target.triple])
        .args(profile.args());
    if profile == Profile::Release {
        // The device build panics by aborting (`panic = "abort"`), so unwind tables only serve
        // backtraces; dropping them saves about 0.3 MB of the device's binary. Test builds
        // (which unwind) keep them.
        command.env(target_rustflags_variable(target), DEVICE_RUSTFLAGS);
    }
    run(&format!("building {AGENT} for {} ({})", target.short, profile.dir()), &mut command)?;
    let binary = target_dir().join(target.triple).join(profile.dir()).join(AGENT);
    let size = std::fs::metadata(&binary)
        .with_context(|| format!("the build left no binary at {}", binary.display()))?
        .len();
    step!(
        "{}: built {} ({}) in {}",
        target.short,
        binary.display(),
        megabytes(size),
        seconds(started.elapsed())
    );
    Ok(binary)
}

/// The cargo test invocations that run under qemu for `target`, as documented in
/// cross/README.md: the shared crate's unit tests and its runtime tests on the generated models
/// (tract's kernels are per-architecture, and armv7 has 32-bit `usize`), and the agent's unit
/// tests. The integration tests with brokers and processes stay on the host.
pub fn qemu_test_commands(target: ArmTarget, profile: Profile) -> Vec<Command> {
    let mut shared = cargo();
    shared
        .args(["test", "--target", target.triple])
        .args(profile.args())
        .args(["--package", "outpost-shared", "--features", "runtime", "--lib", "--test"])
        .arg("runtime");
    let mut agent = cargo();
    agent.args(["test", "--target", target.triple]).args(profile.args()).args([
        "--package",
        AGENT,
        "--lib",
    ]);
    vec![shared, agent]
}

/// Runs the qemu test subset for `target` (the runner in `.cargo/config.toml` starts each test
/// binary with `qemu-<arch> -L /usr/<prefix>`).
pub fn run_qemu_tests(target: ArmTarget, profile: Profile) -> Result<()> {
    let started = Instant::now();
    for mut command in qemu_test_commands(target, profile) {
        run(&format!("running {} tests under qemu", target.short), &mut command)?;
    }
    step!("{}: qemu tests passed in {}", target.short, seconds(started.elapsed()));
    Ok(())
}

/// The agent's crash-safety test whose agents run under qemu: a kill at every named install
/// step (`OUTPOST_FAULT=<step>`), then a restart that must serve a verified model and converge.
pub const QEMU_CRASH_TEST: &str =
    "update::a_kill_at_every_install_step_restarts_into_a_verified_model_and_converges";
/// The variables `agent/tests/it/update.rs` reads to start an agent built for another
/// architecture, and the emulator that runs it.
const AGENT_BINARY_ENV: &str = "OUTPOST_AGENT_BINARY";
const AGENT_RUNNER_ENV: &str = "OUTPOST_AGENT_RUNNER";
/// The architecture the test expects the agent's `hello` to report.
const AGENT_ARCH_ENV: &str = "OUTPOST_AGENT_ARCH";

impl ArmTarget {
    /// The qemu-user command line that runs the target's binaries (as in `.cargo/config.toml`).
    pub fn qemu_runner(self) -> String {
        let emulator =
            if self.elf_machine == AARCH64.elf_machine { "qemu-aarch64" } else { "qemu-arm" };
        format!("{emulator} -L /usr/{}", self.tool_prefix)
    }

    /// `std::env::consts::ARCH` of the target's builds: what its agents report in `hello`.
    pub fn rust_arch(self) -> &'static str {
        if self.elf_machine == AARCH64.elf_machine { "aarch64" } else { "arm" }
    }
}

/// The host test run of [`QEMU_CRASH_TEST`] with its agents replaced by `agent` (built for
/// `target`) under qemu; Mosquitto and the test's control side stay native.
pub fn qemu_crash_test_command(target: ArmTarget, agent: &Path) -> Command {
    let mut command = cargo();
    command
        .args(["test", "--package", AGENT, "--test", "it", "--", QEMU_CRASH_TEST, "--exact"])
        .env(AGENT_BINARY_ENV, agent)
        .env(AGENT_RUNNER_ENV, target.qemu_runner())
        .env(AGENT_ARCH_ENV, target.rust_arch());
    command
}

/// Builds the debug agent for `target`, checks it is a binary of that architecture, and runs
/// the fixed-step crash-safety test with it under qemu.
pub fn run_qemu_crash_test(target: ArmTarget) -> Result<()> {
    let started = Instant::now();
    let agent = build_agent(target, Profile::Debug)?;
    let bytes =
        std::fs::read(&agent).with_context(|| format!("could not read {}", agent.display()))?;
    let elf = ElfSummary::parse(&bytes).with_context(|| format!("{}", agent.display()))?;
    ensure!(
        elf.machine == target.elf_machine,
        "{} is for ELF machine {:#x}, not {} ({:#x})",
        agent.display(),
        elf.machine,
        target.short,
        target.elf_machine
    );
    run(
        &format!("the crash-safety fault steps with the {} agent under qemu", target.short),
        &mut qemu_crash_test_command(target, &agent),
    )
    .with_context(|| {
        format!(
            "the {} agent under qemu did not survive a kill at every install step (the test \
             output above names the step; rerun it alone with `cargo xtask cross --target {} \
             --test`)",
            target.short, target.short
        )
    })?;
    step!(
        "{}: crash-safety fault steps passed under qemu in {}",
        target.short,
        seconds(started.elapsed())
    );
    Ok(())
}

/// The agent's version, as cargo reports it (`cargo pkgid` ends in `@<version>` or
/// `#<version>`).
pub fn agent_version() -> Result<String> {
    let output = cargo()
        .args(["pkgid", "--package", AGENT])
        .output()
        .context("could not run `cargo pkgid`")?;
    ensure!(
        output.status.success(),
        "`cargo pkgid --package {AGENT}` failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let pkgid = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let version = pkgid.rsplit(['@', '#']).next().unwrap_or_default();
    ensure!(
        !version.is_empty() && version.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
        "cannot read a version from `{pkgid}`"
    );
    Ok(version.to_string())
}

// ---------------------------------------------------------------------------------------------
// Packaging

/// Where the agent's config file, unit and maintainer scripts live.
fn debian_dir() -> PathBuf {
    repo_root().join("cross").join("debian")
}

/// The data directory the unit's `StateDirectory=outpost` gives the agent.
pub const PACKAGED_DATA_DIR: &str = "/var/lib/outpost";

/// Files the package installs, with their modes, besides the binary.
const PACKAGED_CONFIG: &str = "etc/outpost/agent.toml";
const PACKAGED_UNIT: &str = "lib/systemd/system/outpost-agent.service";
const PACKAGED_BINARY: &str = "usr/bin/outpost-agent";
const PACKAGED_COPYRIGHT: &str = "usr/share/doc/outpost-agent/copyright";
const PACKAGED_README: &str = "usr/share/doc/outpost-agent/README.md";
const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// What goes into one package.
#[derive(Debug)]
pub struct PackageInputs<'a> {
    pub binary: &'a Path,
    /// The agent's example config (`agent/agent.example.toml`), installed as a conffile with
    /// `data_dir` pinned to [`PACKAGED_DATA_DIR`].
    pub config: &'a Path,
    pub version: &'a str,
    pub deb_arch: &'a str,
    /// `<prefix>-strip` for the binary's architecture.
    pub strip: &'a str,
}

/// Stages and builds `target/outpost-agent_<version>_<arch>.deb` from a release binary.
pub fn package(target: ArmTarget, binary: &Path, version: &str) -> Result<PathBuf> {
    let out = target_dir().join(format!("{AGENT}_{version}_{}.deb", target.deb_arch));
    let stage = target_dir().join("cross-package").join(target.deb_arch);
    let strip = format!("{}-strip", target.tool_prefix);
    let config = repo_root().join("agent").join("agent.example.toml");
    build_deb(
        &PackageInputs {
            binary,
            config: &config,
            version,
            deb_arch: target.deb_arch,
            strip: &strip,
        },
        &stage,
        &out,
    )?;
    Ok(out)
}

/// Assembles the package tree in `stage` (emptied first) and runs `dpkg-deb --build` into
/// `out`.
pub fn build_deb(inputs: &PackageInputs<'_>, stage: &Path, out: &Path) -> Result<()> {
    step!("staging the {} package in {}", inputs.deb_arch, stage.display());
    if stage.exists() {
        std::fs::remove_dir_all(stage)
            .with_context(|| format!("could not empty {}", stage.display()))?;
    }
    let debian = debian_dir();
    let binary = install_file(inputs.binary, stage, PACKAGED_BINARY, 0o755)?;
    run("stripping the binary", Command::new(inputs.strip).arg("--strip-all").arg(&binary))?;
    let example = std::fs::read_to_string(inputs.config)
        .with_context(|| format!("could not read the agent config {}", inputs.config.display()))?;
    let config = pin_data_dir(&example, PACKAGED_DATA_DIR)
        .with_context(|| format!("in {}", inputs.config.display()))?;
    write_file(stage, PACKAGED_CONFIG, config.as_bytes(), 0o640)?;
    install_file(&debian.join("outpost-agent.service"), stage, PACKAGED_UNIT, 0o644)?;
    install_file(&debian.join("copyright"), stage, PACKAGED_COPYRIGHT, 0o644)?;
    install_file(&repo_root().join("cross").join("README.md"), stage, PACKAGED_README, 0o644)?;

    for script in MAINTAINER_SCRIPTS {
        install_file(&debian.join(script), stage, &format!("DEBIAN/{script}"), 0o755)?;
    }
    write_file(stage, "DEBIAN/conffiles", format!("/{PACKAGED_CONFIG}\n").as_bytes(), 0o644)?;
    let binary_bytes =
        std::fs::read(&binary).with_context(|| format!("could not read {}", binary.display()))?;
    let glibc = glibc_requirement(&binary_bytes);
    let template = std::fs::read_to_string(debian.join("control"))
        .context("could not read cross/debian/control")?;
    let control = render_control(
        &template,
        &ControlValues {
            version: inputs.version,
            deb_arch: inputs.deb_arch,
            installed_size_kib: installed_size_kib(stage)?,
            depends: &depends(glibc),
        },
    )?;
    write_file(stage, "DEBIAN/control", control.as_bytes(), 0o644)?;
    write_md5sums(stage)?;

    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
    }
    run(
        &format!("building {}", out.display()),
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(stage)
            .arg(out),
    )
}

/// Copies `source` to `stage/relative` with `mode`, creating folders; returns the new path.
fn install_file(source: &Path, stage: &Path, relative: &str, mode: u32) -> Result<PathBuf> {
    let bytes =
        std::fs::read(source).with_context(|| format!("could not read {}", source.display()))?;
    write_file(stage, relative, &bytes, mode)
}

fn write_file(stage: &Path, relative: &str, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;

    let path = stage.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("could not create {}", parent.display()))?;
        // dpkg-deb refuses control folders with modes other than 0755..0775.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("could not set the mode of {}", parent.display()))?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("could not write {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not set the mode of {}", path.display()))?;
    Ok(path)
}

/// The example config with its top-level `data_dir` set to `data_dir`, so the packaged agent
/// writes where the unit lets it (`ProtectSystem=strict` leaves only the state directory).
pub fn pin_data_dir(config: &str, data_dir: &str) -> Result<String> {
    let mut found = 0;
    let mut pinned: String = config
        .lines()
        .map(|line| {
            if line.split('=').next().is_some_and(|key| key.trim() == "data_dir") {
                found += 1;
                format!("data_dir = \"{data_dir}\"")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    pinned.push('\n');
    ensure!(found == 1, "expected one top-level `data_dir = …` line, found {found}");
    Ok(pinned)
}

/// The newest `GLIBC_x.y` symbol version a dynamically linked binary asks for.
pub fn glibc_requirement(binary: &[u8]) -> Option<(u32, u32)> {
    const TAG: &[u8] = b"GLIBC_";
    let mut newest = None;
    let mut rest = binary;
    while let Some(at) = rest.windows(TAG.len()).position(|window| window == TAG) {
        rest = &rest[at + TAG.len()..];
        let digits: Vec<u8> = rest
            .iter()
            .copied()
            .take_while(|byte| byte.is_ascii_digit() || *byte == b'.')
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.');
        let major = parts.next().and_then(|part| part.parse::<u32>().ok());
        let minor = parts.next().and_then(|part| part.parse::<u32>().ok()).unwrap_or(0);
        if let Some(major) = major {
            newest = newest.max(Some((major, minor)));
        }
    }
    newest
}

fn depends(glibc: Option<(u32, u32)>) -> String {
    // adduser (or passwd's useradd) creates the `outpost` user in postinst.
    match glibc {
        Some((major, minor)) => format!("libc6 (>= {major}.{minor}), adduser | passwd"),
        None => "adduser | passwd".to_string(),
    }
}

/// Values filled into `cross/debian/control`.
#[derive(Debug)]
pub struct ControlValues<'a> {
    pub version: &'a str,
    pub deb_arch: &'a str,
    pub installed_size_kib: u64,
    pub depends: &'a str,
}

/// Fills the `{version}`, `{arch}`, `{installed_size}` and `{depends}` placeholders.
pub fn render_control(template: &str, values: &ControlValues<'_>) -> Result<String> {
    let rendered = template
        .replace("{version}", values.version)
        .replace("{arch}", values.deb_arch)
        .replace("{installed_size}", &values.installed_size_kib.to_string())
        .replace("{depends}", values.depends);
    ensure!(!rendered.contains('{'), "cross/debian/control has an unknown placeholder");
    ensure!(rendered.ends_with('\n'), "cross/debian/control must end with a newline");
    Ok(rendered)
}

/// The installed size in KiB, as dpkg counts it: every file rounded up to a KiB.
fn installed_size_kib(stage: &Path) -> Result<u64> {
    Ok(payload_files(stage)?.iter().map(|(_, size)| size.div_ceil(1024)).sum::<u64>().max(1))
}

/// The files outside `DEBIAN/`, relative to `stage`, with their sizes, sorted.
fn payload_files(stage: &Path) -> Result<Vec<(String, u64)>> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, u64)>) -> Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?
        {
            let entry = entry?;
            let path = entry.path();
            let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
            if relative == "DEBIAN" {
                continue;
            }
            let metadata = entry.metadata()?;
            if metadata.is_dir() {
                walk(root, &path, files)?;
            } else {
                files.push((relative, metadata.len()));
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(stage, stage, &mut files)?;
    files.sort();
    Ok(files)
}

/// `DEBIAN/md5sums` for every payload file but the conffile (dpkg tracks that one itself).
fn write_md5sums(stage: &Path) -> Result<()> {
    let files: Vec<String> = payload_files(stage)?
        .into_iter()
        .map(|(relative, _)| relative)
        .filter(|relative| relative != PACKAGED_CONFIG)
        .collect();
    let output = Command::new("md5sum")
        .current_dir(stage)
        .args(&files)
        .output()
        .context("could not run md5sum")?;
    ensure!(output.status.success(), "md5sum failed: {}", String::from_utf8_lossy(&output.stderr));
    write_file(stage, "DEBIAN/md5sums", &output.stdout, 0o644)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Checking a built package

/// What a package must say about itself.
#[derive(Debug)]
pub struct PackageExpectation<'a> {
    pub version: &'a str,
    pub deb_arch: &'a str,
    pub elf_machine: u16,
}

/// Unit keys the agent's service must set, with their values (`None`: any value).
const REQUIRED_UNIT_KEYS: &[(&str, Option<&str>)] = &[
    ("Type", Some("notify")),
    ("ExecStart", Some("/usr/bin/outpost-agent run --config /etc/outpost/agent.toml")),
    ("WatchdogSec", None),
    ("Restart", Some("always")),
    ("RestartSec", None),
    ("User", Some("outpost")),
    ("StateDirectory", Some("outpost")),
    ("NoNewPrivileges", Some("yes")),
    ("ProtectSystem", Some("strict")),
    ("ProtectHome", Some("yes")),
    ("PrivateTmp", Some("yes")),
    ("StandardError", Some("journal")),
    ("WantedBy", Some("multi-user.target")),
];

/// Keys newer than Debian 12's systemd 252, which ignores them with a warning.
const KEYS_NEWER_THAN_SYSTEMD_252: &[&str] = &["RestartSteps", "RestartMaxDelaySec"];

/// Inspects `deb` with `dpkg-deb --field/--contents/--info` and checks control fields, the
/// file list with owners and modes, the conffile, the maintainer scripts, the binary (ELF
/// machine, stripped) and the systemd unit (required keys; `systemd-analyze verify` when
/// installed).
pub fn check_package(deb: &Path, expected: &PackageExpectation<'_>) -> Result<()> {
    step!("checking {}", deb.display());
    let fields = dpkg_deb(&["--field"], deb)?;
    let field = |name: &str| {
        fields.lines().find_map(|line| {
            line.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(':'))
                .map(|value| value.trim().to_string())
        })
    };
    let wanted = [
        ("Package", Some(AGENT)),
        ("Version", Some(expected.version)),
        ("Architecture", Some(expected.deb_arch)),
        ("Maintainer", None),
        ("Installed-Size", None),
        ("Depends", None),
        ("Description", None),
    ];
    for (name, value) in wanted {
        let actual = field(name).with_context(|| format!("control has no {name} field"))?;
        if let Some(value) = value {
            ensure!(actual == value, "control field {name} is `{actual}`, expected `{value}`");
        }
    }
    let depends = field("Depends").unwrap_or_default();
    ensure!(depends.contains("libc6 (>="), "Depends names no libc6 version: `{depends}`");

    let contents = dpkg_deb(&["--contents"], deb)?;
    let listing = parse_contents(&contents);
    let expected_files = [
        (PACKAGED_BINARY, "-rwxr-xr-x"),
        (PACKAGED_CONFIG, "-rw-r-----"),
        (PACKAGED_UNIT, "-rw-r--r--"),
        (PACKAGED_COPYRIGHT, "-rw-r--r--"),
        (PACKAGED_README, "-rw-r--r--"),
    ];
    let files: Vec<&ListedEntry> = listing.iter().filter(|entry| !entry.is_dir()).collect();
    ensure!(
        files.len() == expected_files.len(),
        "the package holds {} files, expected {}:\n{contents}",
        files.len(),
        expected_files.len()
    );
    for (path, mode) in expected_files {
        let entry = files
            .iter()
            .find(|entry| entry.path == path)
            .with_context(|| format!("the package lacks /{path}:\n{contents}"))?;
        ensure!(entry.mode == mode, "/{path} has mode {}, expected {mode}", entry.mode);
    }
    for entry in &listing {
        ensure!(entry.owner == "root/root", "/{} is owned by {}", entry.path, entry.owner);
    }

    let conffiles = dpkg_deb_info(deb, "conffiles")?;
    ensure!(
        conffiles.lines().any(|line| line.trim() == format!("/{PACKAGED_CONFIG}")),
        "/{PACKAGED_CONFIG} is not a conffile"
    );
    for script in MAINTAINER_SCRIPTS {
        let text = dpkg_deb_info(deb, script)?;
        ensure!(text.starts_with("#!/bin/sh"), "{script} is not a /bin/sh script");
    }
    let postinst = dpkg_deb_info(deb, "postinst")?;
    ensure!(postinst.contains("adduser") && postinst.contains("useradd"), "postinst adds no user");
    ensure!(postinst.contains("enable"), "postinst does not enable the service");
    ensure!(dpkg_deb_info(deb, "prerm")?.contains("stop"), "prerm does not stop the service");
    ensure!(dpkg_deb_info(deb, "postrm")?.contains("purge"), "postrm does not handle purge");

    let extracted = tempfile::tempdir().context("could not make a temp dir")?;
    run_capturing(Command::new("dpkg-deb").arg("--extract").arg(deb).arg(extracted.path()))?;
    let binary = std::fs::read(extracted.path().join(PACKAGED_BINARY))
        .context("could not read the extracted binary")?;
    let elf = ElfSummary::parse(&binary).context("the packaged binary")?;
    ensure!(
        elf.machine == expected.elf_machine,
        "the packaged binary is for ELF machine {:#x}, expected {:#x} ({})",
        elf.machine,
        expected.elf_machine,
        expected.deb_arch
    );
    ensure!(!elf.has_symbol_table, "the packaged binary is not stripped");
    let config = std::fs::read_to_string(extracted.path().join(PACKAGED_CONFIG))
        .context("could not read the extracted config")?;
    ensure!(
        config.lines().any(|line| line == format!("data_dir = \"{PACKAGED_DATA_DIR}\"")),
        "the packaged config does not keep data in {PACKAGED_DATA_DIR}"
    );
    check_unit(&extracted.path().join(PACKAGED_UNIT), &extracted.path().join(PACKAGED_BINARY))
}

/// Checks the unit's required keys and, when `systemd-analyze` is installed, verifies it, with
/// `ExecStart=` pointed at `binary` (verify insists the program exists and is executable).
pub fn check_unit(unit: &Path, binary: &Path) -> Result<()> {
    let text = std::fs::read_to_string(unit)
        .with_context(|| format!("could not read {}", unit.display()))?;
    let keys = unit_keys(&text);
    for (key, value) in REQUIRED_UNIT_KEYS {
        let actual = keys
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
            .with_context(|| format!("the unit sets no {key}="))?;
        if let Some(value) = value {
            ensure!(actual == *value, "the unit sets {key}={actual}, expected {key}={value}");
        }
    }
    if !crate::process::succeeds(Command::new("systemd-analyze").arg("--version")) {
        step!("systemd-analyze is not installed: checked the unit's keys only");
        return Ok(());
    }
    let dir = tempfile::tempdir().context("could not make a temp dir")?;
    let copy = dir.path().join("outpost-agent.service");
    let rewritten = text
        .replace("ExecStart=/usr/bin/outpost-agent ", &format!("ExecStart={} ", binary.display()));
    std::fs::write(&copy, rewritten).context("could not write the unit copy")?;
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .context("could not run systemd-analyze")?;
    let complaints = unit_complaints(&String::from_utf8_lossy(&output.stderr));
    ensure!(
        output.status.success() && complaints.is_empty(),
        "systemd-analyze verify rejects the unit ({}):\n{}",
        output.status,
        complaints.join("\n")
    );
    step!("systemd-analyze verify: the unit is valid");
    Ok(())
}

/// The lines of `systemd-analyze verify` output that are real problems: everything but the
/// warnings about keys newer than Debian 12's systemd.
fn unit_complaints(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter(|line| {
            !KEYS_NEWER_THAN_SYSTEMD_252
                .iter()
                .any(|key| line.contains(&format!("Unknown key '{key}'")))
        })
        .map(str::to_string)
        .collect()
}

/// `Key=value` pairs of a unit file, in order, without comments.
fn unit_keys(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// One entry of `dpkg-deb --contents` (a `tar -tv` listing).
#[derive(Debug, PartialEq, Eq)]
struct ListedEntry {
    mode: String,
    owner: String,
    /// Without the leading `./`; folders end in `/`.
    path: String,
}

impl ListedEntry {
    fn is_dir(&self) -> bool {
        self.mode.starts_with('d')
    }
}

fn parse_contents(listing: &str) -> Vec<ListedEntry> {
    listing
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            // mode owner size date time path
            let path = words.get(5)?.trim_start_matches("./").to_string();
            Some(ListedEntry { mode: words[0].to_string(), owner: words[1].to_string(), path })
        })
        .filter(|entry| !entry.path.is_empty())
        .collect()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> Result<String> {
    run_capturing(Command::new("dpkg-deb").args(args).arg(deb))
}

fn dpkg_deb_info(deb: &Path, member: &str) -> Result<String> {
    run_capturing(Command::new("dpkg-deb").arg("--info").arg(deb).arg(member))
        .with_context(|| format!("the package has no control member `{member}`"))
}

/// Runs `command` and returns its stdout; fails with its stderr.
fn run_capturing(command: &mut Command) -> Result<String> {
    let line = crate::process::display(command);
    let output = command.output().with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What the checks need from an ELF header.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfSummary {
    pub machine: u16,
    /// A `.symtab` section: the binary is not stripped.
    pub has_symbol_table: bool,
}

impl ElfSummary {
    /// Reads a little-endian ELF file's machine and section types.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        ensure!(bytes.get(..4) == Some(b"\x7fELF".as_slice()), "not an ELF file");
        ensure!(bytes.get(5) == Some(&1), "not a little-endian ELF file");
        let wide = match bytes.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => bail!("unknown ELF class"),
        };
        let u16_at = |at: usize| -> Result<u16> {
            let slice = bytes.get(at..at + 2).context("truncated ELF file")?;
            Ok(u16::from_le_bytes([slice[0], slice[1]]))
        };
        let u32_at = |at: usize| -> Result<u32> {
            let slice = bytes.get(at..at + 4).context("truncated ELF file")?;
            Ok(u32::from_le_bytes([slice[0], slice[1], slice[2], slice[3]]))
        };
        let u64_at = |at: usize| -> Result<u64> {
            let slice = bytes.get(at..at + 8).context("truncated ELF file")?;
            let mut word = [0; 8];
            word.copy_from_slice(slice);
            Ok(u64::from_le_bytes(word))
        };
        let machine = u16_at(18)?;
        let (section_offset, entry_size, count) = if wide {
            (u64_at(40)?, u16_at(58)?, u16_at(60)?)
        } else {
            (u64::from(u32_at(32)?), u16_at(46)?, u16_at(48)?)
        };
        const SHT_SYMTAB: u32 = 2;
        let mut has_symbol_table = false;
        for index in 0..u64::from(count) {
            let at = usize::try_from(section_offset + index * u64::from(entry_size))
                .context("ELF section table out of range")?;
            has_symbol_table |= u32_at(at + 4)? == SHT_SYMTAB;
        }
        Ok(Self { machine, has_symbol_table })
    }
}

// ---------------------------------------------------------------------------------------------
// Display helpers shared with the benchmarks

pub fn megabytes(bytes: u64) -> String {
    format!("{:.2} MB", bytes as f64 / 1_000_000.0)
}

pub fn seconds(elapsed: Duration) -> String {
    format!("{:.1} s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{display, succeeds};

    #[test]
    fn the_qemu_subset_is_the_documented_one() {
        let commands: Vec<String> =
            qemu_test_commands(AARCH64, Profile::Debug).iter().map(display).collect();
        assert_eq!(
            commands,
            [
                "cargo test --target aarch64-unknown-linux-gnu --package outpost-shared \
                 --features runtime --lib --test runtime",
                "cargo test --target aarch64-unknown-linux-gnu --package outpost-agent --lib",
            ]
        );
        let readme =
            std::fs::read_to_string(repo_root().join("cross/README.md")).expect("cross/README.md");
        for command in &commands {
            let documented = command.replace("aarch64-unknown-linux-gnu", "<triple>");
            assert!(readme.contains(&documented), "cross/README.md must show `{documented}`");
        }
    }

    #[test]
    fn the_crash_test_runs_the_arm_agent_under_qemu() {
        let agent = Path::new("/t/aarch64-unknown-linux-gnu/debug/outpost-agent");
        let command = display(&qemu_crash_test_command(AARCH64, agent));
        assert_eq!(
            command,
            format!(
                "OUTPOST_AGENT_ARCH=aarch64 OUTPOST_AGENT_BINARY={} \
                 OUTPOST_AGENT_RUNNER='qemu-aarch64 -L /usr/aarch64-linux-gnu' cargo test \
                 --package outpost-agent --test it -- {QEMU_CRASH_TEST} --exact",
                agent.display()
            )
        );
        assert_eq!(ARMV7.qemu_runner(), "qemu-arm -L /usr/arm-linux-gnueabihf");
        assert_eq!(ARMV7.rust_arch(), "arm");
        let readme =
            std::fs::read_to_string(repo_root().join("cross/README.md")).expect("cross/README.md");
        assert!(readme.contains(QEMU_CRASH_TEST), "cross/README.md names the crash test");
    }

    #[test]
    fn the_packaged_config_keeps_its_data_in_the_state_directory() -> Result<()> {
        let config = "# comment about data_dir\ndata_dir = \"/var/lib/x\"\n[api]\nlisten = \"a\"\n";
        let pinned = pin_data_dir(config, "/var/lib/outpost")?;
        assert_eq!(
            pinned,
            "# comment about data_dir\ndata_dir = \"/var/lib/outpost\"\n[api]\nlisten = \"a\"\n"
        );
        assert!(pin_data_dir("[api]\n", "/x").is_err());
        let example = std::fs::read_to_string(repo_root().join("agent/agent.example.toml"))?;
        pin_data_dir(&example, PACKAGED_DATA_DIR)?;
        Ok(())
    }

    #[test]
    fn the_newest_glibc_version_is_found() {
        let bytes = b"\0GLIBC_2.17\0GLIBC_2.34\0GLIBC_PRIVATE\0GLIBC_2.4\0GLIBC_2.28\0";
        assert_eq!(glibc_requirement(bytes), Some((2, 34)));
        assert_eq!(glibc_requirement(b"static"), None);
        assert_eq!(depends(Some((2, 34))), "libc6 (>= 2.34), adduser | passwd");
    }

    #[test]
    fn control_placeholders_are_all_filled() -> Result<()> {
        let template = std::fs::read_to_string(debian_dir().join("control"))?;
        let values = ControlValues {
            version: "1.2.3",
            deb_arch: "arm64",
            installed_size_kib: 11_000,
            depends: "libc6 (>= 2.34), adduser | passwd",
        };
        let control = render_control(&template, &values)?;
        assert!(control.contains("\nVersion: 1.2.3\n"), "{control}");
        assert!(control.contains("\nArchitecture: arm64\n"), "{control}");
        assert!(control.contains("\nInstalled-Size: 11000\n"), "{control}");
        assert!(render_control("Package: x {nope}\n", &values).is_err());
        Ok(())
    }

    #[test]
    fn tar_listings_parse() {
        let listing = "drwxr-xr-x root/root         0 2026-01-01 00:00 ./\n\
                       -rwxr-xr-x root/root  11000000 2026-01-01 00:00 ./usr/bin/outpost-agent\n";
        assert_eq!(
            parse_contents(listing),
            [ListedEntry {
                mode: "-rwxr-xr-x".into(),
                owner: "root/root".into(),
                path: "usr/bin/outpost-agent".into()
            }]
        );
    }

    #[test]
    fn verify_warnings_about_newer_keys_are_tolerated_and_others_are_not() {
        let stderr = "/x/outpost-agent.service:27: Unknown key 'RestartSteps' in section [Service], ignoring.\n\
                      /x/outpost-agent.service:30: Unknown key 'Bogus' in section [Service], ignoring.\n";
        assert_eq!(
            unit_complaints(stderr),
            ["/x/outpost-agent.service:30: Unknown key 'Bogus' in section [Service], ignoring."]
        );
    }

    #[test]
    fn elf_headers_name_the_machine() -> Result<()> {
        // The test binary itself: built for the host, with a symbol table (debug profile).
        let me = std::fs::read(std::env::current_exe()?)?;
        let summary = ElfSummary::parse(&me)?;
        #[cfg(target_arch = "x86_64")]
        assert_eq!(summary.machine, X86_64_ELF_MACHINE);
        assert!(ElfSummary::parse(b"#!/bin/sh\n").is_err());
        assert!(ElfSummary::parse(b"\x7fELF\x02\x01").is_err(), "truncated");
        Ok(())
    }

    /// Runs a maintainer script with `/bin/sh` and a PATH of stubs that log their arguments;
    /// `getent` answers `user_exists`. Returns the logged calls, one per line.
    fn run_script_with_stubs(script: &str, args: &[&str], user_exists: bool) -> Result<String> {
        use std::os::unix::fs::PermissionsExt as _;

        let dir = tempfile::tempdir()?;
        let log = dir.path().join("calls.log");
        let stubs = dir.path().join("bin");
        std::fs::create_dir(&stubs)?;
        let stub = |name: &str, code: u8| -> Result<()> {
            let path = stubs.join(name);
            let text =
                format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {code}\n", log.display());
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            Ok(())
        };
        stub("getent", if user_exists { 0 } else { 2 })?;
        for name in [
            "addgroup",
            "adduser",
            "groupadd",
            "useradd",
            "chown",
            "chmod",
            "systemctl",
            "deb-systemd-helper",
            "deb-systemd-invoke",
            "rm",
        ] {
            // Every stub succeeds, so `was-enabled` answers "yes" and the unit is enabled.
            stub(name, 0)?;
        }
        let output = Command::new("/bin/sh")
            .arg(debian_dir().join(script))
            .args(args)
            .env_clear()
            .env("PATH", &stubs)
            .output()?;
        ensure!(
            output.status.success(),
            "{script} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(std::fs::read_to_string(&log).unwrap_or_default())
    }

    #[test]
    fn postinst_creates_the_user_hands_it_the_config_and_enables_the_unit() -> Result<()> {
        let calls = run_script_with_stubs("postinst", &["configure", ""], false)?;
        let expected_start = [
            "getent group outpost",
            "addgroup --system --quiet outpost",
            "getent passwd outpost",
            "adduser --system --quiet --ingroup outpost --home /var/lib/outpost \
             --no-create-home --shell /usr/sbin/nologin --gecos Outpost device agent outpost",
            "chown root:outpost /etc/outpost /etc/outpost/agent.toml",
            "chmod 0750 /etc/outpost",
            "chmod 0640 /etc/outpost/agent.toml",
            "deb-systemd-helper unmask outpost-agent.service",
            "deb-systemd-helper --quiet was-enabled outpost-agent.service",
            "deb-systemd-helper enable outpost-agent.service",
        ];
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(&lines[..expected_start.len()], expected_start, "{calls}");
        // systemctl runs only where systemd is the running init.
        let systemd_runs = Path::new("/run/systemd/system").is_dir();
        assert_eq!(
            calls.contains("systemctl start outpost-agent.service"),
            systemd_runs,
            "{calls}"
        );

        let again = run_script_with_stubs("postinst", &["configure", "0.1.0"], true)?;
        assert!(!again.contains("adduser") && !again.contains("addgroup"), "{again}");
        Ok(())
    }

    #[test]
    fn prerm_and_postrm_stop_forget_and_purge() -> Result<()> {
        let upgrade = run_script_with_stubs("prerm", &["upgrade", "0.2.0"], true)?;
        assert!(!upgrade.contains("stop"), "an upgrade keeps the agent serving: {upgrade}");
        let remove = run_script_with_stubs("postrm", &["remove"], true)?;
        assert!(remove.contains("deb-systemd-helper mask outpost-agent.service"), "{remove}");
        let purge = run_script_with_stubs("postrm", &["purge"], true)?;
        assert!(purge.contains("deb-systemd-helper purge outpost-agent.service"), "{purge}");
        assert!(purge.contains("rm -rf /var/lib/outpost"), "{purge}");
        assert!(!remove.contains("rm "), "remove keeps the agent's state: {remove}");
        for script in MAINTAINER_SCRIPTS {
            let text = std::fs::read_to_string(debian_dir().join(script))?;
            assert!(text.starts_with("#!/bin/sh\n") && text.contains("set -e\n"), "{script}");
        }
        Ok(())
    }

    /// The whole packaging path on a stand-in binary (a host build is not an ARM release build,
    /// which takes minutes): stage, `dpkg-deb --build`, then every check `cargo xtask cross
    /// --package` runs on the real packages, and a mislabelled architecture is refused.
    #[test]
    fn a_package_built_from_the_cross_files_passes_its_checks() -> Result<()> {
        if !succeeds(Command::new("dpkg-deb").arg("--version")) {
            return Ok(()); // Not a Debian machine; the parsers above still ran.
        }
        let host = match std::env::consts::ARCH {
            "x86_64" => ("amd64", X86_64_ELF_MACHINE),
            "aarch64" => ("arm64", AARCH64.elf_machine),
            _ => return Ok(()),
        };
        let dir = tempfile::tempdir()?;
        // An ELF binary for this machine with a symbol table, so stripping is exercised too.
        let binary = std::env::current_exe()?;
        let deb = dir.path().join("outpost-agent_9.8.7_test.deb");
        let config = repo_root().join("agent/agent.example.toml");
        build_deb(
            &PackageInputs {
                binary: &binary,
                config: &config,
                version: "9.8.7",
                deb_arch: host.0,
                strip: "strip",
            },
            &dir.path().join("stage"),
            &deb,
        )?;
        check_package(
            &deb,
            &PackageExpectation { version: "9.8.7", deb_arch: host.0, elf_machine: host.1 },
        )?;
        let mislabelled = PackageExpectation {
            version: "9.8.7",
            deb_arch: host.0,
            elf_machine: ARMV7.elf_machine,
        };
        let error = check_package(&deb, &mislabelled).expect_err("wrong machine");
        assert!(format!("{error:#}").contains("ELF machine"), "{error:#}");
        let wrong_version =
            PackageExpectation { version: "1.0.0", deb_arch: host.0, elf_machine: host.1 };
        assert!(check_package(&deb, &wrong_version).is_err());
        Ok(())
    }

    #[test]
    fn device_rustflags_go_to_the_targets_variable() {
        assert_eq!(
            super::target_rustflags_variable(super::AARCH64),
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS"
        );
        assert_eq!(
            super::target_rustflags_variable(super::ARMV7),
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS"
        );
    }
}
