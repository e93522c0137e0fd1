//! `/api/v1/networks`.

use crate::app::network as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateNetwork, ErrorBody, Network, Page};

#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", operation_id = "network_create",
    summary = "Create a network", request_body = CreateNetwork,
    responses(
        (status = 201, description = "The network", body = Network),
        (status = 400,
            description = "`invalid_name`, `invalid_cidr`, `invalid_network`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409,
            description = "`cidr_overlap`: it overlaps another network of the account, or the site's external network; `name_taken`: the account has a \
                network of that name",
            body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateNetwork>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", operation_id = "network_list",
    summary = "List the account's networks",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of networks", body = Page<Network>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Network>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/networks/{id}", tag = "networks", operation_id = "network_show",
    summary = "Show a network",
    params(
        ("id" = vdc_schema::id::NetworkId, Path,
            description = "A network ID (`nw-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The network", body = Network),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Network>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("network", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/networks/{id}", tag = "networks", operation_id = "network_delete",
    summary = "Delete a network",
    params(
        ("id" = vdc_schema::id::NetworkId, Path,
            description = "A network ID (`nw-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`network_in_use`: interfaces are still on it", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("network", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
