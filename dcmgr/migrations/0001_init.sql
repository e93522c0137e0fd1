-- One set of migrations for SQLite and PostgreSQL: only TEXT and BIGINT columns,
-- timestamps as RFC 3339 text (UTC, milliseconds), booleans as 0/1, lists as
-- comma-delimited text with leading and trailing commas (so LIKE '%,x,%' matches).

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    admin       BIGINT NOT NULL DEFAULT 0,
    -- Bumped first in transactions that guard a per-account invariant (e.g. CIDRs that
    -- must not overlap), so such transactions serialize on this row.
    lock_seq    BIGINT NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash  TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    created_at  TEXT NOT NULL
);

CREATE TABLE keypairs (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE images (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    name           TEXT NOT NULL,
    format         TEXT NOT NULL,
    arch           TEXT NOT NULL,
    hypervisors    TEXT NOT NULL,
    source         TEXT NOT NULL,
    checksum       TEXT,
    initrd         TEXT,
    kernel_cmdline TEXT,
    public         BIGINT NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL
);
CREATE INDEX images_account ON images (account_id, id);

CREATE TABLE networks (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    cidr        TEXT NOT NULL,
    gateway     TEXT NOT NULL,
    dhcp_start  TEXT NOT NULL,
    dhcp_end    TEXT NOT NULL,
    vni         BIGINT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL
);
CREATE INDEX networks_account ON networks (account_id, id);

CREATE TABLE security_groups (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX security_groups_account ON security_groups (account_id, id);

CREATE TABLE security_group_rules (
    id              TEXT PRIMARY KEY,
    group_id        TEXT NOT NULL REFERENCES security_groups(id) ON DELETE CASCADE,
    direction       TEXT NOT NULL,
    protocol        TEXT NOT NULL,
    port_min        BIGINT,
    port_max        BIGINT,
    cidr            TEXT,
    remote_group_id TEXT
);
CREATE INDEX security_group_rules_group ON security_group_rules (group_id);
CREATE INDEX security_group_rules_remote ON security_group_rules (remote_group_id);

CREATE TABLE host_nodes (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,
    hypervisors     TEXT NOT NULL,
    cpus            BIGINT NOT NULL,
    memory_mib      BIGINT NOT NULL,
    cpus_used       BIGINT NOT NULL DEFAULT 0,
    memory_used_mib BIGINT NOT NULL DEFAULT 0,
    capabilities    TEXT NOT NULL,
    last_seen       TEXT NOT NULL
);

CREATE TABLE storage_nodes (
    id            TEXT PRIMARY KEY,
    state         TEXT NOT NULL,
    backend       TEXT NOT NULL,
    capacity_mib  BIGINT NOT NULL,
    used_mib      BIGINT NOT NULL DEFAULT 0,
    last_seen     TEXT NOT NULL
);

CREATE TABLE instances (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    name           TEXT NOT NULL,
    image_id       TEXT NOT NULL,
    hypervisor     TEXT NOT NULL,
    cpus           BIGINT NOT NULL,
    memory_mib     BIGINT NOT NULL,
    ssh_key_id     TEXT,
    user_data      TEXT,
    state          TEXT NOT NULL,
    goal           TEXT NOT NULL,
    -- The host holding this instance's reservation; NULL once stopped or terminated.
    host_node_id   TEXT,
    -- Where it ran last, preferred when it starts again (its disk is there).
    last_host_id   TEXT,
    spec_gen       BIGINT NOT NULL,
    report_gen     BIGINT NOT NULL DEFAULT 0,
    reboot_gen     BIGINT NOT NULL DEFAULT 0,
    failure_reason TEXT,
    ensure_sent_at BIGINT NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX instances_account ON instances (account_id, id);
CREATE INDEX instances_host ON instances (host_node_id);
CREATE INDEX instances_state ON instances (state);

CREATE TABLE vifs (
    id          TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    account_id  TEXT NOT NULL,
    network_id  TEXT NOT NULL,
    mac         TEXT NOT NULL UNIQUE,
    ip          TEXT NOT NULL,
    state       TEXT NOT NULL,
    spec_gen    BIGINT NOT NULL DEFAULT 1,
    report_gen  BIGINT NOT NULL DEFAULT 0,
    position    BIGINT NOT NULL,
    UNIQUE (network_id, ip)
);
CREATE INDEX vifs_instance ON vifs (instance_id);

CREATE TABLE vif_security_groups (
    vif_id      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    PRIMARY KEY (vif_id, group_id)
);
CREATE INDEX vif_security_groups_group ON vif_security_groups (group_id);

CREATE TABLE volumes (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    size_mib        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    storage_node_id TEXT,
    instance_id     TEXT,
    snapshot_id     TEXT,
    -- JSON of the VolumeTarget sta reported for the current export.
    target          TEXT,
    spec_gen        BIGINT NOT NULL DEFAULT 1,
    report_gen      BIGINT NOT NULL DEFAULT 0,
    failure_reason  TEXT,
    ensure_sent_at  BIGINT NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX volumes_account ON volumes (account_id, id);
CREATE INDEX volumes_instance ON volumes (instance_id);

CREATE TABLE snapshots (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL,
    name            TEXT NOT NULL,
    volume_id       TEXT NOT NULL,
    size_mib        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    storage_node_id TEXT NOT NULL,
    report_gen      BIGINT NOT NULL DEFAULT 0,
    ensure_sent_at  BIGINT NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL
);
CREATE INDEX snapshots_account ON snapshots (account_id, id);
CREATE INDEX snapshots_volume ON snapshots (volume_id);

CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL,
    action      TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    -- What ends the job successfully, e.g. 'running' or 'reboot:3'.
    target      TEXT NOT NULL,
    state       TEXT NOT NULL,
    message     TEXT,
    created_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX jobs_account ON jobs (account_id, id);
CREATE INDEX jobs_resource ON jobs (resource_id, state);
