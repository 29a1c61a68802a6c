//! The JSON messages about a device's life: [`Hello`] (what it is and runs), [`State`]
//! (online/offline), [`Event`] (install progress, refusals, errors) and [`Assign`] (the rollout
//! the control wants it to follow).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::fields::{MAX_MESSAGE_BYTES, MAX_NAME_BYTES, check_id, check_tag, check_text, invalid};
use super::{Channel, DeviceId, Digest, ProtocolVersion, TopicMessage, WireError, WireMessage};
use crate::dsse::Envelope;

/// A model by name, version and bundle digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    /// Digest of the bundle file the model came from.
    pub digest: Digest,
}

impl ModelRef {
    fn validate(&self, message: &'static str, field: &'static str) -> Result<(), WireError> {
        check_text(message, field, &self.name, MAX_NAME_BYTES, false)?;
        check_text(message, field, &self.version, MAX_NAME_BYTES, false)
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} ({})", self.name, self.version, self.digest)
    }
}

/// One of the device's two model slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotName {
    A,
    B,
}

impl SlotName {
    pub fn other(self) -> SlotName {
        match self {
            SlotName::A => SlotName::B,
            SlotName::B => SlotName::A,
        }
    }
}

/// What each slot holds and which one serves inference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slots {
    /// The slot that serves inference; absent on a device that has never installed a model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<SlotName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<ModelRef>,
}

impl Slots {
    pub fn get(&self, slot: SlotName) -> Option<&ModelRef> {
        match slot {
            SlotName::A => self.a.as_ref(),
            SlotName::B => self.b.as_ref(),
        }
    }

    /// The model in the active slot.
    pub fn active_model(&self) -> Option<&ModelRef> {
        self.active.and_then(|slot| self.get(slot))
    }
}

/// `outpost/v1/<dev>/hello`, retained: what the device is and what it runs. Published on every
/// connect and whenever any of it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub v: ProtocolVersion,
    pub device: DeviceId,
    pub agent_version: String,
    /// Target architecture, e.g. `aarch64` or `armv7`.
    pub arch: String,
    /// Device tags that rollout cohorts select on (same syntax as [`crate::selector`]).
    pub tags: BTreeMap<String, String>,
    /// The model serving inference; must be the model in the active slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_model: Option<ModelRef>,
    /// The model a rollback would return to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_model: Option<ModelRef>,
    pub slots: Slots,
    /// Optional features the agent supports, e.g. `shadow`, `kll`.
    pub capabilities: Vec<String>,
    pub trust_root_version: u64,
    /// Sequence number of the last rollout plan the device accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan_seq: Option<u64>,
    pub ts_ms: u64,
}

impl WireMessage for Hello {
    const NAME: &'static str = "Hello";

    fn validate(&self) -> Result<(), WireError> {
        let name = Self::NAME;
        check_text(name, "agent_version", &self.agent_version, MAX_NAME_BYTES, false)?;
        check_text(name, "arch", &self.arch, MAX_NAME_BYTES, false)?;
        for (key, value) in &self.tags {
            check_tag(name, "tags", key)?;
            check_tag(name, "tags", value)?;
        }
        for model in [&self.active_model, &self.previous_model, &self.slots.a, &self.slots.b]
            .into_iter()
            .flatten()
        {
            model.validate(name, "model")?;
        }
        for capability in &self.capabilities {
            check_id(name, "capabilities", capability)?;
        }
        if self.active_model.as_ref() != self.slots.active_model() {
            return Err(invalid(name, "active_model", "must be the model in the active slot"));
        }
        Ok(())
    }
}

impl TopicMessage for Hello {
    const CHANNEL: Channel = Channel::Hello;

    fn device(&self) -> Option<&DeviceId> {
        Some(&self.device)
    }
}

/// Whether a device is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Presence {
    Online,
    Offline,
}

/// `outpost/v1/<dev>/state`, retained: online or offline. The offline form without a time is
/// the device's MQTT Last Will, fixed when it connects: [`LAST_WILL_PAYLOAD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub v: ProtocolVersion,
    pub state: Presence,
    /// When the device said so; absent in the Last Will, which the broker sends later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<u64>,
}

/// The Last Will payload every device registers at connect: `{"v":1,"state":"offline"}`.
pub const LAST_WILL_PAYLOAD: &[u8] = br#"{"v":1,"state":"offline"}"#;

impl State {
    pub fn online(ts_ms: u64) -> Self {
        State { v: ProtocolVersion, state: Presence::Online, ts_ms: Some(ts_ms) }
    }

    /// A clean disconnect, published by the device before it goes.
    pub fn offline(ts_ms: u64) -> Self {
        State { v: ProtocolVersion, state: Presence::Offline, ts_ms: Some(ts_ms) }
    }

    /// The Last Will payload bytes ([`LAST_WILL_PAYLOAD`]).
    pub fn last_will() -> Vec<u8> {
        LAST_WILL_PAYLOAD.to_vec()
    }
}

impl WireMessage for State {
    const NAME: &'static str = "State";
}

impl TopicMessage for State {
    const CHANNEL: Channel = Channel::State;
}

/// What happened, from a fixed vocabulary: the install steps of DESIGN §6, refusals and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The device accepted an assignment and starts installing.
    Admitted,
    Downloading,
    Verifying,
    Staged,
    AcceptancePassed,
    AcceptanceFailed,
    ShadowStarted,
    /// Shadow agreement so far; `details` carries the numbers.
    ShadowReport,
    Activated,
    HealthWatch,
    Committed,
    RolledBack,
    /// A signed document or transfer failed verification; `code` is the
    /// [`crate::VerifyError::code`].
    Rejected,
    Error,
    /// An MQTT payload the device refused before acting on it; `code` is the
    /// [`WireError::code`].
    MessageRejected,
}

impl EventKind {
    pub const ALL: [EventKind; 15] = [
        EventKind::Admitted,
        EventKind::Downloading,
        EventKind::Verifying,
        EventKind::Staged,
        EventKind::AcceptancePassed,
        EventKind::AcceptanceFailed,
        EventKind::ShadowStarted,
        EventKind::ShadowReport,
        EventKind::Activated,
        EventKind::HealthWatch,
        EventKind::Committed,
        EventKind::RolledBack,
        EventKind::Rejected,
        EventKind::Error,
        EventKind::MessageRejected,
    ];

    /// The wire name, e.g. `acceptance_passed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Admitted => "admitted",
            EventKind::Downloading => "downloading",
            EventKind::Verifying => "verifying",
            EventKind::Staged => "staged",
            EventKind::AcceptancePassed => "acceptance_passed",
            EventKind::AcceptanceFailed => "acceptance_failed",
            EventKind::ShadowStarted => "shadow_started",
            EventKind::ShadowReport => "shadow_report",
            EventKind::Activated => "activated",
            EventKind::HealthWatch => "health_watch",
            EventKind::Committed => "committed",
            EventKind::RolledBack => "rolled_back",
            EventKind::Rejected => "rejected",
            EventKind::Error => "error",
            EventKind::MessageRejected => "message_rejected",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the step ended: done, went wrong, or deliberately refused (verification, policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
    Refused,
}

/// `outpost/v1/<dev>/events`: one thing that happened on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub v: ProtocolVersion,
    pub device: DeviceId,
    /// Per-device event sequence number, increasing by one per event and kept across restarts;
    /// the control stores an event once per (device, seq).
    pub seq: u64,
    pub ts_ms: u64,
    pub kind: EventKind,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_digest: Option<Digest>,
    /// Machine-readable reason, e.g. a [`crate::VerifyError::code`] like `too_few_signatures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For people: what happened and, on failure, what to do.
    pub message: String,
    /// Step-specific numbers (bytes downloaded, shadow agreement, health figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl WireMessage for Event {
    const NAME: &'static str = "Event";

    fn validate(&self) -> Result<(), WireError> {
        let name = Self::NAME;
        if let Some(rollout_id) = &self.rollout_id {
            check_id(name, "rollout_id", rollout_id)?;
        }
        if let Some(code) = &self.code {
            check_id(name, "code", code)?;
        }
        check_text(name, "message", &self.message, MAX_MESSAGE_BYTES, true)
    }
}

impl TopicMessage for Event {
    const CHANNEL: Channel = Channel::Events;

    fn device(&self) -> Option<&DeviceId> {
        Some(&self.device)
    }
}

/// What the control asks the device to do with an admitted plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdmissionAction {
    /// Install the plan's bundle.
    Install,
    /// Go back to the plan's fallback bundle.
    Revert,
}

/// The control's (unsigned) decision of *when* a device follows a plan: which rollout and wave
/// admitted it. It can never change *what* the device installs; that is in the signed plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    pub rollout_id: String,
    pub wave: u32,
    pub admitted_at_ms: u64,
    pub action: AdmissionAction,
}

/// `outpost/v1/<dev>/assign`, retained: the signed rollout plan plus the control's admission.
/// An empty retained payload clears the assignment ([`super::ToDevice::AssignCleared`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    pub v: ProtocolVersion,
    /// DSSE envelope of the rollout plan; the device verifies it before reading anything in it.
    pub plan: Envelope,
    pub admission: Admission,
}

impl WireMessage for Assign {
    const NAME: &'static str = "Assign";

    fn validate(&self) -> Result<(), WireError> {
        // The envelope itself is judged by plan verification, which reports its own refusals.
        check_id(Self::NAME, "rollout_id", &self.admission.rollout_id)
    }
}

impl TopicMessage for Assign {
    const CHANNEL: Channel = Channel::Assign;
}
