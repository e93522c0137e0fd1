-- Users and their roles in accounts (issue 14). A token belongs to a user and one account.
-- Each existing account gets an owner user of its name (ID `u-` + the account ID's suffix,
-- admin when the account was) that holds the account's tokens, so they keep working.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    admin       BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);

CREATE TABLE memberships (
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (account_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

INSERT INTO users (id, name, admin, created_at)
    SELECT 'u-' || substr(id, 3), name, admin, created_at FROM accounts;
INSERT INTO memberships (account_id, user_id, role, created_at)
    SELECT id, 'u-' || substr(id, 3), 'owner', created_at FROM accounts;

ALTER TABLE api_tokens ADD COLUMN id TEXT;
ALTER TABLE api_tokens ADD COLUMN name TEXT;
ALTER TABLE api_tokens ADD COLUMN user_id TEXT;
-- At most this role whatever the user's (NULL: the user's role).
ALTER TABLE api_tokens ADD COLUMN role TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
-- Kept after revocation so that a revoked token answers `token_revoked`, not "unknown".
ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;

UPDATE api_tokens SET id = 'tok-' || substr(token_hash, 1, 24),
                      name = 'token-' || substr(token_hash, 1, 12),
                      user_id = 'u-' || substr(account_id, 3);

CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
-- A name is one live token per user and account; the last guard of token creation.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (account_id, user_id, name) WHERE revoked_at IS NULL;
