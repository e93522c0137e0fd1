//! Host nodes and storage nodes: read-only, built from agent registrations. Admin only:
//! tenants see no infrastructure.

use crate::api::ListParams;
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id};
use axum::extract::{Path, State};
use axum::Json;
use vdc_schema::api::{ErrorBody, HostNode, Page, StorageNode};
use vdc_schema::id::{HostNodeId, StorageNodeId};

#[derive(sqlx::FromRow)]
struct HostRow {
    id: String,
    state: String,
    hypervisors: String,
    cpus: i64,
    memory_mib: i64,
    cpus_used: i64,
    memory_used_mib: i64,
    capabilities: String,
    last_seen: String,
}

const HOST_COLS: &str = "id, state, hypervisors, cpus, memory_mib, cpus_used, memory_used_mib, capabilities, last_seen";

impl HostRow {
    fn into_api(self) -> ApiResult<HostNode> {
        Ok(HostNode {
            id: self.id.parse().map_err(ApiError::internal)?,
            state: self.state.parse().map_err(ApiError::internal)?,
            hypervisors: db::split_list(&self.hypervisors),
            cpus: self.cpus as u32,
            memory_mib: self.memory_mib as u64,
            cpus_used: self.cpus_used as u32,
            memory_used_mib: self.memory_used_mib as u64,
            capabilities: serde_json::from_str(&self.capabilities).unwrap_or_default(),
            last_seen: db::parse_time(&self.last_seen),
        })
    }
}

#[derive(sqlx::FromRow)]
struct StorageRow {
    id: String,
    state: String,
    backend: String,
    capacity_mib: i64,
    used_mib: i64,
    last_seen: String,
}

impl StorageRow {
    fn into_api(self) -> ApiResult<StorageNode> {
        Ok(StorageNode {
            id: self.id.parse().map_err(ApiError::internal)?,
            state: self.state.parse().map_err(ApiError::internal)?,
            backend: self.backend.parse().map_err(ApiError::internal)?,
            capacity_mib: self.capacity_mib as u64,
            used_mib: self.used_mib as u64,
            last_seen: db::parse_time(&self.last_seen),
        })
    }
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only an admin can see host and storage nodes".into()))
    }
}

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
    require_admin(&caller)?;
    let (limit, cursor) = paging(&q)?;
    let state = crate::resources::state_filter::<vdc_schema::NodeState>(&q)?;
    let rows: Vec<HostRow> = sqlx::query_as(&format!(
        "SELECT {HOST_COLS} FROM host_nodes WHERE id > $1 AND ($2 = '' OR state = $2) ORDER BY id LIMIT $3"
    ))
    .bind(cursor)
    .bind(state)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(HostRow::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |h| h.id.to_string())))
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
    require_admin(&caller)?;
    let id: HostNodeId = path_id("host node", &id)?;
    let row: Option<HostRow> = sqlx::query_as(&format!("SELECT {HOST_COLS} FROM host_nodes WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    Ok(Json(row.ok_or_else(|| ApiError::not_found("host node", id))?.into_api()?))
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
    require_admin(&caller)?;
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<StorageRow> = sqlx::query_as(
        "SELECT id, state, backend, capacity_mib, used_mib, last_seen FROM storage_nodes WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(StorageRow::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |h| h.id.to_string())))
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
    require_admin(&caller)?;
    let id: StorageNodeId = path_id("storage node", &id)?;
    let row: Option<StorageRow> =
        sqlx::query_as("SELECT id, state, backend, capacity_mib, used_mib, last_seen FROM storage_nodes WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&ctx.db)
            .await?;
    Ok(Json(row.ok_or_else(|| ApiError::not_found("storage node", id))?.into_api()?))
}
