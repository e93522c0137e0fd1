//! `/api/v1/floating-ips`.

use crate::app::floating_ip as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{AssociateFloatingIp, CreateFloatingIp, ErrorBody, FloatingIp, Page};

#[utoipa::path(post, path = "/api/v1/floating-ips", tag = "floating-ips", request_body = CreateFloatingIp,
    responses((status = 201, body = FloatingIp), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateFloatingIp>,
) -> ApiResult<(StatusCode, Json<FloatingIp>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/floating-ips", tag = "floating-ips", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<FloatingIp>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<FloatingIp>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/floating-ips/{id}", tag = "floating-ips", params(("id" = String, Path)),
    responses((status = 200, body = FloatingIp), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("floating IP", &id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/associate", tag = "floating-ips", params(("id" = String, Path)),
    request_body = AssociateFloatingIp,
    responses((status = 200, body = FloatingIp), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn associate(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AssociateFloatingIp>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::associate(&ctx, &caller, &path_id("floating IP", &id)?, &req).await?))
}

#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/disassociate", tag = "floating-ips", params(("id" = String, Path)),
    responses((status = 200, body = FloatingIp), (status = 404, body = ErrorBody)))]
pub async fn disassociate(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::disassociate(&ctx, &caller, &path_id("floating IP", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/floating-ips/{id}", tag = "floating-ips", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("floating IP", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
