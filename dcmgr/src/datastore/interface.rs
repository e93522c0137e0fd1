//! Interfaces (vifs) as stored, with their security group memberships, and what an
//! interface's ensure is built from.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Interface;
use vdc_schema::id::SecurityGroupId;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub instance_id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: String,
    pub state: String,
    pub floating_ip: Option<String>,
}

impl Row {
    pub fn into_api(self, security_groups: Vec<SecurityGroupId>) -> ApiResult<Interface> {
        Ok(Interface {
            security_groups,
            id: self.id.parse().map_err(ApiError::internal)?,
            network_id: self.network_id.parse().map_err(ApiError::internal)?,
            mac: db::stored("vifs.mac", &self.mac)?,
            ip: db::stored("vifs.ip", &self.ip)?,
            state: self.state.parse().map_err(ApiError::internal)?,
            floating_ip: self.floating_ip.as_deref().map(|ip| db::stored("floating_ips.ip", ip)).transpose()?,
        })
    }
}

/// The addresses taken on a network.
pub async fn used_ips(tx: &mut db::Tx<'_>, network: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = tx.fetch(db::Write::new("SELECT ip FROM vifs WHERE network_id = $1").bind(network)).await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// A new interface, pending. The unique (network, ip) key fails the insert of an address
/// taken meanwhile.
pub struct New<'a> {
    pub id: &'a str,
    pub instance: &'a str,
    pub account: &'a str,
    pub network: &'a str,
    pub mac: &'a str,
    pub ip: &'a str,
    pub position: i64,
}

/// Sends `w` now, or with `later` in the transaction's next round trip
/// ([`db::Tx::later`]).
async fn write(tx: &mut db::Tx<'_>, w: db::Write, later: bool) -> Result<(), sqlx::Error> {
    if later {
        tx.later(w).await
    } else {
        tx.run(w).await
    }
}

pub async fn insert(tx: &mut db::Tx<'_>, v: &New<'_>, later: bool) -> Result<(), sqlx::Error> {
    let w = db::Write::new(
        "INSERT INTO vifs (id, instance_id, account_id, network_id, mac, ip, state, position) VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)",
    )
    .bind(v.id)
    .bind(v.instance)
    .bind(v.account)
    .bind(v.network)
    .bind(v.mac)
    .bind(v.ip)
    .bind(v.position);
    write(tx, w, later).await
}

/// Makes the interface a member of the group.
pub async fn add_group(tx: &mut db::Tx<'_>, vif: &str, group: &str, later: bool) -> Result<(), sqlx::Error> {
    let w = db::Write::new("INSERT INTO vif_security_groups (vif_id, group_id) VALUES ($1, $2)").bind(vif).bind(group);
    write(tx, w, later).await
}

/// Interfaces of the instances of `account` (of every account: empty) whose IDs fall in
/// `first..=last`, by instance and position.
pub async fn for_instances(
    conn: &mut db::Conn,
    account: &str,
    first: &str,
    last: &str,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, v.instance_id, v.network_id, v.mac, v.ip, v.state, f.ip AS floating_ip
         FROM vifs v LEFT JOIN floating_ips f ON f.vif_id = v.id
         WHERE ($1 = '' OR v.account_id = $1) AND v.instance_id >= $2 AND v.instance_id <= $3 ORDER BY v.instance_id, v.position",
    )
    .bind(account)
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await
}

/// (interface, group) memberships of the interfaces of [`for_instances`], by group.
pub async fn groups_for_instances(
    conn: &mut db::Conn,
    account: &str,
    first: &str,
    last: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.vif_id, s.group_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id
         WHERE ($1 = '' OR v.account_id = $1) AND v.instance_id >= $2 AND v.instance_id <= $3 ORDER BY s.group_id",
    )
    .bind(account)
    .bind(first)
    .bind(last)
    .fetch_all(conn)
    .await
}

/// The interfaces of an instance, in position order.
pub async fn ids_of_instance(tx: &mut db::Tx<'_>, instance: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1 ORDER BY position")
        .bind(instance)
        .fetch_all(tx.conn().await?)
        .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// The groups the interfaces of an instance are members of.
pub async fn groups_of_instance(tx: &mut db::Tx<'_>, instance: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT s.group_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id WHERE v.instance_id = $1",
    )
    .bind(instance)
    .fetch_all(tx.conn().await?)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// Deletes the interfaces `vifs` of an instance with their memberships.
pub async fn delete_for_instance(tx: &mut db::Tx<'_>, instance: &str, vifs: &[String]) -> Result<(), sqlx::Error> {
    for v in vifs {
        sqlx::query("DELETE FROM vif_security_groups WHERE vif_id = $1").bind(v).execute(tx.conn().await?).await?;
    }
    sqlx::query("DELETE FROM vifs WHERE instance_id = $1").bind(instance).execute(tx.conn().await?).await?;
    Ok(())
}

// A group's members resolve its rules; the members of groups whose rules name it resolve
// its members' addresses. So a change of its rules reaches its members, and a change of
// its members reaches the referring groups' members (its own too when it names itself),
// never more: a create into a group of thousands re-sends nothing to them unless their
// rules name it.
const MEMBERS: &str = "SELECT vif_id FROM vif_security_groups WHERE group_id = $1";
const REFERRERS: &str = "SELECT s.vif_id FROM vif_security_groups s
     JOIN security_group_rules r ON r.group_id = s.group_id WHERE r.remote_group_id = $1";

/// Which interfaces a change of a group reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupChange {
    /// Its rules changed: its members.
    Rules,
    /// Its members changed: the members of groups whose rules refer to it.
    Members,
}

impl GroupChange {
    fn reached(self) -> &'static str {
        match self {
            GroupChange::Rules => MEMBERS,
            GroupChange::Members => REFERRERS,
        }
    }
}

/// The interfaces a `change` of group `g` reaches (distinct).
pub async fn reached_by(pool: &db::Pool, g: &str, change: GroupChange) -> Result<Vec<String>, sqlx::Error> {
    let q = format!("SELECT DISTINCT vif_id FROM ({}) x", change.reached());
    let rows: Vec<(String,)> = sqlx::query_as(&q).bind(g).fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Bumps the generation of every interface a `change` of group `g` reaches, in the
/// transaction of the change, so the reconciler re-sends them until nwagent reports the
/// new generation.
pub async fn bump_for_group(tx: &mut db::Tx<'_>, g: &str, change: GroupChange) -> Result<(), sqlx::Error> {
    bump_for_group_with(tx, g, change, false).await
}

/// As [`bump_for_group`]; with `later`, sent with the transaction's next round trip
/// ([`db::Tx::later`]).
pub async fn bump_for_group_with(
    tx: &mut db::Tx<'_>,
    g: &str,
    change: GroupChange,
    later: bool,
) -> Result<(), sqlx::Error> {
    let q = format!("UPDATE vifs SET spec_gen = spec_gen + 1 WHERE id IN ({})", change.reached());
    write(tx, db::Write::new(q).bind(g), later).await
}

/// Bumps one interface's generation (its floating IP or its peers changed).
pub async fn bump(tx: &mut sqlx::AnyConnection, vif: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vifs SET spec_gen = spec_gen + 1 WHERE id = $1").bind(vif).execute(tx).await?;
    Ok(())
}

/// A new generation for the interfaces of `network` placed on `host` (its router's
/// address changed); returns their IDs.
pub async fn bump_on_host(tx: &mut db::Tx<'_>, network: &str, host: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "UPDATE vifs SET spec_gen = spec_gen + 1
         WHERE network_id = $1 AND instance_id IN (SELECT id FROM instances WHERE host_node_id = $2) RETURNING id",
    )
    .bind(network)
    .bind(host)
    .fetch_all(tx.conn().await?)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// A new generation for every interface of an instance being placed on a host: an
/// unplug from that host decided before (at an older generation) no longer removes them.
pub async fn bump_instance(tx: &mut sqlx::AnyConnection, instance: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vifs SET spec_gen = spec_gen + 1 WHERE instance_id = $1").bind(instance).execute(tx).await?;
    Ok(())
}

/// (ID, generation) of an instance's interfaces.
pub async fn generations(tx: &mut sqlx::AnyConnection, instance: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT id, spec_gen FROM vifs WHERE instance_id = $1 ORDER BY id")
        .bind(instance)
        .fetch_all(tx)
        .await
}

// ---------------------------------------------------------------- the agent side

/// An interface with its instance's placement, as its ensure needs it.
#[derive(sqlx::FromRow)]
pub struct Placed {
    pub instance_id: String,
    pub account_id: String,
    pub network_id: String,
    pub mac: String,
    pub ip: String,
    pub spec_gen: i64,
    pub host_node_id: Option<String>,
    /// Where a stopped instance ran last (its port stays there for the next start).
    pub last_host_id: Option<String>,
}

pub async fn placed(pool: &db::Pool, id: &str) -> Result<Option<Placed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.instance_id, v.account_id, v.network_id, v.mac, v.ip, v.spec_gen, i.host_node_id, i.last_host_id
         FROM vifs v JOIN instances i ON i.id = v.instance_id WHERE v.id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The network an interface is on, as its ensure carries it.
#[derive(sqlx::FromRow)]
pub struct OnNetwork {
    pub id: String,
    pub vni: i64,
    pub cidr: String,
    pub gateway: String,
}

pub async fn network(pool: &db::Pool, id: &str) -> Result<Option<OnNetwork>, sqlx::Error> {
    sqlx::query_as("SELECT id, vni, cidr, gateway FROM networks WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// What the metadata served to an interface's instance is made of.
#[derive(sqlx::FromRow)]
pub struct MetadataSource {
    pub name: String,
    pub ssh_key_id: Option<String>,
    pub user_data: Option<String>,
}

pub async fn metadata_source(pool: &db::Pool, instance: &str) -> Result<Option<MetadataSource>, sqlx::Error> {
    sqlx::query_as("SELECT name, ssh_key_id, user_data FROM instances WHERE id = $1")
        .bind(instance)
        .fetch_optional(pool)
        .await
}

/// The tunnel addresses of the other hosts with interfaces on `network`.
pub async fn peers(pool: &db::Pool, network: &str, host: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT t.tunnel_ip FROM vifs v JOIN instances i ON i.id = v.instance_id
         JOIN host_tunnels t ON t.host_id = i.host_node_id
         WHERE v.network_id = $1 AND i.host_node_id <> $2 ORDER BY t.tunnel_ip",
    )
    .bind(network)
    .bind(host)
    .fetch_all(pool)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// Whether an interface on `network` placed on `host` has announced `host` to the
/// network's other hosts.
pub async fn announced(pool: &db::Pool, network: &str, host: &str) -> Result<bool, sqlx::Error> {
    placed_on(pool, network, host, true).await
}

/// Whether an interface of `network` belongs to an instance placed on `host` (and, with
/// `announced`, was announced from there).
async fn placed_on<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    network: &str,
    host: &str,
    announced: bool,
) -> Result<bool, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as(
        "SELECT v.id FROM vifs v JOIN instances i ON i.id = v.instance_id
         WHERE v.network_id = $1 AND i.host_node_id = $2 AND ($3 = 0 OR v.announced_host = $2) LIMIT 1",
    )
    .bind(network)
    .bind(host)
    .bind(i64::from(announced))
    .fetch_optional(db)
    .await?;
    Ok(r.is_some())
}

pub async fn set_announced(tx: &mut db::Tx<'_>, vif: &str, host: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vifs SET announced_host = $1 WHERE id = $2")
        .bind(host)
        .bind(vif)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// The networks of an instance's interfaces, in order (the order their locks are taken).
pub async fn networks_of_instance(tx: &mut db::Tx<'_>, instance: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT network_id FROM vifs WHERE instance_id = $1 ORDER BY network_id")
            .bind(instance)
            .fetch_all(tx.conn().await?)
            .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// After interfaces on `networks` left `host`: for each network with no interface placed
/// on `host` any more, bumps one interface per other host, whose next ensure carries peers
/// without `host` (they stop tunnelling to a host the network left). Takes each network's
/// lock, so that of two instances leaving at once the second sees the first gone.
/// Returns the bumped interfaces, to be dispatched.
pub async fn bump_for_departure(
    tx: &mut db::Tx<'_>,
    networks: &[String],
    host: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let mut bumped = Vec::new();
    for n in networks {
        db::lock(tx, db::Lock::Network, n).await?;
        if placed_on(tx.conn().await?, n, host, false).await? {
            continue;
        }
        for other in one_per_other_host(tx.conn().await?, n, host).await? {
            bump(tx.conn().await?, &other).await?;
            bumped.push(other);
        }
    }
    Ok(bumped)
}

/// One interface of `network` per host other than `host`.
pub async fn one_per_other_host<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    network: &str,
    host: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT MIN(v.id) FROM vifs v JOIN instances i ON i.id = v.instance_id
         WHERE v.network_id = $1 AND i.host_node_id IS NOT NULL AND i.host_node_id <> $2 GROUP BY i.host_node_id",
    )
    .bind(network)
    .bind(host)
    .fetch_all(db)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// The groups an interface is a member of.
pub async fn group_ids<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    vif: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> =
        sqlx::query_as("SELECT group_id FROM vif_security_groups WHERE vif_id = $1 ORDER BY group_id")
            .bind(vif)
            .fetch_all(db)
            .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// The addresses of the members of a group.
pub async fn member_ips(pool: &db::Pool, group: &str) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT v.ip FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id WHERE s.group_id = $1 ORDER BY v.ip",
    )
    .bind(group)
    .fetch_all(pool)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// Where an interface's instance is (its host, or the host a stopped one ran on last) and
/// the interface's generation; None when the interface is unknown.
pub async fn whereabouts<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<Whereabouts>, sqlx::Error> {
    sqlx::query_as(
        "SELECT i.host_node_id, i.last_host_id, v.spec_gen FROM vifs v JOIN instances i ON i.id = v.instance_id \
         WHERE v.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Where an interface's instance is, and the interface's generation.
#[derive(sqlx::FromRow)]
pub struct Whereabouts {
    pub host_node_id: Option<String>,
    pub last_host_id: Option<String>,
    pub spec_gen: i64,
}

impl Whereabouts {
    /// Whether `node` should hold the interface's port: its instance runs there, or was
    /// stopped there (the port waits for the next start).
    pub fn belongs_on(&self, node: &str) -> bool {
        db::instance::belongs_on(self.host_node_id.as_deref(), self.last_host_id.as_deref(), node)
    }
}

/// Records a report of generation `gen` unless a newer one was recorded; `applied` is
/// the spec generation the interface now holds (0: none). A new state is an event.
pub async fn record_report(
    tx: &mut db::Tx<'_>,
    id: &str,
    state: &str,
    gen: i64,
    applied: i64,
) -> Result<(), sqlx::Error> {
    // The lock first: on SQLite a transaction that reads and then writes fails (busy
    // snapshot) when another writer committed in between.
    db::lock(tx, db::Lock::Interface, id).await?;
    let before = db::event::state_of(tx.conn().await?, db::event::Kind::Interface, id).await?;
    sqlx::query(
        "UPDATE vifs SET state = $1, report_gen = $2,
             applied_gen = CASE WHEN $4 > applied_gen THEN $4 ELSE applied_gen END
         WHERE id = $3 AND report_gen < $2",
    )
    .bind(state)
    .bind(gen)
    .bind(id)
    .bind(applied)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Interface, id, before.as_deref()).await
}

/// Interfaces whose host has not reported their current generation, last sent before
/// `before` (ms): (id, host).
pub async fn unconverged(pool: &db::Pool, before: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, i.host_node_id FROM vifs v JOIN instances i ON i.id = v.instance_id
         WHERE v.applied_gen < v.spec_gen AND v.ensure_sent_at < $1 AND i.host_node_id IS NOT NULL
         ORDER BY v.ensure_sent_at LIMIT 1000",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// The interfaces whose ports a host holds: of the instances it runs, and of those stopped
/// there (kept for their next start).
pub async fn on_host(pool: &db::Pool, host: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(&format!(
        "SELECT v.id FROM vifs v JOIN instances i ON i.id = v.instance_id WHERE {} ORDER BY v.id",
        db::instance::belongs_on_sql("$1")
    ))
    .bind(host)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_belongs_where_its_instance_runs_or_was_stopped() {
        let w = |host: Option<&str>, last: Option<&str>| Whereabouts {
            host_node_id: host.map(Into::into),
            last_host_id: last.map(Into::into),
            spec_gen: 1,
        };
        assert!(w(Some("a"), Some("b")).belongs_on("a"));
        assert!(!w(Some("a"), Some("b")).belongs_on("b"), "running elsewhere now");
        assert!(w(None, Some("b")).belongs_on("b"), "stopped there: kept for the next start");
        assert!(!w(None, None).belongs_on("b"), "evacuated: on no host");
    }
}
