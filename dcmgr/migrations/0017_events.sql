-- The event stream (GET /api/v1/events): one row per change, written in the transaction
-- of the change itself, so a committed change always has its event and a rolled-back one
-- never does. IDs grow in commit order (see datastore/event.rs for how on each database);
-- clients resume after the last ID they saw. Old rows are pruned by age and count.
CREATE TABLE events (
    id BIGINT NOT NULL PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    change TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_account ON events (account_id, id);
