//! `outpost serve`: the control server's shell. It wires the parts together and owns their
//! lifetimes: the database ([`crate::store`]), the broker (embedded or external,
//! [`broker`]), the MQTT subscriber ([`mqtt`]), the REST API ([`crate::api`]), the drift
//! monitor ([`drift_monitor`]) and the rollout driver ([`crate::rollout::driver`]).
//!
//! [`start`] returns a [`RunningServer`] once everything accepts work (the tests start servers
//! this way, on port 0); [`run`] is the command: start, wait for Ctrl-C or SIGTERM, shut down.

pub mod artifacts;
pub mod assign;
pub mod broker;
pub mod drift_monitor;
pub mod ingest;
pub mod instance;
pub mod metrics;
pub mod mqtt;
pub mod samples;
pub mod supervise;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use outpost_shared::Verified;
use outpost_shared::trust::TrustRoot;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{ApiState, router};
use crate::config::{BrokerTarget, ServerConfig};
use crate::store::{Store, StoreError, StoreOptions};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen for the {what} on {address}: {source}")]
    Bind { what: &'static str, address: SocketAddr, source: std::io::Error },
    #[error("MQTT broker: {0}")]
    Broker(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("trust root {path}: {reason}")]
    TrustRoot { path: String, reason: String },
    #[error("the API server failed: {0}")]
    Api(std::io::Error),
    #[error("instance identity {path}: {reason}")]
    Instance { path: String, reason: String },
}

/// A started server; [`RunningServer::shutdown`] stops it.
#[derive(Debug)]
pub struct RunningServer {
    /// Where the API listens (the real port when port 0 was configured).
    pub api_address: SocketAddr,
    /// `http://…` or `https://…` of the API.
    pub api_url: String,
    /// Host and port of the broker the control is connected to (the embedded one's real port).
    pub broker_host: String,
    pub broker_port: u16,
    store: Store,
    metrics: Arc<metrics::Metrics>,
    stop: watch::Sender<bool>,
    api_handle: axum_server::Handle<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    /// The MQTT client id and session kind this instance uses.
    pub mqtt_session: instance::MqttSession,
    /// Released when the server is dropped.
    _data_dir_lock: instance::DataDirLock,
}

impl RunningServer {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// Stops the API (letting requests in flight finish) and the MQTT client, then closes the
    /// database. The embedded broker, if any, lives on until the process ends.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.api_handle.graceful_shutdown(Some(Duration::from_secs(5)));
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
    }
}

/// Reads and verifies the configured trust root.
fn load_trust_root(config: &ServerConfig) -> Result<Option<Verified<TrustRoot>>, ServerError> {
    let Some(path) = &config.trust_root else {
        tracing::warn!("no trust.root configured: the registry refuses every push");
        return Ok(None);
    };
    let error =
        |reason: String| ServerError::TrustRoot { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let root = outpost_shared::trust::verify_initial(&bytes, time::OffsetDateTime::now_utc())
        .map_err(|e| error(e.to_string()))?;
    tracing::info!(path = %path.display(), version = root.version, "trust root loaded");
    Ok(Some(root))
}

/// Starts every part and returns when the API and the MQTT client are running.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    tls::install_crypto_provider();
    // Counts and logs every panic; `outpost serve` installs it first, without the default
    // report, so here it only matters when the server is started in-process.
    crate::panics::install_hook(true);
    let data_dir_lock = instance::lock_data_dir(&config.data_dir)?;
    let trust_root = load_trust_root(&config)?;
    let url = match &config.database.url {
        Some(url) => url.clone(),
        None => Store::sqlite_url_in(&config.data_dir)?,
    };
    let store = Store::connect(&StoreOptions {
        url,
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
    })
    .await?;
    tracing::info!(backend = store.backend().as_str(), "database ready, migrations applied");

    let endpoint = match mqtt::external_endpoint(&config.broker) {
        Some(endpoint) => endpoint,
        None => {
            let BrokerTarget::Embedded { listen } = config.broker.target else {
                return Err(ServerError::Broker("no broker configured".into()));
            };
            let address = tokio::task::spawn_blocking(move || broker::start_embedded(listen))
                .await
                .map_err(|e| ServerError::Broker(format!("broker start failed: {e}")))??;
            mqtt::BrokerEndpoint::embedded(address)
        }
    };
    let mqtt_session = instance::mqtt_session(&config.broker, &config.data_dir)?;
    tracing::info!(client_id = %mqtt_session.client_id, persistent = mqtt_session.persistent,
        "MQTT session");
    let options = mqtt::mqtt_options(&endpoint, &config.broker, &mqtt_session)?;

    let metrics = Arc::new(metrics::Metrics::default());
    let (stop, stop_receiver) = watch::channel(false);
    let mut tasks = Vec::new();
    let ingest = ingest::Ingest::new(store.clone(), config.ingest.clone());
    let (mqtt_client, event_loop) = mqtt::client(options);
    // Every background task is supervised: a panic restarts it after a backoff. The MQTT
    // event loop outlives a panicking subscriber, so its session and queue carry over.
    let event_loop = Arc::new(tokio::sync::Mutex::new(event_loop));
    let handlers = mqtt::Handlers::new(store.clone(), ingest.clone(), metrics.clone());
    let shared_subscriptions = endpoint.external.is_some();
    tasks.push(supervise::supervise("mqtt_subscriber", metrics.clone(), stop_receiver.clone(), {
        let (client, stop) = (mqtt_client.clone(), stop_receiver.clone());
        move || {
            let (client, handlers, stop) = (client.clone(), handlers.clone(), stop.clone());
            let event_loop = event_loop.clone();
            async move {
                let mut event_loop = event_loop.lock().await;
                mqtt::run_subscriber(client, &mut event_loop, shared_subscriptions, handlers, stop)
                    .await;
            }
        }
    }));
    let interval = config.ingest.maintenance_interval;
    tasks.push(supervise::supervise("maintenance", metrics.clone(), stop_receiver.clone(), {
        let stop = stop_receiver.clone();
        move || run_maintenance(ingest.clone(), interval, stop.clone())
    }));
    let rollout_wake = Arc::new(tokio::sync::Notify::new());
    let driver_config = crate::rollout::driver::DriverConfig {
        tick: config.rollouts.tick,
        lease: config.rollouts.lease,
        owner: instance::instance_id(&config.data_dir)?,
    };
    tasks.push(supervise::supervise("rollout_driver", metrics.clone(), stop_receiver.clone(), {
        let (store, client) = (store.clone(), mqtt_client.clone());
        let (wake, stop) = (rollout_wake.clone(), stop_receiver.clone());
        move || {
            let driver = crate::rollout::driver::Driver::new(
                store.clone(),
                Some(client.clone()),
                driver_config.clone(),
            );
            driver.run(wake.clone(), stop.clone())
        }
    }));
    let audit_log = Arc::new(crate::audit::log::AuditLog::new(store.clone(), &config.data_dir));
    tasks.push(supervise::supervise("audit_log", metrics.clone(), stop_receiver.clone(), {
        let (log, audit_config, stop) =
            (audit_log.clone(), config.audit.clone(), stop_receiver.clone());
        move || crate::audit::log::run(log.clone(), audit_config.clone(), stop.clone())
    }));
    tasks.push(supervise::supervise("samples", metrics.clone(), stop_receiver.clone(), {
        let (store, client, stop) = (store.clone(), mqtt_client.clone(), stop_receiver.clone());
        let interval = config.drift.evaluate_interval;
        move || samples::run(store.clone(), Some(client.clone()), interval, stop.clone())
    }));
    tasks.push(supervise::supervise("drift_monitor", metrics.clone(), stop_receiver.clone(), {
        let (store, client, stop) = (store.clone(), mqtt_client.clone(), stop_receiver.clone());
        let drift_config = config.drift.clone();
        move || {
            drift_monitor::run(
                store.clone(),
                Some(client.clone()),
                drift_config.clone(),
                stop.clone(),
            )
        }
    }));

    let denials = Arc::new(crate::api::denials::Denials::new(config.api.denials.clone()));
    tasks.push(supervise::supervise("denial_audit", metrics.clone(), stop_receiver.clone(), {
        let (denials, store, stop) = (denials.clone(), store.clone(), stop_receiver.clone());
        move || crate::api::denials::run_writer(denials.clone(), store.clone(), stop.clone())
    }));

    let state = ApiState {
        store: store.clone(),
        metrics: metrics.clone(),
        trust_root: trust_root.map(Arc::new),
        max_bundle_bytes: config.max_bundle_bytes,
        mqtt: Some(mqtt_client),
        fleet_ca: Arc::new(crate::ca::FleetCaCell::new(&config.data_dir)),
        audit: audit_log,
        rollout_wake,
        denials,
        tokens: config.api.tokens,
    };
    let listener = std::net::TcpListener::bind(config.api.listen)
        .map_err(|source| ServerError::Bind { what: "API", address: config.api.listen, source })?;
    let api_address = listener.local_addr().map_err(|source| ServerError::Bind {
        what: "API",
        address: config.api.listen,
        source,
    })?;
    let api_handle = axum_server::Handle::new();
    // The client's address is what denied requests are limited and recorded by.
    let service = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let scheme = match &config.api.tls {
        Some(files) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(
                tls::api_server_config(files)?,
            ));
            let server = axum_server::from_tcp_rustls(listener, tls)
                .map_err(|source| ServerError::Bind { what: "API", address: api_address, source })?
                .handle(api_handle.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(error) = server.serve(service).await {
                    tracing::error!(error = %ServerError::Api(error), "API stopped");
                }
            }));
            "https"
        }
        None => {
            let server = axum_server::from_tcp(listener)
                .map_err(|source| ServerError::Bind { what: "API", address: api_address, source })?
                .handle(api_handle.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(error) = server.serve(service).await {
                    tracing::error!(error = %ServerError::Api(error), "API stopped");
                }
            }));
            "http"
        }
    };
    let api_url = format!("{scheme}://{api_address}");
    tracing::info!(%api_url, broker = %format!("{}:{}", endpoint.host, endpoint.port), "outpost serve running");
    Ok(RunningServer {
        api_address,
        api_url,
        broker_host: endpoint.host,
        broker_port: endpoint.port,
        store,
        metrics,
        stop,
        api_handle,
        tasks,
        mqtt_session,
        _data_dir_lock: data_dir_lock,
    })
}

/// Downsampling and retention of the aggregates: once at start, then every `interval`.
async fn run_maintenance(
    ingest: ingest::Ingest,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match ingest.maintain().await {
            Ok(report) => tracing::debug!(?report, "aggregate maintenance done"),
            Err(error) => tracing::warn!(%error, "aggregate maintenance failed; retried later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}

/// `outpost serve`: runs until Ctrl-C or SIGTERM.
pub async fn run(config: ServerConfig) -> Result<(), ServerError> {
    let server = start(config).await?;
    println!(
        "outpost serve: API on {}, MQTT broker {}:{}",
        server.api_url, server.broker_host, server.broker_port
    );
    wait_for_stop_signal().await;
    tracing::info!("stopping");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// 64 random bits in hex, for client ids.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // Uniqueness, not secrecy, is what matters here; the process id and time will do.
        let fallback = u64::from(std::process::id()) ^ crate::store::now_ms().unsigned_abs();
        bytes = fallback.to_le_bytes();
    }
    hex::encode(bytes)
}
