//! The lock that keeps a blob from being removed between an upload storing it and its
//! image committing a reference to it: held while a blob is stored and its image
//! committed (uploads, captures, bundle imports), or an unused blob removed (an image's
//! delete). Within one dcmgr a mutex; with several on one PostgreSQL (which may share
//! an S3 store) also a PostgreSQL advisory lock, held on a connection of its own and
//! given back when that connection closes, so a dcmgr that dies holding it frees it.

use crate::ctx::Ctx;
use sqlx::Connection;

/// The advisory lock's key (`vdcB` in ASCII); the leader's is `vdcL`.
pub const LOCK_KEY: i64 = 0x7664_6342;

/// Held until dropped.
pub struct Held<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    /// Closing it (on drop) gives the advisory lock back.
    _shared: Option<sqlx::PgConnection>,
}

/// Takes the lock: this process's first, then, on PostgreSQL, every dcmgr's.
pub async fn hold(ctx: &Ctx) -> Result<Held<'_>, sqlx::Error> {
    let local = ctx.blob_refs.lock().await;
    let shared = match ctx.shared {
        true => Some(lock_shared(&ctx.config.database_url).await?),
        false => None,
    };
    Ok(Held { _local: local, _shared: shared })
}

/// A connection holding the advisory lock (waits for it).
pub async fn lock_shared(database_url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(database_url).await?;
    sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_KEY).execute(&mut conn).await?;
    Ok(conn)
}
