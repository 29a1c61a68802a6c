//! The updater (DESIGN §4, §6): installs what an approved plan names and nothing else, and
//! never leaves the device without a working, verified model.
//!
//! One task takes the `assign` and `chunk` messages telemetry hands over and drives each
//! admitted plan through
//! `admitted → downloading → verifying → staged → acceptance → shadow → activated → health
//! watch → committed | rolled back`, persisting the phase in `state.json` at every step and
//! reporting every step as an event carrying the rollout, the plan's sequence number and the
//! bundle digest.
//!
//! - [`plan`]: verification and admission of an `assign` (sans IO).
//! - [`fetch`]: the resumable download into the inactive slot's staging area.
//! - [`health`]: baseline latencies, the shadow phase and the health watch (decisions sans IO).
//!
//! Crash safety: the phase is written before its effect is relied on. A restart finds the
//! plan's install in `state.json`; the retained `assign` arrives again and the install resumes
//! (downloading, staged) or is known to be over (a plan is never started twice). A model on
//! trial is not committed, so a restart during the watch goes back to the other slot
//! (`Store::boot`). For tests, `OUTPOST_FAULT=<step>` aborts the process at a named step
//! ([`FAULT_STEPS`]).

pub mod fetch;
pub mod health;
pub mod plan;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outpost_shared::bundle::{self, Bundle, MAX_BUNDLE_BYTES};
use outpost_shared::plan::{BundleRef, Plan};
use outpost_shared::wire::{
    Assign, ChunkReply, Digest, Event, EventKind, FetchErrorCode, FetchRequest, Outcome,
    ProtocolVersion, SlotName, ToDevice,
};
use outpost_shared::{Verified, VerifyError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::api::ActiveRuntime;
use crate::config::AgentConfig;
use crate::fsutil;
use crate::mqtt::TelemetryHandle;
use crate::runtime::Runtime;
use crate::store::{InstallAction, InstallPhase, InstallRecord, SlotRecord, Store};
use fetch::{Download, DownloadError, Progress};
use health::{UpdateObserver, Verdict};
use plan::{Decision, DeviceView};

/// Environment variable naming a step at which the agent aborts (fault injection for tests).
pub const FAULT_ENV: &str = "OUTPOST_FAULT";
/// The steps [`FAULT_ENV`] can name.
pub const FAULT_STEPS: [&str; 6] =
    ["mid-chunk", "after-staging", "mid-activation", "during-watch", "mid-commit", "mid-rollback"];

/// Capabilities `hello` announces for the updater.
pub const CAPABILITIES: [&str; 3] = ["shadow", "resume", "revert"];

/// How often the health watch and the shadow phase look at their numbers.
const POLL: Duration = Duration::from_millis(100);

/// Runtimes replaced by an install or a rollback whose last statistics window the window
/// ticker still has to cut (`crate::app`).
pub type Retired = Arc<Mutex<Vec<Arc<Runtime>>>>;

/// `[update]`: how the agent downloads bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdateConfig {
    /// Bytes asked for per chunk (1 KiB to 256 KiB): the download's memory bound.
    pub chunk_bytes: u32,
    /// Milliseconds to wait for a chunk before asking again.
    pub fetch_timeout_ms: u64,
    /// Longest pause in milliseconds before asking again after the control said it is busy.
    pub retry_max_delay_ms: u64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self { chunk_bytes: 64 * 1024, fetch_timeout_ms: 15_000, retry_max_delay_ms: 30_000 }
    }
}

impl UpdateConfig {
    pub fn validate(&self) -> Result<(), String> {
        let max = outpost_shared::wire::MAX_CHUNK_BYTES as u32;
        if !(1024..=max).contains(&self.chunk_bytes) {
            return Err(format!("chunk_bytes {} is not between 1024 and {max}", self.chunk_bytes));
        }
        if !(100..=600_000).contains(&self.fetch_timeout_ms) {
            return Err("fetch_timeout_ms must be between 100 and 600000".into());
        }
        if !(100..=3_600_000).contains(&self.retry_max_delay_ms) {
            return Err("retry_max_delay_ms must be between 100 and 3600000".into());
        }
        Ok(())
    }
}

/// Why an install stopped early (already reported when it gets here).
#[derive(Debug)]
enum Stop {
    /// Refused or failed; the phase is `failed` and the old model serves.
    Failed,
    /// A newer admitted assignment arrived during the download.
    Superseded(Box<Assign>),
    /// The message channel closed: the agent is stopping.
    Closed,
}

/// Rollout, plan sequence and bundle digest: what every event of an install carries.
#[derive(Debug, Clone, Default)]
struct Context {
    rollout: Option<String>,
    plan_seq: Option<u64>,
    digest: Option<String>,
}

/// The updater task. See the module docs.
#[derive(Debug)]
pub struct Updater {
    config: AgentConfig,
    store: Arc<Mutex<Store>>,
    active: Arc<ActiveRuntime>,
    retired: Retired,
    observer: Arc<UpdateObserver>,
    telemetry: TelemetryHandle,
    fault: Option<String>,
    requests: u64,
    /// The latest assignment that arrived while an install was busy, handled after it.
    pending: Option<Assign>,
}

impl Updater {
    /// An updater over the agent's store and serving runtime; installs its observer on
    /// `active`.
    pub fn new(
        config: AgentConfig,
        store: Arc<Mutex<Store>>,
        active: Arc<ActiveRuntime>,
        retired: Retired,
        telemetry: TelemetryHandle,
    ) -> Self {
        let observer = Arc::new(UpdateObserver::default());
        active.set_observer(Some(observer.clone()));
        let fault = std::env::var(FAULT_ENV).ok().filter(|step| !step.is_empty());
        if let Some(step) = &fault {
            tracing::warn!(%step, "fault injection armed: the agent aborts at this step");
        }
        Self {
            config,
            store,
            active,
            retired,
            observer,
            telemetry,
            fault,
            requests: 0,
            pending: None,
        }
    }

    /// Takes assignments until the channel closes.
    pub async fn run(mut self, mut messages: mpsc::Receiver<ToDevice>) {
        loop {
            let message = match self.pending.take() {
                Some(assign) => ToDevice::Assign(assign),
                None => match messages.recv().await {
                    Some(message) => message,
                    None => return,
                },
            };
            match message {
                ToDevice::Assign(assign) => match self.on_assign(assign, &mut messages).await {
                    Ok(()) | Err(Stop::Failed) => {}
                    Err(Stop::Superseded(assign)) => self.pending = Some(*assign),
                    Err(Stop::Closed) => return,
                },
                ToDevice::AssignCleared => {
                    tracing::info!("the control withdrew the assignment; nothing to undo");
                }
                ToDevice::Chunk(_) => tracing::debug!("chunk with no download in progress"),
                // Sampling is telemetry's business (`crate::sampling`), never the updater's.
                ToDevice::Sampling(_) => {}
            }
        }
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn decide(&self, assign: &Assign) -> Decision {
        let store = self.lock_store();
        let view = DeviceView {
            device: self.config.device.id.as_str(),
            tags: &self.config.device.tags,
            state: store.state(),
        };
        plan::decide(assign, store.trust(), view, OffsetDateTime::now_utc())
    }

    async fn on_assign(
        &mut self,
        assign: Assign,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Result<(), Stop> {
        tracing::info!(
            rollout = %assign.admission.rollout_id,
            action = ?assign.admission.action,
            wave = assign.admission.wave,
            "assignment received; verifying the plan"
        );
        match self.decide(&assign) {
            Decision::Refuse(refusal) => {
                self.report_refusal(&refusal).await;
                Err(Stop::Failed)
            }
            Decision::Again { plan, .. } => {
                let install = self.lock_store().state().install.clone();
                match install {
                    Some(install) if !install.phase.concluded() => {
                        tracing::info!(seq = plan.seq, phase = ?install.phase, "resuming the install");
                        self.proceed(&plan, install, messages).await
                    }
                    _ => {
                        tracing::debug!(seq = plan.seq, "plan already handled");
                        Ok(())
                    }
                }
            }
            Decision::Admit { plan, action } => self.admit(&plan, action, messages).await,
        }
    }

    async fn report_refusal(&self, refusal: &plan::Refusal) {
        let context = Context {
            rollout: Some(refusal.rollout.clone()),
            plan_seq: refusal.claimed_seq,
            digest: refusal.claimed_digest.clone(),
        };
        self.report(
            &context,
            EventKind::Rejected,
            Outcome::Refused,
            refusal.error.code(),
            format!("plan refused, the current model keeps serving: {}", refusal.error),
            None,
        )
        .await;
    }

    async fn admit(
        &mut self,
        plan: &Verified<Plan>,
        action: InstallAction,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Result<(), Stop> {
        let target = target_of(plan, action).clone();
        let (active, committed, holder) = {
            let store = self.lock_store();
            let state = store.state();
            (state.active, state.committed, store.slot_with(&target.digest))
        };
        let slot = active.map_or(SlotName::A, SlotName::other);
        let already_serving = holder.is_some() && holder == active && committed;
        let phase = if already_serving {
            InstallPhase::Committed
        } else if holder == Some(slot) {
            InstallPhase::Staged
        } else {
            InstallPhase::Downloading
        };
        let record = InstallRecord {
            rollout: plan.rollout.clone(),
            plan_seq: plan.seq,
            action,
            bundle: SlotRecord {
                name: target.name.clone(),
                version: target.version.clone(),
                digest: target.digest.clone(),
                size: target.size,
            },
            slot,
            phase,
            reason: None,
        };
        let context = context_of(&record);
        let accepted = self.lock_store().accept_plan(record.clone());
        if let Err(error) = accepted {
            tracing::error!(%error, "cannot record the admitted plan");
            self.report(
                &context,
                EventKind::Error,
                Outcome::Failed,
                "state_write",
                error.to_string(),
                None,
            )
            .await;
            return Err(Stop::Failed);
        }
        let what = match action {
            InstallAction::Install => "install",
            InstallAction::Revert => "revert to the plan's fallback",
        };
        self.report(
            &context,
            EventKind::Admitted,
            Outcome::Ok,
            "admitted",
            format!(
                "plan {} seq {} admitted ({what}: {}@{}), approved by {}",
                plan.rollout,
                plan.seq,
                target.name,
                target.version,
                plan.signers().join(", ")
            ),
            None,
        )
        .await;
        self.publish_hello().await;
        if already_serving {
            self.report(
                &context,
                EventKind::Committed,
                Outcome::Ok,
                "already_serving",
                format!("{}@{} already serves on this device", target.name, target.version),
                None,
            )
            .await;
            return Ok(());
        }
        self.proceed(plan, record, messages).await
    }

    /// Carries an admitted install on from its recorded phase.
    async fn proceed(
        &mut self,
        plan: &Verified<Plan>,
        record: InstallRecord,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Result<(), Stop> {
        let context = context_of(&record);
        if self.lock_store().state().active == Some(record.slot) {
            return self
                .fail(&context, EventKind::Error, "slot_busy", "the target slot serves now".into())
                .await;
        }
        let staging = self.lock_store().staging_dir(record.slot);
        if record.phase == InstallPhase::Downloading {
            let path = self.download(&context, &record, &staging, messages).await?;
            self.report(
                &context,
                EventKind::Verifying,
                Outcome::Ok,
                "verifying",
                "download complete; verifying the bundle".into(),
                None,
            )
            .await;
            let verified = match self.verify_download(&path, &record).await {
                Ok(verified) => verified,
                Err(error) => {
                    fetch::clear(&staging);
                    return self.refuse(&context, &error).await;
                }
            };
            let slot = record.slot;
            let staged = {
                let store = Arc::clone(&self.store);
                let verified = verified.clone();
                blocking(move || {
                    store
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .install_staged(slot, &path, &verified)
                })
                .await
            };
            if let Err(error) = staged {
                return self.fail(&context, EventKind::Error, "stage_failed", error).await;
            }
            fetch::clear(&staging);
            self.report(
                &context,
                EventKind::Staged,
                Outcome::Ok,
                "staged",
                format!(
                    "{} verified and staged in slot {}",
                    verified.manifest.id(),
                    slot_name(slot)
                ),
                None,
            )
            .await;
            self.publish_hello().await;
            self.fault_point("after-staging");
        }
        self.accept_and_activate(plan, &record, &context, messages).await
    }

    async fn accept_and_activate(
        &mut self,
        plan: &Verified<Plan>,
        record: &InstallRecord,
        context: &Context,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Result<(), Stop> {
        let slot = record.slot;
        let device = self.config.device.id.clone();
        let store = Arc::clone(&self.store);
        let accepted = run_blocking(move || {
            let bundle = store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .load_bundle(slot, OffsetDateTime::now_utc())
                .map_err(|e| ("verify_failed", e.to_string()))?;
            let runtime =
                Runtime::new(&bundle, device).map_err(|e| ("load_failed", e.to_string()))?;
            runtime.check_golden().map_err(|e| ("golden_mismatch", e.to_string()))?;
            Ok::<_, (&'static str, String)>((bundle, runtime))
        })
        .await
        .and_then(|result| result.map_err(|(code, message)| format!("{code}: {message}")));
        let (bundle, candidate) = match accepted {
            Ok((bundle, runtime)) => (bundle, Arc::new(runtime)),
            Err(reason) => {
                let code = reason.split(':').next().unwrap_or("acceptance_failed").to_string();
                self.clear_slot(slot).await;
                return self
                    .fail(
                        context,
                        EventKind::AcceptanceFailed,
                        &code,
                        format!("not activated, the current model keeps serving: {reason}"),
                    )
                    .await;
            }
        };
        self.report(
            context,
            EventKind::AcceptancePassed,
            Outcome::Ok,
            "golden_passed",
            format!(
                "{} reproduces its {} golden cases on this device",
                bundle.manifest.id(),
                bundle.golden.cases.len()
            ),
            None,
        )
        .await;
        let is_revert = record.action == InstallAction::Revert;
        if !is_revert
            && let Some(shadow) = &plan.health.shadow
            && self.active.get().is_some()
        {
            self.shadow(context, &candidate, &bundle, shadow, messages).await;
        }
        // Activation: the state first (a restart now goes back to the other slot unless this
        // model commits), then the swap; requests in flight finish on the old runtime.
        let _ = candidate.cut_window(0, 0, 0);
        let activated = {
            let store = Arc::clone(&self.store);
            blocking(move || {
                store.lock().unwrap_or_else(PoisonError::into_inner).activate_trial(slot)
            })
            .await
        };
        if let Err(error) = activated {
            self.clear_slot(slot).await;
            return self.fail(context, EventKind::Error, "activation_failed", error).await;
        }
        self.fault_point("mid-activation");
        let baseline_p95 = self.observer.baseline_p95();
        let previous = self.active.replace(Some(Arc::clone(&candidate)));
        self.retire(previous.clone());
        self.report(
            context,
            EventKind::Activated,
            Outcome::Ok,
            "activated",
            format!("{} serves from slot {} (on trial)", bundle.manifest.id(), slot_name(slot)),
            None,
        )
        .await;
        self.publish_hello().await;
        if is_revert || previous.is_none() {
            // A revert goes back to a model the operator chose; a first model has nothing
            // to go back to. Either way there is no better model to roll back to.
            return self.commit(context, &bundle, None).await;
        }
        let verdict = self.watch(plan, context, &candidate, &bundle, baseline_p95, messages).await;
        match verdict {
            Verdict::RollBack { code, reason } => {
                self.roll_back(context, slot.other(), previous, code, &reason).await
            }
            Verdict::Commit | Verdict::KeepWatching => {
                let stats = self.observer.stop_watch();
                let details = watch_details(&stats, baseline_p95);
                self.commit(context, &bundle, Some(details)).await
            }
        }
    }

    async fn shadow(
        &mut self,
        context: &Context,
        candidate: &Arc<Runtime>,
        bundle: &Verified<Bundle>,
        policy: &outpost_shared::plan::ShadowPolicy,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) {
        self.report(
            context,
            EventKind::ShadowStarted,
            Outcome::Ok,
            "shadow_started",
            format!("shadowing for {} requests or {} s", policy.requests, policy.seconds),
            None,
        )
        .await;
        self.observer.start_shadow(Arc::clone(candidate), bundle.manifest.task, policy.tolerance);
        let deadline = Instant::now() + Duration::from_secs(policy.seconds);
        while Instant::now() < deadline && self.observer.shadow_stats().seen() < policy.requests {
            self.idle(POLL, messages).await;
        }
        let stats = self.observer.stop_shadow();
        let mut details = Map::new();
        details.insert("compared".into(), json!(stats.compared));
        details.insert("agreed".into(), json!(stats.agreed));
        details.insert("agreement".into(), json!(stats.agreement_rate()));
        details.insert("candidate_errors".into(), json!(stats.candidate_errors));
        details.insert("skipped".into(), json!(stats.skipped));
        details.insert("latency_delta_ms".into(), json!(stats.latency_delta_ms()));
        let agreement = stats.agreement_rate().map_or_else(
            || "no requests to compare".to_string(),
            |r| format!("{:.1}% agreement", r * 100.0),
        );
        self.report(
            context,
            EventKind::ShadowReport,
            Outcome::Ok,
            "shadow_report",
            format!("shadow phase over: {agreement} on {} requests", stats.compared),
            Some(details),
        )
        .await;
    }

    async fn watch(
        &mut self,
        plan: &Verified<Plan>,
        context: &Context,
        candidate: &Arc<Runtime>,
        bundle: &Verified<Bundle>,
        baseline_p95: Option<Duration>,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Verdict {
        let policy = &plan.health;
        self.report(
            context,
            EventKind::HealthWatch,
            Outcome::Ok,
            "health_watch",
            format!(
                "watching for {} s: at most {:.1}% errors, p95 at most {:.2}x the previous model's",
                policy.watch_seconds,
                policy.max_error_rate * 100.0,
                policy.max_p95_latency_ratio
            ),
            None,
        )
        .await;
        let outputs = health::OutputBaseline::of_profile(&bundle.profile);
        self.observer.start_watch(Arc::clone(candidate), outputs);
        let deadline = Instant::now() + Duration::from_secs(policy.watch_seconds);
        loop {
            let finished = Instant::now() >= deadline;
            let verdict =
                health::judge(policy, &self.observer.watch_stats(), baseline_p95, finished);
            if verdict != Verdict::KeepWatching {
                return verdict;
            }
            self.fault_point("during-watch");
            self.idle(POLL, messages).await;
        }
    }

    async fn commit(
        &mut self,
        context: &Context,
        bundle: &Verified<Bundle>,
        details: Option<Map<String, Value>>,
    ) -> Result<(), Stop> {
        self.fault_point("mid-commit");
        let store = Arc::clone(&self.store);
        if let Err(error) =
            blocking(move || store.lock().unwrap_or_else(PoisonError::into_inner).commit()).await
        {
            // Not committed on disk: a restart goes back to the other slot, which is safe.
            tracing::error!(%error, "cannot record the commit");
            self.report(context, EventKind::Error, Outcome::Failed, "state_write", error, None)
                .await;
            return Err(Stop::Failed);
        }
        self.report(
            context,
            EventKind::Committed,
            Outcome::Ok,
            "committed",
            format!("{} committed", bundle.manifest.id()),
            details,
        )
        .await;
        self.publish_hello().await;
        Ok(())
    }

    async fn roll_back(
        &mut self,
        context: &Context,
        to: SlotName,
        previous: Option<Arc<Runtime>>,
        code: &str,
        reason: &str,
    ) -> Result<(), Stop> {
        let stats = self.observer.stop_watch();
        self.fault_point("mid-rollback");
        let store = Arc::clone(&self.store);
        let reason_code = code.to_string();
        let written = blocking(move || {
            store.lock().unwrap_or_else(PoisonError::into_inner).serve_slot(
                to,
                InstallPhase::RolledBack,
                Some(reason_code),
            )
        })
        .await;
        if let Err(error) = written {
            // The trial is not committed: the next start goes back to the other slot anyway.
            tracing::error!(%error, "cannot record the rollback");
        }
        let replaced = self.active.replace(previous);
        self.retire(replaced);
        let mut details = watch_details(&stats, None);
        details.insert("reason".into(), json!(reason));
        self.report(
            context,
            EventKind::RolledBack,
            Outcome::Failed,
            code,
            format!("rolled back to slot {}: {reason}", slot_name(to)),
            Some(details),
        )
        .await;
        self.publish_hello().await;
        Err(Stop::Failed)
    }

    /// Waits `period`, keeping the latest assignment that arrives for when the install is
    /// over and dropping chunks (no download runs now).
    async fn idle(&mut self, period: Duration, messages: &mut mpsc::Receiver<ToDevice>) {
        let pending = &mut self.pending;
        let _ = tokio::time::timeout(period, async {
            while let Some(message) = messages.recv().await {
                if let ToDevice::Assign(assign) = message {
                    tracing::info!(
                        rollout = %assign.admission.rollout_id,
                        "assignment received during an install; handled after it"
                    );
                    *pending = Some(assign);
                }
            }
        })
        .await;
    }

    async fn download(
        &mut self,
        context: &Context,
        record: &InstallRecord,
        staging: &std::path::Path,
        messages: &mut mpsc::Receiver<ToDevice>,
    ) -> Result<PathBuf, Stop> {
        let digest = match Digest::parse(&record.bundle.digest) {
            Ok(digest) => digest,
            Err(error) => {
                return self
                    .refuse(
                        context,
                        &VerifyError::Malformed { what: "plan", reason: error.to_string() },
                    )
                    .await;
            }
        };
        let size = record.bundle.size;
        let dir = staging.to_path_buf();
        let opened = {
            let digest = digest.clone();
            blocking(move || Download::open(&dir, digest, size)).await
        };
        let mut download = match opened {
            Ok(download) => download,
            Err(error) => {
                return self.fail(context, EventKind::Error, "download_failed", error).await;
            }
        };
        let mut details = Map::new();
        details.insert("offset".into(), json!(download.offset()));
        details.insert("size".into(), json!(size));
        let resumed = if download.offset() > 0 { " (resumed)" } else { "" };
        self.report(
            context,
            EventKind::Downloading,
            Outcome::Ok,
            "downloading",
            format!("downloading {size} bytes from offset {}{resumed}", download.offset()),
            Some(details),
        )
        .await;
        if download.is_complete() {
            return Ok(download.part_path());
        }
        let timeout = Duration::from_millis(self.config.update.fetch_timeout_ms);
        let max_delay = Duration::from_millis(self.config.update.retry_max_delay_ms);
        let mut busy_delay = Duration::from_millis(250);
        loop {
            self.requests += 1;
            let request = FetchRequest {
                v: ProtocolVersion,
                request_id: format!("u{}-{}", record.plan_seq, self.requests),
                digest: digest.clone(),
                offset: download.offset(),
                max_len: self.config.update.chunk_bytes,
            };
            if let Err(error) = self.telemetry.send_fetch(&request).await {
                tracing::warn!(%error, "cannot send a fetch request");
            }
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let message = tokio::select! {
                    message = messages.recv() => message,
                    () = tokio::time::sleep_until(deadline) => {
                        tracing::debug!(offset = download.offset(), "no chunk in time; asking again");
                        break;
                    }
                };
                let Some(message) = message else { return Err(Stop::Closed) };
                match message {
                    ToDevice::Chunk(ChunkReply::Chunk(frame))
                        if frame.header.request_id == request.request_id =>
                    {
                        let (returned, progress) = run_blocking(move || {
                            let progress = download.accept(&frame);
                            (download, progress)
                        })
                        .await
                        .map_err(|error| {
                            tracing::error!(%error, "download task failed");
                            Stop::Failed
                        })?;
                        download = returned;
                        match progress {
                            Ok(Progress::Complete) => return Ok(download.part_path()),
                            Ok(Progress::Advanced) => {
                                busy_delay = Duration::from_millis(250);
                                self.fault_point("mid-chunk");
                                break;
                            }
                            Ok(Progress::Ignored) => {}
                            Err(DownloadError::Refused(error)) => {
                                fetch::clear(staging);
                                return self.refuse(context, &error).await;
                            }
                            Err(DownloadError::File(error)) => {
                                return self
                                    .fail(
                                        context,
                                        EventKind::Error,
                                        "download_failed",
                                        error.to_string(),
                                    )
                                    .await;
                            }
                        }
                    }
                    ToDevice::Chunk(ChunkReply::Error(error))
                        if error.request_id == request.request_id =>
                    {
                        if error.code == FetchErrorCode::Unavailable {
                            tokio::time::sleep(busy_delay).await;
                            busy_delay = (busy_delay * 2).min(max_delay);
                            break;
                        }
                        return self
                            .fail(
                                context,
                                EventKind::Error,
                                "fetch_refused",
                                format!("the control cannot serve the bundle: {error}"),
                            )
                            .await;
                    }
                    ToDevice::Chunk(_) | ToDevice::Sampling(_) => {}
                    ToDevice::AssignCleared => {}
                    ToDevice::Assign(assign) => match self.decide(&assign) {
                        Decision::Refuse(refusal) => self.report_refusal(&refusal).await,
                        Decision::Again { .. } => {}
                        Decision::Admit { .. } => {
                            let reason = format!(
                                "superseded by rollout {} before the download finished",
                                assign.admission.rollout_id
                            );
                            let _ = self
                                .fail::<()>(context, EventKind::Error, "superseded", reason)
                                .await;
                            fetch::clear(staging);
                            return Err(Stop::Superseded(Box::new(assign)));
                        }
                    },
                }
            }
        }
    }

    /// Reads the downloaded file and verifies it as a bundle, and that it is the one the plan
    /// names.
    async fn verify_download(
        &self,
        path: &std::path::Path,
        record: &InstallRecord,
    ) -> Result<Verified<Bundle>, VerifyError> {
        let trust = self.lock_store().trust().clone();
        let path = path.to_path_buf();
        let expected = record.bundle.clone();
        let result = run_blocking(move || {
            let bytes = fsutil::read_limited(&path, MAX_BUNDLE_BYTES, "bundle")
                .map_err(|e| VerifyError::Malformed { what: "bundle", reason: e.to_string() })?;
            let verified = bundle::verify(&bytes, &trust, OffsetDateTime::now_utc())?;
            if verified.digest != expected.digest {
                return Err(VerifyError::DigestMismatch {
                    what: "bundle".into(),
                    expected: expected.digest.clone(),
                    actual: verified.digest.clone(),
                });
            }
            if verified.manifest.name != expected.name
                || verified.manifest.version != expected.version
            {
                return Err(VerifyError::Malformed {
                    what: "bundle",
                    reason: format!(
                        "the plan names {}@{}, the bundle is {}",
                        expected.name,
                        expected.version,
                        verified.manifest.id()
                    ),
                });
            }
            Ok(verified)
        })
        .await;
        result.map_err(|reason| VerifyError::Malformed { what: "bundle", reason })?
    }

    async fn clear_slot(&self, slot: SlotName) {
        let store = Arc::clone(&self.store);
        let result =
            blocking(move || store.lock().unwrap_or_else(PoisonError::into_inner).clear_slot(slot))
                .await;
        if let Err(error) = result {
            tracing::error!(%error, "cannot empty the slot of a refused bundle");
        }
        self.publish_hello().await;
    }

    /// Reports a verification refusal and concludes the install as failed.
    async fn refuse<T>(&mut self, context: &Context, error: &VerifyError) -> Result<T, Stop> {
        self.conclude_failed(error.code()).await;
        self.report(
            context,
            EventKind::Rejected,
            Outcome::Refused,
            error.code(),
            format!("bundle refused, the current model keeps serving: {error}"),
            None,
        )
        .await;
        Err(Stop::Failed)
    }

    /// Reports a failure and concludes the install as failed.
    async fn fail<T>(
        &mut self,
        context: &Context,
        kind: EventKind,
        code: &str,
        message: String,
    ) -> Result<T, Stop> {
        self.conclude_failed(code).await;
        self.report(context, kind, Outcome::Failed, code, message, None).await;
        Err(Stop::Failed)
    }

    async fn conclude_failed(&self, code: &str) {
        let store = Arc::clone(&self.store);
        let code = code.to_string();
        let result = blocking(move || {
            store
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .set_install_phase(InstallPhase::Failed, Some(code))
        })
        .await;
        if let Err(error) = result {
            tracing::error!(%error, "cannot record the failed install");
        }
    }

    async fn report(
        &self,
        context: &Context,
        kind: EventKind,
        outcome: Outcome,
        code: &str,
        message: String,
        details: Option<Map<String, Value>>,
    ) {
        match outcome {
            Outcome::Ok => tracing::info!(%kind, %code, "update: {message}"),
            Outcome::Failed | Outcome::Refused => {
                tracing::warn!(%kind, %code, "update: {message}");
            }
        }
        let event = Event {
            v: ProtocolVersion,
            device: self.config.device.id.clone(),
            seq: 0,
            ts_ms: unix_millis(),
            kind,
            outcome,
            rollout_id: context.rollout.clone(),
            plan_seq: context.plan_seq,
            bundle_digest: context.digest.as_deref().and_then(|d| Digest::parse(d).ok()),
            code: Some(code.to_string()),
            message: shorten(message, MAX_EVENT_MESSAGE_BYTES),
            details,
        };
        let result = match self.telemetry.send_event(event.clone()).await {
            // A signed plan may name its rollout in a form the wire does not take as an id:
            // the event still goes out, without it.
            Err(crate::mqtt::TelemetryError::InvalidMessage { .. })
                if event.rollout_id.is_some() =>
            {
                self.telemetry.send_event(Event { rollout_id: None, ..event }).await
            }
            other => other,
        };
        if let Err(error) = result {
            tracing::warn!(%error, %kind, "cannot report an update event");
        }
    }

    async fn publish_hello(&self) {
        let hello = {
            let store = self.lock_store();
            crate::app::hello_of(&self.config, &store, OffsetDateTime::now_utc())
        };
        if let Err(error) = self.telemetry.update_hello(hello).await {
            tracing::warn!(%error, "cannot publish the updated hello");
        }
    }

    /// Hands a replaced runtime to the window ticker for its last window.
    fn retire(&self, runtime: Option<Arc<Runtime>>) {
        if let Some(runtime) = runtime {
            self.retired.lock().unwrap_or_else(PoisonError::into_inner).push(runtime);
        }
    }

    fn fault_point(&self, step: &str) {
        if self.fault.as_deref() == Some(step) {
            tracing::error!(%step, "fault injection: aborting");
            std::process::abort();
        }
    }
}

fn target_of(plan: &Plan, action: InstallAction) -> &BundleRef {
    match (action, &plan.fallback) {
        (InstallAction::Revert, Some(fallback)) => fallback,
        _ => &plan.bundle,
    }
}

fn context_of(record: &InstallRecord) -> Context {
    Context {
        rollout: Some(record.rollout.clone()),
        plan_seq: Some(record.plan_seq),
        digest: Some(record.bundle.digest.clone()),
    }
}

fn watch_details(stats: &health::WatchStats, baseline_p95: Option<Duration>) -> Map<String, Value> {
    let mut details = Map::new();
    details.insert("requests".into(), json!(stats.requests));
    details.insert("errors".into(), json!(stats.errors));
    details.insert("error_rate".into(), json!(stats.error_rate()));
    details.insert("p95_ms".into(), json!(stats.p95().map(|d| d.as_secs_f64() * 1e3)));
    details.insert("previous_p95_ms".into(), json!(baseline_p95.map(|d| d.as_secs_f64() * 1e3)));
    details.insert("output_psi".into(), json!(stats.output_psi()));
    details
}

fn slot_name(slot: SlotName) -> &'static str {
    match slot {
        SlotName::A => "a",
        SlotName::B => "b",
    }
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Longest event message written, in bytes.
const MAX_EVENT_MESSAGE_BYTES: usize = 1024;

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn shorten(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Runs blocking work off the async workers.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|error| format!("task failed: {error}"))
}

/// Runs blocking work (files, fsync, model loading) off the async workers.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(format!("task failed: {error}")),
    }
}
