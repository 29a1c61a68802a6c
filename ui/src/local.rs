//! Local mode: a control server inside the console process, for a single operator. It is the
//! same `outpost serve` (the control crate's [`outpost_control::server::start`]) with SQLite
//! and the embedded MQTT broker, its API on a loopback port. The console connects to it with
//! the token of a local admin user it creates on first start and keeps in the OS keyring
//! (without a keyring, a fresh local admin is created at each start).
//!
//! Configuration: the control's defaults (`control/control.example.toml`), then the usual
//! `OUTPOST__…` environment overrides; the data folder defaults to the app's data folder and the
//! API listens on loopback, on a free port unless `OUTPOST__API__LISTEN` names one.

use std::path::{Path, PathBuf};

use outpost_control::server::{RunningServer, start};
use outpost_control::store::users::UserRole;

use crate::error::{ConsoleError, ErrorKind};
use crate::settings;

/// A running embedded control and the token of its local admin.
#[derive(Debug)]
pub struct LocalControl {
    pub server: RunningServer,
    pub token: String,
    pub data_dir: PathBuf,
}

fn local_error(message: String) -> ConsoleError {
    ConsoleError::new(
        ErrorKind::Local,
        message,
        "Another `outpost serve` may use the same data folder or broker port: stop it, or set \
         OUTPOST__DATA_DIR / OUTPOST__BROKER__EMBEDDED__LISTEN before starting the console.",
    )
}

/// The keyring entry of the local admin's token, per data folder.
fn keyring_key(data_dir: &Path) -> String {
    format!("local:{}", data_dir.display())
}

/// Starts the embedded control with its data in `default_data_dir` (unless the environment
/// names another) and returns it with a working admin token.
pub async fn start_local(default_data_dir: &Path) -> Result<LocalControl, ConsoleError> {
    start_local_with(default_data_dir, &[]).await
}

/// [`start_local`] with `overrides` (`OUTPOST__…` names) applied after the environment.
pub async fn start_local_with(
    default_data_dir: &Path,
    overrides: &[(String, String)],
) -> Result<LocalControl, ConsoleError> {
    let mut environment: Vec<(String, String)> = std::env::vars().collect();
    environment.extend(overrides.iter().cloned());
    let mut config = outpost_control::config::load_from(None, &environment)
        .map_err(|error| local_error(format!("the local control's configuration: {error}")))?;
    let data_dir_from_env = environment.iter().any(|(name, _)| name == "OUTPOST__DATA_DIR");
    if !data_dir_from_env {
        config.data_dir = default_data_dir.to_path_buf();
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|error| {
        local_error(format!("cannot create the data folder {}: {error}", config.data_dir.display()))
    })?;
    // Loopback only, and a free port unless one is asked for.
    let listen_from_env = environment.iter().any(|(name, _)| name == "OUTPOST__API__LISTEN");
    if !listen_from_env || !config.api.listen.ip().is_loopback() {
        config.api.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    }
    config.api.tls = None;
    let data_dir = config.data_dir.clone();
    let server = start(config)
        .await
        .map_err(|error| local_error(format!("the local control did not start: {error}")))?;
    let token = local_token(&server, &data_dir).await?;
    Ok(LocalControl { server, token, data_dir })
}

/// The remembered local admin token when the store still knows it, else a new local admin.
async fn local_token(server: &RunningServer, data_dir: &Path) -> Result<String, ConsoleError> {
    let key = keyring_key(data_dir);
    if let Some(token) = settings::load_token(&key)
        && let Ok(Some(_)) = server.store().user_for_token(&token).await
    {
        return Ok(token);
    }
    let name = format!("console-{}", time::OffsetDateTime::now_utc().unix_timestamp());
    let token = server
        .store()
        .create_user(&name, UserRole::Admin, "outpost-console")
        .await
        .map_err(|error| local_error(format!("cannot create the local admin user: {error}")))?;
    if let Err(error) = settings::save_token(&key, &token) {
        tracing::warn!("local admin token not remembered: {}", error.message);
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_mode_runs_a_control_the_console_can_call() {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let overrides = [(
            "OUTPOST__BROKER__EMBEDDED_LISTEN".to_string(),
            format!("127.0.0.1:{}", outpost_tests::broker::free_port().expect("port")),
        )];
        let local = runtime
            .block_on(start_local_with(dir.path(), &overrides))
            .expect("the local control starts");
        assert!(local.server.api_address.ip().is_loopback());
        assert_ne!(local.server.api_address.port(), 8080, "a free port, not the default");
        assert_eq!(local.data_dir, dir.path());
        let url = local.server.api_url.to_string();
        let token = local.token.clone();
        let me = std::thread::spawn(move || {
            let client = outpost_control::api::client::ApiClient::new(&url, Some(token), None)
                .expect("client");
            client.get_json("/v1/whoami", &[]).expect("whoami")
        })
        .join()
        .expect("whoami thread");
        assert_eq!(me["role"], "admin", "{me}");
        assert!(me["name"].as_str().is_some_and(|n| n.starts_with("console-")), "{me}");
        runtime.block_on(local.server.shutdown());
    }
}
