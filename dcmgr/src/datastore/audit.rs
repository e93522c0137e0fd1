//! The audit log as stored (migration 0018): one row per state-changing API request.

use crate::db;
use vdc_schema::api::AuditEntry;

#[derive(sqlx::FromRow)]
pub struct Row {
    pub id: String,
    pub created_at: String,
    pub user_id: Option<String>,
    pub token_id: Option<String>,
    pub account_id: Option<String>,
    pub action: String,
    pub resource_kind: String,
    pub resource_id: Option<String>,
    pub status: i64,
    pub error_code: Option<String>,
    pub request_id: String,
    pub source: String,
    pub duration_ms: i64,
}

impl Row {
    pub fn into_api(self) -> Result<AuditEntry, String> {
        fn id<T: std::str::FromStr>(col: &str, v: Option<String>) -> Result<Option<T>, String>
        where
            T::Err: std::fmt::Display,
        {
            v.map(|v| v.parse().map_err(|e| format!("audit_log.{col}: {e}"))).transpose()
        }
        Ok(AuditEntry {
            id: self.id.parse().map_err(|e| format!("audit_log.id: {e}"))?,
            time: db::parse_time(&self.created_at),
            user_id: id("user_id", self.user_id)?,
            token_id: id("token_id", self.token_id)?,
            account_id: id("account_id", self.account_id)?,
            action: self.action,
            resource_kind: self.resource_kind,
            resource_id: self.resource_id,
            status: u16::try_from(self.status).map_err(|e| format!("audit_log.status: {e}"))?,
            error_code: self.error_code,
            request_id: self.request_id.parse().map_err(|e| format!("audit_log.request_id: {e}"))?,
            source: self.source,
            duration_ms: u64::try_from(self.duration_ms).unwrap_or(0),
        })
    }
}

const COLS: &str = "id, created_at, user_id, token_id, account_id, action, resource_kind, resource_id, status, \
                    error_code, request_id, source, duration_ms";

/// Writes the entries in one transaction.
pub async fn insert_many(pool: &db::Pool, entries: &[AuditEntry]) -> Result<(), sqlx::Error> {
    /// Rows per statement (13 parameters each).
    const ROWS: usize = 64;
    let mut tx = db::begin(pool).await?;
    for chunk in entries.chunks(ROWS) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let p: Vec<String> = (1..=13).map(|j| format!("${}", 13 * i + j)).collect();
                format!("({})", p.join(", "))
            })
            .collect();
        let sql = format!("INSERT INTO audit_log ({COLS}) VALUES {}", rows.join(", "));
        // Kept prepared only when full: other lengths come and go.
        let mut q = sqlx::query(&sql).persistent(chunk.len() == ROWS);
        for e in chunk {
            q = q
                .bind(e.id.as_str())
                .bind(db::time(&e.time))
                .bind(e.user_id.as_ref().map(|v| v.as_str().to_owned()))
                .bind(e.token_id.as_ref().map(|v| v.as_str().to_owned()))
                .bind(e.account_id.as_ref().map(|v| v.as_str().to_owned()))
                .bind(e.action.as_str())
                .bind(e.resource_kind.as_str())
                .bind(e.resource_id.clone())
                .bind(i64::from(e.status))
                .bind(e.error_code.clone())
                .bind(e.request_id.as_str())
                .bind(e.source.as_str())
                .bind(i64::try_from(e.duration_ms).unwrap_or(i64::MAX));
        }
        q.execute(tx.conn().await?).await?;
    }
    tx.commit().await
}

/// What to list; empty strings match everything.
#[derive(Debug, Default)]
pub struct Filter<'a> {
    pub account: &'a str,
    pub user: &'a str,
    pub action: &'a str,
    /// Stored times (RFC 3339, UTC, milliseconds: they sort as text).
    pub since: &'a str,
    pub until: &'a str,
    /// Entries older than this ID (the cursor).
    pub before_id: &'a str,
}

/// Newest first.
pub async fn list(pool: &db::Pool, f: &Filter<'_>, limit: i64) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLS} FROM audit_log \
         WHERE ($1 = '' OR account_id = $1) AND ($2 = '' OR user_id = $2) AND ($3 = '' OR action = $3) \
           AND ($4 = '' OR created_at >= $4) AND ($5 = '' OR created_at < $5) AND ($6 = '' OR id < $6) \
         ORDER BY id DESC LIMIT $7"
    ))
    .bind(f.account)
    .bind(f.user)
    .bind(f.action)
    .bind(f.since)
    .bind(f.until)
    .bind(f.before_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Removes the entries recorded before `before` (a stored time).
pub async fn prune(pool: &db::Pool, before: &str) -> Result<u64, sqlx::Error> {
    let r = sqlx::query("DELETE FROM audit_log WHERE created_at < $1").bind(before).execute(pool).await?;
    Ok(r.rows_affected())
}
