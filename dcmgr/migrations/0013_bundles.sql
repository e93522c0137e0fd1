-- Bundle imports: one row per (account, source site, source VDC, manifest), inserted
-- first in the import's one transaction, so the same bundle imported again (or twice at
-- once) finds it and changes nothing. `id_map` is JSON: bundle ID → new ID.
CREATE TABLE bundle_imports (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL,
    source_site   TEXT NOT NULL,
    source_vdc    TEXT NOT NULL,
    manifest_hash TEXT NOT NULL,
    id_map        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    UNIQUE (account_id, source_site, source_vdc, manifest_hash)
);
CREATE INDEX bundle_imports_account ON bundle_imports (account_id, id);
