-- A POST with an `Idempotency-Key` header: the first request with a key runs, and a
-- retry with the same key and the same request is answered with its answer instead of
-- running again (a script that retried a create after a timeout made a second instance
-- and paid quota for it). Keyed by a hash of the credential and the key; kept 24 h.
CREATE TABLE idempotency_keys (
    id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status BIGINT NOT NULL DEFAULT 0,
    body TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
