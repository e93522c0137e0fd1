//! `/api/v1/server_groups`.

use crate::app::server_group as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateServerGroup, ErrorBody, Page, ServerGroup};

#[utoipa::path(post, path = "/api/v1/server_groups", tag = "server_groups", operation_id = "server_group_create",
    summary = "Create a server group: instances placed together (affinity) or apart (anti-affinity)",
    request_body = CreateServerGroup,
    responses(
        (status = 201, description = "The server group", body = ServerGroup),
        (status = 400, description = "`invalid_name`, or a malformed body (`invalid_body`, e.g. an unknown policy)",
            body = ErrorBody),
        (status = 409, description = "`name_taken`: the account has a server group of this name", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateServerGroup>,
) -> ApiResult<(StatusCode, Json<ServerGroup>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/server_groups", tag = "server_groups", operation_id = "server_group_list",
    summary = "List the account's server groups",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of server groups", body = Page<ServerGroup>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<ServerGroup>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/server_groups/{id}", tag = "server_groups", operation_id = "server_group_show",
    summary = "Show a server group and its members",
    params(
        ("id" = vdc_schema::id::ServerGroupId, Path,
            description = "A server group ID (`srvg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The server group", body = ServerGroup),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ServerGroup>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("server group", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/server_groups/{id}", tag = "server_groups", operation_id = "server_group_delete",
    summary = "Delete a server group that has no members",
    params(
        ("id" = vdc_schema::id::ServerGroupId, Path,
            description = "A server group ID (`srvg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`server_group_in_use`: instances not terminated are in it (named)", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("server group", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
