//! `/api/v1/jobs`.

use crate::app::job as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, ListParams};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, Job, Page};

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Job>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Job>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path)),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Job>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("job", &id)?).await?))
}
