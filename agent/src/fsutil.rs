//! Crash-safe file handling for the agent's data directory: atomic replacement (temp file,
//! fsync, rename, fsync of the directory) and reading with a size limit.
//!
//! Devices lose power without warning. Every file the agent changes is written through
//! [`write_atomic`], so after a crash a reader finds either the old content or the new, never a
//! mix, and a rename that was reported done survives the power loss.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// What went wrong with which file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("{path} is {actual} bytes, over the limit of {limit} for {what}")]
    TooLarge { path: PathBuf, what: &'static str, limit: u64, actual: u64 },
}

impl FileError {
    fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
        move |source| FileError::Io { action, path: path.to_path_buf(), source }
    }

    /// Whether the error is a missing file (as opposed to one that exists but cannot be read).
    pub fn is_not_found(&self) -> bool {
        matches!(self, FileError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Replaces `path` with `bytes` so that readers see the old or the new content, never a part,
/// and the new content survives a power loss once this returns.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let dir = parent_dir(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temporary)
            .map_err(FileError::io("creating", &temporary))?;
        file.write_all(bytes).map_err(FileError::io("writing", &temporary))?;
        file.sync_all().map_err(FileError::io("syncing", &temporary))?;
        fs::rename(&temporary, path).map_err(FileError::io("renaming into", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        // Best effort: a leftover temp file is harmless but untidy.
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// Creates `dir` and its parents if missing, and syncs the parent so the new entry is durable.
pub fn create_dir_durable(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(FileError::io("creating directory", dir))?;
    sync_dir(parent_dir(dir))
}

/// Flushes a directory's entries (new, renamed or removed files) to disk.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(FileError::io("syncing directory", dir))
}

/// Reads a whole file, refusing anything larger than `limit` bytes before reading it.
pub fn read_limited(path: &Path, limit: u64, what: &'static str) -> Result<Vec<u8>, FileError> {
    let file = fs::File::open(path).map_err(FileError::io("opening", path))?;
    let length = file.metadata().map_err(FileError::io("reading metadata of", path))?.len();
    if length > limit {
        return Err(FileError::TooLarge { path: path.to_path_buf(), what, limit, actual: length });
    }
    let mut bytes = Vec::with_capacity(length as usize);
    // `take` guards against a file that grows while it is read.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(FileError::io("reading", path))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            what,
            limit,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first").expect("write");
        write_atomic(&path, b"second").expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        let entries: Vec<_> = fs::read_dir(dir.path()).expect("list").flatten().collect();
        assert_eq!(entries.len(), 1, "temporary files left behind: {entries:?}");
    }

    #[test]
    fn read_limited_refuses_large_files_and_reports_missing_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        fs::write(&path, vec![0u8; 100]).expect("write");
        assert_eq!(read_limited(&path, 100, "test").expect("at the limit").len(), 100);
        assert!(matches!(
            read_limited(&path, 99, "test"),
            Err(FileError::TooLarge { limit: 99, actual: 100, .. })
        ));
        let missing = read_limited(&dir.path().join("nothing"), 10, "test").expect_err("missing");
        assert!(missing.is_not_found());
    }
}
