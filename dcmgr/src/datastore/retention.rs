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
}

/// Removes what ended before `before` (a stored time), `batch` rows per statement.
///
/// Each statement removes at most `batch` rows: on SQLite's single writer a million rows
/// in one statement would hold up every create for seconds. A row still referred to stays
/// (a deleted volume with snapshots, a terminated instance a volume or floating IP still
/// names) and goes in a later pass once that reference is gone. The order matters:
/// snapshots free their volumes, volumes their instances.
pub async fn remove_ended(pool: &db::Pool, before: &str, batch: i64) -> Result<Removed, sqlx::Error> {
    let mut removed = Removed::default();
    let deletes: [(&mut u64, &str); 4] = [
        (
            &mut removed.snapshots,
            "DELETE FROM snapshots WHERE id IN (SELECT id FROM snapshots WHERE state = 'deleted' \
             AND updated_at < $1 LIMIT $2)",
        ),
        (
            &mut removed.volumes,
            "DELETE FROM volumes WHERE id IN (SELECT v.id FROM volumes v WHERE v.state = 'deleted' \
             AND v.updated_at < $1 AND NOT EXISTS (SELECT 1 FROM snapshots s WHERE s.volume_id = v.id) LIMIT $2)",
        ),
        (
            &mut removed.instances,
            "DELETE FROM instances WHERE id IN (SELECT i.id FROM instances i WHERE i.state = 'terminated' \
             AND i.updated_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM vifs f WHERE f.instance_id = i.id) \
             AND NOT EXISTS (SELECT 1 FROM volumes v WHERE v.instance_id = i.id) \
             AND NOT EXISTS (SELECT 1 FROM floating_ips p WHERE p.instance_id = i.id) LIMIT $2)",
        ),
        (
            &mut removed.jobs,
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state <> 'running' AND finished_at < $1 \
             LIMIT $2)",
        ),
    ];
    for (count, sql) in deletes {
        loop {
            let n = sqlx::query(sql).bind(before).bind(batch).execute(pool).await?.rows_affected();
            *count += n;
            if n < batch as u64 {
                break;
            }
        }
    }
    Ok(removed)
}
