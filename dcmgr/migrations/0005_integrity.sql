-- Referential integrity and the columns that let every decision lock what it depends on.
--
-- SQLite cannot add a foreign key to an existing table, so the tables that gain one are
-- rebuilt (create, copy, drop, rename) the same way on both databases. Rows whose
-- references were already dangling are not copied (or their dangling reference is
-- cleared): they were unreachable before. Account IDs get no foreign key: deleting an
-- account keeps its (unreachable) networks, groups and keys.

-- `lock_seq` is bumped as the first write of a transaction that decides on that row
-- (`db::lock`): PostgreSQL then holds the row lock and SQLite the write lock until
-- commit, so what the transaction reads next is current and stays so.
ALTER TABLE instances ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE networks ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE security_groups ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE images ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keypairs ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE snapshots ADD COLUMN lock_seq BIGINT NOT NULL DEFAULT 0;

-- Rules that refer to a group: the group cannot go while they exist.
CREATE TABLE security_group_rules_new (
    id              TEXT PRIMARY KEY,
    group_id        TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    direction       TEXT NOT NULL,
    protocol        TEXT NOT NULL,
    port_min        BIGINT,
    port_max        BIGINT,
    cidr            TEXT,
    remote_group_id TEXT REFERENCES security_groups(id)
);
INSERT INTO security_group_rules_new (id, group_id, direction, protocol, port_min, port_max, cidr, remote_group_id)
    SELECT id, group_id, direction, protocol, port_min, port_max, cidr, remote_group_id FROM security_group_rules
    WHERE group_id IN (SELECT id FROM security_groups)
      AND (remote_group_id IS NULL OR remote_group_id IN (SELECT id FROM security_groups));
DROP TABLE security_group_rules;
ALTER TABLE security_group_rules_new RENAME TO security_group_rules;
CREATE INDEX security_group_rules_group ON security_group_rules (group_id);
CREATE INDEX security_group_rules_remote ON security_group_rules (remote_group_id);

-- Interfaces: on a network and of an instance that exist. `applied_gen` is the spec_gen
-- nwagent last reported acting on; the reconciler re-sends while it is behind spec_gen.
CREATE TABLE vifs_new (
    id             TEXT PRIMARY KEY,
    instance_id    TEXT NOT NULL REFERENCES instances(id),
    account_id     TEXT NOT NULL,
    network_id     TEXT NOT NULL REFERENCES networks(id),
    mac            TEXT NOT NULL UNIQUE,
    ip             TEXT NOT NULL,
    state          TEXT NOT NULL,
    spec_gen       BIGINT NOT NULL DEFAULT 1,
    report_gen     BIGINT NOT NULL DEFAULT 0,
    applied_gen    BIGINT NOT NULL DEFAULT 0,
    ensure_sent_at BIGINT NOT NULL DEFAULT 0,
    position       BIGINT NOT NULL,
    UNIQUE (network_id, ip)
);
INSERT INTO vifs_new (id, instance_id, account_id, network_id, mac, ip, state, spec_gen, report_gen, position)
    SELECT id, instance_id, account_id, network_id, mac, ip, state, spec_gen, report_gen, position FROM vifs
    WHERE instance_id IN (SELECT id FROM instances) AND network_id IN (SELECT id FROM networks);
DROP TABLE vifs;
ALTER TABLE vifs_new RENAME TO vifs;
CREATE INDEX vifs_instance ON vifs (instance_id);
CREATE INDEX vifs_resend ON vifs (applied_gen, spec_gen);

CREATE TABLE vif_security_groups_new (
    vif_id      TEXT NOT NULL REFERENCES vifs(id) ON DELETE CASCADE,
    group_id    TEXT NOT NULL REFERENCES security_groups(id),
    PRIMARY KEY (vif_id, group_id)
);
INSERT INTO vif_security_groups_new (vif_id, group_id)
    SELECT vif_id, group_id FROM vif_security_groups
    WHERE vif_id IN (SELECT id FROM vifs) AND group_id IN (SELECT id FROM security_groups);
DROP TABLE vif_security_groups;
ALTER TABLE vif_security_groups_new RENAME TO vif_security_groups;
CREATE INDEX vif_security_groups_group ON vif_security_groups (group_id);

-- Volumes attach to instances that exist.
CREATE TABLE volumes_new (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    size_mib        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    storage_node_id TEXT,
    instance_id     TEXT REFERENCES instances(id),
    snapshot_id     TEXT,
    target          TEXT,
    spec_gen        BIGINT NOT NULL DEFAULT 1,
    report_gen      BIGINT NOT NULL DEFAULT 0,
    failure_reason  TEXT,
    ensure_sent_at  BIGINT NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    image_id        TEXT,
    lock_seq        BIGINT NOT NULL DEFAULT 0
);
INSERT INTO volumes_new (id, account_id, name, size_mib, state, storage_node_id, instance_id, snapshot_id, target,
        spec_gen, report_gen, failure_reason, ensure_sent_at, created_at, updated_at, image_id)
    SELECT id, account_id, name, size_mib, state, storage_node_id,
        CASE WHEN instance_id IN (SELECT id FROM instances) THEN instance_id ELSE NULL END,
        snapshot_id, target, spec_gen, report_gen, failure_reason, ensure_sent_at, created_at, updated_at, image_id
    FROM volumes;
DROP TABLE volumes;
ALTER TABLE volumes_new RENAME TO volumes;
CREATE INDEX volumes_account ON volumes (account_id, id);
CREATE INDEX volumes_instance ON volumes (instance_id);

-- Snapshots belong to a volume that exists (volume rows stay, as 'deleted').
CREATE TABLE snapshots_new (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    volume_id       TEXT NOT NULL REFERENCES volumes(id),
    size_mib        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    storage_node_id TEXT NOT NULL,
    report_gen      BIGINT NOT NULL DEFAULT 0,
    ensure_sent_at  BIGINT NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    lock_seq        BIGINT NOT NULL DEFAULT 0
);
INSERT INTO snapshots_new (id, account_id, name, volume_id, size_mib, state, storage_node_id, report_gen,
        ensure_sent_at, created_at)
    SELECT id, account_id, name, volume_id, size_mib, state, storage_node_id, report_gen, ensure_sent_at, created_at
    FROM snapshots WHERE volume_id IN (SELECT id FROM volumes);
DROP TABLE snapshots;
ALTER TABLE snapshots_new RENAME TO snapshots;
CREATE INDEX snapshots_account ON snapshots (account_id, id);
CREATE INDEX snapshots_volume ON snapshots (volume_id);

-- Floating IPs map to interfaces that exist, at most one per interface; a router's SNAT
-- address goes with its network.
CREATE TABLE floating_ips_new (
    id          TEXT PRIMARY KEY,
    account_id  TEXT,
    ip          TEXT NOT NULL UNIQUE,
    instance_id TEXT REFERENCES instances(id),
    vif_id      TEXT REFERENCES vifs(id),
    network_id  TEXT REFERENCES networks(id) ON DELETE CASCADE,
    host_id     TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    lock_seq    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO floating_ips_new (id, account_id, ip, instance_id, vif_id, network_id, host_id, created_at, updated_at)
    SELECT id, account_id, ip,
        CASE WHEN vif_id IN (SELECT id FROM vifs) THEN instance_id ELSE NULL END,
        CASE WHEN vif_id IN (SELECT id FROM vifs) THEN vif_id ELSE NULL END,
        network_id, host_id, created_at, updated_at
    FROM floating_ips WHERE network_id IS NULL OR network_id IN (SELECT id FROM networks);
DROP TABLE floating_ips;
ALTER TABLE floating_ips_new RENAME TO floating_ips;
CREATE INDEX floating_ips_account ON floating_ips (account_id, id);
CREATE UNIQUE INDEX floating_ips_vif ON floating_ips (vif_id);
CREATE UNIQUE INDEX floating_ips_router ON floating_ips (network_id, host_id);
