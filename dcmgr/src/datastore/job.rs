//! Jobs as stored. [`start`], [`done`], [`finish`], [`finish_reached`] and [`fail_all`]
//! run inside the transaction of the decision or report they belong to.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Job;
use vdc_schema::id::{AccountId, JobId};
use vdc_schema::JobState;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub action: String,
    pub resource_id: String,
    pub state: String,
    pub message: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

const COLS: &str = "id, action, resource_id, state, message, created_at, finished_at";

impl Row {
    pub fn into_api(self) -> ApiResult<Job> {
        Ok(Job {
            id: self.id.parse().map_err(ApiError::internal)?,
            action: self.action,
            resource_id: self.resource_id,
            state: self.state.parse().map_err(ApiError::internal)?,
            message: self.message,
            created_at: db::parse_time(&self.created_at),
            finished_at: self.finished_at.as_deref().map(db::parse_time),
        })
    }
}

/// Records a new running job in `tx`, cancelling the running jobs it supersedes.
pub async fn start(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    target: &str,
) -> Result<Job, sqlx::Error> {
    let id = JobId::generate();
    let w = db::Write::new(
        "UPDATE jobs SET state = 'cancelled', finished_at = $1, message = $2 WHERE resource_id = $3 AND state = 'running'",
    )
    .bind(db::now())
    .bind(format!("superseded by {id} ({action})"))
    .bind(resource_id);
    end_jobs(tx, w).await?;
    insert(tx, id, account, action, resource_id, target, None).await
}

/// The first job of a resource just inserted in `tx`: nothing to supersede, so no
/// statement looks for it.
pub async fn start_first(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    target: &str,
) -> Result<Job, sqlx::Error> {
    insert(tx, JobId::generate(), account, action, resource_id, target, None).await
}

/// A job that is already done: the request asked for what already is (or is already
/// under way). It supersedes nothing, so a job still in progress keeps running.
pub async fn done(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    msg: &str,
) -> Result<Job, sqlx::Error> {
    insert(tx, JobId::generate(), account, action, resource_id, "", Some(msg)).await
}

/// Inserts a job: running, or (with `done_msg`) already succeeded. The row is sent
/// later ([`db::Tx::later`]): anything run on the connection sends it first.
#[allow(clippy::too_many_arguments)]
async fn insert(
    tx: &mut db::Tx<'_>,
    id: JobId,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    target: &str,
    done_msg: Option<&str>,
) -> Result<Job, sqlx::Error> {
    let now = db::now();
    let state = if done_msg.is_some() { JobState::Succeeded } else { JobState::Running };
    let finished = done_msg.map(|_| now.clone());
    let w = db::Write::new(INSERT_SQL.as_str())
        .bind(id.as_str())
        .bind(action)
        .bind(resource_id)
        .bind(state.as_str())
        .bind(done_msg)
        .bind(now.as_str())
        .bind(finished.clone())
        .bind(account.as_str())
        .bind(target);
    db::event::later_with_event(tx, w, db::event::Kind::Job, id.as_str(), db::event::Change::Created, None).await?;
    Ok(Job {
        id,
        action: action.to_owned(),
        resource_id: resource_id.to_owned(),
        state,
        message: done_msg.map(str::to_owned),
        created_at: db::parse_time(&now),
        finished_at: finished.as_deref().map(db::parse_time),
    })
}

static INSERT_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("INSERT INTO jobs ({COLS}, account_id, target) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
});

/// Ends the running jobs of `resource_id` whose target is `target`.
pub async fn finish(db: &mut db::Tx<'_>, resource_id: &str, target: &str) -> Result<(), sqlx::Error> {
    finish_reached(db, resource_id, target, None).await
}

/// Ends jobs with `w` (an `UPDATE` of jobs setting their state) and records their events.
/// On SQLite a trigger notes the jobs it ended for the commit to write their events
/// (`db::ENDED_JOBS`), so the update is sent later ([`db::Tx::later`]); on PostgreSQL
/// the update writes their events in the same statement.
async fn end_jobs(tx: &mut db::Tx<'_>, w: db::Write) -> Result<(), sqlx::Error> {
    if tx.sqlite() {
        tx.jobs_ended = true;
        return tx.later(w).await;
    }
    tx.later(db::event::pg_with_event(w, db::event::Kind::Job, db::event::Change::State, None)).await
}

/// Fails every running job of `resource_id`.
pub async fn fail_all(db: &mut db::Tx<'_>, resource_id: &str, message: &str) -> Result<(), sqlx::Error> {
    let w = db::Write::new(
        "UPDATE jobs SET state = 'failed', message = $1, finished_at = $2 WHERE resource_id = $3 AND state = 'running'",
    )
    .bind(message)
    .bind(db::now())
    .bind(resource_id);
    end_jobs(db, w).await
}

/// Ends the running jobs of `resource_id` that reached `state`, and with `rebooted`
/// (a running guest's reboot generation) its `reboot:N` jobs up to N = `rebooted`, in
/// one statement.
pub async fn finish_reached(
    db: &mut db::Tx<'_>,
    resource_id: &str,
    state: &str,
    rebooted: Option<u64>,
) -> Result<(), sqlx::Error> {
    end_jobs(db, reached(resource_id, state, rebooted)).await
}

fn reached(resource_id: &str, state: &str, rebooted: Option<u64>) -> db::Write {
    // CASE keeps the cast to the `reboot:` targets (PostgreSQL refuses 'running' as a number).
    db::Write::new(
        "UPDATE jobs SET state = 'succeeded', finished_at = $1 WHERE resource_id = $2 AND state = 'running' \
         AND (target = $3 OR CASE WHEN $4 >= 0 AND target LIKE 'reboot:%' \
                                  THEN CAST(SUBSTR(target, 8) AS BIGINT) <= $4 ELSE FALSE END)",
    )
    .bind(db::now())
    .bind(resource_id)
    .bind(state)
    .bind(rebooted.map_or(-1, |g| g as i64))
}

/// One page of an account's jobs, in creation order after `cursor`; `state` '' for all.
/// Newest first (IDs sort by creation time): the page after `cursor` holds older jobs.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    state: &str,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM jobs WHERE account_id = $1 AND ($2 = '' OR id < $2) AND ($3 = '' OR state = $3)
         ORDER BY id DESC LIMIT $4"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The account's job `id`, if it is theirs.
pub async fn get_own(pool: &db::Pool, account: &AccountId, id: &JobId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM jobs WHERE id = $1 AND account_id = $2"))
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(pool)
        .await
}

/// The newest running job of a resource, if any (its ID travels with the ensure).
pub async fn running_of<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    resource_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT id FROM jobs WHERE resource_id = $1 AND state = 'running' ORDER BY id DESC LIMIT 1")
            .bind(resource_id)
            .fetch_optional(db)
            .await?;
    Ok(r.map(|r| r.0))
}
