//! Virtual networks: an IPv4 CIDR, a gateway and a DHCP range, and a cloud-wide unique
//! VXLAN VNI. Networks of one account never overlap; that check runs in a transaction
//! that first bumps the account's `lock_seq` (`quota::enforce`), so concurrent creates
//! serialize on it.

use crate::app::{check_name_free, name_some, page, paging_of, quota, validate_name};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, network as store};
use crate::error::{ApiError, ApiResult};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use vdc_schema::api::{CreateNetwork, ListQuery, Network, Page, QuotaKey};
use vdc_schema::id::NetworkId;

fn parse_addr(field: &str, s: &str, net: &Ipv4Net) -> ApiResult<Ipv4Addr> {
    let a: Ipv4Addr =
        s.parse().map_err(|_| ApiError::bad("invalid_network", format!("{field} {s:?} is not an IPv4 address")))?;
    if a.to_string() != s {
        return Err(ApiError::bad("invalid_network", format!("{field} {s:?}: write it as {a}")));
    }
    if !net.contains(&a) || a == net.network() || a == net.broadcast() {
        return Err(ApiError::bad("invalid_network", format!("{field} {a} is not a host address of {net}")));
    }
    Ok(a)
}

/// Ranges no tenant network may use: guests would lose what the address means.
const RESERVED: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "the loopback range"),
    ("169.254.0.0/16", "the link-local range of the metadata service"),
    ("224.0.0.0/4", "the multicast range"),
    ("240.0.0.0/4", "the reserved range"),
];

/// Why `net` is no tenant network's range ([`RESERVED`]), if it overlaps one.
pub fn reserved(net: &Ipv4Net) -> Option<String> {
    let (r, what) = RESERVED.iter().find(|(r, _)| overlaps(net, &r.parse().unwrap()))?;
    Some(format!("cidr {net} overlaps {r}, {what}; choose a private range"))
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
    // Leading zeros are octal to some tools (010 is 8 to inet_aton): the range a user
    // meant must be the one stored.
    if net.to_string() != req.cidr {
        return Err(ApiError::bad("invalid_cidr", format!("cidr {:?}: write it as {net}", req.cidr)));
    }
    if net.prefix_len() > 29 || net.prefix_len() < 8 {
        return Err(ApiError::bad("invalid_cidr", format!("cidr {net}: the prefix length must be between /8 and /29")));
    }
    if let Some(why) = reserved(&net) {
        return Err(ApiError::bad("invalid_cidr", why));
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

/// Refuses `net` if it overlaps one of the account's networks, given as (id, cidr).
fn check_disjoint(net: &Ipv4Net, existing: &[(String, String)]) -> ApiResult<()> {
    for (id, cidr) in existing {
        if let Ok(other) = cidr.parse::<Ipv4Net>() {
            if overlaps(net, &other) {
                return Err(ApiError::conflict(
                    "cidr_overlap",
                    format!("cidr {net} overlaps network {id} ({other}) of this account; choose a disjoint range"),
                ));
            }
        }
    }
    Ok(())
}

/// The site's external network (floating IPs, routers' outbound addresses), if any.
pub fn external_cidr(ctx: &SharedCtx) -> Option<Ipv4Net> {
    ctx.config.external.as_ref().and_then(|x| x.cidr.parse().ok())
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateNetwork) -> ApiResult<Network> {
    let (net, gateway, start, end) = plan(&req)?;
    // Inside it, a guest's traffic to those addresses would stay on the tenant network.
    if let Some(x) = external_cidr(ctx).filter(|x| overlaps(&net, x)) {
        return Err(ApiError::conflict(
            "cidr_overlap",
            format!("cidr {net} overlaps this site's external network {x} (floating IPs); choose a disjoint range"),
        ));
    }
    db::retry(|| try_insert(ctx, caller, &req.name, net, gateway, start, end)).await
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
    let mut tx = db::begin(&ctx.db).await?;
    quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::Networks, 1)]).await?;
    check_name_free(&mut tx, db::Named::Network, &caller.account_id, name).await?;
    check_disjoint(&net, &store::cidrs_of(&mut tx, &caller.account_id).await?)?;
    let vni = store::next_vni(&mut tx).await?;
    let row = store::Row {
        id: NetworkId::generate().to_string(),
        name: name.to_owned(),
        cidr: net.to_string(),
        gateway: gateway.to_string(),
        dhcp_start: start.to_string(),
        dhcp_end: end.to_string(),
        vni,
        created_at: db::now(),
    };
    // A VNI taken concurrently by another account is a unique violation: retried.
    store::insert(&mut tx, &caller.account_id, &row).await?;
    tx.commit().await?;
    ctx.events.wake();
    row.into_api()
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Network>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::NetworkId>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |n| n.id.to_string()))
}

/// A network of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &NetworkId) -> ApiResult<Network> {
    store::get_own(&ctx.db, &caller.account_id, id).await?.ok_or_else(|| ApiError::not_found("network", id))?.into_api()
}

/// Deletes one of the caller's networks that no interface is on.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &NetworkId) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Instance creates lock the network too, so no interface can appear on it between
        // this check and the commit (and the foreign key would refuse one).
        db::lock(&mut tx, db::Lock::Network, id.as_str()).await?;
        let owner = store::owner(&mut tx, id).await?;
        if owner.is_none_or(|a| a != caller.account_id.as_str()) {
            return Err(ApiError::not_found("network", id));
        }
        let users = store::users(&mut tx, id).await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(
                "network_in_use",
                format!(
                    "network {id} is used by {}; terminate them first",
                    name_some("instance", users.iter().map(String::as_str))
                ),
            ));
        }
        // Routers' SNAT addresses on this network go with it (ON DELETE CASCADE).
        store::delete(&mut tx, id).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await
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
        for bad in ["127.0.0.0/8", "127.1.0.0/16", "169.254.0.0/16", "169.254.169.0/24", "224.0.0.0/8", "0.0.0.0/8"] {
            let e = plan(&req(bad)).unwrap_err();
            assert!(e.code() == "invalid_cidr" && e.to_string().contains("choose a private range"), "{bad}: {e}");
        }
        let e = plan(&req("010.050.005.000/24")).unwrap_err();
        assert!(e.to_string().contains("write it as 10.50.5.0/24"), "{e}");
        let mut r = req("10.1.0.0/24");
        r.gateway = Some("10.1.0.01".into());
        assert_eq!(plan(&r).unwrap_err().code(), "invalid_network");
        // Public ranges stay allowed, as in other clouds.
        assert!(plan(&req("198.51.100.0/24")).is_ok());
        assert!(overlaps(&"10.0.0.0/16".parse().unwrap(), &"10.0.5.0/24".parse().unwrap()));
        assert!(!overlaps(&"10.0.0.0/24".parse().unwrap(), &"10.0.1.0/24".parse().unwrap()));
    }

    #[test]
    fn overlap_names_the_other_network() {
        let existing = vec![("nw-a".to_owned(), "10.0.0.0/16".to_owned()), ("nw-b".to_owned(), "bad".to_owned())];
        let e = check_disjoint(&"10.0.5.0/24".parse().unwrap(), &existing).unwrap_err();
        assert_eq!(e.code(), "cidr_overlap");
        assert!(e.to_string().contains("overlaps network nw-a (10.0.0.0/16)"), "{e}");
        assert!(check_disjoint(&"10.1.0.0/24".parse().unwrap(), &existing).is_ok());
    }
}
