//! Staged rollouts in the database: `rollouts` (spec, plan, state, wave, lease),
//! `rollout_approvals` (approver signatures), `rollout_devices` (holdout and admissions) and
//! `rollout_transitions` (every state change). Every state change is one transaction with its
//! transition row and its audit record, guarded by the row's `revision` so two writers (an
//! operator's command and a driver's tick, or two instances) can never both apply a change
//! computed from the same state.

use serde::Serialize;
use sqlx::Row as _;

use super::audit::{self, NewAuditEvent};
use super::{Store, StoreError, from_json, now_ms};
use crate::rollout::machine::{Progress, RolloutState, WavePhase};
use crate::rollout::spec::RolloutSpec;

/// A stored rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRecord {
    pub id: String,
    pub state: RolloutState,
    pub spec: RolloutSpec,
    pub plan_seq: u64,
    /// The unsigned plan envelope (compact JSON) approvers sign.
    pub plan_envelope: String,
    /// The plan with the approvals, once started: what devices receive.
    pub signed_envelope: Option<String>,
    pub bundle_digest: String,
    pub wave: u32,
    pub wave_phase: WavePhase,
    pub wave_started_ms: Option<i64>,
    /// The last gate evaluation of the current wave.
    pub gates: Option<serde_json::Value>,
    pub reason: String,
    pub created_by: String,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub revision: i64,
    pub lease_owner: Option<String>,
    pub lease_expires_ms: Option<i64>,
}

impl RolloutRecord {
    pub fn progress(&self) -> Progress {
        Progress {
            state: self.state,
            wave: self.wave,
            phase: self.wave_phase,
            wave_started_ms: self.wave_started_ms,
        }
    }
}

/// An approver's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    pub keyid: String,
    pub sig: String,
    pub approved_by: String,
    pub approved_ms: i64,
}

/// A device the rollout placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolloutDevice {
    pub device_id: String,
    pub holdout: bool,
    /// The wave that admitted it (the holdout release is the wave after the last).
    pub wave: Option<u32>,
    pub admitted_ms: Option<i64>,
    pub previous_digest: Option<String>,
    pub reverted_ms: Option<i64>,
}

/// A stored transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitionRecord {
    pub id: i64,
    pub ts_ms: i64,
    pub action: String,
    pub from_state: String,
    pub to_state: String,
    pub wave: i64,
    pub actor: String,
    pub reason: String,
}

/// A state change to store.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub next: Progress,
    pub action: &'a str,
    pub actor: &'a str,
    pub reason: &'a str,
    /// Set the signed plan (at start).
    pub signed_envelope: Option<&'a str>,
    /// Replace the stored gate evaluation (`Some(None)` clears it).
    pub gates: Option<Option<&'a serde_json::Value>>,
    /// `api` or `control`.
    pub source: &'a str,
}

const COLUMNS: &str = "id, state, spec_json, plan_seq, plan_envelope, signed_envelope, \
    bundle_digest, wave, wave_phase, wave_started_ms, gates_json, reason, created_by, \
    created_ms, updated_ms, revision, lease_owner, lease_expires_ms";

fn corrupt(id: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { what: format!("rollout {id}"), reason: reason.into() }
}

fn from_row(row: &sqlx::any::AnyRow) -> Result<RolloutRecord, StoreError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let phase: String = row.try_get("wave_phase")?;
    let wave: i64 = row.try_get("wave")?;
    let seq: i64 = row.try_get("plan_seq")?;
    let gates: Option<String> = row.try_get("gates_json")?;
    Ok(RolloutRecord {
        state: RolloutState::parse(&state)
            .ok_or_else(|| corrupt(&id, format!("unknown state {state:?}")))?,
        spec: from_json(&row.try_get::<String, _>("spec_json")?, &format!("spec of {id}"))?,
        plan_seq: u64::try_from(seq).map_err(|_| corrupt(&id, "negative plan sequence"))?,
        plan_envelope: row.try_get("plan_envelope")?,
        signed_envelope: row.try_get("signed_envelope")?,
        bundle_digest: row.try_get("bundle_digest")?,
        wave: u32::try_from(wave).map_err(|_| corrupt(&id, format!("wave {wave}")))?,
        wave_phase: WavePhase::parse(&phase)
            .ok_or_else(|| corrupt(&id, format!("unknown wave phase {phase:?}")))?,
        wave_started_ms: row.try_get("wave_started_ms")?,
        gates: gates.map(|text| from_json(&text, &format!("gates of {id}"))).transpose()?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        revision: row.try_get("revision")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_ms: row.try_get("lease_expires_ms")?,
        id,
    })
}

type Transaction<'c> = sqlx::Transaction<'c, sqlx::Any>;

async fn insert_transition(
    transaction: &mut Transaction<'_>,
    id: &str,
    from: RolloutState,
    change: &Change<'_>,
    model: Option<String>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO rollout_transitions (rollout_id, ts_ms, action, from_state, to_state, wave, \
         actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id.to_string())
    .bind(now_ms())
    .bind(change.action.to_string())
    .bind(from.as_str().to_string())
    .bind(change.next.state.as_str().to_string())
    .bind(i64::from(change.next.wave))
    .bind(change.actor.to_string())
    .bind(change.reason.to_string())
    .execute(&mut **transaction)
    .await?;
    audit::insert_in(
        transaction,
        &NewAuditEvent {
            actor: change.actor.to_string(),
            action: change.action.to_string(),
            subject: format!("rollout {id} wave {}", change.next.wave),
            outcome: "ok".into(),
            reason: format!(
                "{} → {}: {}",
                from.as_str(),
                change.next.state.as_str(),
                change.reason
            ),
            source: change.source.to_string(),
            device: None,
            model,
        },
    )
    .await
}

async fn model_of(
    transaction: &mut Transaction<'_>,
    digest: &str,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT name, version FROM bundles WHERE digest = $1")
        .bind(digest.to_string())
        .fetch_optional(&mut **transaction)
        .await?;
    row.map(|row| -> Result<String, StoreError> {
        let name: String = row.try_get("name")?;
        let version: String = row.try_get("version")?;
        Ok(format!("{name}@{version}"))
    })
    .transpose()
}

impl Store {
    /// Creates a rollout: allocates the fleet-wide plan sequence number (above every stored
    /// plan's and every device's last accepted one), builds the plan with it (`build_plan`
    /// returns the unsigned envelope) and stores the rollout with its creation transition and
    /// audit record, in one transaction. A taken id is a conflict.
    pub async fn create_rollout(
        &self,
        id: &str,
        spec: &RolloutSpec,
        bundle_digest: &str,
        actor: &str,
        build_plan: impl FnOnce(u64) -> Result<String, String>,
    ) -> Result<RolloutRecord, StoreError> {
        let spec_json =
            serde_json::to_string(spec).map_err(|error| corrupt(id, format!("spec: {error}")))?;
        let mut transaction = self.pool().begin().await?;
        // Take the write lock before reading the sequence numbers: on SQLite a transaction that
        // read first cannot upgrade once another writer committed ("database is locked"); on
        // PostgreSQL two creations would otherwise read the same maximum.
        let lock = match self.backend() {
            super::Backend::Sqlite => "UPDATE rollouts SET revision = revision WHERE 1 = 0",
            super::Backend::Postgres => "LOCK TABLE rollouts IN SHARE ROW EXCLUSIVE MODE",
        };
        sqlx::query(lock).execute(&mut *transaction).await?;
        let taken: Option<String> = sqlx::query_scalar("SELECT id FROM rollouts WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(&mut *transaction)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!("a rollout named {id} exists already")));
        }
        let rollouts: Option<i64> = sqlx::query_scalar("SELECT MAX(plan_seq) FROM rollouts")
            .fetch_one(&mut *transaction)
            .await?;
        let devices: Option<i64> = sqlx::query_scalar("SELECT MAX(last_plan_seq) FROM devices")
            .fetch_one(&mut *transaction)
            .await?;
        let seq = rollouts.unwrap_or(0).max(devices.unwrap_or(0)).max(0) + 1;
        let seq_u64 = u64::try_from(seq).map_err(|_| corrupt(id, "plan sequence"))?;
        let envelope = build_plan(seq_u64).map_err(StoreError::Invalid)?;
        let now = now_ms();
        let start = Progress::new();
        sqlx::query(
            "INSERT INTO rollouts (id, state, spec_json, plan_seq, plan_envelope, \
             signed_envelope, bundle_digest, wave, wave_phase, wave_started_ms, gates_json, \
             reason, created_by, created_ms, updated_ms, revision, lease_owner, \
             lease_expires_ms) VALUES ($1, $2, $3, $4, $5, NULL, $6, 0, $7, NULL, NULL, $8, $9, \
             $10, $10, 1, NULL, NULL)",
        )
        .bind(id.to_string())
        .bind(start.state.as_str().to_string())
        .bind(spec_json)
        .bind(seq)
        .bind(envelope)
        .bind(bundle_digest.to_string())
        .bind(start.phase.as_str().to_string())
        .bind("created; waiting for approvals".to_string())
        .bind(actor.to_string())
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        let model = model_of(&mut transaction, bundle_digest).await?;
        let change = Change {
            next: start,
            action: "rollout.create",
            actor,
            reason: &format!("plan seq {seq} for {bundle_digest} on cohort `{}`", spec.cohort),
            signed_envelope: None,
            gates: None,
            source: "api",
        };
        insert_transition(&mut transaction, id, start.state, &change, model).await?;
        transaction.commit().await?;
        self.rollout(id).await?.ok_or_else(|| corrupt(id, "vanished after creation"))
    }

    /// One rollout, if it exists.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE id = $1"
        )))
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Every rollout (in `state` when given), newest first.
    pub async fn list_rollouts(
        &self,
        state: Option<RolloutState>,
    ) -> Result<Vec<RolloutRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM rollouts WHERE ($1 = '' OR state = $1) \
             ORDER BY created_ms DESC, id"
        )))
        .bind(state.map(|s| s.as_str()).unwrap_or("").to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Applies a state change computed from revision `revision`. `false`: the rollout changed
    /// meanwhile (nothing written; compute again from the new state).
    pub async fn change_rollout(
        &self,
        id: &str,
        revision: i64,
        from: RolloutState,
        change: &Change<'_>,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool().begin().await?;
        let gates_text = match change.gates {
            Some(Some(value)) => {
                Some(serde_json::to_string(value).map_err(|e| corrupt(id, format!("gates: {e}")))?)
            }
            _ => None,
        };
        let updated = sqlx::query(
            "UPDATE rollouts SET state = $3, wave = $4, wave_phase = $5, wave_started_ms = $6, \
             reason = $7, updated_ms = $8, revision = revision + 1, \
             signed_envelope = CASE WHEN $9 = '' THEN signed_envelope ELSE $9 END, \
             gates_json = CASE WHEN $10 = 1 THEN $11 ELSE gates_json END \
             WHERE id = $1 AND revision = $2",
        )
        .bind(id.to_string())
        .bind(revision)
        .bind(change.next.state.as_str().to_string())
        .bind(i64::from(change.next.wave))
        .bind(change.next.phase.as_str().to_string())
        .bind(change.next.wave_started_ms)
        .bind(change.reason.to_string())
        .bind(now_ms())
        .bind(change.signed_envelope.unwrap_or("").to_string())
        .bind(i64::from(change.gates.is_some()))
        .bind(gates_text)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if updated == 0 {
            transaction.rollback().await?;
            return Ok(false);
        }
        let digest: String = sqlx::query_scalar("SELECT bundle_digest FROM rollouts WHERE id = $1")
            .bind(id.to_string())
            .fetch_one(&mut *transaction)
            .await?;
        let model = model_of(&mut transaction, &digest).await?;
        insert_transition(&mut transaction, id, from, change, model).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// Stores the latest gate evaluation of a rollout's wave (no state change).
    pub async fn save_rollout_gates(
        &self,
        id: &str,
        gates: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(gates).map_err(|e| corrupt(id, format!("gates: {e}")))?;
        sqlx::query("UPDATE rollouts SET gates_json = $2 WHERE id = $1")
            .bind(id.to_string())
            .bind(text)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records an approver's signature with its audit record; replaces an earlier signature
    /// of the same key.
    pub async fn add_rollout_approval(
        &self,
        id: &str,
        keyid: &str,
        sig: &str,
        approved_by: &str,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool().begin().await?;
        sqlx::query("DELETE FROM rollout_approvals WHERE rollout_id = $1 AND keyid = $2")
            .bind(id.to_string())
            .bind(keyid.to_string())
            .execute(&mut *transaction)
            .await?;
        sqlx::query(
            "INSERT INTO rollout_approvals (rollout_id, keyid, sig, approved_by, approved_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.to_string())
        .bind(keyid.to_string())
        .bind(sig.to_string())
        .bind(approved_by.to_string())
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The approvals of a rollout, by key id.
    pub async fn rollout_approvals(&self, id: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT keyid, sig, approved_by, approved_ms FROM rollout_approvals \
             WHERE rollout_id = $1 ORDER BY keyid",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ApprovalRecord {
                    keyid: row.try_get("keyid")?,
                    sig: row.try_get("sig")?,
                    approved_by: row.try_get("approved_by")?,
                    approved_ms: row.try_get("approved_ms")?,
                })
            })
            .collect()
    }

    /// The devices a rollout placed, by id.
    pub async fn rollout_devices(&self, id: &str) -> Result<Vec<RolloutDevice>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, holdout, wave, admitted_ms, previous_digest, reverted_ms \
             FROM rollout_devices WHERE rollout_id = $1 ORDER BY device_id",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let wave: Option<i64> = row.try_get("wave")?;
                Ok(RolloutDevice {
                    device_id: row.try_get("device_id")?,
                    holdout: row.try_get::<i64, _>("holdout")? != 0,
                    wave: wave.map(|w| u32::try_from(w).unwrap_or(u32::MAX)),
                    admitted_ms: row.try_get("admitted_ms")?,
                    previous_digest: row.try_get("previous_digest")?,
                    reverted_ms: row.try_get("reverted_ms")?,
                })
            })
            .collect()
    }

    /// Places devices newly seen in the cohort (holdout or not); devices placed before keep
    /// their place.
    pub async fn place_rollout_devices(
        &self,
        id: &str,
        devices: &[(String, bool)],
    ) -> Result<(), StoreError> {
        if devices.is_empty() {
            return Ok(());
        }
        let mut transaction = self.pool().begin().await?;
        for (device, holdout) in devices {
            sqlx::query(
                "INSERT INTO rollout_devices (rollout_id, device_id, holdout, wave, admitted_ms, \
                 previous_digest, reverted_ms) VALUES ($1, $2, $3, NULL, NULL, NULL, NULL) \
                 ON CONFLICT (rollout_id, device_id) DO NOTHING",
            )
            .bind(id.to_string())
            .bind(device.clone())
            .bind(i64::from(*holdout))
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Records the admission of devices (`(device, previous model digest)`) by `wave` at
    /// `admitted_ms`, with one audit record per device. Devices admitted before are left
    /// alone; returns the ones admitted now, so no device is admitted twice.
    pub async fn admit_rollout_devices(
        &self,
        id: &str,
        wave: u32,
        devices: &[(String, Option<String>)],
        admitted_ms: i64,
        model: Option<String>,
    ) -> Result<Vec<String>, StoreError> {
        let mut admitted = Vec::new();
        let mut transaction = self.pool().begin().await?;
        for (device, previous) in devices {
            let updated = sqlx::query(
                "UPDATE rollout_devices SET wave = $3, admitted_ms = $4, previous_digest = $5 \
                 WHERE rollout_id = $1 AND device_id = $2 AND admitted_ms IS NULL",
            )
            .bind(id.to_string())
            .bind(device.clone())
            .bind(i64::from(wave))
            .bind(admitted_ms)
            .bind(previous.clone())
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if updated == 1 {
                audit::insert_in(
                    &mut transaction,
                    &NewAuditEvent {
                        actor: "control".into(),
                        action: "rollout.device.admit".into(),
                        subject: format!("rollout {id} wave {wave} device {device}"),
                        outcome: "ok".into(),
                        reason: format!(
                            "admitted; previous model {}",
                            previous.as_deref().unwrap_or("none")
                        ),
                        source: "control".into(),
                        device: Some(device.clone()),
                        model: model.clone(),
                    },
                )
                .await?;
                admitted.push(device.clone());
            }
        }
        transaction.commit().await?;
        Ok(admitted)
    }

    /// Records that admitted devices were sent back to the fallback at `reverted_ms`.
    pub async fn mark_rollout_reverted(
        &self,
        id: &str,
        devices: &[String],
        reverted_ms: i64,
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool().begin().await?;
        for device in devices {
            sqlx::query(
                "UPDATE rollout_devices SET reverted_ms = $3 WHERE rollout_id = $1 \
                 AND device_id = $2 AND reverted_ms IS NULL",
            )
            .bind(id.to_string())
            .bind(device.clone())
            .bind(reverted_ms)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Ids of the rollouts a driver has work on: running ones, completed ones whose holdout
    /// is not yet admitted, rolled-back ones with devices not yet sent back.
    pub async fn rollouts_to_drive(&self) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT r.id FROM rollouts r WHERE r.state = 'running' \
             OR (r.state = 'completed' AND EXISTS (SELECT 1 FROM rollout_devices d \
                 WHERE d.rollout_id = r.id AND d.holdout = 1 AND d.admitted_ms IS NULL)) \
             OR (r.state = 'rolled_back' AND EXISTS (SELECT 1 FROM rollout_devices d \
                 WHERE d.rollout_id = r.id AND d.admitted_ms IS NOT NULL \
                 AND d.reverted_ms IS NULL)) ORDER BY r.created_ms, r.id",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Every transition of a rollout, oldest first.
    pub async fn rollout_transitions(&self, id: &str) -> Result<Vec<TransitionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, action, from_state, to_state, wave, actor, reason \
             FROM rollout_transitions WHERE rollout_id = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TransitionRecord {
                    id: row.try_get("id")?,
                    ts_ms: row.try_get("ts_ms")?,
                    action: row.try_get("action")?,
                    from_state: row.try_get("from_state")?,
                    to_state: row.try_get("to_state")?,
                    wave: row.try_get("wave")?,
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Takes or renews the lease on driving rollout `id` for `owner` until `now + ttl_ms`:
    /// granted when nobody holds it, `owner` holds it, or the holder's lease expired. One
    /// conditional update, so two instances can never both hold it.
    pub async fn acquire_rollout_lease(
        &self,
        id: &str,
        owner: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE rollouts SET lease_owner = $2, lease_expires_ms = $3 WHERE id = $1 AND \
             (lease_owner IS NULL OR lease_owner = $2 OR lease_expires_ms IS NULL \
             OR lease_expires_ms < $4)",
        )
        .bind(id.to_string())
        .bind(owner.to_string())
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Gives up `owner`'s lease on rollout `id` (at shutdown, or when the rollout ended).
    pub async fn release_rollout_lease(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollouts SET lease_owner = NULL, lease_expires_ms = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id.to_string())
        .bind(owner.to_string())
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
