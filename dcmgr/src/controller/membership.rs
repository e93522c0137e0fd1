//! Agent registration, heartbeats and liveness. Heartbeats are kept in memory (10,000
//! hosts beating every few seconds must not become database writes); only a change
//! between online and offline is written.
//!
//! Several dcmgrs (one PostgreSQL): every dcmgr subscribes to heartbeats and keeps the
//! same liveness in memory (so each answers `agent_unavailable` and filters the
//! reconciler's work alike); only the leader (`controller::leader`) writes online and
//! offline and syncs an agent that came back. A registration goes to one dcmgr (a queue
//! group), which records it, answers, syncs the agent and tells the others
//! ([`PEER_REGISTERED`]) that the agent is known.

use crate::ctx::{AgentSeen, SharedCtx, Work};
use crate::datastore::host as hosts;
use crate::db;
use tokio_util::sync::CancellationToken;
use vdc_bus::Subscription;
use vdc_schema::bus::{self, AgentKind, Heartbeat, HeartbeatReply, Register, Registered};
use vdc_schema::id::{HostNodeId, StorageNodeId};

/// Where the dcmgr that took a registration tells the others (payload: a [`Heartbeat`]
/// naming the agent). Only dcmgrs publish and read it.
pub const PEER_REGISTERED: &str = "vdc.dcmgr.peer.registered";

/// The queue group of the dcmgrs sharing registrations and reports.
pub const QUEUE_GROUP: &str = "dcmgr";

/// Checks an untrusted registration: IDs of the right kind, sane capacities. (A tunnel
/// address that is not IPv4 already failed the decode.)
fn validate(r: &Register) -> Result<(), String> {
    match r.kind {
        AgentKind::Hva | AgentKind::Nwagent => {
            r.node_id.parse::<HostNodeId>().map_err(|e| e.to_string())?;
        }
        AgentKind::Sta => {
            r.node_id.parse::<StorageNodeId>().map_err(|e| e.to_string())?;
        }
    }
    if r.kind == AgentKind::Hva {
        let h = r.host.as_ref().ok_or("hva must send its host capacity")?;
        if h.cpus == 0 || h.cpus > 65536 || h.memory_mib == 0 || h.memory_mib > (1 << 40) || h.hypervisors.is_empty() {
            return Err(format!("implausible host capacity: {} cpus, {} MiB", h.cpus, h.memory_mib));
        }
        if h.disk_mib.is_some_and(|d| d > (1 << 40)) {
            return Err(format!("implausible host disk: {:?} MiB", h.disk_mib));
        }
    }
    if r.kind == AgentKind::Sta {
        let s = r.storage.as_ref().ok_or("sta must send its storage capacity")?;
        if s.capacity_mib == 0 || s.capacity_mib > (1 << 50) {
            return Err(format!("implausible storage capacity: {} MiB", s.capacity_mib));
        }
    }
    Ok(())
}

async fn register(ctx: &SharedCtx, r: &Register) -> Result<(), sqlx::Error> {
    let now = db::now();
    match r.kind {
        AgentKind::Hva => {
            let h = r.host.as_ref().expect("validated");
            let allocatable = ctx.config.allocatable(&r.node_id, h.cpus as u64, h.memory_mib, h.disk_mib);
            hosts::upsert_host(&ctx.db, &r.node_id, h, allocatable, &now).await?;
            ctx.room.invalidate();
        }
        AgentKind::Sta => {
            let s = r.storage.as_ref().expect("validated");
            hosts::upsert_storage(&ctx.db, &r.node_id, s, &now).await?;
        }
        AgentKind::Nwagent => {
            if let Some(ip) = r.tunnel_ip {
                hosts::upsert_tunnel(&ctx.db, &r.node_id, &ip.to_string()).await?;
            }
        }
    }
    ctx.agents.write().unwrap().insert(
        (r.kind, r.node_id.clone()),
        AgentSeen { last_seen_ms: db::now_ms(), offline: false, registered: true },
    );
    Ok(())
}

async fn set_state(ctx: &SharedCtx, kind: AgentKind, node: &str, state: &str) -> Result<(), sqlx::Error> {
    match kind {
        AgentKind::Hva => {
            hosts::set_host_state(&ctx.db, node, state, &db::now()).await?;
            ctx.room.invalidate();
            Ok(())
        }
        AgentKind::Sta => hosts::set_storage_state(&ctx.db, node, state, &db::now()).await,
        AgentKind::Nwagent => Ok(()),
    }
}

pub async fn serve_register(ctx: SharedCtx, mut sub: Subscription, cancel: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let r = match bus::decode::<Register>(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropping bad registration: {e}");
                continue;
            }
        };
        if let Err(e) = validate(&r) {
            tracing::warn!(node = %r.node_id, kind = %r.kind, "refusing registration: {e}");
            continue;
        }
        if let Err(e) = register(&ctx, &r).await {
            tracing::warn!(node = %r.node_id, "registration not recorded: {e}");
            continue;
        }
        tracing::info!(node = %r.node_id, kind = %r.kind, version = %r.agent_version, "agent registered");
        let ans = Registered { heartbeat_interval_ms: ctx.config.heartbeat_interval_ms };
        let _ = ctx.bus.publish(&reply, bus::encode(&ans).into()).await;
        if ctx.shared() {
            let notice = Heartbeat { node_id: r.node_id.clone(), kind: r.kind };
            let _ = ctx.bus.publish(PEER_REGISTERED, bus::encode(&notice).into()).await;
        }
        ctx.enqueue(Work::NodeSync(r.kind, r.node_id));
    }
}

/// Another dcmgr took an agent's registration: it is known here too (its heartbeats are
/// answered `known`), online since now.
pub async fn serve_peer_registered(ctx: SharedCtx, mut sub: Subscription, cancel: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Ok(r) = bus::decode::<Heartbeat>(&msg.payload) else { continue };
        ctx.agents
            .write()
            .unwrap()
            .insert((r.kind, r.node_id), AgentSeen { last_seen_ms: db::now_ms(), offline: false, registered: true });
    }
}

pub async fn serve_heartbeat(ctx: SharedCtx, mut sub: Subscription, cancel: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let Ok(hb) = bus::decode::<Heartbeat>(&msg.payload) else { continue };
        let key = (hb.kind, hb.node_id.clone());
        let (known, was_offline) = {
            let mut agents = ctx.agents.write().unwrap();
            match agents.get_mut(&key) {
                Some(a) => {
                    let was = a.offline;
                    a.last_seen_ms = db::now_ms();
                    a.offline = false;
                    (a.registered, was && a.registered)
                }
                None => (false, false),
            }
        };
        // Only the leader records it and syncs the agent (every dcmgr sees the heartbeat).
        if was_offline && ctx.is_leader() {
            tracing::info!(node = %hb.node_id, kind = %hb.kind, "agent back online");
            let _ = set_state(&ctx, hb.kind, &hb.node_id, "online").await;
            ctx.enqueue(Work::NodeSync(hb.kind, hb.node_id.clone()));
        }
        let _ = ctx.bus.publish(&reply, bus::encode(&HeartbeatReply { known }).into()).await;
    }
}

/// Marks agents offline once they have been silent for `agent_timeout_ms`.
pub async fn watch_liveness(ctx: SharedCtx, cancel: CancellationToken) {
    let period = std::time::Duration::from_millis((ctx.config.agent_timeout_ms / 4).max(100));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let deadline = db::now_ms() - ctx.config.agent_timeout_ms as i64;
        let silent: Vec<(AgentKind, String)> = {
            let mut agents = ctx.agents.write().unwrap();
            agents
                .iter_mut()
                .filter(|(_, a)| !a.offline && a.last_seen_ms < deadline)
                .map(|(k, a)| {
                    a.offline = true;
                    k.clone()
                })
                .collect()
        };
        // Every dcmgr stops counting on it; the leader records it.
        if !ctx.is_leader() {
            continue;
        }
        for (kind, node) in silent {
            tracing::warn!(%kind, node, "agent silent; marking it offline");
            if let Err(e) = set_state(&ctx, kind, &node, "offline").await {
                tracing::warn!("cannot record offline state: {e}");
            }
        }
    }
}

/// Recomputes every known host's allocatable capacity from the configured ratios.
pub async fn apply_allocation_ratios(ctx: &SharedCtx) -> Result<(), sqlx::Error> {
    for (id, cpus, memory_mib, disk_mib) in hosts::capacities(&ctx.db).await? {
        let allocatable = ctx.config.allocatable(&id, cpus as u64, memory_mib as u64, disk_mib.map(|d| d as u64));
        hosts::set_allocatable(&ctx.db, &id, allocatable).await?;
    }
    ctx.room.invalidate();
    Ok(())
}

/// At start, dcmgr remembers no heartbeats: give every node the full timeout to speak.
pub async fn seed_from_db(ctx: &SharedCtx) -> Result<(), sqlx::Error> {
    let online_hosts = hosts::online_hosts(&ctx.db).await?;
    let online_stores = hosts::online_storage(&ctx.db).await?;
    let now = db::now_ms();
    let mut agents = ctx.agents.write().unwrap();
    for h in online_hosts {
        agents.insert((AgentKind::Hva, h), AgentSeen { last_seen_ms: now, offline: false, registered: false });
    }
    for s in online_stores {
        agents.insert((AgentKind::Sta, s), AgentSeen { last_seen_ms: now, offline: false, registered: false });
    }
    Ok(())
}

/// A dcmgr that has just become the leader makes the database agree with the liveness it
/// sees: agents that came back or fell silent while no one led (or before this dcmgr
/// led) are recorded online (and synced) or offline now; hosts the database has online
/// but this dcmgr never heard of get the full timeout to speak.
pub async fn sync_states(ctx: &SharedCtx) -> Result<(), sqlx::Error> {
    let online_hosts: std::collections::HashSet<String> = hosts::online_hosts(&ctx.db).await?.into_iter().collect();
    let online_stores: std::collections::HashSet<String> = hosts::online_storage(&ctx.db).await?.into_iter().collect();
    let seen: Vec<((AgentKind, String), bool)> =
        ctx.agents.read().unwrap().iter().map(|(k, a)| (k.clone(), a.offline)).collect();
    let mut known = std::collections::HashSet::new();
    for ((kind, node), offline) in seen {
        let recorded_online = match kind {
            AgentKind::Hva => online_hosts.contains(&node),
            AgentKind::Sta => online_stores.contains(&node),
            AgentKind::Nwagent => continue,
        };
        known.insert((kind, node.clone()));
        if !offline && !recorded_online {
            tracing::info!(%kind, node, "agent online (recorded by the new leader)");
            set_state(ctx, kind, &node, "online").await?;
            ctx.enqueue(Work::NodeSync(kind, node));
        } else if offline && recorded_online {
            tracing::warn!(%kind, node, "agent silent; marking it offline (new leader)");
            set_state(ctx, kind, &node, "offline").await?;
        }
    }
    let now = db::now_ms();
    let mut agents = ctx.agents.write().unwrap();
    for (kind, set) in [(AgentKind::Hva, online_hosts), (AgentKind::Sta, online_stores)] {
        for node in set {
            if !known.contains(&(kind, node.clone())) {
                agents.entry((kind, node)).or_insert(AgentSeen {
                    last_seen_ms: now,
                    offline: false,
                    registered: false,
                });
            }
        }
    }
    Ok(())
}
