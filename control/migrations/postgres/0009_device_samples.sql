-- Outpost control schema, version 9 (PostgreSQL): sampled raw inputs uploaded by devices. Keep in
-- step with ../sqlite/0009_device_samples.sql: same tables, columns, keys and indexes.
-- The rows are personal-data-bearing (docs/drift.md, "Input samples"): kept for the retention
-- the server enforces, readable only by admins and operators.

-- One upload request per row: who asked, when, and what the device sent back.
-- `state` is `requested` until every part arrived, then `complete`.
CREATE TABLE device_sample_requests (
    request_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    requested_ms BIGINT NOT NULL,
    state TEXT NOT NULL,
    parts BIGINT,
    enabled BIGINT,
    seen BIGINT,
    model_json TEXT,
    columns_json TEXT,
    completed_ms BIGINT
);
CREATE INDEX device_sample_requests_by_device ON device_sample_requests (device_id, requested_ms);

-- The parts of an upload, each as it arrived (a part delivered twice is stored once).
CREATE TABLE device_sample_parts (
    request_id TEXT NOT NULL,
    part BIGINT NOT NULL,
    rows_json TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (request_id, part)
);
