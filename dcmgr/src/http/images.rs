//! `/api/v1/images`.

use crate::app::image as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateImage, ErrorBody, Image, Page};

#[utoipa::path(post, path = "/api/v1/images", tag = "images", operation_id = "image_create",
    summary = "Register an image", request_body = CreateImage,
    responses(
        (status = 201, description = "The image", body = Image),
        (status = 400,
            description = "`invalid_name`, `invalid_image`, `invalid_source` (a URL), `invalid_checksum`, \
                `kernel_options_need_kernel_image` (initrd or kernel_cmdline on a non-kernel image), `unsupported_format` \
                (a listed hypervisor cannot boot the format), `invalid_boot_mode`, `invalid_kernel_id`, `invalid_min_disk`, \
                `invalid_os`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: only an operator (admin) registers images (their source is a file on the hosts)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::CREATED, Json(app::insert(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images", operation_id = "image_list",
    summary = "List the account's images and the public ones",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of images", body = Page<Image>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Image>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", operation_id = "image_show",
    summary = "Show an image (the account's own or a public one)",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "An image ID (`img-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Image>> {
    Ok(Json(app::fetch_visible(&ctx, &caller, &path_id("image", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", operation_id = "image_delete",
    summary = "Delete one of the account's images",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "An image ID (`img-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found` (a public image of another account, too)", body = ErrorBody),
        (status = 409, description = "`image_in_use`: instances that are not terminated use it, or disk images name it as their kernel_id", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("image", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
