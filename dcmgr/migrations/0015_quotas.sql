-- Quotas an admin set for one account; a key without a row takes dcmgr's configured
-- default ([quotas]). Usage is counted from the resources themselves, under the
-- account's row lock, in the transaction that creates (no counter to drift).
CREATE TABLE account_quotas (
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    quota       TEXT NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (account_id, quota)
);
