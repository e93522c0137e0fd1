//! Virtual networks: an IPv4 CIDR, a gateway and a DHCP range, and a cloud-wide unique
//! VXLAN VNI. Networks of one account never overlap; that check runs in a transaction
//! that first bumps the account's `lock_seq`, so concurrent creates serialize on it.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, validate_name};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use vdc_schema::api::{CreateNetwork, ErrorBody, Network, Page};
use vdc_schema::id::NetworkId;

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub dhcp_start: String,
    pub dhcp_end: String,
    pub vni: i64,
    pub created_at: String,
}

pub(crate) const COLS: &str = "id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at";

impl Row {
    pub fn into_api(self) -> ApiResult<Network> {
        Ok(Network {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            cidr: self.cidr,
            gateway: self.gateway,
            dhcp_start: self.dhcp_start,
            dhcp_end: self.dhcp_end,
            vni: self.vni as u32,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

fn parse_addr(field: &str, s: &str, net: &Ipv4Net) -> ApiResult<Ipv4Addr> {
    let a: Ipv4Addr =
        s.parse().map_err(|_| ApiError::bad("invalid_network", format!("{field} {s:?} is not an IPv4 address")))?;
    if !net.contains(&a) || a == net.network() || a == net.broadcast() {
        return Err(ApiError::bad("invalid_network", format!("{field} {a} is not a host address of {net}")));
    }
    Ok(a)
}

/// Checks the request and fills in defaults: (cidr, gateway, dhcp_start, dhcp_end).
pub fn plan(req: &CreateNetwork) -> ApiResult<(Ipv4Net, Ipv4Addr, Ipv4Addr, Ipv4Addr)> {
    validate_name("network", &req.name)?;
    let net: Ipv4Net = req.cidr.parse().map_err(|_| {
        ApiError::bad("invalid_cidr", format!("cidr {:?} is not an IPv4 network such as 10.0.0.0/24", req.cidr))
    })?;
    if net.trunc() != net {
        return Err(ApiError::bad(
            "invalid_cidr",
            format!("cidr {net} has host bits set; did you mean {}?", net.trunc()),
        ));
    }
    if net.prefix_len() > 29 || net.prefix_len() < 8 {
        return Err(ApiError::bad("invalid_cidr", format!("cidr {net}: the prefix length must be between /8 and /29")));
    }
    let first = u32::from(net.network()) + 1;
    let last = u32::from(net.broadcast()) - 1;
    let gateway = match &req.gateway {
        Some(g) => parse_addr("gateway", g, &net)?,
        None => Ipv4Addr::from(first),
    };
    let start = match &req.dhcp_start {
        Some(s) => parse_addr("dhcp_start", s, &net)?,
        None => Ipv4Addr::from(if u32::from(gateway) == first { first + 1 } else { first }),
    };
    let end = match &req.dhcp_end {
        Some(s) => parse_addr("dhcp_end", s, &net)?,
        None => Ipv4Addr::from(last),
    };
    if u32::from(start) > u32::from(end) {
        return Err(ApiError::bad("invalid_network", format!("dhcp_start {start} is after dhcp_end {end}")));
    }
    Ok((net, gateway, start, end))
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", operation_id = "network_create",
    summary = "Create a network", request_body = CreateNetwork,
    responses(
        (status = 201, description = "The network", body = Network),
        (status = 400,
            description = "`invalid_name`, `invalid_cidr`, `invalid_network`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409, description = "`cidr_overlap`: it overlaps another network of the account", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateNetwork>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    let (net, gateway, start, end) = plan(&req)?;
    let n = crate::db::retry(|| try_insert(&ctx, &caller, &req.name, net, gateway, start, end)).await?;
    Ok((StatusCode::CREATED, Json(n)))
}

async fn try_insert(
    ctx: &SharedCtx,
    caller: &Caller,
    name: &str,
    net: Ipv4Net,
    gateway: Ipv4Addr,
    start: Ipv4Addr,
    end: Ipv4Addr,
) -> ApiResult<Network> {
    let mut tx = ctx.db.begin().await?;
    sqlx::query("UPDATE accounts SET lock_seq = lock_seq + 1 WHERE id = $1")
        .bind(caller.account_id.as_str())
        .execute(&mut *tx)
        .await?;
    let existing: Vec<(String, String)> = sqlx::query_as("SELECT id, cidr FROM networks WHERE account_id = $1")
        .bind(caller.account_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
    for (id, cidr) in existing {
        if let Ok(other) = cidr.parse::<Ipv4Net>() {
            if overlaps(&net, &other) {
                return Err(ApiError::conflict(
                    "cidr_overlap",
                    format!("cidr {net} overlaps network {id} ({other}) of this account; choose a disjoint range"),
                ));
            }
        }
    }
    let (vni,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(vni), 99) + 1 FROM networks").fetch_one(&mut *tx).await?;
    let id = NetworkId::generate();
    let now = db::now();
    let r =
        sqlx::query(&format!("INSERT INTO networks ({COLS}, account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(id.as_str())
            .bind(name)
            .bind(net.to_string())
            .bind(gateway.to_string())
            .bind(start.to_string())
            .bind(end.to_string())
            .bind(vni)
            .bind(&now)
            .bind(caller.account_id.as_str())
            .execute(&mut *tx)
            .await;
    // A VNI taken concurrently by another account is a unique violation: retried.
    r?;
    tx.commit().await?;
    Row {
        id: id.to_string(),
        name: name.to_owned(),
        cidr: net.to_string(),
        gateway: gateway.to_string(),
        dhcp_start: start.to_string(),
        dhcp_end: end.to_string(),
        vni,
        created_at: now,
    }
    .into_api()
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
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM networks WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |n| n.id.to_string())))
}

/// A network of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &NetworkId) -> ApiResult<Network> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLS} FROM networks WHERE id = $1 AND account_id = $2"))
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    row.ok_or_else(|| ApiError::not_found("network", id))?.into_api()
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
    Ok(Json(fetch(&ctx, &caller, &path_id("network", &id)?).await?))
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
    let id: NetworkId = path_id("network", &id)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Instance creates lock the network too, so no interface can appear on it between
        // this check and the commit (and the foreign key would refuse one).
        db::lock(&mut tx, db::Lock::Network, id.as_str()).await?;
        let owner: Option<(String,)> = sqlx::query_as("SELECT account_id FROM networks WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if owner.is_none_or(|(a,)| a != caller.account_id.as_str()) {
            return Err(ApiError::not_found("network", &id));
        }
        let users: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT instance_id FROM vifs WHERE network_id = $1 ORDER BY instance_id")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(
                "network_in_use",
                format!(
                    "network {id} is used by {}; terminate them first",
                    crate::resources::name_some("instance", users.iter().map(|u| u.0.as_str()))
                ),
            ));
        }
        // Routers' SNAT addresses on this network go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM networks WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cidr: &str) -> CreateNetwork {
        CreateNetwork { name: "n".into(), cidr: cidr.into(), gateway: None, dhcp_start: None, dhcp_end: None }
    }

    #[test]
    fn defaults_and_refusals() {
        let (net, gw, s, e) = plan(&req("10.1.0.0/24")).unwrap();
        assert_eq!(
            (net.to_string(), gw.to_string(), s.to_string(), e.to_string()),
            ("10.1.0.0/24".into(), "10.1.0.1".into(), "10.1.0.2".into(), "10.1.0.254".into())
        );
        assert!(plan(&req("10.1.0.5/24")).unwrap_err().to_string().contains("did you mean 10.1.0.0/24"));
        assert!(plan(&req("banana")).is_err());
        assert!(plan(&req("10.0.0.0/30")).is_err());
        assert!(overlaps(&"10.0.0.0/16".parse().unwrap(), &"10.0.5.0/24".parse().unwrap()));
        assert!(!overlaps(&"10.0.0.0/24".parse().unwrap(), &"10.0.1.0/24".parse().unwrap()));
    }
}
