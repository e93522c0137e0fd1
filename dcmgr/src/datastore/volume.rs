//! Volumes as stored, and the storage-node capacity they reserve.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Volume;
use vdc_schema::id::AccountId;
use vdc_schema::VolumeState;

#[derive(sqlx::FromRow, Clone)]
pub struct Row {
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
    /// The instance a bundle import asked it be attached to once available.
    pub attach_to: Option<String>,
}

/// What a create writes.
const COLS: &str =
    "id, account_id, name, size_mib, state, storage_node_id, instance_id, snapshot_id, image_id, target, spec_gen, \
     report_gen, failure_reason, created_at, updated_at";
/// What a row holds.
const ROW: &str =
    "id, account_id, name, size_mib, state, storage_node_id, instance_id, snapshot_id, image_id, target, spec_gen, \
     report_gen, failure_reason, created_at, updated_at, attach_to";

impl Row {
    pub fn state(&self) -> ApiResult<VolumeState> {
        self.state.parse().map_err(ApiError::internal)
    }

    pub fn into_api(self) -> ApiResult<Volume> {
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

/// Volume `id`, whoever's it is.
pub async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ROW} FROM volumes WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// One page of an account's volumes, in creation order after `cursor`; `state` and
/// `name` filter when not empty.
/// Without a state filter, volumes deleted before `gone_since` are left out.
pub async fn list(
    pool: &db::Pool,
    account: &AccountId,
    cursor: &str,
    state: &str,
    name: &str,
    gone_since: &str,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ROW} FROM volumes WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) AND ($3 <> '' OR state <> 'deleted' OR updated_at >= $6) ORDER BY id LIMIT $5"
    ))
    .bind(account.as_str())
    .bind(cursor)
    .bind(state)
    .bind(name)
    .bind(limit)
    .bind(gone_since)
    .fetch_all(pool)
    .await
}

/// A new volume, `creating` on `node` at `spec_gen` 1.
pub struct New<'a> {
    pub id: &'a str,
    pub account: &'a AccountId,
    pub name: &'a str,
    pub size_mib: i64,
    pub node: &'a str,
    pub snapshot_id: Option<String>,
    pub image_id: Option<String>,
    pub now: &'a str,
}

pub async fn insert(tx: &mut db::Tx<'_>, v: New<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO volumes ({COLS}) VALUES ($1, $2, $3, $4, 'creating', $5, NULL, $6, $8, NULL, 1, 0, NULL, $7, $7)"
    ))
    .bind(v.id)
    .bind(v.account.as_str())
    .bind(v.name)
    .bind(v.size_mib)
    .bind(v.node)
    .bind(v.snapshot_id)
    .bind(v.now)
    .bind(v.image_id)
    .execute(tx.conn().await?)
    .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Volume, v.id, db::event::Change::Created).await
}

/// A new state and attachment, to be sent to sta (a new `spec_gen`, due now).
pub async fn set_state(
    tx: &mut db::Tx<'_>,
    id: &str,
    state: VolumeState,
    instance: Option<&str>,
) -> Result<(), sqlx::Error> {
    let before = db::event::state_of(tx.conn().await?, db::event::Kind::Volume, id).await?;
    sqlx::query(
        "UPDATE volumes SET state = $1, instance_id = $2, spec_gen = spec_gen + 1, ensure_sent_at = 0,
             updated_at = $3 WHERE id = $4",
    )
    .bind(state.as_str())
    .bind(instance)
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Volume, id, before.as_deref()).await
}

/// A new size, to be sent to sta.
pub async fn set_size(tx: &mut db::Tx<'_>, id: &str, size_mib: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE volumes SET size_mib = $1, spec_gen = spec_gen + 1, ensure_sent_at = 0, updated_at = $2 WHERE id = $3",
    )
    .bind(size_mib)
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

/// How many volumes are attached, attaching or detaching to `instance`.
pub async fn count_attached(tx: &mut db::Tx<'_>, instance: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'attached', 'detaching')",
    )
    .bind(instance)
    .fetch_one(tx.conn().await?)
    .await?;
    Ok(n)
}

/// Up to 8 online storage nodes with `size` MiB free, the emptiest first.
pub async fn storage_with_room(pool: &db::Pool, size: i64) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM storage_nodes WHERE state = 'online' AND capacity_mib - used_mib >= $1
             ORDER BY capacity_mib - used_mib DESC, id LIMIT 8",
    )
    .bind(size)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Reserves `size` MiB on storage node `node` if it is online and has them free.
pub async fn reserve_storage(tx: &mut db::Tx<'_>, node: &str, size: i64) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "UPDATE storage_nodes SET used_mib = used_mib + $1 WHERE id = $2 AND state = 'online' AND used_mib + $1 <= capacity_mib",
    )
    .bind(size)
    .bind(node)
    .execute(tx.conn().await?)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Gives back `size` MiB of a deleted volume on storage node `node`.
pub async fn release_storage(tx: &mut db::Tx<'_>, node: &str, size: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE storage_nodes SET used_mib = CASE WHEN used_mib > $1 THEN used_mib - $1 ELSE 0 END WHERE id = $2",
    )
    .bind(size)
    .bind(node)
    .execute(tx.conn().await?)
    .await?;
    Ok(())
}

/// The host of the instance a volume is attached to (where sta exports it), if it has one.
pub async fn instance_host(pool: &db::Pool, instance: &str) -> Result<Option<String>, sqlx::Error> {
    let h: Option<(Option<String>,)> =
        sqlx::query_as("SELECT host_node_id FROM instances WHERE id = $1").bind(instance).fetch_optional(pool).await?;
    Ok(h.and_then(|h| h.0))
}

/// Records that an ensure of volume `id` was sent now.
pub async fn mark_sent(pool: &db::Pool, id: &str) -> Result<(), sqlx::Error> {
    db::write_alone(
        pool,
        sqlx::query("UPDATE volumes SET ensure_sent_at = $1 WHERE id = $2").bind(db::now_ms()).bind(id),
    )
    .await?;
    Ok(())
}

/// Records sta's report `gen` on volume `id`: its new state and export target, and
/// `reason` as its failure reason if given (the previous one is kept otherwise).
pub async fn record_report(
    tx: &mut db::Tx<'_>,
    id: &str,
    state: VolumeState,
    gen: i64,
    target: Option<&str>,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    let before = db::event::state_of(tx.conn().await?, db::event::Kind::Volume, id).await?;
    sqlx::query(
        "UPDATE volumes SET state = $1, report_gen = $2, target = $3, failure_reason = COALESCE($4, failure_reason),
             updated_at = $5 WHERE id = $6",
    )
    .bind(state.as_str())
    .bind(gen)
    .bind(target)
    .bind(reason)
    .bind(db::now())
    .bind(id)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Volume, id, before.as_deref()).await
}

/// (id, state) of the volumes attaching to or detaching from `instance`.
pub async fn in_transit(tx: &mut db::Tx<'_>, instance: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, state FROM volumes WHERE instance_id = $1 AND state IN ('attaching', 'detaching') ORDER BY id",
    )
    .bind(instance)
    .fetch_all(tx.conn().await?)
    .await
}

/// Moves volume `id` from state `from` to `to`; `detach` also clears its instance and
/// makes a new spec for sta (to withdraw the export).
pub async fn finish_transit(
    tx: &mut db::Tx<'_>,
    id: &str,
    from: &str,
    to: VolumeState,
    detach: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE volumes SET state = $1, instance_id = CASE WHEN $2 = 1 THEN NULL ELSE instance_id END, updated_at = $3,
             spec_gen = spec_gen + $2, ensure_sent_at = CASE WHEN $2 = 1 THEN 0 ELSE ensure_sent_at END
         WHERE id = $4 AND state = $5",
    )
    .bind(to.as_str())
    .bind(detach as i64)
    .bind(db::now())
    .bind(id)
    .bind(from)
    .execute(tx.conn().await?)
    .await?;
    db::event::changed(tx.conn().await?, db::event::Kind::Volume, id, Some(from)).await
}

/// (id, storage node, instance) of the volumes in a transition whose last ensure was
/// sent before `before` (ms), the longest waiting first.
pub async fn unconverged(
    pool: &db::Pool,
    before: i64,
) -> Result<Vec<(String, Option<String>, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT v.id, v.storage_node_id, v.instance_id FROM volumes v
         WHERE v.state IN ('creating', 'attaching', 'detaching', 'deleting') AND v.ensure_sent_at < $1
         ORDER BY v.ensure_sent_at LIMIT 1000",
    )
    .bind(before)
    .fetch_all(pool)
    .await
}

/// IDs of the volumes storage node `node` keeps.
pub async fn on_node(pool: &db::Pool, node: &str) -> Result<Vec<(String,)>, sqlx::Error> {
    sqlx::query_as("SELECT id FROM volumes WHERE storage_node_id = $1 AND state <> 'deleted'")
        .bind(node)
        .fetch_all(pool)
        .await
}

/// Asks for volume `id` to be attached to `instance` once it is available (see
/// migration 0028).
pub async fn set_attach_to(tx: &mut db::Tx<'_>, id: &str, instance: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE volumes SET attach_to = $1 WHERE id = $2")
        .bind(instance)
        .bind(id)
        .execute(tx.conn().await?)
        .await?;
    Ok(())
}

/// The attach asked for volume `id` while it is available: (account, instance).
pub async fn attach_to(pool: &db::Pool, id: &str) -> Result<Option<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT account_id, attach_to FROM volumes WHERE id = $1 AND state = 'available' AND attach_to IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Clears the attach asked for volume `id` if it still names `instance`.
pub async fn clear_attach_to(pool: &db::Pool, id: &str, instance: &str) -> Result<(), sqlx::Error> {
    db::write_alone(
        pool,
        sqlx::query("UPDATE volumes SET attach_to = NULL WHERE id = $1 AND attach_to = $2").bind(id).bind(instance),
    )
    .await?;
    Ok(())
}

/// Available volumes with an attach asked for (left by a dcmgr that stopped).
pub async fn with_attach_to(pool: &db::Pool) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM volumes WHERE state = 'available' AND attach_to IS NOT NULL ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}
