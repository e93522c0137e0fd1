-- Bundle push (issue 13, point 6): the chunks each account has imported, and where they
-- are now: `offset`..`offset + size` of blob `blob` in the blob store (blobs are cut into
-- fixed 4 MiB chunks, so a blob's chunks are found again at fixed offsets). A push asks
-- which chunks the target lacks and references the rest; the target resolves a reference
-- only from this account's rows (and checks the hash again), so knowing a hash of another
-- account's data never lets anyone import that data without sending it.
CREATE TABLE bundle_chunks (
    account_id  TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    blob        TEXT NOT NULL,
    blob_offset BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    PRIMARY KEY (account_id, sha256)
);
