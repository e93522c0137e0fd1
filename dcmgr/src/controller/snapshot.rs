//! Snapshots, agent side: the ensures sent to sta and the folding of its reports.

use crate::app::snapshot::on_report;
use crate::ctx::SharedCtx;
use crate::datastore::job;
use crate::datastore::snapshot as store;
use crate::error::{ApiError, ApiResult};
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::bus::{SnapshotImageSpec, SnapshotReport, SnapshotSpec};
use vdc_schema::id::*;
use vdc_schema::SnapshotState;

pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some(row) = store::get(&ctx.db, id).await? else { return Ok(()) };
    let sta =
        vdc_bus::StaClient { bus: ctx.bus.clone(), node_id: row.storage_node_id.parse().map_err(ApiError::internal)? };
    let unavailable = |e: AgentError| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() };
    let sid: SnapshotId = row.id.parse().map_err(ApiError::internal)?;
    let vid: VolumeId = row.volume_id.parse().map_err(ApiError::internal)?;
    match row.state.parse::<SnapshotState>().map_err(ApiError::internal)? {
        SnapshotState::Deleted => return Ok(()),
        SnapshotState::Deleting => sta.ensure_snapshot_absent(sid, vid).await.map_err(unavailable)?,
        state => {
            sta.ensure_snapshot(SnapshotSpec { id: sid.clone(), volume_id: vid.clone() }).await.map_err(unavailable)?;
            if state == SnapshotState::Available {
                // Images being made from it: sta runs one upload per image, and dcmgr
                // takes data only for a pending image, so asking again is harmless.
                for image in crate::datastore::image::pending_of_snapshot(&ctx.db, id).await? {
                    let Some(format) = crate::datastore::image::get(&ctx.db, &image).await?.map(|r| r.format) else {
                        continue;
                    };
                    let image: ImageId = image.parse().map_err(ApiError::internal)?;
                    let spec = SnapshotImageSpec {
                        snapshot_id: sid.clone(),
                        volume_id: vid.clone(),
                        format: format.parse().map_err(ApiError::internal)?,
                        upload: crate::app::capture::upload_to(ctx, &image, &row.storage_node_id),
                    };
                    sta.image_from_snapshot(spec).await.map_err(unavailable)?;
                }
            }
        }
    }
    store::mark_sent(&ctx.db, id).await?;
    Ok(())
}

pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: SnapshotReport) -> ApiResult<()> {
    let Some(row) = store::get(&ctx.db, r.id.as_str()).await? else { return Ok(()) };
    if row.storage_node_id != node || (gen as i64) <= row.report_gen {
        return Ok(());
    }
    let state: SnapshotState = row.state.parse().map_err(ApiError::internal)?;
    let new_state = on_report(state, r.state);
    let mut tx = crate::db::begin(&ctx.db).await?;
    if store::record_report(&mut tx, &row.id, &row.state, new_state, gen as i64).await? {
        // The jobs end in the report's transaction: a failure applies neither.
        if new_state == SnapshotState::Failed {
            job::fail_all(&mut tx, &row.id, r.reason.as_deref().unwrap_or("sta reported a failure")).await?;
        } else {
            job::finish(&mut tx, &row.id, new_state.as_str()).await?;
        }
        tx.commit().await?;
        ctx.events.wake();
    }
    Ok(())
}
