-- How many limits the account sets itself (rows of account_quotas), kept by a quota set
-- under the account's lock: a create reads it with that lock, in the same statement,
-- and reads the limits only when there are some (issue 15).
ALTER TABLE accounts ADD COLUMN own_quotas BIGINT NOT NULL DEFAULT 0;
UPDATE accounts SET own_quotas = (SELECT COUNT(*) FROM account_quotas q WHERE q.account_id = accounts.id);
