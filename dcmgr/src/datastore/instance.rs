//! Instances as stored: what was asked (`goal`, `spec_gen`, `reboot_gen`) apart from what
//! runs (`state`, `host_node_id`, `report_gen`).

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{Instance, Interface};
use vdc_schema::bus::NicSpec;
use vdc_schema::id::*;
use vdc_schema::net::Ipv4Net;
use vdc_schema::{InstanceGoal, InstanceState};

#[derive(sqlx::FromRow, Clone)]
pub struct Row {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub image_id: String,
    pub hypervisor: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub ssh_key_id: Option<String>,
    pub user_data: Option<String>,
    pub state: String,
    pub goal: String,
    pub host_node_id: Option<String>,
    pub last_host_id: Option<String>,
    pub spec_gen: i64,
    pub report_gen: i64,
    pub reboot_gen: i64,
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub root_disk_size: Option<i64>,
    pub server_group_id: Option<String>,
    /// What it asked of its host at create: a zone ('' for any), labels (`,k=v,`).
    pub placement_zone: String,
    pub placement_labels: String,
    /// MiB of root disk it books on the host that keeps its disk (0 for a container).
    pub disk_mib: i64,
}

const COLS: &str = "id, account_id, name, image_id, hypervisor, cpus, memory_mib, ssh_key_id, user_data, state, goal, \
     host_node_id, last_host_id, spec_gen, report_gen, reboot_gen, failure_reason, created_at, updated_at, root_disk_size, \
     server_group_id, placement_zone, placement_labels, disk_mib";

impl Row {
    pub fn state(&self) -> ApiResult<InstanceState> {
        self.state.parse().map_err(ApiError::internal)
    }

    pub fn goal(&self) -> ApiResult<InstanceGoal> {
        self.goal.parse().map_err(ApiError::internal)
    }

    pub fn belongs_on(&self, node: &str) -> bool {
        belongs_on(self.host_node_id.as_deref(), self.last_host_id.as_deref(), node)
    }
}

/// Whether `node` should keep an instance's copy (its guest, disk and ports): the
/// instance runs there, or was stopped there and waits for its next start. A host that
/// is neither (one it moved away from, an evacuated one come back) holds a stale copy.
pub fn belongs_on(host_node_id: Option<&str>, last_host_id: Option<&str>, node: &str) -> bool {
    match host_node_id {
        Some(h) => h == node,
        None => last_host_id == Some(node),
    }
}

/// [`belongs_on`] in SQL, for instances aliased `i` and the host the expression `host`.
pub fn belongs_on_sql(host: &str) -> String {
    format!("(i.host_node_id = {host} OR (i.host_node_id IS NULL AND i.last_host_id = {host}))")
}

/// What the API shows of an instance row. GET and list read only these columns: the
/// others (user data of up to 64 KiB above all) would cost a list of 1,000 dearly.
#[derive(sqlx::FromRow)]
pub struct View {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub image_id: String,
    pub hypervisor: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub ssh_key_id: Option<String>,
    pub state: String,
    pub goal: String,
    pub host_node_id: Option<String>,
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub root_disk_size: Option<i64>,
    pub server_group_id: Option<String>,
}

/// The columns of a [`View`] (`vdc-bench` reads the same ones for its SQL floor).
pub const VIEW_COLS: &str = "id, account_id, name, image_id, hypervisor, cpus, memory_mib, ssh_key_id, state, goal, \
     host_node_id, failure_reason, created_at, updated_at, root_disk_size, server_group_id";

impl View {
    pub fn into_api(self, interfaces: Vec<Interface>, volumes: Vec<VolumeId>) -> ApiResult<Instance> {
        Ok(Instance {
            id: self.id.parse().map_err(ApiError::internal)?,
            account_id: self.account_id.parse().map_err(ApiError::internal)?,
            name: self.name,
            state: self.state.parse().map_err(ApiError::internal)?,
            goal: self.goal.parse().map_err(ApiError::internal)?,
            image_id: self.image_id.parse().map_err(ApiError::internal)?,
            hypervisor: self.hypervisor.parse().map_err(ApiError::internal)?,
            cpus: self.cpus as u32,
            memory_mib: self.memory_mib as u32,
            host_node_id: self.host_node_id.map(|h| h.parse()).transpose().map_err(ApiError::internal)?,
            ssh_key_id: self.ssh_key_id.map(|k| k.parse()).transpose().map_err(ApiError::internal)?,
            server_group_id: self.server_group_id.map(|g| g.parse()).transpose().map_err(ApiError::internal)?,
            root_disk_size: self.root_disk_size.map(|v| v as u64),
            interfaces,
            volumes,
            failure_reason: self.failure_reason,
            created_at: db::parse_time(&self.created_at),
            updated_at: db::parse_time(&self.updated_at),
        })
    }
}

/// The view of one instance.
pub async fn view(conn: &mut db::Conn, id: &str) -> Result<Option<View>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {VIEW_COLS} FROM instances WHERE id = $1")).bind(id).fetch_optional(conn).await
}

pub async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM instances WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// An instance as its dispatch reads it: with its running job (to trace the ensure) and
/// whether a volume is attached to it (most have none, and their volumes are not read).
#[derive(sqlx::FromRow)]
pub struct Dispatched {
    #[sqlx(flatten)]
    pub row: Row,
    pub running_job: Option<String>,
    pub volumes: i64,
}

/// Reads instance `id` for its dispatch, in one statement (three before: on PostgreSQL
/// each a round trip of every create's dispatch, `vdc-bench`).
pub async fn get_for_dispatch(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Option<Dispatched>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {COLS},
                 (SELECT j.id FROM jobs j WHERE j.resource_id = instances.id AND j.state = 'running'
                    ORDER BY j.id DESC LIMIT 1) AS running_job,
                 (SELECT COUNT(*) FROM volumes v WHERE v.instance_id = instances.id
                    AND v.state IN ('attaching', 'attached')) AS volumes
             FROM instances WHERE id = $1"
        )
    });
    sqlx::query_as(SQL.as_str()).bind(id).fetch_optional(conn).await
}

/// Takes instance `id`'s lock in `tx` (as [`db::lock`]) and reads it, in one statement:
/// a report and an action do both first, and every statement on the writer counts.
pub async fn lock_get(tx: &mut db::Tx<'_>, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("UPDATE instances SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING {COLS}"))
        .bind(id)
        .fetch_optional(tx.conn().await?)
        .await
}

/// Live disk-image instances that book no disk though their image's size is known now:
/// it was not when they were counted (migration 0043 ran before dcmgr read it), and they
/// asked no size. (ID, the image's size in bytes.)
pub async fn without_disk_booked(pool: &db::Pool) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.id, m.virtual_size FROM instances i JOIN images m ON m.id = i.image_id \
         WHERE i.root_disk_size IS NULL AND i.disk_mib = 0 AND i.hypervisor <> 'lxc' AND i.state <> 'terminated' \
           AND m.virtual_size > 0 ORDER BY i.id",
    )
    .fetch_all(pool)
    .await
}

pub async fn set_disk_mib(tx: &mut db::Tx<'_>, id: &str, disk_mib: u32) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE instances SET disk_mib = $1 WHERE id = $2")
        .bind(i64::from(disk_mib))
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// An instance locked for its host's report, and whether any of its volumes is being
/// attached or detached (almost never: the report then skips looking for them).
#[derive(sqlx::FromRow)]
pub struct Reported {
    #[sqlx(flatten)]
    pub row: Row,
    pub volumes_in_transit: i64,
}

/// As [`lock_get`], for a report: also counts the volumes in transit, in the same statement.
pub async fn lock_for_report(tx: &mut db::Tx<'_>, id: &str) -> Result<Option<Reported>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "UPDATE instances SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING {COLS},
                 (SELECT COUNT(*) FROM volumes v WHERE v.instance_id = instances.id
                    AND v.state IN ('attaching', 'detaching')) AS volumes_in_transit"
        )
    });
    Ok(tx.fetch(db::Write::new(SQL.as_str()).bind(id)).await?.pop())
}

/// IDs [`lock_for_reports`] takes in one statement (a fixed number: one shape, kept
/// prepared; the places left over name no instance).
const REPORTED_AT_ONCE: usize = 32;

/// As [`lock_for_report`] for many instances, `REPORTED_AT_ONCE` in each statement: the
/// reports applied together on SQLite lock theirs in one round trip. Those not found are
/// left out. Not for PostgreSQL: its generic plan for the list scanned the table
/// (`vdc-bench`: 3.5 ms a statement, reports applied 2.5 times slower).
pub async fn lock_for_reports(tx: &mut db::Tx<'_>, ids: &[&str]) -> Result<Vec<Reported>, sqlx::Error> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let places: Vec<String> = (1..=REPORTED_AT_ONCE).map(|i| format!("${i}")).collect();
        format!(
            "UPDATE instances SET lock_seq = lock_seq + 1 WHERE id IN ({}) RETURNING {COLS},
                 (SELECT COUNT(*) FROM volumes v WHERE v.instance_id = instances.id
                    AND v.state IN ('attaching', 'detaching')) AS volumes_in_transit",
            places.join(", ")
        )
    });
    let mut out = Vec::with_capacity(ids.len());
    for part in ids.chunks(REPORTED_AT_ONCE) {
        let mut w = db::Write::new(SQL.as_str());
        for i in 0..REPORTED_AT_ONCE {
            w = w.bind(part.get(i).copied().unwrap_or(""));
        }
        out.extend(tx.fetch::<Reported>(w).await?);
    }
    Ok(out)
}

/// One page of an account's instances (of every account: `None`), in creation order
/// after `cursor`; `address`, when not empty, keeps the one with that interface address
/// or floating IP. Without a state filter, instances terminated before `gone_since` are
/// left out.
#[allow(clippy::too_many_arguments)]
pub async fn list(
    conn: &mut db::Conn,
    account: Option<&AccountId>,
    cursor: &str,
    state: &str,
    name: Option<&str>,
    address: &str,
    gone_since: &str,
    limit: i64,
) -> Result<Vec<View>, sqlx::Error> {
    // Two statements rather than `($1 = '' OR account_id = $1)`: an account's page reads
    // the (account_id, id) index, which that condition would keep the planner from.
    let scope = if account.is_some() { "account_id = $1" } else { "$1 = ''" };
    sqlx::query_as(&format!(
        "SELECT {VIEW_COLS} FROM instances WHERE {scope} AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) AND ($3 <> '' OR state <> 'terminated' OR updated_at >= $6)
         AND ($7 = '' OR id IN (SELECT instance_id FROM vifs WHERE ip = $7
                                UNION SELECT v.instance_id FROM floating_ips f JOIN vifs v ON v.id = f.vif_id WHERE f.ip = $7))
         ORDER BY id LIMIT $5"
    ))
    .bind(account.map_or("", |a| a.as_str()))
    .bind(cursor)
    .bind(state)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .bind(gone_since)
    .bind(address)
    .fetch_all(conn)
    .await
}

/// (instance, volume) for the volumes attached to the account's instances (every
/// account's: `account` empty) whose IDs fall in `first..=last`, sorted by instance (one
/// query for a page of instances).
pub async fn attached_volumes(
    conn: &mut db::Conn,
    account: &str,
    first: &str,
    last: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT instance_id, id FROM volumes WHERE ($1 = '' OR account_id = $1) AND instance_id >= $2 AND instance_id <= $3
         AND state IN ('attaching', 'attached', 'detaching') ORDER BY instance_id, id",
    )
    .bind(account)
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await
}

/// A new instance, placed on `host`, to start.
pub struct New<'a> {
    pub id: &'a InstanceId,
    pub account: &'a AccountId,
    pub name: &'a str,
    pub image: &'a ImageId,
    pub hypervisor: &'a str,
    pub cpus: u32,
    pub memory_mib: u32,
    pub ssh_key: Option<&'a KeyPairId>,
    pub user_data: Option<&'a str>,
    pub root_disk_size: Option<u64>,
    pub host: &'a HostNodeId,
    pub now: &'a str,
    pub server_group: Option<&'a str>,
    /// '' for any zone.
    pub zone: &'a str,
    /// As `host::join_labels` writes them (`,` for none).
    pub labels: &'a str,
    /// MiB of root disk it books (`scheduler::disk_mib`).
    pub disk_mib: u32,
}

pub async fn insert(tx: &mut db::Tx<'_>, n: &New<'_>) -> Result<(), sqlx::Error> {
    tx.run(insert_as(n, "'pending', 'running', $10")).await?;
    created(tx, n).await
}

/// As [`insert`], the row sent with the transaction's next round trip
/// ([`db::Tx::later`]).
pub async fn insert_later(tx: &mut db::Tx<'_>, n: &New<'_>) -> Result<(), sqlx::Error> {
    let w = insert_as(n, "'pending', 'running', $10");
    db::event::later_with_event(tx, w, db::event::Kind::Instance, n.id.as_str(), db::event::Change::Created, None).await
}

/// An instance recorded `stopped` (a bundle's stopped instance): no host is reserved; a
/// start schedules it as for any stopped instance. `n.host` is not used.
pub async fn insert_stopped(tx: &mut db::Tx<'_>, n: &New<'_>) -> Result<(), sqlx::Error> {
    tx.run(insert_as(n, "'stopped', 'stopped', NULLIF($10, $10)")).await?;
    created(tx, n).await
}

fn insert_as(n: &New<'_>, state_goal_host: &str) -> db::Write {
    db::Write::new(format!(
        "INSERT INTO instances ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, {state_goal_host}, NULL, 1, 0, 0, NULL, $11, $11, $12, $13, $14, $15, $16)"
    ))
    .bind(n.id.as_str())
    .bind(n.account.as_str())
    .bind(n.name)
    .bind(n.image.as_str())
    .bind(n.hypervisor)
    .bind(n.cpus as i64)
    .bind(n.memory_mib as i64)
    .bind(n.ssh_key.map(|k| k.to_string()))
    .bind(n.user_data)
    .bind(n.host.as_str())
    .bind(n.now)
    .bind(n.root_disk_size.map(|v| v as i64))
    .bind(n.server_group)
    .bind(n.zone)
    .bind(n.labels)
    .bind(i64::from(n.disk_mib))
}

async fn created(tx: &mut db::Tx<'_>, n: &New<'_>) -> Result<(), sqlx::Error> {
    db::event::record_at_commit(tx, db::event::Kind::Instance, n.id.as_str(), db::event::Change::Created).await
}

/// Records new intent: a new spec generation, to be sent again.
pub async fn set_intent(
    tx: &mut db::Tx<'_>,
    id: &str,
    state: InstanceState,
    goal: InstanceGoal,
    reboot: bool,
) -> Result<(), sqlx::Error> {
    let before = db::event::state_of(tx.conn().await?, db::event::Kind::Instance, id).await?;
    sqlx::query(
        "UPDATE instances SET state = $1, goal = $2, spec_gen = spec_gen + 1, reboot_gen = reboot_gen + $3,
             failure_reason = NULL, ensure_sent_at = 0, updated_at = $4
         WHERE id = $5",
    )
    .bind(state.as_str())
    .bind(goal.as_str())
    .bind(reboot as i64)
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Instance, id, before.as_deref()).await
}

/// Places the instance on `host` and gives its interfaces a new generation (they move
/// there, and are re-sent until that host's nwagent has them). Their announcements are
/// forgotten: while the instance was away the other hosts may have dropped `host` from
/// their peers, so its first dispatch there announces it again.
pub async fn place(tx: &mut db::Tx<'_>, id: &str, host: &HostNodeId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE instances SET host_node_id = $1 WHERE id = $2")
        .bind(host.as_str())
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    sqlx::query("UPDATE vifs SET spec_gen = spec_gen + 1, announced_host = NULL WHERE instance_id = $1")
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

pub async fn interface_ids(pool: &db::Pool, id: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1 ORDER BY position").bind(id).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Detaches every volume of a gone instance; returns them.
pub async fn detach_all_volumes(tx: &mut db::Tx<'_>, id: &str) -> Result<Vec<String>, sqlx::Error> {
    let volumes: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached', 'detaching') ORDER BY id",
    )
    .bind(id)
    .fetch_all(tx.conn().await?)
    .await?;
    sqlx::query(
        "UPDATE volumes SET instance_id = NULL, state = 'available', spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $1
         WHERE instance_id = $2 AND state IN ('attaching', 'attached', 'detaching')",
    )
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    for (v,) in &volumes {
        db::event::record(tx.conn().await?, db::event::Kind::Volume, v, db::event::Change::State).await?;
    }
    Ok(volumes.into_iter().map(|v| v.0).collect())
}

/// What a report changed: the observed state, and whether the host was released.
pub struct Observed<'a> {
    pub state: InstanceState,
    pub goal: InstanceGoal,
    pub gen: u64,
    pub failure: Option<&'a str>,
    pub release_host: bool,
}

/// Applies `o` to instance `id`, locked in `tx` and read there in state `before`.
/// The row is sent with the transaction's next round trip ([`db::Tx::later`]).
pub async fn apply_report(tx: &mut db::Tx<'_>, id: &str, before: &str, o: &Observed<'_>) -> Result<(), sqlx::Error> {
    let w = db::Write::new(
        "UPDATE instances SET state = $1, goal = $2, report_gen = $3, failure_reason = $4, updated_at = $5,
                 host_node_id = CASE WHEN $6 = 1 THEN NULL ELSE host_node_id END,
                 last_host_id = CASE WHEN $6 = 1 THEN host_node_id ELSE last_host_id END
             WHERE id = $7",
    )
    .bind(o.state.as_str())
    .bind(o.goal.as_str())
    .bind(o.gen as i64)
    .bind(o.failure)
    .bind(db::now())
    .bind(o.release_host as i64)
    .bind(id);
    db::event::later_with_event(tx, w, db::event::Kind::Instance, id, db::event::Change::State, Some(before)).await
}

/// Forgets the host that kept a stopped instance's disk (evacuated: gone for good); a
/// capture from that disk ends with it.
pub async fn forget_host(tx: &mut db::Tx<'_>, id: &str) -> Result<(), sqlx::Error> {
    let before = db::event::state_of(tx.conn().await?, db::event::Kind::Instance, id).await?;
    sqlx::query(
        "UPDATE instances SET last_host_id = NULL, updated_at = $1,
             state = CASE WHEN state = 'capturing' THEN 'stopped' ELSE state END
         WHERE id = $2",
    )
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Instance, id, before.as_deref()).await
}

/// An instance's NIC as the agent spec needs it.
#[derive(sqlx::FromRow)]
pub struct Nic {
    pub id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: String,
    pub cidr: String,
    pub gateway: String,
    pub vni: i64,
}

impl Nic {
    pub fn into_spec(self) -> ApiResult<NicSpec> {
        let cidr: Ipv4Net = db::stored("networks.cidr", &self.cidr)?;
        Ok(NicSpec {
            id: self.id.parse().map_err(ApiError::internal)?,
            network_id: self.network_id.parse().map_err(ApiError::internal)?,
            mac: db::stored("vifs.mac", &self.mac)?,
            ip: db::stored("vifs.ip", &self.ip)?,
            prefix_len: cidr.prefix_len(),
            gateway: db::stored("networks.gateway", &self.gateway)?,
            vni: self.vni as u32,
        })
    }
}

pub async fn nics<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, id: &str) -> Result<Vec<Nic>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, v.network_id, v.mac, v.ip, n.cidr, n.gateway, n.vni FROM vifs v JOIN networks n ON n.id = v.network_id
         WHERE v.instance_id = $1 ORDER BY v.position",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// (volume, export target JSON) of the volumes the instance's guest should have.
pub async fn volume_targets<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, target FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached') ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// Instances on their way to a state, whose ensure was last sent before `before` (ms):
/// (id, host). A capturing instance's host is its last one, which holds its disk.
pub async fn unconverged(pool: &db::Pool, before: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, CASE WHEN state = 'capturing' THEN last_host_id ELSE host_node_id END FROM instances
         WHERE state IN ('pending', 'starting', 'stopping', 'halting', 'shuttingdown', 'capturing')
           AND ensure_sent_at < $1
         ORDER BY ensure_sent_at LIMIT 1000",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Running instances with a capture pending (crash-consistent), last sent before
/// `before`: (id, host).
pub async fn capturing_live(pool: &db::Pool, before: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.id, i.host_node_id FROM images m JOIN instances i ON m.source = 'capture:' || i.id
         WHERE m.state = 'pending' AND i.state = 'running' AND i.ensure_sent_at < $1
         ORDER BY i.ensure_sent_at LIMIT 1000",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// Instances with a reboot job still running, last sent before `before`: (id, host).
pub async fn rebooting(pool: &db::Pool, before: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.id, i.host_node_id FROM instances i JOIN jobs j ON j.resource_id = i.id
         WHERE j.state = 'running' AND j.target LIKE 'reboot:%' AND i.ensure_sent_at < $1 LIMIT 1000",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// The instances a host holds, to be sent again to its agent when it registers. A
/// failed one is not: it stays failed until its tenant starts (or stops, or terminates)
/// it, as in Nova, rather than being booted again at every restart of the host's agent
/// (red team, 2026-12-07: a container that could not start failed again at each start
/// of `vdc up`).
pub async fn on_host(pool: &db::Pool, host: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM instances WHERE host_node_id = $1 AND state NOT IN ('terminated', 'failed') ORDER BY id",
    )
    .bind(host)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}
