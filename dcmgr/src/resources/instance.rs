//! Instances: create (place, reserve, allocate addresses, record intent), the lifecycle
//! actions, the agent spec built from the model, and hva's reports folded back in.
//!
//! Every request records intent in one transaction and returns 202 with a job; the
//! ensure leaves afterwards through the dispatcher. Nothing here waits on an agent
//! (except reading the console, which is a read of the agent's own data).

use crate::api::{Body, ListParams};
use crate::app::interface::{self, Planned};
use crate::app::keypair;
use crate::app::secgroup;
use crate::ctx::{Caller, SharedCtx, Work};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::lifecycle::{self, Decision};
use crate::resources::{image, job, network, page, paging, path_id, state_filter, validate_name};
use crate::scheduler::{self, Demand};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::agent::{AgentError, Hypervisor};
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

pub(crate) async fn fetch_row<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
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
    // What the instance refers to must still exist at commit: a concurrent delete of any
    // of them locks the same row and then sees this instance (or finds the row gone).
    if !db::lock(&mut tx, db::Lock::Image, p.image.id.as_str()).await? {
        return Err(ApiError::not_found("image", &p.image.id));
    }
    if let Some(k) = &p.ssh_key {
        if !db::lock(&mut tx, db::Lock::KeyPair, k.as_str()).await? {
            return Err(ApiError::not_found("key pair", k));
        }
    }
    for planned in &p.interfaces {
        if !db::lock(&mut tx, db::Lock::Network, planned.network.id.as_str()).await? {
            return Err(ApiError::not_found("network", &planned.network.id));
        }
        for g in &planned.security_groups {
            if !db::lock(&mut tx, db::Lock::SecurityGroup, g.as_str()).await? {
                return Err(ApiError::not_found("security group", g));
            }
        }
    }
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

#[utoipa::path(post, path = "/api/v1/instances", tag = "instances", request_body = CreateInstance,
    responses((status = 202, body = Accepted<Instance>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/instances", tag = "instances", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Instance>), (status = 400, body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/instances/{id}", tag = "instances", params(("id" = String, Path)),
    responses((status = 200, body = Instance), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Instance>> {
    Ok(Json(fetch(&ctx, &caller, &path_id("instance", &id)?).await?))
}

/// Records the intent of one action in one transaction that holds the instance's lock,
/// so the decision is made on the state as it is at commit; the dispatcher sends the
/// ensure afterwards.
async fn act(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    action: InstanceAction,
) -> ApiResult<(StatusCode, Accepted<Instance>)> {
    let account = &caller.account_id;
    let action_name = format!("instance.{action}");
    // Placement candidates are read before the transaction (the reservation re-checks).
    let before = fetch_own(ctx, caller, id).await?;
    let candidates = match lifecycle::decide(action, before.state()?) {
        Decision::Apply(p) if p.schedule => {
            let d = Demand {
                hypervisor: before.hypervisor.parse().map_err(ApiError::internal)?,
                cpus: before.cpus as u32,
                memory_mib: before.memory_mib as u32,
            };
            Some((d, scheduler::candidates(&ctx.db, d, before.last_host_id.as_deref()).await?))
        }
        _ => None,
    };
    let mut tx = ctx.db.begin().await?;
    db::lock(&mut tx, db::Lock::Instance, id.as_str()).await?;
    let row = match fetch_row(&mut *tx, id.as_str()).await? {
        Some(r) if r.account_id == account.as_str() => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    let plan = match lifecycle::decide(action, row.state()?) {
        Decision::Refuse(why) => return Err(ApiError::conflict("invalid_state", format!("{why} ({id})"))),
        Decision::AlreadyDone(msg) => {
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
    if host.is_none() && !plan.schedule {
        // No host holds it: stop and terminate complete at once.
        new_state = match plan.goal {
            InstanceGoal::Terminated => InstanceState::Terminated,
            InstanceGoal::Stopped => InstanceState::Stopped,
            _ => return Err(ApiError::conflict("invalid_state", format!("instance {id} has no host; start it first"))),
        };
    }
    sqlx::query(
        "UPDATE instances SET state = $1, goal = $2, spec_gen = spec_gen + 1, reboot_gen = reboot_gen + $3,
             failure_reason = NULL, ensure_sent_at = 0, updated_at = $4
         WHERE id = $5",
    )
    .bind(new_state.as_str())
    .bind(plan.goal.as_str())
    .bind(plan.reboot as i64)
    .bind(db::now())
    .bind(id.as_str())
    .execute(&mut *tx)
    .await?;
    if plan.schedule {
        // The state changed since the candidates were read: decide again.
        let Some((d, cands)) = &candidates else {
            return Err(ApiError::Busy(format!("instance {id} changed concurrently")));
        };
        let h = scheduler::reserve(&mut tx, *d, cands).await?;
        sqlx::query("UPDATE instances SET host_node_id = $1 WHERE id = $2")
            .bind(h.as_str())
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        host = Some(h.to_string());
        // The interfaces move to the new host: a new generation, re-sent until its
        // nwagent has them.
        sqlx::query("UPDATE vifs SET spec_gen = spec_gen + 1 WHERE instance_id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    let mut removed = Removed::default();
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
    removed.enqueue(ctx);
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

/// What an instance's end released, for the dispatcher to tell the agents.
#[derive(Default)]
pub(crate) struct Removed {
    /// Interfaces to unplug.
    pub vifs: Vec<String>,
    /// Groups whose members' address lists changed.
    pub groups: Vec<String>,
    /// Volumes detached by the end, whose exports sta withdraws.
    pub volumes: Vec<String>,
}

impl Removed {
    fn enqueue(&self, ctx: &SharedCtx) {
        interface::enqueue_groups(ctx, &self.groups);
        for v in &self.volumes {
            if let Ok(v) = v.parse() {
                ctx.enqueue(Work::Volume(v));
            }
        }
    }
}

/// The bookkeeping of an instance that is gone: interfaces removed, volumes detached.
async fn finalize_terminated(tx: &mut db::Tx<'_>, row: &Row) -> ApiResult<Removed> {
    let (vifs, groups) = interface::remove_for_instance(tx, &row.id).await?;
    let volumes: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached', 'detaching') ORDER BY id",
    )
    .bind(&row.id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE volumes SET instance_id = NULL, state = 'available', spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $1
         WHERE instance_id = $2 AND state IN ('attaching', 'attached', 'detaching')",
    )
    .bind(db::now())
    .bind(&row.id)
    .execute(&mut **tx)
    .await?;
    for (v,) in &volumes {
        // Attach and detach jobs end with the instance.
        job::finish(tx, v, "available").await?;
        job::fail_all(tx, v, &format!("instance {} was terminated", row.id)).await?;
    }
    Ok(Removed { vifs, groups, volumes: volumes.into_iter().map(|v| v.0).collect() })
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

/// Folds one hva report into the model. The instance, its host's reservation, its jobs,
/// its interfaces and its volumes change in one transaction that holds the instance's
/// lock; a failure applies none of it and leaves the report unacked, to come again.
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: InstanceReport) -> ApiResult<()> {
    let mut tx = ctx.db.begin().await?;
    db::lock(&mut tx, db::Lock::Instance, r.id.as_str()).await?;
    let Some(row) = fetch_row(&mut *tx, r.id.as_str()).await? else {
        drop(tx);
        if r.state != ObservedInstance::Absent {
            garbage(ctx, node, &r).await;
        }
        return Ok(());
    };
    if row.state == InstanceState::Terminated.as_str() || row.host_node_id.as_deref() != Some(node) {
        drop(tx);
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
    let out = lifecycle::on_report(row.goal()?, r.state);
    let failure = if out.state == InstanceState::Failed {
        Some(r.reason.clone().unwrap_or_else(|| "the host reported a failure without a reason".into()))
    } else {
        None
    };
    sqlx::query(
        "UPDATE instances SET state = $1, goal = $2, report_gen = $3, failure_reason = $4, updated_at = $5,
             host_node_id = CASE WHEN $6 = 1 THEN NULL ELSE host_node_id END,
             last_host_id = CASE WHEN $6 = 1 THEN host_node_id ELSE last_host_id END
         WHERE id = $7",
    )
    .bind(out.state.as_str())
    .bind(out.goal.as_str())
    .bind(gen as i64)
    .bind(&failure)
    .bind(db::now())
    .bind(out.release_host as i64)
    .bind(&row.id)
    .execute(&mut *tx)
    .await?;
    if out.release_host {
        scheduler::release(&mut tx, node, row.cpus, row.memory_mib).await?;
    }
    let mut removed = Removed::default();
    if out.state == InstanceState::Terminated {
        removed = finalize_terminated(&mut tx, &row).await?;
    }
    // Jobs and volume attachments follow the new state.
    if let Some(f) = &failure {
        job::fail_all(&mut tx, &row.id, f).await?;
    } else {
        job::finish(&mut tx, &row.id, out.state.as_str()).await?;
        if out.state == InstanceState::Running {
            for t in job::running_targets(&mut tx, &row.id).await? {
                if t.strip_prefix("reboot:").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n <= r.reboot_gen) {
                    job::finish(&mut tx, &row.id, &t).await?;
                }
            }
        }
    }
    let detached = crate::resources::volume::on_instance_report(&mut tx, &row.id, &r.volumes, out.state).await?;
    tx.commit().await?;
    if out.state.as_str() != row.state {
        tracing::info!(instance = %r.id, from = %row.state, to = %out.state, "instance state");
    }
    for v in &removed.vifs {
        if let Ok(v) = v.parse() {
            ctx.enqueue(Work::UnplugInterface(v, node.to_owned()));
        }
    }
    removed.enqueue(ctx);
    for v in detached {
        // Detached from the guest: sta can withdraw the export now.
        ctx.enqueue(Work::Volume(v));
    }
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
