//! Applies agents' state reports and acks them. A report whose apply failed (e.g. the
//! database is down) is not acked, so the agent keeps it in its journal and resends it.

use crate::controller::{instance, interface, snapshot, volume};
use crate::ctx::SharedCtx;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vdc_bus::Subscription;
use vdc_schema::bus::{self, Ack, AgentKind, ObjectReport, ReportBatch};

pub async fn serve(ctx: SharedCtx, mut sub: Subscription, cancel: CancellationToken) {
    // Reports of different agents are independent; apply a few batches at once.
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let batch = match bus::decode::<ReportBatch>(&msg.payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("dropping bad report batch: {e}");
                continue;
            }
        };
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let seqs = apply_batch(&ctx, batch).await;
            let _ = ctx.bus.publish(&reply, bus::encode(&Ack { seqs }).into()).await;
            drop(permit);
        });
    }
}

/// Applies what it can and returns the sequence numbers to ack.
async fn apply_batch(ctx: &SharedCtx, batch: ReportBatch) -> Vec<u64> {
    let mut acked = Vec::with_capacity(batch.reports.len());
    let node = batch.node_id.as_str();
    for r in batch.reports {
        let span = tracing::debug_span!("report", object = r.object.object_id(), node, gen = r.gen);
        // Each kind of agent may only report on its own kind of object.
        let result: crate::controller::Result<()> = async {
            match (batch.kind, r.object) {
                (AgentKind::Hva, ObjectReport::Instance(i)) => instance::apply_report(ctx, node, r.gen, i).await,
                (AgentKind::Nwagent, ObjectReport::Interface(i)) => {
                    Ok(interface::apply_report(ctx, node, r.gen, i).await?)
                }
                (AgentKind::Sta, ObjectReport::Volume(v)) => Ok(volume::apply_report(ctx, node, r.gen, v).await?),
                (AgentKind::Sta, ObjectReport::Snapshot(s)) => Ok(snapshot::apply_report(ctx, node, r.gen, s).await?),
                (kind, other) => {
                    tracing::warn!(%kind, node, object = other.object_id(), "agent reported an object of another kind; dropped");
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(()) => acked.push(r.seq),
            Err(e) => tracing::warn!(node, seq = r.seq, "report not applied, agent will resend: {e}"),
        }
    }
    acked
}
