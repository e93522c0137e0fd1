//! `/api/v1/floating-ips`.

use crate::app::floating_ip as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{AssociateFloatingIp, CreateFloatingIp, ErrorBody, FloatingIp, Page};

#[utoipa::path(post, path = "/api/v1/floating-ips", tag = "floating-ips", operation_id = "floating_ip_create",
    summary = "Allocate an address of the external pool", request_body = CreateFloatingIp,
    responses(
        (status = 201, description = "The floating IP", body = FloatingIp),
        (status = 400, description = "`invalid_ip`: not an address of the pool; or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409, description = "`ip_in_use`: the address asked for is allocated", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use); `no_external_network`: the site has none; `no_capacity`: the pool is exhausted, or floating IPs hold all of it but the addresses kept for routers (`external.router_reserve`)",
            body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateFloatingIp>,
) -> ApiResult<(StatusCode, Json<FloatingIp>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/floating-ips", tag = "floating-ips", operation_id = "floating_ip_list",
    summary = "List the account's floating IPs",
    params(vdc_schema::api::ListQuery),
    responses((status = 200, description = "One page of floating IPs", body = Page<FloatingIp>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<FloatingIp>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/floating-ips/{id}", tag = "floating-ips", operation_id = "floating_ip_show",
    summary = "Show a floating IP",
    params(
        ("id" = vdc_schema::id::FloatingIpId, Path,
            description = "A floating IP ID (`fip-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The floating IP", body = FloatingIp),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("floating IP", &id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/associate", tag = "floating-ips",
    operation_id = "floating_ip_associate", summary = "Map a floating IP to an interface of an instance",
    request_body = AssociateFloatingIp,
    params(
        ("id" = vdc_schema::id::FloatingIpId, Path,
            description = "A floating IP ID (`fip-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The floating IP, associated (or already so); one associated with another interface moved from it", body = FloatingIp),
        (status = 404, description = "`not_found`: the floating IP, the instance, or the interface on it",
            body = ErrorBody),
        (status = 409,
            description = "`no_interface`, or `interface_has_floating_ip` (another floating IP is on \
                the interface)", body = ErrorBody)))]
pub async fn associate(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AssociateFloatingIp>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::associate(&ctx, &caller, &path_id("floating IP", &id)?, &req).await?))
}

#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/disassociate", tag = "floating-ips",
    operation_id = "floating_ip_disassociate", summary = "Unmap a floating IP",
    params(
        ("id" = vdc_schema::id::FloatingIpId, Path,
            description = "A floating IP ID (`fip-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The floating IP, not associated", body = FloatingIp),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn disassociate(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<FloatingIp>> {
    Ok(Json(app::disassociate(&ctx, &caller, &path_id("floating IP", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/floating-ips/{id}", tag = "floating-ips", operation_id = "floating_ip_delete",
    summary = "Release a floating IP",
    params(
        ("id" = vdc_schema::id::FloatingIpId, Path,
            description = "A floating IP ID (`fip-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Released"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`floating_ip_associated`: disassociate it first", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("floating IP", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
