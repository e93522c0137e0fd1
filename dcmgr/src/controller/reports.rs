//! Applies agents' state reports and acks them. A report whose apply failed (e.g. the
//! database is down) is not acked, so the agent keeps it in its journal and resends it.
//!
//! On SQLite, whose one writer takes one transaction at a time, the instance and
//! interface reports waiting are applied in one transaction together (a create brings
//! three: hva's `starting` and `running`, nwagent's port); the begin and commit of each
//! were a third of a create's round trips to the writer. Should that transaction fail,
//! each report is applied again on its own, so one bad report holds back no other.
//! PostgreSQL applies a few batches at once, a transaction per report: a shared one there
//! holds many instances' row locks at once, and deadlocked with other writers (measured
//! with `vdc-bench`: creates until all run fell from 362/s to 85–119/s).

use crate::controller::{instance, interface, snapshot, volume};
use crate::ctx::SharedCtx;
use crate::datastore as db;
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use vdc_bus::Subscription;
use vdc_schema::bus::{self, Ack, AgentKind, ObjectReport, Report, ReportBatch};

/// Most batches applied in one shared transaction: the writer is held no longer than a
/// create would wait behind a few.
const GROUP: usize = 16;

pub async fn serve(ctx: SharedCtx, mut sub: Subscription, cancel: CancellationToken) {
    // Reports of different agents are independent; a few batches (or, on SQLite, groups
    // past their shared transaction) are worked on at once.
    let limit = Arc::new(Semaphore::new(8));
    let grouped = db::one_writer(&ctx.db).then(|| {
        let (tx, rx) = mpsc::channel(4 * GROUP);
        tokio::spawn(apply_groups(ctx.clone(), rx, limit.clone()));
        tx
    });
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
        if let Some(g) = &grouped {
            if g.send((batch, reply)).await.is_err() {
                return;
            }
            continue;
        }
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let seqs = apply_batch(&ctx, batch).await;
            ack(&ctx, &reply, seqs).await;
            drop(permit);
        });
    }
}

/// Answers a batch with the sequence numbers applied (lost, the agent sends them again).
async fn ack(ctx: &SharedCtx, reply: &str, seqs: Vec<u64>) {
    let _ = ctx.bus.publish(reply, bus::encode(&Ack { seqs }).into()).await;
}

/// Applies what it can and returns the sequence numbers to ack.
async fn apply_batch(ctx: &SharedCtx, batch: ReportBatch) -> Vec<u64> {
    let mut acked = Vec::with_capacity(batch.reports.len());
    let node = batch.node_id.as_str();
    for r in batch.reports {
        let seq = r.seq;
        if apply_one(ctx, batch.kind, node, r).await {
            acked.push(seq);
        }
    }
    acked
}

/// Applies one report in a transaction of its own: whether it is done (to ack).
async fn apply_one(ctx: &SharedCtx, kind: AgentKind, node: &str, r: Report) -> bool {
    let span = tracing::debug_span!("report", object = r.object.object_id(), node, gen = r.gen);
    // Each kind of agent may only report on its own kind of object.
    let result: crate::controller::Result<()> = async {
        match (kind, r.object) {
            (AgentKind::Hva, ObjectReport::Instance(i)) => instance::apply_report(ctx, node, r.gen, i).await,
            (AgentKind::Nwagent, ObjectReport::Interface(i)) => Ok(interface::apply_report(ctx, node, r.gen, i).await?),
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
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(node, seq = r.seq, "report not applied, agent will resend: {e}");
            false
        }
    }
}

/// Applies the batches as they come, those waiting together (SQLite). Only the shared
/// transaction is this task's: what each report leaves to do after it (a removal or an
/// unplug sent to a host, which waits up to the bus's timeout when the message is lost),
/// the reports applied on their own and the acks go to a task of their own, a few at
/// once, as batches do on PostgreSQL. Done here, one lost message held every agent's
/// reports for as long, their requests timed out and came again, and on a lossy bus
/// instances stayed `starting` for over a minute.
async fn apply_groups(ctx: SharedCtx, mut rx: mpsc::Receiver<(ReportBatch, String)>, limit: Arc<Semaphore>) {
    let mut waiting = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut waiting, GROUP).await > 0 {
        let (batches, replies): (Vec<_>, Vec<_>) = waiting.drain(..).unzip();
        let together = apply_together(&ctx, &batches).await;
        let permit = limit.clone().acquire_owned().await.expect("never closed");
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let acks = finish_group(&ctx, &batches, together).await;
            for (reply, seqs) in replies.iter().zip(acks) {
                ack(&ctx, reply, seqs).await;
            }
            drop(permit);
        });
    }
}

/// What a report in the shared transaction left to do after its commit.
enum After {
    Instance(String, instance::ReportAfter),
    Interface(String, vdc_schema::bus::InterfaceReport, interface::ReportAfter),
}

/// Whether report `r` of batch `b` is applied in the shared transaction.
fn shared(b: &ReportBatch, r: &Report) -> bool {
    matches!(
        (b.kind, &r.object),
        (AgentKind::Hva, ObjectReport::Instance(_)) | (AgentKind::Nwagent, ObjectReport::Interface(_))
    )
}

/// Applies the batches' instance and interface reports in one transaction: what each
/// left to do, or None when the transaction failed (each is then applied on its own).
async fn apply_together(ctx: &SharedCtx, batches: &[ReportBatch]) -> Option<Vec<After>> {
    let together = async {
        let mut tx = db::begin(&ctx.db).await?;
        // The instances reported on, locked and read in one round trip. A second report
        // of one of them locks and reads it again, as the first changed it.
        let ids: Vec<&str> = batches
            .iter()
            .flat_map(|b| b.reports.iter().filter(|r| shared(b, r)))
            .filter_map(|r| match &r.object {
                ObjectReport::Instance(i) => Some(i.id.as_str()),
                _ => None,
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut locked: std::collections::HashMap<String, db::instance::Reported> =
            db::instance::lock_for_reports(&mut tx, &ids).await?.into_iter().map(|l| (l.row.id.clone(), l)).collect();
        let mut afters = Vec::new();
        for b in batches {
            let node = b.node_id.as_str();
            for r in b.reports.iter().filter(|r| shared(b, r)) {
                afters.push(match &r.object {
                    ObjectReport::Instance(i) => {
                        let pre = locked.remove(i.id.as_str());
                        After::Instance(
                            b.node_id.clone(),
                            instance::apply_in(&mut tx, node, r.gen, i.clone(), pre).await?,
                        )
                    }
                    ObjectReport::Interface(i) => After::Interface(
                        b.node_id.clone(),
                        i.clone(),
                        interface::apply_in(&mut tx, node, r.gen, i).await?,
                    ),
                    _ => unreachable!("only instance and interface reports are shared"),
                });
            }
        }
        tx.commit().await?;
        crate::controller::Result::Ok(afters)
    };
    match together.await {
        Ok(afters) => {
            ctx.events.wake();
            Some(afters)
        }
        Err(e) => {
            tracing::warn!("reports applied together failed, applying each on its own: {e}");
            None
        }
    }
}

/// Does what the shared transaction left to do, then applies the batches' other reports
/// (volumes, snapshots; all of them when it failed) each on its own: the sequence numbers
/// to ack, per batch.
async fn finish_group(ctx: &SharedCtx, batches: &[ReportBatch], together: Option<Vec<After>>) -> Vec<Vec<u64>> {
    let applied = together.is_some();
    for a in together.into_iter().flatten() {
        match a {
            After::Instance(node, a) => a.run(ctx, &node).await,
            After::Interface(node, r, a) => a.run(ctx, &node, &r).await,
        }
    }
    let mut acks = Vec::new();
    for b in batches {
        let mut seqs = Vec::with_capacity(b.reports.len());
        for r in &b.reports {
            if (applied && shared(b, r)) || apply_one(ctx, b.kind, &b.node_id, r.clone()).await {
                seqs.push(r.seq);
            }
        }
        acks.push(seqs);
    }
    acks
}

/// Applies the batches' instance and interface reports in one transaction and what they
/// leave to do, then the rest each on its own: the sequence numbers to ack, per batch.
pub async fn apply_group(ctx: &SharedCtx, batches: &[ReportBatch]) -> Vec<Vec<u64>> {
    let together = apply_together(ctx, batches).await;
    finish_group(ctx, batches, together).await
}
