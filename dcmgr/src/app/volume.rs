//! Volumes: block devices kept by a storage node (sta) and attached to instances.
//!
//! ```text
//!  creating ─► available ─attach─► attaching ─► attached ─detach─► detaching ─► available
//!      │            └─delete─► deleting ─► deleted
//!      └─► failed
//! ```
//! sta's reports drive creating/deleting (`on_report`); hva's reports (the volumes a
//! guest really has) drive attaching/detaching (`on_attachment_report`). A volume is
//! exported to the instance's host from attaching until hva confirms the detach.
//!
//! Attach, detach and delete decide with pure functions (`decide_attach`,
//! `decide_detach`, `decide_delete`) on the volume (and instance) read under their
//! locks, and `commit_decision` applies what they decided.

use crate::app::quota;
use crate::app::{check_name_free, page, paging_of, state_filter, validate_name, Outcome};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::job;
use crate::datastore::{self as db, snapshot as snapshots, volume as store};
use crate::error::{ApiError, ApiResult};
use tracing::Instrument;
use vdc_schema::api::{Accepted, AttachVolume, CreateVolume, ExtendVolume, ListQuery, Page, QuotaKey, Volume};
use vdc_schema::id::*;
use vdc_schema::{InstanceState, ObservedStorage, VolumeState};

/// The largest volume: 16 TiB.
pub const MAX_SIZE_MIB: u64 = 16 << 20;

/// A volume of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<Volume> {
    fetch_own(ctx, caller, id).await?.into_api()
}

async fn fetch_own(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<store::Row> {
    match store::get(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("volume", id)),
    }
}

/// Reserves `size` on a storage node (the given one, or the emptiest online one).
pub(crate) async fn reserve_storage(
    tx: &mut db::Tx<'_>,
    pool: &db::Pool,
    size: i64,
    on: Option<&str>,
) -> ApiResult<String> {
    let candidates: Vec<String> = match on {
        Some(n) => vec![n.to_owned()],
        None => store::storage_with_room(pool, size).await?,
    };
    for id in &candidates {
        if store::reserve_storage(tx, id, size).await? {
            return Ok(id.clone());
        }
    }
    Err(ApiError::Unprocessable {
        code: "no_capacity",
        message: match on {
            Some(n) => format!("storage node {n} is offline or has less than {size} MiB free"),
            None => format!("no online storage node has {size} MiB free"),
        },
    })
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateVolume) -> ApiResult<Accepted<Volume>> {
    validate_name("volume", &req.name)?;
    if let (Some(_), Some(_)) = (&req.snapshot_id, &req.image_id) {
        return Err(ApiError::bad("invalid_source", "give snapshot_id or image_id, not both"));
    }
    let snap = match &req.snapshot_id {
        Some(s) => Some(crate::app::snapshot::fetch(ctx, caller, s).await?),
        None => None,
    };
    if let Some(s) = &snap {
        if s.state != vdc_schema::SnapshotState::Available {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("snapshot {} is {}, not available", s.id, s.state),
            ));
        }
    }
    let image = match &req.image_id {
        Some(image_id) => {
            let image = crate::app::image::fetch_usable(ctx, caller, image_id).await?;
            if !matches!(image.format, vdc_schema::ImageFormat::Qcow2 | vdc_schema::ImageFormat::Raw) {
                return Err(ApiError::bad(
                    "invalid_image",
                    format!(
                        "image {image_id} is a {} image; a volume can be filled from a qcow2 or raw image",
                        image.format
                    ),
                ));
            }
            Some(image)
        }
        None => None,
    };
    let size = decide_size(
        req.size_mib,
        snap.as_ref().map(|s| (s.id.as_str(), s.size_mib)),
        image.as_ref().map(|i| (i.id.as_str(), i.virtual_size)),
    )?;
    let accepted = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        check_name_free(&mut tx, db::Named::Volume, &caller.account_id, &req.name).await?;
        if let Some(s) = &snap {
            // The snapshot must still be there when the volume is recorded (a concurrent
            // delete locks it too).
            db::lock(&mut tx, db::Lock::Snapshot, s.id.as_str()).await?;
            let state = snapshots::state(&mut tx, s.id.as_str()).await?;
            if state != vdc_schema::SnapshotState::Available.as_str() {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!("snapshot {} is {state}, not available", s.id),
                ));
            }
        }
        let node =
            reserve_storage(&mut tx, &ctx.db, size as i64, snap.as_ref().map(|s| s.storage_node_id.as_str())).await?;
        // After the reservation: it reads candidates from the pool, which must not wait
        // for a connection while this transaction holds the account's row (concurrent
        // creates would hold every connection waiting for that row).
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::Volumes, 1), (QuotaKey::VolumeGib, size)])
            .await?;
        // The image must still be there at commit: its delete locks the same row and then
        // sees this volume being made from it.
        if let Some(image_id) = &req.image_id {
            if !db::lock(&mut tx, db::Lock::Image, image_id.as_str()).await? {
                return Err(ApiError::not_found("image", image_id));
            }
        }
        let id = VolumeId::generate();
        let now = db::now();
        store::insert(
            &mut tx,
            store::New {
                id: id.as_str(),
                account: &caller.account_id,
                name: &req.name,
                size_mib: size as i64,
                node: &node,
                snapshot_id: req.snapshot_id.as_ref().map(|s| s.to_string()),
                image_id: req.image_id.as_ref().map(|s| s.to_string()),
                now: &now,
            },
        )
        .await?;
        let job = job::start_first(&mut tx, &caller.account_id, "volume.create", id.as_str(), "available").await?;
        tx.commit().await?;
        ctx.events.wake();
        let t = db::parse_time(&now);
        let vol = Volume {
            id,
            name: req.name.clone(),
            size_mib: size,
            state: VolumeState::Creating,
            storage_node_id: Some(node.parse().map_err(ApiError::internal)?),
            instance_id: None,
            snapshot_id: req.snapshot_id.clone(),
            image_id: req.image_id.clone(),
            failure_reason: None,
            created_at: t,
            updated_at: t,
        };
        Ok(Accepted { job, resource: vol })
    })
    .await?;
    ctx.enqueue(Work::Volume(accepted.resource.id.clone()));
    Ok(accepted)
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Volume>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::VolumeId>(&ListQuery { state: None, ..q.clone() })?;
    let state = state_filter::<VolumeState>(q)?;
    let name = q.name.as_deref().unwrap_or_default();
    let since = crate::app::gone_listed_since();
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, &state, name, &since, limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |v| v.id.to_string()))
}

/// Applies a decision in `tx` (which holds the volume's lock) and commits.
async fn commit_decision(
    ctx: &SharedCtx,
    mut tx: db::Tx<'_>,
    caller: &Caller,
    row: store::Row,
    action: &str,
    d: Decision,
) -> ApiResult<(Outcome, Accepted<Volume>)> {
    let (outcome, job) = record(&mut tx, &caller.account_id, &row.id, action, &d).await?;
    let vol = store::get(tx.conn().await?, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
    tx.commit().await?;
    ctx.events.wake();
    Ok((outcome, Accepted { job, resource: vol.into_api()? }))
}

/// Writes what `d` decided for volume `id`: its state and the action's job.
async fn record(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    id: &str,
    action: &str,
    d: &Decision,
) -> ApiResult<(Outcome, vdc_schema::api::Job)> {
    Ok(match d {
        Decision::Already(msg) => (Outcome::Already, job::done(tx, account, action, id, msg).await?),
        Decision::Apply { state, instance, wait_for } => {
            store::set_state(tx, id, *state, instance.as_deref()).await?;
            let job = match wait_for {
                Some(t) => job::start(tx, account, action, id, t).await?,
                None => job::done(tx, account, action, id, "done").await?,
            };
            (Outcome::Applied, job)
        }
    })
}

/// Locks the caller's volume in `tx` and reads it; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &VolumeId) -> ApiResult<store::Row> {
    db::lock(tx, db::Lock::Volume, id.as_str()).await?;
    match store::get(tx.conn().await?, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("volume", id)),
    }
}

pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<(Outcome, Accepted<Volume>)> {
    let (outcome, accepted) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        let row = lock_own(&mut tx, caller, id).await?;
        // Snapshot creation locks the volume too, so this count cannot change before commit.
        let snaps = snapshots::count_live_of_volume(&mut tx, id.as_str()).await?;
        let d = decide_delete(id.as_str(), row.state()?, row.instance_id.as_deref(), snaps)?;
        commit_decision(ctx, tx, caller, row, "volume.delete", d).await
    })
    .await?;
    if outcome == Outcome::Applied {
        ctx.enqueue(Work::Volume(id.clone()));
    }
    Ok((outcome, accepted))
}

pub async fn attach(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &VolumeId,
    req: AttachVolume,
) -> ApiResult<(Outcome, Accepted<Volume>)> {
    let inst_id = req.instance_id;
    let (outcome, accepted) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // The instance first, then the volume: the order terminate takes (it locks the
        // instance, then detaches its volumes), so the two never deadlock.
        let inst = match crate::datastore::instance::lock_get(&mut tx, inst_id.as_str()).await? {
            Some(i) if i.account_id == caller.account_id.as_str() => i,
            _ => return Err(ApiError::not_found("instance", &inst_id)),
        };
        let row = lock_own(&mut tx, caller, id).await?;
        let volumes = store::count_attached(&mut tx, inst_id.as_str()).await?;
        let target = AttachTarget {
            id: inst_id.as_str(),
            state: inst.state.parse().map_err(ApiError::internal)?,
            has_host: inst.host_node_id.is_some(),
            volumes,
            hypervisor: inst.hypervisor.parse().map_err(ApiError::internal)?,
        };
        let d = decide_attach(id.as_str(), row.state()?, row.instance_id.as_deref(), &target)?;
        commit_decision(ctx, tx, caller, row, "volume.attach", d).await
    })
    .await?;
    if outcome == Outcome::Applied {
        ctx.enqueue(Work::Volume(id.clone()));
        ctx.enqueue(Work::Instance(inst_id));
    }
    Ok((outcome, accepted))
}

/// Attaches volume `id` where a bundle import asked (`attach_to`), once it is available:
/// its data filled, or detached from where it was. Tried once; a refusal (the instance
/// gone, a container, too many volumes) is logged and the ask dropped.
pub async fn attach_asked(ctx: &SharedCtx, id: &VolumeId) -> ApiResult<()> {
    let Some((account, instance)) = store::attach_to(&ctx.db, id.as_str()).await? else { return Ok(()) };
    let (Ok(account), Ok(instance_id)) = (account.parse::<AccountId>(), instance.parse::<InstanceId>()) else {
        return Err(ApiError::internal(format!("volume {id}: attach_to {instance} of account {account}")));
    };
    let span = tracing::info_span!("attach_asked", volume = %id, instance = %instance_id);
    let caller = Caller::system(account);
    match attach(ctx, &caller, id, AttachVolume { instance_id }).instrument(span.clone()).await {
        Ok(_) => span.in_scope(|| tracing::info!("attached as the bundle import asked")),
        Err(e) => span.in_scope(|| tracing::warn!(error = %e, "the attach a bundle import asked was refused")),
    }
    store::clear_attach_to(&ctx.db, id.as_str(), &instance).await?;
    Ok(())
}

pub async fn detach(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<(Outcome, Accepted<Volume>)> {
    let (outcome, accepted, instance) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        let (row, d) = lock_for_detach(&mut tx, caller, id).await?;
        let instance = row.instance_id.clone();
        let (outcome, accepted) = commit_decision(ctx, tx, caller, row, "volume.detach", d).await?;
        Ok((outcome, accepted, instance))
    })
    .await?;
    if outcome == Outcome::Applied {
        Detaching { volume: id.clone(), instance }.enqueue(ctx);
    }
    Ok((outcome, accepted))
}

/// Locks the volume's instance, then the volume (the order attach and terminate take),
/// and decides its detach on what it is under the locks.
async fn lock_for_detach(tx: &mut db::Tx<'_>, caller: &Caller, id: &VolumeId) -> ApiResult<(store::Row, Decision)> {
    // Which instance to lock first (none of another account's); re-checked under the locks.
    let hint = store::get(tx.conn().await?, id.as_str())
        .await?
        .filter(|r| r.account_id == caller.account_id.as_str())
        .and_then(|r| r.instance_id);
    let mut has_host = false;
    if let Some(i) = &hint {
        has_host = crate::datastore::instance::lock_get(tx, i).await?.is_some_and(|r| r.host_node_id.is_some());
    }
    let row = lock_own(tx, caller, id).await?;
    if row.instance_id != hint {
        return Err(ApiError::Busy(format!("volume {id} moved while it was being detached")));
    }
    let d = decide_detach(id.as_str(), row.state()?, row.instance_id.as_deref(), has_host)?;
    Ok((row, d))
}

/// A detach begun and committed: the ensures it needs, to sta (the export) and hva (the
/// guest).
pub(crate) struct Detaching {
    volume: VolumeId,
    instance: Option<String>,
}

impl Detaching {
    pub(crate) fn enqueue(&self, ctx: &SharedCtx) {
        ctx.enqueue(Work::Volume(self.volume.clone()));
        if let Some(i) = self.instance.as_deref().and_then(|i| i.parse().ok()) {
            ctx.enqueue(Work::Instance(i));
        }
    }
}

/// A detach inside a bundle import's transaction, decided as the API's is; `None` when
/// the volume was not attached. Being in the import's commit, a dcmgr stopped right
/// after it leaves the volume `detaching`, which the reconciler carries on.
pub(crate) async fn detach_in(tx: &mut db::Tx<'_>, caller: &Caller, id: &VolumeId) -> ApiResult<Option<Detaching>> {
    let (row, d) = lock_for_detach(tx, caller, id).await?;
    Ok(match record(tx, &caller.account_id, &row.id, "volume.detach", &d).await?.0 {
        Outcome::Applied => Some(Detaching { volume: id.clone(), instance: row.instance_id }),
        Outcome::Already => None,
    })
}

pub async fn extend(ctx: &SharedCtx, caller: &Caller, id: &VolumeId, req: ExtendVolume) -> ApiResult<Accepted<Volume>> {
    let size = req.size_mib;
    if size > MAX_SIZE_MIB {
        return Err(ApiError::bad(
            "invalid_size",
            format!(
                "the size must be at most {MAX_SIZE_MIB} MiB (16 TiB), got {size} MiB (size_mib; --size in the CLI)"
            ),
        ));
    }
    let accepted = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        let row = lock_own(&mut tx, caller, id).await?;
        if size <= row.size_mib as u64 {
            return Err(ApiError::bad(
                "invalid_size",
                format!("volume {id} is {} MiB; the new size must be larger (volumes never shrink)", row.size_mib),
            ));
        }
        match row.state()? {
            VolumeState::Available => {}
            // tgt reads a LUN's size once, and a guest would need a rescan: refuse for now.
            VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
                return Err(ApiError::conflict(
                    "volume_attached",
                    format!("volume {id} is attached; detach it before extending it"),
                ))
            }
            s => {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!("volume {id} is {s}; only an available volume can grow"),
                ))
            }
        }
        let node = row.storage_node_id.clone().ok_or_else(|| ApiError::internal("volume without a storage node"))?;
        let more = size - row.size_mib as u64;
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::VolumeGib, more)]).await?;
        reserve_storage(&mut tx, &ctx.db, more as i64, Some(&node)).await?;
        store::set_size(&mut tx, &row.id, size as i64).await?;
        let job = job::start(&mut tx, &caller.account_id, "volume.extend", &row.id, "available").await?;
        let vol = store::get(tx.conn().await?, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(Accepted { job, resource: vol.into_api()? })
    })
    .await?;
    ctx.enqueue(Work::Volume(id.clone()));
    Ok(accepted)
}

/// What a request does to a volume, decided from the volume (and instance) as they are
/// inside the request's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to change (200 with a finished job).
    Already(&'static str),
    /// New state and attachment; `wait_for` is the state that ends the job (None: done).
    Apply { state: VolumeState, instance: Option<String>, wait_for: Option<&'static str> },
}

/// The instance a volume is asked to attach to, as read in the transaction.
pub(crate) struct AttachTarget<'a> {
    pub id: &'a str,
    pub state: InstanceState,
    pub has_host: bool,
    /// Volumes attached or attaching to it now.
    pub volumes: i64,
    pub hypervisor: vdc_schema::HypervisorKind,
}

pub(crate) const MAX_VOLUMES_PER_INSTANCE: i64 = 16;

pub(crate) fn decide_attach(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    inst: &AttachTarget<'_>,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Available => {}
        VolumeState::Attached | VolumeState::Attaching if attached_to == Some(inst.id) => {
            return Ok(Decision::Already("already attached to this instance"));
        }
        VolumeState::Attached | VolumeState::Attaching | VolumeState::Detaching => {
            return Err(ApiError::conflict(
                "volume_attached",
                format!(
                    "volume {id} is {state} to {}; only an available volume can be attached",
                    attached_to.unwrap_or("another instance")
                ),
            ))
        }
        s => {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("volume {id} is {s}; only an available volume can be attached"),
            ))
        }
    }
    // hva hands volumes to guests as virtio disks (a file, or iSCSI through QEMU's own
    // initiator): a container has no such device to receive one, and the host has no
    // block device to pass in. Refused here, at once, rather than left `attaching`.
    if inst.hypervisor == vdc_schema::HypervisorKind::Lxc {
        return Err(ApiError::conflict(
            "volumes_unsupported",
            format!("instance {} is an lxc container; volumes attach only to qemu and kvm instances", inst.id),
        ));
    }
    if matches!(inst.state, InstanceState::ShuttingDown | InstanceState::Terminated | InstanceState::Failed) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("instance {} is {}; volumes attach to live instances", inst.id, inst.state),
        ));
    }
    if inst.volumes >= MAX_VOLUMES_PER_INSTANCE {
        return Err(ApiError::conflict(
            "too_many_volumes",
            format!("instance {} has {MAX_VOLUMES_PER_INSTANCE} volumes already", inst.id),
        ));
    }
    Ok(if inst.has_host {
        Decision::Apply {
            state: VolumeState::Attaching,
            instance: Some(inst.id.to_owned()),
            wait_for: Some("attached"),
        }
    } else {
        // A stopped instance gets the volume in its definition when it starts.
        Decision::Apply { state: VolumeState::Attached, instance: Some(inst.id.to_owned()), wait_for: None }
    })
}

pub(crate) fn decide_detach(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    has_host: bool,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Attached | VolumeState::Attaching => Ok(if has_host {
            Decision::Apply {
                state: VolumeState::Detaching,
                instance: attached_to.map(str::to_owned),
                wait_for: Some("available"),
            }
        } else {
            Decision::Apply { state: VolumeState::Available, instance: None, wait_for: None }
        }),
        VolumeState::Available => Ok(Decision::Already("not attached")),
        VolumeState::Detaching => Ok(Decision::Already("already detaching")),
        s => Err(ApiError::conflict("invalid_state", format!("volume {id} is {s}, not attached"))),
    }
}

pub(crate) fn decide_delete(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    snapshots: i64,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Deleted => return Ok(Decision::Already("already deleted")),
        VolumeState::Deleting => return Ok(Decision::Already("already deleting")),
        VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
            return Err(ApiError::conflict(
                "volume_attached",
                format!("volume {id} is attached to {}; detach it first", attached_to.unwrap_or("an instance")),
            ));
        }
        VolumeState::Creating | VolumeState::Available | VolumeState::Failed => {}
    }
    if snapshots > 0 {
        return Err(ApiError::conflict(
            "volume_has_snapshots",
            format!("volume {id} has {snapshots} snapshots; delete them first"),
        ));
    }
    Ok(Decision::Apply { state: VolumeState::Deleting, instance: None, wait_for: Some("deleted") })
}

/// What sta's observation means for a volume in `state`.
pub(crate) fn on_report(state: VolumeState, observed: ObservedStorage) -> VolumeState {
    match (state, observed) {
        (VolumeState::Deleted, _) => VolumeState::Deleted,
        (_, ObservedStorage::Failed) => VolumeState::Failed,
        (VolumeState::Creating, ObservedStorage::Available) => VolumeState::Available,
        (VolumeState::Deleting, ObservedStorage::Absent) => VolumeState::Deleted,
        (s, _) => s,
    }
}

/// What hva's report means for a volume attaching to or detaching from the instance: the
/// new state and whether the volume leaves the instance, or None while it is still on
/// its way (`present`: the guest has it).
pub(crate) fn on_attachment_report(state: VolumeState, present: bool) -> Option<(VolumeState, bool)> {
    match (state, present) {
        (VolumeState::Attaching, true) => Some((VolumeState::Attached, false)),
        (VolumeState::Detaching, false) => Some((VolumeState::Available, true)),
        _ => None,
    }
}

/// A new volume's size in MiB: the one asked for, else its snapshot's or its image's disk
/// (rounded up to MiB); never smaller than either, since sta copies the data in whole.
fn decide_size(
    asked: Option<u64>,
    snapshot: Option<(&str, u64)>,
    image: Option<(&str, Option<u64>)>,
) -> ApiResult<u64> {
    let image_mib = image.and_then(|i| i.1).map(|v| v.div_ceil(1 << 20));
    let size = match (asked, snapshot, image) {
        (Some(sz), Some((id, snap)), _) if sz < snap => {
            return Err(ApiError::bad(
                "invalid_size",
                format!("the size asked, {sz} MiB, is smaller than snapshot {id} ({snap} MiB)"),
            ))
        }
        (Some(sz), _, Some(i)) if image_mib.is_some_and(|m| sz < m) => {
            return Err(ApiError::bad(
                "invalid_size",
                format!(
                    "the size asked, {sz} MiB, is smaller than the disk image {} holds ({} MiB); leave the size out (size_mib; --size in the CLI) for that size",
                    i.0,
                    image_mib.unwrap_or_default()
                ),
            ))
        }
        (Some(sz), _, _) => sz,
        (None, Some((_, snap)), _) => snap,
        (None, None, Some(i)) => image_mib.ok_or_else(|| {
            ApiError::bad(
                "invalid_size",
                format!(
                    "the disk size of image {} is not known (an operator's host file): give a size (size_mib in MiB; --size in the CLI)",
                    i.0
                ),
            )
        })?,
        (None, None, None) => {
            return Err(ApiError::bad("invalid_size", "give a size (size_mib in MiB; --size in the CLI), a snapshot (snapshot_id) or an image (image_id)"))
        }
    };
    if size == 0 || size > MAX_SIZE_MIB {
        return Err(ApiError::bad(
            "invalid_size",
            format!("the size must be between 1 and {MAX_SIZE_MIB} MiB (16 TiB), got {size} MiB"),
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_as_large_as_asked_and_never_smaller_than_its_data() {
        let code = |r: ApiResult<u64>| match r {
            Err(ApiError::BadRequest { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        let (snap, img, unknown) =
            (Some(("snap-1", 100)), Some(("img-1", Some((32 << 20) + 1))), Some(("img-2", None)));
        assert_eq!(decide_size(Some(10), None, None).unwrap(), 10);
        assert_eq!(decide_size(None, snap, None).unwrap(), 100);
        assert_eq!(decide_size(Some(200), snap, None).unwrap(), 200);
        assert_eq!(code(decide_size(Some(99), snap, None)), "invalid_size");
        // An image's disk, rounded up to whole MiB.
        assert_eq!(decide_size(None, None, img).unwrap(), 33);
        assert_eq!(decide_size(Some(33), None, img).unwrap(), 33);
        assert_eq!(code(decide_size(Some(32), None, img)), "invalid_size");
        assert_eq!(code(decide_size(None, None, unknown)), "invalid_size");
        assert_eq!(decide_size(Some(5), None, unknown).unwrap(), 5, "sta checks what dcmgr has not read");
        assert_eq!(code(decide_size(None, None, None)), "invalid_size");
        assert_eq!(code(decide_size(Some(0), None, None)), "invalid_size");
        assert_eq!(code(decide_size(Some(MAX_SIZE_MIB + 1), None, None)), "invalid_size");
    }

    fn inst(state: InstanceState, has_host: bool, volumes: i64) -> AttachTarget<'static> {
        AttachTarget { id: "i-1", state, has_host, volumes, hypervisor: vdc_schema::HypervisorKind::Qemu }
    }

    #[test]
    fn a_container_is_refused_volumes_at_once() {
        for state in [InstanceState::Running, InstanceState::Stopped] {
            let ct = AttachTarget { hypervisor: vdc_schema::HypervisorKind::Lxc, ..inst(state, true, 0) };
            let Err(e) = decide_attach("v", VolumeState::Available, None, &ct) else { panic!("accepted") };
            assert_eq!(e.code(), "volumes_unsupported", "{e:?}");
        }
    }

    #[test]
    fn attach_only_from_available_and_to_live_instances() {
        let running = inst(InstanceState::Running, true, 0);
        assert!(matches!(
            decide_attach("v", VolumeState::Available, None, &running),
            Ok(Decision::Apply { state: VolumeState::Attaching, wait_for: Some("attached"), .. })
        ));
        assert!(matches!(
            decide_attach("v", VolumeState::Available, None, &inst(InstanceState::Stopped, false, 0)),
            Ok(Decision::Apply { state: VolumeState::Attached, wait_for: None, .. })
        ));
        assert_eq!(
            decide_attach("v", VolumeState::Attaching, Some("i-1"), &running).unwrap(),
            Decision::Already("already attached to this instance")
        );
        for (s, to) in [
            (VolumeState::Attaching, Some("i-2")),
            (VolumeState::Attached, Some("i-2")),
            (VolumeState::Detaching, Some("i-1")),
        ] {
            assert_eq!(decide_attach("v", s, to, &running).unwrap_err().code(), "volume_attached", "{s}");
        }
        for s in [VolumeState::Creating, VolumeState::Deleting, VolumeState::Deleted, VolumeState::Failed] {
            assert_eq!(decide_attach("v", s, None, &running).unwrap_err().code(), "invalid_state", "{s}");
        }
        for s in [InstanceState::ShuttingDown, InstanceState::Terminated, InstanceState::Failed] {
            assert_eq!(
                decide_attach("v", VolumeState::Available, None, &inst(s, true, 0)).unwrap_err().code(),
                "invalid_state"
            );
        }
        let full = inst(InstanceState::Running, true, MAX_VOLUMES_PER_INSTANCE);
        assert_eq!(decide_attach("v", VolumeState::Available, None, &full).unwrap_err().code(), "too_many_volumes");
    }

    #[test]
    fn delete_refuses_attached_volumes_and_snapshots() {
        for s in [VolumeState::Attaching, VolumeState::Attached, VolumeState::Detaching] {
            assert_eq!(decide_delete("v", s, Some("i-1"), 0).unwrap_err().code(), "volume_attached");
        }
        assert_eq!(decide_delete("v", VolumeState::Available, None, 1).unwrap_err().code(), "volume_has_snapshots");
        assert_eq!(decide_delete("v", VolumeState::Deleting, None, 0).unwrap(), Decision::Already("already deleting"));
        assert!(matches!(
            decide_delete("v", VolumeState::Available, None, 0),
            Ok(Decision::Apply { state: VolumeState::Deleting, .. })
        ));
    }

    #[test]
    fn detach_waits_for_the_host_only_when_there_is_one() {
        assert!(matches!(
            decide_detach("v", VolumeState::Attached, Some("i-1"), true),
            Ok(Decision::Apply { state: VolumeState::Detaching, wait_for: Some("available"), .. })
        ));
        assert_eq!(
            decide_detach("v", VolumeState::Attached, Some("i-1"), false).unwrap(),
            Decision::Apply { state: VolumeState::Available, instance: None, wait_for: None }
        );
        assert_eq!(decide_detach("v", VolumeState::Deleting, None, true).unwrap_err().code(), "invalid_state");
    }

    #[test]
    fn reports_never_revive_a_deleted_volume() {
        assert_eq!(on_report(VolumeState::Deleted, ObservedStorage::Available), VolumeState::Deleted);
        assert_eq!(on_report(VolumeState::Creating, ObservedStorage::Available), VolumeState::Available);
        assert_eq!(on_report(VolumeState::Deleting, ObservedStorage::Absent), VolumeState::Deleted);
        assert_eq!(on_report(VolumeState::Attached, ObservedStorage::Failed), VolumeState::Failed);
    }

    #[test]
    fn hva_reports_finish_attaches_and_detaches() {
        assert_eq!(on_attachment_report(VolumeState::Attaching, true), Some((VolumeState::Attached, false)));
        assert_eq!(on_attachment_report(VolumeState::Attaching, false), None);
        assert_eq!(on_attachment_report(VolumeState::Detaching, false), Some((VolumeState::Available, true)));
        assert_eq!(on_attachment_report(VolumeState::Detaching, true), None);
    }
}
