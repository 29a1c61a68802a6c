//! MQTT topics in both directions: `outpost/v1/<device>/<channel>` built from a [`Topic`] and
//! parsed back into one, plus the subscription filters of the control and of a device.
//!
//! The device id is also the MQTT client id and the CN of the device's TLS certificate, so a
//! broker ACL can pin each device to [`device_acl_pattern`]. Its characters are restricted so
//! that an id can never be or contain a topic separator or wildcard.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::fields::bounded;

/// First two levels of every Outpost topic.
pub const TOPIC_PREFIX: &str = "outpost/v1";
/// Shared subscription group of the control instances.
pub const CONTROL_SHARE_GROUP: &str = "outpost-control";
/// Longest device id.
pub const MAX_DEVICE_ID_BYTES: usize = 64;

/// A device id: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
///
/// No `/`, `+`, `#` or `$` can appear, so a device id is always exactly one topic level and
/// never a wildcard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// Why a string is not a [`DeviceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is {length} bytes long, the limit is {MAX_DEVICE_ID_BYTES}")]
    TooLong { length: usize },
    #[error(
        "device id contains {character:?} at position {position}; only A-Z a-z 0-9 . _ - are allowed"
    )]
    InvalidCharacter { character: char, position: usize },
}

impl DeviceId {
    pub fn new(id: impl Into<String>) -> Result<Self, DeviceIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DeviceIdError::Empty);
        }
        if id.len() > MAX_DEVICE_ID_BYTES {
            return Err(DeviceIdError::TooLong { length: id.len() });
        }
        if let Some((position, character)) = id
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(DeviceIdError::InvalidCharacter { character, position });
        }
        Ok(DeviceId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = DeviceIdError;

    fn try_from(id: String) -> Result<Self, Self::Error> {
        DeviceId::new(id)
    }
}

impl From<DeviceId> for String {
    fn from(id: DeviceId) -> String {
        id.0
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        DeviceId::new(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for DeviceId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Who publishes on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    DeviceToControl,
    ControlToDevice,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::DeviceToControl => "device → control",
            Direction::ControlToDevice => "control → device",
        })
    }
}

/// MQTT quality of service levels. Outpost publishes everything at least once and makes
/// receivers idempotent (sequence numbers, request ids) instead of relying on exactly-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// The last topic level: what kind of payload a topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Channel {
    /// Device description ([`super::Hello`]), retained.
    Hello,
    /// Online/offline ([`super::State`]), retained, also the Last Will.
    State,
    /// Statistics windows ([`super::StatsWindow`]).
    Stats,
    /// Install progress, refusals and errors ([`super::Event`]).
    Events,
    /// The rollout the device should follow ([`super::Assign`]), retained.
    Assign,
    /// Artifact range requests ([`super::FetchRequest`]).
    Fetch,
    /// Artifact data or a refusal, binary ([`super::ChunkReply`]).
    Chunk,
    /// Drift-alert state and upload requests for input sampling ([`super::SamplingControl`]),
    /// retained.
    Sampling,
    /// Sampled input rows, one part of an upload each ([`super::SampleChunk`]).
    Samples,
}

impl Channel {
    pub const ALL: [Channel; 9] = [
        Channel::Hello,
        Channel::State,
        Channel::Stats,
        Channel::Events,
        Channel::Assign,
        Channel::Fetch,
        Channel::Chunk,
        Channel::Sampling,
        Channel::Samples,
    ];

    /// The topic level, e.g. `hello`.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Hello => "hello",
            Channel::State => "state",
            Channel::Stats => "stats",
            Channel::Events => "events",
            Channel::Assign => "assign",
            Channel::Fetch => "fetch",
            Channel::Chunk => "chunk",
            Channel::Sampling => "sampling",
            Channel::Samples => "samples",
        }
    }

    /// The channel whose topic level is `level`, if any. Levels are lowercase and exact.
    pub fn from_level(level: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == level)
    }

    pub fn direction(self) -> Direction {
        match self {
            Channel::Hello
            | Channel::State
            | Channel::Stats
            | Channel::Events
            | Channel::Fetch
            | Channel::Samples => Direction::DeviceToControl,
            Channel::Assign | Channel::Chunk | Channel::Sampling => Direction::ControlToDevice,
        }
    }

    pub fn qos(self) -> QoS {
        QoS::AtLeastOnce
    }

    /// Whether publications on this channel set the MQTT retain flag: the broker keeps the
    /// last device description, presence, assignment and sampling state for whoever
    /// subscribes later.
    pub fn retained(self) -> bool {
        matches!(self, Channel::Hello | Channel::State | Channel::Assign | Channel::Sampling)
    }

    /// The name of the payload type in `docs/protocol.md`.
    pub fn payload_type(self) -> &'static str {
        match self {
            Channel::Hello => "Hello",
            Channel::State => "State",
            Channel::Stats => "StatsWindow",
            Channel::Events => "Event",
            Channel::Assign => "Assign",
            Channel::Fetch => "FetchRequest",
            Channel::Chunk => "ChunkFrame",
            Channel::Sampling => "SamplingControl",
            Channel::Samples => "SampleChunk",
        }
    }

    /// `outpost/v1/+/<channel>`: this channel of every device.
    pub fn all_devices_filter(self) -> String {
        format!("{TOPIC_PREFIX}/+/{}", self.as_str())
    }

    /// `$share/outpost-control/outpost/v1/+/<channel>`: the control's shared subscription to
    /// this channel of every device, or `None` for a channel the control publishes.
    pub fn control_subscription(self) -> Option<String> {
        (self.direction() == Direction::DeviceToControl)
            .then(|| format!("$share/{CONTROL_SHARE_GROUP}/{}", self.all_devices_filter()))
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An Outpost topic: one channel of one device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    pub device: DeviceId,
    pub channel: Channel,
}

/// Why a topic name is not an Outpost topic. Topics quoted here are cut to a readable length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic `{topic}` is not under `{TOPIC_PREFIX}/`")]
    WrongPrefix { topic: String },
    #[error("topic `{topic}` has {levels} levels, expected 4: `{TOPIC_PREFIX}/<device>/<channel>`")]
    WrongLevelCount { topic: String, levels: usize },
    #[error("topic `{topic}` names an invalid device: {reason}")]
    InvalidDevice { topic: String, reason: DeviceIdError },
    #[error("topic `{topic}` names unknown channel `{channel}`")]
    UnknownChannel { topic: String, channel: String },
}

impl TopicError {
    /// A short, stable code for events and logs.
    pub fn code(&self) -> &'static str {
        match self {
            TopicError::WrongPrefix { .. } => "topic_prefix",
            TopicError::WrongLevelCount { .. } => "topic_levels",
            TopicError::InvalidDevice { .. } => "topic_device",
            TopicError::UnknownChannel { .. } => "topic_channel",
        }
    }
}

impl Topic {
    pub fn new(device: DeviceId, channel: Channel) -> Self {
        Topic { device, channel }
    }

    /// Parses `outpost/v1/<device>/<channel>`. Wildcards, shared-subscription prefixes and
    /// extra or empty levels are refused.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let Some(rest) = topic.strip_prefix(TOPIC_PREFIX).and_then(|rest| rest.strip_prefix('/'))
        else {
            return Err(TopicError::WrongPrefix { topic: bounded(topic) });
        };
        let levels: Vec<&str> = rest.split('/').collect();
        let [device, channel] = levels.as_slice() else {
            return Err(TopicError::WrongLevelCount {
                topic: bounded(topic),
                levels: levels.len() + 2,
            });
        };
        let device = DeviceId::new(*device)
            .map_err(|reason| TopicError::InvalidDevice { topic: bounded(topic), reason })?;
        let channel = Channel::from_level(channel).ok_or_else(|| TopicError::UnknownChannel {
            topic: bounded(topic),
            channel: bounded(channel),
        })?;
        Ok(Topic { device, channel })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOPIC_PREFIX}/{}/{}", self.device, self.channel)
    }
}

impl FromStr for Topic {
    type Err = TopicError;

    fn from_str(topic: &str) -> Result<Self, Self::Err> {
        Topic::parse(topic)
    }
}

/// Every subscription a control instance makes: the shared filter of each device → control
/// channel, so several instances split the load.
pub fn control_subscriptions() -> Vec<String> {
    Channel::ALL.into_iter().filter_map(Channel::control_subscription).collect()
}

/// Every subscription a device makes: its own control → device topics.
pub fn device_subscriptions(device: &DeviceId) -> Vec<Topic> {
    Channel::ALL
        .into_iter()
        .filter(|c| c.direction() == Direction::ControlToDevice)
        .map(|channel| Topic::new(device.clone(), channel))
        .collect()
}

/// `outpost/v1/<device>/#`: the broker ACL pattern a device's certificate is pinned to.
pub fn device_acl_pattern(device: &DeviceId) -> String {
    format!("{TOPIC_PREFIX}/{device}/#")
}

#[cfg(test)]
mod tests {
    use expect_test::expect;
    use proptest::prelude::*;

    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::new(id).expect("valid device id")
    }

    #[test]
    fn topics_format_and_parse() {
        let topic = Topic::new(device("pump-17.berlin_2"), Channel::Stats);
        assert_eq!(topic.to_string(), "outpost/v1/pump-17.berlin_2/stats");
        assert_eq!(Topic::parse("outpost/v1/pump-17.berlin_2/stats"), Ok(topic));
        for channel in Channel::ALL {
            let topic = Topic::new(device("d"), channel);
            assert_eq!(topic.to_string().parse::<Topic>(), Ok(topic));
        }
    }

    #[test]
    fn channel_properties() {
        let table: Vec<String> = Channel::ALL
            .into_iter()
            .map(|c| {
                format!(
                    "{} {} qos={} retained={} {}",
                    c,
                    c.direction(),
                    c.qos().level(),
                    c.retained(),
                    c.payload_type()
                )
            })
            .collect();
        expect![[r#"
            hello device → control qos=1 retained=true Hello
            state device → control qos=1 retained=true State
            stats device → control qos=1 retained=false StatsWindow
            events device → control qos=1 retained=false Event
            assign control → device qos=1 retained=true Assign
            fetch device → control qos=1 retained=false FetchRequest
            chunk control → device qos=1 retained=false ChunkFrame
            sampling control → device qos=1 retained=true SamplingControl
            samples device → control qos=1 retained=false SampleChunk"#]]
        .assert_eq(&table.join("\n"));
    }

    #[test]
    fn subscriptions() {
        expect![[r#"
            $share/outpost-control/outpost/v1/+/hello
            $share/outpost-control/outpost/v1/+/state
            $share/outpost-control/outpost/v1/+/stats
            $share/outpost-control/outpost/v1/+/events
            $share/outpost-control/outpost/v1/+/fetch
            $share/outpost-control/outpost/v1/+/samples"#]]
        .assert_eq(&control_subscriptions().join("\n"));
        let own: Vec<String> =
            device_subscriptions(&device("d1")).iter().map(Topic::to_string).collect();
        assert_eq!(own, ["outpost/v1/d1/assign", "outpost/v1/d1/chunk", "outpost/v1/d1/sampling"]);
        assert_eq!(device_acl_pattern(&device("d1")), "outpost/v1/d1/#");
        assert_eq!(Channel::Assign.control_subscription(), None);
    }

    fn check_topic_rejected(topic: &str, expected_code: &str) {
        let error = Topic::parse(topic).expect_err(topic);
        assert_eq!(error.code(), expected_code, "{topic}: {error}");
    }

    #[test]
    fn bad_topics_are_rejected_with_the_reason() {
        let long = format!("outpost/v1/{}/hello", "x".repeat(65));
        let cases: &[(&str, &str)] = &[
            ("", "topic_prefix"),
            ("outpost", "topic_prefix"),
            ("outpost/v1", "topic_prefix"),
            ("outpost/v2/d/hello", "topic_prefix"),
            ("Outpost/v1/d/hello", "topic_prefix"),
            ("/outpost/v1/d/hello", "topic_prefix"),
            ("$share/outpost-control/outpost/v1/d/hello", "topic_prefix"),
            ("outpost/v1/", "topic_levels"),
            ("outpost/v1/d", "topic_levels"),
            ("outpost/v1/d/hello/extra", "topic_levels"),
            ("outpost/v1/d/hello/", "topic_levels"),
            ("outpost/v1/a/b/hello", "topic_levels"),
            ("outpost/v1//hello", "topic_device"),
            ("outpost/v1/+/hello", "topic_device"),
            ("outpost/v1/#/hello", "topic_device"),
            ("outpost/v1/dev ice/hello", "topic_device"),
            ("outpost/v1/dév/hello", "topic_device"),
            ("outpost/v1/$SYS/hello", "topic_device"),
            (&long, "topic_device"),
            ("outpost/v1/d/", "topic_channel"),
            ("outpost/v1/d/Hello", "topic_channel"),
            ("outpost/v1/d/#", "topic_channel"),
            ("outpost/v1/d/+", "topic_channel"),
            ("outpost/v1/d/event", "topic_channel"),
        ];
        for (topic, code) in cases {
            check_topic_rejected(topic, code);
        }
    }

    #[test]
    fn device_id_errors_name_the_problem() {
        assert_eq!(DeviceId::new(""), Err(DeviceIdError::Empty));
        assert_eq!(DeviceId::new("x".repeat(65)), Err(DeviceIdError::TooLong { length: 65 }));
        assert!(DeviceId::new("x".repeat(64)).is_ok());
        assert_eq!(
            DeviceId::new("ab/c"),
            Err(DeviceIdError::InvalidCharacter { character: '/', position: 2 })
        );
        for bad in ["+", "#", "a b", "a\0", "ä", "$x", "a:b"] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        let error = serde_json::from_str::<DeviceId>("\"a/b\"").expect_err("slash accepted");
        assert!(error.to_string().contains("device id contains '/'"), "{error}");
        let long =
            Topic::parse(&format!("outpost/v1/d/{}", "y".repeat(1000))).expect_err("long channel");
        assert!(long.to_string().len() < 400, "error quotes the whole topic: {long}");
    }

    proptest! {
        #[test]
        fn valid_ids_round_trip(id in "[A-Za-z0-9._-]{1,64}", index in 0..Channel::ALL.len()) {
            let topic = Topic::new(DeviceId::new(id.clone()).expect("valid id"), Channel::ALL[index]);
            let text = topic.to_string();
            prop_assert_eq!(&text, &format!("outpost/v1/{id}/{}", Channel::ALL[index]));
            prop_assert_eq!(Topic::parse(&text), Ok(topic));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_what_it_prints(text in "\\PC{0,80}") {
            if let Ok(topic) = Topic::parse(&text) {
                prop_assert_eq!(topic.to_string(), text);
            }
        }
    }
}
