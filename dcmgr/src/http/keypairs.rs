//! `/api/v1/keypairs`.

use crate::app::keypair as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateKeyPair, ErrorBody, KeyPair, KeyPairCreated, Page};

#[utoipa::path(post, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "keypair_create",
    summary = "Import an ssh public key, or generate an ed25519 key pair", request_body = CreateKeyPair,
    responses(
        (status = 201, description = "The key pair (and, if generated, its private key, shown only here)",
            body = KeyPairCreated),
        (status = 400, description = "`invalid_name`, `invalid_public_key`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 409, description = "`name_taken`: the account has a key pair of this name", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateKeyPair>,
) -> ApiResult<(StatusCode, Json<KeyPairCreated>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/keypairs", tag = "keypairs", operation_id = "keypair_list",
    summary = "List the account's key pairs",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of key pairs", body = Page<KeyPair>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<KeyPair>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/keypairs/{id}", tag = "keypairs", operation_id = "keypair_show",
    summary = "Show a key pair",
    params(
        ("id" = vdc_schema::id::KeyPairId, Path,
            description = "A key pair ID (`ssh-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The key pair", body = KeyPair),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<KeyPair>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("key pair", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/keypairs/{id}", tag = "keypairs", operation_id = "keypair_delete",
    summary = "Delete a key pair",
    params(
        ("id" = vdc_schema::id::KeyPairId, Path,
            description = "A key pair ID (`ssh-…`); an unknown, malformed or foreign one answers 404")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("key pair", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
