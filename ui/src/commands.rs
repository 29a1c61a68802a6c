//! The commands the web frontend may invoke, and the types they take and return. Each is thin:
//! it checks its input, calls the control server through the control crate's API client
//! ([`outpost_control::api::client::ApiClient`], blocking, so on a blocking thread) and hands
//! the server's JSON back, or a [`ConsoleError`]. Every command is also listed in
//! [`crate::specta_builder`], which registers it and generates its TypeScript binding.
//!
//! They live in their own module because `#[tauri::command]` defines helper macros next to each
//! command, which clash when a `pub` command sits at the crate root.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use outpost_control::api::client::{ApiClient, ClientError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tauri::{PackageInfo, State};

use crate::error::{ConsoleError, ErrorKind};
use crate::local::{LocalControl, start_local};
use crate::settings::{self, KeyringStatus, Remembered};

/// The application's name and version as the running app knows them: the name is
/// `productName` from `tauri.conf.json`, the version is the crate's (the workspace version),
/// because the config deliberately sets none of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, specta::Type)]
pub struct AppInfo {
    /// Human-readable product name, e.g. "Outpost Console".
    pub name: String,
    /// Semantic version of this build.
    pub version: String,
}

impl AppInfo {
    /// Reads the name and version out of Tauri's package info.
    #[must_use]
    pub fn from_package(package: &PackageInfo) -> Self {
        Self { name: package.name.clone(), version: package.version.to_string() }
    }
}

/// How the console is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, specta::Type)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// To a control server elsewhere, with a URL and token.
    Remote,
    /// To the embedded control this console started.
    Local,
}

/// The open connection: where, as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, specta::Type)]
pub struct Session {
    pub url: String,
    pub user: String,
    /// `admin`, `operator`, `approver` or `auditor`.
    pub role: String,
    pub mode: Mode,
    /// Whether the token is kept in the OS keyring for the next start.
    pub token_remembered: bool,
}

/// What the Connect page shows before connecting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, specta::Type)]
pub struct ConnectionInfo {
    pub remembered: Remembered,
    /// A token for the remembered URL is in the keyring.
    pub has_remembered_token: bool,
    pub keyring: KeyringStatus,
    pub session: Option<Session>,
    /// Connect to this URL with this token at start (set by `cargo xtask demo` through
    /// `OUTPOST_CONSOLE_URL` and `OUTPOST_CONSOLE_TOKEN`).
    pub preset_url: Option<String>,
}

/// A connection request from the Connect page.
#[derive(Debug, Clone, Deserialize, specta::Type)]
pub struct ConnectRequest {
    pub url: String,
    /// `None` or empty: use the token remembered for this URL.
    pub token: Option<String>,
    /// PEM file of the CA of the server's HTTPS certificate.
    pub ca_file: Option<String>,
    /// Keep the URL in the settings and the token in the OS keyring.
    pub remember: bool,
}

struct Connection {
    client: Arc<ApiClient>,
    session: Session,
}

/// The app's own folders.
#[derive(Debug, Clone, Default)]
pub struct Folders {
    pub config: Option<PathBuf>,
    pub data: Option<PathBuf>,
}

/// What the commands share: the app's identity and folders, the open connection and the
/// local control, if started. Managed by the app from its setup hook ([`crate::configure`]).
pub struct ConsoleState {
    info: AppInfo,
    /// The app's config folder (the settings file) and data folder (local mode), set by the
    /// setup hook; unset (no settings, no local mode) when the platform gives none.
    folders: std::sync::OnceLock<Folders>,
    connection: Mutex<Option<Connection>>,
    local: tokio::sync::Mutex<Option<LocalControl>>,
}

impl std::fmt::Debug for ConsoleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleState").finish_non_exhaustive()
    }
}

impl ConsoleState {
    #[must_use]
    pub fn new(info: AppInfo) -> Self {
        ConsoleState {
            info,
            folders: std::sync::OnceLock::new(),
            connection: Mutex::new(None),
            local: tokio::sync::Mutex::new(None),
        }
    }

    /// Sets the app's folders (once; later calls change nothing).
    pub fn set_folders(&self, folders: Folders) {
        let _ = self.folders.set(folders);
    }

    fn settings_path(&self) -> Option<PathBuf> {
        self.folders.get()?.config.as_ref().map(|dir| dir.join("settings.json"))
    }

    fn data_dir(&self) -> Option<&PathBuf> {
        self.folders.get()?.data.as_ref()
    }

    fn client(&self) -> Result<Arc<ApiClient>, ConsoleError> {
        let guard = self.connection.lock().map_err(|_| poisoned())?;
        guard.as_ref().map(|c| c.client.clone()).ok_or_else(ConsoleError::not_connected)
    }

    fn session(&self) -> Option<Session> {
        self.connection.lock().ok().and_then(|guard| guard.as_ref().map(|c| c.session.clone()))
    }

    fn set(&self, connection: Option<Connection>) -> Result<(), ConsoleError> {
        *self.connection.lock().map_err(|_| poisoned())? = connection;
        Ok(())
    }
}

fn poisoned() -> ConsoleError {
    ConsoleError::new(
        ErrorKind::Server,
        "the console's connection state is broken after an earlier failure",
        "Restart the console.",
    )
}

/// Runs a blocking API call off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, ConsoleError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tauri::async_runtime::spawn_blocking(job).await.map_err(|error| {
        ConsoleError::new(
            ErrorKind::Server,
            format!("the request was interrupted: {error}"),
            "Try again; if it repeats, restart the console.",
        )
    })?
}

/// Calls the API with the open connection's client.
async fn api<T: Send + 'static>(
    state: &State<'_, ConsoleState>,
    call: impl FnOnce(&ApiClient) -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ConsoleError> {
    let client = state.client()?;
    blocking(move || call(&client).map_err(ConsoleError::from)).await
}

/// Adds a query parameter when it has a value.
fn push(query: &mut Vec<(&'static str, String)>, name: &'static str, value: Option<String>) {
    if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
        query.push((name, value.trim().to_string()));
    }
}

fn push_ms(query: &mut Vec<(&'static str, String)>, name: &'static str, value: Option<f64>) {
    if let Some(value) = value.filter(|v| v.is_finite()) {
        query.push((name, format!("{}", value.round() as i64)));
    }
}

/// A path segment: refuses empty text and slashes, so a value cannot reach another route.
fn segment(what: &str, value: &str) -> Result<String, ConsoleError> {
    let value = value.trim();
    if value.is_empty() || value.contains('/') || value.contains('?') || value.contains('#') {
        return Err(ConsoleError::invalid(
            format!("`{value}` is not a valid {what}"),
            format!("Pick the {what} from the list instead of typing it."),
        ));
    }
    Ok(value.to_string())
}

/// Command `app_info`: the name and version of the running console.
#[tauri::command]
#[specta::specta]
#[must_use]
pub fn app_info(state: State<'_, ConsoleState>) -> AppInfo {
    state.info.clone()
}

/// What the Connect page needs: remembered URL, keyring availability, the open session.
#[tauri::command]
#[specta::specta]
pub async fn connection_info(
    state: State<'_, ConsoleState>,
) -> Result<ConnectionInfo, ConsoleError> {
    let remembered = state.settings_path().map(|path| settings::load(&path)).unwrap_or_default();
    let session = state.session();
    blocking(move || {
        let has_remembered_token =
            remembered.url.as_deref().and_then(settings::load_token).is_some();
        Ok(ConnectionInfo {
            remembered,
            has_remembered_token,
            keyring: settings::keyring_status(),
            session,
            preset_url: std::env::var("OUTPOST_CONSOLE_URL").ok().filter(|u| !u.is_empty()),
        })
    })
    .await
}

fn whoami(client: &ApiClient) -> Result<(String, String), ConsoleError> {
    let me = client.get_json("/v1/whoami", &[])?;
    let field = |name: &str| me.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    Ok((field("name"), field("role")))
}

/// Connects to a control server with a token (typed, remembered, or preset by the
/// environment), checks it with `/v1/whoami`, and remembers it when asked.
#[tauri::command]
#[specta::specta]
pub async fn connect(
    state: State<'_, ConsoleState>,
    request: ConnectRequest,
) -> Result<Session, ConsoleError> {
    let url = request.url.trim().trim_end_matches('/').to_string();
    if url.is_empty() {
        return Err(ConsoleError::invalid(
            "no server URL given",
            "Type the control server's URL, e.g. http://127.0.0.1:8443.",
        ));
    }
    let path = state.settings_path();
    let session = blocking(move || {
        let typed = request.token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        let preset = std::env::var("OUTPOST_CONSOLE_URL")
            .ok()
            .filter(|preset| preset.trim_end_matches('/') == url)
            .and_then(|_| std::env::var("OUTPOST_CONSOLE_TOKEN").ok());
        let token =
            typed.clone().or_else(|| settings::load_token(&url)).or(preset).ok_or_else(|| {
                ConsoleError::invalid(
                    "no token given, and none is remembered for this server",
                    "Paste the token `outpost users add` printed for you.",
                )
            })?;
        let ca_file = request.ca_file.filter(|f| !f.trim().is_empty());
        let client = ApiClient::new(
            &url,
            Some(token.clone()),
            ca_file.as_deref().map(std::path::Path::new),
        )?;
        let (user, role) = whoami(&client)?;
        let mut token_remembered = false;
        if request.remember {
            if let Some(path) = &path {
                settings::save(path, &Remembered { url: Some(url.clone()), ca_file })?;
            }
            settings::save_token(&url, &token)?;
            token_remembered = true;
        } else if typed.is_none() {
            token_remembered = true;
        }
        Ok(Connection {
            client: Arc::new(client),
            session: Session { url, user, role, mode: Mode::Remote, token_remembered },
        })
    })
    .await?;
    let answer = session.session.clone();
    state.set(Some(session))?;
    Ok(answer)
}

/// Starts (once per console run) the embedded control and connects to it.
#[tauri::command]
#[specta::specta]
pub async fn connect_local(state: State<'_, ConsoleState>) -> Result<Session, ConsoleError> {
    let data_dir = state
        .data_dir()
        .ok_or_else(|| ConsoleError::io("this platform gives the console no data folder"))?
        .join("local-control");
    let (url, token) = {
        let mut local = state.local.lock().await;
        if local.is_none() {
            *local = Some(start_local(&data_dir).await?);
        }
        let control = local.as_ref().ok_or_else(poisoned)?;
        (control.server.api_url.to_string(), control.token.clone())
    };
    let connection = blocking(move || {
        let client = ApiClient::new(&url, Some(token), None)?;
        let (user, role) = whoami(&client)?;
        Ok(Connection {
            client: Arc::new(client),
            session: Session { url, user, role, mode: Mode::Local, token_remembered: true },
        })
    })
    .await?;
    let session = connection.session.clone();
    state.set(Some(connection))?;
    Ok(session)
}

/// Closes the connection (a local control keeps running until the console exits).
#[tauri::command]
#[specta::specta]
pub fn disconnect(state: State<'_, ConsoleState>) -> Result<(), ConsoleError> {
    state.set(None)
}

/// Removes the token remembered for `url` from the keyring.
#[tauri::command]
#[specta::specta]
pub async fn forget_token(url: String) -> Result<(), ConsoleError> {
    blocking(move || settings::delete_token(url.trim_end_matches('/'))).await
}

/// Fleet filter, as `/v1/devices` takes it.
#[derive(Debug, Clone, Default, Deserialize, specta::Type)]
pub struct DeviceFilter {
    /// Tag selector, e.g. `site=berlin,hw=rpi4`.
    pub selector: Option<String>,
    pub online: Option<bool>,
    /// `name` or `name@version` of the active model.
    pub model: Option<String>,
}

/// `GET /v1/devices`: `{devices: [...]}`.
#[tauri::command]
#[specta::specta]
pub async fn list_devices(
    state: State<'_, ConsoleState>,
    filter: DeviceFilter,
) -> Result<Value, ConsoleError> {
    let mut query = Vec::new();
    push(&mut query, "selector", filter.selector);
    if filter.online == Some(true) {
        query.push(("online", "true".to_string()));
    }
    push(&mut query, "model", filter.model);
    api(&state, move |client| client.get_json("/v1/devices", &query)).await
}

/// `GET /v1/devices/{device}`: `{device: {...}}`.
#[tauri::command]
#[specta::specta]
pub async fn show_device(
    state: State<'_, ConsoleState>,
    device: String,
) -> Result<Value, ConsoleError> {
    let device = segment("device id", &device)?;
    api(&state, move |client| client.get_json(&format!("/v1/devices/{device}"), &[])).await
}

/// `GET /v1/models`: `{models: [{name, versions}]}`.
#[tauri::command]
#[specta::specta]
pub async fn list_models(state: State<'_, ConsoleState>) -> Result<Value, ConsoleError> {
    api(&state, |client| client.get_json("/v1/models", &[])).await
}

/// `GET /v1/models/{name}`: every version with lineage and profile summary.
#[tauri::command]
#[specta::specta]
pub async fn show_model(
    state: State<'_, ConsoleState>,
    name: String,
) -> Result<Value, ConsoleError> {
    let name = segment("model name", &name)?;
    api(&state, move |client| client.get_json(&format!("/v1/models/{name}"), &[])).await
}

/// `GET /v1/models/{name}/versions/{version}`: manifest, lineage, signers, profile.
#[tauri::command]
#[specta::specta]
pub async fn show_model_version(
    state: State<'_, ConsoleState>,
    name: String,
    version: String,
) -> Result<Value, ConsoleError> {
    let name = segment("model name", &name)?;
    let version = segment("model version", &version)?;
    api(&state, move |client| {
        client.get_json(&format!("/v1/models/{name}/versions/{version}"), &[])
    })
    .await
}

/// Which statistics: a model version (digest), a device or a cohort, a time range (unix ms).
#[derive(Debug, Clone, Default, Deserialize, specta::Type)]
pub struct StatsQuery {
    pub model: Option<String>,
    pub device: Option<String>,
    pub cohort: Option<String>,
    pub from_ms: Option<f64>,
    pub to_ms: Option<f64>,
}

impl StatsQuery {
    fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        push(&mut query, "model", self.model.clone());
        push(&mut query, "device", self.device.clone());
        push(&mut query, "cohort", self.cohort.clone());
        push_ms(&mut query, "from_ms", self.from_ms);
        push_ms(&mut query, "to_ms", self.to_ms);
        query
    }
}

/// `GET /v1/aggregates`: merged statistics windows per time bucket (latency, outputs).
#[tauri::command]
#[specta::specta]
pub async fn aggregates(
    state: State<'_, ConsoleState>,
    query: StatsQuery,
) -> Result<Value, ConsoleError> {
    let query = query.to_query();
    api(&state, move |client| client.get_json("/v1/aggregates", &query)).await
}

/// `GET /v1/drift`: drift per feature and output, over the range and per time bucket.
#[tauri::command]
#[specta::specta]
pub async fn drift(
    state: State<'_, ConsoleState>,
    query: StatsQuery,
) -> Result<Value, ConsoleError> {
    let query = query.to_query();
    api(&state, move |client| client.get_json("/v1/drift", &query)).await
}

/// `GET /v1/drift/overview`: every device or cohort of a model version, worst first.
#[tauri::command]
#[specta::specta]
pub async fn drift_overview(
    state: State<'_, ConsoleState>,
    model: Option<String>,
    by_cohort: bool,
) -> Result<Value, ConsoleError> {
    let mut query = Vec::new();
    push(&mut query, "model", model);
    if by_cohort {
        query.push(("by", "cohort".to_string()));
    }
    api(&state, move |client| client.get_json("/v1/drift/overview", &query)).await
}

/// Which drift alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, specta::Type)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Open,
    Closed,
    All,
}

/// `GET /v1/drift/alerts`.
#[tauri::command]
#[specta::specta]
pub async fn drift_alerts(
    state: State<'_, ConsoleState>,
    alert_state: AlertState,
    model: Option<String>,
) -> Result<Value, ConsoleError> {
    let mut query = vec![(
        "state",
        match alert_state {
            AlertState::Open => "open",
            AlertState::Closed => "closed",
            AlertState::All => "all",
        }
        .to_string(),
    )];
    push(&mut query, "model", model);
    api(&state, move |client| client.get_json("/v1/drift/alerts", &query)).await
}

/// A review of a drift alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, specta::Type)]
#[serde(rename_all = "snake_case")]
pub enum ReviewAction {
    Acknowledge,
    Expected,
    Annotate,
}

/// `POST /v1/drift/alerts/{id}`: acknowledge, mark as expected, or annotate.
#[tauri::command]
#[specta::specta]
pub async fn review_drift_alert(
    state: State<'_, ConsoleState>,
    id: u32,
    action: ReviewAction,
    note: Option<String>,
) -> Result<Value, ConsoleError> {
    let note = note.unwrap_or_default();
    if action == ReviewAction::Annotate && note.trim().is_empty() {
        return Err(ConsoleError::invalid(
            "an annotation needs a note",
            "Write what you found out about this alert, then annotate.",
        ));
    }
    let body = serde_json::json!({ "action": action, "note": note });
    api(&state, move |client| client.post_json(&format!("/v1/drift/alerts/{id}"), &body)).await
}

/// `POST /v1/drift/retrain-requests`: ask for retraining of a model version.
#[tauri::command]
#[specta::specta]
pub async fn request_retrain(
    state: State<'_, ConsoleState>,
    model: String,
    from_ms: Option<f64>,
    to_ms: Option<f64>,
    note: String,
) -> Result<Value, ConsoleError> {
    let mut body = serde_json::json!({ "model": model, "note": note });
    if let Some(from) = from_ms {
        body["from_ms"] = Value::from(from.round() as i64);
    }
    if let Some(to) = to_ms {
        body["to_ms"] = Value::from(to.round() as i64);
    }
    api(&state, move |client| client.post_json("/v1/drift/retrain-requests", &body)).await
}

/// Which audit records: every given condition must hold (times in unix ms).
#[derive(Debug, Clone, Default, Deserialize, specta::Type)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub device: Option<String>,
    /// `name@version`.
    pub model: Option<String>,
    pub from_ms: Option<f64>,
    pub to_ms: Option<f64>,
}

/// `GET /v1/audit/events`: audit events matching `filter`, newest first.
#[tauri::command]
#[specta::specta]
pub async fn audit_events(
    state: State<'_, ConsoleState>,
    filter: AuditFilter,
    limit: Option<u32>,
) -> Result<Value, ConsoleError> {
    let mut query = Vec::new();
    push(&mut query, "action", filter.action);
    push(&mut query, "actor", filter.actor);
    push(&mut query, "device", filter.device);
    push(&mut query, "model", filter.model);
    push_ms(&mut query, "from_ms", filter.from_ms);
    push_ms(&mut query, "to_ms", filter.to_ms);
    query.push(("limit", limit.unwrap_or(500).to_string()));
    api(&state, move |client| client.get_json("/v1/audit/events", &query)).await
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, specta::Type)]
pub struct AuditExported {
    pub directory: String,
    pub records: u32,
    pub tree_size: f64,
    /// The log's verifier key (C2SP vkey) the export is signed with.
    pub vkey: String,
}

/// `POST /v1/audit/exports` for `filter`, written into `directory` (which must not exist or
/// be empty): records with inclusion proofs, checkpoint, signed manifest, log key, CSV. The
/// export is verified once written, as `outpost audit export` does.
#[tauri::command]
#[specta::specta]
pub async fn export_audit(
    state: State<'_, ConsoleState>,
    directory: String,
    filter: AuditFilter,
) -> Result<AuditExported, ConsoleError> {
    use outpost_control::audit::export::{ExportAnswer, verify_directory, write_directory};
    let directory = PathBuf::from(directory.trim());
    if directory.as_os_str().is_empty() {
        return Err(ConsoleError::invalid(
            "no export directory given",
            "Type the path of a new folder for the export.",
        ));
    }
    if std::fs::read_dir(&directory).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ConsoleError::invalid(
            format!("{} already exists and is not empty", directory.display()),
            "Choose a new folder: an export never overwrites files.",
        ));
    }
    let mut body = serde_json::json!({
        "actor": filter.actor.filter(|v| !v.is_empty()),
        "device": filter.device.filter(|v| !v.is_empty()),
        "model": filter.model.filter(|v| !v.is_empty()),
    });
    if let Some(from) = filter.from_ms.filter(|v| v.is_finite()) {
        body["from_ms"] = Value::from(from.round() as i64);
    }
    if let Some(to) = filter.to_ms.filter(|v| v.is_finite()) {
        body["to_ms"] = Value::from(to.round() as i64);
    }
    let client = state.client()?;
    blocking(move || {
        let answer = client.post_json("/v1/audit/exports", &body)?;
        let answer: ExportAnswer = serde_json::from_value(answer).map_err(|error| {
            ConsoleError::new(
                ErrorKind::Server,
                format!("the server's answer is not an audit export: {error}"),
                "Check that the console and the server are the same Outpost version.",
            )
        })?;
        write_directory(&directory, &answer).map_err(|error| {
            ConsoleError::io(format!(
                "cannot write the export to {}: {error:#}",
                directory.display()
            ))
        })?;
        let verified = verify_directory(&directory, None, None).map_err(|failure| {
            ConsoleError::new(
                ErrorKind::Server,
                format!("the export the server sent does not verify: {failure}"),
                "Do not rely on this export; report it to the server's administrator.",
            )
        })?;
        Ok(AuditExported {
            directory: directory.display().to_string(),
            records: u32::try_from(verified.records).unwrap_or(u32::MAX),
            tree_size: verified.tree_size as f64,
            vkey: verified.vkey,
        })
    })
    .await
}

/// The verdict on an export directory.
#[derive(Debug, Clone, Serialize, specta::Type)]
pub struct AuditVerdict {
    pub valid: bool,
    /// One sentence: what was proved, or the first problem found (file, line, leaf).
    pub summary: String,
    pub records: u32,
    pub tree_size: f64,
    /// The key the export is signed with.
    pub vkey: Option<String>,
    /// Whether the export was checked against an expected key (else only against its own).
    pub key_pinned: bool,
}

/// Verifies an exported directory offline (no server involved): every record is in the log at
/// its leaf index under the signed checkpoint, the signed manifest lists exactly these leaves,
/// the CSV matches. `trusted_vkey`: the log key the verifier expects.
#[tauri::command]
#[specta::specta]
pub async fn verify_audit_export(
    directory: String,
    trusted_vkey: Option<String>,
) -> Result<AuditVerdict, ConsoleError> {
    use outpost_control::audit::export::verify_directory;
    let directory = PathBuf::from(directory.trim());
    if !directory.is_dir() {
        return Err(ConsoleError::invalid(
            format!("{} is not a folder", directory.display()),
            "Give the folder an export was written to (it holds records.jsonl and checkpoint).",
        ));
    }
    let trusted = trusted_vkey.map(|k| k.trim().to_string()).filter(|k| !k.is_empty());
    blocking(move || {
        Ok(match verify_directory(&directory, trusted.as_deref(), None) {
            Ok(verified) => AuditVerdict {
                valid: true,
                summary: format!(
                    "{} records, each included in the log at its leaf index under the checkpoint                      of tree size {}, signed by {}; nothing altered, removed, reordered or added.",
                    verified.records, verified.tree_size, verified.vkey
                ),
                records: u32::try_from(verified.records).unwrap_or(u32::MAX),
                tree_size: verified.tree_size as f64,
                vkey: Some(verified.vkey),
                key_pinned: trusted.is_some(),
            },
            Err(failure) => AuditVerdict {
                valid: false,
                summary: failure.to_string(),
                records: 0,
                tree_size: 0.0,
                vkey: None,
                key_pinned: trusted.is_some(),
            },
        })
    })
    .await
}

/// `GET /v1/rollouts`: every rollout, newest first.
#[tauri::command]
#[specta::specta]
pub async fn list_rollouts(state: State<'_, ConsoleState>) -> Result<Value, ConsoleError> {
    api(&state, |client| client.get_json("/v1/rollouts", &[])).await
}

/// `GET /v1/rollouts/{id}`: waves with each gate's value against its threshold, approvals,
/// the unsigned plan, placed devices and transitions.
#[tauri::command]
#[specta::specta]
pub async fn show_rollout(
    state: State<'_, ConsoleState>,
    id: String,
) -> Result<Value, ConsoleError> {
    let id = segment("rollout id", &id)?;
    api(&state, move |client| client.get_json(&format!("/v1/rollouts/{id}"), &[])).await
}

/// The gates of one wave as the wizard sets them; absent thresholds are not judged.
#[derive(Debug, Clone, Deserialize, specta::Type)]
pub struct GateDraft {
    pub min_devices_reporting: u32,
    pub min_requests: u32,
    pub max_install_failure_rate: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub max_p95_latency_ratio: Option<f64>,
    pub max_output_psi: Option<f64>,
    pub max_drift_psi: Option<f64>,
    pub max_prediction_drift_psi: Option<f64>,
    pub min_shadow_agreement: Option<f64>,
}

/// One wave of the wizard: `size` is a device count (`"2"`) or a share of the cohort (`"10%"`).
#[derive(Debug, Clone, Deserialize, specta::Type)]
pub struct WaveDraft {
    pub size: String,
    pub soak_seconds: u32,
    pub gates: GateDraft,
}

/// The devices' own health watch after activating the new model, written into the signed plan:
/// a device that sees more errors or slower answers than this rolls itself back.
#[derive(Debug, Clone, Deserialize, specta::Type)]
pub struct HealthDraft {
    pub watch_seconds: u32,
    pub min_requests: u32,
    pub max_error_rate: f64,
    pub max_p95_latency_ratio: f64,
}

/// What the create wizard sends: the rollout as `POST /v1/rollouts` takes it.
#[derive(Debug, Clone, Deserialize, specta::Type)]
pub struct RolloutDraft {
    /// Made from the bundle when empty.
    pub id: Option<String>,
    /// `name@version` or `sha256:` digest.
    pub bundle: String,
    /// Where a rollback sends devices; required with `on_gate_fail: "rollback"`.
    pub fallback: Option<String>,
    /// Tag selector of the cohort (`*` for every device).
    pub cohort: String,
    pub waves: Vec<WaveDraft>,
    pub holdout_percent: f64,
    pub health: HealthDraft,
    pub expires_in_hours: u32,
    /// `auto` or `manual`.
    pub advance: String,
    /// `pause` or `rollback`.
    pub on_gate_fail: String,
}

impl RolloutDraft {
    /// The JSON body of `POST /v1/rollouts`, after the checks the wizard can make itself.
    pub fn to_body(&self) -> Result<Value, ConsoleError> {
        let invalid = |message: String, hint: &str| Err(ConsoleError::invalid(message, hint));
        if self.bundle.trim().is_empty() {
            return invalid("no bundle chosen".into(), "Pick the model version to roll out.");
        }
        if self.waves.is_empty() {
            return invalid("a rollout needs at least one wave".into(), "Add a wave.");
        }
        if !(0.0..100.0).contains(&self.holdout_percent) {
            return invalid(
                format!("holdout {} % is outside 0–99 %", self.holdout_percent),
                "Keep a holdout share between 0 and 99 percent.",
            );
        }
        let fallback = self.fallback.as_deref().map(str::trim).filter(|f| !f.is_empty());
        if self.on_gate_fail == "rollback" && fallback.is_none() {
            return invalid(
                "rolling back on a failed gate needs a fallback bundle".into(),
                "Choose the fallback model version, or pause on a failed gate instead.",
            );
        }
        let mut waves = Vec::new();
        for (index, wave) in self.waves.iter().enumerate() {
            let size_text = wave.size.trim();
            let size = if let Some(percent) = size_text.strip_suffix('%') {
                match percent.trim().parse::<f64>() {
                    Ok(p) if p > 0.0 && p <= 100.0 => Value::from(format!("{p}%")),
                    _ => {
                        return invalid(
                            format!(
                                "wave {}: size `{size_text}` is not a share of 0–100 %",
                                index + 1
                            ),
                            "Write a device count (e.g. 2) or a share (e.g. 10%).",
                        );
                    }
                }
            } else {
                match size_text.parse::<u64>() {
                    Ok(n) if n > 0 => Value::from(n),
                    _ => {
                        return invalid(
                            format!("wave {}: size `{size_text}` is not a device count", index + 1),
                            "Write a device count (e.g. 2) or a share (e.g. 10%).",
                        );
                    }
                }
            };
            let g = &wave.gates;
            let mut gates = serde_json::json!({
                "min_devices_reporting": g.min_devices_reporting,
                "min_requests": g.min_requests,
            });
            for (name, value) in [
                ("max_install_failure_rate", g.max_install_failure_rate),
                ("max_error_rate", g.max_error_rate),
                ("max_p95_latency_ratio", g.max_p95_latency_ratio),
                ("max_output_psi", g.max_output_psi),
                ("max_drift_psi", g.max_drift_psi),
                ("max_prediction_drift_psi", g.max_prediction_drift_psi),
                ("min_shadow_agreement", g.min_shadow_agreement),
            ] {
                gates[name] = value.filter(|v| v.is_finite()).map_or(Value::Null, Value::from);
            }
            waves.push(serde_json::json!({
                "size": size,
                "soak_seconds": wave.soak_seconds,
                "gates": gates,
            }));
        }
        let mut body = serde_json::json!({
            "bundle": self.bundle.trim(),
            "cohort": if self.cohort.trim().is_empty() { "*" } else { self.cohort.trim() },
            "waves": waves,
            "holdout_percent": self.holdout_percent,
            "health": {
                "watch_seconds": self.health.watch_seconds,
                "min_requests": self.health.min_requests,
                "max_error_rate": self.health.max_error_rate,
                "max_p95_latency_ratio": self.health.max_p95_latency_ratio,
            },
            "expires_in_hours": self.expires_in_hours,
            "advance": self.advance,
            "on_gate_fail": self.on_gate_fail,
        });
        if let Some(id) = self.id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
            body["id"] = Value::from(id);
        }
        if let Some(fallback) = fallback {
            body["fallback"] = Value::from(fallback);
        }
        Ok(body)
    }
}

/// `POST /v1/rollouts`: creates the rollout and its unsigned plan.
#[tauri::command]
#[specta::specta]
pub async fn create_rollout(
    state: State<'_, ConsoleState>,
    draft: RolloutDraft,
) -> Result<Value, ConsoleError> {
    let body = draft.to_body()?;
    api(&state, move |client| client.post_json("/v1/rollouts", &body)).await
}

/// What an approval did.
#[derive(Debug, Clone, Serialize, specta::Type)]
pub struct Approval {
    /// The approver key that signed.
    pub keyid: String,
    /// The key's name in its key file.
    pub key_name: String,
    /// The server's answer (approvals so far and required).
    pub answer: Value,
}

fn signing_error(message: String, hint: &str) -> ConsoleError {
    ConsoleError::new(ErrorKind::Signing, message, hint)
}

/// Signs the unsigned plan `plan` (DSSE envelope JSON) with the approver key in `key_file`,
/// opened with `passphrase`; returns the key id, key name and the base64 signature. The
/// passphrase and the opened key live only for this call.
pub fn sign_plan(
    plan: &str,
    key_file: &std::path::Path,
    passphrase: &str,
) -> Result<(String, String, String), ConsoleError> {
    use outpost_shared::keys::EncryptedKey;
    let bytes = std::fs::read(key_file).map_err(|error| {
        signing_error(
            format!("cannot read the key file {}: {error}", key_file.display()),
            "Give the path of your approver key file (made by `outpost keys generate`).",
        )
    })?;
    let encrypted = EncryptedKey::from_json(&bytes).map_err(|error| {
        signing_error(
            format!("{} is not an Outpost key file: {error}", key_file.display()),
            "Give the path of your approver key file (made by `outpost keys generate`).",
        )
    })?;
    let key = encrypted.decrypt(passphrase).map_err(|error| {
        signing_error(
            format!("the key file did not open: {error}"),
            "Check the passphrase (it is case-sensitive) and that the file is unaltered.",
        )
    })?;
    if key.role() != outpost_shared::verify::Role::Approver {
        return Err(signing_error(
            format!(
                "the key in {} is a {:?} key, not an approver key",
                key_file.display(),
                key.role()
            ),
            "Use the approver key the trust root lists for you.",
        ));
    }
    let mut envelope =
        outpost_shared::dsse::Envelope::from_slice(plan.as_bytes()).map_err(|error| {
            ConsoleError::new(
                ErrorKind::Server,
                format!("the server's plan is not a valid envelope: {error}"),
                "Refresh the rollout; if it repeats, the server's stored plan is damaged.",
            )
        })?;
    envelope.sign(&key).map_err(|error| {
        signing_error(format!("signing failed: {error}"), "Try again with the same key file.")
    })?;
    let signature = envelope
        .signatures
        .iter()
        .find(|s| s.keyid == key.keyid())
        .cloned()
        .ok_or_else(|| signing_error("no signature was made".into(), "Try again."))?;
    let name = encrypted.public.name.clone();
    Ok((signature.keyid, name, signature.sig))
}

/// Approves rollout `id`: reads its unsigned plan from the server, signs it here with the
/// approver's encrypted key file, and sends only the signature (`{keyid, sig}`).
#[tauri::command]
#[specta::specta]
pub async fn approve_rollout(
    state: State<'_, ConsoleState>,
    id: String,
    key_file: String,
    passphrase: String,
) -> Result<Approval, ConsoleError> {
    let id = segment("rollout id", &id)?;
    let client = state.client()?;
    blocking(move || {
        let passphrase = zeroize::Zeroizing::new(passphrase);
        let rollout = client.get_json(&format!("/v1/rollouts/{id}"), &[])?;
        let plan = rollout.get("plan").and_then(Value::as_str).ok_or_else(|| {
            ConsoleError::new(
                ErrorKind::Server,
                format!("rollout {id} has no plan to sign"),
                "Refresh the rollout; only rollouts awaiting approval can be signed.",
            )
        })?;
        let (keyid, key_name, sig) =
            sign_plan(plan, std::path::Path::new(key_file.trim()), &passphrase)?;
        let body = serde_json::json!({ "keyid": keyid, "sig": sig });
        let answer = client.post_json(&format!("/v1/rollouts/{id}/approve"), &body)?;
        Ok(Approval { keyid, key_name, answer })
    })
    .await
}

/// An operator's action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, specta::Type)]
#[serde(rename_all = "snake_case")]
pub enum RolloutAction {
    Start,
    Pause,
    Resume,
    Abort,
    Rollback,
    Advance,
}

/// `POST /v1/rollouts/{id}/{action}`.
#[tauri::command]
#[specta::specta]
pub async fn rollout_action(
    state: State<'_, ConsoleState>,
    id: String,
    action: RolloutAction,
) -> Result<Value, ConsoleError> {
    let id = segment("rollout id", &id)?;
    let verb = match action {
        RolloutAction::Start => "start",
        RolloutAction::Pause => "pause",
        RolloutAction::Resume => "resume",
        RolloutAction::Abort => "abort",
        RolloutAction::Rollback => "rollback",
        RolloutAction::Advance => "advance",
    };
    api(&state, move |client| client.post_json(&format!("/v1/rollouts/{id}/{verb}"), &Value::Null))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_shared::dsse::Envelope;
    use outpost_shared::keys::{KdfCost, SecretKey};
    use outpost_shared::verify::Role;

    fn key_file(dir: &std::path::Path, role: Role) -> (std::path::PathBuf, SecretKey) {
        let key = SecretKey::generate("alice", role).expect("key");
        let encrypted = key.encrypt("correct horse", KdfCost::DEFAULT).expect("encrypt");
        let path = dir.join(format!("{role:?}.key.json"));
        std::fs::write(&path, serde_json::to_vec(&encrypted).expect("json")).expect("write");
        (path, key)
    }

    fn plan() -> String {
        let envelope = Envelope::new("application/vnd.outpost.plan+json", br#"{"seq":1}"#);
        String::from_utf8(envelope.to_vec()).expect("utf8")
    }

    #[test]
    fn an_approver_key_file_signs_the_plan_and_the_signature_verifies() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, key) = key_file(dir.path(), Role::Approver);
        let (keyid, name, sig) = sign_plan(&plan(), &path, "correct horse").expect("signed");
        assert_eq!(keyid, key.keyid());
        assert_eq!(name, "alice");
        let mut expected = Envelope::from_slice(plan().as_bytes()).expect("plan");
        expected.sign(&key).expect("sign");
        assert_eq!(expected.signatures[0].sig, sig, "the same ed25519 signature over the PAE");
    }

    #[test]
    fn wrong_passphrase_wrong_role_and_missing_files_are_signing_errors() {
        let dir = tempfile::tempdir().expect("dir");
        let (approver, _) = key_file(dir.path(), Role::Approver);
        let wrong = sign_plan(&plan(), &approver, "wrong").expect_err("wrong passphrase");
        assert_eq!(wrong.kind, ErrorKind::Signing);
        assert!(wrong.hint.contains("passphrase"), "{wrong:?}");
        let (publisher, _) = key_file(dir.path(), Role::Publisher);
        let role = sign_plan(&plan(), &publisher, "correct horse").expect_err("publisher");
        assert!(role.message.contains("not an approver key"), "{role:?}");
        let missing = sign_plan(&plan(), &dir.path().join("nope"), "x").expect_err("missing");
        assert!(missing.message.contains("cannot read the key file"), "{missing:?}");
    }

    fn draft() -> RolloutDraft {
        let gates = GateDraft {
            min_devices_reporting: 1,
            min_requests: 10,
            max_install_failure_rate: Some(0.0),
            max_error_rate: Some(0.05),
            max_p95_latency_ratio: None,
            max_output_psi: None,
            max_drift_psi: Some(0.25),
            max_prediction_drift_psi: None,
            min_shadow_agreement: None,
        };
        RolloutDraft {
            id: Some(" r1 ".into()),
            bundle: "mlp@2.0.0".into(),
            fallback: Some("mlp@1.0.0".into()),
            cohort: String::new(),
            waves: vec![
                WaveDraft { size: "1".into(), soak_seconds: 5, gates: gates.clone() },
                WaveDraft { size: "100%".into(), soak_seconds: 5, gates },
            ],
            holdout_percent: 10.0,
            health: HealthDraft {
                watch_seconds: 30,
                min_requests: 5,
                max_error_rate: 0.05,
                max_p95_latency_ratio: 2.0,
            },
            expires_in_hours: 24,
            advance: "auto".into(),
            on_gate_fail: "rollback".into(),
        }
    }

    #[test]
    fn the_wizard_draft_becomes_the_create_body() {
        let body = draft().to_body().expect("valid");
        assert_eq!(body["id"], "r1");
        assert_eq!(body["cohort"], "*");
        assert_eq!(body["waves"][0]["size"], 1);
        assert_eq!(body["waves"][1]["size"], "100%");
        assert_eq!(body["waves"][0]["gates"]["max_drift_psi"], 0.25);
        assert!(body["waves"][0]["gates"]["max_output_psi"].is_null());
        assert_eq!(body["fallback"], "mlp@1.0.0");
        assert_eq!(body["health"]["watch_seconds"], 30);
    }

    #[test]
    fn bad_drafts_are_refused_with_what_to_fix() {
        let mut no_fallback = draft();
        no_fallback.fallback = None;
        let error = no_fallback.to_body().expect_err("rollback needs a fallback");
        assert_eq!(error.kind, ErrorKind::InvalidInput);
        assert!(error.message.contains("fallback"));
        let mut bad_size = draft();
        bad_size.waves[0].size = "ten".into();
        assert!(bad_size.to_body().expect_err("size").message.contains("wave 1"));
        let mut no_waves = draft();
        no_waves.waves.clear();
        assert!(no_waves.to_body().is_err());
        assert!(segment("device id", "../v1/users").is_err());
        assert_eq!(segment("device id", " dev-1 ").expect("plain id"), "dev-1");
    }
}
