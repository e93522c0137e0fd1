//! Which dcmgr does what must be done once when several serve one PostgreSQL: the
//! reconciler's passes and recording agents online or offline (with the full sync that
//! follows an agent's return). The leader is whoever holds a PostgreSQL advisory lock
//! on a connection of its own; the others try again every second. A lost connection is
//! lost leadership (PostgreSQL drops the lock with the session, and this dcmgr stops
//! leading once a check on the connection fails or takes longer than a few seconds), so
//! a killed or cut-off leader is replaced within a few seconds. Two leaders for a moment
//! (the old one has not yet noticed) only send an ensure twice, which is harmless.
//!
//! On SQLite there is one dcmgr, always the leader, and this task does not run.

use crate::ctx::SharedCtx;
use sqlx::Connection;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The advisory lock's key (`vdcL` in ASCII). PostgreSQL's advisory locks belong to one
/// database, so two sites (or two test databases) on one server do not meet.
const LOCK_KEY: i64 = 0x7664_634c;
/// How often a follower tries the lock and the leader checks its connection.
const PERIOD: Duration = Duration::from_secs(1);
/// A check slower than this counts as a lost connection.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Checks in a row the leader may find its bus cut before it lets the lead go (a NATS
/// server's restart takes a second or two).
const BUS_CUT_CHECKS: u32 = 5;

fn set(ctx: &SharedCtx, leader: bool) {
    if ctx.leader.swap(leader, Ordering::AcqRel) != leader {
        if leader {
            tracing::info!("this dcmgr leads: it reconciles and records agents online or offline");
        } else {
            tracing::warn!("this dcmgr no longer leads");
        }
    }
}

pub async fn run(ctx: SharedCtx, cancel: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = cancel.cancelled() => return,
            c = sqlx::PgConnection::connect(&ctx.config.database_url) => c,
        };
        match conn {
            Ok(conn) => hold(&ctx, conn, &cancel).await,
            Err(e) => tracing::warn!("leader election: cannot connect to the database: {e}"),
        }
        set(&ctx, false);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// Tries the lock (or, holding it, checks the connection) every [`PERIOD`] until the
/// connection fails or dcmgr stops.
async fn hold(ctx: &SharedCtx, mut conn: sqlx::PgConnection, cancel: &CancellationToken) {
    let mut cut = 0;
    loop {
        let leading = ctx.is_leader();
        // No bus, no agents heard: a leader without one would record them all offline
        // (a dcmgr with a wrong nats_url did, for the whole site). It leads only while
        // connected, and lets the lead go when cut for a while.
        if !ctx.bus.connected() {
            cut += 1;
            if cut == 1 || cut == BUS_CUT_CHECKS {
                tracing::warn!(
                    "{} is not connected: this dcmgr hears no agent, so it {}",
                    ctx.bus.describe(),
                    if leading { "lets the lead go if it stays so" } else { "does not take the lead" }
                );
            }
            if leading && cut >= BUS_CUT_CHECKS {
                set(ctx, false);
                let _ = conn.close().await;
                return;
            }
            if !leading {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(PERIOD) => continue,
                }
            }
        } else {
            cut = 0;
        }
        let check = async {
            if leading {
                sqlx::query("SELECT 1").execute(&mut conn).await.map(|_| true)
            } else {
                sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(held)) => {
                if held && !leading {
                    set(ctx, true);
                    if let Err(e) = crate::controller::membership::sync_states(ctx).await {
                        tracing::warn!("new leader: cannot sync agents' states: {e}");
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!("leader election: the lock's connection failed: {e}");
                return;
            }
            Err(_) => {
                tracing::warn!("leader election: the lock's connection did not answer within {CHECK_TIMEOUT:?}");
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                // Closing the session releases the lock at once for the next leader.
                set(ctx, false);
                let _ = conn.close().await;
                return;
            }
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}
