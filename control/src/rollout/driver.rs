//! The rollout driver: a task of `outpost serve` that moves rollouts along.
//!
//! Every tick (and whenever the API wakes it) it takes the rollouts with work
//! ([`Store::rollouts_to_drive`]), and for each one whose lease it holds or can take
//! ([`Store::acquire_rollout_lease`]; one instance drives a rollout at a time, a dead driver's
//! lease expires and another instance takes over) it reconciles the stored state with the fleet:
//!
//! - places new cohort devices (holdout or not, [`super::placement`]);
//! - the first time it drives a rollout (after a start, a restart or a takeover) it publishes
//!   again the assignment of every device already admitted, byte for byte the same retained
//!   message (same signed plan, same admission), so a crash between recording an admission and
//!   publishing it loses nothing and no device ever sees a second plan;
//! - running: admits the current wave up to its size (devices joining the cohort mid-rollout
//!   included), and once the soak is over judges the wave ([`super::gates`]) from device
//!   events and ingested windows and applies the machine's transition ([`super::machine`]);
//! - completed: admits the holdout; rolled back: sends admitted devices to the fallback.
//!
//! Every effect is derived from stored state, so an effect interrupted by a crash is redone by
//! the next driver.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use outpost_shared::dsse::Envelope;
use outpost_shared::selector::Selector;
use outpost_shared::wire::{
    Admission, AdmissionAction, Assign, DeviceId, ProtocolVersion, Publish,
};
use tokio::sync::{Notify, watch};

use super::gates::{self, Evaluation, WaveFigures};
use super::machine::{Effect, RolloutState, Shape, WavePhase};
use super::placement;
use super::spec::RolloutSpec;
use crate::store::ingest::{AggregateKind, AggregateWindow};
use crate::store::inventory::DeviceFilter;
use crate::store::rollouts::{Change, RolloutDevice, RolloutRecord};
use crate::store::{Store, StoreError, now_ms};

/// How the driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Time between ticks.
    pub tick: Duration,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
    /// This instance's name in leases.
    pub owner: String,
}

/// Why a rollout could not be driven this tick (logged; retried next tick).
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rollout {0}: {1}")]
    Invalid(String, String),
    #[error("cannot publish to {0}: {1}")]
    Publish(String, String),
}

/// The shape of a spec, for the machine.
pub fn shape_of(spec: &RolloutSpec) -> Shape {
    Shape {
        waves: u32::try_from(spec.waves.len()).unwrap_or(u32::MAX),
        soak_ms: spec
            .waves
            .iter()
            .map(|w| i64::try_from(w.soak_seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
            .collect(),
        advance: spec.advance,
        on_gate_fail: spec.on_gate_fail,
        has_fallback: spec.fallback.is_some(),
    }
}

/// The driver task.
#[derive(Debug)]
pub struct Driver {
    store: Store,
    mqtt: Option<rumqttc::AsyncClient>,
    config: DriverConfig,
    /// Rollouts whose admitted devices this instance republished since it took the lease.
    republished: HashSet<String>,
}

impl Driver {
    pub fn new(store: Store, mqtt: Option<rumqttc::AsyncClient>, config: DriverConfig) -> Self {
        Driver { store, mqtt, config, republished: HashSet::new() }
    }

    /// Ticks until `stop`; then gives up its leases so another instance takes over at once.
    pub async fn run(mut self, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        tracing::info!(owner = %self.config.owner, tick = ?self.config.tick, "rollout driver running");
        loop {
            self.tick_all().await;
            tokio::select! {
                _ = tokio::time::sleep(self.config.tick) => {}
                _ = wake.notified() => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        for id in std::mem::take(&mut self.republished) {
            if let Err(error) = self.store.release_rollout_lease(&id, &self.config.owner).await {
                tracing::warn!(rollout = %id, %error, "cannot release the rollout lease");
            }
        }
    }

    /// One pass over every rollout with work.
    pub async fn tick_all(&mut self) {
        let ids = match self.store.rollouts_to_drive().await {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "cannot list rollouts to drive; retried next tick");
                return;
            }
        };
        for id in ids {
            let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX);
            match self
                .store
                .acquire_rollout_lease(&id, &self.config.owner, now_ms(), lease_ms)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Another instance drives it; republish if this one ever gets it back.
                    self.republished.remove(&id);
                    continue;
                }
                Err(error) => {
                    tracing::warn!(rollout = %id, %error, "cannot take the rollout lease");
                    continue;
                }
            }
            // Several steps per tick: admitting a wave and judging it are separate steps.
            for _ in 0..4 {
                match self.drive(&id).await {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(error) => {
                        tracing::warn!(rollout = %id, %error, "rollout step failed; retried next tick");
                        // An admission may be recorded but unpublished: publish every
                        // admitted device's assignment again on the next pass.
                        self.republished.remove(&id);
                        break;
                    }
                }
            }
        }
    }

    /// One step on rollout `id`; `true` when it changed state (another step may follow).
    async fn drive(&mut self, id: &str) -> Result<bool, DriveError> {
        let Some(rollout) = self.store.rollout(id).await? else { return Ok(false) };
        let Some(signed) = rollout.signed_envelope.clone() else {
            return Err(DriveError::Invalid(id.into(), "running without a signed plan".into()));
        };
        let envelope = Envelope::from_slice(signed.as_bytes())
            .map_err(|error| DriveError::Invalid(id.into(), format!("stored plan: {error}")))?;
        let shape = shape_of(&rollout.spec);
        self.place(&rollout).await?;
        let devices = self.store.rollout_devices(id).await?;
        if !self.republished.contains(id) {
            self.republish(&rollout, &envelope, &devices).await?;
            self.republished.insert(id.to_string());
        }
        match rollout.state {
            RolloutState::Running => self.step_running(&rollout, &shape, &envelope, &devices).await,
            RolloutState::Completed => {
                self.release_holdout(&rollout, &envelope, &devices).await?;
                Ok(false)
            }
            RolloutState::RolledBack => {
                self.revert(&rollout, &envelope, &devices).await?;
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// Places cohort devices not placed yet.
    async fn place(&self, rollout: &RolloutRecord) -> Result<(), DriveError> {
        if rollout.state != RolloutState::Running {
            return Ok(());
        }
        let selector = Selector::parse(&rollout.spec.cohort)
            .map_err(|error| DriveError::Invalid(rollout.id.clone(), error.to_string()))?;
        let cohort: Vec<String> = self
            .store
            .list_devices(&DeviceFilter { selector: Some(selector), ..DeviceFilter::default() })
            .await?
            .into_iter()
            .map(|device| device.device_id)
            .collect();
        let placed: HashSet<String> = self
            .store
            .rollout_devices(&rollout.id)
            .await?
            .into_iter()
            .map(|device| device.device_id)
            .collect();
        let share = rollout.spec.holdout_share();
        let new: Vec<(String, bool)> = if placed.is_empty() {
            let holdout: HashSet<String> =
                placement::initial_holdout(&rollout.id, &cohort, share).into_iter().collect();
            cohort.iter().map(|d| (d.clone(), holdout.contains(d))).collect()
        } else {
            cohort
                .iter()
                .filter(|d| !placed.contains(*d))
                .map(|d| (d.clone(), placement::joiner_held_out(&rollout.id, d, share)))
                .collect()
        };
        self.store.place_rollout_devices(&rollout.id, &new).await?;
        Ok(())
    }

    async fn step_running(
        &mut self,
        rollout: &RolloutRecord,
        shape: &Shape,
        envelope: &Envelope,
        devices: &[RolloutDevice],
    ) -> Result<bool, DriveError> {
        let now = now_ms();
        let progress = rollout.progress();
        let expires_ms = rollout
            .created_ms
            .saturating_add(i64::from(rollout.spec.expires_in_hours).saturating_mul(3_600_000));
        if let Some(transition) = progress.expire(now, expires_ms) {
            let change = Change {
                next: transition.next,
                action: transition.action,
                actor: "control",
                reason: &transition.reason,
                signed_envelope: None,
                gates: None,
                source: "control",
            };
            self.store
                .change_rollout(&rollout.id, rollout.revision, rollout.state, &change)
                .await?;
            return Ok(false);
        }
        if progress.phase != WavePhase::Pending {
            // Devices that joined the cohort, or an admission a crash interrupted.
            self.top_up(rollout, envelope, devices, progress.wave).await?;
        }
        let evaluation = if progress.soak_over(shape, now) {
            let devices = self.store.rollout_devices(&rollout.id).await?;
            let evaluation = self.evaluate(rollout, &devices, now).await?;
            let value = serde_json::to_value(&evaluation)
                .map_err(|error| DriveError::Invalid(rollout.id.clone(), error.to_string()))?;
            self.store.save_rollout_gates(&rollout.id, &value).await?;
            Some(evaluation)
        } else {
            None
        };
        let Some(transition) = progress.tick(shape, now, evaluation.as_ref().map(|e| &e.judgement))
        else {
            return Ok(false);
        };
        let gates_value = evaluation
            .as_ref()
            .map(serde_json::to_value)
            .transpose()
            .map_err(|error| DriveError::Invalid(rollout.id.clone(), error.to_string()))?;
        let change = Change {
            next: transition.next,
            action: transition.action,
            actor: "control",
            reason: &transition.reason,
            signed_envelope: None,
            // A new wave starts without a judgement.
            gates: match transition.next.phase {
                WavePhase::Pending if transition.next.wave != progress.wave => Some(None),
                _ => gates_value.as_ref().map(Some),
            },
            source: "control",
        };
        if !self.store.change_rollout(&rollout.id, rollout.revision, rollout.state, &change).await?
        {
            return Ok(true);
        }
        tracing::info!(rollout = %rollout.id, action = transition.action, reason = %transition.reason,
            state = %transition.next.state, wave = transition.next.wave, "rollout transition");
        let devices = self.store.rollout_devices(&rollout.id).await?;
        for effect in &transition.effects {
            match effect {
                Effect::AdmitWave(wave) => self.top_up(rollout, envelope, &devices, *wave).await?,
                Effect::ReleaseHoldout => self.release_holdout(rollout, envelope, &devices).await?,
                Effect::RevertAdmitted => self.revert(rollout, envelope, &devices).await?,
            }
        }
        Ok(true)
    }

    /// Admits devices of `wave` until the wave's size is reached.
    async fn top_up(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        devices: &[RolloutDevice],
        wave: u32,
    ) -> Result<(), DriveError> {
        let Some(spec) = rollout.spec.waves.get(wave as usize) else { return Ok(()) };
        let eligible: Vec<&RolloutDevice> = devices.iter().filter(|d| !d.holdout).collect();
        let target = spec.size.target(eligible.len() as u64);
        let admitted = eligible.iter().filter(|d| d.admitted_ms.is_some()).count() as u64;
        if admitted >= target {
            return Ok(());
        }
        let mut waiting: Vec<String> = eligible
            .iter()
            .filter(|d| d.admitted_ms.is_none())
            .map(|d| d.device_id.clone())
            .collect();
        placement::admission_order(&rollout.id, &mut waiting);
        let take = usize::try_from(target - admitted).unwrap_or(usize::MAX);
        let chosen: Vec<String> = waiting.into_iter().take(take).collect();
        self.admit(rollout, envelope, &chosen, wave).await
    }

    /// Records the admission of `chosen` by `wave`, then publishes their assignments.
    async fn admit(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        chosen: &[String],
        wave: u32,
    ) -> Result<(), DriveError> {
        if chosen.is_empty() {
            return Ok(());
        }
        let mut with_previous = Vec::with_capacity(chosen.len());
        for device in chosen {
            let previous = self
                .store
                .device(device)
                .await?
                .and_then(|record| record.active_model.map(|model| model.digest));
            with_previous.push((device.clone(), previous));
        }
        let admitted_ms = now_ms();
        let model = self.model_name(&rollout.bundle_digest).await?;
        let admitted = self
            .store
            .admit_rollout_devices(&rollout.id, wave, &with_previous, admitted_ms, model)
            .await?;
        tracing::info!(rollout = %rollout.id, wave, devices = ?admitted, "devices admitted");
        for device in &admitted {
            self.publish(rollout, envelope, device, wave, admitted_ms, AdmissionAction::Install)
                .await?;
        }
        Ok(())
    }

    async fn model_name(&self, digest: &str) -> Result<Option<String>, DriveError> {
        Ok(self
            .store
            .bundle_by_digest(digest)
            .await?
            .map(|bundle| format!("{}@{}", bundle.name, bundle.version)))
    }

    async fn release_holdout(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        devices: &[RolloutDevice],
    ) -> Result<(), DriveError> {
        let holdout: Vec<String> = devices
            .iter()
            .filter(|d| d.holdout && d.admitted_ms.is_none())
            .map(|d| d.device_id.clone())
            .collect();
        let wave = u32::try_from(rollout.spec.waves.len()).unwrap_or(u32::MAX);
        self.admit(rollout, envelope, &holdout, wave).await
    }

    /// Sends every admitted device not yet reverted back to the fallback.
    async fn revert(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        devices: &[RolloutDevice],
    ) -> Result<(), DriveError> {
        if rollout.spec.fallback.is_none() {
            return Ok(());
        }
        let pending: Vec<&RolloutDevice> =
            devices.iter().filter(|d| d.admitted_ms.is_some() && d.reverted_ms.is_none()).collect();
        if pending.is_empty() {
            return Ok(());
        }
        let reverted_ms = now_ms();
        let ids: Vec<String> = pending.iter().map(|d| d.device_id.clone()).collect();
        self.store.mark_rollout_reverted(&rollout.id, &ids, reverted_ms).await?;
        for device in &pending {
            self.publish(
                rollout,
                envelope,
                &device.device_id,
                device.wave.unwrap_or(0),
                reverted_ms,
                AdmissionAction::Revert,
            )
            .await?;
        }
        tracing::info!(rollout = %rollout.id, devices = ?ids, "admitted devices sent back to the fallback");
        Ok(())
    }

    /// Publishes again what every admitted device was sent.
    async fn republish(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        devices: &[RolloutDevice],
    ) -> Result<(), DriveError> {
        for device in devices {
            let Some(admitted_ms) = device.admitted_ms else { continue };
            let (at, action) = match device.reverted_ms {
                Some(reverted) => (reverted, AdmissionAction::Revert),
                None => (admitted_ms, AdmissionAction::Install),
            };
            self.publish(
                rollout,
                envelope,
                &device.device_id,
                device.wave.unwrap_or(0),
                at,
                action,
            )
            .await?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        rollout: &RolloutRecord,
        envelope: &Envelope,
        device: &str,
        wave: u32,
        at_ms: i64,
        action: AdmissionAction,
    ) -> Result<(), DriveError> {
        let Some(client) = &self.mqtt else {
            return Err(DriveError::Publish(
                device.into(),
                "this server has no MQTT client".into(),
            ));
        };
        let id = DeviceId::new(device.to_string())
            .map_err(|error| DriveError::Publish(device.into(), error.to_string()))?;
        let assign = Assign {
            v: ProtocolVersion,
            plan: envelope.clone(),
            admission: Admission {
                rollout_id: rollout.id.clone(),
                wave,
                admitted_at_ms: u64::try_from(at_ms).unwrap_or(0),
                action,
            },
        };
        let message = Publish::message(&id, &assign)
            .map_err(|error| DriveError::Publish(device.into(), error.to_string()))?;
        client
            .publish(message.topic.clone(), rumqttc::QoS::AtLeastOnce, true, message.payload)
            .await
            .map_err(|error| DriveError::Publish(device.into(), error.to_string()))?;
        Ok(())
    }

    /// Gathers the figures of the devices admitted so far and judges the current wave.
    async fn evaluate(
        &self,
        rollout: &RolloutRecord,
        devices: &[RolloutDevice],
        now: i64,
    ) -> Result<Evaluation, DriveError> {
        let figures = gather(&self.store, rollout, devices, now).await?;
        let thresholds = rollout
            .spec
            .waves
            .get(rollout.wave as usize)
            .map(|w| w.gates.clone())
            .unwrap_or_default();
        Ok(gates::evaluate(&figures, &thresholds))
    }
}

/// What one device's events say about its install of the rollout's plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstallStatus {
    Installing,
    Committed,
    Failed,
}

/// Event kinds that end an install without the new model.
const FAILED_KINDS: [&str; 4] =
    ["acceptance_failed", "rolled_back", "rejected", "message_rejected"];

/// The figures of `rollout`'s admitted devices (holdout excluded) for the gates.
pub async fn gather(
    store: &Store,
    rollout: &RolloutRecord,
    devices: &[RolloutDevice],
    now: i64,
) -> Result<WaveFigures, DriveError> {
    let admitted: Vec<&RolloutDevice> =
        devices.iter().filter(|d| !d.holdout && d.admitted_ms.is_some()).collect();
    let events = store.rollout_device_events(&rollout.id).await?;
    let seq = i64::try_from(rollout.plan_seq).unwrap_or(i64::MAX);
    let mut status: BTreeMap<&str, InstallStatus> = BTreeMap::new();
    let mut shadow: Option<f64> = None;
    for event in events.iter().filter(|e| e.plan_seq.is_none_or(|s| s == seq)) {
        let kind = event.kind.as_str();
        let is_failure = FAILED_KINDS.contains(&kind)
            || (kind == "error"
                && event.outcome == "failed"
                && event.code.as_deref() != Some("superseded"));
        let entry = status.entry(event.device_id.as_str()).or_insert(InstallStatus::Installing);
        if is_failure {
            *entry = InstallStatus::Failed;
        } else if kind == "committed"
            && event.bundle_digest.as_deref() == Some(rollout.bundle_digest.as_str())
            && *entry != InstallStatus::Failed
        {
            *entry = InstallStatus::Committed;
        }
        if kind == "shadow_report"
            && let Some(agreement) = event.event["details"]["agreement"].as_f64()
        {
            shadow = Some(shadow.map_or(agreement, |s: f64| s.min(agreement)));
        }
    }
    let mut figures = WaveFigures { admitted: admitted.len() as u64, ..WaveFigures::default() };
    let mut new_windows: Vec<AggregateWindow> = Vec::new();
    let mut previous_windows: Vec<AggregateWindow> = Vec::new();
    for device in &admitted {
        match status.get(device.device_id.as_str()).copied().unwrap_or(InstallStatus::Installing) {
            InstallStatus::Installing => figures.installing += 1,
            InstallStatus::Failed => figures.failed += 1,
            InstallStatus::Committed => {
                figures.installed += 1;
                let window = merged(store, &rollout.bundle_digest, &device.device_id).await?;
                if let Some(window) = window {
                    if window.windows > 0 {
                        figures.reporting += 1;
                    }
                    new_windows.push(window);
                    if let Some(previous) = &device.previous_digest
                        && previous != &rollout.bundle_digest
                        && let Some(old) = merged(store, previous, &device.device_id).await?
                    {
                        previous_windows.push(old);
                    }
                }
            }
        }
    }
    let new = merge_list(&new_windows);
    if let Some(new) = &new {
        figures.requests = new.count;
        figures.errors = new.errors.values().sum();
        figures.p95_new_us = latency_p95(new);
    }
    // The devices' previous models may differ (a device updated directly, say), so their
    // windows do not merge; their latency histograms do, over the fleet-wide buckets.
    figures.p95_previous_us =
        latency_p95_across(previous_windows.iter().map(|window| &window.latency));
    // The holdout's traffic on the models it runs, for the output shift.
    let mut holdout_windows = Vec::new();
    for device in devices.iter().filter(|d| d.holdout && d.admitted_ms.is_none()) {
        if let Some(record) = store.device(&device.device_id).await?
            && let Some(model) = record.active_model
            && let Some(window) = merged(store, &model.digest, &device.device_id).await?
        {
            holdout_windows.push(window);
        }
    }
    if let (Some(new), Some(holdout)) = (&new, merge_list(&holdout_windows))
        && let (Some(current), Some(reference)) = (&new.classifier, &holdout.classifier)
    {
        figures.output_psi =
            outpost_shared::drift::binned::psi(&reference.class_counts, &current.class_counts);
    }
    if let Some(new) = &new
        && let Some(profile) = store.bundle_profile(&rollout.bundle_digest).await?
    {
        let drift = crate::fleet_drift::compare(
            &profile,
            new,
            &outpost_shared::drift::Thresholds::default(),
        );
        let worst = |dataset: &outpost_shared::drift::DatasetDrift| {
            dataset
                .features
                .iter()
                .filter_map(|f| f.metrics.psi.map(|psi| (psi, f.metrics.feature.clone())))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        if let Some((psi, feature)) = worst(&drift.inputs) {
            figures.drift_psi = Some(psi);
            figures.drift_feature = Some(feature);
        }
        if let Some((psi, output)) = worst(&drift.outputs) {
            figures.prediction_drift_psi = Some(psi);
            figures.prediction_drift_output = Some(output);
        }
    }
    figures.shadow_agreement = shadow;
    let timeout_ms =
        i64::try_from(rollout.spec.device_timeout_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let soak_ms = rollout
        .spec
        .waves
        .get(rollout.wave as usize)
        .map(|w| i64::try_from(w.soak_seconds.saturating_mul(1000)).unwrap_or(i64::MAX))
        .unwrap_or(0);
    figures.timeout_passed = rollout
        .wave_started_ms
        .is_some_and(|started| now >= started.saturating_add(soak_ms).saturating_add(timeout_ms));
    Ok(figures)
}

/// Every ingested window of `digest` on `device`, merged.
async fn merged(
    store: &Store,
    digest: &str,
    device: &str,
) -> Result<Option<AggregateWindow>, DriveError> {
    let records = store.aggregates(AggregateKind::Device, digest, device, 0, i64::MAX).await?;
    Ok(AggregateWindow::merge_all(records.iter().map(|r| &r.aggregate)).unwrap_or_else(|error| {
        tracing::warn!(%device, %digest, %error, "device aggregates do not merge; not judged");
        None
    }))
}

fn merge_list(windows: &[AggregateWindow]) -> Option<AggregateWindow> {
    AggregateWindow::merge_all(windows.iter()).unwrap_or_else(|error| {
        tracing::warn!(%error, "aggregates of the wave do not merge; not judged");
        None
    })
}

/// The p95 latency of windows of possibly different models: latency buckets are fleet-wide,
/// so their counts add up whatever model each window is of.
fn latency_p95_across<'a>(
    histograms: impl Iterator<Item = &'a outpost_shared::wire::LatencyHistogram>,
) -> Option<f64> {
    let bounds = &outpost_shared::stats::LATENCY_BUCKETS_US;
    let mut counts = vec![0_u64; bounds.len()];
    let mut overflow = 0_u64;
    for histogram in histograms {
        for (sum, count) in counts.iter_mut().zip(&histogram.counts) {
            *sum = sum.saturating_add(*count);
        }
        // Counts past the fleet-wide buckets (none in a valid window) count as overflow.
        let beyond: u64 = histogram.counts.iter().skip(bounds.len()).sum();
        overflow = overflow.saturating_add(histogram.overflow).saturating_add(beyond);
    }
    gates::p95_from_buckets(&counts, overflow, bounds)
}

fn latency_p95(window: &AggregateWindow) -> Option<f64> {
    gates::p95_from_buckets(
        &window.latency.counts,
        window.latency.overflow,
        &outpost_shared::stats::LATENCY_BUCKETS_US,
    )
}

#[cfg(test)]
mod tests {
    use outpost_shared::wire::LatencyHistogram;

    use super::latency_p95_across;

    #[test]
    fn the_previous_p95_adds_latency_histograms_of_different_models() {
        // Two devices whose previous models differ: 90 fast calls on one, 10 slow on the other.
        let mut fast = LatencyHistogram::default();
        fast.counts[1] = 90;
        let mut slow = LatencyHistogram::default();
        slow.counts[6] = 10;
        let p95 = latency_p95_across([&fast, &slow].into_iter());
        assert_eq!(p95, Some(3_200.0));
        assert_eq!(latency_p95_across([&fast].into_iter()), Some(100.0));
        assert_eq!(latency_p95_across(std::iter::empty()), None);
    }
}
