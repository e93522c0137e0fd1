//! Instances: create (place, reserve, allocate addresses, record intent), the lifecycle
//! actions, the agent spec built from the model, and hva's reports folded back in.
//!
//! Every request records intent in one transaction and returns 202 with a job; the
//! ensure leaves afterwards through the dispatcher. Nothing here waits on an agent
//! (except reading the console, which is a read of the agent's own data).

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::interface::{self, Planned};
use crate::resources::lifecycle::{self, Decision};
use crate::resources::{image, job, keypair, network, page, paging, path_id, secgroup, state_filter, validate_name};
use crate::scheduler::{self, Demand};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::agent::{AgentError, Hypervisor, NetworkAgent};
use vdc_schema::api::{Accepted, ConsoleLog, CreateInstance, ErrorBody, Instance, Page};
use vdc_schema::bus::{AgentKind, InstanceReport, InstanceSpec, NicSpec, VolumeAttachment};
use vdc_schema::id::*;
use vdc_schema::{DesiredPower, InstanceAction, InstanceGoal, InstanceState, ObservedInstance};

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub image_id: String,
    pub hypervisor: String,
    pub cpus: i64,
    pub memory_mib: i64,
    pub ssh_key_id: Option<String>,
    pub user_data: Option<String>,
    pub state: String,
    pub goal: String,
    pub host_node_id: Option<String>,
    pub last_host_id: Option<String>,
    pub spec_gen: i64,
    pub report_gen: i64,
    pub reboot_gen: i64,
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

pub(crate) const COLS: &str =
    "id, account_id, name, image_id, hypervisor, cpus, memory_mib, ssh_key_id, user_data, state, goal, \
     host_node_id, last_host_id, spec_gen, report_gen, reboot_gen, failure_reason, created_at, updated_at";

impl Row {
    fn state(&self) -> ApiResult<InstanceState> {
        self.state.parse().map_err(ApiError::internal)
    }
    fn goal(&self) -> ApiResult<InstanceGoal> {
        self.goal.parse().map_err(ApiError::internal)
    }

    fn into_api(self, interfaces: Vec<vdc_schema::api::Interface>, volumes: Vec<VolumeId>) -> ApiResult<Instance> {
        Ok(Instance {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            state: self.state.parse().map_err(ApiError::internal)?,
            goal: self.goal.parse().map_err(ApiError::internal)?,
            image_id: self.image_id.parse().map_err(ApiError::internal)?,
            hypervisor: self.hypervisor.parse().map_err(ApiError::internal)?,
            cpus: self.cpus as u32,
            memory_mib: self.memory_mib as u32,
            host_node_id: self.host_node_id.map(|h| h.parse()).transpose().map_err(ApiError::internal)?,
            ssh_key_id: self.ssh_key_id.map(|k| k.parse()).transpose().map_err(ApiError::internal)?,
            interfaces,
            volumes,
            failure_reason: self.failure_reason,
            created_at: db::parse_time(&self.created_at),
            updated_at: db::parse_time(&self.updated_at),
        })
    }
}

/// Rows to API objects, with their interfaces and volumes fetched in two range queries.
async fn to_api(ctx: &SharedCtx, account: &str, rows: Vec<Row>) -> ApiResult<Vec<Instance>> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Ok(vec![]) };
    let (first, last) = (first.id.clone(), last.id.clone());
    let mut ifaces = interface::for_instances(&ctx.db, account, &first, &last).await?.into_iter().peekable();
    let vols: Vec<(String, String)> = sqlx::query_as(
        "SELECT instance_id, id FROM volumes WHERE account_id = $1 AND instance_id >= $2 AND instance_id <= $3
         AND state IN ('attaching', 'attached', 'detaching') ORDER BY instance_id, id",
    )
    .bind(account)
    .bind(&first)
    .bind(&last)
    .fetch_all(&ctx.db)
    .await?;
    let mut vols = vols.into_iter().peekable();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        // Both side lists are sorted by instance ID, like `rows`: merge instead of hashing.
        let mut mine = Vec::new();
        while ifaces.peek().is_some_and(|(i, _)| *i < r.id) {
            ifaces.next();
        }
        while ifaces.peek().is_some_and(|(i, _)| *i == r.id) {
            mine.push(ifaces.next().unwrap().1);
        }
        let mut my_vols = Vec::new();
        while vols.peek().is_some_and(|(i, _)| *i < r.id) {
            vols.next();
        }
        while vols.peek().is_some_and(|(i, _)| *i == r.id) {
            if let Ok(v) = vols.next().unwrap().1.parse() {
                my_vols.push(v);
            }
        }
        out.push(r.into_api(mine, my_vols)?);
    }
    Ok(out)
}

pub(crate) async fn fetch_row(db: &db::Pool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM instances WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// An instance of the caller's, or 404.
async fn fetch_own(ctx: &SharedCtx, caller: &Caller, id: &InstanceId) -> ApiResult<Row> {
    match fetch_row(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("instance", id)),
    }
}

pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &InstanceId) -> ApiResult<Instance> {
    let row = fetch_own(ctx, caller, id).await?;
    Ok(to_api(ctx, caller.account_id.as_str(), vec![row]).await?.remove(0))
}

struct Prepared {
    name: String,
    image: vdc_schema::api::Image,
    demand: Demand,
    ssh_key: Option<KeyPairId>,
    user_data: Option<String>,
    interfaces: Vec<Planned>,
}

async fn prepare(ctx: &SharedCtx, caller: &Caller, req: CreateInstance) -> ApiResult<Prepared> {
    if let Some(n) = &req.name {
        validate_name("instance", n)?;
    }
    if !(1..=128).contains(&req.cpus) {
        return Err(ApiError::bad("invalid_cpus", format!("cpus must be between 1 and 128, got {}", req.cpus)));
    }
    if !(32..=4 * 1024 * 1024).contains(&req.memory_mib) {
        return Err(ApiError::bad(
            "invalid_memory",
            format!("memory_mib must be between 32 and 4194304, got {}", req.memory_mib),
        ));
    }
    if req.user_data.as_ref().is_some_and(|u| u.len() > 64 * 1024) {
        return Err(ApiError::bad("user_data_too_large", "user_data must be at most 64 KiB"));
    }
    if req.interfaces.len() > 8 {
        return Err(ApiError::bad("too_many_interfaces", "an instance has at most 8 interfaces"));
    }
    let image = image::fetch_visible(ctx, caller, &req.image_id).await?;
    let hypervisor = match req.hypervisor {
        Some(h) if !image.hypervisors.contains(&h) => {
            let kinds: Vec<_> = image.hypervisors.iter().map(|k| k.as_str()).collect();
            return Err(ApiError::bad(
                "unsupported_hypervisor",
                format!("image {} runs on {}, not on {h}", image.id, kinds.join(", ")),
            ));
        }
        Some(h) => h,
        None => image.hypervisors[0],
    };
    if let Some(k) = &req.ssh_key_id {
        keypair::fetch(ctx, caller, k).await?;
    }
    let mut interfaces = Vec::new();
    for (i, iface) in req.interfaces.iter().enumerate() {
        let net = network::fetch(ctx, caller, &iface.network_id).await?;
        if req.interfaces[..i].iter().any(|o| o.network_id == iface.network_id) {
            return Err(ApiError::bad("duplicate_network", format!("network {} is given twice", net.id)));
        }
        for g in &iface.security_groups {
            secgroup::fetch(ctx, caller, g).await?;
        }
        let fixed_ip = iface.ip.as_deref().map(|ip| interface::check_fixed_ip(&net, ip)).transpose()?;
        interfaces.push(Planned { network: net, security_groups: iface.security_groups.clone(), fixed_ip });
    }
    Ok(Prepared {
        name: req.name.unwrap_or_default(),
        demand: Demand { hypervisor, cpus: req.cpus, memory_mib: req.memory_mib },
        image,
        ssh_key: req.ssh_key_id,
        user_data: req.user_data,
        interfaces,
    })
}

async fn insert(
    ctx: &SharedCtx,
    caller: &Caller,
    p: &Prepared,
    candidates: &[String],
) -> ApiResult<Accepted<Instance>> {
    let mut tx = ctx.db.begin().await?;
    let host = scheduler::reserve(&mut tx, p.demand, candidates).await?;
    let id = InstanceId::generate();
    let name = if p.name.is_empty() { id.to_string() } else { p.name.clone() };
    let now = db::now();
    sqlx::query(&format!(
        "INSERT INTO instances ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', 'running', $10, NULL, 1, 0, 0, NULL, $11, $11)"
    ))
    .bind(id.as_str())
    .bind(caller.account_id.as_str())
    .bind(&name)
    .bind(p.image.id.as_str())
    .bind(p.demand.hypervisor.as_str())
    .bind(p.demand.cpus as i64)
    .bind(p.demand.memory_mib as i64)
    .bind(p.ssh_key.as_ref().map(|k| k.to_string()))
    .bind(&p.user_data)
    .bind(host.as_str())
    .bind(&now)
    .execute(&mut *tx)
    .await?;
    let mut interfaces = Vec::new();
    for (pos, planned) in p.interfaces.iter().enumerate() {
        interfaces.push(interface::insert(&mut tx, &caller.account_id, &id, pos, planned).await?);
    }
    let job = job::start(&mut tx, &caller.account_id, "instance.create", id.as_str(), "running").await?;
    tx.commit().await?;
    let t = db::parse_time(&now);
    let instance = Instance {
        id,
        name,
        state: InstanceState::Pending,
        goal: InstanceGoal::Running,
        image_id: p.image.id.clone(),
        hypervisor: p.demand.hypervisor,
        cpus: p.demand.cpus,
        memory_mib: p.demand.memory_mib,
        host_node_id: Some(host),
        ssh_key_id: p.ssh_key.clone(),
        interfaces,
        volumes: vec![],
        failure_reason: None,
        created_at: t,
        updated_at: t,
    };
    Ok(Accepted { job, resource: instance })
}

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", operation_id = "instance_create",
    summary = "Create an instance: placed on a host, started in the background", request_body = CreateInstance,
    responses(
        (status = 202, description = "Accepted: the instance (pending) and the job that tracks its start",
            body = Accepted<Instance>),
        (status = 400,
            description = "`invalid_name`, `invalid_cpus`, `invalid_memory`, `user_data_too_large`, \
                `too_many_interfaces`, `unsupported_hypervisor`, `duplicate_network`, `invalid_ip`, or a malformed \
                body (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: the image, key pair, a network or a security group",
            body = ErrorBody),
        (status = 409, description = "`ip_in_use`: a fixed address is taken", body = ErrorBody),
        (status = 422,
            description = "`no_capacity`: no online host fits it; `network_full`: a network has no free address",
            body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateInstance>,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    let p = prepare(&ctx, &caller, req).await?;
    let accepted = db::retry(|| async {
        let candidates = scheduler::candidates(&ctx.db, p.demand, None).await?;
        insert(&ctx, &caller, &p, &candidates).await
    })
    .await?;
    let inst = &accepted.resource;
    tracing::info!(instance = %inst.id, job = %accepted.job.id, host = ?inst.host_node_id, "instance accepted");
    ctx.enqueue(Work::Instance(inst.id.clone()));
    for i in &inst.interfaces {
        ctx.enqueue(Work::Interface(i.id.clone()));
        for g in &i.security_groups {
            ctx.enqueue(Work::SecurityGroup(g.clone()));
        }
    }
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", operation_id = "instance_list",
    summary = "List the account's instances",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::InstanceState>, Query, description = "Only instances in this state"),
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of instances", body = Page<Instance>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Instance>>> {
    let (limit, cursor) = paging(&q)?;
    let state = state_filter::<InstanceState>(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM instances WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) ORDER BY id LIMIT $5"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(state)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = to_api(&ctx, caller.account_id.as_str(), rows).await?;
    Ok(Json(page(items, limit, |i| i.id.to_string())))
}

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", operation_id = "instance_show",
    summary = "Show an instance",
    params(
        ("id" = vdc_schema::id::InstanceId, Path,
            description = "An instance ID (`i-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The instance", body = Instance),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    Ok(Json(fetch(&ctx, &caller, &path_id("instance", &id)?).await?))
}

/// Records the intent of one action; the dispatcher sends the ensure afterwards.
async fn act(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    action: InstanceAction,
) -> ApiResult<(StatusCode, Accepted<Instance>)> {
    let row = fetch_own(ctx, caller, id).await?;
    let state = row.state()?;
    let account = &caller.account_id;
    let action_name = format!("instance.{action}");
    let plan = match lifecycle::decide(action, state) {
        Decision::Refuse(why) => return Err(ApiError::conflict("invalid_state", format!("{why} ({id})"))),
        Decision::AlreadyDone(msg) => {
            let mut tx = ctx.db.begin().await?;
            let job = job::done(&mut tx, account, &action_name, id.as_str(), msg).await?;
            tx.commit().await?;
            let inst = fetch(ctx, caller, id).await?;
            return Ok((StatusCode::OK, Accepted { job, resource: inst }));
        }
        Decision::Apply(p) => p,
    };
    // A host that is down cannot act now; terminate is recorded anyway and delivered
    // when the host returns (or at once when there is no host).
    if let (Some(h), false) = (&row.host_node_id, plan.goal == InstanceGoal::Terminated) {
        if !ctx.agent_online(AgentKind::Hva, h) {
            return Err(ApiError::Unavailable {
                code: "agent_unavailable",
                message: format!("host {h} of instance {id} is offline; retry when it is back"),
            });
        }
    }
    let mut new_state = plan.state;
    let mut host = row.host_node_id.clone();
    let candidates = if plan.schedule {
        let d = Demand {
            hypervisor: row.hypervisor.parse().map_err(ApiError::internal)?,
            cpus: row.cpus as u32,
            memory_mib: row.memory_mib as u32,
        };
        Some((d, scheduler::candidates(&ctx.db, d, row.last_host_id.as_deref()).await?))
    } else {
        None
    };
    if host.is_none() && candidates.is_none() {
        // No host holds it: stop and terminate complete at once.
        new_state = match plan.goal {
            InstanceGoal::Terminated => InstanceState::Terminated,
            InstanceGoal::Stopped => InstanceState::Stopped,
            _ => return Err(ApiError::conflict("invalid_state", format!("instance {id} has no host; start it first"))),
        };
    }
    let mut tx = ctx.db.begin().await?;
    let r = sqlx::query(
        "UPDATE instances SET state = $1, goal = $2, spec_gen = spec_gen + 1, reboot_gen = reboot_gen + $3,
             failure_reason = NULL, ensure_sent_at = 0, updated_at = $4
         WHERE id = $5 AND spec_gen = $6",
    )
    .bind(new_state.as_str())
    .bind(plan.goal.as_str())
    .bind(plan.reboot as i64)
    .bind(db::now())
    .bind(id.as_str())
    .bind(row.spec_gen)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::Busy(format!("instance {id} changed concurrently")));
    }
    if let Some((d, cands)) = &candidates {
        let h = scheduler::reserve(&mut tx, *d, cands).await?;
        sqlx::query("UPDATE instances SET host_node_id = $1 WHERE id = $2")
            .bind(h.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        host = Some(h.to_string());
    }
    let mut removed = (vec![], vec![]);
    if new_state == InstanceState::Terminated {
        removed = finalize_terminated(&mut tx, &row).await?;
    }
    let target = if plan.reboot { format!("reboot:{}", row.reboot_gen + 1) } else { plan.goal.as_str().to_owned() };
    let job = if matches!(new_state, InstanceState::Terminated | InstanceState::Stopped) {
        job::done(&mut tx, account, &action_name, id.as_str(), "done").await?
    } else {
        job::start(&mut tx, account, &action_name, id.as_str(), &target).await?
    };
    tx.commit().await?;
    tracing::info!(instance = %id, job = %job.id, %action, host = ?host, "instance action accepted");
    interface::enqueue_groups(ctx, &removed.1);
    ctx.enqueue(Work::Instance(id.clone()));
    if plan.schedule {
        let vifs: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM vifs WHERE instance_id = $1").bind(id.as_str()).fetch_all(&ctx.db).await?;
        for (v,) in vifs {
            if let Ok(v) = v.parse() {
                ctx.enqueue(Work::Interface(v));
            }
        }
    }
    let inst = fetch(ctx, caller, id).await?;
    Ok((StatusCode::ACCEPTED, Accepted { job, resource: inst }))
}

/// The bookkeeping of an instance that is gone: interfaces removed, volumes detached.
/// Returns the removed interfaces and the groups they were in.
async fn finalize_terminated(tx: &mut db::Tx<'_>, row: &Row) -> ApiResult<(Vec<String>, Vec<String>)> {
    let removed = interface::remove_for_instance(tx, &row.id).await?;
    sqlx::query(
        "UPDATE volumes SET instance_id = NULL, state = 'available', spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $1
         WHERE instance_id = $2 AND state IN ('attaching', 'attached', 'detaching')",
    )
    .bind(db::now())
    .bind(&row.id)
    .execute(&mut **tx)
    .await?;
    Ok(removed)
}

async fn action_handler(
    ctx: SharedCtx,
    caller: Caller,
    id: String,
    action: InstanceAction,
) -> ApiResult<(StatusCode, Json<Accepted<Instance>>)> {
    let id: InstanceId = path_id("instance", &id)?;
    let (status, body) = db::retry(|| act(&ctx, &caller, &id, action)).await?;
    Ok((status, Json(body)))
}

// `tt` for what goes into the attribute: utoipa reads literals, and a `literal` fragment
// reaches it wrapped in an invisible group.
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
        (status = 422, description = "`no_capacity`: no online host fits a stopped instance", body = ErrorBody),
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
        (status = 422, description = "`no_capacity`: no online host fits a stopped instance", body = ErrorBody),
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
    let id: InstanceId = path_id("instance", &id)?;
    let row = fetch_own(&ctx, &caller, &id).await?;
    let host = row.host_node_id.or(row.last_host_id).ok_or_else(|| {
        ApiError::conflict("no_console", format!("instance {id} has never run on a host, so it has no console output"))
    })?;
    let client = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(ApiError::internal)? };
    match client.console_log(id.clone()).await {
        Ok(output) => Ok(Json(ConsoleLog { instance_id: id, output })),
        Err(AgentError::NotFound(_)) => Ok(Json(ConsoleLog { instance_id: id, output: String::new() })),
        Err(e) => Err(ApiError::Unavailable { code: "agent_unavailable", message: format!("host {host}: {e}") }),
    }
}

// ---------------------------------------------------------------- agent side

pub(crate) fn hostname(name: &str, id: &str) -> String {
    let h: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .chars()
        .take(63)
        .collect();
    if h.is_empty() {
        id.to_owned()
    } else {
        h
    }
}

/// Builds the spec of one instance from the model and sends it to its host.
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, id).await? else { return Ok(()) };
    if row.state()? == InstanceState::Terminated {
        // Terminated without a host (it was stopped): its last host may still keep the
        // powered-off guest and its disk.
        if let Some(last) = row.last_host_id.as_deref().and_then(|h| h.parse().ok()) {
            let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: last };
            let _ = hva.ensure_instance_absent(row.id.parse().map_err(ApiError::internal)?, row.spec_gen as u64).await;
        }
        return Ok(());
    }
    let Some(host) = row.host_node_id.clone() else { return Ok(()) };
    let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(ApiError::internal)? };
    let unavailable = |e: AgentError| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() };
    let goal = row.goal()?;
    if goal == InstanceGoal::Terminated {
        hva.ensure_instance_absent(row.id.parse().map_err(ApiError::internal)?, row.spec_gen as u64)
            .await
            .map_err(unavailable)?;
    } else {
        let spec = build_spec(ctx, &row, goal).await?;
        hva.ensure_instance(spec).await.map_err(unavailable)?;
    }
    if let Some(obs) = &ctx.ensure_observer {
        obs(id);
    }
    sqlx::query("UPDATE instances SET ensure_sent_at = $1 WHERE id = $2")
        .bind(db::now_ms())
        .bind(id)
        .execute(&ctx.db)
        .await?;
    Ok(())
}

async fn build_spec(ctx: &SharedCtx, row: &Row, goal: InstanceGoal) -> ApiResult<InstanceSpec> {
    let image = image::spec(&ctx.db, &row.image_id).await?;
    #[allow(clippy::type_complexity)] // one row of a fixed SELECT, destructured right below
    let nics: Vec<(String, String, String, String, String, String, i64)> = sqlx::query_as(
        "SELECT v.id, v.network_id, v.mac, v.ip, n.cidr, n.gateway, n.vni FROM vifs v JOIN networks n ON n.id = v.network_id
         WHERE v.instance_id = $1 ORDER BY v.position",
    )
    .bind(&row.id)
    .fetch_all(&ctx.db)
    .await?;
    let mut ssh_public_keys = vec![];
    if let Some(k) = &row.ssh_key_id {
        let key: Option<(String,)> =
            sqlx::query_as("SELECT public_key FROM keypairs WHERE id = $1").bind(k).fetch_optional(&ctx.db).await?;
        ssh_public_keys.extend(key.map(|k| k.0));
    }
    let vols: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT id, target FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached') ORDER BY id",
    )
    .bind(&row.id)
    .fetch_all(&ctx.db)
    .await?;
    // A volume is exported to the host its instance is on now (none while stopped): let
    // sta catch up with every placement and power change. Idempotent; the loop ends
    // because a report re-dispatches the instance only when the target changes.
    for (v, _) in &vols {
        if let Ok(v) = v.parse() {
            ctx.enqueue(Work::Volume(v));
        }
    }
    Ok(InstanceSpec {
        id: row.id.parse().map_err(ApiError::internal)?,
        spec_gen: row.spec_gen as u64,
        power: if goal == InstanceGoal::Running { DesiredPower::Running } else { DesiredPower::Off },
        hypervisor: row.hypervisor.parse().map_err(ApiError::internal)?,
        cpus: row.cpus as u32,
        memory_mib: row.memory_mib as u32,
        hostname: hostname(&row.name, &row.id),
        image,
        nics: nics
            .into_iter()
            .filter_map(|(id, net, mac, ip, cidr, gateway, vni)| {
                Some(NicSpec {
                    id: id.parse().ok()?,
                    network_id: net.parse().ok()?,
                    mac,
                    ip,
                    prefix_len: interface::prefix_len(&cidr),
                    gateway,
                    vni: vni as u32,
                })
            })
            .collect(),
        ssh_public_keys,
        user_data: row.user_data.clone(),
        volumes: vols
            .into_iter()
            .filter_map(|(id, target)| {
                Some(VolumeAttachment {
                    volume_id: id.parse().ok()?,
                    target: target.and_then(|t| serde_json::from_str(&t).ok()),
                })
            })
            .collect(),
        reboot_gen: row.reboot_gen as u64,
    })
}

/// Folds one hva report into the model.
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: InstanceReport) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, r.id.as_str()).await? else {
        if r.state != ObservedInstance::Absent {
            garbage(ctx, node, &r).await;
        }
        return Ok(());
    };
    if row.state == InstanceState::Terminated.as_str() || row.host_node_id.as_deref() != Some(node) {
        // Only clean up copies the model has moved away from; a stopped instance's last
        // host keeps its powered-off guest (and disk) for the next start.
        let moved = row.host_node_id.as_deref().is_some_and(|h| h != node);
        if (row.state == InstanceState::Terminated.as_str() || moved) && r.state != ObservedInstance::Absent {
            garbage(ctx, node, &r).await;
        }
        return Ok(());
    }
    if (r.spec_gen as i64) < row.spec_gen || (gen as i64) <= row.report_gen {
        return Ok(());
    }
    let goal = row.goal()?;
    let out = lifecycle::on_report(goal, r.state);
    let failure = if out.state == InstanceState::Failed {
        Some(r.reason.clone().unwrap_or_else(|| "the host reported a failure without a reason".into()))
    } else {
        None
    };
    let mut tx = ctx.db.begin().await?;
    let updated = sqlx::query(
        "UPDATE instances SET state = $1, goal = $2, report_gen = $3, failure_reason = $4, updated_at = $5,
             host_node_id = CASE WHEN $6 = 1 THEN NULL ELSE host_node_id END,
             last_host_id = CASE WHEN $6 = 1 THEN host_node_id ELSE last_host_id END
         WHERE id = $7 AND spec_gen = $8 AND report_gen < $3",
    )
    .bind(out.state.as_str())
    .bind(out.goal.as_str())
    .bind(gen as i64)
    .bind(&failure)
    .bind(db::now())
    .bind(out.release_host as i64)
    .bind(&row.id)
    .bind(row.spec_gen)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(());
    }
    if out.release_host {
        scheduler::release(&mut tx, node, row.cpus, row.memory_mib).await?;
    }
    let mut removed = (vec![], vec![]);
    if out.state == InstanceState::Terminated {
        removed = finalize_terminated(&mut tx, &row).await?;
    }
    tx.commit().await?;
    if out.state.as_str() != row.state {
        tracing::info!(instance = %r.id, from = %row.state, to = %out.state, "instance state");
    }
    // Jobs and volume attachments follow the new state.
    if let Some(f) = &failure {
        job::fail_all(&ctx.db, &row.id, f).await?;
    } else {
        job::finish(&ctx.db, &row.id, out.state.as_str()).await?;
        if out.state == InstanceState::Running {
            for t in job::running_targets(&ctx.db, &row.id).await? {
                if t.strip_prefix("reboot:").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n <= r.reboot_gen) {
                    job::finish(&ctx.db, &row.id, &t).await?;
                }
            }
        }
    }
    if !removed.0.is_empty() {
        if let Ok(n) = node.parse() {
            let nw = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id: n };
            for v in &removed.0 {
                if let Ok(v) = v.parse() {
                    let _ = nw.ensure_interface_absent(v, 0).await;
                }
            }
        }
        interface::enqueue_groups(ctx, &removed.1);
    }
    crate::resources::volume::on_instance_report(ctx, &row.id, &r.volumes, out.state).await?;
    Ok(())
}

async fn garbage(ctx: &SharedCtx, node: &str, r: &InstanceReport) {
    if let Ok(n) = node.parse() {
        tracing::info!(instance = %r.id, node, "host holds an instance the model does not place there; removing it");
        let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: n };
        let _ = hva.ensure_instance_absent(r.id.clone(), r.spec_gen).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(super::hostname("Web Server #1", "i-x"), "web-server--1");
        assert_eq!(super::hostname("!!!", "i-x"), "i-x");
    }
}
