//! Instances: create (validate, place, reserve, allocate addresses, record intent) and
//! the lifecycle actions. Each request is one transaction; the ensure leaves afterwards
//! through the dispatcher ([`crate::controller::instance`]). Nothing here waits on an
//! agent, except reading the console, which is a read of the agent's own data.

use crate::app::authz;
use crate::app::interface::{self, Planned};
use crate::app::keypair;
use crate::app::lifecycle::{self, Decision};
use crate::app::quota;
use crate::app::scheduler::{self, Constraints, Demand};
use crate::app::secgroup;
use crate::app::{image, network};
use crate::app::{page, paging_of, state_filter, validate_name, Outcome};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::interface::GroupChange;
use crate::datastore::job;
use crate::datastore::{self as db, instance as store};
use crate::error::{ApiError, ApiResult};
use std::sync::Arc;
use vdc_schema::agent::{AgentError, Hypervisor};
use vdc_schema::api::{Accepted, ConsoleLog, CreateInstance, Instance, ListQuery, Page, QuotaKey};
use vdc_schema::bus::AgentKind;
use vdc_schema::id::*;
use vdc_schema::{InstanceAction, InstanceGoal, InstanceState};

mod group;
pub use group::Creates;

/// Rows to API objects, with their interfaces and volumes fetched in two range queries.
async fn to_api(conn: &mut db::Conn, account: &str, rows: Vec<store::View>) -> ApiResult<Vec<Instance>> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else { return Ok(vec![]) };
    let (first, last) = (first.id.clone(), last.id.clone());
    let mut ifaces = interface::for_instances(conn, account, &first, &last).await?.into_iter().peekable();
    let mut vols = store::attached_volumes(conn, account, &first, &last).await?.into_iter().peekable();
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

/// An instance of the caller's, or 404.
async fn fetch_own(ctx: &SharedCtx, caller: &Caller, id: &InstanceId) -> ApiResult<store::Row> {
    match store::get(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("instance", id)),
    }
}

// Reads take one connection for all their statements: taking one from the pool costs
// about as much as a statement (`vdc-bench`: 1.6 × the rate for GET's four statements).
/// The instance as the API shows it: from the read model while current (`app::views`),
/// else from SQL.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &InstanceId) -> ApiResult<Arc<Instance>> {
    let (gen, account) = (ctx.events.generation(), caller.account_id.as_str());
    if let Some(i) = ctx.views.instance(gen, account, id.as_str()) {
        return Ok(i);
    }
    let mut conn = ctx.db.acquire().await?;
    let row = match store::view(&mut conn, id.as_str()).await? {
        Some(r) if r.account_id == account => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    let i = Arc::new(to_api(&mut conn, account, vec![row]).await?.remove(0));
    ctx.views.put_instance(gen, account, id.as_str(), i.clone());
    Ok(i)
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Arc<Page<Instance>>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::InstanceId>(&ListQuery {
        all_accounts: None,
        address: None,
        state: None,
        ..q.clone()
    })?;
    let state = state_filter::<InstanceState>(q)?;
    let all = q.all_accounts == Some(true);
    if all {
        authz::check(caller, authz::Op::Admin).map_err(|_| {
            ApiError::Forbidden("only an admin's token lists every account's instances (all_accounts)".into())
        })?;
    }
    let address = match q.address.as_deref() {
        None => String::new(),
        Some(a) => a
            .parse::<std::net::Ipv4Addr>()
            .map_err(|_| {
                ApiError::bad("invalid_address", format!("address {a:?} is not an IPv4 address (as 10.0.0.5)"))
            })?
            .to_string(),
    };
    // The read model keeps an account's plain pages, what the console and the CLI poll.
    let cached = !all && address.is_empty();
    let gen = ctx.events.generation();
    let key = crate::app::views::ListKey {
        account: caller.account_id.to_string(),
        limit,
        cursor,
        state: q.state.clone(),
        name: q.name.clone(),
    };
    if let Some(p) = cached.then(|| ctx.views.list(gen, &key)).flatten() {
        return Ok(p);
    }
    let mut conn = ctx.db.acquire().await?;
    let since = crate::app::gone_listed_since();
    let account = (!all).then_some(&caller.account_id);
    let rows = store::list(&mut conn, account, &key.cursor, &state, q.name.as_deref(), &address, &since, limit).await?;
    let items = to_api(&mut conn, account.map_or("", |a| a.as_str()), rows).await?;
    let p = Arc::new(page(items, limit, |i| i.id.to_string()));
    if cached {
        ctx.views.put_list(gen, key, p.clone());
    }
    Ok(p)
}

struct Prepared {
    name: String,
    image: vdc_schema::api::Image,
    demand: Demand,
    ssh_key: Option<KeyPairId>,
    user_data: Option<String>,
    interfaces: Vec<Planned>,
    root_disk_size: Option<u64>,
    constraints: Constraints,
}

const MIB: u64 = 1 << 20;

/// Whether `image` can boot on `hypervisor` as asked, refusing what would be ignored;
/// true when it needs a host with UEFI firmware. (The host refuses to shrink a disk whose
/// virtual size dcmgr has not read: an operator's host file.)
pub fn check_boot(
    image: &vdc_schema::api::Image,
    hypervisor: vdc_schema::HypervisorKind,
    memory_mib: u32,
    root_disk_size: Option<u64>,
) -> ApiResult<bool> {
    use vdc_schema::{BootMode, HypervisorKind, ImageFormat};
    if !image::boots(hypervisor, image.format) {
        // Images registered before formats were checked against hypervisors.
        return Err(ApiError::bad(
            "unsupported_format",
            format!("hypervisor {hypervisor} cannot boot image {}, a {} image", image.id, image.format),
        ));
    }
    if let Some(min) = image.min_memory {
        if u64::from(memory_mib) * MIB < min {
            return Err(ApiError::bad(
                "memory_below_image_minimum",
                format!(
                    "image {} needs at least {} MiB of memory (min_memory {min} bytes); memory_mib is {memory_mib}",
                    image.id,
                    min.div_ceil(MIB)
                ),
            ));
        }
    }
    let disk = matches!(image.format, ImageFormat::Qcow2 | ImageFormat::Raw);
    let container = hypervisor == HypervisorKind::Lxc;
    if let Some(size) = root_disk_size {
        if !(1..=image::MAX_BYTES).contains(&size) {
            return Err(ApiError::bad("invalid_size", "root_disk_size is a size in bytes, from 1 to 2^50"));
        }
        if container && size < CONTAINER_ROOT_MIN {
            return Err(ApiError::bad(
                "root_disk_too_small",
                format!(
                    "root_disk_size {size} bytes is below a container's smallest root filesystem of {} MiB",
                    CONTAINER_ROOT_MIN / MIB
                ),
            ));
        }
        if !disk && !container {
            return Err(ApiError::bad(
                "root_disk_not_applicable",
                format!(
                    "image {} is a {} image: it has no root disk to size; leave root_disk_size out",
                    image.id, image.format
                ),
            ));
        }
        if let Some(min) = image.min_disk.filter(|m| size < *m) {
            return Err(ApiError::bad(
                "root_disk_too_small",
                format!("root_disk_size {size} bytes is below image {}'s min_disk of {min} bytes", image.id),
            ));
        }
        if let Some(disk) = image.virtual_size.filter(|v| size < *v) {
            let why = match container {
                true => format!("root_disk_size {size} bytes is below the {disk} bytes image {} unpacks to", image.id),
                false => format!(
                    "root_disk_size {size} bytes is below the disk image {} holds ({disk} bytes): a disk only grows",
                    image.id
                ),
            };
            return Err(ApiError::bad("root_disk_too_small", why));
        }
    }
    Ok(!container && disk && image.kernel_id.is_none() && image.boot_mode == BootMode::Uefi)
}

/// The smallest root filesystem a container may be given.
pub const CONTAINER_ROOT_MIN: u64 = 64 * MIB;

/// The root disk size of an instance created without one: the image's own size, or its
/// min_disk where that is larger (a disk below the image's declared minimum is refused
/// when asked for, so it is not made when nothing was asked). A container's root
/// filesystem is [`scheduler::CONTAINER_ROOT_DEFAULT`], or its image's min_disk if larger,
/// or half as much again as its image unpacks to (room for the file system's own blocks
/// and the guest's first writes).
fn grown_to_minimum(image: &vdc_schema::api::Image, hypervisor: vdc_schema::HypervisorKind) -> Option<u64> {
    use vdc_schema::ImageFormat;
    if hypervisor == vdc_schema::HypervisorKind::Lxc {
        let unpacked = image.virtual_size.unwrap_or(0).saturating_mul(3) / 2;
        let size = image.min_disk.unwrap_or(0).max(unpacked.div_ceil(MIB) * MIB);
        return Some(size.max(scheduler::CONTAINER_ROOT_DEFAULT));
    }
    let disk = matches!(image.format, ImageFormat::Qcow2 | ImageFormat::Raw);
    image.min_disk.filter(|m| disk && image.virtual_size.is_none_or(|v| v < *m))
}

/// The vCPUs and memory an instance may have (a create, and an instance in a bundle).
pub fn check_shape(cpus: u32, memory_mib: u32) -> ApiResult<()> {
    if !(1..=128).contains(&cpus) {
        return Err(ApiError::bad("invalid_cpus", format!("cpus must be between 1 and 128, got {cpus}")));
    }
    if !(32..=4 * 1024 * 1024).contains(&memory_mib) {
        return Err(ApiError::bad(
            "invalid_memory",
            format!("memory_mib must be between 32 and 4194304, got {memory_mib}"),
        ));
    }
    Ok(())
}

async fn prepare(ctx: &SharedCtx, caller: &Caller, req: CreateInstance) -> ApiResult<Prepared> {
    if let Some(n) = &req.name {
        validate_name("instance", n)?;
    }
    check_shape(req.cpus, req.memory_mib)?;
    if req.user_data.as_ref().is_some_and(|u| u.len() > 64 * 1024) {
        return Err(ApiError::bad("user_data_too_large", "user_data must be at most 64 KiB"));
    }
    if req.interfaces.len() > 8 {
        return Err(ApiError::bad("too_many_interfaces", "an instance has at most 8 interfaces"));
    }
    let image = image::fetch_usable(ctx, caller, &req.image_id).await?;
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
    let uefi = check_boot(&image, hypervisor, req.memory_mib, req.root_disk_size)?;
    if let Some(k) = &req.ssh_key_id {
        keypair::fetch(ctx, caller, k).await?;
    }
    let mut interfaces = Vec::new();
    for (i, iface) in req.interfaces.iter().enumerate() {
        let net = network::fetch(ctx, caller, &iface.network_id).await?;
        if req.interfaces[..i].iter().any(|o| o.network_id == iface.network_id) {
            return Err(ApiError::bad("duplicate_network", format!("network {} is given twice", net.id)));
        }
        for (j, g) in iface.security_groups.iter().enumerate() {
            if iface.security_groups[..j].contains(g) {
                return Err(ApiError::bad(
                    "duplicate_security_group",
                    format!("security group {g} is given twice for the interface on network {}", net.id),
                ));
            }
            secgroup::fetch(ctx, caller, g).await?;
        }
        let fixed_ip = iface.ip.as_deref().map(|ip| interface::check_fixed_ip(&net, ip)).transpose()?;
        interfaces.push(Planned { network: net, security_groups: iface.security_groups.clone(), fixed_ip, mac: None });
    }
    let zone = req.zone.unwrap_or_default();
    if !zone.is_empty() {
        crate::app::node::check_zone(&zone)?;
    }
    if req.host_labels.len() > 16 {
        return Err(ApiError::bad("invalid_label", "host_labels holds at most 16 labels"));
    }
    for (k, v) in &req.host_labels {
        crate::app::node::check_label(k, v)?;
    }
    let group = match &req.server_group {
        Some(g) => Some(crate::app::server_group::resolve(ctx, caller, g).await?),
        None => None,
    };
    let constraints = Constraints { zone, labels: req.host_labels.into_iter().collect(), group };
    let root_disk_size = req.root_disk_size.or_else(|| grown_to_minimum(&image, hypervisor));
    Ok(Prepared {
        constraints,
        name: req.name.unwrap_or_default(),
        demand: Demand {
            hypervisor,
            cpus: req.cpus,
            memory_mib: req.memory_mib,
            disk_mib: scheduler::disk_mib(hypervisor, root_disk_size.or(image.virtual_size)),
            uefi,
        },
        root_disk_size,
        image,
        ssh_key: req.ssh_key_id,
        user_data: req.user_data,
        interfaces,
    })
}

/// Records one create in `tx`: the account's quota, the host's reservation, the instance,
/// its interfaces and its job. What it returns holds once `tx` commits.
async fn insert(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    caller: &Caller,
    p: &Prepared,
    candidates: &[String],
) -> ApiResult<Accepted<Instance>> {
    // The account's row first (quotas), then the host: the order every create keeps.
    quota::enforce_side_by_side(
        tx,
        ctx,
        &caller.account_id,
        &[
            (QuotaKey::Instances, 1),
            (QuotaKey::Vcpus, u64::from(p.demand.cpus)),
            (QuotaKey::MemoryMib, u64::from(p.demand.memory_mib)),
            (QuotaKey::RootDiskGib, u64::from(p.demand.disk_mib)),
        ],
    )
    .await?;
    // Then the server group: placements into it decide one after the other.
    let candidates = scheduler::candidates_now(ctx, p.demand, &p.constraints, candidates);
    let candidates = scheduler::lock_group(ctx, tx, &p.constraints, &candidates).await?;
    let host = scheduler::reserve_later(ctx, tx, p.demand, &candidates).await?;
    // What the instance refers to must still exist at commit: a concurrent delete of any
    // of them locks the same row and then sees this instance (or finds the row gone).
    if !db::lock_referred(tx, db::Lock::Image, p.image.id.as_str()).await? {
        return Err(ApiError::not_found("image", &p.image.id));
    }
    if let Some(k) = &p.ssh_key {
        if !db::lock_referred(tx, db::Lock::KeyPair, k.as_str()).await? {
            return Err(ApiError::not_found("key pair", k));
        }
    }
    for planned in &p.interfaces {
        if !db::lock(tx, db::Lock::Network, planned.network.id.as_str()).await? {
            return Err(ApiError::not_found("network", &planned.network.id));
        }
        for g in &planned.security_groups {
            if !db::lock(tx, db::Lock::SecurityGroup, g.as_str()).await? {
                return Err(ApiError::not_found("security group", g));
            }
        }
    }
    let id = InstanceId::generate();
    let name = if p.name.is_empty() { id.to_string() } else { p.name.clone() };
    let now = db::now();
    // The rows are sent with the create's savepoint or commit (one round trip).
    store::insert_later(
        tx,
        &store::New {
            id: &id,
            account: &caller.account_id,
            name: &name,
            image: &p.image.id,
            hypervisor: p.demand.hypervisor.as_str(),
            cpus: p.demand.cpus,
            memory_mib: p.demand.memory_mib,
            ssh_key: p.ssh_key.as_ref(),
            user_data: p.user_data.as_deref(),
            root_disk_size: p.root_disk_size,
            host: &host,
            now: &now,
            server_group: p.constraints.group.as_ref().map(|g| g.id.as_str()),
            zone: &p.constraints.zone,
            labels: &crate::datastore::host::join_labels(&p.constraints.labels.iter().cloned().collect()),
            disk_mib: p.demand.disk_mib,
        },
    )
    .await?;
    let mut interfaces = Vec::new();
    for (pos, planned) in p.interfaces.iter().enumerate() {
        interfaces.push(interface::insert(tx, &caller.account_id, &id, pos, planned, true).await?);
    }
    let job = job::start_first(tx, &caller.account_id, "instance.create", id.as_str(), "running").await?;
    let t = db::parse_time(&now);
    let instance = Instance {
        id,
        account_id: caller.account_id.clone(),
        name,
        state: InstanceState::Pending,
        goal: InstanceGoal::Running,
        image_id: p.image.id.clone(),
        hypervisor: p.demand.hypervisor,
        cpus: p.demand.cpus,
        memory_mib: p.demand.memory_mib,
        host_node_id: Some(host),
        ssh_key_id: p.ssh_key.clone(),
        server_group_id: p.constraints.group.as_ref().map(|g| g.id.parse()).transpose().map_err(ApiError::internal)?,
        root_disk_size: p.root_disk_size,
        interfaces,
        volumes: vec![],
        failure_reason: None,
        created_at: t,
        updated_at: t,
    };
    Ok(Accepted { job, resource: instance })
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateInstance) -> ApiResult<Accepted<Instance>> {
    let p = prepare(ctx, caller, req).await?;
    if db::one_writer(&ctx.db) {
        return ctx.creates.submit(ctx, caller.clone(), p).await;
    }
    place(ctx, caller, &p).await
}

/// Places and records one create in a transaction of its own (retried whole when it
/// loses a race), then queues its ensures.
async fn place(ctx: &SharedCtx, caller: &Caller, p: &Prepared) -> ApiResult<Accepted<Instance>> {
    let accepted = db::retry(|| async {
        let candidates = scheduler::candidates(ctx, p.demand, &p.constraints).await?;
        let mut tx = db::begin(&ctx.db).await?;
        let accepted = insert(&mut tx, ctx, caller, p, &candidates).await?;
        if let Err(e) = tx.commit().await {
            // Its reservation, sent with the commit, may be what failed: the model took it.
            ctx.room.invalidate();
            return Err(e.into());
        }
        ctx.events.wake();
        Ok(accepted)
    })
    .await?;
    ctx.creates.made_alone();
    queue_ensures(ctx, &accepted);
    Ok(accepted)
}

/// Hands a committed create to the dispatcher.
fn queue_ensures(ctx: &SharedCtx, accepted: &Accepted<Instance>) {
    let inst = &accepted.resource;
    tracing::info!(instance = %inst.id, job = %accepted.job.id, host = ?inst.host_node_id, "instance accepted");
    ctx.enqueue(Work::Instance(inst.id.clone()));
    for i in &inst.interfaces {
        ctx.enqueue(Work::Interface(i.id.clone()));
        for g in &i.security_groups {
            ctx.enqueue(Work::SecurityGroup(g.clone(), GroupChange::Members));
        }
    }
}

/// Carries out a lifecycle action (terminate for DELETE), retried whole when it loses a
/// race.
pub async fn act(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    action: InstanceAction,
) -> ApiResult<(Outcome, Accepted<Instance>)> {
    db::retry(|| act_once(ctx, caller, id, action)).await
}

/// Records the intent of one action in one transaction that holds the instance's lock,
/// so the decision is made on the state as it is at commit; the dispatcher sends the
/// ensure afterwards.
async fn act_once(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    action: InstanceAction,
) -> ApiResult<(Outcome, Accepted<Instance>)> {
    let account = &caller.account_id;
    let action_name = format!("instance.{action}");
    // Placement candidates are read before the transaction (the reservation re-checks).
    let before = fetch_own(ctx, caller, id).await?;
    let candidates = match lifecycle::decide(action, before.state()?) {
        Decision::Apply(p) if p.schedule => {
            let image = crate::controller::image::fetch_any(&ctx.db, &before.image_id).await?;
            let hypervisor = before.hypervisor.parse().map_err(ApiError::internal)?;
            let d = Demand {
                hypervisor,
                cpus: before.cpus as u32,
                memory_mib: before.memory_mib as u32,
                disk_mib: before.disk_mib as u32,
                uefi: check_boot(&image, hypervisor, before.memory_mib as u32, None)?,
            };
            // What it asked at create holds for every placement.
            let c = Constraints {
                zone: before.placement_zone.clone(),
                labels: crate::datastore::host::split_labels(&before.placement_labels).into_iter().collect(),
                group: crate::app::server_group::of_instance(
                    ctx,
                    &before.account_id,
                    before.server_group_id.as_deref(),
                )
                .await?,
            };
            let cands = match before.last_host_id.as_deref() {
                Some(last) => scheduler::on_last_host(ctx, d, &c, id.as_str(), last).await?,
                None => scheduler::candidates(ctx, d, &c).await?,
            };
            Some((d, c, cands))
        }
        _ => None,
    };
    let mut tx = db::begin(&ctx.db).await?;
    let row = match store::lock_get(&mut tx, id.as_str()).await? {
        Some(r) if r.account_id == account.as_str() => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    let plan = match lifecycle::decide(action, row.state()?) {
        Decision::Refuse(why) => return Err(ApiError::conflict("invalid_state", format!("{why} ({id})"))),
        Decision::AlreadyDone(msg) => {
            let job = job::done(&mut tx, account, &action_name, id.as_str(), msg).await?;
            tx.commit().await?;
            ctx.events.wake();
            let inst = Arc::unwrap_or_clone(fetch(ctx, caller, id).await?);
            return Ok((Outcome::Already, Accepted { job, resource: inst }));
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
    store::set_intent(&mut tx, id.as_str(), new_state, plan.goal, plan.reboot).await?;
    if plan.schedule {
        // The state changed since the candidates were read: decide again.
        let Some((d, c, cands)) = &candidates else {
            return Err(ApiError::Busy(format!("instance {id} changed concurrently")));
        };
        let cands = scheduler::lock_group(ctx, &mut tx, c, cands).await?;
        let h = scheduler::reserve(ctx, &mut tx, *d, &cands, row.last_host_id.as_deref()).await?;
        store::place(&mut tx, id.as_str(), &h).await?;
        // Sent anew to the host: an unplug decided before this placement (an evacuation's)
        // no longer removes the ports.
        crate::datastore::interface::bump_instance(tx.conn().await?, id.as_str()).await?;
        host = Some(h.to_string());
    }
    let mut removed = Removed::default();
    if new_state == InstanceState::Terminated {
        removed = finalize_terminated(&mut tx, &row).await?;
        // Terminate wins over a capture (of a stopped or a running instance): its image
        // fails now, and the host's upload finds it no longer pending.
        let why = format!("instance {id} was terminated during the capture");
        crate::app::capture::fail_pending(&mut tx, id.as_str(), &why).await?;
    }
    let target = if plan.reboot { format!("reboot:{}", row.reboot_gen + 1) } else { plan.goal.as_str().to_owned() };
    let job = if matches!(new_state, InstanceState::Terminated | InstanceState::Stopped) {
        job::done(&mut tx, account, &action_name, id.as_str(), "done").await?
    } else {
        job::start(&mut tx, account, &action_name, id.as_str(), &target).await?
    };
    tx.commit().await?;
    ctx.events.wake();
    tracing::info!(instance = %id, job = %job.id, %action, host = ?host, "instance action accepted");
    removed.enqueue(ctx);
    ctx.enqueue(Work::Instance(id.clone()));
    if plan.schedule {
        for v in store::interface_ids(&ctx.db, id.as_str()).await? {
            if let Ok(v) = v.parse() {
                ctx.enqueue(Work::Interface(v));
            }
        }
    }
    let inst = Arc::unwrap_or_clone(fetch(ctx, caller, id).await?);
    Ok((Outcome::Applied, Accepted { job, resource: inst }))
}

/// What an instance's end released, for the dispatcher to tell the agents.
#[derive(Default)]
pub(crate) struct Removed {
    /// Interfaces to unplug, and the host whose nwagent holds their ports: the one the
    /// instance is on, or, stopped, the one it was last on (a stopped guest's ports stay
    /// there for its next start).
    pub vifs: Vec<String>,
    pub node: Option<String>,
    /// Groups whose members' address lists changed.
    pub groups: Vec<String>,
    /// Volumes detached by the end, whose exports sta withdraws.
    pub volumes: Vec<String>,
    /// MiB of root disk given back on `node`, for placement's model once committed (a
    /// create just after a terminate was refused `no_capacity` while the model lagged).
    pub disk_mib: u32,
}

impl Removed {
    pub(crate) fn enqueue(&self, ctx: &SharedCtx) {
        // Unplugged wherever they are: a stopped instance terminated left its port, its
        // DHCP reservation and its floating IP's NAT on its last host, and the next guest
        // given its address got none, and its floating IP answered from two routers
        // (red team, 2026-12-07).
        if let Some(node) = &self.node {
            ctx.room
                .gave_back(node, crate::datastore::host::Booking { cpus: 0, memory_mib: 0, disk_mib: self.disk_mib });
            for v in &self.vifs {
                if let Ok(v) = v.parse() {
                    ctx.enqueue(Work::UnplugInterface(v, node.clone(), 0));
                }
            }
        }
        interface::enqueue_groups(ctx, &self.groups);
        for v in &self.volumes {
            if let Ok(v) = v.parse() {
                ctx.enqueue(Work::Volume(v));
            }
        }
    }
}

/// The bookkeeping of an instance that is gone: interfaces removed, volumes detached.
pub(crate) async fn finalize_terminated(tx: &mut db::Tx<'_>, row: &store::Row) -> ApiResult<Removed> {
    let (vifs, groups) = interface::remove_for_instance(tx, &row.id).await?;
    let volumes = store::detach_all_volumes(tx, &row.id).await?;
    for v in &volumes {
        // Attach and detach jobs end with the instance.
        job::finish(tx, v, "available").await?;
        job::fail_all(tx, v, &format!("instance {} was terminated", row.id)).await?;
    }
    let node = row.host_node_id.clone().or_else(|| row.last_host_id.clone());
    // Its root disk goes with it from the host that kept it.
    if let Some(n) = &node {
        crate::datastore::host::release_disk(tx, n, row.disk_mib).await?;
    }
    Ok(Removed { vifs, node, groups, volumes, disk_mib: u32::try_from(row.disk_mib).unwrap_or(0) })
}

/// The console output the instance's (last) host kept.
pub async fn console(ctx: &SharedCtx, caller: &Caller, id: &InstanceId) -> ApiResult<ConsoleLog> {
    let row = fetch_own(ctx, caller, id).await?;
    let host = row.host_node_id.or(row.last_host_id).ok_or_else(|| {
        ApiError::conflict("no_console", format!("instance {id} has never run on a host, so it has no console output"))
    })?;
    let client = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(ApiError::internal)? };
    match client.console_log(id.clone()).await {
        Ok(output) => Ok(ConsoleLog { instance_id: id.clone(), output }),
        Err(AgentError::NotFound(_)) => Ok(ConsoleLog { instance_id: id.clone(), output: String::new() }),
        Err(e) => Err(ApiError::Unavailable { code: "agent_unavailable", message: format!("host {host}: {e}") }),
    }
}

/// The guest's hostname: the instance's name as a DNS label (its ID when nothing is left).
pub fn hostname(name: &str, id: &str) -> String {
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

#[cfg(test)]
mod tests {
    #[test]
    fn hostnames_are_dns_labels() {
        assert_eq!(super::hostname("Web Server #1", "i-x"), "web-server--1");
        assert_eq!(super::hostname("!!!", "i-x"), "i-x");
    }
}
