//! The fleet inventory: one `devices` row per device, kept from its `hello` (what it is and
//! runs) and `state` (online / offline) messages.
//!
//! Messages are applied in the order they arrive: MQTT keeps one topic's messages in order for a
//! subscriber, and a device's own clock is not trusted for ordering (boards without a real-time
//! clock boot in 1970). `last_seen_ms` is the control's clock when a live message arrived; a
//! retained message replayed by the broker when the control (re)subscribes says nothing about
//! when the device was last heard, so it only sets `last_seen_ms` for a device seen for the
//! first time (from the message's own time when it has one).

use std::collections::BTreeMap;

use outpost_shared::selector::Selector;
use outpost_shared::wire::{DeviceId, Hello, ModelRef, Presence, State};
use serde::Serialize;
use sqlx::Row as _;

use super::{Store, StoreError, from_json, to_i64};

/// How a message reached the control.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// The control's clock when the message arrived.
    pub received_ms: i64,
    /// The broker replayed a retained message (on subscribe), rather than relaying a live one.
    pub retained: bool,
}

/// A model as the inventory shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InventoryModel {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// One device of the inventory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceRecord {
    pub device_id: String,
    pub tags: BTreeMap<String, String>,
    pub arch: Option<String>,
    pub agent_version: Option<String>,
    pub active_model: Option<InventoryModel>,
    pub previous_model: Option<InventoryModel>,
    pub trust_root_version: Option<i64>,
    pub last_plan_seq: Option<i64>,
    /// `online`, `offline`, or `unknown` before the first `state` message.
    pub presence: String,
    pub presence_changed_ms: Option<i64>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Which devices to list; every given condition must hold.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub selector: Option<Selector>,
    pub online_only: bool,
    /// `name` or `name@version` of the active model.
    pub model: Option<String>,
}

const DEVICE_COLUMNS: &str = "device_id, tags_json, arch, agent_version, active_model_name, \
    active_model_version, active_model_digest, previous_model_name, previous_model_version, \
    previous_model_digest, trust_root_version, last_plan_seq, presence, presence_changed_ms, \
    first_seen_ms, last_seen_ms";

fn model_columns(model: Option<&ModelRef>) -> (Option<String>, Option<String>, Option<String>) {
    match model {
        Some(model) => (
            Some(model.name.clone()),
            Some(model.version.clone()),
            Some(model.digest.as_str().to_string()),
        ),
        None => (None, None, None),
    }
}

fn model_from_row(
    row: &sqlx::any::AnyRow,
    prefix: &str,
) -> Result<Option<InventoryModel>, StoreError> {
    let name: Option<String> = row.try_get(format!("{prefix}_name").as_str())?;
    let version: Option<String> = row.try_get(format!("{prefix}_version").as_str())?;
    let digest: Option<String> = row.try_get(format!("{prefix}_digest").as_str())?;
    Ok(match (name, version, digest) {
        (Some(name), Some(version), Some(digest)) => Some(InventoryModel { name, version, digest }),
        _ => None,
    })
}

fn device_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceRecord, StoreError> {
    let device_id: String = row.try_get("device_id")?;
    Ok(DeviceRecord {
        tags: from_json(&row.try_get::<String, _>("tags_json")?, &format!("tags of {device_id}"))?,
        arch: row.try_get("arch")?,
        agent_version: row.try_get("agent_version")?,
        active_model: model_from_row(row, "active_model")?,
        previous_model: model_from_row(row, "previous_model")?,
        trust_root_version: row.try_get("trust_root_version")?,
        last_plan_seq: row.try_get("last_plan_seq")?,
        presence: row.try_get("presence")?,
        presence_changed_ms: row.try_get("presence_changed_ms")?,
        first_seen_ms: row.try_get("first_seen_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        device_id,
    })
}

impl Store {
    /// Makes sure the device has a row; a new row's `last_seen_ms` is `first_heard_ms`.
    async fn ensure_device(
        transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
        device: &DeviceId,
        delivery: Delivery,
        first_heard_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (device_id, tags_json, presence, first_seen_ms, last_seen_ms) \
             VALUES ($1, '{}', 'unknown', $2, $3) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(device.as_ref().to_string())
        .bind(delivery.received_ms)
        .bind(first_heard_ms)
        .execute(&mut **transaction)
        .await?;
        if !delivery.retained {
            sqlx::query(
                "UPDATE devices SET last_seen_ms = $2 WHERE device_id = $1 AND last_seen_ms < $2",
            )
            .bind(device.as_ref().to_string())
            .bind(delivery.received_ms)
            .execute(&mut **transaction)
            .await?;
        }
        Ok(())
    }

    /// Applies a device's `hello`.
    pub async fn record_hello(
        &self,
        device: &DeviceId,
        hello: &Hello,
        delivery: Delivery,
    ) -> Result<(), StoreError> {
        let first_heard =
            if delivery.retained { millis(hello.ts_ms) } else { delivery.received_ms };
        let (active_name, active_version, active_digest) =
            model_columns(hello.active_model.as_ref());
        let (previous_name, previous_version, previous_digest) =
            model_columns(hello.previous_model.as_ref());
        let tags_json = serde_json::to_string(&hello.tags).map_err(|error| {
            StoreError::Corrupt { what: format!("tags of {device}"), reason: error.to_string() }
        })?;
        let hello_json = serde_json::to_string(hello).map_err(|error| StoreError::Corrupt {
            what: format!("hello of {device}"),
            reason: error.to_string(),
        })?;
        let mut transaction = self.pool().begin().await?;
        Self::ensure_device(&mut transaction, device, delivery, first_heard).await?;
        sqlx::query(
            "UPDATE devices SET tags_json = $2, arch = $3, agent_version = $4, \
             active_model_name = $5, active_model_version = $6, active_model_digest = $7, \
             previous_model_name = $8, previous_model_version = $9, previous_model_digest = $10, \
             trust_root_version = $11, last_plan_seq = $12, hello_json = $13 \
             WHERE device_id = $1",
        )
        .bind(device.as_ref().to_string())
        .bind(tags_json)
        .bind(hello.arch.clone())
        .bind(hello.agent_version.clone())
        .bind(active_name)
        .bind(active_version)
        .bind(active_digest)
        .bind(previous_name)
        .bind(previous_version)
        .bind(previous_digest)
        .bind(to_i64(hello.trust_root_version, "trust root version")?)
        .bind(hello.last_plan_seq.map(|seq| to_i64(seq, "plan sequence")).transpose()?)
        .bind(hello_json)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Applies a device's `state` (including its Last Will, sent by the broker).
    pub async fn record_state(
        &self,
        device: &DeviceId,
        state: &State,
        delivery: Delivery,
    ) -> Result<(), StoreError> {
        let first_heard = match (delivery.retained, state.ts_ms) {
            (true, Some(ts_ms)) => millis(ts_ms),
            _ => delivery.received_ms,
        };
        let presence = match state.state {
            Presence::Online => "online",
            Presence::Offline => "offline",
        };
        let mut transaction = self.pool().begin().await?;
        Self::ensure_device(&mut transaction, device, delivery, first_heard).await?;
        sqlx::query(
            "UPDATE devices SET presence = $2, presence_changed_ms = $3 \
             WHERE device_id = $1 AND presence <> $2",
        )
        .bind(device.as_ref().to_string())
        .bind(presence.to_string())
        .bind(delivery.received_ms)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// One device, if known.
    pub async fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1"
        )))
        .bind(device_id.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(device_from_row).transpose()
    }

    /// The devices matching `filter`, by id. Presence and model are filtered in the database;
    /// the tag selector (which has negations and presence terms) in Rust.
    pub async fn list_devices(
        &self,
        filter: &DeviceFilter,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let (model_name, model_version) = match filter.model.as_deref() {
            Some(model) => match model.split_once('@') {
                Some((name, version)) => (name.to_string(), version.to_string()),
                None => (model.to_string(), String::new()),
            },
            None => (String::new(), String::new()),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DEVICE_COLUMNS} FROM devices \
             WHERE ($1 = '' OR presence = $1) \
             AND ($2 = '' OR active_model_name = $2) \
             AND ($3 = '' OR active_model_version = $3) \
             ORDER BY device_id"
        )))
        .bind(if filter.online_only { "online" } else { "" }.to_string())
        .bind(model_name)
        .bind(model_version)
        .fetch_all(self.pool())
        .await?;
        let mut devices = Vec::with_capacity(rows.len());
        for row in &rows {
            let device = device_from_row(row)?;
            if filter.selector.as_ref().is_none_or(|selector| selector.matches(&device.tags)) {
                devices.push(device);
            }
        }
        Ok(devices)
    }

    /// How many devices are online now.
    pub async fn count_online_devices(&self) -> Result<u64, StoreError> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM devices WHERE presence = 'online'")
                .fetch_one(self.pool())
                .await?;
        super::to_u64(count, "online device count")
    }
}

/// A device time in milliseconds, saturated into the column's range.
fn millis(ts_ms: u64) -> i64 {
    i64::try_from(ts_ms).unwrap_or(i64::MAX)
}
