-- The size of the disk a stored qcow2 or raw image holds, read by the image check, so
-- that a volume from the image can default to it and a disk too small is refused when
-- asked for. NULL where dcmgr has not read it (an operator's host file, images stored
-- before this column).
ALTER TABLE images ADD COLUMN virtual_size BIGINT;
