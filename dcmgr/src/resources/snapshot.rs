//! Snapshots: crash-consistent points of a volume, kept on the volume's storage node.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx, Work};
use crate::datastore::job;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, state_filter, validate_name};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::agent::{AgentError, StorageAgent};
use vdc_schema::api::{Accepted, CreateSnapshot, ErrorBody, Page, Snapshot};
use vdc_schema::bus::{SnapshotReport, SnapshotSpec};
use vdc_schema::id::*;
use vdc_schema::{ObservedStorage, SnapshotState, VolumeState};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    account_id: String,
    name: String,
    volume_id: String,
    size_mib: i64,
    state: String,
    storage_node_id: String,
    report_gen: i64,
    created_at: String,
}

const COLS: &str = "id, account_id, name, volume_id, size_mib, state, storage_node_id, report_gen, created_at";

impl Row {
    fn into_api(self) -> ApiResult<Snapshot> {
        Ok(Snapshot {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            volume_id: self.volume_id.parse().map_err(ApiError::internal)?,
            size_mib: self.size_mib as u64,
            state: self.state.parse().map_err(ApiError::internal)?,
            storage_node_id: self.storage_node_id.parse().map_err(ApiError::internal)?,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

async fn fetch_row<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM snapshots WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// A snapshot of the caller's, or 404.
pub async fn fetch(ctx: &SharedCtx, caller: &Caller, id: &SnapshotId) -> ApiResult<Snapshot> {
    match fetch_row(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => r.into_api(),
        _ => Err(ApiError::not_found("snapshot", id)),
    }
}

#[utoipa::path(post, path = "/api/v1/snapshots", tag = "snapshots", request_body = CreateSnapshot,
    responses((status = 202, body = Accepted<Snapshot>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateSnapshot>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    validate_name("snapshot", &req.name)?;
    let id = SnapshotId::generate();
    let now = db::now();
    let (size, node, job) = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // A volume delete locks the volume too and counts its snapshots: one of the two
        // sees the other.
        db::lock(&mut tx, db::Lock::Volume, req.volume_id.as_str()).await?;
        let vol: Option<(String, String, i64, Option<String>)> =
            sqlx::query_as("SELECT account_id, state, size_mib, storage_node_id FROM volumes WHERE id = $1")
                .bind(req.volume_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let (size, node) = match vol {
            Some((acct, state, size, Some(node))) if acct == caller.account_id.as_str() => {
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
                (size, node)
            }
            _ => return Err(ApiError::not_found("volume", &req.volume_id)),
        };
        sqlx::query(&format!("INSERT INTO snapshots ({COLS}) VALUES ($1, $2, $3, $4, $5, 'creating', $6, 0, $7)"))
            .bind(id.as_str())
            .bind(caller.account_id.as_str())
            .bind(&req.name)
            .bind(req.volume_id.as_str())
            .bind(size)
            .bind(&node)
            .bind(&now)
            .execute(&mut *tx)
            .await?;
        let job = job::start(&mut tx, &caller.account_id, "snapshot.create", id.as_str(), "available").await?;
        tx.commit().await?;
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
    Ok((StatusCode::ACCEPTED, Json(Accepted { job, resource: snap })))
}

#[utoipa::path(get, path = "/api/v1/snapshots", tag = "snapshots", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Snapshot>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Snapshot>>> {
    let (limit, cursor) = paging(&q)?;
    let state = state_filter::<SnapshotState>(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM snapshots WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) ORDER BY id LIMIT $5"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(state)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |s| s.id.to_string())))
}

#[utoipa::path(get, path = "/api/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 200, body = Snapshot), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Snapshot>> {
    Ok(Json(fetch(&ctx, &caller, &path_id("snapshot", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/snapshots/{id}", tag = "snapshots", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Snapshot>), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Snapshot>>)> {
    let id: SnapshotId = path_id("snapshot", &id)?;
    let (status, job) = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Volume creates from this snapshot lock it too.
        db::lock(&mut tx, db::Lock::Snapshot, id.as_str()).await?;
        let snap = match fetch_row(&mut *tx, id.as_str()).await? {
            Some(r) if r.account_id == caller.account_id.as_str() => r,
            _ => return Err(ApiError::not_found("snapshot", &id)),
        };
        if snap.state == SnapshotState::Deleted.as_str() || snap.state == SnapshotState::Deleting.as_str() {
            let job = job::done(&mut tx, &caller.account_id, "snapshot.delete", id.as_str(), "already deleted").await?;
            tx.commit().await?;
            return Ok((StatusCode::OK, job));
        }
        sqlx::query("UPDATE snapshots SET state = 'deleting', ensure_sent_at = 0 WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        let job = job::start(&mut tx, &caller.account_id, "snapshot.delete", id.as_str(), "deleted").await?;
        tx.commit().await?;
        Ok((StatusCode::ACCEPTED, job))
    })
    .await?;
    if status == StatusCode::OK {
        let snap = fetch(&ctx, &caller, &id).await?;
        return Ok((status, Json(Accepted { job, resource: snap })));
    }
    ctx.enqueue(Work::Snapshot(id.clone()));
    let snap = fetch(&ctx, &caller, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { job, resource: snap })))
}

pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, id).await? else { return Ok(()) };
    let sta =
        vdc_bus::StaClient { bus: ctx.bus.clone(), node_id: row.storage_node_id.parse().map_err(ApiError::internal)? };
    let unavailable = |e: AgentError| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() };
    let sid: SnapshotId = row.id.parse().map_err(ApiError::internal)?;
    let vid: VolumeId = row.volume_id.parse().map_err(ApiError::internal)?;
    match row.state.parse::<SnapshotState>().map_err(ApiError::internal)? {
        SnapshotState::Deleted => return Ok(()),
        SnapshotState::Deleting => sta.ensure_snapshot_absent(sid, vid).await.map_err(unavailable)?,
        _ => sta.ensure_snapshot(SnapshotSpec { id: sid, volume_id: vid }).await.map_err(unavailable)?,
    }
    sqlx::query("UPDATE snapshots SET ensure_sent_at = $1 WHERE id = $2")
        .bind(db::now_ms())
        .bind(id)
        .execute(&ctx.db)
        .await?;
    Ok(())
}

pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: SnapshotReport) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, r.id.as_str()).await? else { return Ok(()) };
    if row.storage_node_id != node || (gen as i64) <= row.report_gen {
        return Ok(());
    }
    let state: SnapshotState = row.state.parse().map_err(ApiError::internal)?;
    let new_state = match (state, r.state) {
        (SnapshotState::Deleted, _) => SnapshotState::Deleted,
        (_, ObservedStorage::Failed) => SnapshotState::Failed,
        (SnapshotState::Creating, ObservedStorage::Available) => SnapshotState::Available,
        (SnapshotState::Deleting, ObservedStorage::Absent) => SnapshotState::Deleted,
        (s, _) => s,
    };
    let mut tx = ctx.db.begin().await?;
    let updated = sqlx::query(
        "UPDATE snapshots SET state = $1, report_gen = $2 WHERE id = $3 AND report_gen < $2 AND state = $4",
    )
    .bind(new_state.as_str())
    .bind(gen as i64)
    .bind(&row.id)
    .bind(&row.state)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 1 {
        // The jobs end in the report's transaction: a failure applies neither.
        if new_state == SnapshotState::Failed {
            job::fail_all(&mut tx, &row.id, r.reason.as_deref().unwrap_or("sta reported a failure")).await?;
        } else {
            job::finish(&mut tx, &row.id, new_state.as_str()).await?;
        }
        tx.commit().await?;
    }
    Ok(())
}
