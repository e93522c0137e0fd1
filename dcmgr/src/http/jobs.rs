//! `/api/v1/jobs`.

use crate::app::job as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, ListParams};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, Job, Page};

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", operation_id = "job_list",
    summary = "List the account's jobs, newest first",
    description = "Jobs are kept; the first page holds the newest, and `next_cursor` leads to older ones.",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::JobState>, Query, description = "Only jobs in this state")),
    responses((status = 200, description = "One page of jobs", body = Page<Job>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Job>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "job_show", summary = "Show a job",
    params(
        ("id" = vdc_schema::id::JobId, Path,
            description = "A job ID (`job-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("job", &id)?).await?))
}
