//! `/api/v1/host_nodes` and `/api/v1/storage_nodes`.

use crate::app::node as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, ListParams};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, HostNode, Page, StorageNode};

#[utoipa::path(get, path = "/api/v1/host_nodes", tag = "nodes", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<HostNode>), (status = 403, body = ErrorBody)))]
pub async fn list_hosts(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<HostNode>>> {
    Ok(Json(app::list_hosts(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/host_nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = HostNode), (status = 404, body = ErrorBody)))]
pub async fn show_host(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostNode>> {
    Ok(Json(app::fetch_host(&ctx, &caller, path_id("host node", &id)).await?))
}

#[utoipa::path(get, path = "/api/v1/storage_nodes", tag = "nodes", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<StorageNode>), (status = 403, body = ErrorBody)))]
pub async fn list_storage(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<StorageNode>>> {
    Ok(Json(app::list_storage(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/storage_nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = StorageNode), (status = 404, body = ErrorBody)))]
pub async fn show_storage(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<StorageNode>> {
    Ok(Json(app::fetch_storage(&ctx, &caller, path_id("storage node", &id)).await?))
}
