//! The identity of one `outpost serve` instance: an exclusive lock on its data directory and
//! the MQTT session it holds on the broker.
//!
//! Several instances share one PostgreSQL database and one broker and split ingest through the
//! shared subscription. Each needs a client id of its own that survives restarts, because the
//! broker keeps a persistent session under that id: the windows it sent the instance but never
//! saw acknowledged, and (Mosquitto 2.0) its share of new windows while the instance is down,
//! wait there until the instance reconnects with the same id. So:
//!
//! - `broker.client_id` set: that id, persistent session (the operator keeps it unique).
//! - otherwise, with an external broker: `outpost-ctl-<instance id>`, persistent session, where
//!   the instance id is made once and kept in `<data_dir>/instance-id`. A restarted instance
//!   finds its session again; a second instance needs a data directory of its own.
//! - otherwise (the embedded broker, which lives and dies with this process): a random id and
//!   a clean session.
//!
//! [`lock_data_dir`] takes an exclusive lock on `<data_dir>/instance.lock` for the life of the
//! server, so two instances started on one data directory (and so under one client id, which
//! would make the broker disconnect them in turn) fail at start with a clear error instead.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::ServerError;
use crate::config::{BrokerConfig, BrokerTarget};

/// The file holding the instance id in the data directory.
pub const INSTANCE_ID_FILE: &str = "instance-id";
/// The file locked while an instance runs on the data directory.
pub const LOCK_FILE: &str = "instance.lock";
/// Hex digits of a generated instance id (40 bits: the client id stays within the 23
/// characters every MQTT 3.1.1 broker must accept).
const INSTANCE_ID_HEX: usize = 10;

/// How the control's MQTT client identifies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttSession {
    pub client_id: String,
    /// `clean_session = false`: the broker keeps subscriptions and unacknowledged messages.
    pub persistent: bool,
}

/// Held while the server runs; dropping it releases the data directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

fn instance_error(path: &Path, reason: impl Into<String>) -> ServerError {
    ServerError::Instance { path: path.display().to_string(), reason: reason.into() }
}

/// Locks `data_dir` for this process (creating the directory), or says which instance holds it.
pub fn lock_data_dir(data_dir: &Path) -> Result<DataDirLock, ServerError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|error| instance_error(data_dir, format!("cannot create it: {error}")))?;
    let path = data_dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|error| instance_error(&path, format!("cannot open it: {error}")))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(instance_error(
                &path,
                format!(
                    "another `outpost serve` (process {}) runs on this data directory; give \
                     each instance a data_dir of its own",
                    holder.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(instance_error(&path, format!("cannot lock it: {error}")));
        }
    }
    // The holder's process id, for the message above; the lock is what counts.
    let _ = file.set_len(0);
    let _ = write!(file, "{}", std::process::id());
    Ok(DataDirLock { _file: file, path })
}

/// The instance id kept in `data_dir`, made on first use.
pub fn instance_id(data_dir: &Path) -> Result<String, ServerError> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty()
                || id.len() > 64
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(instance_error(
                    &path,
                    "is damaged: expected letters, digits and `-` (delete it to make a new id; \
                     the broker then starts a new session for this instance)",
                ));
            }
            Ok(id.to_string())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = super::random_suffix()[..INSTANCE_ID_HEX].to_string();
            // Written aside and renamed, so a crash never leaves half an id.
            let partial = data_dir.join(format!("{INSTANCE_ID_FILE}.partial"));
            std::fs::write(&partial, format!("{id}\n"))
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|error| instance_error(&path, format!("cannot write it: {error}")))?;
            Ok(id)
        }
        Err(error) => Err(instance_error(&path, format!("cannot read it: {error}"))),
    }
}

/// The MQTT session of this instance (see the module docs).
pub fn mqtt_session(config: &BrokerConfig, data_dir: &Path) -> Result<MqttSession, ServerError> {
    if let Some(id) = &config.client_id {
        return Ok(MqttSession { client_id: id.clone(), persistent: true });
    }
    Ok(match config.target {
        BrokerTarget::External(_) => MqttSession {
            client_id: format!("outpost-ctl-{}", instance_id(data_dir)?),
            persistent: true,
        },
        BrokerTarget::Embedded { .. } => MqttSession {
            client_id: format!("outpost-control-{}", super::random_suffix()),
            persistent: false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ExternalBroker;

    fn broker(target: BrokerTarget, client_id: Option<&str>) -> BrokerConfig {
        BrokerConfig {
            target,
            client_id: client_id.map(str::to_string),
            keep_alive: std::time::Duration::from_secs(30),
        }
    }

    fn external() -> BrokerTarget {
        BrokerTarget::External(ExternalBroker {
            host: "127.0.0.1".into(),
            port: 1883,
            tls: None,
            credentials: None,
        })
    }

    #[test]
    fn the_client_id_is_configured_or_kept_in_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configured = mqtt_session(&broker(external(), Some("c1")), dir.path()).expect("id");
        assert_eq!(configured, MqttSession { client_id: "c1".into(), persistent: true });

        let first = mqtt_session(&broker(external(), None), dir.path()).expect("id");
        assert!(first.persistent);
        assert!(first.client_id.starts_with("outpost-ctl-"), "{}", first.client_id);
        assert!(first.client_id.len() <= 23, "{}", first.client_id);
        let again = mqtt_session(&broker(external(), None), dir.path()).expect("id");
        assert_eq!(first, again, "the same id after a restart");
        let other_dir = tempfile::tempdir().expect("tempdir");
        let other = mqtt_session(&broker(external(), None), other_dir.path()).expect("id");
        assert_ne!(first.client_id, other.client_id, "another instance, another id");

        let embedded = BrokerTarget::Embedded { listen: "127.0.0.1:0".parse().expect("addr") };
        let session = mqtt_session(&broker(embedded, None), dir.path()).expect("id");
        assert!(!session.persistent);

        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "not/an id").expect("write");
        let error = mqtt_session(&broker(external(), None), dir.path()).expect_err("damaged");
        assert!(error.to_string().contains("is damaged"), "{error}");
    }

    #[test]
    fn a_data_dir_runs_one_instance_at_a_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = lock_data_dir(dir.path()).expect("first lock");
        let error = lock_data_dir(dir.path()).expect_err("second instance");
        assert!(error.to_string().contains("another `outpost serve`"), "{error}");
        drop(lock);
        lock_data_dir(dir.path()).expect("free again");
    }
}
