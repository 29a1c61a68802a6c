//! Artifact serving (DESIGN §3): a device publishes a [`FetchRequest`] on
//! `outpost/v1/<dev>/fetch`; the answer is one [`ChunkReply`] on `outpost/v1/<dev>/chunk`.
//!
//! Stateless: every request names the digest and the offset, and the answer is read from the
//! `chunks` table, so any control instance can answer any request and a device resumes after a
//! restart by asking from the first byte it does not have. The data of one answer is at most
//! the request's `max_len`, which the wire layer bounds to [`MAX_CHUNK_BYTES`]. An unknown
//! digest or an offset past the end is answered with a [`FetchError`], so the device stops
//! instead of waiting for a timeout; a database failure is answered `unavailable` (retry).

use outpost_shared::wire::{
    ChunkFrame, ChunkReply, DeviceId, FetchError, FetchErrorCode, FetchRequest, MAX_CHUNK_BYTES,
    ProtocolVersion, Publish, WireError,
};

use crate::store::Store;
use crate::store::artifacts::RangeRefusal;

/// The answer to `request`, ready to publish to `device`.
pub async fn answer(
    store: &Store,
    device: &DeviceId,
    request: &FetchRequest,
) -> Result<Publish, WireError> {
    Publish::chunk(device, &reply(store, request).await)
}

/// The chunk or the error that answers `request`.
pub async fn reply(store: &Store, request: &FetchRequest) -> ChunkReply {
    let max_len = u64::from(request.max_len).min(MAX_CHUNK_BYTES as u64);
    let error = |code: FetchErrorCode, message: String| {
        ChunkReply::Error(FetchError {
            v: ProtocolVersion,
            request_id: request.request_id.clone(),
            digest: request.digest.clone(),
            code,
            message,
        })
    };
    match store.artifact_range(request.digest.as_str(), request.offset, max_len).await {
        Ok(Ok(range)) => {
            match ChunkFrame::new(
                request.request_id.clone(),
                request.digest.clone(),
                range.offset,
                range.total_size,
                range.data,
            ) {
                Ok(frame) => ChunkReply::Chunk(frame),
                Err(failure) => {
                    tracing::error!(error = %failure, digest = %request.digest, "cannot frame a chunk");
                    error(FetchErrorCode::Unavailable, "the control cannot serve this chunk".into())
                }
            }
        }
        Ok(Err(RangeRefusal::UnknownDigest)) => {
            error(FetchErrorCode::UnknownDigest, "no artifact with this digest".into())
        }
        Ok(Err(RangeRefusal::OffsetOutOfRange { total_size })) => error(
            FetchErrorCode::OffsetOutOfRange,
            format!("offset {} is past the end of the {total_size}-byte artifact", request.offset),
        ),
        Err(failure) => {
            tracing::error!(error = %failure, digest = %request.digest, "cannot read an artifact");
            error(FetchErrorCode::Unavailable, "temporarily unavailable; ask again later".into())
        }
    }
}
