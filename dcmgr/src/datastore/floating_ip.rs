//! Floating IPs as stored: addresses of the external pool, held by an account (and maybe
//! mapped onto an interface) or by a host's router for a network (its SNAT address).

use crate::db;
use crate::error::{ApiError, ApiResult};
use std::collections::HashSet;
use vdc_schema::api::FloatingIp;
use vdc_schema::id::{AccountId, FloatingIpId};

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub account_id: Option<String>,
    pub ip: String,
    pub instance_id: Option<String>,
    pub vif_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLS: &str = "id, account_id, ip, instance_id, vif_id, created_at, updated_at";

impl Row {
    pub fn into_api(self) -> ApiResult<FloatingIp> {
        Ok(FloatingIp {
            id: self.id.parse().map_err(ApiError::internal)?,
            ip: db::stored("floating_ips.ip", &self.ip)?,
            instance_id: self.instance_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            interface_id: self.vif_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            created_at: db::parse_time(&self.created_at),
            updated_at: db::parse_time(&self.updated_at),
        })
    }
}

/// Every address of the pool in use (by accounts and by routers), and how many of them
/// accounts hold.
pub async fn used_ips<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
) -> Result<(HashSet<String>, usize), sqlx::Error> {
    let r: Vec<(String, i64)> =
        sqlx::query_as("SELECT ip, CASE WHEN account_id IS NULL THEN 0 ELSE 1 END FROM floating_ips")
            .fetch_all(db)
            .await?;
    let held = r.iter().filter(|r| r.1 == 1).count();
    Ok((r.into_iter().map(|r| r.0).collect(), held))
}

/// Inserts a new, unassociated address held by `account` or by the router `(network, host)`.
/// The unique key on `ip` fails the insert of an address taken meanwhile.
pub async fn insert(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    account: Option<&str>,
    ip: &str,
    router: Option<(&str, &str)>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO floating_ips (id, account_id, ip, instance_id, vif_id, network_id, host_id, created_at, updated_at)
         VALUES ($1, $2, $3, NULL, NULL, $4, $5, $6, $6)",
    )
    .bind(id)
    .bind(account)
    .bind(ip)
    .bind(router.map(|r| r.0))
    .bind(router.map(|r| r.1))
    .bind(db::now())
    .execute(&mut *conn)
    .await?;
    db::event::record(conn, db::event::Kind::FloatingIp, id, db::event::Change::Created).await
}

/// A router address (`f`) whose network has no instance on its host: none placed there,
/// none stopped there (its port waits there for the next start). nwagent removes the
/// router of a network with its last port on the host.
fn router_idle() -> String {
    format!(
        "f.account_id IS NULL AND f.host_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM vifs v JOIN instances i ON i.id = v.instance_id
            WHERE v.network_id = f.network_id AND i.state <> 'terminated' AND {})",
        db::instance::belongs_on_sql("f.host_id")
    )
}

#[derive(sqlx::FromRow)]
pub struct IdleRouter {
    pub id: String,
    pub ip: String,
    pub network_id: String,
    pub host_id: String,
    pub idle_since: String,
}

/// Notes when routers became idle (and forgets it for those in use again); returns the
/// idle ones.
pub async fn idle_routers(pool: &db::Pool) -> Result<Vec<IdleRouter>, sqlx::Error> {
    let (now, idle) = (db::now(), router_idle());
    let mut tx = db::begin(pool).await?;
    sqlx::query(&format!(
        "UPDATE floating_ips SET idle_since = $1
         WHERE idle_since IS NULL AND id IN (SELECT f.id FROM floating_ips f WHERE {idle})"
    ))
    .bind(&now)
    .execute(tx.conn().await?)
    .await?;
    sqlx::query(&format!(
        "UPDATE floating_ips SET idle_since = NULL
         WHERE idle_since IS NOT NULL AND id NOT IN (SELECT f.id FROM floating_ips f WHERE {idle})"
    ))
    .execute(tx.conn().await?)
    .await?;
    let found = sqlx::query_as(&format!(
        "SELECT f.id, f.ip, f.network_id, f.host_id, f.idle_since FROM floating_ips f
         WHERE f.idle_since IS NOT NULL AND {idle}"
    ))
    .fetch_all(tx.conn().await?)
    .await?;
    tx.commit().await?;
    Ok(found)
}

/// Deletes router address `id` if it is still idle, and idle since `since`: one
/// statement, so an instance placed on the host meanwhile keeps it.
pub async fn release_router(tx: &mut db::Tx<'_>, id: &str, since: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(&format!(
        "DELETE FROM floating_ips WHERE id = $1 AND idle_since = $2
           AND id IN (SELECT f.id FROM floating_ips f WHERE {})",
        router_idle()
    ))
    .bind(id)
    .bind(since)
    .execute(tx.conn().await?)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes the router addresses of `host` no instance uses (after an evacuation: none);
/// returns how many.
pub async fn release_routers_of(tx: &mut db::Tx<'_>, host: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query(&format!(
        "DELETE FROM floating_ips WHERE host_id = $1 AND id IN (SELECT f.id FROM floating_ips f WHERE {})",
        router_idle()
    ))
    .bind(host)
    .execute(tx.conn().await?)
    .await?;
    Ok(r.rows_affected())
}

/// The SNAT address of `host`'s router for `network`, if allocated.
pub async fn router_ip(pool: &db::Pool, network: &str, host: &str) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT ip FROM floating_ips WHERE network_id = $1 AND host_id = $2")
        .bind(network)
        .bind(host)
        .fetch_optional(pool)
        .await?;
    Ok(r.map(|r| r.0))
}

/// The floating IP associated with an interface, if any.
pub async fn of_interface<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    vif: &str,
) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT ip FROM floating_ips WHERE vif_id = $1").bind(vif).fetch_optional(db).await?;
    Ok(r.map(|r| r.0))
}

/// The address `id`, whoever holds it.
pub async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &FloatingIpId,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM floating_ips WHERE id = $1")).bind(id.as_str()).fetch_optional(db).await
}

/// One page of an account's addresses, in creation order after `cursor`.
pub async fn list(pool: &db::Pool, account: &AccountId, cursor: &str, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM floating_ips WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3"))
        .bind(account.as_str())
        .bind(cursor)
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Maps the address onto an interface of an instance. The unique index on `vif_id` is
/// the last guard against two addresses racing for one interface.
pub async fn associate(tx: &mut db::Tx<'_>, id: &FloatingIpId, instance: &str, vif: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE floating_ips SET instance_id = $1, vif_id = $2, updated_at = $3 WHERE id = $4")
        .bind(instance)
        .bind(vif)
        .bind(db::now())
        .bind(id.as_str())
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::FloatingIp, id.as_str(), db::event::Change::Updated).await
}

pub async fn disassociate(tx: &mut db::Tx<'_>, id: &FloatingIpId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE floating_ips SET instance_id = NULL, vif_id = NULL, updated_at = $1 WHERE id = $2")
        .bind(db::now())
        .bind(id.as_str())
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::FloatingIp, id.as_str(), db::event::Change::Updated).await
}

/// Unmaps every address of an instance; they stay with the account.
pub async fn disassociate_instance(tx: &mut db::Tx<'_>, instance: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE floating_ips SET instance_id = NULL, vif_id = NULL, updated_at = $1 WHERE instance_id = $2")
        .bind(db::now())
        .bind(instance)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

pub async fn delete(tx: &mut db::Tx<'_>, id: &FloatingIpId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::FloatingIp, id.as_str(), db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM floating_ips WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}
