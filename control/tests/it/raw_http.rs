//! A raw HTTP/1.1 client for the adversarial API tests: it sends exactly the bytes it is given
//! (malformed headers, bodies that lie about their type, paths no HTTP library would build),
//! from a chosen loopback source address (any of 127.0.0.0/8, so one machine is many
//! sources), and reads back the status, headers and body. Requests on one connection are sent
//! one after the other (keep-alive), which is what a flood looks like.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request: method, target (path and query, sent as given), headers, body.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn get(target: &str) -> Request {
        Request {
            method: "GET".into(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn post_json(target: &str, body: impl Into<Vec<u8>>) -> Request {
        Request {
            method: "POST".into(),
            target: target.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into(),
        }
    }

    pub fn bearer(mut self, token: &str) -> Request {
        self.headers.push(("Authorization".into(), format!("Bearer {token}")));
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut head =
            format!("{} {} HTTP/1.1\r\nHost: outpost.test\r\n", self.method, self.target);
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A keep-alive connection from one source address.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    /// Connects to `server` from `source` (any port), or from the default address.
    pub async fn open(server: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<Connection> {
        let stream = match source {
            None => TcpStream::connect(server).await?,
            Some(source) => {
                let socket = TcpSocket::new_v4()?;
                socket.bind(SocketAddr::from((source, 0)))?;
                socket.connect(server).await?
            }
        };
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: Vec::new() })
    }

    /// Sends `request` and reads its answer (within 30 s).
    pub async fn send(&mut self, request: &Request) -> std::io::Result<Answer> {
        self.send_bytes(&request.bytes()).await
    }

    /// Sends raw bytes and reads one answer (within 30 s). Writing and reading run side by
    /// side: a server may answer (413) before it has read a large body, and close.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<Answer> {
        let (mut reader, mut writer) = self.stream.split();
        let buffer = &mut self.buffer;
        let exchange =
            async { tokio::join!(writer.write_all(bytes), read_answer(&mut reader, buffer)) };
        let (written, answer) = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 30 s"))?;
        match answer {
            Ok(answer) => Ok(answer),
            Err(error) => Err(written.err().unwrap_or(error)),
        }
    }
}

async fn fill(reader: &mut (impl AsyncRead + Unpin), buffer: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 16 * 1024];
    let read = reader.read(&mut chunk).await?;
    if read == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        ));
    }
    buffer.extend_from_slice(&chunk[..read]);
    Ok(())
}

async fn read_answer(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> std::io::Result<Answer> {
    let head_end = loop {
        if let Some(position) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break position;
        }
        fill(reader, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    buffer.drain(..head_end + 4);
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked")
    });
    let body = if chunked {
        read_chunked(reader, buffer).await?
    } else {
        let length: usize = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        while buffer.len() < length {
            fill(reader, buffer).await?;
        }
        buffer.drain(..length).collect()
    };
    Ok(Answer { status, headers, body })
}

async fn read_chunked(
    reader: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(position) = buffer.windows(2).position(|w| w == b"\r\n") {
                break position;
            }
            fill(reader, buffer).await?;
        };
        let size_text = String::from_utf8_lossy(&buffer[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other(format!("bad chunk size {size_text:?}")))?;
        buffer.drain(..line_end + 2);
        while buffer.len() < size + 2 {
            fill(reader, buffer).await?;
        }
        body.extend(buffer.drain(..size));
        buffer.drain(..2);
        if size == 0 {
            return Ok(body);
        }
    }
}

/// One request on a fresh connection from the default address.
pub async fn send(server: SocketAddr, request: &Request) -> std::io::Result<Answer> {
    Connection::open(server, None).await?.send(request).await
}
