//! `/api/v1/volumes`.

use crate::app::volume as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, status, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, AttachVolume, CreateVolume, ErrorBody, ExtendVolume, Page, Volume};
use vdc_schema::id::VolumeId;

#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", operation_id = "volume_create",
    summary = "Create a volume: empty, a copy of a snapshot, or filled from an image", request_body = CreateVolume,
    responses(
        (status = 202, description = "Accepted: the volume (creating) and the job that tracks it",
            body = Accepted<Volume>),
        (status = 400,
            description = "`invalid_name`, `invalid_source`, `invalid_size`, `invalid_image`, or a malformed body \
                (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: the snapshot or the image", body = ErrorBody),
        (status = 409,
            description = "`invalid_state`: the snapshot is not available; `name_taken`: the account has a volume of \
                that name (deleted ones do not count)",
            body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use); `no_capacity`: no online storage node has the room", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", operation_id = "volume_list",
    summary = "List the account's volumes",
    description = "Deleted volumes are listed for an hour after they were deleted; later only with \
        `state=deleted` (and by ID).",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::VolumeState>, Query, description = "Only volumes in this state"),
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of volumes", body = Page<Volume>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Volume>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "volume_show",
    summary = "Show a volume",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The volume", body = Volume),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("volume", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "volume_delete",
    summary = "Delete a volume",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (already deleted): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`volume_attached`: detach it first; `volume_has_snapshots`: delete them first",
            body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (outcome, accepted) = app::delete(&ctx, &caller, &id).await?;
    Ok((status(outcome), Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/attach", tag = "volumes", operation_id = "volume_attach",
    summary = "Attach a volume to an instance", request_body = AttachVolume,
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (already attached to this instance): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`: the volume or the instance", body = ErrorBody),
        (status = 409,
            description = "`invalid_state`: the volume is not available or the instance is going away; \
                `too_many_volumes`: the instance has 16; `volumes_unsupported`: the instance is an lxc \
                container", body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/volumes/{id}/detach", tag = "volumes", operation_id = "volume_detach",
    summary = "Detach a volume from its instance",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (not attached): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is being created, detached or deleted", body = ErrorBody)))]
pub async fn detach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (outcome, accepted) = app::detach(&ctx, &caller, &id).await?;
    Ok((status(outcome), Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/extend", tag = "volumes", operation_id = "volume_extend",
    summary = "Grow a volume", request_body = ExtendVolume,
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 400, description = "`invalid_size`: not larger, or too large; or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`volume_attached`: detach it first; `invalid_state`: it is not available",
            body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use); `no_capacity`: its storage node is offline or lacks the room",
            body = ErrorBody)))]
pub async fn extend(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ExtendVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    Ok((StatusCode::ACCEPTED, Json(app::extend(&ctx, &caller, &id, req).await?)))
}
