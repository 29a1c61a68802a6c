//! Statistics ingest tables: `windows_seen` (the durable dedupe by device and sequence number),
//! `device_aggregates` and `cohort_aggregates` (windows merged per model digest × device or
//! cohort × time bucket), and their downsampling and retention.
//!
//! [`Store::ingest_window`] does everything for one window in one transaction: it inserts the
//! `(device, seq)` row (a unique key, so a redelivered window inserts nothing and is reported as
//! a duplicate) and merges the window into every aggregate row it belongs to. Either all of it
//! commits or none of it, so a crash between the two cannot count a window twice or lose it.
//!
//! Merging is exact: [`AggregateWindow::merge`] is [`StatsWindow::merge`] (checked counts,
//! histograms over identical edges, parallel moments). On PostgreSQL the aggregate rows are
//! read `FOR UPDATE`, so several control instances merging into one bucket serialize instead of
//! losing an update; SQLite has one writer at a time anyway.

use std::collections::BTreeMap;

use outpost_shared::wire::{
    ClassifierStats, DeviceId, FeatureStats, LatencyHistogram, ModelRef, ProtocolVersion,
    StatsWindow, StatsWindowError,
};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use super::{Backend, Store, StoreError, from_json, now_ms, to_i64, to_u64};

/// One day in milliseconds: the length of a downsampled bucket.
pub const DAY_MS: i64 = 86_400_000;

/// The exact merge of one or more windows of one model (for one device or one cohort).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateWindow {
    pub model: ModelRef,
    /// How many windows were merged.
    pub windows: u64,
    /// Earliest window start and latest window end, unix milliseconds.
    pub start_ms: u64,
    pub end_ms: u64,
    pub count: u64,
    pub errors: BTreeMap<String, u64>,
    pub latency: LatencyHistogram,
    pub inputs: Vec<FeatureStats>,
    pub outputs: Vec<FeatureStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierStats>,
}

impl AggregateWindow {
    /// The aggregate of one window.
    pub fn of(window: &StatsWindow) -> AggregateWindow {
        AggregateWindow {
            model: window.model.clone(),
            windows: 1,
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            count: window.count,
            errors: window.errors.clone(),
            latency: window.latency.clone(),
            inputs: window.inputs.clone(),
            outputs: window.outputs.clone(),
            classifier: window.classifier.clone(),
        }
    }

    /// Adds `other` with [`StatsWindow::merge`]'s rules; on error `self` is unchanged.
    pub fn merge(&mut self, other: &AggregateWindow) -> Result<(), StatsWindowError> {
        self.merge_window(&other.as_window()?, other.windows)
    }

    /// [`AggregateWindow::merge`] of an aggregate of `other_windows` windows already in its
    /// window form ([`AggregateWindow::as_window`]), so one conversion serves many merges.
    pub(crate) fn merge_window(
        &mut self,
        other: &StatsWindow,
        other_windows: u64,
    ) -> Result<(), StatsWindowError> {
        let windows = self
            .windows
            .checked_add(other_windows)
            .ok_or_else(|| StatsWindowError::Overflow { what: "aggregated window count".into() })?;
        // `self` moves into a window and back (no copy); the shared merge leaves it unchanged
        // on error.
        let mut merged = self.take_as_window()?;
        let result = merged.merge(other);
        let own_windows = self.windows;
        *self = AggregateWindow::from_window(
            merged,
            if result.is_ok() { windows } else { own_windows },
        );
        result
    }

    /// The aggregate of one window, taking it.
    fn from_window(window: StatsWindow, windows: u64) -> AggregateWindow {
        AggregateWindow {
            model: window.model,
            windows,
            start_ms: window.start_ms,
            end_ms: window.end_ms,
            count: window.count,
            errors: window.errors,
            latency: window.latency,
            inputs: window.inputs,
            outputs: window.outputs,
            classifier: window.classifier,
        }
    }

    /// The merge of `aggregates` (`None` when there are none), e.g. a range of buckets.
    pub fn merge_all<'a>(
        aggregates: impl IntoIterator<Item = &'a AggregateWindow>,
    ) -> Result<Option<AggregateWindow>, StatsWindowError> {
        let mut total: Option<AggregateWindow> = None;
        for aggregate in aggregates {
            match &mut total {
                None => total = Some(aggregate.clone()),
                Some(total) => total.merge(aggregate)?,
            }
        }
        Ok(total)
    }

    /// This aggregate as a window of a placeholder device, so the shared merge applies as is.
    fn as_window(&self) -> Result<StatsWindow, StatsWindowError> {
        Ok(StatsWindow {
            v: ProtocolVersion,
            device: placeholder_device()?,
            model: self.model.clone(),
            seq: 0,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            count: self.count,
            errors: self.errors.clone(),
            latency: self.latency.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
            classifier: self.classifier.clone(),
        })
    }

    /// [`AggregateWindow::as_window`], moving the statistics out of `self` (left empty).
    fn take_as_window(&mut self) -> Result<StatsWindow, StatsWindowError> {
        Ok(StatsWindow {
            v: ProtocolVersion,
            device: placeholder_device()?,
            model: self.model.clone(),
            seq: 0,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            count: self.count,
            errors: std::mem::take(&mut self.errors),
            latency: std::mem::take(&mut self.latency),
            inputs: std::mem::take(&mut self.inputs),
            outputs: std::mem::take(&mut self.outputs),
            classifier: self.classifier.take(),
        })
    }
}

pub(crate) fn placeholder_device() -> Result<DeviceId, StatsWindowError> {
    DeviceId::new("aggregate")
        .map_err(|error| StatsWindowError::NotMergeable { reason: error.to_string() })
}

/// A validated window and where it goes.
#[derive(Debug, Clone)]
pub struct WindowToIngest<'a> {
    pub window: &'a StatsWindow,
    pub bucket_start_ms: i64,
    pub bucket_ms: i64,
    /// `*` and the device's `key=value` tags; one cohort aggregate row each.
    pub cohorts: Vec<String>,
    pub received_ms: i64,
    /// The window matches the profile of a bundle the registry holds: [`Store::ingest_batch`]
    /// appends it to the pending windows, folded into the aggregates later
    /// ([`super::pending`]); otherwise it is merged into them at once.
    pub profiled: bool,
}

/// What [`Store::ingest_window`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum IngestOutcome {
    /// Counted and merged.
    Ingested,
    /// This (device, seq) was counted before; nothing changed.
    Duplicate,
    /// The window does not merge with what is stored for its bucket; nothing changed.
    NotMergeable(StatsWindowError),
}

/// Which aggregate table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregateKind {
    Device,
    Cohort,
}

impl AggregateKind {
    fn table(self) -> &'static str {
        match self {
            AggregateKind::Device => "device_aggregates",
            AggregateKind::Cohort => "cohort_aggregates",
        }
    }

    fn key_column(self) -> &'static str {
        match self {
            AggregateKind::Device => "device_id",
            AggregateKind::Cohort => "cohort",
        }
    }
}

/// One stored aggregate row.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateRecord {
    pub model_digest: String,
    /// The device id or the cohort (`*`, `key=value`).
    pub key: String,
    pub bucket_start_ms: i64,
    pub bucket_ms: i64,
    pub windows: u64,
    pub request_count: u64,
    pub aggregate: AggregateWindow,
}

/// What downsampling did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceReport {
    /// Short buckets merged into day buckets.
    pub buckets_downsampled: u64,
    /// Day groups left as they were because their buckets did not merge (logged).
    pub groups_not_merged: u64,
    /// Aggregate rows and dedupe rows deleted as older than the retention.
    pub rows_expired: u64,
}

fn encode(aggregate: &AggregateWindow) -> Result<String, StoreError> {
    serde_json::to_string(aggregate).map_err(|error| StoreError::Corrupt {
        what: "aggregate window".into(),
        reason: error.to_string(),
    })
}

type Transaction<'c> = sqlx::Transaction<'c, sqlx::Any>;

impl Store {
    /// Counts `item.window` once for its (device, seq) and merges it into its device and cohort
    /// aggregates, all in one transaction.
    pub async fn ingest_window(
        &self,
        item: &WindowToIngest<'_>,
    ) -> Result<IngestOutcome, StoreError> {
        let window = item.window;
        let digest = window.model.digest.as_str().to_string();
        let mut transaction = self.pool().begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO windows_seen (device_id, seq, model_digest, bucket_start_ms, \
             received_ms) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device_id, seq) DO NOTHING",
        )
        .bind(window.device.as_str().to_string())
        .bind(to_i64(window.seq, "window sequence number")?)
        .bind(digest.clone())
        .bind(item.bucket_start_ms)
        .bind(item.received_ms)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted == 0 {
            transaction.rollback().await?;
            return Ok(IngestOutcome::Duplicate);
        }
        let aggregate = AggregateWindow::of(window);
        let mut cohorts = item.cohorts.clone();
        // One lock order for every transaction: device row first, then cohorts sorted.
        cohorts.sort();
        cohorts.dedup();
        let targets = std::iter::once((AggregateKind::Device, window.device.as_str().to_string()))
            .chain(cohorts.into_iter().map(|cohort| (AggregateKind::Cohort, cohort)));
        for (kind, key) in targets {
            let bucket = Bucket {
                kind,
                digest: &digest,
                key: &key,
                start_ms: item.bucket_start_ms,
                length_ms: item.bucket_ms,
            };
            if let Err(error) =
                merge_into(&mut transaction, self.backend(), &bucket, &aggregate).await?
            {
                transaction.rollback().await?;
                return Ok(IngestOutcome::NotMergeable(error));
            }
        }
        transaction.commit().await?;
        Ok(IngestOutcome::Ingested)
    }

    /// Aggregate rows of `model_digest` for one device or cohort, with buckets starting in
    /// `from_ms .. to_ms`, oldest first.
    pub async fn aggregates(
        &self,
        kind: AggregateKind,
        model_digest: &str,
        key: &str,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<AggregateRecord>, StoreError> {
        self.fold_before_reading().await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT model_digest, {key_column} AS aggregate_key, bucket_start_ms, bucket_ms, \
             windows, request_count, window_json FROM {table} \
             WHERE model_digest = $1 AND {key_column} = $2 AND bucket_start_ms >= $3 \
             AND bucket_start_ms < $4 ORDER BY bucket_start_ms",
            key_column = kind.key_column(),
            table = kind.table(),
        )))
        .bind(model_digest.to_string())
        .bind(key.to_string())
        .bind(from_ms)
        .bind(to_ms)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get("aggregate_key")?;
                let bucket_start_ms: i64 = row.try_get("bucket_start_ms")?;
                let what = format!("aggregate {model_digest} {key} {bucket_start_ms}");
                Ok(AggregateRecord {
                    model_digest: row.try_get("model_digest")?,
                    bucket_ms: row.try_get("bucket_ms")?,
                    windows: to_u64(row.try_get("windows")?, &what)?,
                    request_count: to_u64(row.try_get("request_count")?, &what)?,
                    aggregate: from_json(&row.try_get::<String, _>("window_json")?, &what)?,
                    key,
                    bucket_start_ms,
                })
            })
            .collect()
    }

    /// The model digests that have aggregates for one device or cohort.
    pub async fn aggregate_models(
        &self,
        kind: AggregateKind,
        key: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.fold_before_reading().await?;
        let digests: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT model_digest FROM {table} WHERE {key_column} = $1 ORDER BY 1",
            table = kind.table(),
            key_column = kind.key_column(),
        )))
        .bind(key.to_string())
        .fetch_all(self.pool())
        .await?;
        Ok(digests)
    }

    /// How many windows of `device` have been counted (rows of `windows_seen`).
    pub async fn windows_seen(&self, device: &str) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM windows_seen WHERE device_id = $1")
                .bind(device.to_string())
                .fetch_one(self.pool())
                .await?;
        to_u64(count, "windows seen")
    }

    /// Merges short buckets that start before `downsample_before_ms` into day buckets, and
    /// deletes aggregates and dedupe rows whose buckets start before `expire_before_ms` (when
    /// given). Each day group is merged in its own transaction.
    pub async fn maintain_aggregates(
        &self,
        downsample_before_ms: i64,
        expire_before_ms: Option<i64>,
    ) -> Result<MaintenanceReport, StoreError> {
        self.fold_before_reading().await?;
        let mut report = MaintenanceReport::default();
        for kind in [AggregateKind::Device, AggregateKind::Cohort] {
            let groups: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT DISTINCT model_digest, {key}, bucket_start_ms - (bucket_start_ms % \
                     {DAY_MS}) FROM {table} WHERE bucket_ms < {DAY_MS} AND bucket_start_ms < $1",
                key = kind.key_column(),
                table = kind.table(),
            )))
            .bind(downsample_before_ms)
            .fetch_all(self.pool())
            .await?;
            for (digest, key, day_start) in groups {
                match self.downsample_day(kind, &digest, &key, day_start).await? {
                    Ok(merged) => report.buckets_downsampled += merged,
                    Err(error) => {
                        report.groups_not_merged += 1;
                        tracing::warn!(%error, table = kind.table(), %digest, %key, day_start,
                            "buckets of one day do not merge; left as they are");
                    }
                }
            }
        }
        if let Some(before) = expire_before_ms {
            let mut transaction = self.pool().begin().await?;
            for table in
                ["device_aggregates", "cohort_aggregates", "pending_windows", "windows_seen"]
            {
                report.rows_expired += sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE bucket_start_ms < $1"
                )))
                .bind(before)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
            }
            transaction.commit().await?;
        }
        Ok(report)
    }

    /// Merges every short bucket of one (digest, key, day) into the day bucket.
    async fn downsample_day(
        &self,
        kind: AggregateKind,
        digest: &str,
        key: &str,
        day_start: i64,
    ) -> Result<Result<u64, StatsWindowError>, StoreError> {
        let mut transaction = self.pool().begin().await?;
        let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
        let rows: Vec<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT bucket_start_ms, window_json FROM {table} WHERE model_digest = $1 \
             AND {key_column} = $2 AND bucket_start_ms >= $3 AND bucket_start_ms < $4 \
             AND bucket_ms < {DAY_MS} ORDER BY bucket_start_ms{lock}",
            table = kind.table(),
            key_column = kind.key_column(),
        )))
        .bind(digest.to_string())
        .bind(key.to_string())
        .bind(day_start)
        .bind(day_start + DAY_MS)
        .fetch_all(&mut *transaction)
        .await?;
        let Some(((_, first), rest)) = rows.split_first() else {
            transaction.rollback().await?;
            return Ok(Ok(0));
        };
        let what = format!("aggregate {digest} {key} day {day_start}");
        let mut merged: AggregateWindow = from_json(first, &what)?;
        for (_, json) in rest {
            let next: AggregateWindow = from_json(json, &what)?;
            if let Err(error) = merged.merge(&next) {
                transaction.rollback().await?;
                return Ok(Err(error));
            }
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE model_digest = $1 AND {key_column} = $2 \
             AND bucket_start_ms >= $3 AND bucket_start_ms < $4 AND bucket_ms < {DAY_MS}",
            table = kind.table(),
            key_column = kind.key_column(),
        )))
        .bind(digest.to_string())
        .bind(key.to_string())
        .bind(day_start)
        .bind(day_start + DAY_MS)
        .execute(&mut *transaction)
        .await?;
        let bucket = Bucket { kind, digest, key, start_ms: day_start, length_ms: DAY_MS };
        if let Err(error) = merge_into(&mut transaction, self.backend(), &bucket, &merged).await? {
            transaction.rollback().await?;
            return Ok(Err(error));
        }
        transaction.commit().await?;
        Ok(Ok(rows.len() as u64))
    }
}

/// One aggregate row's key.
struct Bucket<'a> {
    kind: AggregateKind,
    digest: &'a str,
    key: &'a str,
    start_ms: i64,
    length_ms: i64,
}

/// Inserts `aggregate` as the bucket's row, or merges it into the row already there. The inner
/// error means the row and the aggregate do not merge (the caller rolls back).
async fn merge_into(
    transaction: &mut Transaction<'_>,
    backend: Backend,
    bucket: &Bucket<'_>,
    aggregate: &AggregateWindow,
) -> Result<Result<(), StatsWindowError>, StoreError> {
    let table = bucket.kind.table();
    let key_column = bucket.kind.key_column();
    let now = now_ms();
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {table} (model_digest, {key_column}, bucket_start_ms, bucket_ms, windows, \
         request_count, window_json, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (model_digest, {key_column}, bucket_start_ms) DO NOTHING"
    )))
    .bind(bucket.digest.to_string())
    .bind(bucket.key.to_string())
    .bind(bucket.start_ms)
    .bind(bucket.length_ms)
    .bind(to_i64(aggregate.windows, "aggregated windows")?)
    .bind(to_i64(aggregate.count, "request count")?)
    .bind(encode(aggregate)?)
    .bind(now)
    .execute(&mut **transaction)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let stored: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT window_json FROM {table} WHERE model_digest = $1 AND {key_column} = $2 \
         AND bucket_start_ms = $3{lock}"
    )))
    .bind(bucket.digest.to_string())
    .bind(bucket.key.to_string())
    .bind(bucket.start_ms)
    .fetch_one(&mut **transaction)
    .await?;
    let what = format!("aggregate {} {} {}", bucket.digest, bucket.key, bucket.start_ms);
    let mut merged: AggregateWindow = from_json(&stored, &what)?;
    if let Err(error) = merged.merge(aggregate) {
        return Ok(Err(error));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {table} SET windows = $4, request_count = $5, window_json = $6, updated_ms = $7, \
         bucket_ms = CASE WHEN bucket_ms > $8 THEN bucket_ms ELSE $8 END \
         WHERE model_digest = $1 AND {key_column} = $2 AND bucket_start_ms = $3"
    )))
    .bind(bucket.digest.to_string())
    .bind(bucket.key.to_string())
    .bind(bucket.start_ms)
    .bind(to_i64(merged.windows, "aggregated windows")?)
    .bind(to_i64(merged.count, "request count")?)
    .bind(encode(&merged)?)
    .bind(now)
    .bind(bucket.length_ms)
    .execute(&mut **transaction)
    .await?;
    Ok(Ok(()))
}

/// Most parameters one batched statement binds (below SQLite's limit of 32,766 and
/// PostgreSQL's of 65,535).
pub(crate) const MAX_PARAMETERS: usize = 16_000;

/// `($1, $2, …), (…)` for `rows` rows of `columns` parameters each.
pub(crate) fn placeholders(rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        if row > 0 {
            text.push_str(", ");
        }
        text.push('(');
        for column in 0..columns {
            if column > 0 {
                text.push_str(", ");
            }
            text.push('$');
            text.push_str(&(row * columns + column + 1).to_string());
        }
        text.push(')');
    }
    text
}

/// One aggregate row's key, owned, ordered as rows are locked: device rows before cohort
/// rows, then by model, key and bucket. Every batch locks in this one order, so two instances
/// merging into the same rows wait for each other instead of deadlocking.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct AggregateKey {
    kind: u8,
    digest: String,
    key: String,
    bucket_start_ms: i64,
}

impl AggregateKey {
    fn kind(&self) -> AggregateKind {
        if self.kind == 0 { AggregateKind::Device } else { AggregateKind::Cohort }
    }

    /// The row of `device`'s aggregate of model `digest` (bucket set with [`AggregateKey::at`]).
    pub(crate) fn device(digest: &str, device: &str) -> AggregateKey {
        AggregateKey {
            kind: 0,
            digest: digest.to_string(),
            key: device.to_string(),
            bucket_start_ms: 0,
        }
    }

    /// The row of `cohort`'s aggregate of model `digest`.
    pub(crate) fn cohort(digest: &str, cohort: &str) -> AggregateKey {
        AggregateKey {
            kind: 1,
            digest: digest.to_string(),
            key: cohort.to_string(),
            bucket_start_ms: 0,
        }
    }

    pub(crate) fn at(mut self, bucket_start_ms: i64) -> AggregateKey {
        self.bucket_start_ms = bucket_start_ms;
        self
    }
}

/// Aggregates to merge into their rows, with each bucket's length.
pub(crate) type Targets = BTreeMap<AggregateKey, (i64, AggregateWindow)>;

/// What [`Store::ingest_batch`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// Committed: one outcome per window, in the order given (only `Ingested` and `Duplicate`).
    Committed(Vec<IngestOutcome>),
    /// Some window does not merge (with another of the batch or with a stored bucket); nothing
    /// was written. The caller ingests the windows one by one to find which.
    NotMergeable,
}

impl Store {
    /// Counts and merges many windows in one transaction: the `(device, seq)` rows in one
    /// statement (a window seen before, or twice in the batch, is a duplicate), the windows
    /// merged in memory per aggregate row, then each row written once: inserted when new,
    /// otherwise read (`FOR UPDATE` on PostgreSQL), merged and written back. The outcome is
    /// exactly that of [`Store::ingest_window`] on each window in turn, at a fraction of the
    /// statements; ingest relies on that to batch.
    pub async fn ingest_batch(
        &self,
        items: &[WindowToIngest<'_>],
    ) -> Result<BatchOutcome, StoreError> {
        let mut transaction = self.pool().begin().await?;
        // The dedupe rows, sorted so concurrent batches take their locks in one order.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (items[a].window, items[b].window);
            (a.device.as_str(), a.seq).cmp(&(b.device.as_str(), b.seq))
        });
        let mut outcomes = vec![IngestOutcome::Duplicate; items.len()];
        let mut fresh = Vec::with_capacity(items.len());
        let mut previous: Option<(&str, u64)> = None;
        for &index in &order {
            let window = items[index].window;
            let key = (window.device.as_str(), window.seq);
            if previous != Some(key) {
                fresh.push(index);
            }
            previous = Some(key);
        }
        let mut inserted = std::collections::HashSet::new();
        for chunk in fresh.chunks(MAX_PARAMETERS / 5) {
            let sql = format!(
                "INSERT INTO windows_seen (device_id, seq, model_digest, bucket_start_ms, \
                 received_ms) VALUES {} ON CONFLICT (device_id, seq) DO NOTHING \
                 RETURNING device_id, seq",
                placeholders(chunk.len(), 5)
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for &index in chunk {
                let item = &items[index];
                query = query
                    .bind(item.window.device.as_str().to_string())
                    .bind(to_i64(item.window.seq, "window sequence number")?)
                    .bind(item.window.model.digest.as_str().to_string())
                    .bind(item.bucket_start_ms)
                    .bind(item.received_ms);
            }
            for row in query.fetch_all(&mut *transaction).await? {
                let device: String = row.try_get("device_id")?;
                let seq: i64 = row.try_get("seq")?;
                inserted.insert((device, seq));
            }
        }
        // New windows of profiled models are appended as they are; the others are merged in
        // memory per aggregate row and written at once.
        let mut targets = Targets::new();
        let mut pending = Vec::new();
        for &index in &fresh {
            let item = &items[index];
            let window = item.window;
            let seq = to_i64(window.seq, "window sequence number")?;
            if !inserted.contains(&(window.device.as_str().to_string(), seq)) {
                continue;
            }
            outcomes[index] = IngestOutcome::Ingested;
            let digest = window.model.digest.as_str();
            if item.profiled {
                pending.push(super::pending::NewPending {
                    device: window.device.as_str(),
                    seq,
                    digest,
                    bucket_start_ms: item.bucket_start_ms,
                    bucket_ms: item.bucket_ms,
                    stats: super::pending::encode(window, &item.cohorts),
                });
                continue;
            }
            let Ok(as_window) = AggregateWindow::of(window).as_window() else {
                transaction.rollback().await?;
                return Ok(BatchOutcome::NotMergeable);
            };
            let mut cohorts: Vec<&String> = item.cohorts.iter().collect();
            cohorts.sort();
            cohorts.dedup();
            let keys = std::iter::once(AggregateKey::device(digest, window.device.as_str()))
                .chain(cohorts.into_iter().map(|cohort| AggregateKey::cohort(digest, cohort)));
            for key in keys {
                match targets.entry(key.at(item.bucket_start_ms)) {
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert((item.bucket_ms, AggregateWindow::of(window)));
                    }
                    std::collections::btree_map::Entry::Occupied(mut entry) => {
                        let (length, merged) = entry.get_mut();
                        *length = (*length).max(item.bucket_ms);
                        if merged.merge_window(&as_window, 1).is_err() {
                            transaction.rollback().await?;
                            return Ok(BatchOutcome::NotMergeable);
                        }
                    }
                }
            }
        }
        if write_targets(&mut transaction, self.backend(), &targets, now_ms()).await?.is_none() {
            transaction.rollback().await?;
            return Ok(BatchOutcome::NotMergeable);
        }
        super::pending::append(&mut transaction, &pending).await?;
        transaction.commit().await?;
        Ok(BatchOutcome::Committed(outcomes))
    }
}

/// Merges every target into its row: inserted when new, otherwise read (locked on PostgreSQL),
/// merged and written back, in the one lock order. The number of rows written, or `None` when
/// some target does not merge with its stored row (the caller rolls back).
pub(crate) async fn write_targets(
    transaction: &mut Transaction<'_>,
    backend: Backend,
    targets: &Targets,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let mut written = 0;
    for kind in [AggregateKind::Device, AggregateKind::Cohort] {
        let rows: Vec<(&AggregateKey, &(i64, AggregateWindow))> =
            targets.iter().filter(|(key, _)| key.kind() == kind).collect();
        if rows.is_empty() {
            continue;
        }
        // The rows there already, locked; then the others inserted. A row another instance
        // inserted meanwhile (its insert commits first, this one then does nothing) is
        // read and locked in a second round.
        let mut stored = StoredRows::new();
        for chunk in rows.chunks(MAX_PARAMETERS / 3) {
            lock_rows(transaction, backend, kind, chunk, &mut stored).await?;
        }
        let absent: Vec<_> =
            rows.iter().filter(|(key, _)| !stored.contains_key(&key.tuple())).copied().collect();
        let mut raced = Vec::new();
        for chunk in absent.chunks(MAX_PARAMETERS / 8) {
            let created = insert_new_rows(transaction, kind, chunk, now).await?;
            raced.extend(chunk.iter().filter(|(key, _)| !created.contains(key)).copied());
        }
        for chunk in raced.chunks(MAX_PARAMETERS / 3) {
            lock_rows(transaction, backend, kind, chunk, &mut stored).await?;
        }
        let existing: Vec<_> =
            rows.iter().filter(|(key, _)| stored.contains_key(&key.tuple())).copied().collect();
        for chunk in existing.chunks(MAX_PARAMETERS / 8) {
            if !write_merged_rows(transaction, kind, chunk, &stored, now).await? {
                return Ok(None);
            }
        }
        written += rows.len() as u64;
    }
    Ok(Some(written))
}

/// Inserts the rows that do not exist yet (each holding just this batch's aggregate) and
/// returns their keys; the others exist (or were just committed by another instance, whose
/// insert this one waited for).
async fn insert_new_rows(
    transaction: &mut Transaction<'_>,
    kind: AggregateKind,
    rows: &[(&AggregateKey, &(i64, AggregateWindow))],
    now: i64,
) -> Result<std::collections::HashSet<AggregateKey>, StoreError> {
    let table = kind.table();
    let key_column = kind.key_column();
    let sql = format!(
        "INSERT INTO {table} (model_digest, {key_column}, bucket_start_ms, bucket_ms, windows, \
         request_count, window_json, updated_ms) VALUES {} \
         ON CONFLICT (model_digest, {key_column}, bucket_start_ms) DO NOTHING \
         RETURNING model_digest, {key_column} AS aggregate_key, bucket_start_ms",
        placeholders(rows.len(), 8)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (key, (length, aggregate)) in rows {
        query = query
            .bind(key.digest.clone())
            .bind(key.key.clone())
            .bind(key.bucket_start_ms)
            .bind(*length)
            .bind(to_i64(aggregate.windows, "aggregated windows")?)
            .bind(to_i64(aggregate.count, "request count")?)
            .bind(encode(aggregate)?)
            .bind(now);
    }
    let mut created = std::collections::HashSet::new();
    for row in query.fetch_all(&mut **transaction).await? {
        created.insert(AggregateKey {
            kind: if kind == AggregateKind::Device { 0 } else { 1 },
            digest: row.try_get("model_digest")?,
            key: row.try_get("aggregate_key")?,
            bucket_start_ms: row.try_get("bucket_start_ms")?,
        });
    }
    Ok(created)
}

/// Stored `window_json` by (digest, key, bucket start).
type StoredRows = std::collections::HashMap<(String, String, i64), String>;

impl AggregateKey {
    fn tuple(&self) -> (String, String, i64) {
        (self.digest.clone(), self.key.clone(), self.bucket_start_ms)
    }
}

/// Reads those of `rows` that exist into `stored`, locked on PostgreSQL, in key order.
async fn lock_rows(
    transaction: &mut Transaction<'_>,
    backend: Backend,
    kind: AggregateKind,
    rows: &[(&AggregateKey, &(i64, AggregateWindow))],
    stored: &mut StoredRows,
) -> Result<(), StoreError> {
    let table = kind.table();
    let key_column = kind.key_column();
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let sql = format!(
        "SELECT model_digest, {key_column} AS aggregate_key, bucket_start_ms, window_json \
         FROM {table} WHERE (model_digest, {key_column}, bucket_start_ms) IN (VALUES {}) \
         ORDER BY model_digest, {key_column}, bucket_start_ms{lock}",
        placeholders(rows.len(), 3)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (key, _) in rows {
        query = query.bind(key.digest.clone()).bind(key.key.clone()).bind(key.bucket_start_ms);
    }
    for row in query.fetch_all(&mut **transaction).await? {
        stored.insert(
            (
                row.try_get("model_digest")?,
                row.try_get("aggregate_key")?,
                row.try_get("bucket_start_ms")?,
            ),
            row.try_get("window_json")?,
        );
    }
    Ok(())
}

/// Merges the batch's aggregate into each stored (locked) row and writes them back. `false`:
/// some row does not merge; the caller rolls back.
async fn write_merged_rows(
    transaction: &mut Transaction<'_>,
    kind: AggregateKind,
    rows: &[(&AggregateKey, &(i64, AggregateWindow))],
    stored: &StoredRows,
    now: i64,
) -> Result<bool, StoreError> {
    let table = kind.table();
    let key_column = kind.key_column();
    let mut merged_rows = Vec::with_capacity(rows.len());
    for (key, (length, aggregate)) in rows {
        let what = format!("aggregate {} {} {}", key.digest, key.key, key.bucket_start_ms);
        let Some(text) = stored.get(&(key.digest.clone(), key.key.clone(), key.bucket_start_ms))
        else {
            return Err(StoreError::Corrupt {
                what,
                reason: "the row existed when inserting and is gone when merging".into(),
            });
        };
        let mut merged: AggregateWindow = from_json(text, &what)?;
        if merged.merge(aggregate).is_err() {
            return Ok(false);
        }
        merged_rows.push((*key, *length, merged));
    }
    let sql = format!(
        "INSERT INTO {table} (model_digest, {key_column}, bucket_start_ms, bucket_ms, windows, \
         request_count, window_json, updated_ms) VALUES {} \
         ON CONFLICT (model_digest, {key_column}, bucket_start_ms) DO UPDATE SET \
         windows = excluded.windows, request_count = excluded.request_count, \
         window_json = excluded.window_json, updated_ms = excluded.updated_ms, \
         bucket_ms = CASE WHEN {table}.bucket_ms > excluded.bucket_ms THEN {table}.bucket_ms \
         ELSE excluded.bucket_ms END",
        placeholders(merged_rows.len(), 8)
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (key, length, merged) in &merged_rows {
        query = query
            .bind(key.digest.clone())
            .bind(key.key.clone())
            .bind(key.bucket_start_ms)
            .bind(*length)
            .bind(to_i64(merged.windows, "aggregated windows")?)
            .bind(to_i64(merged.count, "request count")?)
            .bind(encode(merged)?)
            .bind(now);
    }
    query.execute(&mut **transaction).await?;
    Ok(true)
}

/// `SELECT … WHERE device_id IN (…)`: the tags of each known device among `devices`.
pub(crate) async fn device_tags(
    store: &Store,
    devices: &[&str],
) -> Result<std::collections::HashMap<String, BTreeMap<String, String>>, StoreError> {
    let mut tags = std::collections::HashMap::with_capacity(devices.len());
    for chunk in devices.chunks(MAX_PARAMETERS) {
        let sql = format!(
            "SELECT device_id, tags_json FROM devices WHERE device_id IN ({})",
            (1..=chunk.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for device in chunk {
            query = query.bind(device.to_string());
        }
        for row in query.fetch_all(store.pool()).await? {
            let device: String = row.try_get("device_id")?;
            let text: String = row.try_get("tags_json")?;
            let parsed = from_json(&text, &format!("tags of {device}"))?;
            tags.insert(device, parsed);
        }
    }
    Ok(tags)
}

impl Store {
    /// The baseline profile of the stored bundle `digest`, if the registry has it.
    pub async fn bundle_profile(
        &self,
        digest: &str,
    ) -> Result<Option<outpost_shared::profile::Profile>, StoreError> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT profile_json FROM bundles WHERE digest = $1")
                .bind(digest.to_string())
                .fetch_optional(self.pool())
                .await?;
        text.map(|text| from_json(&text, &format!("profile of bundle {digest}"))).transpose()
    }
}

#[cfg(test)]
mod tests {
    use outpost_shared::stats::Histogram;
    use outpost_shared::wire::Digest;

    use super::*;

    fn window(device: &str, count: u64) -> StatsWindow {
        let mut histogram = Histogram::new(vec![0.0, 1.0, 2.0]).expect("edges");
        let mut moments = outpost_shared::stats::Moments::default();
        let mut latency = LatencyHistogram::default();
        for i in 0..count {
            histogram.observe(i as f64 / count as f64);
            moments.observe(i as f64 / count as f64);
            latency.observe(100);
        }
        StatsWindow {
            v: ProtocolVersion,
            device: DeviceId::new(device).expect("id"),
            model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
            seq: 1,
            start_ms: 1000 * count,
            end_ms: 1000 * count + 10,
            count,
            errors: BTreeMap::new(),
            latency,
            inputs: vec![FeatureStats { name: "x".into(), histogram, moments, kll_sketch: None }],
            outputs: vec![],
            classifier: None,
        }
    }

    #[test]
    fn aggregates_of_different_devices_merge_and_count_windows() {
        let mut aggregate = AggregateWindow::of(&window("a", 3));
        aggregate.merge(&AggregateWindow::of(&window("b", 5))).expect("merge");
        assert_eq!((aggregate.windows, aggregate.count), (2, 8));
        assert_eq!((aggregate.start_ms, aggregate.end_ms), (3000, 5010));
        assert_eq!(aggregate.inputs[0].histogram.total(), 8);

        let mut other_edges = window("c", 2);
        other_edges.inputs[0].histogram.edges[2] = 3.0;
        let before = aggregate.clone();
        let error = aggregate.merge(&AggregateWindow::of(&other_edges)).expect_err("edges");
        assert_eq!(error.to_string(), "windows cannot be merged: input `x`: bin edges differ");
        assert_eq!(aggregate, before, "unchanged on error");
    }
}
