//! Fleet drift tables and reads: every stored aggregate of one model version in a time range,
//! for all devices or all cohorts at once (one query, so a fleet-wide drift overview does not
//! cost one round trip per device); the hysteresis streaks of watched series
//! (`drift_alert_streaks`); and drift alerts with their review (`drift_alerts`). Opening,
//! closing and reviewing an alert record an audit event in the same transaction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::audit::{NewAuditEvent, insert_in};
use super::ingest::{AggregateKind, AggregateWindow};
use super::{Store, StoreError, from_json, now_ms, to_u64};
use crate::fleet_drift::Streaks;

/// One watched series: a feature (or output) of a model version on a device or in a cohort.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Series {
    pub model_digest: String,
    /// `device` or `cohort`.
    pub scope_kind: String,
    pub scope_key: String,
    pub feature: String,
}

impl Series {
    /// The series of a row with `scope_kind`, `scope_key` and `feature` columns.
    fn of_row(model_digest: &str, row: &sqlx::any::AnyRow) -> Result<Series, StoreError> {
        Ok(Series {
            model_digest: model_digest.to_string(),
            scope_kind: row.try_get("scope_kind")?,
            scope_key: row.try_get("scope_key")?,
            feature: row.try_get("feature")?,
        })
    }

    fn subject(&self) -> String {
        format!(
            "model {} {} {} feature {}",
            self.model_digest, self.scope_kind, self.scope_key, self.feature
        )
    }
}

/// How operators have reviewed an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Review {
    New,
    Acknowledged,
    /// The shift is known and accepted (a new season, a new site).
    Expected,
}

impl Review {
    pub fn as_str(self) -> &'static str {
        match self {
            Review::New => "new",
            Review::Acknowledged => "acknowledged",
            Review::Expected => "expected",
        }
    }

    fn parse(text: &str) -> Option<Review> {
        match text {
            "new" => Some(Review::New),
            "acknowledged" => Some(Review::Acknowledged),
            "expected" => Some(Review::Expected),
            _ => None,
        }
    }
}

/// A note on an alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertNote {
    pub by: String,
    pub ts_ms: i64,
    pub text: String,
}

/// A drift alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftAlert {
    pub id: i64,
    #[serde(flatten)]
    pub series: Series,
    pub opened_ms: i64,
    pub closed_ms: Option<i64>,
    /// The feature's metrics, verdict and reasons when the alert opened.
    pub detail: serde_json::Value,
    pub review: Review,
    pub reviewed_by: Option<String>,
    pub reviewed_ms: Option<i64>,
    pub notes: Vec<AlertNote>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Open,
    Closed,
    All,
}

const ALERT_COLUMNS: &str = "id, model_digest, scope_kind, scope_key, feature, opened_ms, \
    closed_ms, detail_json, review, reviewed_by, reviewed_ms, notes_json";

fn alert_from_row(row: &sqlx::any::AnyRow) -> Result<DriftAlert, StoreError> {
    let id: i64 = row.try_get("id")?;
    let what = format!("drift alert {id}");
    let review: String = row.try_get("review")?;
    Ok(DriftAlert {
        id,
        series: Series {
            model_digest: row.try_get("model_digest")?,
            scope_kind: row.try_get("scope_kind")?,
            scope_key: row.try_get("scope_key")?,
            feature: row.try_get("feature")?,
        },
        opened_ms: row.try_get("opened_ms")?,
        closed_ms: row.try_get("closed_ms")?,
        detail: from_json(&row.try_get::<String, _>("detail_json")?, &what)?,
        review: Review::parse(&review).ok_or_else(|| StoreError::Corrupt {
            what: what.clone(),
            reason: format!("unknown review {review:?}"),
        })?,
        reviewed_by: row.try_get("reviewed_by")?,
        reviewed_ms: row.try_get("reviewed_ms")?,
        notes: from_json(&row.try_get::<String, _>("notes_json")?, &what)?,
    })
}

/// A transaction that reads and then writes. SQLite must take its write lock up front (`BEGIN
/// IMMEDIATE`): a deferred transaction that reads first cannot upgrade while another
/// connection writes and fails with "database is locked" instead of waiting.
async fn begin_read_write(
    store: &Store,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
    Ok(match store.backend() {
        super::Backend::Sqlite => store.pool().begin_with("BEGIN IMMEDIATE").await?,
        super::Backend::Postgres => store.pool().begin().await?,
    })
}

/// What the control (not a person) is called in the audit log.
const CONTROL_ACTOR: &str = "control";

/// One aggregate row: whose (device id or cohort), which bucket, and the merged windows.
#[derive(Debug, Clone)]
pub struct KeyedAggregate {
    pub key: String,
    pub bucket_start_ms: i64,
    pub aggregate: AggregateWindow,
}

impl Store {
    /// Writes one aggregate row as given, replacing a row with the same key: for restoring
    /// exported statistics and for benchmarks that need a large stored fleet quickly. Ingest
    /// never uses it (it merges, see [`Store::ingest_window`]).
    pub async fn put_aggregate(
        &self,
        kind: AggregateKind,
        key: &str,
        bucket_start_ms: i64,
        bucket_ms: i64,
        aggregate: &AggregateWindow,
    ) -> Result<(), StoreError> {
        let table = match kind {
            AggregateKind::Device => "device_aggregates (model_digest, device_id,",
            AggregateKind::Cohort => "cohort_aggregates (model_digest, cohort,",
        };
        let conflict = match kind {
            AggregateKind::Device => "(model_digest, device_id, bucket_start_ms)",
            AggregateKind::Cohort => "(model_digest, cohort, bucket_start_ms)",
        };
        let json = serde_json::to_string(aggregate).map_err(|error| StoreError::Corrupt {
            what: format!("aggregate of {key}"),
            reason: error.to_string(),
        })?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} bucket_start_ms, bucket_ms, windows, request_count, \
             window_json, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT {conflict} DO UPDATE SET bucket_ms = excluded.bucket_ms, \
             windows = excluded.windows, request_count = excluded.request_count, \
             window_json = excluded.window_json, updated_ms = excluded.updated_ms"
        )))
        .bind(aggregate.model.digest.as_str().to_string())
        .bind(key.to_string())
        .bind(bucket_start_ms)
        .bind(bucket_ms)
        .bind(i64::try_from(aggregate.windows).unwrap_or(i64::MAX))
        .bind(i64::try_from(aggregate.count).unwrap_or(i64::MAX))
        .bind(json)
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The model digests with any stored statistics (every device reports into cohort `*`).
    pub async fn models_with_statistics(&self) -> Result<Vec<String>, StoreError> {
        self.fold_before_reading().await?;
        let digests: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT model_digest FROM cohort_aggregates WHERE cohort = '*' ORDER BY 1",
        )
        .fetch_all(self.pool())
        .await?;
        Ok(digests)
    }

    /// Every aggregate of `model_digest` for every device (or cohort) with buckets starting in
    /// `from_ms .. to_ms`, ordered by key then bucket.
    pub async fn aggregates_of_model(
        &self,
        kind: AggregateKind,
        model_digest: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<KeyedAggregate>, StoreError> {
        self.fold_before_reading().await?;
        let query = match kind {
            AggregateKind::Device => {
                "SELECT device_id AS aggregate_key, bucket_start_ms, window_json \
                 FROM device_aggregates WHERE model_digest = $1 AND bucket_start_ms >= $2 \
                 AND bucket_start_ms < $3 ORDER BY device_id, bucket_start_ms"
            }
            AggregateKind::Cohort => {
                "SELECT cohort AS aggregate_key, bucket_start_ms, window_json \
                 FROM cohort_aggregates WHERE model_digest = $1 AND bucket_start_ms >= $2 \
                 AND bucket_start_ms < $3 ORDER BY cohort, bucket_start_ms"
            }
        };
        let rows = sqlx::query(query)
            .bind(model_digest.to_string())
            .bind(from_ms)
            .bind(to_ms)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get("aggregate_key")?;
                let bucket_start_ms: i64 = row.try_get("bucket_start_ms")?;
                let text: String = row.try_get("window_json")?;
                let aggregate =
                    from_json(&text, &format!("aggregate {model_digest} {key} {bucket_start_ms}"))?;
                Ok(KeyedAggregate { key, bucket_start_ms, aggregate })
            })
            .collect()
    }
}

impl Store {
    /// The hysteresis streaks of every series of `model_digest`.
    pub async fn drift_streaks(
        &self,
        model_digest: &str,
    ) -> Result<BTreeMap<Series, Streaks>, StoreError> {
        let rows = sqlx::query(
            "SELECT scope_kind, scope_key, feature, alert_streak, clear_streak \
             FROM drift_alert_streaks WHERE model_digest = $1",
        )
        .bind(model_digest.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let series = Series::of_row(model_digest, row)?;
            let what = format!("drift streaks of {}", series.subject());
            let streaks = Streaks {
                alert: u32::try_from(to_u64(row.try_get("alert_streak")?, &what)?)
                    .unwrap_or(u32::MAX),
                clear: u32::try_from(to_u64(row.try_get("clear_streak")?, &what)?)
                    .unwrap_or(u32::MAX),
            };
            out.insert(series, streaks);
        }
        Ok(out)
    }

    /// Stores the streaks of many series in one transaction.
    pub async fn save_drift_streaks(
        &self,
        streaks: &[(Series, Streaks)],
    ) -> Result<(), StoreError> {
        let mut transaction = self.pool().begin().await?;
        let now = now_ms();
        for (series, streak) in streaks {
            sqlx::query(
                "INSERT INTO drift_alert_streaks (model_digest, scope_kind, scope_key, feature, \
                 alert_streak, clear_streak, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (model_digest, scope_kind, scope_key, feature) DO UPDATE SET \
                 alert_streak = excluded.alert_streak, clear_streak = excluded.clear_streak, \
                 updated_ms = excluded.updated_ms",
            )
            .bind(series.model_digest.clone())
            .bind(series.scope_kind.clone())
            .bind(series.scope_key.clone())
            .bind(series.feature.clone())
            .bind(i64::from(streak.alert))
            .bind(i64::from(streak.clear))
            .bind(now)
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// The open alerts of `model_digest`, by series.
    pub async fn open_drift_alerts(
        &self,
        model_digest: &str,
    ) -> Result<BTreeMap<Series, i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, scope_kind, scope_key, feature FROM drift_alerts \
             WHERE model_digest = $1 AND closed_ms IS NULL",
        )
        .bind(model_digest.to_string())
        .fetch_all(self.pool())
        .await?;
        let mut out = BTreeMap::new();
        for row in &rows {
            let series = Series::of_row(model_digest, row)?;
            out.insert(series, row.try_get::<i64, _>("id")?);
        }
        Ok(out)
    }

    /// Opens an alert for `series` and records `drift.alert.open`. `None` when the series
    /// already has an open alert (another control instance opened it first).
    pub async fn open_drift_alert(
        &self,
        series: &Series,
        detail: &serde_json::Value,
    ) -> Result<Option<DriftAlert>, StoreError> {
        let mut transaction = begin_read_write(self).await?;
        let exists: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM drift_alerts WHERE model_digest = $1 AND scope_kind = $2 \
             AND scope_key = $3 AND feature = $4 AND closed_ms IS NULL",
        )
        .bind(series.model_digest.clone())
        .bind(series.scope_kind.clone())
        .bind(series.scope_key.clone())
        .bind(series.feature.clone())
        .fetch_optional(&mut *transaction)
        .await?;
        if exists.is_some() {
            return Ok(None);
        }
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO drift_alerts (model_digest, scope_kind, scope_key, feature, opened_ms, \
             closed_ms, detail_json, review, reviewed_by, reviewed_ms, notes_json) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, 'new', NULL, NULL, '[]') \
             RETURNING {ALERT_COLUMNS}"
        )))
        .bind(series.model_digest.clone())
        .bind(series.scope_kind.clone())
        .bind(series.scope_key.clone())
        .bind(series.feature.clone())
        .bind(now_ms())
        .bind(detail.to_string())
        .fetch_one(&mut *transaction)
        .await;
        let row = match inserted {
            Ok(row) => row,
            // The unique index on open alerts: someone else opened it meanwhile.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let alert = alert_from_row(&row)?;
        // The drift monitor puts the feature's drift (with its reasons) under `feature`.
        let reasons = detail
            .pointer("/feature/reasons")
            .or_else(|| detail.get("reasons"))
            .and_then(|reasons| reasons.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join("; "))
            .unwrap_or_default();
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: CONTROL_ACTOR.into(),
                action: "drift.alert.open".into(),
                subject: format!("drift alert {} ({})", alert.id, series.subject()),
                outcome: "open".into(),
                reason: reasons,
                source: "drift monitor".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(alert))
    }

    /// Closes alert `id` and records `drift.alert.close`; `None` when it was not open.
    pub async fn close_drift_alert(&self, id: i64) -> Result<Option<DriftAlert>, StoreError> {
        let mut transaction = self.pool().begin().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE drift_alerts SET closed_ms = $1 WHERE id = $2 AND closed_ms IS NULL \
             RETURNING {ALERT_COLUMNS}"
        )))
        .bind(now_ms())
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let alert = alert_from_row(&row)?;
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: CONTROL_ACTOR.into(),
                action: "drift.alert.close".into(),
                subject: format!("drift alert {} ({})", alert.id, alert.series.subject()),
                outcome: "closed".into(),
                reason: "clear for the configured number of evaluations".into(),
                source: "drift monitor".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(alert))
    }

    /// Alerts, newest first, optionally of one model.
    pub async fn drift_alerts(
        &self,
        state: AlertState,
        model_digest: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DriftAlert>, StoreError> {
        let state_clause = match state {
            AlertState::Open => "AND closed_ms IS NULL",
            AlertState::Closed => "AND closed_ms IS NOT NULL",
            AlertState::All => "",
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM drift_alerts WHERE ($1 = '' OR model_digest = $1) \
             {state_clause} ORDER BY id DESC LIMIT $2"
        )))
        .bind(model_digest.unwrap_or("").to_string())
        .bind(i64::from(limit))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(alert_from_row).collect()
    }

    /// Sets the review of alert `id` (when `review` is given) and adds `note` (when given),
    /// recording `drift.alert.ack`, `drift.alert.expected` or `drift.alert.annotate` with the
    /// user. `None` when there is no such alert.
    pub async fn review_drift_alert(
        &self,
        id: i64,
        review: Option<Review>,
        note: Option<&str>,
        by: &str,
    ) -> Result<Option<DriftAlert>, StoreError> {
        let mut transaction = begin_read_write(self).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ALERT_COLUMNS} FROM drift_alerts WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut alert = alert_from_row(&row)?;
        let now = now_ms();
        if let Some(review) = review {
            alert.review = review;
            alert.reviewed_by = Some(by.to_string());
            alert.reviewed_ms = Some(now);
        }
        if let Some(note) = note {
            alert.notes.push(AlertNote { by: by.to_string(), ts_ms: now, text: note.to_string() });
        }
        let notes = serde_json::to_string(&alert.notes).map_err(|error| StoreError::Corrupt {
            what: format!("notes of drift alert {id}"),
            reason: error.to_string(),
        })?;
        sqlx::query(
            "UPDATE drift_alerts SET review = $1, reviewed_by = $2, reviewed_ms = $3, \
             notes_json = $4 WHERE id = $5",
        )
        .bind(alert.review.as_str())
        .bind(alert.reviewed_by.clone())
        .bind(alert.reviewed_ms)
        .bind(notes)
        .bind(id)
        .execute(&mut *transaction)
        .await?;
        let action = match review {
            Some(Review::Acknowledged) => "drift.alert.ack",
            Some(Review::Expected) => "drift.alert.expected",
            Some(Review::New) | None => "drift.alert.annotate",
        };
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: by.to_string(),
                action: action.into(),
                subject: format!("drift alert {id} ({})", alert.series.subject()),
                outcome: "ok".into(),
                reason: note.unwrap_or("").to_string(),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(alert))
    }
}
