-- /metrics counts running jobs and reads the oldest's age at every scrape; without this
-- index that is a scan of every job ever kept. Running jobs are few, so the partial index
-- stays small.
CREATE INDEX jobs_running ON jobs (created_at) WHERE state = 'running';
