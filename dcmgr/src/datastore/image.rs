//! Images as stored.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Image;
use vdc_schema::id::{AccountId, ImageId};
use vdc_schema::MemberStatus;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub format: String,
    pub arch: String,
    pub hypervisors: String,
    pub source: String,
    pub checksum: Option<String>,
    pub initrd: Option<String>,
    pub kernel_cmdline: Option<String>,
    pub boot_mode: String,
    pub kernel_id: Option<String>,
    pub min_disk: Option<i64>,
    pub min_memory: Option<i64>,
    pub os: Option<String>,
    pub public: i64,
    pub created_at: String,
    pub default_user: Option<String>,
    pub state: String,
    pub failure_reason: Option<String>,
    /// The stored blob's SHA-256 (hex), for images whose data dcmgr keeps.
    pub blob: Option<String>,
    pub size_bytes: Option<i64>,
    pub virtual_size: Option<i64>,
    pub owner: String,
    /// The reading account's membership, where the image is shared with it.
    pub member_status: Option<String>,
}

/// The columns written at insert.
const COLS: &str = "id, name, format, arch, hypervisors, source, checksum, initrd, kernel_cmdline, public, created_at, \
                    default_user, state, failure_reason, blob, size_bytes, boot_mode, kernel_id, min_disk, min_memory, os, virtual_size";

/// The columns read, with no reading account (no membership).
const READ: &str = "id, name, format, arch, hypervisors, source, checksum, initrd, kernel_cmdline, public, created_at, \
                    default_user, state, failure_reason, blob, size_bytes, boot_mode, kernel_id, min_disk, min_memory, os, virtual_size, \
                    account_id AS owner, NULL AS member_status";

/// The columns read by the account of parameter `$N`, with its membership.
fn read_by(n: u8) -> String {
    READ.replace(
        "NULL AS member_status",
        &format!(
            "(SELECT m.status FROM image_members m WHERE m.image_id = images.id AND m.account_id = ${n}) AS member_status"
        ),
    )
}

impl Row {
    pub fn into_api(self) -> ApiResult<Image> {
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
            boot_mode: self.boot_mode.parse().map_err(ApiError::internal)?,
            kernel_id: self.kernel_id.map(|k| k.parse()).transpose().map_err(ApiError::internal)?,
            min_disk: self.min_disk.map(|v| v as u64),
            min_memory: self.min_memory.map(|v| v as u64),
            os: self.os,
            public: self.public != 0,
            created_at: db::parse_time(&self.created_at),
            default_user: self.default_user,
            state: self.state.parse().map_err(ApiError::internal)?,
            failure_reason: self.failure_reason,
            size_bytes: self.size_bytes.map(|s| s as u64),
            virtual_size: self.virtual_size.map(|s| s as u64),
            owner: Some(self.owner.parse().map_err(ApiError::internal)?),
            member_status: self.member_status.map(|s| s.parse()).transpose().map_err(ApiError::internal)?,
        })
    }
}

pub async fn insert(db: &mut sqlx::AnyConnection, account: &AccountId, i: &Image) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO images ({COLS}, account_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)"
    ))
    .bind(i.id.as_str())
    .bind(&i.name)
    .bind(i.format.as_str())
    .bind(i.arch.as_str())
    .bind(db::join_list(&i.hypervisors))
    .bind(&i.source)
    .bind(&i.checksum)
    .bind(&i.initrd)
    .bind(&i.kernel_cmdline)
    .bind(i.public as i64)
    .bind(db::time(&i.created_at))
    .bind(&i.default_user)
    .bind(i.state.as_str())
    .bind(&i.failure_reason)
    .bind(Option::<String>::None)
    .bind(i.size_bytes.map(|s| s as i64))
    .bind(i.boot_mode.as_str())
    .bind(i.kernel_id.as_ref().map(|k| k.as_str()))
    .bind(i.min_disk.map(|v| v as i64))
    .bind(i.min_memory.map(|v| v as i64))
    .bind(&i.os)
    .bind(i.virtual_size.map(|s| s as i64))
    .bind(account.as_str())
    .execute(&mut *db)
    .await?;
    db::event::record(db, db::event::Kind::Image, i.id.as_str(), db::event::Change::Created).await
}

/// Which images shared with an account its list shows (`?member_status=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Its own, the public ones and the shares it accepted (the default).
    Usual,
    /// Only the shares of this status.
    Shares(MemberStatus),
    /// Its own, the public ones and every share, whatever its status.
    All,
}

/// One page of the images an account may use (its own, shared with it and public ones).
pub async fn list_visible(
    pool: &db::Pool,
    account: &AccountId,
    listed: Listed,
    cursor: &str,
    name: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    let which = match listed {
        Listed::Usual => "account_id = $1 OR public = 1 OR id IN \
             (SELECT image_id FROM image_members WHERE account_id = $1 AND status = 'accepted')"
            .to_owned(),
        Listed::Shares(status) => format!(
            "id IN (SELECT image_id FROM image_members WHERE account_id = $1 AND status = '{}')",
            status.as_str()
        ),
        Listed::All => {
            "account_id = $1 OR public = 1 OR id IN (SELECT image_id FROM image_members WHERE account_id = $1)"
                .to_owned()
        }
    };
    sqlx::query_as(&format!(
        "SELECT {} FROM images WHERE ({which}) AND deleted_at IS NULL \
         AND id > $2 AND ($3 = '' OR name = $3) ORDER BY id LIMIT $4",
        read_by(1)
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(name.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Image `id` if the account may use it: its own, a public one, or one shared with it
/// (offered, accepted or declined: a share only decides what its lists show).
pub async fn get_visible(pool: &db::Pool, account: &AccountId, id: &ImageId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {} FROM images WHERE id = $1 AND deleted_at IS NULL AND (account_id = $2 OR public = 1 OR \
         id IN (SELECT image_id FROM image_members WHERE account_id = $2))",
        read_by(2)
    ))
    .bind(id.as_str())
    .bind(account.as_str())
    .fetch_optional(pool)
    .await
}

/// Image `id` if the account owns it.
pub async fn get_owned(pool: &db::Pool, account: &AccountId, id: &ImageId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {READ} FROM images WHERE id = $1 AND account_id = $2 AND deleted_at IS NULL"))
        .bind(id.as_str())
        .bind(account.as_str())
        .fetch_optional(pool)
        .await
}

/// Any image by ID, a deleted one still used too (see [`mark_deleted`]).
pub async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {READ} FROM images WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// The account that owns image `id` (none once it is deleted).
pub async fn owner(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> = sqlx::query_as("SELECT account_id FROM images WHERE id = $1 AND deleted_at IS NULL")
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.map(|r| r.0))
}

pub async fn delete(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::Image, id.as_str(), db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM image_members WHERE image_id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    sqlx::query("DELETE FROM images WHERE id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    Ok(())
}

/// Image `id` is deleted while something uses it: no account sees it (nor shares it)
/// any more, nothing new may use it ([`db::lock`] finds it no longer), and its row and
/// blob stay for what uses it until [`remove_unused_deleted`] removes them. Its name
/// stays held meanwhile: a bundle names an instance's image by its name.
pub async fn mark_deleted(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<(), sqlx::Error> {
    db::event::record(tx.conn().await?, db::event::Kind::Image, id.as_str(), db::event::Change::Deleted).await?;
    sqlx::query("DELETE FROM image_members WHERE image_id = $1").bind(id.as_str()).execute(tx.conn().await?).await?;
    sqlx::query("UPDATE images SET deleted_at = $2 WHERE id = $1")
        .bind(id.as_str())
        .bind(db::now())
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// Nothing uses image `images.id`: no instance that is not terminated, no volume being
/// filled from it, no disk image naming it as its kernel.
const UNUSED: &str = "NOT EXISTS (SELECT 1 FROM instances i WHERE i.image_id = images.id AND i.state <> 'terminated') \
    AND NOT EXISTS (SELECT 1 FROM volumes v WHERE v.image_id = images.id AND v.state = 'creating') \
    AND NOT EXISTS (SELECT 1 FROM images d WHERE d.kernel_id = images.id)";

/// Whether something uses image `id` (see [`UNUSED`]).
pub async fn used(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<bool, sqlx::Error> {
    let r: Option<(i64,)> = sqlx::query_as(&format!("SELECT 1 FROM images WHERE id = $1 AND NOT ({UNUSED})"))
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.is_some())
}

/// Deleted images nothing uses any more: (id, blob).
pub async fn unused_deleted(pool: &db::Pool) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, blob FROM images WHERE deleted_at IS NOT NULL AND {UNUSED} ORDER BY id LIMIT 100"
    ))
    .fetch_all(pool)
    .await
}

/// Removes deleted image `id` if nothing uses it (nothing new can start to); whether it did.
pub async fn remove_unused_deleted(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(&format!("DELETE FROM images WHERE id = $1 AND deleted_at IS NOT NULL AND {UNUSED}"))
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// A deleted image (still used) is made an image of its account again: a bundle update
/// brings back what the earlier import made and was deleted here since.
pub async fn restore(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("UPDATE images SET deleted_at = NULL WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    if r.rows_affected() > 0 {
        db::event::record(tx.conn().await?, db::event::Kind::Image, id, db::event::Change::Created).await?;
    }
    Ok(r.rows_affected() > 0)
}

/// Whether image `id` is deleted (still used, its name still held).
pub async fn is_deleted(tx: &mut db::Tx<'_>, id: &str) -> Result<bool, sqlx::Error> {
    let r: Option<(i64,)> = sqlx::query_as("SELECT 1 FROM images WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .fetch_optional(tx.conn().await?)
        .await?;
    Ok(r.is_some())
}

/// Whether a public image of this name exists.
pub async fn exists_public(pool: &db::Pool, name: &str) -> Result<bool, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM images WHERE name = $1 AND public = 1 AND deleted_at IS NULL")
            .bind(name)
            .fetch_optional(pool)
            .await?;
    Ok(row.is_some())
}

/// Image `id` inside a transaction (after locking it).
pub async fn get_tx(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {READ} FROM images WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(tx.conn().await?)
        .await
}

/// The data of a pending image is stored and checked: it becomes available.
pub async fn set_available(
    tx: &mut db::Tx<'_>,
    id: &ImageId,
    blob: &str,
    size: u64,
    format: vdc_schema::ImageFormat,
    virtual_size: Option<u64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE images SET state = 'available', blob = $2, size_bytes = $3, format = $4, checksum = $5, \
         failure_reason = NULL, virtual_size = $6 WHERE id = $1 AND state = 'pending'",
    )
    .bind(id.as_str())
    .bind(blob)
    .bind(size as i64)
    .bind(format.as_str())
    .bind(format!("sha256:{blob}"))
    .bind(virtual_size.map(|s| s as i64))
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Image, id.as_str(), Some("pending")).await
}

/// Stored disk images whose virtual size was never read (stored before migration 0030):
/// (id, blob).
pub async fn without_disk_size(pool: &db::Pool) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, blob FROM images WHERE virtual_size IS NULL AND blob IS NOT NULL \
         AND format IN ('raw', 'qcow2') AND state = 'available' ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Every change of an image records an event, its size too: the read model keeps images
/// until an image event arrives (`app::views`).
pub async fn set_disk_size(pool: &db::Pool, id: &str, virtual_size: u64) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    let r = sqlx::query("UPDATE images SET virtual_size = $2 WHERE id = $1 AND virtual_size IS NULL")
        .bind(id)
        .bind(virtual_size as i64)
        .execute(tx.conn().await?)
        .await?;
    if r.rows_affected() > 0 {
        db::event::record(tx.conn().await?, db::event::Kind::Image, id, db::event::Change::Updated).await?;
    }
    tx.commit().await
}

/// A pending image's data was refused.
pub async fn set_failed(pool: &db::Pool, id: &ImageId, reason: &str) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    set_failed_tx(&mut tx, id.as_str(), reason).await?;
    tx.commit().await
}

/// How many images use blob `sha256`.
pub async fn blob_users(tx: &mut db::Tx<'_>, sha256: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM images WHERE blob = $1").bind(sha256).fetch_one(tx.conn().await?).await?;
    Ok(n)
}

/// Pending images dcmgr imports from a URL (to resume after a restart).
pub async fn pending_imports(pool: &db::Pool) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {READ} FROM images WHERE state = 'pending' AND (source LIKE 'http://%' OR source LIKE 'https://%') \
         ORDER BY id"
    ))
    .fetch_all(pool)
    .await
}

/// The accounts image `id` is shared with, and their answers.
pub async fn members(tx: &mut db::Tx<'_>, id: &ImageId) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as("SELECT account_id, status FROM image_members WHERE image_id = $1 ORDER BY account_id")
        .bind(id.as_str())
        .fetch_all(tx.conn().await?)
        .await
}

/// Offers image `id` to `account` (a share starts `pending`).
pub async fn add_member(tx: &mut db::Tx<'_>, id: &ImageId, account: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO image_members (image_id, account_id, status) VALUES ($1, $2, 'pending')")
        .bind(id.as_str())
        .bind(account)
        .execute(tx.conn().await?)
        .await?;
    // Who may boot it changed: the read model's copies go (`app::views`).
    db::event::record(tx.conn().await?, db::event::Kind::Image, id.as_str(), db::event::Change::Updated).await
}

/// A member's answer to a share.
pub async fn set_member_status(
    tx: &mut db::Tx<'_>,
    id: &ImageId,
    account: &str,
    status: MemberStatus,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE image_members SET status = $3 WHERE image_id = $1 AND account_id = $2")
        .bind(id.as_str())
        .bind(account)
        .bind(status.as_str())
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Image, id.as_str(), db::event::Change::Updated).await
}

/// Whether the share existed.
pub async fn remove_member(tx: &mut db::Tx<'_>, id: &ImageId, account: &str) -> Result<bool, sqlx::Error> {
    let r = sqlx::query("DELETE FROM image_members WHERE image_id = $1 AND account_id = $2")
        .bind(id.as_str())
        .bind(account)
        .execute(tx.conn().await?)
        .await?;
    if r.rows_affected() == 0 {
        return Ok(false);
    }
    db::event::record(tx.conn().await?, db::event::Kind::Image, id.as_str(), db::event::Change::Updated).await?;
    Ok(true)
}

/// [`set_failed`] inside a decision's transaction.
pub async fn set_failed_tx(tx: &mut db::Tx<'_>, id: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE images SET state = 'failed', failure_reason = $2 WHERE id = $1 AND state = 'pending'")
        .bind(id)
        .bind(reason)
        .execute(tx.conn().await?)
        .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Image, id, Some("pending")).await
}

/// The pending images made from snapshot `snapshot` (their source is `snapshot:<id>`).
pub async fn pending_of_snapshot<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    snapshot: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM images WHERE source = $1 AND state = 'pending' ORDER BY id")
            .bind(format!("{}{snapshot}", crate::app::capture::SNAPSHOT_PREFIX))
            .fetch_all(db)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// The pending image a capture of `instance` fills (its source is `capture:<instance>`).
pub async fn pending_capture(db: &mut sqlx::AnyConnection, instance: &str) -> Result<Option<String>, sqlx::Error> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM images WHERE source = $1 AND state = 'pending' ORDER BY id LIMIT 1")
            .bind(format!("{}{instance}", crate::app::capture::SOURCE_PREFIX))
            .fetch_optional(db)
            .await?;
    Ok(row.map(|r| r.0))
}
