//! `/api/v1/volumes`.

use crate::app::{volume as app, Outcome};
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, AttachVolume, CreateVolume, ErrorBody, ExtendVolume, Page, Volume};
use vdc_schema::id::VolumeId;

/// 202 when the request changed the volume, 200 when it was already as asked.
fn status(outcome: Outcome) -> StatusCode {
    match outcome {
        Outcome::Applied => StatusCode::ACCEPTED,
        Outcome::Already => StatusCode::OK,
    }
}

#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Volume>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Volume>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("volume", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (outcome, accepted) = app::delete(&ctx, &caller, &id).await?;
    Ok((status(outcome), Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/attach", tag = "volumes", params(("id" = String, Path)),
    request_body = AttachVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AttachVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (outcome, accepted) = app::attach(&ctx, &caller, &id, req).await?;
    Ok((status(outcome), Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/detach", tag = "volumes", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (outcome, accepted) = app::detach(&ctx, &caller, &id).await?;
    Ok((status(outcome), Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/extend", tag = "volumes", params(("id" = String, Path)),
    request_body = ExtendVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn extend(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ExtendVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    Ok((StatusCode::ACCEPTED, Json(app::extend(&ctx, &caller, &id, req).await?)))
}
