//! Machine images: what an instance boots. An image is the caller's own or public.

use crate::api::{Body, ListParams};
use crate::ctx::{Caller, SharedCtx};
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::resources::{page, paging, path_id, validate_name};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use vdc_schema::api::{CreateImage, ErrorBody, Image, Page};
use vdc_schema::id::ImageId;

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    format: String,
    arch: String,
    hypervisors: String,
    source: String,
    checksum: Option<String>,
    initrd: Option<String>,
    kernel_cmdline: Option<String>,
    public: i64,
    created_at: String,
}

const COLS: &str = "id, name, format, arch, hypervisors, source, checksum, initrd, kernel_cmdline, public, created_at";

impl Row {
    fn into_api(self) -> ApiResult<Image> {
        Ok(Image {
            id: self.id.parse().map_err(ApiError::internal)?,
            name: self.name,
            format: self.format.parse().map_err(ApiError::internal)?,
            arch: self.arch.parse().map_err(ApiError::internal)?,
            hypervisors: db::split_list(&self.hypervisors),
            source: self.source,
            checksum: self.checksum,
            initrd: self.initrd,
            kernel_cmdline: self.kernel_cmdline,
            public: self.public != 0,
            created_at: db::parse_time(&self.created_at),
        })
    }
}

fn validate(req: &CreateImage) -> ApiResult<()> {
    validate_name("image", &req.name)?;
    if req.hypervisors.is_empty() {
        return Err(ApiError::bad("invalid_image", "hypervisors must list at least one of kvm, qemu, lxc"));
    }
    if req.source.trim().is_empty() || req.source.len() > 4096 {
        return Err(ApiError::bad("invalid_image", "source must be a path or URL of at most 4096 characters"));
    }
    if let Some(c) = &req.checksum {
        let ok = c.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            return Err(ApiError::bad("invalid_checksum", "checksum must be sha256: followed by 64 hex digits"));
        }
    }
    if req.format == vdc_schema::ImageFormat::Kernel && req.initrd.is_none() {
        return Err(ApiError::bad("invalid_image", "a kernel image needs initrd (the path of its initramfs)"));
    }
    if let Some(c) = &req.kernel_cmdline {
        if c.len() > 2048 || c.chars().any(|ch| ch.is_control()) {
            return Err(ApiError::bad("invalid_image", "kernel_cmdline must be one line of at most 2048 characters"));
        }
    }
    Ok(())
}

pub async fn insert(ctx: &SharedCtx, caller: &Caller, req: CreateImage) -> ApiResult<Image> {
    validate(&req)?;
    if req.public && !caller.admin {
        return Err(ApiError::Forbidden("only an admin can publish a public image".into()));
    }
    let id = ImageId::generate();
    let now = db::now();
    sqlx::query(&format!(
        "INSERT INTO images ({COLS}, account_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
    .bind(id.as_str())
    .bind(&req.name)
    .bind(req.format.as_str())
    .bind(req.arch.as_str())
    .bind(db::join_list(&req.hypervisors))
    .bind(&req.source)
    .bind(&req.checksum)
    .bind(&req.initrd)
    .bind(&req.kernel_cmdline)
    .bind(req.public as i64)
    .bind(&now)
    .bind(caller.account_id.as_str())
    .execute(&ctx.db)
    .await?;
    Ok(Image {
        id,
        name: req.name,
        format: req.format,
        arch: req.arch,
        hypervisors: req.hypervisors,
        source: req.source,
        checksum: req.checksum,
        initrd: req.initrd,
        kernel_cmdline: req.kernel_cmdline,
        public: req.public,
        created_at: db::parse_time(&now),
    })
}

#[utoipa::path(post, path = "/api/v1/images", tag = "images", operation_id = "image_create",
    summary = "Register an image", request_body = CreateImage,
    responses(
        (status = 201, description = "The image", body = Image),
        (status = 400,
            description = "`invalid_name`, `invalid_image`, `invalid_checksum`, or a malformed body (`invalid_body`)",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: only an admin can publish a public image", body = ErrorBody)))]
pub async fn create(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    Body(req): Body<CreateImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    Ok((StatusCode::CREATED, Json(insert(&ctx, &caller, req).await?)))
}

#[utoipa::path(get, path = "/api/v1/images", tag = "images", operation_id = "image_list",
    summary = "List the account's images and the public ones",
    params(
        vdc_schema::api::ListQuery,
        ("name" = Option<String>, Query, description = "Only items with this exact name")),
    responses((status = 200, description = "One page of images", body = Page<Image>)))]
pub async fn list(
    State(ctx): State<SharedCtx>,
    caller: Caller,
    ListParams(q): ListParams,
) -> ApiResult<Json<Page<Image>>> {
    let (limit, cursor) = paging(&q)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM images WHERE (account_id = $1 OR public = 1) AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4"
    ))
    .bind(caller.account_id.as_str())
    .bind(cursor)
    .bind(q.name.clone().unwrap_or_default())
    .bind(limit)
    .fetch_all(&ctx.db)
    .await?;
    let items = rows.into_iter().map(Row::into_api).collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(page(items, limit, |i| i.id.to_string())))
}

/// An image the caller may use (its own or public), or 404.
pub async fn fetch_visible(ctx: &SharedCtx, caller: &Caller, id: &ImageId) -> ApiResult<Image> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLS} FROM images WHERE id = $1 AND (account_id = $2 OR public = 1)"))
            .bind(id.as_str())
            .bind(caller.account_id.as_str())
            .fetch_optional(&ctx.db)
            .await?;
    row.ok_or_else(|| ApiError::not_found("image", id))?.into_api()
}

/// Any image by ID, for building agent specs.
pub async fn fetch_any(db: &db::Pool, id: &str) -> ApiResult<Image> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLS} FROM images WHERE id = $1")).bind(id).fetch_optional(db).await?;
    row.ok_or_else(|| ApiError::not_found("image", id))?.into_api()
}

/// What an agent needs of image `id` (hva to boot it, sta to fill a volume with it).
pub async fn spec(db: &db::Pool, id: &str) -> ApiResult<vdc_schema::bus::ImageSpec> {
    let image = fetch_any(db, id).await?;
    Ok(vdc_schema::bus::ImageSpec {
        id: image.id,
        format: image.format,
        source: image.source,
        checksum: image.checksum,
        initrd: image.initrd,
        kernel_cmdline: image.kernel_cmdline,
    })
}

#[utoipa::path(get, path = "/api/v1/images/{id}", tag = "images", operation_id = "image_show",
    summary = "Show an image (the account's own or a public one)",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "An image ID (`img-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "`not_found`", body = ErrorBody)))]
pub async fn show(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<Json<Image>> {
    Ok(Json(fetch_visible(&ctx, &caller, &path_id("image", &id)?).await?))
}

#[utoipa::path(delete, path = "/api/v1/images/{id}", tag = "images", operation_id = "image_delete",
    summary = "Delete one of the account's images",
    params(
        ("id" = vdc_schema::id::ImageId, Path,
            description = "An image ID (`img-…`); an unknown, malformed or foreign one answers 404")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`not_found` (a public image of another account, too)", body = ErrorBody),
        (status = 409, description = "`image_in_use`: instances that are not terminated use it", body = ErrorBody)))]
pub async fn delete(State(ctx): State<SharedCtx>, caller: Caller, Path(id): Path<String>) -> ApiResult<StatusCode> {
    let id: ImageId = path_id("image", &id)?;
    db::retry(|| async {
        let mut tx = ctx.db.begin().await?;
        // Instance creates lock the image too, so none can start using it before commit.
        db::lock(&mut tx, db::Lock::Image, id.as_str()).await?;
        let owner: Option<(String,)> = sqlx::query_as("SELECT account_id FROM images WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if owner.is_none_or(|(a,)| a != caller.account_id.as_str()) {
            // A public image of another account is visible, but not the caller's to delete.
            return Err(ApiError::not_found("image", &id));
        }
        let users: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM instances WHERE image_id = $1 AND state <> 'terminated' ORDER BY id")
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        if !users.is_empty() {
            return Err(ApiError::conflict(
                "image_in_use",
                format!(
                    "image {id} is used by {}",
                    crate::resources::name_some("instance", users.iter().map(|u| u.0.as_str()))
                ),
            ));
        }
        sqlx::query("DELETE FROM images WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether a public image of this name exists (for `vdc up`'s default image).
pub async fn exists_public(ctx: &SharedCtx, name: &str) -> ApiResult<bool> {
    let row: Option<(String,)> = sqlx::query_as("SELECT id FROM images WHERE name = $1 AND public = 1")
        .bind(name)
        .fetch_optional(&ctx.db)
        .await?;
    Ok(row.is_some())
}
