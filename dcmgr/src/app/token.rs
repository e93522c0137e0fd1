//! API tokens: named, of one user in one account, optionally expiring and capped to a
//! role, listed without their secret (shown once, at creation), revoked one by one.
//! Revoking drops the token from the cache of [`crate::app::account::authenticate`].

use crate::app::{account, authz, page, paging_of};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as accounts, user as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{CreateToken, ListQuery, Page, Token, TokenCreated};
use vdc_schema::id::{TokenId, UserId};
use vdc_schema::state::Role;

/// `POST /tokens`: a token of the caller's user, in the caller's account or another
/// account the user is a member of; or, for a cloud admin, of a member of an account.
pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateToken) -> ApiResult<TokenCreated> {
    let user = match &req.user_id {
        Some(u) if *u != caller.user_id => {
            // Another user's credential is an operator's to make. An owner who could
            // would add any user to its account (members are added by name) and act as
            // them: as a cloud admin, or in the user's other accounts after setting the
            // user's password.
            authz::check(caller, authz::Op::Admin)?;
            u.clone()
        }
        _ => caller.user_id.clone(),
    };
    insert(ctx, caller, &user, req).await
}

/// Creates a token of `user` (the caller's, or an account's owner for an admin). Its role
/// is at most the user's role in the account, and at most the caller's token's cap: a
/// token never mints a stronger one.
pub(crate) async fn insert(
    ctx: &SharedCtx,
    caller: &Caller,
    user: &UserId,
    req: CreateToken,
) -> ApiResult<TokenCreated> {
    account::validate_account_name(&req.name).map_err(|_| {
        ApiError::bad("invalid_name", format!("token name {:?} is invalid: use 1 to 64 of [A-Za-z0-9._-]", req.name))
    })?;
    if req.name.starts_with(crate::app::session::SESSION_PREFIX) {
        return Err(ApiError::bad(
            "invalid_name",
            format!(
                "token names starting with {:?} are the console's sessions: pick another",
                crate::app::session::SESSION_PREFIX
            ),
        ));
    }
    let now = chrono::Utc::now();
    if req.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::bad("invalid_expiry", "expires_at must be in the future"));
    }
    // Beyond year 9999 the stored time does not read back (it read as 1970: a token
    // expired when made); a century is the longest asked for.
    if req.expires_at.is_some_and(|t| t > now + chrono::Duration::days(36_525)) {
        return Err(ApiError::bad("invalid_expiry", "expires_at must be within 100 years; leave it out for no expiry"));
    }
    // A token made to expire makes none that outlives it (a 60 s token minted permanent
    // ones, red team 2026-12-07). A console session may: it was signed in with the password.
    if let (Some(end), Some(id)) = (caller.expires_at, &caller.token_id) {
        let session = store::token(&ctx.db, id.as_str())
            .await?
            .is_some_and(|(row, _, _)| row.name.starts_with(crate::app::session::SESSION_PREFIX));
        if !session && req.expires_at.is_none_or(|t| t > end) {
            return Err(ApiError::bad(
                "invalid_expiry",
                format!(
                    "this token expires at {}: the tokens it makes expire no later (set expires_at), or make them \
                     with a session or a token that does not expire",
                    db::time(&end)
                ),
            ));
        }
    }
    let acct = req.account_id.clone().unwrap_or_else(|| caller.account_id.clone());
    let limit = ctx.config.auth.max_tokens_per_user;
    let secret = account::new_token();
    let hash = account::hash_token(&secret);
    let token = db::retry(|| async {
        let now_s = db::time(&now);
        let mut tx = db::begin(&ctx.db).await?;
        // Token creation in one account runs one at a time: the name and the cap are
        // decided on what the previous one committed.
        accounts::lock(&mut tx, &acct).await?;
        let member = store::member(tx.conn().await?, acct.as_str(), user.as_str()).await?;
        let role = match member {
            Some(m) => m.role.parse::<Role>().map_err(ApiError::internal)?,
            None if caller.admin && acct == caller.account_id && *user == caller.user_id => Role::Owner,
            // Another user who is not a member: unknown here.
            None if *user != caller.user_id => return Err(ApiError::not_found("member", user)),
            // Not a member: the account is unknown to this user.
            None => return Err(ApiError::not_found("account", &acct)),
        };
        // Made in another of the user's accounts: its role there decides, as a call in that
        // account would (a reader there made tokens there from another account).
        if acct != caller.account_id && !caller.admin && !authz::allowed(false, role, authz::Op::Write) {
            return Err(ApiError::Denied {
                code: "read_only",
                message: format!("your role in account {acct} is {role}: it can only read, and makes no tokens there"),
            });
        }
        // The caller's own cap bounds what it mints, for itself or for others.
        let cap = [req.role, caller.token_role].into_iter().flatten().fold(role, |r, c| authz::cap(r, Some(c)));
        if let Some(asked) = req.role.filter(|r| *r != cap) {
            return Err(ApiError::bad(
                "invalid_role",
                format!("a token with role {asked} cannot be made here: the most it can be is {cap}"),
            ));
        }
        let stored_role = (cap != role || req.role.is_some()).then_some(cap);
        if let Some(id) = store::live_token_named(&mut tx, acct.as_str(), user.as_str(), &req.name).await? {
            return Err(ApiError::conflict(
                "name_taken",
                format!("you have a token named {:?} already ({id}); revoke it or pick another name", req.name),
            ));
        }
        let working = store::working_tokens(&mut tx, acct.as_str(), user.as_str(), &now_s).await?;
        if working >= i64::from(limit) {
            return Err(ApiError::Unprocessable {
                code: "too_many_tokens",
                message: format!(
                    "you hold {working} working tokens in account {acct}, the most allowed ([auth] max_tokens_per_user = \
                     {limit}); revoke some first"
                ),
            });
        }
        let id = TokenId::generate();
        let expires = req.expires_at.map(|t| db::time(&t));
        let row = store::NewToken {
            id: id.as_str(),
            hash: &hash,
            name: &req.name,
            account: acct.as_str(),
            user: user.as_str(),
            role: stored_role.map(|r| r.as_str()),
            expires_at: expires.as_deref(),
            now: &now_s,
        };
        if let Err(e) = store::insert_token(tx.conn().await?, &row).await {
            // A concurrent create of the same name committed first: retried, it answers name_taken.
            return Err(if db::is_unique_violation(&e) { ApiError::Busy(e.to_string()) } else { e.into() });
        }
        tx.commit().await?;
        Ok(Token {
            id,
            name: req.name.clone(),
            account_id: acct.clone(),
            user_id: user.clone(),
            role: stored_role,
            expires_at: req.expires_at.map(|t| db::parse_time(&db::time(&t))),
            created_at: db::parse_time(&now_s),
        })
    })
    .await?;
    Ok(TokenCreated { token, secret })
}

/// The live tokens of the caller's account: the caller's own, or every user's for an
/// owner (or an admin).
pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Token>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::TokenId>(q)?;
    let all = authz::allowed(caller.admin, caller.role, authz::Op::ManageOthersTokens);
    let user = (!all).then_some(caller.user_id.as_str());
    let rows = store::list_tokens(&ctx.db, caller.account_id.as_str(), user, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(|r| r.into_api().map_err(ApiError::Internal)).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |t| t.id.to_string()))
}

/// One live token the caller may list (see [`list`]); otherwise 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &TokenId) -> ApiResult<Token> {
    let found = store::token(&ctx.db, id.as_str()).await?;
    let visible = found.filter(|(row, _, revoked)| {
        !revoked
            && (caller.admin || row.account_id == caller.account_id.as_str())
            && (row.user_id == caller.user_id.as_str()
                || authz::allowed(caller.admin, caller.role, authz::Op::ManageOthersTokens))
    });
    let (row, _, _) = visible.ok_or_else(|| ApiError::not_found("token", id))?;
    row.into_api().map_err(ApiError::Internal)
}

/// Revokes one token: the caller's own, or any of its account for an owner (any at all
/// for an admin). Of concurrent revokes exactly one wins; the others answer 409
/// `token_revoked`.
pub async fn revoke(ctx: &SharedCtx, caller: &Caller, id: &TokenId) -> ApiResult<()> {
    let (row, hash, revoked) =
        store::token(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("token", id))?;
    if !caller.admin && row.account_id != caller.account_id.as_str() {
        return Err(ApiError::not_found("token", id));
    }
    if row.user_id != caller.user_id.as_str() {
        authz::check(caller, authz::Op::ManageOthersTokens)?;
    }
    // The conditional UPDATE is the decision: one request turns it from live to revoked.
    if revoked || !store::revoke(&ctx.db, id.as_str(), &db::now()).await? {
        return Err(ApiError::conflict("token_revoked", format!("token {id} is revoked already")));
    }
    ctx.tokens.write().unwrap().remove(&hash);
    Ok(())
}
