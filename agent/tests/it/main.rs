//! Integration tests of `outpost-agent`: the in-process [`outpost_agent::Runtime`], statistics
//! windows on real models, the OIP v2 REST API over TCP and Unix sockets, and the binary run as
//! a user runs it. Fixtures (signed bundles, trust roots, provisioned data directories) come
//! from `outpost-tests`; every test works in its own temporary directory and listens on port 0.
//!
//! - `runtime`: inference, batching, refusals and concurrency through the Rust API.
//! - `window`: windows from real models (exact agreement with the baseline profile, wire
//!   validation).
//! - `api`: every route, every bad request of issue 3, concurrent clients.
//! - `cli`: `run`, `provision`, `check-model`, `print-default-config`, exit codes.
//! - `mqtt`: telemetry against real brokers (Mosquitto, embedded rumqttd).
//! - `update`: model updates through a real control server or a compromised one (tamper
//!   cases), rollback by health policy, operator revert, restarts at every fault step.

mod api;
mod cli;
mod mqtt;
mod runtime;
mod update;
mod window;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::Runtime;
use outpost_shared::wire::DeviceId;
use outpost_tests::fixtures::Fixture;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Every network wait in these tests is bounded by this.
pub const NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

/// A fixture directory that lives as long as the test.
pub struct TestDir {
    pub dir: tempfile::TempDir,
    pub fixture: Fixture,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = Fixture::new(dir.path());
        Self { dir, fixture }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A runtime for `model`'s fixture bundle on device `dev-test`.
    pub fn runtime(&self, model: &str) -> Arc<Runtime> {
        let bundle = self.fixture.verified_bundle(model);
        Arc::new(Runtime::new(&bundle, device()).expect("runtime"))
    }
}

pub fn device() -> DeviceId {
    DeviceId::new("dev-test").expect("device id")
}

/// Where a test server listens.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

/// An HTTP response as the tests look at it.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("response body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body))
        })
    }

    /// The `error` text of a refusal, after checking the body is `{"error": "..."}`.
    pub fn error(&self) -> String {
        let json = self.json();
        let object = json.as_object().expect("error body is an object");
        assert_eq!(object.len(), 1, "error body has only `error`: {json}");
        object["error"].as_str().expect("error is a string").to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), bounded by
/// [`NETWORK_TIMEOUT`]. `content_type` `None` sends no Content-Type header.
pub async fn http(
    target: &Target,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let headers: Vec<(&str, String)> =
        content_type.map(|c| ("Content-Type", c.to_string())).into_iter().collect();
    http_with_headers(target, method, path, &headers, body).await
}

/// [`http`] with any request headers.
pub async fn http_with_headers(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    let exchange = async {
        match target {
            Target::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
                exchange(stream, method, path, headers, body).await
            }
            Target::Unix(path_to_socket) => {
                let stream =
                    tokio::net::UnixStream::connect(path_to_socket).await.expect("connect");
                exchange(stream, method, path, headers, body).await
            }
        }
    };
    tokio::time::timeout(NETWORK_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {NETWORK_TIMEOUT:?}"))
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    // The server may answer (413) and close before reading everything: a failed write is fine
    // as long as the answer can be read.
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut content_type = None;
    let mut chunked = false;
    let mut headers = Vec::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            headers.push((name.clone(), value.trim().to_string()));
            if name == "content-type" {
                content_type = Some(value.trim().to_string());
            }
            if name == "transfer-encoding" && value.trim().eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse { status, content_type, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..start + size]);
        data = &data[start + size + 2..];
    }
    out
}
