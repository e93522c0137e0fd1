//! Floating IPs: addresses of the site's external network that an account holds and maps
//! 1:1 onto one interface of an instance. The same pool gives each host's router for a
//! network its outbound SNAT address ([`router_snat_ip`]).
//!
//! ```text
//!  allocated ─associate─► associated ─disassociate─► allocated ─delete─► (gone)
//! ```
//! An association takes effect when nwagent re-programmes the interface; terminating the
//! instance disassociates.

use crate::app::{page, paging_of, quota};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::{self as db, floating_ip as store, interface as ifstore};
use crate::error::{ApiError, ApiResult};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use vdc_schema::api::{AssociateFloatingIp, CreateFloatingIp, FloatingIp, ListQuery, Page, QuotaKey};
use vdc_schema::id::{AccountId, FloatingIpId, VifId};

fn no_external() -> ApiError {
    ApiError::Unprocessable {
        code: "no_external_network",
        message: "this site has no external network: set [external] in dcmgr's configuration \
                  (the all-in-one `vdc up` makes one unless started with --no-external)"
            .into(),
    }
}

/// A requested address: an IPv4 address of the pool `start..=end`.
pub fn check_ip(s: &str, start: Ipv4Addr, end: Ipv4Addr) -> ApiResult<Ipv4Addr> {
    let a: Ipv4Addr = s.parse().map_err(|_| ApiError::bad("invalid_ip", format!("ip {s:?} is not an IPv4 address")))?;
    if a < start || a > end {
        return Err(ApiError::bad("invalid_ip", format!("ip {a} is outside the external pool {start}–{end}")));
    }
    Ok(a)
}

/// How many more floating IPs the pool `start..=end` has room for when accounts hold
/// `held`: all but `external.router_reserve` addresses, which are the routers'
/// (their outbound NAT would otherwise fail, unseen, once tenants held the pool).
pub fn room(ext: &crate::config::ExternalConfig, start: Ipv4Addr, end: Ipv4Addr, held: usize) -> usize {
    let len = u32::from(end).saturating_sub(u32::from(start)) as usize + 1;
    let reserve = ext.router_reserve.map_or(len / 16, |r| r as usize);
    len.saturating_sub(reserve).saturating_sub(held)
}

/// The address a new row takes: `want` unless it is used, else the first free one of the
/// pool `start..=end`. A floating IP passes its [`room`], a router none.
pub fn pick(
    start: Ipv4Addr,
    end: Ipv4Addr,
    used: &HashSet<String>,
    want: Option<Ipv4Addr>,
    room: Option<usize>,
) -> ApiResult<Ipv4Addr> {
    if let Some(w) = want.filter(|w| used.contains(&w.to_string())) {
        return Err(ApiError::conflict("ip_in_use", format!("{w} is already allocated")));
    }
    if room == Some(0) {
        return Err(ApiError::Unprocessable {
            code: "no_capacity",
            message: format!(
                "floating IPs hold all of the external pool {start}–{end} but the addresses kept for \
                 the routers' outbound NAT (external.router_reserve): free a floating IP or ask the \
                 operator to widen the pool"
            ),
        });
    }
    match want {
        Some(w) => Ok(w),
        None => (u32::from(start)..=u32::from(end))
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(&a.to_string()))
            .ok_or_else(|| ApiError::Unprocessable {
                code: "no_capacity",
                message: format!("the external pool {start}–{end} is exhausted"),
            }),
    }
}

/// The interface of `instance` an address maps to: the one asked for among `vifs` (the
/// instance's, in position order), or its first.
pub fn choose_interface(instance: &str, vifs: &[String], wanted: Option<&VifId>) -> ApiResult<String> {
    match wanted {
        Some(v) => vifs.iter().find(|i| *i == v.as_str()).cloned().ok_or_else(|| ApiError::not_found("interface", v)),
        None => vifs.first().cloned().ok_or_else(|| {
            ApiError::conflict("no_interface", format!("instance {instance} has no interface to map the address to"))
        }),
    }
}

/// Inserts a new external address row: `want`, or the first free one of the pool.
async fn allocate(
    ctx: &SharedCtx,
    want: Option<Ipv4Addr>,
    account: Option<&str>,
    router: Option<(&str, &str)>,
) -> ApiResult<(String, Ipv4Addr)> {
    let ext = ctx.config.external.as_ref().ok_or_else(no_external)?;
    let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        if let Some(a) = account {
            let a: AccountId = a.parse().map_err(ApiError::internal)?;
            quota::enforce(&mut tx, ctx, &a, &[(QuotaKey::FloatingIps, 1)]).await?;
        }
        let (used, held) = store::used_ips(tx.conn().await?).await?;
        let room = account.map(|_| room(ext, start, end, held));
        let ip = pick(start, end, &used, want, room)?;
        let id = FloatingIpId::generate().to_string();
        store::insert(tx.conn().await?, &id, account, &ip.to_string(), router).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok((id, ip))
    })
    .await
}

/// Gives routers' SNAT addresses back to the pool once their network has had no
/// instance on their host (placed or stopped there) for `router_release_after_ms`, and
/// the host's nwagent is online: it removed the router with the network's last port
/// there (an offline one may still answer for the address). Without this, every network
/// kept an address for every host it ever ran on, until the network was deleted, and a
/// pool used up that way left new instances without outbound NAT. Leader only. Returns
/// how many went back.
pub async fn release_idle_routers(ctx: &SharedCtx) -> Result<usize, sqlx::Error> {
    if ctx.config.external.is_none() {
        return Ok(0);
    }
    let after = chrono::Duration::milliseconds(ctx.config.router_release_after_ms as i64);
    let mut released = 0;
    for r in store::idle_routers(&ctx.db).await? {
        if chrono::Utc::now() - db::parse_time(&r.idle_since) < after
            || !ctx.agent_online(vdc_schema::bus::AgentKind::Nwagent, &r.host_id)
        {
            continue;
        }
        let mut tx = db::begin(&ctx.db).await?;
        // The network's lock, as a create that puts an interface on it takes.
        db::lock(&mut tx, db::Lock::Network, &r.network_id).await?;
        if !store::release_router(&mut tx, &r.id, &r.idle_since).await? {
            continue;
        }
        // An instance placed there after that statement read the rows, whose interface
        // was sent with the old address: sent again, it gets a new one.
        let resend = ifstore::bump_on_host(&mut tx, &r.network_id, &r.host_id).await?;
        tx.commit().await?;
        released += 1;
        tracing::info!(network = %r.network_id, host = %r.host_id, ip = %r.ip,
            "a router no instance uses gave its SNAT address back to the pool");
        for vif in resend.iter().filter_map(|v| v.parse().ok()) {
            ctx.enqueue(Work::Interface(vif));
        }
    }
    Ok(released)
}

/// The SNAT address of `host`'s router for `network`, allocated on first use; None
/// without an external network.
pub async fn router_snat_ip(ctx: &SharedCtx, network: &str, host: &str) -> ApiResult<Option<Ipv4Addr>> {
    if ctx.config.external.is_none() {
        return Ok(None);
    }
    if let Some(ip) = store::router_ip(&ctx.db, network, host).await? {
        return Ok(Some(db::stored("floating_ips.ip", &ip)?));
    }
    match allocate(ctx, None, None, Some((network, host))).await {
        Ok((_, ip)) => Ok(Some(ip)),
        // Another dispatch allocated it meanwhile, or the pool is used up.
        Err(e) => {
            let ip = store::router_ip(&ctx.db, network, host).await?;
            if ip.is_none() {
                tracing::warn!(
                    network,
                    host,
                    "the host's router for the network has no address, so its guests have \
                    no outbound NAT: {e}; widen [external] pool_start..pool_end or free floating IPs"
                );
            }
            ip.map(|ip| db::stored("floating_ips.ip", &ip)).transpose()
        }
    }
}

/// A floating IP of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &FloatingIpId) -> ApiResult<FloatingIp> {
    match store::get(&ctx.db, id).await? {
        Some(r) if r.account_id.as_deref() == Some(caller.account_id.as_str()) => r.into_api(),
        _ => Err(ApiError::not_found("floating IP", id)),
    }
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateFloatingIp) -> ApiResult<FloatingIp> {
    let ext = ctx.config.external.as_ref().ok_or_else(no_external)?;
    let want = match &req.ip {
        Some(s) => {
            let (start, end, _) = ext.pool().map_err(ApiError::internal)?;
            Some(check_ip(s, start, end)?)
        }
        None => None,
    };
    let (id, _) = allocate(ctx, want, Some(caller.account_id.as_str()), None).await?;
    fetch(ctx, caller, &id.parse().map_err(ApiError::internal)?).await
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<FloatingIp>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::FloatingIpId>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |f| f.id.to_string()))
}

/// Maps the address onto an interface of the caller's instance, moving it from another
/// interface if it is on one; the interfaces are re-sent.
pub async fn associate(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &FloatingIpId,
    req: &AssociateFloatingIp,
) -> ApiResult<FloatingIp> {
    let vifs = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // The instance, then the address: terminate locks the instance and then frees its
        // addresses.
        let inst = match crate::datastore::instance::lock_get(&mut tx, req.instance_id.as_str()).await? {
            Some(i) if i.account_id == caller.account_id.as_str() => i,
            _ => return Err(ApiError::not_found("instance", &req.instance_id)),
        };
        let row = lock_own(&mut tx, caller, id).await?;
        if inst.state == vdc_schema::InstanceState::Terminated.as_str() {
            return Err(ApiError::conflict("invalid_state", format!("instance {} is terminated", inst.id)));
        }
        let vifs = ifstore::ids_of_instance(&mut tx, inst.id.as_str()).await?;
        let vif = choose_interface(&inst.id, &vifs, req.interface_id.as_ref())?;
        if row.vif_id.as_deref() == Some(vif.as_str()) {
            return Ok(vec![]);
        }
        // The unique index on vif_id is the last guard against two addresses racing for one interface.
        if let Some(ip) = store::of_interface(tx.conn().await?, &vif).await? {
            return Err(ApiError::conflict("interface_has_floating_ip", format!("interface {vif} already has {ip}")));
        }
        // Associated elsewhere, it moves (as Neutron's port update does): the interface it
        // leaves is re-sent too, so its host withdraws the mapping.
        store::associate(&mut tx, id, inst.id.as_str(), &vif).await?;
        let mut resend = vec![vif];
        resend.extend(row.vif_id);
        for v in &resend {
            ifstore::bump(tx.conn().await?, v).await?;
        }
        tx.commit().await?;
        ctx.events.wake();
        Ok(resend)
    })
    .await?;
    for v in vifs.iter().filter_map(|v| v.parse().ok()) {
        ctx.enqueue(Work::Interface(v));
    }
    fetch(ctx, caller, id).await
}

/// Locks the caller's floating IP in `tx` and reads it; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &FloatingIpId) -> ApiResult<store::Row> {
    db::lock(tx, db::Lock::FloatingIp, id.as_str()).await?;
    match store::get(tx.conn().await?, id).await? {
        Some(r) if r.account_id.as_deref() == Some(caller.account_id.as_str()) => Ok(r),
        _ => Err(ApiError::not_found("floating IP", id)),
    }
}

/// Unmaps the address; the interface it was on is re-sent.
pub async fn disassociate(ctx: &SharedCtx, caller: &Caller, id: &FloatingIpId) -> ApiResult<FloatingIp> {
    let vif = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        let row = lock_own(&mut tx, caller, id).await?;
        let Some(vif) = row.vif_id else { return Ok(None) };
        store::disassociate(&mut tx, id).await?;
        ifstore::bump(tx.conn().await?, &vif).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(Some(vif))
    })
    .await?;
    if let Some(v) = vif.and_then(|v| v.parse().ok()) {
        ctx.enqueue(Work::Interface(v));
    }
    fetch(ctx, caller, id).await
}

/// Releases an address that is not associated.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &FloatingIpId) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        let row = lock_own(&mut tx, caller, id).await?;
        if let Some(i) = &row.instance_id {
            return Err(ApiError::conflict(
                "floating_ip_associated",
                format!("{} is associated with {i}; disassociate it first", row.ip),
            ));
        }
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

    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_picked_from_the_pool() {
        let (start, end) = (a("203.0.113.10"), a("203.0.113.12"));
        let mut used = HashSet::new();
        assert_eq!(pick(start, end, &used, None, None).unwrap(), start);
        used.insert("203.0.113.10".to_owned());
        assert_eq!(pick(start, end, &used, None, Some(1)).unwrap(), a("203.0.113.11"));
        assert_eq!(pick(start, end, &used, Some(a("203.0.113.12")), None).unwrap(), a("203.0.113.12"));
        assert_eq!(pick(start, end, &used, Some(start), None).unwrap_err().code(), "ip_in_use");
        // No room left for floating IPs: a router still takes a free address.
        let e = pick(start, end, &used, None, Some(0)).unwrap_err();
        assert_eq!(e.code(), "no_capacity");
        assert!(e.to_string().contains("kept for the routers' outbound NAT"), "{e}");
        assert_eq!(pick(start, end, &used, Some(a("203.0.113.12")), Some(0)).unwrap_err().code(), "no_capacity");
        used.insert("203.0.113.11".to_owned());
        assert_eq!(pick(start, end, &used, None, None).unwrap(), a("203.0.113.12"));
        used.insert("203.0.113.12".to_owned());
        assert_eq!(pick(start, end, &used, None, Some(5)).unwrap_err().code(), "no_capacity");
    }

    #[test]
    fn floating_ips_leave_the_reserve_to_routers() {
        let (start, end) = (a("203.0.113.10"), a("203.0.113.20"));
        let mut ext = crate::config::ExternalConfig {
            cidr: "203.0.113.0/24".into(),
            gateway: "203.0.113.1".into(),
            pool_start: start.to_string(),
            pool_end: end.to_string(),
            router_reserve: Some(3),
        };
        assert_eq!((room(&ext, start, end, 0), room(&ext, start, end, 8), room(&ext, start, end, 9)), (8, 0, 0));
        ext.router_reserve = None;
        assert_eq!(room(&ext, start, end, 0), 11, "a sixteenth of 11 is none");
        ext.pool_end = "203.0.113.250".into();
        assert_eq!(room(&ext, start, a("203.0.113.250"), 0), 241 - 15);
    }

    #[test]
    fn requested_addresses_must_be_in_the_pool() {
        let (start, end) = (a("203.0.113.10"), a("203.0.113.12"));
        assert_eq!(check_ip("203.0.113.11", start, end).unwrap(), a("203.0.113.11"));
        assert_eq!(check_ip("203.0.113.9", start, end).unwrap_err().code(), "invalid_ip");
        assert_eq!(check_ip("nope", start, end).unwrap_err().code(), "invalid_ip");
    }

    #[test]
    fn the_interface_is_the_one_asked_for_or_the_first() {
        let vifs = vec!["vif-a".to_owned(), "vif-b".to_owned()];
        assert_eq!(choose_interface("i-1", &vifs, None).unwrap(), "vif-a");
        let b: VifId = "vif-b".parse().unwrap();
        assert_eq!(choose_interface("i-1", &vifs, Some(&b)).unwrap(), "vif-b");
        let c: VifId = "vif-c".parse().unwrap();
        assert_eq!(choose_interface("i-1", &vifs, Some(&c)).unwrap_err().code(), "not_found");
        assert_eq!(choose_interface("i-1", &[], None).unwrap_err().code(), "no_interface");
    }
}
