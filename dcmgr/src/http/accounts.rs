//! `/api/v1/accounts`.

use crate::app::account as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{
    Account, AccountCreated, AccountQuotas, AccountToken, CreateAccount, ErrorBody, Page, SetQuotas,
};
use vdc_schema::id::AccountId;

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
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
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
    Ok(Json(app::list(&ctx, &caller, &q).await?))
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
    Ok(Json(app::fetch(&ctx, &caller, &path_id("account", &id)?).await?))
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
        (status = 409, description = "`cannot_delete_self`, or `account_in_use`: it still holds something (instances, volumes, snapshots, images, networks, security groups, key pairs, floating IPs or server groups; the message counts them)",
            body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, path_id("account", &id)).await?;
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
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 422, description = "`too_many_tokens`: the account's user holds `[auth] max_tokens_per_user` \
            working tokens there; revoke some first", body = ErrorBody)))]
pub async fn create_token(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<AccountToken>)> {
    Ok((StatusCode::CREATED, Json(app::create_token(&ctx, &caller, &path_id("account", &id)?).await?)))
}

#[utoipa::path(get, path = "/api/v1/accounts/{id}/quotas", tag = "accounts", operation_id = "account_quotas",
    summary = "Show an account's quotas with its usage (an admin's any, anyone's own)",
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); one that does not exist, is malformed or, for a non-admin, is not \
                the caller's own answers 404")),
    responses(
        (status = 200, description = "Every quota: its limit (null: unlimited) and what is in use", body = AccountQuotas),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn quotas(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<AccountQuotas>> {
    Ok(Json(crate::app::quota::show(&ctx, &caller, &path_id("account", &id)?).await?))
}

#[utoipa::path(put, path = "/api/v1/accounts/{id}/quotas", tag = "accounts", operation_id = "account_set_quotas",
    summary = "Set quotas of an account (admin); keys not named keep their limit, null returns one to the default",
    request_body = SetQuotas,
    params(
        ("id" = AccountId, Path,
            description = "An account ID (`a-…`); one that does not exist or is malformed answers 404")),
    responses(
        (status = 200, description = "The account's quotas and usage after the change", body = AccountQuotas),
        (status = 400, description = "A malformed body (`invalid_body`)", body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin sets quotas", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 422, description = "`invalid_quota`: an unknown key or a negative value, named; nothing changed",
            body = ErrorBody)))]
pub async fn set_quotas(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<SetQuotas>,
) -> ApiResult<Json<AccountQuotas>> {
    Ok(Json(crate::app::quota::set(&ctx, &caller, path_id("account", &id), req).await?))
}

#[utoipa::path(get, path = "/api/v1/quotas", tag = "accounts", operation_id = "quota_show_own",
    summary = "Show the caller's own account's quotas with its usage",
    responses((status = 200, description = "Every quota: its limit (null: unlimited) and what is in use",
        body = AccountQuotas)))]
pub async fn own_quotas(State(ctx): State<SharedCtx>, caller: Caller) -> ApiResult<Json<AccountQuotas>> {
    Ok(Json(crate::app::quota::show(&ctx, &caller, &caller.account_id).await?))
}
