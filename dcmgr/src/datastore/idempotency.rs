//! Requests made with an `Idempotency-Key` (`http::idempotency`): the first claims its
//! key, a retry finds the answer.

use crate::datastore as db;

/// What a request finds of its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Claimed: this request runs.
    New,
    /// A request with the key is under way.
    Running,
    /// Done before: its answer.
    Done { status: u16, body: String },
    /// Used for another request.
    Other,
}

/// Claims key `id` for the request `fingerprint` at `now`. A claim made before
/// `expired_before` is forgotten first, and so is one still running that was made before
/// `abandoned_before` (its dcmgr stopped in the middle: it would hold the key for ever).
pub async fn claim(
    pool: &db::Pool,
    id: &str,
    fingerprint: &str,
    now: &str,
    expired_before: &str,
    abandoned_before: &str,
) -> Result<Claim, sqlx::Error> {
    // Twice at most: once more after an expired claim is removed.
    for _ in 0..2 {
        let made = sqlx::query(
            "INSERT INTO idempotency_keys (id, fingerprint, state, created_at) VALUES ($1, $2, 'running', $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(fingerprint)
        .bind(now)
        .execute(pool)
        .await?;
        if made.rows_affected() == 1 {
            return Ok(Claim::New);
        }
        let row: Option<(String, String, i64, String, String)> =
            sqlx::query_as("SELECT fingerprint, state, status, body, created_at FROM idempotency_keys WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
        let Some((found, state, status, body, created)) = row else { continue };
        if created.as_str() < expired_before || (state != "done" && created.as_str() < abandoned_before) {
            sqlx::query("DELETE FROM idempotency_keys WHERE id = $1 AND created_at = $2")
                .bind(id)
                .bind(&created)
                .execute(pool)
                .await?;
            continue;
        }
        if found != fingerprint {
            return Ok(Claim::Other);
        }
        return Ok(match state.as_str() {
            "done" => Claim::Done { status: u16::try_from(status).unwrap_or(200), body },
            _ => Claim::Running,
        });
    }
    Ok(Claim::Running)
}

/// Records the answer of the request that claimed `id`.
pub async fn finish(pool: &db::Pool, id: &str, status: u16, body: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET state = 'done', status = $2, body = $3 WHERE id = $1")
        .bind(id)
        .bind(status as i64)
        .bind(body)
        .execute(pool)
        .await?;
    Ok(())
}

/// Lets key `id` go: its request did not succeed, and a retry runs again.
pub async fn forget(pool: &db::Pool, id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idempotency_keys WHERE id = $1").bind(id).execute(pool).await?;
    Ok(())
}

/// Removes the keys claimed before `before`.
pub async fn prune(pool: &db::Pool, before: &str) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected())
}
