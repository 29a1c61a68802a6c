//! Representative values of every message, their wire snapshots, round trips and refusals.
//!
//! A snapshot that changes here is a protocol change: update `docs/protocol.md` with it.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use expect_test::{Expect, expect};

use super::*;
use crate::dsse::{Envelope, PLAN_TYPE, Signature};
use crate::stats::{Histogram, Moments, confidence_edges};

const TS_MS: u64 = 1_717_171_260_000;

fn device() -> DeviceId {
    DeviceId::new("pump-17").expect("valid device id")
}

fn model(version: &str) -> ModelRef {
    ModelRef {
        name: "vibration-anomaly".into(),
        version: version.into(),
        digest: Digest::of(format!("vibration-anomaly {version}").as_bytes()),
    }
}

fn moments(count: u64, mean: f64, m2: f64, min: f64, max: f64) -> Moments {
    Moments { count, mean, m2, min: Some(min), max: Some(max) }
}

fn histogram(edges: &[f64], counts: &[u64], underflow: u64, overflow: u64, nan: u64) -> Histogram {
    Histogram { edges: edges.to_vec(), counts: counts.to_vec(), underflow, overflow, nan }
}

pub(crate) fn sample_hello() -> Hello {
    Hello {
        v: ProtocolVersion,
        device: device(),
        agent_version: "0.1.0".into(),
        arch: "aarch64".into(),
        tags: BTreeMap::from([
            ("hw".to_string(), "rpi4".to_string()),
            ("ring".to_string(), "canary".to_string()),
            ("site".to_string(), "berlin".to_string()),
        ]),
        active_model: Some(model("1.4.0")),
        previous_model: Some(model("1.3.2")),
        slots: Slots {
            active: Some(SlotName::B),
            a: Some(model("1.3.2")),
            b: Some(model("1.4.0")),
        },
        capabilities: vec!["shadow".into(), "kll".into(), "oip-rest".into()],
        trust_root_version: 3,
        last_plan_seq: Some(42),
        ts_ms: TS_MS,
    }
}

pub(crate) fn sample_stats_window() -> StatsWindow {
    let mut latency_counts = vec![0; LATENCY_BUCKETS];
    latency_counts[2..12].copy_from_slice(&[5, 40, 300, 500, 200, 100, 30, 15, 8, 2]);
    StatsWindow {
        v: ProtocolVersion,
        device: device(),
        model: model("1.4.0"),
        seq: 5012,
        start_ms: 1_717_171_200_000,
        end_ms: 1_717_171_260_000,
        count: 1200,
        errors: BTreeMap::from([("input_shape".to_string(), 2), ("runtime".to_string(), 10)]),
        latency: LatencyHistogram {
            counts: latency_counts,
            overflow: 0,
            moments: moments(1200, 1450.5, 2.1e9, 180.0, 52000.0),
        },
        inputs: vec![
            FeatureStats {
                name: "temperature".into(),
                histogram: histogram(
                    &[-20.0, 0.0, 20.0, 40.0, 60.0],
                    &[100, 700, 380, 20],
                    3,
                    7,
                    2,
                ),
                moments: moments(1210, 17.25, 151_250.0, -23.5, 71.0),
                kll_sketch: None,
            },
            FeatureStats {
                name: "vibration_rms".into(),
                // A feature sampled less often than the model runs, with its KLL sketch.
                histogram: histogram(&[0.0, 0.5, 1.0, 2.0], &[4, 2, 2], 0, 0, 0),
                moments: moments(8, 0.67625, 2.8133875, 0.01, 1.93),
                kll_sketch: Some({
                    let mut kll = crate::stats::kll::Kll::new();
                    for v in [0.01, 0.12, 0.3, 0.45, 0.6, 0.8, 1.2, 1.93] {
                        kll.observe(v);
                    }
                    kll.to_bytes()
                }),
            },
        ],
        outputs: vec![FeatureStats {
            name: "score".into(),
            histogram: histogram(&[0.0, 0.25, 0.5, 0.75, 1.0], &[900, 200, 60, 40], 0, 0, 0),
            moments: moments(1200, 0.18, 48.0, 0.0, 0.99),
            kll_sketch: None,
        }],
        classifier: Some(ClassifierStats {
            class_counts: vec![1100, 100],
            confidence: Histogram {
                edges: confidence_edges(),
                counts: vec![0, 0, 0, 0, 0, 30, 70, 100, 300, 700],
                underflow: 0,
                overflow: 0,
                nan: 0,
            },
        }),
    }
}

const LATENCY_BUCKETS: usize = crate::stats::LATENCY_BUCKETS_US.len();

fn sample_event() -> Event {
    Event {
        v: ProtocolVersion,
        device: device(),
        seq: 981,
        ts_ms: TS_MS,
        kind: EventKind::Rejected,
        outcome: Outcome::Refused,
        rollout_id: Some("r-2024-06-01-vibration".into()),
        plan_seq: Some(43),
        bundle_digest: Some(model("1.5.0").digest),
        code: Some("too_few_signatures".into()),
        message:
            "rollout plan 43 refused: too few distinct approver signatures: 1 valid of 2 required"
                .into(),
        details: Some(serde_json::Map::from_iter([
            ("required".to_string(), serde_json::json!(2)),
            ("valid".to_string(), serde_json::json!(1)),
        ])),
    }
}

fn sample_assign() -> Assign {
    let plan = br#"{"v":1,"rollout":"r-2024-06-01-vibration","seq":43}"#;
    Assign {
        v: ProtocolVersion,
        plan: Envelope {
            payload_type: PLAN_TYPE.into(),
            payload: B64.encode(plan),
            signatures: vec![Signature {
                keyid: "ed25519:4f1c2a9be0d34d7c8e55a1f0b2c3d4e5".into(),
                sig: B64.encode([7u8; 64]),
            }],
        },
        admission: Admission {
            rollout_id: "r-2024-06-01-vibration".into(),
            wave: 1,
            admitted_at_ms: TS_MS,
            action: AdmissionAction::Install,
        },
    }
}

fn sample_fetch() -> FetchRequest {
    FetchRequest {
        v: ProtocolVersion,
        request_id: "f-0007".into(),
        digest: model("1.5.0").digest,
        offset: 262_144,
        max_len: 262_144,
    }
}

fn sample_fetch_error() -> FetchError {
    FetchError {
        v: ProtocolVersion,
        request_id: "f-0007".into(),
        digest: model("1.5.0").digest,
        code: FetchErrorCode::UnknownDigest,
        message: "no artifact with this digest is available to this device".into(),
    }
}

fn sample_chunk() -> ChunkFrame {
    ChunkFrame::new("f-0007", model("1.5.0").digest, 262_144, 262_149, b"hello".to_vec())
        .expect("valid chunk")
}

/// Encodes, snapshots the compact JSON and decodes it back to the same value.
fn check_wire<T: WireMessage + PartialEq + std::fmt::Debug>(message: &T, snapshot: Expect) {
    let bytes = encode(message).expect("encode");
    snapshot.assert_eq(std::str::from_utf8(&bytes).expect("JSON is UTF-8"));
    assert_eq!(&decode::<T>(&bytes).expect("decode"), message);
}

#[test]
fn hello_on_the_wire() {
    check_wire(
        &sample_hello(),
        expect![[
            r#"{"v":1,"device":"pump-17","agent_version":"0.1.0","arch":"aarch64","tags":{"hw":"rpi4","ring":"canary","site":"berlin"},"active_model":{"name":"vibration-anomaly","version":"1.4.0","digest":"sha256:4124f92e0dae8190269adf2099982d5f0cee29284afef35a29b8bf3350e1cded"},"previous_model":{"name":"vibration-anomaly","version":"1.3.2","digest":"sha256:9c22d15bd63cf6ba9b9c68898410e73494cbdf2a2e7c1a63dce5e1fe057292c8"},"slots":{"active":"b","a":{"name":"vibration-anomaly","version":"1.3.2","digest":"sha256:9c22d15bd63cf6ba9b9c68898410e73494cbdf2a2e7c1a63dce5e1fe057292c8"},"b":{"name":"vibration-anomaly","version":"1.4.0","digest":"sha256:4124f92e0dae8190269adf2099982d5f0cee29284afef35a29b8bf3350e1cded"}},"capabilities":["shadow","kll","oip-rest"],"trust_root_version":3,"last_plan_seq":42,"ts_ms":1717171260000}"#
        ]],
    );
}

#[test]
fn state_on_the_wire() {
    check_wire(
        &State::online(TS_MS),
        expect![[r#"{"v":1,"state":"online","ts_ms":1717171260000}"#]],
    );
    check_wire(
        &State::offline(TS_MS),
        expect![[r#"{"v":1,"state":"offline","ts_ms":1717171260000}"#]],
    );
    let will = State { v: ProtocolVersion, state: Presence::Offline, ts_ms: None };
    assert_eq!(encode(&will).expect("encode"), State::last_will());
    assert_eq!(decode::<State>(LAST_WILL_PAYLOAD), Ok(will));
}

#[test]
fn stats_window_on_the_wire() {
    check_wire(
        &sample_stats_window(),
        expect![[
            r#"{"v":1,"device":"pump-17","model":{"name":"vibration-anomaly","version":"1.4.0","digest":"sha256:4124f92e0dae8190269adf2099982d5f0cee29284afef35a29b8bf3350e1cded"},"seq":5012,"start_ms":1717171200000,"end_ms":1717171260000,"count":1200,"errors":{"input_shape":2,"runtime":10},"latency":{"counts":[0,0,5,40,300,500,200,100,30,15,8,2,0,0,0,0,0,0,0],"overflow":0,"moments":{"count":1200,"mean":1450.5,"m2":2100000000.0,"min":180.0,"max":52000.0}},"inputs":[{"name":"temperature","histogram":{"edges":[-20.0,0.0,20.0,40.0,60.0],"counts":[100,700,380,20],"underflow":3,"overflow":7,"nan":2},"moments":{"count":1210,"mean":17.25,"m2":151250.0,"min":-23.5,"max":71.0}},{"name":"vibration_rms","histogram":{"edges":[0.0,0.5,1.0,2.0],"counts":[4,2,2],"underflow":0,"overflow":0,"nan":0},"moments":{"count":8,"mean":0.67625,"m2":2.8133875,"min":0.01,"max":1.93},"kll_sketch":"BQEPAMgACAAIAAAAAAAAAMgAAQDAAAAACtcjPD0K9z89Cvc/mpmZP83MTD+amRk/ZmbmPpqZmT6PwvU9CtcjPA=="}],"outputs":[{"name":"score","histogram":{"edges":[0.0,0.25,0.5,0.75,1.0],"counts":[900,200,60,40],"underflow":0,"overflow":0,"nan":0},"moments":{"count":1200,"mean":0.18,"m2":48.0,"min":0.0,"max":0.99}}],"classifier":{"class_counts":[1100,100],"confidence":{"edges":[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0],"counts":[0,0,0,0,0,30,70,100,300,700],"underflow":0,"overflow":0,"nan":0}}}"#
        ]],
    );
}

#[test]
fn event_on_the_wire() {
    check_wire(
        &sample_event(),
        expect![[
            r#"{"v":1,"device":"pump-17","seq":981,"ts_ms":1717171260000,"kind":"rejected","outcome":"refused","rollout_id":"r-2024-06-01-vibration","plan_seq":43,"bundle_digest":"sha256:90fbcfb4765170b18088a42b87a7832746621dc44df08354ef1a70dfb3e8a698","code":"too_few_signatures","message":"rollout plan 43 refused: too few distinct approver signatures: 1 valid of 2 required","details":{"required":2,"valid":1}}"#
        ]],
    );
    let minimal = Event {
        v: ProtocolVersion,
        device: device(),
        seq: 982,
        ts_ms: TS_MS,
        kind: EventKind::Downloading,
        outcome: Outcome::Ok,
        rollout_id: None,
        plan_seq: None,
        bundle_digest: None,
        code: None,
        message: String::new(),
        details: None,
    };
    check_wire(
        &minimal,
        expect![[
            r#"{"v":1,"device":"pump-17","seq":982,"ts_ms":1717171260000,"kind":"downloading","outcome":"ok","message":""}"#
        ]],
    );
}

#[test]
fn event_kinds_are_snake_case() {
    for kind in EventKind::ALL {
        let json = serde_json::to_string(&kind).expect("serialize");
        assert_eq!(json, format!("\"{}\"", kind.as_str()));
        assert_eq!(serde_json::from_str::<EventKind>(&json).expect("deserialize"), kind);
    }
}

#[test]
fn assign_on_the_wire() {
    check_wire(
        &sample_assign(),
        expect![[
            r#"{"v":1,"plan":{"payloadType":"application/vnd.outpost.rollout-plan+json","payload":"eyJ2IjoxLCJyb2xsb3V0Ijoici0yMDI0LTA2LTAxLXZpYnJhdGlvbiIsInNlcSI6NDN9","signatures":[{"keyid":"ed25519:4f1c2a9be0d34d7c8e55a1f0b2c3d4e5","sig":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBw=="}]},"admission":{"rollout_id":"r-2024-06-01-vibration","wave":1,"admitted_at_ms":1717171260000,"action":"install"}}"#
        ]],
    );
}

#[test]
fn fetch_on_the_wire() {
    check_wire(
        &sample_fetch(),
        expect![[
            r#"{"v":1,"request_id":"f-0007","digest":"sha256:90fbcfb4765170b18088a42b87a7832746621dc44df08354ef1a70dfb3e8a698","offset":262144,"max_len":262144}"#
        ]],
    );
}

#[test]
fn chunk_frames_on_the_wire() {
    fn render(bytes: &[u8]) -> String {
        let (prefix, rest) = bytes.split_at(4);
        let length = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
        let (header, data) = rest.split_at(length);
        format!(
            "prefix {}\nheader {}\ndata   {}",
            hex::encode(prefix),
            std::str::from_utf8(header).expect("UTF-8 header"),
            hex::encode(data)
        )
    }
    let chunk = ChunkReply::Chunk(sample_chunk());
    let bytes = chunk.encode().expect("encode");
    expect![[r#"
        prefix 000000f8
        header {"v":1,"request_id":"f-0007","digest":"sha256:90fbcfb4765170b18088a42b87a7832746621dc44df08354ef1a70dfb3e8a698","offset":262144,"total_size":262149,"data_sha256":"sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824","last":true}
        data   68656c6c6f"#]].assert_eq(&render(&bytes));
    assert_eq!(ChunkReply::decode(&bytes), Ok(chunk));

    let error = ChunkReply::Error(sample_fetch_error());
    let bytes = error.encode().expect("encode");
    expect![[r#"
        prefix 000000cd
        header {"v":1,"request_id":"f-0007","digest":"sha256:90fbcfb4765170b18088a42b87a7832746621dc44df08354ef1a70dfb3e8a698","code":"unknown_digest","message":"no artifact with this digest is available to this device"}
        data   "#]].assert_eq(&render(&bytes));
    assert_eq!(ChunkReply::decode(&bytes), Ok(error));
}

#[test]
fn message_types_are_unique_and_cover_the_channels() {
    let mut names = MESSAGE_TYPES.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), MESSAGE_TYPES.len());
    for channel in Channel::ALL {
        let payload = channel.payload_type();
        assert!(
            MESSAGE_TYPES.contains(&payload) || payload == "ChunkFrame",
            "{channel} carries {payload}, which is not in MESSAGE_TYPES"
        );
    }
}

fn refusal<T: WireMessage + std::fmt::Debug>(payload: &[u8]) -> String {
    let error = decode::<T>(payload).expect_err("refused payload accepted");
    format!("{}: {error}", error.code())
}

#[test]
fn hostile_payloads_are_refused_before_use() {
    let long_field = format!(r#"{{"v":1,"state":"online","{}":1}}"#, "x".repeat(10_000));
    let mut refusals = vec![
        refusal::<State>(b""),
        refusal::<State>(br#"{"v":2,"state":"online","future":true}"#),
        refusal::<State>(br#"{"v":"1","state":"online"}"#),
        refusal::<State>(br#"{"state":"online"}"#),
        refusal::<State>(br#"{"v":1,"state":"online","extra":1}"#),
        refusal::<State>(br#"{"v":1,"state":"asleep"}"#),
        refusal::<State>(br#"[1,"online"]"#),
        refusal::<State>(b"{\"v\":1,"),
        refusal::<State>(&vec![b' '; MAX_JSON_PAYLOAD_BYTES + 1]),
        refusal::<State>(long_field.as_bytes()),
    ];

    let mut hello = sample_hello();
    hello.tags.insert("site".into(), "new york".into());
    refusals.push(refusal::<Hello>(&serde_json::to_vec(&hello).expect("serialize")));
    let mut hello = sample_hello();
    hello.active_model = Some(model("9.9.9"));
    refusals.push(refusal::<Hello>(&serde_json::to_vec(&hello).expect("serialize")));
    let hello = serde_json::to_string(&sample_hello()).expect("serialize");
    refusals.push(refusal::<Hello>(hello.replace("pump-17", "pump/17").as_bytes()));
    refusals.push(refusal::<Hello>(hello.replace("sha256:", "md5:").as_bytes()));

    let mut fetch = sample_fetch();
    fetch.max_len = MAX_CHUNK_BYTES as u32 + 1;
    refusals.push(refusal::<FetchRequest>(&serde_json::to_vec(&fetch).expect("serialize")));
    let mut event = sample_event();
    event.message = "x".repeat(MAX_MESSAGE_BYTES + 1);
    refusals.push(refusal::<Event>(&serde_json::to_vec(&event).expect("serialize")));
    expect![[r#"
        empty_payload: empty payload where State was expected
        unsupported_version: unsupported protocol version 2 in State: this build speaks version 1
        unsupported_version: unsupported protocol version "1" in State: this build speaks version 1
        missing_version: State has no protocol version field `v`
        malformed: malformed State: unknown field `extra`, expected one of `v`, `state`, `ts_ms` at line 1 column 31
        malformed: malformed State: unknown variant `asleep`, expected `online` or `offline` at line 1 column 23
        malformed: malformed State: expected a JSON object
        malformed: malformed State: EOF while parsing a value at line 1 column 7
        oversized: oversized State: 1048577 bytes exceeds the limit of 1048576
        malformed: malformed State: unknown field `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…
        invalid: invalid tags in Hello: `new york`: tag keys and values are 1-64 characters of A-Z a-z 0-9 . _ - / :
        invalid: invalid active_model in Hello: must be the model in the active slot
        malformed: malformed Hello: device id contains '/' at position 4; only A-Z a-z 0-9 . _ - are allowed at line 1 column 25
        malformed: malformed Hello: `md5:4124f92e0dae8190269adf2099982d5f0cee29284afef35a29b8bf3350e1cded` is not a digest: expected `sha256:` followed by 64 lowercase hex digits at line 1 column 261
        invalid: invalid max_len in FetchRequest: 262145 is outside 1..=262144
        invalid: invalid message in Event: 4097 bytes, the limit is 4096"#]].assert_eq(&refusals.join("\n"));
}

#[test]
fn encode_refuses_what_decode_would_refuse() {
    let mut window = sample_stats_window();
    window.latency.moments.mean = f64::NAN;
    assert_eq!(encode(&window).map_err(|e| e.code()), Err("invalid_stats"));
}

fn topic(channel: Channel) -> String {
    Topic::new(device(), channel).to_string()
}

#[test]
fn control_side_dispatch() {
    let hello = encode(&sample_hello()).expect("encode");
    assert_eq!(
        FromDevice::decode(&topic(Channel::Hello), &hello),
        Ok((device(), FromDevice::Hello(sample_hello())))
    );
    assert_eq!(
        FromDevice::decode(&topic(Channel::State), LAST_WILL_PAYLOAD),
        Ok((
            device(),
            FromDevice::State(State { v: ProtocolVersion, state: Presence::Offline, ts_ms: None })
        ))
    );
    assert_eq!(
        FromDevice::decode(&topic(Channel::Hello), b""),
        Ok((device(), FromDevice::Cleared(Channel::Hello)))
    );

    let refusals = [
        FromDevice::decode("outpost/v1/pump-18/hello", &hello),
        FromDevice::decode(&topic(Channel::Stats), &hello),
        FromDevice::decode(&topic(Channel::Stats), b""),
        FromDevice::decode(&topic(Channel::Assign), &hello),
        FromDevice::decode("outpost/v1/+/hello", &hello),
    ];
    let rendered: Vec<String> = refusals
        .iter()
        .map(|r| r.as_ref().map(|_| "accepted".to_string()).unwrap_or_else(|e| e.to_string()))
        .collect();
    expect![[r#"
        payload names device pump-17 but arrived on the topic of device pump-18
        malformed StatsWindow: unknown field `agent_version`, expected one of `v`, `device`, `model`, `seq`, `start_ms`, `end_ms`, `count`, `errors`, `latency`, `inputs`, `outputs`, `classifier` at line 1 column 41
        empty payload where StatsWindow was expected
        assign carries control → device messages and is not read here
        topic `outpost/v1/+/hello` names an invalid device: device id contains '+' at position 0; only A-Z a-z 0-9 . _ - are allowed"#]].assert_eq(&rendered.join("\n"));
}

#[test]
fn device_side_dispatch() {
    let assign = encode(&sample_assign()).expect("encode");
    assert_eq!(
        ToDevice::decode(&device(), &topic(Channel::Assign), &assign),
        Ok(ToDevice::Assign(sample_assign()))
    );
    assert_eq!(
        ToDevice::decode(&device(), &topic(Channel::Assign), b""),
        Ok(ToDevice::AssignCleared)
    );
    let chunk = sample_chunk();
    assert_eq!(
        ToDevice::decode(&device(), &topic(Channel::Chunk), &chunk.encode().expect("encode")),
        Ok(ToDevice::Chunk(ChunkReply::Chunk(chunk)))
    );
    let other = DeviceId::new("pump-18").expect("valid id");
    let refusals = [
        ToDevice::decode(&other, &topic(Channel::Assign), &assign),
        ToDevice::decode(&device(), &topic(Channel::Hello), &assign),
        ToDevice::decode(&device(), &topic(Channel::Chunk), &assign),
    ];
    let rendered: Vec<String> = refusals
        .iter()
        .map(|r| {
            r.as_ref()
                .map(|_| "accepted".to_string())
                .unwrap_or_else(|e| format!("{}: {e}", e.code()))
        })
        .collect();
    expect![[r#"
        not_addressed_to_this_device: message addressed to device pump-17 arrived at device pump-18
        wrong_direction: hello carries device → control messages and is not read here
        oversized: oversized chunk header: 2065856034 bytes exceeds the limit of 4096"#]]
    .assert_eq(&rendered.join("\n"));
}

#[test]
fn publications_carry_channel_qos_and_retain() {
    let hello = Publish::message(&device(), &sample_hello()).expect("publish");
    assert_eq!(
        (hello.topic.as_str(), hello.qos, hello.retain),
        ("outpost/v1/pump-17/hello", QoS::AtLeastOnce, true)
    );
    let stats = Publish::message(&device(), &sample_stats_window()).expect("publish");
    assert_eq!((stats.topic.as_str(), stats.retain), ("outpost/v1/pump-17/stats", false));
    let will = Publish::last_will(&device());
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice(), will.retain),
        ("outpost/v1/pump-17/state", LAST_WILL_PAYLOAD, true)
    );
    let clear = Publish::clear_retained(&device(), Channel::Assign).expect("retained channel");
    assert!(clear.payload.is_empty() && clear.retain);
    assert!(Publish::clear_retained(&device(), Channel::Stats).is_err());
    let other = DeviceId::new("pump-18").expect("valid id");
    assert_eq!(
        Publish::message(&other, &sample_hello()).map_err(|e| e.code()),
        Err("device_mismatch")
    );
}

proptest::proptest! {
    /// Floats survive the wire bit for bit (`serde_json`'s `float_roundtrip`), so windows that
    /// carry bin edges merge exactly after a JSON round trip.
    #[test]
    fn floats_survive_the_wire_exactly(value in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
        let text = serde_json::to_string(&value).expect("serialize");
        let back: f64 = serde_json::from_str(&text).expect("parse");
        proptest::prop_assert_eq!(back.to_bits(), value.to_bits());
    }
}
