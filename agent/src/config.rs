//! The agent's configuration: one typed [`AgentConfig`], read in three layers — the embedded
//! default (`agent/agent.example.toml`, which documents every key), then the config file, then
//! `OUTPOST_AGENT__SECTION__KEY` environment variables — and validated into typed values at
//! load, with errors that name the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_shared::selector::valid_token;
use outpost_shared::wire::DeviceId;
use serde::{Deserialize, Deserializer};

use crate::fsutil;
use crate::mqtt::MqttConfig;
use crate::queue::QueueConfig;
use crate::sampling::SamplingConfig;
use crate::update::UpdateConfig;

/// The documented default configuration, embedded in the binary.
pub const DEFAULT_CONFIG: &str = include_str!("../agent.example.toml");

/// Prefix of environment variables that override config keys; `__` separates the levels.
pub const ENV_PREFIX: &str = "OUTPOST_AGENT__";

/// Largest config file read.
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Shortest and longest statistics window.
const MIN_PERIOD: Duration = Duration::from_millis(50);
const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config: {0}")]
    File(#[from] fsutil::FileError),
    #[error("{source_name} is not valid TOML: {reason}")]
    Syntax { source_name: String, reason: String },
    #[error("config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_string(), reason: reason.into() }
}

/// Where the inference API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(address) => write!(f, "{address}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl std::str::FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() || !Path::new(path).is_absolute() {
                return Err(format!(
                    "`{text}`: a Unix socket needs an absolute path after `unix:`"
                ));
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>().map(ListenAddress::Tcp).map_err(|_| {
            format!(
                "`{text}` is neither an address with a port (\"127.0.0.1:8080\") nor \
                 \"unix:/absolute/path.sock\""
            )
        })
    }
}

/// `[device]`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceConfig {
    pub id: DeviceId,
    pub tags: BTreeMap<String, String>,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: ListenAddress,
    pub max_body_bytes: usize,
    pub max_concurrency: usize,
}

/// `[stats]`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    pub period: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub filter: String,
}

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub device: DeviceConfig,
    pub data_dir: PathBuf,
    pub api: ApiConfig,
    pub stats: StatsConfig,
    pub log: LogConfig,
    pub mqtt: MqttConfig,
    pub queue: QueueConfig,
    pub update: UpdateConfig,
    pub sampling: SamplingConfig,
}

/// The file's shape, before the checks serde cannot make.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    device: RawDevice,
    data_dir: PathBuf,
    api: RawApi,
    stats: RawStats,
    log: RawLog,
    #[serde(default)]
    mqtt: MqttConfig,
    #[serde(default)]
    queue: QueueConfig,
    #[serde(default)]
    update: UpdateConfig,
    #[serde(default)]
    sampling: SamplingConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    id: DeviceId,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: String,
    max_body_bytes: u64,
    max_concurrency: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStats {
    #[serde(deserialize_with = "seconds")]
    period_seconds: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    filter: String,
}

/// A number of seconds written as an integer or a float.
fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Integer(i64),
        Float(f64),
    }
    match Number::deserialize(deserializer)? {
        Number::Integer(i) => Ok(i as f64),
        Number::Float(f) => Ok(f),
    }
}

impl AgentConfig {
    /// Loads the configuration: the embedded default, then `file` if given, then `env`
    /// (pass `std::env::vars()`; tests pass their own).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = parse_table(DEFAULT_CONFIG, "the built-in default config")?;
        if let Some(path) = file {
            let bytes = fsutil::read_limited(path, MAX_CONFIG_BYTES, "config file")?;
            let text = String::from_utf8(bytes).map_err(|_| ConfigError::Syntax {
                source_name: path.display().to_string(),
                reason: "not UTF-8".into(),
            })?;
            merge(&mut table, parse_table(&text, &path.display().to_string())?);
        }
        apply_env(&mut table, env)?;
        Self::from_table(table)
    }

    /// Loads from TOML text layered over the embedded default, without the environment.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut table = parse_table(DEFAULT_CONFIG, "the built-in default config")?;
        merge(&mut table, parse_table(text, "config")?);
        Self::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
                let key = error.path().to_string();
                let reason = error.into_inner().to_string();
                if key == "." { invalid("(top level)", reason) } else { invalid(&key, reason) }
            })?;
        raw.validate()
    }
}

impl RawConfig {
    fn validate(self) -> Result<AgentConfig, ConfigError> {
        for (key, value) in &self.device.tags {
            if !valid_token(key) {
                return Err(invalid(
                    &format!("device.tags.{key}"),
                    "tag keys are 1-64 characters of A-Z a-z 0-9 . _ - / :",
                ));
            }
            if !valid_token(value) {
                return Err(invalid(
                    &format!("device.tags.{key}"),
                    format!("`{value}`: tag values are 1-64 characters of A-Z a-z 0-9 . _ - / :"),
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let listen =
            self.api.listen.parse::<ListenAddress>().map_err(|e| invalid("api.listen", e))?;
        let max_body_bytes = usize::try_from(self.api.max_body_bytes)
            .ok()
            .filter(|n| (1024..=1024 * 1024 * 1024).contains(n))
            .ok_or_else(|| invalid("api.max_body_bytes", "must be between 1024 and 1 GiB"))?;
        let max_concurrency = match self.api.max_concurrency {
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| (1..=1024).contains(n))
                .ok_or_else(|| invalid("api.max_concurrency", "must be between 1 and 1024"))?,
        };
        let seconds = self.stats.period_seconds;
        let period = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|p| (MIN_PERIOD..=MAX_PERIOD).contains(p))
            .ok_or_else(|| {
                invalid("stats.period_seconds", format!("{seconds} is not between 0.05 and 86400"))
            })?;
        if self.log.filter.trim().is_empty() {
            return Err(invalid("log.filter", "must not be empty (use \"info\")"));
        }
        if let Err(error) = self.log.filter.parse::<tracing_subscriber::filter::Targets>() {
            return Err(invalid(
                "log.filter",
                format!(
                    "{error}: use `level` or `target=level,…` (e.g. \"info,outpost_agent=debug\")"
                ),
            ));
        }
        self.queue.validate().map_err(|e| invalid("queue", e.to_string()))?;
        self.mqtt.validate().map_err(|e| invalid("mqtt", e.to_string()))?;
        self.update.validate().map_err(|e| invalid("update", e))?;
        self.sampling.validate().map_err(|e| invalid("sampling", e))?;
        Ok(AgentConfig {
            device: DeviceConfig { id: self.device.id, tags: self.device.tags },
            data_dir: self.data_dir,
            api: ApiConfig { listen, max_body_bytes, max_concurrency },
            stats: StatsConfig { period },
            log: LogConfig { filter: self.log.filter },
            mqtt: self.mqtt,
            queue: self.queue,
            update: self.update,
            sampling: self.sampling,
        })
    }
}

fn parse_table(text: &str, source_name: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
        source_name: source_name.to_string(),
        reason: e.to_string(),
    })
}

/// Overlays `over` onto `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(existing)), toml::Value::Table(overlay)) => {
                merge(existing, overlay);
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Applies `OUTPOST_AGENT__SECTION__KEY=value` overrides.
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (name, raw) in env {
        let Some(path) = name.strip_prefix(ENV_PREFIX) else { continue };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if keys.iter().any(String::is_empty) {
            return Err(invalid(&name, "empty key between `__` separators"));
        }
        let value = env_value(&raw);
        let Some((last, parents)) = keys.split_last() else { continue };
        let mut current = &mut *table;
        for key in parents {
            let entry = current
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            current = match entry {
                toml::Value::Table(next) => next,
                _ => {
                    return Err(invalid(
                        &keys.join("."),
                        format!("{name} sets a key below `{key}`, which is not a section"),
                    ));
                }
            };
        }
        current.insert(last.clone(), value);
    }
    Ok(())
}

/// An environment value as TOML (`8080`, `true`, `"text"`, `[1, 2]`), or as a plain string
/// when it is not valid TOML.
fn env_value(raw: &str) -> toml::Value {
    format!("value = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[device]\nid = \"pump-17\"\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn load_with(text: &str, pairs: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).expect("write");
        AgentConfig::load(Some(&path), env(pairs))
    }

    fn error_of(text: &str) -> String {
        AgentConfig::from_toml(text).expect_err("config accepted").to_string()
    }

    #[test]
    fn defaults_fill_everything_but_the_device_id() {
        let config = AgentConfig::from_toml(MINIMAL).expect("config");
        assert_eq!(config.device.id.as_str(), "pump-17");
        assert!(config.device.tags.is_empty());
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/outpost"));
        assert_eq!(config.api.listen, ListenAddress::Tcp("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(config.api.max_body_bytes, 4 * 1024 * 1024);
        assert!(config.api.max_concurrency >= 1);
        assert_eq!(config.stats.period, Duration::from_secs(60));
        assert_eq!(config.queue, QueueConfig::default());
        let missing = error_of("");
        assert!(missing.contains("device") && missing.contains("id"), "{missing}");
    }

    #[test]
    fn file_then_environment_override_the_defaults() {
        let text = "data_dir = \"/data\"\n[device]\nid = \"pump-17\"\n[device.tags]\nsite = \"berlin\"\n\
                    [api]\nlisten = \"unix:/run/outpost/agent.sock\"\nmax_concurrency = 3\n\
                    [stats]\nperiod_seconds = 0.5\n";
        let config = load_with(
            text,
            &[
                ("OUTPOST_AGENT__DEVICE__TAGS__HW", "rpi4"),
                ("OUTPOST_AGENT__API__MAX_BODY_BYTES", "65536"),
                ("OUTPOST_AGENT__DATA_DIR", "/override"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("config");
        assert_eq!(config.api.listen, ListenAddress::Unix("/run/outpost/agent.sock".into()));
        assert_eq!(config.api.max_concurrency, 3);
        assert_eq!(config.api.max_body_bytes, 65536);
        assert_eq!(config.stats.period, Duration::from_millis(500));
        assert_eq!(config.data_dir, PathBuf::from("/override"));
        let tags: Vec<_> = config.device.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(tags, ["hw=rpi4", "site=berlin"]);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("[device]\nid = \"a/b\"\n", "device.id"),
            ("[device]\nid = \"d\"\n[device.tags]\nsite = \"two words\"\n", "device.tags.site"),
            ("[device]\nid = \"d\"\n[api]\nlisten = \"localhost\"\n", "api.listen"),
            ("[device]\nid = \"d\"\n[api]\nlisten = \"unix:relative.sock\"\n", "api.listen"),
            ("[device]\nid = \"d\"\n[api]\nmax_body_bytes = \"big\"\n", "api.max_body_bytes"),
            ("[device]\nid = \"d\"\n[api]\nmax_body_bytes = 10\n", "api.max_body_bytes"),
            ("[device]\nid = \"d\"\n[api]\nmax_concurrency = 0\n", "api.max_concurrency"),
            ("[device]\nid = \"d\"\n[stats]\nperiod_seconds = 0\n", "stats.period_seconds"),
            ("[device]\nid = \"d\"\n[stats]\nperiod_seconds = -1.5\n", "stats.period_seconds"),
            ("[device]\nid = \"d\"\n[api]\nlisten_on = \"x\"\n", "api"),
            ("[device]\nid = \"d\"\n[queue]\nmax_windows = 0\n", "queue"),
        ] {
            let error = error_of(text);
            assert!(error.contains(&format!("`{key}")), "{text:?}: {error}");
        }
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let error = load_with("[device\nid = 1", &[]).expect_err("bad toml").to_string();
        assert!(error.contains("agent.toml is not valid TOML"), "{error}");
    }

    #[test]
    fn environment_values_are_toml_or_plain_strings() {
        assert_eq!(env_value("42"), toml::Value::Integer(42));
        assert_eq!(env_value("\"0042\""), toml::Value::String("0042".into()));
        assert_eq!(env_value("unix:/run/a.sock"), toml::Value::String("unix:/run/a.sock".into()));
        let error = load_with(MINIMAL, &[("OUTPOST_AGENT__DATA_DIR__X", "1")])
            .expect_err("data_dir is not a section")
            .to_string();
        assert!(error.contains("data_dir.x"), "{error}");
    }

    #[test]
    fn the_embedded_default_parses() {
        parse_table(DEFAULT_CONFIG, "default").expect("default config is valid TOML");
    }
}
