-- Keys every dcmgr of a site shares (the bundle signing key, the node key), in the
-- database rather than in a file beside each dcmgr: several controllers agree on them
-- without copying files, and two starting at once cannot make two.
CREATE TABLE site_secrets (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
