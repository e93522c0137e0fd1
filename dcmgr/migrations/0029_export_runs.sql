-- A bundle export's run and what it made (temporary images and snapshots, by name) or
-- stopped (instances to start again), recorded before it makes or stops them: a dcmgr
-- stopped or killed mid-export leaves these rows, and a sweep (`app::bundle_data`)
-- removes what they name and starts the instances again.
CREATE TABLE export_runs (
    id         TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    started_at TEXT NOT NULL
);
CREATE TABLE export_temporaries (
    export_id TEXT NOT NULL,
    kind      TEXT NOT NULL,
    name      TEXT NOT NULL,
    PRIMARY KEY (export_id, kind, name)
);
