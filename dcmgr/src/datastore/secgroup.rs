//! Security groups and their rules as stored.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{RuleSpec, SecurityGroupRule};
use vdc_schema::id::{AccountId, RuleId, SecurityGroupId};

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub description: String,
    pub created_at: String,
}

const COLS: &str = "id, name, description, created_at";

#[derive(sqlx::FromRow)]
pub struct RuleRow {
    pub id: String,
    pub group_id: String,
    pub direction: String,
    pub protocol: String,
    pub port_min: Option<i64>,
    pub port_max: Option<i64>,
    pub cidr: Option<String>,
    pub remote_group_id: Option<String>,
}

impl RuleRow {
    pub fn into_api(self) -> ApiResult<SecurityGroupRule> {
        Ok(SecurityGroupRule {
            id: self.id.parse().map_err(ApiError::internal)?,
            spec: RuleSpec {
                direction: self.direction.parse().map_err(ApiError::internal)?,
                protocol: self.protocol.parse().map_err(ApiError::internal)?,
                port_min: self.port_min.map(|p| p as u16),
                port_max: self.port_max.map(|p| p as u16),
                cidr: self.cidr,
                group: self.remote_group_id.map(|g| g.parse()).transpose().map_err(ApiError::internal)?,
            },
        })
    }
}

pub const RULE_COLS: &str = "id, group_id, direction, protocol, port_min, port_max, cidr, remote_group_id";

pub async fn insert(
    tx: &mut db::Tx<'_>,
    id: &SecurityGroupId,
    account: &AccountId,
    name: &str,
    description: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO security_groups (id, account_id, name, description, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(account.as_str())
    .bind(name)
    .bind(description)
    .bind(db::now())
    .execute(tx.conn().await?)
    .await?;
    db::event::record(tx.conn().await?, db::event::Kind::SecurityGroup, id.as_str(), db::event::Change::Created).await
}

/// Adds a rule (already normalized) to a group; returns its new ID.
pub async fn insert_rule(tx: &mut db::Tx<'_>, group: &SecurityGroupId, r: &RuleSpec) -> Result<RuleId, sqlx::Error> {
    let id = RuleId::generate();
    sqlx::query(&format!("INSERT INTO security_group_rules ({RULE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(id.as_str())
        .bind(group.as_str())
        .bind(r.direction.as_str())
        .bind(r.protocol.as_str())
        .bind(r.port_min.map(i64::from))
        .bind(r.port_max.map(i64::from))
        .bind(&r.cidr)
        .bind(r.group.as_ref().map(|g| g.to_string()))
        .execute(tx.conn().await?)
        .await?;
    Ok(id)
}

/// The rules of a group, in creation order.
pub async fn rules<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    group: &str,
) -> Result<Vec<RuleRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {RULE_COLS} FROM security_group_rules WHERE group_id = $1 ORDER BY id"))
        .bind(group)
        .fetch_all(db)
        .await
}

/// The account's group `id`, if it is theirs.
pub async fn get_own<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &AccountId,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM security_groups WHERE id = $1 AND account_id = $2"))
        .bind(id)
        .bind(account.as_str())
        .fetch_optional(db)
        .await
}

/// One page of an account's groups, in creation order after `cursor`.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM security_groups
         WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The account that owns group `id`, if it exists.
pub async fn owner(tx: &mut db::Tx<'_>, id: &SecurityGroupId) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT account_id FROM security_groups WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.map(|r| r.0))
}

/// The instances whose interfaces are members of the group.
pub async fn member_instances(tx: &mut db::Tx<'_>, id: &SecurityGroupId) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT v.instance_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id
         WHERE s.group_id = $1 ORDER BY v.instance_id",
    )
    .bind(id.as_str())
    .fetch_all(tx.conn().await?)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// The other groups whose rules refer to the group.
pub async fn referring_groups(tx: &mut db::Tx<'_>, id: &SecurityGroupId) -> Result<Vec<String>, sqlx::Error> {
    let r: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT group_id FROM security_group_rules WHERE remote_group_id = $1 AND group_id <> $1 ORDER BY group_id",
    )
    .bind(id.as_str())
    .fetch_all(tx.conn().await?)
    .await?;
    Ok(r.into_iter().map(|r| r.0).collect())
}

/// Deletes a group with its rules.
pub async fn delete(tx: &mut db::Tx<'_>, id: &SecurityGroupId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::SecurityGroup, id.as_str(), db::event::Change::Deleted)
        .await?;
    sqlx::query("DELETE FROM security_group_rules WHERE group_id = $1")
        .bind(id.as_str())
        .execute(tx.conn().await?)
        .await?;
    sqlx::query("DELETE FROM security_groups WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}

/// Deletes a rule of the group; false when the group has no such rule.
pub async fn delete_rule(tx: &mut db::Tx<'_>, group: &SecurityGroupId, rule: &RuleId) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM security_group_rules WHERE id = $1 AND group_id = $2")
        .bind(rule.as_str())
        .bind(group.as_str())
        .execute(tx.conn().await?)
        .await?;
    Ok(r.rows_affected() != 0)
}
