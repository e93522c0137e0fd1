//! Users, their roles in accounts (memberships) and their API tokens as stored. A token
//! is kept only as its SHA-256, with its ID, name, account, user, role cap, expiry and
//! revocation time (migration 0016).

use crate::db;
use vdc_schema::api::{Member, Token, User};

#[derive(sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub name: String,
    pub admin: i64,
    pub created_at: String,
}

impl UserRow {
    pub fn into_api(self) -> Result<User, String> {
        Ok(User {
            id: self.id.parse().map_err(|e| format!("users.id: {e}"))?,
            name: self.name,
            admin: self.admin != 0,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const USER_COLS: &str = "id, name, admin, created_at";

pub async fn insert_user<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, u: &User) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO users (id, name, admin, created_at) VALUES ($1, $2, $3, $4)")
        .bind(u.id.as_str())
        .bind(&u.name)
        .bind(u.admin as i64)
        .bind(db::time(&u.created_at))
        .execute(db)
        .await?;
    Ok(())
}

pub async fn get_user<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE id = $1")).bind(id).fetch_optional(db).await
}

pub async fn user_named<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    name: &str,
) -> Result<Option<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {USER_COLS} FROM users WHERE name = $1")).bind(name).fetch_optional(db).await
}

pub async fn list_users(
    pool: &db::Pool,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<UserRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {USER_COLS} FROM users WHERE id > $1 AND ($2 = '' OR name = $2) ORDER BY id LIMIT $3"
    ))
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Deletes the user, its memberships and its tokens.
pub async fn delete_user(tx: &mut db::Tx<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM api_tokens WHERE user_id = $1").bind(id).execute(tx.conn().await?).await?;
    sqlx::query("DELETE FROM memberships WHERE user_id = $1").bind(id).execute(tx.conn().await?).await?;
    sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(tx.conn().await?).await?;
    Ok(())
}

/// Serializes decisions about one user (its deletion against a membership given to it).
pub async fn lock_user(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE users SET admin = admin WHERE id = $1")
        .bind(id)
        .execute(tx.conn().await?)
        .await?
        .rows_affected()
        == 1)
}

/// The accounts where this user is the only owner.
pub async fn sole_owner_of(tx: &mut db::Tx<'_>, user: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT m.account_id FROM memberships m WHERE m.user_id = $1 AND m.role = 'owner' \
         AND (SELECT COUNT(*) FROM memberships o WHERE o.account_id = m.account_id AND o.role = 'owner') = 1 \
         ORDER BY m.account_id",
    )
    .bind(user)
    .fetch_all(tx.conn().await?)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

// ------------------------------------------------------------------ memberships

#[derive(sqlx::FromRow)]
pub struct MemberRow {
    pub account_id: String,
    pub user_id: String,
    pub user_name: String,
    pub role: String,
    pub created_at: String,
}

impl MemberRow {
    pub fn into_api(self) -> Result<Member, String> {
        Ok(Member {
            account_id: self.account_id.parse().map_err(|e| format!("memberships.account_id: {e}"))?,
            user_id: self.user_id.parse().map_err(|e| format!("memberships.user_id: {e}"))?,
            user_name: self.user_name,
            role: self.role.parse().map_err(|e| format!("memberships.role: {e}"))?,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const MEMBER_SELECT: &str = "SELECT m.account_id, m.user_id, u.name AS user_name, m.role, m.created_at \
                             FROM memberships m JOIN users u ON u.id = m.user_id";

pub async fn members<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &str,
) -> Result<Vec<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!("{MEMBER_SELECT} WHERE m.account_id = $1 ORDER BY u.name"))
        .bind(account)
        .fetch_all(db)
        .await
}

pub async fn member<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &str,
    user: &str,
) -> Result<Option<MemberRow>, sqlx::Error> {
    sqlx::query_as(&format!("{MEMBER_SELECT} WHERE m.account_id = $1 AND m.user_id = $2"))
        .bind(account)
        .bind(user)
        .fetch_optional(db)
        .await
}

/// The accounts the user holds a role in: (account ID, account name, role), by name.
pub async fn accounts_of(pool: &db::Pool, user: &str) -> Result<Vec<(String, String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id, a.name, m.role FROM memberships m JOIN accounts a ON a.id = m.account_id \
         WHERE m.user_id = $1 ORDER BY a.name",
    )
    .bind(user)
    .fetch_all(pool)
    .await
}

/// The account the user was first made a member of (the oldest membership; by name
/// among those made at once).
pub async fn first_account_of(pool: &db::Pool, user: &str) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as(
        "SELECT a.id FROM memberships m JOIN accounts a ON a.id = m.account_id \
         WHERE m.user_id = $1 ORDER BY m.created_at, a.name LIMIT 1",
    )
    .bind(user)
    .fetch_optional(pool)
    .await?;
    Ok(r.map(|r| r.0))
}

/// The first owner of an account (the oldest), if any.
pub async fn first_owner<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &str,
) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as(
        "SELECT user_id FROM memberships WHERE account_id = $1 AND role = 'owner' ORDER BY created_at, user_id LIMIT 1",
    )
    .bind(account)
    .fetch_optional(db)
    .await?;
    Ok(r.map(|r| r.0))
}

pub async fn owners(tx: &mut db::Tx<'_>, account: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM memberships WHERE account_id = $1 AND role = 'owner'")
        .bind(account)
        .fetch_one(tx.conn().await?)
        .await?;
    Ok(n)
}

pub async fn insert_member(
    tx: &mut db::Tx<'_>,
    account: &str,
    user: &str,
    role: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO memberships (account_id, user_id, role, created_at) VALUES ($1, $2, $3, $4)")
        .bind(account)
        .bind(user)
        .bind(role)
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

pub async fn set_role(tx: &mut db::Tx<'_>, account: &str, user: &str, role: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE memberships SET role = $3 WHERE account_id = $1 AND user_id = $2")
        .bind(account)
        .bind(user)
        .bind(role)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// Removes the membership and revokes the user's tokens in the account.
pub async fn remove_member(tx: &mut db::Tx<'_>, account: &str, user: &str, now: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM memberships WHERE account_id = $1 AND user_id = $2")
        .bind(account)
        .bind(user)
        .execute(tx.conn().await?)
        .await?;
    sqlx::query("UPDATE api_tokens SET revoked_at = $3 WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL")
        .bind(account)
        .bind(user)
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

// ------------------------------------------------------------------ tokens

#[derive(sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub account_id: String,
    pub user_id: String,
    pub role: Option<String>,
    pub expires_at: Option<String>,
    pub created_at: String,
}

impl TokenRow {
    pub fn into_api(self) -> Result<Token, String> {
        Ok(Token {
            id: self.id.parse().map_err(|e| format!("api_tokens.id: {e}"))?,
            name: self.name,
            account_id: self.account_id.parse().map_err(|e| format!("api_tokens.account_id: {e}"))?,
            user_id: self.user_id.parse().map_err(|e| format!("api_tokens.user_id: {e}"))?,
            role: self.role.map(|r| r.parse()).transpose().map_err(|e| format!("api_tokens.role: {e}"))?,
            expires_at: self.expires_at.as_deref().map(db::parse_time),
            created_at: db::parse_time(&self.created_at),
        })
    }
}

const TOKEN_COLS: &str = "id, name, account_id, user_id, role, expires_at, created_at";

pub struct NewToken<'a> {
    pub id: &'a str,
    pub hash: &'a str,
    pub name: &'a str,
    pub account: &'a str,
    pub user: &'a str,
    pub role: Option<&'a str>,
    pub expires_at: Option<&'a str>,
    pub now: &'a str,
}

pub async fn insert_token<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    t: &NewToken<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_tokens (token_hash, id, name, account_id, user_id, role, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(t.hash)
    .bind(t.id)
    .bind(t.name)
    .bind(t.account)
    .bind(t.user)
    .bind(t.role)
    .bind(t.expires_at)
    .bind(t.now)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a token unless its hash is known already (the bootstrap admin token).
pub async fn insert_token_if_absent(pool: &db::Pool, t: &NewToken<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO api_tokens (token_hash, id, name, account_id, user_id, role, expires_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
    )
    .bind(t.hash)
    .bind(t.id)
    .bind(t.name)
    .bind(t.account)
    .bind(t.user)
    .bind(t.role)
    .bind(t.expires_at)
    .bind(t.now)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a token hash authenticates as: the token, its user and the user's role in the
/// token's account (none once the user left it).
#[derive(sqlx::FromRow)]
pub struct AuthRow {
    pub id: String,
    pub account_id: String,
    pub user_id: String,
    pub admin: i64,
    pub member_role: Option<String>,
    pub token_role: Option<String>,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

pub async fn by_hash(pool: &db::Pool, hash: &str) -> Result<Option<AuthRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.id, t.account_id, t.user_id, u.admin, m.role AS member_role, t.role AS token_role, \
                t.expires_at, t.revoked_at \
         FROM api_tokens t JOIN users u ON u.id = t.user_id \
         LEFT JOIN memberships m ON m.account_id = t.account_id AND m.user_id = t.user_id \
         WHERE t.token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(pool)
    .await
}

/// Live (not revoked) tokens of the account, of one user or of all, in creation order.
pub async fn list_tokens(
    pool: &db::Pool,
    account: &str,
    user: Option<&str>,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {TOKEN_COLS} FROM api_tokens WHERE account_id = $1 AND ($2 = '' OR user_id = $2) \
         AND revoked_at IS NULL AND id > $3 AND ($4 = '' OR name = $4) ORDER BY id LIMIT $5"
    ))
    .bind(account)
    .bind(user.unwrap_or_default())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// A token by ID with its hash and whether it is revoked.
pub async fn token<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<(TokenRow, String, bool)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Full {
        #[sqlx(flatten)]
        t: TokenRow,
        token_hash: String,
        revoked_at: Option<String>,
    }
    let r: Option<Full> =
        sqlx::query_as(&format!("SELECT {TOKEN_COLS}, token_hash, revoked_at FROM api_tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(r.map(|r| (r.t, r.token_hash, r.revoked_at.is_some())))
}

/// The ID of the user's live token of this name in the account.
pub async fn live_token_named(
    tx: &mut db::Tx<'_>,
    account: &str,
    user: &str,
    name: &str,
) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM api_tokens WHERE account_id = $1 AND user_id = $2 AND name = $3 AND revoked_at IS NULL",
    )
    .bind(account)
    .bind(user)
    .bind(name)
    .fetch_optional(tx.conn().await?)
    .await?;
    Ok(r.map(|r| r.0))
}

/// How many tokens the user holds in the account that still work (not revoked, not expired).
pub async fn working_tokens(tx: &mut db::Tx<'_>, account: &str, user: &str, now: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM api_tokens WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $3)",
    )
    .bind(account)
    .bind(user)
    .bind(now)
    .fetch_one(tx.conn().await?)
    .await?;
    Ok(n)
}

/// Revokes a live token; false when it was revoked already (by a concurrent request).
pub async fn revoke(pool: &db::Pool, id: &str, now: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()
        == 1)
}

// ------------------------------------------------------------------ passwords and sessions

/// The user of this name and its password's PHC string (None: no password set).
pub async fn credentials(pool: &db::Pool, name: &str) -> Result<Option<(UserRow, Option<String>)>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Cred {
        #[sqlx(flatten)]
        u: UserRow,
        password_hash: Option<String>,
    }
    let r: Option<Cred> = sqlx::query_as(&format!("SELECT {USER_COLS}, password_hash FROM users WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(r.map(|r| (r.u, r.password_hash)))
}

/// User `id`'s name and its password's PHC string (None: no password set).
pub async fn password_of(pool: &db::Pool, id: &str) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as("SELECT name, password_hash FROM users WHERE id = $1").bind(id).fetch_optional(pool).await
}

/// Sets (or clears) a user's password if it is still `was`: false when it changed since.
pub async fn replace_password<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
    was: &str,
    phc: Option<&str>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1 AND password_hash = $3")
        .bind(id)
        .bind(phc)
        .bind(was)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}

/// Sets (or, with None, clears) a user's password; false when the user is unknown.
pub async fn set_password<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
    phc: Option<&str>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(phc)
        .execute(db)
        .await?
        .rows_affected()
        == 1)
}

/// Revokes every live session of the user in every account but `except` (the session
/// of the call, when the user changes its own password). Returns how many.
pub async fn revoke_sessions(
    tx: &mut db::Tx<'_>,
    user: &str,
    except: Option<&str>,
    now: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = $3 WHERE user_id = $1 AND revoked_at IS NULL \
         AND name LIKE 'session-%' AND expires_at IS NOT NULL AND id <> $2",
    )
    .bind(user)
    .bind(except.unwrap_or(""))
    .bind(now)
    .execute(tx.conn().await?)
    .await?
    .rows_affected())
}

/// Revokes the user's oldest live sessions in the account beyond the newest `keep`.
pub async fn trim_sessions(
    tx: &mut db::Tx<'_>,
    account: &str,
    user: &str,
    keep: i64,
    now: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE api_tokens SET revoked_at = $4 WHERE account_id = $1 AND user_id = $2 AND revoked_at IS NULL \
         AND name LIKE 'session-%' AND id NOT IN (SELECT id FROM api_tokens WHERE account_id = $1 AND user_id = $2 \
         AND revoked_at IS NULL AND name LIKE 'session-%' ORDER BY id DESC LIMIT $3)",
    )
    .bind(account)
    .bind(user)
    .bind(keep)
    .bind(now)
    .execute(tx.conn().await?)
    .await?
    .rows_affected())
}

/// Who a token hash was (for the audit entry of a refused token): (token ID, user, account).
pub async fn token_of_hash(pool: &db::Pool, hash: &str) -> Result<Option<(String, String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT id, user_id, account_id FROM api_tokens WHERE token_hash = $1")
        .bind(hash)
        .fetch_optional(pool)
        .await
}

/// [`revoke`] inside a transaction.
pub async fn revoke_in(tx: &mut db::Tx<'_>, id: &str, now: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(now)
        .execute(tx.conn().await?)
        .await?
        .rows_affected()
        == 1)
}
