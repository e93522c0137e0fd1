-- Placement policies (issue 15, point 6). Server groups: instances placed together
-- (affinity) or apart (anti-affinity); an instance names its group at create and keeps
-- it (its row keeps the ID after it is terminated; deleting the group then clears it).
CREATE TABLE server_groups (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    policy      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    lock_seq    BIGINT NOT NULL DEFAULT 0,
    UNIQUE (account_id, name)
);
ALTER TABLE instances ADD COLUMN server_group_id TEXT REFERENCES server_groups(id) ON DELETE SET NULL;
CREATE INDEX instances_server_group ON instances (server_group_id, host_node_id);
-- What the instance asked of its host at create (zone, `,k=v,` labels), asked again when
-- a stopped instance starts and is placed anew.
ALTER TABLE instances ADD COLUMN placement_zone TEXT NOT NULL DEFAULT '';
ALTER TABLE instances ADD COLUMN placement_labels TEXT NOT NULL DEFAULT ',';
-- A host's zone ('' for none) and labels (`,k=v,` sorted by key), set by an admin
-- through the API; agent registrations leave them alone.
ALTER TABLE host_nodes ADD COLUMN zone TEXT NOT NULL DEFAULT '';
ALTER TABLE host_nodes ADD COLUMN labels TEXT NOT NULL DEFAULT ',';
