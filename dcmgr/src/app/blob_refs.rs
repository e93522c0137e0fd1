//! The lock that keeps a blob from being removed between an upload storing it and its
//! image committing a reference to it: held while a blob is stored and its image
//! committed (uploads, captures, bundle imports), or an unused blob removed (an image's
//! delete). It is taken per blob, so storing one blob (minutes into an S3 store for a
//! large image) holds up no other: the blobs' hashes fall into [`STRIPES`] stripes,
//! taken in ascending order. Within one dcmgr a mutex per stripe; with several on one
//! PostgreSQL (which may share an S3 store) also a PostgreSQL advisory lock per stripe
//! (`datastore::locks`: a dcmgr that dies holding it frees it).

use crate::ctx::Ctx;
use crate::datastore::locks;
use std::collections::BTreeSet;

/// The advisory locks' class (`vdcB` in ASCII; the leader's single key is `vdcL`).
pub const LOCK_CLASS: i32 = 0x7664_6342;

/// Stripes of the blob hash space: two blobs wait for each other only when their hashes'
/// first byte is the same.
pub const STRIPES: usize = 256;

/// This process's locks, one per stripe.
pub struct Stripes(Vec<tokio::sync::Mutex<()>>);

impl Default for Stripes {
    fn default() -> Self {
        Stripes((0..STRIPES).map(|_| Default::default()).collect())
    }
}

/// The stripe of a blob's SHA-256 (hex).
pub fn stripe(sha256: &str) -> i32 {
    sha256.get(..2).and_then(|b| u8::from_str_radix(b, 16).ok()).unwrap_or(0) as i32
}

/// Held until dropped.
pub struct Held<'a> {
    _local: Vec<tokio::sync::MutexGuard<'a, ()>>,
    _shared: Option<locks::Held>,
}

/// Takes the locks of the blobs `sha256s`: this process's first, then, on PostgreSQL,
/// every dcmgr's.
pub async fn hold<'a, 's>(ctx: &'a Ctx, sha256s: impl IntoIterator<Item = &'s str>) -> Result<Held<'a>, sqlx::Error> {
    let stripes: BTreeSet<i32> = sha256s.into_iter().map(stripe).collect();
    let mut local = Vec::with_capacity(stripes.len());
    for s in &stripes {
        local.push(ctx.blob_refs.0[*s as usize].lock().await);
    }
    let shared = match &ctx.locks {
        Some(l) if !stripes.is_empty() => Some(l.lock(LOCK_CLASS, &stripes).await?),
        _ => None,
    };
    Ok(Held { _local: local, _shared: shared })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_falls_in_the_stripe_of_its_first_byte() {
        assert_eq!(stripe("00ab"), 0);
        assert_eq!(stripe("ff00"), 255);
        assert_eq!(stripe(&"7f".repeat(32)), 0x7f);
        assert_eq!(stripe("zz"), 0, "not hex (never a stored blob): one stripe for all");
    }
}
