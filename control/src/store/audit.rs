//! The audit log in the database: the `audit_events` records (what people, the control and
//! devices did, and what they were refused) and the Merkle tree over them (DESIGN §9).
//!
//! Fields follow NIST AU-3: when (`ts_ms`), who (`actor`), what (`action`, from the fixed
//! vocabulary of [`crate::audit::record::ACTIONS`]), on what (`subject`, `device`, `model`),
//! with what outcome and why, and from where (`source`).
//!
//! Writers insert records inside the transaction of their action (`insert_in`) or on their
//! own ([`Store::record_audit_event`]); a record has no leaf index yet. The sequencer
//! ([`Store::sequence_audit_log`]) then appends every committed, unsequenced record to the
//! tree in one serialised step (it locks the `audit_log` row, so with several instances on one
//! PostgreSQL database indices stay dense and stable even when records commit out of id order),
//! storing each leaf hash and every subtree it completes in `audit_tree`. Proofs read only the
//! stored subtrees they need. Pruning a record's body ([`Store::prune_audit_records`]) keeps its
//! leaf hash, so the tree stays verifiable.
//!
//! Requests served by the API run inside an [`AuditScope`] so the API's audit layer knows
//! whether the handler recorded its own event.

use std::cell::Cell;
use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row as _;

use super::{Store, StoreError, now_ms, to_i64, to_u64};
use crate::audit::merkle::{Frontier, Hash, NodeId};
use crate::audit::record::AuditRecord;

/// An event to record. Build it with `..Default::default()` so new optional fields stay
/// source-compatible.
#[derive(Debug, Clone, Default)]
pub struct NewAuditEvent {
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub reason: String,
    pub source: String,
    /// The device the event concerns, if any (audit exports filter on it).
    pub device: Option<String>,
    /// The model the event concerns as `name@version`, if any (audit exports filter on it).
    pub model: Option<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub outcome: String,
    pub reason: String,
    pub source: String,
    pub device: Option<String>,
    pub model: Option<String>,
    /// The record's position in the Merkle log; `None` until sequenced (within seconds).
    pub leaf_index: Option<i64>,
}

impl AuditEvent {
    /// The record as its leaf commits to it.
    pub fn record(&self) -> AuditRecord {
        AuditRecord {
            id: self.id,
            ts_ms: self.ts_ms,
            actor: self.actor.clone(),
            action: self.action.clone(),
            subject: self.subject.clone(),
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
            source: self.source.clone(),
            device: self.device.clone(),
            model: self.model.clone(),
        }
    }
}

/// Which events a listing or export selects; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub device: Option<String>,
    pub model: Option<String>,
    /// `ts_ms >= from_ms`.
    pub from_ms: Option<i64>,
    /// `ts_ms < to_ms`.
    pub to_ms: Option<i64>,
}

/// Whether the handler of the current API request recorded its own audit event.
#[derive(Debug, Default)]
pub struct AuditScope {
    /// An event was recorded on its own (committed).
    pub committed: Cell<bool>,
    /// An event was inserted in a transaction (committed only if the transaction was).
    pub in_transaction: Cell<bool>,
}

tokio::task_local! {
    static SCOPE: AuditScope;
}

/// Runs `future` in a fresh [`AuditScope`]; returns its output and what was recorded.
pub async fn in_scope<F: std::future::Future>(future: F) -> (F::Output, bool, bool) {
    SCOPE
        .scope(AuditScope::default(), async move {
            let output = future.await;
            let (committed, in_transaction) = SCOPE
                .try_with(|scope| (scope.committed.get(), scope.in_transaction.get()))
                .unwrap_or((false, false));
            (output, committed, in_transaction)
        })
        .await
}

fn mark(committed: bool) {
    let _ = SCOPE.try_with(|scope| {
        if committed {
            scope.committed.set(true);
        } else {
            scope.in_transaction.set(true);
        }
    });
}

/// Records `event` inside an open transaction, so it commits or rolls back with the action.
pub(crate) async fn insert_in(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &NewAuditEvent,
) -> Result<(), StoreError> {
    insert_query(event).execute(&mut **transaction).await?;
    mark(false);
    Ok(())
}

fn insert_query(
    event: &NewAuditEvent,
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    sqlx::query(
        "INSERT INTO audit_events \
         (ts_ms, actor, action, subject, outcome, reason, source, device, model) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(now_ms())
    .bind(event.actor.clone())
    .bind(event.action.clone())
    .bind(event.subject.clone())
    .bind(event.outcome.clone())
    .bind(event.reason.clone())
    .bind(event.source.clone())
    .bind(event.device.clone())
    .bind(event.model.clone())
}

const EVENT_COLUMNS: &str =
    "id, ts_ms, actor, action, subject, outcome, reason, source, device, model, leaf_index";

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<AuditEvent, StoreError> {
    Ok(AuditEvent {
        id: row.try_get("id")?,
        ts_ms: row.try_get("ts_ms")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        subject: row.try_get("subject")?,
        outcome: row.try_get("outcome")?,
        reason: row.try_get("reason")?,
        source: row.try_get("source")?,
        device: row.try_get("device")?,
        model: row.try_get("model")?,
        leaf_index: row.try_get("leaf_index")?,
    })
}

/// `WHERE` conditions of `filter` with parameters from `$first`; the values to bind, in order.
fn filter_sql(filter: &AuditFilter, first: usize) -> (String, Vec<FilterValue>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    let mut text = |column: &str, value: &Option<String>| {
        if let Some(value) = value {
            conditions.push(format!("{column} = ${}", first + values.len()));
            values.push(FilterValue::Text(value.clone()));
        }
    };
    text("action", &filter.action);
    text("actor", &filter.actor);
    text("device", &filter.device);
    text("model", &filter.model);
    if let Some(from) = filter.from_ms {
        conditions.push(format!("ts_ms >= ${}", first + values.len()));
        values.push(FilterValue::Integer(from));
    }
    if let Some(to) = filter.to_ms {
        conditions.push(format!("ts_ms < ${}", first + values.len()));
        values.push(FilterValue::Integer(to));
    }
    let sql = if conditions.is_empty() {
        String::new()
    } else {
        format!(" AND {}", conditions.join(" AND "))
    };
    (sql, values)
}

enum FilterValue {
    Text(String),
    Integer(i64),
}

fn bind_filter<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    values: Vec<FilterValue>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for value in values {
        query = match value {
            FilterValue::Text(text) => query.bind(text),
            FilterValue::Integer(number) => query.bind(number),
        };
    }
    query
}

fn hash_of(bytes: Vec<u8>, what: &str) -> Result<Hash, StoreError> {
    bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: what.into(),
        reason: "a hash is not 32 bytes".into(),
    })
}

/// Records appended by one sequencing transaction at most.
const SEQUENCE_BATCH: i64 = 2_000;
/// Stored nodes read or written per statement.
const NODE_CHUNK: usize = 200;

impl Store {
    /// Records one event on its own.
    pub async fn record_audit_event(&self, event: &NewAuditEvent) -> Result<(), StoreError> {
        insert_query(event).execute(self.pool()).await?;
        mark(true);
        Ok(())
    }

    /// The most recent events, newest first; `action` given: only events of that action.
    pub async fn audit_events(
        &self,
        action: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let filter = AuditFilter { action: action.map(str::to_string), ..Default::default() };
        self.audit_events_matching(&filter, limit).await
    }

    /// Events matching `filter`, newest first, at most `limit`.
    pub async fn audit_events_matching(
        &self,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let (conditions, values) = filter_sql(filter, 2);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE 1 = 1{conditions} \
             ORDER BY id DESC LIMIT $1"
        );
        let query =
            bind_filter(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(limit)), values);
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Sequenced events matching `filter` with a leaf index below `tree_size`, in log order; at
    /// most `limit` (the caller asks one more to learn there are more).
    pub async fn audit_events_in_log(
        &self,
        filter: &AuditFilter,
        tree_size: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let (conditions, values) = filter_sql(filter, 3);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE leaf_index IS NOT NULL \
             AND leaf_index < $1{conditions} ORDER BY leaf_index LIMIT $2"
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_i64(tree_size, "tree size")?)
            .bind(i64::from(limit));
        let rows = bind_filter(query, values).fetch_all(self.pool()).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The log's size and root hash.
    pub async fn audit_tree_head(&self) -> Result<(u64, Hash), StoreError> {
        let row = sqlx::query("SELECT tree_size, root_hash FROM audit_log WHERE id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok((
            to_u64(row.try_get("tree_size")?, "audit tree size")?,
            hash_of(row.try_get("root_hash")?, "audit root")?,
        ))
    }

    /// Appends every committed record without a leaf index to the tree, in id order, in one
    /// serialised step per batch; returns the new size and root.
    pub async fn sequence_audit_log(&self) -> Result<(u64, Hash), StoreError> {
        loop {
            let mut transaction = self.pool().begin().await?;
            // The lock: every sequencer (of every instance) waits here for the one before.
            sqlx::query("UPDATE audit_log SET sequenced_ms = $1 WHERE id = 1")
                .bind(now_ms())
                .execute(&mut *transaction)
                .await?;
            let row = sqlx::query("SELECT tree_size, root_hash FROM audit_log WHERE id = 1")
                .fetch_one(&mut *transaction)
                .await?;
            let size = to_u64(row.try_get("tree_size")?, "audit tree size")?;
            let root = hash_of(row.try_get("root_hash")?, "audit root")?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events WHERE leaf_index IS NULL \
                 ORDER BY id LIMIT $1"
            )))
            .bind(SEQUENCE_BATCH)
            .fetch_all(&mut *transaction)
            .await?;
            if rows.is_empty() {
                transaction.commit().await?;
                return Ok((size, root));
            }
            let events = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
            let frontier_ids = Frontier::node_ids(size);
            let stored = nodes_in(&mut transaction, &frontier_ids).await?;
            let mut frontier =
                Frontier::from_nodes(size, &stored).ok_or_else(|| StoreError::Corrupt {
                    what: "audit tree".into(),
                    reason: format!("a node of the right edge of the {size}-leaf tree is missing"),
                })?;
            let mut created = Vec::with_capacity(events.len() * 2);
            for event in &events {
                created.extend(frontier.append(event.record().leaf_hash()));
            }
            // Indices follow the batch's id order: one statement per run of consecutive ids.
            let mut run_start = 0;
            for end in 0..events.len() {
                if end + 1 < events.len() && events[end + 1].id == events[end].id + 1 {
                    continue;
                }
                let (first, last) = (&events[run_start], &events[end]);
                let first_index = to_i64(size + run_start as u64, "leaf index")?;
                let updated = sqlx::query(
                    "UPDATE audit_events SET leaf_index = id + $1 \
                     WHERE id >= $2 AND id <= $3 AND leaf_index IS NULL",
                )
                .bind(first_index - first.id)
                .bind(first.id)
                .bind(last.id)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                if updated != (end - run_start + 1) as u64 {
                    return Err(StoreError::Corrupt {
                        what: "audit log".into(),
                        reason: format!(
                            "sequencing records {}..={} updated {updated} rows",
                            first.id, last.id
                        ),
                    });
                }
                run_start = end + 1;
            }
            for chunk in created.chunks(NODE_CHUNK) {
                let placeholders: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
                    .collect();
                let sql = format!(
                    "INSERT INTO audit_tree (level, position, hash) VALUES {}",
                    placeholders.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, hash) in chunk {
                    query = query
                        .bind(i64::from(id.level))
                        .bind(to_i64(id.index, "node position")?)
                        .bind(hash.to_vec());
                }
                query.execute(&mut *transaction).await?;
            }
            let new_size = frontier.size();
            sqlx::query("UPDATE audit_log SET tree_size = $1, root_hash = $2 WHERE id = 1")
                .bind(to_i64(new_size, "tree size")?)
                .bind(frontier.root().to_vec())
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await?;
            if events.len() < SEQUENCE_BATCH as usize {
                return Ok((new_size, frontier.root()));
            }
        }
    }

    /// The stored tree nodes among `ids` (missing ones are absent from the map).
    pub async fn audit_nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let mut connection = self.pool().acquire().await?;
        nodes_in(&mut connection, ids).await
    }

    /// The verifier key recorded for the log, if any.
    pub async fn audit_log_key(&self) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT vkey FROM audit_log_key WHERE id = 1")
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get("vkey")?),
            None => None,
        })
    }

    /// Records the log's verifier key unless one is recorded; returns the recorded one.
    pub async fn record_audit_log_key(&self, vkey: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO audit_log_key (id, vkey, created_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(vkey.to_string())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        self.audit_log_key().await?.ok_or_else(|| StoreError::Corrupt {
            what: "audit_log_key".into(),
            reason: "the row just written is missing".into(),
        })
    }

    /// The signed checkpoint of the largest tree size signed, if any.
    pub async fn latest_audit_checkpoint(&self) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT tree_size, note FROM audit_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(match row {
            Some(row) => {
                Some((to_u64(row.try_get("tree_size")?, "checkpoint size")?, row.try_get("note")?))
            }
            None => None,
        })
    }

    /// Stores a signed checkpoint (a size already signed keeps its first note).
    pub async fn record_audit_checkpoint(
        &self,
        size: u64,
        root: &Hash,
        note: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoints (tree_size, root_hash, note, signed_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING",
        )
        .bind(to_i64(size, "checkpoint size")?)
        .bind(root.to_vec())
        .bind(note.to_string())
        .bind(now_ms())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Deletes the bodies of sequenced records older than `before_ms`; their leaf hashes stay
    /// in the tree. Returns how many were deleted. Unsequenced records are never deleted.
    pub async fn prune_audit_records(&self, before_ms: i64) -> Result<u64, StoreError> {
        let result =
            sqlx::query("DELETE FROM audit_events WHERE ts_ms < $1 AND leaf_index IS NOT NULL")
                .bind(before_ms)
                .execute(self.pool())
                .await?;
        Ok(result.rows_affected())
    }
}

async fn nodes_in(
    connection: &mut sqlx::AnyConnection,
    ids: &[NodeId],
) -> Result<HashMap<NodeId, Hash>, StoreError> {
    let mut by_level: std::collections::BTreeMap<u8, Vec<u64>> = Default::default();
    for id in ids {
        by_level.entry(id.level).or_default().push(id.index);
    }
    let mut nodes = HashMap::with_capacity(ids.len());
    for (level, mut positions) in by_level {
        positions.sort_unstable();
        positions.dedup();
        let (Some(&first), Some(&last)) = (positions.first(), positions.last()) else {
            continue;
        };
        // Dense (a large export): one range scan; sparse: lists of positions.
        let rows = if last - first < 2 * positions.len() as u64 + NODE_CHUNK as u64 {
            sqlx::query(
                "SELECT level, position, hash FROM audit_tree \
                 WHERE level = $1 AND position >= $2 AND position <= $3",
            )
            .bind(i64::from(level))
            .bind(to_i64(first, "node position")?)
            .bind(to_i64(last, "node position")?)
            .fetch_all(&mut *connection)
            .await?
        } else {
            let mut rows = Vec::new();
            for chunk in positions.chunks(NODE_CHUNK) {
                let list: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let sql = format!(
                    "SELECT level, position, hash FROM audit_tree \
                     WHERE level = $1 AND position IN ({})",
                    list.join(", ")
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(i64::from(level));
                for position in chunk {
                    query = query.bind(to_i64(*position, "node position")?);
                }
                rows.extend(query.fetch_all(&mut *connection).await?);
            }
            rows
        };
        for row in rows {
            let position: i64 = row.try_get("position")?;
            let id = NodeId { level, index: to_u64(position, "node position")? };
            nodes.insert(id, hash_of(row.try_get("hash")?, "audit tree node")?);
        }
    }
    Ok(nodes)
}
