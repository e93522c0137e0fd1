//! Floating IPs: addresses of the site's external network that an account holds and maps
//! 1:1 onto one interface of an instance. The same pool gives each host's router for a
//! network its outbound SNAT address ([`router_snat_ip`]).
//!
//! ```text
//!  allocated ─associate─► associated ─disassociate─► allocated ─delete─► (gone)
//! ```
//! An association takes effect when nwagent re-programmes the interface; terminating the
//! instance disassociates.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use std::net::Ipv4Addr;
use vdc_schema::api::{AssociateFloatingIp, CreateFloatingIp, ErrorBody, FloatingIp, Page};
use vdc_schema::id::FloatingIpId;

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    account_id: Option<String>,
    ip: String,
    instance_id: Option<String>,
    vif_id: Option<String>,
    created_at: String,
    updated_at: String,
}

const COLS: &str = "id, account_id, ip, instance_id, vif_id, created_at, updated_at";

impl Row {
    fn into_api(self) -> ApiResult<FloatingIp> {
        Ok(FloatingIp {
            id: self.id.parse().map_err(ApiError::internal)?,
            ip: self.ip,
            instance_id: self.instance_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            interface_id: self.vif_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            created_at: db::parse_time(&self.created_at),
            updated_at: db::parse_time(&self.updated_at),
        })
    }
}

fn no_external() -> ApiError {
    ApiError::Unprocessable {
        code: "no_external_network",
        message: "this site has no external network: set [external] in dcmgr's configuration".into(),
    }
}

/// Inserts a new external address row: `want`, or the first free one of the pool.
async fn allocate(
    ctx: &SharedCtx,
    want: Option<Ipv4Addr>,
    account: Option<&str>,
    router: Option<(&str, &str)>,
) -> ApiResult<(String, String)> {
    let ext = ctx.config.external.as_ref().ok_or_else(no_external)?;
    let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
    db::retry(|| async {
        let used: Vec<(String,)> = sqlx::query_as("SELECT ip FROM floating_ips").fetch_all(&ctx.db).await?;
        let used: std::collections::HashSet<String> = used.into_iter().map(|u| u.0).collect();
        let ip = match want {
            Some(w) if used.contains(&w.to_string()) => {
                return Err(ApiError::conflict("ip_in_use", format!("{w} is already allocated")))
            }
            Some(w) => w,
            None => (u32::from(start)..=u32::from(end))
                .map(Ipv4Addr::from)
                .find(|a| !used.contains(&a.to_string()))
                .ok_or_else(|| ApiError::Unprocessable {
                    code: "no_capacity",
                    message: format!("the external pool {start}–{end} is exhausted"),
                })?,
        };
        let id = FloatingIpId::generate().to_string();
        let now = db::now();
        sqlx::query(
            "INSERT INTO floating_ips (id, account_id, ip, instance_id, vif_id, network_id, host_id, created_at, updated_at)
             VALUES ($1, $2, $3, NULL, NULL, $4, $5, $6, $6)",
        )
        .bind(&id)
        .bind(account)
        .bind(ip.to_string())
        .bind(router.map(|r| r.0))
        .bind(router.map(|r| r.1))
        .bind(&now)
        .execute(&ctx.db)
        .await?;
        Ok((id, ip.to_string()))
    })
    .await
}

/// The SNAT address of `host`'s router for `network`, allocated on first use; None
/// without an external network.
pub async fn router_snat_ip(ctx: &SharedCtx, network: &str, host: &str) -> ApiResult<Option<String>> {
    if ctx.config.external.is_none() {
        return Ok(None);
    }
    let found: Option<(String,)> = sqlx::query_as("SELECT ip FROM floating_ips WHERE network_id = $1 AND host_id = $2")
        .bind(network)
        .bind(host)
        .fetch_optional(&ctx.db)
        .await?;
    if let Some((ip,)) = found {
        return Ok(Some(ip));
    }
    match allocate(ctx, None, None, Some((network, host))).await {
        Ok((_, ip)) => Ok(Some(ip)),
        // Another dispatch allocated it meanwhile.
        Err(_) => {
            let again: Option<(String,)> =
                sqlx::query_as("SELECT ip FROM floating_ips WHERE network_id = $1 AND host_id = $2")
                    .bind(network)
                    .bind(host)
                    .fetch_optional(&ctx.db)
                    .await?;
            Ok(again.map(|r| r.0))
        }
    }
}

/// The floating IP associated with an interface, if any.
pub async fn of_interface<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    vif: &str,
) -> ApiResult<Option<String>> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT ip FROM floating_ips WHERE vif_id = $1").bind(vif).fetch_optional(db).await?;
    Ok(r.map(|r| r.0))
}

async fn fetch_own(ctx: &SharedCtx, caller: &Caller, id: &FloatingIpId) -> ApiResult<Row> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM floating_ips WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    match row {
        Some(r) if r.account_id.as_deref() == Some(caller.account_id.as_str()) => Ok(r),
        _ => Err(ApiError::not_found("floating IP", id)),
    }
}

#[utoipa::path(post, path = "/api/v1/floating-ips", tag = "floating-ips", operation_id = "floating_ip_create",
    summary = "Allocate an address of the external pool", request_body = CreateFloatingIp,
    responses(
        (status = 201, description = "The floating IP", body = FloatingIp),
        (status = 400, description = "`invalid_ip`: not an address of the pool; or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409, description = "`ip_in_use`: the address asked for is allocated", body = ErrorBody),
        (status = 422, description = "`no_external_network`: the site has none; `no_capacity`: the pool is exhausted",
            body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateFloatingIp>,
) -> ApiResult<(StatusCode, Json<FloatingIp>)> {
    let ext = ctx.config.external.as_ref().ok_or_else(no_external)?;
    let want = match &req.ip {
        Some(s) => {
            let a: Ipv4Addr =
                s.parse().map_err(|_| ApiError::bad("invalid_ip", format!("ip {s:?} is not an IPv4 address")))?;
            let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
            if a < start || a > end {
                return Err(ApiError::bad("invalid_ip", format!("ip {a} is outside the external pool {start}–{end}")));
            }
            Some(a)
        }
        None => None,
    };
    let (id, _) = allocate(&ctx, want, Some(caller.account_id.as_str()), None).await?;
    let row = fetch_own(&ctx, &caller, &id.parse().map_err(ApiError::internal)?).await?;
    Ok((StatusCode::CREATED, Json(row.into_api()?)))
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
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM floating_ips WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |f| f.id.to_string())))
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
    Ok(Json(fetch_own(&ctx, &caller, &path_id("floating IP", &id)?).await?.into_api()?))
}

#[utoipa::path(post, path = "/api/v1/floating-ips/{id}/associate", tag = "floating-ips",
    operation_id = "floating_ip_associate", summary = "Map a floating IP to an interface of an instance",
    request_body = AssociateFloatingIp,
    params(
        ("id" = vdc_schema::id::FloatingIpId, Path,
            description = "A floating IP ID (`fip-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The floating IP, associated (or already so)", body = FloatingIp),
        (status = 404, description = "`not_found`: the floating IP, the instance, or the interface on it",
            body = ErrorBody),
        (status = 409,
            description = "`no_interface`, `floating_ip_associated` (with another interface), or \
                `interface_has_floating_ip`", body = ErrorBody)))]
pub async fn associate(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AssociateFloatingIp>,
) -> ApiResult<Json<FloatingIp>> {
    let id: FloatingIpId = path_id("floating IP", &id)?;
    let vif = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // The instance, then the address: terminate locks the instance and then frees its
        // addresses.
        db::lock(&mut tx, db::Lock::Instance, req.instance_id.as_str()).await?;
        let inst = match crate::datastore::instance::get(&mut *tx, req.instance_id.as_str()).await? {
            Some(i) if i.account_id == caller.account_id.as_str() => i,
            _ => return Err(ApiError::not_found("instance", &req.instance_id)),
        };
        let row = lock_own(&mut tx, &caller, &id).await?;
        if inst.state == vdc_schema::InstanceState::Terminated.as_str() {
            return Err(ApiError::conflict("invalid_state", format!("instance {} is terminated", inst.id)));
        }
        let vifs: Vec<(String,)> = sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1 ORDER BY position")
            .bind(inst.id.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let vif = match &req.interface_id {
            Some(v) => vifs
                .iter()
                .find(|(i,)| i == v.as_str())
                .map(|(i,)| i.clone())
                .ok_or_else(|| ApiError::not_found("interface", v))?,
            None => vifs.first().map(|(i,)| i.clone()).ok_or_else(|| {
                ApiError::conflict(
                    "no_interface",
                    format!("instance {} has no interface to map the address to", inst.id),
                )
            })?,
        };
        if row.vif_id.as_deref() == Some(vif.as_str()) {
            return Ok(None);
        }
        if let Some(other) = &row.instance_id {
            return Err(ApiError::conflict(
                "floating_ip_associated",
                format!("{} is associated with {other}; disassociate it first", row.ip),
            ));
        }
        // The unique index on vif_id is the last guard against two addresses racing for one interface.
        if let Some(ip) = of_interface(&mut *tx, &vif).await? {
            return Err(ApiError::conflict("interface_has_floating_ip", format!("interface {vif} already has {ip}")));
        }
        sqlx::query("UPDATE floating_ips SET instance_id = $1, vif_id = $2, updated_at = $3 WHERE id = $4")
            .bind(inst.id.as_str())
            .bind(&vif)
            .bind(db::now())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        crate::resources::interface::bump(&mut tx, &vif).await?;
        tx.commit().await?;
        Ok(Some(vif))
    })
    .await?;
    if let Some(v) = vif.and_then(|v| v.parse().ok()) {
        ctx.enqueue(Work::Interface(v));
    }
    Ok(Json(fetch_own(&ctx, &caller, &id).await?.into_api()?))
}

/// Locks the caller's floating IP in `tx` and reads it; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &FloatingIpId) -> ApiResult<Row> {
    db::lock(tx, db::Lock::FloatingIp, id.as_str()).await?;
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM floating_ips WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
    match row {
        Some(r) if r.account_id.as_deref() == Some(caller.account_id.as_str()) => Ok(r),
        _ => Err(ApiError::not_found("floating IP", id)),
    }
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
    let id: FloatingIpId = path_id("floating IP", &id)?;
    let vif = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        let row = lock_own(&mut tx, &caller, &id).await?;
        let Some(vif) = row.vif_id else { return Ok(None) };
        sqlx::query("UPDATE floating_ips SET instance_id = NULL, vif_id = NULL, updated_at = $1 WHERE id = $2")
            .bind(db::now())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        crate::resources::interface::bump(&mut tx, &vif).await?;
        tx.commit().await?;
        Ok(Some(vif))
    })
    .await?;
    if let Some(v) = vif.and_then(|v| v.parse().ok()) {
        ctx.enqueue(Work::Interface(v));
    }
    Ok(Json(fetch_own(&ctx, &caller, &id).await?.into_api()?))
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
    let id: FloatingIpId = path_id("floating IP", &id)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        let row = lock_own(&mut tx, &caller, &id).await?;
        if let Some(i) = &row.instance_id {
            return Err(ApiError::conflict(
                "floating_ip_associated",
                format!("{} is associated with {i}; disassociate it first", row.ip),
            ));
        }
        sqlx::query("DELETE FROM floating_ips WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
