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
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{job, page, paging, path_id, state_filter, validate_name};
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

async fn fetch_row(db: &db::Pool, id: &str) -> Result<Option<Row>, sqlx::Error> {
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

#[utoipa::path(post, path = "/api/v1/volumes", tag = "volumes", operation_id = "volume_create",
    summary = "Create a volume: empty, a copy of a snapshot, or filled from an image", request_body = CreateVolume,
    responses(
        (status = 202, description = "Accepted: the volume (creating) and the job that tracks it",
            body = Accepted<Volume>),
        (status = 400,
            description = "`invalid_name`, `invalid_source`, `invalid_size`, `invalid_image`, or a malformed body \
                (`invalid_body`)", body = ErrorBody),
        (status = 404, description = "`not_found`: the snapshot or the image", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the snapshot is not available", body = ErrorBody),
        (status = 422, description = "`no_capacity`: no online storage node has the room", body = ErrorBody)))]
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
        let image = crate::resources::image::fetch_visible(&ctx, &caller, image_id).await?;
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

#[utoipa::path(get, path = "/api/v1/volumes", tag = "volumes", operation_id = "volume_list",
    summary = "List the account's volumes",
    params(
        vdc_schema::api::ListQuery,
        ("state" = Option<vdc_schema::VolumeState>, Query, description = "Only volumes in this state"),
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of volumes", body = Page<Volume>)))]
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

#[utoipa::path(get, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "volume_show",
    summary = "Show a volume",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The volume", body = Volume),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Volume>> {
    Ok(Json(fetch_own(&ctx, &caller, &path_id("volume", &id)?).await?.into_api()?))
}

/// One compare-and-set change of a volume's intent, with its job.
struct Change<'a> {
    state: VolumeState,
    instance: Option<&'a str>,
    action: &'a str,
    /// None: the change is complete at once.
    target: Option<&'a str>,
}

async fn apply_change(ctx: &SharedCtx, caller: &Caller, row: &Row, c: Change<'_>) -> ApiResult<Accepted<Volume>> {
    let mut tx = ctx.db.begin().await?;
    let r = sqlx::query(
        "UPDATE volumes SET state = $1, instance_id = $2, spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $3
         WHERE id = $4 AND spec_gen = $5",
    )
    .bind(c.state.as_str())
    .bind(c.instance)
    .bind(db::now())
    .bind(&row.id)
    .bind(row.spec_gen)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::Busy(format!("volume {} changed concurrently", row.id)));
    }
    let job = match c.target {
        Some(t) => job::start(&mut tx, &caller.account_id, c.action, &row.id, t).await?,
        None => job::done(&mut tx, &caller.account_id, c.action, &row.id, "done").await?,
    };
    tx.commit().await?;
    let vol = fetch_row(&ctx.db, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
    Ok(Accepted { job, resource: vol.into_api()? })
}

async fn already(
    ctx: &SharedCtx,
    caller: &Caller,
    row: Row,
    action: &str,
    msg: &str,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let mut tx = ctx.db.begin().await?;
    let job = job::done(&mut tx, &caller.account_id, action, &row.id, msg).await?;
    tx.commit().await?;
    Ok((StatusCode::OK, Json(Accepted { job, resource: row.into_api()? })))
}

#[utoipa::path(delete, path = "/api/v1/volumes/{id}", tag = "volumes", operation_id = "volume_delete",
    summary = "Delete a volume",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (already deleted): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`volume_attached`: detach it first; `volume_has_snapshots`: delete them first",
            body = ErrorBody)))]
pub async fn delete(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let row = fetch_own(&ctx, &caller, &id).await?;
    match row.state()? {
        VolumeState::Deleted => return already(&ctx, &caller, row, "volume.delete", "already deleted").await,
        VolumeState::Attaching | VolumeState::Attached | VolumeState::Detaching => {
            let inst = row.instance_id.clone().unwrap_or_default();
            return Err(ApiError::conflict(
                "volume_attached",
                format!("volume {id} is attached to {inst}; detach it first"),
            ));
        }
        VolumeState::Creating | VolumeState::Available | VolumeState::Deleting | VolumeState::Failed => {}
    }
    let (snaps,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM snapshots WHERE volume_id = $1 AND state <> 'deleted'")
        .bind(id.as_str())
        .fetch_one(&ctx.db)
        .await?;
    if snaps > 0 {
        return Err(ApiError::conflict(
            "volume_has_snapshots",
            format!("volume {id} has {snaps} snapshots; delete them first"),
        ));
    }
    let accepted = db::retry(|| async {
        let row = fetch_own(&ctx, &caller, &id).await?;
        let change =
            Change { state: VolumeState::Deleting, instance: None, action: "volume.delete", target: Some("deleted") };
        apply_change(&ctx, &caller, &row, change).await
    })
    .await?;
    ctx.enqueue(Work::Volume(id));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/attach", tag = "volumes", operation_id = "volume_attach",
    summary = "Attach a volume to an instance", request_body = AttachVolume,
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (already attached to this instance): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`: the volume or the instance", body = ErrorBody),
        (status = 409,
            description = "`invalid_state`: the volume is not available or the instance is going away; \
                `too_many_volumes`: the instance has 16", body = ErrorBody)))]
pub async fn attach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<AttachVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let row = fetch_own(&ctx, &caller, &id).await?;
    let inst = crate::resources::instance::fetch(&ctx, &caller, &req.instance_id).await?;
    match row.state()? {
        VolumeState::Available => {}
        VolumeState::Attached | VolumeState::Attaching if row.instance_id.as_deref() == Some(inst.id.as_str()) => {
            return already(&ctx, &caller, row, "volume.attach", "already attached to this instance").await;
        }
        s => {
            return Err(ApiError::conflict(
                "invalid_state",
                format!("volume {id} is {s}; only an available volume can be attached"),
            ))
        }
    }
    if matches!(inst.state, InstanceState::ShuttingDown | InstanceState::Terminated | InstanceState::Failed) {
        return Err(ApiError::conflict("invalid_state", format!("instance {} is {}", inst.id, inst.state)));
    }
    if inst.volumes.len() >= 16 {
        return Err(ApiError::conflict("too_many_volumes", format!("instance {} has 16 volumes already", inst.id)));
    }
    let has_host = inst.host_node_id.is_some();
    let accepted = db::retry(|| async {
        let row = fetch_own(&ctx, &caller, &id).await?;
        let change = Change {
            state: if has_host { VolumeState::Attaching } else { VolumeState::Attached },
            instance: Some(inst.id.as_str()),
            action: "volume.attach",
            target: has_host.then_some("attached"),
        };
        apply_change(&ctx, &caller, &row, change).await
    })
    .await?;
    ctx.enqueue(Work::Volume(id));
    ctx.enqueue(Work::Instance(inst.id));
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/detach", tag = "volumes", operation_id = "volume_detach",
    summary = "Detach a volume from its instance",
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 200, description = "Nothing to do (not attached): the volume and a finished job",
            body = Accepted<Volume>),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: it is being created, detached or deleted", body = ErrorBody)))]
pub async fn detach(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let row = fetch_own(&ctx, &caller, &id).await?;
    match row.state()? {
        VolumeState::Attached | VolumeState::Attaching => {}
        VolumeState::Available => return already(&ctx, &caller, row, "volume.detach", "not attached").await,
        s => return Err(ApiError::conflict("invalid_state", format!("volume {id} is {s}, not attached"))),
    }
    let instance = row.instance_id.clone().unwrap_or_default();
    let host: Option<(Option<String>,)> = sqlx::query_as("SELECT host_node_id FROM instances WHERE id = $1")
        .bind(&instance)
        .fetch_optional(&ctx.db)
        .await?;
    let has_host = matches!(host, Some((Some(_),)));
    let accepted = db::retry(|| async {
        let row = fetch_own(&ctx, &caller, &id).await?;
        let change = if has_host {
            Change {
                state: VolumeState::Detaching,
                instance: Some(&instance),
                action: "volume.detach",
                target: Some("available"),
            }
        } else {
            Change { state: VolumeState::Available, instance: None, action: "volume.detach", target: None }
        };
        apply_change(&ctx, &caller, &row, change).await
    })
    .await?;
    ctx.enqueue(Work::Volume(id));
    if let Ok(i) = instance.parse() {
        ctx.enqueue(Work::Instance(i));
    }
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/volumes/{id}/extend", tag = "volumes", operation_id = "volume_extend",
    summary = "Grow a volume", request_body = ExtendVolume,
    params(
        ("id" = vdc_schema::id::VolumeId, Path,
            description = "A volume ID (`vol-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 202, description = "Accepted: the volume and the job that tracks the change",
            body = Accepted<Volume>),
        (status = 400, description = "`invalid_size`: not larger, or too large; or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 404, description = "`not_found`", body = ErrorBody),
        (status = 409, description = "`volume_attached`: detach it first; `invalid_state`: it is not available",
            body = ErrorBody),
        (status = 422, description = "`no_capacity`: its storage node is offline or lacks the room",
            body = ErrorBody)))]
pub async fn extend(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Path(id): Path<String>,
    Body(req): Body<ExtendVolume>,
) -> ApiResult<(StatusCode, Json<Accepted<Volume>>)> {
    let id: VolumeId = path_id("volume", &id)?;
    let row = fetch_own(&ctx, &caller, &id).await?;
    let size = req.size_mib;
    if size > MAX_SIZE_MIB {
        return Err(ApiError::bad("invalid_size", format!("size_mib must be at most {MAX_SIZE_MIB}, got {size}")));
    }
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
    let accepted = db::retry(|| async {
        let row = fetch_own(&ctx, &caller, &id).await?;
        let mut tx = ctx.db.begin().await?;
        reserve_storage(&mut tx, &ctx.db, size as i64 - row.size_mib, Some(&node)).await?;
        let r = sqlx::query(
            "UPDATE volumes SET size_mib = $1, spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $2
             WHERE id = $3 AND spec_gen = $4 AND state = 'available'",
        )
        .bind(size as i64)
        .bind(db::now())
        .bind(&row.id)
        .bind(row.spec_gen)
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            return Err(ApiError::Busy(format!("volume {} changed concurrently", row.id)));
        }
        let job = job::start(&mut tx, &caller.account_id, "volume.extend", &row.id, "available").await?;
        tx.commit().await?;
        let vol = fetch_row(&ctx.db, &row.id).await?.ok_or_else(|| ApiError::not_found("volume", &row.id))?;
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
                Some(i) => Some(crate::resources::image::spec(&ctx.db, i).await?),
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

/// Folds one sta report into the model.
pub async fn apply_report(ctx: &SharedCtx, node: &str, gen: u64, r: VolumeReport) -> ApiResult<()> {
    let Some(row) = fetch_row(&ctx.db, r.id.as_str()).await? else { return Ok(()) };
    if row.storage_node_id.as_deref() != Some(node)
        || (gen as i64) <= row.report_gen
        || (r.spec_gen as i64) < row.spec_gen
    {
        return Ok(());
    }
    let state = row.state()?;
    let new_state = match (state, r.state) {
        (_, ObservedStorage::Failed) => VolumeState::Failed,
        (VolumeState::Creating, ObservedStorage::Available) => VolumeState::Available,
        (VolumeState::Deleting, ObservedStorage::Absent) => VolumeState::Deleted,
        (s, _) => s,
    };
    let target = r.target.as_ref().map(|t| serde_json::to_string(t).expect("targets serialize"));
    let reason =
        (new_state == VolumeState::Failed).then(|| r.reason.clone().unwrap_or_else(|| "sta reported a failure".into()));
    let mut tx = ctx.db.begin().await?;
    // The state moves only from the one read above: hva's reports move attaching →
    // attached concurrently without bumping spec_gen, and must not be undone.
    let updated = sqlx::query(
        "UPDATE volumes SET state = CASE WHEN state = $8 THEN $1 ELSE state END, report_gen = $2, target = $3,
             failure_reason = COALESCE($4, failure_reason), updated_at = $5
         WHERE id = $6 AND report_gen < $2 AND spec_gen = $7",
    )
    .bind(new_state.as_str())
    .bind(gen as i64)
    .bind(&target)
    .bind(&reason)
    .bind(db::now())
    .bind(&row.id)
    .bind(row.spec_gen)
    .bind(state.as_str())
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() == 0 {
        return Ok(());
    }
    if new_state == VolumeState::Deleted && state != VolumeState::Deleted {
        sqlx::query(
            "UPDATE storage_nodes SET used_mib = CASE WHEN used_mib > $1 THEN used_mib - $1 ELSE 0 END WHERE id = $2",
        )
        .bind(row.size_mib)
        .bind(node)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    match &reason {
        Some(why) => job::fail_all(&ctx.db, &row.id, why).await?,
        None => job::finish(&ctx.db, &row.id, new_state.as_str()).await?,
    }
    // A new export target for an attaching volume goes to hva with the instance spec.
    if target != row.target && matches!(state, VolumeState::Attaching | VolumeState::Attached) {
        if let Some(i) = row.instance_id.as_deref().and_then(|i| i.parse().ok()) {
            ctx.enqueue(Work::Instance(i));
        }
    }
    Ok(())
}

/// hva reported which volumes a guest really has: finish attaches and detaches.
pub async fn on_instance_report(
    ctx: &SharedCtx,
    instance: &str,
    attached: &[VolumeId],
    state: InstanceState,
) -> ApiResult<()> {
    if state == InstanceState::Terminated {
        return Ok(());
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, state FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'detaching')")
            .bind(instance)
            .fetch_all(&ctx.db)
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
                 spec_gen = spec_gen + $2
             WHERE id = $4 AND state = $5",
        )
        .bind(new_state.as_str())
        .bind(clear as i64)
        .bind(db::now())
        .bind(&id)
        .bind(&vstate)
        .execute(&ctx.db)
        .await?;
        job::finish(&ctx.db, &id, if new_state == VolumeState::Attached { "attached" } else { "available" }).await?;
        if clear {
            // Detached from the guest: sta can withdraw the export now.
            if let Ok(v) = id.parse() {
                ctx.enqueue(Work::Volume(v));
            }
        }
    }
    Ok(())
}
