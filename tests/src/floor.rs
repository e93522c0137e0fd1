//! The floors `vdc-bench` measures dcmgr against, in the same run on the same machine:
//!
//! - [`MemoryServer`]: a bare axum server answering the same JSON from a `HashMap`, with
//!   none of dcmgr's work (no token, no database, no audit or metrics layers);
//! - [`RawSql`]: the statements dcmgr runs for the same call, through the database's own
//!   sqlx driver (not dcmgr's `Any` pool) on one connection, with no HTTP and no JSON.
//!   Rows are fetched, not mapped to structs: a floor, not a second implementation.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use std::collections::HashMap;
use std::sync::Arc;
use vdc_dcmgr::datastore::instance::VIEW_COLS;
use vdc_schema::api::{Instance, Page};

/// Serves `GET /api/v1/instances/{id}` and `GET /api/v1/instances?limit=N` from memory,
/// serialising the same `Instance`s dcmgr answered with on every request, as dcmgr does.
pub struct MemoryServer {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Held {
    by_id: HashMap<String, Instance>,
    in_order: Vec<Instance>,
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<usize>,
}

impl MemoryServer {
    pub async fn start(instances: Vec<Instance>) -> anyhow::Result<MemoryServer> {
        let held =
            Held { by_id: instances.iter().map(|i| (i.id.to_string(), i.clone())).collect(), in_order: instances };
        let app = axum::Router::new()
            .route("/api/v1/instances/{id}", axum::routing::get(one))
            .route("/api/v1/instances", axum::routing::get(page))
            .with_state(Arc::new(held));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MemoryServer { url, task })
    }
}

impl Drop for MemoryServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn one(State(h): State<Arc<Held>>, Path(id): Path<String>) -> Result<Json<Instance>, StatusCode> {
    h.by_id.get(&id).cloned().map(Json).ok_or(StatusCode::NOT_FOUND)
}

async fn page(State(h): State<Arc<Held>>, Query(q): Query<Limit>) -> Json<Page<Instance>> {
    let n = q.limit.unwrap_or(100).min(h.in_order.len());
    Json(Page { items: h.in_order[..n].to_vec(), next_cursor: None })
}

/// dcmgr's database through its own driver.
#[derive(Clone)]
pub enum RawSql {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

// The statements of `datastore::instance::{view, list, attached_volumes}` and
// `datastore::interface::{for_instances, groups_for_instances}`, which GET and list run.
fn get_sql() -> String {
    format!("SELECT {VIEW_COLS} FROM instances WHERE id = $1")
}
fn list_sql() -> String {
    format!(
        "SELECT {VIEW_COLS} FROM instances WHERE account_id = $1 AND id > $2 AND ($3 = '' OR state = $3)
         AND ($4 = '' OR name = $4) AND ($3 <> '' OR state <> 'terminated' OR updated_at >= $6)
         AND ($7 = '' OR id IN (SELECT instance_id FROM vifs WHERE ip = $7
                                UNION SELECT v.instance_id FROM floating_ips f JOIN vifs v ON v.id = f.vif_id WHERE f.ip = $7))
         ORDER BY id LIMIT $5"
    )
}
const VIFS: &str = "SELECT v.id, v.instance_id, v.network_id, v.mac, v.ip, v.state, f.ip AS floating_ip
    FROM vifs v LEFT JOIN floating_ips f ON f.vif_id = v.id
    WHERE ($1 = '' OR v.account_id = $1) AND v.instance_id >= $2 AND v.instance_id <= $3 ORDER BY v.instance_id, v.position";
const GROUPS: &str = "SELECT s.vif_id, s.group_id FROM vif_security_groups s JOIN vifs v ON v.id = s.vif_id
    WHERE ($1 = '' OR v.account_id = $1) AND v.instance_id >= $2 AND v.instance_id <= $3 ORDER BY s.group_id";
const VOLUMES: &str = "SELECT instance_id, id FROM volumes WHERE ($1 = '' OR account_id = $1) AND instance_id >= $2
    AND instance_id <= $3 AND state IN ('attaching', 'attached', 'detaching') ORDER BY instance_id, id";

/// The three side queries over instances `first..=last`: rows fetched.
macro_rules! sides {
    ($pool:expr, $account:expr, $first:expr, $last:expr) => {{
        let mut n = 0;
        for sql in [VIFS, GROUPS, VOLUMES] {
            n += sqlx::query(sql).bind($account).bind($first).bind($last).fetch_all($pool).await?.len();
        }
        n
    }};
}

macro_rules! get_one {
    ($pool:expr, $account:expr, $id:expr) => {{
        let row = sqlx::query(&get_sql()).bind($id).fetch_optional($pool).await?;
        anyhow::ensure!(row.is_some(), "instance {} is not in the database", $id);
        1 + sides!($pool, $account, $id, $id)
    }};
}

macro_rules! list_page {
    ($pool:expr, $account:expr, $limit:expr) => {{
        use sqlx::Row as _;
        let rows = sqlx::query(&list_sql())
            .bind($account)
            .bind("")
            .bind("")
            .bind("")
            .bind($limit)
            .bind("1970-01-01T00:00:00.000Z")
            .bind("")
            .fetch_all($pool)
            .await?;
        match (rows.first(), rows.last()) {
            (Some(f), Some(l)) => {
                let (first, last): (String, String) = (f.try_get(0)?, l.try_get(0)?);
                rows.len() + sides!($pool, $account, &first, &last)
            }
            _ => 0,
        }
    }};
}

impl RawSql {
    pub async fn connect(url: &str) -> anyhow::Result<RawSql> {
        // dcmgr's pool sizes; no ping before each use, which a floor need not pay.
        Ok(if url.starts_with("sqlite:") {
            RawSql::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .test_before_acquire(false)
                    .connect(url)
                    .await?,
            )
        } else {
            RawSql::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .test_before_acquire(false)
                    .connect(url)
                    .await?,
            )
        })
    }

    /// What `GET /api/v1/instances/{id}` reads: rows fetched.
    pub async fn get_instance(&self, account: &str, id: &str) -> anyhow::Result<usize> {
        Ok(match self {
            RawSql::Sqlite(p) => get_one!(&mut *p.acquire().await?, account, id),
            RawSql::Postgres(p) => get_one!(&mut *p.acquire().await?, account, id),
        })
    }

    /// What `GET /api/v1/instances?limit=N` reads: rows fetched.
    pub async fn list_instances(&self, account: &str, limit: i64) -> anyhow::Result<usize> {
        Ok(match self {
            RawSql::Sqlite(p) => list_page!(&mut *p.acquire().await?, account, limit),
            RawSql::Postgres(p) => list_page!(&mut *p.acquire().await?, account, limit),
        })
    }
}

/// `wrk -t2 -c64 -dSECONDS --latency` at `url`: requests per second and the p50 line, or
/// `None` when wrk is not installed.
pub fn wrk(url: &str, token: &str, seconds: u64) -> anyhow::Result<Option<(f64, String)>> {
    let Some(wrk) = crate::procs::which("wrk") else { return Ok(None) };
    let out = std::process::Command::new(wrk)
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency"])
        .args(["-H", &format!("Authorization: Bearer {token}"), url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(bad) = text.lines().find(|l| l.contains("Non-2xx")) {
        anyhow::bail!("wrk at {url}: {}", bad.trim());
    }
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("wrk at {url} printed no rate: {text}"))?;
    let p50 = text.lines().find(|l| l.trim_start().starts_with("50%")).unwrap_or("50% ?").trim().to_owned();
    Ok(Some((rps, p50)))
}
