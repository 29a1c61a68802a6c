//! The control's MQTT client: subscribes to every device → control channel through the shared
//! subscriptions of [`control_subscriptions`] and hands each message to [`process_message`].
//!
//! With the embedded broker the subscriptions are plain (the `$share/<group>/` prefix
//! removed): there is only one control instance on an embedded broker, and rumqttd 0.20 loses
//! messages on shared subscriptions (seen in `control/tests/it/inventory.rs`: of several
//! messages queued on one shared filter, only some were forwarded).
//!
//! `hello` and `state` go to the fleet inventory, `stats` to ingest ([`super::ingest`]),
//! `fetch` to artifact serving ([`super::artifacts`], answered from a task of its own so a
//! slow database read never holds up the loop); `events` are counted and ignored until the
//! audit trail lands. A malformed topic or payload is counted, logged and dropped; nothing
//! stops the loop.
//!
//! Delivery: messages are acknowledged (manual acks) after they were processed or dropped,
//! never before. When `broker.client_id` is configured the session is persistent
//! (`clean_session = false`): the broker keeps this instance's subscriptions and queues QoS 1
//! messages while it is down, and redelivers those it sent but never saw acknowledged, so a
//! restart loses no window; the (device, seq) dedupe makes the redelivered ones count once.
//! With the default random client id the session is clean (a persistent session under a
//! random name would only pile up in the broker). A database failure on `hello` / `state` is
//! logged and counted; the broker replays those retained messages whenever the control
//! resubscribes. A window whose transaction fails is retried a few times and then left
//! unacknowledged, for the broker to redeliver after the next reconnect.

use std::sync::Arc;
use std::time::Duration;

use outpost_shared::wire::{
    CONTROL_SHARE_GROUP, Channel, FromDevice, Topic, control_subscriptions,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tokio::sync::watch;

use super::ServerError;
use super::ingest::{Ingest, WindowOutcome};
use super::metrics::{Metrics, bump, channel_index};
use crate::config::{BrokerConfig, BrokerTarget, ExternalBroker};
use crate::store::inventory::Delivery;
use crate::store::{Store, now_ms};

/// Where the control's client connects, resolved (the embedded broker's real port known).
#[derive(Debug, Clone)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub external: Option<ExternalBroker>,
}

impl BrokerEndpoint {
    pub fn embedded(address: std::net::SocketAddr) -> Self {
        BrokerEndpoint { host: address.ip().to_string(), port: address.port(), external: None }
    }
}

/// What happened to one message; the loop counts and logs it.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageOutcome {
    Processed(Channel),
    /// A statistics window went through ingest.
    Window(WindowOutcome),
    /// A fetch request, to be answered ([`super::artifacts`]).
    Fetch(outpost_shared::wire::DeviceId, outpost_shared::wire::FetchRequest),
    /// Received on a channel this version does not process yet.
    Ignored(Channel),
    /// Dropped: malformed topic or payload.
    Rejected {
        channel: Option<Channel>,
        code: &'static str,
        reason: String,
    },
}

/// Decodes one message and applies it to the store.
pub async fn process_message(
    store: &Store,
    ingest: &Ingest,
    topic: &str,
    payload: &[u8],
    delivery: Delivery,
) -> Result<MessageOutcome, crate::store::StoreError> {
    let decoded = match FromDevice::decode(topic, payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            let channel = Topic::parse(topic).ok().map(|topic| topic.channel);
            return Ok(MessageOutcome::Rejected {
                channel,
                code: error.code(),
                reason: error.to_string(),
            });
        }
    };
    Ok(match decoded {
        (device, FromDevice::Hello(hello)) => {
            store.record_hello(&device, &hello, delivery).await?;
            MessageOutcome::Processed(Channel::Hello)
        }
        (device, FromDevice::State(state)) => {
            store.record_state(&device, &state, delivery).await?;
            MessageOutcome::Processed(Channel::State)
        }
        (device, FromDevice::Stats(window)) => {
            MessageOutcome::Window(ingest.ingest(&device, window).await?)
        }
        (_, FromDevice::Event(_)) => MessageOutcome::Ignored(Channel::Events),
        (device, FromDevice::Fetch(request)) => MessageOutcome::Fetch(device, request),
        (_, FromDevice::Cleared(channel)) => MessageOutcome::Ignored(channel),
    })
}

/// MQTT options for the control's client.
pub fn mqtt_options(
    endpoint: &BrokerEndpoint,
    config: &BrokerConfig,
    client_id: &str,
) -> Result<MqttOptions, ServerError> {
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(config.keep_alive);
    options.set_manual_acks(true);
    // A persistent session only under a stable, configured name (see the module docs).
    options.set_clean_session(config.client_id.is_none());
    let max_packet = outpost_shared::wire::MAX_JSON_PAYLOAD_BYTES + 64 * 1024;
    options.set_max_packet_size(max_packet, max_packet);
    if let Some(external) = &endpoint.external {
        if let Some((user, password)) = &external.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(tls) = &external.tls {
            let client_config = super::tls::mqtt_client_config(tls)?;
            options.set_transport(Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                Arc::new(client_config),
            )));
        }
    }
    Ok(options)
}

/// The endpoint of `config`'s broker when it is external.
pub fn external_endpoint(config: &BrokerConfig) -> Option<BrokerEndpoint> {
    match &config.target {
        BrokerTarget::External(external) => Some(BrokerEndpoint {
            host: external.host.clone(),
            port: external.port,
            external: Some(external.clone()),
        }),
        BrokerTarget::Embedded { .. } => None,
    }
}

/// The control's MQTT client and its event loop (run by [`run_subscriber`]).
pub fn client(options: MqttOptions) -> (AsyncClient, EventLoop) {
    AsyncClient::new(options, 256)
}

/// Retries of a window whose transaction failed in the database, before it is left
/// unacknowledged.
const WINDOW_STORE_ATTEMPTS: u32 = 4;

/// Fetch requests answered at the same time; more wait for a permit in their own task.
const CONCURRENT_FETCHES: usize = 16;

/// What the subscriber hands each message to.
#[derive(Debug, Clone)]
pub struct Handlers {
    pub store: Store,
    pub ingest: Ingest,
    pub metrics: Arc<Metrics>,
    /// Bounds the database reads of concurrent fetch answers.
    pub fetch_permits: Arc<tokio::sync::Semaphore>,
}

impl Handlers {
    pub fn new(store: Store, ingest: Ingest, metrics: Arc<Metrics>) -> Handlers {
        Handlers {
            store,
            ingest,
            metrics,
            fetch_permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FETCHES)),
        }
    }
}

/// Runs the subscriber until `shutdown` turns true.
pub async fn run_subscriber(
    client: AsyncClient,
    mut event_loop: EventLoop,
    shared_subscriptions: bool,
    handlers: Handlers,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let event = tokio::select! {
            event = event_loop.poll() => event,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the MQTT broker; subscribing to device topics");
                subscribe(&client, shared_subscriptions).await;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                handle_publish(&client, &handlers, publish).await;
            }
            Ok(_) => {}
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, "MQTT connection lost; reconnecting");
                // Back off so a broker that is down is not hammered; this is a retry pause, not
                // synchronisation.
                let pause =
                    Duration::from_millis(200u64.saturating_mul(u64::from(failures.min(25))));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait_for(|stop| *stop) => break,
                }
            }
        }
    }
    let _ = client.disconnect().await;
    drain(&mut event_loop).await;
}

/// Lets the event loop send the DISCONNECT, briefly.
async fn drain(event_loop: &mut EventLoop) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while event_loop.poll().await.is_ok() {}
    })
    .await;
}

/// The filters to subscribe to: shared, or plain for the embedded broker.
pub fn subscription_filters(shared_subscriptions: bool) -> Vec<String> {
    let shared_prefix = format!("$share/{CONTROL_SHARE_GROUP}/");
    control_subscriptions()
        .into_iter()
        .map(|filter| match filter.strip_prefix(&shared_prefix) {
            Some(plain) if !shared_subscriptions => plain.to_string(),
            _ => filter,
        })
        .collect()
}

fn count_message(metrics: &Metrics, channel: Channel) {
    if let Some(index) = channel_index(channel) {
        bump(&metrics.mqtt_messages[index]);
    }
}

async fn subscribe(client: &AsyncClient, shared_subscriptions: bool) {
    for filter in subscription_filters(shared_subscriptions) {
        if let Err(error) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
            tracing::error!(%error, %filter, "cannot queue a subscription");
        }
    }
}

async fn handle_publish(client: &AsyncClient, handlers: &Handlers, publish: rumqttc::Publish) {
    let metrics = &handlers.metrics;
    let delivery = Delivery { received_ms: now_ms(), retained: publish.retain };
    let topic = publish.topic.as_str();
    let mut outcome =
        process_message(&handlers.store, &handlers.ingest, topic, &publish.payload, delivery).await;
    let is_window = Topic::parse(topic).is_ok_and(|topic| topic.channel == Channel::Stats);
    // A window the database could not take is retried a few times, then left unacknowledged:
    // acknowledging it would lose it, while the broker redelivers an unacknowledged message of
    // a persistent session after the next reconnect (and the dedupe makes that harmless).
    for attempt in 0..WINDOW_STORE_ATTEMPTS {
        if !(is_window && outcome.is_err()) {
            break;
        }
        // A retry pause while the database recovers, not synchronisation.
        tokio::time::sleep(Duration::from_millis(250u64 << attempt)).await;
        outcome =
            process_message(&handlers.store, &handlers.ingest, topic, &publish.payload, delivery)
                .await;
    }
    if is_window && let Err(error) = &outcome {
        bump(&metrics.mqtt_store_errors);
        tracing::error!(%error, topic, "cannot store a statistics window; left unacknowledged \
            for the broker to redeliver after a reconnect");
        return;
    }
    match outcome {
        Ok(MessageOutcome::Fetch(device, request)) => {
            count_message(metrics, Channel::Fetch);
            // Answered and acknowledged from its own task: the loop keeps polling meanwhile.
            let client = client.clone();
            let store = handlers.store.clone();
            let permits = handlers.fetch_permits.clone();
            tokio::spawn(async move {
                // The semaphore is never closed; without a permit the answer simply goes ahead.
                let _permit = permits.acquire_owned().await.ok();
                match super::artifacts::answer(&store, &device, &request).await {
                    Ok(answer) => {
                        if let Err(error) = client
                            .publish(answer.topic, QoS::AtLeastOnce, answer.retain, answer.payload)
                            .await
                        {
                            tracing::warn!(%error, %device, "cannot queue a chunk reply");
                        }
                    }
                    Err(error) => tracing::error!(%error, %device, "cannot encode a chunk reply"),
                }
                if let Err(error) = client.ack(&publish).await {
                    tracing::warn!(%error, "cannot acknowledge a fetch request");
                }
            });
            return;
        }
        Ok(MessageOutcome::Window(outcome)) => {
            count_message(metrics, Channel::Stats);
            match outcome {
                WindowOutcome::Ingested { lag_seconds } => {
                    bump(&metrics.windows_ingested);
                    metrics
                        .ingest_lag_seconds
                        .store(lag_seconds, std::sync::atomic::Ordering::Relaxed);
                }
                WindowOutcome::Duplicate => {
                    bump(&metrics.windows_duplicate);
                    tracing::debug!(topic, "duplicate window counted once");
                }
                WindowOutcome::Rejected { code, reason } => {
                    bump(&metrics.windows_rejected);
                    tracing::warn!(topic, code, reason, "dropped a statistics window");
                }
            }
        }
        Ok(outcome) => match &outcome {
            MessageOutcome::Processed(channel) => {
                if let Some(index) = channel_index(*channel) {
                    bump(&metrics.mqtt_messages[index]);
                }
                tracing::debug!(topic, "processed");
            }
            MessageOutcome::Ignored(channel) => {
                if let Some(index) = channel_index(*channel) {
                    bump(&metrics.mqtt_messages[index]);
                    bump(&metrics.mqtt_ignored[index]);
                }
                tracing::debug!(topic, "not processed by this server version; ignored");
            }
            MessageOutcome::Window(_) | MessageOutcome::Fetch(..) => {}
            MessageOutcome::Rejected { channel, code, reason } => {
                let index = channel.and_then(channel_index).unwrap_or(5);
                bump(&metrics.mqtt_rejected[index]);
                if let Some(index) = channel.and_then(channel_index) {
                    bump(&metrics.mqtt_messages[index]);
                }
                if *channel == Some(Channel::Stats) {
                    bump(&metrics.windows_rejected);
                }
                tracing::warn!(topic, code, reason, "dropped a malformed MQTT message");
            }
        },
        Err(error) => {
            bump(&metrics.mqtt_store_errors);
            tracing::error!(%error, topic, "cannot store a device message");
        }
    }
    if let Err(error) = client.ack(&publish).await {
        tracing::warn!(%error, topic, "cannot acknowledge a message");
    }
}
