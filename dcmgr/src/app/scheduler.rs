//! Placement among online hosts that offer the hypervisor kind: `spread` (most free
//! memory, then free CPUs) or `pack` (least), as dcmgr's `placement` says, among the
//! hosts that pass the instance's [`Constraints`]: its zone, its host labels and its
//! server group's policy (hard policies filter; soft ones order first). A host holds its allocatable vCPUs and memory: its capacity times
//! dcmgr's allocation ratios (`Config::allocatable`, stored on the host row). The
//! reservation is one conditional UPDATE against them inside the caller's transaction, so
//! two concurrent creates can never book a host beyond them on either database.
//! The statements are in [`crate::datastore::host`], which also gives reservations back
//! ([`crate::datastore::host::release`]) when an instance leaves its host.

use crate::ctx::Ctx;
use crate::datastore::host as store;
use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::id::HostNodeId;
use vdc_schema::{BootMode, HypervisorKind, ServerGroupPolicy};

#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
    /// MiB of root disk booked on the host that keeps it: a disk image's full size (0 for
    /// a container, whose root has no size yet).
    pub disk_mib: u32,
    /// Needs a host with UEFI firmware (OVMF).
    pub uefi: bool,
}

impl Demand {
    pub fn booking(&self) -> store::Booking {
        store::Booking { cpus: self.cpus, memory_mib: self.memory_mib, disk_mib: self.disk_mib }
    }
}

/// The MiB of root disk an instance books: its disk image's size in bytes, rounded up;
/// for a container, its root filesystem's.
pub fn disk_mib(hypervisor: HypervisorKind, root_disk_bytes: Option<u64>) -> u32 {
    let bytes = root_size(hypervisor, root_disk_bytes).unwrap_or(0);
    u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX)
}

/// The root disk an instance of `hypervisor` has for the size it was given: that size,
/// or for a container given none [`CONTAINER_ROOT_DEFAULT`] (a disk image without one
/// keeps its image's size: None).
pub fn root_size(hypervisor: HypervisorKind, root_disk_bytes: Option<u64>) -> Option<u64> {
    match hypervisor {
        HypervisorKind::Lxc => Some(root_disk_bytes.unwrap_or(CONTAINER_ROOT_DEFAULT)),
        _ => root_disk_bytes,
    }
}

/// The root filesystem of a container given no size (one in a bundle, say): a file
/// system of its own of this size on its host.
pub const CONTAINER_ROOT_DEFAULT: u64 = 2 << 30;

/// A server group as placement sees it.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub policy: ServerGroupPolicy,
}

/// What an instance asks of its host besides room.
#[derive(Debug, Clone, Default)]
pub struct Constraints {
    /// '' for any zone.
    pub zone: String,
    /// Sorted by key; every one must be on the host.
    pub labels: Vec<(String, String)>,
    pub group: Option<Group>,
}

impl Constraints {
    pub fn filter(&self) -> store::Filter {
        store::Filter {
            zone: self.zone.clone(),
            labels: self.labels.clone(),
            group: self.group.as_ref().map(|g| (g.id.clone(), g.policy)),
        }
    }

    /// "in zone \"z1\" with labels ssd=true", or "" when nothing is asked.
    fn describe(&self) -> String {
        let mut s = String::new();
        if !self.zone.is_empty() {
            s.push_str(&format!(" in zone {:?}", self.zone));
        }
        if !self.labels.is_empty() {
            let l: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!(" with label{} {}", if l.len() == 1 { "" } else { "s" }, l.join(", ")));
        }
        s
    }
}

/// Candidate hosts, best first by the configured placement (read outside the
/// transaction; the UPDATE re-checks, and [`reserve`] re-checks the group's policy).
pub async fn candidates(ctx: &Ctx, d: Demand, c: &Constraints) -> ApiResult<Vec<String>> {
    let boot = d.uefi.then_some(BootMode::Uefi);
    let filter = c.filter();
    let ids = match ctx.room.candidates(&ctx.db, d.hypervisor, d.booking(), d.uefi, &filter).await? {
        Some(found) => found,
        None => {
            let b = d.booking();
            let asked = (b.cpus, b.memory_mib, b.disk_mib);
            store::candidates(&ctx.db, d.hypervisor, asked, boot, ctx.config.placement, &filter).await?
        }
    };
    if ids.is_empty() {
        return Err(no_host(ctx, d, c).await);
    }
    Ok(ids)
}

/// Where a stopped instance starts again: on `host`, its last one, or not now. hva keeps a
/// stopped guest's disk (or root file system) on that host; started on another, it would
/// boot a fresh copy of its image, and its old host would be told to remove the old one.
pub async fn on_last_host(ctx: &Ctx, d: Demand, c: &Constraints, instance: &str, host: &str) -> ApiResult<Vec<String>> {
    let id: HostNodeId = host.parse().map_err(ApiError::internal)?;
    let row = store::get_host(&ctx.db, &id).await?;
    let members = match &c.group {
        Some(g) => crate::datastore::server_group::member_hosts(&ctx.db, &g.id).await?,
        None => vec![],
    };
    start_on(host, row.as_ref(), &members, d, c, instance)?;
    Ok(vec![host.to_owned()])
}

/// Whether a stopped instance can start on its last host, `host` whose row is `row` (none:
/// removed), now, given
/// where its group's members are: the start waits for that host (offline), for room
/// there (full), for the group's other members to leave it, or for an admin to give the
/// host back the zone and labels the instance asked for.
pub fn start_on(
    host: &str,
    row: Option<&store::HostRow>,
    members: &[String],
    d: Demand,
    c: &Constraints,
    instance: &str,
) -> ApiResult<()> {
    // The row's state, as the reservation's conditional UPDATE and `vdc host list` see it.
    let Some(row) = row.filter(|r| r.state == "online") else {
        return Err(ApiError::Unavailable {
            code: "agent_unavailable",
            message: format!(
                "host {host}, which keeps the disk of instance {instance}, is offline; start the instance when the \
                 host is back (or terminate it)"
            ),
        });
    };
    let labels = store::split_labels(&row.labels);
    if (!c.zone.is_empty() && c.zone != row.zone) || c.labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return Err(unsatisfiable(format!(
            "instance {instance} asked for a host{}, and host {host}, which keeps its disk, is no longer one; an \
             admin can give the host back its zone and labels (vdc host zone|label)",
            c.describe()
        )));
    }
    if let Some(g) = &c.group {
        if allowed_by_policy(g.policy, members, &[host.to_owned()]).is_empty() {
            let why = match g.policy {
                ServerGroupPolicy::AntiAffinity => "another member runs there now",
                _ => "its other members run on another host now",
            };
            return Err(unsatisfiable(format!(
                "server group {} ({}) is {}: instance {instance} keeps its disk on host {host}, and {why}; stop that \
                 member first",
                g.name, g.id, g.policy
            )));
        }
    }
    if row.cpus_allocatable - row.cpus_used < i64::from(d.cpus)
        || row.memory_allocatable_mib - row.memory_used_mib < i64::from(d.memory_mib)
    {
        return Err(ApiError::Unprocessable {
            code: "no_capacity",
            message: format!(
                "host {host}, which keeps the disk of instance {instance}, has no room for its {} vCPUs and {} MiB \
                 now; try again when instances there have stopped",
                d.cpus, d.memory_mib
            ),
        });
    }
    Ok(())
}

/// Keeps the candidates `policy` allows given the hosts the group's members are on now
/// (`member_hosts`, read under the group's lock): anti-affinity, none of those;
/// affinity, only those once there is one. Soft policies keep every candidate.
pub fn allowed_by_policy(policy: ServerGroupPolicy, member_hosts: &[String], candidates: &[String]) -> Vec<String> {
    match policy {
        ServerGroupPolicy::AntiAffinity => candidates.iter().filter(|c| !member_hosts.contains(c)).cloned().collect(),
        ServerGroupPolicy::Affinity if !member_hosts.is_empty() => {
            candidates.iter().filter(|c| member_hosts.contains(c)).cloned().collect()
        }
        _ => candidates.to_vec(),
    }
}

/// A new instance's candidates picked again from the model just before it reserves (those
/// read before when the model has none, as for a server group): a burst of creates read
/// theirs at once and all proposed the same few hosts, and on PostgreSQL 32 in flight
/// queued four to a host's row.
pub fn candidates_now(ctx: &Ctx, d: Demand, c: &Constraints, read: &[String]) -> Vec<String> {
    let now = ctx.room.candidates_now(d.hypervisor, d.booking(), d.uefi, &c.filter());
    if now.is_empty() {
        read.to_vec()
    } else {
        now
    }
}

/// Locks the instance's server group (if any) and narrows `candidates` to what its
/// policy allows now, in the order of the room their hosts have now (a soft policy's
/// preference kept). Called in the placing transaction after the account's or the
/// instance's lock and before [`reserve`]: placements into one group run one after the
/// other, each seeing where the previous ones went.
pub async fn lock_group(
    ctx: &Ctx,
    tx: &mut db::Tx<'_>,
    c: &Constraints,
    candidates: &[String],
) -> ApiResult<Vec<String>> {
    let Some(g) = &c.group else {
        let mut ranked = candidates.to_vec();
        rank_now(ctx, None, &mut ranked);
        return Ok(ranked);
    };
    // The members placed before this one in `tx` are counted (the lock sends them).
    if !crate::datastore::server_group::lock(tx, &g.id).await? {
        return Err(ApiError::not_found("server group", &g.id));
    }
    let hosts = crate::datastore::server_group::member_hosts(tx.conn().await?, &g.id).await?;
    let mut allowed = allowed_by_policy(g.policy, &hosts, candidates);
    if allowed.is_empty() {
        // Placed meanwhile where this one may not go: read the candidates again.
        return Err(ApiError::Busy(format!("server group {} changed concurrently", g.id)));
    }
    rank_now(ctx, Some(g.policy), &mut allowed);
    Ok(allowed)
}

/// Puts candidates read before the placing transaction in the order of the hosts' room
/// now (a burst of creates would otherwise all try the host best when they read), unless
/// a soft group policy ordered them: that order is its preference.
pub fn rank_now(ctx: &Ctx, policy: Option<ServerGroupPolicy>, candidates: &mut [String]) {
    if !matches!(policy, Some(ServerGroupPolicy::SoftAffinity | ServerGroupPolicy::SoftAntiAffinity)) {
        ctx.room.rerank(candidates);
    }
}

/// Reserves `d` on the first candidate that still has room (and takes new instances,
/// unless it is `last_host`, where the instance was stopped: a cordon keeps new instances
/// out, not those that live there). Must be the first write of `tx`, so that on SQLite
/// the transaction takes the write lock before it reads anything.
pub async fn reserve(
    ctx: &Ctx,
    tx: &mut db::Tx<'_>,
    d: Demand,
    candidates: &[String],
    last_host: Option<&str>,
) -> ApiResult<HostNodeId> {
    for id in candidates {
        // Taken in the model before the round trip, so that placements beside this one
        // rank the host by what it leaves: taken after, a burst of creates on PostgreSQL
        // queued on one host's row (2 ms a reservation, measured with `vdc-bench`).
        let returning = last_host == Some(id.as_str());
        // Returning, its disk is booked there still.
        let b = store::Booking { disk_mib: if returning { 0 } else { d.disk_mib }, ..d.booking() };
        ctx.room.took(id, b);
        match store::try_reserve(tx, id, b, returning).await {
            Ok(true) => return id.parse().map_err(ApiError::internal),
            Ok(false) => ctx.room.gave_back(id, b),
            Err(e) => {
                ctx.room.invalidate();
                return Err(e.into());
            }
        }
    }
    // Every candidate filled up meanwhile (or went offline, or was cordoned): let the caller's retry look
    // again, at the hosts as they are.
    ctx.room.invalidate();
    Err(ApiError::Busy("candidate hosts filled up concurrently".into()))
}

/// As [`reserve`] for a new instance, the reservation sent with the create's other rows
/// ([`store::reserve_later`]). On SQLite, whose one writer keeps the placement model
/// exact, that is its first candidate (the model's choice); should the host fill up or go
/// meanwhile, the round trip that sends it fails as a lost race and the create is made
/// again. PostgreSQL reserves at once, as [`reserve`].
pub async fn reserve_later(ctx: &Ctx, tx: &mut db::Tx<'_>, d: Demand, candidates: &[String]) -> ApiResult<HostNodeId> {
    let Some(id) = candidates.first().filter(|_| db::one_writer(&ctx.db)) else {
        return reserve(ctx, tx, d, candidates, None).await;
    };
    store::reserve_later(tx, id, d.booking()).await?;
    ctx.room.took(id, d.booking());
    id.parse().map_err(ApiError::internal)
}

/// Explains why nothing fits, naming the constraint that cannot be met and never the
/// cloud's free capacity.
async fn no_host(ctx: &Ctx, d: Demand, c: &Constraints) -> ApiError {
    let pool = &ctx.db;
    if d.uefi {
        match store::count_bootable(pool, d.hypervisor, BootMode::Uefi).await {
            Ok(0) => return no_uefi(d.hypervisor),
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
    let hosts = c.filter().without_group();
    let free = match store::free_capacity(pool, d.hypervisor, &hosts).await {
        Ok(v) => v,
        Err(e) => return e.into(),
    };
    let (n, mem, cpus) = (free.hosts, free.max_free_mib, free.max_free_cpus);
    let asked = !c.zone.is_empty() || !c.labels.is_empty();
    if n == 0 && free.cordoned > 0 {
        return ApiError::Unprocessable {
            code: "no_capacity",
            message: format!(
                "no {} host{} takes new instances now (an admin took {} out of placement); try again later",
                d.hypervisor,
                c.describe(),
                if free.cordoned == 1 { "it" } else { "them" }
            ),
        };
    }
    if n == 0 && asked {
        return unsatisfiable(format!(
            "no online {} host is found{}; ask for another zone or other labels (an admin sets them: vdc host \
             zone|label)",
            d.hypervisor,
            c.describe()
        ));
    }
    if let Some(g) =
        c.group.as_ref().filter(|g| matches!(g.policy, ServerGroupPolicy::Affinity | ServerGroupPolicy::AntiAffinity))
    {
        // Would it fit without the group's policy? Then the policy is what cannot be met.
        let boot = d.uefi.then_some(BootMode::Uefi);
        let b = d.booking();
        let asked = (b.cpus, b.memory_mib, b.disk_mib);
        match store::candidates(pool, d.hypervisor, asked, boot, ctx.config.placement, &hosts).await {
            Ok(found) if !found.is_empty() => return group_unsatisfiable(g, d),
            Ok(_) => {}
            Err(e) => return e.into(),
        }
    }
    if asked {
        tracing::warn!(cpus = d.cpus, memory_mib = d.memory_mib, disk_mib = d.disk_mib, hypervisor = %d.hypervisor,
            hosts = n, max_free_mib = mem, max_free_cpus = cpus, max_free_disk_mib = free.max_free_disk_mib,
            constraints = %c.describe(), "no host can fit an instance");
        return ApiError::Unprocessable {
            code: "no_capacity",
            message: format!(
                "no {} host{} has room for {} now; ask for less, or try again later",
                d.hypervisor,
                c.describe(),
                room_asked(d)
            ),
        };
    }
    no_capacity(d, n, mem, cpus)
}

fn unsatisfiable(message: String) -> ApiError {
    ApiError::Unprocessable { code: "placement_unsatisfiable", message }
}

/// The refusal when the hosts have room but the group's policy allows none of them.
pub fn group_unsatisfiable(g: &Group, d: Demand) -> ApiError {
    unsatisfiable(match g.policy {
        ServerGroupPolicy::AntiAffinity => format!(
            "server group {} ({}) is anti-affinity: each member needs a host holding no other member, and no such \
             {} host can take this instance now; terminate a member, or use a soft-anti-affinity group",
            g.name, g.id, d.hypervisor
        ),
        _ => format!(
            "server group {} ({}) is affinity: its members share one host, and that host cannot take {} vCPUs and \
             {} MiB now (or is offline, taken out of placement by an admin, or outside the zone and labels asked); \
             ask for less, or use a soft-affinity group",
            g.name, g.id, d.cpus, d.memory_mib
        ),
    })
}

/// The refusal when no host could ever boot a UEFI image: none has OVMF.
pub fn no_uefi(hypervisor: HypervisorKind) -> ApiError {
    ApiError::conflict(
        "boot_mode_unsupported",
        format!(
            "the image boots with UEFI and no online {hypervisor} host has UEFI firmware; \
             install OVMF on a host (apt-get install ovmf) and restart its hva, or use a bios image"
        ),
    )
}

/// The refusal when no host fits `d`, given the online hosts of its hypervisor kind:
/// how many, and the most free memory and vCPUs among them. The figures go to the log
/// and to operators (`vdc host list`), never to the tenant: a cloud's free capacity is
/// not every tenant's business.
pub fn no_capacity(d: Demand, hosts: i64, max_free_mib: Option<i64>, max_free_cpus: Option<i64>) -> ApiError {
    let message = match hosts {
        0 => format!("no online host offers hypervisor {}", d.hypervisor),
        n => {
            tracing::warn!(
                cpus = d.cpus,
                memory_mib = d.memory_mib,
                hypervisor = %d.hypervisor,
                hosts = n,
                max_free_mib,
                max_free_cpus,
                "no host can fit an instance"
            );
            format!("no {} host has room for {} now; ask for less, or try again later", d.hypervisor, room_asked(d))
        }
    };
    ApiError::Unprocessable { code: "no_capacity", message }
}

/// "2 vCPUs, 512 MiB and a 20 GiB root disk", or without the disk when none is booked.
fn room_asked(d: Demand) -> String {
    let cpus = if d.cpus == 1 { "1 vCPU".to_owned() } else { format!("{} vCPUs", d.cpus) };
    match d.disk_mib {
        0 => format!("{cpus} and {} MiB", d.memory_mib),
        m => format!("{cpus}, {} MiB and a root disk of {}", d.memory_mib, mib_text(m)),
    }
}

/// "20 GiB" for whole GiB, else "1500 MiB".
fn mib_text(m: u32) -> String {
    if m.is_multiple_of(1024) {
        format!("{} GiB", m / 1024)
    } else {
        format!("{m} MiB")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn host_row(state: &str, cpus_used: i64, zone: &str, labels: &str) -> store::HostRow {
        store::HostRow {
            id: "hn-a".into(),
            state: state.into(),
            hypervisors: ",qemu,".into(),
            cpus: 2,
            memory_mib: 4096,
            cpus_used,
            memory_used_mib: 0,
            cpus_allocatable: 8,
            memory_allocatable_mib: 4096,
            capabilities: "{}".into(),
            last_seen: String::new(),
            zone: zone.into(),
            labels: labels.into(),
            schedulable: 1,
            cordon_reason: String::new(),
            disk_mib: None,
            disk_allocatable_mib: None,
            disk_used_mib: 0,
        }
    }

    #[test]
    fn a_stopped_instance_starts_on_its_last_host_or_says_why_not() {
        use ServerGroupPolicy::*;
        let d = Demand { hypervisor: HypervisorKind::Qemu, cpus: 4, memory_mib: 1024, disk_mib: 0, uefi: false };
        let none = Constraints::default();
        let code = |r: ApiResult<()>| r.map_err(|e| (e.code(), e.to_string()));
        assert!(start_on("hn-a", Some(&host_row("online", 4, "", ",")), &[], d, &none, "i-x").is_ok());
        let cordoned = store::HostRow { schedulable: 0, ..host_row("online", 4, "", ",") };
        assert!(
            start_on("hn-a", Some(&cordoned), &[], d, &none, "i-x").is_ok(),
            "a cordon keeps out new instances only"
        );
        let (c, m) = code(start_on("hn-a", Some(&host_row("offline", 0, "", ",")), &[], d, &none, "i-x")).unwrap_err();
        assert_eq!(c, "agent_unavailable");
        assert!(m.contains("hn-a") && m.contains("i-x"), "{m}");
        assert_eq!(code(start_on("hn-a", None, &[], d, &none, "i-x")).unwrap_err().0, "agent_unavailable");
        let (c, m) = code(start_on("hn-a", Some(&host_row("online", 5, "", ",")), &[], d, &none, "i-x")).unwrap_err();
        assert_eq!(c, "no_capacity");
        assert!(m.contains("hn-a") && m.contains("4 vCPUs"), "{m}");
        // What it asked at create: the zone and labels the host still has, or not.
        let east = Constraints { zone: "east".into(), labels: vec![("ssd".into(), "yes".into())], group: None };
        assert!(start_on("hn-a", Some(&host_row("online", 0, "east", ",ssd=yes,")), &[], d, &east, "i-x").is_ok());
        for (zone, labels) in [("west", ",ssd=yes,"), ("east", ",ssd=no,"), ("east", ",")] {
            let r = start_on("hn-a", Some(&host_row("online", 0, zone, labels)), &[], d, &east, "i-x");
            assert_eq!(code(r).unwrap_err().0, "placement_unsatisfiable", "{zone} {labels}");
        }
        // A hard group policy where its members are now; a soft one never refuses.
        let group = |policy| Constraints {
            group: Some(Group { id: "srvg-g".into(), name: "g".into(), policy }),
            ..Default::default()
        };
        let here = ids(&["hn-a"]);
        let (c, m) =
            code(start_on("hn-a", Some(&host_row("online", 0, "", ",")), &here, d, &group(AntiAffinity), "i-x"))
                .unwrap_err();
        assert_eq!(c, "placement_unsatisfiable");
        assert!(m.contains("anti-affinity") && m.contains("another member"), "{m}");
        let there = ids(&["hn-b"]);
        assert!(start_on("hn-a", Some(&host_row("online", 0, "", ",")), &there, d, &group(AntiAffinity), "i-x").is_ok());
        let r = start_on("hn-a", Some(&host_row("online", 0, "", ",")), &there, d, &group(Affinity), "i-x");
        assert_eq!(code(r).unwrap_err().0, "placement_unsatisfiable");
        assert!(
            start_on("hn-a", Some(&host_row("online", 0, "", ",")), &here, d, &group(SoftAntiAffinity), "i-x").is_ok()
        );
    }

    #[test]
    fn policies_narrow_the_candidates() {
        use ServerGroupPolicy::*;
        let c = ids(&["a", "b", "c"]);
        assert_eq!(allowed_by_policy(AntiAffinity, &ids(&["b"]), &c), ids(&["a", "c"]));
        assert!(allowed_by_policy(AntiAffinity, &c, &c).is_empty());
        assert_eq!(allowed_by_policy(Affinity, &[], &c), c);
        assert_eq!(allowed_by_policy(Affinity, &ids(&["c"]), &c), ids(&["c"]));
        assert!(allowed_by_policy(Affinity, &ids(&["z"]), &c).is_empty());
        assert_eq!(allowed_by_policy(SoftAntiAffinity, &c, &c), c);
        assert_eq!(allowed_by_policy(SoftAffinity, &ids(&["z"]), &c), c);
    }

    #[test]
    fn group_refusals_name_the_policy_not_the_capacity() {
        let d = Demand { hypervisor: HypervisorKind::Kvm, cpus: 2, memory_mib: 512, disk_mib: 0, uefi: false };
        let g = Group { id: "srvg-x".into(), name: "web".into(), policy: ServerGroupPolicy::AntiAffinity };
        let e = group_unsatisfiable(&g, d);
        assert_eq!(e.code(), "placement_unsatisfiable");
        assert!(e.to_string().contains("web (srvg-x) is anti-affinity"), "{e}");
        let g = Group { policy: ServerGroupPolicy::Affinity, ..g };
        assert!(group_unsatisfiable(&g, d).to_string().contains("is affinity"));
    }

    #[test]
    fn no_capacity_says_what_is_missing() {
        let d = Demand { hypervisor: HypervisorKind::Kvm, cpus: 4, memory_mib: 8192, disk_mib: 0, uefi: false };
        let e = no_capacity(d, 0, None, None);
        assert_eq!(e.code(), "no_capacity");
        assert_eq!(e.to_string(), "no online host offers hypervisor kvm");
        let e = no_capacity(d, 2, Some(4096), Some(8));
        assert_eq!(
            e.to_string(),
            "no kvm host has room for 4 vCPUs and 8192 MiB now; ask for less, or try again later"
        );
        assert!(!e.to_string().contains("4096"), "the free capacity is not told");
    }
}
