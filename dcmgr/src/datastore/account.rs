//! Accounts as stored (their users and tokens: [`super::user`]).

use crate::db;
use vdc_schema::api::Account;
use vdc_schema::id::AccountId;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub admin: i64,
    pub created_at: String,
}

impl Row {
    pub fn into_api(self) -> Account {
        Account {
            id: self.id.parse().unwrap_or_else(|_| AccountId::generate()),
            name: self.name,
            admin: self.admin != 0,
            created_at: db::parse_time(&self.created_at),
        }
    }
}

const COLS: &str = "id, name, admin, created_at";

/// Locks the account's row as the first write of a transaction: decisions over all of
/// an account's resources of a kind (no two networks overlap) run one after the other.
/// False when the account is gone (deleted meanwhile: nothing may be made in it).
pub async fn lock(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<bool, sqlx::Error> {
    if tx.holds("accounts", account.as_str()) {
        return Ok(true);
    }
    // Two transactions that hold it shared and both ask for it whole would deadlock.
    debug_assert!(!tx.holds(SHARED, account.as_str()), "account {account} locked shared, then whole");
    // With the writes waiting ([`db::Tx::later`]) in the same round trip.
    let own = tx
        .fetch::<(i64,)>(
            db::Write::new("UPDATE accounts SET lock_seq = lock_seq + 1 WHERE id = $1 RETURNING own_quotas")
                .bind(account.as_str()),
        )
        .await?;
    if own.is_empty() {
        return Ok(false);
    }
    tx.held("accounts", account.as_str());
    no_own_quotas(tx, account, &own);
    Ok(true)
}

/// Notes, for an account whose locking statement returned `own` (its `own_quotas`), that it
/// sets no limits of its own: a quota set counts them on the row under the same lock, and
/// the locking statement reads the row as that set left it.
fn no_own_quotas(tx: &mut db::Tx<'_>, account: &AccountId, own: &[(i64,)]) {
    if own.first().is_some_and(|(n,)| *n == 0) {
        super::quota::none_set(tx, account);
    }
}

/// Counts the account's own limits on its row, after a quota set changed them under
/// its lock (see [`no_own_quotas`]).
pub async fn count_own_quotas(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<(), sqlx::Error> {
    tx.run(
        db::Write::new(
            "UPDATE accounts SET own_quotas = (SELECT COUNT(*) FROM account_quotas q WHERE q.account_id = $1) \
             WHERE id = $1",
        )
        .bind(account.as_str()),
    )
    .await
}

/// Locks the account's row shared (PostgreSQL): creates that need no decision over the
/// account's other resources (no quota limits them) run side by side, and a change that
/// locks the row ([`lock`]: quotas set, a user added, a bundle imported) waits for them
/// all, and they for it. Nothing more when the transaction holds the row either way.
/// SQLite has one writer: there it is [`lock`]. False when the account is gone.
pub async fn lock_shared(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<bool, sqlx::Error> {
    if tx.sqlite() {
        return lock(tx, account).await;
    }
    if tx.holds("accounts", account.as_str()) || tx.holds(SHARED, account.as_str()) {
        return Ok(true);
    }
    let own = tx
        .fetch::<(i64,)>(
            db::Write::new("SELECT own_quotas FROM accounts WHERE id = $1 FOR SHARE").bind(account.as_str()),
        )
        .await?;
    if own.is_empty() {
        return Ok(false);
    }
    tx.held(SHARED, account.as_str());
    no_own_quotas(tx, account, &own);
    Ok(true)
}

/// What [`lock_shared`] records as held.
const SHARED: &str = "accounts, shared";

/// Inserts an account; a name taken already is a unique violation.
pub async fn insert(tx: &mut db::Tx<'_>, a: &Account) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO accounts (id, name, admin, created_at) VALUES ($1, $2, $3, $4)")
        .bind(a.id.as_str())
        .bind(&a.name)
        .bind(a.admin as i64)
        .bind(db::time(&a.created_at))
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// The ID of the account named `admin`, admin or not.
pub async fn named_admin(pool: &db::Pool) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE name = 'admin'").fetch_optional(pool).await?;
    Ok(r.map(|r| r.0))
}

/// The ID of the admin account named `admin` (the bootstrap admin).
pub async fn admin_id(pool: &db::Pool) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE name = 'admin' AND admin = 1").fetch_optional(pool).await?;
    Ok(r.map(|r| r.0))
}

/// One page of all accounts, in creation order after `cursor`.
pub async fn list(pool: &db::Pool, cursor: &str, name: Option<&str>, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM accounts WHERE id > $1 AND ($2 = '' OR name = $2) ORDER BY id LIMIT $3"
    ))
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &db::Pool, id: &AccountId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM accounts WHERE id = $1")).bind(id.as_str()).fetch_optional(pool).await
}

/// [`get`] inside a transaction.
pub async fn get_in(tx: &mut db::Tx<'_>, id: &AccountId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM accounts WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await
}

/// What the account still holds, by kind, of the kinds it has any: an account
/// is deleted only once it holds nothing (a deleted image still used elsewhere does not
/// count: the leader collects it).
pub async fn holdings<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &AccountId,
) -> Result<Vec<(&'static str, i64)>, sqlx::Error> {
    let r: (i64, i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM instances WHERE account_id = $1 AND state <> 'terminated'),
                (SELECT COUNT(*) FROM volumes WHERE account_id = $1 AND state <> 'deleted'),
                (SELECT COUNT(*) FROM snapshots WHERE account_id = $1 AND state <> 'deleted'),
                (SELECT COUNT(*) FROM images WHERE account_id = $1 AND deleted_at IS NULL),
                (SELECT COUNT(*) FROM networks WHERE account_id = $1),
                (SELECT COUNT(*) FROM security_groups WHERE account_id = $1),
                (SELECT COUNT(*) FROM keypairs WHERE account_id = $1),
                (SELECT COUNT(*) FROM floating_ips WHERE account_id = $1),
                (SELECT COUNT(*) FROM server_groups WHERE account_id = $1)",
    )
    .bind(id.as_str())
    .fetch_one(db)
    .await?;
    let all = [
        ("instance", r.0),
        ("volume", r.1),
        ("snapshot", r.2),
        ("image", r.3),
        ("network", r.4),
        ("security group", r.5),
        ("key pair", r.6),
        ("floating IP", r.7),
        ("server group", r.8),
    ];
    Ok(all.into_iter().filter(|k| k.1 > 0).collect())
}

/// Deletes the account, its tokens and roles, and the users left with no role.
pub async fn delete(tx: &mut db::Tx<'_>, id: &AccountId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM api_tokens WHERE account_id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    // Its users that have a role nowhere else go with it (operators stay).
    sqlx::query(
        "DELETE FROM users WHERE admin = 0 AND id IN (SELECT user_id FROM memberships WHERE account_id = $1) \
         AND id NOT IN (SELECT user_id FROM memberships WHERE account_id <> $1)",
    )
    .bind(id.as_str())
    .execute(tx.conn().await?)
    .await?;
    sqlx::query("DELETE FROM memberships WHERE account_id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    // Images shared with it, and the chunks its bundle pushes could refer to.
    for sql in ["DELETE FROM image_members WHERE account_id = $1", "DELETE FROM bundle_chunks WHERE account_id = $1"] {
        sqlx::query(sql).bind(id.as_str()).execute(tx.conn().await?).await?;
    }
    sqlx::query("DELETE FROM accounts WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}
