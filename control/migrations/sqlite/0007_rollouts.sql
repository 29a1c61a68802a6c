-- Outpost control schema, version 7 (SQLite): staged rollouts and device events. Keep in step
-- with ../postgres/0007_rollouts.sql: same tables, columns, keys and indexes.

-- What devices report on their `events` topic (install steps, refusals, rollbacks, errors),
-- stored once per (device, seq). `event_json` is the whole event as received.
CREATE TABLE device_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rollout_id TEXT,
    plan_seq INTEGER,
    bundle_digest TEXT,
    code TEXT,
    reason TEXT NOT NULL,
    event_json TEXT NOT NULL,
    UNIQUE (device_id, seq)
);
CREATE INDEX device_events_by_rollout ON device_events (rollout_id, plan_seq);

-- One staged rollout: its specification (waves, gates, holdout, policy), the plan it was
-- created with (unsigned envelope) and, once started, the plan with its approvals; where it
-- is (state, wave, wave phase) and which control instance drives it (lease).
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    plan_seq INTEGER NOT NULL UNIQUE,
    plan_envelope TEXT NOT NULL,
    signed_envelope TEXT,
    bundle_digest TEXT NOT NULL,
    wave INTEGER NOT NULL,
    wave_phase TEXT NOT NULL,
    wave_started_ms INTEGER,
    gates_json TEXT,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    lease_owner TEXT,
    lease_expires_ms INTEGER
);
CREATE INDEX rollouts_by_state ON rollouts (state);

-- Approver signatures over a rollout's plan, one per approver key.
CREATE TABLE rollout_approvals (
    rollout_id TEXT NOT NULL,
    keyid TEXT NOT NULL,
    sig TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_ms INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, keyid)
);

-- The devices of a rollout's cohort the rollout has placed: in the holdout or not, the wave
-- that admitted them (NULL: not yet), the model they ran before, and a revert.
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    holdout INTEGER NOT NULL,
    wave INTEGER,
    admitted_ms INTEGER,
    previous_digest TEXT,
    reverted_ms INTEGER,
    PRIMARY KEY (rollout_id, device_id)
);

-- Every state change of a rollout, in order.
CREATE TABLE rollout_transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    wave INTEGER NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX rollout_transitions_by_rollout ON rollout_transitions (rollout_id, id);
