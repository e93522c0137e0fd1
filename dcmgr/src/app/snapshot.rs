//! Snapshots: crash-consistent points of a volume, kept on the volume's storage node.
//!
//! ```text
//!  creating ─► available ─delete─► deleting ─► deleted
//!      └─► failed
//! ```
//! sta's reports drive every transition but the request of a delete ([`on_report`]).
//! A snapshot that an image is being made from (`app::capture::from_snapshot`) cannot
//! be deleted until that image is available or failed.

use crate::app::quota;
use crate::app::{page, paging_of, state_filter, validate_name, Outcome};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::job;
use crate::datastore::{self as db, snapshot as store, volume as volumes};
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::{Accepted, CreateSnapshot, ListQuery, Page, QuotaKey, Snapshot};
use vdc_schema::id::*;
use vdc_schema::{ObservedStorage, SnapshotState, VolumeState};

/// A snapshot of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &SnapshotId) -> ApiResult<Snapshot> {
    match store::get(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r.into_api(),
        _ => Err(ApiError::not_found("snapshot", id)),
    }
}

pub async fn create(ctx: &SharedCtx, caller: &Caller, req: CreateSnapshot) -> ApiResult<Accepted<Snapshot>> {
    validate_name("snapshot", &req.name)?;
    let id = SnapshotId::generate();
    let now = db::now();
    let (size, node, job) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // A volume delete locks the volume too and counts its snapshots: one of the two
        // sees the other.
        db::lock(&mut tx, db::Lock::Volume, req.volume_id.as_str()).await?;
        let (size, node) = match volumes::get(tx.conn().await?, req.volume_id.as_str()).await? {
            Some(volumes::Row { account_id, state, size_mib, storage_node_id: Some(node), .. })
                if account_id == caller.account_id.as_str() =>
            {
                let s: VolumeState = state.parse().map_err(ApiError::internal)?;
                if !matches!(
                    s,
                    VolumeState::Available | VolumeState::Attached | VolumeState::Attaching | VolumeState::Detaching
                ) {
                    return Err(ApiError::conflict(
                        "invalid_state",
                        format!("volume {} is {s}; cannot snapshot it", req.volume_id),
                    ));
                }
                (size_mib, node)
            }
            _ => return Err(ApiError::not_found("volume", &req.volume_id)),
        };
        let named = ("snapshot", req.name.as_str());
        quota::enforce_unless_exported(&mut tx, ctx, &caller.account_id, named, &[(QuotaKey::Snapshots, 1)]).await?;
        store::insert(&mut tx, id.as_str(), &caller.account_id, &req.name, req.volume_id.as_str(), size, &node, &now)
            .await?;
        let job = job::start_first(&mut tx, &caller.account_id, "snapshot.create", id.as_str(), "available").await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok((size, node, job))
    })
    .await?;
    ctx.enqueue(Work::Snapshot(id.clone()));
    let snap = Snapshot {
        id,
        name: req.name,
        volume_id: req.volume_id,
        size_mib: size as u64,
        state: SnapshotState::Creating,
        storage_node_id: node.parse().map_err(ApiError::internal)?,
        created_at: db::parse_time(&now),
    };
    Ok(Accepted { job, resource: snap })
}

pub async fn list(ctx: &SharedCtx, caller: &Caller, q: &ListQuery) -> ApiResult<Page<Snapshot>> {
    let (limit, cursor) = paging_of::<vdc_schema::id::SnapshotId>(&ListQuery { state: None, ..q.clone() })?;
    let state = state_filter::<SnapshotState>(q)?;
    let name = q.name.as_deref().unwrap_or_default();
    let since = crate::app::gone_listed_since();
    let rows = store::list(&ctx.db, &caller.account_id, &cursor, &state, name, &since, limit).await?;
    let items = rows.into_iter().map(store::Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(page(items, limit, |s| s.id.to_string()))
}

pub async fn delete(ctx: &SharedCtx, caller: &Caller, id: &SnapshotId) -> ApiResult<(Outcome, Accepted<Snapshot>)> {
    let (outcome, job) = db::retry(|| async {
        let mut tx = db::begin(&ctx.db).await?;
        // Volume creates from this snapshot lock it too.
        db::lock(&mut tx, db::Lock::Snapshot, id.as_str()).await?;
        let snap = match store::get(tx.conn().await?, id.as_str()).await? {
            Some(r) if r.account_id == caller.account_id.as_str() => r,
            _ => return Err(ApiError::not_found("snapshot", id)),
        };
        if snap.state == SnapshotState::Deleted.as_str() || snap.state == SnapshotState::Deleting.as_str() {
            let job = job::done(&mut tx, &caller.account_id, "snapshot.delete", id.as_str(), "already deleted").await?;
            tx.commit().await?;
            ctx.events.wake();
            return Ok((Outcome::Already, job));
        }
        // An image being made from it still reads it (images lock the snapshot too).
        let pending = crate::datastore::image::pending_of_snapshot(tx.conn().await?, id.as_str()).await?;
        if !pending.is_empty() {
            return Err(ApiError::conflict(
                "snapshot_capturing",
                format!(
                    "snapshot {id} is being copied into image {}; delete it once that image's job has ended",
                    pending.join(", ")
                ),
            ));
        }
        store::mark_deleting(&mut tx, id.as_str()).await?;
        let job = job::start(&mut tx, &caller.account_id, "snapshot.delete", id.as_str(), "deleted").await?;
        tx.commit().await?;
        ctx.events.wake();
        Ok((Outcome::Applied, job))
    })
    .await?;
    if outcome == Outcome::Applied {
        ctx.enqueue(Work::Snapshot(id.clone()));
    }
    let snap = fetch(ctx, caller, id).await?;
    Ok((outcome, Accepted { job, resource: snap }))
}

/// What sta's observation means for a snapshot in `state`.
pub fn on_report(state: SnapshotState, observed: ObservedStorage) -> SnapshotState {
    match (state, observed) {
        (SnapshotState::Deleted, _) => SnapshotState::Deleted,
        // A late failure of making it (an ensure sent before the delete found its data
        // gone): the delete goes on. It failed the delete's job, and the snapshot stayed
        // `failed` for good (`Absent` did not end a failed one).
        (SnapshotState::Deleting, ObservedStorage::Failed) => SnapshotState::Deleting,
        (_, ObservedStorage::Failed) => SnapshotState::Failed,
        (SnapshotState::Creating, ObservedStorage::Available) => SnapshotState::Available,
        (SnapshotState::Deleting, ObservedStorage::Absent) => SnapshotState::Deleted,
        (s, _) => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_finish_creates_and_deletes_and_never_revive() {
        assert_eq!(on_report(SnapshotState::Creating, ObservedStorage::Available), SnapshotState::Available);
        assert_eq!(on_report(SnapshotState::Deleting, ObservedStorage::Absent), SnapshotState::Deleted);
        assert_eq!(on_report(SnapshotState::Deleted, ObservedStorage::Available), SnapshotState::Deleted);
        assert_eq!(on_report(SnapshotState::Deleted, ObservedStorage::Failed), SnapshotState::Deleted);
        assert_eq!(on_report(SnapshotState::Available, ObservedStorage::Failed), SnapshotState::Failed);
        // A late report of the old state leaves a transition waiting.
        assert_eq!(on_report(SnapshotState::Deleting, ObservedStorage::Available), SnapshotState::Deleting);
        assert_eq!(on_report(SnapshotState::Creating, ObservedStorage::Absent), SnapshotState::Creating);
        // A late failure of the making leaves a delete waiting (host test storage: the
        // delete of a snapshot whose data was gone failed, now and then, in CI).
        assert_eq!(on_report(SnapshotState::Deleting, ObservedStorage::Failed), SnapshotState::Deleting);
    }
}
