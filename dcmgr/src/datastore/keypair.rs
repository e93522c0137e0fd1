//! Key pairs as stored.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::KeyPair;
use vdc_schema::id::{AccountId, KeyPairId};

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub public_key: String,
    pub fingerprint: String,
    pub created_at: String,
}

impl Row {
    pub fn into_api(self) -> ApiResult<KeyPair> {
        Ok(KeyPair {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            public_key: self.public_key,
            fingerprint: self.fingerprint,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const COLS: &str = "id, name, public_key, fingerprint, created_at";

pub async fn insert(tx: &mut db::Tx<'_>, account: &AccountId, k: &KeyPair) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO keypairs (id, account_id, name, public_key, fingerprint, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(k.id.as_str())
    .bind(account.as_str())
    .bind(&k.name)
    .bind(&k.public_key)
    .bind(&k.fingerprint)
    .bind(db::time(&k.created_at))
    .execute(tx.conn().await?)
    .await?;
    db::event::record(tx.conn().await?, db::event::Kind::KeyPair, k.id.as_str(), db::event::Change::Created).await
}

/// One page of an account's key pairs, in creation order after `cursor`.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM keypairs WHERE account_id = $1 AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// The account's key pair `id`, if it is theirs.
pub async fn get_own<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &AccountId,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM keypairs WHERE id = $1 AND account_id = $2"))
        .bind(id)
        .bind(account.as_str())
        .fetch_optional(db)
        .await
}

/// Deletes the account's key pair; false when there was none.
pub async fn delete_own(pool: &db::Pool, account: &AccountId, id: &KeyPairId) -> Result<bool, sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    db::event::record(tx.conn().await?, db::event::Kind::KeyPair, id.as_str(), db::event::Change::Deleted).await?;
    let r = sqlx::query("DELETE FROM keypairs WHERE id = $1 AND account_id = $2")
        .bind(id.as_str())
        .bind(account.as_str())
        .execute(tx.conn().await?)
        .await?;
    if r.rows_affected() != 1 {
        // Not theirs (or gone): the event above goes with the rollback.
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// The public key given to instances that name the key pair.
pub async fn public_key<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT public_key FROM keypairs WHERE id = $1").bind(id).fetch_optional(db).await?;
    Ok(r.map(|r| r.0))
}
