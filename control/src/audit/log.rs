//! The audit log of a running server: sequencing, signed checkpoints, proofs and exports over
//! the [`Store`], signed with the [`LogKeyCell`] key; and the periodic task of `outpost serve`
//! that keeps sequencing, signs a fresh checkpoint whenever the log grew, and prunes record
//! bodies past the retention period.

use std::sync::Arc;

use tokio::sync::watch;

use super::export::{
    ConsistencyProof, ExportAnswer, ExportFilters, ExportedRecord, Manifest, hex_hashes,
};
use super::key::{LogKeyCell, LogKeyError};
use super::merkle::{self, Hash};
use super::note::{Checkpoint, NoteError};
use crate::config::AuditConfig;
use crate::store::audit::AuditFilter;
use crate::store::{Store, StoreError, now_ms};

/// Most records one export holds.
pub const MAX_EXPORT_RECORDS: u32 = 200_000;

/// Why an audit log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Key(#[from] LogKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("audit log: {0}")]
    Note(#[from] NoteError),
    /// The request is not acceptable (400).
    #[error("{0}")]
    Invalid(String),
    /// The previous checkpoint does not fit this log (409).
    #[error("{0}")]
    Conflict(String),
    /// Too many records for one export (413).
    #[error("{0}")]
    TooLarge(String),
    #[error("audit log damaged: {0}")]
    Damaged(String),
}

/// The log of one server.
#[derive(Debug)]
pub struct AuditLog {
    store: Store,
    key: LogKeyCell,
}

impl AuditLog {
    pub fn new(store: Store, data_dir: &std::path::Path) -> AuditLog {
        AuditLog { store, key: LogKeyCell::new(data_dir) }
    }

    /// The log's verifier key (created with the log key on first use).
    pub async fn vkey(&self) -> Result<String, AuditError> {
        Ok(self.key.get(&self.store).await?.verifier().to_vkey())
    }

    /// Sequences every committed record and returns the signed checkpoint of the tree (the one
    /// stored for this size, or a new one).
    pub async fn checkpoint(&self) -> Result<(Checkpoint, String), AuditError> {
        let signer = self.key.get(&self.store).await?;
        let (size, root) = self.store.sequence_audit_log().await?;
        if let Some((latest, note)) = self.store.latest_audit_checkpoint().await?
            && latest == size
        {
            return Ok((Checkpoint::open(&note, signer.verifier())?, note));
        }
        let checkpoint = Checkpoint { origin: signer.verifier().name().to_string(), size, root };
        let note = signer.sign(&checkpoint.to_text())?;
        self.store.record_audit_checkpoint(size, &root, &note).await?;
        Ok((checkpoint, note))
    }

    /// The hashes of `ranges`, from the stored nodes.
    async fn range_hashes(
        &self,
        ranges: &[Vec<merkle::Range>],
    ) -> Result<Vec<Vec<Hash>>, AuditError> {
        let ids: Vec<merkle::NodeId> =
            ranges.iter().flat_map(|ranges| merkle::nodes_for(ranges)).collect();
        let nodes = self.store.audit_nodes(&ids).await?;
        ranges
            .iter()
            .map(|ranges| {
                ranges
                    .iter()
                    .map(|range| {
                        merkle::range_hash(*range, &nodes).ok_or_else(|| {
                            AuditError::Damaged(format!(
                                "a stored node of leaves {}..{} is missing",
                                range.start, range.end
                            ))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// An export of the records `filters` select, with proofs to a fresh checkpoint, and the
    /// consistency proof from `previous` (a signed checkpoint of this log) when given.
    pub async fn export(
        &self,
        filters: &ExportFilters,
        previous: Option<&str>,
    ) -> Result<ExportAnswer, AuditError> {
        let signer = self.key.get(&self.store).await?;
        let previous_checkpoint = previous
            .map(|note| {
                Checkpoint::open(note, signer.verifier()).map_err(|error| {
                    AuditError::Invalid(format!("the previous checkpoint is refused: {error}"))
                })
            })
            .transpose()?;
        let (checkpoint, note) = self.checkpoint().await?;
        let filter = AuditFilter {
            action: None,
            actor: filters.actor.clone(),
            device: filters.device.clone(),
            model: filters.model.clone(),
            from_ms: filters.from_ms,
            to_ms: filters.to_ms,
        };
        let events = self
            .store
            .audit_events_in_log(&filter, checkpoint.size, MAX_EXPORT_RECORDS + 1)
            .await?;
        if events.len() > MAX_EXPORT_RECORDS as usize {
            return Err(AuditError::TooLarge(format!(
                "more than {MAX_EXPORT_RECORDS} records match: narrow the period or the filters"
            )));
        }
        let mut indices = Vec::with_capacity(events.len());
        for event in &events {
            let index = event.leaf_index.and_then(|index| u64::try_from(index).ok());
            indices.push(index.ok_or_else(|| AuditError::Damaged("a leaf index".into()))?);
        }
        let ranges: Vec<Vec<merkle::Range>> =
            indices.iter().map(|index| merkle::inclusion_ranges(*index, checkpoint.size)).collect();
        let proofs = self.range_hashes(&ranges).await?;
        let mut records = Vec::with_capacity(events.len());
        for ((event, index), proof) in events.iter().zip(&indices).zip(proofs) {
            records.push(ExportedRecord {
                leaf_index: *index,
                record: event.record(),
                inclusion_proof: hex_hashes(&proof),
            });
        }
        let consistency = match &previous_checkpoint {
            None => None,
            Some(old) if old.size > checkpoint.size => {
                return Err(AuditError::Conflict(format!(
                    "the previous checkpoint has {} records but the log has {}: it is not of \
                     this log, or the log was truncated",
                    old.size, checkpoint.size
                )));
            }
            Some(old) => {
                let ranges = vec![merkle::consistency_ranges(old.size, checkpoint.size)];
                let proof = self.range_hashes(&ranges).await?.pop().unwrap_or_default();
                Some(ConsistencyProof {
                    from_size: old.size,
                    to_size: checkpoint.size,
                    proof: hex_hashes(&proof),
                })
            }
        };
        let manifest = Manifest {
            tree_size: checkpoint.size,
            root: checkpoint.root,
            filters: filters.clone(),
            leaves: indices,
        };
        Ok(ExportAnswer {
            checkpoint: note,
            vkey: signer.verifier().to_vkey(),
            manifest: signer.sign(&manifest.to_text())?,
            records,
            previous: previous.map(str::to_string),
            consistency,
        })
    }
}

/// The periodic task of `outpost serve`: a signed checkpoint every
/// `checkpoint_interval` when the log grew (sequencing first), and pruning of record bodies
/// older than the retention period once an hour.
pub async fn run(log: Arc<AuditLog>, config: AuditConfig, mut shutdown: watch::Receiver<bool>) {
    let mut last_prune_ms = 0i64;
    let mut last_error = String::new();
    loop {
        // Sequencing needs no key: an instance that cannot sign still appends records.
        let result = match log.store.sequence_audit_log().await {
            Ok(_) => log.checkpoint().await.map(|_| ()),
            Err(error) => Err(error.into()),
        };
        match result {
            Ok(()) => last_error.clear(),
            Err(error) => {
                // Said once per distinct error, not every interval.
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!(error = %text, "audit log checkpoint failed; retried");
                    last_error = text;
                }
            }
        }
        if let Some(retention_ms) = config.retention_ms
            && now_ms() - last_prune_ms >= 3_600_000
        {
            last_prune_ms = now_ms();
            match log.store.prune_audit_records(now_ms() - retention_ms).await {
                Ok(0) => {}
                Ok(pruned) => tracing::info!(pruned, "audit record bodies past retention pruned"),
                Err(error) => tracing::warn!(%error, "audit retention failed; retried later"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.checkpoint_interval) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
}
