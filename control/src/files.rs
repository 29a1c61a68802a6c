//! File handling for the CLI: atomic writes (temp file, fsync, rename, directory fsync), reading
//! with size limits, and loading keys with their passphrase.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use outpost_shared::keys::{EncryptedKey, PublicKey, SecretKey};

/// Environment variable holding the passphrase of every private key.
pub const PASSPHRASE_ENV: &str = "OUTPOST_PASSPHRASE";

/// Writes `bytes` to `path` so that readers see the old or the new content, never a part.
/// `private` files are created readable by the owner only.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().context("output path has no file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let result = (|| -> Result<()> {
        let mut file = options.open(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a file, refusing anything larger than `limit` bytes.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {what} {}", path.display()))?;
    if meta.len() > limit {
        bail!("{what} {} is {} bytes, over the limit of {limit}", path.display(), meta.len());
    }
    fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// The passphrase from `OUTPOST_PASSPHRASE`, or asked on the terminal.
pub fn passphrase(prompt: &str, confirm: bool) -> Result<String> {
    if let Ok(value) = std::env::var(PASSPHRASE_ENV) {
        if value.is_empty() {
            bail!("{PASSPHRASE_ENV} is set but empty");
        }
        return Ok(value);
    }
    let first = rpassword::prompt_password(prompt).with_context(|| {
        format!("reading the passphrase (set {PASSPHRASE_ENV} when there is no terminal)")
    })?;
    if first.is_empty() {
        bail!("the passphrase must not be empty");
    }
    if confirm {
        let second = rpassword::prompt_password("Repeat the passphrase: ")
            .context("reading the passphrase again")?;
        if first != second {
            bail!("the passphrases differ");
        }
    }
    Ok(first)
}

/// Loads and decrypts a private key file (`*.key.json`).
pub fn load_secret_key(path: &Path) -> Result<SecretKey> {
    let bytes = read_limited(path, 64 * 1024, "key file")?;
    let sealed =
        EncryptedKey::from_json(&bytes).with_context(|| format!("key file {}", path.display()))?;
    let pass = passphrase(
        &format!("Passphrase for key {} ({}): ", sealed.public.name, sealed.public.keyid),
        false,
    )?;
    sealed.decrypt(&pass).with_context(|| format!("opening key file {}", path.display()))
}

/// Loads a public key file (`*.pub.json`); a private key file is accepted too and its public
/// half used.
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let bytes = read_limited(path, 64 * 1024, "public key file")?;
    if let Ok(key) = PublicKey::from_json(&bytes) {
        return Ok(key);
    }
    match EncryptedKey::from_json(&bytes) {
        Ok(sealed) => Ok(sealed.public),
        Err(_) => PublicKey::from_json(&bytes)
            .with_context(|| format!("public key file {}", path.display())),
    }
}
