//! Users (admin only) and their roles in accounts (an account's owners, or an admin).
//! Users are apart from accounts, as in Wakame-VDC: one user holds a role in many
//! accounts. An account always keeps an owner.

use crate::app::{account, page, paging_of};

use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, account as accounts, user as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{AddMember, CreateUser, ListQuery, Member, Page, User, Whoami, WhoamiAccount};
use vdc_schema::id::{AccountId, UserId};
use vdc_schema::state::Role;

// Every operation here is admin only: the `Caller` extractor refuses the others
// (`authz::route_op` of `/users…`), before these are called.

pub async fn create(ctx: &SharedCtx, req: CreateUser) -> ApiResult<User> {
    account::validate_account_name(&req.name)?;
    let phc = match &req.password {
        Some(p) => {
            crate::app::session::check_password(p)?;
            Some(crate::app::session::hash_password(p.clone()).await?)
        }
        None => None,
    };
    let user = User {
        id: UserId::generate(),
        name: req.name.clone(),
        admin: req.admin,
        created_at: db::parse_time(&db::now()),
    };
    let mut tx = db::begin(&ctx.db).await?;
    if let Err(e) = store::insert_user(tx.conn().await?, &user).await {
        if db::is_unique_violation(&e) {
            return Err(ApiError::conflict("name_taken", format!("a user named {:?} already exists", req.name)));
        }
        return Err(e.into());
    }
    if phc.is_some() {
        store::set_password(tx.conn().await?, user.id.as_str(), phc.as_deref()).await?;
    }
    tx.commit().await?;
    Ok(user)
}

pub async fn list(ctx: &SharedCtx, q: &ListQuery) -> ApiResult<Page<User>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::UserId>(q)?;
    let rows = store::list_users(&ctx.db, &cursor, q.name.as_deref(), limit).await?;
    let items = rows.into_iter().map(|r| r.into_api().map_err(ApiError::Internal)).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |u| u.id.to_string()))
}

pub async fn fetch(ctx: &SharedCtx, id: &UserId) -> ApiResult<User> {
    let row = store::get_user(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("user", id))?;
    row.into_api().map_err(ApiError::Internal)
}

/// Deletes a user, its roles and its tokens; refused for the caller itself and for the
/// only owner of an account.
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &UserId) -> ApiResult<()> {
    if *id == caller.user_id {
        return Err(ApiError::conflict("cannot_delete_self", "a user cannot delete itself"));
    }
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        if !store::lock_user(&mut tx, id.as_str()).await? {
            return Err(ApiError::not_found("user", id));
        }
        let sole = store::sole_owner_of(&mut tx, id.as_str()).await?;
        if !sole.is_empty() {
            return Err(ApiError::conflict(
                "last_owner",
                format!("user {id} is the only owner of {}: give the account another owner first", sole.join(", ")),
            ));
        }
        store::delete_user(&mut tx, id.as_str()).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.tokens.write().unwrap().retain(|_, c| c.user_id != *id);
    Ok(())
}

/// The account of a members call: the caller's own, any for an admin; otherwise unknown.
fn own_account(caller: &Caller, id: &AccountId) -> ApiResult<()> {
    if caller.admin || caller.account_id == *id {
        Ok(())
    } else {
        Err(ApiError::not_found("account", id))
    }
}

pub async fn members(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<Vec<Member>> {
    own_account(caller, id)?;
    if accounts::get(&ctx.db, id).await?.is_none() {
        return Err(ApiError::not_found("account", id));
    }
    let rows = store::members(&ctx.db, id.as_str()).await?;
    rows.into_iter().map(|r| r.into_api().map_err(ApiError::Internal)).collect()
}

/// Gives a user a role in the account, or changes it. True when the user was not a
/// member before. Taking the owner role from the last owner is refused.
pub async fn add_member(ctx: &SharedCtx, caller: &Caller, id: &AccountId, req: AddMember) -> ApiResult<(Member, bool)> {
    own_account(caller, id)?;
    let now = db::now();
    let (member, created) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // One decision about an account's members at a time (the last owner stays).
        accounts::lock(&mut tx, id).await?;
        if accounts::get_in(&mut tx, id).await?.is_none() {
            return Err(ApiError::not_found("account", id));
        }
        let user = store::user_named(tx.conn().await?, &req.user)
            .await?
            .ok_or_else(|| ApiError::not_found("user", req.user.chars().take(64).collect::<String>()))?;
        let before = store::member(tx.conn().await?, id.as_str(), &user.id).await?;
        // An operator's sessions carry the cloud's power: a tenant who added one saw and
        // revoked them, read its sign-ins, and became its console's account (red team,
        // 2026-12-07). An admin adds operators.
        if before.is_none() && user.admin != 0 && !caller.admin {
            return Err(ApiError::Forbidden(format!(
                "user {} is a cloud operator (an admin user): only an admin adds it to an account",
                user.name
            )));
        }
        match &before {
            None => store::insert_member(&mut tx, id.as_str(), &user.id, req.role.as_str(), &now).await?,
            Some(m) => {
                if m.role == Role::Owner.as_str()
                    && req.role != Role::Owner
                    && store::owners(&mut tx, id.as_str()).await? == 1
                {
                    return Err(last_owner(id, &user.name));
                }
                store::set_role(&mut tx, id.as_str(), &user.id, req.role.as_str()).await?;
            }
        }
        let m = store::member(tx.conn().await?, id.as_str(), &user.id)
            .await?
            .ok_or_else(|| ApiError::internal("member vanished"))?;
        tx.commit().await?;
        Ok((m.into_api().map_err(ApiError::Internal)?, before.is_none()))
    })
    .await?;
    // Cached callers of this user in this account carry the old role.
    ctx.tokens.write().unwrap().retain(|_, c| !(c.user_id == member.user_id && c.account_id == *id));
    Ok((member, created))
}

/// Takes a user's role in the account away and revokes its tokens there.
pub async fn remove_member(ctx: &SharedCtx, caller: &Caller, id: &AccountId, user: &UserId) -> ApiResult<()> {
    own_account(caller, id)?;
    take_role(ctx, id, user, || ApiError::not_found("member", user)).await
}

/// The caller's own role in the account goes (any role may leave; the last owner may
/// not), and its tokens there with it: a user an owner added without asking is not
/// held there.
pub async fn leave(ctx: &SharedCtx, caller: &Caller, id: &AccountId) -> ApiResult<()> {
    own_account(caller, id)?;
    take_role(ctx, id, &caller.user_id, || ApiError::not_found("membership in account", id)).await
}

/// Takes `user`'s role in account `id` away, and its tokens there; never the last owner's.
async fn take_role(ctx: &SharedCtx, id: &AccountId, user: &UserId, missing: impl Fn() -> ApiError) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        accounts::lock(&mut tx, id).await?;
        let m = store::member(tx.conn().await?, id.as_str(), user.as_str()).await?.ok_or_else(&missing)?;
        if m.role == Role::Owner.as_str() && store::owners(&mut tx, id.as_str()).await? == 1 {
            return Err(last_owner(id, &m.user_name));
        }
        store::remove_member(&mut tx, id.as_str(), user.as_str(), &db::now()).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.tokens.write().unwrap().retain(|_, c| !(c.user_id == *user && c.account_id == *id));
    Ok(())
}

fn last_owner(id: &AccountId, name: &str) -> ApiError {
    ApiError::conflict(
        "last_owner",
        format!("{name} is the only owner of account {id}: make another member owner first"),
    )
}

/// Who the caller's token acts as: the user, the token, the account and role it acts in,
/// and every account the user holds a role in. Read as committed now (a token revoked
/// meanwhile was refused before this runs).
pub async fn whoami(ctx: &SharedCtx, caller: &Caller) -> ApiResult<Whoami> {
    let gone = || ApiError::Unauthorized("the API token is not valid".into());
    let user = store::get_user(&ctx.db, caller.user_id.as_str()).await?.ok_or_else(gone)?;
    let token_id = caller.token_id.as_ref().ok_or_else(gone)?;
    let (token, _, _) = store::token(&ctx.db, token_id.as_str()).await?.ok_or_else(gone)?;
    let account = accounts::get(&ctx.db, &caller.account_id).await?.ok_or_else(gone)?;
    let mut memberships = Vec::new();
    for (id, name, role) in store::accounts_of(&ctx.db, caller.user_id.as_str()).await? {
        memberships.push(WhoamiAccount {
            account_id: id.parse().map_err(ApiError::internal)?,
            account_name: name,
            role: role.parse().map_err(ApiError::internal)?,
        });
    }
    Ok(Whoami {
        user: user.into_api().map_err(ApiError::Internal)?,
        token: token.into_api().map_err(ApiError::Internal)?,
        account: account.into_api(),
        role: caller.role,
        admin: caller.admin,
        accounts: memberships,
    })
}
