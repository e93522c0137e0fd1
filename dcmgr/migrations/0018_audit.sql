-- The audit log (issue 14): one row per state-changing API request, answered or refused,
-- written after the answer (http/audit.rs). IDs are time-ordered (`aud-…`), so the
-- newest-first listing and its cursor go by ID. Pruned after `[audit] retain_days`.
CREATE TABLE audit_log (
    id          TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    user_id     TEXT,
    token_id    TEXT,
    account_id  TEXT,
    action      TEXT NOT NULL,
    resource_kind TEXT NOT NULL,
    resource_id TEXT,
    status      BIGINT NOT NULL,
    error_code  TEXT,
    request_id  TEXT NOT NULL,
    source      TEXT NOT NULL,
    duration_ms BIGINT NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, id);
CREATE INDEX audit_log_user ON audit_log (user_id, id);
CREATE INDEX audit_log_time ON audit_log (created_at);
