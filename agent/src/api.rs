//! The local inference API: Open Inference Protocol v2 over REST (axum), on a loopback TCP
//! address or a Unix socket.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2` | server metadata (extensions: `binary_tensor_data`) |
//! | `GET /v2/health/live` | 200 while the process serves HTTP |
//! | `GET /v2/health/ready` | 200 when a model is loaded, 503 otherwise |
//! | `GET /v2/models/{name}[/versions/{v}]` | model metadata: inputs, outputs, datatype, shape (-1 variable) |
//! | `GET /v2/models/{name}[/versions/{v}]/ready` | 200 when that model serves |
//! | `POST /v2/models/{name}[/versions/{v}]/infer` | runs an inference request: JSON, or JSON and binary tensor data |
//!
//! Requests and answers follow [`outpost_shared::oip`]: every tensor in its own datatype, and
//! the binary tensor data extension (`Inference-Header-Content-Length`) both ways.
//!
//! Every refusal is a JSON `{"error": "..."}` that names the problem, with the status saying
//! whose fault it is: 400 for a bad request (shape, datatype, non-finite values, missing input,
//! malformed JSON or binary data), 404 for an unknown model or route, 405 for a wrong method,
//! 408 for a body that does not arrive within [`BODY_READ_TIMEOUT`], 413 for a body over
//! `api.max_body_bytes`, 415 for a body that is neither JSON nor binary-extension data (or is
//! compressed), 503 when no model is loaded, and 500 only when the model itself fails (the
//! detail goes to the log, not to the client). Each refusal is counted in the statistics
//! window under a client-error kind; only a failing model counts as `runtime`.
//!
//! Inference runs on tokio's blocking pool behind a semaphore of `api.max_concurrency` permits,
//! taken before the body is read: the body is read, decoded straight into typed tensors
//! (bounded by the declared shape, the model's input facts and the body size), run and
//! answered under the permit, so a flood of large requests queues with its bodies unread
//! instead of filling memory, and the async workers keep accepting and answering meanwhile.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use outpost_shared::model::InferError;
use outpost_shared::oip::{self, ErrorBody, InferenceRequest, InferenceResponse};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::config::{ApiConfig, ListenAddress};
use crate::runtime::Runtime;

/// Error kinds counted in statistics windows for requests refused before they reach the model
/// (with [`outpost_shared::oip::kind`] for what decoding refuses). Every one is the client's.
pub mod refusal {
    pub use outpost_shared::oip::kind::{BAD_VALUE, MALFORMED_REQUEST};
    pub const OVERSIZED_REQUEST: &str = "oversized_request";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    pub const SLOW_REQUEST: &str = "slow_request";
}

/// The header that splits a body into its JSON part (this many bytes) and the binary tensor
/// data after it, on requests and responses.
pub const INFERENCE_HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// How long a client may take to send its body once its request holds an inference permit.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        .with_state(state)
}

async fn server_metadata() -> Response {
    axum::Json(serde_json::json!({
        "name": "outpost-agent",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
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
    body: Body,
) -> Response {
    run_inference(state, &name, None, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn versioned_infer(
    State(state): State<ApiState>,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run_inference(state, &name, Some(&version), &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Runs one inference request. The body is read only once the request holds an inference
/// permit, and decoded, run and answered on the blocking pool under that permit: at most
/// `api.max_concurrency` bodies are in memory at once, however many clients send.
async fn run_inference(
    state: ApiState,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let runtime = state.runtime(name, version)?;
    let refuse = |kind: &'static str, status: StatusCode, message: String| {
        runtime.record_refusal(kind);
        ApiError::new(status, message)
    };
    let header_length = match headers.get(INFERENCE_HEADER_CONTENT_LENGTH) {
        None => None,
        Some(value) => Some(
            value.to_str().ok().and_then(|v| v.trim().parse::<usize>().ok()).ok_or_else(|| {
                refuse(
                    refusal::MALFORMED_REQUEST,
                    StatusCode::BAD_REQUEST,
                    format!("Inference-Header-Content-Length {value:?} is not a byte count"),
                )
            })?,
        ),
    };
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let text = content_type.to_str().unwrap_or("");
        let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let json = essence == "application/json" || essence.ends_with("+json");
        if !json && essence != "application/octet-stream" {
            return Err(refuse(
                refusal::UNSUPPORTED_MEDIA_TYPE,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "content type `{text}` is not accepted: send application/json, or \
                     application/octet-stream with Inference-Header-Content-Length"
                ),
            ));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let text = encoding.to_str().unwrap_or("");
        if !text.trim().eq_ignore_ascii_case("identity") {
            return Err(refuse(
                refusal::UNSUPPORTED_MEDIA_TYPE,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{text}` is not accepted: send the body uncompressed"),
            ));
        }
    }
    let too_large = |runtime: &Runtime| {
        runtime.record_refusal(refusal::OVERSIZED_REQUEST);
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body is larger than the limit of {} bytes (api.max_body_bytes)",
                state.max_body_bytes
            ),
        )
    };
    // A declared length over the limit is refused before a permit is taken or a byte read.
    let declared_length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_length.is_some_and(|length| length > state.max_body_bytes as u64) {
        return Err(too_large(&runtime));
    }
    let permit = Arc::clone(&state.permits).acquire_owned().await.map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the agent is shutting down")
    })?;
    let bytes = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        read_body(body, state.max_body_bytes, declared_length),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => return Err(too_large(&runtime)),
        Ok(Err(BodyError::Read(error))) => {
            return Err(refuse(
                refusal::MALFORMED_REQUEST,
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {error}"),
            ));
        }
        Err(_) => {
            return Err(refuse(
                refusal::SLOW_REQUEST,
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs()),
            ));
        }
    };
    let worker = Arc::clone(&runtime);
    let observer = state.active.observer();
    let inputs = state.active.input_observer();
    let outcome = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let request = match oip::decode_request(&bytes, header_length, Some(worker.inputs())) {
            Ok(request) => request,
            Err(error) => {
                worker.record_refusal(error.kind());
                return Err(ApiError::new(StatusCode::BAD_REQUEST, error.to_string()));
            }
        };
        // The tensors hold what the body said; the body itself is no longer needed.
        drop(bytes);
        let started = Instant::now();
        let result = worker.infer(&request);
        let latency = started.elapsed();
        if let Some(observer) = observer {
            observer.observe(&worker, &request, result.as_ref(), latency);
        }
        if let Some(inputs) = inputs {
            inputs.observe(&worker, &request, result.as_ref(), latency);
        }
        let response = result.map_err(|error| ApiError::from_infer(&error))?;
        oip::encode_response(&request, &response).map_err(|error| {
            tracing::error!(%error, "cannot encode an inference response");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the response")
        })
    })
    .await;
    match outcome {
        Ok(Ok(encoded)) => Ok(encoded_response(encoded)),
        Ok(Err(error)) => Err(error),
        Err(join_error) => {
            tracing::error!(error = %join_error, "inference task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference task failed; the agent's log has the details",
            ))
        }
    }
}

/// The HTTP answer for an encoded response: JSON, or JSON followed by binary tensor data.
fn encoded_response(encoded: oip::EncodedResponse) -> Response {
    let mut response = Response::new(Body::from(encoded.body));
    let headers = response.headers_mut();
    match encoded.json_length {
        None => {
            headers
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        }
        Some(length) => {
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(INFERENCE_HEADER_CONTENT_LENGTH, header::HeaderValue::from(length));
        }
    }
    response
}

/// Why a body could not be read.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// Reads a body of at most `limit` bytes into one buffer, reserved up front from the declared
/// length (itself within the limit) so it does not double while growing.
async fn read_body(body: Body, limit: usize, declared: Option<u64>) -> Result<Vec<u8>, BodyError> {
    let reserve = declared.and_then(|n| usize::try_from(n).ok()).unwrap_or(0).min(limit);
    let mut buffer = Vec::with_capacity(reserve);
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(BodyError::Read)?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer)
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
