//! `/api/v1/snapshots`.

use crate::app::{snapshot as app, Outcome};
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, CreateSnapshot, ErrorBody, Page, Snapshot};
use vdc_schema::id::SnapshotId;

#[utoipa::path(post, path = "/api/v1/snapshots", tag = "snapshots", request_body = CreateSnapshot,
    responses((status = 202, body = Accepted<Snapshot>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Snapshot>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Snapshot>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("snapshot", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Snapshot>), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    let id: SnapshotId = path_id("snapshot", &id)?;
    let (outcome, accepted) = app::delete(&ctx, &caller, &id).await?;
    let status = match outcome {
        Outcome::Applied => StatusCode::ACCEPTED,
        Outcome::Already => StatusCode::OK,
    };
    Ok((status, Json(accepted)))
}
