//! Reads for fleet drift: every stored aggregate of one model version in a time range, for
//! all devices or all cohorts at once (one query, so a fleet-wide drift overview does not cost
//! one round trip per device).

use sqlx::Row as _;

use super::ingest::{AggregateKind, AggregateWindow};
use super::{Store, StoreError, from_json};

/// One aggregate row: whose (device id or cohort), which bucket, and the merged windows.
#[derive(Debug, Clone)]
pub struct KeyedAggregate {
    pub key: String,
    pub bucket_start_ms: i64,
    pub aggregate: AggregateWindow,
}

impl Store {
    /// The model digests with any stored statistics (every device reports into cohort `*`).
    pub async fn models_with_statistics(&self) -> Result<Vec<String>, StoreError> {
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
