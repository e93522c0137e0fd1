-- An admin takes a host out of placement (`vdc host cordon`): no new instance is placed
-- there; what runs there stays, and an instance stopped there starts there again.
ALTER TABLE host_nodes ADD COLUMN schedulable BIGINT NOT NULL DEFAULT 1;
