//! The bounded on-disk queue of statistics windows not yet acknowledged by the broker.
//!
//! Layout under `<data_dir>/queue/`:
//! - `<seq, 20 digits>.json`: one encoded [`StatsWindow`] per file, exactly the MQTT payload;
//! - `dropped`: the number of windows ever dropped because the queue was full (decimal);
//! - `event-seq`: the next event sequence number, kept here by [`crate::mqtt`];
//! - `corrupt/`: files that could not be read back, kept for inspection (at most
//!   [`MAX_QUARANTINED_FILES`]).
//!
//! Every write goes to a temporary file that is fsynced, renamed into place, and followed by an
//! fsync of the directory, so a power cut leaves either the old or the new file, never half of
//! one. Leftover temporaries from such a cut are deleted on [`WindowQueue::open`]; files that
//! do not decode as the window their name promises are moved to `corrupt/`. Opening never
//! panics on what it finds.
//!
//! Bounds: [`QueueConfig::max_windows`] and [`QueueConfig::max_bytes`]. A new window always gets
//! in; the oldest are dropped until both bounds hold again (the newest alone may exceed
//! `max_bytes`, by at most one JSON payload of 1 MiB), and the drop counter grows by as many.
//! The queue does its IO synchronously: a window per period and an unlink per acknowledgement
//! are small, and keeping the order of disk operations simple is what makes it crash-safe.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use outpost_shared::wire::{self, MAX_JSON_PAYLOAD_BYTES, StatsWindow, WireError};
use serde::{Deserialize, Serialize};

/// Name of the queue directory under the agent's data directory.
pub const QUEUE_DIR: &str = "queue";
/// Files moved aside because they could not be read back.
pub const CORRUPT_DIR: &str = "corrupt";
/// How many corrupt files are kept for inspection; older ones are deleted.
pub const MAX_QUARANTINED_FILES: usize = 16;
const DROPPED_FILE: &str = "dropped";
/// The event sequence counter of [`crate::mqtt`], a neighbour the queue must not touch.
pub(crate) const EVENT_SEQ_FILE: &str = "event-seq";
const WINDOW_SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";
const SEQ_DIGITS: usize = 20;

/// `[queue]` of the agent config: how much the agent keeps while it cannot reach the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most windows kept unsent. Default 10 080: a week of 60-second windows.
    pub max_windows: u64,
    /// Most bytes of unsent windows (encoded JSON). Default 16 MiB.
    pub max_bytes: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig { max_windows: 10_080, max_bytes: 16 * 1024 * 1024 }
    }
}

impl QueueConfig {
    /// Both bounds must allow at least one window.
    pub fn validate(&self) -> Result<(), QueueError> {
        if self.max_windows == 0 {
            return Err(QueueError::Config("queue.max_windows must be at least 1".into()));
        }
        if self.max_bytes == 0 {
            return Err(QueueError::Config("queue.max_bytes must be at least 1".into()));
        }
        Ok(())
    }
}

/// Why the queue could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("invalid queue config: {0}")]
    Config(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("statistics window {seq} cannot be queued: {source}")]
    Encode {
        seq: u64,
        #[source]
        source: WireError,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> QueueError {
    move |source| QueueError::Io { action, path: path.to_path_buf(), source }
}

/// Windows the queue dropped to stay within its bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Sequence numbers of the dropped windows, oldest first.
    pub seqs: Vec<u64>,
    /// All windows ever dropped by this device's queue, these included.
    pub total: u64,
}

impl Dropped {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What [`WindowQueue::open`] found on disk besides the queued windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Leftover temporary files of interrupted writes, deleted.
    pub removed_temporaries: usize,
    /// Files that did not read back as their window, moved to `corrupt/`.
    pub quarantined: Vec<String>,
    /// Windows dropped because the bounds shrank since the last run.
    pub dropped: Dropped,
}

/// The queue: an index of what is on disk, kept in step with every write.
#[derive(Debug)]
pub struct WindowQueue {
    dir: PathBuf,
    config: QueueConfig,
    /// seq → payload size in bytes.
    index: BTreeMap<u64, u64>,
    bytes: u64,
    dropped_total: u64,
}

impl WindowQueue {
    /// Opens (creating it if needed) `<data_dir>/queue`, cleans up after a crash and enforces
    /// the bounds.
    pub fn open(
        data_dir: &Path,
        config: QueueConfig,
    ) -> Result<(WindowQueue, OpenReport), QueueError> {
        config.validate()?;
        let dir = data_dir.join(QUEUE_DIR);
        fs::create_dir_all(&dir).map_err(io_error("create", &dir))?;
        let mut report = OpenReport::default();
        let mut index = BTreeMap::new();
        let entries = fs::read_dir(&dir).map_err(io_error("list", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("list", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(file = ?entry.path(), "ignoring a file with a non-UTF-8 name in the queue");
                continue;
            };
            let path = entry.path();
            if name.ends_with(TEMP_SUFFIX) {
                tracing::warn!(file = %path.display(), "removing the leftover of an interrupted write");
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
                report.removed_temporaries += 1;
                continue;
            }
            if matches!(name, DROPPED_FILE | EVENT_SEQ_FILE | CORRUPT_DIR) {
                continue;
            }
            let Some(seq) = parse_window_name(name) else {
                tracing::warn!(file = %path.display(), "ignoring an unknown file in the queue directory");
                continue;
            };
            match read_window(&path, seq) {
                Ok(size) => {
                    index.insert(seq, size);
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), %reason, "quarantining an unreadable queued window");
                    quarantine(&dir, name)?;
                    report.quarantined.push(name.to_string());
                }
            }
        }
        let dropped_total = read_counter(&dir.join(DROPPED_FILE)).unwrap_or_else(|reason| {
            tracing::warn!(%reason, "the queue's drop counter is unreadable; counting from zero");
            0
        });
        if report.removed_temporaries > 0 || !report.quarantined.is_empty() {
            sync_dir(&dir)?;
        }
        let bytes = index.values().sum();
        let mut queue = WindowQueue { dir, config, index, bytes, dropped_total };
        report.dropped = queue.enforce_bounds(None)?;
        Ok((queue, report))
    }

    /// The queue directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Encodes and stores `window` durably, then drops the oldest windows if a bound is
    /// exceeded. A window with a sequence number already queued replaces it.
    pub fn push(&mut self, window: &StatsWindow) -> Result<Dropped, QueueError> {
        let payload = wire::encode(window)
            .map_err(|source| QueueError::Encode { seq: window.seq, source })?;
        self.push_encoded(window.seq, &payload)
    }

    /// Stores an already encoded window (the exact MQTT payload).
    pub fn push_encoded(&mut self, seq: u64, payload: &[u8]) -> Result<Dropped, QueueError> {
        write_atomic(&self.dir, &window_name(seq), payload)?;
        if let Some(old) = self.index.insert(seq, payload.len() as u64) {
            tracing::warn!(
                seq,
                "a window with this sequence number was already queued; replaced it"
            );
            self.bytes -= old;
        }
        self.bytes += payload.len() as u64;
        self.enforce_bounds(Some(seq))
    }

    /// The sequence number of the oldest queued window.
    pub fn peek_oldest(&self) -> Option<u64> {
        self.index.keys().next().copied()
    }

    /// The queued sequence numbers, oldest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.index.contains_key(&seq)
    }

    /// The payload of a queued window, or `None` if it is not queued.
    pub fn read(&self, seq: u64) -> Result<Option<Vec<u8>>, QueueError> {
        if !self.index.contains_key(&seq) {
            return Ok(None);
        }
        let path = self.dir.join(window_name(seq));
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &path)(e)),
        }
    }

    /// Deletes a window once the broker acknowledged it. Returns whether it was queued.
    pub fn remove(&mut self, seq: u64) -> Result<bool, QueueError> {
        let Some(size) = self.index.remove(&seq) else {
            return Ok(false);
        };
        self.bytes -= size;
        let path = self.dir.join(window_name(seq));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &path)(e)),
        }
        // Not syncing the directory here: a removal lost to a power cut only means the window
        // is sent once more, and receivers deduplicate by sequence number.
        Ok(true)
    }

    /// Windows queued.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of queued windows.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// All windows ever dropped because the queue was full.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// Drops the oldest windows (never `keep`) until both bounds hold; persists the counter.
    fn enforce_bounds(&mut self, keep: Option<u64>) -> Result<Dropped, QueueError> {
        let mut dropped = Vec::new();
        while self.index.len() as u64 > self.config.max_windows
            || self.bytes > self.config.max_bytes
        {
            let Some(oldest) = self.index.keys().copied().find(|seq| Some(*seq) != keep) else {
                break;
            };
            self.remove(oldest)?;
            dropped.push(oldest);
        }
        if dropped.is_empty() {
            return Ok(Dropped { seqs: dropped, total: self.dropped_total });
        }
        self.dropped_total = self.dropped_total.saturating_add(dropped.len() as u64);
        write_atomic(&self.dir, DROPPED_FILE, self.dropped_total.to_string().as_bytes())?;
        tracing::warn!(
            count = dropped.len(),
            first = dropped.first().copied(),
            last = dropped.last().copied(),
            total = self.dropped_total,
            "queue full: dropped the oldest unsent windows"
        );
        Ok(Dropped { seqs: dropped, total: self.dropped_total })
    }
}

fn window_name(seq: u64) -> String {
    format!("{seq:0width$}{WINDOW_SUFFIX}", width = SEQ_DIGITS)
}

fn parse_window_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(WINDOW_SUFFIX)?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Size of a queued window file if it decodes as window `seq`, else why not.
fn read_window(path: &Path, seq: u64) -> Result<u64, String> {
    let length = fs::metadata(path).map_err(|e| e.to_string())?.len();
    if length > MAX_JSON_PAYLOAD_BYTES as u64 {
        return Err(format!("{length} bytes is more than any window may have"));
    }
    let bytes = fs::read(path).map_err(|e| e.to_string())?;
    let window: StatsWindow = wire::decode(&bytes).map_err(|e| e.to_string())?;
    if window.seq != seq {
        return Err(format!("the file holds window {} instead", window.seq));
    }
    Ok(bytes.len() as u64)
}

/// Moves `name` into `corrupt/`, keeping only the newest [`MAX_QUARANTINED_FILES`] there.
fn quarantine(dir: &Path, name: &str) -> Result<(), QueueError> {
    let corrupt = dir.join(CORRUPT_DIR);
    fs::create_dir_all(&corrupt).map_err(io_error("create", &corrupt))?;
    let from = dir.join(name);
    let to = corrupt.join(name);
    fs::rename(&from, &to).map_err(io_error("quarantine", &from))?;
    let mut kept: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&corrupt)
        .map_err(io_error("list", &corrupt))?
        .flatten()
        .map(|entry| {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            (modified, entry.path())
        })
        .collect();
    if kept.len() > MAX_QUARANTINED_FILES {
        kept.sort();
        for (_, old) in &kept[..kept.len() - MAX_QUARANTINED_FILES] {
            if let Err(e) = fs::remove_file(old) {
                tracing::warn!(file = %old.display(), error = %e, "cannot delete an old quarantined file");
            }
        }
    }
    Ok(())
}

/// A decimal counter file; a missing file reads as zero.
pub(crate) fn read_counter(path: &Path) -> Result<u64, String> {
    match fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `dir/name` so that a crash leaves the old or the new content: temp file, fsync,
/// rename, directory fsync.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), QueueError> {
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let target = dir.join(name);
    let mut file = File::create(&temp).map_err(io_error("create", &temp))?;
    file.write_all(bytes).map_err(io_error("write", &temp))?;
    file.sync_all().map_err(io_error("fsync", &temp))?;
    drop(file);
    fs::rename(&temp, &target).map_err(io_error("rename into place", &target))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), QueueError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_shared::wire::{DeviceId, Digest, LatencyHistogram, ModelRef, ProtocolVersion};

    use super::*;

    pub(crate) fn window(seq: u64) -> StatsWindow {
        StatsWindow {
            v: ProtocolVersion,
            device: DeviceId::new("dev-1").expect("valid id"),
            model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
            seq,
            start_ms: seq * 1000,
            end_ms: seq * 1000 + 1000,
            count: 0,
            errors: BTreeMap::new(),
            latency: LatencyHistogram::default(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            classifier: None,
        }
    }

    fn config(max_windows: u64, max_bytes: u64) -> QueueConfig {
        QueueConfig { max_windows, max_bytes }
    }

    fn open(dir: &Path, config: QueueConfig) -> (WindowQueue, OpenReport) {
        WindowQueue::open(dir, config).expect("open queue")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn windows_survive_a_reopen_in_order() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mut queue, report) = open(data.path(), QueueConfig::default());
        assert_eq!(report, OpenReport::default());
        for seq in [3, 1, 2] {
            assert!(queue.push(&window(seq)).expect("push").is_empty());
        }
        assert_eq!(queue.peek_oldest(), Some(1));
        let payload = queue.read(2).expect("read").expect("queued");
        assert_eq!(wire::decode::<StatsWindow>(&payload).expect("decode"), window(2));
        let bytes = queue.bytes();
        drop(queue);

        let (queue, report) = open(data.path(), QueueConfig::default());
        assert_eq!(report, OpenReport::default());
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(queue.bytes(), bytes);
        assert_eq!(
            names(&data.path().join(QUEUE_DIR)),
            ["00000000000000000001.json", "00000000000000000002.json", "00000000000000000003.json"]
        );
    }

    #[test]
    fn remove_after_ack_deletes_the_file() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mut queue, _) = open(data.path(), QueueConfig::default());
        queue.push(&window(7)).expect("push");
        queue.push(&window(8)).expect("push");
        assert!(queue.remove(7).expect("remove"));
        assert!(!queue.remove(7).expect("second remove is a no-op"));
        assert_eq!(queue.read(7).expect("read"), None);
        assert_eq!(queue.peek_oldest(), Some(8));
        drop(queue);
        let (queue, _) = open(data.path(), QueueConfig::default());
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [8]);
    }

    #[test]
    fn full_by_count_drops_the_oldest_and_counts_persistently() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mut queue, _) = open(data.path(), config(3, u64::MAX));
        for seq in 1..=3 {
            assert!(queue.push(&window(seq)).expect("push").is_empty());
        }
        let dropped = queue.push(&window(4)).expect("push");
        assert_eq!(dropped, Dropped { seqs: vec![1], total: 1 });
        let dropped = queue.push(&window(5)).expect("push");
        assert_eq!(dropped, Dropped { seqs: vec![2], total: 2 });
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [3, 4, 5]);
        drop(queue);

        let (queue, report) = open(data.path(), config(3, u64::MAX));
        assert_eq!(queue.dropped_total(), 2);
        assert!(report.dropped.is_empty());
        drop(queue);
        // The bound shrank between runs: the oldest go at open.
        let (queue, report) = open(data.path(), config(1, u64::MAX));
        assert_eq!(report.dropped, Dropped { seqs: vec![3, 4], total: 4 });
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [5]);
    }

    #[test]
    fn full_by_bytes_drops_the_oldest_but_keeps_the_newest() {
        let data = tempfile::tempdir().expect("tempdir");
        let one = wire::encode(&window(1)).expect("encode").len() as u64;
        let (mut queue, _) = open(data.path(), config(100, one * 2 + 1));
        queue.push(&window(1)).expect("push");
        queue.push(&window(2)).expect("push");
        let dropped = queue.push(&window(3)).expect("push");
        assert_eq!(dropped.seqs, [1]);
        assert!(queue.bytes() <= one * 2 + 1);
        // A bound smaller than one window still keeps the newest.
        drop(queue);
        let (mut queue, report) = open(data.path(), config(100, 1));
        assert_eq!(report.dropped.seqs, [2, 3]);
        assert!(queue.is_empty());
        queue.push(&window(9)).expect("push");
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [9]);
    }

    #[test]
    fn crash_leftovers_and_corrupt_files_are_cleaned_up_without_panicking() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mut queue, _) = open(data.path(), QueueConfig::default());
        queue.push(&window(1)).expect("push");
        queue.push(&window(2)).expect("push");
        drop(queue);
        let dir = data.path().join(QUEUE_DIR);
        // An interrupted write: the temp file exists, the rename never happened.
        fs::write(dir.join("00000000000000000003.json.tmp"), b"{\"v\":1,\"dev").expect("write");
        // Garbage, a truncated window, a window under the wrong name, an oversized file.
        fs::write(dir.join("00000000000000000004.json"), b"\x00\xff garbage").expect("write");
        let full = wire::encode(&window(5)).expect("encode");
        fs::write(dir.join("00000000000000000005.json"), &full[..full.len() / 2]).expect("write");
        fs::write(dir.join("00000000000000000006.json"), &full).expect("write");
        fs::write(dir.join("00000000000000000007.json"), vec![b' '; MAX_JSON_PAYLOAD_BYTES + 1])
            .expect("write");
        fs::write(dir.join("00000000000000000008.json"), b"").expect("write");
        // Unknown files are left alone; a garbage counter reads as zero.
        fs::write(dir.join("README"), b"hello").expect("write");
        fs::write(dir.join(DROPPED_FILE), b"lots").expect("write");

        let (queue, report) = open(data.path(), QueueConfig::default());
        assert_eq!(queue.seqs().collect::<Vec<_>>(), [1, 2]);
        assert_eq!(report.removed_temporaries, 1);
        let mut quarantined = report.quarantined.clone();
        quarantined.sort();
        assert_eq!(
            quarantined,
            [4, 5, 6, 7, 8].map(window_name),
            "garbage, truncated, misnamed, oversized and empty files are set aside"
        );
        assert_eq!(queue.dropped_total(), 0);
        assert_eq!(
            names(&dir),
            [
                "00000000000000000001.json",
                "00000000000000000002.json",
                "README",
                "corrupt",
                "dropped"
            ]
        );
        assert_eq!(names(&dir.join(CORRUPT_DIR)).len(), 5);
    }

    #[test]
    fn quarantine_is_bounded() {
        let data = tempfile::tempdir().expect("tempdir");
        let dir = data.path().join(QUEUE_DIR);
        for round in 0..3u64 {
            fs::create_dir_all(&dir).expect("mkdir");
            for i in 0..10u64 {
                fs::write(dir.join(window_name(round * 10 + i)), b"junk").expect("write");
            }
            let (queue, report) = open(data.path(), QueueConfig::default());
            assert!(queue.is_empty());
            assert_eq!(report.quarantined.len(), 10);
        }
        assert_eq!(names(&dir.join(CORRUPT_DIR)).len(), MAX_QUARANTINED_FILES);
    }

    #[test]
    fn invalid_windows_and_configs_are_refused() {
        let data = tempfile::tempdir().expect("tempdir");
        let (mut queue, _) = open(data.path(), QueueConfig::default());
        let mut bad = window(1);
        bad.end_ms = 0;
        assert!(matches!(queue.push(&bad), Err(QueueError::Encode { seq: 1, .. })));
        assert!(queue.is_empty());
        assert!(WindowQueue::open(data.path(), config(0, 10)).is_err());
        assert!(WindowQueue::open(data.path(), config(10, 0)).is_err());
    }

    #[test]
    fn names_round_trip_and_strangers_are_not_windows() {
        assert_eq!(parse_window_name(&window_name(0)), Some(0));
        assert_eq!(parse_window_name(&window_name(u64::MAX)), Some(u64::MAX));
        for stranger in ["1.json", "0000000000000000000a.json", "00000000000000000001.jsonx", "x"] {
            assert_eq!(parse_window_name(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn config_reads_from_toml_with_defaults_and_refuses_unknown_keys() {
        let config: QueueConfig = toml::from_str("max_windows = 5").expect("parse");
        assert_eq!(config, QueueConfig { max_windows: 5, ..QueueConfig::default() });
        assert!(toml::from_str::<QueueConfig>("max_window = 5").is_err());
    }
}
