//! Sampled raw inputs uploaded by devices (`docs/drift.md` "Input samples"):
//! upload requests (`device_sample_requests`) and the parts devices sent back
//! (`device_sample_parts`). A request and a completed upload each record an audit event in
//! the same transaction (`drift.samples.request`, `drift.samples.upload`); uploads older than
//! the retention are deleted by [`Store::purge_device_samples`].

use serde::Serialize;
use sqlx::Row as _;

use outpost_shared::wire::{ModelRef, SampleChunk};

use super::audit::{NewAuditEvent, insert_in};
use super::{Store, StoreError, from_json, now_ms, to_i64, to_u64};

/// One upload request and what has arrived for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SampleRequest {
    pub request_id: String,
    pub device: String,
    pub requested_by: String,
    pub requested_ms: i64,
    /// `requested` until every part arrived, then `complete`.
    pub state: String,
    pub parts: Option<u64>,
    pub received_parts: u64,
    /// Whether sampling was enabled on the device (known once a part arrived).
    pub enabled: Option<bool>,
    /// Rows the device's reservoir was offered.
    pub seen: Option<u64>,
    pub model: Option<ModelRef>,
    pub columns: Vec<String>,
    pub completed_ms: Option<i64>,
}

/// What storing one part did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartOutcome {
    /// Stored; the upload still misses parts.
    Stored,
    /// The last missing part: the upload is complete (audited).
    Completed,
    /// Already stored (a redelivery), or for a request that is complete.
    Duplicate,
    /// No such request for this device (never made, purged, or another device's).
    UnknownRequest,
    /// Disagrees with the parts stored before (part count, columns).
    Inconsistent(String),
}

const REQUEST_COLUMNS: &str = "request_id, device_id, requested_by, requested_ms, state, parts, \
     enabled, seen, model_json, columns_json, completed_ms, \
     (SELECT COUNT(*) FROM device_sample_parts p WHERE p.request_id = r.request_id) AS received";

fn request_from_row(row: &sqlx::any::AnyRow) -> Result<SampleRequest, StoreError> {
    let request_id: String = row.try_get("request_id")?;
    let what = format!("sample request {request_id}");
    let model = row
        .try_get::<Option<String>, _>("model_json")?
        .map(|text| from_json::<ModelRef>(&text, &what))
        .transpose()?;
    let columns = match row.try_get::<Option<String>, _>("columns_json")? {
        Some(text) => from_json(&text, &what)?,
        None => Vec::new(),
    };
    Ok(SampleRequest {
        device: row.try_get("device_id")?,
        requested_by: row.try_get("requested_by")?,
        requested_ms: row.try_get("requested_ms")?,
        state: row.try_get("state")?,
        parts: row.try_get::<Option<i64>, _>("parts")?.map(|v| to_u64(v, &what)).transpose()?,
        received_parts: to_u64(row.try_get::<i64, _>("received")?, &what)?,
        enabled: row.try_get::<Option<i64>, _>("enabled")?.map(|v| v != 0),
        seen: row.try_get::<Option<i64>, _>("seen")?.map(|v| to_u64(v, &what)).transpose()?,
        model,
        columns,
        completed_ms: row.try_get("completed_ms")?,
        request_id,
    })
}

impl Store {
    /// Records an upload request by `by` for `device` with its audit event.
    pub async fn create_sample_request(
        &self,
        device: &str,
        request_id: &str,
        by: &str,
    ) -> Result<SampleRequest, StoreError> {
        let mut transaction = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO device_sample_requests (request_id, device_id, requested_by, \
             requested_ms, state) VALUES ($1, $2, $3, $4, 'requested')",
        )
        .bind(request_id.to_string())
        .bind(device.to_string())
        .bind(by.to_string())
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?;
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: by.to_string(),
                action: "drift.samples.request".into(),
                subject: format!("device {device} input sample request {request_id}"),
                outcome: "requested".into(),
                reason: "upload of the device's sampled raw inputs (personal-data-bearing)".into(),
                source: "api".into(),
                device: Some(device.to_string()),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        self.sample_request(request_id).await?.ok_or_else(|| StoreError::Corrupt {
            what: format!("sample request {request_id}"),
            reason: "missing right after it was inserted".into(),
        })
    }

    pub async fn sample_request(
        &self,
        request_id: &str,
    ) -> Result<Option<SampleRequest>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM device_sample_requests r WHERE request_id = $1"
        )))
        .bind(request_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(request_from_row).transpose()
    }

    /// The requests of `device`, newest first.
    pub async fn sample_requests(&self, device: &str) -> Result<Vec<SampleRequest>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM device_sample_requests r WHERE device_id = $1 \
             ORDER BY requested_ms DESC, request_id DESC"
        )))
        .bind(device.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(request_from_row).collect()
    }

    /// The newest request of every device that has not been answered completely: what the
    /// control asks devices to upload.
    pub async fn pending_sample_requests(&self) -> Result<Vec<SampleRequest>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM device_sample_requests r WHERE state = 'requested' \
             ORDER BY requested_ms DESC, request_id DESC"
        )))
        .fetch_all(self.pool())
        .await?;
        let mut newest: Vec<SampleRequest> = Vec::new();
        for row in &rows {
            let request = request_from_row(row)?;
            if !newest.iter().any(|r| r.device == request.device) {
                newest.push(request);
            }
        }
        Ok(newest)
    }

    /// Stores one part a device sent; the last missing one completes the upload and records
    /// `drift.samples.upload`.
    pub async fn store_sample_part(
        &self,
        device: &str,
        chunk: &SampleChunk,
    ) -> Result<PartOutcome, StoreError> {
        let mut transaction = match self.backend() {
            super::Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
            super::Backend::Postgres => self.pool().begin().await?,
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM device_sample_requests r \
             WHERE request_id = $1 AND device_id = $2"
        )))
        .bind(chunk.request_id.clone())
        .bind(device.to_string())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(request) = row.as_ref().map(request_from_row).transpose()? else {
            return Ok(PartOutcome::UnknownRequest);
        };
        if request.state == "complete" {
            return Ok(PartOutcome::Duplicate);
        }
        if let Some(parts) = request.parts
            && (parts != u64::from(chunk.parts) || request.columns != chunk.columns)
        {
            return Ok(PartOutcome::Inconsistent(format!(
                "part {} says {} parts and {} columns; earlier parts said {parts} and {}",
                chunk.part,
                chunk.parts,
                chunk.columns.len(),
                request.columns.len()
            )));
        }
        let rows = serde_json::to_string(&chunk.rows).map_err(|error| StoreError::Corrupt {
            what: "sample rows".into(),
            reason: error.to_string(),
        })?;
        let inserted = sqlx::query(
            "INSERT INTO device_sample_parts (request_id, part, rows_json, received_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (request_id, part) DO NOTHING",
        )
        .bind(chunk.request_id.clone())
        .bind(i64::from(chunk.part))
        .bind(rows)
        .bind(now_ms())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(PartOutcome::Duplicate);
        }
        let model = chunk.model.as_ref().map(|m| serde_json::json!(m).to_string());
        let columns = serde_json::json!(chunk.columns).to_string();
        sqlx::query(
            "UPDATE device_sample_requests SET parts = $1, enabled = $2, seen = $3, \
             model_json = $4, columns_json = $5 WHERE request_id = $6",
        )
        .bind(i64::from(chunk.parts))
        .bind(i64::from(chunk.enabled))
        .bind(to_i64(chunk.seen, "seen")?)
        .bind(model)
        .bind(columns)
        .bind(chunk.request_id.clone())
        .execute(&mut *transaction)
        .await?;
        let received = request.received_parts + 1;
        let outcome = if received >= u64::from(chunk.parts) {
            sqlx::query(
                "UPDATE device_sample_requests SET state = 'complete', completed_ms = $1 \
                 WHERE request_id = $2",
            )
            .bind(now_ms())
            .bind(chunk.request_id.clone())
            .execute(&mut *transaction)
            .await?;
            let rows: u64 = sqlx::query_scalar::<_, String>(
                "SELECT rows_json FROM device_sample_parts WHERE request_id = $1",
            )
            .bind(chunk.request_id.clone())
            .fetch_all(&mut *transaction)
            .await?
            .iter()
            .map(|text| from_json::<Vec<serde_json::Value>>(text, "sample rows").map(|r| r.len()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .sum::<usize>() as u64;
            insert_in(
                &mut transaction,
                &NewAuditEvent {
                    actor: format!("device:{device}"),
                    action: "drift.samples.upload".into(),
                    subject: format!("device {device} input sample request {}", chunk.request_id),
                    outcome: if chunk.enabled { "uploaded" } else { "sampling_disabled" }.into(),
                    reason: format!(
                        "{rows} rows of {} columns in {} parts (reservoir offered {} rows)",
                        chunk.columns.len(),
                        chunk.parts,
                        chunk.seen
                    ),
                    source: "mqtt".into(),
                    device: Some(device.to_string()),
                    model: chunk.model.as_ref().map(|m| format!("{}@{}", m.name, m.version)),
                },
            )
            .await?;
            PartOutcome::Completed
        } else {
            PartOutcome::Stored
        };
        transaction.commit().await?;
        Ok(outcome)
    }

    /// The rows of a request's parts, in part order.
    pub async fn sample_rows(&self, request_id: &str) -> Result<Vec<Vec<f64>>, StoreError> {
        let parts = sqlx::query_scalar::<_, String>(
            "SELECT rows_json FROM device_sample_parts WHERE request_id = $1 ORDER BY part",
        )
        .bind(request_id.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut rows = Vec::new();
        for text in &parts {
            rows.extend(from_json::<Vec<Vec<f64>>>(text, "sample rows")?);
        }
        Ok(rows)
    }

    /// Deletes requests (and their rows) made before `before_ms`; returns how many.
    pub async fn purge_device_samples(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut transaction = self.pool().begin().await?;
        sqlx::query(
            "DELETE FROM device_sample_parts WHERE request_id IN \
             (SELECT request_id FROM device_sample_requests WHERE requested_ms < $1)",
        )
        .bind(before_ms)
        .execute(&mut *transaction)
        .await?;
        let deleted = sqlx::query("DELETE FROM device_sample_requests WHERE requested_ms < $1")
            .bind(before_ms)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        Ok(deleted)
    }

    /// Devices with an open drift alert of their own (scope `device`).
    pub async fn devices_in_drift_alert(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT DISTINCT scope_key FROM drift_alerts \
             WHERE scope_kind = 'device' AND closed_ms IS NULL ORDER BY scope_key",
        )
        .fetch_all(self.pool())
        .await?)
    }
}
