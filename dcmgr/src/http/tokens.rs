//! `/api/v1/tokens`: the caller's API tokens (an owner's: every token of its account).

use crate::app::token as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateToken, ErrorBody, Page, Token, TokenCreated};

#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", operation_id = "token_create",
    summary = "Create an API token of the caller's user, in its account or another it is a member of",
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token and its secret (shown only here)", body = TokenCreated),
        (status = 400, description = "`invalid_name`, `invalid_expiry`, `invalid_role` (a role above what the \
            token could be), or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: a token for another user (`user_id`) is a cloud admin's to make; \
            `read_only`: a reader's token", body = ErrorBody),
        (status = 404, description = "`not_found`: an account the user is not a member of", body = ErrorBody),
        (status = 409, description = "`name_taken`: the user has a live token of this name in the account",
            body = ErrorBody),
        (status = 422, description = "`too_many_tokens`: the user holds `[auth] max_tokens_per_user` working \
            tokens in the account", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    origin: crate::http::sessions::Origin,
    Body(req): Body<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let made = app::create(&ctx, &caller, req).await?;
    // A credential made in another of the user's accounts is that account's to audit:
    // its owners did not see it (red team, 2026-12-07).
    origin.witness().saw(None, None, Some(&made.token.account_id));
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", operation_id = "token_list",
    summary = "List the live tokens of the caller's account: its own, or every user's for an owner (never a secret)",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only tokens with this exact name")),
    responses((status = 200, description = "One page of tokens", body = Page<Token>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Token>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "token_show",
    summary = "Show a live token (never its secret): one of the caller's, or of its account for an owner",
    params(
        ("id" = vdc_schema::id::TokenId, Path,
            description = "A token ID (`tok-…`); an unknown, malformed, revoked or not visible one answers 404")),
    responses(
        (status = 200, description = "The token", body = Token),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Token>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("token", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", operation_id = "token_revoke",
    summary = "Revoke a token: it answers 401 `token_revoked` from now on",
    params(
        ("id" = vdc_schema::id::TokenId, Path,
            description = "A token ID (`tok-…`); an unknown, malformed or another account's one answers 404")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "`owner_only`: another user's token, and the caller is not an owner; \
            `read_only`", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`token_revoked`: revoked already", body = ErrorBody)))]
pub async fn revoke(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::revoke(&ctx, &caller, &path_id("token", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
