//! A minimal HTTP/1.1 client over `std::net`, enough for the demo to talk to loopback servers
//! (the control server's `/health` and `/metrics`, the agents' OIP v2 API) without pulling an
//! HTTP stack into xtask. One request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Longest a connect, a write or a read may take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
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
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, IO_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nAccept: */*\r\n"
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).with_context(|| format!("reading the answer of {address}"))?;
    parse_response(&bytes).with_context(|| format!("{method} http://{address}{path}"))
}

/// `GET path` on `127.0.0.1:port`.
pub fn get(port: u16, path: &str, token: Option<&str>) -> Result<Response> {
    request(port, "GET", path, token, None)
}

/// Parses a complete HTTP/1.1 response (read until the server closed the connection).
fn parse_response(bytes: &[u8]) -> Result<Response> {
    let Some(split) = bytes.windows(4).position(|window| window == b"\r\n\r\n") else {
        bail!("the answer has no complete HTTP header ({} bytes)", bytes.len());
    };
    let head = String::from_utf8_lossy(&bytes[..split]);
    let raw_body = &bytes[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP status line: {status_line:?}"))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked { dechunk(raw_body)? } else { raw_body.to_vec() };
    Ok(Response { status, body: String::from_utf8_lossy(&body).into_owned() })
}

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut bytes: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(end) = bytes.windows(2).position(|window| window == b"\r\n") else {
            bail!("truncated chunked body");
        };
        let size_text = String::from_utf8_lossy(&bytes[..end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        bytes = &bytes[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if bytes.len() < size + 2 {
            bail!("truncated chunk");
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() -> Result<()> {
        let plain = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                      content-length: 13\r\n\r\n{\"error\":\"x\"}";
        assert_eq!(
            parse_response(plain)?,
            Response { status: 400, body: "{\"error\":\"x\"}".into() }
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked)?, Response { status: 200, body: "hello world".into() });
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        Ok(())
    }
}
