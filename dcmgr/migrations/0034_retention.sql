-- Ended rows (terminated instances, deleted volumes and snapshots, finished jobs) are
-- removed `[retention] ended_days` after they ended (`app::retention`), found by when
-- they last changed. Partial indexes: they hold the ended rows only.
UPDATE snapshots SET updated_at = created_at WHERE updated_at IS NULL;
CREATE INDEX instances_ended ON instances (updated_at) WHERE state = 'terminated';
CREATE INDEX volumes_ended ON volumes (updated_at) WHERE state = 'deleted';
CREATE INDEX snapshots_ended ON snapshots (updated_at) WHERE state = 'deleted';
CREATE INDEX jobs_ended ON jobs (finished_at) WHERE state <> 'running';
