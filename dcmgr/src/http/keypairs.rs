//! `/api/v1/keypairs`.

use crate::app::keypair as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateKeyPair, ErrorBody, KeyPair, KeyPairCreated, Page};

#[utoipa::path(post, path = "/api/v1/keypairs", tag = "keypairs", request_body = CreateKeyPair,
    responses((status = 201, body = KeyPairCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateKeyPair>,
) -> ApiResult<(StatusCode, Json<KeyPairCreated>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/keypairs", tag = "keypairs", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<KeyPair>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<KeyPair>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/keypairs/{id}", tag = "keypairs", params(("id" = String, Path)),
    responses((status = 200, body = KeyPair), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<KeyPair>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("key pair", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/keypairs/{id}", tag = "keypairs", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("key pair", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
