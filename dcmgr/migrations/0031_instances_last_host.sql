-- What a host holds (GET /api/v1/host_nodes/{id}/instances) includes stopped instances
-- whose disk it keeps: found by their last host.
CREATE INDEX instances_last_host ON instances (last_host_id);
