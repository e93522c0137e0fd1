//! `/api/v1/snapshots`.

use crate::app::snapshot as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, status, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, CreateSnapshot, CreateSnapshotImage, ErrorBody, Image, Page, Snapshot};
use vdc_schema::id::SnapshotId;

#[utoipa::path(post, path = "/api/v1/snapshots", tag = "snapshots", operation_id = "snapshot_create",
    summary = "Snapshot a volume", request_body = CreateSnapshot,
    responses(
        (status = 202, description = "Accepted: the snapshot (creating) and the job that tracks it",
            body = Accepted<Snapshot>),
        (status = 400, description = "`invalid_name`, or a malformed body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: the volume", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the volume cannot be snapshotted now", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", operation_id = "snapshot_list",
    summary = "List the account's snapshots",
    description = "Deleted snapshots are listed for an hour after they were deleted; later only with \
        `state=deleted` (and by ID).",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::SnapshotState>, Query, description = "Only snapshots in this state"),
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of snapshots", body = Page<Snapshot>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Snapshot>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{id}", tag = "snapshots", operation_id = "snapshot_show",
    summary = "Show a snapshot",
    params(
        ("id" = vdc_schema::id::SnapshotId, Path,
            description = "A snapshot ID (`snap-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("snapshot", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/snapshots/{id}", tag = "snapshots", operation_id = "snapshot_delete",
    summary = "Delete a snapshot",
    params(
        ("id" = vdc_schema::id::SnapshotId, Path,
            description = "A snapshot ID (`snap-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the snapshot and the job that tracks its deletion",
            body = Accepted<Snapshot>),
        (status = 200, description = "Nothing to do (already deleted or deleting): the snapshot and a finished job",
            body = Accepted<Snapshot>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`snapshot_capturing`: an image is being made from it; delete it once \
            that image's job has ended", body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    let id: SnapshotId = path_id("snapshot", &id)?;
    let (outcome, accepted) = app::delete(&ctx, &caller, &id).await?;
    Ok((status(outcome), Json(accepted)))
}

/// A sub-resource action of the snapshot, as `POST /instances/{id}/capture` is of the
/// instance: the snapshot is what is checked and locked, and 404 means the snapshot.
#[utoipa::path(post, path = "/api/v1/snapshots/{id}/image", tag = "snapshots", operation_id = "snapshot_image",
    summary = "Make a new image (yours, private) of a snapshot's blocks: raw, or qcow2 if asked",
    request_body = CreateSnapshotImage,
    params(
        ("id" = vdc_schema::id::SnapshotId, Path,
            description = "A snapshot ID (`snap-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the new image (pending) and the job that ends when it is available; \
            the snapshot cannot be deleted until then", body = Accepted<Image>),
        (status = 400, description = "`invalid_name`, `invalid_image` (a property, or a format other than raw and \
            qcow2), or a malformed body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: the snapshot", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the snapshot is not available; `name_taken`: you have an \
            image of that name", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: the storage node holding it is offline", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn image(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<CreateSnapshotImage>,
) -> ApiResult<(StatusCode, Json<Accepted<Image>>)> {
    let id: SnapshotId = path_id("snapshot", &id)?;
    Ok((StatusCode::ACCEPTED, Json(crate::app::capture::from_snapshot(&ctx, &caller, &id, req).await?)))
}
