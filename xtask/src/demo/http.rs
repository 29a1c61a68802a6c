//! The demo's HTTP client for loopback servers (the control server's `/health`, `/metrics` and
//! API, the agents' OIP v2 API): ureq without TLS, every status returned as a [`Response`]
//! rather than an error, so the demo can show a refusal.

use std::time::Duration;

use anyhow::{Context, Result};

/// Longest a whole request (connect, send, read the answer) may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(TIMEOUT))
        .build()
        .into()
}

/// Sends one request to `127.0.0.1:port` and reads the whole response. A `body` is sent as
/// JSON; a `token` as `Authorization: Bearer`.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Response> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(token) = token {
        builder = builder.header("Authorization", format!("Bearer {token}"));
    }
    let answer = match body {
        Some(body) => {
            let request = builder
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .with_context(|| format!("{method} {url}"))?;
            agent().run(request)
        }
        None => {
            let request = builder.body(()).with_context(|| format!("{method} {url}"))?;
            agent().run(request)
        }
    };
    let mut answer = answer.with_context(|| format!("{method} {url}"))?;
    let status = answer.status().as_u16();
    let body = answer
        .body_mut()
        .read_to_string()
        .with_context(|| format!("reading the answer of {method} {url}"))?;
    Ok(Response { status, body })
}

/// `GET path` on `127.0.0.1:port`.
pub fn get(port: u16, path: &str, token: Option<&str>) -> Result<Response> {
    request(port, "GET", path, token, None)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot server on a free loopback port that answers `answer` and hands back the
    /// request it read.
    fn serve_once(answer: &'static [u8]) -> Result<(u16, std::thread::JoinHandle<String>)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let handle = std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return String::new() };
            let mut request = vec![0; 4096];
            let read = stream.read(&mut request).unwrap_or(0);
            let _ = stream.write_all(answer);
            String::from_utf8_lossy(&request[..read]).into_owned()
        });
        Ok((port, handle))
    }

    #[test]
    fn refusals_come_back_as_responses_and_chunked_bodies_are_read() -> Result<()> {
        let (port, server) = serve_once(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
              content-length: 13\r\nconnection: close\r\n\r\n{\"error\":\"x\"}",
        )?;
        let response = request(port, "POST", "/v2/infer", Some("t0k"), Some("{}"))?;
        assert_eq!(response, Response { status: 400, body: "{\"error\":\"x\"}".into() });
        let sent = server.join().map_err(|_| anyhow::anyhow!("server thread"))?;
        assert!(sent.starts_with("POST /v2/infer HTTP/1.1\r\n"), "{sent}");
        assert!(sent.to_ascii_lowercase().contains("authorization: bearer t0k"), "{sent}");

        let (port, _server) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )?;
        assert_eq!(
            get(port, "/health", None)?,
            Response { status: 200, body: "hello world".into() }
        );
        Ok(())
    }
}
