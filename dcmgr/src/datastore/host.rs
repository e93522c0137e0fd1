//! Host nodes, storage nodes and host tunnel endpoints as stored: built from agent
//! registrations (see [`crate::controller::membership`]), read by the admin listings,
//! and the hosts' capacity reservations the scheduler ([`crate::app::scheduler`]) makes.

use crate::config::Placement;
use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{HostNode, StorageNode};
use vdc_schema::bus::{HostInfo, StorageInfo};
use vdc_schema::id::{HostNodeId, StorageNodeId};
use vdc_schema::{BootMode, HypervisorKind};

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
}

const HOST_COLS: &str = "id, state, hypervisors, cpus, memory_mib, cpus_used, memory_used_mib, cpus_allocatable, \
                         memory_allocatable_mib, capabilities, last_seen";

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

/// Up to 8 online hosts offering `hypervisor` (and able to boot `boot_mode`) with room for
/// `cpus` and `memory_mib` within their allocatable capacity (the configured overcommit):
/// spread, most free memory first, then most free CPUs; pack, least free first.
pub async fn candidates(
    pool: &db::Pool,
    hypervisor: HypervisorKind,
    cpus: u32,
    memory_mib: u32,
    boot_mode: Option<BootMode>,
    placement: Placement,
) -> Result<Vec<String>, sqlx::Error> {
    let order = match placement {
        Placement::Spread => "DESC",
        Placement::Pack => "ASC",
    };
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT id FROM host_nodes
         WHERE state = 'online' AND hypervisors LIKE $1 AND boot_modes LIKE $4
           AND memory_allocatable_mib - memory_used_mib >= $2 AND cpus_allocatable - cpus_used >= $3
         ORDER BY memory_allocatable_mib - memory_used_mib {order}, cpus_allocatable - cpus_used {order}, id
         LIMIT 8"
    ))
    .bind(format!("%,{hypervisor},%"))
    .bind(memory_mib as i64)
    .bind(cpus as i64)
    .bind(boot_mode_pattern(boot_mode))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Reserves `cpus` and `memory_mib` on host `id` if it is online and still has room:
/// one conditional UPDATE, so concurrent reservations can never overcommit a host.
pub async fn try_reserve(tx: &mut db::Tx<'_>, id: &str, cpus: u32, memory_mib: u32) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE host_nodes SET cpus_used = cpus_used + $1, memory_used_mib = memory_used_mib + $2
         WHERE id = $3 AND state = 'online'
           AND cpus_used + $1 <= cpus_allocatable AND memory_used_mib + $2 <= memory_allocatable_mib",
    )
    .bind(cpus as i64)
    .bind(memory_mib as i64)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
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
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The online hosts offering `hypervisor`: (how many, most free MiB, most free vCPUs).
pub async fn free_capacity(
    pool: &db::Pool,
    hypervisor: HypervisorKind,
) -> Result<(i64, Option<i64>, Option<i64>), sqlx::Error> {
    sqlx::query_as(
        "SELECT COUNT(*), MAX(memory_allocatable_mib - memory_used_mib), MAX(cpus_allocatable - cpus_used) FROM host_nodes
         WHERE state = 'online' AND hypervisors LIKE $1",
    )
    .bind(format!("%,{hypervisor},%"))
    .fetch_one(pool)
    .await
}

// Membership.

/// Records a registered hva's host online with what may be placed on it (vCPUs, MiB).
/// Capacity may change between agent starts; usage is dcmgr's and is kept.
pub async fn upsert_host(
    pool: &db::Pool,
    id: &str,
    h: &HostInfo,
    allocatable: (u64, u64),
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO host_nodes (id, state, hypervisors, cpus, memory_mib, cpus_allocatable, memory_allocatable_mib,
             capabilities, last_seen, boot_modes)
         VALUES ($1, 'online', $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET state = 'online', hypervisors = $2, cpus = $3, memory_mib = $4,
             cpus_allocatable = $5, memory_allocatable_mib = $6, capabilities = $7, last_seen = $8, boot_modes = $9",
    )
    .bind(id)
    .bind(db::join_list(&h.hypervisors))
    .bind(h.cpus as i64)
    .bind(h.memory_mib as i64)
    .bind(allocatable.0 as i64)
    .bind(allocatable.1 as i64)
    .bind(h.capabilities.to_string())
    .bind(now)
    .bind(db::join_list(&h.boot_modes))
    .execute(pool)
    .await?;
    Ok(())
}

/// Every host's (ID, cores, MiB).
pub async fn capacities(pool: &db::Pool) -> Result<Vec<(String, i64, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, cpus, memory_mib FROM host_nodes").fetch_all(pool).await
}

/// Sets what may be placed on host `id` (vCPUs, MiB). Usage above it (after a ratio was
/// lowered) stays: running guests keep their place, new ones go elsewhere.
pub async fn set_allocatable(pool: &db::Pool, id: &str, allocatable: (u64, u64)) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE host_nodes SET cpus_allocatable = $1, memory_allocatable_mib = $2 WHERE id = $3")
        .bind(allocatable.0 as i64)
        .bind(allocatable.1 as i64)
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
