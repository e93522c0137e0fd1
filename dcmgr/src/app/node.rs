//! Host nodes and storage nodes: read-only, built from agent registrations. Admin only:
//! tenants see no infrastructure.

use crate::app::{page, paging, state_filter};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::host as store;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{HostNode, ListQuery, Page, StorageNode};
use vdc_schema::id::{HostNodeId, StorageNodeId};

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only an admin can see host and storage nodes".into()))
    }
}

pub async fn list_hosts(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<HostNode>> {
    require_admin(caller)?;
    let (limit, cursor) = paging(q)?;
    let state = state_filter::<vdc_schema::NodeState>(q)?;
    let rows = store::list_hosts(&ctx.db, &cursor, &state, limit).await?;
    let items = rows.into_iter().map(store::HostRow::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |h| h.id.to_string()))
}

/// A host node, or 404. `id` is the path's ID as parsed, or why it is none: a tenant is
/// refused (403) before that is looked at, whatever the ID.
pub async fn fetch_host(ctx: &SharedCtx, caller: &Caller, id: ApiResult<HostNodeId>) -> ApiResult<HostNode> {
    require_admin(caller)?;
    let id = id?;
    store::get_host(&ctx.db, &id).await?.ok_or_else(|| ApiError::not_found("host node", id))?.into_api()
}

pub async fn list_storage(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<StorageNode>> {
    require_admin(caller)?;
    let (limit, cursor) = paging(q)?;
    let rows = store::list_storage(&ctx.db, &cursor, limit).await?;
    let items = rows.into_iter().map(store::StorageRow::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |h| h.id.to_string()))
}

/// A storage node, or 404; `id` as for [`fetch_host`].
pub async fn fetch_storage(ctx: &SharedCtx, caller: &Caller, id: ApiResult<StorageNodeId>) -> ApiResult<StorageNode> {
    require_admin(caller)?;
    let id = id?;
    store::get_storage(&ctx.db, &id).await?.ok_or_else(|| ApiError::not_found("storage node", id))?.into_api()
}
