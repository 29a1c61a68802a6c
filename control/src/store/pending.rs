//! Pending windows: statistics windows counted but not yet folded into the aggregates, and
//! the fold that merges them.
//!
//! Ingest of a window whose model profile the registry holds is one row appended to
//! `pending_windows` in the transaction that inserts its `(device, seq)` dedupe row (see
//! [`Store::ingest_batch`]); the window is acknowledged once that commits. Folding
//! ([`Store::fold_pending`]) takes many pending windows at once, merges them in memory per
//! aggregate row (device and cohorts × bucket), writes each row once and deletes the windows
//! it folded, all in one transaction: a window is in `pending_windows` or in the aggregates,
//! never both and never neither. Every reader of the aggregates folds first
//! ([`Store::fold_before_reading`]), so reads stay exact whatever the fold has not done yet.
//!
//! Several instances fold at once without waiting for each other: the background fold locks
//! pending rows with `FOR UPDATE SKIP LOCKED` (PostgreSQL) and aggregate rows in the one order
//! every writer uses. A fold before a read waits for the pending rows other folds hold, so what
//! it reads afterwards includes every window counted before the read began.
//!
//! The stored form ([`encode`]) is compact binary: counts as LEB128 varints, floats as 8
//! little-endian bytes, each feature's KLL sketch as its DataSketches bytes (length-prefixed,
//! since encoding version 2; rows of version 1 decode without sketches), and neither feature
//! names nor bin edges, which are those of the model's profile (ingest checked the window
//! against it, and decoded its sketches; bundles never change). A window that cannot be
//! merged at fold time (its bucket was aggregated from windows of other edges before the bundle
//! was pushed) is refused then: removed from `pending_windows` and from `windows_seen`, logged
//! and reported in [`FoldReport::windows_refused`].

use std::collections::{BTreeMap, HashMap};

use outpost_shared::profile::{FeatureProfile, Profile};
use outpost_shared::stats::{Histogram, Moments, confidence_edges};
use outpost_shared::wire::{
    ClassifierStats, DeviceId, Digest, FeatureStats, LatencyHistogram, ModelRef, ProtocolVersion,
    StatsWindow,
};
use sqlx::Row as _;

use super::ingest::{AggregateKey, AggregateWindow, Targets, write_targets};
use super::{Backend, Store, StoreError, now_ms, to_u64};

/// The first byte of every encoded window: the version of this encoding. Version 2 adds each
/// feature's KLL sketch after its moments; version 1 rows (no sketches) still decode, with
/// none.
const ENCODING_VERSION: u8 = 2;

/// The encoding before KLL sketches were stored; still decoded.
const ENCODING_VERSION_WITHOUT_SKETCHES: u8 = 1;

/// Appends `value` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_f64(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    put_varint(out, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

fn put_counts(out: &mut Vec<u8>, counts: &[u64]) {
    put_varint(out, counts.len() as u64);
    for &count in counts {
        put_varint(out, count);
    }
}

fn put_moments(out: &mut Vec<u8>, moments: &Moments) {
    put_varint(out, moments.count);
    put_f64(out, moments.mean);
    put_f64(out, moments.m2);
    let flags = u8::from(moments.min.is_some()) | (u8::from(moments.max.is_some()) << 1);
    out.push(flags);
    if let Some(min) = moments.min {
        put_f64(out, min);
    }
    if let Some(max) = moments.max {
        put_f64(out, max);
    }
}

fn put_histogram(out: &mut Vec<u8>, histogram: &Histogram) {
    put_counts(out, &histogram.counts);
    put_varint(out, histogram.underflow);
    put_varint(out, histogram.overflow);
    put_varint(out, histogram.nan);
}

/// The stored form of `window` (validated, matching its model's profile) and the cohorts it
/// counts in. The device, sequence number, model digest and bucket are columns of its row.
pub fn encode(window: &StatsWindow, cohorts: &[String]) -> Vec<u8> {
    encode_as(window, cohorts, true)
}

/// [`encode`] in the current encoding (`sketches`) or in version 1, which has no sketches.
fn encode_as(window: &StatsWindow, cohorts: &[String], sketches: bool) -> Vec<u8> {
    let features = window.inputs.len() + window.outputs.len();
    let sketch_bytes: usize = window
        .inputs
        .iter()
        .chain(&window.outputs)
        .filter_map(|feature| feature.kll_sketch.as_ref().map(Vec::len))
        .sum();
    let mut out = Vec::with_capacity(256 + features * 96 + sketch_bytes);
    out.push(if sketches { ENCODING_VERSION } else { ENCODING_VERSION_WITHOUT_SKETCHES });
    put_varint(&mut out, cohorts.len() as u64);
    for cohort in cohorts {
        put_str(&mut out, cohort);
    }
    put_str(&mut out, &window.model.name);
    put_str(&mut out, &window.model.version);
    put_varint(&mut out, window.start_ms);
    put_varint(&mut out, window.end_ms);
    put_varint(&mut out, window.count);
    put_varint(&mut out, window.errors.len() as u64);
    for (kind, count) in &window.errors {
        put_str(&mut out, kind);
        put_varint(&mut out, *count);
    }
    put_counts(&mut out, &window.latency.counts);
    put_varint(&mut out, window.latency.overflow);
    put_moments(&mut out, &window.latency.moments);
    for side in [&window.inputs, &window.outputs] {
        put_varint(&mut out, side.len() as u64);
        for feature in side {
            put_histogram(&mut out, &feature.histogram);
            put_moments(&mut out, &feature.moments);
            // 0: no sketch; otherwise its length + 1, then its bytes.
            match &feature.kll_sketch {
                _ if !sketches => {}
                None => put_varint(&mut out, 0),
                Some(sketch) => {
                    put_varint(&mut out, sketch.len() as u64 + 1);
                    out.extend_from_slice(sketch);
                }
            }
        }
    }
    match &window.classifier {
        None => out.push(0),
        Some(classifier) => {
            out.push(1);
            put_counts(&mut out, &classifier.class_counts);
            put_histogram(&mut out, &classifier.confidence);
        }
    }
    out
}

/// Reads the stored form back; every error names what was wrong.
struct Reader<'a> {
    bytes: &'a [u8],
    /// Whether features carry a sketch field (encoding version 2 and later).
    sketches: bool,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&first, rest) = self.bytes.split_first().ok_or("ends early")?;
        self.bytes = rest;
        Ok(first)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is longer than 64 bits".into())
    }

    fn length(&mut self) -> Result<usize, String> {
        let length = usize::try_from(self.varint()?).map_err(|_| "a length overflows")?;
        if length > self.bytes.len() {
            return Err(format!(
                "a length of {length} exceeds the {} bytes left",
                self.bytes.len()
            ));
        }
        Ok(length)
    }

    fn f64(&mut self) -> Result<f64, String> {
        let (head, rest) = self.bytes.split_at_checked(8).ok_or("ends inside a number")?;
        self.bytes = rest;
        let mut buffer = [0u8; 8];
        buffer.copy_from_slice(head);
        Ok(f64::from_le_bytes(buffer))
    }

    fn string(&mut self) -> Result<String, String> {
        let length = self.length()?;
        let (head, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        String::from_utf8(head.to_vec()).map_err(|_| "a text is not UTF-8".into())
    }

    fn counts(&mut self) -> Result<Vec<u64>, String> {
        let length = self.length()?;
        (0..length).map(|_| self.varint()).collect()
    }

    fn moments(&mut self) -> Result<Moments, String> {
        let count = self.varint()?;
        let mean = self.f64()?;
        let m2 = self.f64()?;
        let flags = self.byte()?;
        let min = if flags & 1 != 0 { Some(self.f64()?) } else { None };
        let max = if flags & 2 != 0 { Some(self.f64()?) } else { None };
        Ok(Moments { count, mean, m2, min, max })
    }

    fn histogram(&mut self, edges: &[f64], what: &str) -> Result<Histogram, String> {
        let counts = self.counts()?;
        if counts.len() + 1 != edges.len() {
            return Err(format!(
                "{what} has {} counts where the profile has {} bins",
                counts.len(),
                edges.len().saturating_sub(1)
            ));
        }
        Ok(Histogram {
            edges: edges.to_vec(),
            counts,
            underflow: self.varint()?,
            overflow: self.varint()?,
            nan: self.varint()?,
        })
    }

    /// A feature's optional KLL sketch: a varint of 0 (none) or its length + 1, then its bytes.
    /// Only the header is checked here; ingest decoded the whole sketch before storing it.
    fn sketch(&mut self, what: &str) -> Result<Option<Vec<u8>>, String> {
        if !self.sketches {
            return Ok(None);
        }
        let tag = self.varint()?;
        if tag == 0 {
            return Ok(None);
        }
        let length = usize::try_from(tag - 1).map_err(|_| "a length overflows")?;
        let (head, rest) = self.bytes.split_at_checked(length).ok_or_else(|| {
            format!(
                "the sketch of {what} of {length} bytes exceeds the {} bytes left",
                self.bytes.len()
            )
        })?;
        outpost_shared::stats::kll::check_bytes(head)
            .map_err(|error| format!("the sketch of {what}: {error}"))?;
        self.bytes = rest;
        Ok(Some(head.to_vec()))
    }

    fn features(&mut self, profile: &[FeatureProfile]) -> Result<Vec<FeatureStats>, String> {
        let length = usize::try_from(self.varint()?).map_err(|_| "a length overflows")?;
        if length != profile.len() {
            return Err(format!("{length} features where the profile has {}", profile.len()));
        }
        profile
            .iter()
            .map(|feature| {
                Ok(FeatureStats {
                    name: feature.name.clone(),
                    histogram: self.histogram(&feature.histogram.edges, &feature.name)?,
                    moments: self.moments()?,
                    kll_sketch: self.sketch(&feature.name)?,
                })
            })
            .collect()
    }
}

/// One pending window as stored.
#[derive(Debug, Clone)]
pub struct PendingWindow {
    pub window: StatsWindow,
    pub cohorts: Vec<String>,
}

/// Decodes the stored form of a window of `device`, `seq` and model `digest` against the
/// model's `profile`.
pub fn decode(
    bytes: &[u8],
    device: DeviceId,
    seq: u64,
    digest: Digest,
    profile: &Profile,
) -> Result<PendingWindow, String> {
    let mut reader = Reader { bytes, sketches: false };
    match reader.byte()? {
        ENCODING_VERSION => reader.sketches = true,
        ENCODING_VERSION_WITHOUT_SKETCHES => {}
        version => {
            return Err(format!(
                "encoding version {version}, expected {ENCODING_VERSION_WITHOUT_SKETCHES} or \
                 {ENCODING_VERSION}"
            ));
        }
    }
    let cohort_count = reader.length()?;
    let cohorts = (0..cohort_count).map(|_| reader.string()).collect::<Result<Vec<_>, _>>()?;
    let name = reader.string()?;
    let version = reader.string()?;
    let start_ms = reader.varint()?;
    let end_ms = reader.varint()?;
    let count = reader.varint()?;
    let error_kinds = reader.length()?;
    let mut errors = BTreeMap::new();
    for _ in 0..error_kinds {
        let kind = reader.string()?;
        errors.insert(kind, reader.varint()?);
    }
    let latency = LatencyHistogram {
        counts: reader.counts()?,
        overflow: reader.varint()?,
        moments: reader.moments()?,
    };
    let inputs = reader.features(&profile.inputs)?;
    let outputs = reader.features(&profile.outputs)?;
    let classifier = match reader.byte()? {
        0 => None,
        1 => Some(ClassifierStats {
            class_counts: reader.counts()?,
            confidence: reader.histogram(&confidence_edges(), "confidence")?,
        }),
        other => return Err(format!("classifier flag {other}")),
    };
    if !reader.bytes.is_empty() {
        return Err(format!("{} bytes after the end", reader.bytes.len()));
    }
    let window = StatsWindow {
        v: ProtocolVersion,
        device,
        model: ModelRef { name, version, digest },
        seq,
        start_ms,
        end_ms,
        count,
        errors,
        latency,
        inputs,
        outputs,
        classifier,
    };
    Ok(PendingWindow { window, cohorts })
}

/// A pending window to append: its row's columns and stored form.
#[derive(Debug, Clone)]
pub(crate) struct NewPending<'a> {
    pub device: &'a str,
    pub seq: i64,
    pub digest: &'a str,
    pub bucket_start_ms: i64,
    pub bucket_ms: i64,
    pub stats: Vec<u8>,
}

/// Appends `rows` to `pending_windows` in multi-row statements.
pub(crate) async fn append(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[NewPending<'_>],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(super::ingest::MAX_PARAMETERS / 6) {
        let sql = format!(
            "INSERT INTO pending_windows (device_id, seq, model_digest, bucket_start_ms, \
             bucket_ms, stats) VALUES {}",
            super::ingest::placeholders(chunk.len(), 6)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(row.device.to_string())
                .bind(row.seq)
                .bind(row.digest.to_string())
                .bind(row.bucket_start_ms)
                .bind(row.bucket_ms)
                .bind(row.stats.clone());
        }
        query.execute(&mut **transaction).await?;
    }
    Ok(())
}

/// What one fold did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// Pending windows merged into the aggregates.
    pub windows_folded: u64,
    /// Pending windows that did not merge with their stored buckets; no longer counted.
    pub windows_refused: u64,
    /// Aggregate rows written.
    pub rows_written: u64,
}

/// Which pending windows a fold takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldScope {
    /// At most this many, skipping those another fold holds (background folding).
    Some(usize),
    /// Every one, waiting for those another fold holds (before a read).
    All,
}

/// A pending row as read.
struct PendingRow {
    device: String,
    seq: i64,
    digest: String,
    bucket_start_ms: i64,
    bucket_ms: i64,
    stats: Vec<u8>,
}

impl Store {
    /// Folds pending windows into the aggregates (see the module documentation).
    pub async fn fold_pending(&self, scope: FoldScope) -> Result<FoldReport, StoreError> {
        let mut transaction = match self.backend() {
            Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool().begin().await?,
        };
        let lock = match (self.backend(), scope) {
            (Backend::Sqlite, _) => "",
            (Backend::Postgres, FoldScope::Some(_)) => " FOR UPDATE SKIP LOCKED",
            (Backend::Postgres, FoldScope::All) => " FOR UPDATE",
        };
        let limit = match scope {
            FoldScope::Some(limit) => format!(" LIMIT {limit}"),
            FoldScope::All => String::new(),
        };
        let rows: Vec<PendingRow> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT device_id, seq, model_digest, bucket_start_ms, bucket_ms, stats \
             FROM pending_windows ORDER BY device_id, seq{limit}{lock}"
        )))
        .fetch_all(&mut *transaction)
        .await?
        .iter()
        .map(|row| {
            Ok(PendingRow {
                device: row.try_get("device_id")?,
                seq: row.try_get("seq")?,
                digest: row.try_get("model_digest")?,
                bucket_start_ms: row.try_get("bucket_start_ms")?,
                bucket_ms: row.try_get("bucket_ms")?,
                stats: row.try_get("stats")?,
            })
        })
        .collect::<Result<_, StoreError>>()?;
        if rows.is_empty() {
            transaction.rollback().await?;
            return Ok(FoldReport::default());
        }
        let mut profiles = HashMap::new();
        let mut windows = Vec::with_capacity(rows.len());
        for row in &rows {
            windows.push(decode_row(&mut transaction, &mut profiles, row).await?);
        }
        let mut targets = Targets::new();
        let mut mergeable = true;
        for (row, pending) in rows.iter().zip(&windows) {
            if !add_to_targets(&mut targets, row, pending) {
                mergeable = false;
                break;
            }
        }
        let written = if mergeable {
            write_targets(&mut transaction, self.backend(), &targets, now_ms()).await?
        } else {
            None
        };
        let Some(rows_written) = written else {
            // Some window does not merge: fold them one at a time to refuse exactly those.
            transaction.rollback().await?;
            return self.fold_one_by_one(&rows).await;
        };
        delete_pending(&mut transaction, &rows).await?;
        transaction.commit().await?;
        Ok(FoldReport { windows_folded: rows.len() as u64, windows_refused: 0, rows_written })
    }

    /// Folds first when anything is pending, so a read of the aggregates is exact. One cheap
    /// query when nothing is.
    pub async fn fold_before_reading(&self) -> Result<(), StoreError> {
        let any: Option<i64> = sqlx::query_scalar("SELECT 1 FROM pending_windows LIMIT 1")
            .fetch_optional(self.pool())
            .await?;
        if any.is_some() {
            let report = self.fold_pending(FoldScope::All).await?;
            log_refused(&report);
        }
        Ok(())
    }

    /// How many windows are pending.
    pub async fn pending_windows(&self) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending_windows")
            .fetch_one(self.pool())
            .await?;
        to_u64(count, "pending windows")
    }

    /// The slow path of a fold: each of `rows` in its own transaction, refusing those that do
    /// not merge with what is stored.
    async fn fold_one_by_one(&self, rows: &[PendingRow]) -> Result<FoldReport, StoreError> {
        let mut report = FoldReport::default();
        let mut profiles = HashMap::new();
        for row in rows {
            let mut transaction = match self.backend() {
                Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => self.pool().begin().await?,
            };
            let lock = if self.backend() == Backend::Postgres { " FOR UPDATE" } else { "" };
            let still_pending: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT seq FROM pending_windows WHERE device_id = $1 AND seq = $2{lock}"
            )))
            .bind(row.device.clone())
            .bind(row.seq)
            .fetch_optional(&mut *transaction)
            .await?;
            if still_pending.is_none() {
                transaction.rollback().await?;
                continue;
            }
            let pending = decode_row(&mut transaction, &mut profiles, row).await?;
            let mut targets = Targets::new();
            let written = if add_to_targets(&mut targets, row, &pending) {
                write_targets(&mut transaction, self.backend(), &targets, now_ms()).await?
            } else {
                None
            };
            match written {
                Some(rows_written) => {
                    report.windows_folded += 1;
                    report.rows_written += rows_written;
                }
                None => {
                    transaction.rollback().await?;
                    transaction = match self.backend() {
                        Backend::Sqlite => self.pool().begin_with("BEGIN IMMEDIATE").await?,
                        Backend::Postgres => self.pool().begin().await?,
                    };
                    sqlx::query("DELETE FROM windows_seen WHERE device_id = $1 AND seq = $2")
                        .bind(row.device.clone())
                        .bind(row.seq)
                        .execute(&mut *transaction)
                        .await?;
                    tracing::warn!(device = %row.device, seq = row.seq, model = %row.digest,
                        "a pending statistics window does not merge with its stored buckets; \
                        refused");
                    report.windows_refused += 1;
                }
            }
            delete_pending(&mut transaction, std::slice::from_ref(row)).await?;
            transaction.commit().await?;
        }
        Ok(report)
    }
}

/// Logs the windows a fold refused.
pub fn log_refused(report: &FoldReport) {
    if report.windows_refused > 0 {
        tracing::warn!(
            refused = report.windows_refused,
            "pending statistics windows did not merge with their buckets and were refused"
        );
    }
}

/// Decodes one pending row, reading its model's profile once per fold.
async fn decode_row(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    profiles: &mut HashMap<String, Profile>,
    row: &PendingRow,
) -> Result<PendingWindow, StoreError> {
    let what = || format!("pending window {} {}", row.device, row.seq);
    let corrupt = |reason: String| StoreError::Corrupt { what: what(), reason };
    if !profiles.contains_key(&row.digest) {
        let text: Option<String> =
            sqlx::query_scalar("SELECT profile_json FROM bundles WHERE digest = $1")
                .bind(row.digest.clone())
                .fetch_optional(&mut **transaction)
                .await?;
        let text =
            text.ok_or_else(|| corrupt(format!("no bundle {} in the registry", row.digest)))?;
        let profile: Profile = super::from_json(&text, &format!("profile of {}", row.digest))?;
        profiles.insert(row.digest.clone(), profile);
    }
    let profile = profiles
        .get(&row.digest)
        .ok_or_else(|| corrupt("the profile read a moment ago is gone".into()))?;
    // Decoded to be merged: under the placeholder device aggregates merge as.
    let device = super::ingest::placeholder_device().map_err(|error| corrupt(error.to_string()))?;
    let digest = Digest::parse(&row.digest).map_err(|error| corrupt(error.to_string()))?;
    let seq = to_u64(row.seq, &what())?;
    decode(&row.stats, device, seq, digest, profile).map_err(corrupt)
}

/// Merges `pending` into its device's and cohorts' targets; `false`: it does not merge with
/// what is there (the caller discards `targets`).
fn add_to_targets(targets: &mut Targets, row: &PendingRow, pending: &PendingWindow) -> bool {
    let window = &pending.window;
    let mut cohorts: Vec<&String> = pending.cohorts.iter().collect();
    cohorts.sort();
    cohorts.dedup();
    let keys: Vec<AggregateKey> = std::iter::once(AggregateKey::device(&row.digest, &row.device))
        .chain(cohorts.into_iter().map(|cohort| AggregateKey::cohort(&row.digest, cohort)))
        .map(|key| key.at(row.bucket_start_ms))
        .collect();
    for key in keys {
        match targets.entry(key) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert((row.bucket_ms, AggregateWindow::of(window)));
            }
            std::collections::btree_map::Entry::Occupied(mut entry) => {
                let (length, merged) = entry.get_mut();
                *length = (*length).max(row.bucket_ms);
                if merged.merge_window(window, 1).is_err() {
                    return false;
                }
            }
        }
    }
    true
}

/// Deletes the folded `rows` from `pending_windows`.
async fn delete_pending(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[PendingRow],
) -> Result<(), StoreError> {
    for chunk in rows.chunks(super::ingest::MAX_PARAMETERS / 2) {
        let sql = format!(
            "DELETE FROM pending_windows WHERE (device_id, seq) IN (VALUES {})",
            super::ingest::placeholders(chunk.len(), 2)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query.bind(row.device.clone()).bind(row.seq);
        }
        query.execute(&mut **transaction).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use outpost_shared::profile::FeatureSource;

    use super::*;

    fn profile() -> Profile {
        let feature = |name: &str, edges: Vec<f64>| FeatureProfile {
            name: name.into(),
            source: FeatureSource::Element { tensor: "input".into(), index: 0 },
            histogram: Histogram::new(edges).expect("edges"),
            moments: Moments::default(),
            sketch: None,
        };
        Profile {
            v: 1,
            reference_count: 1,
            inputs: vec![feature("a", vec![0.0, 1.0, 2.0]), feature("b", vec![-1.0, 1.0])],
            outputs: vec![feature("y", vec![0.0, 0.5, 1.0])],
            classifier: Some(outpost_shared::profile::ClassifierProfile {
                output: "probabilities".into(),
                class_counts: vec![0, 0, 0],
                confidence: Histogram::new(confidence_edges()).expect("edges"),
            }),
        }
    }

    fn window(profile: &Profile) -> StatsWindow {
        let feature = |feature: &FeatureProfile, values: &[f64]| {
            let mut histogram = Histogram::new(feature.histogram.edges.clone()).expect("edges");
            let mut moments = Moments::default();
            for &value in values {
                histogram.observe(value);
                moments.observe(value);
            }
            FeatureStats { name: feature.name.clone(), histogram, moments, kll_sketch: None }
        };
        let mut latency = LatencyHistogram::default();
        for micros in [120, 900, 40_000, u64::MAX / 2] {
            latency.observe(micros);
        }
        let mut confidence = Histogram::new(confidence_edges()).expect("edges");
        for value in [0.3, 0.95, 0.95, 1.0] {
            confidence.observe(value);
        }
        StatsWindow {
            v: ProtocolVersion,
            device: DeviceId::new("berlin-1").expect("id"),
            model: ModelRef {
                name: "fraud".into(),
                version: "1.0.0".into(),
                digest: Digest::of(b"fraud"),
            },
            seq: 300,
            start_ms: 1_700_000_000_000,
            end_ms: 1_700_000_060_000,
            count: 4,
            errors: BTreeMap::from([("runtime".to_string(), 1), ("input_shape".to_string(), 2)]),
            latency,
            inputs: vec![
                feature(&profile.inputs[0], &[0.5, 1.5, 7.0, f64::NAN]),
                feature(&profile.inputs[1], &[]),
            ],
            outputs: vec![feature(&profile.outputs[0], &[0.25, -3.0])],
            classifier: Some(ClassifierStats { class_counts: vec![1, 0, 3], confidence }),
        }
    }

    #[test]
    fn a_window_comes_back_exactly_with_its_cohorts() {
        let profile = profile();
        let window = window(&profile);
        let cohorts = vec!["*".to_string(), "site=berlin".to_string()];
        let bytes = encode(&window, &cohorts);
        let decoded = decode(
            &bytes,
            window.device.clone(),
            window.seq,
            window.model.digest.clone(),
            &profile,
        )
        .expect("decodes");
        assert_eq!(decoded.window, window);
        assert_eq!(decoded.cohorts, cohorts);
        let json = serde_json::to_vec(&window).expect("json");
        assert!(
            bytes.len() * 2 < json.len(),
            "{} bytes against {} of JSON",
            bytes.len(),
            json.len()
        );
    }

    fn sketch_of(values: &[f64]) -> Vec<u8> {
        let mut sketch = outpost_shared::stats::kll::Kll::new();
        for &value in values {
            sketch.observe(value);
        }
        sketch.to_bytes()
    }

    #[test]
    fn a_window_with_kll_sketches_comes_back_exactly() {
        let profile = profile();
        let mut window = window(&profile);
        // The sketched features: `a` (three finite values) and `y`; `b` has none.
        window.inputs[0].kll_sketch = Some(sketch_of(&[0.5, 1.5, 7.0, f64::NAN]));
        window.outputs[0].kll_sketch = Some(sketch_of(&[0.25, -3.0]));
        let many: Vec<f64> = (0..5_000).map(f64::from).collect();
        window.inputs[1].histogram.counts = vec![5_000];
        window.inputs[1].moments = Moments::default();
        for &value in &many {
            window.inputs[1].moments.observe(value);
        }
        window.inputs[1].kll_sketch = Some(sketch_of(&many));
        window.check_statistics().expect("a valid window");
        let bytes = encode(&window, &["*".to_string()]);
        assert_eq!(bytes[0], 2, "the current encoding version");
        let decoded = decode(
            &bytes,
            window.device.clone(),
            window.seq,
            window.model.digest.clone(),
            &profile,
        )
        .expect("decodes");
        assert_eq!(decoded.window, window);
        let sketch = outpost_shared::stats::kll::Kll::from_bytes(
            decoded.window.inputs[1].kll_sketch.as_deref().expect("kept"),
        )
        .expect("a sketch");
        assert_eq!(sketch.n(), 5_000);

        // A damaged sketch inside a row is refused with the feature named.
        let mut damaged = window.clone();
        let mut header_only = sketch_of(&many);
        header_only[2] = 99;
        damaged.inputs[1].kll_sketch = Some(header_only);
        let error = decode(
            &encode(&damaged, &[]),
            window.device.clone(),
            1,
            window.model.digest.clone(),
            &profile,
        )
        .expect_err("refused");
        assert!(error.starts_with("the sketch of b: "), "{error}");
    }

    #[test]
    fn rows_of_the_encoding_without_sketches_still_decode() {
        let profile = profile();
        let window = window(&profile);
        let cohorts = vec!["*".to_string()];
        let old = encode_as(&window, &cohorts, false);
        assert_eq!(old[0], 1);
        // Version 1 is exactly version 2 less one "no sketch" byte per feature.
        assert_eq!(old.len() + 3, encode(&window, &cohorts).len());
        let decoded =
            decode(&old, window.device.clone(), window.seq, window.model.digest.clone(), &profile)
                .expect("decodes");
        assert_eq!(decoded.window, window);
        assert_eq!(decoded.cohorts, cohorts);
        // A sketched window written in version 1 comes back without its sketches.
        let mut sketched = window.clone();
        sketched.inputs[0].kll_sketch = Some(sketch_of(&[0.5, 1.5, 7.0]));
        let decoded = decode(
            &encode_as(&sketched, &cohorts, false),
            window.device.clone(),
            window.seq,
            window.model.digest.clone(),
            &profile,
        )
        .expect("decodes");
        assert_eq!(decoded.window, window);
    }

    #[test]
    fn damaged_or_foreign_bytes_are_refused_with_the_reason() {
        let profile = profile();
        let window = window(&profile);
        let bytes = encode(&window, &["*".to_string()]);
        let decode_bytes = |bytes: &[u8], profile: &Profile| {
            decode(bytes, window.device.clone(), 1, window.model.digest.clone(), profile)
                .map(|_| ())
        };
        assert_eq!(decode_bytes(&bytes[..bytes.len() - 1], &profile), Err("ends early".into()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_bytes(&longer, &profile), Err("1 bytes after the end".into()));
        let mut other_version = bytes.clone();
        other_version[0] = 9;
        assert_eq!(
            decode_bytes(&other_version, &profile),
            Err("encoding version 9, expected 1 or 2".into())
        );
        let mut fewer_inputs = profile.clone();
        fewer_inputs.inputs.pop();
        assert_eq!(
            decode_bytes(&bytes, &fewer_inputs),
            Err("2 features where the profile has 1".into())
        );
        let mut other_bins = profile.clone();
        other_bins.inputs[0].histogram = Histogram::new(vec![0.0, 1.0]).expect("edges");
        assert_eq!(
            decode_bytes(&bytes, &other_bins),
            Err("a has 2 counts where the profile has 1 bins".into())
        );
        assert_eq!(decode_bytes(&[], &profile), Err("ends early".into()));
    }
}
