//! Volumes: block devices kept by a storage node (sta) and attached to instances.
//!
//! ```text
//!  creating ─► available ─attach─► attaching ─► attached ─detach─► detaching ─► available
//!      │            └─delete─► deleting ─► deleted
//!      └─► failed
//! ```
//! sta's reports drive creating/deleting; hva's reports (the volumes a guest really has)
//! drive attaching/detaching. A volume is exported to the instance's host from attaching
//! until hva confirms the detach.

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
use vdc_schema::api::{Accepted, AttachVolume, CreateVolume, ErrorBody, ExtendVolume, Page, Volume};
use vdc_schema::bus::{VolumeReport, VolumeSpec};
use vdc_schema::id::*;
use vdc_schema::{InstanceState, ObservedStorage, VolumeState};

#[derive(sqlx::FromRow, Clone)]
pub(crate) struct Row {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub size_mib: i64,
    pub state: String,
    pub storage_node_id: Option<String>,
    pub instance_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub image_id: Option<String>,
    pub target: Option<String>,
    pub spec_gen: i64,
    pub report_gen: i64,
    pub failure_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

const COLS: &str =
    "id, account_id, name, size_mib, state, storage_node_id, instance_id, snapshot_id, image_id, target, spec_gen, \
     report_gen, failure_reason, created_at, updated_at";

/// The largest volume: 16 TiB.
pub const MAX_SIZE_MIB: u64 = 16 << 20;

impl Row {
    fn state(&self) -> ApiResult<VolumeState> {
        self.state.parse().map_err(ApiError::internal)
    }

    fn into_api(self) -> ApiResult<Volume> {
        Ok(Volume {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            size_mib: self.size_mib as u64,
            state: self.state.parse().map_err(ApiError::internal)?,
            storage_node_id: self.storage_node_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            instance_id: self.instance_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            snapshot_id: self.snapshot_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            image_id: self.image_id.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
            failure_reason: self.failure_reason,
            created_at: db::parse_time(&self.created_at),
            updated_at: db::parse_time(&self.updated_at),
        })
    }
}

async fn fetch_row<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    id: &str,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM volumes WHERE id = $1")).bind(id).fetch_optional(db).await
}

async fn fetch_own(ctx: &SharedCtx, caller: &Caller, id: &VolumeId) -> ApiResult<Row> {
    match fetch_row(&ctx.db, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("volume", id)),
    }
}

/// Reserves `size` on a storage node (the given one, or the emptiest online one).
async fn reserve_storage(tx: &mut db::Tx<'_>, pool: &db::Pool, size: i64, on: Option<&str>) -> ApiResult<String> {
    let candidates: Vec<(String,)> = match on {
        Some(n) => vec![(n.to_owned(),)],
        None => {
            sqlx::query_as(
                "SELECT id FROM storage_nodes WHERE state = 'online' AND capacity_mib - used_mib >= $1
             ORDER BY capacity_mib - used_mib DESC, id LIMIT 8",
            )
            .bind(size)
            .fetch_all(pool)
            .await?
        }
    };
    for (id,) in &candidates {
        let r = sqlx::query(
            "UPDATE storage_nodes SET used_mib = used_mib + $1 WHERE id = $2 AND state = 'online' AND used_mib + $1 <= capacity_mib",
        )
        .bind(size)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() == 1 {
            return Ok(id.clone());
        }
    }
    Err(ApiError::Unprocessable {
        code: "no_capacity",
        message: match on {
            Some(n) => format!("storage node {n} is offline or has less than {size} MiB free"),
            None => format!("no online storage node has {size} MiB free"),
        },
    })
}

#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    validate_name("volume", &req.name)?;
    if let (Some(_), Some(_)) = (&req.snapshot_id, &req.image_id) {
        return Err(ApiError::bad("invalid_source", "give snapshot_id or image_id, not both"));
    }
    let snap = match &req.snapshot_id {
        Some(s) => Some(crate::resources::snapshot::fetch(&ctx, &caller, s).await?),
        None => None,
    };
    if let Some(s) = &snap {
        if s.state != vdc_schema::SnapshotState::Available {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("snapshot {} is {}, not available", s.id, s.state),
            ));
        }
    }
    if let Some(image_id) = &req.image_id {
        let image = crate::app::image::fetch_visible(&ctx, &caller, image_id).await?;
        if !matches!(image.format, vdc_schema::ImageFormat::Qcow2 | vdc_schema::ImageFormat::Raw) {
            return Err(ApiError::bad(
                "invalid_image",
                format!(
                    "image {image_id} is a {} image; a volume can be filled from a qcow2 or raw image",
                    image.format
                ),
            ));
        }
        if req.size_mib.is_none() {
            return Err(ApiError::bad("invalid_size", "a volume from an image needs size_mib (in MiB)"));
        }
    }
    let size = match (req.size_mib, &snap) {
        (Some(sz), Some(s)) if sz < s.size_mib => {
            return Err(ApiError::bad(
                "invalid_size",
                format!("size_mib {sz} is smaller than snapshot {} ({} MiB)", s.id, s.size_mib),
            ))
        }
        (Some(sz), _) => sz,
        (None, Some(s)) => s.size_mib,
        (None, None) => return Err(ApiError::bad("invalid_size", "give size_mib (in MiB) or snapshot_id")),
    };
    if size == 0 || size > MAX_SIZE_MIB {
        return Err(ApiError::bad(
            "invalid_size",
            format!("size_mib must be between 1 and {MAX_SIZE_MIB}, got {size}"),
        ));
    }
    let accepted = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        if let Some(s) = &snap {
            // The snapshot must still be there when the volume is recorded (a concurrent
            // delete locks it too).
            db::lock(&mut tx, db::Lock::Snapshot, s.id.as_str()).await?;
            let (state,): (String,) = sqlx::query_as("SELECT state FROM snapshots WHERE id = $1")
                .bind(s.id.as_str())
                .fetch_one(&mut *tx)
                .await?;
            if state != vdc_schema::SnapshotState::Available.as_str() {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!("snapshot {} is {state}, not available", s.id),
                ));
            }
        }
        let node =
            reserve_storage(&mut tx, &ctx.db, size as i64, snap.as_ref().map(|s| s.storage_node_id.as_str())).await?;
        let id = VolumeId::generate();
        let now = db::now();
        sqlx::query(&format!(
            "INSERT INTO volumes ({COLS}) VALUES ($1, $2, $3, $4, 'creating', $5, NULL, $6, $8, NULL, 1, 0, NULL, $7, $7)"
        ))
        .bind(id.as_str())
        .bind(caller.account_id.as_str())
        .bind(&req.name)
        .bind(size as i64)
        .bind(&node)
        .bind(req.snapshot_id.as_ref().map(|s| s.to_string()))
        .bind(&now)
        .bind(req.image_id.as_ref().map(|s| s.to_string()))
        .execute(&mut *tx)
        .await?;
        let job = job::start(&mut tx, &caller.account_id, "volume.create", id.as_str(), "available").await?;
        tx.commit().await?;
        let t = db::parse_time(&now);
        let vol = Volume {
            id,
            name: req.name.clone(),
            size_mib: size,
            state: VolumeState::Creating,
            storage_node_id: Some(node.parse().map_err(ApiError::internal)?),
            instance_id: None,
            snapshot_id: req.snapshot_id.clone(),
            image_id: req.image_id.clone(),
            failure_reason: None,
            created_at: t,
            updated_at: t,
        };
        Ok(Accepted { job, resource: vol })
    })
    .await?;
    ctx.enqueue(Work::Volume(accepted.resource.id.clone()));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", params(vdc_schema::api::ListQuery),
    responses((status = 200, body = Page<Volume>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Volume>>> {
    let (limit, cursor) = paging(&q)?;
    let state = state_filter::<VolumeState>(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM volumes WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
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
    Ok(Json(page(items, limit, |v| v.id.to_string())))
}

#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(fetch_own(&ctx, &caller, &path_id("volume", &id)?).await?.into_api()?))
}

/// What a request does to a volume, decided from the volume (and instance) as they are
/// inside the request's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to change (200 with a finished job).
    Already(&'static str),
    /// New state and attachment; `wait_for` is the state that ends the job (None: done).
    Apply { state: VolumeState, instance: Option<String>, wait_for: Option<&'static str> },
}

/// The instance a volume is asked to attach to, as read in the transaction.
pub(crate) struct AttachTarget<'a> {
    pub id: &'a str,
    pub state: InstanceState,
    pub has_host: bool,
    /// Volumes attached or attaching to it now.
    pub volumes: i64,
}

pub(crate) const MAX_VOLUMES_PER_INSTANCE: i64 = 16;

pub(crate) fn decide_attach(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    inst: &AttachTarget<'_>,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Available => {}
        VolumeState::Attached | VolumeState::Attaching if attached_to == Some(inst.id) => {
            return Ok(Decision::Already("already attached to this instance"));
        }
        VolumeState::Attached | VolumeState::Attaching | VolumeState::Detaching => {
            return Err(ApiError::conflict(
                "volume_attached",
                format!(
                    "volume {id} is {state} to {}; only an available volume can be attached",
                    attached_to.unwrap_or("another instance")
                ),
            ))
        }
        s => {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("volume {id} is {s}; only an available volume can be attached"),
            ))
        }
    }
    if matches!(inst.state, InstanceState::ShuttingDown | InstanceState::Terminated | InstanceState::Failed) {
        return Err(ApiError::conflict(
            "invalid_state",
            format!("instance {} is {}; volumes attach to live instances", inst.id, inst.state),
        ));
    }
    if inst.volumes >= MAX_VOLUMES_PER_INSTANCE {
        return Err(ApiError::conflict(
            "too_many_volumes",
            format!("instance {} has {MAX_VOLUMES_PER_INSTANCE} volumes already", inst.id),
        ));
    }
    Ok(if inst.has_host {
        Decision::Apply {
            state: VolumeState::Attaching,
            instance: Some(inst.id.to_owned()),
            wait_for: Some("attached"),
        }
    } else {
        // A stopped instance gets the volume in its definition when it starts.
        Decision::Apply { state: VolumeState::Attached, instance: Some(inst.id.to_owned()), wait_for: None }
    })
}

pub(crate) fn decide_detach(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    has_host: bool,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Attached | VolumeState::Attaching => Ok(if has_host {
            Decision::Apply {
                state: VolumeState::Detaching,
                instance: attached_to.map(str::to_owned),
                wait_for: Some("available"),
            }
        } else {
            Decision::Apply { state: VolumeState::Available, instance: None, wait_for: None }
        }),
        VolumeState::Available => Ok(Decision::Already("not attached")),
        VolumeState::Detaching => Ok(Decision::Already("already detaching")),
        s => Err(ApiError::conflict("invalid_state", format!("volume {id} is {s}, not attached"))),
    }
}

pub(crate) fn decide_delete(
    id: &str,
    state: VolumeState,
    attached_to: Option<&str>,
    snapshots: i64,
) -> ApiResult<Decision> {
    match state {
        VolumeState::Deleted => return Ok(Decision::Already("already deleted")),
        VolumeState::Deleting => return Ok(Decision::Already("already deleting")),
        VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
            return Err(ApiError::conflict(
                "volume_attached",
                format!("volume {id} is attached to {}; detach it first", attached_to.unwrap_or("an instance")),
            ));
        }
        VolumeState::Creating | VolumeState::Available | VolumeState::Failed => {}
    }
    if snapshots > 0 {
        return Err(ApiError::conflict(
            "volume_has_snapshots",
            format!("volume {id} has {snapshots} snapshots; delete them first"),
        ));
    }
    Ok(Decision::Apply { state: VolumeState::Deleting, instance: None, wait_for: Some("deleted") })
}

/// Applies a decision in `tx` (which holds the volume's lock) and commits.
async fn commit_decision(
    mut tx: db::Tx<'_>,
    caller: &Caller,
    row: Row,
    action: &str,
    d: Decision,
) -> ApiResult<(StatusCode, Accepted<Volume>)> {
    let (status, job) = match &d {
        Decision::Already(msg) => (StatusCode::OK, job::done(&mut tx, &caller.account_id, action, &row.id, msg).await?),
        Decision::Apply { state, instance, wait_for } => {
            sqlx::query(
                "UPDATE volumes SET state = $1, instance_id = $2, spec_gen = spec_gen + 1, ensure_sent_at = 0,
                     updated_at = $3 WHERE id = $4",
            )
            .bind(state.as_str())
            .bind(instance.as_deref())
            .bind(db::now())
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
            let job = match wait_for {
                Some(t) => job::start(&mut tx, &caller.account_id, action, &row.id, t).await?,
                None => job::done(&mut tx, &caller.account_id, action, &row.id, "done").await?,
            };
            (StatusCode::ACCEPTED, job)
        }
    };
    let vol = fetch_row(&mut *tx, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
    tx.commit().await?;
    Ok((status, Accepted { job, resource: vol.into_api()? }))
}

/// Locks the caller's volume in `tx` and reads it; 404 when it is not theirs.
async fn lock_own(tx: &mut db::Tx<'_>, caller: &Caller, id: &VolumeId) -> ApiResult<Row> {
    db::lock(tx, db::Lock::Volume, id.as_str()).await?;
    match fetch_row(&mut **tx, id.as_str()).await? {
        Some(r) if r.account_id == caller.account_id.as_str() => Ok(r),
        _ => Err(ApiError::not_found("volume", id)),
    }
}

#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (status, accepted) = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        let row = lock_own(&mut tx, &caller, &id).await?;
        // Snapshot creation locks the volume too, so this count cannot change before commit.
        let (snaps,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM snapshots WHERE volume_id = $1 AND state <> 'deleted'")
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let d = decide_delete(id.as_str(), row.state()?, row.instance_id.as_deref(), snaps)?;
        commit_decision(tx, &caller, row, "volume.delete", d).await
    })
    .await?;
    if status == StatusCode::ACCEPTED {
        ctx.enqueue(Work::Volume(id));
    }
    Ok((status, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/attach", tag = "volumes", params(("id" = String, Path)),
    request_body = AttachVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn attach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AttachVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let inst_id = req.instance_id;
    let (status, accepted) = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // The instance first, then the volume: the order terminate takes (it locks the
        // instance, then detaches its volumes), so the two never deadlock.
        db::lock(&mut tx, db::Lock::Instance, inst_id.as_str()).await?;
        let inst = match crate::resources::instance::fetch_row(&mut *tx, inst_id.as_str()).await? {
            Some(i) if i.account_id == caller.account_id.as_str() => i,
            _ => return Err(ApiError::not_found("instance", &inst_id)),
        };
        let row = lock_own(&mut tx, &caller, &id).await?;
        let (volumes,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached', 'detaching')",
        )
        .bind(inst_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let target = AttachTarget {
            id: inst_id.as_str(),
            state: inst.state.parse().map_err(ApiError::internal)?,
            has_host: inst.host_node_id.is_some(),
            volumes,
        };
        let d = decide_attach(id.as_str(), row.state()?, row.instance_id.as_deref(), &target)?;
        commit_decision(tx, &caller, row, "volume.attach", d).await
    })
    .await?;
    if status == StatusCode::ACCEPTED {
        ctx.enqueue(Work::Volume(id));
        ctx.enqueue(Work::Instance(inst_id));
    }
    Ok((status, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/detach", tag = "volumes", params(("id" = String, Path)),
    responses((status = 202, body = Accepted<Volume>), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn detach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let (status, accepted, instance) = db::retry(|| async {
        // Which instance to lock first (see attach); re-checked under the locks.
        let hint = fetch_own(&ctx, &caller, &id).await?.instance_id;
        let mut tx = ctx.db.begin().await?;
        let mut has_host = false;
        if let Some(i) = &hint {
            db::lock(&mut tx, db::Lock::Instance, i).await?;
            has_host =
                crate::resources::instance::fetch_row(&mut *tx, i).await?.is_some_and(|r| r.host_node_id.is_some());
        }
        let row = lock_own(&mut tx, &caller, &id).await?;
        if row.instance_id != hint {
            return Err(ApiError::Busy(format!("volume {id} moved while it was being detached")));
        }
        let d = decide_detach(id.as_str(), row.state()?, row.instance_id.as_deref(), has_host)?;
        let (status, accepted) = commit_decision(tx, &caller, row, "volume.detach", d).await?;
        Ok((status, accepted, hint))
    })
    .await?;
    if status == StatusCode::ACCEPTED {
        ctx.enqueue(Work::Volume(id));
        if let Some(i) = instance.and_then(|i| i.parse().ok()) {
            ctx.enqueue(Work::Instance(i));
        }
    }
    Ok((status, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/extend", tag = "volumes", params(("id" = String, Path)),
    request_body = ExtendVolume,
    responses((status = 202, body = Accepted<Volume>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn extend(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ExtendVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let size = req.size_mib;
    if size > MAX_SIZE_MIB {
        return Err(ApiError::bad("invalid_size", format!("size_mib must be at most {MAX_SIZE_MIB}, got {size}")));
    }
    let accepted = db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        let row = lock_own(&mut tx, &caller, &id).await?;
        if size <= row.size_mib as u64 {
            return Err(ApiError::bad(
                "invalid_size",
                format!("volume {id} is {} MiB; size_mib must be larger (volumes never shrink)", row.size_mib),
            ));
        }
        match row.state()? {
            VolumeState::Available => {}
            // tgt reads a LUN's size once, and a guest would need a rescan: refuse for now.
            VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
                return Err(ApiError::conflict(
                    "volume_attached",
                    format!("volume {id} is attached; detach it before extending it"),
                ))
            }
            s => {
                return Err(ApiError::conflict(
                    "invalid_state",
                    format!("volume {id} is {s}; only an available volume can grow"),
                ))
            }
        }
        let node = row.storage_node_id.clone().ok_or_else(|| ApiError::internal("volume without a storage node"))?;
        reserve_storage(&mut tx, &ctx.db, size as i64 - row.size_mib, Some(&node)).await?;
        sqlx::query(
            "UPDATE volumes SET size_mib = $1, spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $2 WHERE id = $3",
        )
        .bind(size as i64)
        .bind(db::now())
        .bind(&row.id)
        .execute(&mut *tx)
        .await?;
        let job = job::start(&mut tx, &caller.account_id, "volume.extend", &row.id, "available").await?;
        let vol = fetch_row(&mut *tx, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
        tx.commit().await?;
        Ok(Accepted { job, resource: vol.into_api()? })
    })
    .await?;
    ctx.enqueue(Work::Volume(id));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

// ---------------------------------------------------------------- agent side

/// Sends one volume's desired state to its storage node.
pub async fn dispatch(ctx: &SharedCtx, id: &str) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, id).await? else { return Ok(()) };
    let Some(node) = row.storage_node_id.clone() else { return Ok(()) };
    let sta = vdc_bus::StaClient { bus: ctx.bus.clone(), node_id: node.parse().map_err(ApiError::internal)? };
    let unavailable = |e: AgentError| ApiError::Unavailable { code: "agent_unavailable", message: e.to_string() };
    match row.state()? {
        VolumeState::Deleted => return Ok(()),
        VolumeState::Deleting => {
            sta.ensure_volume_absent(row.id.parse().map_err(ApiError::internal)?, row.spec_gen as u64)
                .await
                .map_err(unavailable)?;
        }
        state => {
            let export_to = match (state, &row.instance_id) {
                (VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching, Some(i)) => {
                    let h: Option<(Option<String>,)> =
                        sqlx::query_as("SELECT host_node_id FROM instances WHERE id = $1")
                            .bind(i)
                            .fetch_optional(&ctx.db)
                            .await?;
                    h.and_then(|h| h.0).and_then(|h| h.parse().ok())
                }
                _ => None,
            };
            let source_image = match &row.image_id {
                Some(i) => Some(crate::controller::image::spec(&ctx.db, i).await?),
                None => None,
            };
            let spec = VolumeSpec {
                id: row.id.parse().map_err(ApiError::internal)?,
                spec_gen: row.spec_gen as u64,
                size_mib: row.size_mib as u64,
                source_snapshot: row.snapshot_id.as_deref().and_then(|s| s.parse().ok()),
                source_image,
                export_to,
            };
            sta.ensure_volume(spec).await.map_err(unavailable)?;
        }
    }
    sqlx::query("UPDATE volumes SET ensure_sent_at = $1 WHERE id = $2")
        .bind(db::now_ms())
        .bind(id)
        .execute(&ctx.db)
        .await?;
    Ok(())
}

/// What sta's observation means for a volume in `state`.
pub(crate) fn on_report(state: VolumeState, observed: ObservedStorage) -> VolumeState {
    match (state, observed) {
        (VolumeState::Deleted, _) => VolumeState::Deleted,
        (_, ObservedStorage::Failed) => VolumeState::Failed,
        (VolumeState::Creating, ObservedStorage::Available) => VolumeState::Available,
        (VolumeState::Deleting, ObservedStorage::Absent) => VolumeState::Deleted,
        (s, _) => s,
    }
}

/// Folds one sta report into the model: the volume, its storage reservation and its jobs
/// change in one transaction, so a failure leaves the report unapplied (and unacked).
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: VolumeReport) -> ApiResult<()> {
    let mut tx = ctx.db.begin().await?;
    if !db::lock(&mut tx, db::Lock::Volume, r.id.as_str()).await? {
        return Ok(());
    }
    let Some(row) = fetch_row(&mut *tx, r.id.as_str()).await? else { return Ok(()) };
    if row.storage_node_id.as_deref() != Some(node)
        || (gen as i64) <= row.report_gen
        || (r.spec_gen as i64) < row.spec_gen
    {
        return Ok(());
    }
    let state = row.state()?;
    let new_state = on_report(state, r.state);
    let target = r.target.as_ref().map(|t| serde_json::to_string(t).expect("targets serialize"));
    let reason = (new_state == VolumeState::Failed && state != VolumeState::Failed)
        .then(|| r.reason.clone().unwrap_or_else(|| "sta reported a failure".into()));
    sqlx::query(
        "UPDATE volumes SET state = $1, report_gen = $2, target = $3, failure_reason = COALESCE($4, failure_reason),
             updated_at = $5 WHERE id = $6",
    )
    .bind(new_state.as_str())
    .bind(gen as i64)
    .bind(&target)
    .bind(&reason)
    .bind(db::now())
    .bind(&row.id)
    .execute(&mut *tx)
    .await?;
    if new_state == VolumeState::Deleted && state != VolumeState::Deleted {
        sqlx::query(
            "UPDATE storage_nodes SET used_mib = CASE WHEN used_mib > $1 THEN used_mib - $1 ELSE 0 END WHERE id = $2",
        )
        .bind(row.size_mib)
        .bind(node)
        .execute(&mut *tx)
        .await?;
    }
    match &reason {
        Some(why) => job::fail_all(&mut tx, &row.id, why).await?,
        None => job::finish(&mut tx, &row.id, new_state.as_str()).await?,
    }
    tx.commit().await?;
    // A new export target for an attaching volume goes to hva with the instance spec.
    if target != row.target && matches!(state, VolumeState::Attaching | VolumeState::Attached) {
        if let Some(i) = row.instance_id.as_deref().and_then(|i| i.parse().ok()) {
            ctx.enqueue(Work::Instance(i));
        }
    }
    Ok(())
}

/// hva reported which volumes a guest really has: finish attaches and detaches, in the
/// transaction of the instance's report (which holds the instance's lock). Returns the
/// volumes now detached, whose export sta can withdraw.
pub(crate) async fn on_instance_report(
    tx: &mut db::Tx<'_>,
    instance: &str,
    attached: &[VolumeId],
    state: InstanceState,
) -> ApiResult<Vec<VolumeId>> {
    let mut detached = Vec::new();
    if state == InstanceState::Terminated {
        return Ok(detached);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, state FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'detaching') ORDER BY id",
    )
    .bind(instance)
    .fetch_all(&mut **tx)
    .await?;
    for (id, vstate) in rows {
        let present = attached.iter().any(|v| v.as_str() == id);
        let (new_state, clear) = match (vstate.as_str(), present) {
            ("attaching", true) => (VolumeState::Attached, false),
            ("detaching", false) => (VolumeState::Available, true),
            _ => continue,
        };
        sqlx::query(
            "UPDATE volumes SET state = $1, instance_id = CASE WHEN $2 = 1 THEN NULL ELSE instance_id END, updated_at = $3,
                 spec_gen = spec_gen + $2, ensure_sent_at = CASE WHEN $2 = 1 THEN 0 ELSE ensure_sent_at END
             WHERE id = $4 AND state = $5",
        )
        .bind(new_state.as_str())
        .bind(clear as i64)
        .bind(db::now())
        .bind(&id)
        .bind(&vstate)
        .execute(&mut **tx)
        .await?;
        job::finish(tx, &id, if new_state == VolumeState::Attached { "attached" } else { "available" }).await?;
        if clear {
            detached.extend(id.parse().ok());
        }
    }
    Ok(detached)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(state: InstanceState, has_host: bool, volumes: i64) -> AttachTarget<'static> {
        AttachTarget { id: "i-1", state, has_host, volumes }
    }

    #[test]
    fn attach_only_from_available_and_to_live_instances() {
        let running = inst(InstanceState::Running, true, 0);
        assert!(matches!(
            decide_attach("v", VolumeState::Available, None, &running),
            Ok(Decision::Apply { state: VolumeState::Attaching, wait_for: Some("attached"), .. })
        ));
        assert!(matches!(
            decide_attach("v", VolumeState::Available, None, &inst(InstanceState::Stopped, false, 0)),
            Ok(Decision::Apply { state: VolumeState::Attached, wait_for: None, .. })
        ));
        assert_eq!(
            decide_attach("v", VolumeState::Attaching, Some("i-1"), &running).unwrap(),
            Decision::Already("already attached to this instance")
        );
        for (s, to) in [
            (VolumeState::Attaching, Some("i-2")),
            (VolumeState::Attached, Some("i-2")),
            (VolumeState::Detaching, Some("i-1")),
        ] {
            assert_eq!(decide_attach("v", s, to, &running).unwrap_err().code(), "volume_attached", "{s}");
        }
        for s in [VolumeState::Creating, VolumeState::Deleting, VolumeState::Deleted, VolumeState::Failed] {
            assert_eq!(decide_attach("v", s, None, &running).unwrap_err().code(), "invalid_state", "{s}");
        }
        for s in [InstanceState::ShuttingDown, InstanceState::Terminated, InstanceState::Failed] {
            assert_eq!(
                decide_attach("v", VolumeState::Available, None, &inst(s, true, 0)).unwrap_err().code(),
                "invalid_state"
            );
        }
        let full = inst(InstanceState::Running, true, MAX_VOLUMES_PER_INSTANCE);
        assert_eq!(decide_attach("v", VolumeState::Available, None, &full).unwrap_err().code(), "too_many_volumes");
    }

    #[test]
    fn delete_refuses_attached_volumes_and_snapshots() {
        for s in [VolumeState::Attaching, VolumeState::Attached, VolumeState::Detaching] {
            assert_eq!(decide_delete("v", s, Some("i-1"), 0).unwrap_err().code(), "volume_attached");
        }
        assert_eq!(decide_delete("v", VolumeState::Available, None, 1).unwrap_err().code(), "volume_has_snapshots");
        assert_eq!(decide_delete("v", VolumeState::Deleting, None, 0).unwrap(), Decision::Already("already deleting"));
        assert!(matches!(
            decide_delete("v", VolumeState::Available, None, 0),
            Ok(Decision::Apply { state: VolumeState::Deleting, .. })
        ));
    }

    #[test]
    fn detach_waits_for_the_host_only_when_there_is_one() {
        assert!(matches!(
            decide_detach("v", VolumeState::Attached, Some("i-1"), true),
            Ok(Decision::Apply { state: VolumeState::Detaching, wait_for: Some("available"), .. })
        ));
        assert_eq!(
            decide_detach("v", VolumeState::Attached, Some("i-1"), false).unwrap(),
            Decision::Apply { state: VolumeState::Available, instance: None, wait_for: None }
        );
        assert_eq!(decide_detach("v", VolumeState::Deleting, None, true).unwrap_err().code(), "invalid_state");
    }

    #[test]
    fn reports_never_revive_a_deleted_volume() {
        assert_eq!(on_report(VolumeState::Deleted, ObservedStorage::Available), VolumeState::Deleted);
        assert_eq!(on_report(VolumeState::Creating, ObservedStorage::Available), VolumeState::Available);
        assert_eq!(on_report(VolumeState::Deleting, ObservedStorage::Absent), VolumeState::Deleted);
        assert_eq!(on_report(VolumeState::Attached, ObservedStorage::Failed), VolumeState::Failed);
    }
}
