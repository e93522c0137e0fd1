//! Volumes, agent side: the ensures sent to sta, the folding of sta's reports, and of
//! what hva reports a guest has (attaches and detaches finishing).

use crate::app::volume::{on_attachment_report, on_report};
use crate::ctx::{SharedCtx, Work};
use crate::datastore::job;
use crate::datastore::{self as db, volume as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::bus::{VolumeReport, VolumeSpec};
use vdc_schema::id::*;
use vdc_schema::{InstanceState, VolumeState};

/// Sends one volume's desired state to its storage node.
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some(row) = store::get(&ctx.db, id).await? else { return Ok(()) };
    let Some(node) = row.storage_node_id.clone() else { return Ok(()) };
    let sta = vdc_bus::StaClient { bus: ctx.bus.clone(), node_id: node.parse().map_err(ApiError::internal)? };
    let unavailable = |e: AgentError| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() };
    match row.state()? {
        VolumeState::Deleted => return Ok(()),
        VolumeState::Deleting => {
            sta.ensure_volume_absent(row.id.parse().map_err(ApiError::internal)?, row.spec_gen as u64)
                .await
                .map_err(unavailable)?;
        }
        state => {
            let export_to = match (state, &row.instance_id) {
                (VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching, Some(i)) => {
                    store::instance_host(&ctx.db, i).await?.and_then(|h| h.parse().ok())
                }
                _ => None,
            };
            let source_image = match &row.image_id {
                Some(i) => match crate::controller::image::spec(ctx, i, &node).await {
                    Ok(spec) => Some(spec),
                    // Deleted after the volume was made (a delete waits for the volumes
                    // being made from it): sta needs it no more.
                    Err(ApiError::NotFound { .. }) if state != VolumeState::Creating => None,
                    Err(e) => return Err(e),
                },
                None => None,
            };
            let spec = VolumeSpec {
                id: row.id.parse().map_err(ApiError::internal)?,
                spec_gen: row.spec_gen as u64,
                size_mib: row.size_mib as u64,
                source_snapshot: row.snapshot_id.as_deref().and_then(|s| s.parse().ok()),
                source_image,
                export_to,
            };
            sta.ensure_volume(spec).await.map_err(unavailable)?;
        }
    }
    store::mark_sent(&ctx.db, id).await?;
    Ok(())
}

/// Folds one sta report into the model: the volume, its storage reservation and its jobs
/// change in one transaction, so a failure leaves the report unapplied (and unacked).
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: VolumeReport) -> ApiResult<()> {
    let mut tx = db::begin(&ctx.db).await?;
    if !db::lock(&mut tx, db::Lock::Volume, r.id.as_str()).await? {
        return Ok(());
    }
    let Some(row) = store::get(tx.conn().await?, r.id.as_str()).await? else { return Ok(()) };
    if row.storage_node_id.as_deref() != Some(node)
        || (gen as i64) <= row.report_gen
        || (r.spec_gen as i64) < row.spec_gen
    {
        return Ok(());
    }
    let state = row.state()?;
    let new_state = on_report(state, r.state);
    let target = r.target.as_ref().map(|t| serde_json::to_string(t).expect("targets serialize"));
    let reason = (new_state == VolumeState::Failed && state != VolumeState::Failed)
        .then(|| r.reason.clone().unwrap_or_else(|| "sta reported a failure".into()));
    store::record_report(&mut tx, &row.id, new_state, gen as i64, target.as_deref(), reason.as_deref()).await?;
    if new_state == VolumeState::Deleted && state != VolumeState::Deleted {
        store::release_storage(&mut tx, node, row.size_mib).await?;
    }
    match &reason {
        Some(why) => job::fail_all(&mut tx, &row.id, why).await?,
        None => job::finish(&mut tx, &row.id, new_state.as_str()).await?,
    }
    tx.commit().await?;
    ctx.events.wake();
    // Filled, or detached: an attach a bundle import asked for is done now.
    if new_state == VolumeState::Available && state != VolumeState::Available && row.attach_to.is_some() {
        if let Ok(id) = row.id.parse::<VolumeId>() {
            if let Err(e) = crate::app::volume::attach_asked(ctx, &id).await {
                tracing::warn!(volume = %id, error = %e, "attaching a volume where an import asked");
            }
        }
    }
    // A new export target for an attaching volume goes to hva with the instance spec.
    if target != row.target && matches!(state, VolumeState::Attaching | VolumeState::Attached) {
        if let Some(i) = row.instance_id.as_deref().and_then(|i| i.parse().ok()) {
            ctx.enqueue(Work::Instance(i));
        }
    }
    Ok(())
}

/// hva reported which volumes a guest really has: finish attaches and detaches, in the
/// transaction of the instance's report (which holds the instance's lock). Returns the
/// volumes now detached, whose export sta can withdraw.
///
/// A guest that takes no volumes (`takes_volumes` false: a container) never reports one:
/// an attach to it recorded before such attaches were refused would wait forever, so it
/// is undone (the volume available again, its job failed with the reason).
pub(crate) async fn on_instance_report(
    tx: &mut db::Tx<'_>,
    instance: &str,
    attached: &[VolumeId],
    state: InstanceState,
    takes_volumes: bool,
) -> ApiResult<Vec<VolumeId>> {
    let mut detached = Vec::new();
    if state == InstanceState::Terminated {
        return Ok(detached);
    }
    for (id, vstate) in store::in_transit(tx, instance).await? {
        let present = attached.iter().any(|v| v.as_str() == id);
        let from: VolumeState = vstate.parse().map_err(ApiError::internal)?;
        if !takes_volumes && from == VolumeState::Attaching {
            store::finish_transit(tx, &id, &vstate, VolumeState::Available, true).await?;
            job::fail_all(tx, &id, "an lxc container takes no volumes; the attach was undone").await?;
            detached.extend(id.parse().ok());
            continue;
        }
        let Some((new_state, clear)) = on_attachment_report(from, present) else { continue };
        store::finish_transit(tx, &id, &vstate, new_state, clear).await?;
        job::finish(tx, &id, if new_state == VolumeState::Attached { "attached" } else { "available" }).await?;
        if clear {
            detached.extend(id.parse().ok());
        }
    }
    Ok(detached)
}
