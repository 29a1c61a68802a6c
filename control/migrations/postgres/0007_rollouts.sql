-- Outpost control schema, version 7 (PostgreSQL): staged rollouts and device events. Keep in step
-- with ../sqlite/0007_rollouts.sql: same tables, columns, keys and indexes.

-- What devices report on their `events` topic (install steps, refusals, rollbacks, errors),
-- stored once per (device, seq). `event_json` is the whole event as received.
CREATE TABLE device_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    ts_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    kind TEXT NOT NULL,
    outcome TEXT NOT NULL,
    rollout_id TEXT,
    plan_seq BIGINT,
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
    plan_seq BIGINT NOT NULL UNIQUE,
    plan_envelope TEXT NOT NULL,
    signed_envelope TEXT,
    bundle_digest TEXT NOT NULL,
    wave BIGINT NOT NULL,
    wave_phase TEXT NOT NULL,
    wave_started_ms BIGINT,
    gates_json TEXT,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_ms BIGINT
);
CREATE INDEX rollouts_by_state ON rollouts (state);

-- Approver signatures over a rollout's plan, one per approver key.
CREATE TABLE rollout_approvals (
    rollout_id TEXT NOT NULL,
    keyid TEXT NOT NULL,
    sig TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_ms BIGINT NOT NULL,
    PRIMARY KEY (rollout_id, keyid)
);

-- The devices of a rollout's cohort the rollout has placed: in the holdout or not, the wave
-- that admitted them (NULL: not yet), the model they ran before, and a revert.
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    holdout BIGINT NOT NULL,
    wave BIGINT,
    admitted_ms BIGINT,
    previous_digest TEXT,
    reverted_ms BIGINT,
    PRIMARY KEY (rollout_id, device_id)
);

-- Every state change of a rollout, in order.
CREATE TABLE rollout_transitions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state TEXT NOT NULL,
    wave BIGINT NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX rollout_transitions_by_rollout ON rollout_transitions (rollout_id, id);
