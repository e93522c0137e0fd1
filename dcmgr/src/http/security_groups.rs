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

#[utoipa::path(post, path = "/api/v1/security_groups", tag = "security_groups", operation_id = "security_group_create",
    summary = "Create a security group with its rules", request_body = CreateSecurityGroup,
    responses(
        (status = 201, description = "The security group", body = SecurityGroup),
        (status = 400,
            description = "`invalid_name`, `invalid_description`, `too_many_rules`, `invalid_rule`, or a malformed \
                body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: a rule names a group that is not the account's", body = ErrorBody),
        (status = 409, description = "`name_taken`: the account has a security group of that name; `duplicate_rule`: \
            a rule is given twice", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSecurityGroup>,
) -> ApiResult<(StatusCode, Json<SecurityGroup>)> {
    Ok((StatusCode::CREATED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/security_groups", tag = "security_groups", operation_id = "security_group_list",
    summary = "List the account's security groups",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of security groups", body = Page<SecurityGroup>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<SecurityGroup>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/security_groups/{id}", tag = "security_groups",
    operation_id = "security_group_show", summary = "Show a security group and its rules",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The security group", body = SecurityGroup),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SecurityGroup>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("security group", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/security_groups/{id}", tag = "security_groups",
    operation_id = "security_group_delete", summary = "Delete a security group",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409,
            description = "`security_group_in_use`: interfaces are members, or rules of other groups name it",
            body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    app::delete(&ctx, &caller, &path_id("security group", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/security_groups/{id}/rules", tag = "security_groups",
    operation_id = "security_group_add_rule", summary = "Add a rule to a security group", request_body = RuleSpec,
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 201, description = "The security group with the new rule", body = SecurityGroup),
        (status = 400, description = "`invalid_rule`, `too_many_rules`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 404, description = "`not_found`: the group, or the group the rule names", body = ErrorBody),
        (status = 409, description = "`duplicate_rule`: the group has this rule already", body = ErrorBody)))]
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
    operation_id = "security_group_delete_rule", summary = "Delete a rule of a security group",
    params(
        ("id" = vdc_schema::id::SecurityGroupId, Path,
            description = "A security group ID (`sg-…`); an unknown, malformed or foreign one answers 404"),
        ("rule_id" = vdc_schema::id::RuleId, Path,
            description = "A rule ID (`sgr-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The security group without the rule", body = SecurityGroup),
        (status = 404, description = "`not_found`: the group, or the rule in it", body = ErrorBody)))]
pub async fn delete_rule(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path((id, rule_id)): Path<(String, String)>,
) -> ApiResult<Json<SecurityGroup>> {
    let id: SecurityGroupId = path_id("security group", &id)?;
    let rule_id: RuleId = path_id("security group rule", &rule_id)?;
    Ok(Json(app::delete_rule(&ctx, &caller, &id, &rule_id).await?))
}
