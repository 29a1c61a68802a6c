//! The control's side of on-device input sampling (`docs/drift.md` "Input samples"): tells
//! each device on its retained `sampling` topic whether it is in drift alert (an open alert of
//! its own) and which upload an operator requested, stores the [`SampleChunk`]s devices send
//! back, and deletes uploads past [`SAMPLE_RETENTION`].
//!
//! [`run`] re-reads the open alerts and pending requests every interval and publishes only
//! what changed for a device; the API publishes a new request at once
//! ([`publish_sampling`]), so an operator does not wait for the next interval.

use std::collections::BTreeMap;
use std::time::Duration;

use outpost_shared::wire::{
    Channel, DeviceId, ProtocolVersion, Publish, SampleChunk, SamplingControl,
};
use tokio::sync::watch;

use super::mqtt::MessageOutcome;
use crate::store::samples::PartOutcome;
use crate::store::{Store, StoreError, now_ms};

/// Uploaded samples (and requests) older than this are deleted.
pub const SAMPLE_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// Stores one part of an upload from `device`.
pub async fn record_chunk(
    store: &Store,
    device: &DeviceId,
    chunk: &SampleChunk,
) -> Result<MessageOutcome, StoreError> {
    Ok(match store.store_sample_part(device.as_str(), chunk).await? {
        PartOutcome::Stored | PartOutcome::Completed | PartOutcome::Duplicate => {
            MessageOutcome::Processed(Channel::Samples)
        }
        PartOutcome::UnknownRequest => MessageOutcome::Rejected {
            channel: Some(Channel::Samples),
            code: "unknown_sample_request",
            reason: format!(
                "{device} sent part {} for request {}, which it was not asked for",
                chunk.part, chunk.request_id
            ),
        },
        PartOutcome::Inconsistent(reason) => MessageOutcome::Rejected {
            channel: Some(Channel::Samples),
            code: "inconsistent_sample_part",
            reason: format!("{device}: {reason}"),
        },
    })
}

/// What `device` should be told now.
pub async fn sampling_state(store: &Store, device: &str) -> Result<SamplingControl, StoreError> {
    let alert = store.devices_in_drift_alert().await?.iter().any(|d| d == device);
    let upload_request = store
        .pending_sample_requests()
        .await?
        .into_iter()
        .find(|r| r.device == device)
        .map(|r| r.request_id);
    Ok(SamplingControl { v: ProtocolVersion, alert, upload_request })
}

/// Publishes `control` retained on `device`'s `sampling` topic.
pub async fn publish_sampling(
    mqtt: &rumqttc::AsyncClient,
    device: &DeviceId,
    control: &SamplingControl,
) -> Result<(), String> {
    let publish = Publish::message(device, control).map_err(|error| error.to_string())?;
    mqtt.publish(publish.topic, rumqttc::QoS::AtLeastOnce, publish.retain, publish.payload)
        .await
        .map_err(|error| error.to_string())
}

/// Keeps every device's `sampling` topic in step with its alerts and pending requests, and
/// purges old uploads, every `interval` until `shutdown`.
pub async fn run(
    store: Store,
    mqtt: Option<rumqttc::AsyncClient>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut published: BTreeMap<String, SamplingControl> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        if let Err(error) = step(&store, mqtt.as_ref(), &mut published).await {
            tracing::warn!(%error, "sampling state not published; retried next interval");
        }
    }
}

async fn step(
    store: &Store,
    mqtt: Option<&rumqttc::AsyncClient>,
    published: &mut BTreeMap<String, SamplingControl>,
) -> Result<(), StoreError> {
    let retention_ms = i64::try_from(SAMPLE_RETENTION.as_millis()).unwrap_or(i64::MAX);
    let purged = store.purge_device_samples(now_ms().saturating_sub(retention_ms)).await?;
    if purged > 0 {
        tracing::info!(purged, "deleted input samples past their retention");
    }
    let Some(mqtt) = mqtt else { return Ok(()) };
    let mut wanted: BTreeMap<String, SamplingControl> = BTreeMap::new();
    for device in store.devices_in_drift_alert().await? {
        wanted.insert(
            device,
            SamplingControl { v: ProtocolVersion, alert: true, upload_request: None },
        );
    }
    for request in store.pending_sample_requests().await? {
        wanted
            .entry(request.device.clone())
            .or_insert(SamplingControl { v: ProtocolVersion, alert: false, upload_request: None })
            .upload_request = Some(request.request_id);
    }
    // Devices told something before and now in no alert and without a request hear so.
    for device in published.keys() {
        wanted.entry(device.clone()).or_insert(SamplingControl {
            v: ProtocolVersion,
            alert: false,
            upload_request: None,
        });
    }
    for (device, control) in wanted {
        if published.get(&device) == Some(&control) {
            continue;
        }
        let Ok(id) = DeviceId::new(device.clone()) else { continue };
        match publish_sampling(mqtt, &id, &control).await {
            Ok(()) => {
                if control.alert || control.upload_request.is_some() {
                    published.insert(device, control);
                } else {
                    published.remove(&device);
                }
            }
            Err(error) => tracing::warn!(%error, %device, "cannot publish the sampling state"),
        }
    }
    Ok(())
}
