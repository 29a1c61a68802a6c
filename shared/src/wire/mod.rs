//! The Outpost wire protocol: MQTT topics in both directions and the versioned messages on them.
//!
//! This is the boundary between devices and the control site; `docs/protocol.md` describes it
//! for people and `shared/tests/protocol.rs` checks every example there against these types.
//! Everything here is plain data and pure functions: callers hand in topic names and payload
//! bytes and get typed values, or a [`WireError`] naming what was wrong.
//!
//! - Topics: [`Topic`] (`outpost/v1/<device>/<channel>`), [`DeviceId`], [`Channel`] with its
//!   direction, QoS and retain flag, and the subscription filters ([`control_subscriptions`],
//!   [`device_subscriptions`]).
//! - JSON messages: [`Hello`], [`State`], [`StatsWindow`], [`Event`], [`Assign`],
//!   [`FetchRequest`], [`SamplingControl`], [`SampleChunk`]; binary chunk frames: [`ChunkFrame`] / [`FetchError`] ([`ChunkReply`]).
//! - Decoding: [`FromDevice::decode`] for the control, [`ToDevice::decode`] for a device, or
//!   [`decode_on`] / [`decode`] for one known type; [`encode`] and [`Publish`] for sending.
//!
//! Rules every JSON payload follows: it carries `"v": 1` and any other version is refused with
//! [`WireError::UnsupportedVersion`]; unknown fields are refused; a payload over
//! [`MAX_JSON_PAYLOAD_BYTES`] is refused before parsing; optional fields are omitted when absent
//! and `null` reads as absent; decoded values are validated before a caller sees them, and
//! [`encode`] validates before writing, so a device never sends what the control would refuse.

mod fields;
mod messages;
mod samples;
mod topic;
mod transfer;
mod window;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use fields::{
    Digest, DigestError, MAX_ID_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES, MAX_TAG_BYTES,
    PROTOCOL_VERSION, ProtocolVersion,
};
pub use messages::{
    Admission, AdmissionAction, Assign, Event, EventKind, Hello, LAST_WILL_PAYLOAD, ModelRef,
    Outcome, Presence, SlotName, Slots, State,
};
pub use samples::{
    MAX_SAMPLE_CHUNK_VALUES, MAX_SAMPLE_PARTS, MAX_SAMPLE_ROW_VALUES, MAX_SAMPLE_ROWS_PER_CHUNK,
    SampleChunk, SamplingControl, rows_per_chunk,
};
pub use topic::{
    CONTROL_SHARE_GROUP, Channel, DeviceId, DeviceIdError, Direction, MAX_DEVICE_ID_BYTES, QoS,
    TOPIC_PREFIX, Topic, TopicError, control_subscriptions, device_acl_pattern,
    device_subscriptions,
};
pub use transfer::{
    ChunkFrame, ChunkHeader, ChunkReply, FetchError, FetchErrorCode, FetchRequest, MAX_CHUNK_BYTES,
    MAX_CHUNK_HEADER_BYTES, MAX_FETCH_ERROR_MESSAGE_BYTES,
};
pub use window::{ClassifierStats, FeatureStats, LatencyHistogram, StatsWindow, StatsWindowError};

use fields::{bounded, parse_failure};

/// Largest JSON payload accepted on any topic, checked before parsing: 1 MiB.
pub const MAX_JSON_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Every JSON document type of the protocol, by [`WireMessage::NAME`]. `docs/protocol.md` must
/// show an example of each (`shared/tests/protocol.rs` checks), so a new type cannot go
/// undocumented.
pub const MESSAGE_TYPES: &[&str] = &[
    Hello::NAME,
    State::NAME,
    StatsWindow::NAME,
    Event::NAME,
    Assign::NAME,
    FetchRequest::NAME,
    ChunkHeader::NAME,
    FetchError::NAME,
    SamplingControl::NAME,
    SampleChunk::NAME,
];

/// A JSON document of the protocol.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The type's name in `docs/protocol.md` and [`MESSAGE_TYPES`].
    const NAME: &'static str;

    /// Checks what serde cannot: lengths, characters, invariants between fields.
    fn validate(&self) -> Result<(), WireError> {
        Ok(())
    }
}

/// A JSON message that is the whole payload of one channel.
pub trait TopicMessage: WireMessage {
    const CHANNEL: Channel;

    /// The device the payload names, if it names one; it must be the device of the topic.
    fn device(&self) -> Option<&DeviceId> {
        None
    }
}

/// Why a payload or topic is refused. Texts quoted from a peer are cut to a readable length.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    #[error("empty payload where {expected} was expected")]
    EmptyPayload { expected: &'static str },
    #[error("oversized {what}: {actual} bytes exceeds the limit of {limit}")]
    Oversized { what: &'static str, limit: u64, actual: u64 },
    #[error("{what} has no protocol version field `v`")]
    MissingVersion { what: &'static str },
    #[error(
        "unsupported protocol version {found} in {what}: this build speaks version {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion { what: &'static str, found: String },
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("invalid {field} in {message}: {reason}")]
    Invalid { message: &'static str, field: &'static str, reason: String },
    #[error("invalid statistics window: {0}")]
    Stats(#[from] StatsWindowError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("{channel} carries {expected_direction} messages and is not read here")]
    WrongDirection { channel: Channel, expected_direction: Direction },
    #[error("a {message} does not belong on the {channel} channel")]
    WrongChannel { message: &'static str, channel: Channel },
    #[error("payload names device {payload} but arrived on the topic of device {topic}")]
    DeviceMismatch { topic: DeviceId, payload: DeviceId },
    #[error("message addressed to device {addressed} arrived at device {this_device}")]
    NotAddressedToThisDevice { addressed: DeviceId, this_device: DeviceId },
    #[error("truncated chunk frame: {needed} bytes needed, {actual} present")]
    Truncated { needed: u64, actual: u64 },
    #[error(
        "chunk at offset {offset} with {length} bytes of an artifact of {total_size} bytes (last: {last}) does not add up: {reason}"
    )]
    InconsistentChunk {
        offset: u64,
        length: u64,
        total_size: u64,
        last: bool,
        reason: &'static str,
    },
    #[error(
        "chunk data does not match its header: header says {expected}, data hashes to {actual}"
    )]
    ChunkDigestMismatch { expected: Digest, actual: Digest },
    #[error("fetch refused by the control: {0}")]
    FetchRefused(FetchError),
    #[error("cannot encode message: {reason}")]
    Encode { reason: String },
}

impl WireError {
    /// A short, stable code per kind of refusal, used as the `code` of `message_rejected` events.
    pub fn code(&self) -> &'static str {
        match self {
            WireError::EmptyPayload { .. } => "empty_payload",
            WireError::Oversized { .. } => "oversized",
            WireError::MissingVersion { .. } => "missing_version",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::Malformed { .. } => "malformed",
            WireError::Invalid { .. } => "invalid",
            WireError::Stats(_) => "invalid_stats",
            WireError::Topic(error) => error.code(),
            WireError::WrongDirection { .. } => "wrong_direction",
            WireError::WrongChannel { .. } => "wrong_channel",
            WireError::DeviceMismatch { .. } => "device_mismatch",
            WireError::NotAddressedToThisDevice { .. } => "not_addressed_to_this_device",
            WireError::Truncated { .. } => "truncated",
            WireError::InconsistentChunk { .. } => "inconsistent_chunk",
            WireError::ChunkDigestMismatch { .. } => "chunk_digest_mismatch",
            WireError::FetchRefused(_) => "fetch_refused",
            WireError::Encode { .. } => "encode",
        }
    }
}

/// Reads one JSON document: size limit, then version, then the typed parse, then
/// [`WireMessage::validate`].
pub fn decode<T: WireMessage>(bytes: &[u8]) -> Result<T, WireError> {
    parse_json(bytes, MAX_JSON_PAYLOAD_BYTES)
}

/// Reads the payload of `topic` as a `T`, checking that `T` belongs on the topic's channel and
/// that a device named in the payload is the topic's device (broker ACLs pin topics to devices,
/// so the topic is the trustworthy one).
pub fn decode_on<T: TopicMessage>(topic: &Topic, bytes: &[u8]) -> Result<T, WireError> {
    if topic.channel != T::CHANNEL {
        return Err(WireError::WrongChannel { message: T::NAME, channel: topic.channel });
    }
    let message: T = decode(bytes)?;
    if let Some(payload) = message.device()
        && *payload != topic.device
    {
        return Err(WireError::DeviceMismatch {
            topic: topic.device.clone(),
            payload: payload.clone(),
        });
    }
    Ok(message)
}

/// Writes one JSON document as compact JSON, after [`WireMessage::validate`].
pub fn encode<T: WireMessage>(message: &T) -> Result<Vec<u8>, WireError> {
    message.validate()?;
    serde_json::to_vec(message).map_err(|e| WireError::Encode { reason: parse_failure(e) })
}

/// Size limit, version check, typed parse and validation of one JSON document.
pub(crate) fn parse_json<T: WireMessage>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.is_empty() {
        return Err(WireError::EmptyPayload { expected: T::NAME });
    }
    if bytes.len() > limit {
        return Err(WireError::Oversized {
            what: T::NAME,
            limit: limit as u64,
            actual: bytes.len() as u64,
        });
    }
    check_version(bytes, T::NAME)?;
    let message: T = serde_json::from_slice(bytes)
        .map_err(|e| WireError::Malformed { what: T::NAME, reason: parse_failure(e) })?;
    message.validate()?;
    Ok(message)
}

/// Reads only `v`, so a document of another version is refused as such rather than for the
/// fields it has that this build does not know.
pub(crate) fn check_version(bytes: &[u8], what: &'static str) -> Result<(), WireError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        v: Option<serde_json::Value>,
    }
    // serde would also read a struct from a JSON array; the protocol has objects only.
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(WireError::Malformed { what, reason: "expected a JSON object".into() });
    }
    let probe: Probe = serde_json::from_slice(bytes)
        .map_err(|e| WireError::Malformed { what, reason: parse_failure(e) })?;
    match probe.v {
        None => Err(WireError::MissingVersion { what }),
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => Ok(()),
        Some(found) => Err(WireError::UnsupportedVersion { what, found: bounded(found) }),
    }
}

/// Everything a control instance receives, by channel.
#[derive(Debug, Clone, PartialEq)]
pub enum FromDevice {
    Hello(Hello),
    State(State),
    Stats(StatsWindow),
    Event(Event),
    Fetch(FetchRequest),
    Samples(SampleChunk),
    /// An empty retained payload on `hello` or `state`: the retained message was cleared.
    Cleared(Channel),
}

impl FromDevice {
    /// Parses the topic and reads its payload. Device → control channels only.
    pub fn decode(topic: &str, payload: &[u8]) -> Result<(DeviceId, FromDevice), WireError> {
        let topic = Topic::parse(topic)?;
        if payload.is_empty()
            && topic.channel.retained()
            && topic.channel.direction() == Direction::DeviceToControl
        {
            return Ok((topic.device, FromDevice::Cleared(topic.channel)));
        }
        let message = match topic.channel {
            Channel::Hello => FromDevice::Hello(decode_on(&topic, payload)?),
            Channel::State => FromDevice::State(decode_on(&topic, payload)?),
            Channel::Stats => FromDevice::Stats(decode_on(&topic, payload)?),
            Channel::Events => FromDevice::Event(decode_on(&topic, payload)?),
            Channel::Fetch => FromDevice::Fetch(decode_on(&topic, payload)?),
            Channel::Samples => FromDevice::Samples(decode_on(&topic, payload)?),
            channel @ (Channel::Assign | Channel::Chunk | Channel::Sampling) => {
                return Err(WireError::WrongDirection {
                    channel,
                    expected_direction: Direction::ControlToDevice,
                });
            }
        };
        Ok((topic.device, message))
    }
}

/// Everything a device receives, by channel.
#[derive(Debug, Clone, PartialEq)]
pub enum ToDevice {
    Assign(Assign),
    /// An empty retained payload on `assign`: the control withdrew the assignment.
    AssignCleared,
    Chunk(ChunkReply),
    /// Drift-alert state and upload request for input sampling; an empty retained payload
    /// reads as "not in alert, no request".
    Sampling(SamplingControl),
}

impl ToDevice {
    /// Parses the topic, checks that it is addressed to `this_device` and reads its payload.
    /// Control → device channels only.
    pub fn decode(
        this_device: &DeviceId,
        topic: &str,
        payload: &[u8],
    ) -> Result<ToDevice, WireError> {
        let topic = Topic::parse(topic)?;
        if topic.device != *this_device {
            return Err(WireError::NotAddressedToThisDevice {
                addressed: topic.device,
                this_device: this_device.clone(),
            });
        }
        match topic.channel {
            Channel::Assign if payload.is_empty() => Ok(ToDevice::AssignCleared),
            Channel::Assign => Ok(ToDevice::Assign(decode_on(&topic, payload)?)),
            Channel::Chunk => Ok(ToDevice::Chunk(ChunkReply::decode(payload)?)),
            Channel::Sampling if payload.is_empty() => Ok(ToDevice::Sampling(SamplingControl {
                v: ProtocolVersion,
                alert: false,
                upload_request: None,
            })),
            Channel::Sampling => Ok(ToDevice::Sampling(decode_on(&topic, payload)?)),
            channel => Err(WireError::WrongDirection {
                channel,
                expected_direction: Direction::DeviceToControl,
            }),
        }
    }
}

/// One MQTT publication, ready for the client library: topic, payload, QoS and retain flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: QoS,
    pub retain: bool,
}

impl Publish {
    /// `message` on its channel of `device`. A message that names a device must name `device`.
    pub fn message<T: TopicMessage>(device: &DeviceId, message: &T) -> Result<Publish, WireError> {
        if let Some(payload) = message.device()
            && payload != device
        {
            return Err(WireError::DeviceMismatch {
                topic: device.clone(),
                payload: payload.clone(),
            });
        }
        Ok(Publish::on(Topic::new(device.clone(), T::CHANNEL), encode(message)?))
    }

    /// A chunk reply to `device`.
    pub fn chunk(device: &DeviceId, reply: &ChunkReply) -> Result<Publish, WireError> {
        Ok(Publish::on(Topic::new(device.clone(), Channel::Chunk), reply.encode()?))
    }

    /// Clears the retained message of a retained channel (an empty retained payload).
    pub fn clear_retained(device: &DeviceId, channel: Channel) -> Result<Publish, WireError> {
        if !channel.retained() {
            return Err(WireError::Invalid {
                message: "Publish",
                field: "channel",
                reason: format!("{channel} is not a retained channel"),
            });
        }
        Ok(Publish::on(Topic::new(device.clone(), channel), Vec::new()))
    }

    /// The Last Will a device registers when it connects.
    pub fn last_will(device: &DeviceId) -> Publish {
        Publish::on(Topic::new(device.clone(), Channel::State), LAST_WILL_PAYLOAD.to_vec())
    }

    fn on(topic: Topic, payload: Vec<u8>) -> Publish {
        Publish {
            qos: topic.channel.qos(),
            retain: topic.channel.retained(),
            topic: topic.to_string(),
            payload,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
