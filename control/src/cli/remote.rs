//! What every command that talks to a server shares: the `--server` / `--token` / `--ca-cert`
//! options (or `OUTPOST_SERVER` / `OUTPOST_TOKEN` / `OUTPOST_CA_CERT`), the client, tables and
//! URL path encoding.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::api::client::ApiClient;

/// How to reach the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's API URL, e.g. `https://outpost.example:8443`.
    #[arg(long, env = "OUTPOST_SERVER")]
    pub server: String,
    /// A bearer token from `outpost users add`.
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the CA that signed the server's certificate (default: the Mozilla roots).
    #[arg(long, env = "OUTPOST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

impl ServerArgs {
    pub fn client(&self) -> Result<ApiClient> {
        ApiClient::new(&self.server, self.token.clone(), self.ca_cert.as_deref())
            .context("setting up the API client")
    }
}

/// Percent-encodes one URL path segment.
pub fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Prints rows as left-aligned columns under a header.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", text.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A millisecond timestamp as RFC 3339 (UTC), or `-`.
pub fn time_text(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .map(super::rfc3339)
    .unwrap_or_else(|| "-".into())
}

/// A text field of a JSON object, or `-`.
pub fn text(value: &serde_json::Value, key: &str) -> String {
    match value.get(key) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(super::path_segment("1.0+rc/1 ?#%"), "1.0%2Brc%2F1%20%3F%23%25");
    }
}
