//! The drift monitor: every `drift.evaluate_interval_seconds` it compares the recent windows
//! of every model version with statistics against the baseline profile of its bundle, per
//! device and per cohort, feature by feature, and opens or closes drift alerts with the
//! hysteresis of [`crate::fleet_drift::Hysteresis`]. Alerts go to the database (with an audit
//! event) and to [`crate::fleet_drift::ALERT_TOPIC`] on the broker.
//!
//! With several control instances each runs a monitor; the database's unique index on open
//! alerts keeps one alert per series, and streak updates from two instances in the same
//! interval at worst count one evaluation twice.

use outpost_shared::drift::FeatureDrift;
use serde_json::json;
use tokio::sync::watch;

use crate::config::DriftConfig;
use crate::fleet_drift::{self, ALERT_TOPIC, Hysteresis, Streaks, Transition};
use crate::store::drift::{DriftAlert, Series};
use crate::store::ingest::{AggregateKind, AggregateWindow};
use crate::store::{Store, StoreError, now_ms};

/// Runs evaluations until `shutdown`.
pub async fn run(
    store: Store,
    mqtt: Option<rumqttc::AsyncClient>,
    config: DriftConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.evaluate_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        match evaluate(&store, &config).await {
            Ok(changes) => {
                for (transition, alert) in changes {
                    announce(mqtt.as_ref(), transition, &alert).await;
                }
            }
            Err(error) => tracing::warn!(%error, "drift evaluation failed; retried next interval"),
        }
    }
}

/// One evaluation of every model version; returns the alerts opened and closed.
pub async fn evaluate(
    store: &Store,
    config: &DriftConfig,
) -> Result<Vec<(Transition, DriftAlert)>, StoreError> {
    let policy = Hysteresis { open_after: config.open_after, close_after: config.close_after };
    let to_ms = now_ms().saturating_add(1);
    let from_ms = to_ms.saturating_sub(config.range_ms);
    let mut changes = Vec::new();
    for model in store.models_with_statistics().await? {
        let Some(profile) = store.bundle_profile(&model).await? else {
            // Statistics of a model the registry does not have: nothing to compare with.
            continue;
        };
        let mut streaks = store.drift_streaks(&model).await?;
        let open = store.open_drift_alerts(&model).await?;
        let mut updated: Vec<(Series, Streaks)> = Vec::new();
        let mut opening: Vec<(Series, serde_json::Value)> = Vec::new();
        let mut closing: Vec<i64> = Vec::new();
        for (kind, kind_name) in
            [(AggregateKind::Device, "device"), (AggregateKind::Cohort, "cohort")]
        {
            let rows = store.aggregates_of_model(kind, &model, from_ms, to_ms).await?;
            for group in rows.chunk_by(|a, b| a.key == b.key) {
                let total = match AggregateWindow::merge_all(group.iter().map(|r| &r.aggregate)) {
                    Ok(Some(total)) => total,
                    Ok(None) => continue,
                    Err(error) => {
                        tracing::warn!(%error, key = %group[0].key,
                            "aggregates that do not merge are left out of drift");
                        continue;
                    }
                };
                let drift = fleet_drift::compare(&profile, &total, &config.thresholds);
                let features: Vec<&FeatureDrift> =
                    drift.inputs.features.iter().chain(&drift.outputs.features).collect();
                for feature in features {
                    let series = Series {
                        model_digest: model.clone(),
                        scope_kind: kind_name.into(),
                        scope_key: group[0].key.clone(),
                        feature: feature.metrics.feature.clone(),
                    };
                    let before = streaks.remove(&series).unwrap_or_default();
                    let open_id = open.get(&series).copied();
                    let (after, transition) =
                        policy.step(before, feature.verdict, open_id.is_some());
                    match (transition, open_id) {
                        (Transition::Open, _) => opening.push((
                            series.clone(),
                            json!({
                                "windows": drift.windows,
                                "requests": drift.requests,
                                "feature": feature,
                            }),
                        )),
                        (Transition::Close, Some(id)) => closing.push(id),
                        _ => {}
                    }
                    if after != before {
                        updated.push((series, after));
                    }
                }
            }
        }
        store.save_drift_streaks(&updated).await?;
        for (series, detail) in opening {
            if let Some(alert) = store.open_drift_alert(&series, &detail).await? {
                changes.push((Transition::Open, alert));
            }
        }
        for id in closing {
            if let Some(alert) = store.close_drift_alert(id).await? {
                changes.push((Transition::Close, alert));
            }
        }
    }
    Ok(changes)
}

/// Publishes an opened or closed alert on [`ALERT_TOPIC`] (and logs it).
async fn announce(mqtt: Option<&rumqttc::AsyncClient>, transition: Transition, alert: &DriftAlert) {
    let event = match transition {
        Transition::Open => "opened",
        Transition::Close => "closed",
        Transition::Stay => return,
    };
    tracing::info!(
        id = alert.id,
        model = %alert.series.model_digest,
        scope = %format!("{} {}", alert.series.scope_kind, alert.series.scope_key),
        feature = %alert.series.feature,
        "drift alert {event}"
    );
    let Some(mqtt) = mqtt else {
        return;
    };
    let payload = json!({ "v": 1, "event": event, "alert": alert });
    let bytes = match serde_json::to_vec(&payload) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(%error, "cannot encode a drift alert event");
            return;
        }
    };
    if let Err(error) = mqtt.publish(ALERT_TOPIC, rumqttc::QoS::AtLeastOnce, false, bytes).await {
        tracing::warn!(%error, "cannot publish a drift alert event");
    }
}
