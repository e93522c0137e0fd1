//! Jobs: the progress of long work. A job ends when its resource reaches the job's
//! `target` state (the report handler calls [`finish`]), fails with it, or is cancelled
//! when a newer request on the same resource supersedes it.

use crate::api::ListParams;
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, state_filter};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, Job, Page};
use vdc_schema::id::{AccountId, JobId};
use vdc_schema::JobState;

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    action: String,
    resource_id: String,
    state: String,
    message: Option<String>,
    created_at: String,
    finished_at: Option<String>,
}

const COLS: &str = "id, action, resource_id, state, message, created_at, finished_at";

impl Row {
    fn into_api(self) -> ApiResult<Job> {
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
) -> ApiResult<Job> {
    let id = JobId::generate();
    sqlx::query(
        "UPDATE jobs SET state = 'cancelled', finished_at = $1, message = $2 WHERE resource_id = $3 AND state = 'running'",
    )
    .bind(db::now())
    .bind(format!("superseded by {id} ({action})"))
    .bind(resource_id)
    .execute(&mut **tx)
    .await?;
    insert(tx, id, account, action, resource_id, target, None).await
}

/// A job that is already done: the request asked for what already is (or is already
/// under way). It supersedes nothing, so a job still in progress keeps running.
pub async fn done(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    msg: &str,
) -> ApiResult<Job> {
    insert(tx, JobId::generate(), account, action, resource_id, "", Some(msg)).await
}

/// Inserts a job: running, or (with `done_msg`) already succeeded.
async fn insert(
    tx: &mut db::Tx<'_>,
    id: JobId,
    account: &AccountId,
    action: &str,
    resource_id: &str,
    target: &str,
    done_msg: Option<&str>,
) -> ApiResult<Job> {
    let now = db::now();
    let state = if done_msg.is_some() { JobState::Succeeded } else { JobState::Running };
    let finished = done_msg.map(|_| now.clone());
    sqlx::query(&format!("INSERT INTO jobs ({COLS}, account_id, target) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
        .bind(id.as_str())
        .bind(action)
        .bind(resource_id)
        .bind(state.as_str())
        .bind(done_msg)
        .bind(&now)
        .bind(&finished)
        .bind(account.as_str())
        .bind(target)
        .execute(&mut **tx)
        .await?;
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

/// Ends the running jobs of `resource_id` whose target is `target`.
pub async fn finish(db: &mut sqlx::AnyConnection, resource_id: &str, target: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = $1 WHERE resource_id = $2 AND state = 'running' AND target = $3")
        .bind(db::now())
        .bind(resource_id)
        .bind(target)
        .execute(db)
        .await?;
    Ok(())
}

/// Fails every running job of `resource_id`.
pub async fn fail_all(db: &mut sqlx::AnyConnection, resource_id: &str, message: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE jobs SET state = 'failed', message = $1, finished_at = $2 WHERE resource_id = $3 AND state = 'running'",
    )
    .bind(message)
    .bind(db::now())
    .bind(resource_id)
    .execute(db)
    .await?;
    Ok(())
}

/// The targets of the running jobs of a resource (e.g. to finish `reboot:N` jobs).
pub async fn running_targets(db: &mut sqlx::AnyConnection, resource_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT target FROM jobs WHERE resource_id = $1 AND state = 'running'")
        .bind(resource_id)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", operation_id = "job_list", summary = "List the account's jobs",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::JobState>, Query, description = "Only jobs in this state")),
    responses((status = 200, description = "One page of jobs", body = Page<Job>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Job>>> {
    let (limit, cursor) = paging(&q)?;
    let state = state_filter::<JobState>(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM jobs WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3) ORDER BY id LIMIT $4"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(state)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |j| j.id.to_string())))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "job_show", summary = "Show a job",
    params(
        ("id" = vdc_schema::id::JobId, Path,
            description = "A job ID (`job-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    let id: JobId = path_id("job", &id)?;
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM jobs WHERE id = $1 AND account_id = $2"))
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    Ok(Json(row.ok_or_else(|| ApiError::not_found("job", id))?.into_api()?))
}
