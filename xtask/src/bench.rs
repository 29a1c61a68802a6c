//! `cargo xtask bench agent`: builds the agent and its benchmark engine
//! (`agent/examples/bench_agent.rs`) in the `device` profile (release, dependencies size-tuned
//! harder), builds the ARM device binaries for their sizes, runs the engine, judges the
//! figures against the targets of issue 3, and writes
//! `docs/results/agent-<date>.json` and the generated part of `docs/benchmarks.md`.
//!
//! The engine measures; this module only builds, collects and reports. It reads the engine's
//! `bench kind=… key=value …` lines, so xtask stays free of the product crates.

mod drift;
mod ingest;
mod report;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::cross::{self, AARCH64, ARMV7, ElfSummary, Profile, X86_64_ELF_MACHINE};
use crate::process::{cargo, display, repo_root, run, step, target_dir};
use report::{BinarySize, Record, Report, RunInfo};

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The device agent: bare model vs Runtime vs REST, memory, cold start, binary sizes.
    Agent,
    /// The control's statistics ingest against a bare subscriber (see `bench/ingest.rs`).
    Ingest,
    /// Fleet drift from stored aggregates (see `bench/drift.rs`).
    Drift,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    #[arg(value_enum)]
    pub suite: Suite,
    /// Do not build the ARM release binaries (5-12 minutes each); report the sizes of those a
    /// previous `cargo xtask cross --release` left, if any.
    #[arg(long)]
    pub skip_cross: bool,
    /// Install nothing (no apt packages, no rustup targets).
    #[arg(long)]
    pub no_install: bool,
    /// Interleaved rounds per model (each runs a block of calls of every subject).
    #[arg(long, default_value_t = 40)]
    pub rounds: usize,
    /// Only these models (comma-separated), e.g. `--models mlp_classifier`.
    #[arg(long)]
    pub models: Option<String>,
    /// Fail when a figure misses its target (it is always reported).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub ingest: ingest::IngestOptions,
    #[command(flatten)]
    pub drift: drift::DriftOptions,
}

pub fn run_bench(options: &BenchOptions) -> Result<()> {
    match options.suite {
        Suite::Agent => bench_agent(options),
        Suite::Ingest => ingest::bench_ingest(&options.ingest, options.no_install, options.check),
        Suite::Drift => drift::bench_drift(&options.drift, options.check),
    }
}

fn bench_agent(options: &BenchOptions) -> Result<()> {
    let started = Instant::now();
    run(
        "building the agent and the benchmark engine (device profile)",
        cargo().args([
            "build",
            "--profile",
            "device",
            "--package",
            "outpost-agent",
            "--bin",
            "outpost-agent",
            "--example",
            "bench_agent",
        ]),
    )?;
    let host_build_seconds = started.elapsed().as_secs_f64();
    let release = target_dir().join("device");
    let agent_bin = release.join("outpost-agent");
    let mut sizes = vec![binary_size("x86_64", &agent_bin, X86_64_ELF_MACHINE, "strip")?];
    let mut build_seconds = vec![("x86_64".to_string(), host_build_seconds)];

    let arm = [AARCH64, ARMV7];
    if options.skip_cross {
        step!("--skip-cross: using ARM release binaries left by `cargo xtask cross --release`");
        for target in arm {
            let binary = target_dir().join(target.triple).join("device").join("outpost-agent");
            if binary.exists() {
                sizes.push(binary_size(target.short, &binary, target.elf_machine, &strip(target))?);
            } else {
                step!("{}: no release binary at {}", target.short, binary.display());
            }
        }
    } else {
        if !options.no_install {
            cross::ensure_cross_tools(&arm)?;
        }
        for target in arm {
            let started = Instant::now();
            let binary = cross::build_agent(target, Profile::Release)?;
            build_seconds.push((target.short.to_string(), started.elapsed().as_secs_f64()));
            sizes.push(binary_size(target.short, &binary, target.elf_machine, &strip(target))?);
        }
    }

    let mut engine = Command::new(release.join("examples").join("bench_agent"));
    engine.arg("--agent-bin").arg(&agent_bin).arg("--rounds").arg(options.rounds.to_string());
    if let Some(models) = &options.models {
        engine.arg("--models").arg(models);
    }
    step!("running the benchmarks: {}", display(&engine));
    let output = engine
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("could not start the benchmark engine")?;
    ensure!(output.status.success(), "the benchmark engine failed ({})", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let records: Vec<Record> = stdout.lines().filter_map(Record::parse).collect();
    ensure!(!records.is_empty(), "the benchmark engine reported nothing:\n{stdout}");

    let info = run_info(options.rounds, build_seconds)?;
    let report = Report::new(info, records, sizes);
    let results_dir = repo_root().join("docs").join("results");
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("could not create {}", results_dir.display()))?;
    let json_name = format!("agent-{}.json", report.info.date);
    let json_path = results_dir.join(&json_name);
    std::fs::write(&json_path, report.to_json())
        .with_context(|| format!("could not write {}", json_path.display()))?;
    step!("wrote {}", json_path.display());

    let markdown_path = repo_root().join("docs").join("benchmarks.md");
    let current = std::fs::read_to_string(&markdown_path).unwrap_or_default();
    let updated = report::replace_generated(&current, &report.to_markdown(&json_name))?;
    std::fs::write(&markdown_path, updated)
        .with_context(|| format!("could not write {}", markdown_path.display()))?;
    step!("wrote {}", markdown_path.display());

    let missed: Vec<String> = report
        .targets()
        .into_iter()
        .filter(|target| target.pass == Some(false))
        .map(|target| format!("{} = {}", target.figure, target.measured))
        .collect();
    for target in report.targets() {
        step!(
            "{}: {} (target {}) {}",
            target.figure,
            target.measured,
            target.limit,
            target.verdict()
        );
    }
    if options.check && !missed.is_empty() {
        bail!("{} target(s) missed: {}", missed.len(), missed.join("; "));
    }
    Ok(())
}

fn strip(target: cross::ArmTarget) -> String {
    format!("{}-strip", target.tool_prefix)
}

/// The stripped size of a release binary. The release profile strips already; a binary that
/// still has a symbol table is measured after stripping a copy, so the figure is always the
/// size that ships.
fn binary_size(target: &str, binary: &Path, machine: u16, strip: &str) -> Result<BinarySize> {
    let bytes =
        std::fs::read(binary).with_context(|| format!("could not read {}", binary.display()))?;
    let elf = ElfSummary::parse(&bytes).with_context(|| format!("{}", binary.display()))?;
    ensure!(elf.machine == machine, "{} is not a {target} binary", binary.display());
    let size = if elf.has_symbol_table {
        let copy = tempfile::NamedTempFile::new().context("could not make a temp file")?;
        std::fs::write(copy.path(), &bytes)?;
        run("stripping a copy", Command::new(strip).arg("--strip-all").arg(copy.path()))?;
        std::fs::metadata(copy.path())?.len()
    } else {
        bytes.len() as u64
    };
    step!("{target}: stripped release binary {}", cross::megabytes(size));
    Ok(BinarySize { target: target.to_string(), bytes: size, path: relative(binary) })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root()).unwrap_or(path).display().to_string()
}

/// Date, machine and revision of this run.
fn run_info(rounds: usize, build_seconds: Vec<(String, f64)>) -> Result<RunInfo> {
    let captured = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .current_dir(repo_root())
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = captured("date", &["-u", "+%Y-%m-%d"]);
    ensure!(date.len() == 10, "could not read today's date with `date -u +%Y-%m-%d`");
    let revision = captured("git", &["rev-parse", "--short=12", "HEAD"]);
    let dirty = !captured("git", &["status", "--porcelain", "--", "agent", "shared"]).is_empty();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            line.strip_prefix("model name")
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    Ok(RunInfo {
        date,
        timestamp: captured("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        revision: if dirty { format!("{revision}+dirty") } else { revision },
        agent_version: cross::agent_version()?,
        host_arch: std::env::consts::ARCH.to_string(),
        cpu,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average: load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        rounds,
        build_seconds,
    })
}
