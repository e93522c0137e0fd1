//! `/api/v1/images`.

use crate::app::image as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateImage, ErrorBody, Image, Page};

#[utoipa::path(post, path = "/api/v1/images", tag = "images", request_body = CreateImage,
    responses((status = 201, body = Image), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::CREATED, Json(app::insert(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Image>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Image>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Image>> {
    Ok(Json(app::fetch_visible(&ctx, &caller, &path_id("image", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("image", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
