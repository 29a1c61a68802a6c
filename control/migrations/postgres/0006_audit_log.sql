-- Outpost control schema, version 6 (PostgreSQL): the audit log as a Merkle tree (DESIGN 9).
-- Keep the file in step with ../sqlite/0006_audit_log.sql.

-- The device and model an event concerns (export filters), and the record's leaf index in the
-- log, assigned by the sequencer in one serialised step (NULL until then).
ALTER TABLE audit_events ADD COLUMN device TEXT;
ALTER TABLE audit_events ADD COLUMN model TEXT;
ALTER TABLE audit_events ADD COLUMN leaf_index BIGINT;
CREATE UNIQUE INDEX audit_events_by_leaf ON audit_events (leaf_index);
CREATE INDEX audit_events_unsequenced ON audit_events (id) WHERE leaf_index IS NULL;
CREATE INDEX audit_events_by_device ON audit_events (device, leaf_index);
CREATE INDEX audit_events_by_model ON audit_events (model, leaf_index);
CREATE INDEX audit_events_by_actor ON audit_events (actor, leaf_index);

-- Every complete aligned subtree of the log: 2^level leaves starting at leaf position << level
-- (level 0: the leaf hashes). Written once when complete, never changed; kept when a record's
-- body is pruned, so proofs stay computable.
CREATE TABLE audit_tree (
    level BIGINT NOT NULL,
    position BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, position)
);

-- The log's size and root; the sequencer locks this row.
CREATE TABLE audit_log (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    tree_size BIGINT NOT NULL,
    root_hash BYTEA NOT NULL,
    sequenced_ms BIGINT NOT NULL
);
INSERT INTO audit_log (id, tree_size, root_hash, sequenced_ms)
VALUES (1, 0, '\xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'::bytea, 0);

-- The log's verifier key (C2SP vkey), recorded once so every instance signs with the same key.
CREATE TABLE audit_log_key (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    vkey TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Signed checkpoints (C2SP signed notes), one per tree size signed.
CREATE TABLE audit_checkpoints (
    tree_size BIGINT PRIMARY KEY NOT NULL,
    root_hash BYTEA NOT NULL,
    note TEXT NOT NULL,
    signed_ms BIGINT NOT NULL
);
