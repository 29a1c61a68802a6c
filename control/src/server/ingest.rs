//! Statistics ingest: one [`StatsWindow`] from `outpost/v1/<dev>/stats` in, counted once and
//! merged into its aggregates, or refused with a reason.
//!
//! The wire layer has already checked the payload (size limit, version, `check_statistics`, and
//! that the device in the payload is the device of the topic). Here the window is also checked
//! against the baseline profile of its model when the registry holds that bundle: the same
//! features in the same order over the profile's exact bin edges, so the aggregates compare
//! with the baseline bin by bin. A model the registry does not know is aggregated as it comes;
//! the merge itself still refuses windows whose edges differ from what the bucket holds.
//!
//! Cohorts: each window counts in `*` (the whole fleet) and in one cohort per `key=value` tag
//! the device has in the inventory when the window is ingested (its last `hello`), restricted
//! to `ingest.cohort_tag_keys` when that is set. Tags are taken at ingest time, not from the
//! window, because the device's tags are what rollout cohorts select on; a device re-tagged
//! later counts in its new cohorts from then on.
//!
//! KLL sketches (present only where a profile asks for them) are decoded in full once here
//! ([`check_sketches`]): a damaged one refuses its window (`bad_sketch`) before anything is
//! counted. Accepted sketches are kept and merged into the aggregates like the histograms.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use outpost_shared::profile::{FeatureProfile, Profile};
use outpost_shared::stats::kll::Kll;
use outpost_shared::wire::{DeviceId, FeatureStats, StatsWindow};
use tokio::sync::Mutex;

use crate::config::IngestConfig;
use crate::store::ingest::{BatchOutcome, IngestOutcome, WindowToIngest};
use crate::store::pending::FoldScope;
use crate::store::{Store, StoreError, now_ms};

/// What happened to one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowOutcome {
    /// Counted and merged; `lag_seconds` from the window's end to now.
    Ingested { lag_seconds: u64 },
    /// Counted before; nothing changed.
    Duplicate,
    /// Refused (nothing changed), with a stable code and the reason.
    Rejected { code: &'static str, reason: String },
}

/// The ingest step, shared by the MQTT loop: the store, the configuration and a cache of the
/// bundles' profiles (bundles never change once stored, so a cached profile stays right).
#[derive(Debug, Clone)]
pub struct Ingest {
    store: Store,
    config: Arc<IngestConfig>,
    profiles: Arc<Mutex<HashMap<String, Arc<Profile>>>>,
    activity: Arc<Activity>,
}

/// What the fold schedule ([`Ingest::run_folder`]) knows of ingest in this instance.
#[derive(Debug, Default)]
struct Activity {
    /// When a batch last appended pending windows, unix milliseconds.
    last_append_ms: AtomicI64,
    /// Windows this instance appended since its last fold.
    appended_since_fold: AtomicU64,
}

/// How often the folder looks whether to fold.
const FOLD_TICK: Duration = Duration::from_millis(200);
/// Ingest counts as quiet, and the folder folds, when no batch appended for this long.
const FOLD_WHEN_QUIET_FOR_MS: i64 = 500;
/// The folder folds anyway once this many windows are pending, or …
const FOLD_BACKLOG: u64 = 50_000;
/// … once the oldest of them waited this long (and at least this often, for windows another
/// instance appended before it stopped).
const FOLD_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
/// Most pending windows merged in one fold transaction on PostgreSQL, and on SQLite, where a
/// fold holds the one write lock and ingest waits meanwhile.
const FOLD_BATCH_POSTGRES: usize = 20_000;
const FOLD_BATCH_SQLITE: usize = 2_000;

impl Ingest {
    pub fn new(store: Store, config: IngestConfig) -> Ingest {
        let activity = Activity::default();
        // Windows an earlier run left pending are folded at the first quiet moment.
        activity.appended_since_fold.store(1, Ordering::Relaxed);
        Ingest {
            store,
            config: Arc::new(config),
            profiles: Arc::default(),
            activity: Arc::new(activity),
        }
    }

    /// No batch appended pending windows for a while.
    fn quiet(&self) -> bool {
        now_ms() - self.activity.last_append_ms.load(Ordering::Relaxed) >= FOLD_WHEN_QUIET_FOR_MS
    }

    /// Folds pending windows into the aggregates until `shutdown` turns true: in bulk when
    /// ingest is quiet, when many are pending, or when the oldest waited long enough (readers
    /// fold what is left before they read, so this schedule only keeps the backlog small).
    /// `on_refused` is told how many windows a fold refused (see [`crate::store::pending`]).
    pub async fn run_folder(
        self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
        on_refused: impl Fn(u64) + Send,
    ) {
        let mut last_fold = tokio::time::Instant::now();
        let mut failures: u32 = 0;
        let batch = match self.store.backend() {
            crate::store::Backend::Sqlite => FOLD_BATCH_SQLITE,
            crate::store::Backend::Postgres => FOLD_BATCH_POSTGRES,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FOLD_TICK) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            let appended = self.activity.appended_since_fold.load(Ordering::Relaxed);
            let quiet = self.quiet();
            let due = last_fold.elapsed() >= FOLD_AT_LEAST_EVERY;
            if !(due || (appended > 0 && quiet) || appended >= FOLD_BACKLOG) {
                continue;
            }
            self.activity.appended_since_fold.store(0, Ordering::Relaxed);
            last_fold = tokio::time::Instant::now();
            loop {
                let started = std::time::Instant::now();
                match self.store.fold_pending(FoldScope::Some(batch)).await {
                    Ok(report) => {
                        failures = 0;
                        if report.windows_folded + report.windows_refused > 0 {
                            tracing::debug!(folded = report.windows_folded,
                                rows = report.rows_written, elapsed = ?started.elapsed(),
                                "folded pending statistics windows");
                        }
                        crate::store::pending::log_refused(&report);
                        if report.windows_refused > 0 {
                            on_refused(report.windows_refused);
                        }
                        if report.windows_folded + report.windows_refused < batch as u64 {
                            break;
                        }
                        // More is pending: go on while ingest stays quiet or the backlog is
                        // large; otherwise ingest goes first (on SQLite a fold holds the one
                        // write lock) and the rest waits for the next quiet moment.
                        let appended = self.activity.appended_since_fold.load(Ordering::Relaxed);
                        if !self.quiet() && appended < FOLD_BACKLOG {
                            self.activity.appended_since_fold.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(%error, "cannot fold pending statistics windows; \
                            retrying later (readers fold before reading)");
                        // Try again at the next tick.
                        self.activity.appended_since_fold.fetch_add(1, Ordering::Relaxed);
                        if failures > 3 {
                            last_fold = tokio::time::Instant::now();
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Counts and merges `window` of `device` (already decoded and validated on its topic).
    pub async fn ingest(
        &self,
        device: &DeviceId,
        window: StatsWindow,
    ) -> Result<WindowOutcome, StoreError> {
        let received_ms = now_ms();
        let (window, bucket_start_ms) = match self.prepare(&window, received_ms).await? {
            Ok(prepared) => prepared,
            Err(refused) => return Ok(refused),
        };
        let cohorts = self.cohorts(device).await?;
        let item = WindowToIngest {
            window: &window,
            bucket_start_ms,
            bucket_ms: self.config.bucket_ms,
            cohorts,
            received_ms,
            // One window at a time is the slow path: merged at once.
            profiled: false,
        };
        let outcome = self.store.ingest_window(&item).await?;
        Ok(window_outcome(outcome, &window, received_ms))
    }

    /// Counts and merges many windows, each of the device in its payload (checked against the
    /// topic by the wire layer), in one transaction; the outcomes are those of [`Ingest::ingest`]
    /// on each in turn. When some window does not merge, the batch is ingested window by window
    /// to refuse exactly that one.
    pub async fn ingest_batch(
        &self,
        windows: &[StatsWindow],
    ) -> Result<Vec<WindowOutcome>, StoreError> {
        let received_ms = now_ms();
        let mut outcomes: Vec<Option<WindowOutcome>> = vec![None; windows.len()];
        let mut accepted = Vec::with_capacity(windows.len());
        for (index, window) in windows.iter().enumerate() {
            match self.prepare(window, received_ms).await? {
                Ok((window, bucket_start_ms)) => {
                    let profiled = self.profile(window.model.digest.as_str()).await?.is_some();
                    accepted.push((index, window, bucket_start_ms, profiled));
                }
                Err(refused) => outcomes[index] = Some(refused),
            }
        }
        let devices: Vec<&str> = {
            let mut devices: Vec<&str> =
                accepted.iter().map(|(_, window, ..)| window.device.as_str()).collect();
            devices.sort_unstable();
            devices.dedup();
            devices
        };
        let tags = crate::store::ingest::device_tags(&self.store, &devices).await?;
        let items: Vec<WindowToIngest<'_>> = accepted
            .iter()
            .map(|(_, window, bucket_start_ms, profiled)| WindowToIngest {
                window,
                bucket_start_ms: *bucket_start_ms,
                bucket_ms: self.config.bucket_ms,
                cohorts: self.cohorts_of(tags.get(window.device.as_str())),
                received_ms,
                profiled: *profiled,
            })
            .collect();
        match self.store.ingest_batch(&items).await? {
            BatchOutcome::Committed(results) => {
                let mut appended = 0;
                for ((index, window, _, profiled), result) in accepted.iter().zip(results) {
                    appended += u64::from(*profiled && result == IngestOutcome::Ingested);
                    outcomes[*index] = Some(window_outcome(result, window, received_ms));
                }
                if appended > 0 {
                    self.activity.appended_since_fold.fetch_add(appended, Ordering::Relaxed);
                    self.activity.last_append_ms.store(now_ms(), Ordering::Relaxed);
                }
            }
            BatchOutcome::NotMergeable => {
                for (index, window, ..) in &accepted {
                    let device = window.device.clone();
                    let window = window.clone().into_owned();
                    outcomes[*index] = Some(self.ingest(&device, window).await?);
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or(WindowOutcome::Rejected {
                    code: "internal",
                    reason: "no outcome was recorded for this window".into(),
                })
            })
            .collect())
    }

    /// The checks before storing: retention, the model's profile. `Ok(Err(..))`: refused.
    async fn prepare<'w>(
        &self,
        window: &'w StatsWindow,
        received_ms: i64,
    ) -> Result<Result<(Cow<'w, StatsWindow>, i64), WindowOutcome>, StoreError> {
        let start = i64::try_from(window.start_ms).unwrap_or(i64::MAX);
        let bucket_start_ms = start - start.rem_euclid(self.config.bucket_ms);
        if let Some(retention) = self.config.retention_ms
            && bucket_start_ms < received_ms.saturating_sub(retention)
        {
            return Ok(Err(WindowOutcome::Rejected {
                code: "too_old",
                reason: format!(
                    "window {} starts at {} ms, older than the retention of {} days",
                    window.seq,
                    window.start_ms,
                    retention / 86_400_000
                ),
            }));
        }
        if let Err(reason) = check_sketches(window) {
            return Ok(Err(WindowOutcome::Rejected { code: "bad_sketch", reason }));
        }
        if let Some(profile) = self.profile(window.model.digest.as_str()).await?
            && let Err(reason) = matches_profile(window, &profile)
        {
            return Ok(Err(WindowOutcome::Rejected { code: "profile_mismatch", reason }));
        }
        Ok(Ok((Cow::Borrowed(window), bucket_start_ms)))
    }

    /// Runs downsampling and retention once, relative to now.
    pub async fn maintain(&self) -> Result<crate::store::ingest::MaintenanceReport, StoreError> {
        let now = now_ms();
        self.store
            .maintain_aggregates(
                now.saturating_sub(self.config.downsample_after_ms),
                self.config.retention_ms.map(|retention| now.saturating_sub(retention)),
            )
            .await
    }

    async fn profile(&self, digest: &str) -> Result<Option<Arc<Profile>>, StoreError> {
        if let Some(profile) = self.profiles.lock().await.get(digest) {
            return Ok(Some(profile.clone()));
        }
        // Unknown digests are not cached: the bundle may be pushed later.
        let Some(profile) = self.store.bundle_profile(digest).await? else {
            return Ok(None);
        };
        let profile = Arc::new(profile);
        self.profiles.lock().await.insert(digest.to_string(), profile.clone());
        Ok(Some(profile))
    }

    async fn cohorts(&self, device: &DeviceId) -> Result<Vec<String>, StoreError> {
        let record = self.store.device(device.as_str()).await?;
        Ok(self.cohorts_of(record.as_ref().map(|record| &record.tags)))
    }

    /// `*` and the cohorts of a device with `tags` (`None`: not in the inventory).
    fn cohorts_of(&self, tags: Option<&BTreeMap<String, String>>) -> Vec<String> {
        let mut cohorts = vec!["*".to_string()];
        if let Some(tags) = tags {
            let keys = &self.config.cohort_tag_keys;
            cohorts.extend(
                tags.iter()
                    .filter(|(key, _)| keys.is_empty() || keys.contains(key))
                    .map(|(key, value)| format!("{key}={value}")),
            );
        }
        cohorts
    }
}

fn window_outcome(outcome: IngestOutcome, window: &StatsWindow, received_ms: i64) -> WindowOutcome {
    match outcome {
        IngestOutcome::Ingested => {
            let end = i64::try_from(window.end_ms).unwrap_or(i64::MAX);
            let lag_seconds = u64::try_from(received_ms.saturating_sub(end) / 1000).unwrap_or(0);
            WindowOutcome::Ingested { lag_seconds }
        }
        IngestOutcome::Duplicate => WindowOutcome::Duplicate,
        IngestOutcome::NotMergeable(error) => WindowOutcome::Rejected {
            code: "not_mergeable",
            reason: format!("does not merge with the stored bucket: {error}"),
        },
    }
}

/// Decodes every KLL sketch of `window` once, items included (the wire layer checked only
/// their headers), so a damaged sketch is refused here with its feature named instead of
/// failing the merge of a whole bucket later.
pub fn check_sketches(window: &StatsWindow) -> Result<(), String> {
    let sides = [("input", &window.inputs), ("output", &window.outputs)];
    for (kind, features) in sides {
        for feature in features {
            if let Some(bytes) = &feature.kll_sketch {
                let sketch = Kll::from_bytes(bytes)
                    .map_err(|error| format!("{kind} `{}`: {error}", feature.name))?;
                if sketch.n() != feature.moments.count {
                    return Err(format!(
                        "{kind} `{}`: KLL sketch of {} values where the moments count {}",
                        feature.name,
                        sketch.n(),
                        feature.moments.count
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Whether `window` has exactly the profile's features, in order, over the profile's edges.
pub fn matches_profile(window: &StatsWindow, profile: &Profile) -> Result<(), String> {
    fn side(
        kind: &str,
        features: &[FeatureStats],
        expected: &[FeatureProfile],
    ) -> Result<(), String> {
        if features.len() != expected.len() {
            return Err(format!(
                "{} {kind}s where the model's profile has {}",
                features.len(),
                expected.len()
            ));
        }
        for (feature, profile) in features.iter().zip(expected) {
            if feature.name != profile.name {
                return Err(format!(
                    "{kind} `{}` where the profile has `{}`",
                    feature.name, profile.name
                ));
            }
            if feature.histogram.edges != profile.histogram.edges {
                return Err(format!(
                    "{kind} `{}` is binned over other edges than the model's profile",
                    feature.name
                ));
            }
        }
        Ok(())
    }
    side("input", &window.inputs, &profile.inputs)?;
    side("output", &window.outputs, &profile.outputs)?;
    match (&window.classifier, &profile.classifier) {
        (None, None) => Ok(()),
        (Some(window), Some(profile))
            if window.class_counts.len() == profile.class_counts.len() =>
        {
            Ok(())
        }
        (Some(window), Some(profile)) => Err(format!(
            "{} classes where the profile has {}",
            window.class_counts.len(),
            profile.class_counts.len()
        )),
        (Some(_), None) => Err("classifier statistics for a model whose profile has none".into()),
        (None, Some(_)) => Err("no classifier statistics for a classifier model".into()),
    }
}

#[cfg(test)]
mod tests {
    use outpost_shared::profile::FeatureSource;
    use outpost_shared::stats::{Histogram, Moments};
    use outpost_shared::wire::{Digest, LatencyHistogram, ModelRef, ProtocolVersion};

    use super::*;

    fn feature_profile(name: &str, edges: &[f64]) -> FeatureProfile {
        FeatureProfile {
            name: name.into(),
            source: FeatureSource::Element { tensor: "input".into(), index: 0 },
            histogram: Histogram::new(edges.to_vec()).expect("edges"),
            moments: Moments::default(),
            sketch: None,
        }
    }

    fn feature(name: &str, edges: &[f64]) -> FeatureStats {
        FeatureStats {
            name: name.into(),
            histogram: Histogram::new(edges.to_vec()).expect("edges"),
            moments: Moments::default(),
            kll_sketch: None,
        }
    }

    fn window(inputs: Vec<FeatureStats>) -> StatsWindow {
        StatsWindow {
            v: ProtocolVersion,
            device: DeviceId::new("d").expect("id"),
            model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
            seq: 1,
            start_ms: 0,
            end_ms: 1,
            count: 0,
            errors: Default::default(),
            latency: LatencyHistogram::default(),
            inputs,
            outputs: vec![],
            classifier: None,
        }
    }

    #[tokio::test]
    async fn cohorts_are_the_tags_at_ingest_time_restricted_to_the_configured_keys() {
        let store = Store::connect(&crate::store::StoreOptions {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("store");
        let device = DeviceId::new("d").expect("id");
        let hello = outpost_shared::wire::Hello {
            v: ProtocolVersion,
            device: device.clone(),
            agent_version: "1".into(),
            arch: "aarch64".into(),
            tags: [("site", "berlin"), ("hw", "rpi4")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            active_model: None,
            previous_model: None,
            slots: outpost_shared::wire::Slots { active: None, a: None, b: None },
            capabilities: vec![],
            trust_root_version: 1,
            last_plan_seq: None,
            ts_ms: 0,
        };
        let every_tag = Ingest::new(store.clone(), IngestConfig::default());
        assert_eq!(every_tag.cohorts(&device).await.expect("cohorts"), ["*"], "unknown device");
        let delivery = crate::store::inventory::Delivery { received_ms: 1, retained: false };
        store.record_hello(&device, &hello, delivery).await.expect("hello");
        assert_eq!(
            every_tag.cohorts(&device).await.expect("cohorts"),
            ["*", "hw=rpi4", "site=berlin"]
        );
        let site_only = Ingest::new(
            store.clone(),
            IngestConfig { cohort_tag_keys: vec!["site".into()], ..IngestConfig::default() },
        );
        assert_eq!(site_only.cohorts(&device).await.expect("cohorts"), ["*", "site=berlin"]);
    }

    fn stats(device: &str, seq: u64, count: u64, edges: &[f64]) -> StatsWindow {
        let mut histogram = Histogram::new(edges.to_vec()).expect("edges");
        let mut moments = Moments::default();
        for i in 0..count {
            histogram.observe(i as f64 / count as f64);
            moments.observe(i as f64 / count as f64);
        }
        let mut w =
            window(vec![FeatureStats { name: "x".into(), histogram, moments, kll_sketch: None }]);
        w.device = DeviceId::new(device).expect("id");
        w.seq = seq;
        let now = u64::try_from(now_ms()).expect("after 1970");
        w.start_ms = now - 60_000;
        w.end_ms = now;
        w.count = count;
        w
    }

    #[tokio::test]
    async fn a_batch_counts_like_one_window_at_a_time_and_refuses_only_what_does_not_merge() {
        let store = Store::connect(&crate::store::StoreOptions {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("store");
        let ingest = Ingest::new(store.clone(), IngestConfig::default());
        let edges = [0.0, 0.5, 1.0];
        let ingested = |outcome: &WindowOutcome| matches!(outcome, WindowOutcome::Ingested { .. });
        // Twice in one batch, two devices, two windows of one device.
        let first = [
            stats("a", 1, 3, &edges),
            stats("a", 1, 3, &edges),
            stats("b", 1, 5, &edges),
            stats("a", 2, 7, &edges),
        ];
        let outcomes = ingest.ingest_batch(&first).await.expect("batch");
        assert!(ingested(&outcomes[0]) && ingested(&outcomes[2]) && ingested(&outcomes[3]));
        assert_eq!(outcomes[1], WindowOutcome::Duplicate);
        // Seen in an earlier batch; new; over other edges (refused alone, the rest counted).
        let second =
            [stats("a", 2, 7, &edges), stats("a", 3, 11, &edges), stats("b", 2, 13, &[0.0, 2.0])];
        let outcomes = ingest.ingest_batch(&second).await.expect("batch");
        assert_eq!(outcomes[0], WindowOutcome::Duplicate);
        assert!(ingested(&outcomes[1]), "{outcomes:?}");
        assert!(
            matches!(&outcomes[2], WindowOutcome::Rejected { code: "not_mergeable", .. }),
            "{outcomes:?}"
        );
        assert_eq!(store.windows_seen("a").await.expect("seen"), 3);
        assert_eq!(store.windows_seen("b").await.expect("seen"), 1);
        let digest = first[0].model.digest.as_str().to_string();
        let total = |kind, key: &'static str| {
            let store = store.clone();
            let digest = digest.clone();
            async move {
                let rows =
                    store.aggregates(kind, &digest, key, 0, i64::MAX).await.expect("aggregates");
                rows.iter().fold((0, 0), |(w, c), row| (w + row.windows, c + row.request_count))
            }
        };
        use crate::store::ingest::AggregateKind::{Cohort, Device};
        assert_eq!(total(Device, "a").await, (3, 3 + 7 + 11));
        assert_eq!(total(Device, "b").await, (1, 5));
        assert_eq!(total(Cohort, "*").await, (4, 3 + 7 + 11 + 5));
    }

    #[tokio::test]
    async fn a_damaged_kll_sketch_is_refused_alone_and_good_sketches_are_kept() {
        let store = Store::connect(&crate::store::StoreOptions {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            acquire_timeout: std::time::Duration::from_secs(10),
        })
        .await
        .expect("store");
        let ingest = Ingest::new(store.clone(), IngestConfig::default());
        let edges = [0.0, 0.5, 1.0];
        let sketched = |device: &str, seq: u64| {
            let mut window = stats(device, seq, 1_000, &edges);
            let mut sketch = Kll::new();
            for i in 0..1_000 {
                sketch.observe(f64::from(i) / 1_000.0);
            }
            window.inputs[0].kll_sketch = Some(sketch.to_bytes());
            window
        };
        let good = sketched("a", 1);
        // The header (checked on the wire) is intact; the items are cut off.
        let mut damaged = sketched("b", 1);
        if let Some(bytes) = &mut damaged.inputs[0].kll_sketch {
            bytes.truncate(40);
        }
        damaged.check_statistics().expect("the header alone passes the wire checks");
        let outcomes =
            ingest.ingest_batch(&[good, damaged, sketched("a", 2)]).await.expect("batch");
        assert!(matches!(outcomes[0], WindowOutcome::Ingested { .. }), "{outcomes:?}");
        assert!(matches!(outcomes[2], WindowOutcome::Ingested { .. }), "{outcomes:?}");
        let WindowOutcome::Rejected { code, reason } = &outcomes[1] else {
            panic!("refused: {outcomes:?}");
        };
        assert_eq!(*code, "bad_sketch");
        assert!(reason.starts_with("input `x`: KLL sketch is not in the DataSketches"), "{reason}");
        // The sketches of the two good windows are merged into the device's aggregate.
        let rows = store
            .aggregates(
                crate::store::ingest::AggregateKind::Device,
                Digest::of(b"m").as_str(),
                "a",
                0,
                i64::MAX,
            )
            .await
            .expect("aggregates");
        let [device_a] = rows.as_slice() else { panic!("one bucket: {rows:?}") };
        let sketch = Kll::from_bytes(
            device_a.aggregate.inputs[0].kll_sketch.as_deref().expect("a merged sketch"),
        )
        .expect("decodes");
        assert_eq!(sketch.n(), 2_000);
    }

    #[test]
    fn windows_must_use_the_profile_features_and_edges() {
        let profile = Profile {
            v: 1,
            reference_count: 1,
            inputs: vec![feature_profile("a", &[0.0, 1.0]), feature_profile("b", &[0.0, 2.0])],
            outputs: vec![],
            classifier: None,
        };
        let cases: &[(Vec<FeatureStats>, Option<&str>)] = &[
            (vec![feature("a", &[0.0, 1.0]), feature("b", &[0.0, 2.0])], None),
            (vec![feature("a", &[0.0, 1.0])], Some("1 inputs where the model's profile has 2")),
            (
                vec![feature("b", &[0.0, 2.0]), feature("a", &[0.0, 1.0])],
                Some("input `b` where the profile has `a`"),
            ),
            (
                vec![feature("a", &[0.0, 1.0]), feature("b", &[0.0, 3.0])],
                Some("input `b` is binned over other edges than the model's profile"),
            ),
        ];
        for (inputs, expected) in cases {
            let result = matches_profile(&window(inputs.clone()), &profile);
            assert_eq!(result.err().as_deref(), *expected);
        }
    }
}
