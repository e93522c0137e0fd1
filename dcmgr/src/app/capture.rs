//! Capture: a new image from a stopped instance's root disk.
//!
//! One transaction checks the instance is `stopped`, records the image (`pending`, the
//! caller's, with the source image's properties, `source` = `capture:<instance>`), moves
//! the instance to `capturing` (it cannot start meanwhile) and starts the job, whose
//! resource is the image. The dispatcher then tells the instance's last host; hva
//! flattens the disk and `PUT`s it to `/agent/v1/images/{id}/file` with its node
//! credential, where it goes through the same `ingest` checks as a tenant's upload (a
//! guest's disk is tenant data). Storing it ends the capture in the transaction that
//! makes the image available; a refusal, a failure hva reports, or a terminate fails the
//! image and its job. Either way the instance is `stopped` again. Containers are refused:
//! their root is a directory on the host, not a disk to flatten.

use crate::app::image::{self, Ingested, Ingesting};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::{self as db, image as image_store, instance as store, job};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{Accepted, CaptureInstance, CreateImage, Image};
use vdc_schema::bus::AgentKind;
use vdc_schema::id::{ImageId, InstanceId};
use vdc_schema::{HypervisorKind, ImageFormat, ImageState, InstanceGoal, InstanceState};

/// `source` of a captured image: `capture:<instance id>`.
pub const SOURCE_PREFIX: &str = "capture:";

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
    if before.hypervisor == HypervisorKind::Lxc.as_str() {
        return Err(ApiError::conflict(
            "capture_unsupported",
            format!("instance {id} is a container: its root is a directory on the host, not a disk to capture"),
        ));
    }
    let source = crate::controller::image::fetch_any(&ctx.db, &before.image_id).await?;
    if !matches!(source.format, ImageFormat::Qcow2 | ImageFormat::Raw) {
        return Err(ApiError::conflict(
            "capture_unsupported",
            format!("instance {id} boots a {} image and has no root disk to capture", source.format),
        ));
    }
    let new = CreateImage {
        name: req.image_name,
        format: ImageFormat::Qcow2,
        arch: source.arch,
        hypervisors: source.hypervisors.clone(),
        source: None,
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: source.boot_mode,
        kernel_id: source.kernel_id.clone(),
        min_disk: req.min_disk.or(source.min_disk),
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
    let mut tx = ctx.db.begin().await?;
    db::lock(&mut tx, db::Lock::Instance, id.as_str()).await?;
    let row = match store::get(&mut *tx, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r,
        _ => return Err(ApiError::not_found("instance", id)),
    };
    let state = row.state()?;
    if state != InstanceState::Stopped {
        return Err(ApiError::conflict(
            "instance_not_stopped",
            format!("instance {id} is {state}: only a stopped instance can be captured; stop it first"),
        ));
    }
    let Some(host) = row.last_host_id.clone() else {
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
    // The inherited kernel must still exist at commit (its delete locks it too).
    if let Some(k) = &new.kernel_id {
        if !db::lock(&mut tx, db::Lock::Image, k.as_str()).await? {
            return Err(ApiError::conflict("capture_unsupported", format!("the kernel image {k} is gone")));
        }
    }
    let now = db::parse_time(&db::now());
    let image = Image {
        id: ImageId::generate(),
        name: new.name.clone(),
        format: new.format,
        arch: new.arch,
        hypervisors: new.hypervisors.clone(),
        source: format!("{SOURCE_PREFIX}{id}"),
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: new.boot_mode,
        kernel_id: new.kernel_id.clone(),
        min_disk: new.min_disk,
        min_memory: new.min_memory,
        os: new.os.clone(),
        public: false,
        created_at: now,
        default_user: new.default_user.clone(),
        state: ImageState::Pending,
        failure_reason: None,
        size_bytes: None,
    };
    crate::app::check_name_free(&mut tx, db::Named::Image, &caller.account_id, &image.name).await?;
    image_store::insert(&mut *tx, &caller.account_id, &image).await?;
    store::set_intent(&mut tx, id.as_str(), InstanceState::Capturing, InstanceGoal::Stopped, false).await?;
    let job = job::start(&mut tx, &caller.account_id, "instance.capture", image.id.as_str(), "available").await?;
    tx.commit().await?;
    Ok(Accepted { job, resource: image })
}

/// Ends a capture inside a transaction that holds the instance's lock (taken before the
/// image's): the image's job succeeds, or the image and its job fail; the instance is
/// `stopped` again if it is still capturing.
pub(crate) async fn end_in_tx(
    tx: &mut db::Tx<'_>,
    image_id: &str,
    instance: &str,
    failure: Option<&str>,
) -> ApiResult<()> {
    match failure {
        None => job::finish(tx, image_id, ImageState::Available.as_str()).await?,
        Some(why) => {
            image_store::set_failed_tx(tx, image_id, why).await?;
            job::fail_all(tx, image_id, why).await?;
        }
    }
    if store::get(&mut **tx, instance).await?.is_some_and(|r| r.state == InstanceState::Capturing.as_str()) {
        store::set_intent(tx, instance, InstanceState::Stopped, InstanceGoal::Stopped, false).await?;
    }
    Ok(())
}

/// The instance a pending captured image waits for, if `node` is the host that holds it.
async fn waiting(ctx: &SharedCtx, node: &str, id: &ImageId) -> ApiResult<(Image, String)> {
    let row = image_store::get(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("image", id))?;
    let Some(instance) = row.source.strip_prefix(SOURCE_PREFIX).map(str::to_owned) else {
        return Err(ApiError::not_found("image", id));
    };
    let image = row.into_api()?;
    let inst = store::get(&ctx.db, &instance).await?;
    let ok = image.state == ImageState::Pending
        && inst
            .is_some_and(|i| i.state == InstanceState::Capturing.as_str() && i.last_host_id.as_deref() == Some(node));
    if !ok {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("image {id} is not waiting for a capture from host {node} (it is {})", image.state),
        ));
    }
    Ok((image, instance))
}

/// The flattened disk from the instance's host: checked and stored like an upload.
pub async fn receive<S, E>(ctx: &SharedCtx, node: &str, id: &ImageId, body: S) -> ApiResult<Image>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (image, instance) = waiting(ctx, node, id).await?;
    let _guard = Ingesting::claim(ctx, id)?;
    match image::ingest(ctx, &image, body, Some(&instance)).await? {
        Ingested::Stored(image) => {
            tracing::info!(image = %id, %instance, "capture stored");
            Ok(*image)
        }
        Ingested::Refused(r) => {
            fail(ctx, id, &instance, &format!("{}: {}", r.code, r.message)).await?;
            Err(ApiError::bad(r.code, r.message))
        }
        // Still pending: the reconciler asks the host again.
        Ingested::Interrupted(why) => Err(ApiError::bad(
            "upload_incomplete",
            format!("the upload stopped before its end ({why}); the capture stays pending"),
        )),
    }
}

/// The host could not produce the disk.
pub async fn failed(ctx: &SharedCtx, node: &str, id: &ImageId, reason: &str) -> ApiResult<()> {
    let (_, instance) = waiting(ctx, node, id).await?;
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(1000).collect();
    tracing::info!(image = %id, %instance, %reason, "capture failed on the host");
    fail(ctx, id, &instance, &format!("capture_failed: {reason}")).await
}

async fn fail(ctx: &SharedCtx, id: &ImageId, instance: &str, why: &str) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        db::lock(&mut tx, db::Lock::Instance, instance).await?;
        db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        end_in_tx(&mut tx, id.as_str(), instance, Some(why)).await?;
        tx.commit().await?;
        Ok(())
    })
    .await
}
