//! Mosquitto run from a complete configuration written elsewhere — the one `outpost
//! broker-config mosquitto` generates (TLS listener, required client certificates, identity as
//! user name, ACL file) — so a test exercises exactly what an operator deploys.
//!
//! [`ConfiguredMosquitto::start`] keeps every line of the configuration except `listener`,
//! which it points at a free loopback port, and adds logging (and `user root` when the tests
//! run as root, so mosquitto can still read the key files). Dropped, the broker is killed.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use crate::broker::{find_mosquitto, free_port, spawn_mosquitto};

/// Why the broker could not be started.
#[derive(Debug)]
pub struct ConfiguredMosquittoError(String);

impl fmt::Display for ConfiguredMosquittoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfiguredMosquittoError {}

fn fail(message: impl Into<String>) -> ConfiguredMosquittoError {
    ConfiguredMosquittoError(message.into())
}

/// A mosquitto process running a given configuration on a free loopback port.
#[derive(Debug)]
pub struct ConfiguredMosquitto {
    directory: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

/// `config` with each `listener …` line replaced by `listener <port> 127.0.0.1`, plus the
/// lines a test needs (logs to stderr, connection messages, `user root` as root).
pub fn for_test_port(config: &str, port: u16, as_root: bool) -> String {
    let mut lines: Vec<String> = config
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("listener ") {
                format!("listener {port} 127.0.0.1")
            } else {
                line.to_string()
            }
        })
        .collect();
    lines.extend(
        ["log_dest stderr", "log_type all", "connection_messages true", "persistence false"]
            .map(str::to_string),
    );
    if as_root {
        lines.push("user root".into());
    }
    lines.join("\n") + "\n"
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

impl ConfiguredMosquitto {
    /// Starts mosquitto with the configuration file `config` (its other files are named in it
    /// by absolute paths) and waits until it accepts connections.
    pub fn start(config: &Path) -> Result<ConfiguredMosquitto, ConfiguredMosquittoError> {
        let text = fs::read_to_string(config)
            .map_err(|error| fail(format!("cannot read {}: {error}", config.display())))?;
        let directory = tempfile::Builder::new()
            .prefix("outpost-mosquitto-tls-")
            .tempdir()
            .map_err(|error| fail(format!("cannot create a temporary directory: {error}")))?;
        let binary = find_mosquitto().map_err(|error| fail(error.to_string()))?;
        let as_root = running_as_root();
        let path = directory.path().join("mosquitto.conf");
        let mut broker = ConfiguredMosquitto { directory, port: 0, child: None };
        let mut last_error = None;
        for _ in 0..3 {
            broker.port = free_port().map_err(|error| fail(error.to_string()))?;
            fs::write(&path, for_test_port(&text, broker.port, as_root))
                .map_err(|error| fail(format!("cannot write {}: {error}", path.display())))?;
            match broker.spawn(&binary, &path) {
                Ok(()) => return Ok(broker),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| fail("mosquitto did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// What mosquitto logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.directory.path().join("mosquitto.log")
    }

    fn spawn(&mut self, binary: &Path, config: &Path) -> Result<(), ConfiguredMosquittoError> {
        let child =
            spawn_mosquitto(binary, config, self.directory.path(), &self.log_path(), self.port)
                .map_err(fail)?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for ConfiguredMosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_listener_moves_and_test_lines_are_added() {
        let config = "allow_anonymous false\nlistener 8883\nrequire_certificate true\n";
        let rewritten = super::for_test_port(config, 40000, true);
        assert_eq!(
            rewritten,
            "allow_anonymous false\nlistener 40000 127.0.0.1\nrequire_certificate true\n\
             log_dest stderr\nlog_type all\nconnection_messages true\npersistence false\n\
             user root\n"
        );
    }
}
