-- Overcommit: what the scheduler may place on a host, its capacity times the configured
-- allocation ratios. dcmgr recomputes it at start and at every registration; existing
-- hosts start at their physical capacity.
ALTER TABLE host_nodes ADD COLUMN cpus_allocatable BIGINT NOT NULL DEFAULT 0;
ALTER TABLE host_nodes ADD COLUMN memory_allocatable_mib BIGINT NOT NULL DEFAULT 0;
UPDATE host_nodes SET cpus_allocatable = cpus, memory_allocatable_mib = memory_mib;

-- The user `vdc instance ssh` logs in as, if the image says.
ALTER TABLE images ADD COLUMN default_user TEXT;
