//! A bundle download into a slot's staging area, resumable after a disconnect and after a
//! restart, in bounded memory.
//!
//! ```text
//! slots/<x>/staging/download.part   the bytes received so far, in order
//! slots/<x>/staging/download.json   digest, declared size and the offset that is on disk
//! ```
//!
//! Each chunk is appended, the file synced, then `download.json` replaced atomically with the
//! new offset; on reopening, the part file is cut back to the recorded offset and its bytes are
//! hashed again in blocks, so the running digest always covers exactly what is on disk. Memory
//! use is one chunk plus one read buffer, whatever the bundle's size.
//!
//! Checks against the plan's signed digest and size: a chunk of another artifact or at another
//! offset is ignored (a stale answer); a chunk claiming another total size is refused
//! (`oversized` when larger: nothing beyond the declared size is ever written); the whole file
//! must hash to the digest (`digest_mismatch`), after which the partial file is discarded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use outpost_shared::VerifyError;
use outpost_shared::wire::{ChunkFrame, Digest};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::fsutil::{self, FileError};

const PART_FILE: &str = "download.part";
const META_FILE: &str = "download.json";
const REHASH_BLOCK_BYTES: usize = 64 * 1024;
const MAX_META_BYTES: u64 = 4096;

/// Why a download cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    File(#[from] FileError),
    /// The transfer contradicts the signed plan; the download is discarded.
    #[error("transfer refused: {0}")]
    Refused(VerifyError),
}

/// What a chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Written; more to come.
    Advanced,
    /// Not for this download or not at the expected offset: ignored.
    Ignored,
    /// The last byte arrived and the whole file matches the digest and size.
    Complete,
}

/// `download.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    digest: String,
    size: u64,
    offset: u64,
}

/// One download in progress.
#[derive(Debug)]
pub struct Download {
    dir: PathBuf,
    digest: Digest,
    size: u64,
    offset: u64,
    hasher: sha2::Sha256,
    file: File,
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io { action, path: path.to_path_buf(), source }
}

impl Download {
    /// Opens the download of `digest` (`size` bytes) in `dir`, resuming what is on disk for the
    /// same artifact and discarding anything else.
    pub fn open(dir: &Path, digest: Digest, size: u64) -> Result<Self, DownloadError> {
        fsutil::create_dir_durable(dir)?;
        let part = dir.join(PART_FILE);
        let meta_path = dir.join(META_FILE);
        let resumable = fsutil::read_limited(&meta_path, MAX_META_BYTES, "download record")
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Meta>(&bytes).ok())
            .filter(|meta| meta.digest == digest.as_str() && meta.size == size)
            .map(|meta| meta.offset)
            .filter(|offset| *offset <= size)
            .filter(|offset| fs::metadata(&part).is_ok_and(|m| m.len() >= *offset));
        let offset = resumable.unwrap_or(0);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .map_err(io_error("opening", &part))?;
        // Bytes past the recorded offset were written but never recorded: not trusted.
        file.set_len(offset).map_err(io_error("truncating", &part))?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0u8; REHASH_BLOCK_BYTES];
        let mut remaining = offset;
        while remaining > 0 {
            let want = usize::try_from(remaining.min(REHASH_BLOCK_BYTES as u64)).unwrap_or(0);
            let Some(block) = buffer.get_mut(..want) else { break };
            file.read_exact(block).map_err(io_error("reading", &part))?;
            hasher.update(&*block);
            remaining -= want as u64;
        }
        let mut download = Self { dir: dir.to_path_buf(), digest, size, offset, hasher, file };
        download.record()?;
        Ok(download)
    }

    /// The first byte not yet on disk: where to ask from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether every byte is on disk (a zero-byte artifact is complete at once).
    pub fn is_complete(&self) -> bool {
        self.offset == self.size
    }

    /// The complete file, once [`Progress::Complete`] was returned.
    pub fn part_path(&self) -> PathBuf {
        self.dir.join(PART_FILE)
    }

    /// Applies one chunk (already checked against its own header by the wire layer).
    pub fn accept(&mut self, frame: &ChunkFrame) -> Result<Progress, DownloadError> {
        let header = &frame.header;
        if header.digest != self.digest {
            return Ok(Progress::Ignored);
        }
        if header.total_size != self.size {
            let error = if header.total_size > self.size {
                VerifyError::Oversized {
                    what: format!("transfer of {}", self.digest),
                    limit: self.size,
                    actual: header.total_size,
                }
            } else {
                VerifyError::SizeMismatch {
                    what: format!("transfer of {}", self.digest),
                    expected: self.size,
                    actual: header.total_size,
                }
            };
            self.discard();
            return Err(DownloadError::Refused(error));
        }
        if header.offset != self.offset || self.is_complete() {
            return Ok(Progress::Ignored);
        }
        let part = self.part_path();
        self.file.write_all(&frame.data).map_err(io_error("writing", &part))?;
        self.file.sync_data().map_err(io_error("syncing", &part))?;
        self.hasher.update(&frame.data);
        self.offset += frame.data.len() as u64;
        self.record()?;
        if !self.is_complete() {
            return Ok(Progress::Advanced);
        }
        let actual = format!("sha256:{}", hex::encode(self.hasher.clone().finalize()));
        if actual != self.digest.as_str() {
            self.discard();
            return Err(DownloadError::Refused(VerifyError::DigestMismatch {
                what: "downloaded bundle".into(),
                expected: self.digest.to_string(),
                actual,
            }));
        }
        Ok(Progress::Complete)
    }

    /// Persists the offset that is on disk.
    fn record(&mut self) -> Result<(), FileError> {
        let meta = Meta { digest: self.digest.to_string(), size: self.size, offset: self.offset };
        let bytes = serde_json::to_vec(&meta).unwrap_or_default();
        fsutil::write_atomic(&self.dir.join(META_FILE), &bytes)
    }

    /// Forgets everything downloaded so far.
    pub fn discard(&mut self) {
        self.offset = 0;
        self.hasher = sha2::Sha256::new();
        let _ = self.file.set_len(0);
        let _ = self.record();
    }
}

/// Removes a staging area (after an install, or a refused download).
pub fn clear(dir: &Path) {
    if dir.exists()
        && let Err(error) = fs::remove_dir_all(dir)
    {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove a staging area");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn frame(data: &[u8], offset: usize, len: usize, total: u64, digest: &Digest) -> ChunkFrame {
        let end = (offset + len).min(data.len());
        ChunkFrame::new("r", digest.clone(), offset as u64, total, data[offset..end].to_vec())
            .expect("frame")
    }

    #[test]
    fn resumes_from_disk_and_completes_with_the_whole_digest_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = artifact();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        let mut download = Download::open(dir.path(), digest.clone(), size).expect("open");
        assert_eq!(
            download.accept(&frame(&data, 0, 4000, size, &digest)).expect("chunk"),
            Progress::Advanced
        );
        // A stale answer for an offset already written changes nothing.
        assert_eq!(
            download.accept(&frame(&data, 0, 4000, size, &digest)).expect("stale"),
            Progress::Ignored
        );
        drop(download);
        // A restart: the part file has extra bytes that were never recorded.
        let part = dir.path().join(PART_FILE);
        let mut file = OpenOptions::new().append(true).open(&part).expect("part");
        file.write_all(b"garbage").expect("append");
        drop(file);
        let mut download = Download::open(dir.path(), digest.clone(), size).expect("reopen");
        assert_eq!(download.offset(), 4000);
        assert_eq!(
            download.accept(&frame(&data, 4000, 4000, size, &digest)).expect("chunk"),
            Progress::Advanced
        );
        assert_eq!(
            download.accept(&frame(&data, 8000, 4000, size, &digest)).expect("last"),
            Progress::Complete
        );
        assert_eq!(fs::read(download.part_path()).expect("read"), data);
    }

    #[test]
    fn a_transfer_beyond_the_declared_size_or_with_other_bytes_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = artifact();
        let digest = Digest::of(&data);
        let size = data.len() as u64;
        let mut download = Download::open(dir.path(), digest.clone(), size).expect("open");
        let bigger = frame(&data, 0, 100, size + 1, &digest);
        let Err(DownloadError::Refused(error)) = download.accept(&bigger) else {
            panic!("a larger total size must be refused");
        };
        assert_eq!(error.code(), "oversized");
        let mut other = data.clone();
        other[5000] ^= 0xff;
        let mut download = Download::open(dir.path(), digest.clone(), size).expect("open");
        download.accept(&frame(&other, 0, 6000, size, &digest)).expect("first part");
        let Err(DownloadError::Refused(error)) =
            download.accept(&frame(&other, 6000, 6000, size, &digest))
        else {
            panic!("a flipped byte must be refused");
        };
        assert_eq!(error.code(), "digest_mismatch");
        assert_eq!(download.offset(), 0, "the bad bytes are discarded");
    }
}
