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
//! slow database read never holds up the loop); `events` to `device_events` and the audit log
//! (`crate::store::device_events`), where rollout gates read them. A malformed topic or
//! payload is counted, logged and dropped; nothing stops the loop.
//!
//! Ingest path: the loop only routes a `stats` message, by its topic's device, into the bounded
//! queue ([`WINDOW_QUEUE`]) of one of the [`run_window_writer`]s, which takes what is queued (up
//! to [`MAX_BATCH`]), decodes it on the blocking pool (writers decode in parallel, and the loop
//! goes on reading) and stores it in one transaction ([`Ingest::ingest_batch`]).
//! When the queue is full the loop waits and the broker holds the rest. Windows of profiled
//! models are appended to the pending windows there; [`Ingest::run_folder`], started here
//! too, folds them into the aggregates in bulk.
//!
//! Delivery: every message is acknowledged (manual acks) after it was processed or dropped,
//! never before: a window after the transaction that counted it committed. Acknowledgements go
//! out in the order the messages came ([`AckOrder`]). With an external broker the session is
//! persistent under a client id that survives restarts (`super::instance`): the broker keeps
//! this instance's subscriptions and QoS 1 messages while it is down, and redelivers those it
//! sent but never saw acknowledged, so a restart or a kill loses no window; the (device, seq)
//! dedupe, in the same transaction as the merge, makes the redelivered ones count once. A
//! database failure on `hello` / `state` is logged and counted; the broker replays those
//! retained messages whenever the control resubscribes. A batch whose transaction keeps failing
//! is retried a few times and then left unacknowledged, for the broker to redeliver after the
//! next reconnect.
//!
//! Several instances (PostgreSQL, one broker) split the device topics through the shared
//! subscription. Mosquitto 2.0 hands each message to the group's members in turn, connected or
//! not: the share of an instance that is down waits in its session until it comes back under
//! its client id (so run instances under a supervisor that restarts them, on data directories
//! that persist), and its in-flight messages are not handed to another member. Its queue per
//! session is bounded by `max_queued_messages` (default 1000, beyond which Mosquitto drops
//! messages): raise it for a fleet, see `outpost broker-config mosquitto`.

use std::sync::Arc;
use std::time::Duration;

use outpost_shared::wire::{
    CONTROL_SHARE_GROUP, Channel, FromDevice, StatsWindow, Topic, control_subscriptions,
};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, watch};

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
        (device, FromDevice::Event(event)) => {
            store.record_device_event(&device, &event, delivery.received_ms).await?;
            MessageOutcome::Processed(Channel::Events)
        }
        (device, FromDevice::Fetch(request)) => MessageOutcome::Fetch(device, request),
        (_, FromDevice::Cleared(channel)) => MessageOutcome::Ignored(channel),
        (device, FromDevice::Samples(chunk)) => {
            super::samples::record_chunk(store, &device, &chunk).await?
        }
    })
}

/// MQTT options for the control's client.
pub fn mqtt_options(
    endpoint: &BrokerEndpoint,
    config: &BrokerConfig,
    session: &super::instance::MqttSession,
) -> Result<MqttOptions, ServerError> {
    let mut options =
        MqttOptions::new(session.client_id.clone(), endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(config.keep_alive);
    options.set_manual_acks(true);
    // A persistent session only under a stable name (see `super::instance`).
    options.set_clean_session(!session.persistent);
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
    AsyncClient::new(options, REQUEST_QUEUE)
}

/// Attempts at a batch of windows whose transaction failed in the database, before it is left
/// unacknowledged.
const WINDOW_STORE_ATTEMPTS: u32 = 4;

/// Decoded windows waiting for the writer. When it is full the MQTT loop waits, and the broker
/// holds the rest.
pub const WINDOW_QUEUE: usize = 4096;

/// Most windows written in one transaction.
pub const MAX_BATCH: usize = 1024;

/// Window writers on PostgreSQL, each with its own queue and transactions: while one waits for
/// the database, another works. Windows are spread over them by device. SQLite gets one.
pub const WINDOW_WRITERS: usize = 2;

/// The writer of `device`'s windows among `writers` (FNV-1a of the id).
fn device_writer(device: &str, writers: usize) -> usize {
    let hash = device.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3)
    });
    usize::try_from(hash % writers.max(1) as u64).unwrap_or(0)
}

/// Requests (acknowledgements, publishes) queued to the MQTT event loop. Larger than all the
/// messages the control holds unacknowledged (the window queue, a batch, fetch answers), so an
/// acknowledgement always fits.
const REQUEST_QUEUE: usize = 4 * WINDOW_QUEUE;

/// How long a stopping server lets the writer finish the windows it holds.
const WRITER_FINISH_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Sends the acknowledgements in the order the messages came.
    pub acks: Arc<AckOrder>,
}

impl Handlers {
    pub fn new(store: Store, ingest: Ingest, metrics: Arc<Metrics>) -> Handlers {
        Handlers {
            store,
            ingest,
            metrics,
            fetch_permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FETCHES)),
            acks: Arc::default(),
        }
    }
}

/// Runs the subscriber until `shutdown` turns true. Statistics windows go through a bounded
/// queue to [`run_window_writer`], which this task starts and, on shutdown, lets finish the
/// windows it holds (their acknowledgements still go out) before disconnecting.
pub async fn run_subscriber(
    client: AsyncClient,
    event_loop: &mut EventLoop,
    shared_subscriptions: bool,
    handlers: Handlers,
    mut shutdown: watch::Receiver<bool>,
) {
    // SQLite has one writer at a time: a second window writer would only wait for the lock.
    let writer_count = match handlers.store.backend() {
        crate::store::Backend::Sqlite => 1,
        crate::store::Backend::Postgres => WINDOW_WRITERS,
    };
    let mut windows = Vec::with_capacity(writer_count);
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..writer_count {
        let (sender, queue) = mpsc::channel(WINDOW_QUEUE / writer_count);
        windows.push(sender);
        writers.spawn(run_window_writer(client.clone(), queue, handlers.clone()));
    }
    let metrics = handlers.metrics.clone();
    let folder =
        tokio::spawn(handlers.ingest.clone().run_folder(shutdown.clone(), move |refused| {
            metrics.windows_rejected.fetch_add(refused, std::sync::atomic::Ordering::Relaxed);
        }));
    let mut failures: u32 = 0;
    loop {
        let event = tokio::select! {
            event = event_loop.poll() => event,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        handlers.acks.flush(&client);
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                tracing::info!("connected to the MQTT broker; subscribing to device topics");
                subscribe(&client, shared_subscriptions).await;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                handle_publish(&client, &handlers, &windows, publish).await;
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
    // The writer ends once the queue is empty; meanwhile the loop sends its acknowledgements.
    drop(windows);
    let finish = async {
        loop {
            tokio::select! {
                done = writers.join_next() => if done.is_none() { break },
                event = event_loop.poll() => {
                    handlers.acks.flush(&client);
                    if event.is_err() { break }
                }
            }
        }
    };
    if tokio::time::timeout(WRITER_FINISH_TIMEOUT, finish).await.is_err() {
        tracing::warn!(
            "the window writer did not finish in time; its windows stay unacknowledged \
            for the broker to redeliver"
        );
    }
    let _ = client.disconnect().await;
    drain(event_loop).await;
    // The folder stops on the same signal; readers fold whatever it leaves.
    let _ = folder.await;
}

/// Acknowledges messages in the order they were received, whatever order their processing ends
/// in (inline, in the window writer, in a fetch task): MQTT 3.1.1 asks a client to acknowledge
/// in order, and rumqttd drops a connection that does not. Each message takes a ticket when it
/// arrives; [`AckOrder::complete`] acknowledges every completed message up to the first one
/// still being processed. A message completed without a publish (its window could not be
/// stored) is skipped: it stays unacknowledged for the broker to redeliver after a reconnect.
///
/// An acknowledgement that does not fit the client's request queue (the event loop drains it
/// only between incoming messages, so a long stream of them can fill it) waits, in order, for
/// [`AckOrder::flush`], which the loop calls after every event. None is dropped.
#[derive(Debug, Default)]
pub struct AckOrder {
    state: std::sync::Mutex<AckState>,
}

#[derive(Debug, Default)]
struct AckState {
    next_ticket: u64,
    next_to_ack: u64,
    completed: std::collections::BTreeMap<u64, Option<rumqttc::Publish>>,
    /// In order, acknowledgements that did not fit the client's request queue yet.
    unsent: std::collections::VecDeque<rumqttc::Publish>,
}

impl AckState {
    /// Sends waiting acknowledgements, in order, until the request queue is full.
    fn send_unsent(&mut self, client: &AsyncClient) {
        while let Some(publish) = self.unsent.front() {
            if client.try_ack(publish).is_err() {
                break;
            }
            self.unsent.pop_front();
        }
    }
}

impl AckOrder {
    /// The ticket of the message just received.
    pub fn ticket(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        ticket
    }

    /// Marks `ticket` done (`publish` to acknowledge, or `None` to leave unacknowledged) and
    /// sends the acknowledgements that are now in order, or keeps them for
    /// [`AckOrder::flush`]. Never waits.
    pub fn complete(&self, client: &AsyncClient, ticket: u64, publish: Option<&rumqttc::Publish>) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.completed.insert(ticket, publish.cloned());
        loop {
            let next = state.next_to_ack;
            let Some(done) = state.completed.remove(&next) else { break };
            state.next_to_ack += 1;
            if let Some(publish) = done {
                state.unsent.push_back(publish);
            }
        }
        state.send_unsent(client);
    }

    /// Sends the acknowledgements that did not fit the request queue before.
    pub fn flush(&self, client: &AsyncClient) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !state.unsent.is_empty() {
            state.send_unsent(client);
        }
    }
}

/// A `stats` message waiting for its writer (still undecoded), with its acknowledgement ticket.
#[derive(Debug)]
pub struct QueuedWindow {
    pub publish: rumqttc::Publish,
    pub ticket: u64,
}

/// Writes queued windows in batches ([`Ingest::ingest_batch`], one transaction each) and
/// acknowledges each window's message only after its batch committed (or it was refused).
/// A batch the database keeps failing is left unacknowledged, for the broker to redeliver.
pub async fn run_window_writer(
    client: AsyncClient,
    mut queue: mpsc::Receiver<QueuedWindow>,
    handlers: Handlers,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write_batch(&client, &handlers, std::mem::take(&mut batch)).await;
    }
}

async fn write_batch(client: &AsyncClient, handlers: &Handlers, batch: Vec<QueuedWindow>) {
    let (ingest, metrics) = (&handlers.ingest, &handlers.metrics);
    // Decoding (JSON parse and validation) is CPU work: off the async workers, so the MQTT loop
    // keeps reading meanwhile, and several writers decode in parallel.
    let tickets: Vec<u64> = batch.iter().map(|queued| queued.ticket).collect();
    let decoded = match tokio::task::spawn_blocking(move || decode_batch(batch)).await {
        Ok(decoded) => decoded,
        Err(error) => {
            tracing::error!(%error, windows = tickets.len(), "cannot decode a batch of \
                statistics windows; left unacknowledged for the broker to redeliver after a \
                reconnect");
            for ticket in tickets {
                bump(&metrics.mqtt_store_errors);
                handlers.acks.complete(client, ticket, None);
            }
            return;
        }
    };
    let mut windows = Vec::with_capacity(decoded.len());
    let mut publishes = Vec::with_capacity(decoded.len());
    for (queued, window) in decoded {
        match window {
            Some(window) => {
                windows.push(window);
                publishes.push((queued.publish, queued.ticket));
            }
            // Refused by the fast path: the full decode names the reason.
            None => settle(client, handlers, queued.publish, queued.ticket).await,
        }
    }
    if windows.is_empty() {
        return;
    }
    let mut attempt = 0;
    let started = std::time::Instant::now();
    let outcomes = loop {
        match ingest.ingest_batch(&windows).await {
            Ok(outcomes) => {
                tracing::debug!(windows = windows.len(), elapsed = ?started.elapsed(),
                    "stored a batch of statistics windows");
                break outcomes;
            }
            Err(error) if attempt + 1 < WINDOW_STORE_ATTEMPTS => {
                tracing::warn!(%error, windows = windows.len(), attempt,
                    "cannot store a batch of statistics windows; retrying");
                // A retry pause while the database recovers, not synchronisation.
                tokio::time::sleep(Duration::from_millis(250u64 << attempt)).await;
                attempt += 1;
            }
            Err(error) => {
                for (_, ticket) in &publishes {
                    bump(&metrics.mqtt_store_errors);
                    handlers.acks.complete(client, *ticket, None);
                }
                tracing::error!(%error, windows = windows.len(), "cannot store a batch of \
                    statistics windows; left unacknowledged for the broker to redeliver after \
                    a reconnect");
                return;
            }
        }
    };
    for (outcome, (publish, ticket)) in outcomes.into_iter().zip(&publishes) {
        count_window(metrics, &publish.topic, outcome);
        handlers.acks.complete(client, *ticket, Some(publish));
    }
}

/// Decodes each queued message's window ([`decode_window`]); the payload of a decoded one is
/// released (only the packet id is needed to acknowledge it). `None`: refused, for [`settle`]
/// to name the reason.
fn decode_batch(batch: Vec<QueuedWindow>) -> Vec<(QueuedWindow, Option<StatsWindow>)> {
    batch
        .into_iter()
        .map(|mut queued| {
            let window = Topic::parse(&queued.publish.topic)
                .ok()
                .and_then(|topic| decode_window(&topic, &queued.publish.payload));
            if window.is_some() {
                queued.publish.payload.clear();
            }
            (queued, window)
        })
        .collect()
}

fn count_window(metrics: &Metrics, topic: &str, outcome: WindowOutcome) {
    count_message(metrics, Channel::Stats);
    match outcome {
        WindowOutcome::Ingested { lag_seconds } => {
            bump(&metrics.windows_ingested);
            metrics.ingest_lag_seconds.store(lag_seconds, std::sync::atomic::Ordering::Relaxed);
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

/// The statistics windows' fast path: the checks of `FromDevice::decode` with one JSON parse
/// instead of two (it reads the version on its own first, to name a wrong one precisely). A
/// window this accepts is exactly one `FromDevice::decode` accepts: a JSON object within the
/// size limit whose typed parse (which requires `v` to be this protocol's version) and
/// validation pass, of the topic's device. `None`: anything else, which the full decode then
/// refuses with its precise reason.
fn decode_window(topic: &Topic, payload: &[u8]) -> Option<StatsWindow> {
    use outpost_shared::wire::WireMessage as _;
    let first = payload.iter().find(|byte| !matches!(byte, b' ' | b'\t' | b'\n' | b'\r'));
    if payload.len() > outpost_shared::wire::MAX_JSON_PAYLOAD_BYTES || first != Some(&b'{') {
        return None;
    }
    let window: StatsWindow = serde_json::from_slice(payload).ok()?;
    window.validate().ok()?;
    (window.device == topic.device).then_some(window)
}

async fn handle_publish(
    client: &AsyncClient,
    handlers: &Handlers,
    windows: &[mpsc::Sender<QueuedWindow>],
    publish: rumqttc::Publish,
) {
    let ticket = handlers.acks.ticket();
    if let Ok(parsed) = Topic::parse(&publish.topic)
        && parsed.channel == Channel::Stats
    {
        // One writer per device: a device's windows are stored in order, and two writers never
        // lock the same device row. The writer decodes (off this loop, in parallel).
        let writer = device_writer(parsed.device.as_str(), windows.len());
        if let Err(mpsc::error::SendError(queued)) =
            windows[writer].send(QueuedWindow { publish, ticket }).await
        {
            tracing::warn!(
                topic = queued.publish.topic,
                "the window writer has stopped; \
                window left unacknowledged"
            );
            handlers.acks.complete(client, ticket, None);
        }
        return;
    }
    settle(client, handlers, publish, ticket).await;
}

/// Processes a message other than a decodable statistics window (those go through the window
/// writers), counts and logs the outcome, and acknowledges it in order.
async fn settle(client: &AsyncClient, handlers: &Handlers, publish: rumqttc::Publish, ticket: u64) {
    let metrics = &handlers.metrics;
    let topic = publish.topic.clone();
    let topic = topic.as_str();
    let delivery = Delivery { received_ms: now_ms(), retained: publish.retain };
    let outcome =
        process_message(&handlers.store, &handlers.ingest, topic, &publish.payload, delivery).await;
    match outcome {
        Ok(MessageOutcome::Fetch(device, request)) => {
            count_message(metrics, Channel::Fetch);
            // Answered and acknowledged from its own task: the loop keeps polling meanwhile.
            let client = client.clone();
            let store = handlers.store.clone();
            let permits = handlers.fetch_permits.clone();
            let acks = handlers.acks.clone();
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
                acks.complete(&client, ticket, Some(&publish));
            });
            return;
        }
        Ok(MessageOutcome::Window(outcome)) => count_window(metrics, topic, outcome),
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
    handlers.acks.complete(client, ticket, Some(&publish));
}

#[cfg(test)]
mod tests {
    use outpost_shared::stats::Moments;
    use outpost_shared::wire::{DeviceId, Digest, LatencyHistogram, ModelRef, ProtocolVersion};

    use super::*;

    /// The fast path accepts exactly the windows the full decode accepts, the same.
    #[test]
    fn the_window_fast_path_agrees_with_the_full_decode() {
        let device = DeviceId::new("berlin-1").expect("id");
        let mut latency = LatencyHistogram::default();
        latency.observe(900);
        let window = StatsWindow {
            v: ProtocolVersion,
            device: device.clone(),
            model: ModelRef { name: "m".into(), version: "1".into(), digest: Digest::of(b"m") },
            seq: 7,
            start_ms: 1_000,
            end_ms: 61_000,
            count: 1,
            errors: Default::default(),
            latency,
            inputs: vec![],
            outputs: vec![],
            classifier: None,
        };
        let json = serde_json::to_string(&window).expect("json");
        let mut wrong_count = window.clone();
        wrong_count.latency.moments = Moments::default();
        let paris = DeviceId::new("paris-1").expect("id");
        let mut other_device = window.clone();
        other_device.device = paris;
        let cases: Vec<Vec<u8>> = vec![
            json.clone().into_bytes(),
            format!("  \n{json}").into_bytes(),
            json.replacen("\"v\":1", "\"v\":2", 1).into_bytes(),
            json.replacen("\"v\":1,", "", 1).into_bytes(),
            json.replacen('}', ",\"extra\":1}", 1).into_bytes(),
            serde_json::to_vec(&wrong_count).expect("json"),
            serde_json::to_vec(&other_device).expect("json"),
            b"[1, 2]".to_vec(),
            Vec::new(),
            format!("{json}{}", " ".repeat(outpost_shared::wire::MAX_JSON_PAYLOAD_BYTES))
                .into_bytes(),
        ];
        let topic_text = "outpost/v1/berlin-1/stats";
        let topic = Topic::parse(topic_text).expect("topic");
        for (index, payload) in cases.iter().enumerate() {
            let full = match FromDevice::decode(topic_text, payload) {
                Ok((_, FromDevice::Stats(window))) => Some(window),
                _ => None,
            };
            assert_eq!(decode_window(&topic, payload), full, "case {index}");
        }
        assert_eq!(decode_window(&topic, json.as_bytes()), Some(window));
    }
}
