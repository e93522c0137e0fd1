//! Snapshots as stored.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::api::Snapshot;
use vdc_schema::id::AccountId;
use vdc_schema::SnapshotState;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub volume_id: String,
    pub size_mib: i64,
    pub state: String,
    pub storage_node_id: String,
    pub report_gen: i64,
    pub created_at: String,
}

const COLS: &str = "id, account_id, name, volume_id, size_mib, state, storage_node_id, report_gen, created_at";

impl Row {
    pub fn into_api(self) -> ApiResult<Snapshot> {
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

/// Snapshot `id`, whoever's it is.
pub async fn get<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(db: E, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLS} FROM snapshots WHERE id = $1")).bind(id).fetch_optional(db).await
}

/// One page of an account's snapshots, in creation order after `cursor`; `state` and
/// `name` filter when not empty.
/// Without a state filter, snapshots deleted before `gone_since` are left out.
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
        "SELECT {COLS} FROM snapshots WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) AND ($3 <> '' OR state <> 'deleted' OR COALESCE(updated_at, created_at) >= $6)
         ORDER BY id LIMIT $5"
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

/// A new snapshot, `creating`, of volume `volume_id` on storage node `node`.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    tx: &mut db::Tx<'_>,
    id: &str,
    account: &AccountId,
    name: &str,
    volume_id: &str,
    size_mib: i64,
    node: &str,
    now: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("INSERT INTO snapshots ({COLS}) VALUES ($1, $2, $3, $4, $5, 'creating', $6, 0, $7)"))
        .bind(id)
        .bind(account.as_str())
        .bind(name)
        .bind(volume_id)
        .bind(size_mib)
        .bind(node)
        .bind(now)
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Snapshot, id, db::event::Change::Created).await
}

/// The state of snapshot `id` (an error if there is none).
pub async fn state(tx: &mut db::Tx<'_>, id: &str) -> Result<String, sqlx::Error> {
    let (state,): (String,) =
        sqlx::query_as("SELECT state FROM snapshots WHERE id = $1").bind(id).fetch_one(tx.conn().await?).await?;
    Ok(state)
}

/// Marks snapshot `id` deleting, due to be sent to sta now.
pub async fn mark_deleting(tx: &mut db::Tx<'_>, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE snapshots SET state = 'deleting', ensure_sent_at = 0, updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(db::now())
        .execute(tx.conn().await?)
        .await?;
    db::event::record(tx.conn().await?, db::event::Kind::Snapshot, id, db::event::Change::State).await
}

/// How many snapshots of volume `volume_id` are not deleted.
pub async fn count_live_of_volume(tx: &mut db::Tx<'_>, volume_id: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM snapshots WHERE volume_id = $1 AND state <> 'deleted'")
        .bind(volume_id)
        .fetch_one(tx.conn().await?)
        .await?;
    Ok(n)
}

/// Records that an ensure of snapshot `id` was sent now.
pub async fn mark_sent(pool: &db::Pool, id: &str) -> Result<(), sqlx::Error> {
    db::write_alone(
        pool,
        sqlx::query("UPDATE snapshots SET ensure_sent_at = $1 WHERE id = $2").bind(db::now_ms()).bind(id),
    )
    .await?;
    Ok(())
}

/// Records sta's report `gen` on snapshot `id` if it is newer than the last one and the
/// snapshot is still in state `from`; false when it was not.
pub async fn record_report(
    tx: &mut db::Tx<'_>,
    id: &str,
    from: &str,
    to: SnapshotState,
    gen: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query(
        "UPDATE snapshots SET state = $1, report_gen = $2, updated_at = $5
         WHERE id = $3 AND report_gen < $2 AND state = $4",
    )
    .bind(to.as_str())
    .bind(gen)
    .bind(id)
    .bind(from)
    .bind(db::now())
    .execute(tx.conn().await?)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(false);
    }
    db::event::changed(tx.conn().await?, db::event::Kind::Snapshot, id, Some(from)).await?;
    Ok(true)
}

/// Snapshots sta still has work on: being created or deleted, or available with an
/// image of them pending (`snapshot:<id>`, see `app::capture`).
const UNCONVERGED: &str = "(state IN ('creating', 'deleting') OR (state = 'available' AND EXISTS
    (SELECT 1 FROM images WHERE images.source = 'snapshot:' || snapshots.id AND images.state = 'pending')))";

/// (id, storage node) of the snapshots sta has work on whose last ensure was sent
/// before `before` (ms).
pub async fn unconverged(pool: &db::Pool, before: i64) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT id, storage_node_id FROM snapshots WHERE {UNCONVERGED} AND ensure_sent_at < $1 LIMIT 1000"
    ))
    .bind(before)
    .fetch_all(pool)
    .await
}

/// IDs of the snapshots storage node `node` has work on.
pub async fn pending_on_node(pool: &db::Pool, node: &str) -> Result<Vec<(String,)>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT id FROM snapshots WHERE storage_node_id = $1 AND {UNCONVERGED}"))
        .bind(node)
        .fetch_all(pool)
        .await
}
