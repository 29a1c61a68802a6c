//! Checks `docs/protocol.md` against the wire types, so the page people read is the protocol the
//! code speaks.
//!
//! - Every `<!-- message: X -->` example parses as the type `X` (through the same decoding and
//!   validation as a payload from the wire) and serializes back to the same JSON.
//! - Every message type has at least one example: [`DOCUMENTED`] must equal
//!   [`wire::MESSAGE_TYPES`], so a new type fails here until it is documented.
//! - The topic table states each channel's direction, QoS, retain flag and payload as the code
//!   does, and the `<!-- frame -->` example is a valid chunk frame with the documented header.

use std::collections::BTreeSet;

use outpost_shared::wire::{
    self, Assign, Channel, ChunkFrame, ChunkHeader, Event, FetchError, FetchRequest, Hello,
    LAST_WILL_PAYLOAD, SampleChunk, SamplingControl, State, StatsWindow, WireMessage,
};
use serde_json::Value;

const PROTOCOL_MD: &str = include_str!("../../docs/protocol.md");

/// The message types this test knows how to check; keep in step with [`wire::MESSAGE_TYPES`].
const DOCUMENTED: &[&str] = &[
    "Hello",
    "State",
    "StatsWindow",
    "Event",
    "Assign",
    "FetchRequest",
    "ChunkHeader",
    "FetchError",
    "SamplingControl",
    "SampleChunk",
];

/// A fenced block announced by an HTML comment marker.
#[derive(Debug)]
struct Block {
    /// What follows `<!-- ` in the marker, e.g. `message: Hello`.
    marker: String,
    /// 1-based line of the marker, for messages.
    line: usize,
    text: String,
}

/// Every fenced block right after a `<!-- … -->` marker line.
fn marked_blocks() -> Vec<Block> {
    let lines: Vec<&str> = PROTOCOL_MD.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].trim();
        index += 1;
        let Some(marker) = line.strip_prefix("<!--").and_then(|rest| rest.strip_suffix("-->"))
        else {
            continue;
        };
        let marker_line = index;
        while index < lines.len() && lines[index].trim().is_empty() {
            index += 1;
        }
        assert!(
            index < lines.len() && lines[index].trim_start().starts_with("```"),
            "docs/protocol.md:{marker_line}: marker `{line}` is not followed by a fenced block"
        );
        index += 1;
        let start = index;
        while index < lines.len() && lines[index].trim() != "```" {
            index += 1;
        }
        assert!(index < lines.len(), "docs/protocol.md:{marker_line}: unterminated block");
        blocks.push(Block {
            marker: marker.trim().to_string(),
            line: marker_line,
            text: lines[start..index].join("\n"),
        });
        index += 1;
    }
    blocks
}

/// `(type name, block)` for every `<!-- message: X -->` block.
fn message_examples() -> Vec<(String, Block)> {
    marked_blocks()
        .into_iter()
        .filter_map(|block| {
            let name = block.marker.strip_prefix("message:")?.trim().to_string();
            Some((name, block))
        })
        .collect()
}

/// Decodes the example as a `T` exactly as a payload from the wire, re-encodes it and compares
/// the two as JSON values.
fn round_trip<T: WireMessage>(block: &Block) -> T {
    let at = format!("docs/protocol.md:{} ({})", block.line, T::NAME);
    let message: T = wire::decode(block.text.as_bytes())
        .unwrap_or_else(|error| panic!("{at}: example refused: {error}"));
    let written = wire::encode(&message).unwrap_or_else(|error| panic!("{at}: {error}"));
    let original: Value = serde_json::from_str(&block.text).expect("example is JSON");
    let rewritten: Value = serde_json::from_slice(&written).expect("encoder writes JSON");
    if let Some(difference) = first_difference(&original, &rewritten, String::new()) {
        panic!("{at}: the example changes when written back: {difference}");
    }
    message
}

/// Where two JSON values first differ, as a JSON pointer with both values.
fn first_difference(documented: &Value, written: &Value, path: String) -> Option<String> {
    match (documented, written) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter().find_map(|key| match (a.get(key), b.get(key)) {
                (Some(x), Some(y)) => first_difference(x, y, format!("{path}/{key}")),
                (x, y) => Some(format!("{path}/{key}: documented {x:?}, written {y:?}")),
            })
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y, format!("{path}/{i}"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!("{path}: documented {a}, written {b}")),
    }
}

fn check_example(name: &str, block: &Block) {
    match name {
        "Hello" => drop(round_trip::<Hello>(block)),
        "State" => drop(round_trip::<State>(block)),
        "StatsWindow" => drop(round_trip::<StatsWindow>(block)),
        "Event" => drop(round_trip::<Event>(block)),
        "Assign" => drop(round_trip::<Assign>(block)),
        "FetchRequest" => drop(round_trip::<FetchRequest>(block)),
        "ChunkHeader" => drop(round_trip::<ChunkHeader>(block)),
        "FetchError" => drop(round_trip::<FetchError>(block)),
        "SamplingControl" => drop(round_trip::<SamplingControl>(block)),
        "SampleChunk" => drop(round_trip::<SampleChunk>(block)),
        other => panic!("docs/protocol.md:{}: no message type named `{other}`", block.line),
    }
}

#[test]
fn every_example_round_trips() {
    let examples = message_examples();
    assert!(!examples.is_empty(), "no `<!-- message: X -->` examples found");
    for (name, block) in &examples {
        check_example(name, block);
    }
}

#[test]
fn every_message_type_has_an_example() {
    assert_eq!(
        DOCUMENTED,
        wire::MESSAGE_TYPES,
        "wire::MESSAGE_TYPES changed: document the new type in docs/protocol.md and list it here"
    );
    let documented: BTreeSet<String> = message_examples().into_iter().map(|(n, _)| n).collect();
    let expected: BTreeSet<String> = DOCUMENTED.iter().map(|n| n.to_string()).collect();
    let missing: Vec<_> = expected.difference(&documented).collect();
    assert!(missing.is_empty(), "docs/protocol.md has no example of {missing:?}");
}

#[test]
fn the_last_will_is_documented_byte_for_byte() {
    let will = std::str::from_utf8(LAST_WILL_PAYLOAD).expect("UTF-8");
    assert!(
        message_examples().iter().any(|(name, block)| name == "State" && block.text == will),
        "docs/protocol.md must show the Last Will payload {will} as a State example"
    );
}

#[test]
fn topic_table_matches_the_channels() {
    let mut seen = BTreeSet::new();
    for line in PROTOCOL_MD.lines().filter(|l| l.starts_with("| `outpost/v1/<dev>/")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [topic, direction, qos, retained, payload] = cells.as_slice() else {
            panic!("topic table row does not have 5 cells: {line}");
        };
        let level = topic.trim_matches('`').trim_start_matches("outpost/v1/<dev>/");
        let channel = Channel::from_level(level)
            .unwrap_or_else(|| panic!("topic table names unknown channel `{level}`"));
        let expected = [
            channel.direction().to_string(),
            channel.qos().level().to_string(),
            if channel.retained() { "yes" } else { "no" }.to_string(),
            format!("`{}`", channel.payload_type()),
        ];
        let found = [direction, qos, retained, payload].map(|cell| cell.to_string());
        assert_eq!(found, expected, "topic table row for {channel}");
        seen.insert(channel);
    }
    let missing: Vec<_> = Channel::ALL.into_iter().filter(|c| !seen.contains(c)).collect();
    assert!(missing.is_empty(), "topic table has no row for {missing:?}");
}

#[test]
fn the_frame_example_is_a_valid_chunk_frame() {
    let block = marked_blocks()
        .into_iter()
        .find(|b| b.marker == "frame")
        .expect("docs/protocol.md has a `<!-- frame -->` example");
    let field = |name: &str| {
        block
            .text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("frame example has no `{name}` line"))
    };
    let mut bytes = hex::decode(field("prefix")).expect("prefix is hex");
    bytes.extend_from_slice(field("header").as_bytes());
    bytes.extend_from_slice(&hex::decode(field("data")).expect("data is hex"));

    let frame = ChunkFrame::decode(&bytes).expect("the documented frame decodes");
    assert_eq!(frame.encode().expect("encode"), bytes, "the documented frame is not canonical");
    let header_example = message_examples()
        .into_iter()
        .find(|(name, _)| name == "ChunkHeader")
        .map(|(_, block)| round_trip::<ChunkHeader>(&block))
        .expect("a ChunkHeader example");
    assert_eq!(frame.header, header_example, "the frame's header is not the ChunkHeader example");
}
