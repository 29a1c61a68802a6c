//! What the console remembers between runs: the last server URL and CA file in a small JSON
//! file in the app's config folder, and the token in the OS keyring (Secret Service on Linux,
//! Keychain on macOS, Credential Manager on Windows). The token is never written to a plain
//! file: where no keyring answers, it is not remembered and the Connect page says so.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConsoleError, ErrorKind};

/// The keyring service name the console's tokens are stored under (one entry per server URL).
pub const KEYRING_SERVICE: &str = "org.outpost.console";

/// The remembered connection settings (never the token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, specta::Type)]
pub struct Remembered {
    /// The last server URL connected to.
    pub url: Option<String>,
    /// The CA file used for that server's HTTPS, if any.
    pub ca_file: Option<String>,
}

/// Reads the settings file; a missing or unreadable file means nothing is remembered.
pub fn load(path: &Path) -> Remembered {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes the settings file (via a temporary file and a rename, so it is never half written).
pub fn save(path: &Path, remembered: &Remembered) -> Result<(), ConsoleError> {
    let error = |e: std::io::Error| {
        ConsoleError::io(format!("cannot write the console settings {}: {e}", path.display()))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let text = serde_json::to_vec_pretty(remembered)
        .map_err(|e| ConsoleError::io(format!("cannot encode the console settings: {e}")))?;
    let temporary: PathBuf = path.with_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// Whether the OS keyring can hold a token here, and if not why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, specta::Type)]
pub struct KeyringStatus {
    pub available: bool,
    /// Why not, when it is not (e.g. no Secret Service on the session bus).
    pub detail: Option<String>,
}

fn entry(url: &str) -> Result<keyring::Entry, keyring::Error> {
    keyring::Entry::new(KEYRING_SERVICE, url)
}

/// Asks the keyring whether it works, by reading an entry that may not exist.
pub fn keyring_status() -> KeyringStatus {
    match entry("probe").and_then(|entry| entry.get_password()) {
        Ok(_) | Err(keyring::Error::NoEntry) => KeyringStatus { available: true, detail: None },
        Err(error) => KeyringStatus { available: false, detail: Some(error.to_string()) },
    }
}

/// The token remembered for `url`, if the keyring has one.
pub fn load_token(url: &str) -> Option<String> {
    entry(url).and_then(|entry| entry.get_password()).ok()
}

/// Stores the token for `url` in the keyring.
pub fn save_token(url: &str, token: &str) -> Result<(), ConsoleError> {
    entry(url).and_then(|entry| entry.set_password(token)).map_err(|error| {
        ConsoleError::new(
            ErrorKind::Keyring,
            format!("the OS keyring did not store the token: {error}"),
            "Connect without \"remember\" (you will type the token next time), or start a \
             keyring service (e.g. gnome-keyring) and try again.",
        )
    })
}

/// Removes the token of `url` from the keyring; a token that was not there is no error.
pub fn delete_token(url: &str) -> Result<(), ConsoleError> {
    match entry(url).and_then(|entry| entry.delete_credential()) {
        Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
        Err(error) => Err(ConsoleError::new(
            ErrorKind::Keyring,
            format!("the OS keyring did not remove the token: {error}"),
            "Remove the entry `org.outpost.console` with your keyring's own tool.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_hold_no_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/settings.json");
        assert_eq!(load(&path), Remembered::default(), "nothing remembered at first");
        let remembered = Remembered {
            url: Some("https://control:8443".into()),
            ca_file: Some("/ca.pem".into()),
        };
        save(&path, &remembered).expect("saved");
        assert_eq!(load(&path), remembered);
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(!text.contains("token"), "{text}");
        std::fs::write(&path, b"{not json").expect("overwrite");
        assert_eq!(load(&path), Remembered::default(), "a broken file is ignored");
    }

    #[test]
    fn the_keyring_status_is_an_answer_either_way() {
        let status = keyring_status();
        assert_eq!(status.available, status.detail.is_none(), "{status:?}");
    }
}
