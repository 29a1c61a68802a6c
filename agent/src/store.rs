//! The agent's data directory (DESIGN §6): the trust root, the two model slots and the state
//! file, with every change written atomically.
//!
//! ```text
//! <data_dir>/
//!   trust/root.json    the trust root envelope installed at enrollment
//!   slots/a/bundle     the bundle file of slot a, exactly as verified
//!   slots/b/bundle     the bundle file of slot b
//!   slots/<x>/staging/ a download in progress into slot x (owned by `crate::update::fetch`)
//!   state.json         AgentState: active slot, committed flag, sequence numbers, the install
//!                      in progress or the last one concluded
//!   queue/             unsent statistics windows (owned by `crate::queue`)
//! ```
//!
//! [`AgentState`] is plain data with the slot decisions as methods (which slot to boot, what a
//! rollback means), so the A/B install logic can be tested without a disk; [`Store`] is the thin
//! shell that reads, verifies and writes it. Nothing leaves the store unverified: bundles are
//! returned as [`Verified<Bundle>`] checked against the installed trust root at the time given.

use std::fmt;
use std::path::{Path, PathBuf};

use outpost_shared::Verified;
use outpost_shared::bundle::{self, Bundle, MAX_BUNDLE_BYTES};
use outpost_shared::dsse::MAX_ENVELOPE_BYTES;
use outpost_shared::trust::{self, TrustRoot};
use outpost_shared::wire::{Digest, ModelRef, SlotName, Slots};
use outpost_shared::{VerifyError, sha256_digest};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::fsutil::{self, FileError};

/// Version of `state.json` this build reads and writes.
pub const STATE_VERSION: u32 = 1;
/// Largest `state.json` read.
const MAX_STATE_BYTES: u64 = 64 * 1024;
/// Reason recorded when a restart found a model on trial and went back to the other slot.
pub const INTERRUPTED_TRIAL: &str = "restarted_during_trial";

/// Why the data directory cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{data_dir} is not provisioned: no trust root at {path} (run `outpost-agent provision`)"
    )]
    NotProvisioned { data_dir: PathBuf, path: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("trust root {path} refused: {source}")]
    TrustRoot { path: PathBuf, source: VerifyError },
    #[error(
        "a different trust root (version {installed_version}) is already installed at {path}; \
         remove it by hand to enroll the device again"
    )]
    TrustRootInstalled { path: PathBuf, installed_version: u64 },
    #[error("bundle in slot {slot} refused: {source}")]
    Bundle { slot: SlotDisplay, source: VerifyError },
    #[error("bundle refused: {0}")]
    BundleRefused(VerifyError),
    #[error("the bundle bytes are not the ones that were verified ({actual} is not {expected})")]
    NotTheVerifiedBundle { expected: String, actual: String },
    #[error(
        "a model is already installed ({installed} in slot {slot}); provisioning installs the \
         first model only, later ones arrive as rollouts"
    )]
    ModelInstalled { installed: String, slot: SlotDisplay },
    #[error("state file {path} is unreadable: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("slot {slot}: {reason}")]
    Slot { slot: SlotDisplay, reason: String },
    #[error("no slot holds a model that can serve: {}", describe_failures(.failures))]
    NoServableModel { failures: Vec<(SlotDisplay, String)> },
}

fn describe_failures(failures: &[(SlotDisplay, String)]) -> String {
    failures
        .iter()
        .map(|(slot, reason)| format!("slot {slot}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A slot name printed as `a` or `b` in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotDisplay(pub SlotName);

impl fmt::Display for SlotDisplay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(slot_dir_name(self.0))
    }
}

fn slot_dir_name(slot: SlotName) -> &'static str {
    match slot {
        SlotName::A => "a",
        SlotName::B => "b",
    }
}

/// What a slot holds, as recorded when its bundle was installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    pub name: String,
    pub version: String,
    /// `sha256:` digest of the bundle file.
    pub digest: String,
    pub size: u64,
}

impl SlotRecord {
    pub fn of(bundle: &Bundle) -> Self {
        Self {
            name: bundle.manifest.name.clone(),
            version: bundle.manifest.version.clone(),
            digest: bundle.digest.clone(),
            size: bundle.size,
        }
    }

    /// The wire form; `None` if the recorded digest is not a valid digest.
    pub fn model_ref(&self) -> Option<ModelRef> {
        Some(ModelRef {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: Digest::parse(&self.digest).ok()?,
        })
    }

    pub fn describe(&self) -> String {
        format!("{}@{} ({})", self.name, self.version, self.digest)
    }
}

/// Where an install stands. Persisted at every step, so a restart resumes it (downloading,
/// staged) or knows how it ended (the other phases) and never starts it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallPhase {
    /// Admitted; the bundle is being downloaded into the target slot's staging area.
    Downloading,
    /// Verified and in the target slot; acceptance and shadow come next.
    Staged,
    /// Serving, not committed: the health watch runs.
    Activated,
    Committed,
    RolledBack,
    /// Refused or failed before activation; the previous model kept serving.
    Failed,
}

impl InstallPhase {
    /// Whether the install is over (nothing left to do for its plan).
    pub fn concluded(self) -> bool {
        matches!(self, InstallPhase::Committed | InstallPhase::RolledBack | InstallPhase::Failed)
    }
}

/// What an install is for: the plan's bundle, or the plan's fallback on an operator's revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstallAction {
    Install,
    Revert,
}

/// The install of one admitted plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRecord {
    pub rollout: String,
    pub plan_seq: u64,
    pub action: InstallAction,
    /// The bundle being installed.
    pub bundle: SlotRecord,
    /// The slot it goes into (the inactive one when admitted).
    pub slot: SlotName,
    pub phase: InstallPhase,
    /// Why it failed or rolled back: a stable code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The two slots' records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecords {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub a: Option<SlotRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub b: Option<SlotRecord>,
}

impl SlotRecords {
    pub fn get(&self, slot: SlotName) -> Option<&SlotRecord> {
        match slot {
            SlotName::A => self.a.as_ref(),
            SlotName::B => self.b.as_ref(),
        }
    }

    fn set(&mut self, slot: SlotName, record: Option<SlotRecord>) {
        match slot {
            SlotName::A => self.a = record,
            SlotName::B => self.b = record,
        }
    }
}

/// `state.json`: which slot serves, whether it is committed, and the sequence numbers that
/// must survive restarts.
///
/// The A/B rule: a new model is only ever installed into the slot that is not active, while the
/// active one is committed. So when the active slot is *not* committed (the agent stopped during
/// a trial), the other slot holds the last committed model and is where a restart goes back to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub v: u32,
    /// The slot serving inference; `None` before the first model is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<SlotName>,
    /// Whether the active slot's model passed its health watch and is the known-good model.
    pub committed: bool,
    #[serde(default)]
    pub slots: SlotRecords,
    /// Sequence number of the last rollout plan accepted (replay protection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_plan_seq: Option<u64>,
    /// The install of the last accepted plan: in progress, or how it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<InstallRecord>,
    /// Sequence number the next statistics window gets. (Event sequence numbers are kept
    /// with the telemetry queue, `crate::queue`.)
    pub next_window_seq: u64,
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            v: STATE_VERSION,
            active: None,
            committed: false,
            slots: SlotRecords::default(),
            last_plan_seq: None,
            install: None,
            next_window_seq: 1,
        }
    }
}

/// A slot to try when starting, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCandidate {
    pub slot: SlotName,
    /// Serving this slot means going back from the active slot to the other one.
    pub is_rollback: bool,
}

impl AgentState {
    /// The slots to try at start, best first: the committed active slot, then the other slot
    /// if it holds a model. An uncommitted active slot is never served after a restart: the
    /// other slot, holding the last committed model, is tried alone.
    pub fn boot_candidates(&self) -> Vec<BootCandidate> {
        let Some(active) = self.active else { return Vec::new() };
        let other = active.other();
        let other_candidate =
            self.slots.get(other).map(|_| BootCandidate { slot: other, is_rollback: true });
        if self.committed && self.slots.get(active).is_some() {
            std::iter::once(BootCandidate { slot: active, is_rollback: false })
                .chain(other_candidate)
                .collect()
        } else {
            other_candidate.into_iter().collect()
        }
    }

    /// Records that `slot` serves and is the committed model.
    pub fn serve_committed(&mut self, slot: SlotName) {
        self.active = Some(slot);
        self.committed = true;
    }

    /// Records the first model: installed into `slot`, active and committed.
    pub fn install_initial(&mut self, slot: SlotName, record: SlotRecord) {
        self.slots.set(slot, Some(record));
        self.serve_committed(slot);
    }

    /// The record of the active slot.
    pub fn active_record(&self) -> Option<&SlotRecord> {
        self.active.and_then(|slot| self.slots.get(slot))
    }

    /// The slots as `hello` reports them.
    pub fn wire_slots(&self) -> Slots {
        Slots {
            active: self.active,
            a: self.slots.a.as_ref().and_then(SlotRecord::model_ref),
            b: self.slots.b.as_ref().and_then(SlotRecord::model_ref),
        }
    }

    /// The model a rollback would return to: the inactive slot's.
    pub fn previous_model(&self) -> Option<ModelRef> {
        self.active
            .and_then(|active| self.slots.get(active.other()))
            .and_then(SlotRecord::model_ref)
    }

    fn check(&self) -> Result<(), String> {
        if self.v != STATE_VERSION {
            return Err(format!(
                "state version {} (this agent reads version {STATE_VERSION})",
                self.v
            ));
        }
        if let Some(active) = self.active
            && self.slots.get(active).is_none()
        {
            return Err(format!("active slot {} holds no model", SlotDisplay(active)));
        }
        Ok(())
    }
}

/// A model the agent starts with: its slot, what the caller's acceptance made of it, and the
/// slots that were passed over with the reason.
#[derive(Debug)]
pub struct Boot<T> {
    pub slot: SlotName,
    pub bundle: Verified<Bundle>,
    pub accepted: T,
    /// Whether the agent went back from the active slot to the other one.
    pub rolled_back: bool,
    pub skipped: Vec<(SlotName, String)>,
}

/// The data directory, with its trust root verified and its state loaded.
#[derive(Debug)]
pub struct Store {
    data_dir: PathBuf,
    trust: Verified<TrustRoot>,
    trust_bytes: Vec<u8>,
    state: AgentState,
}

impl Store {
    pub fn trust_root_path(data_dir: &Path) -> PathBuf {
        data_dir.join("trust").join("root.json")
    }

    pub fn state_path(data_dir: &Path) -> PathBuf {
        data_dir.join("state.json")
    }

    pub fn bundle_path(data_dir: &Path, slot: SlotName) -> PathBuf {
        data_dir.join("slots").join(slot_dir_name(slot)).join("bundle")
    }

    /// Where `crate::queue` keeps unsent windows.
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }

    /// Opens a provisioned data directory: verifies the trust root at `now` and reads the
    /// state (a missing state file is a fresh device).
    pub fn open(data_dir: &Path, now: OffsetDateTime) -> Result<Self, StoreError> {
        let trust_path = Self::trust_root_path(data_dir);
        let trust_bytes =
            match fsutil::read_limited(&trust_path, MAX_ENVELOPE_BYTES as u64, "trust root") {
                Ok(bytes) => bytes,
                Err(error) if error.is_not_found() => {
                    return Err(StoreError::NotProvisioned {
                        data_dir: data_dir.to_path_buf(),
                        path: trust_path,
                    });
                }
                Err(error) => return Err(error.into()),
            };
        let trust = trust::verify_initial(&trust_bytes, now)
            .map_err(|source| StoreError::TrustRoot { path: trust_path.clone(), source })?;
        let state = read_state(&Self::state_path(data_dir))?;
        Ok(Self { data_dir: data_dir.to_path_buf(), trust, trust_bytes, state })
    }

    /// Enrolls a device: verifies `trust_bytes` as an initial trust root at `now` and installs
    /// it, then opens the store. Installing the same root again is allowed; replacing a
    /// different one is refused (that is a rotation, which goes through the update channel).
    pub fn provision(
        data_dir: &Path,
        trust_bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        let trust_path = Self::trust_root_path(data_dir);
        let trust = trust::verify_initial(trust_bytes, now)
            .map_err(|source| StoreError::TrustRoot { path: trust_path.clone(), source })?;
        match fsutil::read_limited(&trust_path, MAX_ENVELOPE_BYTES as u64, "trust root") {
            Ok(existing) if existing == trust_bytes => {}
            Ok(existing) => {
                let installed_version = outpost_shared::dsse::Envelope::from_slice(&existing)
                    .ok()
                    .and_then(|envelope| trust::parse_unverified(&envelope).ok())
                    .map_or(0, |root| root.version);
                return Err(StoreError::TrustRootInstalled { path: trust_path, installed_version });
            }
            Err(error) if error.is_not_found() => {
                fsutil::create_dir_durable(data_dir)?;
                if let Some(dir) = trust_path.parent() {
                    fsutil::create_dir_durable(dir)?;
                }
                fsutil::write_atomic(&trust_path, trust_bytes)?;
            }
            Err(error) => return Err(error.into()),
        }
        let state = read_state(&Self::state_path(data_dir))?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            trust,
            trust_bytes: trust_bytes.to_vec(),
            state,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn trust(&self) -> &Verified<TrustRoot> {
        &self.trust
    }

    /// The trust root envelope exactly as installed.
    pub fn trust_bytes(&self) -> &[u8] {
        &self.trust_bytes
    }

    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// Verifies bundle bytes against the installed trust root at `now`.
    pub fn verify_bundle(
        &self,
        bytes: &[u8],
        now: OffsetDateTime,
    ) -> Result<Verified<Bundle>, StoreError> {
        bundle::verify(bytes, &self.trust, now).map_err(StoreError::BundleRefused)
    }

    /// Reads the bundle of `slot` and verifies it, and that it is the bundle the state
    /// recorded for the slot.
    pub fn load_bundle(
        &self,
        slot: SlotName,
        now: OffsetDateTime,
    ) -> Result<Verified<Bundle>, StoreError> {
        let record = self.state.slots.get(slot).ok_or_else(|| StoreError::Slot {
            slot: SlotDisplay(slot),
            reason: "holds no model".into(),
        })?;
        let path = Self::bundle_path(&self.data_dir, slot);
        let bytes = fsutil::read_limited(&path, MAX_BUNDLE_BYTES, "bundle")?;
        let verified = bundle::verify(&bytes, &self.trust, now)
            .map_err(|source| StoreError::Bundle { slot: SlotDisplay(slot), source })?;
        if verified.digest != record.digest {
            return Err(StoreError::Slot {
                slot: SlotDisplay(slot),
                reason: format!(
                    "holds bundle {} but the state records {}",
                    verified.digest,
                    record.describe()
                ),
            });
        }
        Ok(verified)
    }

    /// Chooses the model to start with: tries [`AgentState::boot_candidates`] in order, each
    /// verified and then handed to `accept` (build and self-test the runtime), and serves the
    /// first that passes both. A change of slot (a rollback) is persisted before returning.
    /// `Ok(None)` when no model was ever installed.
    pub fn boot<T, E: fmt::Display>(
        &mut self,
        now: OffsetDateTime,
        mut accept: impl FnMut(SlotName, &Verified<Bundle>) -> Result<T, E>,
    ) -> Result<Option<Boot<T>>, StoreError> {
        let candidates = self.state.boot_candidates();
        if candidates.is_empty() {
            if let Some(active) = self.state.active {
                return Err(StoreError::NoServableModel {
                    failures: vec![(
                        SlotDisplay(active),
                        "uncommitted and no other slot to go back to".into(),
                    )],
                });
            }
            return Ok(None);
        }
        let mut skipped = Vec::new();
        for candidate in candidates {
            let outcome = self.load_bundle(candidate.slot, now).and_then(|bundle| {
                accept(candidate.slot, &bundle).map(|accepted| (bundle, accepted)).map_err(|e| {
                    StoreError::Slot {
                        slot: SlotDisplay(candidate.slot),
                        reason: format!("refused at start: {e}"),
                    }
                })
            });
            match outcome {
                Ok((bundle, accepted)) => {
                    let mut next = self.state.clone();
                    next.serve_committed(candidate.slot);
                    if candidate.is_rollback
                        && let Some(install) = next.install.as_mut()
                        && !install.phase.concluded()
                    {
                        // The agent stopped while the new model was on trial: it goes back
                        // to the known-good model, and the plan is not tried again.
                        install.phase = InstallPhase::RolledBack;
                        install.reason = Some(INTERRUPTED_TRIAL.into());
                    }
                    self.replace_state(next)?;
                    return Ok(Some(Boot {
                        slot: candidate.slot,
                        bundle,
                        accepted,
                        rolled_back: candidate.is_rollback,
                        skipped,
                    }));
                }
                Err(error) => skipped.push((candidate.slot, error.to_string())),
            }
        }
        Err(StoreError::NoServableModel {
            failures: skipped
                .into_iter()
                .map(|(slot, reason)| (SlotDisplay(slot), reason))
                .collect(),
        })
    }

    /// Installs the first model of a freshly enrolled device into slot a, active and committed.
    /// `bytes` must be the bundle `verified` came from. Installing the same bundle again is
    /// allowed; any other bundle once a model is installed is refused.
    pub fn install_initial_bundle(
        &mut self,
        bytes: &[u8],
        verified: &Verified<Bundle>,
    ) -> Result<SlotName, StoreError> {
        let actual = sha256_digest(bytes);
        if actual != verified.digest {
            return Err(StoreError::NotTheVerifiedBundle {
                expected: verified.digest.clone(),
                actual,
            });
        }
        if let Some(active) = self.state.active
            && let Some(record) = self.state.slots.get(active)
        {
            if record.digest == verified.digest && self.state.committed {
                return Ok(active);
            }
            return Err(StoreError::ModelInstalled {
                installed: record.describe(),
                slot: SlotDisplay(active),
            });
        }
        let slot = SlotName::A;
        let path = Self::bundle_path(&self.data_dir, slot);
        if let Some(dir) = path.parent() {
            fsutil::create_dir_durable(dir)?;
        }
        // The bundle first, then the state that points at it: a crash in between leaves a
        // device without a model, never a state naming a missing bundle.
        fsutil::write_atomic(&path, bytes)?;
        let mut next = self.state.clone();
        next.install_initial(slot, SlotRecord::of(verified));
        self.replace_state(next)?;
        Ok(slot)
    }

    /// Where downloads into `slot` are kept until verified.
    pub fn staging_dir(&self, slot: SlotName) -> PathBuf {
        self.data_dir.join("slots").join(slot_dir_name(slot)).join("staging")
    }

    /// Records an admitted plan: its sequence number becomes the last accepted (so it is never
    /// accepted again) and `install` the install in progress.
    pub fn accept_plan(&mut self, install: InstallRecord) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        next.last_plan_seq = Some(install.plan_seq);
        next.install = Some(install);
        self.replace_state(next)
    }

    /// Moves the install in progress to `phase`, with `reason` for a failure or rollback.
    pub fn set_install_phase(
        &mut self,
        phase: InstallPhase,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        if let Some(install) = next.install.as_mut() {
            install.phase = phase;
            install.reason = reason;
        }
        self.replace_state(next)
    }

    /// Puts the verified bundle at `staged` (bytes `verified` came from, on the same file
    /// system) into `slot`, which must not be the active slot. The slot's old record goes
    /// first, then the file is renamed in, then the new record is written: a crash in between
    /// leaves an empty slot, never a record naming the wrong bundle.
    pub fn install_staged(
        &mut self,
        slot: SlotName,
        staged: &Path,
        verified: &Verified<Bundle>,
    ) -> Result<(), StoreError> {
        if self.state.active == Some(slot) {
            return Err(StoreError::Slot {
                slot: SlotDisplay(slot),
                reason: "is the active slot; installs go to the other one".into(),
            });
        }
        let mut emptied = self.state.clone();
        emptied.slots.set(slot, None);
        self.replace_state(emptied)?;
        let path = Self::bundle_path(&self.data_dir, slot);
        if let Some(dir) = path.parent() {
            fsutil::create_dir_durable(dir)?;
        }
        std::fs::rename(staged, &path).map_err(|source| {
            StoreError::File(FileError::Io {
                action: "moving the staged bundle to",
                path: path.clone(),
                source,
            })
        })?;
        if let Some(dir) = path.parent() {
            fsutil::sync_dir(dir)?;
        }
        let mut next = self.state.clone();
        next.slots.set(slot, Some(SlotRecord::of(verified)));
        if let Some(install) = next.install.as_mut() {
            install.phase = InstallPhase::Staged;
        }
        self.replace_state(next)
    }

    /// Makes `slot` the serving slot, on trial (not committed): a restart now goes back to the
    /// other slot.
    pub fn activate_trial(&mut self, slot: SlotName) -> Result<(), StoreError> {
        if self.state.slots.get(slot).is_none() {
            return Err(StoreError::Slot {
                slot: SlotDisplay(slot),
                reason: "holds no model".into(),
            });
        }
        let mut next = self.state.clone();
        next.active = Some(slot);
        next.committed = false;
        if let Some(install) = next.install.as_mut() {
            install.phase = InstallPhase::Activated;
        }
        self.replace_state(next)
    }

    /// The model on trial passed: it is the known-good model now.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        next.committed = true;
        if let Some(install) = next.install.as_mut() {
            install.phase = InstallPhase::Committed;
            install.reason = None;
        }
        self.replace_state(next)
    }

    /// Serves `slot` as the committed model again (after a failed trial, or an operator's
    /// revert to a model already on the device) and records the install as rolled back.
    pub fn serve_slot(
        &mut self,
        slot: SlotName,
        phase: InstallPhase,
        reason: Option<String>,
    ) -> Result<(), StoreError> {
        if self.state.slots.get(slot).is_none() {
            return Err(StoreError::Slot {
                slot: SlotDisplay(slot),
                reason: "holds no model".into(),
            });
        }
        let mut next = self.state.clone();
        next.serve_committed(slot);
        if let Some(install) = next.install.as_mut() {
            install.phase = phase;
            install.reason = reason;
        }
        self.replace_state(next)
    }

    /// Empties `slot` (not the active one): its record first, then its file.
    pub fn clear_slot(&mut self, slot: SlotName) -> Result<(), StoreError> {
        if self.state.active == Some(slot) {
            return Err(StoreError::Slot {
                slot: SlotDisplay(slot),
                reason: "is the active slot and cannot be emptied".into(),
            });
        }
        let mut next = self.state.clone();
        next.slots.set(slot, None);
        self.replace_state(next)?;
        let path = Self::bundle_path(&self.data_dir, slot);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::File(FileError::Io { action: "removing", path, source }));
            }
        }
        Ok(())
    }

    /// The slot holding the bundle with `digest`, if any.
    pub fn slot_with(&self, digest: &str) -> Option<SlotName> {
        [SlotName::A, SlotName::B]
            .into_iter()
            .find(|slot| self.state.slots.get(*slot).is_some_and(|r| r.digest == digest))
    }

    /// Takes the next statistics window sequence number. It is persisted before it is returned,
    /// so a number handed out is never handed out again, whatever happens next.
    pub fn take_window_seq(&mut self) -> Result<u64, StoreError> {
        let seq = self.state.next_window_seq;
        let mut next = self.state.clone();
        next.next_window_seq = seq.saturating_add(1);
        self.replace_state(next)?;
        Ok(seq)
    }

    /// Writes `next` as the new state; the in-memory state changes only once it is on disk.
    fn replace_state(&mut self, next: AgentState) -> Result<(), StoreError> {
        if next == self.state && Self::state_path(&self.data_dir).exists() {
            return Ok(());
        }
        let path = Self::state_path(&self.data_dir);
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::State {
            path: path.clone(),
            reason: format!("cannot serialize: {e}"),
        })?;
        fsutil::write_atomic(&path, &bytes)?;
        self.state = next;
        Ok(())
    }
}

fn read_state(path: &Path) -> Result<AgentState, StoreError> {
    let bytes = match fsutil::read_limited(path, MAX_STATE_BYTES, "state file") {
        Ok(bytes) => bytes,
        Err(error) if error.is_not_found() => return Ok(AgentState::default()),
        Err(error) => return Err(error.into()),
    };
    let state: AgentState = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::State { path: path.to_path_buf(), reason: e.to_string() })?;
    state.check().map_err(|reason| StoreError::State { path: path.to_path_buf(), reason })?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SlotRecord {
        SlotRecord {
            name: name.into(),
            version: "1".into(),
            digest: sha256_digest(name.as_bytes()),
            size: 10,
        }
    }

    #[test]
    fn a_fresh_device_has_nothing_to_boot() {
        assert!(AgentState::default().boot_candidates().is_empty());
    }

    #[test]
    fn committed_active_slot_boots_first_with_the_other_as_fallback() {
        let mut state = AgentState::default();
        state.install_initial(SlotName::A, record("first"));
        assert_eq!(
            state.boot_candidates(),
            vec![BootCandidate { slot: SlotName::A, is_rollback: false }]
        );
        state.slots.set(SlotName::B, Some(record("second")));
        assert_eq!(
            state.boot_candidates(),
            vec![
                BootCandidate { slot: SlotName::A, is_rollback: false },
                BootCandidate { slot: SlotName::B, is_rollback: true },
            ]
        );
    }

    #[test]
    fn an_uncommitted_trial_is_never_booted_again() {
        let mut state = AgentState::default();
        state.install_initial(SlotName::A, record("known-good"));
        state.slots.set(SlotName::B, Some(record("trial")));
        state.active = Some(SlotName::B);
        state.committed = false;
        assert_eq!(
            state.boot_candidates(),
            vec![BootCandidate { slot: SlotName::A, is_rollback: true }]
        );
        assert_eq!(state.previous_model().map(|m| m.name), Some("known-good".to_string()));
    }

    #[test]
    fn state_file_round_trips_and_refuses_other_versions() {
        let mut state = AgentState::default();
        state.install_initial(SlotName::A, record("m"));
        state.next_window_seq = 42;
        let json = serde_json::to_string(&state).expect("serialize");
        let back: AgentState = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, state);
        let mut future = state.clone();
        future.v = 2;
        assert!(future.check().is_err());
        let dangling = AgentState { active: Some(SlotName::B), ..AgentState::default() };
        assert!(dangling.check().is_err());
    }

    #[test]
    fn wire_slots_report_the_active_model() {
        let mut state = AgentState::default();
        state.install_initial(SlotName::A, record("m"));
        let slots = state.wire_slots();
        assert_eq!(slots.active, Some(SlotName::A));
        assert_eq!(slots.active_model().map(|m| m.name.as_str()), Some("m"));
        assert!(slots.b.is_none());
    }

    /// A provisioned data directory (fixture trust root, mlp_classifier 1.0.0 in slot a) and
    /// the bytes of version 2.0.0.
    fn provisioned() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = outpost_tests::fixtures::Fixture::new(dir.path());
        let data_dir = fixture.provisioned_agent_dir("dev-1", Some("mlp_classifier"));
        let options = outpost_tests::fixtures::BundleOptions {
            version: "2.0.0".into(),
            ..Default::default()
        };
        let v2 = std::fs::read(fixture.bundle_with("mlp_classifier", &options, "v2.bundle"))
            .expect("v2");
        (dir, data_dir, v2)
    }

    fn install_record(store: &Store, verified: &Verified<Bundle>) -> InstallRecord {
        InstallRecord {
            rollout: "r".into(),
            plan_seq: 7,
            action: InstallAction::Install,
            bundle: SlotRecord::of(verified),
            slot: store.state().active.map_or(SlotName::A, SlotName::other),
            phase: InstallPhase::Downloading,
            reason: None,
        }
    }

    #[test]
    fn a_trial_interrupted_by_a_restart_goes_back_to_the_committed_slot_for_good() {
        let (_dir, data_dir, v2) = provisioned();
        let now = OffsetDateTime::now_utc();
        let mut store = Store::open(&data_dir, now).expect("open");
        let verified = store.verify_bundle(&v2, now).expect("v2 verifies");
        store.accept_plan(install_record(&store, &verified)).expect("accept");
        let staged = store.staging_dir(SlotName::B).join("download.part");
        fsutil::create_dir_durable(&store.staging_dir(SlotName::B)).expect("staging");
        std::fs::write(&staged, &v2).expect("staged file");
        // The active slot is never the target.
        assert!(store.install_staged(SlotName::A, &staged, &verified).is_err());
        store.install_staged(SlotName::B, &staged, &verified).expect("stage");
        assert_eq!(store.state().install.as_ref().map(|i| i.phase), Some(InstallPhase::Staged));
        assert!(store.clear_slot(SlotName::A).is_err(), "the serving slot cannot be emptied");
        store.activate_trial(SlotName::B).expect("activate");
        assert_eq!(store.state().active, Some(SlotName::B));
        assert!(!store.state().committed);

        // The agent stops here. On the next start the committed slot a serves again.
        let mut store = Store::open(&data_dir, now).expect("reopen");
        let boot = store.boot(now, |_, _| Ok::<_, String>(())).expect("boot").expect("a model");
        assert_eq!(boot.slot, SlotName::A);
        assert!(boot.rolled_back);
        let state = Store::open(&data_dir, now).expect("reopen").state().clone();
        assert_eq!(state.active, Some(SlotName::A));
        assert!(state.committed);
        assert_eq!(state.last_plan_seq, Some(7), "the plan stays accepted: never retried");
        let install = state.install.expect("install record");
        assert_eq!(install.phase, InstallPhase::RolledBack);
        assert_eq!(install.reason.as_deref(), Some(INTERRUPTED_TRIAL));
    }

    #[test]
    fn a_committed_trial_serves_after_a_restart_and_the_old_model_stays_for_a_rollback() {
        let (_dir, data_dir, v2) = provisioned();
        let now = OffsetDateTime::now_utc();
        let mut store = Store::open(&data_dir, now).expect("open");
        let verified = store.verify_bundle(&v2, now).expect("v2 verifies");
        store.accept_plan(install_record(&store, &verified)).expect("accept");
        let staged = data_dir.join("v2.part");
        std::fs::write(&staged, &v2).expect("staged file");
        store.install_staged(SlotName::B, &staged, &verified).expect("stage");
        store.activate_trial(SlotName::B).expect("activate");
        store.commit().expect("commit");
        let mut store = Store::open(&data_dir, now).expect("reopen");
        let boot = store.boot(now, |_, _| Ok::<_, String>(())).expect("boot").expect("a model");
        assert_eq!((boot.slot, boot.rolled_back), (SlotName::B, false));
        assert_eq!(store.state().previous_model().map(|m| m.version), Some("1.0.0".into()));
        // An operator's revert to the model still in slot a.
        store.serve_slot(SlotName::A, InstallPhase::Committed, None).expect("revert");
        assert_eq!(store.state().active_record().map(|r| r.version.clone()), Some("1.0.0".into()));
        assert_eq!(store.slot_with(&verified.digest), Some(SlotName::B));
    }
}
