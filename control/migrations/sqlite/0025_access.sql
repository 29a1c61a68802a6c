-- Outpost control schema, version 25 (SQLite): token expiry, revocation and rotation, users
-- that can be removed. Keep in step with ../postgres/0025_access.sql.

-- Each token gets a public id (the first 16 hex digits of its SHA-256: naming a token in a
-- listing, a revocation or the audit log reveals nothing of it), an expiry, who revoked it,
-- and when it was last used (written at most once a minute).
ALTER TABLE api_tokens ADD COLUMN token_id TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_ms INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_by TEXT;
ALTER TABLE api_tokens ADD COLUMN last_used_ms INTEGER;
UPDATE api_tokens SET token_id = substr(token_sha256, 8, 16);
-- Tokens made before tokens expired get 90 days from the upgrade.
UPDATE api_tokens SET expires_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000 + 7776000000
WHERE expires_ms IS NULL;
CREATE UNIQUE INDEX api_tokens_by_id ON api_tokens (token_id);
CREATE INDEX api_tokens_by_user ON api_tokens (user_name);

-- A removed user keeps its row (names in the audit log stay resolvable) and loses every token.
ALTER TABLE users ADD COLUMN removed_ms INTEGER;
ALTER TABLE users ADD COLUMN removed_by TEXT;
