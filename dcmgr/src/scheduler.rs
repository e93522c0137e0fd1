//! Placement: least usage of free memory, then free CPUs, among online hosts that offer
//! the hypervisor kind. The reservation is one conditional UPDATE inside the caller's
//! transaction, so two concurrent creates can never overcommit a host on either database.

use crate::db;
use crate::error::{ApiError, ApiResult};
use vdc_schema::id::HostNodeId;
use vdc_schema::HypervisorKind;

#[derive(Debug, Clone, Copy)]
pub struct Demand {
    pub hypervisor: HypervisorKind,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// Candidate hosts, best first (read outside the transaction; the UPDATE re-checks).
pub async fn candidates(pool: &db::Pool, d: Demand, prefer: Option<&str>) -> ApiResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT id FROM host_nodes
         WHERE state = 'online' AND hypervisors LIKE $1
           AND memory_mib - memory_used_mib >= $2 AND cpus - cpus_used >= $3
         ORDER BY memory_mib - memory_used_mib DESC, cpus - cpus_used DESC, id
         LIMIT 8",
    )
    .bind(format!("%,{},%", d.hypervisor))
    .bind(d.memory_mib as i64)
    .bind(d.cpus as i64)
    .fetch_all(pool)
    .await?;
    let mut ids: Vec<String> = rows.into_iter().map(|r| r.0).collect();
    if let Some(p) = prefer {
        if let Some(pos) = ids.iter().position(|i| i == p) {
            let id = ids.remove(pos);
            ids.insert(0, id);
        }
    }
    if ids.is_empty() {
        return Err(no_host(pool, d).await);
    }
    Ok(ids)
}

/// Reserves `d` on the first candidate that still has room. Must be the first write of
/// `tx`, so that on SQLite the transaction takes the write lock before it reads anything.
pub async fn reserve(tx: &mut db::Tx<'_>, d: Demand, candidates: &[String]) -> ApiResult<HostNodeId> {
    for id in candidates {
        let r = sqlx::query(
            "UPDATE host_nodes SET cpus_used = cpus_used + $1, memory_used_mib = memory_used_mib + $2
             WHERE id = $3 AND state = 'online' AND cpus_used + $1 <= cpus AND memory_used_mib + $2 <= memory_mib",
        )
        .bind(d.cpus as i64)
        .bind(d.memory_mib as i64)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        if r.rows_affected() == 1 {
            return id.parse().map_err(ApiError::internal);
        }
    }
    // Every candidate filled up meanwhile: let the caller's retry look again.
    Err(ApiError::Busy("candidate hosts filled up concurrently".into()))
}

/// Gives a reservation back.
pub async fn release(tx: &mut db::Tx<'_>, host: &str, cpus: i64, memory_mib: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE host_nodes SET
            cpus_used = CASE WHEN cpus_used > $1 THEN cpus_used - $1 ELSE 0 END,
            memory_used_mib = CASE WHEN memory_used_mib > $2 THEN memory_used_mib - $2 ELSE 0 END
         WHERE id = $3",
    )
    .bind(cpus)
    .bind(memory_mib)
    .bind(host)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Explains why nothing fits.
async fn no_host(pool: &db::Pool, d: Demand) -> ApiError {
    let with_kind: Result<(i64, Option<i64>, Option<i64>), _> = sqlx::query_as(
        "SELECT COUNT(*), MAX(memory_mib - memory_used_mib), MAX(cpus - cpus_used) FROM host_nodes
         WHERE state = 'online' AND hypervisors LIKE $1",
    )
    .bind(format!("%,{},%", d.hypervisor))
    .fetch_one(pool)
    .await;
    let message = match with_kind {
        Ok((0, _, _)) => format!("no online host offers hypervisor {}", d.hypervisor),
        Ok((n, mem, cpu)) => format!(
            "no host can fit {} vCPUs and {} MiB: the {n} online {} hosts have at most {} MiB and {} vCPUs free",
            d.cpus,
            d.memory_mib,
            d.hypervisor,
            mem.unwrap_or(0),
            cpu.unwrap_or(0)
        ),
        Err(e) => return e.into(),
    };
    ApiError::Unprocessable { code: "no_capacity", message }
}
