//! The sans-IO core of the agent's MQTT reporting: what to publish, when, and what an
//! acknowledgement or an incoming message means. No sockets, no clock, no files.
//!
//! Design: the shell ([`super`]) feeds in what happened (connected, a packet id was assigned to
//! a publication, a PUBACK arrived, a message came in, a window was queued, the agent wants to
//! report an event, shut down) and drains [`Action`]s (publish this, read window `seq` from the
//! disk queue and publish it, delete window `seq`, persist the event counter, forward a message
//! to the updater, disconnect). Every decision lives here and is unit tested below; the shell
//! only carries actions out.
//!
//! Matching acknowledgements: rumqttc reports `Outgoing::Publish(pkid)` for each publication in
//! the order it was handed over, so the session keeps the publications it requested in a FIFO
//! and pairs each packet id with the front. The shell makes sure no request from a previous
//! connection can reach a new one (see `super::poller`), which keeps the FIFO exact.
//!
//! Bounds: at most `max_windows_in_flight` windows and `max_events_in_flight` events are
//! unacknowledged at a time, one `hello` and one `state`. Events wait in an in-memory buffer of
//! `event_buffer` entries while offline; when it is full the oldest are dropped and counted, and
//! the count is reported as an `error` event (`events_dropped`) after the next connect. Events do
//! not survive a restart; windows do (they live in the disk queue).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use outpost_shared::wire::{
    self, DeviceId, Event, EventKind, Hello, MAX_MESSAGE_BYTES, Outcome, Presence, ProtocolVersion,
    Publish, State, ToDevice, WireError, device_subscriptions,
};
use serde_json::{Map, Value, json};

use crate::queue::Dropped;

/// Event code of the report that the window queue dropped windows.
pub const QUEUE_DROPPED_CODE: &str = "queue_dropped";
/// Event code of the report that the in-memory event buffer dropped events.
pub const EVENTS_DROPPED_CODE: &str = "events_dropped";
/// At most this many `message_rejected` events per [`REJECTION_PERIOD_MS`]; the rest are
/// counted and the count rides on the next one, so a flood of bad messages cannot flood the
/// control with events.
pub const MAX_REJECTION_EVENTS_PER_PERIOD: u32 = 20;
pub const REJECTION_PERIOD_MS: u64 = 60_000;
/// Longest `message` this core writes into an event, in bytes.
const MAX_EVENT_TEXT_BYTES: usize = 1024;

/// Bounds of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_windows_in_flight: usize,
    pub max_events_in_flight: usize,
    pub event_buffer: usize,
}

/// What a publication was, so its acknowledgement can be acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outbound {
    State(Presence),
    Hello,
    Window(u64),
    Event(u64),
    /// A fetch request of the updater: not retried here (the updater asks again on timeout).
    Fetch,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Hand `publish` to the MQTT client.
    Publish { what: Outbound, publish: Publish },
    /// Read window `seq` from the disk queue and publish it on the device's `stats` topic;
    /// call [`Session::window_unavailable`] if it cannot be read.
    PublishWindow(u64),
    /// Subscribe to these topics (QoS 1).
    Subscribe(Vec<String>),
    /// The broker acknowledged window `seq`: delete it from the disk queue.
    RemoveWindow(u64),
    /// Persist the next event sequence number before anything with the current one goes out.
    SaveEventSeq(u64),
    /// Deliver a valid message to the updater.
    Forward(ToDevice),
    /// Send MQTT DISCONNECT: the offline state is acknowledged.
    Disconnect,
    /// Stop: shutdown is complete (or there is no connection to close).
    Finish,
}

/// Counts rejections per fixed period.
#[derive(Debug, Clone, Default)]
struct RejectionLimiter {
    period_start_ms: u64,
    emitted: u32,
    suppressed: u64,
}

impl RejectionLimiter {
    /// Whether to emit an event now; if so, how many were suppressed before it.
    fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if now_ms.saturating_sub(self.period_start_ms) >= REJECTION_PERIOD_MS
            || now_ms < self.period_start_ms
        {
            self.period_start_ms = now_ms;
            self.emitted = 0;
        }
        if self.emitted >= MAX_REJECTION_EVENTS_PER_PERIOD {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.emitted += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The session state. See the module docs.
#[derive(Debug)]
pub struct Session {
    device: DeviceId,
    limits: SessionLimits,
    hello: Hello,
    hello_in_flight: bool,
    hello_outdated: bool,
    connected: bool,
    shutting_down: bool,
    /// Mirror of the disk queue's sequence numbers.
    queued: BTreeSet<u64>,
    windows_in_flight: BTreeSet<u64>,
    events: VecDeque<Event>,
    events_in_flight: BTreeMap<u64, Event>,
    next_event_seq: u64,
    events_dropped_total: u64,
    events_dropped_unreported: u64,
    /// Publications handed to the client that have no packet id yet, oldest first.
    requested: VecDeque<Outbound>,
    awaiting_ack: HashMap<u16, Outbound>,
    rejections: RejectionLimiter,
    actions: VecDeque<Action>,
}

impl Session {
    /// A session for `device` with the windows already queued on disk; `next_event_seq` is the
    /// persisted event counter (at least 1).
    pub fn new(
        device: DeviceId,
        hello: Hello,
        limits: SessionLimits,
        queued: impl IntoIterator<Item = u64>,
        next_event_seq: u64,
    ) -> Session {
        let limits = SessionLimits {
            max_windows_in_flight: limits.max_windows_in_flight.max(1),
            max_events_in_flight: limits.max_events_in_flight.max(1),
            event_buffer: limits.event_buffer.max(1),
        };
        Session {
            device,
            limits,
            hello,
            hello_in_flight: false,
            hello_outdated: false,
            connected: false,
            shutting_down: false,
            queued: queued.into_iter().collect(),
            windows_in_flight: BTreeSet::new(),
            events: VecDeque::new(),
            events_in_flight: BTreeMap::new(),
            next_event_seq: next_event_seq.max(1),
            events_dropped_total: 0,
            events_dropped_unreported: 0,
            requested: VecDeque::new(),
            awaiting_ack: HashMap::new(),
            rejections: RejectionLimiter::default(),
            actions: VecDeque::new(),
        }
    }

    /// The next thing to do, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn connected(&self) -> bool {
        self.connected
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    #[cfg(test)]
    pub fn queued_windows(&self) -> usize {
        self.queued.len()
    }

    /// Events not yet acknowledged: buffered and in flight.
    pub fn pending_events(&self) -> usize {
        self.events.len() + self.events_in_flight.len()
    }

    pub fn events_dropped_total(&self) -> u64 {
        self.events_dropped_total
    }

    #[cfg(test)]
    pub fn next_event_seq(&self) -> u64 {
        self.next_event_seq
    }

    /// The broker accepted the connection: announce presence and self, subscribe, send.
    pub fn on_connected(&mut self, now_ms: u64) {
        self.reset_connection();
        self.connected = true;
        if self.shutting_down {
            self.publish_state(Presence::Offline, now_ms);
            return;
        }
        self.publish_state(Presence::Online, now_ms);
        self.publish_hello();
        let topics = device_subscriptions(&self.device).iter().map(ToString::to_string).collect();
        self.actions.push_back(Action::Subscribe(topics));
        // Send first, so the report below finds room in the buffer.
        self.fill();
        if self.events_dropped_unreported > 0 {
            let count = std::mem::take(&mut self.events_dropped_unreported);
            let mut details = Map::new();
            details.insert("count".into(), json!(count));
            details.insert("dropped_total".into(), json!(self.events_dropped_total));
            self.emit(
                EventKind::Error,
                Outcome::Failed,
                EVENTS_DROPPED_CODE,
                format!(
                    "the event buffer was full while offline: {count} events were dropped \
                     ({} in total since start)",
                    self.events_dropped_total
                ),
                details,
                now_ms,
            );
        }
    }

    /// The connection is gone: nothing in flight will be acknowledged any more. Windows stay
    /// queued; events in flight go back to the front of the buffer.
    pub fn on_disconnected(&mut self) {
        let was_connected = self.connected;
        self.connected = false;
        self.reset_connection();
        if self.shutting_down && was_connected {
            self.actions.push_back(Action::Finish);
        }
    }

    /// The client assigned packet id `pkid` to the oldest requested publication.
    pub fn on_publish_sent(&mut self, pkid: u16) {
        match self.requested.pop_front() {
            Some(what) => {
                if let Some(replaced) = self.awaiting_ack.insert(pkid, what) {
                    tracing::warn!(pkid, ?replaced, "packet id reused before its acknowledgement");
                }
            }
            None => {
                tracing::warn!(pkid, "a publication went out that this session did not request")
            }
        }
    }

    /// The broker acknowledged packet `pkid`.
    pub fn on_puback(&mut self, pkid: u16) {
        let Some(what) = self.awaiting_ack.remove(&pkid) else {
            tracing::debug!(pkid, "acknowledgement for an unknown packet id");
            return;
        };
        match what {
            Outbound::Window(seq) => {
                self.windows_in_flight.remove(&seq);
                if self.queued.remove(&seq) {
                    self.actions.push_back(Action::RemoveWindow(seq));
                }
            }
            Outbound::Event(seq) => {
                self.events_in_flight.remove(&seq);
            }
            Outbound::Hello => {
                self.hello_in_flight = false;
                if self.hello_outdated && !self.shutting_down {
                    self.publish_hello();
                }
            }
            Outbound::State(Presence::Offline) if self.shutting_down => {
                self.actions.push_back(Action::Disconnect);
            }
            Outbound::State(_) | Outbound::Fetch => {}
        }
        self.fill();
    }

    /// A message arrived on one of the device's subscriptions.
    pub fn on_message(&mut self, topic: &str, payload: &[u8], now_ms: u64) {
        match ToDevice::decode(&self.device, topic, payload) {
            Ok(message) => self.actions.push_back(Action::Forward(message)),
            Err(error) => self.reject(topic, payload.len(), &error, now_ms),
        }
    }

    /// A window was durably queued on disk.
    pub fn window_queued(&mut self, seq: u64) {
        self.queued.insert(seq);
        self.fill();
    }

    /// The disk queue dropped windows to stay within its bounds.
    pub fn windows_dropped(&mut self, dropped: &Dropped, now_ms: u64) {
        if dropped.is_empty() {
            return;
        }
        for seq in &dropped.seqs {
            self.queued.remove(seq);
        }
        let count = dropped.seqs.len();
        let first = dropped.seqs.iter().min().copied().unwrap_or_default();
        let last = dropped.seqs.iter().max().copied().unwrap_or_default();
        let mut details = Map::new();
        details.insert("count".into(), json!(count));
        details.insert("first_seq".into(), json!(first));
        details.insert("last_seq".into(), json!(last));
        details.insert("dropped_total".into(), json!(dropped.total));
        self.emit(
            EventKind::Error,
            Outcome::Failed,
            QUEUE_DROPPED_CODE,
            format!(
                "the queue of unsent statistics windows was full: dropped {count} of the oldest \
                 (seq {first} to {last}); {} dropped in total",
                dropped.total
            ),
            details,
            now_ms,
        );
    }

    /// Window `seq` could not be read from the disk queue: forget it.
    pub fn window_unavailable(&mut self, seq: u64) {
        self.queued.remove(&seq);
        self.windows_in_flight.remove(&seq);
        self.forget_request(Outbound::Window(seq));
    }

    /// The client refused a publication it was handed (its request channel is full or closed).
    /// The window stays queued and the event buffered; both go out with a later fill.
    pub fn publish_rejected(&mut self, what: Outbound) {
        self.forget_request(what);
        match what {
            Outbound::Window(seq) => {
                self.windows_in_flight.remove(&seq);
            }
            Outbound::Event(seq) => {
                if let Some(event) = self.events_in_flight.remove(&seq) {
                    self.events.push_front(event);
                }
            }
            Outbound::Hello => {
                self.hello_in_flight = false;
                self.hello_outdated = true;
            }
            Outbound::State(Presence::Offline) if self.shutting_down => {
                self.actions.push_back(Action::Finish);
            }
            Outbound::State(_) | Outbound::Fetch => {}
        }
    }

    /// Publishes an updater's fetch request now if connected; returns whether it went out.
    /// A request made offline is not kept: the updater asks again after its timeout, from
    /// whatever it has on disk by then.
    pub fn send_fetch(&mut self, publish: Publish) -> bool {
        if !self.connected || self.shutting_down {
            return false;
        }
        self.request(Outbound::Fetch, publish);
        true
    }

    /// Reports `event`, assigning its `seq` and `device`.
    pub fn send_event(&mut self, mut event: Event) {
        event.device = self.device.clone();
        self.push_event(event);
    }

    /// The device's description changed: publish it now or after the one in flight.
    pub fn update_hello(&mut self, hello: Hello) {
        self.hello = hello;
        self.hello_outdated = true;
        if self.connected && !self.hello_in_flight && !self.shutting_down {
            self.publish_hello();
        }
    }

    /// Publish `offline`, then disconnect once it is acknowledged; finish at once if offline.
    pub fn shutdown(&mut self, now_ms: u64) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        if self.connected {
            self.publish_state(Presence::Offline, now_ms);
        } else {
            self.actions.push_back(Action::Finish);
        }
    }

    fn reset_connection(&mut self) {
        self.requested.clear();
        self.awaiting_ack.clear();
        self.windows_in_flight.clear();
        self.hello_in_flight = false;
        let in_flight = std::mem::take(&mut self.events_in_flight);
        for (_, event) in in_flight.into_iter().rev() {
            self.events.push_front(event);
        }
        self.trim_events();
    }

    fn publish_state(&mut self, presence: Presence, now_ms: u64) {
        let state = match presence {
            Presence::Online => State::online(now_ms),
            Presence::Offline => State::offline(now_ms),
        };
        match Publish::message(&self.device, &state) {
            Ok(publish) => self.request(Outbound::State(presence), publish),
            Err(error) => tracing::error!(%error, "cannot encode the state message"),
        }
    }

    fn publish_hello(&mut self) {
        match Publish::message(&self.device, &self.hello) {
            Ok(publish) => {
                self.hello_in_flight = true;
                self.hello_outdated = false;
                self.request(Outbound::Hello, publish);
            }
            Err(error) => tracing::error!(%error, "cannot encode the hello message; not sent"),
        }
    }

    fn request(&mut self, what: Outbound, publish: Publish) {
        self.requested.push_back(what);
        self.actions.push_back(Action::Publish { what, publish });
    }

    fn forget_request(&mut self, what: Outbound) {
        if let Some(position) = self.requested.iter().rposition(|w| *w == what) {
            self.requested.remove(position);
        }
    }

    /// Hands out queued windows (oldest first) and buffered events up to the in-flight bounds.
    fn fill(&mut self) {
        if !self.connected || self.shutting_down {
            return;
        }
        while self.windows_in_flight.len() < self.limits.max_windows_in_flight {
            let next =
                self.queued.iter().find(|seq| !self.windows_in_flight.contains(seq)).copied();
            let Some(seq) = next else { break };
            self.windows_in_flight.insert(seq);
            self.requested.push_back(Outbound::Window(seq));
            self.actions.push_back(Action::PublishWindow(seq));
        }
        while self.events_in_flight.len() < self.limits.max_events_in_flight {
            let Some(event) = self.events.pop_front() else { break };
            match Publish::message(&self.device, &event) {
                Ok(publish) => {
                    let seq = event.seq;
                    self.events_in_flight.insert(seq, event);
                    self.request(Outbound::Event(seq), publish);
                }
                Err(error) => {
                    tracing::error!(seq = event.seq, %error, "dropping an event that cannot be encoded");
                }
            }
        }
    }

    fn push_event(&mut self, mut event: Event) {
        event.seq = self.next_event_seq;
        self.next_event_seq = self.next_event_seq.saturating_add(1);
        self.actions.push_back(Action::SaveEventSeq(self.next_event_seq));
        self.events.push_back(event);
        self.trim_events();
        self.fill();
    }

    fn trim_events(&mut self) {
        while self.events.len() > self.limits.event_buffer {
            if let Some(dropped) = self.events.pop_front() {
                tracing::warn!(seq = dropped.seq, kind = %dropped.kind, "event buffer full: dropped the oldest event");
                self.events_dropped_total = self.events_dropped_total.saturating_add(1);
                self.events_dropped_unreported = self.events_dropped_unreported.saturating_add(1);
            }
        }
    }

    fn emit(
        &mut self,
        kind: EventKind,
        outcome: Outcome,
        code: &str,
        message: String,
        details: Map<String, Value>,
        now_ms: u64,
    ) {
        let event = Event {
            v: ProtocolVersion,
            device: self.device.clone(),
            seq: 0,
            ts_ms: now_ms,
            kind,
            outcome,
            rollout_id: None,
            plan_seq: None,
            bundle_digest: None,
            code: Some(code.to_string()),
            message: printable(&message, MAX_EVENT_TEXT_BYTES.min(MAX_MESSAGE_BYTES)),
            details: Some(details),
        };
        self.push_event(event);
    }

    fn reject(&mut self, topic: &str, payload_bytes: usize, error: &WireError, now_ms: u64) {
        let topic = printable(topic, 256);
        tracing::warn!(%topic, code = error.code(), %error, "refused an MQTT message");
        let Some(suppressed) = self.rejections.admit(now_ms) else {
            return;
        };
        let mut details = Map::new();
        details.insert("topic".into(), json!(topic));
        details.insert("payload_bytes".into(), json!(payload_bytes));
        if suppressed > 0 {
            details.insert("suppressed".into(), json!(suppressed));
        }
        self.emit(
            EventKind::MessageRejected,
            Outcome::Refused,
            error.code(),
            format!("refused a message on `{topic}`: {error}"),
            details,
            now_ms,
        );
    }
}

/// `text` without control characters (other than newline and tab), cut to `max` bytes on a
/// character boundary: peer-controlled text made fit for an event.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let c = if c.is_control() && !matches!(c, '\n' | '\t') { '\u{fffd}' } else { c };
        if out.len() + c.len_utf8() > max.saturating_sub(3) {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// The `stats` publication of an already encoded window.
pub fn window_publish(device: &DeviceId, payload: Vec<u8>) -> Publish {
    let topic = wire::Topic::new(device.clone(), wire::Channel::Stats);
    Publish {
        topic: topic.to_string(),
        payload,
        qos: wire::Channel::Stats.qos(),
        retain: wire::Channel::Stats.retained(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outpost_shared::dsse::Envelope;
    use outpost_shared::wire::{
        Admission, AdmissionAction, Assign, Channel, LAST_WILL_PAYLOAD, Slots, Topic,
    };

    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn device() -> DeviceId {
        DeviceId::new("dev-1").expect("valid id")
    }

    fn hello(version: &str) -> Hello {
        Hello {
            v: ProtocolVersion,
            device: device(),
            agent_version: version.into(),
            arch: "x86_64".into(),
            tags: BTreeMap::new(),
            active_model: None,
            previous_model: None,
            slots: Slots { active: None, a: None, b: None },
            capabilities: Vec::new(),
            trust_root_version: 1,
            last_plan_seq: None,
            ts_ms: NOW,
        }
    }

    fn event(message: &str) -> Event {
        Event {
            v: ProtocolVersion,
            device: device(),
            seq: 0,
            ts_ms: NOW,
            kind: EventKind::Staged,
            outcome: Outcome::Ok,
            rollout_id: None,
            plan_seq: None,
            bundle_digest: None,
            code: None,
            message: message.into(),
            details: None,
        }
    }

    fn limits(windows: usize, events: usize, buffer: usize) -> SessionLimits {
        SessionLimits {
            max_windows_in_flight: windows,
            max_events_in_flight: events,
            event_buffer: buffer,
        }
    }

    fn session(queued: &[u64]) -> Session {
        Session::new(device(), hello("1"), limits(2, 2, 4), queued.iter().copied(), 1)
    }

    fn drain(session: &mut Session) -> Vec<Action> {
        std::iter::from_fn(|| session.next_action()).collect()
    }

    /// Actions as short strings: `pub state online`, `window 3`, `sub …`, `rm 3`, `seq 2`,
    /// `fwd assign`, `disconnect`, `finish`.
    fn brief(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|action| match action {
                Action::Publish { what, publish } => match what {
                    Outbound::State(_) => {
                        let state: State = wire::decode(&publish.payload).expect("state");
                        assert!(publish.retain);
                        format!("pub state {:?}", state.state).to_lowercase()
                    }
                    Outbound::Hello => {
                        let hello: Hello = wire::decode(&publish.payload).expect("hello");
                        assert!(publish.retain);
                        format!("pub hello {}", hello.agent_version)
                    }
                    Outbound::Event(seq) => {
                        let event: Event = wire::decode(&publish.payload).expect("event");
                        assert_eq!(event.seq, *seq);
                        assert!(!publish.retain);
                        format!("pub event {seq} {}", event.code.unwrap_or(event.kind.to_string()))
                    }
                    Outbound::Window(seq) => format!("pub window {seq}?"),
                    Outbound::Fetch => format!("pub fetch {}", publish.topic),
                },
                Action::PublishWindow(seq) => format!("window {seq}"),
                Action::Subscribe(topics) => format!("sub {}", topics.join(" ")),
                Action::RemoveWindow(seq) => format!("rm {seq}"),
                Action::SaveEventSeq(seq) => format!("seq {seq}"),
                Action::Forward(ToDevice::Assign(_)) => "fwd assign".into(),
                Action::Forward(ToDevice::AssignCleared) => "fwd assign cleared".into(),
                Action::Forward(ToDevice::Chunk(_)) => "fwd chunk".into(),
                Action::Forward(ToDevice::Sampling(_)) => "fwd sampling".into(),
                Action::Disconnect => "disconnect".into(),
                Action::Finish => "finish".into(),
            })
            .collect()
    }

    fn check(session: &mut Session, expected: &[&str]) {
        assert_eq!(brief(&drain(session)), expected);
    }

    /// Plays the client: assigns packet ids 1, 2, … to everything requested so far, in order.
    fn send_all(session: &mut Session, next_pkid: &mut u16, count: usize) -> Vec<u16> {
        (0..count)
            .map(|_| {
                let pkid = *next_pkid;
                *next_pkid += 1;
                session.on_publish_sent(pkid);
                pkid
            })
            .collect()
    }

    #[test]
    fn connect_announces_presence_then_hello_then_subscribes_then_sends_oldest_windows() {
        let mut s = session(&[7, 5, 6]);
        s.on_connected(NOW);
        check(
            &mut s,
            &[
                "pub state online",
                "pub hello 1",
                "sub outpost/v1/dev-1/assign outpost/v1/dev-1/chunk outpost/v1/dev-1/sampling",
                "window 5",
                "window 6",
            ],
        );
        assert!(s.connected());
    }

    #[test]
    fn windows_leave_the_queue_only_when_acknowledged_and_go_out_in_order() {
        let mut s = session(&[1, 2, 3]);
        s.on_connected(NOW);
        drain(&mut s);
        let mut pkid = 1;
        // state, hello, window 1, window 2
        let ids = send_all(&mut s, &mut pkid, 4);
        s.on_puback(ids[2]);
        check(&mut s, &["rm 1", "window 3"]);
        s.window_queued(4);
        check(&mut s, &[]); // two in flight already
        s.on_publish_sent(pkid); // window 3
        s.on_puback(ids[3]);
        check(&mut s, &["rm 2", "window 4"]);
        s.on_puback(ids[0]);
        s.on_puback(ids[1]);
        check(&mut s, &[]);
        assert_eq!(s.queued_windows(), 2);
    }

    #[test]
    fn a_disconnect_keeps_unacknowledged_windows_and_resends_them_in_order() {
        let mut s = session(&[1, 2, 3]);
        s.on_connected(NOW);
        drain(&mut s);
        let mut pkid = 1;
        let ids = send_all(&mut s, &mut pkid, 4);
        s.on_puback(ids[2]); // window 1
        check(&mut s, &["rm 1", "window 3"]);
        s.on_disconnected();
        // Offline: new windows accumulate, nothing is sent, late acks mean nothing.
        s.window_queued(4);
        s.window_queued(5);
        s.on_puback(ids[3]);
        check(&mut s, &[]);
        assert_eq!(s.queued_windows(), 4);
        s.on_connected(NOW + 1);
        check(
            &mut s,
            &[
                "pub state online",
                "pub hello 1",
                "sub outpost/v1/dev-1/assign outpost/v1/dev-1/chunk outpost/v1/dev-1/sampling",
                "window 2",
                "window 3",
            ],
        );
    }

    #[test]
    fn events_get_sequence_numbers_persisted_before_sending_and_survive_a_disconnect() {
        let mut s = Session::new(device(), hello("1"), limits(1, 1, 10), [], 41);
        s.send_event(event("a"));
        s.send_event(event("b"));
        check(&mut s, &["seq 42", "seq 43"]);
        assert_eq!(s.pending_events(), 2);
        s.on_connected(NOW);
        let actions = drain(&mut s);
        assert_eq!(brief(&actions)[3], "pub event 41 staged");
        let mut pkid = 1;
        send_all(&mut s, &mut pkid, 3);
        s.on_disconnected();
        s.on_connected(NOW);
        let actions = brief(&drain(&mut s));
        assert_eq!(actions.last().map(String::as_str), Some("pub event 41 staged"));
        let ids = send_all(&mut s, &mut pkid, 3);
        s.on_puback(ids[2]);
        check(&mut s, &["pub event 42 staged"]);
        assert_eq!(s.next_event_seq(), 43);
    }

    #[test]
    fn a_full_event_buffer_drops_the_oldest_and_reports_it_after_reconnecting() {
        let mut s = Session::new(device(), hello("1"), limits(1, 1, 2), [], 1);
        for message in ["a", "b", "c", "d"] {
            s.send_event(event(message));
        }
        drain(&mut s);
        assert_eq!(s.pending_events(), 2);
        assert_eq!(s.events_dropped_total(), 2);
        s.on_connected(NOW);
        let actions = drain(&mut s);
        let texts = brief(&actions);
        assert_eq!(texts[3], "pub event 3 staged", "{texts:?}");
        assert_eq!(texts[4], "seq 6", "{texts:?}");
        // The report is buffered behind the survivors; the oldest survivor went out.
        assert_eq!(s.pending_events(), 3);
        assert_eq!(s.events.back().and_then(|e| e.code.as_deref()), Some(EVENTS_DROPPED_CODE));
    }

    #[test]
    fn bad_messages_are_rejected_with_an_event_and_forward_nothing() {
        let mut s = session(&[]);
        let other = "outpost/v1/dev-2/assign";
        let big = vec![b' '; wire::MAX_JSON_PAYLOAD_BYTES + 1];
        let cases: Vec<(&str, &[u8], &str)> = vec![
            ("outpost/v1/dev-1/assign", b"\x00\xffgarbage", "malformed"),
            ("outpost/v1/dev-1/assign", br#"{"v":2,"plan":{}}"#, "unsupported_version"),
            ("outpost/v1/dev-1/assign", br#"{"plan":{}}"#, "missing_version"),
            ("outpost/v1/dev-1/assign", &big, "oversized"),
            (other, b"{}", "not_addressed_to_this_device"),
            ("outpost/v1/dev-1/chunk", b"\x00\x00", "truncated"),
            ("outpost/v1/dev-1/hello", b"{}", "wrong_direction"),
            ("outpost/v1/dev-1/../x", b"{}", "topic_levels"),
            ("outpost/v1/dev\u{1}1/assign", b"{}", "topic_device"),
        ];
        for (topic, payload, _) in &cases {
            s.on_message(topic, payload, NOW);
        }
        s.on_connected(NOW);
        let actions = drain(&mut s);
        let events: Vec<Event> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Publish { what: Outbound::Event(_), publish } => {
                    Some(wire::decode(&publish.payload).expect("event"))
                }
                _ => None,
            })
            .collect();
        assert!(!actions.iter().any(|a| matches!(a, Action::Forward(_))));
        // Two in flight; the rest wait in the buffer (bounded at 4: the oldest were dropped).
        assert_eq!(events.len(), 2);
        let codes: Vec<&str> = cases.iter().map(|(_, _, code)| *code).collect();
        for event in &events {
            assert_eq!(event.kind, EventKind::MessageRejected);
            assert_eq!(event.outcome, Outcome::Refused);
            assert!(codes.contains(&event.code.as_deref().unwrap_or("")), "{event:?}");
            assert!(!event.message.chars().any(|c| c.is_control()), "{:?}", event.message);
        }
        // Every case, checked one at a time, yields its code.
        for (topic, payload, code) in cases {
            let mut s = session(&[]);
            s.on_message(topic, payload, NOW);
            let Some(Action::SaveEventSeq(_)) = s.next_action() else { panic!("no event") };
            s.on_connected(NOW);
            let rejected = drain(&mut s).into_iter().find_map(|a| match a {
                Action::Publish { what: Outbound::Event(_), publish } => {
                    Some(wire::decode::<Event>(&publish.payload).expect("event"))
                }
                _ => None,
            });
            assert_eq!(rejected.and_then(|e| e.code).as_deref(), Some(code), "{topic}");
        }
    }

    #[test]
    fn rejection_events_are_rate_limited_and_count_what_they_suppressed() {
        let mut s = Session::new(device(), hello("1"), limits(1, 1, 1000), [], 1);
        let total = MAX_REJECTION_EVENTS_PER_PERIOD as u64 + 5;
        for _ in 0..total {
            s.on_message("outpost/v1/dev-1/assign", b"nope", NOW);
        }
        assert_eq!(s.pending_events(), MAX_REJECTION_EVENTS_PER_PERIOD as usize);
        s.on_message("outpost/v1/dev-1/assign", b"nope", NOW + REJECTION_PERIOD_MS);
        assert_eq!(s.pending_events(), MAX_REJECTION_EVENTS_PER_PERIOD as usize + 1);
        let last = s.events.back().expect("event");
        let details = last.details.as_ref().expect("details");
        assert_eq!(details.get("suppressed"), Some(&json!(5)));
    }

    #[test]
    fn valid_messages_are_forwarded() {
        let mut s = session(&[]);
        let assign = Assign {
            v: ProtocolVersion,
            plan: Envelope::new("application/vnd.outpost.rollout-plan+json", b"{}"),
            admission: Admission {
                rollout_id: "r1".into(),
                wave: 0,
                admitted_at_ms: NOW,
                action: AdmissionAction::Install,
            },
        };
        let topic = Topic::new(device(), Channel::Assign).to_string();
        s.on_message(&topic, &wire::encode(&assign).expect("encode"), NOW);
        s.on_message(&topic, b"", NOW);
        check(&mut s, &["fwd assign", "fwd assign cleared"]);
    }

    #[test]
    fn dropped_windows_leave_the_mirror_and_are_reported() {
        let mut s = session(&[1, 2, 3]);
        s.windows_dropped(&Dropped { seqs: vec![1, 2], total: 9 }, NOW);
        check(&mut s, &["seq 2"]);
        assert_eq!(s.queued_windows(), 1);
        s.on_connected(NOW);
        let actions = drain(&mut s);
        assert_eq!(
            brief(&actions)[3..],
            ["window 3".to_string(), "pub event 1 queue_dropped".to_string()]
        );
        let Some(Action::Publish { publish, .. }) = actions.last() else { panic!() };
        let event: Event = wire::decode(&publish.payload).expect("event");
        let details = event.details.expect("details");
        assert_eq!(details["count"], json!(2));
        assert_eq!(details["dropped_total"], json!(9));
    }

    #[test]
    fn hello_updates_wait_for_the_one_in_flight() {
        let mut s = session(&[]);
        s.update_hello(hello("2"));
        check(&mut s, &[]);
        s.on_connected(NOW);
        drain(&mut s);
        let mut pkid = 1;
        let ids = send_all(&mut s, &mut pkid, 2);
        s.update_hello(hello("3"));
        s.update_hello(hello("4"));
        check(&mut s, &[]);
        s.on_puback(ids[1]);
        check(&mut s, &["pub hello 4"]);
    }

    #[test]
    fn shutdown_publishes_offline_then_disconnects_once_acknowledged() {
        let mut s = session(&[1]);
        s.on_connected(NOW);
        drain(&mut s);
        let mut pkid = 1;
        send_all(&mut s, &mut pkid, 3);
        s.shutdown(NOW);
        check(&mut s, &["pub state offline"]);
        let ids = send_all(&mut s, &mut pkid, 1);
        s.window_queued(2); // nothing more goes out while shutting down
        s.send_event(event("late"));
        check(&mut s, &["seq 2"]);
        s.on_puback(ids[0]);
        check(&mut s, &["disconnect"]);
        s.on_disconnected();
        check(&mut s, &["finish"]);

        let mut offline = session(&[1]);
        offline.shutdown(NOW);
        check(&mut offline, &["finish"]);
    }

    #[test]
    fn unreadable_windows_and_refused_publications_are_handled() {
        let mut s = session(&[1, 2, 3]);
        s.on_connected(NOW);
        drain(&mut s);
        s.window_unavailable(1);
        s.publish_rejected(Outbound::Window(2));
        let mut pkid = 1;
        let ids = send_all(&mut s, &mut pkid, 2); // state, hello
        s.on_puback(ids[1]);
        // Window 2 is retried, window 3 goes with it; window 1 is forgotten.
        check(&mut s, &["window 2", "window 3"]);
        assert_eq!(s.queued_windows(), 2);
    }

    #[test]
    fn last_will_is_the_documented_payload() {
        assert_eq!(LAST_WILL_PAYLOAD, br#"{"v":1,"state":"offline"}"#);
    }

    #[test]
    fn printable_strips_control_characters_and_bounds_length() {
        assert_eq!(printable("a\u{0}b\nc", 100), "a\u{fffd}b\nc");
        let long = printable(&"é".repeat(1000), 64);
        assert!(long.len() <= 64, "{}", long.len());
        assert!(long.ends_with('…'));
    }

    #[test]
    fn fetch_requests_go_out_only_while_connected_and_need_no_acknowledgement() {
        let mut s = session(&[]);
        let request = Publish {
            topic: "outpost/v1/dev-1/fetch".into(),
            payload: b"{}".to_vec(),
            qos: wire::QoS::AtLeastOnce,
            retain: false,
        };
        assert!(!s.send_fetch(request.clone()), "offline: not sent, not kept");
        assert!(drain(&mut s).is_empty());
        s.on_connected(1);
        drain(&mut s);
        assert!(s.send_fetch(request));
        check(&mut s, &["pub fetch outpost/v1/dev-1/fetch"]);
        s.on_publish_sent(1);
        s.on_puback(1);
        assert!(drain(&mut s).is_empty(), "an acknowledged fetch changes nothing");
    }
}
