//! When the specs of instances and interfaces were last sent to their hosts: the
//! reconciler sends again what was not sent lately (`ensure_sent_at`).

use crate::datastore::{self as db, Pool};
use std::fmt::Write as _;

/// The tables whose rows carry an `ensure_sent_at` and a `spec_gen`, marked in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Instances,
    Vifs,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Instances => "instances",
            Table::Vifs => "vifs",
        }
    }
}

/// Records that the specs of these rows, at these generations, were sent now. A row whose
/// spec moved on since keeps its time: its newer spec is not sent yet, and the reconciler
/// must still see that.
///
/// On SQLite in one statement. On PostgreSQL a statement per row: one that updates many
/// rows locks them in the order it finds them, and a transaction holding one of them
/// while it waits for another deadlocks with it (measured with reports applied together
/// on PostgreSQL too: nearly every batch of marks failed so).
pub async fn mark(pool: &Pool, table: Table, sent: &[(String, i64)]) -> Result<(), sqlx::Error> {
    if sent.is_empty() {
        return Ok(());
    }
    let now = db::now_ms();
    if !db::one_writer(pool) {
        let sql = format!("UPDATE {} SET ensure_sent_at = $1 WHERE id = $2 AND spec_gen = $3", table.name());
        for (id, gen) in sent {
            sqlx::query(&sql).bind(now).bind(id.as_str()).bind(*gen).execute(pool).await?;
        }
        return Ok(());
    }
    let mut sql = format!("UPDATE {} SET ensure_sent_at = $1 WHERE ", table.name());
    for i in 0..sent.len() {
        let sep = if i == 0 { "" } else { " OR " };
        write!(sql, "{sep}(id = ${} AND spec_gen = ${})", 2 * i + 2, 2 * i + 3).expect("writes to a String");
    }
    // Not kept prepared: each size of batch is a statement of its own.
    let mut q = sqlx::query(&sql).persistent(false).bind(now);
    for (id, gen) in sent {
        q = q.bind(id.as_str()).bind(*gen);
    }
    db::write_alone(pool, q).await?;
    Ok(())
}
