-- A resource's running jobs are found and ended on every create, report and action.
-- jobs_resource serves that, but PostgreSQL's plans cached on a connection while the
-- table was small chose jobs_running and filtered every running job by resource_id:
-- 0.25 ms a statement once a burst of creates had thousands running. This index is
-- both partial and keyed by resource, so it wins whatever the statistics say.
CREATE INDEX jobs_running_resource ON jobs (resource_id, id) WHERE state = 'running';
