//! Server groups as stored (migration 0021), and what placement reads of them: the hosts
//! their members are on.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::ServerGroup;
use vdc_schema::id::{AccountId, InstanceId, ServerGroupId};

#[derive(sqlx::FromRow, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub policy: String,
    pub created_at: String,
}

impl Row {
    pub fn policy(&self) -> ApiResult<vdc_schema::ServerGroupPolicy> {
        db::stored("server_groups.policy", &self.policy)
    }

    pub fn into_api(self, members: Vec<InstanceId>) -> ApiResult<ServerGroup> {
        Ok(ServerGroup {
            policy: self.policy()?,
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            members,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const COLS: &str = "id, name, policy, created_at";

pub async fn insert(tx: &mut db::Tx<'_>, account: &AccountId, g: &ServerGroup) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO server_groups (id, account_id, name, policy, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(g.id.as_str())
        .bind(account.as_str())
        .bind(&g.name)
        .bind(g.policy.as_str())
        .bind(db::time(&g.created_at))
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::ServerGroup, g.id.as_str(), db::event::Change::Created).await
}

/// One page of an account's server groups, in creation order after `cursor`.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM server_groups WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3)
         ORDER BY id LIMIT $4"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The account's server group `id`, if it is theirs.
pub async fn get_own<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &str,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM server_groups WHERE id = $1 AND account_id = $2"))
        .bind(id)
        .bind(account)
        .fetch_optional(db)
        .await
}

/// The account's server group named `name`.
pub async fn get_named(pool: &db::Pool, account: &AccountId, name: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM server_groups WHERE account_id = $1 AND name = $2"))
        .bind(account.as_str())
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// The account's server group named `name`, inside a creating transaction.
pub async fn named(tx: &mut db::Tx<'_>, account: &AccountId, name: &str) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT id FROM server_groups WHERE account_id = $1 AND name = $2")
        .bind(account.as_str())
        .bind(name)
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.map(|r| r.0))
}

/// (group, member) for the members (instances not terminated) of the groups whose IDs
/// fall in `first..=last`, sorted by group then instance: one query for a page.
pub async fn members_of_range(
    pool: &db::Pool,
    account: &AccountId,
    first: &str,
    last: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT server_group_id, id FROM instances
         WHERE account_id = $1 AND server_group_id >= $2 AND server_group_id <= $3 AND state <> 'terminated'
         ORDER BY server_group_id, id",
    )
    .bind(account.as_str())
    .bind(first)
    .bind(last)
    .fetch_all(pool)
    .await
}

/// The members of group `id` (instances not terminated), oldest first.
pub async fn members<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM instances WHERE server_group_id = $1 AND state <> 'terminated' ORDER BY id")
            .bind(id)
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The hosts the members of group `id` are placed on (stopped members hold none).
/// Read under the group's lock, so it is what the previous placement committed.
pub async fn member_hosts<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT host_node_id FROM instances
         WHERE server_group_id = $1 AND host_node_id IS NOT NULL AND state <> 'terminated'",
    )
    .bind(id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Locks the group's row (placements into the group and its delete run one after the
/// other); false when it is gone.
pub async fn lock(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE server_groups SET lock_seq = lock_seq + 1 WHERE id = $1")
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes the group (the caller holds its lock and found no member). Terminated
/// instances that were in it keep no link (the foreign key sets it null).
pub async fn delete(tx: &mut db::Tx<'_>, id: &ServerGroupId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::ServerGroup, id.as_str(), db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM server_groups WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}
