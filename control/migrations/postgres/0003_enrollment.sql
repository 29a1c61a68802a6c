-- Outpost control schema, version 3 (PostgreSQL): device identity. Keep in step with
-- ../sqlite/0003_enrollment.sql: same tables, columns, keys and indexes.

-- The fleet CA every control instance on this database must share: one row, written by the
-- instance that created the CA. An instance whose CA files differ refuses to issue.
CREATE TABLE fleet_ca (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    fingerprint TEXT NOT NULL,
    certificate_pem TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- Every certificate the fleet CA issued (devices, brokers, control instances), by serial.
-- `revoked_ms` set: listed on the CA's revocation list (CRL) from then on.
CREATE TABLE issued_certificates (
    serial TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    common_name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    not_after_ms BIGINT NOT NULL,
    issued_ms BIGINT NOT NULL,
    issued_by TEXT NOT NULL,
    revoked_ms BIGINT,
    revoked_by TEXT
);
CREATE INDEX issued_certificates_by_name ON issued_certificates (common_name);

-- Enrolled devices: the tags given at enrollment and the certificate last issued to each.
CREATE TABLE enrollments (
    device_id TEXT PRIMARY KEY NOT NULL,
    tags_json TEXT NOT NULL,
    serial TEXT NOT NULL REFERENCES issued_certificates (serial),
    fingerprint TEXT NOT NULL,
    not_after_ms BIGINT NOT NULL,
    enrolled_ms BIGINT NOT NULL,
    enrolled_by TEXT NOT NULL
);
