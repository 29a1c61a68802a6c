//! Optional on-device sampling of raw inputs while the device is in drift alert (see
//! `docs/drift.md` "Input samples"): a uniform reservoir sample (Algorithm R, seeded
//! SplitMix64) of the rows the API answered, bounded in rows and bytes, kept in
//! `<data_dir>/samples/reservoir.json` (atomic writes), uploaded in bounded
//! [`SampleChunk`]s when the control requests it, deleted after the upload or after
//! `max_age_seconds`.
//!
//! Off by default (`[sampling] enabled = false`): then nothing is collected and nothing is
//! written, and an upload request is answered with one empty chunk saying so. Enabled, rows are
//! collected only while the control's retained [`SamplingControl`] says `alert: true`.
//!
//! [`Sampler`] is the API's input observer (quick: one lock, one row copy); [`run`] is the task
//! that follows the control's messages, persists the reservoir and uploads it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outpost_shared::model::InferError;
use outpost_shared::oip::{Datatype, InferenceRequest, InferenceResponse};
use outpost_shared::wire::{
    self, DeviceId, ModelRef, ProtocolVersion, SampleChunk, SamplingControl, rows_per_chunk,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::api::InferenceObserver;
use crate::backoff::{JitterSource as _, SplitMix64};
use crate::fsutil;
use crate::mqtt::{MAX_SAMPLE_CHUNKS_QUEUED, TelemetryHandle};
use crate::runtime::Runtime;

/// The folder under the data directory.
pub const SAMPLES_DIR: &str = "samples";
const RESERVOIR_FILE: &str = "reservoir.json";
/// The last upload request answered (so a retained request is answered once).
const ANSWERED_FILE: &str = "answered";
/// Bytes one sampled value counts for against `max_bytes` (an `f64`).
const VALUE_BYTES: u64 = 8;
/// Pause after every [`MAX_SAMPLE_CHUNKS_QUEUED`] chunks of an upload.
const UPLOAD_PAUSE: Duration = Duration::from_millis(200);
/// Largest reservoir file read back at start.
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// `[sampling]` of the agent config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// Keep a reservoir sample of raw inputs while the control reports a drift alert.
    pub enabled: bool,
    /// Most rows kept.
    pub max_rows: u64,
    /// Most bytes of values kept (8 per value); with wide rows this bounds the rows further.
    pub max_bytes: u64,
    /// A sample older than this is deleted without upload.
    pub max_age_seconds: u64,
    /// Seed of the reservoir's random choices (mixed with the device id).
    pub seed: u64,
    /// Seconds between writes of a changed reservoir to disk.
    pub flush_seconds: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_rows: 1000,
            max_bytes: 1024 * 1024,
            max_age_seconds: 7 * 24 * 3600,
            seed: 0x5eed,
            flush_seconds: 5,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.max_rows) {
            return Err("max_rows must be between 1 and 1000000".into());
        }
        if !(1024..=256 * 1024 * 1024).contains(&self.max_bytes) {
            return Err("max_bytes must be between 1024 and 268435456".into());
        }
        if !(60..=366 * 24 * 3600).contains(&self.max_age_seconds) {
            return Err("max_age_seconds must be between 60 and 31622400".into());
        }
        if !(1..=3600).contains(&self.flush_seconds) {
            return Err("flush_seconds must be between 1 and 3600".into());
        }
        Ok(())
    }
}

/// The reservoir as stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Reservoir {
    v: u32,
    /// When the first row was taken (unix ms): the start of the sample's age.
    created_ms: u64,
    /// Rows offered so far.
    seen: u64,
    /// The generator's state, so a restart continues the same sequence.
    rng: u64,
    model: ModelRef,
    columns: Vec<String>,
    rows: Vec<Vec<f64>>,
}

/// The in-memory side shared by the observer and the task.
#[derive(Debug)]
struct Inner {
    reservoir: Option<Reservoir>,
    /// Changed since the last write.
    dirty: bool,
    /// Rows not sampled because their shape differed from the reservoir's columns or one
    /// row alone was over the byte bound.
    skipped: u64,
}

/// Samples the inputs of answered requests while the device is in alert.
#[derive(Debug)]
pub struct Sampler {
    config: SamplingConfig,
    dir: PathBuf,
    seed: u64,
    alert: AtomicBool,
    inner: Mutex<Inner>,
}

impl Sampler {
    /// Opens the sampler, reading a reservoir left by an earlier run (one past its age, or
    /// unreadable, is deleted). Disabled, it touches no file.
    pub fn open(config: SamplingConfig, data_dir: &Path, device: &DeviceId) -> Arc<Self> {
        let dir = data_dir.join(SAMPLES_DIR);
        let seed = config.seed ^ fnv1a(device.as_str().as_bytes());
        let reservoir = if config.enabled { load(&dir, &config) } else { None };
        Arc::new(Self {
            config,
            dir,
            seed,
            alert: AtomicBool::new(false),
            inner: Mutex::new(Inner { reservoir, dirty: false, skipped: 0 }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether rows are being collected now.
    pub fn collecting(&self) -> bool {
        self.config.enabled && self.alert.load(Ordering::Relaxed)
    }

    /// Rows held now.
    pub fn rows(&self) -> usize {
        self.lock().reservoir.as_ref().map_or(0, |r| r.rows.len())
    }

    /// Offers every row of `request` (answered by `model`) to the reservoir.
    pub fn offer(&self, model: &ModelRef, request: &InferenceRequest, now_ms: u64) {
        if !self.collecting() {
            return;
        }
        let Some((columns, rows)) = flatten(request) else { return };
        let capacity = (self.config.max_bytes / (VALUE_BYTES * columns.len().max(1) as u64))
            .min(self.config.max_rows) as usize;
        let mut inner = self.lock();
        if capacity == 0 {
            inner.skipped += rows.len() as u64;
            return;
        }
        let fresh = match &inner.reservoir {
            Some(reservoir) => reservoir.model != *model || reservoir.columns != columns,
            None => true,
        };
        if fresh {
            // Rows of another model or shape never mix with these: start over.
            inner.reservoir = Some(Reservoir {
                v: 1,
                created_ms: now_ms,
                seen: 0,
                rng: self.seed,
                model: model.clone(),
                columns,
                rows: Vec::new(),
            });
        }
        let Some(reservoir) = inner.reservoir.as_mut() else { return };
        let mut rng = SplitMix64::new(reservoir.rng);
        for row in rows {
            reservoir.seen += 1;
            if reservoir.rows.len() < capacity {
                reservoir.rows.push(row);
            } else {
                // Algorithm R: the n-th row replaces a kept one with probability k/n.
                let j = (rng.next_u64() % reservoir.seen) as usize;
                if let Some(slot) = reservoir.rows.get_mut(j) {
                    *slot = row;
                }
            }
        }
        reservoir.rng = rng.next_u64();
        inner.dirty = true;
    }

    /// Writes a changed reservoir; deletes one past its age.
    pub fn flush(&self, now_ms: u64) {
        if !self.config.enabled {
            return;
        }
        let mut inner = self.lock();
        let max_age_ms = self.config.max_age_seconds.saturating_mul(1000);
        if inner
            .reservoir
            .as_ref()
            .is_some_and(|r| now_ms.saturating_sub(r.created_ms) > max_age_ms)
        {
            tracing::info!("the input sample reached its maximum age; deleting it");
            inner.reservoir = None;
            inner.dirty = false;
            delete(&self.dir);
            return;
        }
        if !inner.dirty {
            return;
        }
        let Some(reservoir) = &inner.reservoir else { return };
        match serde_json::to_vec(reservoir) {
            Ok(bytes) => {
                let written = fsutil::create_dir_durable(&self.dir)
                    .and_then(|()| fsutil::write_atomic(&self.dir.join(RESERVOIR_FILE), &bytes));
                match written {
                    Ok(()) => inner.dirty = false,
                    Err(error) => tracing::warn!(%error, "cannot write the input sample"),
                }
            }
            Err(error) => tracing::warn!(%error, "cannot encode the input sample"),
        }
    }

    /// The chunks answering `request_id` with what is held now.
    fn chunks(&self, device: &DeviceId, request_id: &str) -> Vec<SampleChunk> {
        let inner = self.lock();
        let empty = |enabled: bool| SampleChunk {
            v: ProtocolVersion,
            device: device.clone(),
            request_id: request_id.to_string(),
            part: 0,
            parts: 1,
            enabled,
            seen: 0,
            model: None,
            columns: Vec::new(),
            rows: Vec::new(),
        };
        if !self.config.enabled {
            return vec![empty(false)];
        }
        let Some(reservoir) = inner.reservoir.as_ref().filter(|r| !r.rows.is_empty()) else {
            return vec![empty(true)];
        };
        let per_chunk = rows_per_chunk(reservoir.columns.len());
        let parts = reservoir.rows.len().div_ceil(per_chunk) as u32;
        reservoir
            .rows
            .chunks(per_chunk)
            .enumerate()
            .map(|(part, rows)| SampleChunk {
                part: part as u32,
                parts,
                seen: reservoir.seen,
                model: Some(reservoir.model.clone()),
                columns: reservoir.columns.clone(),
                rows: rows.to_vec(),
                ..empty(true)
            })
            .collect()
    }

    /// Forgets the sample (after its upload).
    fn clear(&self) {
        let mut inner = self.lock();
        inner.reservoir = None;
        inner.dirty = false;
        delete(&self.dir);
    }

    fn answered(&self) -> Option<String> {
        let bytes = fsutil::read_limited(&self.dir.join(ANSWERED_FILE), 1024, "answered").ok()?;
        String::from_utf8(bytes).ok().map(|text| text.trim().to_string())
    }

    fn set_answered(&self, request_id: &str) {
        let written = fsutil::create_dir_durable(&self.dir).and_then(|()| {
            fsutil::write_atomic(&self.dir.join(ANSWERED_FILE), request_id.as_bytes())
        });
        if let Err(error) = written {
            tracing::warn!(%error, "cannot record the answered sample request");
        }
    }
}

impl InferenceObserver for Sampler {
    fn observe(
        &self,
        runtime: &Arc<Runtime>,
        request: &InferenceRequest,
        outcome: Result<&InferenceResponse, &InferError>,
        _latency: Duration,
    ) {
        if outcome.is_ok() {
            self.offer(runtime.model_ref(), request, unix_millis());
        }
    }
}

/// Follows the control's sampling messages until `control` closes: sets the alert flag,
/// answers each upload request once, and writes the reservoir every `flush_seconds`.
pub async fn run(
    sampler: Arc<Sampler>,
    telemetry: TelemetryHandle,
    device: DeviceId,
    mut control: watch::Receiver<SamplingControl>,
) {
    let mut ticks = tokio::time::interval(Duration::from_secs(sampler.config.flush_seconds.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                sampler.flush(unix_millis());
                continue;
            }
            changed = control.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let message = control.borrow_and_update().clone();
        let was = sampler.alert.swap(message.alert, Ordering::Relaxed);
        if was != message.alert && sampler.config.enabled {
            tracing::info!(alert = message.alert, "drift alert state from the control");
        }
        if let Some(request) = &message.upload_request
            && sampler.answered().as_deref() != Some(request.as_str())
        {
            upload(&sampler, &telemetry, &device, request).await;
        }
    }
    sampler.flush(unix_millis());
}

/// Sends what is held as the answer to `request_id`; deletes it and records the request as
/// answered only when every part went out (otherwise the retained request, delivered again
/// on the next connect, retries).
async fn upload(sampler: &Sampler, telemetry: &TelemetryHandle, device: &DeviceId, request: &str) {
    let chunks = sampler.chunks(device, request);
    let rows: usize = chunks.iter().map(|c| c.rows.len()).sum();
    for (index, chunk) in chunks.iter().enumerate() {
        if index > 0 && index % MAX_SAMPLE_CHUNKS_QUEUED == 0 {
            // Paced, so the chunks handed to the MQTT client never overrun its request queue.
            tokio::time::sleep(UPLOAD_PAUSE).await;
        }
        match telemetry.send_samples(chunk).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(request, "offline: the sample upload waits for the next connect");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, request, "cannot upload the input sample");
                return;
            }
        }
    }
    tracing::info!(request, rows, parts = chunks.len(), "input sample uploaded; deleting it");
    if sampler.config.enabled {
        sampler.clear();
    }
    sampler.set_answered(request);
}

/// The rows of a request: for each sample of the batch, every numeric input tensor's values of
/// that sample, in input order (BOOL as 0 and 1; BYTES tensors are left out); the columns are
/// `<tensor>[<index>]`. `None` when the inputs do not share a batch size.
fn flatten(request: &InferenceRequest) -> Option<(Vec<String>, Vec<Vec<f64>>)> {
    let batch = |shape: &[u64]| if shape.len() >= 2 { shape[0] as usize } else { 1 };
    let samples = batch(&request.inputs.first()?.shape);
    if samples == 0 || request.inputs.iter().any(|t| batch(&t.shape) != samples) {
        return None;
    }
    let tensors: Vec<(&str, Vec<f64>)> = request
        .inputs
        .iter()
        .filter(|t| t.datatype() != Datatype::Bytes)
        .map(|t| (t.name.as_str(), t.data.to_f64_vec()))
        .collect();
    let mut columns = Vec::new();
    for (name, values) in &tensors {
        let width = values.len() / samples;
        columns.extend((0..width).map(|index| format!("{name}[{index}]")));
    }
    if columns.is_empty() || columns.len() > wire::MAX_SAMPLE_ROW_VALUES {
        return None;
    }
    let rows = (0..samples)
        .map(|i| {
            tensors
                .iter()
                .flat_map(|(_, values)| {
                    let width = values.len() / samples;
                    values[i * width..(i + 1) * width].iter().copied()
                })
                .collect()
        })
        .collect();
    Some((columns, rows))
}

fn load(dir: &Path, config: &SamplingConfig) -> Option<Reservoir> {
    let path = dir.join(RESERVOIR_FILE);
    let bytes = match fsutil::read_limited(&path, MAX_FILE_BYTES, "input sample") {
        Ok(bytes) => bytes,
        Err(error) if error.is_not_found() => return None,
        Err(error) => {
            tracing::warn!(%error, "cannot read the input sample; deleting it");
            delete(dir);
            return None;
        }
    };
    let reservoir: Reservoir = match serde_json::from_slice(&bytes) {
        Ok(reservoir) => reservoir,
        Err(error) => {
            tracing::warn!(%error, "the stored input sample is unreadable; deleting it");
            delete(dir);
            return None;
        }
    };
    let age_ms = unix_millis().saturating_sub(reservoir.created_ms);
    if age_ms > config.max_age_seconds.saturating_mul(1000) {
        tracing::info!("the stored input sample is past its maximum age; deleting it");
        delete(dir);
        return None;
    }
    Some(reservoir)
}

fn delete(dir: &Path) {
    let path = dir.join(RESERVOIR_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            if let Err(error) = fsutil::sync_dir(dir) {
                tracing::warn!(%error, "cannot sync the samples folder");
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(%error, path = %path.display(), "cannot delete the sample"),
    }
}

/// FNV-1a of `bytes`: mixes the device id into the seed so devices draw differently.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use outpost_shared::oip::Tensor;

    use super::*;

    fn model() -> ModelRef {
        ModelRef { name: "m".into(), version: "1".into(), digest: wire::Digest::of(b"bundle") }
    }

    fn request(values: &[[f64; 2]]) -> InferenceRequest {
        let data: Vec<f64> = values.iter().flatten().copied().collect();
        serde_json::from_value(serde_json::json!({
            "inputs": [Tensor::new("x", vec![values.len() as u64, 2], data)]
        }))
        .expect("request")
    }

    fn sampler(dir: &Path, enabled: bool, max_rows: u64) -> Arc<Sampler> {
        let config = SamplingConfig { enabled, max_rows, ..SamplingConfig::default() };
        Sampler::open(config, dir, &DeviceId::new("dev-1").expect("id"))
    }

    #[test]
    fn nothing_is_collected_when_disabled_or_out_of_alert() {
        let dir = tempfile::tempdir().expect("dir");
        let off = sampler(dir.path(), false, 10);
        off.alert.store(true, Ordering::Relaxed);
        off.offer(&model(), &request(&[[1.0, 2.0]]), 1);
        off.flush(2);
        assert_eq!(off.rows(), 0);
        assert!(!dir.path().join(SAMPLES_DIR).exists(), "a disabled sampler writes nothing");
        let on = sampler(dir.path(), true, 10);
        on.offer(&model(), &request(&[[1.0, 2.0]]), 1);
        assert_eq!(on.rows(), 0, "not in alert");
        let chunks = off.chunks(&DeviceId::new("dev-1").expect("id"), "r1");
        assert_eq!(chunks.len(), 1);
        assert!(!chunks[0].enabled && chunks[0].rows.is_empty());
    }

    #[test]
    fn the_reservoir_is_bounded_uniform_and_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let on = sampler(dir.path(), true, 50);
        on.alert.store(true, Ordering::Relaxed);
        let now = unix_millis();
        for i in 0..1000 {
            on.offer(&model(), &request(&[[f64::from(i), -f64::from(i)]]), now);
        }
        assert_eq!(on.rows(), 50);
        let chunks = on.chunks(&DeviceId::new("dev-1").expect("id"), "r1");
        let rows: Vec<Vec<f64>> = chunks.iter().flat_map(|c| c.rows.clone()).collect();
        assert_eq!(chunks[0].seen, 1000);
        assert_eq!(chunks[0].columns, ["x[0]", "x[1]"]);
        assert!(rows.iter().all(|r| r[1] == -r[0] && (0.0..1000.0).contains(&r[0])));
        // Uniform: the kept rows are spread over the whole stream, not the first 50.
        let late = rows.iter().filter(|r| r[0] >= 500.0).count();
        assert!((10..=40).contains(&late), "{late} of 50 from the second half");
        on.flush(now);
        let again = sampler(dir.path(), true, 50);
        assert_eq!(again.rows(), 50, "read back after a restart");
        // Past its age, the sample is deleted.
        again.flush(now + SamplingConfig::default().max_age_seconds * 1000 + 1);
        assert_eq!(again.rows(), 0);
        assert!(!dir.path().join(SAMPLES_DIR).join(RESERVOIR_FILE).exists());
    }

    #[test]
    fn wide_rows_are_bounded_by_bytes_and_chunked() {
        let dir = tempfile::tempdir().expect("dir");
        let config = SamplingConfig {
            enabled: true,
            max_rows: 1000,
            max_bytes: 2048,
            ..SamplingConfig::default()
        };
        let on = Sampler::open(config, dir.path(), &DeviceId::new("dev-1").expect("id"));
        on.alert.store(true, Ordering::Relaxed);
        let wide: InferenceRequest = serde_json::from_value(serde_json::json!({
            "inputs": [Tensor::new("img", vec![1, 64], vec![0.5f32; 64])]
        }))
        .expect("request");
        for _ in 0..20 {
            on.offer(&model(), &wide, 1);
        }
        assert_eq!(on.rows(), 4, "2048 bytes / (64 values × 8 bytes)");
        assert_eq!(rows_per_chunk(64), 512);
    }
}
