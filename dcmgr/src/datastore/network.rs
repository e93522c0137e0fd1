//! Networks as stored. [`Row`] and [`COLS`] are also read by interface code, which
//! needs a network's addresses to build an interface's spec.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Network;
use vdc_schema::id::{AccountId, NetworkId};

#[derive(sqlx::FromRow, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub cidr: String,
    pub gateway: String,
    pub dhcp_start: String,
    pub dhcp_end: String,
    pub vni: i64,
    pub created_at: String,
}

pub const COLS: &str = "id, name, cidr, gateway, dhcp_start, dhcp_end, vni, created_at";

impl Row {
    pub fn into_api(self) -> ApiResult<Network> {
        Ok(Network {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            cidr: db::stored("networks.cidr", &self.cidr)?,
            gateway: db::stored("networks.gateway", &self.gateway)?,
            dhcp_start: db::stored("networks.dhcp_start", &self.dhcp_start)?,
            dhcp_end: db::stored("networks.dhcp_end", &self.dhcp_end)?,
            vni: self.vni as u32,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

/// (id, cidr) of every network of the account.
pub async fn cidrs_of(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, cidr FROM networks WHERE account_id = $1")
        .bind(account.as_str())
        .fetch_all(tx.conn().await?)
        .await
}

/// The next VXLAN VNI: one above the highest in use, 100 for the first network.
pub async fn next_vni(tx: &mut db::Tx<'_>) -> Result<i64, sqlx::Error> {
    let (vni,): (i64,) =
        sqlx::query_as("SELECT COALESCE(MAX(vni), 99) + 1 FROM networks").fetch_one(tx.conn().await?).await?;
    Ok(vni)
}

/// Inserts a network; a VNI taken concurrently by another account is a unique violation.
pub async fn insert(tx: &mut db::Tx<'_>, account: &AccountId, n: &Row) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO networks ({COLS}, account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
        .bind(&n.id)
        .bind(&n.name)
        .bind(&n.cidr)
        .bind(&n.gateway)
        .bind(&n.dhcp_start)
        .bind(&n.dhcp_end)
        .bind(n.vni)
        .bind(&n.created_at)
        .bind(account.as_str())
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Network, &n.id, db::event::Change::Created).await
}

/// One page of an account's networks, in creation order after `cursor`.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM networks WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The account's network `id`, if it is theirs.
pub async fn get_own<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    pool: E,
    account: &AccountId,
    id: &NetworkId,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM networks WHERE id = $1 AND account_id = $2"))
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(pool)
        .await
}

/// The account that owns network `id`.
pub async fn owner(tx: &mut db::Tx<'_>, id: &NetworkId) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT account_id FROM networks WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.map(|r| r.0))
}

/// The instances with an interface on network `id`, by ID.
pub async fn users(tx: &mut db::Tx<'_>, id: &NetworkId) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT instance_id FROM vifs WHERE network_id = $1 ORDER BY instance_id")
            .bind(id.as_str())
            .fetch_all(tx.conn().await?)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Deletes network `id`; routers' SNAT addresses on it go with it (ON DELETE CASCADE).
pub async fn delete(tx: &mut db::Tx<'_>, id: &NetworkId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::Network, id.as_str(), db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM networks WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            id: "nw-a".into(),
            name: "a".into(),
            cidr: "10.0.0.0/24".into(),
            gateway: "10.0.0.1".into(),
            dhcp_start: "10.0.0.2".into(),
            dhcp_end: "10.0.0.254".into(),
            vni: 100,
            created_at: db::now(),
        }
    }

    #[test]
    fn stored_addresses_become_typed_or_an_internal_error_naming_the_column() {
        let n = row().into_api().unwrap();
        assert_eq!((n.cidr.to_string(), n.gateway.to_string()), ("10.0.0.0/24".into(), "10.0.0.1".into()));
        let e = Row { dhcp_end: "10.0.0.300".into(), ..row() }.into_api().unwrap_err();
        assert_eq!(e.code(), "internal");
        assert!(e.to_string().contains(r#"networks.dhcp_end "10.0.0.300" in the database"#), "{e}");
        assert_eq!(Row { cidr: "10.0.0.0".into(), ..row() }.into_api().unwrap_err().code(), "internal");
    }
}
