-- Outpost control schema, version 8 (SQLite): windows counted but not yet folded into the
-- aggregates. Keep in step with ../postgres/0008_ingest_pending.sql: same table, columns and key.

-- Ingest appends each new window of a model the registry holds here, in the transaction that
-- inserts its `windows_seen` row, and acknowledges it once that commits; folding later merges
-- pending windows into `device_aggregates` and `cohort_aggregates` many at a time and deletes
-- them in the same transaction. Every reader of the aggregates folds first, so what it reads is
-- exact. `stats` is the window's statistics in the compact encoding of
-- `control/src/store/pending.rs` (without the feature names and bin edges, which are the model
-- profile's), with the cohorts the device had when the window was ingested.
CREATE TABLE pending_windows (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    model_digest TEXT NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    stats BLOB NOT NULL,
    PRIMARY KEY (device_id, seq)
);
