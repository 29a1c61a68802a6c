//! The control server's database: one [`Store`] over SQLite or PostgreSQL.
//!
//! Queries are written once, as runtime `sqlx` queries over the `Any` driver with `$1`-style
//! parameters (which both engines accept), so the same code runs on both backends and builds on
//! a clean checkout without a live database. The schema lives in `control/migrations/{sqlite,
//! postgres}` (why two sets: `control/migrations/README.md`), is embedded in the binary and is
//! applied by [`Store::connect`].
//!
//! Every operation that writes more than one row runs in one transaction, so the database is
//! never left half-written. Times are milliseconds since the Unix epoch.
//!
//! - [`registry`]: bundles and their chunks.
//! - [`inventory`]: devices from `hello` / `state`.
//! - [`users`]: API users and token hashes.
//! - [`audit`]: the `audit_events` table (denied requests and actions).
//! - [`ingest`]: statistics windows: dedupe, aggregates, downsampling.
//! - [`pending`]: windows counted but not yet folded into the aggregates, and the fold.
//! - [`artifacts`]: byte ranges of stored bundles, for artifact serving.
//! - [`enrollment`]: the fleet CA's fingerprint, issued certificates and enrolled devices.
//! - [`device_events`]: what devices report on `events`, each also in the audit log.
//! - [`rollouts`]: staged rollouts, approvals, placed devices, transitions and leases.

pub mod artifacts;
pub mod audit;
pub mod device_events;
pub mod drift;
pub mod enrollment;
pub mod ingest;
pub mod inventory;
mod migrations;
pub mod pending;
pub mod registry;
pub mod rollouts;
pub mod samples;
pub mod users;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor as _};

/// Which database engine a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The engine a database URL names.
    pub fn of_url(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl { scheme: url.split(':').next().unwrap_or("").into() })
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Why a database operation failed. Variants other than the database's own errors name a
/// condition callers act on (a conflict, damaged data).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme `{scheme}`: use sqlite:// or postgres://")]
    UnsupportedUrl { scheme: String },
    #[error("cannot create the data directory {path}: {source}")]
    DataDirectory { path: String, source: std::io::Error },
    #[error("cannot connect to the {backend} database: {source}")]
    Connect { backend: &'static str, source: sqlx::Error },
    #[error("applying database migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("stored {what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    /// The data conflicts with what is stored (a taken name, a different bundle under a taken
    /// version).
    #[error("{0}")]
    Conflict(String),
    /// The caller's input is not acceptable (a bad name).
    #[error("{0}")]
    Invalid(String),
}

/// The database of one control site.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Connection settings for [`Store::connect`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Store {
    /// Connects (creating a SQLite file when missing) and applies every pending migration.
    pub async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        install_default_drivers();
        let backend = Backend::of_url(&options.url)?;
        let url = match backend {
            Backend::Sqlite if !options.url.contains("mode=") => {
                let separator = if options.url.contains('?') { '&' } else { '?' };
                format!("{}{separator}mode=rwc", options.url)
            }
            _ => options.url.clone(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { backend: backend.as_str(), source })?;
        if backend == Backend::Sqlite {
            // Readers do not block the writer, and the setting persists in the file.
            pool.execute("PRAGMA journal_mode = WAL").await?;
        }
        migrations::migrator(backend).run(&pool).await?;
        Ok(Store { pool, backend })
    }

    /// The URL of the default SQLite database in `data_dir`, creating the directory.
    pub fn sqlite_url_in(data_dir: &Path) -> Result<String, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDirectory {
            path: data_dir.display().to_string(),
            source,
        })?;
        Ok(format!("sqlite://{}", data_dir.join("outpost.db").display()))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Names of the tables and their columns, sorted; lets tests compare the two schemas.
    pub async fn schema_columns(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = match self.backend {
            Backend::Sqlite => {
                sqlx::query_as(
                    "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' \
                     AND m.name NOT LIKE '_sqlx%' ORDER BY m.name, p.name",
                )
                .fetch_all(&self.pool)
                .await?
            }
            Backend::Postgres => {
                sqlx::query_as(
                    "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) \
                     FROM information_schema.columns WHERE table_schema = 'public' \
                     AND table_name NOT LIKE '\\_sqlx%' ORDER BY 1, 2",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Converts an unsigned count or size for a BIGINT column.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: what.into(),
        reason: format!("{value} does not fit a 64-bit signed integer"),
    })
}

/// Converts a BIGINT column back to an unsigned count or size.
pub(crate) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt {
        what: what.into(),
        reason: format!("negative value {value}"),
    })
}

/// Parses a JSON text column.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text)
        .map_err(|error| StoreError::Corrupt { what: what.into(), reason: error.to_string() })
}
