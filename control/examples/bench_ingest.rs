//! The ingest benchmark engine, run by `cargo xtask bench ingest`: end-to-end statistics
//! ingest of an `outpost serve` process (the release binary given with `--outpost-bin`) through
//! Mosquitto, on SQLite and on PostgreSQL, next to a bare subscriber on the same broker in the
//! same run.
//!
//! For each backend: a fresh Mosquitto (with the settings the control's sessions need), a fresh
//! database, the server with the fixture trust root and the generated test models' bundles
//! pushed, `--devices` simulated devices (spread over `--connections` MQTT connections) that
//! each say hello and then publish `--windows` statistics windows as fast as the broker takes
//! them. The windows are what a real agent sends: per feature a histogram over the model's
//! profile edges and moments, latency, errors and classifier statistics, built from each
//! model's baseline profile, so the server's profile check and exact merges do real work.
//!
//! A bare subscriber (`outpost/v1/+/stats`, QoS 1, acknowledging at once, doing nothing else)
//! receives the same messages. From the first window published, the bare rate is windows over
//! the time until the subscriber had them all; the ingest rate is windows over the time until
//! the server's `outpost_windows_ingested_total` reached them all (checked every 20 ms). The
//! ratio of the two is the figure. Then the fleet aggregate of every model is read once through
//! the API (`first_read_seconds`: that read folds whatever ingest left pending) and its windows
//! must add up to every window published. Results are printed as `bench kind=ingest key=value …`
//! lines for xtask to collect; progress goes to stderr.
//!
//! For looking into a run: `OUTPOST_BENCH_SERVER_LOG` is the server's `RUST_LOG` (default
//! `warn`; `outpost_control::server::mqtt=debug` logs each batch and its time), and
//! `OUTPOST_BENCH_KEEP=1` keeps the working directory (configs, server logs) after the run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use outpost_control::api::client::ApiClient;
use outpost_shared::profile::{FeatureProfile, Profile};
use outpost_shared::stats::{Histogram, Moments, confidence_edges};
use outpost_shared::wire::{
    ClassifierStats, DeviceId, FeatureStats, Hello, LatencyHistogram, ModelRef, ProtocolVersion,
    Publish, SlotName, Slots, StatsWindow,
};
use outpost_tests::broker::{Mosquitto, MosquittoOptions};
use outpost_tests::fixtures::{BUNDLE_MODELS, Fixture};
use outpost_tests::postgres::Postgres;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Requests per window (a minute of one request a second, plus some).
const REQUESTS_PER_WINDOW: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(900);

struct Options {
    outpost_bin: PathBuf,
    devices: usize,
    windows: u64,
    connections: usize,
    backends: Vec<String>,
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        outpost_bin: PathBuf::new(),
        devices: 10_000,
        windows: 5,
        connections: 200,
        backends: vec!["sqlite".into(), "postgres".into()],
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--outpost-bin" => options.outpost_bin = PathBuf::from(value()?),
            "--devices" => options.devices = value()?.parse().context("--devices")?,
            "--windows" => options.windows = value()?.parse().context("--windows")?,
            "--connections" => options.connections = value()?.parse().context("--connections")?,
            "--backends" => {
                options.backends = value()?.split(',').map(str::to_string).collect();
            }
            other => bail!("unknown option {other}"),
        }
    }
    ensure!(options.outpost_bin.is_file(), "--outpost-bin must name the outpost binary");
    ensure!(options.devices > 0 && options.windows > 0 && options.connections > 0);
    ensure!(options.windows <= 50, "--windows at most 50 (one bucket of an hour)");
    for backend in &options.backends {
        ensure!(backend == "sqlite" || backend == "postgres", "unknown backend {backend}");
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse_options()?;
    let work = tempfile::Builder::new().prefix("outpost-bench-ingest-").tempdir()?;
    let work = if std::env::var_os("OUTPOST_BENCH_KEEP").is_some() {
        work.keep()
    } else {
        work.path().to_path_buf()
    };
    let fixture = Fixture::new(&work.join("fixture"));
    let models: Vec<(PathBuf, ModelRef, Profile)> = BUNDLE_MODELS
        .iter()
        .map(|name| {
            let path = fixture.bundle(name);
            let bundle = fixture.verified_bundle(name);
            let model = ModelRef {
                name: bundle.manifest.name.clone(),
                version: bundle.manifest.version.clone(),
                digest: outpost_shared::wire::Digest::parse(&bundle.digest)
                    .map_err(|error| anyhow::anyhow!("digest: {error}"))?,
            };
            Ok((path, model, bundle.profile.clone()))
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "building {} windows of {} devices",
        options.windows * options.devices as u64,
        options.devices
    );
    let plan = Plan::new(&options, &models);
    eprintln!(
        "payloads: {} windows, mean {:.0} bytes",
        plan.window_count,
        plan.window_bytes as f64 / plan.window_count as f64
    );
    for backend in &options.backends {
        let result = run_backend(&options, backend, &fixture, &models, &plan, &work)
            .with_context(|| format!("the {backend} run"))?;
        println!("{result}");
    }
    Ok(())
}

/// The messages one connection publishes, in order.
type Messages = Arc<[(String, Vec<u8>)]>;

/// Every message of a run, made before the clock starts.
struct Plan {
    hellos: Vec<Messages>,
    /// Per connection: (topic, payload), devices interleaved so every device sends in turn.
    by_connection: Vec<Messages>,
    window_count: usize,
    window_bytes: usize,
}

impl Plan {
    fn new(options: &Options, models: &[(PathBuf, ModelRef, Profile)]) -> Plan {
        let now = u64::try_from(outpost_control::store::now_ms()).unwrap_or(0);
        let hour_start = now / 3_600_000 * 3_600_000 - 3_600_000;
        let mut hellos: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); options.connections];
        let mut by_connection: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); options.connections];
        let mut window_count = 0;
        let mut window_bytes = 0;
        let devices: Vec<DeviceId> = (0..options.devices)
            .map(|n| DeviceId::new(format!("bench-{n:05}")).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        for (n, device) in devices.iter().enumerate() {
            let (_, model, _) = &models[n % models.len()];
            let site = format!("site-{}", n % 20);
            let hw = if n % 3 == 0 { "rpi4" } else { "jetson" };
            let hello = hello(device, &[("site", &site), ("hw", hw)], model);
            let message = Publish::message(device, &hello).unwrap_or_else(|e| panic!("{e}"));
            hellos[n % options.connections].push((message.topic, message.payload));
        }
        for seq in 1..=options.windows {
            for (n, device) in devices.iter().enumerate() {
                let (_, model, profile) = &models[n % models.len()];
                let shift = (n as f64 * 0.618 + seq as f64 * 0.1).fract();
                let start = hour_start + seq * 60_000;
                let w = window(device, model, profile, seq, start, REQUESTS_PER_WINDOW, shift);
                let message = Publish::message(device, &w).unwrap_or_else(|e| panic!("{e}"));
                window_bytes += message.payload.len();
                window_count += 1;
                by_connection[n % options.connections].push((message.topic, message.payload));
            }
        }
        Plan {
            hellos: hellos.into_iter().map(Into::into).collect(),
            by_connection: by_connection.into_iter().map(Into::into).collect(),
            window_count,
            window_bytes,
        }
    }
}

fn hello(device: &DeviceId, tags: &[(&str, &str)], model: &ModelRef) -> Hello {
    Hello {
        v: ProtocolVersion,
        device: device.clone(),
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        active_model: Some(model.clone()),
        previous_model: None,
        slots: Slots { active: Some(SlotName::A), a: Some(model.clone()), b: None },
        capabilities: vec![],
        trust_root_version: 1,
        last_plan_seq: None,
        ts_ms: u64::try_from(outpost_control::store::now_ms()).unwrap_or(0),
    }
}

/// A window of `n` requests over the profile's edges, as an agent records it.
fn window(
    device: &DeviceId,
    model: &ModelRef,
    profile: &Profile,
    seq: u64,
    start_ms: u64,
    n: u64,
    shift: f64,
) -> StatsWindow {
    let feature = |feature: &FeatureProfile| {
        let edges = &feature.histogram.edges;
        let mut histogram = Histogram::new(edges.clone()).unwrap_or_else(|e| panic!("{e}"));
        let mut moments = Moments::default();
        let (low, high) = (edges[0], edges[edges.len() - 1]);
        for i in 0..n {
            // Roughly the baseline's spread, a little off at the ends.
            let u = (i as f64 * 0.37 + shift).fract();
            let x = low + (high - low) * (u * 1.02 - 0.01);
            histogram.observe(x);
            moments.observe(x);
        }
        FeatureStats { name: feature.name.clone(), histogram, moments, kll_sketch: None }
    };
    let mut latency = LatencyHistogram::default();
    for i in 0..n {
        latency.observe(400 + (i * 37) % 2000);
    }
    let classifier = profile.classifier.as_ref().map(|classifier| {
        let classes = classifier.class_counts.len();
        let mut class_counts = vec![0; classes];
        let mut confidence = Histogram::new(confidence_edges()).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..n {
            class_counts[(i as usize) % classes] += 1;
            confidence.observe(0.55 + 0.4 * ((i as f64 * 0.13 + shift).fract()));
        }
        ClassifierStats { class_counts, confidence }
    });
    StatsWindow {
        v: ProtocolVersion,
        device: device.clone(),
        model: model.clone(),
        seq,
        start_ms,
        end_ms: start_ms + 60_000,
        count: n,
        errors: Default::default(),
        latency,
        inputs: profile.inputs.iter().map(feature).collect(),
        outputs: profile.outputs.iter().map(feature).collect(),
        classifier,
    }
}

/// The server process; stopped (SIGKILL) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn outpost(options: &Options, config: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(&options.outpost_bin)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("OUTPOST_SERVER")
        .env_remove("OUTPOST_TOKEN")
        .output()
        .with_context(|| format!("running outpost {args:?}"))?;
    ensure!(
        output.status.success(),
        "outpost {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// One counter of the server's `/metrics`.
fn metric(api: &ApiClient, line_prefix: &str) -> u64 {
    let Ok(text) = api.get_json("/metrics", &[]) else { return 0 };
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(line_prefix))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> Result<Instant> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if condition() {
            return Ok(Instant::now());
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_backend(
    options: &Options,
    backend: &str,
    fixture: &Fixture,
    models: &[(PathBuf, ModelRef, Profile)],
    plan: &Plan,
    work: &Path,
) -> Result<String> {
    eprintln!("--- {backend}");
    let dir = work.join(backend);
    std::fs::create_dir_all(&dir)?;
    let broker = Mosquitto::start_with(MosquittoOptions {
        extra: vec![
            "max_queued_messages 1000000".into(),
            "max_inflight_messages 1000".into(),
            "max_connections -1".into(),
        ],
        ..MosquittoOptions::default()
    })
    .map_err(|error| anyhow::anyhow!("{error}"))?;
    let postgres = match backend {
        // fsync on, as a production server runs (tests run without it).
        "postgres" => Some(Postgres::start_durable().map_err(|error| anyhow::anyhow!("{error}"))?),
        _ => None,
    };
    let database = match &postgres {
        Some(postgres) => format!("[database]\nurl = \"{}\"\n", postgres.url()),
        None => String::new(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let api_port = free_port()?;
    let config = dir.join("control.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{database}[api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [broker]\nurl = \"mqtt://127.0.0.1:{}\"\n[trust]\nroot = \"{}\"\n",
            dir.join("state").display(),
            broker.port(),
            fixture.trust_root_path().display()
        ),
    )?;
    let token = outpost(options, &config, &["users", "add", "bench", "--role", "admin"])?;
    let log = std::fs::File::create(dir.join("serve.log"))?;
    let _server = Server(
        Command::new(&options.outpost_bin)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", std::env::var("OUTPOST_BENCH_SERVER_LOG").unwrap_or("warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting outpost serve")?,
    );
    let url = format!("http://127.0.0.1:{api_port}");
    let api = ApiClient::new(&url, Some(token.clone()), None)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    wait_for("the server's API", || api.get_json("/health", &[]).is_ok())?;
    for (path, _, _) in models {
        let output = Command::new(&options.outpost_bin)
            .args(["model", "push"])
            .arg(path)
            .env("OUTPOST_SERVER", &url)
            .env("OUTPOST_TOKEN", &token)
            .output()?;
        ensure!(output.status.success(), "model push: {}", String::from_utf8_lossy(&output.stderr));
    }

    let bare = runtime.block_on(BareSubscriber::start(broker.port()))?;

    // Every device says hello (the inventory gives the cohorts), then the windows go.
    let started = Instant::now();
    runtime.block_on(publish_all(broker.port(), &plan.hellos, true))?;
    let devices = options.devices as u64;
    wait_for("every hello processed", || {
        metric(&api, "outpost_mqtt_messages_total{channel=\"hello\"} ") >= devices
    })?;
    let hello_seconds = started.elapsed().as_secs_f64();
    eprintln!("{devices} hellos processed in {hello_seconds:.1} s");

    let total = plan.window_count as u64;
    let t0 = Instant::now();
    let published = runtime.block_on(publish_all(broker.port(), &plan.by_connection, false))?;
    let publish_seconds = (published - t0).as_secs_f64();
    let bare_done = wait_for("the bare subscriber to have every window", || {
        bare.received.load(Ordering::Relaxed) >= total
    })?;
    let bare_seconds = bare.last_seconds_since(t0).unwrap_or((bare_done - t0).as_secs_f64());
    let ingest_done = wait_for("the server to count every window", || {
        metric(&api, "outpost_windows_ingested_total ") >= total
    })?;
    let ingest_seconds = (ingest_done - t0).as_secs_f64();
    // The first exact read after the burst: the fleet aggregate of every model, which folds
    // whatever ingest left pending; its windows must add up to every window published.
    let read_started = Instant::now();
    let mut windows_read = 0;
    for (_, model, _) in models {
        let fleet = api
            .get_json("/v1/aggregates", &[("model", model.digest.as_str().to_string())])
            .map_err(|error| anyhow::anyhow!("reading the fleet aggregate: {error}"))?;
        windows_read += fleet["total"]["windows"].as_u64().unwrap_or(0);
    }
    let read_seconds = read_started.elapsed().as_secs_f64();
    ensure!(
        windows_read == total,
        "the fleet aggregates hold {windows_read} windows, {total} were published"
    );
    let duplicates = metric(&api, "outpost_windows_duplicate_total ");
    let rejected = metric(&api, "outpost_windows_rejected_total ");
    let ingested = metric(&api, "outpost_windows_ingested_total ");
    eprintln!(
        "{backend}: published in {publish_seconds:.2} s, bare subscriber {bare_seconds:.2} s, \
         ingested {ingested} in {ingest_seconds:.2} s, {duplicates} duplicates, {rejected} rejected, \
         first exact read {read_seconds:.2} s"
    );
    ensure!(rejected == 0, "the server refused {rejected} windows; see {}", dir.display());
    let bare_rate = total as f64 / bare_seconds;
    let ingest_rate = total as f64 / ingest_seconds;
    Ok(format!(
        "bench kind=ingest backend={backend} devices={devices} connections={} windows={total} \
         window_bytes_mean={:.0} requests_per_window={REQUESTS_PER_WINDOW} models={} \
         hello_seconds={hello_seconds:.3} publish_seconds={publish_seconds:.3} \
         publish_rate={:.1} bare_seconds={bare_seconds:.3} bare_rate={bare_rate:.1} \
         ingest_seconds={ingest_seconds:.3} ingest_rate={ingest_rate:.1} ratio={:.3} \
         ingested={ingested} duplicates={duplicates} rejected={rejected} \
         first_read_seconds={read_seconds:.3}",
        options.connections,
        plan.window_bytes as f64 / total as f64,
        models.len(),
        total as f64 / publish_seconds,
        ingest_rate / bare_rate,
    ))
}

/// Publishes each connection's messages over its own connection (QoS 1, 100 in flight), all
/// connections at once; returns when the broker acknowledged every message.
async fn publish_all(port: u16, plan: &[Messages], retain: bool) -> Result<Instant> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut tasks = Vec::new();
    for messages in plan {
        let messages = messages.clone();
        let id = format!("bench-pub-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut mqtt = MqttOptions::new(id, "127.0.0.1", port);
        mqtt.set_keep_alive(Duration::from_secs(60));
        mqtt.set_inflight(100);
        mqtt.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut event_loop) = AsyncClient::new(mqtt, 200);
        let expected = messages.len();
        tasks.push(tokio::spawn(async move {
            let sender = tokio::spawn(async move {
                for (topic, payload) in messages.iter() {
                    client
                        .publish(topic.clone(), QoS::AtLeastOnce, retain, payload.clone())
                        .await?;
                }
                anyhow::Ok(client)
            });
            let mut acked = 0;
            while acked < expected {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(error) => bail!("publisher connection: {error}"),
                }
            }
            let client = sender.await??;
            let _ = client.disconnect().await;
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(TIMEOUT, task).await.context("publishing timed out")???;
    }
    Ok(Instant::now())
}

/// A plain subscriber to every device's statistics: counts, acknowledges, nothing else.
struct BareSubscriber {
    received: Arc<AtomicU64>,
    last: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl BareSubscriber {
    async fn start(port: u16) -> Result<BareSubscriber> {
        let mut mqtt = MqttOptions::new("bench-bare-subscriber", "127.0.0.1", port);
        mqtt.set_keep_alive(Duration::from_secs(60));
        mqtt.set_max_packet_size(4 << 20, 4 << 20);
        let (client, mut event_loop) = AsyncClient::new(mqtt, 1000);
        client.subscribe("outpost/v1/+/stats", QoS::AtLeastOnce).await?;
        loop {
            match event_loop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => break,
                Ok(_) => {}
                Err(error) => bail!("bare subscriber: {error}"),
            }
        }
        let received = Arc::new(AtomicU64::new(0));
        let last = Arc::new(std::sync::Mutex::new(None));
        let (counter, stamp) = (received.clone(), last.clone());
        tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = event_loop.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = event {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = stamp.lock() {
                        *last = Some(Instant::now());
                    }
                }
            }
        });
        Ok(BareSubscriber { received, last })
    }

    fn last_seconds_since(&self, t0: Instant) -> Option<f64> {
        let last = (*self.last.lock().ok()?)?;
        Some(last.saturating_duration_since(t0).as_secs_f64())
    }
}
