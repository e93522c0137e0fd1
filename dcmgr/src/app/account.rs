//! Accounts (tenants) and their API tokens. Only an admin creates, lists or deletes
//! accounts; a token is shown once and stored only as its SHA-256. Tokens resolve to a
//! [`Caller`] through [`authenticate`] (the `Caller` extractor of [`crate::http`]), with
//! a cache in `ctx.tokens` that this module keeps in step with the database.

use crate::app::{page, paging};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as store};
use crate::error::{ApiError, ApiResult};
use rand::Rng;
use sha2::{Digest, Sha256};
use vdc_schema::api::{Account, AccountCreated, AccountToken, CreateAccount, ListQuery, Page};
use vdc_schema::id::AccountId;

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
    let now = db::now();
    let account = Account { id: AccountId::generate(), name: name.to_owned(), admin, created_at: db::parse_time(&now) };
    let token = token.map(str::to_owned).unwrap_or_else(new_token);
    let mut tx = ctx.db.begin().await?;
    if let Err(e) = store::insert(&mut tx, &account).await {
        if db::is_unique_violation(&e) {
            return Err(ApiError::conflict("name_taken", format!("an account named {name:?} already exists")));
        }
        return Err(e.into());
    }
    store::insert_token(&mut *tx, &hash_token(&token), account.id.as_str(), &now).await?;
    tx.commit().await?;
    Ok(AccountCreated { account, token })
}

/// Makes sure an admin account named `admin` exists and accepts `token`.
pub async fn bootstrap_admin(ctx: &SharedCtx, token: &str) -> anyhow::Result<AccountId> {
    let id = match store::named_admin(&ctx.db).await? {
        Some(id) => {
            store::insert_token_if_absent(&ctx.db, &hash_token(token), &id, &db::now()).await?;
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
    let row = store::by_token(&ctx.db, &hash).await?;
    let (id, admin) = row.ok_or_else(|| ApiError::Unauthorized("the API token is not valid".into()))?;
    let caller = Caller { account_id: id.parse().map_err(ApiError::internal)?, admin: admin != 0 };
    ctx.tokens.write().unwrap().insert(hash, caller.clone());
    Ok(caller)
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateAccount) -> ApiResult<AccountCreated> {
    require_admin(caller)?;
    insert(ctx, &req.name, req.admin, None).await
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Account>> {
    require_admin(caller)?;
    let (limit, cursor) = paging(q)?;
    let rows = store::list(&ctx.db, &cursor, q.name.as_deref(), limit).await?;
    Ok(page(rows.into_iter().map(store::Row::into_api).collect(), limit, |a| a.id.to_string()))
}

/// The caller's own account, or any account for an admin; otherwise 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<Account> {
    if !caller.admin && caller.account_id != *id {
        return Err(ApiError::not_found("account", id));
    }
    store::get(&ctx.db, id).await?.map(store::Row::into_api).ok_or_else(|| ApiError::not_found("account", id))
}

/// Deletes an account that has no instances or volumes left, and forgets its tokens.
/// `id` is the path's ID as parsed, or why it is none: a tenant is refused (403) before
/// that is looked at, whatever the ID.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: ApiResult<AccountId>) -> ApiResult<()> {
    require_admin(caller)?;
    let acct = fetch(ctx, caller, &id?).await?;
    if acct.id == caller.account_id {
        return Err(ApiError::conflict("cannot_delete_self", "an admin cannot delete its own account"));
    }
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Network creates lock the account row too; the count is read under the lock.
        store::lock(&mut tx, &acct.id).await?;
        let live = store::live_resources(&mut *tx, &acct.id).await?;
        if live > 0 {
            return Err(ApiError::conflict(
                "account_in_use",
                format!("account {} still has {live} instances or volumes; terminate or delete them first", acct.id),
            ));
        }
        store::delete(&mut tx, &acct.id).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.tokens.write().unwrap().retain(|_, c| c.account_id != acct.id);
    Ok(())
}

/// A new token for an account the caller may see.
pub async fn create_token(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<AccountToken> {
    let acct = fetch(ctx, caller, id).await?;
    let token = new_token();
    store::insert_token(&ctx.db, &hash_token(&token), acct.id.as_str(), &db::now()).await?;
    Ok(AccountToken { account_id: acct.id, token })
}

/// The ID of the bootstrap admin account, if there is one.
pub async fn admin_id(ctx: &SharedCtx) -> ApiResult<Option<String>> {
    Ok(store::admin_id(&ctx.db).await?)
}
