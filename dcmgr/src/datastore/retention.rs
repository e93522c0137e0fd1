//! Removing rows of what ended long ago (`app::retention`).

use crate::datastore as db;

/// Rows removed, by table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub instances: u64,
    pub volumes: u64,
    pub snapshots: u64,
    pub jobs: u64,
}

impl Removed {
    pub fn total(&self) -> u64 {
        self.instances + self.volumes + self.snapshots + self.jobs
    }

    pub fn count(&mut self, what: Ended) -> &mut u64 {
        match what {
            Ended::Snapshots => &mut self.snapshots,
            Ended::Volumes => &mut self.volumes,
            Ended::Instances => &mut self.instances,
            Ended::Jobs => &mut self.jobs,
        }
    }
}

/// What ends and is removed later, in the order of removal: snapshots free their
/// volumes, volumes their instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Snapshots,
    Volumes,
    Instances,
    Jobs,
}

impl Ended {
    pub const ALL: [Ended; 4] = [Ended::Snapshots, Ended::Volumes, Ended::Instances, Ended::Jobs];

    /// A row still referred to stays (a deleted volume with snapshots, a terminated
    /// instance a volume or floating IP still names) and goes in a later pass once that
    /// reference is gone.
    fn sql(self) -> &'static str {
        match self {
            Ended::Snapshots => {
                "DELETE FROM snapshots WHERE id IN (SELECT id FROM snapshots WHERE state = 'deleted' \
                 AND updated_at < $1 LIMIT $2)"
            }
            Ended::Volumes => {
                "DELETE FROM volumes WHERE id IN (SELECT v.id FROM volumes v WHERE v.state = 'deleted' \
                 AND v.updated_at < $1 AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.volume_id = v.id) LIMIT $2)"
            }
            Ended::Instances => {
                "DELETE FROM instances WHERE id IN (SELECT i.id FROM instances i WHERE i.state = 'terminated' \
                 AND i.updated_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM vifs f WHERE f.instance_id = i.id) \
                 AND NOT EXISTS (SELECT 1 FROM volumes v WHERE v.instance_id = i.id) \
                 AND NOT EXISTS (SELECT 1 FROM floating_ips p WHERE p.instance_id = i.id) LIMIT $2)"
            }
            Ended::Jobs => {
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state <> 'running' AND finished_at < $1 \
                 LIMIT $2)"
            }
        }
    }
}

/// Removes at most `batch` rows of `what` that ended before `before` (a stored time);
/// how many.
pub async fn remove_some(pool: &db::Pool, what: Ended, before: &str, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(what.sql()).bind(before).bind(batch).execute(pool).await?.rows_affected())
}
