//! Host nodes and storage nodes, built from agent registrations; an admin sets a host's
//! zone and labels. Admin only: tenants see no infrastructure.

use crate::app::{page, paging_of, state_filter};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::host as store;
use crate::error::{ApiError, ApiResult};
use chrono::{DateTime, Utc};
use vdc_schema::api::{Evacuation, HostInstance, HostNode, ListQuery, Page, StorageNode, UpdateHostNode};
use vdc_schema::bus::AgentKind;
use vdc_schema::id::{HostNodeId, StorageNodeId};

/// When this dcmgr last heard the node's agent: heartbeats are kept in memory (every
/// dcmgr hears every one), and the row's `last_seen` is only written at registration and
/// at each online/offline change, so alone it showed an online host as last seen hours ago.
fn heard(ctx: &SharedCtx, kind: AgentKind, id: &str, row: DateTime<Utc>) -> DateTime<Utc> {
    let seen = ctx.agents.read().unwrap().get(&(kind, id.to_owned())).map(|a| a.last_seen_ms);
    match seen.and_then(DateTime::from_timestamp_millis) {
        Some(t) if t > row => t,
        _ => row,
    }
}

fn host(ctx: &SharedCtx, row: store::HostRow) -> ApiResult<HostNode> {
    let mut h = row.into_api()?;
    h.last_seen = heard(ctx, AgentKind::Hva, h.id.as_str(), h.last_seen);
    Ok(h)
}

fn storage(ctx: &SharedCtx, row: store::StorageRow) -> ApiResult<StorageNode> {
    let mut n = row.into_api()?;
    n.last_seen = heard(ctx, AgentKind::Sta, n.id.as_str(), n.last_seen);
    Ok(n)
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only an admin can see host and storage nodes".into()))
    }
}

pub async fn list_hosts(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<HostNode>> {
    require_admin(caller)?;
    let (limit, cursor) = paging_of::<HostNodeId>(&ListQuery { state: None, ..q.clone() })?;
    let state = state_filter::<vdc_schema::NodeState>(q)?;
    let rows = store::list_hosts(&ctx.db, &cursor, &state, limit).await?;
    let items = rows.into_iter().map(|r| host(ctx, r)).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |h| h.id.to_string()))
}

/// A host node, or 404. `id` is the path's ID as parsed, or why it is none: a tenant is
/// refused (403) before that is looked at, whatever the ID.
pub async fn fetch_host(ctx: &SharedCtx, caller: &Caller, id: ApiResult<HostNodeId>) -> ApiResult<HostNode> {
    require_admin(caller)?;
    let id = id?;
    host(ctx, store::get_host(&ctx.db, &id).await?.ok_or_else(|| ApiError::not_found("host node", id))?)
}

/// The instances a host holds, of every account (see [`store::instances_held`]): what
/// an operator moves or stops before taking the host down.
pub async fn host_instances(
    ctx: &SharedCtx,
    caller: &Caller,
    id: ApiResult<HostNodeId>,
    q: &ListQuery,
) -> ApiResult<Page<HostInstance>> {
    let host = fetch_host(ctx, caller, id).await?;
    let (limit, cursor) = paging_of::<vdc_schema::id::InstanceId>(q)?;
    let rows = store::instances_held(&ctx.db, host.id.as_str(), &cursor, limit).await?;
    let items = rows.into_iter().map(store::HostInstanceRow::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |i| i.id.to_string()))
}

/// Evacuates a host that is gone for good (see [`Evacuation`]): refused while it is
/// online, where its guests still run (stop them instead). Each instance is taken off
/// in a decision of its own (`controller::instance::evacuate`), so a start or a
/// terminate racing with it sees it before or after, never half-moved.
pub async fn evacuate(ctx: &SharedCtx, caller: &Caller, id: ApiResult<HostNodeId>) -> ApiResult<Evacuation> {
    let host = fetch_host(ctx, caller, id).await?;
    if host.state != vdc_schema::NodeState::Offline {
        return Err(ApiError::conflict(
            "host_online",
            format!(
                "host {} is {}: only a host that is down for good is evacuated (its guests and root disks are \
                 lost); stop its instances instead",
                host.id, host.state
            ),
        ));
    }
    let mut instances = Vec::new();
    let mut cursor = String::new();
    loop {
        let rows = store::instances_held(&ctx.db, host.id.as_str(), &cursor, 500).await?;
        let Some(last) = rows.last() else { break };
        cursor = last.id.clone();
        for r in rows {
            let moved =
                crate::datastore::retry(|| crate::controller::instance::evacuate(ctx, host.id.as_str(), &r.id)).await?;
            if moved {
                instances.push(r.id.parse().map_err(ApiError::internal)?);
            }
        }
    }
    // Its routers' SNAT addresses go back to the pool now: the idle-router release waits
    // for a host's nwagent, and this one is gone. Should it come back, it is told to
    // unplug the ports it holds, and its routers go with them.
    let mut tx = crate::db::begin(&ctx.db).await?;
    let routers = crate::datastore::floating_ip::release_routers_of(&mut tx, host.id.as_str()).await?;
    tx.commit().await?;
    tracing::warn!(host = %host.id, instances = instances.len(), routers, "host evacuated");
    Ok(Evacuation { host_node_id: host.id, instances })
}

pub async fn list_storage(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<StorageNode>> {
    require_admin(caller)?;
    let (limit, cursor) = paging_of::<vdc_schema::id::StorageNodeId>(q)?;
    let rows = store::list_storage(&ctx.db, &cursor, limit).await?;
    let items = rows.into_iter().map(|r| storage(ctx, r)).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |h| h.id.to_string()))
}

/// A storage node, or 404; `id` as for [`fetch_host`].
pub async fn fetch_storage(ctx: &SharedCtx, caller: &Caller, id: ApiResult<StorageNodeId>) -> ApiResult<StorageNode> {
    require_admin(caller)?;
    let id = id?;
    storage(ctx, store::get_storage(&ctx.db, &id).await?.ok_or_else(|| ApiError::not_found("storage node", id))?)
}

/// A zone: 1 to 63 of `[A-Za-z0-9._-]`, starting with a letter or digit.
pub fn check_zone(zone: &str) -> ApiResult<()> {
    if token_ok(zone, false) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_zone",
            format!(
                "zone {:?} is invalid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
                zone.chars().take(80).collect::<String>()
            ),
        ))
    }
}

/// A label: a key of 1 to 63 of `[A-Za-z0-9._/-]` starting with a letter or digit, and
/// a value of 0 to 63 of `[A-Za-z0-9._-]`.
pub fn check_label(key: &str, value: &str) -> ApiResult<()> {
    if token_ok(key, true) && (value.is_empty() || token_ok(value, false)) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_label",
            format!(
                "label {:?}={:?} is invalid: a key is 1 to 63 letters, digits, '.', '_', '-' or '/', starting with a \
                 letter or digit; a value is up to 63 letters, digits, '.', '_' or '-'",
                key.chars().take(80).collect::<String>(),
                value.chars().take(80).collect::<String>()
            ),
        ))
    }
}

fn token_ok(s: &str, slash: bool) -> bool {
    (1..=63).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slash && c == '/'))
}

/// A cordon's reason: one line an admin reads in listings, given with a cordon.
fn check_cordon_reason(reason: &str, schedulable: Option<bool>) -> ApiResult<()> {
    if schedulable == Some(true) {
        return Err(ApiError::bad(
            "invalid_cordon_reason",
            "a reason goes with a cordon (\"schedulable\": false); opening a host clears it",
        ));
    }
    if reason.chars().count() > 255 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_cordon_reason",
            "a cordon's reason is one line of at most 255 characters, without control characters",
        ));
    }
    Ok(())
}

/// What an update makes of a host's cordon, from what it asks (`schedulable`, `reason`,
/// checked) and the cordon now (`cordoned`, `had` its reason): (schedulable, reason) to
/// write, or None to leave it.
fn cordon_change(
    id: &HostNodeId,
    schedulable: Option<bool>,
    reason: Option<String>,
    cordoned: bool,
    had: &str,
) -> ApiResult<Option<(bool, String)>> {
    match (schedulable, reason) {
        // With a reason, refused by `check_cordon_reason`.
        (Some(true), _) => Ok(Some((true, String::new()))),
        // A cordon again without a reason keeps the one given before.
        (Some(false), reason) => Ok(Some((false, reason.unwrap_or_else(|| had.to_owned())))),
        (None, Some(reason)) if cordoned => Ok(Some((false, reason))),
        (None, Some(_)) => Err(ApiError::bad(
            "invalid_cordon_reason",
            format!("host {id} is not cordoned: send the reason with \"schedulable\": false"),
        )),
        (None, None) => Ok(None),
    }
}

/// Sets a host's zone and merges its labels, and cordons or opens it (admin only). The
/// API is the one source of truth for these: agent registrations leave them alone.
pub async fn update_host(
    ctx: &SharedCtx,
    caller: &Caller,
    id: ApiResult<HostNodeId>,
    req: UpdateHostNode,
) -> ApiResult<HostNode> {
    require_admin(caller)?;
    let id = id?;
    if let Some(z) = req.zone.as_deref().filter(|z| !z.is_empty()) {
        check_zone(z)?;
    }
    for (k, v) in &req.labels {
        check_label(k, v.as_deref().unwrap_or_default())?;
    }
    if let Some(r) = &req.cordon_reason {
        check_cordon_reason(r, req.schedulable)?;
    }
    let mut tx = crate::db::begin(&ctx.db).await?;
    // The row's lock first: concurrent label changes of one host merge, none is lost.
    if !store::lock_host(&mut tx, id.as_str()).await? {
        return Err(ApiError::not_found("host node", id));
    }
    let row = store::get_host_tx(&mut tx, id.as_str()).await?.ok_or_else(|| ApiError::not_found("host node", &id))?;
    let mut labels = store::split_labels(&row.labels);
    for (k, v) in req.labels {
        match v {
            Some(v) => labels.insert(k, v),
            None => labels.remove(&k),
        };
    }
    if labels.len() > 32 {
        return Err(ApiError::bad("invalid_label", "a host carries at most 32 labels"));
    }
    let zone = req.zone.unwrap_or(row.zone);
    store::set_zone_labels(&mut tx, id.as_str(), &zone, &store::join_labels(&labels)).await?;
    let cordon = cordon_change(&id, req.schedulable, req.cordon_reason, row.schedulable == 0, &row.cordon_reason)?;
    if let Some((open, reason)) = cordon {
        store::set_schedulable(&mut tx, id.as_str(), open, &reason).await?;
    }
    let row = store::get_host_tx(&mut tx, id.as_str()).await?.ok_or_else(|| ApiError::not_found("host node", &id))?;
    tx.commit().await?;
    // Placements from now on see it; one that read the model before is refused by the
    // reservation's UPDATE, which reads the row this transaction wrote.
    ctx.room.invalidate();
    tracing::info!(host = %id, zone = %zone, labels = %row.labels, schedulable = row.schedulable != 0,
        cordon_reason = %row.cordon_reason, "host updated");
    host(ctx, row)
}
