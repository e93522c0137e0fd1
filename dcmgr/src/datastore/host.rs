//! Host nodes, storage nodes and host tunnel endpoints as stored: built from agent
//! registrations (see [`crate::controller::membership`]), read by the admin listings,
//! and the hosts' capacity reservations the scheduler ([`crate::app::scheduler`]) makes.

use crate::config::{Allocatable, Placement};
use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{HostNode, StorageNode};
use vdc_schema::bus::{HostInfo, StorageInfo};
use vdc_schema::id::{HostNodeId, StorageNodeId};
use vdc_schema::{BootMode, HypervisorKind, ServerGroupPolicy};

#[derive(sqlx::FromRow)]
pub struct HostRow {
    pub id: String,
    pub state: String,
    pub hypervisors: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub cpus_used: i64,
    pub memory_used_mib: i64,
    pub cpus_allocatable: i64,
    pub memory_allocatable_mib: i64,
    pub capabilities: String,
    pub last_seen: String,
    pub zone: String,
    pub labels: String,
    /// 1 while new instances may be placed here; 0 when an admin cordoned it.
    pub schedulable: i64,
    /// Why it was cordoned ('' for no reason given, or not cordoned).
    pub cordon_reason: String,
    /// NULL when its hva did not report its disk.
    pub disk_mib: Option<i64>,
    pub disk_allocatable_mib: Option<i64>,
    pub disk_used_mib: i64,
}

const HOST_COLS: &str = "id, state, hypervisors, cpus, memory_mib, cpus_used, memory_used_mib, cpus_allocatable, \
                         memory_allocatable_mib, capabilities, last_seen, zone, labels, schedulable, cordon_reason, \
                         disk_mib, disk_allocatable_mib, disk_used_mib";

/// Labels as stored: `,k=v,k2=v2,`, sorted by key, so that `LIKE '%,k=v,%'` finds a host
/// carrying one (keys and values hold no `,` and keys no `=`: the API checks them).
pub fn join_labels(labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut s = String::from(",");
    for (k, v) in labels {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push(',');
    }
    s
}

pub fn split_labels(s: &str) -> std::collections::BTreeMap<String, String> {
    s.split(',').filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// A LIKE pattern matching `,k=v,` literally (`_`, `%` and `\` escaped; used with
/// `ESCAPE '\'`).
fn label_pattern(k: &str, v: &str) -> String {
    let mut p = String::from("%,");
    for c in format!("{k}={v}").chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push_str(",%");
    p
}

impl HostRow {
    pub fn into_api(self) -> ApiResult<HostNode> {
        Ok(HostNode {
            id: self.id.parse().map_err(ApiError::internal)?,
            state: self.state.parse().map_err(ApiError::internal)?,
            hypervisors: db::split_list(&self.hypervisors),
            cpus: self.cpus as u32,
            memory_mib: self.memory_mib as u64,
            cpus_used: self.cpus_used as u32,
            memory_used_mib: self.memory_used_mib as u64,
            cpus_allocatable: self.cpus_allocatable as u32,
            memory_allocatable_mib: self.memory_allocatable_mib as u64,
            capabilities: serde_json::from_str(&self.capabilities).unwrap_or_default(),
            last_seen: db::parse_time(&self.last_seen),
            zone: Some(self.zone).filter(|z| !z.is_empty()),
            labels: split_labels(&self.labels),
            schedulable: self.schedulable != 0,
            cordon_reason: Some(self.cordon_reason).filter(|r| !r.is_empty()),
            disk_mib: self.disk_mib.map(|d| d as u64),
            disk_used_mib: self.disk_used_mib.max(0) as u64,
            disk_allocatable_mib: self.disk_allocatable_mib.map(|d| d as u64),
        })
    }
}

#[derive(sqlx::FromRow)]
pub struct StorageRow {
    pub id: String,
    pub state: String,
    pub backend: String,
    pub capacity_mib: i64,
    pub used_mib: i64,
    pub last_seen: String,
}

const STORAGE_COLS: &str = "id, state, backend, capacity_mib, used_mib, last_seen";

impl StorageRow {
    pub fn into_api(self) -> ApiResult<StorageNode> {
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

// Listings.

/// One page of host nodes after `cursor`; `state` '' for all.
pub async fn list_hosts(pool: &db::Pool, cursor: &str, state: &str, limit: i64) -> Result<Vec<HostRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {HOST_COLS} FROM host_nodes WHERE id > $1 AND ($2 = '' OR state = $2) ORDER BY id LIMIT $3"
    ))
    .bind(cursor)
    .bind(state)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One page (after `cursor`) of the instances `host` holds: placed there, or not
/// terminated with their disk kept there since their last stop.
pub async fn instances_held(
    pool: &db::Pool,
    host: &str,
    cursor: &str,
    limit: i64,
) -> Result<Vec<HostInstanceRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.id, i.name, i.account_id, a.name AS account_name, i.state, i.hypervisor, i.cpus, i.memory_mib,
                i.host_node_id, i.disk_mib
         FROM instances i JOIN accounts a ON a.id = i.account_id
         WHERE (i.host_node_id = $1 OR (i.host_node_id IS NULL AND i.last_host_id = $1 AND i.state <> 'terminated'))
           AND i.id > $2
         ORDER BY i.id LIMIT $3",
    )
    .bind(host)
    .bind(cursor)
    .bind(limit)
    .fetch_all(pool)
    .await
}

#[derive(sqlx::FromRow)]
pub struct HostInstanceRow {
    pub id: String,
    pub name: String,
    pub account_id: String,
    pub account_name: String,
    pub state: String,
    pub hypervisor: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub host_node_id: Option<String>,
    pub disk_mib: i64,
}

impl HostInstanceRow {
    pub fn into_api(self) -> ApiResult<vdc_schema::api::HostInstance> {
        Ok(vdc_schema::api::HostInstance {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            account_id: self.account_id.parse().map_err(ApiError::internal)?,
            account_name: self.account_name,
            state: self.state.parse().map_err(ApiError::internal)?,
            hypervisor: self.hypervisor.parse().map_err(ApiError::internal)?,
            cpus: self.cpus as u32,
            memory_mib: self.memory_mib as u32,
            placed: self.host_node_id.is_some(),
            disk_mib: self.disk_mib.max(0) as u64,
        })
    }
}

pub async fn get_host(pool: &db::Pool, id: &HostNodeId) -> Result<Option<HostRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {HOST_COLS} FROM host_nodes WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
}

/// One page of storage nodes after `cursor`.
pub async fn list_storage(pool: &db::Pool, cursor: &str, limit: i64) -> Result<Vec<StorageRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {STORAGE_COLS} FROM storage_nodes WHERE id > $1 ORDER BY id LIMIT $2"))
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await
}

pub async fn get_storage(pool: &db::Pool, id: &StorageNodeId) -> Result<Option<StorageRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {STORAGE_COLS} FROM storage_nodes WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(pool)
        .await
}

// Placement.

/// Hosts that can boot `mode` (None: no firmware involved, e.g. a container or a kernel).
fn boot_mode_pattern(mode: Option<BootMode>) -> String {
    mode.map(|m| format!("%,{m},%")).unwrap_or_else(|| "%".into())
}

/// How many online hosts offer `hypervisor` and can boot `mode`.
pub async fn count_bootable(pool: &db::Pool, hypervisor: HypervisorKind, mode: BootMode) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM host_nodes WHERE state = 'online' AND hypervisors LIKE $1 AND boot_modes LIKE $2",
    )
    .bind(format!("%,{hypervisor},%"))
    .bind(boot_mode_pattern(Some(mode)))
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// What an instance asks of its host besides room: a zone, labels, and its server
/// group's policy.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// '' for any zone.
    pub zone: String,
    /// Every one must be on the host.
    pub labels: Vec<(String, String)>,
    /// The server group's ID and policy.
    pub group: Option<(String, ServerGroupPolicy)>,
}

impl Filter {
    /// The same without the server group: what the hosts offer whatever the group.
    pub fn without_group(&self) -> Filter {
        Filter { group: None, ..self.clone() }
    }
}

/// The SQL conditions of `f` on `host_nodes`, numbering their parameters from `next`;
/// returns the conditions (each starting with AND), an ORDER BY prefix for soft
/// policies, and the values to bind in order.
fn filter_sql(f: &Filter, mut next: usize) -> (String, String, Vec<String>) {
    let mut conds = String::new();
    let mut order = String::new();
    let mut binds = Vec::new();
    if !f.zone.is_empty() {
        conds.push_str(&format!(" AND zone = ${next}"));
        binds.push(f.zone.clone());
        next += 1;
    }
    for (k, v) in &f.labels {
        conds.push_str(&format!(" AND labels LIKE ${next} ESCAPE '\\'"));
        binds.push(label_pattern(k, v));
        next += 1;
    }
    if let Some((g, policy)) = &f.group {
        let members = format!(
            "SELECT host_node_id FROM instances WHERE server_group_id = ${next} AND host_node_id IS NOT NULL \
             AND state <> 'terminated'"
        );
        let on_host = format!(
            "(SELECT COUNT(*) FROM instances m WHERE m.server_group_id = ${next} AND m.host_node_id = host_nodes.id \
             AND m.state <> 'terminated')"
        );
        match policy {
            ServerGroupPolicy::AntiAffinity => conds.push_str(&format!(" AND id NOT IN ({members})")),
            ServerGroupPolicy::Affinity => {
                conds.push_str(&format!(" AND (NOT EXISTS ({members}) OR id IN ({members}))"))
            }
            ServerGroupPolicy::SoftAntiAffinity => order = format!("{on_host} ASC, "),
            ServerGroupPolicy::SoftAffinity => order = format!("{on_host} DESC, "),
        }
        binds.push(g.clone());
    }
    (conds, order, binds)
}

/// Up to 8 online hosts offering `hypervisor` (and able to boot `boot_mode`) with room for
/// `cpus` and `memory_mib` within their allocatable capacity (the configured overcommit)
/// that pass `filter`: spread, most free memory first, then most free CPUs; pack, least
/// free first (after a soft server group policy's preference).
pub async fn candidates(
    pool: &db::Pool,
    hypervisor: HypervisorKind,
    (cpus, memory_mib, disk_mib): (u32, u32, u32),
    boot_mode: Option<BootMode>,
    placement: Placement,
    filter: &Filter,
) -> Result<Vec<String>, sqlx::Error> {
    let order = match placement {
        Placement::Spread => "DESC",
        Placement::Pack => "ASC",
    };
    let (conds, prefer, binds) = filter_sql(filter, 6);
    let sql = format!(
        "SELECT id FROM host_nodes
         WHERE state = 'online' AND schedulable = 1 AND hypervisors LIKE $1 AND boot_modes LIKE $4
           AND memory_allocatable_mib - memory_used_mib >= $2 AND cpus_allocatable - cpus_used >= $3
           AND ($5 = 0 OR disk_allocatable_mib IS NULL OR disk_allocatable_mib - disk_used_mib >= $5){conds}
         ORDER BY {prefer}memory_allocatable_mib - memory_used_mib {order}, cpus_allocatable - cpus_used {order}, id
         LIMIT 8"
    );
    let mut q = sqlx::query_as::<_, (String,)>(&sql)
        .bind(format!("%,{hypervisor},%"))
        .bind(memory_mib as i64)
        .bind(cpus as i64)
        .bind(boot_mode_pattern(boot_mode))
        .bind(disk_mib as i64);
    for b in binds {
        q = q.bind(b);
    }
    let rows = q.fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A host as placement's read model ([`crate::app::room`]) keeps it.
#[derive(sqlx::FromRow)]
pub struct RoomRow {
    pub id: String,
    pub state: String,
    pub hypervisors: String,
    pub boot_modes: String,
    pub zone: String,
    pub labels: String,
    pub cpus_allocatable: i64,
    pub cpus_used: i64,
    pub memory_allocatable_mib: i64,
    pub memory_used_mib: i64,
    pub schedulable: i64,
    pub disk_allocatable_mib: Option<i64>,
    pub disk_used_mib: i64,
}

/// Every host, for placement's read model.
pub async fn room_rows(pool: &db::Pool) -> Result<Vec<RoomRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, state, hypervisors, boot_modes, zone, labels, cpus_allocatable, cpus_used, \
         memory_allocatable_mib, memory_used_mib, schedulable, disk_allocatable_mib, disk_used_mib FROM host_nodes",
    )
    .fetch_all(pool)
    .await
}

/// What an instance books on its host: vCPUs, MiB of memory and MiB of root disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booking {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_mib: u32,
}

/// Reserves `b` on host `id` if it is online, still has room and takes new instances (or
/// `returning`: the instance was stopped there and keeps its disk there, booked still, so
/// neither its disk is booked again nor a cordon keeps it out): one conditional UPDATE,
/// so concurrent reservations can never overcommit a host, nor place on one cordoned
/// meanwhile. A host that reported no disk books none.
pub async fn try_reserve(tx: &mut db::Tx<'_>, id: &str, b: Booking, returning: bool) -> Result<bool, sqlx::Error> {
    tx.run_counted(reservation(id, b, returning)).await.map(|n| n == 1)
}

/// As [`try_reserve`], sent with the transaction's next round trip
/// ([`db::Tx::later_checked`]: on SQLite, whose one writer keeps the placement model
/// exact, that round trip fails as a lost race should the host have filled up or gone).
pub async fn reserve_later(tx: &mut db::Tx<'_>, id: &str, b: Booking) -> Result<bool, sqlx::Error> {
    tx.later_checked(reservation(id, b, false)).await
}

fn reservation(id: &str, b: Booking, returning: bool) -> db::Write {
    let disk = if returning { 0 } else { i64::from(b.disk_mib) };
    db::Write::new(
        "UPDATE host_nodes SET cpus_used = cpus_used + $1, memory_used_mib = memory_used_mib + $2,
                disk_used_mib = disk_used_mib + $5
         WHERE id = $3 AND state = 'online' AND (schedulable = 1 OR $4 = 1)
           AND cpus_used + $1 <= cpus_allocatable AND memory_used_mib + $2 <= memory_allocatable_mib
           AND ($5 = 0 OR disk_allocatable_mib IS NULL OR disk_used_mib + $5 <= disk_allocatable_mib)",
    )
    .bind(i64::from(b.cpus))
    .bind(i64::from(b.memory_mib))
    .bind(id)
    .bind(i64::from(returning))
    .bind(disk)
}

/// Gives a reservation back.
pub async fn release(tx: &mut db::Tx<'_>, host: &str, cpus: i64, memory_mib: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE host_nodes SET
            cpus_used = CASE WHEN cpus_used > $1 THEN cpus_used - $1 ELSE 0 END,
            memory_used_mib = CASE WHEN memory_used_mib > $2 THEN memory_used_mib - $2 ELSE 0 END
         WHERE id = $3",
    )
    .bind(cpus)
    .bind(memory_mib)
    .bind(host)
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

/// Gives back the root disk an instance booked on `host` (terminated, or its host
/// evacuated).
pub async fn release_disk(tx: &mut db::Tx<'_>, host: &str, disk_mib: i64) -> Result<(), sqlx::Error> {
    if disk_mib <= 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE host_nodes SET disk_used_mib = CASE WHEN disk_used_mib > $1 THEN disk_used_mib - $1 ELSE 0 END
         WHERE id = $2",
    )
    .bind(disk_mib)
    .bind(host)
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

/// Books `disk_mib` on `host` for an instance that kept its disk there unbooked (its
/// image's size read late): whatever the room, as the disk is there already.
pub async fn book_disk(tx: &mut db::Tx<'_>, host: &str, disk_mib: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE host_nodes SET disk_used_mib = disk_used_mib + $1 WHERE id = $2")
        .bind(disk_mib)
        .bind(host)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// The online hosts offering `hypervisor` that pass `filter`, as placement's refusals
/// describe them.
#[derive(Debug, sqlx::FromRow)]
pub struct Free {
    /// How many take new instances.
    pub hosts: i64,
    /// How many an admin cordoned.
    pub cordoned: i64,
    /// The most free MiB and vCPUs among those that take new instances.
    pub max_free_mib: Option<i64>,
    pub max_free_cpus: Option<i64>,
    /// The most free MiB of disk among those that take new instances and report it.
    pub max_free_disk_mib: Option<i64>,
}

pub async fn free_capacity(pool: &db::Pool, hypervisor: HypervisorKind, filter: &Filter) -> Result<Free, sqlx::Error> {
    let (conds, _, binds) = filter_sql(filter, 2);
    let sql = format!(
        "SELECT COUNT(CASE WHEN schedulable = 1 THEN 1 END) AS hosts, COUNT(CASE WHEN schedulable = 0 THEN 1 END) AS cordoned,
                MAX(CASE WHEN schedulable = 1 THEN memory_allocatable_mib - memory_used_mib END) AS max_free_mib,
                MAX(CASE WHEN schedulable = 1 THEN cpus_allocatable - cpus_used END) AS max_free_cpus,
                MAX(CASE WHEN schedulable = 1 THEN disk_allocatable_mib - disk_used_mib END) AS max_free_disk_mib
         FROM host_nodes WHERE state = 'online' AND hypervisors LIKE $1{conds}"
    );
    let mut q = sqlx::query_as(&sql).bind(format!("%,{hypervisor},%"));
    for b in binds {
        q = q.bind(b);
    }
    q.fetch_one(pool).await
}

/// Lets new instances be placed on a host, or not (an admin's cordon, with its reason or
/// ''); false when there is no such host.
pub async fn set_schedulable(
    tx: &mut db::Tx<'_>,
    id: &str,
    schedulable: bool,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE host_nodes SET schedulable = $1, cordon_reason = $2 WHERE id = $3")
        .bind(i64::from(schedulable))
        .bind(reason)
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Sets a host's zone ('' for none) and labels (as [`join_labels`] writes them), as an
/// admin asked; false when there is no such host.
pub async fn set_zone_labels(tx: &mut db::Tx<'_>, id: &str, zone: &str, labels: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE host_nodes SET zone = $1, labels = $2 WHERE id = $3")
        .bind(zone)
        .bind(labels)
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Takes the host row's lock (a write that changes nothing); false when there is none.
pub async fn lock_host(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE host_nodes SET zone = zone WHERE id = $1").bind(id).execute(tx.conn().await?).await?;
    Ok(r.rows_affected() == 1)
}

/// A host's row inside a transaction.
pub async fn get_host_tx(tx: &mut db::Tx<'_>, id: &str) -> Result<Option<HostRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {HOST_COLS} FROM host_nodes WHERE id = $1"))
        .bind(id)
        .fetch_optional(tx.conn().await?)
        .await
}

// Membership.

/// Records a registered hva's host online with what may be placed on it (vCPUs, MiB).
/// Capacity may change between agent starts; usage is dcmgr's and is kept.
pub async fn upsert_host(
    pool: &db::Pool,
    id: &str,
    h: &HostInfo,
    allocatable: Allocatable,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO host_nodes (id, state, hypervisors, cpus, memory_mib, cpus_allocatable, memory_allocatable_mib,
             capabilities, last_seen, boot_modes, disk_mib, disk_allocatable_mib)
         VALUES ($1, 'online', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (id) DO UPDATE SET state = 'online', hypervisors = $2, cpus = $3, memory_mib = $4,
             cpus_allocatable = $5, memory_allocatable_mib = $6, capabilities = $7, last_seen = $8, boot_modes = $9,
             disk_mib = $10, disk_allocatable_mib = $11",
    )
    .bind(id)
    .bind(db::join_list(&h.hypervisors))
    .bind(h.cpus as i64)
    .bind(h.memory_mib as i64)
    .bind(allocatable.cpus as i64)
    .bind(allocatable.memory_mib as i64)
    .bind(h.capabilities.to_string())
    .bind(now)
    .bind(db::join_list(&h.boot_modes))
    .bind(h.disk_mib.map(|d| d as i64))
    .bind(allocatable.disk_mib.map(|d| d as i64))
    .execute(pool)
    .await?;
    Ok(())
}

/// Every host's (ID, cores, MiB, MiB of disk if reported).
pub async fn capacities(pool: &db::Pool) -> Result<Vec<(String, i64, i64, Option<i64>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, cpus, memory_mib, disk_mib FROM host_nodes").fetch_all(pool).await
}

/// Sets what may be placed on host `id`. Usage above it (after a ratio was lowered)
/// stays: running guests keep their place, new ones go elsewhere.
pub async fn set_allocatable(pool: &db::Pool, id: &str, a: Allocatable) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE host_nodes SET cpus_allocatable = $1, memory_allocatable_mib = $2, disk_allocatable_mib = $3
         WHERE id = $4",
    )
    .bind(a.cpus as i64)
    .bind(a.memory_mib as i64)
    .bind(a.disk_mib.map(|d| d as i64))
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a registered sta's storage node online.
pub async fn upsert_storage(pool: &db::Pool, id: &str, s: &StorageInfo, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO storage_nodes (id, state, backend, capacity_mib, last_seen) VALUES ($1, 'online', $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET state = 'online', backend = $2, capacity_mib = $3, last_seen = $4",
    )
    .bind(id)
    .bind(s.backend.as_str())
    .bind(s.capacity_mib as i64)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a host's VXLAN tunnel endpoint (from its nwagent).
pub async fn upsert_tunnel(pool: &db::Pool, host_id: &str, tunnel_ip: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO host_tunnels (host_id, tunnel_ip) VALUES ($1, $2)
         ON CONFLICT (host_id) DO UPDATE SET tunnel_ip = $2",
    )
    .bind(host_id)
    .bind(tunnel_ip)
    .execute(pool)
    .await?;
    Ok(())
}

/// Sets a host node's state (`online`, `offline`).
pub async fn set_host_state(pool: &db::Pool, id: &str, state: &str, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE host_nodes SET state = $1, last_seen = $2 WHERE id = $3")
        .bind(state)
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Sets a storage node's state (`online`, `offline`).
pub async fn set_storage_state(pool: &db::Pool, id: &str, state: &str, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE storage_nodes SET state = $1, last_seen = $2 WHERE id = $3")
        .bind(state)
        .bind(now)
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The IDs of the host nodes recorded online.
pub async fn online_hosts(pool: &db::Pool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM host_nodes WHERE state = 'online'").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The IDs of the storage nodes recorded online.
pub async fn online_storage(pool: &db::Pool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM storage_nodes WHERE state = 'online'").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_match_literally() {
        let l: std::collections::BTreeMap<String, String> =
            [("ssd", "true"), ("rack", "r_1")].into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let stored = join_labels(&l);
        assert_eq!(stored, ",rack=r_1,ssd=true,");
        assert_eq!(split_labels(&stored), l);
        assert!(split_labels(",").is_empty());
        assert_eq!(label_pattern("rack", "r_1"), "%,rack=r\\_1,%");
    }
}
