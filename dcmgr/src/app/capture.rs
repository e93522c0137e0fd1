//! Capture: a new image from an instance's root disk.
//!
//! A running QEMU/KVM instance is captured crash-consistently and keeps running: the
//! transaction records the pending image and its job without touching the instance;
//! the dispatcher and the reconciler send the capture to its host while the image is
//! pending (`controller::instance`), and hva copies the disk as it is at one instant
//! (a libvirt push backup) before uploading it. One capture per instance at a time
//! (`instance_capturing`). What follows describes a stopped instance's capture.
//!
//! One transaction checks the instance is `stopped`, records the image (`pending`, the
//! caller's, with the source image's properties, `source` = `capture:<instance>`), moves
//! the instance to `capturing` (it cannot start meanwhile) and starts the job, whose
//! resource is the image. The dispatcher then tells the instance's last host; hva
//! flattens the disk and `PUT`s it to `/agent/v1/images/{id}/file` with its node
//! credential, where it goes through the same `ingest` checks as a tenant's upload (a
//! guest's disk is tenant data). Storing it ends the capture in the transaction that
//! makes the image available; a refusal, a failure hva reports, or a terminate fails the
//! image and its job. Either way the instance is `stopped` again.
//!
//! A container's root is a directory on its host, not a disk: hva packs it into a tar
//! image (the captured image is `tar`, for `lxc`), freezing a running container while it
//! reads it. The upload goes through the same `ingest`, whose tar rules refuse what a
//! tenant's tarball may not hold.
//!
//! An image from a volume snapshot ([`from_snapshot`]) is the same design with sta in
//! hva's place: one transaction, under the snapshot's lock, checks the snapshot is the
//! caller's and `available` and records the pending image (`source` =
//! `snapshot:<snapshot>`); while such an image is pending the snapshot cannot be deleted
//! (its delete takes the same lock and answers 409 `snapshot_capturing`). The snapshot's
//! dispatcher tells its storage node, which reads the blocks (a raw disk; qcow2 if asked,
//! converted by sta) and uploads them to the same endpoint, through the same `ingest`.
//! Any number of images can be made from one snapshot at once: each is its own upload,
//! and equal bytes are stored once.

use crate::app::image::{self, Ingested, Ingesting};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::snapshot as snapshots;
use crate::datastore::{self as db, image as image_store, instance as store, job};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{Accepted, CaptureInstance, CreateImage, CreateSnapshotImage, Image, Job};
use vdc_schema::bus::{AgentKind, ImageUpload};
use vdc_schema::id::{AccountId, ImageId, InstanceId, SnapshotId};
use vdc_schema::{Arch, BootMode, HypervisorKind, ImageFormat, ImageState, InstanceGoal, InstanceState, SnapshotState};

/// `source` of a captured image: `capture:<instance id>`.
pub const SOURCE_PREFIX: &str = "capture:";
/// `source` of an image from a snapshot: `snapshot:<snapshot id>`.
pub const SNAPSHOT_PREFIX: &str = "snapshot:";

/// What a pending image's data comes from, read from its `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Instance(String),
    Snapshot(String),
}

impl Origin {
    pub fn of(source: &str) -> Option<Origin> {
        if let Some(i) = source.strip_prefix(SOURCE_PREFIX) {
            return Some(Origin::Instance(i.to_owned()));
        }
        source.strip_prefix(SNAPSHOT_PREFIX).map(|s| Origin::Snapshot(s.to_owned()))
    }

    /// Locks the source, which every decision on it locks first (terminate, snapshot delete).
    pub(crate) async fn lock(&self, tx: &mut db::Tx<'_>) -> ApiResult<()> {
        match self {
            Origin::Instance(i) => db::lock(tx, db::Lock::Instance, i).await?,
            Origin::Snapshot(s) => db::lock(tx, db::Lock::Snapshot, s).await?,
        };
        Ok(())
    }

    /// Ends a capture inside a transaction that holds the source's lock (taken before the
    /// image's): the image's job succeeds, or the image and its job fail; a capturing
    /// instance is `stopped` again. A snapshot has no state to restore: it is deletable
    /// again once no image of it is pending.
    pub(crate) async fn end_in_tx(&self, tx: &mut db::Tx<'_>, image_id: &str, failure: Option<&str>) -> ApiResult<()> {
        match failure {
            None => job::finish(tx, image_id, ImageState::Available.as_str()).await?,
            Some(why) => {
                image_store::set_failed_tx(tx, image_id, why).await?;
                job::fail_all(tx, image_id, why).await?;
            }
        }
        if let Origin::Instance(instance) = self {
            if store::get(tx.conn().await?, instance)
                .await?
                .is_some_and(|r| r.state == InstanceState::Capturing.as_str())
            {
                store::set_intent(tx, instance, InstanceState::Stopped, InstanceGoal::Stopped, false).await?;
            }
        }
        Ok(())
    }
}

/// Where `node` sends image `image`'s data, with its credential.
pub(crate) fn upload_to(ctx: &SharedCtx, image: &ImageId, node: &str) -> ImageUpload {
    let base = format!("{}/agent/v1/images/{image}", ctx.agent_url());
    ImageUpload {
        image_id: image.clone(),
        url: format!("{base}/file"),
        failure_url: format!("{base}/capture-failure"),
        token: crate::app::node_auth::token(&ctx.node_key, node),
    }
}

/// The pending image a capture records: the caller's, private, no data yet.
fn pending_image(new: &CreateImage, source: String, owner: &AccountId) -> Image {
    Image {
        id: ImageId::generate(),
        name: new.name.clone(),
        format: new.format,
        arch: new.arch,
        hypervisors: new.hypervisors.clone(),
        source,
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: new.boot_mode,
        kernel_id: new.kernel_id.clone(),
        min_disk: new.min_disk,
        min_memory: new.min_memory,
        os: new.os.clone(),
        public: false,
        created_at: db::parse_time(&db::now()),
        default_user: new.default_user.clone(),
        state: ImageState::Pending,
        failure_reason: None,
        size_bytes: None,
        virtual_size: None,
        owner: Some(owner.clone()),
        member_status: None,
    }
}

/// Records a pending image whose name must be free in the caller's account, and its job.
/// The source (instance or snapshot) is locked already; the account's row comes after it.
async fn insert_pending(
    tx: &mut db::Tx<'_>,
    ctx: &SharedCtx,
    caller: &Caller,
    image: &Image,
    kind: &str,
) -> ApiResult<Job> {
    let asks = [(vdc_schema::api::QuotaKey::Images, 1)];
    crate::app::quota::enforce_unless_exported(tx, ctx, &caller.account_id, ("image", &image.name), &asks).await?;
    crate::app::check_name_free(tx, db::Named::Image, &caller.account_id, &image.name).await?;
    image_store::insert(tx.conn().await?, &caller.account_id, image).await?;
    Ok(job::start_first(tx, &caller.account_id, kind, image.id.as_str(), "available").await?)
}

/// The format of an instance's capture, if it has a root to capture: a VM's disk image
/// flattened into a qcow2, or a container's root directory packed by hva into a tarball
/// of the same rules as a tenant's tar image. Kernel-booted VMs have none.
pub fn captured_format(container: bool, boots: ImageFormat) -> Option<ImageFormat> {
    match (container, boots) {
        (true, ImageFormat::Tar | ImageFormat::Dir) => Some(ImageFormat::Tar),
        (false, ImageFormat::Qcow2 | ImageFormat::Raw) => Some(ImageFormat::Qcow2),
        _ => None,
    }
}

/// The min_disk of a capture asked for none: the larger of its source image's and the
/// root the instance had (a container given none has the default root filesystem).
fn captured_min_disk(source: &Image, container: bool, root_disk_size: Option<i64>) -> Option<u64> {
    let kind = if container { HypervisorKind::Lxc } else { HypervisorKind::Qemu };
    let root = crate::app::scheduler::root_size(kind, root_disk_size.map(|v| v as u64));
    source.min_disk.max(root)
}

pub async fn capture(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    req: CaptureInstance,
) -> ApiResult<Accepted<Image>> {
    let before = match store::get(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    // What the instance was made of does not change: checked before the transaction.
    let source = crate::controller::image::fetch_any(&ctx.db, &before.image_id).await?;
    let container = before.hypervisor == HypervisorKind::Lxc.as_str();
    let Some(format) = captured_format(container, source.format) else {
        return Err(ApiError::conflict(
            "capture_unsupported",
            format!("instance {id} boots a {} image and has no root disk to capture", source.format),
        ));
    };
    let new = CreateImage {
        name: req.image_name,
        format,
        arch: source.arch,
        hypervisors: if container { vec![HypervisorKind::Lxc] } else { source.hypervisors.clone() },
        source: None,
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: source.boot_mode,
        kernel_id: source.kernel_id.clone(),
        // As Nova's snapshots do: what boots from the capture is given at least the root
        // the source had (a container's files may need the room it had to run).
        min_disk: req.min_disk.or(captured_min_disk(&source, container, before.root_disk_size)),
        min_memory: req.min_memory.or(source.min_memory),
        os: req.os.or(source.os.clone()),
        public: false,
        default_user: req.default_user.or(source.default_user.clone()),
    };
    image::validate(&new)?;
    let accepted = db::retry(|| capture_once(ctx, caller, id, &new)).await?;
    tracing::info!(instance = %id, image = %accepted.resource.id, job = %accepted.job.id, "capture accepted");
    ctx.enqueue(Work::Instance(id.clone()));
    Ok(accepted)
}

async fn capture_once(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &InstanceId,
    new: &CreateImage,
) -> ApiResult<Accepted<Image>> {
    let mut tx = db::begin(&ctx.db).await?;
    let row = match store::lock_get(&mut tx, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    let state = row.state()?;
    // A running guest is captured crash-consistently (hva takes a point-in-time copy of
    // its disk while it runs, or freezes a container while it reads its files) and keeps
    // running; a stopped one is captured as it is.
    let live = state == InstanceState::Running;
    // A capture under way first: it is why a stopped instance is `capturing`.
    if let Some(image) = image_store::pending_capture(tx.conn().await?, id.as_str()).await? {
        return Err(ApiError::conflict(
            "instance_capturing",
            format!("instance {id} is being captured into image {image}; wait until that job ends"),
        ));
    }
    if matches!(state, InstanceState::Terminated | InstanceState::ShuttingDown) {
        return Err(ApiError::conflict(
            "instance_not_stopped",
            format!("instance {id} is {state}: its disk is gone or going, so it can no longer be captured"),
        ));
    }
    if state != InstanceState::Stopped && !live {
        return Err(ApiError::conflict(
            "instance_not_stopped",
            format!("instance {id} is {state}: only a stopped or a running instance can be captured; wait until it is"),
        ));
    }
    let host = if live { row.host_node_id.clone() } else { row.last_host_id.clone() };
    let Some(host) = host else {
        return Err(ApiError::conflict(
            "capture_unsupported",
            format!("instance {id} has never run, so no host holds a disk of it"),
        ));
    };
    if !ctx.agent_online(AgentKind::Hva, &host) {
        return Err(ApiError::Unavailable {
            code: "agent_unavailable",
            message: format!("host {host}, which holds the disk of instance {id}, is offline; retry when it is back"),
        });
    }
    // The inherited kernel must still exist at commit (its delete locks it too). A
    // deleted one is kept for the instance's image, which names it and cannot go before
    // the instance: the capture holds it as well.
    if let Some(k) = &new.kernel_id {
        if !db::lock(&mut tx, db::Lock::Image, k.as_str()).await?
            && !crate::datastore::image::is_deleted(&mut tx, k.as_str()).await?
        {
            return Err(ApiError::conflict("capture_unsupported", format!("the kernel image {k} is gone")));
        }
    }
    let image = pending_image(new, format!("{SOURCE_PREFIX}{id}"), &caller.account_id);
    let job = insert_pending(&mut tx, ctx, caller, &image, "instance.capture").await?;
    if !live {
        store::set_intent(&mut tx, id.as_str(), InstanceState::Capturing, InstanceGoal::Stopped, false).await?;
    }
    tx.commit().await?;
    ctx.events.wake();
    Ok(Accepted { job, resource: image })
}

/// A new image from one of the caller's available snapshots (see the module's doc).
pub async fn from_snapshot(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &SnapshotId,
    req: CreateSnapshotImage,
) -> ApiResult<Accepted<Image>> {
    let format = req.format.unwrap_or(ImageFormat::Raw);
    if !matches!(format, ImageFormat::Raw | ImageFormat::Qcow2) {
        return Err(ApiError::bad(
            "invalid_image",
            format!("an image from a snapshot is raw or qcow2, not {format}: a volume is a disk"),
        ));
    }
    let new = CreateImage {
        name: req.image_name,
        format,
        arch: req.arch.unwrap_or(Arch::X86_64),
        hypervisors: req.hypervisors.unwrap_or_else(|| vec![HypervisorKind::Kvm, HypervisorKind::Qemu]),
        source: None,
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: req.boot_mode.unwrap_or(BootMode::Bios),
        kernel_id: None,
        min_disk: req.min_disk,
        min_memory: req.min_memory,
        os: req.os,
        public: false,
        default_user: req.default_user,
    };
    // Also refuses lxc (`unsupported_format`): a disk does not boot in a container.
    image::validate(&new)?;
    let (accepted, node) = db::retry(|| from_snapshot_once(ctx, caller, id, &new)).await?;
    tracing::info!(snapshot = %id, %node, image = %accepted.resource.id, job = %accepted.job.id, "image from snapshot accepted");
    ctx.enqueue(Work::Snapshot(id.clone()));
    Ok(accepted)
}

async fn from_snapshot_once(
    ctx: &SharedCtx,
    caller: &Caller,
    id: &SnapshotId,
    new: &CreateImage,
) -> ApiResult<(Accepted<Image>, String)> {
    let mut tx = db::begin(&ctx.db).await?;
    // A snapshot delete locks it too, and sees this pending image.
    db::lock(&mut tx, db::Lock::Snapshot, id.as_str()).await?;
    let snap = match snapshots::get(tx.conn().await?, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r,
        _ => return Err(ApiError::not_found("snapshot", id)),
    };
    if snap.state != SnapshotState::Available.as_str() {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("snapshot {id} is {}: only an available snapshot can become an image", snap.state),
        ));
    }
    if !ctx.agent_online(AgentKind::Sta, &snap.storage_node_id) {
        return Err(ApiError::Unavailable {
            code: "agent_unavailable",
            message: format!(
                "storage node {}, which holds snapshot {id}, is offline; retry when it is back",
                snap.storage_node_id
            ),
        });
    }
    let image = pending_image(new, format!("{SNAPSHOT_PREFIX}{id}"), &caller.account_id);
    let job = insert_pending(&mut tx, ctx, caller, &image, "snapshot.image").await?;
    tx.commit().await?;
    ctx.events.wake();
    Ok((Accepted { job, resource: image }, snap.storage_node_id))
}

/// The source a pending captured image waits for, if `node` is the agent that holds it
/// (the instance's host, or the snapshot's storage node).
async fn waiting(ctx: &SharedCtx, node: &str, id: &ImageId) -> ApiResult<(Image, Origin)> {
    let row = image_store::get(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("image", id))?;
    let Some(origin) = Origin::of(&row.source) else {
        return Err(ApiError::not_found("image", id));
    };
    let image = row.into_api()?;
    let holder = match &origin {
        // A stopped capture comes from the last host; a live one from the host it runs
        // on (still there if it was stopped meanwhile: hva holds it until the upload ends).
        Origin::Instance(i) => match store::get(&ctx.db, i).await? {
            Some(i) => match i.state()? {
                InstanceState::Capturing => i.last_host_id,
                InstanceState::Terminated => None,
                _ => i.host_node_id.or(i.last_host_id),
            },
            None => None,
        },
        // Whatever the snapshot's state: a snapshot whose data sta found lost is `failed`
        // by sta's report, maybe before sta's answer to the capture, which says the same
        // and must still end the image (it waited forever, seen in CI). A snapshot with a
        // pending image cannot be deleted.
        Origin::Snapshot(s) => snapshots::get(&ctx.db, s).await?.map(|s| s.storage_node_id),
    };
    if image.state != ImageState::Pending || holder.as_deref() != Some(node) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("image {id} is not waiting for a capture from node {node} (it is {})", image.state),
        ));
    }
    Ok((image, origin))
}

/// The flattened disk from the instance's host, or the snapshot's blocks from its
/// storage node: checked and stored like an upload (a tenant's disk is hostile data).
pub async fn receive<S, E>(ctx: &SharedCtx, node: &str, id: &ImageId, body: S) -> ApiResult<Image>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (image, origin) = waiting(ctx, node, id).await?;
    let _guard = Ingesting::claim(ctx, id).await?;
    match image::ingest(ctx, &image, body, None, Some(&origin)).await? {
        Ingested::Stored(image) => {
            tracing::info!(image = %id, ?origin, "capture stored");
            Ok(*image)
        }
        Ingested::Refused(r) => {
            fail(ctx, id, &origin, &format!("{}: {}", r.code, r.message)).await?;
            Err(r.into_error())
        }
        // Still pending: the reconciler asks the agent again.
        Ingested::Interrupted(why) => Err(ApiError::bad(
            "upload_incomplete",
            format!("the upload stopped before its end ({why}); the capture stays pending"),
        )),
    }
}

/// The agent could not produce the disk.
pub async fn failed(ctx: &SharedCtx, node: &str, id: &ImageId, reason: &str) -> ApiResult<()> {
    let (_, origin) = waiting(ctx, node, id).await?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
    tracing::info!(image = %id, ?origin, %reason, "capture failed on the agent");
    fail(ctx, id, &origin, &format!("capture_failed: {reason}")).await
}

async fn fail(ctx: &SharedCtx, id: &ImageId, origin: &Origin, why: &str) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        origin.lock(&mut tx).await?;
        db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        // Only a pending image ends here: a late failure must not undo a stored capture.
        if image_store::get_tx(&mut tx, id).await?.is_none_or(|r| r.state != ImageState::Pending.as_str()) {
            return Ok(());
        }
        origin.end_in_tx(&mut tx, id.as_str(), Some(why)).await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok(())
    })
    .await
}

/// Fails the capture pending from instance `instance`, if one is, with `why` (its image
/// and the image's jobs): a terminate or an evacuation ends the disk it reads.
pub(crate) async fn fail_pending(tx: &mut db::Tx<'_>, instance: &str, why: &str) -> ApiResult<()> {
    if let Some(img) = image_store::pending_capture(tx.conn().await?, instance).await? {
        let why = format!("capture_failed: {why}");
        image_store::set_failed_tx(tx, &img, &why).await?;
        job::fail_all(tx, &img, &why).await?;
    }
    Ok(())
}
