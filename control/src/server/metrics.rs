//! Counters for Prometheus (`GET /metrics`), written in the text exposition format by hand.
//!
//! Every counter here is real: it is incremented where the thing happens. Windows rejected
//! counts both `stats` payloads that fail to decode (malformed, oversized, invalid statistics,
//! device mismatch) and decoded windows that ingest refuses (profile mismatch, not mergeable,
//! older than the retention).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use outpost_shared::wire::Channel;

/// The server's counters, shared by the MQTT loop and the API.
#[derive(Debug, Default)]
pub struct Metrics {
    /// MQTT messages received, by device → control channel (index: [`channel_index`]).
    pub mqtt_messages: [AtomicU64; 5],
    /// Messages dropped because topic or payload were malformed, by channel (`5`: unknown topic).
    pub mqtt_rejected: [AtomicU64; 6],
    /// Messages received on channels this version does not process yet (events).
    pub mqtt_ignored: [AtomicU64; 5],
    /// Messages whose processing failed in the database (logged; the message is not acked).
    pub mqtt_store_errors: AtomicU64,
    pub windows_ingested: AtomicU64,
    pub windows_duplicate: AtomicU64,
    pub windows_rejected: AtomicU64,
    /// Seconds between a window's end and its ingest, of the last window ingested.
    pub ingest_lag_seconds: AtomicU64,
    pub bundles_stored: AtomicU64,
    pub bundles_refused: AtomicU64,
    pub http_unauthenticated: AtomicU64,
    pub http_forbidden: AtomicU64,
    /// API requests refused with 429 because their source was denied too often.
    pub http_rate_limited: AtomicU64,
    /// API requests whose handler panicked (answered 500).
    pub http_panics: AtomicU64,
    /// Restarts of supervised background tasks after a panic, by task name.
    task_restarts: Mutex<BTreeMap<&'static str, u64>>,
}

/// The device → control channels, in counter order.
pub const COUNTED_CHANNELS: [Channel; 5] =
    [Channel::Hello, Channel::State, Channel::Stats, Channel::Events, Channel::Fetch];

/// The counter slot of a device → control channel (`None` for control → device channels).
pub fn channel_index(channel: Channel) -> Option<usize> {
    COUNTED_CHANNELS.iter().position(|counted| *counted == channel)
}

/// Adds one.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts one restart of the supervised task `name`.
    pub fn task_restarted(&self, name: &'static str) {
        let mut restarts =
            self.task_restarts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *restarts.entry(name).or_default() += 1;
    }

    /// Restarts of the supervised task `name` so far.
    pub fn task_restarts(&self, name: &str) -> u64 {
        let restarts = self.task_restarts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        restarts.get(name).copied().unwrap_or(0)
    }

    /// The Prometheus text format of every counter; `devices_online` is read by the caller.
    pub fn render(&self, devices_online: u64) -> String {
        let mut text = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {value}");
            }
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let by_channel = |counters: &[AtomicU64]| {
            COUNTED_CHANNELS
                .iter()
                .zip(counters)
                .map(|(channel, counter)| (format!("{{channel=\"{channel}\"}}"), load(counter)))
                .collect::<Vec<_>>()
        };
        family(
            "outpost_mqtt_messages_total",
            "counter",
            "MQTT messages received from devices, by channel.",
            by_channel(&self.mqtt_messages),
        );
        let mut rejected = by_channel(&self.mqtt_rejected);
        rejected.push(("{channel=\"unknown\"}".into(), load(&self.mqtt_rejected[5])));
        family(
            "outpost_mqtt_rejected_total",
            "counter",
            "MQTT messages dropped as malformed (bad topic or payload), by channel.",
            rejected,
        );
        family(
            "outpost_mqtt_ignored_total",
            "counter",
            "MQTT messages on channels this server version does not process yet.",
            by_channel(&self.mqtt_ignored),
        );
        family(
            "outpost_mqtt_store_errors_total",
            "counter",
            "MQTT messages whose processing failed in the database.",
            vec![(String::new(), load(&self.mqtt_store_errors))],
        );
        family(
            "outpost_windows_ingested_total",
            "counter",
            "Statistics windows ingested.",
            vec![(String::new(), load(&self.windows_ingested))],
        );
        family(
            "outpost_windows_duplicate_total",
            "counter",
            "Statistics windows received again and counted once.",
            vec![(String::new(), load(&self.windows_duplicate))],
        );
        family(
            "outpost_windows_rejected_total",
            "counter",
            "Statistics windows refused as malformed or oversized.",
            vec![(String::new(), load(&self.windows_rejected))],
        );
        family(
            "outpost_ingest_lag_seconds",
            "gauge",
            "Seconds between the end of the last ingested window and its ingest.",
            vec![(String::new(), load(&self.ingest_lag_seconds))],
        );
        family(
            "outpost_devices_online",
            "gauge",
            "Devices whose last state is online.",
            vec![(String::new(), devices_online)],
        );
        family(
            "outpost_bundles_stored_total",
            "counter",
            "Bundles newly stored in the registry.",
            vec![(String::new(), load(&self.bundles_stored))],
        );
        family(
            "outpost_bundles_refused_total",
            "counter",
            "Bundle pushes refused (verification, size, conflicts).",
            vec![(String::new(), load(&self.bundles_refused))],
        );
        family(
            "outpost_http_denied_total",
            "counter",
            "API requests denied, by status.",
            vec![
                ("{status=\"401\"}".into(), load(&self.http_unauthenticated)),
                ("{status=\"403\"}".into(), load(&self.http_forbidden)),
                ("{status=\"429\"}".into(), load(&self.http_rate_limited)),
            ],
        );
        family(
            "outpost_http_panics_total",
            "counter",
            "API requests whose handler panicked (answered 500; the server keeps running).",
            vec![(String::new(), load(&self.http_panics))],
        );
        let restarts: Vec<(String, u64)> = self
            .task_restarts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(task, count)| (format!("{{task=\"{task}\"}}"), *count))
            .collect();
        family(
            "outpost_task_restarts_total",
            "counter",
            "Background tasks restarted after a panic, by task.",
            restarts,
        );
        family(
            "outpost_panics_total",
            "counter",
            "Panics in this process (each logged with its location; none ends the process).",
            vec![(String::new(), crate::panics::panics_total())],
        );
        text
    }
}
