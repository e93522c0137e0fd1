//! Quotas as stored (an account's own limits, migration 0015) and the usage they are
//! checked against, counted from the resources themselves.

use crate::db;
use vdc_schema::api::QuotaKey;
use vdc_schema::id::AccountId;

/// The limits set for one account: (key as stored, value).
pub async fn set_for<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &AccountId,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT quota, value FROM account_quotas WHERE account_id = $1")
        .bind(account.as_str())
        .fetch_all(db)
        .await
}

/// [`set_for`] of an account locked in `tx`, read once per transaction: setting a quota
/// takes the same lock, so it cannot change before `tx` ends (creates recorded together
/// ask it once).
pub async fn set_for_locked(tx: &mut db::Tx<'_>, account: &AccountId) -> Result<Vec<(String, i64)>, sqlx::Error> {
    if let Some((_, own)) = tx.quotas.iter().find(|(a, _)| a == account.as_str()) {
        return Ok(own.clone());
    }
    let own = set_for(tx.conn().await?, account).await?;
    tx.quotas.push((account.to_string(), own.clone()));
    Ok(own)
}

/// Records, for [`set_for_locked`], that the account locked in `tx` sets no limits
/// (`account::lock` read so on its row).
pub(super) fn none_set(tx: &mut db::Tx<'_>, account: &AccountId) {
    if !tx.quotas.iter().any(|(a, _)| a == account.as_str()) {
        tx.quotas.push((account.to_string(), vec![]));
    }
}

/// Sets one of the account's limits, or (None) returns it to the configured default.
pub async fn set(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    key: QuotaKey,
    value: Option<i64>,
) -> Result<(), sqlx::Error> {
    match value {
        Some(v) => {
            sqlx::query(
                "INSERT INTO account_quotas (account_id, quota, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (account_id, quota) DO UPDATE SET value = excluded.value",
            )
            .bind(account.as_str())
            .bind(key.as_str())
            .bind(v)
            .execute(tx.conn().await?)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM account_quotas WHERE account_id = $1 AND quota = $2")
                .bind(account.as_str())
                .bind(key.as_str())
                .execute(tx.conn().await?)
                .await?;
        }
    }
    Ok(())
}

/// One count per quota key, in [`QuotaKey::ALL`]'s order.
type Counts = (i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// What the account holds, per key, in base units: counts, vCPUs, MiB of memory, MiB of
/// volumes, bytes of images. Live objects only: instances not terminated, volumes and
/// snapshots not deleted; floating IPs the account allocated (routers' SNAT addresses
/// belong to no account); images, also a deleted one that instances still use (its data
/// is still kept for the account: else boot, delete, import again went past the quota).
pub async fn usage<'e, E: sqlx::Executor<'e, Database = sqlx::Any>>(
    db: E,
    account: &AccountId,
) -> Result<Vec<(QuotaKey, u64)>, sqlx::Error> {
    // CAST: PostgreSQL's SUM of a BIGINT is NUMERIC, which the Any driver does not decode.
    // A bundle export's temporary snapshots and images (`exported`) are not counted: an
    // account at its quota can still export its VDC.
    let row: Counts = sqlx::query_as(
        "WITH exported AS (SELECT t.kind, t.name FROM export_temporaries t
                           JOIN export_runs r ON r.id = t.export_id WHERE r.account_id = $1)
         SELECT
           (SELECT COUNT(*) FROM instances WHERE account_id = $1 AND state <> 'terminated'),
           (SELECT CAST(COALESCE(SUM(cpus), 0) AS BIGINT) FROM instances
             WHERE account_id = $1 AND state <> 'terminated'),
           (SELECT CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) FROM instances
             WHERE account_id = $1 AND state <> 'terminated'),
           (SELECT COUNT(*) FROM volumes WHERE account_id = $1 AND state <> 'deleted'),
           (SELECT CAST(COALESCE(SUM(size_mib), 0) AS BIGINT) FROM volumes
             WHERE account_id = $1 AND state <> 'deleted'),
           (SELECT COUNT(*) FROM snapshots WHERE account_id = $1 AND state <> 'deleted'
             AND name NOT IN (SELECT name FROM exported WHERE kind = 'snapshot')),
           (SELECT COUNT(*) FROM networks WHERE account_id = $1),
           (SELECT COUNT(*) FROM security_groups WHERE account_id = $1),
           (SELECT COUNT(*) FROM floating_ips WHERE account_id = $1),
           (SELECT COUNT(*) FROM images WHERE account_id = $1
             AND name NOT IN (SELECT name FROM exported WHERE kind = 'image')),
           (SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM images WHERE account_id = $1
             AND name NOT IN (SELECT name FROM exported WHERE kind = 'image')),
           (SELECT COUNT(*) FROM keypairs WHERE account_id = $1),
           (SELECT COUNT(*) FROM server_groups WHERE account_id = $1),
           (SELECT CAST(COALESCE(SUM(disk_mib), 0) AS BIGINT) FROM instances
             WHERE account_id = $1 AND state <> 'terminated')",
    )
    .bind(account.as_str())
    .fetch_one(db)
    .await?;
    let v = [row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10, row.11, row.12, row.13];
    Ok(QuotaKey::ALL.into_iter().zip(v.map(|n| n.max(0) as u64)).collect())
}
