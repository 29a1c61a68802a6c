//! The model registry tables: `bundles` (one row per bundle, named by its digest) and `chunks`
//! (the bundle file in [`CHUNK_BYTES`] pieces, each with its own digest).
//!
//! Only a [`Verified<Bundle>`] can be stored, so nothing unverified reaches the registry. A push
//! of a bundle already stored is idempotent; a different bundle under a `name@version` that is
//! taken is refused. The chunk size equals the wire protocol's largest chunk, so serving one
//! fetch request (a later step) reads at most two rows.

use outpost_shared::Verified;
use outpost_shared::bundle::Bundle;
use outpost_shared::profile::{FeatureProfile, Profile};
use serde::Serialize;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Store, StoreError, from_json, now_ms, to_i64, to_u64};

/// Bytes per stored chunk (the last chunk of a bundle is shorter).
pub const CHUNK_BYTES: usize = outpost_shared::wire::MAX_CHUNK_BYTES;

/// A stored bundle, as the registry lists it.
#[derive(Debug, Clone, Serialize)]
pub struct BundleRecord {
    pub digest: String,
    pub name: String,
    pub version: String,
    pub size: u64,
    pub chunk_bytes: u64,
    pub chunk_count: u64,
    pub task: String,
    /// The verified manifest: files, inputs, outputs, lineage, created, expires.
    pub manifest: serde_json::Value,
    /// Key ids of the publisher signatures that were counted at push.
    pub signers: Vec<String>,
    pub profile_summary: serde_json::Value,
    pub manifest_created_ms: i64,
    pub pushed_ms: i64,
    pub pushed_by: String,
}

/// What a push did.
#[derive(Debug, Clone)]
pub enum PushOutcome {
    /// The bundle is new and now stored.
    Stored(BundleRecord),
    /// The same bundle (same digest) was already stored; nothing changed.
    AlreadyStored(BundleRecord),
}

const BUNDLE_COLUMNS: &str = "digest, name, version, size, chunk_bytes, chunk_count, task, \
    manifest_json, signers_json, profile_summary_json, manifest_created_ms, pushed_ms, pushed_by";

/// The per-feature figures shown by `outpost model show`, computed from the baseline profile.
pub fn profile_summary(profile: &Profile) -> serde_json::Value {
    fn feature(feature: &FeatureProfile) -> serde_json::Value {
        serde_json::json!({
            "name": feature.name,
            "bins": feature.histogram.counts.len(),
            "count": feature.moments.count,
            "mean": feature.moments.mean,
            "std": feature.moments.std_dev(),
            "min": feature.moments.min,
            "max": feature.moments.max,
        })
    }
    serde_json::json!({
        "reference_count": profile.reference_count,
        "inputs": profile.inputs.iter().map(feature).collect::<Vec<_>>(),
        "outputs": profile.outputs.iter().map(feature).collect::<Vec<_>>(),
        "classifier": profile.classifier.as_ref().map(|c| serde_json::json!({
            "output": c.output,
            "classes": c.class_counts.len(),
            "class_counts": c.class_counts,
        })),
    })
}

fn record_from_row(row: &AnyRow) -> Result<BundleRecord, StoreError> {
    let digest: String = row.try_get("digest")?;
    let what = |field: &str| format!("bundle {digest} {field}");
    Ok(BundleRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        size: to_u64(row.try_get("size")?, &what("size"))?,
        chunk_bytes: to_u64(row.try_get("chunk_bytes")?, &what("chunk_bytes"))?,
        chunk_count: to_u64(row.try_get("chunk_count")?, &what("chunk_count"))?,
        task: row.try_get("task")?,
        manifest: from_json(&row.try_get::<String, _>("manifest_json")?, &what("manifest"))?,
        signers: from_json(&row.try_get::<String, _>("signers_json")?, &what("signers"))?,
        profile_summary: from_json(
            &row.try_get::<String, _>("profile_summary_json")?,
            &what("profile summary"),
        )?,
        manifest_created_ms: row.try_get("manifest_created_ms")?,
        pushed_ms: row.try_get("pushed_ms")?,
        pushed_by: row.try_get("pushed_by")?,
        digest,
    })
}

impl Store {
    /// Stores a verified bundle and its bytes (the exact file that was verified), with an
    /// audit event, in one transaction.
    pub async fn store_bundle(
        &self,
        bundle: &Verified<Bundle>,
        bytes: &[u8],
        pushed_by: &str,
    ) -> Result<PushOutcome, StoreError> {
        if outpost_shared::sha256_digest(bytes) != bundle.digest {
            return Err(StoreError::Conflict(
                "the bytes to store are not the bundle that was verified".into(),
            ));
        }
        let manifest = &bundle.manifest;
        if let Some(existing) = self.bundle_by_digest(&bundle.digest).await? {
            return Ok(PushOutcome::AlreadyStored(existing));
        }
        let taken = |existing: &BundleRecord| {
            StoreError::Conflict(format!(
                "{}@{} is already stored with digest {}; a different bundle ({}) cannot take \
                 the same name and version: publish it as a new version",
                manifest.name, manifest.version, existing.digest, bundle.digest
            ))
        };
        if let Some(existing) = self.bundle_version(&manifest.name, &manifest.version).await? {
            return Err(taken(&existing));
        }
        match self.insert_bundle(bundle, bytes, pushed_by).await {
            Ok(()) => {}
            Err(StoreError::Database(error))
                if error.as_database_error().is_some_and(|e| e.is_unique_violation()) =>
            {
                // Another push of the same name or digest committed between our check and our
                // insert: report what is stored now.
                if let Some(existing) = self.bundle_by_digest(&bundle.digest).await? {
                    return Ok(PushOutcome::AlreadyStored(existing));
                }
                if let Some(existing) =
                    self.bundle_version(&manifest.name, &manifest.version).await?
                {
                    return Err(taken(&existing));
                }
                return Err(StoreError::Database(error));
            }
            Err(other) => return Err(other),
        }
        let stored =
            self.bundle_by_digest(&bundle.digest).await?.ok_or_else(|| StoreError::Corrupt {
                what: format!("bundle {}", bundle.digest),
                reason: "not found right after it was stored".into(),
            })?;
        Ok(PushOutcome::Stored(stored))
    }

    async fn insert_bundle(
        &self,
        bundle: &Verified<Bundle>,
        bytes: &[u8],
        pushed_by: &str,
    ) -> Result<(), StoreError> {
        let manifest = &bundle.manifest;
        let encode = |value: serde_json::Result<String>, what: &str| {
            value.map_err(|e| StoreError::Corrupt { what: what.into(), reason: e.to_string() })
        };
        let manifest_json = encode(serde_json::to_string(manifest), "manifest")?;
        let signers_json = encode(serde_json::to_string(bundle.signers()), "signers")?;
        let profile_json = encode(serde_json::to_string(&bundle.profile), "profile")?;
        let summary_json =
            encode(serde_json::to_string(&profile_summary(&bundle.profile)), "profile summary")?;
        let task = encode(serde_json::to_string(&manifest.task), "task")?.trim_matches('"').into();
        let created_ms =
            i64::try_from(manifest.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
        let chunk_count = bytes.len().div_ceil(CHUNK_BYTES);
        let now = now_ms();

        let mut transaction = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO bundles (digest, name, version, size, chunk_bytes, chunk_count, task, \
             manifest_json, signers_json, profile_json, profile_summary_json, \
             manifest_created_ms, pushed_ms, pushed_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(bundle.digest.clone())
        .bind(manifest.name.clone())
        .bind(manifest.version.clone())
        .bind(to_i64(bundle.size, "bundle size")?)
        .bind(to_i64(CHUNK_BYTES as u64, "chunk size")?)
        .bind(to_i64(chunk_count as u64, "chunk count")?)
        .bind::<String>(task)
        .bind(manifest_json)
        .bind(signers_json)
        .bind(profile_json)
        .bind(summary_json)
        .bind(created_ms)
        .bind(now)
        .bind(pushed_by.to_string())
        .execute(&mut *transaction)
        .await?;
        for (index, chunk) in bytes.chunks(CHUNK_BYTES).enumerate() {
            sqlx::query(
                "INSERT INTO chunks (digest, idx, data_sha256, data) VALUES ($1, $2, $3, $4)",
            )
            .bind(bundle.digest.clone())
            .bind(to_i64(index as u64, "chunk index")?)
            .bind(outpost_shared::sha256_digest(chunk))
            .bind(chunk.to_vec())
            .execute(&mut *transaction)
            .await?;
        }
        super::audit::insert_in(
            &mut transaction,
            &super::audit::NewAuditEvent {
                actor: pushed_by.into(),
                action: "model.publish".into(),
                subject: format!("{} {}", manifest.id(), bundle.digest),
                outcome: "ok".into(),
                reason: format!("signed by {}", bundle.signers().join(", ")),
                source: "api".into(),
                model: Some(manifest.id()),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The bundle with `digest`, if stored.
    pub async fn bundle_by_digest(&self, digest: &str) -> Result<Option<BundleRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE digest = $1"
        )))
        .bind(digest.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// The bundle stored as `name@version`, if any.
    pub async fn bundle_version(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<BundleRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE name = $1 AND version = $2"
        )))
        .bind(name.to_string())
        .bind(version.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// Every stored bundle (`name` given: of that model only), by name, then oldest push first.
    pub async fn list_bundles(&self, name: Option<&str>) -> Result<Vec<BundleRecord>, StoreError> {
        let rows = match name {
            Some(name) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE name = $1 \
                     ORDER BY pushed_ms, version"
                )))
                .bind(name.to_string())
                .fetch_all(self.pool())
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {BUNDLE_COLUMNS} FROM bundles ORDER BY name, pushed_ms, version"
                )))
                .fetch_all(self.pool())
                .await?
            }
        };
        rows.iter().map(record_from_row).collect()
    }

    /// The whole bundle file, reassembled from its chunks, each checked against its digest and
    /// the whole against the bundle's digest.
    pub async fn bundle_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(record) = self.bundle_by_digest(digest).await? else {
            return Ok(None);
        };
        let rows =
            sqlx::query("SELECT idx, data_sha256, data FROM chunks WHERE digest = $1 ORDER BY idx")
                .bind(digest.to_string())
                .fetch_all(self.pool())
                .await?;
        let corrupt =
            |reason: String| StoreError::Corrupt { what: format!("bundle {digest}"), reason };
        if rows.len() as u64 != record.chunk_count {
            return Err(corrupt(format!(
                "{} chunks stored, {} expected",
                rows.len(),
                record.chunk_count
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(record.size).unwrap_or(0));
        for (expected_index, row) in rows.iter().enumerate() {
            let index: i64 = row.try_get("idx")?;
            let data: Vec<u8> = row.try_get("data")?;
            let data_sha256: String = row.try_get("data_sha256")?;
            if index != expected_index as i64 {
                return Err(corrupt(format!("chunk {expected_index} is missing")));
            }
            if outpost_shared::sha256_digest(&data) != data_sha256 {
                return Err(corrupt(format!("chunk {index} does not match its digest")));
            }
            bytes.extend_from_slice(&data);
        }
        if outpost_shared::sha256_digest(&bytes) != digest {
            return Err(corrupt("the reassembled chunks do not match the digest".into()));
        }
        Ok(Some(bytes))
    }
}
