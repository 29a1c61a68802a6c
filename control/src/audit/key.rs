//! The audit log's Ed25519 signing key: `<data_dir>/audit-log/log.key` (a C2SP signer key,
//! mode 0600 in a 0700 directory; a key readable by others is refused), created on first use,
//! its verifier key recorded in the database so every control instance on one database signs
//! with the same key (as the fleet CA does, [`crate::ca`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::note::{NoteError, NoteSigner, NoteVerifier};

/// The key's directory inside the data directory.
pub const KEY_DIRECTORY: &str = "audit-log";

/// Why the log key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum LogKeyError {
    #[error("audit log key {path}: {reason}")]
    File { path: String, reason: String },
    #[error("audit log key {path} is readable by group or others (mode {mode:o}): `chmod 600` it")]
    Permissions { path: String, mode: u32 },
    #[error("audit log key: {0}")]
    Key(#[from] NoteError),
    /// This instance's key is not the one recorded in the database.
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// The key file in a data directory.
#[derive(Debug, Clone)]
pub struct LogKeyFile {
    pub directory: PathBuf,
}

impl LogKeyFile {
    pub fn in_data_dir(data_dir: &Path) -> LogKeyFile {
        LogKeyFile { directory: data_dir.join(KEY_DIRECTORY) }
    }

    pub fn path(&self) -> PathBuf {
        self.directory.join("log.key")
    }

    fn error(&self, reason: impl std::fmt::Display) -> LogKeyError {
        LogKeyError::File { path: self.path().display().to_string(), reason: reason.to_string() }
    }

    /// The key, `None` when there is no file.
    pub fn load(&self) -> Result<Option<NoteSigner>, LogKeyError> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.path();
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.error(error)),
        };
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(LogKeyError::Permissions {
                path: path.display().to_string(),
                mode: mode & 0o777,
            });
        }
        let text =
            zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| self.error(e))?);
        Ok(Some(NoteSigner::parse(&text).map_err(|e| self.error(e))?))
    }

    /// Writes a new key (directory 0700, file 0600); refuses to replace one.
    pub fn store(&self, signer: &NoteSigner) -> Result<(), LogKeyError> {
        use std::os::unix::fs::DirBuilderExt as _;
        if self.path().exists() {
            return Err(self.error("already exists"));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.directory)
            .map_err(|e| self.error(e))?;
        let mut text = signer.to_skey();
        text.push('\n');
        crate::files::write_atomic(&self.path(), text.as_bytes(), true)
            .map_err(|e| self.error(format!("{e:#}")))
    }
}

/// A key name for a new log: `outpost-audit/<16 hex of SHA-256(random)>`, unique per log.
fn new_signer() -> Result<NoteSigner, LogKeyError> {
    // The name must be known before the key, so it comes from its own randomness.
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| NoteError::Key(format!("randomness: {e}")))?;
    let name = format!("outpost-audit/{}", &hex::encode(Sha256::digest(bytes))[..16]);
    Ok(NoteSigner::generate(&name)?)
}

/// The log key of a running server: loaded or created on first use and checked against the
/// database.
#[derive(Debug)]
pub struct LogKeyCell {
    file: LogKeyFile,
    loaded: tokio::sync::Mutex<Option<Arc<NoteSigner>>>,
}

impl LogKeyCell {
    pub fn new(data_dir: &Path) -> LogKeyCell {
        LogKeyCell {
            file: LogKeyFile::in_data_dir(data_dir),
            loaded: tokio::sync::Mutex::new(None),
        }
    }

    /// The key: from memory, the file, or new. The database's record decides which key is the
    /// log's; a file that differs from it, or none while it names one, is refused.
    pub async fn get(&self, store: &crate::store::Store) -> Result<Arc<NoteSigner>, LogKeyError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(signer) = loaded.as_ref() {
            return Ok(signer.clone());
        }
        let file = self.file.clone();
        let from_file = tokio::task::spawn_blocking(move || file.load())
            .await
            .map_err(|e| self.file.error(e))??;
        let recorded = store.audit_log_key().await?;
        let directory = self.file.directory.display();
        let signer = match (from_file, recorded) {
            (Some(signer), Some(recorded)) if signer.verifier().to_vkey() == recorded => signer,
            (Some(signer), Some(recorded)) => {
                return Err(LogKeyError::Mismatch(format!(
                    "the audit log key in {directory} ({}) is not the log's key recorded in the \
                     database ({recorded}): copy the audit-log directory of the instance that \
                     created it here",
                    signer.verifier().to_vkey()
                )));
            }
            (None, Some(recorded)) => {
                return Err(LogKeyError::Mismatch(format!(
                    "the database records the audit log key {recorded} but {directory} holds no \
                     key: copy the audit-log directory of the instance that created it here"
                )));
            }
            (Some(signer), None) => {
                self.record(store, &signer).await?;
                signer
            }
            (None, None) => {
                let signer = new_signer()?;
                let file = self.file.clone();
                let copy = signer.clone();
                tokio::task::spawn_blocking(move || file.store(&copy))
                    .await
                    .map_err(|e| self.file.error(e))??;
                if let Err(error) = self.record(store, &signer).await {
                    // Another instance recorded its key first: this one was never used.
                    let _ = std::fs::remove_file(self.file.path());
                    return Err(error);
                }
                tracing::info!(key = %signer.verifier().to_vkey(), "audit log key created");
                signer
            }
        };
        let signer = Arc::new(signer);
        *loaded = Some(signer.clone());
        Ok(signer)
    }

    async fn record(
        &self,
        store: &crate::store::Store,
        signer: &NoteSigner,
    ) -> Result<(), LogKeyError> {
        let ours = signer.verifier().to_vkey();
        let recorded = store.record_audit_log_key(&ours).await?;
        if recorded != ours {
            return Err(LogKeyError::Mismatch(format!(
                "another control instance recorded the audit log key {recorded} first: copy its \
                 audit-log directory to {}",
                self.file.directory.display()
            )));
        }
        Ok(())
    }

    /// The verifier key recorded in the database, if any.
    pub async fn verifier(
        store: &crate::store::Store,
    ) -> Result<Option<NoteVerifier>, LogKeyError> {
        Ok(match store.audit_log_key().await? {
            Some(text) => Some(NoteVerifier::parse(&text)?),
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_is_private_and_a_readable_one_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let directory = tempfile::tempdir().expect("tempdir");
        let file = LogKeyFile::in_data_dir(directory.path());
        assert!(file.load().expect("load").is_none());
        let signer = new_signer().expect("signer");
        assert!(signer.verifier().name().starts_with("outpost-audit/"));
        file.store(&signer).expect("store");
        let mode =
            |path: &Path| std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&file.path()), 0o600);
        assert_eq!(mode(&file.directory), 0o700);
        let loaded = file.load().expect("load").expect("present");
        assert_eq!(loaded.verifier(), signer.verifier());
        assert!(file.store(&signer).is_err(), "never replaced");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        assert!(matches!(file.load(), Err(LogKeyError::Permissions { .. })));
    }

    #[tokio::test]
    async fn every_instance_on_one_database_signs_with_the_recorded_key() {
        let directory = tempfile::tempdir().expect("tempdir");
        let url = crate::store::Store::sqlite_url_in(&directory.path().join("db")).expect("url");
        let store = crate::store::Store::connect(&crate::store::StoreOptions {
            url,
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("store");
        let first = LogKeyCell::new(&directory.path().join("first"));
        let key = first.get(&store).await.expect("created");
        assert_eq!(store.audit_log_key().await.expect("recorded"), Some(key.verifier().to_vkey()));
        assert_eq!(first.get(&store).await.expect("again").verifier(), key.verifier());
        // A second instance with its own data directory: no key there, so it refuses.
        let second_dir = directory.path().join("second");
        let second = LogKeyCell::new(&second_dir);
        let error = second.get(&store).await.expect_err("no key file");
        assert!(matches!(error, LogKeyError::Mismatch(_)), "{error}");
        assert!(error.to_string().contains("copy the audit-log directory"), "{error}");
        // Another key there: refused as well.
        let other = new_signer().expect("other");
        LogKeyFile::in_data_dir(&second_dir).store(&other).expect("store");
        assert!(matches!(second.get(&store).await, Err(LogKeyError::Mismatch(_))));
        // The first instance's directory copied: the same key.
        std::fs::remove_file(LogKeyFile::in_data_dir(&second_dir).path()).expect("rm");
        LogKeyFile::in_data_dir(&second_dir).store(&key).expect("copy");
        let third = LogKeyCell::new(&second_dir);
        assert_eq!(third.get(&store).await.expect("same key").verifier(), key.verifier());
    }
}
