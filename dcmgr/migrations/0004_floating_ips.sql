-- Addresses of the external network: floating IPs (account_id set) and the SNAT address
-- of each host's router for a network (network_id + host_id set, account_id NULL).
CREATE TABLE floating_ips (
    id          TEXT PRIMARY KEY,
    account_id  TEXT,
    ip          TEXT NOT NULL UNIQUE,
    instance_id TEXT,
    vif_id      TEXT,
    network_id  TEXT,
    host_id     TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX floating_ips_account ON floating_ips (account_id, id);
CREATE INDEX floating_ips_vif ON floating_ips (vif_id);
CREATE UNIQUE INDEX floating_ips_router ON floating_ips (network_id, host_id);
