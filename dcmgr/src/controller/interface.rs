//! Interfaces toward nwagent: the ensure of one interface built from the model (network,
//! peers, security groups with group references resolved to member addresses, metadata,
//! floating and SNAT addresses), and nwagent's reports folded back in.

use crate::app::{floating_ip, interface as app};
use crate::ctx::SharedCtx;
use crate::datastore::{self as db, floating_ip as fipstore, interface as store, keypair, secgroup};
use crate::error::{ApiError, ApiResult};
use vdc_schema::agent::NetworkAgent;
use vdc_schema::bus::{InterfaceReport, InterfaceSpec, NetworkSpec, ResolvedRule, SecurityGroupSpec};
use vdc_schema::net::{Ipv4Addr, Ipv4Net};
use vdc_schema::ObservedInterface;

/// The rules of a group, with group references resolved to member addresses.
async fn resolved_group(db: &db::Pool, group: &str) -> ApiResult<SecurityGroupSpec> {
    let rules = secgroup::rules(db, group).await?;
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let cidrs = match (&r.cidr, &r.remote_group_id) {
            (Some(c), _) => vec![db::stored("security_group_rules.cidr", c)?],
            (None, Some(g)) => store::member_ips(db, g)
                .await?
                .iter()
                .map(|ip| Ok(Ipv4Net::from(db::stored::<Ipv4Addr>("vifs.ip", ip)?)))
                .collect::<ApiResult<_>>()?,
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

/// Sends the ensure for one interface to the nwagent of its instance's host (or of the
/// host a stopped instance keeps its port on).
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some((network, host)) = dispatch_one(ctx, id).await? else { return Ok(()) };
    refresh_peers(ctx, id, &network, &host).await
}

/// Re-sends one interface of `network` per host other than `host`, so that hosts already
/// on the network learn about `host`, unless an interface there has announced `host`
/// already. Only a change of placement needs it; group edits and agent re-syncs change no
/// peers and send with [`dispatch_one`].
async fn refresh_peers(ctx: &SharedCtx, vif: &str, network: &str, host: &str) -> ApiResult<()> {
    if store::announced(&ctx.db, network, host).await? {
        return Ok(());
    }
    // The hosts already on this network must tunnel to this one too: one interface per
    // other host gets a new generation (its spec carries the peers), re-sent until
    // nwagent has it, in the transaction that records the announcement.
    let others = store::one_per_other_host(&ctx.db, network, host).await?;
    let mut tx = db::begin(&ctx.db).await?;
    for other in &others {
        store::bump(tx.conn().await?, other).await?;
    }
    store::set_announced(&mut tx, vif, host).await?;
    tx.commit().await?;
    for other in others {
        if let Err(e) = dispatch_one(ctx, &other).await {
            tracing::warn!(vif = %other, "peer refresh not sent: {e}");
        }
    }
    Ok(())
}

/// Sends one interface's spec to its host's nwagent; returns its network and host when
/// its instance is placed there. A stopped instance's port stays on the host it ran on
/// last, for the next start, and is kept current there (a floating IP moved away while
/// it was stopped must not stay mapped on that host); it brings no peers.
pub async fn dispatch_one(ctx: &SharedCtx, id: &str) -> ApiResult<Option<(String, String)>> {
    let row = store::placed(&ctx.db, id).await?;
    let Some(store::Placed { instance_id, account_id, network_id, mac, ip, spec_gen, host_node_id, last_host_id }) =
        row
    else {
        return Ok(None);
    };
    let placed = host_node_id.is_some();
    let Some(host) = host_node_id.or(last_host_id) else { return Ok(None) };
    let Some(net) = store::network(&ctx.db, &network_id).await? else { return Ok(None) };
    let Some(inst) = store::metadata_source(&ctx.db, &instance_id).await? else { return Ok(None) };
    let mut public_keys = vec![];
    if let Some(k) = inst.ssh_key_id {
        public_keys.extend(keypair::public_key(&ctx.db, &k).await?);
    }
    let metadata = vdc_schema::bus::InstanceMetadata {
        hostname: crate::app::instance::hostname(&inst.name, &instance_id),
        public_keys,
        user_data: inst.user_data,
    };
    let external = match (&ctx.config.external, floating_ip::router_snat_ip(ctx, &network_id, &host).await?) {
        (Some(e), Some(snat_ip)) => {
            let (cidr, gateway) = e.network().map_err(ApiError::internal)?;
            Some(vdc_schema::bus::ExternalSpec { cidr, gateway, snat_ip })
        }
        _ => None,
    };
    let peers = store::peers(&ctx.db, &network_id, &host)
        .await?
        .iter()
        .map(|ip| db::stored("host_tunnels.tunnel_ip", ip))
        .collect::<ApiResult<_>>()?;
    let mut security_groups = Vec::new();
    for g in store::group_ids(&ctx.db, id).await? {
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
            cidr: db::stored("networks.cidr", &net.cidr)?,
            gateway: db::stored("networks.gateway", &net.gateway)?,
            peers,
            external,
        },
        mac: db::stored("vifs.mac", &mac)?,
        ip: db::stored("vifs.ip", &ip)?,
        security_groups,
        metadata: Some(metadata),
        floating_ip: fipstore::of_interface(&ctx.db, id)
            .await?
            .map(|ip| db::stored("floating_ips.ip", &ip))
            .transpose()?,
    };
    let client = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(ApiError::internal)? };
    client
        .ensure_interface(spec)
        .await
        .map_err(|e| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() })?;
    ctx.sent.sent(crate::datastore::sent::Table::Vifs, id, spec_gen).await;
    Ok(placed.then_some((network_id, host)))
}

/// Applies nwagent's report on one interface.
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: InterfaceReport) -> Result<(), sqlx::Error> {
    let w = store::whereabouts(&ctx.db, r.id.as_str()).await?;
    let after = match on_report(w.as_ref(), node, &r) {
        ReportAfter::Record => {
            let mut tx = db::begin(&ctx.db).await?;
            record(&mut tx, gen, &r).await?;
            tx.commit().await?;
            ctx.events.wake();
            ReportAfter::Nothing
        }
        other => other,
    };
    after.run(ctx, node, &r).await;
    Ok(())
}

/// What a report of an interface asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum ReportAfter {
    Nothing,
    /// Its state is recorded.
    Record,
    /// The host holds a port it should not: it is told to unplug it (at this generation).
    Unplug(u64),
}

/// Decides what a report of host `node` on an interface (`w`: where it belongs, None
/// when dcmgr no longer knows it) asks for.
fn on_report(w: Option<&store::Whereabouts>, node: &str, r: &InterfaceReport) -> ReportAfter {
    match w {
        // An interface dcmgr no longer knows: unplug it.
        None if r.state != ObservedInterface::Absent => ReportAfter::Unplug(r.spec_gen),
        // A port left behind on a host its instance no longer is on (evacuated while
        // the host was away, which came back): unplug it, unless placed there again by
        // the time it arrives (a newer generation).
        Some(w) if !w.belongs_on(node) && r.state != ObservedInterface::Absent => {
            ReportAfter::Unplug(w.spec_gen as u64)
        }
        Some(w) if w.host_node_id.as_deref() == Some(node) => ReportAfter::Record,
        _ => ReportAfter::Nothing,
    }
}

impl ReportAfter {
    /// What is left once the report's transaction is committed.
    pub async fn run(self, ctx: &SharedCtx, node: &str, r: &InterfaceReport) {
        if let (ReportAfter::Unplug(gen), Ok(node)) = (self, node.parse()) {
            let client = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id: node };
            let _ = client.ensure_interface_absent(r.id.clone(), gen).await;
        }
    }
}

/// Applies report `r` of host `node` in `tx` (which other reports may share): what is
/// left to do once it is committed.
pub async fn apply_in(
    tx: &mut db::Tx<'_>,
    node: &str,
    gen: u64,
    r: &InterfaceReport,
) -> Result<ReportAfter, sqlx::Error> {
    // Sharing `tx` with instance reports, whose writes may wait (`db::Tx::later`):
    // `conn` sends them first.
    let w = store::whereabouts(tx.conn().await?, r.id.as_str()).await?;
    match on_report(w.as_ref(), node, r) {
        ReportAfter::Record => {
            record(tx, gen, r).await?;
            Ok(ReportAfter::Nothing)
        }
        other => Ok(other),
    }
}

async fn record(tx: &mut db::Tx<'_>, gen: u64, r: &InterfaceReport) -> Result<(), sqlx::Error> {
    let (state, applied) = app::on_report(r.state, r.spec_gen);
    store::record_report(tx, r.id.as_str(), state.as_str(), gen as i64, applied).await
}
