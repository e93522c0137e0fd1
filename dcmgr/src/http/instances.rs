//! `/api/v1/instances`: create, list, show, the lifecycle actions, the console.

use crate::app::instance as app;
use crate::ctx::{Caller, SharedCtx};
use crate::error::ApiResult;
use crate::http::{path_id, status, Body, ListParams};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{Accepted, CaptureInstance, ConsoleLog, CreateInstance, ErrorBody, Image, Instance, Page};
use vdc_schema::InstanceAction;

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", operation_id = "instance_create",
    summary = "Create an instance: placed on a host, started in the background", request_body = CreateInstance,
    responses(
        (status = 202, description = "Accepted: the instance (pending) and the job that tracks its start",
            body = Accepted<Instance>),
        (status = 400,
            description = "`invalid_name`, `invalid_cpus`, `invalid_memory`, `user_data_too_large`, \
                `too_many_interfaces`, `unsupported_hypervisor`, `duplicate_network`, `duplicate_security_group`, `invalid_ip`, \
                `unsupported_format` (the hypervisor cannot boot the image), `memory_below_image_minimum`, \
                `root_disk_too_small`, `root_disk_not_applicable`, `invalid_size`, `invalid_zone`, `invalid_label`, \
                or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 404, description = "`not_found`: the image, key pair, a network, a security group or the server group",
            body = ErrorBody),
        (status = 409, description = "`ip_in_use`: a fixed address is taken; `boot_mode_unsupported`: a UEFI \
            image and no online host has UEFI firmware (OVMF)", body = ErrorBody),
        (status = 422,
            description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use); `no_capacity`: no online host fits it; `placement_unsatisfiable`: no host meets the zone, the host labels or the server group's policy (the message names which); `network_full`: a network has no free address",
            body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateInstance>,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    Ok((StatusCode::ACCEPTED, Json(app::create(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", operation_id = "instance_list",
    summary = "List the account's instances",
    description = "Terminated instances are listed for an hour after they ended; later only with \
        `state=terminated` (and by ID).",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::InstanceState>, Query, description = "Only instances in this state"),
        ("name" = Option<String>, Query, description = "Only items with this exact name"),
        ("address" = Option<String>, Query, format = Ipv4,
            description = "Only the instance with this address: an interface's or its floating IP"),
        ("all_accounts" = Option<bool>, Query,
            description = "Admins only: every account's instances (each names its `account_id`)")),
    responses(
        (status = 200, description = "One page of instances", body = Page<Instance>),
        (status = 400, description = "`invalid_address`, `invalid_state_filter`, `invalid_limit`, `invalid_cursor`", body = ErrorBody),
        (status = 403, description = "`forbidden`: `all_accounts` without an admin's token", body = ErrorBody)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<std::sync::Arc<Page<Instance>>>> {
    Ok(Json(app::list(&ctx, &caller, &q).await?))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", operation_id = "instance_show",
    summary = "Show an instance",
    params(
        ("id" = vdc_schema::id::InstanceId, Path,
            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The instance", body = Instance),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<std::sync::Arc<Instance>>> {
    Ok(Json(app::fetch(&ctx, &caller, &path_id("instance", &id)?).await?))
}

async fn action_handler(
    ctx: SharedCtx,
    caller: Caller,
    id: String,
    action: InstanceAction,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    let (done, body) = app::act(&ctx, &caller, &path_id("instance", &id)?, action).await?;
    Ok((status(done), Json(body)))
}

macro_rules! action_endpoint {
    ($fn:ident, $action:expr, $path:literal, $operation_id:tt, $summary:tt, $responses:tt) => {
        #[utoipa::path(post, path = $path, tag = "instances", operation_id = $operation_id, summary = $summary,
                    params(
                        ("id" = vdc_schema::id::InstanceId, Path,
                            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
                    responses $responses)]
        pub async fn $fn(
            State(ctx): State<SharedCtx>,
            caller: Caller,
            Path(id): Path<String>,
        ) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
            action_handler(ctx, caller, id, $action).await
        }
    };
}

action_endpoint!(start, InstanceAction::Start, "/api/v1/instances/{id}/start", "instance_start",
    "Start a stopped, halted or failed instance (a stopped one is placed on a host again)",
    ((status = 202, description = "Accepted: the instance and the job that tracks the start",
            body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already running or starting): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is stopping, halting, shutting down or terminated",
            body = ErrorBody),
        (status = 422, description = "`no_capacity`: no online host fits a stopped instance; `placement_unsatisfiable`: none meets its zone, host labels or server group's policy", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host is offline, retry when it is back; or `busy`",
            body = ErrorBody)));
action_endpoint!(stop, InstanceAction::Stop, "/api/v1/instances/{id}/stop", "instance_stop",
    "Stop an instance and release its host",
    ((status = 202, description = "Accepted: the instance and the job that tracks the stop", body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already stopped or stopping): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is shutting down or terminated", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host is offline, retry when it is back; or `busy`",
            body = ErrorBody)));
action_endpoint!(halt, InstanceAction::Halt, "/api/v1/instances/{id}/halt", "instance_halt",
    "Power an instance off and keep its host",
    ((status = 202, description = "Accepted: the instance and the job that tracks the halt", body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already halted or halting): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is stopped, stopping, shutting down or terminated",
            body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host is offline, retry when it is back; or `busy`",
            body = ErrorBody)));
action_endpoint!(poweron, InstanceAction::Poweron, "/api/v1/instances/{id}/poweron", "instance_poweron",
    "Power an instance on (the same as start)",
    ((status = 202, description = "Accepted: the instance and the job that tracks the start",
            body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already running or starting): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is stopping, halting, shutting down or terminated",
            body = ErrorBody),
        (status = 422, description = "`no_capacity`: no online host fits a stopped instance; `placement_unsatisfiable`: none meets its zone, host labels or server group's policy", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host is offline, retry when it is back; or `busy`",
            body = ErrorBody)));
action_endpoint!(reboot, InstanceAction::Reboot, "/api/v1/instances/{id}/reboot", "instance_reboot",
    "Reboot a running instance",
    ((status = 202, description = "Accepted: the instance and the job that tracks the reboot",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: only a running instance can reboot", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host is offline, retry when it is back; or `busy`",
            body = ErrorBody)));
action_endpoint!(terminate, InstanceAction::Terminate, "/api/v1/instances/{id}/terminate", "instance_terminate",
    "Terminate an instance (recorded even while its host is offline)",
    ((status = 202, description = "Accepted: the instance (shutting down) and the job that tracks it",
            body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already terminated): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody)));

#[utoipa::path(delete, path = "/api/v1/instances/{id}", tag = "instances", operation_id = "instance_delete",
    summary = "Terminate an instance (the same as POST …/terminate)",
    params(
        ("id" = vdc_schema::id::InstanceId, Path,
            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the instance and the job that tracks the action",
            body = Accepted<Instance>),
        (status = 200, description = "Nothing to do (already terminated): the instance and a finished job",
            body = Accepted<Instance>),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    action_handler(ctx, caller, id, InstanceAction::Terminate).await
}

#[utoipa::path(get, path = "/api/v1/instances/{id}/console", tag = "instances", operation_id = "instance_console",
    summary = "Read an instance's serial console output from its host",
    params(
        ("id" = vdc_schema::id::InstanceId, Path,
            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The console output", body = ConsoleLog),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`no_console`: it has never run on a host", body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: its host did not answer; or `busy`", body = ErrorBody)))]
pub async fn console(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<ConsoleLog>> {
    Ok(Json(app::console(&ctx, &caller, &path_id("instance", &id)?).await?))
}

#[utoipa::path(post, path = "/api/v1/instances/{id}/capture", tag = "instances", operation_id = "instance_capture",
    summary = "Capture an instance's root disk (a container's root file system, as a tar image) as a new image \
        (yours, with the source image's properties); a running one is copied as it runs",
    request_body = CaptureInstance,
    params(
        ("id" = vdc_schema::id::InstanceId, Path,
            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the new image (pending) and the job that ends when it is available; \
            the instance is `capturing` (it cannot start) until then", body = Accepted<Image>),
        (status = 400, description = "`invalid_name`, `invalid_image` (a property), or a malformed body \
            (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`instance_not_stopped`: it is neither stopped nor running (starting, stopping, capturing…); \
            `instance_capturing`: a capture of it is under way; \
            `capture_unsupported`: an instance without a root disk (a kernel-booted one) or one that never ran",
            body = ErrorBody),
        (status = 503, description = "`agent_unavailable`: the host holding its disk is offline", body = ErrorBody),
        (status = 422, description = "`quota_exceeded`: the account would go beyond a quota (named, with its limit and use)", body = ErrorBody)))]
pub async fn capture(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<CaptureInstance>,
) -> ApiResult<(StatusCode, Json<Accepted<Image>>)> {
    let id = path_id("instance", &id)?;
    Ok((StatusCode::ACCEPTED, Json(crate::app::capture::capture(&ctx, &caller, &id, req).await?)))
}
