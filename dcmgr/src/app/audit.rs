//! The audit log: who changed (or tried to change) what, when, from where, with which
//! answer. `http::audit` records each state-changing request after it was answered;
//! this module reads the log for owners and admins and prunes it after
//! `[audit] retain_days`.

use crate::app::{authz, page, paging_of};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, audit as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{AuditEntry, AuditQuery, ListQuery, Page};

/// Most entries written in one transaction.
const BATCH: usize = 256;

/// Writes audit entries off the request path, many per transaction: on SQLite's single
/// writer one transaction per request would stand behind every create's own. An entry
/// is queued when its answer goes out and written within milliseconds; [`Writer::flush`]
/// waits for what is queued (the audit listing and shutdown call it).
pub struct Writer(db::batch::Batcher<AuditEntry>);

impl Writer {
    /// Starts the writing task on the current runtime.
    pub fn start(pool: db::Pool) -> Writer {
        Writer(db::batch::Batcher::start(BATCH, move |entries: Vec<AuditEntry>| {
            let pool = pool.clone();
            async move {
                if let Err(e) = store::insert_many(&pool, &entries).await {
                    tracing::warn!(entries = entries.len(), first_request_id = %entries[0].request_id,
                        "the audit log did not record these requests: {e}");
                }
            }
        }))
    }

    /// Queues one entry (waits while the queue is full: the log falls behind no further).
    pub async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.0.push(entry).await {
            tracing::warn!(request_id = %e.request_id, action = %e.action, status = e.status,
                "the audit log did not record this request: its writer has stopped");
        }
    }

    /// Returns once every entry queued before the call is written (or failed to be).
    pub async fn flush(&self) {
        self.0.flush().await
    }
}

/// Queues one entry. A failure is logged, never the request's: the answer has gone out.
pub async fn record(ctx: &SharedCtx, entry: AuditEntry) {
    ctx.audit.record(entry).await
}

/// Newest first. An admin reads every account's entries (or `account`'s); an owner only
/// their own account's (another account answers 404, as an unknown one); others 403.
pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &AuditQuery) -> ApiResult<Page<AuditEntry>> {
    authz::check(caller, authz::Op::ReadAudit)?;
    // Entries of requests answered before this one are in the log.
    ctx.audit.flush().await;
    let account = match &q.account {
        Some(a) if caller.admin || *a == caller.account_id => a.to_string(),
        Some(a) => return Err(ApiError::not_found("account", a)),
        None if caller.admin => String::new(),
        None => caller.account_id.to_string(),
    };
    let (limit, cursor) = paging_of::<vdc_schema::id::AuditId>(&ListQuery {
        limit: q.limit,
        cursor: q.cursor.clone(),
        ..Default::default()
    })?;
    let action = q.action.clone().unwrap_or_default();
    if action.len() > 64 {
        return Err(ApiError::bad("invalid_query", "action is at most 64 characters (such as instance.create)"));
    }
    if let (Some(s), Some(u)) = (q.since, q.until) {
        if u < s {
            return Err(ApiError::bad("invalid_query", format!("until ({u}) is before since ({s})")));
        }
    }
    let user = q.user.as_ref().map(|u| u.to_string()).unwrap_or_default();
    let since = q.since.as_ref().map(db::time).unwrap_or_default();
    let until = q.until.as_ref().map(db::time).unwrap_or_default();
    let filter = store::Filter {
        account: &account,
        user: &user,
        action: &action,
        since: &since,
        until: &until,
        before_id: &cursor,
    };
    let rows = store::list(&ctx.db, &filter, limit).await?;
    let items =
        rows.into_iter().map(store::Row::into_api).collect::<Result<Vec<_>, _>>().map_err(ApiError::internal)?;
    Ok(page(items, limit, |e| e.id.to_string()))
}

/// Removes entries older than `[audit] retain_days`; returns how many.
pub async fn prune(ctx: &SharedCtx) -> Result<u64, sqlx::Error> {
    let days = i64::try_from(ctx.config.audit.retain_days).unwrap_or(i64::MAX / 86_400_000).min(1_000_000);
    let before = db::time(&(chrono::Utc::now() - chrono::Duration::days(days)));
    store::prune(&ctx.db, &before).await
}
