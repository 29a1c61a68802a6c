//! The schema migrations, embedded in the binary so an installed `outpost` needs no files
//! beside it. One list per backend; the two lists have the same versions and descriptions.

use std::borrow::Cow;

use sqlx::SqlSafeStr as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// (version, description, SQLite text, PostgreSQL text).
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "ingest",
        include_str!("../../migrations/sqlite/0002_ingest.sql"),
        include_str!("../../migrations/postgres/0002_ingest.sql"),
    ),
    (
        3,
        "enrollment",
        include_str!("../../migrations/sqlite/0003_enrollment.sql"),
        include_str!("../../migrations/postgres/0003_enrollment.sql"),
    ),
    (
        4,
        "drift alerts",
        include_str!("../../migrations/sqlite/0004_drift_alerts.sql"),
        include_str!("../../migrations/postgres/0004_drift_alerts.sql"),
    ),
    (
        5,
        "aggregate compression",
        include_str!("../../migrations/sqlite/0005_aggregate_compression.sql"),
        include_str!("../../migrations/postgres/0005_aggregate_compression.sql"),
    ),
    (
        6,
        "audit log",
        include_str!("../../migrations/sqlite/0006_audit_log.sql"),
        include_str!("../../migrations/postgres/0006_audit_log.sql"),
    ),
    (
        7,
        "rollouts and device events",
        include_str!("../../migrations/sqlite/0007_rollouts.sql"),
        include_str!("../../migrations/postgres/0007_rollouts.sql"),
    ),
    (
        8,
        "ingest pending windows",
        include_str!("../../migrations/sqlite/0008_ingest_pending.sql"),
        include_str!("../../migrations/postgres/0008_ingest_pending.sql"),
    ),
    (
        9,
        "device samples",
        include_str!("../../migrations/sqlite/0009_device_samples.sql"),
        include_str!("../../migrations/postgres/0009_device_samples.sql"),
    ),
    (
        25,
        "access: token expiry and revocation, user removal",
        include_str!("../../migrations/sqlite/0025_access.sql"),
        include_str!("../../migrations/postgres/0025_access.sql"),
    ),
];

/// The migrator for `backend`.
pub(super) fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(
                version,
                Cow::Borrowed(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}
