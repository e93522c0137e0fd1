//! Sends ensures. API handlers and the reconciler enqueue [`Work`]; a few workers build
//! each object's spec from the database and publish it. Concurrent sends for one object
//! are harmless: every spec carries its `spec_gen` and agents ignore older ones.

use crate::controller::{instance, interface, snapshot, volume};
use crate::controller::{Error, Result};
use crate::ctx::{SharedCtx, Work};
use crate::datastore::{interface as ifstore, snapshot as snapshots, volume as volumes};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use vdc_schema::bus::AgentKind;

pub fn spawn(
    ctx: SharedCtx,
    rx: mpsc::UnboundedReceiver<Work>,
    cancel: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..ctx.config.dispatch_workers.max(1))
        .map(|_| {
            let (ctx, rx, cancel) = (ctx.clone(), rx.clone(), cancel.clone());
            tokio::spawn(async move {
                loop {
                    let w = tokio::select! {
                        _ = cancel.cancelled() => return,
                        w = async { rx.lock().await.recv().await } => match w { Some(w) => w, None => return },
                    };
                    ctx.taken(&w);
                    if let Err(e) = traced(&ctx, &w).await {
                        // The reconciler tries again; an offline agent is expected, not an error.
                        if e.is_transient() {
                            tracing::debug!(?w, "ensure not sent: {e}");
                        } else {
                            tracing::warn!(?w, "ensure not sent: {e}");
                        }
                    }
                }
            })
        })
        .collect()
}

/// Handles `w` in a span carrying the object's ID and its running job's, which travel
/// with the ensure so the agent logs under the same IDs.
async fn traced(ctx: &SharedCtx, w: &Work) -> Result<()> {
    let resource = match w {
        // Reads its job with the rest of its ensure, on one connection, and traces itself.
        Work::Instance(id) => return instance::dispatch(ctx, id.as_str()).await,
        Work::Interface(id) | Work::UnplugInterface(id, _, _) => id.to_string(),
        Work::Volume(id) => id.to_string(),
        Work::Snapshot(id) => id.to_string(),
        Work::SecurityGroup(id, _) => id.to_string(),
        Work::NodeSync(_, node) => node.clone(),
    };
    let span = span(&resource);
    let job =
        tracing::Instrument::instrument(crate::datastore::job::running_of(&ctx.db, &resource), span.clone()).await?;
    in_trace(span, resource, job, handle(ctx, w)).await
}

/// The span of one dispatch: its object's ID, and its running job's once read.
pub(super) fn span(resource: &str) -> tracing::Span {
    tracing::info_span!("dispatch", resource = %resource, job = tracing::field::Empty)
}

/// Runs `f` in `span`, with `resource` and its running `job` carried with what it sends
/// on the bus.
pub(super) async fn in_trace<T>(
    span: tracing::Span,
    resource: String,
    job: Option<String>,
    f: impl Future<Output = T>,
) -> T {
    if let Some(job) = &job {
        span.record("job", job.as_str());
    }
    let trace = vdc_schema::bus::Trace { resource, job };
    tracing::Instrument::instrument(vdc_bus::with_trace(trace, f), span).await
}

async fn handle(ctx: &SharedCtx, w: &Work) -> Result<()> {
    match w {
        Work::Instance(_) => unreachable!("an instance's ensure is traced by its dispatch"),
        Work::Interface(id) => Ok(interface::dispatch(ctx, id.as_str()).await?),
        Work::Volume(id) => Ok(volume::dispatch(ctx, id.as_str()).await?),
        Work::Snapshot(id) => Ok(snapshot::dispatch(ctx, id.as_str()).await?),
        Work::SecurityGroup(g, change) => {
            for vif in ifstore::reached_by(&ctx.db, g.as_str(), *change).await? {
                interface::dispatch_one(ctx, &vif).await?;
            }
            Ok(())
        }
        Work::UnplugInterface(vif, node, gen) => {
            let node_id = node.parse().map_err(Error::model)?;
            let nw = vdc_bus::NwClient { bus: ctx.bus.clone(), node_id };
            vdc_schema::agent::NetworkAgent::ensure_interface_absent(&nw, vif.clone(), *gen).await.map_err(Error::from)
        }
        Work::NodeSync(kind, node) => node_sync(ctx, *kind, node).await,
    }
}

/// Sends every ensure an agent that just (re)registered should hold.
async fn node_sync(ctx: &SharedCtx, kind: AgentKind, node: &str) -> Result<()> {
    let ids: Vec<(String,)> = match kind {
        AgentKind::Hva => crate::datastore::instance::on_host(&ctx.db, node).await?.into_iter().map(|i| (i,)).collect(),
        AgentKind::Nwagent => ifstore::on_host(&ctx.db, node).await?.into_iter().map(|i| (i,)).collect(),
        AgentKind::Sta => {
            let mut v = volumes::on_node(&ctx.db, node).await?;
            v.extend(snapshots::pending_on_node(&ctx.db, node).await?);
            v
        }
    };
    tracing::info!(%kind, node, objects = ids.len(), "syncing agent");
    // One object that cannot be sent must not keep the agent from the others: all are
    // sent, and the first error makes the whole sync be tried again.
    let mut first_err = None;
    for (id,) in ids {
        let r = match kind {
            AgentKind::Hva => instance::dispatch(ctx, &id).await,
            AgentKind::Nwagent => interface::dispatch_one(ctx, &id).await.map(|_| ()).map_err(Error::from),
            AgentKind::Sta if id.starts_with("snap-") => snapshot::dispatch(ctx, &id).await.map_err(Error::from),
            AgentKind::Sta => volume::dispatch(ctx, &id).await.map_err(Error::from),
        };
        if let Err(e) = r {
            tracing::warn!(%kind, node, object = %id, "not sent in the agent's sync: {e}");
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}
