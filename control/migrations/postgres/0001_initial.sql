-- Outpost control schema, version 1 (PostgreSQL). Keep in step with ../sqlite/0001_initial.sql:
-- same tables, columns, keys and indexes; only the column types differ (see ../README.md).

-- Model registry: one row per pushed bundle, named by the sha256 of the whole bundle file.
CREATE TABLE bundles (
    digest TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    size BIGINT NOT NULL,
    chunk_bytes BIGINT NOT NULL,
    chunk_count BIGINT NOT NULL,
    task TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    signers_json TEXT NOT NULL,
    profile_json TEXT NOT NULL,
    profile_summary_json TEXT NOT NULL,
    manifest_created_ms BIGINT NOT NULL,
    pushed_ms BIGINT NOT NULL,
    pushed_by TEXT NOT NULL,
    UNIQUE (name, version)
);

-- The bundle file itself, in fixed-size chunks (the last one shorter), each with its digest so
-- a damaged row is detected when it is served.
CREATE TABLE chunks (
    digest TEXT NOT NULL REFERENCES bundles (digest),
    idx BIGINT NOT NULL,
    data_sha256 TEXT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (digest, idx)
);

-- Fleet inventory, from each device's retained hello and state messages.
CREATE TABLE devices (
    device_id TEXT PRIMARY KEY NOT NULL,
    tags_json TEXT NOT NULL,
    arch TEXT,
    agent_version TEXT,
    active_model_name TEXT,
    active_model_version TEXT,
    active_model_digest TEXT,
    previous_model_name TEXT,
    previous_model_version TEXT,
    previous_model_digest TEXT,
    trust_root_version BIGINT,
    last_plan_seq BIGINT,
    hello_json TEXT,
    presence TEXT NOT NULL,
    presence_changed_ms BIGINT,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
CREATE INDEX devices_by_active_model ON devices (active_model_name, active_model_version);
CREATE INDEX devices_by_presence ON devices (presence);

-- API users and their bearer tokens; only the SHA-256 of a token is stored.
CREATE TABLE users (
    name TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE api_tokens (
    token_sha256 TEXT PRIMARY KEY NOT NULL,
    user_name TEXT NOT NULL REFERENCES users (name),
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

-- What people and the control did or were refused, for the audit trail (DESIGN 9).
CREATE TABLE audit_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX audit_events_by_time ON audit_events (ts_ms);
