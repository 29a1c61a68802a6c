//! Artifact serving over MQTT: a rumqttc client acting as a device asks for a pushed bundle
//! chunk by chunk on its `fetch` topic and reassembles the exact file (sha256 equal to the
//! digest), resumes from an offset in the middle, and gets a `FetchError` for an unknown digest
//! and for an offset past the end. On SQLite with the embedded broker and on PostgreSQL through
//! Mosquitto.

use std::time::Duration;

use outpost_shared::wire::{
    ChunkFrame, ChunkReply, DeviceId, Digest, FetchErrorCode, FetchRequest, MAX_CHUNK_BYTES,
    ProtocolVersion, Publish, ToDevice,
};
use outpost_tests::broker::TestClient;

use crate::ingest::{device_client, send};
use crate::server::{Backend, Fleet, Site, SiteOptions};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Asks for `max_len` bytes at `offset` and returns the reply.
fn fetch(
    site: &Site,
    device: &mut TestClient,
    id: &DeviceId,
    digest: &Digest,
    offset: u64,
    max_len: u32,
    request_id: &str,
) -> ChunkReply {
    let request = FetchRequest {
        v: ProtocolVersion,
        request_id: request_id.into(),
        digest: digest.clone(),
        offset,
        max_len,
    };
    send(site, device, Publish::message(id, &request).expect("fetch request"));
    let topic = format!("outpost/v1/{id}/chunk");
    let message = site.runtime.block_on(device.expect_on(&topic, TIMEOUT, "a chunk reply"));
    match ToDevice::decode(id, &message.topic, &message.payload).expect("a valid chunk reply") {
        ToDevice::Chunk(reply) => {
            assert_eq!(reply.request_id(), request_id, "the reply echoes the request id");
            reply
        }
        other => panic!("expected a chunk reply, got {other:?}"),
    }
}

fn chunk(reply: ChunkReply) -> ChunkFrame {
    match reply {
        ChunkReply::Chunk(frame) => frame,
        ChunkReply::Error(error) => panic!("expected a chunk, got {error}"),
    }
}

/// Downloads from `offset` to the end in requests of `max_len` bytes.
fn download(
    site: &Site,
    device: &mut TestClient,
    id: &DeviceId,
    digest: &Digest,
    mut offset: u64,
    max_len: u32,
) -> Vec<u8> {
    let mut bytes = Vec::new();
    for request in 0.. {
        let frame = chunk(fetch(site, device, id, digest, offset, max_len, &format!("r{request}")));
        assert_eq!(frame.header.offset, offset);
        assert!(frame.data.len() <= max_len as usize, "bounded by the request");
        bytes.extend_from_slice(&frame.data);
        offset = frame.end();
        if frame.header.last {
            break;
        }
    }
    bytes
}

fn scenario(backend: Backend, mosquitto: bool) {
    let fleet = Fleet::new();
    let site = Site::start(
        backend,
        SiteOptions {
            trust_root: Some(fleet.path("root.json")),
            mosquitto,
            ..SiteOptions::default()
        },
    );
    site.outpost_ok(&["model", "push", &fleet.path_text("good.bundle")]);
    let file = std::fs::read(fleet.path("good.bundle")).expect("bundle");
    let digest = Digest::parse(&outpost_shared::sha256_digest(&file)).expect("digest");
    let id = DeviceId::new("fetcher-1").expect("id");
    let mut device = device_client(&site, "fetch-device");
    site.runtime.block_on(device.subscribe(&["outpost/v1/fetcher-1/chunk"]));

    // A whole download in many small requests (ranges that straddle stored chunk rows are
    // covered by the unit tests of `store::artifacts`).
    let max_len = 1000u32;
    assert!(file.len() > 3 * max_len as usize, "the bundle needs several requests");
    let bytes = download(&site, &mut device, &id, &digest, 0, max_len);
    assert_eq!(bytes.len(), file.len());
    assert_eq!(Digest::of(&bytes), digest, "the reassembled file hashes to the digest");
    assert_eq!(bytes, file, "byte-identical");

    // Resumed from the middle with the largest chunk: the tail, byte for byte.
    let middle = file.len() as u64 / 2 + 7;
    let tail = download(&site, &mut device, &id, &digest, middle, MAX_CHUNK_BYTES as u32);
    assert_eq!(tail, file[middle as usize..]);

    // At the very end: an empty last chunk. Past it, and for an unknown digest: errors.
    let end = chunk(fetch(&site, &mut device, &id, &digest, file.len() as u64, 10, "at-end"));
    assert!(end.header.last && end.data.is_empty());
    match fetch(&site, &mut device, &id, &digest, file.len() as u64 + 1, 10, "past-end") {
        ChunkReply::Error(error) => assert_eq!(error.code, FetchErrorCode::OffsetOutOfRange),
        other => panic!("expected offset_out_of_range, got {other:?}"),
    }
    let unknown = Digest::of(b"nothing stored");
    match fetch(&site, &mut device, &id, &unknown, 0, 10, "unknown") {
        ChunkReply::Error(error) => {
            assert_eq!(error.code, FetchErrorCode::UnknownDigest);
            assert_eq!(error.digest, unknown);
        }
        other => panic!("expected unknown_digest, got {other:?}"),
    }
}

#[test]
fn a_pushed_bundle_downloads_byte_identical_and_resumes_on_sqlite_with_the_embedded_broker() {
    scenario(Backend::Sqlite, false);
}

#[test]
fn a_pushed_bundle_downloads_byte_identical_and_resumes_on_postgres_through_mosquitto() {
    scenario(Backend::Postgres, true);
}
