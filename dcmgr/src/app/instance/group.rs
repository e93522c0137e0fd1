//! Group commit of creates on SQLite (issue 15).
//!
//! SQLite has one writer, so creates take turns at the write gate however many arrive at
//! once, and each paid a begin, a commit (the pages it changed written to the WAL) and a
//! hand-over of the gate: measured with `vdc-bench`, the gate was held 95 % of the time
//! and a commit was a third of a create's transaction. So the creates waiting are
//! recorded in one transaction together, one after the other as they would have been
//! each in its own: each sees the quota and the room the ones before it took.
//!
//! Each create is recorded after a savepoint: one that is refused (over its quota, a
//! name taken, no room) is undone alone and answered with its own error, the others go
//! on. Its rows, and the savepoints themselves, are writes sent later
//! ([`db::Tx::later`]): a group is sent in the commit's round trip, and one refused
//! before anything of it was sent is undone without one. Should the transaction itself
//! fail (a round trip of it, or the commit), nothing of it stays and each create is made
//! again in a transaction of its own. PostgreSQL locks rows, runs creates side by side
//! and does not group them.

use super::{insert, place, queue_ensures, Prepared};
use crate::app::scheduler;
use crate::ctx::{Caller, Ctx, SharedCtx};
use crate::datastore as db;
use crate::error::{ApiError, ApiResult};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use tokio::sync::{mpsc, oneshot};
use vdc_schema::api::{Accepted, Instance};

/// Most creates in one transaction: a create that arrives behind a full group waits for
/// no more than this many.
const GROUP: usize = 16;

type Answer = ApiResult<Accepted<Instance>>;

struct Waiting {
    caller: Caller,
    p: Prepared,
    answer: oneshot::Sender<Answer>,
}

/// The creates waiting for the writer, and the task that records them.
#[derive(Default)]
pub struct Creates {
    queue: OnceLock<mpsc::Sender<Waiting>>,
    /// Creates committed with others, and in a transaction of their own (`/metrics`).
    shared: AtomicU64,
    own: AtomicU64,
}

impl Creates {
    /// Records the create `p` with those waiting beside it, queues its ensures and
    /// answers as a create of its own would. A create whose caller has gone is still
    /// made (as one already committed when the caller left).
    pub(super) async fn submit(&self, ctx: &SharedCtx, caller: Caller, p: Prepared) -> Answer {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * GROUP);
            // Weak: the task ends with dcmgr (its context dropped, this queue closes).
            tokio::spawn(record(Arc::downgrade(ctx), rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        let stopped =
            || ApiError::Unavailable { code: "dcmgr_stopping", message: "dcmgr is stopping; try again".into() };
        queue.send(Waiting { caller, p, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    /// Creates committed so far: (with others in a shared transaction, in their own).
    pub fn recorded(&self) -> (u64, u64) {
        (self.shared.load(Ordering::Relaxed), self.own.load(Ordering::Relaxed))
    }

    pub(super) fn made_alone(&self) {
        self.own.fetch_add(1, Ordering::Relaxed);
    }
}

async fn record(ctx: Weak<Ctx>, mut rx: mpsc::Receiver<Waiting>) {
    let mut waiting = Vec::with_capacity(GROUP);
    while rx.recv_many(&mut waiting, GROUP).await > 0 {
        let Some(ctx) = ctx.upgrade() else { return };
        if waiting.len() == 1 {
            let w = waiting.pop().expect("one");
            let _ = w.answer.send(place(&ctx, &w.caller, &w.p).await);
            continue;
        }
        match together(&ctx, &waiting).await {
            Ok(outcomes) => {
                for (w, outcome) in waiting.drain(..).zip(outcomes) {
                    match outcome {
                        Ok(a) => {
                            ctx.creates.shared.fetch_add(1, Ordering::Relaxed);
                            queue_ensures(&ctx, &a);
                            let _ = w.answer.send(Ok(a));
                        }
                        // A lost race (the room it was offered filled up) is tried again
                        // on its own, as a create alone retries.
                        Err(ApiError::Busy(_)) => alone(&ctx, w),
                        Err(e) => {
                            let _ = w.answer.send(Err(e));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(
                    creates = waiting.len(),
                    "creates recorded together failed, each is made on its own: {e}"
                );
                // What the rolled-back reservations took in memory.
                ctx.room.invalidate();
                for w in waiting.drain(..) {
                    alone(&ctx, w);
                }
            }
        }
    }
}

/// Makes a create in a transaction of its own, on a task of its own: one retrying holds
/// back neither the others nor the next group.
fn alone(ctx: &SharedCtx, w: Waiting) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _ = w.answer.send(place(&ctx, &w.caller, &w.p).await);
    });
}

/// The creates in one transaction, in order, each after a savepoint: what each one came
/// to (those refused undone), or the transaction's own failure.
async fn together(ctx: &SharedCtx, waiting: &[Waiting]) -> ApiResult<Vec<Answer>> {
    let mut tx = db::begin(&ctx.db).await?;
    let mut outcomes = Vec::with_capacity(waiting.len());
    let mut sp = tx.savepoint().await?;
    for w in waiting {
        let mut made = make(ctx, &mut tx, w).await;
        if made.is_ok() {
            if let Err(e) = tx.next_savepoint(&mut sp).await {
                made = Err(e.into());
            }
        }
        let made = match made {
            // A round trip failed: the writes it carried may be another create's (its
            // host filled up meanwhile, a lost race), so none of the group is kept.
            Err(e) if tx.failed() => return Err(e),
            made => made,
        };
        if made.is_err() {
            // The room it took in memory, if it got that far.
            ctx.room.invalidate();
            tx.rollback_to(&mut sp).await?;
        }
        outcomes.push(made);
    }
    tx.commit().await?;
    ctx.events.wake();
    Ok(outcomes)
}

async fn make(ctx: &SharedCtx, tx: &mut db::Tx<'_>, w: &Waiting) -> Answer {
    let candidates = scheduler::candidates(ctx, w.p.demand, &w.p.constraints).await?;
    insert(tx, ctx, &w.caller, &w.p, &candidates).await
}
