-- Why an admin cordoned a host (`vdc host cordon --reason`), shown with the host; empty
-- when none was given or the host is not cordoned.
ALTER TABLE host_nodes ADD COLUMN cordon_reason TEXT NOT NULL DEFAULT '';
