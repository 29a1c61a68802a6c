-- Outpost control schema, version 4 (SQLite): drift alerts. Keep in step with
-- ../postgres/0004_drift_alerts.sql: same tables, columns, keys and indexes.

-- Hysteresis state per watched series (model version x device or cohort x feature): how many
-- evaluations in a row alerted, and how many in a row were clear.
CREATE TABLE drift_alert_streaks (
    model_digest TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    feature TEXT NOT NULL,
    alert_streak INTEGER NOT NULL,
    clear_streak INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (model_digest, scope_kind, scope_key, feature)
);

-- Drift alerts: opened after enough alerting evaluations in a row, closed after enough clear
-- ones. `detail_json` holds the metrics and reasons at opening; the review (`new`,
-- `acknowledged`, `expected`) and the notes are what operators add.
CREATE TABLE drift_alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_digest TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_key TEXT NOT NULL,
    feature TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    closed_ms INTEGER,
    detail_json TEXT NOT NULL,
    review TEXT NOT NULL,
    reviewed_by TEXT,
    reviewed_ms INTEGER,
    notes_json TEXT NOT NULL
);
-- At most one open alert per series, whichever control instance evaluates.
CREATE UNIQUE INDEX drift_alerts_one_open ON drift_alerts (model_digest, scope_kind, scope_key, feature)
    WHERE closed_ms IS NULL;
CREATE INDEX drift_alerts_by_opened ON drift_alerts (opened_ms);
