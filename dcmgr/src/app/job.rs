//! Jobs: the progress of long work. A job ends when its resource reaches the job's
//! `target` state (the report handler calls [`crate::datastore::job::finish`]), fails
//! with it, or is cancelled when a newer request on the same resource supersedes it.
//! Jobs are written by the decisions and reports they belong to, in their transactions
//! (see [`crate::datastore::job`]); here they are only read.

use crate::app::{page, paging_of, state_filter};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::job as store;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{Job, ListQuery, Page};
use vdc_schema::id::JobId;
use vdc_schema::JobState;

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Job>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::JobId>(&ListQuery { state: None, ..q.clone() })?;
    let state = state_filter::<JobState>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, &state, limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |j| j.id.to_string()))
}

/// A job of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &JobId) -> ApiResult<Job> {
    store::get_own(&ctx.db, &caller.account_id, id).await?.ok_or_else(|| ApiError::not_found("job", id))?.into_api()
}
