//! Resumable, content-addressed artifact transfer: the device asks for a byte range of an
//! artifact by digest ([`FetchRequest`] on `fetch`), the control answers on `chunk` with a
//! binary [`ChunkFrame`] or a [`FetchError`].
//!
//! A chunk frame is `header length (4 bytes, big-endian u32) | header (compact JSON) | data`.
//! Decoding refuses a header over [`MAX_CHUNK_HEADER_BYTES`], data over [`MAX_CHUNK_BYTES`],
//! lengths that do not add up and data whose SHA-256 is not the header's `data_sha256`, before
//! any of it reaches the caller; it never panics, whatever the bytes.

use std::fmt;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::fields::{bounded, check_id, check_text, invalid, parse_failure};
use super::{
    Channel, Digest, ProtocolVersion, TopicMessage, WireError, WireMessage, check_version,
    parse_json,
};

/// Largest data part of one chunk: 256 KiB.
pub const MAX_CHUNK_BYTES: usize = 256 * 1024;
/// Largest JSON header of a chunk frame: 4 KiB.
pub const MAX_CHUNK_HEADER_BYTES: usize = 4 * 1024;
/// Longest message of a [`FetchError`], so an error frame always fits its header limit.
pub const MAX_FETCH_ERROR_MESSAGE_BYTES: usize = 1024;
/// Size of the header length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// `outpost/v1/<dev>/fetch`: the device asks for bytes `offset .. offset + max_len` (or fewer, at
/// the end) of the artifact with `digest`. Resuming after a restart is asking again from the
/// first byte not yet on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub v: ProtocolVersion,
    /// Chosen by the device, echoed in the reply so it can drop stale answers.
    pub request_id: String,
    pub digest: Digest,
    pub offset: u64,
    /// At most [`MAX_CHUNK_BYTES`].
    pub max_len: u32,
}

impl WireMessage for FetchRequest {
    const NAME: &'static str = "FetchRequest";

    fn validate(&self) -> Result<(), WireError> {
        check_id(Self::NAME, "request_id", &self.request_id)?;
        if self.max_len == 0 || self.max_len as usize > MAX_CHUNK_BYTES {
            return Err(invalid(
                Self::NAME,
                "max_len",
                format!("{} is outside 1..={MAX_CHUNK_BYTES}", self.max_len),
            ));
        }
        Ok(())
    }
}

impl TopicMessage for FetchRequest {
    const CHANNEL: Channel = Channel::Fetch;
}

/// The JSON header of a [`ChunkFrame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    pub v: ProtocolVersion,
    pub request_id: String,
    /// Digest of the whole artifact.
    pub digest: Digest,
    /// Position of the first data byte in the artifact.
    pub offset: u64,
    /// Size of the whole artifact.
    pub total_size: u64,
    /// Digest of this chunk's data.
    pub data_sha256: Digest,
    /// True exactly when the data ends the artifact.
    pub last: bool,
}

impl WireMessage for ChunkHeader {
    const NAME: &'static str = "ChunkHeader";

    fn validate(&self) -> Result<(), WireError> {
        check_id(Self::NAME, "request_id", &self.request_id)
    }
}

/// Why the control does not serve a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FetchErrorCode {
    /// No artifact with this digest, or none this device may fetch (the two are not told apart).
    UnknownDigest,
    /// The offset is beyond the artifact's end.
    OffsetOutOfRange,
    /// The request was refused as malformed (the message says why).
    BadRequest,
    /// Temporarily unable to serve; ask again later.
    Unavailable,
}

impl FetchErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchErrorCode::UnknownDigest => "unknown_digest",
            FetchErrorCode::OffsetOutOfRange => "offset_out_of_range",
            FetchErrorCode::BadRequest => "bad_request",
            FetchErrorCode::Unavailable => "unavailable",
        }
    }
}

/// The header of an error frame on `chunk`: the control's answer when it cannot serve a
/// [`FetchRequest`], so the device can stop or retry instead of waiting for a timeout. An error
/// frame has no data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchError {
    pub v: ProtocolVersion,
    pub request_id: String,
    pub digest: Digest,
    pub code: FetchErrorCode,
    pub message: String,
}

impl WireMessage for FetchError {
    const NAME: &'static str = "FetchError";

    fn validate(&self) -> Result<(), WireError> {
        check_id(Self::NAME, "request_id", &self.request_id)?;
        check_text(Self::NAME, "message", &self.message, MAX_FETCH_ERROR_MESSAGE_BYTES, true)
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {} (request {}): {}",
            self.code.as_str(),
            self.digest,
            bounded(&self.request_id),
            bounded(&self.message)
        )
    }
}

/// One chunk of artifact data with the header that places and checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFrame {
    pub header: ChunkHeader,
    pub data: Vec<u8>,
}

impl ChunkFrame {
    /// The chunk of the artifact `digest` (of `total_size` bytes) that starts at `offset`,
    /// with `data_sha256` and `last` computed from `data`.
    pub fn new(
        request_id: impl Into<String>,
        digest: Digest,
        offset: u64,
        total_size: u64,
        data: Vec<u8>,
    ) -> Result<Self, WireError> {
        let end = offset.checked_add(data.len() as u64);
        let header = ChunkHeader {
            v: ProtocolVersion,
            request_id: request_id.into(),
            digest,
            offset,
            total_size,
            data_sha256: Digest::of(&data),
            last: end == Some(total_size),
        };
        let frame = ChunkFrame { header, data };
        frame.header.validate()?;
        frame.check()?;
        Ok(frame)
    }

    /// Position just after the last data byte.
    pub fn end(&self) -> u64 {
        self.header.offset.saturating_add(self.data.len() as u64)
    }

    /// The frame bytes: length prefix, compact JSON header, data.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        self.header.validate()?;
        self.check()?;
        frame_bytes(&self.header, &self.data)
    }

    /// Reads a data frame. An error frame becomes [`WireError::FetchRefused`]; use
    /// [`ChunkReply::decode`] to handle both as values.
    pub fn decode(bytes: &[u8]) -> Result<ChunkFrame, WireError> {
        match ChunkReply::decode(bytes)? {
            ChunkReply::Chunk(frame) => Ok(frame),
            ChunkReply::Error(error) => Err(WireError::FetchRefused(error)),
        }
    }

    /// The checks that relate header and data.
    fn check(&self) -> Result<(), WireError> {
        let header = &self.header;
        let length = self.data.len() as u64;
        if self.data.len() > MAX_CHUNK_BYTES {
            return Err(WireError::Oversized {
                what: "chunk data",
                limit: MAX_CHUNK_BYTES as u64,
                actual: length,
            });
        }
        let inconsistent = |reason| WireError::InconsistentChunk {
            offset: header.offset,
            length,
            total_size: header.total_size,
            last: header.last,
            reason,
        };
        let end =
            header.offset.checked_add(length).ok_or_else(|| inconsistent("the end overflows"))?;
        if end > header.total_size {
            return Err(inconsistent("the data runs past the end of the artifact"));
        }
        if header.last != (end == header.total_size) {
            return Err(inconsistent(
                "`last` must be true exactly when the data ends the artifact",
            ));
        }
        if length == 0 && !header.last {
            // Otherwise a peer could keep a transfer going forever without progress.
            return Err(inconsistent("only the last chunk may be empty"));
        }
        let actual = Digest::of(&self.data);
        if actual != header.data_sha256 {
            return Err(WireError::ChunkDigestMismatch {
                expected: header.data_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }
}

/// What arrives on `outpost/v1/<dev>/chunk`: a data frame or an error frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkReply {
    Chunk(ChunkFrame),
    Error(FetchError),
}

impl ChunkReply {
    pub fn request_id(&self) -> &str {
        match self {
            ChunkReply::Chunk(frame) => &frame.header.request_id,
            ChunkReply::Error(error) => &error.request_id,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        match self {
            ChunkReply::Chunk(frame) => frame.encode(),
            ChunkReply::Error(error) => {
                error.validate()?;
                frame_bytes(error, &[])
            }
        }
    }

    /// Reads a frame. Error frames are told apart by their header's `code` field.
    pub fn decode(bytes: &[u8]) -> Result<ChunkReply, WireError> {
        let Some((prefix, rest)) = bytes.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Err(WireError::Truncated {
                needed: LENGTH_PREFIX_BYTES as u64,
                actual: bytes.len() as u64,
            });
        };
        let header_length = u32::from_be_bytes(*prefix) as usize;
        if header_length > MAX_CHUNK_HEADER_BYTES {
            return Err(WireError::Oversized {
                what: "chunk header",
                limit: MAX_CHUNK_HEADER_BYTES as u64,
                actual: header_length as u64,
            });
        }
        if rest.len() < header_length {
            return Err(WireError::Truncated {
                needed: (LENGTH_PREFIX_BYTES + header_length) as u64,
                actual: bytes.len() as u64,
            });
        }
        let (header, data) = rest.split_at(header_length);
        if data.len() > MAX_CHUNK_BYTES {
            return Err(WireError::Oversized {
                what: "chunk data",
                limit: MAX_CHUNK_BYTES as u64,
                actual: data.len() as u64,
            });
        }
        check_version(header, "chunk header")?;
        if is_error_header(header)? {
            let error: FetchError = parse_json(header, MAX_CHUNK_HEADER_BYTES)?;
            if !data.is_empty() {
                return Err(invalid(FetchError::NAME, "data", "an error frame carries no data"));
            }
            return Ok(ChunkReply::Error(error));
        }
        let header: ChunkHeader = parse_json(header, MAX_CHUNK_HEADER_BYTES)?;
        let frame = ChunkFrame { header, data: data.to_vec() };
        frame.check()?;
        Ok(ChunkReply::Chunk(frame))
    }
}

/// Whether a chunk header is a [`FetchError`] (it has a `code` field).
fn is_error_header(header: &[u8]) -> Result<bool, WireError> {
    #[derive(Deserialize)]
    struct Probe {
        code: Option<IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(header)
        .map_err(|e| WireError::Malformed { what: "chunk header", reason: parse_failure(e) })?;
    Ok(probe.code.is_some())
}

fn frame_bytes(header: &impl Serialize, data: &[u8]) -> Result<Vec<u8>, WireError> {
    let header =
        serde_json::to_vec(header).map_err(|e| WireError::Encode { reason: parse_failure(e) })?;
    let oversized = || WireError::Oversized {
        what: "chunk header",
        limit: MAX_CHUNK_HEADER_BYTES as u64,
        actual: header.len() as u64,
    };
    if header.len() > MAX_CHUNK_HEADER_BYTES {
        return Err(oversized());
    }
    let prefix = u32::try_from(header.len()).map_err(|_| oversized())?;
    let mut bytes = Vec::with_capacity(LENGTH_PREFIX_BYTES + header.len() + data.len());
    bytes.extend_from_slice(&prefix.to_be_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(data);
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn artifact_digest() -> Digest {
        Digest::of(b"the whole artifact")
    }

    fn frame(offset: u64, total_size: u64, data: &[u8]) -> ChunkFrame {
        ChunkFrame::new("r1", artifact_digest(), offset, total_size, data.to_vec())
            .expect("valid frame")
    }

    #[test]
    fn frames_round_trip_and_set_last() {
        let middle = frame(0, 10, b"hello");
        assert!(!middle.header.last);
        let end = frame(5, 10, b"world");
        assert!(end.header.last);
        for f in [middle, end, frame(0, 0, b"")] {
            let bytes = f.encode().expect("encode");
            assert_eq!(ChunkFrame::decode(&bytes), Ok(f));
        }
    }

    #[test]
    fn error_frames_round_trip() {
        let error = FetchError {
            v: ProtocolVersion,
            request_id: "r1".into(),
            digest: artifact_digest(),
            code: FetchErrorCode::UnknownDigest,
            message: "no such artifact".into(),
        };
        let bytes = ChunkReply::Error(error.clone()).encode().expect("encode");
        assert_eq!(ChunkReply::decode(&bytes), Ok(ChunkReply::Error(error.clone())));
        assert_eq!(ChunkFrame::decode(&bytes), Err(WireError::FetchRefused(error)));
        let mut with_data = bytes.clone();
        with_data.push(0);
        assert_eq!(ChunkReply::decode(&with_data).map_err(|e| e.code()), Err("invalid"));
    }

    fn raw_frame(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn header_json(offset: u64, total_size: u64, data: &[u8], last: bool) -> String {
        serde_json::to_string(&ChunkHeader {
            v: ProtocolVersion,
            request_id: "r1".into(),
            digest: artifact_digest(),
            offset,
            total_size,
            data_sha256: Digest::of(data),
            last,
        })
        .expect("serialize")
    }

    fn check_refused(bytes: &[u8], expected: &str) {
        let error = ChunkReply::decode(bytes).expect_err("bad frame accepted");
        assert_eq!(error.to_string(), expected);
    }

    #[test]
    fn bad_frames_are_refused_with_the_reason() {
        check_refused(b"", "truncated chunk frame: 4 bytes needed, 0 present");
        check_refused(&[0, 0, 1], "truncated chunk frame: 4 bytes needed, 3 present");
        check_refused(&[0, 0, 0, 10, b'{'], "truncated chunk frame: 14 bytes needed, 5 present");
        check_refused(
            &[0, 0, 0x10, 0x01],
            "oversized chunk header: 4097 bytes exceeds the limit of 4096",
        );
        check_refused(
            &[0xff, 0xff, 0xff, 0xff],
            "oversized chunk header: 4294967295 bytes exceeds the limit of 4096",
        );
        let big = vec![0u8; MAX_CHUNK_BYTES + 1];
        check_refused(
            &raw_frame(&header_json(0, big.len() as u64, &big, true), &big),
            "oversized chunk data: 262145 bytes exceeds the limit of 262144",
        );
        check_refused(&raw_frame("", b""), "malformed chunk header: expected a JSON object");
        check_refused(&raw_frame("[1]", b""), "malformed chunk header: expected a JSON object");
        check_refused(&raw_frame("{}", b""), "chunk header has no protocol version field `v`");
        check_refused(
            &raw_frame(r#"{"v":2}"#, b""),
            "unsupported protocol version 2 in chunk header: this build speaks version 1",
        );
        check_refused(
            &raw_frame(&header_json(0, 10, b"hello", true), b"hello"),
            "chunk at offset 0 with 5 bytes of an artifact of 10 bytes (last: true) does not add up: `last` must be true exactly when the data ends the artifact",
        );
        check_refused(
            &raw_frame(&header_json(8, 10, b"hello", false), b"hello"),
            "chunk at offset 8 with 5 bytes of an artifact of 10 bytes (last: false) does not add up: the data runs past the end of the artifact",
        );
        check_refused(
            &raw_frame(&header_json(u64::MAX, u64::MAX, b"hello", false), b"hello"),
            "chunk at offset 18446744073709551615 with 5 bytes of an artifact of 18446744073709551615 bytes (last: false) does not add up: the end overflows",
        );
        check_refused(
            &raw_frame(&header_json(0, 10, b"", false), b""),
            "chunk at offset 0 with 0 bytes of an artifact of 10 bytes (last: false) does not add up: only the last chunk may be empty",
        );
        let error = ChunkReply::decode(&raw_frame(&header_json(0, 10, b"hellO", false), b"hello"))
            .expect_err("altered data accepted");
        assert_eq!(error.code(), "chunk_digest_mismatch");
        let unknown_field = header_json(0, 10, b"hello", false).replace("\"last\"", "\"lost\"");
        let error = ChunkReply::decode(&raw_frame(&unknown_field, b"hello"))
            .expect_err("unknown field accepted");
        assert_eq!(error.code(), "malformed");
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ChunkReply::decode(&bytes);
            let _ = ChunkFrame::decode(&bytes);
        }

        #[test]
        fn decode_never_panics_on_plausible_frames(
            header in "\\{(\"[a-z_]{1,12}\":(1|true|null|\"[a-z0-9:]{0,70}\"|[0-9]{1,20}),?){0,8}\\}",
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = ChunkReply::decode(&raw_frame(&header, &data));
        }

        #[test]
        fn altered_frames_are_refused_or_still_consistent(
            data in proptest::collection::vec(any::<u8>(), 1..256),
            position in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let original = frame(0, data.len() as u64 + 1, &data);
            let mut bytes = original.encode().expect("encode");
            let at = position.index(bytes.len());
            bytes[at] ^= flip;
            if let Ok(decoded) = ChunkFrame::decode(&bytes) {
                // A change that still decodes (a digit in the offset, say) yields a frame that is
                // consistent in itself; the device then checks it against its request.
                prop_assert_eq!(ChunkFrame::decode(&decoded.encode().expect("re-encode")), Ok(decoded));
            }
        }

        #[test]
        fn frames_round_trip(
            request_id in "[A-Za-z0-9._-]{1,40}",
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            offset in 0u64..(1 << 40),
            remaining in 0u64..(1 << 40),
        ) {
            let total_size = offset + data.len() as u64 + remaining;
            let data = if data.is_empty() && remaining > 0 { vec![0] } else { data };
            let total_size = total_size.max(offset + data.len() as u64);
            let original = ChunkFrame::new(request_id, artifact_digest(), offset, total_size, data)
                .expect("valid frame");
            let bytes = original.encode().expect("encode");
            prop_assert_eq!(ChunkFrame::decode(&bytes), Ok(original));
        }
    }
}
