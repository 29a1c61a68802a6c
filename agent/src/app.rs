//! The binary's commands wired together: `run` (store → runtime → API → telemetry → window
//! ticker, until SIGTERM/SIGINT), `provision` (enroll a device with a trust root and a first
//! model) and `check-model` (can tract run this ONNX file?).
//!
//! This is the only module besides `main` that uses `anyhow`: every failure leaves here as a
//! [`Failure`] carrying the documented exit code (see [`exit`]) and a message chain.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use outpost_shared::bundle::{self, MAX_BUNDLE_BYTES};
use outpost_shared::dsse::MAX_ENVELOPE_BYTES;
use outpost_shared::model::{InferError, Model, Output};
use outpost_shared::oip::{InferenceResponse, TensorSpec};
use outpost_shared::trust;
use outpost_shared::wire::{DeviceId, Event, EventKind, Hello, Outcome, ProtocolVersion, SlotName};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::api::{self, ActiveRuntime, BoundListener};
use crate::config::AgentConfig;
use crate::fsutil;
use crate::mqtt::{Telemetry, TelemetryHandle};
use crate::runtime::Runtime;
use crate::store::{SlotDisplay, Store, StoreError};
use crate::systemd;

/// Exit codes of `outpost-agent` (also listed in the binary's documentation).
pub mod exit {
    /// Something failed that is not the caller's doing: IO, binding the API address, a crash
    /// of a background task.
    pub const FAILURE: u8 = 1;
    /// The command line, the config file or an input file is wrong.
    pub const USAGE: u8 = 2;
    /// A signed document was refused: trust root or bundle verification failed, the device is
    /// not provisioned, or no slot holds a model that verifies.
    pub const REFUSED: u8 = 3;
    /// The model cannot be run: tract cannot load it, or it fails its golden self-test.
    pub const MODEL: u8 = 4;
}

/// A command's failure: the exit code and the error chain to print.
#[derive(Debug)]
pub struct Failure {
    pub exit_code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    fn new(exit_code: u8, error: impl Into<anyhow::Error>) -> Self {
        Self { exit_code, error: error.into() }
    }
}

/// Attaches an exit code to an error.
trait ExitCodeExt<T> {
    fn exit_code(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> ExitCodeExt<T> for Result<T, E> {
    fn exit_code(self, code: u8) -> Result<T, Failure> {
        self.map_err(|error| Failure::new(code, error))
    }
}

/// The exit code for a store error: refusals and a missing enrollment are [`exit::REFUSED`].
fn store_exit_code(error: &StoreError) -> u8 {
    match error {
        StoreError::File(_) | StoreError::State { .. } => exit::FAILURE,
        _ => exit::REFUSED,
    }
}

/// Sets up logging to stderr (journald reads it there): `RUST_LOG` if set, else `filter`.
///
/// Filters use the `target=level,…,default-level` syntax of [`Targets`], which needs no regular
/// expression engine: it keeps the device binary small.
///
/// [`Targets`]: tracing_subscriber::filter::Targets
pub fn init_logging(filter: &str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|value| value.parse::<Targets>().ok())
        .or_else(|| filter.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    // A second initialisation (tests calling twice) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .finish()
        .with(targets)
        .try_init();
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Builds the runtime for a verified bundle and runs its golden set: a model that does not
/// reproduce its golden outputs on this device does not serve.
fn accept_bundle(
    bundle: &outpost_shared::Verified<bundle::Bundle>,
    config: &AgentConfig,
) -> Result<Runtime, String> {
    let runtime = Runtime::new(bundle, config.device.id.clone()).map_err(|e| e.to_string())?;
    runtime.check_golden().map_err(|e| format!("golden self-test failed: {e}"))?;
    Ok(runtime)
}

// ----------------------------------------------------------------------------------------
// provision

/// What `provision` did.
#[derive(Debug)]
pub struct Provisioned {
    pub trust_root_version: u64,
    /// The model installed, with its slot.
    pub model: Option<(SlotName, String)>,
}

/// Enrolls the device of `config`: verifies the trust root and, if given, the first bundle
/// (signature, digests, expiry, and its golden set on this machine) and only then installs
/// them — the trust root into `trust/root.json`, the bundle into slot a, committed.
pub fn provision(
    config: &AgentConfig,
    trust_path: &Path,
    bundle_path: Option<&Path>,
) -> Result<Provisioned, Failure> {
    let now = now_utc();
    let trust_bytes = fsutil::read_limited(trust_path, MAX_ENVELOPE_BYTES as u64, "trust root")
        .exit_code(exit::USAGE)?;
    let trust = trust::verify_initial(&trust_bytes, now)
        .map_err(|e| anyhow!("trust root {} refused: {e} [{}]", trust_path.display(), e.code()))
        .exit_code(exit::REFUSED)?;
    let bundle = match bundle_path {
        None => None,
        Some(path) => {
            let bytes =
                fsutil::read_limited(path, MAX_BUNDLE_BYTES, "bundle").exit_code(exit::USAGE)?;
            let verified = bundle::verify(&bytes, &trust, now)
                .map_err(|e| anyhow!("bundle {} refused: {e} [{}]", path.display(), e.code()))
                .exit_code(exit::REFUSED)?;
            accept_bundle(&verified, config)
                .map_err(|e| anyhow!("bundle {} refused: {e}", path.display()))
                .exit_code(exit::MODEL)?;
            Some((bytes, verified))
        }
    };
    let mut store = Store::provision(&config.data_dir, &trust_bytes, now)
        .map_err(|e| Failure::new(store_exit_code(&e), e))?;
    let model = match bundle {
        None => None,
        Some((bytes, verified)) => {
            let slot = store
                .install_initial_bundle(&bytes, &verified)
                .map_err(|e| Failure::new(store_exit_code(&e), e))?;
            Some((slot, verified.manifest.id()))
        }
    };
    Ok(Provisioned { trust_root_version: trust.version, model })
}

// ----------------------------------------------------------------------------------------
// check-model

/// What `check-model` found: the model's inputs and outputs and the response to one request.
#[derive(Debug)]
pub struct CheckedModel {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Whether the request was generated (no `--input`).
    pub generated_input: bool,
    pub response: InferenceResponse,
}

/// Loads `model_path` with tract and runs one request: the OIP v2 body in `input_path`, or
/// generated inputs.
pub fn check_model(model_path: &Path, input_path: Option<&Path>) -> Result<CheckedModel, Failure> {
    const MAX_MODEL_BYTES: u64 = 512 * 1024 * 1024;
    const MAX_INPUT_BYTES: u64 = 256 * 1024 * 1024;
    let bytes =
        fsutil::read_limited(model_path, MAX_MODEL_BYTES, "model").exit_code(exit::USAGE)?;
    let model = Model::load(&bytes)
        .with_context(|| format!("tract cannot run {}", model_path.display()))
        .exit_code(exit::MODEL)?;
    let request = match input_path {
        None => model.sample_request(),
        Some(path) => {
            let body =
                fsutil::read_limited(path, MAX_INPUT_BYTES, "input file").exit_code(exit::USAGE)?;
            outpost_shared::oip::decode_request(&body, None, Some(model.inputs()))
                .with_context(|| format!("input file {}", path.display()))
                .exit_code(exit::USAGE)?
        }
    };
    let outputs = model.infer(&request).map_err(|error| match error {
        InferError::Run(_) => Failure::new(
            exit::MODEL,
            anyhow!(error).context(format!("tract cannot run {}", model_path.display())),
        ),
        refused => {
            Failure::new(exit::USAGE, anyhow!(refused).context("the input does not fit the model"))
        }
    })?;
    let model_name = model_path
        .file_stem()
        .map_or_else(|| "model".to_string(), |stem| stem.to_string_lossy().into_owned());
    Ok(CheckedModel {
        inputs: model.inputs().to_vec(),
        outputs: model.outputs().to_vec(),
        generated_input: input_path.is_none(),
        response: InferenceResponse {
            model_name,
            model_version: None,
            id: request.id.clone(),
            outputs: outputs.iter().map(Output::to_oip).collect(),
        },
    })
}

// ----------------------------------------------------------------------------------------
// run

/// How long requests in flight may take to finish once shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the agent until SIGTERM or SIGINT: opens the store, boots the committed model, serves
/// the API, cuts a statistics window every `stats.period_seconds` and hands it to telemetry,
/// and on shutdown flushes the last window before exiting.
pub async fn run(config: AgentConfig) -> Result<(), Failure> {
    // Before anything slow: a SIGTERM during start-up must stop the agent cleanly, not kill it.
    let mut signals = ShutdownSignals::install()
        .context("cannot install the SIGTERM/SIGINT handlers")
        .exit_code(exit::FAILURE)?;
    let now = now_utc();
    let mut store =
        Store::open(&config.data_dir, now).map_err(|e| Failure::new(store_exit_code(&e), e))?;
    let booted = store
        .boot(now, |slot, bundle| {
            tracing::info!(slot = %SlotDisplay(slot), model = %bundle.manifest.id(), "loading model");
            accept_bundle(bundle, &config)
        })
        .map_err(|e| Failure::new(store_exit_code(&e), e))?;
    let mut boot_events = Vec::new();
    let runtime = match booted {
        Some(boot) => {
            for (slot, reason) in &boot.skipped {
                let slot = SlotDisplay(*slot);
                tracing::error!(%slot, %reason, "slot passed over at start");
                boot_events.push(event(
                    &config.device.id,
                    EventKind::Error,
                    Outcome::Failed,
                    "slot_unusable",
                    format!("slot {slot} could not serve at start: {reason}"),
                ));
            }
            if boot.rolled_back {
                let slot = SlotDisplay(boot.slot);
                let model = boot.bundle.manifest.id();
                tracing::warn!(%slot, %model, "went back to the other slot's committed model");
                let mut rolled_back = event(
                    &config.device.id,
                    EventKind::RolledBack,
                    Outcome::Ok,
                    "rolled_back_at_start",
                    format!("serving {model} from slot {slot}, the last committed model"),
                );
                // The install whose trial the restart interrupted, if that is what happened.
                if let Some(install) = &store.state().install
                    && install.reason.as_deref() == Some(crate::store::INTERRUPTED_TRIAL)
                {
                    rolled_back.rollout_id = Some(install.rollout.clone());
                    rolled_back.plan_seq = Some(install.plan_seq);
                    rolled_back.bundle_digest =
                        outpost_shared::wire::Digest::parse(&install.bundle.digest).ok();
                }
                boot_events.push(rolled_back);
            }
            tracing::info!(
                model = %boot.bundle.manifest.id(),
                digest = %boot.bundle.digest,
                "model ready"
            );
            Some(Arc::new(boot.accepted))
        }
        None => {
            tracing::warn!("no model installed yet: serving health endpoints only");
            None
        }
    };
    let active = Arc::new(ActiveRuntime::new(runtime));

    let listener = BoundListener::bind(&config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))
        .exit_code(exit::FAILURE)?;
    let address = listener
        .local_address()
        .with_context(|| format!("cannot read the address bound for {}", config.api.listen))
        .exit_code(exit::FAILURE)?;
    let (shutdown_sender, shutdown_receiver) = watch::channel(false);
    let router = api::router(Arc::clone(&active), &config.api);
    let mut server = tokio::spawn(listener.serve(router, wait_for_shutdown(shutdown_receiver)));
    tracing::info!(%address, "inference API listening");

    let hello = hello_of(&config, &store, now);
    let (telemetry, updates, telemetry_task) = Telemetry::start(
        config.mqtt.clone(),
        config.queue.clone(),
        &config.data_dir,
        config.device.id.clone(),
        hello,
    )
    .context("cannot start MQTT telemetry")
    .exit_code(exit::USAGE)?;
    let store = Arc::new(Mutex::new(store));
    let retired = crate::update::Retired::default();
    let updater = tokio::spawn(
        crate::update::Updater::new(
            config.clone(),
            Arc::clone(&store),
            Arc::clone(&active),
            Arc::clone(&retired),
            telemetry.clone(),
        )
        .run(updates),
    );
    let sampler = crate::sampling::Sampler::open(
        config.sampling.clone(),
        &config.data_dir,
        &config.device.id,
    );
    if config.sampling.enabled {
        tracing::info!("input sampling enabled: collected only while in drift alert");
        active.set_input_observer(Some(Arc::clone(&sampler) as Arc<dyn api::InferenceObserver>));
    }
    let sampling = tokio::spawn(crate::sampling::run(
        Arc::clone(&sampler),
        telemetry.clone(),
        config.device.id.clone(),
        telemetry.sampling(),
    ));
    for event in boot_events {
        if let Err(error) = telemetry.send_event(event).await {
            tracing::warn!(%error, "could not report a start-up event");
        }
    }

    let notifier = systemd::Notifier::from_env();
    let status = match active.get() {
        Some(runtime) => format!("serving {} on {address}", runtime.manifest().id()),
        None => format!("no model installed; API on {address}"),
    };
    if let Err(error) = notifier.ready(&status) {
        tracing::warn!(%error, "could not notify systemd");
    }
    // The watchdog is fed only while the window loop keeps turning: a wedged agent gets
    // restarted by systemd instead of being kept alive by a healthy timer.
    let period = config.stats.period;
    let heartbeat = Arc::new(AtomicU64::new(unix_millis()));
    let stalled_after_ms =
        u64::try_from((period * 3).as_millis()).unwrap_or(u64::MAX).saturating_add(10_000);
    let watchdog = tokio::spawn(systemd::run_watchdog(notifier.clone(), {
        let heartbeat = Arc::clone(&heartbeat);
        move || unix_millis().saturating_sub(heartbeat.load(Ordering::Relaxed)) <= stalled_after_ms
    }));

    let mut window_start_ms = unix_millis();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(%status, "agent ready");
    let stop = loop {
        tokio::select! {
            _ = ticks.tick() => {
                window_start_ms = flush_window(&active, &retired, &store, window_start_ms, &telemetry).await;
                heartbeat.store(unix_millis(), Ordering::Relaxed);
            }
            reason = signals.received() => break Stop::Signal(reason),
            ended = &mut server => break Stop::ApiEnded(ended),
        }
    };
    if let Err(error) = notifier.stopping() {
        tracing::warn!(%error, "could not notify systemd");
    }
    let served = match stop {
        Stop::Signal(reason) => {
            tracing::info!(%reason, "shutting down");
            // Stop taking requests first, so the last window holds every answered request.
            let _ = shutdown_sender.send(true);
            let finished = tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await;
            if finished.is_err() {
                server.abort();
            }
            finished
        }
        Stop::ApiEnded(ended) => {
            tracing::error!("the inference API stopped unexpectedly; shutting down");
            Ok(ended)
        }
    };
    flush_window(&active, &retired, &store, window_start_ms, &telemetry).await;
    if let Err(error) = telemetry.shutdown().await {
        tracing::warn!(%error, "telemetry did not shut down cleanly");
    }
    if let Err(error) = telemetry_task.await {
        tracing::warn!(%error, "telemetry task failed");
    }
    updater.abort();
    sampling.abort();
    sampler.flush(unix_millis());
    watchdog.abort();
    match served {
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at shutdown were cut off");
            Ok(())
        }
        Ok(served) => match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                Err(Failure::new(exit::FAILURE, anyhow!(error).context("inference API failed")))
            }
            Err(error) => Err(Failure::new(
                exit::FAILURE,
                anyhow!(error).context("inference API task failed"),
            )),
        },
    }
}

/// Why the main loop ended.
enum Stop {
    Signal(&'static str),
    ApiEnded(Result<std::io::Result<()>, tokio::task::JoinError>),
}

/// The `hello` this device publishes: what it is and what its slots hold.
pub(crate) fn hello_of(config: &AgentConfig, store: &Store, now: OffsetDateTime) -> Hello {
    let state = store.state();
    let slots = state.wire_slots();
    Hello {
        v: ProtocolVersion,
        device: config.device.id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        arch: std::env::consts::ARCH.to_string(),
        tags: config.device.tags.clone(),
        active_model: slots.active_model().cloned(),
        previous_model: state.previous_model(),
        slots,
        // What the updater does beyond installing: shadow phases, resumable downloads,
        // reverts to a plan's fallback.
        capabilities: crate::update::CAPABILITIES.iter().map(ToString::to_string).collect(),
        trust_root_version: store.trust().version,
        last_plan_seq: state.last_plan_seq,
        ts_ms: u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
    }
}

/// An event to report; telemetry assigns its device and sequence number.
fn event(
    device: &DeviceId,
    kind: EventKind,
    outcome: Outcome,
    code: &str,
    message: String,
) -> Event {
    Event {
        v: ProtocolVersion,
        device: device.clone(),
        seq: 0,
        ts_ms: unix_millis(),
        kind,
        outcome,
        rollout_id: None,
        plan_seq: None,
        bundle_digest: None,
        code: Some(code.to_string()),
        message,
        details: None,
    }
}

/// Cuts the active model's window `[start_ms, now)` with the next persisted sequence number
/// and delivers it; returns where the next window starts. With no model there is nothing to
/// report and the window keeps growing. If the sequence number cannot be persisted the
/// window is not cut either: its calls go into the next one.
async fn flush_window(
    active: &ActiveRuntime,
    retired: &crate::update::Retired,
    store: &Arc<Mutex<Store>>,
    start_ms: u64,
    telemetry: &TelemetryHandle,
) -> u64 {
    let Some(runtime) = active.get() else { return start_ms };
    let end_ms = unix_millis().max(start_ms);
    // Models replaced since the last cut (an install, a rollback) close their last window
    // over the same period, so no call they answered goes unreported.
    let replaced: Vec<Arc<Runtime>> =
        std::mem::take(&mut *retired.lock().unwrap_or_else(PoisonError::into_inner));
    for old in replaced {
        if !send_window_of(&old, store, start_ms, end_ms, telemetry).await {
            tracing::warn!(model = %old.model_ref(), "the replaced model's last window is lost");
        }
    }
    if send_window_of(&runtime, store, start_ms, end_ms, telemetry).await {
        end_ms
    } else {
        start_ms
    }
}

/// Cuts `runtime`'s window `[start_ms, end_ms)` with the next persisted sequence number and
/// delivers it. False when the sequence number could not be persisted (the window stays open).
async fn send_window_of(
    runtime: &Runtime,
    store: &Arc<Mutex<Store>>,
    start_ms: u64,
    end_ms: u64,
    telemetry: &TelemetryHandle,
) -> bool {
    let store = Arc::clone(store);
    let seq = tokio::task::spawn_blocking(move || {
        store.lock().unwrap_or_else(PoisonError::into_inner).take_window_seq()
    })
    .await;
    let seq = match seq {
        Ok(Ok(seq)) => seq,
        Ok(Err(error)) => {
            tracing::error!(%error, "cannot persist the window sequence number; window kept open");
            return false;
        }
        Err(error) => {
            tracing::error!(%error, "window sequence task failed; window kept open");
            return false;
        }
    };
    let window = runtime.cut_window(start_ms, end_ms, seq);
    tracing::debug!(seq, count = window.count, model = %runtime.model_ref(), "statistics window");
    if let Err(error) = telemetry.send_window(window).await {
        // The sequence number is spent either way: a gap, never a reuse.
        tracing::error!(%error, seq, "statistics window lost");
    }
    true
}

async fn wait_for_shutdown(mut receiver: watch::Receiver<bool>) {
    // An error means the sender is gone, which is a shutdown too.
    let _ = receiver.wait_for(|stop| *stop).await;
}

/// The signals that stop the agent, installed once.
struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on SIGTERM or SIGINT with the signal's name.
    async fn received(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
