//! Server groups: instances placed together (`affinity`) or apart (`anti-affinity`),
//! with `soft-` forms that only prefer. An instance joins at create and leaves when it is
//! terminated; the policy itself is applied by the scheduler
//! ([`crate::app::scheduler::lock_group`]) under the group's row lock.

use crate::app::scheduler::Group;
use crate::app::{name_some, page, paging_of, quota, validate_name};
use crate::ctx::{Caller, SharedCtx};
use crate::datastore::{self as db, server_group as store};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{CreateServerGroup, ListQuery, Page, QuotaKey, ServerGroup};
use vdc_schema::id::{InstanceId, ServerGroupId};

fn member_ids(ids: Vec<String>) -> Vec<InstanceId> {
    ids.into_iter().filter_map(|i| i.parse().ok()).collect()
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateServerGroup) -> ApiResult<ServerGroup> {
    validate_name("server group", &req.name)?;
    let group = ServerGroup {
        id: ServerGroupId::generate(),
        name: req.name,
        policy: req.policy,
        members: vec![],
        created_at: db::parse_time(&db::now()),
    };
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        quota::enforce(&mut tx, ctx, &caller.account_id, &[(QuotaKey::ServerGroups, 1)]).await?;
        // Under the account's lock a taken name is the answer, not a race.
        if let Some(holder) = store::named(&mut tx, &caller.account_id, &group.name).await? {
            return Err(ApiError::conflict(
                "name_taken",
                format!(
                    "a server group named {:?} already exists ({holder}); choose another name or delete that one",
                    group.name
                ),
            ));
        }
        store::insert(&mut tx, &caller.account_id, &group).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.events.wake();
    Ok(group)
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<ServerGroup>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::ServerGroupId>(q)?;
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, q.name.as_deref(), limit).await?;
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(page(vec![], limit, |_| String::new()));
    };
    let mut members =
        store::members_of_range(&ctx.db, &caller.account_id, &first.id, &last.id).await?.into_iter().peekable();
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        // Both sorted by group ID: merge.
        let mut mine = Vec::new();
        while members.peek().is_some_and(|(g, _)| *g < r.id) {
            members.next();
        }
        while members.peek().is_some_and(|(g, _)| *g == r.id) {
            mine.push(members.next().unwrap().1);
        }
        items.push(r.into_api(member_ids(mine))?);
    }
    Ok(page(items, limit, |g| g.id.to_string()))
}

/// A server group of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &ServerGroupId) -> ApiResult<ServerGroup> {
    let row = store::get_own(&ctx.db, caller.account_id.as_str(), id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("server group", id))?;
    let members = store::members(&ctx.db, &row.id).await?;
    row.into_api(member_ids(members))
}

/// The caller's server group named by ID or name, as placement sees it (404 otherwise).
pub async fn resolve(ctx: &SharedCtx, caller: &Caller, what: &str) -> ApiResult<Group> {
    let row = match what.parse::<ServerGroupId>() {
        Ok(id) => store::get_own(&ctx.db, caller.account_id.as_str(), id.as_str()).await?,
        Err(_) => store::get_named(&ctx.db, &caller.account_id, what).await?,
    };
    let row = row.ok_or_else(|| ApiError::not_found("server group", what.chars().take(64).collect::<String>()))?;
    Ok(Group { policy: row.policy()?, id: row.id, name: row.name })
}

/// The group an instance is in, for placing it again (a start after a stop).
pub async fn of_instance(ctx: &SharedCtx, account: &str, id: Option<&str>) -> ApiResult<Option<Group>> {
    let Some(id) = id else { return Ok(None) };
    let row = store::get_own(&ctx.db, account, id).await?.ok_or_else(|| ApiError::not_found("server group", id))?;
    Ok(Some(Group { policy: row.policy()?, id: row.id, name: row.name }))
}

/// Deletes a group that has no member (terminated instances are no members).
pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &ServerGroupId) -> ApiResult<()> {
    db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Placements into the group lock it too: a create either committed its member
        // before this reads, or finds the group gone.
        if !store::lock(&mut tx, id.as_str()).await?
            || store::get_own(tx.conn().await?, caller.account_id.as_str(), id.as_str()).await?.is_none()
        {
            return Err(ApiError::not_found("server group", id));
        }
        let members = store::members(tx.conn().await?, id.as_str()).await?;
        if !members.is_empty() {
            return Err(ApiError::conflict(
                "server_group_in_use",
                format!(
                    "server group {id} has members: {}; terminate them first",
                    name_some("instance", members.iter().map(String::as_str))
                ),
            ));
        }
        store::delete(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    ctx.events.wake();
    Ok(())
}
