//! Marks ensures sent off the dispatch path, on SQLite many per statement: on its one
//! writer a statement per ensure stood behind every create's own transaction (two per
//! create: the instance's and its interface's). A mark only delays the reconciler's
//! resend, so one written a few milliseconds late, or lost when dcmgr stops, costs at
//! most an ensure sent again, which agents take as the same.

use crate::datastore::{self as db, batch::Batcher, sent::Table};

/// Most marks written in one round.
const BATCH: usize = 512;

pub struct Marks(Batcher<(Table, String, i64)>);

impl Marks {
    /// Starts the writing task on the current runtime.
    pub fn start(pool: db::Pool) -> Marks {
        Marks(Batcher::start(BATCH, move |marks: Vec<(Table, String, i64)>| {
            let pool = pool.clone();
            async move {
                for table in [Table::Instances, Table::Vifs] {
                    let sent: Vec<_> =
                        marks.iter().filter(|m| m.0 == table).map(|(_, id, gen)| (id.clone(), *gen)).collect();
                    if let Err(e) = db::sent::mark(&pool, table, &sent).await {
                        tracing::warn!(
                            ?table,
                            rows = sent.len(),
                            "ensures sent were not marked; the reconciler will send them again: {e}"
                        );
                    }
                }
            }
        }))
    }

    /// Queues the mark that the spec of `id` at generation `gen` was sent.
    pub async fn sent(&self, table: Table, id: &str, gen: i64) {
        // Fails only while dcmgr stops; the reconciler covers it.
        let _ = self.0.push((table, id.to_owned(), gen)).await;
    }

    /// Returns once every mark queued before the call is written (or failed to be).
    pub async fn flush(&self) {
        self.0.flush().await
    }
}
