//! The one error type every console command returns: a kind the frontend branches on, what
//! went wrong, and what to do about it. It crosses IPC as
//! `{"kind": "unauthorized", "message": "…", "hint": "…"}`.

use outpost_control::api::client::ClientError;
use serde::Serialize;

/// What kind of failure a command met; the frontend picks its reaction by this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, specta::Type)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No server connection yet (or it was closed).
    NotConnected,
    /// The token was refused (401): log in again.
    Unauthorized,
    /// The user's role may not do this (403).
    Forbidden,
    /// The server could not be reached (network, TLS, wrong URL).
    Unreachable,
    /// What the user typed or chose was refused before or by the server (400, 422).
    InvalidInput,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request clashes with the server's state (409).
    Conflict,
    /// The server failed or answered something unexpected (5xx, bad JSON).
    Server,
    /// The OS keyring refused to store or read the token.
    Keyring,
    /// The approver's key file could not be read, decrypted or used.
    Signing,
    /// The embedded control of local mode could not start.
    Local,
    /// A file or folder on this machine could not be read or written.
    Io,
}

/// A failed command: `kind`, `message` (what went wrong) and `hint` (what to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, specta::Type, thiserror::Error)]
#[error("{message}")]
pub struct ConsoleError {
    pub kind: ErrorKind,
    pub message: String,
    pub hint: String,
}

impl ConsoleError {
    pub fn new(kind: ErrorKind, message: impl Into<String>, hint: impl Into<String>) -> Self {
        ConsoleError { kind, message: message.into(), hint: hint.into() }
    }

    pub fn not_connected() -> Self {
        Self::new(
            ErrorKind::NotConnected,
            "the console is not connected to a control server",
            "Connect on the Connect page (a server URL and token, or local mode).",
        )
    }

    pub fn invalid(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message, hint)
    }

    pub fn io(message: impl Into<String>) -> Self {
        Self::new(
            ErrorKind::Io,
            message,
            "Check that the path exists and that this user may read and write it.",
        )
    }
}

impl From<ClientError> for ConsoleError {
    fn from(error: ClientError) -> Self {
        let message = error.to_string();
        match &error {
            ClientError::Transport { .. } => Self::new(
                ErrorKind::Unreachable,
                message,
                "Check the server URL, that `outpost serve` runs there, and the network; then \
                 retry.",
            ),
            ClientError::Url { .. } => Self::new(
                ErrorKind::InvalidInput,
                message,
                "Type the URL the server prints at start, e.g. http://127.0.0.1:8443.",
            ),
            ClientError::Certificate { .. } => Self::new(
                ErrorKind::InvalidInput,
                message,
                "Give the PEM file of the CA that signed the server's certificate.",
            ),
            ClientError::Decode { .. } => Self::new(
                ErrorKind::Server,
                message,
                "The server answered something this console does not understand: check that \
                 console and server are the same Outpost version.",
            ),
            ClientError::Refused { status, .. } => {
                let (kind, hint) = match status {
                    401 => (
                        ErrorKind::Unauthorized,
                        "The token is unknown or revoked: ask an admin for a token \
                         (`outpost users add`) and connect again.",
                    ),
                    403 => (
                        ErrorKind::Forbidden,
                        "Your role may not do this: ask an admin, or connect as a user with \
                         the needed role.",
                    ),
                    404 => (
                        ErrorKind::NotFound,
                        "It may have been removed or never existed: refresh the view.",
                    ),
                    409 => (
                        ErrorKind::Conflict,
                        "The server's state changed: refresh the view and try again.",
                    ),
                    400 | 413 | 422 => (
                        ErrorKind::InvalidInput,
                        "Correct the input named in the message and try again.",
                    ),
                    _ => (
                        ErrorKind::Server,
                        "The server failed: its log says more; retry once it is healthy.",
                    ),
                };
                Self::new(kind, message, hint)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_map_to_kinds_with_hints() {
        let refused =
            |status| ClientError::Refused { status, code: String::new(), message: "no".into() };
        for (status, kind) in [
            (401, ErrorKind::Unauthorized),
            (403, ErrorKind::Forbidden),
            (404, ErrorKind::NotFound),
            (409, ErrorKind::Conflict),
            (422, ErrorKind::InvalidInput),
            (400, ErrorKind::InvalidInput),
            (500, ErrorKind::Server),
        ] {
            let error = ConsoleError::from(refused(status));
            assert_eq!(error.kind, kind, "status {status}");
            assert!(error.message.contains("no"));
            assert!(!error.hint.is_empty());
        }
        let unreachable = ConsoleError::from(ClientError::Transport {
            url: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(unreachable.kind, ErrorKind::Unreachable);
        assert!(unreachable.message.contains("connection refused"));
    }

    #[test]
    fn errors_cross_ipc_as_a_tagged_object() {
        let json = serde_json::to_value(ConsoleError::not_connected()).expect("serializes");
        assert_eq!(json["kind"], "not_connected");
        assert!(json["message"].as_str().is_some_and(|m| m.contains("not connected")));
        assert!(json["hint"].as_str().is_some_and(|h| h.contains("Connect")));
    }
}
