-- Images whose data dcmgr stores: a state while the data arrives and is checked, the
-- content address of the stored blob (SHA-256, hex) and its size. Images registered
-- before (an operator's host file) are available as they were.
ALTER TABLE images ADD COLUMN state TEXT NOT NULL DEFAULT 'available';
ALTER TABLE images ADD COLUMN failure_reason TEXT;
ALTER TABLE images ADD COLUMN blob TEXT;
ALTER TABLE images ADD COLUMN size_bytes BIGINT;
CREATE INDEX images_blob ON images (blob);

-- Accounts an image is shared with (besides its owner; public images are everyone's).
CREATE TABLE image_members (
    image_id   TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    PRIMARY KEY (image_id, account_id)
);
CREATE INDEX image_members_account ON image_members (account_id, image_id);
