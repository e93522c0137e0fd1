//! The data of a bundle export (issue 13): instances' root disks and volumes' data become
//! blobs through the paths that already turn them into images, not a second copy
//! mechanism. A stopped instance is captured (hva flattens its disk and uploads it through
//! `ingest`); a volume is snapshotted and the snapshot made an image (sta reads it). The
//! images and snapshots made for the export are temporary: [`Temporaries::remove`] deletes
//! them once the bundle is written (or the export failed). Blobs are content-addressed,
//! so removing a temporary image never takes data another image still has.
//!
//! A running QEMU/KVM instance is captured as it runs, crash-consistently (its disk as
//! at one instant: hva's push backup, see `app::capture`), and never stopped. With
//! `stop`, it is stopped first (an application-consistent disk) and started again as soon
//! as its disk is captured. One in a transitional state is refused (`instance_running`).

use crate::app::{capture, image as images, instance as instances, snapshot};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::event::Kind;
use crate::datastore::{self as db, bundle as bstore, image as image_store, instance as istore, snapshot as snapshots};
use crate::error::{ApiError, ApiResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{error::RecvError, Receiver};
use vdc_schema::api::Event;
use vdc_schema::api::{CaptureInstance, CreateSnapshot, CreateSnapshotImage};
use vdc_schema::id::{ImageId, InstanceId, SnapshotId, VolumeId};
use vdc_schema::{HypervisorKind, ImageFormat, ImageState, InstanceAction, InstanceState, SnapshotState};

/// How long one capture (or stop) may take before the export gives up.
const WAIT: Duration = Duration::from_secs(30 * 60);
/// How often a wait reads again when no event came (another dcmgr's change is published
/// by the event pump within its own fallback period).
const POLL: Duration = Duration::from_millis(500);

/// What the export made and must remove, or start again.
#[derive(Default)]
pub struct Temporaries {
    images: Vec<ImageId>,
    snapshots: Vec<SnapshotId>,
    /// The run that recorded them (none for a model-only export, which makes nothing).
    run: Option<ExportRun>,
}

impl Temporaries {
    /// Deletes the export's images and snapshots (best effort: each failure is logged),
    /// then forgets the run's records: a failure left is swept later.
    pub async fn remove(self, ctx: &SharedCtx, caller: &Caller) {
        let mut left = false;
        for id in &self.images {
            if let Err(e) = images::delete(ctx, caller, id).await {
                tracing::warn!(image = %id, error = %e, "bundle export: removing a temporary image");
                left = true;
            }
        }
        for id in &self.snapshots {
            if let Err(e) = snapshot::delete(ctx, caller, id).await {
                tracing::warn!(snapshot = %id, error = %e, "bundle export: removing a temporary snapshot");
                left = true;
            }
        }
        if let (Some(run), false) = (&self.run, left) {
            if let Err(e) = bstore::end_export_run(&ctx.db, &run.id).await {
                tracing::warn!(export = run.id, error = %e, "bundle export: forgetting its run");
            }
        }
    }
}

/// The advisory locks' class of export runs (`vdcE` in ASCII).
pub const EXPORT_CLASS: i32 = 0x7664_6345;

/// A bundle export that makes images and snapshots, recorded in the database before it
/// makes any (migration 0029) and claimed while it runs: in this process's
/// `ctx.exports` and, with several dcmgrs on one PostgreSQL, by an advisory lock
/// (`datastore::locks`). What a dcmgr stopped or killed mid-export made is found by
/// [`sweep`] once no one holds its run.
pub struct ExportRun {
    id: String,
    ctx: SharedCtx,
    shared: Option<db::locks::Held>,
}

impl ExportRun {
    pub async fn start(ctx: &SharedCtx, caller: &Caller) -> ApiResult<ExportRun> {
        let id = format!("exp-{:016x}", rand::random::<u64>());
        ctx.exports.lock().unwrap().insert(id.clone());
        let mut run = ExportRun { id, ctx: ctx.clone(), shared: None };
        // Claimed before it is recorded: a sweep never sees it unclaimed.
        if let Some(locks) = &ctx.locks {
            let held = locks.try_lock(EXPORT_CLASS, db::advisory_key(&run.id)).await?;
            run.shared = Some(held.ok_or_else(|| ApiError::internal("a new export run is claimed already"))?);
        }
        bstore::start_export_run(&ctx.db, &run.id, &caller.account_id).await?;
        Ok(run)
    }

    async fn record(&self, kind: &str, name: &str) -> ApiResult<()> {
        Ok(bstore::add_export_temporary(&self.ctx.db, &self.id, kind, name).await?)
    }

    async fn forget(&self, kind: &str, name: &str) -> ApiResult<()> {
        Ok(bstore::remove_export_temporary(&self.ctx.db, &self.id, kind, name).await?)
    }
}

impl Drop for ExportRun {
    fn drop(&mut self) {
        // The lock is given back first: this process's sweep, which may take it once the
        // run has left `ctx.exports`, takes it on the same connection after that.
        drop(self.shared.take());
        self.ctx.exports.lock().unwrap().remove(&self.id);
    }
}

/// Finishes the exports no dcmgr runs any more (stopped or killed mid-export): deletes the
/// images and snapshots they recorded and starts again the instances they stopped. A run
/// whose objects cannot all go yet (a capture still pending) is kept for the next sweep.
/// The leader sweeps every few seconds (`controller::reconciler`).
pub async fn sweep(ctx: &SharedCtx) -> ApiResult<()> {
    for (run, account) in bstore::export_runs(&ctx.db).await? {
        if ctx.exports.lock().unwrap().contains(&run) {
            continue;
        }
        let _held = match &ctx.locks {
            Some(locks) => match locks.try_lock(EXPORT_CLASS, db::advisory_key(&run)).await? {
                Some(held) => Some(held),
                None => continue,
            },
            None => None,
        };
        let caller = Caller::system(account.parse().map_err(ApiError::internal)?);
        let mut left = false;
        // Images first: an image made of a snapshot holds the snapshot.
        let mut temps = bstore::export_temporaries(&ctx.db, &run).await?;
        temps.sort_by_key(|(kind, _)| ["image", "snapshot", "restart"].iter().position(|k| k == kind));
        for (kind, name) in temps {
            let done = match kind.as_str() {
                "image" | "snapshot" => match bstore::export_temporary_id(&ctx.db, &kind, &account, &name).await? {
                    None => true,
                    Some(id) if kind == "image" => {
                        images::delete(ctx, &caller, &id.parse().map_err(ApiError::internal)?).await.is_ok()
                    }
                    Some(id) => snapshot::delete(ctx, &caller, &id.parse().map_err(ApiError::internal)?).await.is_ok(),
                },
                _ => {
                    let id = name.parse().map_err(ApiError::internal)?;
                    let started = instances::act(ctx, &caller, &id, InstanceAction::Start).await.map(|_| ());
                    let now = match &started {
                        Err(ApiError::Conflict { .. }) => {
                            instances::fetch(ctx, &caller, &id).await.ok().map(|i| i.state)
                        }
                        _ => None,
                    };
                    restarted(&started, now)
                }
            };
            if done {
                bstore::remove_export_temporary(&ctx.db, &run, &kind, &name).await?;
            } else {
                left = true;
            }
        }
        if !left {
            bstore::end_export_run(&ctx.db, &run).await?;
            tracing::info!(export = run, account, "bundle export cut off earlier: what it made is removed");
        }
    }
    Ok(())
}

/// Whether an instance a cut-off export stopped needs no more starting, from the outcome
/// of starting it and, when that was refused, its state now. A refusal while the stop or
/// the capture the export asked for still runs (dcmgr restarted meanwhile) is not the end:
/// it is started once they are over, unless the tenant is deleting it.
fn restarted(start: &ApiResult<()>, now: Option<InstanceState>) -> bool {
    match start {
        // Running or starting already (200), or gone.
        Ok(()) | Err(ApiError::NotFound { .. }) => true,
        Err(ApiError::Conflict { .. }) => {
            matches!(now, None | Some(InstanceState::ShuttingDown | InstanceState::Terminated))
        }
        Err(_) => false,
    }
}

/// The blobs (SHA-256) of the captured disks and volumes, with the format the capture
/// found (qemu-img's probe at ingest, on the source site).
#[derive(Debug, Default)]
pub struct Captured {
    /// instance ID → root disk blob
    pub disks: HashMap<String, (String, ImageFormat)>,
    /// volume ID → data blob
    pub volumes: HashMap<String, (String, ImageFormat)>,
}

/// One instance as the export sees it.
pub struct DiskSource {
    pub id: String,
    pub name: String,
    pub hypervisor: String,
    pub image_format: String,
}

/// A name for a temporary image or snapshot: unique, so a crashed export never blocks the
/// next one.
fn temp_name(of: &str) -> String {
    format!("bundle-export-{of}-{:08x}", rand::random::<u32>())
}

/// How an instance's disk is read for the bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disk {
    /// Stopped: its disk as it is.
    AsIs,
    /// Running: copied at one instant while it runs on (crash-consistent).
    Live,
    /// `--stop`: stopped for the capture, started again right after.
    StopFirst,
    /// `--stop` of a halted one (powered off, its host kept): stopped for the capture
    /// and left so (powered off still, its host released). Started again, it ran.
    StopOnly,
}

/// Whether an instance has a root the capture path can read (`capture::captured_format`).
/// Kernel-booted VMs travel without one.
fn has_disk(i: &DiskSource) -> bool {
    let container = i.hypervisor == HypervisorKind::Lxc.as_str();
    i.image_format.parse().ok().and_then(|f| capture::captured_format(container, f)).is_some()
}

/// Captures every disk-holding instance of `instances` and every volume in `volumes`.
/// On failure everything made so far is removed and stopped instances are started again.
pub async fn capture_all(
    ctx: &SharedCtx,
    caller: &Caller,
    list: &[DiskSource],
    volumes: &[String],
    stop: bool,
) -> ApiResult<(Captured, Temporaries)> {
    let mut temp = Temporaries { run: Some(ExportRun::start(ctx, caller).await?), ..Default::default() };
    let mut restart = Vec::new();
    let r = capture_inner(ctx, caller, list, volumes, stop, &mut temp, &mut restart).await;
    let run = temp.run.as_ref().expect("started above");
    for id in &restart {
        match instances::act(ctx, caller, id, InstanceAction::Start).await {
            Ok(_) => {
                if let Err(e) = run.forget("restart", id.as_str()).await {
                    tracing::warn!(instance = %id, error = %e, "bundle export: forgetting a restart");
                }
            }
            Err(e) => tracing::warn!(instance = %id, error = %e, "bundle export: starting a stopped instance again"),
        }
    }
    match r {
        Ok(c) => Ok((c, temp)),
        Err(e) => {
            temp.remove(ctx, caller).await;
            Err(e)
        }
    }
}

async fn capture_inner(
    ctx: &SharedCtx,
    caller: &Caller,
    list: &[DiskSource],
    volumes: &[String],
    stop: bool,
    temp: &mut Temporaries,
    restart: &mut Vec<InstanceId>,
) -> ApiResult<Captured> {
    let mut disks = Vec::new();
    // Everything is checked before anything is stopped or captured.
    for i in list.iter().filter(|i| has_disk(i)) {
        let row = istore::get(&ctx.db, &i.id).await?.ok_or_else(|| ApiError::not_found("instance", &i.id))?;
        let state = row.state()?;
        let id: InstanceId = i.id.parse().map_err(ApiError::internal)?;
        match state {
            // Never ran: no host holds a disk of it; it travels as its image.
            InstanceState::Stopped if row.last_host_id.is_none() => {}
            InstanceState::Stopped => disks.push((id, Disk::AsIs)),
            InstanceState::Halted if stop => disks.push((id, Disk::StopOnly)),
            _ if stop => disks.push((id, Disk::StopFirst)),
            InstanceState::Running => disks.push((id, Disk::Live)),
            _ => {
                return Err(ApiError::conflict(
                    "instance_running",
                    format!(
                        "instance {} ({}) is {state}: wait until it is running (captured as it runs) or \
                         stopped, export with --stop (it is stopped for the capture and started again; a \
                         halted one is left stopped), or export --model-only",
                        i.name, i.id
                    ),
                ))
            }
        }
    }
    let run = temp.run.as_ref().expect("a capturing export has its run");
    for (id, how) in &disks {
        if *how == Disk::StopFirst {
            run.record("restart", id.as_str()).await?;
            instances::act(ctx, caller, id, InstanceAction::Stop).await?;
            restart.push(id.clone());
        } else if *how == Disk::StopOnly {
            instances::act(ctx, caller, id, InstanceAction::Stop).await?;
        }
    }
    // Disks (hva) and volumes (sta) are read by different agents: both at once.
    let mut vtemp = Temporaries::default();
    let (disks, vols) = tokio::join!(
        capture_disks(ctx, caller, run, &disks, &mut temp.images, restart),
        capture_volumes(ctx, caller, run, volumes, &mut vtemp),
    );
    temp.images.extend(vtemp.images);
    temp.snapshots.extend(vtemp.snapshots);
    Ok(Captured { disks: disks?, volumes: vols? })
}

/// Captures each disk into a temporary image (listed in `images`); an instance stopped for
/// it is started again as soon as its disk is read.
async fn capture_disks(
    ctx: &SharedCtx,
    caller: &Caller,
    run: &ExportRun,
    disks: &[(InstanceId, Disk)],
    images: &mut Vec<ImageId>,
    restart: &mut Vec<InstanceId>,
) -> ApiResult<HashMap<String, (String, ImageFormat)>> {
    let mut out = HashMap::new();
    for (id, how) in disks {
        if *how != Disk::Live {
            wait_stopped(ctx, id).await?;
        }
        let image_name = temp_name(id.as_str());
        run.record("image", &image_name).await?;
        let image = capture::capture(
            ctx,
            caller,
            id,
            CaptureInstance { image_name, os: None, min_disk: None, min_memory: None, default_user: None },
        )
        .await?
        .resource
        .id;
        images.push(image.clone());
        out.insert(id.to_string(), wait_image(ctx, &image).await?);
        // Its disk is read: it need not wait for the others.
        if let Some(pos) = restart.iter().position(|r| r == id) {
            let id = restart.remove(pos);
            instances::act(ctx, caller, &id, InstanceAction::Start).await?;
            run.forget("restart", id.as_str()).await?;
        }
    }
    Ok(out)
}

/// Volumes captured at once: sta reads one while dcmgr hashes and stores another (a
/// small volume waited 30 ms behind a 256 MiB one).
const VOLUMES_AT_ONCE: usize = 4;

/// Snapshots each volume and makes the snapshot a temporary image (both listed in `temp`,
/// also when a capture fails).
async fn capture_volumes(
    ctx: &SharedCtx,
    caller: &Caller,
    run: &ExportRun,
    volumes: &[String],
    temp: &mut Temporaries,
) -> ApiResult<HashMap<String, (String, ImageFormat)>> {
    use futures::StreamExt;
    let (mut waiting, mut running) = (volumes.iter(), futures::stream::FuturesUnordered::new());
    let (mut out, mut failed) = (HashMap::new(), None);
    loop {
        // After a failure, only what runs is let finish (what it makes is removed).
        while running.len() < VOLUMES_AT_ONCE && failed.is_none() {
            let Some(v) = waiting.next() else { break };
            running.push(capture_volume(ctx, caller, run, v));
        }
        let Some((v, made, r)) = running.next().await else { break };
        temp.images.extend(made.images);
        temp.snapshots.extend(made.snapshots);
        match r {
            Ok(blob) => {
                out.insert(v.to_owned(), blob);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// One volume's capture: the volume, what it made (whatever the outcome) and its blob.
async fn capture_volume<'v>(
    ctx: &SharedCtx,
    caller: &Caller,
    run: &ExportRun,
    v: &'v str,
) -> (&'v str, Temporaries, ApiResult<(String, ImageFormat)>) {
    let mut made = Temporaries::default();
    let r = snapshot_volume(ctx, caller, run, v, &mut made).await;
    (v, made, r)
}

async fn snapshot_volume(
    ctx: &SharedCtx,
    caller: &Caller,
    run: &ExportRun,
    v: &str,
    temp: &mut Temporaries,
) -> ApiResult<(String, ImageFormat)> {
    let volume_id: VolumeId = v.parse().map_err(ApiError::internal)?;
    let name = temp_name(v);
    run.record("snapshot", &name).await?;
    let snap = snapshot::create(ctx, caller, CreateSnapshot { volume_id, name }).await?.resource.id;
    temp.snapshots.push(snap.clone());
    wait_snapshot(ctx, &snap).await?;
    let image_name = temp_name(v);
    run.record("image", &image_name).await?;
    let image = capture::from_snapshot(
        ctx,
        caller,
        &snap,
        CreateSnapshotImage { image_name, format: Some(ImageFormat::Raw), ..Default::default() },
    )
    .await?
    .resource
    .id;
    temp.images.push(image.clone());
    wait_image(ctx, &image).await
}

async fn wait_stopped(ctx: &SharedCtx, id: &InstanceId) -> ApiResult<()> {
    let t = std::time::Instant::now();
    let mut changes = ctx.events.changes();
    loop {
        let row = istore::get(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("instance", id))?;
        match row.state()? {
            InstanceState::Stopped => return Ok(()),
            InstanceState::Terminated | InstanceState::ShuttingDown => {
                return Err(ApiError::conflict(
                    "instance_gone",
                    format!("instance {id} was terminated during the export"),
                ))
            }
            _ if t.elapsed() > WAIT => {
                return Err(ApiError::conflict(
                    "export_timeout",
                    format!("instance {id} did not stop within {} s", WAIT.as_secs()),
                ))
            }
            _ => changed(&mut changes, Kind::Instance, id.as_str()).await,
        }
    }
}

async fn wait_snapshot(ctx: &SharedCtx, id: &SnapshotId) -> ApiResult<()> {
    let t = std::time::Instant::now();
    let mut changes = ctx.events.changes();
    loop {
        let row = snapshots::get(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("snapshot", id))?;
        if row.state == SnapshotState::Available.as_str() {
            return Ok(());
        }
        if row.state == SnapshotState::Failed.as_str() || t.elapsed() > WAIT {
            return Err(ApiError::conflict(
                "export_failed",
                format!("the export's snapshot {id} of volume {} is {}", row.volume_id, row.state),
            ));
        }
        changed(&mut changes, Kind::Snapshot, id.as_str()).await;
    }
}

/// Waits for an image of the export to be stored; its blob's SHA-256 and its format.
async fn wait_image(ctx: &SharedCtx, id: &ImageId) -> ApiResult<(String, ImageFormat)> {
    let t = std::time::Instant::now();
    let mut changes = ctx.events.changes();
    loop {
        let row = image_store::get(&ctx.db, id.as_str()).await?.ok_or_else(|| ApiError::not_found("image", id))?;
        if row.state == ImageState::Available.as_str() {
            let format = row.format.parse().map_err(ApiError::internal)?;
            let blob = row.blob.ok_or_else(|| ApiError::internal(format!("image {id} is available without a blob")))?;
            return Ok((blob, format));
        }
        if row.state == ImageState::Failed.as_str() || t.elapsed() > WAIT {
            let why = row.failure_reason.unwrap_or_else(|| format!("not stored within {} s", WAIT.as_secs()));
            return Err(ApiError::conflict("export_failed", format!("capturing the data of {id} failed: {why}")));
        }
        changed(&mut changes, Kind::Image, id.as_str()).await;
    }
}

/// Returns at the next event of `kind` `id` (subscribed before its state was read, so none
/// is missed), or after [`POLL`].
async fn changed(changes: &mut Receiver<Arc<[Event]>>, kind: Kind, id: &str) {
    let poll = tokio::time::sleep(POLL);
    tokio::pin!(poll);
    loop {
        tokio::select! {
            r = changes.recv() => match r {
                Ok(batch) if !batch.iter().any(|e| e.kind == kind.as_str() && e.resource_id == id) => {}
                // Its event, or some were missed: read again.
                Ok(_) | Err(RecvError::Lagged(_)) => return,
                Err(RecvError::Closed) => return poll.await,
            },
            _ = &mut poll => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_refused_while_the_export_stop_or_capture_runs_is_tried_again() {
        let refused = Err(ApiError::conflict("invalid_state", "refused"));
        assert!(!restarted(&refused, Some(InstanceState::Stopping)));
        assert!(!restarted(&refused, Some(InstanceState::Capturing)));
        assert!(restarted(&refused, Some(InstanceState::Terminated)));
        assert!(restarted(&refused, Some(InstanceState::ShuttingDown)));
        // Gone between the start and the look.
        assert!(restarted(&refused, None));
        assert!(restarted(&Ok(()), None));
        assert!(restarted(&Err(ApiError::not_found("instance", "i-x")), None));
        assert!(!restarted(&Err(ApiError::internal("database down")), None));
    }
}
