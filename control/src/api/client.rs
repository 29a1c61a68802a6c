//! The API client used by the `outpost` CLI (and, later, the console): blocking, over rustls
//! with the process-wide ring provider, no OpenSSL. Errors carry the server's
//! `{"error"}` text so the CLI can print what the server said.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Outpost server at {url}: {reason}")]
    Transport { url: String, reason: String },
    /// The server answered with an error status; `message` is its `error` text.
    #[error("the server refused ({status}): {message}")]
    Refused { status: u16, code: String, message: String },
    #[error("unexpected answer from {url}: {reason}")]
    Decode { url: String, reason: String },
    #[error("CA certificate {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("invalid server URL `{url}`: it must start with http:// or https://")]
    Url { url: String },
}

/// A connection to one Outpost server as one user.
#[derive(Debug)]
pub struct ApiClient {
    base_url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// Largest answer read from the server.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

impl ApiClient {
    /// A client for `base_url` (`http://host:port` or `https://…`), sending `token` as a bearer
    /// token, trusting `ca_file` (PEM) for HTTPS when given, else the Mozilla roots.
    pub fn new(
        base_url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<ApiClient, ClientError> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::Url { url: base_url.into() });
        }
        crate::server::tls::install_crypto_provider();
        let mut tls = TlsConfig::builder();
        if let Some(path) = ca_file {
            let certificate_error = |reason: String| ClientError::Certificate {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| certificate_error(e.to_string()))?;
            let certificates: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(Ok(certificate)),
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| certificate_error(e.to_string()))?;
            if certificates.is_empty() {
                return Err(certificate_error("holds no PEM certificate".into()));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certificates));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .timeout_connect(Some(Duration::from_secs(15)))
            .tls_config(tls.build())
            .build();
        Ok(ApiClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            token,
            agent: ureq::Agent::new_with_config(config),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// `GET path?query`, answered with JSON.
    pub fn get_json(&self, path: &str, query: &[(&str, String)]) -> Result<Value, ClientError> {
        let url = self.url(path);
        let mut request = self.authorize(self.agent.get(&url));
        for (key, value) in query {
            request = request.query(*key, value);
        }
        let response = request.call();
        read_answer(&url, response)
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        let url = self.url(path);
        let response = self.authorize(self.agent.post(&url)).send_json(body);
        read_answer(&url, response)
    }

    /// `POST path` with raw bytes.
    pub fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> Result<Value, ClientError> {
        let url = self.url(path);
        let response = self.authorize(self.agent.post(&url)).content_type(content_type).send(bytes);
        read_answer(&url, response)
    }
}

fn read_answer(
    url: &str,
    response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Value, ClientError> {
    let mut response = response
        .map_err(|error| ClientError::Transport { url: url.into(), reason: error.to_string() })?;
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BYTES)
        .read_to_string()
        .map_err(|error| ClientError::Decode { url: url.into(), reason: error.to_string() })?;
    let body: Option<Value> = serde_json::from_str(&text).ok();
    if !(200..300).contains(&status) {
        let field = |name: &str| {
            body.as_ref().and_then(|b| b.get(name)).and_then(Value::as_str).map(str::to_string)
        };
        return Err(ClientError::Refused {
            status,
            code: field("code").unwrap_or_default(),
            message: field("error").unwrap_or_else(|| text.chars().take(500).collect()),
        });
    }
    match body {
        Some(body) => Ok(body),
        None => Ok(Value::String(text)),
    }
}
