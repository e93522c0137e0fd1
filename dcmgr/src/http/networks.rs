//! `/api/v1/networks`.

use crate::app::network as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateNetwork, ErrorBody, Network, Page};

#[utoipa::path(post, path = "/api/v1/networks", tag = "networks", request_body = CreateNetwork,
    responses((status = 201, body = Network), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateNetwork>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/networks", tag = "networks", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Network>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Network>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/networks/{id}", tag = "networks", params(("id" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Network>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("network", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/networks/{id}", tag = "networks", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("network", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
