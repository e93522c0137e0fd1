//! The agent side of instances: the spec each host must hold, built from the model and
//! sent as an idempotent ensure; and hva's reports folded back in, each in one
//! transaction with everything it implies.

use crate::app::instance;
use crate::app::lifecycle;
use crate::controller::image;
use crate::controller::{Error, Result};
use crate::ctx::{SharedCtx, Work};
use crate::datastore::job;
use crate::datastore::sent::Table;
use crate::datastore::{self as db, instance as store};
use crate::error::ApiResult;

use vdc_schema::agent::Hypervisor;
use vdc_schema::bus::{CaptureSpec, InstanceReport, InstanceSpec, VolumeAttachment};
use vdc_schema::{DesiredPower, InstanceGoal, InstanceState, ObservedInstance};

/// Builds the spec of one instance from the model and sends it to its host.
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> Result<()> {
    let span = super::dispatch::span(id);
    // What the ensure needs is read on one connection (each taken from the pool and
    // returned costs a round trip to its thread), let go before anything is sent.
    let read = async {
        let mut conn = ctx.db.acquire().await?;
        let Some(store::Dispatched { row, running_job: job, volumes }) = store::get_for_dispatch(&mut conn, id).await?
        else {
            return Ok(None);
        };
        let sends_spec = !matches!(row.state()?, InstanceState::Terminated | InstanceState::Capturing)
            && row.host_node_id.is_some()
            && row.goal()? != InstanceGoal::Terminated;
        let spec =
            if sends_spec { Some(build_spec(ctx, &mut conn, &row, row.goal()?, volumes > 0).await?) } else { None };
        Result::Ok(Some((row, spec, job)))
    };
    let Some((row, spec, job)) = tracing::Instrument::instrument(read, span.clone()).await? else { return Ok(()) };
    super::dispatch::in_trace(span, id.to_owned(), job, send(ctx, id, row, spec)).await
}

/// Sends what [`dispatch`] read.
async fn send(ctx: &SharedCtx, id: &str, row: store::Row, spec: Option<InstanceSpec>) -> Result<()> {
    if row.state()? == InstanceState::Terminated {
        // Terminated without a host (it was stopped): its last host may still keep the
        // powered-off guest and its disk.
        if let Some(last) = row.last_host_id.as_deref().and_then(|h| h.parse().ok()) {
            let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: last };
            let _ = hva.ensure_instance_absent(row.id.parse().map_err(Error::model)?, row.spec_gen as u64).await;
        }
        return Ok(());
    }
    if row.state()? == InstanceState::Capturing {
        return capture(ctx, &row).await;
    }
    let Some(host) = row.host_node_id.clone() else { return Ok(()) };
    let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(Error::model)? };
    if let Some(spec) = spec {
        hva.ensure_instance(spec).await?;
        if row.state()? == InstanceState::Running {
            live_capture(ctx, &row, &hva).await?;
        }
    } else {
        hva.ensure_instance_absent(row.id.parse().map_err(Error::model)?, row.spec_gen as u64).await?;
    }
    if let Some(obs) = &ctx.ensure_observer {
        obs(id);
    }
    ctx.sent.sent(Table::Instances, id, row.spec_gen).await;
    Ok(())
}

/// Asks the host that holds a capturing instance's disk to capture it (again: hva runs
/// one capture per image, and dcmgr takes data only for a pending image).
async fn capture(ctx: &SharedCtx, row: &store::Row) -> Result<()> {
    let Some(host) = row.last_host_id.as_deref() else { return Ok(()) };
    let Some(spec) = capture_spec(ctx, row, host).await? else { return Ok(()) };
    let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: host.parse().map_err(Error::model)? };
    hva.capture_instance(spec).await?;
    ctx.sent.sent(Table::Instances, &row.id, row.spec_gen).await;
    Ok(())
}

/// A running instance's pending capture (crash-consistent, `app::capture`) goes to the
/// host it runs on; hva runs one capture per image, so sending it again is harmless.
async fn live_capture(ctx: &SharedCtx, row: &store::Row, hva: &vdc_bus::HvaClient) -> Result<()> {
    let Some(host) = row.host_node_id.as_deref() else { return Ok(()) };
    if let Some(spec) = capture_spec(ctx, row, host).await? {
        hva.capture_instance(spec).await?;
    }
    Ok(())
}

/// The capture of the instance's pending image (none without one), uploaded from `host`.
async fn capture_spec(ctx: &SharedCtx, row: &store::Row, host: &str) -> Result<Option<CaptureSpec>> {
    let mut conn = ctx.db.acquire().await?;
    let image = crate::datastore::image::pending_capture(&mut conn, &row.id).await?;
    drop(conn);
    let Some(image) = image else { return Ok(None) };
    Ok(Some(CaptureSpec {
        instance_id: row.id.parse().map_err(Error::model)?,
        upload: crate::app::capture::upload_to(ctx, &image.parse().map_err(Error::model)?, host),
    }))
}

async fn build_spec(
    ctx: &SharedCtx,
    conn: &mut db::Conn,
    row: &store::Row,
    goal: InstanceGoal,
    has_volumes: bool,
) -> Result<InstanceSpec> {
    let image = image::spec_on(ctx, conn, &row.image_id, row.host_node_id.as_deref().unwrap_or_default()).await?;
    let nics =
        store::nics(&mut *conn, &row.id).await?.into_iter().map(store::Nic::into_spec).collect::<ApiResult<_>>()?;
    let mut ssh_public_keys = vec![];
    if let Some(k) = &row.ssh_key_id {
        ssh_public_keys.extend(crate::datastore::keypair::public_key(&mut *conn, k).await?);
    }
    let vols = if has_volumes { store::volume_targets(&mut *conn, &row.id).await? } else { vec![] };
    // A volume is exported to the host its instance is on now (none while stopped): let
    // sta catch up with every placement and power change. Idempotent; the loop ends
    // because a report re-dispatches the instance only when the target changes.
    for (v, _) in &vols {
        if let Ok(v) = v.parse() {
            ctx.enqueue(Work::Volume(v));
        }
    }
    let hypervisor = row.hypervisor.parse().map_err(Error::model)?;
    Ok(InstanceSpec {
        id: row.id.parse().map_err(Error::model)?,
        spec_gen: row.spec_gen as u64,
        power: if goal == InstanceGoal::Running { DesiredPower::Running } else { DesiredPower::Off },
        hypervisor,
        cpus: row.cpus as u32,
        memory_mib: row.memory_mib as u32,
        hostname: crate::app::instance::hostname(&row.name, &row.id),
        image,
        nics,
        ssh_public_keys,
        user_data: row.user_data.clone(),
        // A container given no size (from a bundle) gets the size it is booked for.
        root_disk_size: crate::app::scheduler::root_size(hypervisor, row.root_disk_size.map(|v| v as u64)),
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
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: InstanceReport) -> Result<()> {
    let mut tx = db::begin(&ctx.db).await?;
    let after = apply_in(&mut tx, node, gen, r, None).await?;
    tx.commit().await?;
    ctx.events.wake();
    after.run(ctx, node).await;
    Ok(())
}

/// What is left to do for a report once its transaction is committed.
pub enum ReportAfter {
    Nothing,
    /// The host holds a copy the model does not place there: it is told to remove it.
    Garbage(InstanceReport),
    /// Folded: `from` is the state it had.
    Folded {
        id: vdc_schema::id::InstanceId,
        from: String,
        folded: Folded,
    },
}

impl ReportAfter {
    pub async fn run(self, ctx: &SharedCtx, node: &str) {
        match self {
            ReportAfter::Nothing => {}
            ReportAfter::Garbage(r) => garbage(ctx, node, &r).await,
            ReportAfter::Folded { id, from, folded } => {
                if folded.state.as_str() != from {
                    tracing::info!(instance = %id, %from, to = %folded.state, "instance state");
                }
                folded.after(ctx, node).await
            }
        }
    }
}

/// Applies report `r` of host `node` in `tx` (which other reports may share); `locked`:
/// the instance as [`store::lock_for_reports`] locked it in `tx` (when nothing since
/// changed it), else it is locked here.
pub async fn apply_in(
    tx: &mut db::Tx<'_>,
    node: &str,
    gen: u64,
    r: InstanceReport,
    locked: Option<store::Reported>,
) -> Result<ReportAfter> {
    // A copy reported gone or on its way out (after the ensure-absent it was sent) is
    // not told again: each ensure would answer with another report, for ever.
    let leaving = matches!(r.state, ObservedInstance::Absent | ObservedInstance::Stopping);
    let locked = match locked {
        Some(l) => Some(l),
        None => store::lock_for_report(tx, r.id.as_str()).await?,
    };
    let Some(store::Reported { row, volumes_in_transit }) = locked else {
        // Never heard of: a dcmgr on another database (a wrong database_url beside the
        // site's NATS removed a whole site's guests so), or a record removed long after
        // its terminate. A guest is removed only when its record says it belongs
        // elsewhere or is terminated.
        if !leaving {
            tracing::warn!(
                instance = %r.id, node,
                "host holds an instance this database has no record of; left alone (is this dcmgr on the \
                 site's database? if the guest is stale, remove it on the host)"
            );
        }
        return Ok(ReportAfter::Nothing);
    };
    if row.state == InstanceState::Terminated.as_str() || row.host_node_id.as_deref() != Some(node) {
        // Only clean up copies the model has moved away from; a stopped instance's last
        // host keeps its powered-off guest (and disk) for the next start.
        let gone = row.state == InstanceState::Terminated.as_str() || !row.belongs_on(node);
        return Ok(if gone && !leaving { ReportAfter::Garbage(r) } else { ReportAfter::Nothing });
    }
    if (r.spec_gen as i64) < row.spec_gen || (gen as i64) <= row.report_gen {
        return Ok(ReportAfter::Nothing);
    }
    let folded = fold(tx, &row, volumes_in_transit > 0, node, gen, &r).await?;
    Ok(ReportAfter::Folded { id: r.id, from: row.state, folded })
}

/// What a folded report changed, and what is left to do once it is committed.
pub struct Folded {
    state: InstanceState,
    removed: instance::Removed,
    /// Interfaces whose peers' tunnels follow the instance leaving the host.
    peers: Vec<String>,
    /// Volumes the guest no longer holds.
    detached: Vec<vdc_schema::id::VolumeId>,
    /// (vCPUs, MiB) given back on the host in SQL, to give back in memory once committed.
    released: Option<(i64, i64)>,
}

/// Applies report `r` of host `node` to the instance `row` (locked in `tx`): its state,
/// the host's reservation, its jobs, its interfaces and its volumes.
async fn fold(
    tx: &mut db::Tx<'_>,
    row: &store::Row,
    volumes_in_transit: bool,
    node: &str,
    gen: u64,
    r: &InstanceReport,
) -> Result<Folded> {
    let out = lifecycle::on_report(row.goal()?, r.state);
    let failure = if out.state == InstanceState::Failed {
        Some(r.reason.clone().unwrap_or_else(|| "the host reported a failure without a reason".into()))
    } else {
        None
    };
    let observed = store::Observed {
        state: out.state,
        goal: out.goal,
        gen,
        failure: failure.as_deref(),
        release_host: out.release_host,
    };
    // The networks it leaves the host on (read before a terminate removes its interfaces).
    let leaves =
        if out.release_host { crate::datastore::interface::networks_of_instance(tx, &row.id).await? } else { vec![] };
    // The instance's row and its jobs, which follow the new state: on SQLite sent with
    // the transaction's next round trip (the reports applied together, with their commit).
    store::apply_report(tx, &row.id, &row.state, &observed).await?;
    if let Some(f) = &failure {
        job::fail_all(tx, &row.id, f).await?;
    } else {
        // Running, it has also done the reboots asked up to the one it reports.
        let rebooted = (out.state == InstanceState::Running).then_some(r.reboot_gen);
        job::finish_reached(tx, &row.id, out.state.as_str(), rebooted).await?;
    }
    if out.release_host {
        crate::datastore::host::release(tx, node, row.cpus, row.memory_mib).await?;
    }
    let mut removed = instance::Removed::default();
    if out.state == InstanceState::Terminated {
        removed = instance::finalize_terminated(tx, row).await?;
    }
    // Volume attachments follow it too.
    let peers = crate::datastore::interface::bump_for_departure(tx, &leaves, node).await?;
    let takes_volumes = row.hypervisor != vdc_schema::HypervisorKind::Lxc.as_str();
    let detached = if volumes_in_transit {
        crate::controller::volume::on_instance_report(tx, &row.id, &r.volumes, out.state, takes_volumes).await?
    } else {
        vec![]
    };
    let released = out.release_host.then_some((row.cpus, row.memory_mib));
    Ok(Folded { state: out.state, removed, peers, detached, released })
}

impl Folded {
    async fn after(self, ctx: &SharedCtx, node: &str) {
        if let Some((cpus, memory_mib)) = self.released {
            let b = crate::datastore::host::Booking { cpus: cpus as u32, memory_mib: memory_mib as u32, disk_mib: 0 };
            ctx.room.gave_back(node, b);
        }
        self.removed.enqueue(ctx);
        for v in self.peers {
            if let Ok(v) = v.parse() {
                ctx.enqueue(Work::Interface(v));
            }
        }
        for v in self.detached {
            // Detached from the guest: attached where a bundle import moved it, if it did.
            if let Err(e) = crate::app::volume::attach_asked(ctx, &v).await {
                tracing::warn!(volume = %v, error = %e, "attaching a detached volume where an import asked");
            }
            // sta can withdraw the export now.
            ctx.enqueue(Work::Volume(v));
        }
    }
}

/// Takes instance `id` off host `node`, which an admin evacuates because it is gone for
/// good: as if the host had reported the guest gone after a stop was asked (a terminate
/// asked stays one). The instance ends stopped with neither a host nor a last host (its
/// root disk was on `node`), its jobs and a pending capture failed; started, it boots a
/// fresh root disk on another host, with its volumes and addresses. False when it is no
/// longer on `node`.
pub async fn evacuate(ctx: &SharedCtx, node: &str, id: &str) -> ApiResult<bool> {
    let why = format!("host {node} was evacuated: the guest and its root disk were lost with the host");
    let mut tx = db::begin(&ctx.db).await?;
    let Some(row) = store::lock_get(&mut tx, id).await? else { return Ok(false) };
    let placed = row.host_node_id.as_deref() == Some(node);
    let kept_there = row.host_node_id.is_none() && row.last_host_id.as_deref() == Some(node);
    if row.state()? == InstanceState::Terminated || !(placed || kept_there) {
        return Ok(false);
    }
    job::fail_all(&mut tx, id, &why).await?;
    crate::app::capture::fail_pending(&mut tx, id, &why).await?;
    // Its ports stay on the host's switch (a running guest's, or a stopped one's kept for
    // its next start); should that switch still answer, they go now, else when it
    // reports them again (`controller::interface::apply_report`).
    let ports = crate::datastore::interface::generations(tx.conn().await?, id).await?;
    let mut folded = None;
    if placed {
        let goal =
            if row.goal()? == InstanceGoal::Terminated { InstanceGoal::Terminated } else { InstanceGoal::Stopped };
        store::set_intent(&mut tx, id, row.state()?, goal, false).await?;
        let row =
            store::get(tx.conn().await?, id).await?.ok_or_else(|| crate::error::ApiError::not_found("instance", id))?;
        let gone = InstanceReport {
            id: row.id.parse().map_err(crate::error::ApiError::internal)?,
            spec_gen: row.spec_gen as u64,
            state: ObservedInstance::Absent,
            reboot_gen: row.reboot_gen as u64,
            volumes: vec![],
            reason: None,
        };
        folded = Some(
            fold(&mut tx, &row, true, node, row.report_gen as u64, &gone)
                .await
                .map_err(crate::error::ApiError::internal)?,
        );
    }
    // Its root disk is lost with the host (a terminate's fold gave it back already).
    if folded.as_ref().is_none_or(|f| f.state != InstanceState::Terminated) {
        crate::datastore::host::release_disk(&mut tx, node, row.disk_mib).await?;
    }
    store::forget_host(&mut tx, id).await?;
    tx.commit().await?;
    ctx.room.invalidate();
    ctx.events.wake();
    tracing::warn!(instance = id, host = node, "instance evacuated from its host");
    if let Some(f) = folded {
        f.after(ctx, node).await;
    }
    for (vif, gen) in ports {
        if let Ok(v) = vif.parse() {
            ctx.enqueue(Work::UnplugInterface(v, node.to_owned(), gen as u64));
        }
    }
    if let Ok(i) = id.parse() {
        ctx.enqueue(Work::Instance(i));
    }
    Ok(true)
}

async fn garbage(ctx: &SharedCtx, node: &str, r: &InstanceReport) {
    if let Ok(n) = node.parse() {
        tracing::info!(instance = %r.id, node, "host holds an instance the model does not place there; removing it");
        let hva = vdc_bus::HvaClient { bus: ctx.bus.clone(), node_id: n };
        let _ = hva.ensure_instance_absent(r.id.clone(), r.spec_gen).await;
    }
}
