//! The control server's configuration, defined once.
//!
//! [`DEFAULT_CONFIG`] is `control/control.example.toml`, embedded: the documented example and
//! the defaults are the same text. [`load`] layers it, then a file, then environment variables
//! `OUTPOST__<SECTION>__<KEY>`, parses the result into [`RawConfig`] (unknown keys refused) and
//! validates it into a typed [`ServerConfig`], so the server never sees an unchecked value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The documented default configuration (`outpost serve print-default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("../control.example.toml");

/// The prefix of environment overrides: `OUTPOST__API__LISTEN` sets `api.listen`.
pub const ENV_PREFIX: &str = "OUTPOST__";

/// Why a configuration was refused; each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin} is not valid TOML: {reason}")]
    Syntax { origin: String, reason: String },
    #[error("invalid configuration: {reason}")]
    Invalid { reason: String },
    #[error("invalid value for `{key}`: {reason}")]
    Value { key: String, reason: String },
}

/// The configuration file as written: every key, as text or numbers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: String,
    pub database: RawDatabase,
    pub api: RawApi,
    pub broker: RawBroker,
    pub trust: RawTrust,
    pub registry: RawRegistry,
    pub ingest: RawIngest,
    pub drift: RawDrift,
    pub rollouts: RawRollouts,
    pub audit: RawAudit,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub listen: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub token_lifetime_days: u32,
    pub max_token_lifetime_days: u32,
    pub denied_burst: u32,
    pub denied_per_minute: u32,
    pub denied_audit_interval_seconds: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub url: String,
    pub embedded_listen: String,
    pub client_id: String,
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    pub username: String,
    pub password: String,
    pub keep_alive_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrust {
    pub root: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    pub max_bundle_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub bucket_seconds: u64,
    pub cohort_tag_keys: String,
    pub downsample_after_days: u64,
    pub retention_days: u64,
    pub maintenance_interval_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDrift {
    pub evaluate_interval_seconds: f64,
    pub range_minutes: u64,
    pub open_after: u32,
    pub close_after: u32,
    pub thresholds: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub retention_days: u64,
    pub checkpoint_interval_seconds: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollouts {
    pub tick_seconds: f64,
    pub lease_seconds: f64,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub broker: BrokerConfig,
    /// The trust root file; `None`: the registry refuses pushes.
    pub trust_root: Option<PathBuf>,
    pub max_bundle_bytes: u64,
    pub ingest: IngestConfig,
    pub drift: DriftConfig,
    pub rollouts: RolloutsConfig,
    pub audit: AuditConfig,
}

/// The audit log: retention of record bodies and how often checkpoints are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Record bodies older than this are pruned (leaf hashes stay); `None`: kept forever.
    pub retention_ms: Option<i64>,
    pub checkpoint_interval: std::time::Duration,
}

/// The shortest audit retention accepted, in days: six months (EU AI Act Art. 19, 26(6)).
pub const MIN_AUDIT_RETENTION_DAYS: u64 = 183;

fn audit(raw: &RawAudit) -> Result<AuditConfig, ConfigError> {
    let value = |key: &str, reason: String| ConfigError::Value { key: key.into(), reason };
    let retention_ms = match raw.retention_days {
        0 => None,
        days if days < MIN_AUDIT_RETENTION_DAYS => {
            return Err(value(
                "audit.retention_days",
                format!(
                    "{days} is less than six months: use at least {MIN_AUDIT_RETENTION_DAYS} \
                     (or 0 to keep records forever)"
                ),
            ));
        }
        days => Some(
            i64::try_from(days.saturating_mul(86_400_000))
                .map_err(|_| value("audit.retention_days", format!("{days} is too long")))?,
        ),
    };
    let checkpoint_interval =
        std::time::Duration::try_from_secs_f64(raw.checkpoint_interval_seconds)
            .ok()
            .filter(|d| *d >= std::time::Duration::from_millis(50))
            .ok_or_else(|| {
                value(
                    "audit.checkpoint_interval_seconds",
                    format!("{} must be at least 0.05", raw.checkpoint_interval_seconds),
                )
            })?;
    Ok(AuditConfig { retention_ms, checkpoint_interval })
}

/// The rollout driver: how often it steps rollouts and how long its lease on one lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutsConfig {
    pub tick: std::time::Duration,
    pub lease: std::time::Duration,
}

impl Default for RolloutsConfig {
    fn default() -> Self {
        RolloutsConfig {
            tick: std::time::Duration::from_secs(2),
            lease: std::time::Duration::from_secs(30),
        }
    }
}

fn rollouts(raw: &RawRollouts) -> Result<RolloutsConfig, ConfigError> {
    let seconds = |key: &str, value: f64, min: f64| {
        std::time::Duration::try_from_secs_f64(value)
            .ok()
            .filter(|d| d.as_secs_f64() >= min)
            .ok_or_else(|| ConfigError::Value {
                key: key.into(),
                reason: format!("{value} must be at least {min}"),
            })
    };
    let tick = seconds("rollouts.tick_seconds", raw.tick_seconds, 0.05)?;
    let lease = seconds("rollouts.lease_seconds", raw.lease_seconds, 1.0)?;
    if lease <= tick * 2 {
        return Err(ConfigError::Value {
            key: "rollouts.lease_seconds".into(),
            reason: format!(
                "{} must be more than twice rollouts.tick_seconds ({}) so a live driver renews \
                 its lease in time",
                raw.lease_seconds, raw.tick_seconds
            ),
        });
    }
    Ok(RolloutsConfig { tick, lease })
}

/// Drift evaluation and alerting.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    pub evaluate_interval: std::time::Duration,
    pub range_ms: i64,
    pub open_after: u32,
    pub close_after: u32,
    pub thresholds: outpost_shared::drift::Thresholds,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            evaluate_interval: std::time::Duration::from_secs(60),
            range_ms: 3_600_000,
            open_after: 2,
            close_after: 3,
            thresholds: outpost_shared::drift::Thresholds::default(),
        }
    }
}

fn drift(raw: &RawDrift) -> Result<DriftConfig, ConfigError> {
    let value = |key: &str, reason: String| ConfigError::Value { key: key.into(), reason };
    let evaluate_interval = std::time::Duration::try_from_secs_f64(raw.evaluate_interval_seconds)
        .ok()
        .filter(|d| *d >= std::time::Duration::from_millis(50))
        .ok_or_else(|| {
            value(
                "drift.evaluate_interval_seconds",
                format!("{} must be at least 0.05", raw.evaluate_interval_seconds),
            )
        })?;
    if raw.range_minutes == 0 {
        return Err(value("drift.range_minutes", "must be at least 1".into()));
    }
    let range_ms = i64::try_from(raw.range_minutes.saturating_mul(60_000))
        .map_err(|_| value("drift.range_minutes", format!("{} is too long", raw.range_minutes)))?;
    if raw.open_after == 0 || raw.close_after == 0 {
        return Err(value("drift.open_after / drift.close_after", "must be at least 1".into()));
    }
    let thresholds = match non_empty(&raw.thresholds) {
        None => outpost_shared::drift::Thresholds::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                value("drift.thresholds", format!("cannot read {path}: {error}"))
            })?;
            let thresholds: outpost_shared::drift::Thresholds = toml::from_str(&text)
                .map_err(|error| value("drift.thresholds", format!("{path}: {error}")))?;
            thresholds
                .validate()
                .map_err(|error| value("drift.thresholds", format!("{path}: {error}")))?;
            thresholds
        }
    };
    Ok(DriftConfig {
        evaluate_interval,
        range_ms,
        open_after: raw.open_after,
        close_after: raw.close_after,
        thresholds,
    })
}

/// Statistics ingest: buckets, cohorts, downsampling and retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestConfig {
    /// Length of an aggregate bucket in milliseconds; divides a day.
    pub bucket_ms: i64,
    /// Tag keys that define cohorts; empty: every tag of the device.
    pub cohort_tag_keys: Vec<String>,
    /// Buckets older than this are merged into day buckets.
    pub downsample_after_ms: i64,
    /// Aggregates older than this are deleted, and windows this old are refused; `None`: kept.
    pub retention_ms: Option<i64>,
    pub maintenance_interval: std::time::Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            bucket_ms: 3_600_000,
            cohort_tag_keys: Vec::new(),
            downsample_after_ms: 7 * 86_400_000,
            retention_ms: Some(400 * 86_400_000),
            maintenance_interval: std::time::Duration::from_secs(600),
        }
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `None`: SQLite in the data directory.
    pub url: Option<String>,
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
}

/// The REST API listener.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Lifetimes of the tokens the API issues.
    pub tokens: crate::api::users::TokenPolicy,
    /// The per-source limit on denied requests and how often their counts are audited.
    pub denials: crate::api::denials::DenialConfig,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub certificate_chain: PathBuf,
    pub private_key: PathBuf,
}

/// The MQTT side.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub target: BrokerTarget,
    /// `None`: derived per instance (`crate::server::instance`).
    pub client_id: Option<String>,
    pub keep_alive: std::time::Duration,
}

/// Which broker the control connects to.
#[derive(Debug, Clone)]
pub enum BrokerTarget {
    /// An embedded rumqttd on this address.
    Embedded { listen: SocketAddr },
    /// A broker run elsewhere.
    External(ExternalBroker),
}

/// An external broker and how to connect to it.
#[derive(Debug, Clone)]
pub struct ExternalBroker {
    pub host: String,
    pub port: u16,
    /// `Some`: TLS (mqtts), with this CA file (`None`: the Mozilla roots).
    pub tls: Option<BrokerTls>,
    pub credentials: Option<(String, String)>,
}

/// TLS settings for an external broker.
#[derive(Debug, Clone)]
pub struct BrokerTls {
    pub ca_file: Option<PathBuf>,
    pub client_certificate: Option<TlsFiles>,
}

/// Loads the configuration: the default, then `file` when given, then the environment.
pub fn load(file: Option<&Path>) -> Result<ServerConfig, ConfigError> {
    let environment: Vec<(String, String)> = std::env::vars().collect();
    let file_text = match file {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?,
        )),
        None => None,
    };
    let file_text = file_text.as_ref().map(|(origin, text)| (origin.as_str(), text.as_str()));
    load_from(file_text, &environment)
}

/// [`load`] with the file's text and the environment given, for tests.
pub fn load_from(
    file: Option<(&str, &str)>,
    environment: &[(String, String)],
) -> Result<ServerConfig, ConfigError> {
    let mut merged = parse_table("the built-in default configuration", DEFAULT_CONFIG)?;
    if let Some((origin, text)) = file {
        let overrides = parse_table(origin, text)?;
        merge(&mut merged, overrides);
    }
    for (name, value) in environment {
        if let Some(path) = name.strip_prefix(ENV_PREFIX) {
            apply_env(&mut merged, name, path, value)?;
        }
    }
    let raw: RawConfig = toml::Value::Table(merged)
        .try_into()
        .map_err(|error: toml::de::Error| ConfigError::Invalid { reason: error.to_string() })?;
    validate(raw)
}

fn parse_table(origin: &str, text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Syntax { origin: origin.into(), reason: error.to_string() })
}

/// Overlays `overrides` on `base`, table by table.
fn merge(base: &mut toml::Table, overrides: toml::Table) {
    for (key, value) in overrides {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(override_table)) => {
                merge(base_table, override_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets one key from `OUTPOST__A__B=value`. The value keeps the type of the default (text stays
/// text even when it looks like a number); numbers and booleans are parsed as such.
fn apply_env(
    table: &mut toml::Table,
    variable: &str,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
    let unknown = || ConfigError::Value {
        key: variable.into(),
        reason: format!("`{}` is not a configuration key", keys.join(".")),
    };
    let Some((last, parents)) = keys.split_last() else {
        return Err(unknown());
    };
    let mut current = table;
    for parent in parents {
        current = match current.get_mut(parent) {
            Some(toml::Value::Table(inner)) => inner,
            _ => return Err(unknown()),
        };
    }
    let parsed = match current.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.into()),
        Some(toml::Value::Integer(_)) => {
            toml::Value::Integer(value.trim().parse().map_err(|_| ConfigError::Value {
                key: variable.into(),
                reason: format!("`{value}` is not an integer"),
            })?)
        }
        Some(toml::Value::Float(_)) => {
            toml::Value::Float(value.trim().parse().map_err(|_| ConfigError::Value {
                key: variable.into(),
                reason: format!("`{value}` is not a number"),
            })?)
        }
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(value.trim().parse().map_err(|_| ConfigError::Value {
                key: variable.into(),
                reason: format!("`{value}` is not true or false"),
            })?)
        }
        _ => return Err(unknown()),
    };
    current.insert(last.clone(), parsed);
    Ok(())
}

fn non_empty(value: &str) -> Option<&str> {
    let trimmed = value.trim();
    (!trimmed.is_empty()).then_some(trimmed)
}

fn socket_address(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| ConfigError::Value {
        key: key.into(),
        reason: format!("`{value}` is not an address like 127.0.0.1:8080"),
    })
}

fn tls_pair(
    key: &str,
    certificate: &str,
    private_key: &str,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (non_empty(certificate), non_empty(private_key)) {
        (None, None) => Ok(None),
        (Some(certificate), Some(private_key)) => Ok(Some(TlsFiles {
            certificate_chain: PathBuf::from(certificate),
            private_key: PathBuf::from(private_key),
        })),
        _ => Err(ConfigError::Value {
            key: key.into(),
            reason: "set both the certificate and the private key, or neither".into(),
        }),
    }
}

fn token_policy(raw: &RawApi) -> Result<crate::api::users::TokenPolicy, ConfigError> {
    let value = |key: &str, reason: String| ConfigError::Value { key: key.into(), reason };
    let most = crate::store::users::MAX_TOKEN_LIFETIME_DAYS;
    if !(1..=most).contains(&raw.max_token_lifetime_days) {
        return Err(value(
            "api.max_token_lifetime_days",
            format!("{} must be between 1 and {most}", raw.max_token_lifetime_days),
        ));
    }
    if !(1..=raw.max_token_lifetime_days).contains(&raw.token_lifetime_days) {
        return Err(value(
            "api.token_lifetime_days",
            format!(
                "{} must be between 1 and api.max_token_lifetime_days ({})",
                raw.token_lifetime_days, raw.max_token_lifetime_days
            ),
        ));
    }
    Ok(crate::api::users::TokenPolicy {
        default_days: raw.token_lifetime_days,
        max_days: raw.max_token_lifetime_days,
    })
}

fn denial_config(raw: &RawApi) -> Result<crate::api::denials::DenialConfig, ConfigError> {
    let value = |key: &str, reason: String| ConfigError::Value { key: key.into(), reason };
    if !(1..=1_000_000).contains(&raw.denied_burst) {
        return Err(value(
            "api.denied_burst",
            format!("{} must be between 1 and 1000000", raw.denied_burst),
        ));
    }
    if !(1..=1_000_000).contains(&raw.denied_per_minute) {
        return Err(value(
            "api.denied_per_minute",
            format!("{} must be between 1 and 1000000", raw.denied_per_minute),
        ));
    }
    let audit_interval = std::time::Duration::try_from_secs_f64(raw.denied_audit_interval_seconds)
        .ok()
        .filter(|d| {
            *d >= std::time::Duration::from_millis(50) && *d <= std::time::Duration::from_secs(3600)
        })
        .ok_or_else(|| {
            value(
                "api.denied_audit_interval_seconds",
                format!("{} must be between 0.05 and 3600", raw.denied_audit_interval_seconds),
            )
        })?;
    Ok(crate::api::denials::DenialConfig {
        burst: raw.denied_burst,
        per_minute: raw.denied_per_minute,
        audit_interval,
    })
}

fn validate(raw: RawConfig) -> Result<ServerConfig, ConfigError> {
    let data_dir = non_empty(&raw.data_dir).ok_or_else(|| ConfigError::Value {
        key: "data_dir".into(),
        reason: "must not be empty".into(),
    })?;
    let database_url = non_empty(&raw.database.url).map(str::to_string);
    if let Some(url) = &database_url
        && crate::store::Backend::of_url(url).is_err()
    {
        return Err(ConfigError::Value {
            key: "database.url".into(),
            reason: "must start with sqlite:, postgres:// or postgresql://".into(),
        });
    }
    if raw.database.max_connections == 0 {
        return Err(ConfigError::Value {
            key: "database.max_connections".into(),
            reason: "must be at least 1".into(),
        });
    }
    let api = ApiConfig {
        listen: socket_address("api.listen", &raw.api.listen)?,
        tls: tls_pair("api.tls_cert / api.tls_key", &raw.api.tls_cert, &raw.api.tls_key)?,
        tokens: token_policy(&raw.api)?,
        denials: denial_config(&raw.api)?,
    };
    let target = match non_empty(&raw.broker.url) {
        None => BrokerTarget::Embedded {
            listen: socket_address("broker.embedded_listen", &raw.broker.embedded_listen)?,
        },
        Some(url) => BrokerTarget::External(external_broker(url, &raw.broker)?),
    };
    if raw.broker.keep_alive_seconds < 5 {
        return Err(ConfigError::Value {
            key: "broker.keep_alive_seconds".into(),
            reason: "must be at least 5".into(),
        });
    }
    let max_bundle = outpost_shared::bundle::MAX_BUNDLE_BYTES;
    if raw.registry.max_bundle_bytes == 0 || raw.registry.max_bundle_bytes > max_bundle {
        return Err(ConfigError::Value {
            key: "registry.max_bundle_bytes".into(),
            reason: format!("must be between 1 and {max_bundle}"),
        });
    }
    Ok(ServerConfig {
        data_dir: PathBuf::from(data_dir),
        database: DatabaseConfig {
            url: database_url,
            max_connections: raw.database.max_connections,
            acquire_timeout: std::time::Duration::from_secs(
                raw.database.acquire_timeout_seconds.max(1),
            ),
        },
        api,
        broker: BrokerConfig {
            target,
            client_id: non_empty(&raw.broker.client_id).map(str::to_string),
            keep_alive: std::time::Duration::from_secs(raw.broker.keep_alive_seconds),
        },
        trust_root: non_empty(&raw.trust.root).map(PathBuf::from),
        max_bundle_bytes: raw.registry.max_bundle_bytes,
        ingest: ingest_config(&raw.ingest)?,
        drift: drift(&raw.drift)?,
        rollouts: rollouts(&raw.rollouts)?,
        audit: audit(&raw.audit)?,
    })
}

fn ingest_config(raw: &RawIngest) -> Result<IngestConfig, ConfigError> {
    const DAY_SECONDS: u64 = 86_400;
    let value = |key: &str, reason: String| ConfigError::Value { key: key.into(), reason };
    if raw.bucket_seconds == 0 || !DAY_SECONDS.is_multiple_of(raw.bucket_seconds) {
        return Err(value(
            "ingest.bucket_seconds",
            format!("{} must divide a day (86400), e.g. 60, 300, 3600", raw.bucket_seconds),
        ));
    }
    let mut keys = Vec::new();
    for key in raw.cohort_tag_keys.split(',').map(str::trim).filter(|key| !key.is_empty()) {
        if !outpost_shared::selector::valid_token(key) {
            return Err(value("ingest.cohort_tag_keys", format!("`{key}` is not a tag key")));
        }
        keys.push(key.to_string());
    }
    let days = |days: u64, key: &str| {
        i64::try_from(days.saturating_mul(DAY_SECONDS * 1000))
            .map_err(|_| value(key, format!("{days} days is too long")))
    };
    let downsample_after_ms = days(raw.downsample_after_days, "ingest.downsample_after_days")?;
    let retention_ms = match raw.retention_days {
        0 => None,
        retention => Some(days(retention, "ingest.retention_days")?),
    };
    if retention_ms.is_some_and(|retention| retention <= downsample_after_ms) {
        return Err(value(
            "ingest.retention_days",
            "must be 0 (keep forever) or longer than ingest.downsample_after_days".into(),
        ));
    }
    if raw.maintenance_interval_seconds == 0 {
        return Err(value("ingest.maintenance_interval_seconds", "must be at least 1".into()));
    }
    Ok(IngestConfig {
        bucket_ms: i64::try_from(raw.bucket_seconds * 1000).unwrap_or(3_600_000),
        cohort_tag_keys: keys,
        downsample_after_ms,
        retention_ms,
        maintenance_interval: std::time::Duration::from_secs(raw.maintenance_interval_seconds),
    })
}

fn external_broker(url: &str, raw: &RawBroker) -> Result<ExternalBroker, ConfigError> {
    let bad = |reason: String| ConfigError::Value { key: "broker.url".into(), reason };
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(bad(format!("`{url}` must start with mqtt:// or mqtts://")));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => {
            (host, port.parse::<u16>().map_err(|_| bad(format!("`{port}` is not a port number")))?)
        }
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || rest.contains('/') {
        return Err(bad(format!("`{url}` must be mqtt[s]://host[:port]")));
    }
    let client_certificate =
        tls_pair("broker.client_cert / broker.client_key", &raw.client_cert, &raw.client_key)?;
    let ca_file = non_empty(&raw.ca_file).map(PathBuf::from);
    if !tls && (ca_file.is_some() || client_certificate.is_some()) {
        return Err(bad("TLS files are set but the URL is mqtt://: use mqtts://".into()));
    }
    let credentials = match (non_empty(&raw.username), non_empty(&raw.password)) {
        (None, None) => None,
        (Some(user), password) => Some((user.to_string(), password.unwrap_or("").to_string())),
        (None, Some(_)) => {
            return Err(ConfigError::Value {
                key: "broker.password".into(),
                reason: "a password needs a broker.username".into(),
            });
        }
    };
    Ok(ExternalBroker {
        host: host.to_string(),
        port,
        tls: tls.then_some(BrokerTls { ca_file, client_certificate }),
        credentials,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_default_configuration_is_valid() {
        let config = load_from(None, &[]).expect("default config");
        assert!(config.database.url.is_none());
        assert!(matches!(config.broker.target, BrokerTarget::Embedded { .. }));
        assert!(config.trust_root.is_none());
        assert!(config.api.tls.is_none());
        assert_eq!(config.ingest, IngestConfig::default());
    }

    #[test]
    fn file_then_environment_override_the_default() {
        let file = "[api]\nlisten = \"127.0.0.1:9000\"\n[database]\nmax_connections = 3\n";
        let config = load_from(
            Some(("test.toml", file)),
            &env(&[
                ("OUTPOST__DATABASE__MAX_CONNECTIONS", "5"),
                ("OUTPOST__BROKER__URL", "mqtts://broker.example"),
                ("OUTPOST__BROKER__CLIENT_ID", "1234"),
                ("OUTPOST_TOKEN", "ignored: not the prefix"),
            ]),
        )
        .expect("config");
        assert_eq!(config.api.listen.port(), 9000);
        assert_eq!(config.database.max_connections, 5);
        assert_eq!(config.broker.client_id.as_deref(), Some("1234"));
        match config.broker.target {
            BrokerTarget::External(broker) => {
                assert_eq!((broker.host.as_str(), broker.port), ("broker.example", 8883));
                assert!(broker.tls.is_some());
            }
            other => panic!("expected an external broker, got {other:?}"),
        }
    }

    /// A configuration file (if any), environment variables, and text the error must contain.
    type RefusalCase =
        (Option<&'static str>, &'static [(&'static str, &'static str)], &'static str);

    #[test]
    fn mistakes_are_refused_with_the_key() {
        let cases: &[RefusalCase] = &[
            (Some("[api]\nlisten = \"nowhere\"\n"), &[], "api.listen"),
            (Some("[api]\nlistne = \"x\"\n"), &[], "unknown field"),
            (Some("[api\n"), &[], "not valid TOML"),
            (None, &[("OUTPOST__API__NOPE", "1")], "not a configuration key"),
            (None, &[("OUTPOST__DATABASE__MAX_CONNECTIONS", "many")], "not an integer"),
            (None, &[("OUTPOST__DATABASE__URL", "mysql://x")], "database.url"),
            (None, &[("OUTPOST__BROKER__URL", "http://x")], "broker.url"),
            (None, &[("OUTPOST__API__TLS_CERT", "cert.pem")], "api.tls_cert"),
            (None, &[("OUTPOST__REGISTRY__MAX_BUNDLE_BYTES", "0")], "max_bundle_bytes"),
            (None, &[("OUTPOST__INGEST__BUCKET_SECONDS", "7")], "ingest.bucket_seconds"),
            (None, &[("OUTPOST__INGEST__COHORT_TAG_KEYS", "site,a b")], "cohort_tag_keys"),
            (None, &[("OUTPOST__INGEST__RETENTION_DAYS", "3")], "ingest.retention_days"),
        ];
        for (file, environment, expected) in cases {
            let error = load_from(file.map(|text| ("test.toml", text)), &env(environment))
                .expect_err("must be refused");
            assert!(error.to_string().contains(expected), "{error} should mention {expected}");
        }
    }
}
