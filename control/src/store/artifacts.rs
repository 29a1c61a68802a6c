//! Reading byte ranges of stored bundles for artifact serving: only the chunk rows that cover
//! the range are read, and each is checked against its own digest before a byte of it is used.

use sqlx::Row as _;

use super::{Store, StoreError, to_i64, to_u64};

/// The size of a stored artifact and the bytes of one range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRange {
    pub total_size: u64,
    pub offset: u64,
    pub data: Vec<u8>,
}

/// Why a range cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRefusal {
    UnknownDigest,
    OffsetOutOfRange { total_size: u64 },
}

impl Store {
    /// Bytes `offset .. offset + max_len` (fewer at the end) of the bundle `digest`.
    pub async fn artifact_range(
        &self,
        digest: &str,
        offset: u64,
        max_len: u64,
    ) -> Result<Result<ArtifactRange, RangeRefusal>, StoreError> {
        let row = sqlx::query("SELECT size, chunk_bytes FROM bundles WHERE digest = $1")
            .bind(digest.to_string())
            .fetch_optional(self.pool())
            .await?;
        let Some(row) = row else {
            return Ok(Err(RangeRefusal::UnknownDigest));
        };
        let what = format!("bundle {digest}");
        let total_size = to_u64(row.try_get("size")?, &what)?;
        let chunk_bytes = to_u64(row.try_get("chunk_bytes")?, &what)?;
        if offset > total_size {
            return Ok(Err(RangeRefusal::OffsetOutOfRange { total_size }));
        }
        let end = offset.saturating_add(max_len).min(total_size);
        if end == offset || chunk_bytes == 0 {
            return Ok(Ok(ArtifactRange { total_size, offset, data: Vec::new() }));
        }
        let first = offset / chunk_bytes;
        let last = (end - 1) / chunk_bytes;
        let rows = sqlx::query(
            "SELECT idx, data_sha256, data FROM chunks WHERE digest = $1 AND idx >= $2 \
             AND idx <= $3 ORDER BY idx",
        )
        .bind(digest.to_string())
        .bind(to_i64(first, "chunk index")?)
        .bind(to_i64(last, "chunk index")?)
        .fetch_all(self.pool())
        .await?;
        let corrupt = |reason: String| StoreError::Corrupt { what: what.clone(), reason };
        if rows.len() as u64 != last - first + 1 {
            return Err(corrupt(format!(
                "chunks {first}..={last} are needed but {} are stored",
                rows.len()
            )));
        }
        let mut data = Vec::with_capacity((end - offset) as usize);
        for (position, row) in rows.iter().enumerate() {
            let index = to_u64(row.try_get("idx")?, &what)?;
            if index != first + position as u64 {
                return Err(corrupt(format!("chunk {} is missing", first + position as u64)));
            }
            let bytes: Vec<u8> = row.try_get("data")?;
            let expected: String = row.try_get("data_sha256")?;
            if outpost_shared::sha256_digest(&bytes) != expected {
                return Err(corrupt(format!("chunk {index} does not match its digest")));
            }
            let chunk_start = index * chunk_bytes;
            let from = offset.max(chunk_start) - chunk_start;
            let to = end.min(chunk_start + bytes.len() as u64) - chunk_start;
            let slice = bytes
                .get(from as usize..to as usize)
                .ok_or_else(|| corrupt(format!("chunk {index} is shorter than its place")))?;
            data.extend_from_slice(slice);
        }
        if data.len() as u64 != end - offset {
            return Err(corrupt("the chunks do not cover the range".into()));
        }
        Ok(Ok(ArtifactRange { total_size, offset, data }))
    }
}
