//! Compares intent with the last reports and re-sends ensures for objects that have not
//! converged, so a lost message, a crashed agent or a restarted broker only delays
//! convergence. Objects on offline agents wait for the agent's return (which triggers a
//! full sync) instead. Only the leader runs passes (`controller::leader`).

use crate::ctx::{SharedCtx, Work};
use crate::db;
use tokio_util::sync::CancellationToken;
use vdc_schema::bus::AgentKind;

/// How often the leader looks for work a dcmgr left (URL imports, bundle exports) and
/// for deleted images nothing uses any more.
const LEFTOVERS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How often it looks for routers no instance uses (sooner when they go back sooner).
const ROUTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn run(ctx: SharedCtx, cancel: CancellationToken) {
    let period = std::time::Duration::from_millis(ctx.config.reconcile_interval_ms.max(50));
    let mut leftovers_looked = std::time::Instant::now();
    let mut routers_looked = std::time::Instant::now();
    let release_after = std::time::Duration::from_millis(ctx.config.router_release_after_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        // Several dcmgrs on one database: one reconciles (`controller::leader`). Work the
        // others accepted and did not dispatch (one killed after commit) is found here.
        if !ctx.is_leader() {
            continue;
        }
        if let Err(e) = pass(&ctx).await {
            tracing::warn!("reconcile pass failed: {e}");
        }
        // Work a stopped or killed dcmgr left: a URL import no one fetches (its claim died
        // with it), an export no one finishes. Each try of one another dcmgr is working on
        // costs a connection, hence not every pass.
        if leftovers_looked.elapsed() >= LEFTOVERS_EVERY {
            leftovers_looked = std::time::Instant::now();
            if ctx.shared() {
                if let Err(e) = crate::app::image_import::resume(&ctx).await {
                    tracing::warn!("resuming URL imports failed: {e}");
                }
            }
            if let Err(e) = crate::app::bundle_data::sweep(&ctx).await {
                tracing::warn!("sweeping cut-off bundle exports failed: {e}");
            }
            if let Err(e) = crate::app::image::collect_deleted(&ctx).await {
                tracing::warn!("collecting deleted images failed: {e}");
            }
            if let Err(e) = crate::app::bundle::sweep_staged(&ctx) {
                tracing::warn!("sweeping bundle chunks staged by imports that never ended failed: {e}");
            }
            // What a dcmgr that died left in a shared staging directory (at its start each
            // dcmgr keeps what may be another host's).
            let staging = ctx.config.images_dir().join("staging");
            tokio::task::spawn_blocking(move || {
                crate::blobs::remove_stale_staging(&staging, crate::blobs::STALE_STAGING)
            });
        }
        if routers_looked.elapsed() >= ROUTERS_EVERY.min(release_after / 2) {
            routers_looked = std::time::Instant::now();
            if let Err(e) = crate::app::floating_ip::release_idle_routers(&ctx).await {
                tracing::warn!("releasing idle routers' addresses failed: {e}");
            }
        }
    }
}

/// One pass; returns how many ensures it queued.
pub async fn pass(ctx: &SharedCtx) -> Result<usize, sqlx::Error> {
    let before = db::now_ms() - ctx.config.resend_after_ms as i64;
    let mut queued = 0;
    let instances = crate::datastore::instance::unconverged(&ctx.db, before).await?;
    for (id, host) in instances {
        if host.is_some_and(|h| ctx.agent_online(AgentKind::Hva, &h)) {
            if let Ok(id) = id.parse() {
                ctx.enqueue(Work::Instance(id));
                queued += 1;
            }
        }
    }
    let mut reboots = crate::datastore::instance::rebooting(&ctx.db, before).await?;
    reboots.extend(crate::datastore::instance::capturing_live(&ctx.db, before).await?);
    for (id, host) in reboots {
        if host.is_some_and(|h| ctx.agent_online(AgentKind::Hva, &h)) {
            if let Ok(id) = id.parse() {
                ctx.enqueue(Work::Instance(id));
                queued += 1;
            }
        }
    }
    for (id, node, instance) in crate::datastore::volume::unconverged(&ctx.db, before).await? {
        if node.is_some_and(|n| ctx.agent_online(AgentKind::Sta, &n)) {
            if let Ok(v) = id.parse() {
                ctx.enqueue(Work::Volume(v));
                queued += 1;
            }
            // Attach and detach also need hva to act.
            if let Some(i) = instance.and_then(|i| i.parse().ok()) {
                ctx.enqueue(Work::Instance(i));
            }
        }
    }
    // Attaches a bundle import asked for whose moment passed while no dcmgr was there to
    // do them (one stopped between the volume's report and the attach).
    for id in crate::datastore::volume::with_attach_to(&ctx.db).await? {
        if let Ok(v) = id.parse() {
            if let Err(e) = crate::app::volume::attach_asked(ctx, &v).await {
                tracing::warn!(volume = %id, error = %e, "attaching a volume where an import asked");
            }
        }
    }
    for (id, node) in crate::datastore::snapshot::unconverged(&ctx.db, before).await? {
        if ctx.agent_online(AgentKind::Sta, &node) {
            if let Ok(s) = id.parse() {
                ctx.enqueue(Work::Snapshot(s));
                queued += 1;
            }
        }
    }
    // Interfaces whose host has not reported the current generation: new ones, and those
    // whose groups, members, floating IP or peers changed.
    let vifs = crate::datastore::interface::unconverged(&ctx.db, before).await?;
    for (id, host) in vifs {
        if host.is_some_and(|h| ctx.agent_online(AgentKind::Nwagent, &h)) {
            if let Ok(v) = id.parse() {
                ctx.enqueue(Work::Interface(v));
                queued += 1;
            }
        }
    }
    if queued > 0 {
        tracing::debug!(queued, "reconciler re-sent ensures");
    }
    Ok(queued)
}
