//! The site's shared secrets (`site_secrets`, see `app::site_secret`).

use super::Pool;

/// The secret `name` (hex), if a dcmgr recorded it already.
pub async fn secret(pool: &Pool, name: &str) -> Result<Option<String>, sqlx::Error> {
    let r: Option<(String,)> =
        sqlx::query_as("SELECT value FROM site_secrets WHERE name = $1").bind(name).fetch_optional(pool).await?;
    Ok(r.map(|r| r.0))
}

/// Records `value` as the secret `name` unless one is there (another dcmgr's): the first
/// insert wins, and every dcmgr reads the winner back.
pub async fn offer_secret(pool: &Pool, name: &str, value: &str, now: &str) -> Result<(), sqlx::Error> {
    put(pool, name, value, now, "DO NOTHING").await
}

/// Sets the row `name` to `value`, whatever it held.
pub async fn set_secret(pool: &Pool, name: &str, value: &str, now: &str) -> Result<(), sqlx::Error> {
    put(pool, name, value, now, "DO UPDATE SET value = excluded.value, created_at = excluded.created_at").await
}

async fn put(pool: &Pool, name: &str, value: &str, now: &str, on_conflict: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "INSERT INTO site_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) {on_conflict}"
    ))
    .bind(name)
    .bind(value)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}
