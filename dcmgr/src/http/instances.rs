//! `/api/v1/instances`: create, list, show, the lifecycle actions, the console.

use crate::app::instance::{self as app, Done};
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, ConsoleLog, CreateInstance, ErrorBody, Instance, Page};
use vdc_schema::InstanceAction;

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = CreateInstance,
    responses((status = 202, body = Accepted<Instance>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateInstance>,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Instance>), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Instance>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("instance", &id)?).await?))
}

async fn action_handler(
    ctx: SharedCtx,
    caller: Caller,
    id: String,
    action: InstanceAction,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    let (done, body) = app::act(&ctx, &caller, &path_id("instance", &id)?, action).await?;
    let status = if done == Done::Accepted { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok((status, Json(body)))
}

macro_rules! action_endpoint {
    ($fn:ident, $action:expr, $path:literal) => {
        #[utoipa::path(post, path = $path, tag = "instances", params(("id" = String, Path)),
            responses((status = 202, body = Accepted<Instance>), (status = 200, description = "already done", body = Accepted<Instance>),
                (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
        pub async fn $fn(
            State(ctx): State<SharedCtx>,
            caller: Caller,
            Path(id): Path<String>,
        ) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
            action_handler(ctx, caller, id, $action).await
        }
    };
}

action_endpoint!(start, InstanceAction::Start, "/api/v1/instances/{id}/start");
action_endpoint!(stop, InstanceAction::Stop, "/api/v1/instances/{id}/stop");
action_endpoint!(halt, InstanceAction::Halt, "/api/v1/instances/{id}/halt");
action_endpoint!(poweron, InstanceAction::Poweron, "/api/v1/instances/{id}/poweron");
action_endpoint!(reboot, InstanceAction::Reboot, "/api/v1/instances/{id}/reboot");
action_endpoint!(terminate, InstanceAction::Terminate, "/api/v1/instances/{id}/terminate");

#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Instance>), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    action_handler(ctx, caller, id, InstanceAction::Terminate).await
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/console", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = ConsoleLog), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn console(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ConsoleLog>> {
    Ok(Json(app::console(&ctx, &caller, &path_id("instance", &id)?).await?))
}
