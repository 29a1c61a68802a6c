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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::StoreOptions;

    /// A bundle row of `bytes` stored in chunks of `chunk_bytes`, written directly.
    async fn store_with(bytes: &[u8], chunk_bytes: usize) -> (Store, String) {
        let store = Store::connect(&StoreOptions {
            url: "sqlite::memory:".into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(10),
        })
        .await
        .expect("store");
        let digest = outpost_shared::sha256_digest(bytes);
        sqlx::query(
            "INSERT INTO bundles (digest, name, version, size, chunk_bytes, chunk_count, task, \
             manifest_json, signers_json, profile_json, profile_summary_json, \
             manifest_created_ms, pushed_ms, pushed_by) \
             VALUES ($1, 'm', '1', $2, $3, $4, 'other', '{}', '[]', '{}', '{}', 0, 0, 'test')",
        )
        .bind(digest.clone())
        .bind(bytes.len() as i64)
        .bind(chunk_bytes as i64)
        .bind(bytes.len().div_ceil(chunk_bytes) as i64)
        .execute(store.pool())
        .await
        .expect("bundle row");
        for (index, chunk) in bytes.chunks(chunk_bytes).enumerate() {
            sqlx::query(
                "INSERT INTO chunks (digest, idx, data_sha256, data) VALUES ($1, $2, $3, $4)",
            )
            .bind(digest.clone())
            .bind(index as i64)
            .bind(outpost_shared::sha256_digest(chunk))
            .bind(chunk.to_vec())
            .execute(store.pool())
            .await
            .expect("chunk row");
        }
        (store, digest)
    }

    #[tokio::test]
    async fn ranges_straddle_chunk_rows_and_refusals_are_typed() {
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let (store, digest) = store_with(&bytes, 64).await;
        // (offset, max_len) → expected slice, as data.
        let cases: &[(u64, u64)] =
            &[(0, 64), (0, 65), (60, 10), (63, 130), (100, 900), (990, 100), (999, 1), (1000, 5)];
        for &(offset, max_len) in cases {
            let range = store
                .artifact_range(&digest, offset, max_len)
                .await
                .expect("query")
                .expect("served");
            let end = (offset + max_len).min(1000) as usize;
            assert_eq!(range.data, bytes[offset as usize..end], "{offset} + {max_len}");
            assert_eq!(range.total_size, 1000);
        }
        assert_eq!(
            store.artifact_range(&digest, 1001, 1).await.expect("query"),
            Err(RangeRefusal::OffsetOutOfRange { total_size: 1000 })
        );
        assert_eq!(
            store.artifact_range("sha256:00", 0, 1).await.expect("query"),
            Err(RangeRefusal::UnknownDigest)
        );
        // A damaged row is detected, not served.
        sqlx::query("UPDATE chunks SET data = $1 WHERE idx = 2")
            .bind(vec![0u8; 64])
            .execute(store.pool())
            .await
            .expect("damage");
        assert!(matches!(
            store.artifact_range(&digest, 120, 20).await,
            Err(StoreError::Corrupt { .. })
        ));
        assert!(store.artifact_range(&digest, 0, 64).await.expect("query").is_ok());
    }
}
