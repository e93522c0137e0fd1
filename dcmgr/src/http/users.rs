//! `/api/v1/users` (admin) and `/api/v1/accounts/{id}/members` (an owner's, or an admin's).

use crate::app::user as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{AddMember, CreateUser, ErrorBody, Member, Page, SetPassword, User, Whoami};
use vdc_schema::id::{AccountId, UserId};

#[utoipa::path(post, path = "/api/v1/users", tag = "users", operation_id = "user_create",
    summary = "Create a user (admin); give it roles with the accounts' members calls", request_body = CreateUser,
    responses(
        (status = 201, description = "The user", body = User),
        (status = 400, description = "`invalid_name`, `password_too_short`, `password_too_long`, `invalid_password` \
            (only white space, or a control character), or a malformed body (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin manages users", body = ErrorBody),
        (status = 409, description = "`name_taken`: a user of this name exists", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    _caller: Caller,
    Body(req): Body<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/users", tag = "users", operation_id = "user_list",
    summary = "List users (admin)",
    params(vdc_schema::api::ListQuery, ("name" = Option<String>, Query, description = "Only the user of this name")),
    responses(
        (status = 200, description = "One page of users", body = Page<User>),
        (status = 403, description = "`forbidden`: only an admin manages users", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    _caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<User>>> {
    Ok(Json(app::list(&ctx, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", operation_id = "user_show",
    summary = "Show a user (admin)",
    params(("id" = UserId, Path, description = "A user ID (`u-…`); an unknown or malformed one answers 404")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 403, description = "`forbidden`: only an admin manages users", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, _caller: Caller, Path(id): Path<String>) -> ApiResult<Json<User>> {
    Ok(Json(app::fetch(&ctx, &path_id("user", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "users", operation_id = "user_delete",
    summary = "Delete a user, its roles and its tokens (admin)",
    params(("id" = UserId, Path, description = "A user ID (`u-…`); an unknown or malformed one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`forbidden`: only an admin manages users", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`cannot_delete_self`, or `last_owner`: the only owner of an account",
            body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("user", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/accounts/{id}/members", tag = "accounts", operation_id = "account_members",
    summary = "The users of an account and their roles (its own for a token of it, any for an admin)",
    params(("id" = AccountId, Path,
        description = "An account ID (`a-…`); another account's (for a non-admin), an unknown or a malformed one \
            answers 404")),
    responses(
        (status = 200, description = "Every member (one page)", body = Page<Member>),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn members(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Page<Member>>> {
    let items = app::members(&ctx, &caller, &path_id("account", &id)?).await?;
    Ok(Json(Page { items, next_cursor: None }))
}

#[utoipa::path(post, path = "/api/v1/accounts/{id}/members", tag = "accounts", operation_id = "account_member_add",
    summary = "Give a user a role in the account, or change its role (an owner, or an admin)", request_body = AddMember,
    params(("id" = AccountId, Path,
        description = "An account ID (`a-…`); another account's (for a non-admin), an unknown or a malformed one \
            answers 404")),
    responses(
        (status = 200, description = "The role changed", body = Member),
        (status = 201, description = "The user is a member now", body = Member),
        (status = 403, description = "`owner_only`, `read_only`", body = ErrorBody),
        (status = 404, description = "`not_found`: the account or the user", body = ErrorBody),
        (status = 409, description = "`last_owner`: the account would have no owner left", body = ErrorBody)))]
pub async fn add_member(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AddMember>,
) -> ApiResult<(StatusCode, Json<Member>)> {
    let (m, created) = app::add_member(&ctx, &caller, &path_id("account", &id)?, req).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(m)))
}

#[utoipa::path(delete, path = "/api/v1/accounts/{id}/members/{user_id}", tag = "accounts",
    operation_id = "account_member_remove",
    summary = "Take a user's role in the account away and revoke its tokens there (an owner, or an admin)",
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); another account's (for a non-admin), an unknown or a malformed one \
                answers 404"),
        ("user_id" = UserId, Path, description = "A member's user ID (`u-…`); a user not a member answers 404")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "`owner_only`, `read_only`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`last_owner`: the account would have no owner left", body = ErrorBody)))]
pub async fn remove_member(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    app::remove_member(&ctx, &caller, &path_id("account", &id)?, &path_id("user", &user)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/accounts/{id}/membership", tag = "accounts",
    operation_id = "account_leave",
    summary = "Leave the account: the caller's own role in it goes, and its tokens there (any role; not the \
        last owner)",
    params(
        ("id" = AccountId, Path,
            description = "The account the token acts in (`a-…`); another, an unknown or a malformed one answers 404")),
    responses(
        (status = 204, description = "Left; the token this call was made with no longer works"),
        (status = 404, description = "`not_found`: not a member of it", body = ErrorBody),
        (status = 409, description = "`last_owner`: the account would have no owner left", body = ErrorBody)))]
pub async fn leave(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::leave(&ctx, &caller, &path_id("account", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(put, path = "/api/v1/users/{id}/password", tag = "users", operation_id = "user_set_password",
    summary = "Set a user's console password, or remove it with null: the user itself (with a token not capped \
        to a role), or an admin for anyone", request_body = SetPassword,
    params(("id" = UserId, Path, description = "A user ID (`u-…`)")),
    responses(
        (status = 204, description = "Set (stored as an Argon2id hash). The user's console sessions are \
            revoked, but for the one this call was made with; API tokens keep working"),
        (status = 400, description = "`password_too_short` (under 10 characters), `password_too_long` (over 1024 \
            bytes), `invalid_password` (only white space, or a control character), `current_password_required` \
            (users changing their own password give the one they have), or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: another user's password (only an admin sets it), or a token \
            capped to a role; `wrong_password`: `current_password` is not the user's password", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user (an admin's call)", body = ErrorBody),
        (status = 409, description = "`password_changed`: another change came first", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many changes of this user's own password (limited \
            as its sign-ins are, apart from them)", body = ErrorBody)))]
pub async fn set_password(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<SetPassword>,
) -> ApiResult<StatusCode> {
    let id: UserId = match id.parse() {
        Ok(id) => id,
        Err(_) if !caller.admin => {
            return Err(crate::error::ApiError::Forbidden("only an admin sets another user's password".into()))
        }
        Err(_) => return Err(crate::error::ApiError::not_found("user", id.chars().take(64).collect::<String>())),
    };
    crate::app::session::set_password(&ctx, &caller, &id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/whoami", tag = "users", operation_id = "whoami",
    summary = "Who this token acts as: its user, the token, the account and role it acts with, and the user's \
        accounts",
    responses((status = 200, description = "The caller", body = Whoami)))]
pub async fn whoami(State(ctx): State<SharedCtx>, caller: Caller) -> ApiResult<Json<Whoami>> {
    Ok(Json(app::whoami(&ctx, &caller).await?))
}
