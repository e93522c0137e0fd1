//! Accounts (tenants) and their API tokens. Only an admin creates, lists or deletes
//! accounts; a token is shown once and stored only as its SHA-256.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use rand::Rng;
use sha2::{Digest, Sha256};
use vdc_schema::api::{Account, AccountCreated, AccountToken, CreateAccount, ErrorBody, Page};
use vdc_schema::id::AccountId;

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    admin: i64,
    created_at: String,
}

impl Row {
    fn into_api(self) -> Account {
        Account {
            id: self.id.parse().unwrap_or_else(|_| AccountId::generate()),
            name: self.name,
            admin: self.admin != 0,
            created_at: db::parse_time(&self.created_at),
        }
    }
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let mut rng = rand::thread_rng();
    let s: String = (0..40).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect();
    format!("vdc_{s}")
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("only an admin can manage accounts".into()))
    }
}

fn validate_account_name(name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad("invalid_name", format!("account name {name:?} is invalid: use 1 to 64 of [A-Za-z0-9._-]")))
    }
}

/// Creates an account and its first token; `token` may be fixed (bootstrap).
pub async fn insert(ctx: &SharedCtx, name: &str, admin: bool, token: Option<&str>) -> ApiResult<AccountCreated> {
    validate_account_name(name)?;
    let id = AccountId::generate();
    let now = db::now();
    let token = token.map(str::to_owned).unwrap_or_else(new_token);
    let mut tx = ctx.db.begin().await?;
    let r = sqlx::query("INSERT INTO accounts (id, name, admin, created_at) VALUES ($1, $2, $3, $4)")
        .bind(id.as_str())
        .bind(name)
        .bind(admin as i64)
        .bind(&now)
        .execute(&mut *tx)
        .await;
    if let Err(e) = r {
        if db::is_unique_violation(&e) {
            return Err(ApiError::conflict("name_taken", format!("an account named {name:?} already exists")));
        }
        return Err(e.into());
    }
    sqlx::query("INSERT INTO api_tokens (token_hash, account_id, created_at) VALUES ($1, $2, $3)")
        .bind(hash_token(&token))
        .bind(id.as_str())
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(AccountCreated {
        account: Account { id, name: name.to_owned(), admin, created_at: db::parse_time(&now) },
        token,
    })
}

/// Makes sure an admin account named `admin` exists and accepts `token`.
pub async fn bootstrap_admin(ctx: &SharedCtx, token: &str) -> anyhow::Result<AccountId> {
    let existing: Option<(String,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE name = 'admin'").fetch_optional(&ctx.db).await?;
    let id = match existing {
        Some((id,)) => {
            sqlx::query("INSERT INTO api_tokens (token_hash, account_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (token_hash) DO NOTHING")
                .bind(hash_token(token))
                .bind(&id)
                .bind(db::now())
                .execute(&ctx.db)
                .await?;
            id.parse()?
        }
        None => insert(ctx, "admin", true, Some(token)).await.map_err(|e| anyhow::anyhow!("{e}"))?.account.id,
    };
    Ok(id)
}

/// Resolves a bearer token, from the cache or the database.
pub async fn authenticate(ctx: &SharedCtx, token: &str) -> ApiResult<Caller> {
    let hash = hash_token(token);
    if let Some(c) = ctx.tokens.read().unwrap().get(&hash) {
        return Ok(c.clone());
    }
    let row: Option<(String, i64)> = sqlx::query_as(
        "SELECT a.id, a.admin FROM api_tokens t JOIN accounts a ON a.id = t.account_id WHERE t.token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&ctx.db)
    .await?;
    let (id, admin) = row.ok_or_else(|| ApiError::Unauthorized("the API token is not valid".into()))?;
    let caller = Caller { account_id: id.parse().map_err(ApiError::internal)?, admin: admin != 0 };
    ctx.tokens.write().unwrap().insert(hash, caller.clone());
    Ok(caller)
}

#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", operation_id = "account_create",
    summary = "Create an account and its first token (admin)", request_body = CreateAccount,
    responses(
        (status = 201, description = "The account and its first token (shown only here)", body = AccountCreated),
        (status = 400, description = "`invalid_name`, or a malformed body (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin manages accounts", body = ErrorBody),
        (status = 409, description = "`name_taken`: an account of this name exists", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateAccount>,
) -> ApiResult<(StatusCode, Json<AccountCreated>)> {
    require_admin(&caller)?;
    Ok((StatusCode::CREATED, Json(insert(&ctx, &req.name, req.admin, None).await?)))
}

#[utoipa::path(get, path = "/api/v1/accounts", tag = "accounts", operation_id = "account_list",
    summary = "List accounts (admin)",
    params(vdc_schema::api::ListQuery, ("name" = Option<String>, Query, description = "Only the account of this name")),
    responses(
        (status = 200, description = "One page of accounts", body = Page<Account>),
        (status = 403, description = "`forbidden`: only an admin manages accounts", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Account>>> {
    require_admin(&caller)?;
    let (limit, cursor) = paging(&q)?;
    let name = q.name.clone().unwrap_or_default();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, admin, created_at FROM accounts WHERE id > $1 AND ($2 = '' OR name = $2) ORDER BY id LIMIT $3",
    )
    .bind(cursor)
    .bind(name)
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    Ok(Json(page(rows.into_iter().map(Row::into_api).collect(), limit, |a| a.id.to_string())))
}

async fn fetch(ctx: &SharedCtx, caller: &Caller, raw: &str) -> ApiResult<Account> {
    let id: AccountId = path_id("account", raw)?;
    if !caller.admin && caller.account_id != id {
        return Err(ApiError::not_found("account", id));
    }
    let row: Option<Row> = sqlx::query_as("SELECT id, name, admin, created_at FROM accounts WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&ctx.db)
        .await?;
    row.map(Row::into_api).ok_or_else(|| ApiError::not_found("account", id))
}

#[utoipa::path(get, path = "/api/v1/accounts/{id}", tag = "accounts", operation_id = "account_show",
    summary = "Show an account (an admin's any, anyone's own)",
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); one that does not exist, is malformed or, for a non-admin, is not \
                the caller's own answers 404")),
    responses(
        (status = 200, description = "The account", body = Account),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Account>> {
    Ok(Json(fetch(&ctx, &caller, &id).await?))
}

#[utoipa::path(delete, path = "/api/v1/accounts/{id}", tag = "accounts", operation_id = "account_delete",
    summary = "Delete an account and its tokens (admin)",
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); one that does not exist, is malformed or, for a non-admin, is not \
                the caller's own answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: only an admin manages accounts", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`cannot_delete_self`, or `account_in_use`: it still has instances or volumes",
            body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    require_admin(&caller)?;
    let acct = fetch(&ctx, &caller, &id).await?;
    if acct.id == caller.account_id {
        return Err(ApiError::conflict("cannot_delete_self", "an admin cannot delete its own account"));
    }
    let (live,): (i64,) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM instances WHERE account_id = $1 AND state <> 'terminated')
              + (SELECT COUNT(*) FROM volumes WHERE account_id = $1 AND state <> 'deleted')",
    )
    .bind(acct.id.as_str())
    .fetch_one(&ctx.db)
    .await?;
    if live > 0 {
        return Err(ApiError::conflict(
            "account_in_use",
            format!("account {} still has {live} instances or volumes; terminate or delete them first", acct.id),
        ));
    }
    let mut tx = ctx.db.begin().await?;
    sqlx::query("DELETE FROM api_tokens WHERE account_id = $1").bind(acct.id.as_str()).execute(&mut *tx).await?;
    sqlx::query("DELETE FROM accounts WHERE id = $1").bind(acct.id.as_str()).execute(&mut *tx).await?;
    tx.commit().await?;
    ctx.tokens.write().unwrap().retain(|_, c| c.account_id != acct.id);
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/accounts/{id}/tokens", tag = "accounts", operation_id = "account_create_token",
    summary = "Make another API token for an account (an admin's any, anyone's own)",
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); one that does not exist, is malformed or, for a non-admin, is not \
                the caller's own answers 404")),
    responses(
        (status = 201, description = "The new token (shown only here)", body = AccountToken),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn create_token(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<AccountToken>)> {
    let acct = fetch(&ctx, &caller, &id).await?;
    let token = new_token();
    sqlx::query("INSERT INTO api_tokens (token_hash, account_id, created_at) VALUES ($1, $2, $3)")
        .bind(hash_token(&token))
        .bind(acct.id.as_str())
        .bind(db::now())
        .execute(&ctx.db)
        .await?;
    Ok((StatusCode::CREATED, Json(AccountToken { account_id: acct.id, token })))
}

/// The ID of the bootstrap admin account, if there is one.
pub async fn admin_id(ctx: &SharedCtx) -> ApiResult<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM accounts WHERE name = 'admin' AND admin = 1").fetch_optional(&ctx.db).await?;
    Ok(row.map(|r| r.0))
}
