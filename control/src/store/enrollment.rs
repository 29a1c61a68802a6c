//! Device identity in the database: the fleet CA's fingerprint (`fleet_ca`, one row shared by
//! every control instance on this database), every certificate the CA issued
//! (`issued_certificates`, with revocations) and the enrolled devices (`enrollments`). Each
//! issue and revocation is recorded with its audit event in one transaction.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row as _;

use super::audit::{NewAuditEvent, insert_in};
use super::{Store, StoreError, from_json, now_ms};

/// A certificate the fleet CA issued, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedRecord {
    /// `device`, `broker` or `control`.
    pub kind: String,
    pub common_name: String,
    pub serial: String,
    pub fingerprint: String,
    pub not_after_ms: i64,
}

/// An enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enrollment {
    pub device_id: String,
    pub tags: BTreeMap<String, String>,
    /// Serial of the device's certificate, hex.
    pub serial: String,
    /// `sha256:` of the device's certificate.
    pub fingerprint: String,
    pub not_after_ms: i64,
    pub enrolled_ms: i64,
    pub enrolled_by: String,
}

fn enrollment_from_row(row: &sqlx::any::AnyRow) -> Result<Enrollment, StoreError> {
    let tags: String = row.try_get("tags_json")?;
    Ok(Enrollment {
        device_id: row.try_get("device_id")?,
        tags: from_json(&tags, "enrollment tags")?,
        serial: row.try_get("serial")?,
        fingerprint: row.try_get("fingerprint")?,
        not_after_ms: row.try_get("not_after_ms")?,
        enrolled_ms: row.try_get("enrolled_ms")?,
        enrolled_by: row.try_get("enrolled_by")?,
    })
}

async fn insert_issued(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    issued: &IssuedRecord,
    issued_by: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO issued_certificates \
         (serial, kind, common_name, fingerprint, not_after_ms, issued_ms, issued_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(issued.serial.clone())
    .bind(issued.kind.clone())
    .bind(issued.common_name.clone())
    .bind(issued.fingerprint.clone())
    .bind(issued.not_after_ms)
    .bind(now)
    .bind(issued_by.to_string())
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// The columns of `enrollments`, in [`enrollment_from_row`]'s order (a macro, since sqlx
/// takes only literal SQL text).
macro_rules! enrollment_columns {
    () => {
        "device_id, tags_json, serial, fingerprint, not_after_ms, enrolled_ms, enrolled_by"
    };
}

/// Enrolls, failing on a device already enrolled.
const INSERT_ENROLLMENT: &str = concat!(
    "INSERT INTO enrollments (",
    enrollment_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id) DO NOTHING"
);
/// Enrolls, replacing an earlier enrollment.
const UPSERT_ENROLLMENT: &str = concat!(
    "INSERT INTO enrollments (",
    enrollment_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (device_id) DO UPDATE SET \
     tags_json = excluded.tags_json, serial = excluded.serial, \
     fingerprint = excluded.fingerprint, not_after_ms = excluded.not_after_ms, \
     enrolled_ms = excluded.enrolled_ms, enrolled_by = excluded.enrolled_by"
);

impl Store {
    /// The fingerprint of the fleet CA recorded in this database, if any.
    pub async fn fleet_ca_fingerprint(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT fingerprint FROM fleet_ca WHERE id = 1")
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("fingerprint")?),
            None => None,
        })
    }

    /// Records the fleet CA unless one is recorded already; returns the recorded fingerprint
    /// (ours, or the one another instance recorded first).
    pub async fn record_fleet_ca(
        &self,
        fingerprint: &str,
        certificate_pem: &str,
    ) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO fleet_ca (id, fingerprint, certificate_pem, created_ms) \
             VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(fingerprint.to_string())
        .bind(certificate_pem.to_string())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        self.fleet_ca_fingerprint().await?.ok_or_else(|| StoreError::Corrupt {
            what: "fleet_ca".into(),
            reason: "the row just written is missing".into(),
        })
    }

    /// The enrollment of `device_id`, if enrolled.
    pub async fn enrollment(&self, device_id: &str) -> Result<Option<Enrollment>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments WHERE device_id = $1"
        ))
        .bind(device_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(enrollment_from_row).transpose()
    }

    /// Every enrolled device, by id.
    pub async fn list_enrollments(&self) -> Result<Vec<Enrollment>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            enrollment_columns!(),
            " FROM enrollments ORDER BY device_id"
        ))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(enrollment_from_row).collect()
    }

    /// Records a device's enrollment with its certificate and the audit event, in one
    /// transaction. An enrolled device is a conflict unless `replace` (re-enrollment: a new key
    /// and certificate, and every earlier certificate of the device revoked, since a device is
    /// re-enrolled when its old key is lost or exposed).
    pub async fn record_enrollment(
        &self,
        device_id: &str,
        tags: &BTreeMap<String, String>,
        issued: &IssuedRecord,
        replace: bool,
        enrolled_by: &str,
    ) -> Result<Enrollment, StoreError> {
        let now = now_ms();
        let tags_json = serde_json::to_string(tags)
            .map_err(|error| StoreError::Invalid(format!("tags: {error}")))?;
        let mut transaction = self.pool().begin().await?;
        insert_issued(&mut transaction, issued, enrolled_by, now).await?;
        let written = sqlx::query(if replace { UPSERT_ENROLLMENT } else { INSERT_ENROLLMENT })
            .bind(device_id.to_string())
            .bind(tags_json)
            .bind(issued.serial.clone())
            .bind(issued.fingerprint.clone())
            .bind(issued.not_after_ms)
            .bind(now)
            .bind(enrolled_by.to_string())
            .execute(&mut *transaction)
            .await?;
        if written.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "device {device_id} is already enrolled: re-enroll it with replace (--replace)"
            )));
        }
        let mut revoked = 0;
        if replace {
            revoked = sqlx::query(
                "UPDATE issued_certificates SET revoked_ms = $1, revoked_by = $2 \
                 WHERE kind = 'device' AND common_name = $3 AND revoked_ms IS NULL \
                 AND serial <> $4",
            )
            .bind(now)
            .bind(enrolled_by.to_string())
            .bind(device_id.to_string())
            .bind(issued.serial.clone())
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        }
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: enrolled_by.into(),
                action: "device.enroll".into(),
                subject: format!("device {device_id}"),
                outcome: "ok".into(),
                reason: format!(
                    "certificate {} ({}){}",
                    issued.serial,
                    issued.fingerprint,
                    if revoked > 0 {
                        format!(", {revoked} earlier certificate(s) revoked")
                    } else {
                        String::new()
                    }
                ),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(Enrollment {
            device_id: device_id.to_string(),
            tags: tags.clone(),
            serial: issued.serial.clone(),
            fingerprint: issued.fingerprint.clone(),
            not_after_ms: issued.not_after_ms,
            enrolled_ms: now,
            enrolled_by: enrolled_by.to_string(),
        })
    }

    /// Records a broker or control certificate with its audit event.
    pub async fn record_issued_certificate(
        &self,
        issued: &IssuedRecord,
        issued_by: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        insert_issued(&mut transaction, issued, issued_by, now).await?;
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: issued_by.into(),
                action: "certificate.issue".into(),
                subject: format!("{} {}", issued.kind, issued.common_name),
                outcome: "ok".into(),
                reason: format!("certificate {} ({})", issued.serial, issued.fingerprint),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Revokes every unrevoked certificate issued to `device_id` and removes its enrollment, with
    /// the audit event, in one transaction. Returns the revoked serials, or `None` when the
    /// device has neither an enrollment nor an unrevoked certificate.
    pub async fn revoke_device(
        &self,
        device_id: &str,
        revoked_by: &str,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let now = now_ms();
        let mut transaction = self.pool().begin().await?;
        let rows = sqlx::query(
            "SELECT serial FROM issued_certificates WHERE kind = 'device' AND common_name = $1 \
             AND revoked_ms IS NULL ORDER BY issued_ms",
        )
        .bind(device_id.to_string())
        .fetch_all(&mut *transaction)
        .await?;
        let serials: Vec<String> =
            rows.iter().map(|row| row.try_get("serial")).collect::<Result<_, _>>()?;
        let unenrolled = sqlx::query("DELETE FROM enrollments WHERE device_id = $1")
            .bind(device_id.to_string())
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if serials.is_empty() && unenrolled == 0 {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE issued_certificates SET revoked_ms = $1, revoked_by = $2 \
             WHERE kind = 'device' AND common_name = $3 AND revoked_ms IS NULL",
        )
        .bind(now)
        .bind(revoked_by.to_string())
        .bind(device_id.to_string())
        .execute(&mut *transaction)
        .await?;
        insert_in(
            &mut transaction,
            &NewAuditEvent {
                actor: revoked_by.into(),
                action: "device.revoke".into(),
                subject: format!("device {device_id}"),
                outcome: "ok".into(),
                reason: format!("certificates revoked: {}", serials.join(", ")),
                source: "api".into(),
                ..Default::default()
            },
        )
        .await?;
        transaction.commit().await?;
        Ok(Some(serials))
    }

    /// Every revoked certificate that has not expired yet: (serial, revoked at), oldest first.
    pub async fn revoked_certificates(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT serial, revoked_ms FROM issued_certificates \
             WHERE revoked_ms IS NOT NULL AND not_after_ms > $1 ORDER BY revoked_ms, serial",
        )
        .bind(now_ms())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok((row.try_get("serial")?, row.try_get("revoked_ms")?))).collect()
    }
}
