//! The `audit_events` table: what people and the control did, and what they were refused.
//!
//! This is the raw material of the tamper-evident audit trail of DESIGN §9 (a Merkle log with
//! signed checkpoints, a later step). Fields follow NIST AU-3: when (`ts_ms`), who (`actor`),
//! what (`action`, from a fixed vocabulary such as `auth.denied`, `model.publish`,
//! `user.create`), on what (`subject`), with what outcome and why, and from where (`source`).

use serde::Serialize;
use sqlx::Row as _;

use super::{Store, StoreError, now_ms};

/// An event to record. Build it with `..Default::default()` so new optional fields stay
/// source-compatible.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub reason: String,
    pub source: String,
    /// The device the event concerns, if any (audit exports filter on it).
    pub device: Option<String>,
    /// The model the event concerns as `name@version`, if any (audit exports filter on it).
    pub model: Option<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub reason: String,
    pub source: String,
}

/// Records `event` inside an open transaction, so it commits or rolls back with the action.
pub(crate) async fn insert_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &NewAuditEvent,
) -> Result<(), StoreError> {
    insert_query(event).execute(&mut **transaction).await?;
    Ok(())
}

fn insert_query(
    event: &NewAuditEvent,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO audit_events (ts_ms, actor, action, subject, outcome, reason, source) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_ms())
    .bind(event.actor.clone())
    .bind(event.action.clone())
    .bind(event.subject.clone())
    .bind(event.outcome.clone())
    .bind(event.reason.clone())
    .bind(event.source.clone())
}

impl Store {
    /// Records one event on its own.
    pub async fn record_audit_event(&self, event: &NewAuditEvent) -> Result<(), StoreError> {
        insert_query(event).execute(self.pool()).await?;
        Ok(())
    }

    /// The most recent events, newest first; `action` given: only events of that action.
    pub async fn audit_events(
        &self,
        action: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, ts_ms, actor, action, subject, outcome, reason, source FROM audit_events \
             WHERE ($1 = '' OR action = $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(action.unwrap_or("").to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEvent {
                    id: row.try_get("id")?,
                    ts_ms: row.try_get("ts_ms")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    subject: row.try_get("subject")?,
                    outcome: row.try_get("outcome")?,
                    reason: row.try_get("reason")?,
                    source: row.try_get("source")?,
                })
            })
            .collect()
    }
}
