-- When a snapshot last changed state, so that deleted ones leave unfiltered lists after an
-- hour as terminated instances and deleted volumes do. NULL for rows from before: their
-- creation time stands in.
ALTER TABLE snapshots ADD COLUMN updated_at TEXT;
