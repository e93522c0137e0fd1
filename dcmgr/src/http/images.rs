//! `/api/v1/images`.

use crate::app::image as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateImage, ErrorBody, Image, ImageMembers, Page};

#[utoipa::path(post, path = "/api/v1/images", tag = "images", operation_id = "image_create",
    summary = "Register an image",
    description = "Without `source` the image is `pending` until its data is uploaded with \
        `PUT /api/v1/images/{id}/file` (as with OpenStack Glance). With an `http(s)://` URL, dcmgr fetches \
        the data itself (public addresses only) and the image is `pending` until it is stored and checked, \
        then `available` or `failed` (see `failure_reason`). A host file is an operator's, from the \
        directories dcmgr's configuration names.",
    request_body = CreateImage,
    responses(
        (status = 201, description = "The image", body = Image),
        (status = 400,
            description = "`invalid_name`, `invalid_image`, `invalid_source` (a malformed URL, a scheme other \
                than http(s), a host file outside the configured directories), `invalid_checksum`, \
                `kernel_options_need_kernel_image` (initrd or kernel_cmdline on a non-kernel image), `unsupported_format` \
                (a listed hypervisor cannot boot the format), `invalid_boot_mode`, `invalid_kernel_id`, `invalid_min_disk`, \
                `invalid_os`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: a tenant named a host file, or asked for a public image", body = ErrorBody),
        (status = 409, description = "`name_taken`: the account has an image of that name", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::CREATED, Json(app::insert(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images", operation_id = "image_list",
    summary = "List the account's images, the public ones and those shared with it that it accepted",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name"),
        ("member_status" = Option<String>, Query,
            description = "`accepted` (the default): the account's images, the public ones and those shared \
                with it that it accepted; `pending`, `rejected`: only the images shared with it that it has not \
                answered, or declined; `all`: every one it sees")),
    responses(
        (status = 200, description = "One page of images", body = Page<Image>),
        (status = 400, description = "`invalid_query`: an unknown `member_status`", body = ErrorBody)))]
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
            description = "An image ID (`img-…`); an unknown or malformed one, or another account's the caller does not see, answers 404")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Image>> {
    Ok(Json(app::as_seen_by(&caller, app::fetch_visible(&ctx, &caller, &path_id("image", &id)?).await?)))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", operation_id = "image_delete",
    summary = "Delete one of the account's images",
    description = "The image is gone for every account at once: it is no longer listed, shown, shared or \
        usable for a new instance or volume. Instances that were booted from it (of any account it was \
        shared with) keep running, stop and start again, on another host too: its data is kept for them, \
        and removed once none of them is left (terminated) and no volume is still being made from it. \
        Until then its name stays held (`name_taken` names the deleted image).",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "An image ID (`img-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`not_image_owner`: the caller sees the image (public, or shared with its account) but does not own it", body = ErrorBody),
        (status = 404, description = "`not_found`: no image the caller sees", body = ErrorBody),
        (status = 409, description = "`image_capturing`: its capture from an instance has not ended (a pending image of a snapshot is deleted, which cancels it)", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("image", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/images/{id}/file", tag = "images", operation_id = "image_upload",
    summary = "Upload the data of a pending image",
    description = "The body is the image data as it is (`Content-Type: application/octet-stream`), streamed: \
        a qcow2 or raw disk, or a gzip-compressed tarball for a `tar` image. dcmgr computes its SHA-256 as it \
        arrives (it must match the image's `checksum` if one was given), probes the real format with \
        `qemu-img info` (the answer's `format` is what was found), refuses a qcow2 with a backing file or \
        an external data file and a tarball with an entry outside its root. The image then is `available`. \
        A refused upload fails the image (`failure_reason`); an upload cut off leaves it `pending`, and \
        nothing of it is kept.",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "One of the account's pending images (`img-…`); another one answers 404")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The image data"),
    responses(
        (status = 200, description = "The image, now `available`", body = Image),
        (status = 400,
            description = "The data is refused and the image is `failed`: `checksum_mismatch`, `image_too_large`, \
                `unsupported_format`, `format_mismatch` (a tar image that is not a .tar.gz), `invalid_image_data`, \
                `backing_file`, `external_data_file`, `virtual_size_too_large`, `empty_image`, `unsafe_tar`; or \
                `upload_incomplete`: the body ended early (the image stays `pending`)",
            body = ErrorBody),
        (status = 403, description = "`not_image_owner`: the caller sees the image (public, or shared with its account) but does not own it", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409,
            description = "`invalid_state`: the image is not pending, gets its data from a URL, or is being uploaded",
            body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn upload(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    req: Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body().into_data_stream();
    let res = match path_id("image", &id) {
        Ok(id) => app::upload(&ctx, &caller, &id, announced, body).await,
        Err(e) => Err(e),
    };
    match res {
        Ok(image) => Json(image).into_response(),
        Err(e) => {
            // The body may be unread: this connection cannot carry another request, and
            // a client reusing it would see it cut.
            let mut r = e.into_response();
            r.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            r
        }
    }
}

#[utoipa::path(get, path = "/api/v1/images/{id}/members", tag = "images", operation_id = "image_members",
    summary = "The accounts one of the account's images is shared with",
    params(("id" = vdc_schema::id::ImageId, Path, description = "One of the account's images (`img-…`)")),
    responses(
        (status = 200, description = "The members", body = ImageMembers),
        (status = 403, description = "`not_image_owner`: the caller sees the image (public, or shared with its account) but does not own it", body = ErrorBody),
        (status = 404, description = "`not_found`: no image the caller sees", body = ErrorBody)))]
pub async fn members(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ImageMembers>> {
    Ok(Json(app::members(&ctx, &caller, &path_id("image", &id)?).await?))
}

#[utoipa::path(put, path = "/api/v1/images/{id}/members/{account_id}", tag = "images",
    operation_id = "image_share",
    summary = "Offer one of the account's images to another account, or accept one offered to it",
    description = "The owner offers the image: the member can then show it and boot it (or fill volumes \
        from it) by its ID, and it is listed to the member, and found by its name, once the member accepts \
        it (`member_status` `pending`, then `accepted`). The member cannot change, share or delete it. Any \
        well-formed account ID is accepted (whether the account exists is not disclosed). An account offered \
        the image accepts it by naming itself (the answer then lists only itself); a member that declined can \
        accept later, but the owner's offer again does not undo a decline.",
    params(
        ("id" = vdc_schema::id::ImageId, Path, description = "One of the account's images, or one offered to it (`img-…`)"),
        ("account_id" = vdc_schema::id::AccountId, Path, description = "The account to offer it to, or the caller's own to accept it (`a-…`)")),
    responses(
        (status = 201, description = "Offered; the members", body = ImageMembers),
        (status = 200, description = "Offered already (or declined by the member), or accepted; the members", body = ImageMembers),
        (status = 400, description = "`invalid_member` (the owner itself), `too_many_members`", body = ErrorBody),
        (status = 403, description = "`not_image_owner`: the caller sees the image (public, or shared with its account) but does not own it", body = ErrorBody),
        (status = 404, description = "`not_found`: the image, or a malformed account ID", body = ErrorBody)))]
pub async fn share(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, account)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<ImageMembers>)> {
    let id = path_id("image", &id)?;
    let account = path_id("account", &account)?;
    let (m, done) = app::set_member(&ctx, &caller, &id, &account, true).await?;
    Ok((if done == app::Shared::Offered { StatusCode::CREATED } else { StatusCode::OK }, Json(m)))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}/members/{account_id}", tag = "images",
    operation_id = "image_unshare",
    summary = "Stop sharing one of the account's images with an account, or decline one shared with it",
    description = "Withdrawn by the owner: instances the member already runs keep running; it cannot start \
        new ones. A member that names itself declines the image: it is no longer listed to it (`?member_status=\
        rejected` lists it) and the owner cannot offer it again; the answer then lists only the member.",
    params(
        ("id" = vdc_schema::id::ImageId, Path, description = "One of the account's images, or one shared with it (`img-…`)"),
        ("account_id" = vdc_schema::id::AccountId, Path, description = "A member (`a-…`), or the caller's own account to decline")),
    responses(
        (status = 200, description = "The members left", body = ImageMembers),
        (status = 400, description = "`invalid_member` (the owner itself)", body = ErrorBody),
        (status = 403, description = "`not_image_owner`: the caller sees the image (public, or shared with its account) but does not own it", body = ErrorBody),
        (status = 404, description = "`not_found`: the image, or an account that is not a member", body = ErrorBody)))]
pub async fn unshare(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, account)): Path<(String, String)>,
) -> ApiResult<Json<ImageMembers>> {
    let id = path_id("image", &id)?;
    let account = path_id("account", &account)?;
    Ok(Json(app::set_member(&ctx, &caller, &id, &account, false).await?.0))
}
