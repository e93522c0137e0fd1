//! PostgreSQL advisory locks of one dcmgr, all held on one connection of its own.
//!
//! Several dcmgrs on one PostgreSQL exclude each other from an image's ingest, a blob's
//! stripe and an export's run with session advisory locks, so a dcmgr that dies frees
//! them with its session. They used to take one connection each: 100 uploads at once
//! were 100 connections, PostgreSQL's default `max_connections`, and then no dcmgr could
//! open another. Now a task owns one connection and takes and gives back every lock of
//! its process on it.
//!
//! Within a process the callers exclude each other first (`ctx.ingesting`, `ctx.exports`,
//! the blob stripes' mutexes), so one session holding a lock twice (PostgreSQL counts
//! them) only happens while a holder gives it back and the next takes it, and the counts
//! come out right. Waiting for a held lock is a retried `pg_try_advisory_lock`, never
//! `pg_advisory_lock`, which would stop the connection for every other lock.
//!
//! If the connection breaks, PostgreSQL frees its locks: that is logged, the next request
//! opens a new connection, and guards from the old one give nothing back on the new one.

use sqlx::Connection;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// One dcmgr's advisory locks (cloned handles share the connection).
#[derive(Clone)]
pub struct SharedLocks {
    tx: mpsc::UnboundedSender<Req>,
    task: std::sync::Arc<tokio::task::AbortHandle>,
}

/// Locks taken, given back when dropped.
#[must_use = "the locks are given back when this is dropped"]
pub struct Held {
    tx: mpsc::UnboundedSender<Req>,
    /// (class, key, the connection's generation it was taken on).
    keys: Vec<(i32, i32, u64)>,
}

enum Req {
    Try { class: i32, key: i32, reply: oneshot::Sender<Result<Option<u64>, sqlx::Error>> },
    Unlock { class: i32, key: i32, generation: u64 },
    Count { reply: oneshot::Sender<usize> },
}

impl SharedLocks {
    /// Starts the task; it connects to `url` at the first lock.
    pub fn new(url: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(url, rx)).abort_handle();
        SharedLocks { tx, task: std::sync::Arc::new(task) }
    }

    /// Takes `(class, key)`, or None while another session holds it.
    pub async fn try_lock(&self, class: i32, key: i32) -> Result<Option<Held>, sqlx::Error> {
        Ok(self.try_one(class, key).await?.map(|g| Held { tx: self.tx.clone(), keys: vec![(class, key, g)] }))
    }

    /// Takes every key of `class`, in ascending order (so two holders of overlapping sets
    /// never wait for each other), each as soon as it is free.
    pub async fn lock(&self, class: i32, keys: &BTreeSet<i32>) -> Result<Held, sqlx::Error> {
        let mut held = Held { tx: self.tx.clone(), keys: Vec::with_capacity(keys.len()) };
        for &key in keys {
            let mut wait = Duration::from_millis(2);
            loop {
                if let Some(g) = self.try_one(class, key).await? {
                    held.keys.push((class, key, g));
                    break;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        }
        Ok(held)
    }

    /// Locks held on the current connection, counted as PostgreSQL counts them.
    pub async fn count(&self) -> usize {
        let (reply, rx) = oneshot::channel();
        let _ = self.tx.send(Req::Count { reply });
        rx.await.unwrap_or(0)
    }

    /// Closes the connection as a dying process would: PostgreSQL frees its locks.
    pub fn close(&self) {
        self.task.abort();
    }

    async fn try_one(&self, class: i32, key: i32) -> Result<Option<u64>, sqlx::Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Req::Try { class, key, reply }).map_err(|_| sqlx::Error::PoolClosed)?;
        rx.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for (class, key, generation) in self.keys.drain(..) {
            let _ = self.tx.send(Req::Unlock { class, key, generation });
        }
    }
}

async fn serve(url: String, mut rx: mpsc::UnboundedReceiver<Req>) {
    let mut conn: Option<sqlx::PgConnection> = None;
    let mut generation = 0u64;
    let mut held: HashMap<(i32, i32), usize> = HashMap::new();
    while let Some(req) = rx.recv().await {
        match req {
            Req::Try { class, key, reply } => {
                // A connection holding nothing may have been closed while idle (a restarted
                // PostgreSQL, an idle timeout): nothing was lost, so once more on a new one.
                let idle = conn.is_some() && held.is_empty();
                let mut r = try_lock(&url, &mut conn, &mut generation, &mut held, class, key).await;
                if r.is_err() && idle {
                    r = try_lock(&url, &mut conn, &mut generation, &mut held, class, key).await;
                }
                let _ = reply.send(r);
            }
            Req::Unlock { class, key, generation: g } => {
                let Some(c) = conn.as_mut().filter(|_| g == generation) else { continue };
                if let Some(n) = held.get_mut(&(class, key)) {
                    *n -= 1;
                    if *n == 0 {
                        held.remove(&(class, key));
                    }
                }
                let r = sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(class).bind(key).execute(c).await;
                if let Err(e) = r {
                    lost(&mut conn, &mut held, &e);
                }
            }
            Req::Count { reply } => {
                let _ = reply.send(held.values().sum());
            }
        }
    }
}

async fn try_lock(
    url: &str,
    conn: &mut Option<sqlx::PgConnection>,
    generation: &mut u64,
    held: &mut HashMap<(i32, i32), usize>,
    class: i32,
    key: i32,
) -> Result<Option<u64>, sqlx::Error> {
    if conn.is_none() {
        *conn = Some(sqlx::PgConnection::connect(url).await?);
        *generation += 1;
    }
    let c = conn.as_mut().expect("connected above");
    match sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1, $2)").bind(class).bind(key).fetch_one(c).await
    {
        Ok(true) => {
            *held.entry((class, key)).or_default() += 1;
            Ok(Some(*generation))
        }
        Ok(false) => Ok(None),
        Err(e) => {
            lost(conn, held, &e);
            Err(e)
        }
    }
}

/// The connection broke: PostgreSQL frees what it held.
fn lost(conn: &mut Option<sqlx::PgConnection>, held: &mut HashMap<(i32, i32), usize>, e: &sqlx::Error) {
    if !held.is_empty() {
        tracing::error!(error = %e, locks = held.len(),
            "the connection holding this dcmgr's advisory locks broke: other dcmgrs are no longer kept out of what they guarded");
    } else {
        tracing::warn!(error = %e, "the advisory locks' connection broke; the next lock opens another");
    }
    held.clear();
    *conn = None;
}
