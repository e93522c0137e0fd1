//! What `/metrics` reads from the database at scrape time: one GROUP BY per kind, so the
//! counts are never out of step with the model (no counters to drift).

use crate::db;

/// (kind, state, count) for instances, volumes, snapshots, images and networks. Networks
/// have no state column (a deleted one is gone): they count as `available`.
pub async fn objects_by_state(pool: &db::Pool) -> Result<Vec<(&'static str, String, i64)>, sqlx::Error> {
    let mut out = Vec::new();
    for (kind, sql) in [
        ("instance", "SELECT state, COUNT(*) FROM instances GROUP BY state"),
        ("volume", "SELECT state, COUNT(*) FROM volumes GROUP BY state"),
        ("snapshot", "SELECT state, COUNT(*) FROM snapshots GROUP BY state"),
        ("image", "SELECT state, COUNT(*) FROM images GROUP BY state"),
        ("network", "SELECT CAST('available' AS TEXT), COUNT(*) FROM networks"),
    ] {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
        out.extend(rows.into_iter().map(|(state, n)| (kind, state, n)));
    }
    Ok(out)
}

/// Jobs still running and when the oldest of them started (RFC 3339): what has been
/// asked and not yet reached.
pub async fn running_jobs(pool: &db::Pool) -> Result<(i64, Option<String>), sqlx::Error> {
    sqlx::query_as("SELECT COUNT(*), MIN(created_at) FROM jobs WHERE state = 'running'").fetch_one(pool).await
}
