//! `/api/v1/host_nodes` and `/api/v1/storage_nodes`.

use crate::app::node as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, Evacuation, HostInstance, HostNode, Page, StorageNode, UpdateHostNode};

#[utoipa::path(get, path = "/api/v1/host_nodes", tag = "nodes", operation_id = "host_node_list",
    summary = "List host nodes (admin)",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::NodeState>, Query, description = "Only hosts in this state")),
    responses(
        (status = 200, description = "One page of host nodes", body = Page<HostNode>),
        (status = 403, description = "`forbidden`: only an admin sees nodes", body = ErrorBody)))]
pub async fn list_hosts(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<HostNode>>> {
    Ok(Json(app::list_hosts(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/host_nodes/{id}", tag = "nodes", operation_id = "host_node_show",
    summary = "Show a host node (admin)",
    params(
        ("id" = vdc_schema::id::HostNodeId, Path,
            description = "A host node ID (`hn-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The host node", body = HostNode),
        (status = 403, description = "`forbidden`: only an admin sees nodes", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show_host(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<HostNode>> {
    Ok(Json(app::fetch_host(&ctx, &caller, path_id("host node", &id)).await?))
}

#[utoipa::path(get, path = "/api/v1/host_nodes/{id}/instances", tag = "nodes", operation_id = "host_node_instances",
    summary = "List the instances a host node holds, of every account (admin)",
    description = "Instances placed on the host, and stopped ones whose disk the host keeps (`placed` false: \
        they start there again). Terminated instances are not listed.",
    params(
        ("id" = vdc_schema::id::HostNodeId, Path,
            description = "A host node ID (`hn-…`); an unknown or malformed one answers 404"),
        vdc_schema::api::ListQuery),
    responses(
        (status = 200, description = "One page of the host's instances", body = Page<HostInstance>),
        (status = 400, description = "`invalid_limit`, `invalid_cursor` or `invalid_query`", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin sees nodes", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn host_instances(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<HostInstance>>> {
    Ok(Json(app::host_instances(&ctx, &caller, path_id("host node", &id), &q).await?))
}

#[utoipa::path(post, path = "/api/v1/host_nodes/{id}/evacuate", tag = "nodes", operation_id = "host_node_evacuate",
    summary = "Evacuate a host node that is gone for good (admin)",
    description = "For a host that died and will not come back (as `nova evacuate` without shared storage): \
        every instance it held, placed there or stopped with its disk there, becomes stopped with no host \
        (terminated when a terminate was asked), its running jobs and a pending capture failed. The guests \
        and root disks on the host are lost; started again, an instance boots a fresh root disk from its \
        image on another host, with its volumes, addresses and floating IPs. Should the host come back, it \
        is told to remove the copies it holds. Refused while the host is online.",
    params(
        ("id" = vdc_schema::id::HostNodeId, Path,
            description = "A host node ID (`hn-…`); an unknown or malformed one answers 404")),
    responses(
        (status = 200, description = "The instances taken off the host", body = Evacuation),
        (status = 403, description = "`forbidden`: only an admin evacuates a host", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`host_online`: the host is online", body = ErrorBody)))]
pub async fn evacuate_host(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Evacuation>> {
    Ok(Json(app::evacuate(&ctx, &caller, path_id("host node", &id)).await?))
}

#[utoipa::path(get, path = "/api/v1/storage_nodes", tag = "nodes", operation_id = "storage_node_list",
    summary = "List storage nodes (admin)",
    params(vdc_schema::api::ListQuery),
    responses(
        (status = 200, description = "One page of storage nodes", body = Page<StorageNode>),
        (status = 403, description = "`forbidden`: only an admin sees nodes", body = ErrorBody)))]
pub async fn list_storage(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<StorageNode>>> {
    Ok(Json(app::list_storage(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/storage_nodes/{id}", tag = "nodes", operation_id = "storage_node_show",
    summary = "Show a storage node (admin)",
    params(
        ("id" = vdc_schema::id::StorageNodeId, Path,
            description = "A storage node ID (`sn-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The storage node", body = StorageNode),
        (status = 403, description = "`forbidden`: only an admin sees nodes", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show_storage(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<StorageNode>> {
    Ok(Json(app::fetch_storage(&ctx, &caller, path_id("storage node", &id)).await?))
}

#[utoipa::path(patch, path = "/api/v1/host_nodes/{id}", tag = "nodes", operation_id = "host_node_update",
    summary = "Set a host node's zone and labels, or cordon it (admin)",
    description = "The zone and labels instances ask for at create (`zone`, `host_labels`). Labels merge: a key \
        with a value sets it, a key with null removes it, keys not named stay. An empty `zone` takes the host out \
        of any zone. `schedulable: false` cordons the host: no new instance is placed there from the moment \
        this answers (creates, imports, and starts of instances that have no host), while what runs there keeps \
        running and an instance stopped there starts there again; `true` opens it again and clears \
        `cordon_reason`. `cordon_reason` says why (with `schedulable: false`, or alone for a host already \
        cordoned). Agents do not set these: the API is their one source.",
    request_body = UpdateHostNode,
    params(
        ("id" = vdc_schema::id::HostNodeId, Path,
            description = "A host node ID (`hn-…`); an unknown or malformed one answers 404")),
    responses(
        (status = 200, description = "The host node as it is now", body = HostNode),
        (status = 400, description = "`invalid_zone`, `invalid_label`, `invalid_cordon_reason` (a reason with \
            `schedulable: true` or for a host not cordoned, over 255 characters, or with control characters), or a \
            malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin changes nodes", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn update_host(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<UpdateHostNode>,
) -> ApiResult<Json<HostNode>> {
    Ok(Json(app::update_host(&ctx, &caller, path_id("host node", &id), req).await?))
}
