//! Accounts (tenants) and their API tokens. Only an admin creates, lists or deletes
//! accounts; a token is shown once and stored only as its SHA-256. Tokens resolve to a
//! [`Caller`] through [`authenticate`] (the `Caller` extractor of [`crate::http`]), with
//! a cache in `ctx.tokens` that this module keeps in step with the database.

use crate::app::{authz, page, paging_of};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as store, user as users};
use crate::error::{ApiError, ApiResult};
use rand::Rng;
use sha2::{Digest, Sha256};
use vdc_schema::api::{Account, AccountCreated, AccountToken, CreateAccount, CreateToken, ListQuery, Page, User};
use vdc_schema::id::{AccountId, TokenId, UserId};
use vdc_schema::state::Role;

/// The header an operator names another account in (`vdc --account NAME`).
pub const ACT_IN_HEADER: &str = "x-vdc-account";

/// An operator acting in another account (`X-Vdc-Account: NAME|ID`), as an OpenStack
/// admin scopes to a project or Incus takes `--project`: only an admin user's token
/// without a role cap may, and it then acts there as an owner; the account's audit log
/// names the admin. Naming the token's own account changes nothing. Anyone else naming
/// another account, known or not, is refused alike (nothing is told about it).
pub async fn act_in(ctx: &SharedCtx, mut caller: Caller, account: &str) -> ApiResult<Caller> {
    let found = match account.parse::<AccountId>() {
        Ok(id) => store::get(&ctx.db, &id).await?,
        Err(_) => store::list(&ctx.db, "", Some(account), 1).await?.into_iter().next(),
    };
    let own = found.as_ref().is_some_and(|r| r.id == caller.account_id.as_str());
    if own {
        return Ok(caller);
    }
    if !caller.admin {
        return Err(ApiError::Forbidden(format!(
            "this token acts in its own account only; to act in {account:?}, use a token of that account \
             (only an admin's token names another account with X-Vdc-Account)"
        )));
    }
    let row = found.ok_or_else(|| ApiError::not_found("account", account))?;
    caller.account_id = row.id.parse().map_err(ApiError::internal)?;
    caller.role = Role::Owner;
    caller.acting_in = true;
    Ok(caller)
}

/// SHA-256 of the secret. A secret is 40 random alphanumerics (238 bits), so a fast hash
/// is enough: nothing can be guessed from it.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub(crate) fn new_token() -> String {
    let mut rng = rand::thread_rng();
    let s: String = (0..40).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect();
    format!("vdc_{s}")
}

fn require_admin(caller: &Caller) -> ApiResult<()> {
    authz::check(caller, authz::Op::Admin)
}

pub(crate) fn validate_account_name(name: &str) -> ApiResult<()> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(ApiError::bad("invalid_name", format!("name {name:?} is invalid: use 1 to 64 of [A-Za-z0-9._-]")));
    }
    // An account or user named like an ID could never be found by its name (the ID wins),
    // and would pass for the one whose ID it copies.
    let shaped = |prefix: &str| {
        name.strip_prefix(prefix).and_then(|r| r.strip_prefix('-')).is_some_and(vdc_schema::id::generated_suffix)
    };
    if shaped(AccountId::PREFIX) || shaped(UserId::PREFIX) {
        return Err(ApiError::bad(
            "invalid_name",
            format!("name {name:?} has the shape of an account or user ID: a name may not; choose another"),
        ));
    }
    Ok(())
}

/// Creates an account, its owner (a user of the same name, admin if the account is) and
/// that user's first token, in one transaction; `token` may be fixed (bootstrap).
pub async fn insert(ctx: &SharedCtx, name: &str, admin: bool, token: Option<&str>) -> ApiResult<AccountCreated> {
    validate_account_name(name)?;
    let now = db::now();
    let account = Account { id: AccountId::generate(), name: name.to_owned(), admin, created_at: db::parse_time(&now) };
    let user = User { id: UserId::generate(), name: name.to_owned(), admin, created_at: account.created_at };
    let token = token.map(str::to_owned).unwrap_or_else(new_token);
    let mut tx = db::begin(&ctx.db).await?;
    if let Err(e) = store::insert(&mut tx, &account).await {
        if db::is_unique_violation(&e) {
            return Err(ApiError::conflict("name_taken", format!("an account named {name:?} already exists")));
        }
        return Err(e.into());
    }
    if let Err(e) = users::insert_user(tx.conn().await?, &user).await {
        if db::is_unique_violation(&e) {
            return Err(ApiError::conflict(
                "name_taken",
                format!(
                    "a user named {name:?} already exists, and an account's first owner is a new user of its name: \
                     pick another account name, then `vdc account member add` that user"
                ),
            ));
        }
        return Err(e.into());
    }
    users::insert_member(&mut tx, account.id.as_str(), user.id.as_str(), Role::Owner.as_str(), &now).await?;
    let hash = hash_token(&token);
    let tid = TokenId::generate();
    users::insert_token(
        tx.conn().await?,
        &users::NewToken {
            id: tid.as_str(),
            hash: &hash,
            name: "initial",
            account: account.id.as_str(),
            user: user.id.as_str(),
            role: None,
            expires_at: None,
            now: &now,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(AccountCreated { account, token })
}

/// Makes sure an admin account named `admin` exists and accepts `token` (for its first
/// owner, under a name of its own so that a changed `admin_token` adds a token).
pub async fn bootstrap_admin(ctx: &SharedCtx, token: &str) -> anyhow::Result<AccountId> {
    // Two dcmgrs starting on a new database both find no admin: the one whose insert
    // loses the name takes the other's account.
    let mut taken = None;
    for _ in 0..2 {
        let Some(id) = store::named_admin(&ctx.db).await? else {
            match insert(ctx, "admin", true, Some(token)).await {
                Ok(made) => return Ok(made.account.id),
                Err(e) if e.code() == "name_taken" => {
                    taken = Some(e);
                    continue;
                }
                Err(e) => anyhow::bail!("{e}"),
            }
        };
        let owner =
            users::first_owner(&ctx.db, &id).await?.ok_or_else(|| anyhow::anyhow!("account {id} has no owner"))?;
        let hash = hash_token(token);
        let name = format!("bootstrap-{}", &hash[..8]);
        let tid = TokenId::generate();
        let t = users::NewToken {
            id: tid.as_str(),
            hash: &hash,
            name: &name,
            account: &id,
            user: &owner,
            role: None,
            expires_at: None,
            now: &db::now(),
        };
        users::insert_token_if_absent(&ctx.db, &t).await?;
        return Ok(id.parse()?);
    }
    anyhow::bail!("the admin account was neither found nor made: {}", taken.map(|e| e.to_string()).unwrap_or_default())
}

/// Whether a call made as `was` with `token` would still be let in now: a response that
/// goes on (an event stream) asks before it sends more, so a revoked or expired token, or
/// a user removed from the account, stops receiving it. The token cache answers (no
/// database read per event); an admin acting in another account (`X-Vdc-Account`) stays
/// admitted while it stays an admin.
pub async fn still_admits(ctx: &SharedCtx, token: &str, was: &Caller) -> bool {
    let Ok(c) = authenticate(ctx, token).await else { return false };
    c.user_id == was.user_id && c.admin == was.admin && (was.admin || c.account_id == was.account_id)
}

/// Resolves a bearer token, from the cache or the database. A token that expired or was
/// revoked is refused with a code of its own; one whose user left the account is revoked.
pub async fn authenticate(ctx: &SharedCtx, token: &str) -> ApiResult<Caller> {
    let hash = hash_token(token);
    let (cached, epoch) = {
        let cache = ctx.tokens.read().unwrap();
        (cache.get(&hash).cloned(), cache.epoch())
    };
    let caller = match cached {
        Some(c) => c,
        None => {
            let row = users::by_hash(&ctx.db, &hash).await?;
            let row = row.ok_or_else(|| ApiError::Unauthorized("the API token is not valid".into()))?;
            if row.revoked_at.is_some() {
                return Err(revoked());
            }
            let token_role =
                row.token_role.as_deref().map(str::parse::<Role>).transpose().map_err(ApiError::internal)?;
            let admin = row.admin != 0;
            let role = match (row.member_role.as_deref(), admin) {
                (Some(r), _) => r.parse::<Role>().map_err(ApiError::internal)?,
                // An operator keeps its token in an account it left.
                (None, true) => Role::Owner,
                (None, false) => return Err(revoked()),
            };
            let caller = Caller {
                account_id: row.account_id.parse().map_err(ApiError::internal)?,
                // A token with a role cap is never an operator's.
                admin: admin && token_role.is_none(),
                user_id: row.user_id.parse().map_err(ApiError::internal)?,
                token_id: Some(row.id.parse().map_err(ApiError::internal)?),
                role: authz::cap(role, token_role),
                token_role,
                expires_at: row.expires_at.as_deref().map(db::parse_time),
                acting_in: false,
            };
            ctx.tokens.write().unwrap().insert_since(epoch, hash, caller.clone());
            caller
        }
    };
    if caller.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        return Err(ApiError::TokenRefused {
            code: "token_expired",
            message: "the API token has expired: create another with `vdc token create`".into(),
        });
    }
    Ok(caller)
}

fn revoked() -> ApiError {
    ApiError::TokenRefused { code: "token_revoked", message: "the API token was revoked".into() }
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateAccount) -> ApiResult<AccountCreated> {
    require_admin(caller)?;
    insert(ctx, &req.name, req.admin, None).await
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Account>> {
    require_admin(caller)?;
    let (limit, cursor) = paging_of::<vdc_schema::id::AccountId>(q)?;
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

/// Deletes an account that holds nothing any more (see [`store::holdings`]: before, its
/// images, networks and floating IPs were left behind for good), and forgets its tokens.
/// `id` is the path's ID as parsed, or why it is none: a tenant is refused (403) before
/// that is looked at, whatever the ID.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: ApiResult<AccountId>) -> ApiResult<()> {
    require_admin(caller)?;
    let acct = fetch(ctx, caller, &id?).await?;
    if acct.id == caller.account_id {
        return Err(ApiError::conflict("cannot_delete_self", "an admin cannot delete its own account"));
    }
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Network creates lock the account row too; the count is read under the lock.
        store::lock(&mut tx, &acct.id).await?;
        let held = store::holdings(tx.conn().await?, &acct.id).await?;
        if !held.is_empty() {
            let what: Vec<String> =
                held.iter().map(|(kind, n)| format!("{n} {kind}{}", if *n == 1 { "" } else { "s" })).collect();
            return Err(ApiError::conflict(
                "account_in_use",
                format!(
                    "account {} still holds {}: terminate or delete them first (`vdc --account {} …`), \
                     so that nothing of it is left behind",
                    acct.id,
                    what.join(", "),
                    acct.name
                ),
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

/// Another token for an account (the older `POST /accounts/{id}/tokens`): the caller's
/// own, or for an admin the account's first owner's; named `token-…`.
pub async fn create_token(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<AccountToken> {
    let acct = fetch(ctx, caller, id).await?;
    let user = if acct.id == caller.account_id {
        caller.user_id.clone()
    } else {
        let owner = users::first_owner(&ctx.db, acct.id.as_str()).await?;
        owner
            .ok_or_else(|| ApiError::conflict("no_owner", format!("account {} has no owner", acct.id)))?
            .parse()
            .map_err(ApiError::internal)?
    };
    let name = format!("token-{}", &hash_token(&new_token())[..8]);
    let req = CreateToken { name, account_id: Some(acct.id.clone()), expires_at: None, role: None, user_id: None };
    let created = crate::app::token::insert(ctx, caller, &user, req).await?;
    Ok(AccountToken { account_id: acct.id, token: created.secret })
}

/// The ID of the bootstrap admin account, if there is one.
pub async fn admin_id(ctx: &SharedCtx) -> ApiResult<Option<String>> {
    Ok(store::admin_id(&ctx.db).await?)
}
