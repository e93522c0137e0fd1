//! Interfaces (vifs): an instance's address on a network, with its security groups.
//! Addresses are allocated inside the instance's create transaction; a unique
//! (network, ip) key is the last guard against two creates taking the same address.

use crate::app::floating_ip;
use crate::ctx::{SharedCtx, Work};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::network;
use ipnet::Ipv4Net;
use rand::Rng;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use vdc_schema::agent::NetworkAgent;
use vdc_schema::bus::{InterfaceReport, InterfaceSpec, NetworkSpec, ResolvedRule, SecurityGroupSpec};
use vdc_schema::id::*;
use vdc_schema::{InterfaceState, ObservedInterface};

/// One interface to create, checked before the transaction.
#[derive(Debug, Clone)]
pub struct Planned {
    pub network: vdc_schema::api::Network,
    pub security_groups: Vec<SecurityGroupId>,
    pub fixed_ip: Option<Ipv4Addr>,
}

pub fn check_fixed_ip(net: &vdc_schema::api::Network, ip: &str) -> ApiResult<Ipv4Addr> {
    let a: Ipv4Addr =
        ip.parse().map_err(|_| ApiError::bad("invalid_ip", format!("ip {ip:?} is not an IPv4 address")))?;
    let (lo, hi) = range(net)?;
    if u32::from(a) < lo || u32::from(a) > hi || a.to_string() == net.gateway {
        return Err(ApiError::bad(
            "invalid_ip",
            format!("ip {a} is outside the DHCP range {}–{} of network {}", net.dhcp_start, net.dhcp_end, net.id),
        ));
    }
    Ok(a)
}

fn range(net: &vdc_schema::api::Network) -> ApiResult<(u32, u32)> {
    let s: Ipv4Addr = net.dhcp_start.parse().map_err(ApiError::internal)?;
    let e: Ipv4Addr = net.dhcp_end.parse().map_err(ApiError::internal)?;
    Ok((u32::from(s), u32::from(e)))
}

fn random_mac() -> String {
    let mut rng = rand::thread_rng();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", rng.gen::<u8>(), rng.gen::<u8>(), rng.gen::<u8>())
}

/// Allocates an address and inserts the interface, within the caller's transaction.
pub async fn insert(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    instance: &InstanceId,
    position: usize,
    p: &Planned,
) -> ApiResult<vdc_schema::api::Interface> {
    let used: Vec<(String,)> = sqlx::query_as("SELECT ip FROM vifs WHERE network_id = $1")
        .bind(p.network.id.as_str())
        .fetch_all(&mut **tx)
        .await?;
    let used: HashSet<u32> = used.iter().filter_map(|(ip,)| ip.parse::<Ipv4Addr>().ok()).map(u32::from).collect();
    let ip = match p.fixed_ip {
        Some(a) if used.contains(&u32::from(a)) => {
            return Err(ApiError::conflict("ip_in_use", format!("ip {a} is already used on network {}", p.network.id)))
        }
        Some(a) => a,
        None => {
            let (lo, hi) = range(&p.network)?;
            let gw: Ipv4Addr = p.network.gateway.parse().map_err(ApiError::internal)?;
            let free = (lo..=hi).find(|a| !used.contains(a) && *a != u32::from(gw));
            Ipv4Addr::from(free.ok_or_else(|| ApiError::Unprocessable {
                code: "network_full",
                message: format!("network {} has no free address in its DHCP range", p.network.id),
            })?)
        }
    };
    let id = VifId::generate();
    let mac = random_mac();
    sqlx::query(
        "INSERT INTO vifs (id, instance_id, account_id, network_id, mac, ip, state, position) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(id.as_str())
    .bind(instance.as_str())
    .bind(account.as_str())
    .bind(p.network.id.as_str())
    .bind(&mac)
    .bind(ip.to_string())
    .bind(position as i64)
    .execute(&mut **tx)
    .await?;
    for g in &p.security_groups {
        sqlx::query("INSERT INTO vif_security_groups (vif_id, group_id) VALUES ($1, $2)")
            .bind(id.as_str())
            .bind(g.as_str())
            .execute(&mut **tx)
            .await?;
        // The group's members (and those referring to it) now resolve one more address.
        bump_for_group(tx, g.as_str()).await?;
    }
    Ok(vdc_schema::api::Interface {
        id,
        network_id: p.network.id.clone(),
        mac,
        ip: ip.to_string(),
        security_groups: p.security_groups.clone(),
        state: InterfaceState::Pending,
    })
}

#[derive(sqlx::FromRow)]
pub(crate) struct VifRow {
    pub id: String,
    pub instance_id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: String,
    pub state: String,
}

pub(crate) const VIF_COLS: &str = "id, instance_id, network_id, mac, ip, state";

/// Interfaces of the instances of `account` whose IDs fall in `first..=last` (one query
/// for a whole page of instances).
pub async fn for_instances(
    db: &db::Pool,
    account: &str,
    first: &str,
    last: &str,
) -> ApiResult<Vec<(String, vdc_schema::api::Interface)>> {
    let rows: Vec<VifRow> = sqlx::query_as(&format!(
        "SELECT {VIF_COLS} FROM vifs WHERE account_id = $1 AND instance_id >= $2 AND instance_id <= $3 ORDER BY instance_id, position"
    ))
    .bind(account)
    .bind(first)
    .bind(last)
    .fetch_all(db)
    .await?;
    let groups: Vec<(String, String)> = sqlx::query_as(
        "SELECT s.vif_id, s.group_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id
         WHERE v.account_id = $1 AND v.instance_id >= $2 AND v.instance_id <= $3 ORDER BY s.group_id",
    )
    .bind(account)
    .bind(first)
    .bind(last)
    .fetch_all(db)
    .await?;
    let mut by_vif: std::collections::HashMap<String, Vec<SecurityGroupId>> = Default::default();
    for (vif, g) in groups {
        if let Ok(g) = g.parse() {
            by_vif.entry(vif).or_default().push(g);
        }
    }
    rows.into_iter()
        .map(|r| {
            let iface = vdc_schema::api::Interface {
                security_groups: by_vif.remove(&r.id).unwrap_or_default(),
                id: r.id.parse().map_err(ApiError::internal)?,
                network_id: r.network_id.parse().map_err(ApiError::internal)?,
                mac: r.mac,
                ip: r.ip,
                state: r.state.parse().map_err(ApiError::internal)?,
            };
            Ok((r.instance_id, iface))
        })
        .collect()
}

/// The rules of a group, with group references resolved to member addresses.
async fn resolved_group(db: &db::Pool, group: &str) -> ApiResult<SecurityGroupSpec> {
    let rules = crate::datastore::secgroup::rules(db, group).await?;
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let cidrs = match (&r.cidr, &r.remote_group_id) {
            (Some(c), _) => vec![c.clone()],
            (None, Some(g)) => {
                let members: Vec<(String,)> = sqlx::query_as(
                    "SELECT v.ip FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id WHERE s.group_id = $1 ORDER BY v.ip",
                )
                .bind(g)
                .fetch_all(db)
                .await?;
                members.into_iter().map(|(ip,)| format!("{ip}/32")).collect()
            }
            (None, None) => vec![],
        };
        let api = r.into_api()?;
        out.push(ResolvedRule {
            direction: api.spec.direction,
            protocol: api.spec.protocol,
            port_min: api.spec.port_min,
            port_max: api.spec.port_max,
            cidrs,
        });
    }
    Ok(SecurityGroupSpec { id: group.parse().map_err(ApiError::internal)?, rules: out })
}

/// Sends the ensure for one interface to the nwagent of its instance's host.
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some((network, host)) = dispatch_one(ctx, id).await? else { return Ok(()) };
    refresh_peers(ctx, &network, &host).await
}

/// Re-sends one interface of `network` per host other than `host`, so that hosts already
/// on the network learn about `host`. Only a change of placement needs it; group edits and
/// agent re-syncs change no peers and send with [`dispatch_one`].
async fn refresh_peers(ctx: &SharedCtx, network: &str, host: &str) -> ApiResult<()> {
    // The hosts already on this network must tunnel to this one too (when it is new to
    // the network): re-send one interface per other host; its spec carries the peers.
    let others: Vec<(String,)> = sqlx::query_as(
        "SELECT MIN(v.id) FROM vifs v JOIN instances i ON i.id = v.instance_id
         WHERE v.network_id = $1 AND i.host_node_id IS NOT NULL AND i.host_node_id <> $2 GROUP BY i.host_node_id",
    )
    .bind(network)
    .bind(host)
    .fetch_all(&ctx.db)
    .await?;
    for (other,) in others {
        // Its peers changed: a new generation, re-sent until nwagent has it.
        bump(&mut *ctx.db.acquire().await?, &other).await?;
        if let Err(e) = dispatch_one(ctx, &other).await {
            tracing::warn!(vif = %other, "peer refresh not sent: {e}");
        }
    }
    Ok(())
}

/// Sends one interface's spec to its host's nwagent; returns its network and host.
pub async fn dispatch_one(ctx: &SharedCtx, id: &str) -> ApiResult<Option<(String, String)>> {
    #[derive(sqlx::FromRow)]
    struct Placed {
        instance_id: String,
        account_id: String,
        network_id: String,
        mac: String,
        ip: String,
        spec_gen: i64,
        host_node_id: Option<String>,
    }
    let row: Option<Placed> = sqlx::query_as(
        "SELECT v.instance_id, v.account_id, v.network_id, v.mac, v.ip, v.spec_gen, i.host_node_id
         FROM vifs v JOIN instances i ON i.id = v.instance_id WHERE v.id = $1",
    )
    .bind(id)
    .fetch_optional(&ctx.db)
    .await?;
    let Some(Placed { instance_id, account_id, network_id, mac, ip, spec_gen, host_node_id: Some(host) }) = row else {
        return Ok(None);
    };
    let net: Option<network::Row> = sqlx::query_as(&format!("SELECT {} FROM networks WHERE id = $1", network::COLS))
        .bind(&network_id)
        .fetch_optional(&ctx.db)
        .await?;
    let Some(net) = net else { return Ok(None) };
    let inst: Option<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, ssh_key_id, user_data FROM instances WHERE id = $1")
            .bind(&instance_id)
            .fetch_optional(&ctx.db)
            .await?;
    let Some((name, key_id, user_data)) = inst else { return Ok(None) };
    let mut public_keys = vec![];
    if let Some(k) = key_id {
        let key: Option<(String,)> =
            sqlx::query_as("SELECT public_key FROM keypairs WHERE id = $1").bind(&k).fetch_optional(&ctx.db).await?;
        public_keys.extend(key.map(|k| k.0));
    }
    let metadata = vdc_schema::bus::InstanceMetadata {
        hostname: crate::resources::instance::hostname(&name, &instance_id),
        public_keys,
        user_data,
    };
    let external = match (&ctx.config.external, floating_ip::router_snat_ip(ctx, &network_id, &host).await?) {
        (Some(e), Some(snat_ip)) => {
            Some(vdc_schema::bus::ExternalSpec { cidr: e.cidr.clone(), gateway: e.gateway.clone(), snat_ip })
        }
        _ => None,
    };
    let peers: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT t.tunnel_ip FROM vifs v JOIN instances i ON i.id = v.instance_id
         JOIN host_tunnels t ON t.host_id = i.host_node_id
         WHERE v.network_id = $1 AND i.host_node_id <> $2 ORDER BY t.tunnel_ip",
    )
    .bind(&network_id)
    .bind(&host)
    .fetch_all(&ctx.db)
    .await?;
    let groups: Vec<(String,)> =
        sqlx::query_as("SELECT group_id FROM vif_security_groups WHERE vif_id = $1 ORDER BY group_id")
            .bind(id)
            .fetch_all(&ctx.db)
            .await?;
    let mut security_groups = Vec::new();
    for (g,) in groups {
        security_groups.push(resolved_group(&ctx.db, &g).await?);
    }
    let spec = InterfaceSpec {
        id: id.parse().map_err(ApiError::internal)?,
        spec_gen: spec_gen as u64,
        instance_id: instance_id.parse().map_err(ApiError::internal)?,
        account_id: account_id.parse().map_err(ApiError::internal)?,
        network: NetworkSpec {
            id: net.id.parse().map_err(ApiError::internal)?,
            vni: net.vni as u32,
            cidr: net.cidr,
            gateway: net.gateway,
            peers: peers.into_iter().map(|p| p.0).collect(),
            external,
        },
        mac,
        ip,
        security_groups,
        metadata: Some(metadata),
        floating_ip: crate::datastore::floating_ip::of_interface(&ctx.db, id).await?,
    };
    let client = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(ApiError::internal)? };
    client
        .ensure_interface(spec)
        .await
        .map_err(|e| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() })?;
    sqlx::query("UPDATE vifs SET ensure_sent_at = $1 WHERE id = $2")
        .bind(db::now_ms())
        .bind(id)
        .execute(&ctx.db)
        .await?;
    Ok(Some((network_id, host)))
}

/// Every interface affected by a change of group `g`: its members, and the members of
/// groups whose rules refer to `g` (their resolved address lists change).
pub async fn affected_by_group(db: &db::Pool, g: &str) -> ApiResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT vif_id FROM vif_security_groups WHERE group_id = $1
         UNION
         SELECT s.vif_id FROM vif_security_groups s JOIN security_group_rules r ON r.group_id = s.group_id
         WHERE r.remote_group_id = $1",
    )
    .bind(g)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Bumps the generation of every interface a change of group `g` reaches (its members,
/// and the members of groups whose rules refer to it), in the transaction of the change,
/// so the reconciler re-sends them until nwagent reports the new generation.
pub async fn bump_for_group(tx: &mut db::Tx<'_>, g: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE vifs SET spec_gen = spec_gen + 1 WHERE id IN (
             SELECT vif_id FROM vif_security_groups WHERE group_id = $1
             UNION
             SELECT s.vif_id FROM vif_security_groups s JOIN security_group_rules r ON r.group_id = s.group_id
             WHERE r.remote_group_id = $1)",
    )
    .bind(g)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Bumps one interface's generation (its floating IP or its peers changed).
pub async fn bump(tx: &mut sqlx::AnyConnection, vif: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vifs SET spec_gen = spec_gen + 1 WHERE id = $1").bind(vif).execute(tx).await?;
    Ok(())
}

/// Removes the interfaces of a terminated instance (nwagent is told to unplug them);
/// members of groups that referred to them get new address lists.
pub async fn remove_for_instance(tx: &mut db::Tx<'_>, instance: &str) -> ApiResult<(Vec<String>, Vec<String>)> {
    let vifs: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1").bind(instance).fetch_all(&mut **tx).await?;
    let groups: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT s.group_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id WHERE v.instance_id = $1",
    )
    .bind(instance)
    .fetch_all(&mut **tx)
    .await?;
    // Its floating IPs stay with the account, unassociated.
    sqlx::query("UPDATE floating_ips SET instance_id = NULL, vif_id = NULL, updated_at = $1 WHERE instance_id = $2")
        .bind(db::now())
        .bind(instance)
        .execute(&mut **tx)
        .await?;
    for (v,) in &vifs {
        sqlx::query("DELETE FROM vif_security_groups WHERE vif_id = $1").bind(v).execute(&mut **tx).await?;
    }
    sqlx::query("DELETE FROM vifs WHERE instance_id = $1").bind(instance).execute(&mut **tx).await?;
    for (g,) in &groups {
        bump_for_group(tx, g).await?;
    }
    Ok((vifs.into_iter().map(|r| r.0).collect(), groups.into_iter().map(|r| r.0).collect()))
}

/// Applies nwagent's report on one interface.
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: InterfaceReport) -> Result<(), sqlx::Error> {
    let host: Option<(Option<String>,)> =
        sqlx::query_as("SELECT i.host_node_id FROM vifs v JOIN instances i ON i.id = v.instance_id WHERE v.id = $1")
            .bind(r.id.as_str())
            .fetch_optional(&ctx.db)
            .await?;
    match host {
        None if r.state != ObservedInterface::Absent => {
            // An interface dcmgr no longer knows: unplug it.
            if let Ok(node) = node.parse() {
                let client = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id: node };
                let _ = client.ensure_interface_absent(r.id.clone(), r.spec_gen).await;
            }
            Ok(())
        }
        Some((Some(h),)) if h == node => {
            let state = match r.state {
                ObservedInterface::Active => InterfaceState::Active,
                ObservedInterface::Failed => InterfaceState::Failed,
                ObservedInterface::Absent => InterfaceState::Pending,
            };
            // An active interface holds the generation it reports; the reconciler re-sends
            // while that is behind spec_gen.
            let applied = if state == InterfaceState::Active { r.spec_gen as i64 } else { 0 };
            sqlx::query(
                "UPDATE vifs SET state = $1, report_gen = $2,
                     applied_gen = CASE WHEN $4 > applied_gen THEN $4 ELSE applied_gen END
                 WHERE id = $3 AND report_gen < $2",
            )
            .bind(state.as_str())
            .bind(gen as i64)
            .bind(r.id.as_str())
            .bind(applied)
            .execute(&ctx.db)
            .await?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Re-sends the ensures of every interface touched by the groups of a removed instance.
pub fn enqueue_groups(ctx: &SharedCtx, groups: &[String]) {
    for g in groups {
        if let Ok(g) = g.parse() {
            ctx.enqueue(Work::SecurityGroup(g));
        }
    }
}

pub fn prefix_len(cidr: &str) -> u8 {
    cidr.parse::<Ipv4Net>().map(|n| n.prefix_len()).unwrap_or(24)
}
