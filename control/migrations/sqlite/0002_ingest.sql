-- Outpost control schema, version 2 (SQLite): statistics ingest. Keep in step with
-- ../postgres/0002_ingest.sql: same tables, columns, keys and indexes.

-- Every statistics window counted, by (device, seq): the durable dedupe. A window is inserted
-- here in the same transaction that merges it into the aggregates, so a redelivery (after a
-- reconnect or a server restart) finds its row and counts nothing.
CREATE TABLE windows_seen (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    model_digest TEXT NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX windows_seen_by_bucket ON windows_seen (bucket_start_ms);

-- Windows merged per model (bundle digest), device and time bucket. `window_json` is the exact
-- merge (histograms over the profile's edges, moments, counts) of `windows` windows.
-- `bucket_ms` is the bucket's length: the configured bucket, or a day once downsampled.
CREATE TABLE device_aggregates (
    model_digest TEXT NOT NULL,
    device_id TEXT NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    request_count INTEGER NOT NULL,
    window_json TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (model_digest, device_id, bucket_start_ms)
);
CREATE INDEX device_aggregates_by_bucket ON device_aggregates (bucket_ms, bucket_start_ms);

-- The same per cohort: `*` (every device) and each `key=value` tag the device had when the
-- window was ingested.
CREATE TABLE cohort_aggregates (
    model_digest TEXT NOT NULL,
    cohort TEXT NOT NULL,
    bucket_start_ms INTEGER NOT NULL,
    bucket_ms INTEGER NOT NULL,
    windows INTEGER NOT NULL,
    request_count INTEGER NOT NULL,
    window_json TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (model_digest, cohort, bucket_start_ms)
);
CREATE INDEX cohort_aggregates_by_bucket ON cohort_aggregates (bucket_ms, bucket_start_ms);
