//! The local inference API: Open Inference Protocol v2 over REST (axum), on a loopback TCP
//! address or a Unix socket.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2` | server metadata |
//! | `GET /v2/health/live` | 200 while the process serves HTTP |
//! | `GET /v2/health/ready` | 200 when a model is loaded, 503 otherwise |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: inputs, outputs, datatype, shape (-1 variable) |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when that model serves |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | runs a JSON inference request |
//!
//! Every refusal is a JSON `{"error": "..."}` that names the problem, with the status saying
//! whose fault it is: 400 for a bad request (shape, datatype, non-finite values, missing input,
//! malformed JSON), 404 for an unknown model or route, 405 for a wrong method, 413 for a body
//! over `api.max_body_bytes`, 415 for a body that is not JSON, 503 when no model is loaded, and
//! 500 only when the model itself fails (the detail goes to the log, not to the client).
//!
//! Inference runs on tokio's blocking pool behind a semaphore of `api.max_concurrency` permits,
//! so the async workers keep accepting and answering while models compute, and a flood of
//! requests queues instead of spawning unbounded threads.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use outpost_shared::model::InferError;
use outpost_shared::oip::{ErrorBody, InferenceRequest, InferenceResponse};
use serde_json::Value;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::config::{ApiConfig, ListenAddress};
use crate::runtime::Runtime;

/// Error kinds counted in statistics windows for requests refused before they reach the model.
pub mod refusal {
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const BAD_VALUE: &str = "bad_value";
    pub const OVERSIZED_REQUEST: &str = "oversized_request";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
}

/// Sees every inference request the API ran, with its outcome and latency: the updater's
/// shadow phase and health watch. Called on the inference thread after the response was
/// computed, so it must be quick (hand heavy work to another thread).
pub trait InferenceObserver: Send + Sync + std::fmt::Debug {
    fn observe(
        &self,
        runtime: &Arc<Runtime>,
        request: &InferenceRequest,
        outcome: Result<&InferenceResponse, &InferError>,
        latency: Duration,
    );
}

/// The model currently serving, swappable as a whole (an install replaces it; requests in
/// flight finish on the runtime they started with), and an optional observer of every call.
#[derive(Debug, Default)]
pub struct ActiveRuntime {
    current: RwLock<Option<Arc<Runtime>>>,
    observer: RwLock<Option<Arc<dyn InferenceObserver>>>,
    /// A second observer, for the input sampler ([`crate::sampling`]).
    inputs: RwLock<Option<Arc<dyn InferenceObserver>>>,
}

impl ActiveRuntime {
    pub fn new(runtime: Option<Arc<Runtime>>) -> Self {
        Self {
            current: RwLock::new(runtime),
            observer: RwLock::new(None),
            inputs: RwLock::new(None),
        }
    }

    /// Installs (or with `None` removes) the observer of every inference.
    pub fn set_observer(&self, observer: Option<Arc<dyn InferenceObserver>>) {
        *self.observer.write().unwrap_or_else(PoisonError::into_inner) = observer;
    }

    fn observer(&self) -> Option<Arc<dyn InferenceObserver>> {
        self.observer.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Installs (or with `None` removes) the input sampler, which sees every inference too.
    pub fn set_input_observer(&self, observer: Option<Arc<dyn InferenceObserver>>) {
        *self.inputs.write().unwrap_or_else(PoisonError::into_inner) = observer;
    }

    fn input_observer(&self) -> Option<Arc<dyn InferenceObserver>> {
        self.inputs.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The runtime serving now, if any.
    pub fn get(&self) -> Option<Arc<Runtime>> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Serves `next` from now on and returns the runtime it replaces.
    pub fn replace(&self, next: Option<Arc<Runtime>>) -> Option<Arc<Runtime>> {
        std::mem::replace(&mut *self.current.write().unwrap_or_else(PoisonError::into_inner), next)
    }
}

/// Why a request body is not an inference request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error(
        "input `{input}`: element {index} is {found}, not a number (tensor data must be finite \
         JSON numbers; NaN and infinities are refused)"
    )]
    NotANumber { input: String, index: usize, found: String },
    #[error("not an inference request: {0}")]
    NotARequest(String),
}

impl RequestError {
    /// The kind counted in statistics windows.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::NotANumber { .. } => refusal::BAD_VALUE,
            RequestError::MalformedJson(_) | RequestError::NotARequest(_) => {
                refusal::MALFORMED_REQUEST
            }
        }
    }
}

/// Reads an OIP v2 inference request body. Tensor data may be flat or nested row-major arrays;
/// anything that is not a JSON number in it (a `"NaN"` string, `null`, `true`) is named with
/// its input and position.
pub fn parse_inference_request(body: &[u8]) -> Result<InferenceRequest, RequestError> {
    let typed_error = match serde_json::from_slice::<InferenceRequest>(body) {
        Ok(request) => return Ok(request),
        Err(error) if error.is_syntax() || error.is_eof() => {
            return Err(RequestError::MalformedJson(error.to_string()));
        }
        Err(error) => error,
    };
    // Valid JSON of the wrong shape: look closer to say what is wrong, and accept nested data.
    let mut value: Value = serde_json::from_slice(body)
        .map_err(|error| RequestError::MalformedJson(error.to_string()))?;
    let mut flattened = false;
    if let Some(inputs) = value.get_mut("inputs").and_then(Value::as_array_mut) {
        for input in inputs {
            let name = input.get("name").and_then(Value::as_str).unwrap_or("?").to_string();
            let Some(data) = input.get_mut("data") else { continue };
            if !data.is_array() {
                continue;
            }
            let mut flat = Vec::new();
            let nested = flatten(data, &mut flat);
            if let Some((index, found)) =
                flat.iter().enumerate().find(|(_, v)| !v.is_number()).map(|(i, v)| (i, describe(v)))
            {
                return Err(RequestError::NotANumber { input: name, index, found });
            }
            if nested {
                *data = Value::Array(flat);
                flattened = true;
            }
        }
    }
    if !flattened {
        return Err(RequestError::NotARequest(typed_error.to_string()));
    }
    serde_json::from_value(value).map_err(|error| RequestError::NotARequest(error.to_string()))
}

/// Appends the leaves of nested arrays to `out`; returns whether any nesting was found.
fn flatten(value: &Value, out: &mut Vec<Value>) -> bool {
    let mut nested = false;
    if let Value::Array(items) = value {
        for item in items {
            if item.is_array() {
                nested = true;
                flatten(item, out);
            } else {
                out.push(item.clone());
            }
        }
    }
    nested
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(text) => {
            let shown: String = text.chars().take(40).collect();
            format!("the string {shown:?}")
        }
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Object(_) => "an object".into(),
        Value::Array(_) => "an array".into(),
        Value::Number(n) => format!("the number {n}"),
    }
}

/// A refusal: status and message, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    fn no_model() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "no model is loaded on this device yet")
    }

    fn unknown_model(name: &str, runtime: &Runtime) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("unknown model `{name}`: this device serves `{}`", runtime.name()),
        )
    }

    fn from_infer(error: &InferError) -> Self {
        match error {
            InferError::Run(detail) => {
                tracing::error!(%detail, "model execution failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "model execution failed; the agent's log has the details",
                )
            }
            refused => Self::new(StatusCode::BAD_REQUEST, refused.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(ErrorBody { error: self.message })).into_response()
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
struct ApiState {
    active: Arc<ActiveRuntime>,
    permits: Arc<Semaphore>,
    max_body_bytes: usize,
}

impl ApiState {
    /// The runtime serving `name` (and `version`, when the route names one).
    fn runtime(&self, name: &str, version: Option<&str>) -> Result<Arc<Runtime>, ApiError> {
        let runtime = self.active.get().ok_or_else(ApiError::no_model)?;
        if runtime.name() != name {
            return Err(ApiError::unknown_model(name, &runtime));
        }
        if let Some(version) = version
            && version != runtime.manifest().version
        {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "unknown version `{version}` of model `{name}`: this device serves version `{}`",
                    runtime.manifest().version
                ),
            ));
        }
        Ok(runtime)
    }
}

/// The routes, over `active`, with `config`'s body limit and concurrency.
pub fn router(active: Arc<ActiveRuntime>, config: &ApiConfig) -> Router {
    let state = ApiState {
        active,
        permits: Arc::new(Semaphore::new(config.max_concurrency.max(1))),
        max_body_bytes: config.max_body_bytes,
    };
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(versioned_model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(versioned_model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(versioned_infer))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": "outpost-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
    .into_response()
}

async fn live() -> Response {
    axum::Json(serde_json::json!({ "live": true })).into_response()
}

async fn ready(State(state): State<ApiState>) -> Response {
    let ready = state.active.get().is_some_and(|runtime| runtime.ready());
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({ "ready": ready }))).into_response()
}

async fn model_metadata(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    match state.runtime(&name, None) {
        Ok(runtime) => axum::Json(runtime.metadata()).into_response(),
        Err(error) => error.into_response(),
    }
}

async fn versioned_model_metadata(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    match state.runtime(&name, Some(&version)) {
        Ok(runtime) => axum::Json(runtime.metadata()).into_response(),
        Err(error) => error.into_response(),
    }
}

fn model_ready_response(result: Result<Arc<Runtime>, ApiError>, name: &str) -> Response {
    match result {
        Ok(runtime) => {
            let ready = runtime.ready();
            let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (status, axum::Json(serde_json::json!({ "name": name, "ready": ready })))
                .into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn model_ready(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    model_ready_response(state.runtime(&name, None), &name)
}

async fn versioned_model_ready(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    model_ready_response(state.runtime(&name, Some(&version)), &name)
}

async fn infer(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_inference(state, &name, None, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn versioned_infer(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    run_inference(state, &name, Some(&version), &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run_inference(
    state: ApiState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let runtime = state.runtime(name, version)?;
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence != "application/json" && !essence.ends_with("+json") {
            runtime.record_refusal(refusal::UNSUPPORTED_MEDIA_TYPE);
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type `{text}` is not accepted: send application/json"),
            ));
        }
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            runtime.record_refusal(refusal::OVERSIZED_REQUEST);
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body is larger than the limit of {} bytes (api.max_body_bytes)",
                    state.max_body_bytes
                ),
            )
        } else {
            runtime.record_refusal(refusal::MALFORMED_REQUEST);
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {}", rejection.body_text()),
            )
        }
    })?;
    let request = parse_inference_request(&body).map_err(|error| {
        runtime.record_refusal(error.kind());
        ApiError::new(StatusCode::BAD_REQUEST, error.to_string())
    })?;
    let permit = Arc::clone(&state.permits).acquire_owned().await.map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down")
    })?;
    let worker = Arc::clone(&runtime);
    let observer = state.active.observer();
    let inputs = state.active.input_observer();
    let outcome = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let started = Instant::now();
        let result = worker.infer(&request);
        let latency = started.elapsed();
        if let Some(observer) = observer {
            observer.observe(&worker, &request, result.as_ref(), latency);
        }
        if let Some(inputs) = inputs {
            inputs.observe(&worker, &request, result.as_ref(), latency);
        }
        result
    })
    .await;
    match outcome {
        Ok(Ok(response)) => Ok(axum::Json(response).into_response()),
        Ok(Err(error)) => Err(ApiError::from_infer(&error)),
        Err(join_error) => {
            tracing::error!(error = %join_error, "inference task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference task failed; the agent's log has the details",
            ))
        }
    }
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A bound listener, TCP or Unix.
#[derive(Debug)]
pub enum BoundListener {
    Tcp(TcpListener),
    Unix { listener: UnixListener, path: PathBuf },
}

impl BoundListener {
    /// Binds `address`. A Unix socket replaces a stale socket file left by a previous run and
    /// is made accessible to the owner and group (0660).
    pub async fn bind(address: &ListenAddress) -> io::Result<Self> {
        match address {
            ListenAddress::Tcp(address) => Ok(Self::Tcp(TcpListener::bind(address).await?)),
            ListenAddress::Unix(path) => {
                use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", path.display()),
                        ));
                    }
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
                Ok(Self::Unix { listener, path: path.clone() })
            }
        }
    }

    /// The address actually bound (the port chosen for port 0).
    pub fn local_address(&self) -> io::Result<ListenAddress> {
        match self {
            Self::Tcp(listener) => listener.local_addr().map(ListenAddress::Tcp),
            Self::Unix { path, .. } => Ok(ListenAddress::Unix(path.clone())),
        }
    }

    /// Serves `router` until `shutdown` completes, then lets requests in flight finish.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        match self {
            Self::Tcp(listener) => {
                use axum::serve::ListenerExt as _;
                // Answers go out as soon as they are written, not after the client's ACK of
                // the previous segment (Nagle): request/response traffic on loopback.
                let listener = listener.tap_io(|stream| {
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                });
                axum::serve(listener, router).with_graceful_shutdown(shutdown).await
            }
            Self::Unix { listener, path } => {
                let result = axum::serve(listener, router).with_graceful_shutdown(shutdown).await;
                // Best effort: the next start replaces a leftover socket anyway.
                let _ = std::fs::remove_file(&path);
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_requests_parse() {
        let request = parse_inference_request(
            br#"{"id":"r1","inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,2.5]}]}"#,
        )
        .expect("request");
        assert_eq!(request.id.as_deref(), Some("r1"));
        assert_eq!(request.inputs[0].data, vec![1.0, 2.5]);
    }

    #[test]
    fn nested_data_is_flattened_row_major() {
        let request = parse_inference_request(
            br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[2,2],"data":[[1,2],[3,4]]}]}"#,
        )
        .expect("request");
        assert_eq!(request.inputs[0].data, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn refusals_name_the_problem() {
        for (body, expected) in [
            (&br#"{"inputs": ["#[..], "malformed JSON"),
            (br#"not json"#, "malformed JSON"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[1,"NaN"]}]}"#, "input `x`: element 1 is the string \"NaN\""),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,2],"data":[[1],[null]]}]}"#, "element 1 is null"),
            (br#"{"inputs":[{"name":"x","datatype":"FP32","shape":[1,1],"data":["-Infinity"]}]}"#, "\"-Infinity\""),
            (br#"{"inputs":{}}"#, "not an inference request"),
            (br#"[]"#, "not an inference request"),
        ] {
            let error = parse_inference_request(body).expect_err("refused").to_string();
            assert!(error.contains(expected), "{}: {error}", String::from_utf8_lossy(body));
        }
    }
}
