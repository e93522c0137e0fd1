//! `/api/v1/security_groups`.

use crate::app::secgroup as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateSecurityGroup, ErrorBody, Page, RuleSpec, SecurityGroup};
use vdc_schema::id::{RuleId, SecurityGroupId};

#[utoipa::path(post, path = "/api/v1/security_groups", tag = "security_groups", request_body = CreateSecurityGroup,
    responses((status = 201, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSecurityGroup>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/security_groups", tag = "security_groups", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<SecurityGroup>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<SecurityGroup>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/security_groups/{id}", tag = "security_groups", params(("id" = String, Path)),
    responses((status = 200, body = SecurityGroup), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("security group", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/security_groups/{id}", tag = "security_groups", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("security group", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/security_groups/{id}/rules", tag = "security_groups", params(("id" = String, Path)),
    request_body = RuleSpec,
    responses((status = 201, body = SecurityGroup), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn add_rule(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(rule): Body<RuleSpec>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    Ok((StatusCode::CREATED, Json(app::add_rule(&ctx, &caller, &id, rule).await?)))
}

#[utoipa::path(delete, path = "/api/v1/security_groups/{id}/rules/{rule_id}", tag = "security_groups",
    params(("id" = String, Path), ("rule_id" = String, Path)),
    responses((status = 200, body = SecurityGroup), (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<SecurityGroup>> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    let rule_id: RuleId = path_id("security group rule", &rule_id)?;
    Ok(Json(app::delete_rule(&ctx, &caller, &id, &rule_id).await?))
}
