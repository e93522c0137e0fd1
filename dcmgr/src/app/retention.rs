//! What the database keeps of what ended. A terminated instance, a deleted volume or
//! snapshot and a finished job stay readable (`GET` by ID, the `state=` filters, a
//! job's outcome) for `[retention] ended_days`, then their rows are removed, as the
//! audit log is after `[audit] retain_days`: a datacenter that creates thousands of
//! instances a day would otherwise carry every one for ever in its tables and indexes.
//!
//! Removing the row of what ended is safe for the agents: a host that reports an
//! instance the model no longer has is told to remove it (`controller::instance`).

use crate::app::audit;
use crate::ctx::SharedCtx;
use crate::datastore::{self as db, retention as store};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use store::{Ended, Removed};

/// How often old rows are removed.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Rows removed per statement, and the pause after each: on SQLite's single writer the
/// removal takes at most half of the writer's time, and a create waits for one statement
/// at most. Measured with a million instances removed at once while creates went on
/// (`vdc-bench --instances 1000000`, SQLite, 2026-12-04): 5,000 rows per statement
/// without pauses held creates up to 459 ms (p99 198 ms); 1,000 without pauses made the
/// median create wait (p50 27.9 ms).
const BATCH: i64 = 1_000;

/// The time before which an ended row goes, `days` before `now`; `None` for 0 (kept).
pub fn cutoff(now: chrono::DateTime<chrono::Utc>, days: u64) -> Option<String> {
    if days == 0 {
        return None;
    }
    let days = i64::try_from(days).unwrap_or(i64::MAX).min(1_000_000);
    Some(db::time(&(now - chrono::Duration::days(days))))
}

/// Removes what ended more than `[retention] ended_days` ago.
pub async fn prune_ended(ctx: &SharedCtx) -> Result<Removed, sqlx::Error> {
    let Some(before) = cutoff(chrono::Utc::now(), ctx.config.retention.ended_days) else {
        return Ok(Removed::default());
    };
    let mut removed = Removed::default();
    for what in Ended::ALL {
        loop {
            let t = std::time::Instant::now();
            let n = store::remove_some(&ctx.db, what, &before, BATCH).await?;
            *removed.count(what) += n;
            if n < BATCH as u64 {
                break;
            }
            tokio::time::sleep(t.elapsed()).await;
        }
    }
    if removed.total() > 0 {
        // The read model may hold a removed instance.
        ctx.events.wake();
    }
    Ok(removed)
}

/// Prunes the audit log and what ended, at start and every [`PRUNE_EVERY`], until
/// `cancel`.
pub async fn pruner(ctx: SharedCtx, cancel: CancellationToken) {
    loop {
        match audit::prune(&ctx).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned old audit entries"),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning the audit log: {e}"),
        }
        let keys_before = db::time(&(chrono::Utc::now() - chrono::Duration::hours(24)));
        match crate::datastore::idempotency::prune(&ctx.db, &keys_before).await {
            Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned idempotency keys older than a day"),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning idempotency keys: {e}"),
        }
        match prune_ended(&ctx).await {
            Ok(r) if r.total() > 0 => tracing::info!(
                instances = r.instances,
                volumes = r.volumes,
                snapshots = r.snapshots,
                jobs = r.jobs,
                "removed what ended more than {} days ago",
                ctx.config.retention.ended_days
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("removing what ended long ago: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_the_given_days_after_they_ended_and_never_with_zero() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T12:00:00Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(cutoff(now, 30).as_deref(), Some(db::time(&(now - chrono::Duration::days(30))).as_str()));
        assert!(cutoff(now, 30).unwrap().starts_with("2026-11-04"), "{:?}", cutoff(now, 30));
        assert_eq!(cutoff(now, 0), None);
        // An absurd value keeps everything rather than overflow: before any stored time.
        assert!(cutoff(now, u64::MAX).unwrap().as_str() < "1970", "{:?}", cutoff(now, u64::MAX));
    }
}
