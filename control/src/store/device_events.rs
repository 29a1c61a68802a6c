//! The `device_events` table: what devices report on their `events` topic (install steps,
//! refusals, rollbacks, errors), stored once per (device, seq) and written into the audit log in
//! the same transaction as `device.<kind>`. Rollout gates read them ([`crate::rollout`]).

use outpost_shared::wire::{DeviceId, Event, Outcome};
use serde::Serialize;
use sqlx::Row as _;

use super::audit::{self, NewAuditEvent};
use super::{Store, StoreError, to_i64};

/// A stored device event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceEventRecord {
    pub id: i64,
    pub device_id: String,
    pub seq: i64,
    pub ts_ms: i64,
    pub received_ms: i64,
    pub kind: String,
    pub outcome: String,
    pub rollout_id: Option<String>,
    pub plan_seq: Option<i64>,
    pub bundle_digest: Option<String>,
    pub code: Option<String>,
    pub reason: String,
    /// The event as the device sent it.
    pub event: serde_json::Value,
}

/// What storing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    Stored,
    /// This (device, seq) was stored before; nothing changed.
    Duplicate,
}

/// The wire name of an outcome.
pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::Failed => "failed",
        Outcome::Refused => "refused",
    }
}

const COLUMNS: &str = "id, device_id, seq, ts_ms, received_ms, kind, outcome, rollout_id, \
    plan_seq, bundle_digest, code, reason, event_json";

fn from_row(row: &sqlx::any::AnyRow) -> Result<DeviceEventRecord, StoreError> {
    let text: String = row.try_get("event_json")?;
    let id: i64 = row.try_get("id")?;
    Ok(DeviceEventRecord {
        event: super::from_json(&text, &format!("device event {id}"))?,
        id,
        device_id: row.try_get("device_id")?,
        seq: row.try_get("seq")?,
        ts_ms: row.try_get("ts_ms")?,
        received_ms: row.try_get("received_ms")?,
        kind: row.try_get("kind")?,
        outcome: row.try_get("outcome")?,
        rollout_id: row.try_get("rollout_id")?,
        plan_seq: row.try_get("plan_seq")?,
        bundle_digest: row.try_get("bundle_digest")?,
        code: row.try_get("code")?,
        reason: row.try_get("reason")?,
    })
}

impl Store {
    /// Stores `event` of `device` once per (device, seq), with its audit record, in one
    /// transaction.
    pub async fn record_device_event(
        &self,
        device: &DeviceId,
        event: &Event,
        received_ms: i64,
    ) -> Result<EventOutcome, StoreError> {
        let json = serde_json::to_string(event).map_err(|error| StoreError::Corrupt {
            what: format!("event of {device}"),
            reason: error.to_string(),
        })?;
        let digest = event.bundle_digest.as_ref().map(|d| d.as_str().to_string());
        let mut transaction = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO device_events (device_id, seq, ts_ms, received_ms, kind, outcome, \
             rollout_id, plan_seq, bundle_digest, code, reason, event_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(device.as_str().to_string())
        .bind(to_i64(event.seq, "event sequence number")?)
        .bind(i64::try_from(event.ts_ms).unwrap_or(i64::MAX))
        .bind(received_ms)
        .bind(event.kind.as_str().to_string())
        .bind(outcome_name(event.outcome).to_string())
        .bind(event.rollout_id.clone())
        .bind(event.plan_seq.map(|seq| to_i64(seq, "plan sequence")).transpose()?)
        .bind(digest.clone())
        .bind(event.code.clone())
        .bind(event.message.clone())
        .bind(json)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            transaction.rollback().await?;
            return Ok(EventOutcome::Duplicate);
        }
        let model = match &digest {
            Some(digest) => sqlx::query("SELECT name, version FROM bundles WHERE digest = $1")
                .bind(digest.clone())
                .fetch_optional(&mut *transaction)
                .await?
                .map(|row| -> Result<String, StoreError> {
                    let name: String = row.try_get("name")?;
                    let version: String = row.try_get("version")?;
                    Ok(format!("{name}@{version}"))
                })
                .transpose()?,
            None => None,
        };
        let mut subject = format!("device {device}");
        if let Some(rollout) = &event.rollout_id {
            subject.push_str(&format!(" rollout {rollout}"));
        }
        if let Some(seq) = event.plan_seq {
            subject.push_str(&format!(" plan {seq}"));
        }
        if let Some(digest) = &digest {
            subject.push_str(&format!(" bundle {digest}"));
        }
        let reason = match &event.code {
            Some(code) => format!("{code}: {}", event.message),
            None => event.message.clone(),
        };
        audit::insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: format!("device:{device}"),
                action: format!("device.{}", event.kind.as_str()),
                subject,
                outcome: outcome_name(event.outcome).to_string(),
                reason,
                source: "mqtt".into(),
                device: Some(device.as_str().to_string()),
                model,
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(EventOutcome::Stored)
    }

    /// Events of `rollout` (any plan), oldest first.
    pub async fn rollout_device_events(
        &self,
        rollout: &str,
    ) -> Result<Vec<DeviceEventRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_events WHERE rollout_id = $1 ORDER BY id"
        )))
        .bind(rollout.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// The most recent events of `device`, newest first.
    pub async fn device_events(
        &self,
        device: &str,
        limit: u32,
    ) -> Result<Vec<DeviceEventRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM device_events WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(device.to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(from_row).collect()
    }
}
