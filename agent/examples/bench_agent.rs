//! The agent's benchmark engine, run by `cargo xtask bench agent` (which builds it in the
//! device profile, passes that `outpost-agent` binary, then judges the figures and writes
//! `docs/results/` and `docs/benchmarks.md`). Run by hand:
//!
//! ```text
//! cargo build --profile device -p outpost-agent --bin outpost-agent --example bench_agent
//! target/device/examples/bench_agent --agent-bin target/device/outpost-agent
//! ```
//!
//! For each generated model it measures, in one process run:
//!
//! - latency of (a) the bare model answering in OIP — `outpost_shared::model::Model::infer`,
//!   the tract plan run plus the tensor conversions every caller needs, and the same OIP
//!   response `Runtime::infer` builds (`Runtime::respond`) — (b) `outpost_agent::Runtime::infer`
//!   with its statistics window, and (c) the REST round trip to a real `outpost-agent run`
//!   process on loopback over one keep-alive connection. They are measured in interleaved
//!   blocks (the order rotating every round), so a noisy machine slows all of them alike;
//!   overheads are the medians of per-round differences. Two diagnostic subjects: recording a
//!   call on the request path alone (`PendingCalls::push_success` on the same tensors; the
//!   binning happens on the runtime's folder thread), and `Model::infer` without the OIP
//!   response, the baseline of the first benchmark runs;
//! - REST throughput with 2 concurrent keep-alive clients;
//! - the agent process's memory (`VmRSS`, `VmHWM` from `/proc/PID/status`): with no model
//!   (idle), with the model loaded before any request, and after the load;
//! - cold start: spawning the binary until `/v2/health/ready` answers 200.
//!
//! Each figure is one line on stdout, `bench kind=… key=value …`, which xtask parses; progress
//! goes to stderr. Timing lives only here, in a release build: no test times anything.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use outpost_agent::window::PendingCalls;
use outpost_agent::{Runtime, WindowAccumulator};
use outpost_shared::model::{Input, Model, Output};
use outpost_shared::oip::InferenceRequest;
use outpost_shared::profile::TensorView;
use outpost_shared::wire::DeviceId;
use outpost_tests::fixtures::{BUNDLE_MODELS, Fixture};

/// Benchmarks of the agent: bare model vs Runtime vs REST, memory, cold start.
#[derive(Debug, Parser)]
struct Options {
    /// The `outpost-agent` binary to run (a release build).
    #[arg(long)]
    agent_bin: PathBuf,
    /// Where fixtures and agent data directories go (a temporary folder when absent).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Models to measure (default: every generated model with a bundle).
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Interleaved rounds per model; each round runs one block of every subject.
    #[arg(long, default_value_t = 40)]
    rounds: usize,
    /// Calls per subject per round.
    #[arg(long, default_value_t = 100)]
    block: usize,
    /// Cold starts per model.
    #[arg(long, default_value_t = 5)]
    cold_starts: usize,
    /// How long the 2-client throughput run lasts, in seconds.
    #[arg(long, default_value_t = 3.0)]
    throughput_seconds: f64,
    /// Only the memory of concurrent large requests (no per-model latency runs).
    #[arg(long)]
    large_requests_only: bool,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let temp;
    let work_dir = match &options.work_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("could not make a temp dir")?;
            temp.path().to_path_buf()
        }
    };
    let models: Vec<String> = if options.models.is_empty() {
        BUNDLE_MODELS.iter().map(|m| m.to_string()).collect()
    } else {
        options.models.clone()
    };
    let fixture = Fixture::new(&work_dir.join("fixture"));
    let agent = AgentBinary { path: options.agent_bin.clone(), fixture: &fixture };

    progress("idle agent (no model installed)");
    {
        let process = agent.start("bench-idle", None)?;
        process.wait_until(Endpoint::Live)?;
        // Let start-up allocations settle before reading memory.
        std::thread::sleep(Duration::from_millis(500));
        let memory = process.memory()?;
        record("rss", &[("model", "none".into()), ("state", "idle".into())], &memory.fields());
    }

    large_requests(&agent)?;
    if options.large_requests_only {
        return Ok(());
    }
    for model in &models {
        bench_model(model, &fixture, &agent, &options)?;
    }
    Ok(())
}

/// Clients sending large bodies at once in [`large_requests`].
const LARGE_CLIENTS: usize = 16;

/// The agent's peak memory while [`LARGE_CLIENTS`] clients each send a body of nested arrays
/// just under the default 4 MiB limit (`api.max_body_bytes`) to `batched_classifier` at once,
/// all answered 200: bodies are read, decoded and run under the inference permits
/// (`api.max_concurrency` = 2 in the fixture config), so memory grows with the permits, not
/// with the clients.
fn large_requests(agent: &AgentBinary<'_>) -> Result<()> {
    progress("large requests: 16 concurrent 4 MB nested-array bodies");
    let process = agent.start("bench-large", Some("batched_classifier"))?;
    process.wait_until(Endpoint::Ready)?;
    let ready = process.memory()?;
    let row = "[0.1234,5.6789,10.1112,-3.1415,1.0203,100.5,0.4567,20.8901]";
    let limit = 4 * 1024 * 1024;
    let head = "{\"inputs\":[{\"name\":\"features\",\"datatype\":\"FP32\",\"shape\":[";
    let rows = (limit - head.len() - 64) / (row.len() + 1);
    let mut body = format!("{head}{rows},8],\"data\":[");
    for i in 0..rows {
        if i > 0 {
            body.push(',');
        }
        body.push_str(row);
    }
    body.push_str("]}]}");
    ensure!(body.len() <= limit, "the body must stay within the limit");
    let path = "/v2/models/batched_classifier/infer";
    let barrier = std::sync::Barrier::new(LARGE_CLIENTS);
    let started = Instant::now();
    let answers: Vec<Result<u16>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..LARGE_CLIENTS)
            .map(|_| {
                scope.spawn(|| -> Result<u16> {
                    let mut client = HttpClient::connect(process.address)?;
                    barrier.wait();
                    Ok(client.post(path, body.as_bytes())?.0)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    for answer in answers {
        let status = answer?;
        ensure!(status == 200, "a large request was answered {status}");
    }
    let after = process.memory()?;
    record(
        "large_requests",
        &[("model", "batched_classifier".into())],
        &[
            ("clients", LARGE_CLIENTS.to_string()),
            ("body_bytes", body.len().to_string()),
            ("rows", rows.to_string()),
            ("max_concurrency", "2".into()),
            ("ready_vmrss_kb", ready.rss_kb.to_string()),
            ("vmhwm_kb", after.hwm_kb.to_string()),
            ("seconds", format!("{:.2}", elapsed.as_secs_f64())),
        ],
    );
    Ok(())
}

fn bench_model(
    model: &str,
    fixture: &Fixture,
    agent: &AgentBinary<'_>,
    options: &Options,
) -> Result<()> {
    progress(&format!("{model}: loading"));
    let verified = fixture.verified_bundle(model);
    let bare = Model::load(&verified.model).with_context(|| format!("loading {model}"))?;
    let device = DeviceId::new("bench").context("device id")?;
    let runtime =
        Runtime::new(&verified, device).with_context(|| format!("runtime for {model}"))?;
    let case =
        verified.golden.cases.first().with_context(|| format!("{model} has no golden case"))?;
    let request = InferenceRequest::new(case.inputs.clone());
    let body = serde_json::to_vec(&request).context("encoding the request")?;
    // Recording on the request path alone, on this request's tensors: what the statistics
    // cost the caller inside the Runtime's figure (the buffer is folded, untimed, as the
    // runtime's folder thread does).
    let model_ref = runtime.model_ref().clone();
    let mut window = WindowAccumulator::new(
        DeviceId::new("bench").context("device id")?,
        model_ref,
        &verified.profile,
    )
    .with_context(|| format!("statistics window for {model}"))?;
    let mut pending: PendingCalls = window.pending();
    let prepared = bare.prepare(&request).context("preparing the request")?;
    let produced = bare.run_prepared(&prepared).context("running the request")?;
    let input_views: Vec<TensorView<'_>> = prepared.iter().map(Input::view).collect();
    let output_views: Vec<TensorView<'_>> = produced.iter().map(Output::view).collect();
    let recorded_latency = Duration::from_micros(50);

    progress(&format!("{model}: cold starts"));
    let mut cold_starts = Vec::new();
    for _ in 0..options.cold_starts {
        let started = Instant::now();
        let process = agent.start(&format!("bench-{model}"), Some(model))?;
        process.wait_until(Endpoint::Ready)?;
        cold_starts.push(started.elapsed());
    }
    let cold = Summary::of(&mut cold_starts);
    record(
        "cold_start",
        &[("model", model.into())],
        &[
            ("median_ms", ms(cold.median)),
            ("max_ms", ms(cold.max)),
            ("samples", cold.samples.to_string()),
        ],
    );

    let process = agent.start(&format!("bench-{model}"), Some(model))?;
    process.wait_until(Endpoint::Ready)?;
    let memory = process.memory()?;
    record("rss", &[("model", model.into()), ("state", "ready".into())], &memory.fields());

    let path = format!("/v2/models/{model}/infer");
    let mut client = HttpClient::connect(process.address)?;
    let (status, response) = client.post(&path, &body)?;
    ensure!(
        status == 200,
        "{model}: the agent answered {status}: {}",
        String::from_utf8_lossy(&response)
    );

    progress(&format!("{model}: warming up"));
    for _ in 0..options.block * 2 {
        runtime.respond(&request, bare.infer(&request).context("bare inference")?);
        runtime.infer(&request).context("runtime inference")?;
        client.post(&path, &body)?;
    }

    progress(&format!(
        "{model}: {} interleaved rounds of {} calls per subject",
        options.rounds, options.block
    ));
    let mut samples: BTreeMap<Subject, Vec<Duration>> = BTreeMap::new();
    let mut round_medians: BTreeMap<Subject, Vec<Duration>> = BTreeMap::new();
    for round in 0..options.rounds {
        let mut order = Subject::ALL;
        order.rotate_left(round % Subject::ALL.len());
        for subject in order {
            let mut block = Vec::with_capacity(options.block);
            for _ in 0..options.block {
                let started = Instant::now();
                match subject {
                    Subject::Bare => drop(black_box(
                        runtime.respond(&request, bare.infer(&request).context("bare")?),
                    )),
                    Subject::ModelOnly => drop(black_box(bare.infer(&request).context("bare")?)),
                    Subject::Stats => {
                        let pushed = pending.push_success(
                            black_box(&input_views),
                            black_box(&output_views),
                            recorded_latency,
                        );
                        let elapsed = started.elapsed();
                        if pushed.is_err() || pending.wants_fold() {
                            pending.fold_into(&mut window);
                        }
                        block.push(elapsed);
                        continue;
                    }
                    Subject::Runtime => {
                        drop(black_box(runtime.infer(&request).context("runtime")?))
                    }
                    Subject::Rest => {
                        let (status, _) = client.post(&path, &body)?;
                        ensure!(status == 200, "{model}: the agent answered {status}");
                    }
                }
                block.push(started.elapsed());
            }
            samples.entry(subject).or_default().extend_from_slice(&block);
            round_medians.entry(subject).or_default().push(Summary::of(&mut block).median);
        }
    }
    for (subject, durations) in &mut samples {
        let summary = Summary::of(durations);
        record(
            "latency",
            &[("model", model.into()), ("subject", subject.name().into())],
            &[
                ("median_us", us(summary.median)),
                ("p99_us", us(summary.p99)),
                ("samples", summary.samples.to_string()),
            ],
        );
    }
    let per_round = |subject: Subject| round_medians.get(&subject).cloned().unwrap_or_default();
    let (bare_rounds, runtime_rounds, rest_rounds) =
        (per_round(Subject::Bare), per_round(Subject::Runtime), per_round(Subject::Rest));
    let stats_only_pct = median_f64(
        bare_rounds
            .iter()
            .zip(&per_round(Subject::Stats))
            .map(|(bare, stats)| stats.as_secs_f64() / bare.as_secs_f64() * 100.0)
            .collect(),
    );
    let over = |baseline: &[Duration], subject: &[Duration]| {
        median_f64(
            baseline
                .iter()
                .zip(subject)
                .map(|(base, subject)| (subject.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0)
                .collect(),
        )
    };
    let stats_pct = over(&bare_rounds, &runtime_rounds);
    let runtime_over_model_pct = over(&per_round(Subject::ModelOnly), &runtime_rounds);
    let rest_us = median_f64(
        runtime_rounds
            .iter()
            .zip(&rest_rounds)
            .map(|(runtime, rest)| (rest.as_secs_f64() - runtime.as_secs_f64()) * 1e6)
            .collect(),
    );
    record(
        "overhead",
        &[("model", model.into())],
        &[
            ("stats_pct", format!("{stats_pct:.2}")),
            ("stats_only_pct", format!("{stats_only_pct:.2}")),
            ("runtime_over_model_pct", format!("{runtime_over_model_pct:.2}")),
            ("rest_us", format!("{rest_us:.1}")),
        ],
    );
    drop(client);

    progress(&format!("{model}: throughput with 2 clients"));
    let run_for = Duration::from_secs_f64(options.throughput_seconds);
    let started = Instant::now();
    let counts: Vec<Result<u64>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| -> Result<u64> {
                    let mut client = HttpClient::connect(process.address)?;
                    let mut done = 0;
                    while started.elapsed() < run_for {
                        let (status, _) = client.post(&path, &body)?;
                        ensure!(status == 200, "the agent answered {status}");
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker.join().unwrap_or_else(|_| Err(anyhow::anyhow!("client thread panicked")))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    record(
        "throughput",
        &[("model", model.into())],
        &[
            ("clients", "2".into()),
            ("requests", total.to_string()),
            ("requests_per_s", format!("{:.0}", total as f64 / elapsed.as_secs_f64())),
        ],
    );

    let memory = process.memory()?;
    record("rss", &[("model", model.into()), ("state", "after_load".into())], &memory.fields());
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    /// `Model::infer` and the OIP response: the baseline.
    Bare,
    /// `Model::infer` alone, tract's outputs without the OIP response: diagnostic.
    ModelOnly,
    /// `PendingCalls::push_success` alone: diagnostic, recording's share of Runtime.
    Stats,
    Runtime,
    Rest,
}

impl Subject {
    const ALL: [Subject; 5] =
        [Subject::Bare, Subject::ModelOnly, Subject::Stats, Subject::Runtime, Subject::Rest];

    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::ModelOnly => "model_only",
            Self::Stats => "stats_only",
            Self::Runtime => "runtime",
            Self::Rest => "rest",
        }
    }
}

/// Median, 99th percentile (nearest rank) and maximum of some durations.
#[derive(Debug)]
struct Summary {
    median: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
}

impl Summary {
    fn of(durations: &mut [Duration]) -> Self {
        durations.sort_unstable();
        let rank = |q: f64| {
            let index = ((q * durations.len() as f64).ceil() as usize).saturating_sub(1);
            durations.get(index).copied().unwrap_or_default()
        };
        Self {
            median: rank(0.5),
            p99: rank(0.99),
            max: durations.last().copied().unwrap_or_default(),
            samples: durations.len(),
        }
    }
}

fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn us(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e6)
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1e3)
}

/// Prints one result line for xtask: `bench kind=<kind> key=value …`.
fn record(kind: &str, labels: &[(&str, String)], values: &[(&str, String)]) {
    let mut line = format!("bench kind={kind}");
    for (key, value) in labels.iter().chain(values) {
        line.push_str(&format!(" {key}={value}"));
    }
    println!("{line}");
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

// ---------------------------------------------------------------------------------------------
// The agent as a process

struct AgentBinary<'a> {
    path: PathBuf,
    fixture: &'a Fixture,
}

/// How long an agent may take to start before the benchmark gives up.
const START_LIMIT: Duration = Duration::from_secs(60);

impl AgentBinary<'_> {
    /// Starts `outpost-agent run` on a data directory provisioned with `model` (none: idle),
    /// listening on a free loopback port, and waits until it says where.
    fn start(&self, device: &str, model: Option<&str>) -> Result<AgentProcess> {
        let data_dir = self.fixture.provisioned_agent_dir(device, model);
        let config =
            self.fixture.agent_config(&data_dir, device, &BTreeMap::new(), "127.0.0.1:0", 60.0, "");
        let mut child = Command::new(&self.path)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start {}", self.path.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (lines, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = AgentProcess { child, address: SocketAddr::from(([127, 0, 0, 1], 0)) };
        let deadline = Instant::now() + START_LIMIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(address) = listening_address(&line) {
                        process.address = address;
                        // Keep draining stderr so the agent never blocks on a full pipe.
                        std::thread::spawn(move || receiver.iter().for_each(drop));
                        return Ok(process);
                    }
                    seen.push(line);
                }
                Err(_) => bail!(
                    "the agent did not say where it listens within {START_LIMIT:?}; it wrote:\n{}",
                    seen.join("\n")
                ),
            }
        }
    }
}

/// The address in the agent's `inference API listening address=…` log line.
fn listening_address(line: &str) -> Option<SocketAddr> {
    let plain = strip_ansi(line);
    if !plain.contains("listening") {
        return None;
    }
    plain.split_whitespace().find_map(|word| word.strip_prefix("address=")?.parse().ok())
}

fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

struct AgentProcess {
    child: Child,
    address: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
enum Endpoint {
    Live,
    Ready,
}

/// Memory of a process, from `/proc/PID/status`.
struct Memory {
    rss_kb: u64,
    hwm_kb: u64,
}

impl Memory {
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![("vmrss_kb", self.rss_kb.to_string()), ("vmhwm_kb", self.hwm_kb.to_string())]
    }
}

impl AgentProcess {
    /// Polls the endpoint every millisecond until it answers 200, on fresh connections.
    fn wait_until(&self, endpoint: Endpoint) -> Result<()> {
        let path = match endpoint {
            Endpoint::Live => "/v2/health/live",
            Endpoint::Ready => "/v2/health/ready",
        };
        let deadline = Instant::now() + START_LIMIT;
        while Instant::now() < deadline {
            if let Ok(mut client) = HttpClient::connect(self.address)
                && matches!(client.get(path), Ok((200, _)))
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!("{path} did not answer 200 within {START_LIMIT:?}")
    }

    fn memory(&self) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("could not read the agent's /proc status")?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc status"))
        };
        Ok(Memory { rss_kb: field("VmRSS:")?, hwm_kb: field("VmHWM:")? })
    }
}

impl Drop for AgentProcess {
    /// SIGTERM, as systemd stops the agent; SIGKILL if it has not exited within 10 s.
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal HTTP/1.1 keep-alive client: enough for JSON requests with a Content-Length answer

struct HttpClient {
    stream: TcpStream,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl HttpClient {
    fn connect(address: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("could not connect to {address}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream,
            buffer: Vec::with_capacity(64 * 1024),
            request: Vec::with_capacity(8192),
        })
    }

    fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        self.exchange("GET", path, &[])
    }

    fn post(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.exchange("POST", path, body)
    }

    /// Sends one request in a single write and reads the whole response.
    fn exchange(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).context("sending the request")?;

        self.buffer.clear();
        let mut chunk = [0u8; 16 * 1024];
        let header_end = loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                break at + 4;
            }
            let read = self.stream.read(&mut chunk).context("reading the response")?;
            ensure!(read > 0, "the agent closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        };
        let head = std::str::from_utf8(&self.buffer[..header_end]).context("response head")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("no status code in the response")?;
        let length: usize = head
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
            })
            .context("the response has no Content-Length")?;
        while self.buffer.len() < header_end + length {
            let read = self.stream.read(&mut chunk).context("reading the response body")?;
            ensure!(read > 0, "the agent closed the connection mid-body");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        Ok((status, self.buffer[header_end..header_end + length].to_vec()))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}
