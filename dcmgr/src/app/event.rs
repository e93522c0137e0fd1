//! The event stream: one pump per dcmgr reads new events from SQL and fans them out to
//! every open stream, so a thousand clients cost one query per change, not a thousand.
//!
//! The pump wakes when this process commits a change that recorded events
//! ([`Hub::wake`], called after commit) and every [`FALLBACK_POLL`] otherwise: that is
//! how events committed by another dcmgr on the same database arrive, and it bounds the
//! delay of a commit whose wake-up was missed. A stream first reads what it missed from
//! SQL (resuming after `Last-Event-ID`), then follows the pump; a stream that falls
//! behind the pump's buffer reads from SQL again. SQL is the truth throughout, so a
//! restart of dcmgr loses nothing a client has not seen.

use crate::ctx::{Caller, SharedCtx};
use crate::db;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, Notify};
use tokio_util::sync::CancellationToken;
use vdc_schema::api::Event;

/// How often the pump reads without being woken.
pub const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// Events per SQL read.
const PAGE: i64 = 500;
/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub struct Hub {
    wake: Notify,
    tx: broadcast::Sender<Arc<[Event]>>,
    /// The newest event the pump has published.
    head: AtomicU64,
    /// Moves at every change this process commits and at every batch of events the pump
    /// reads (another dcmgr's changes among them): what the read model checks its copies
    /// against (`app::views`).
    generation: AtomicU64,
    /// Moves at every batch of events the pump reads with an image's among them: what
    /// the read model checks its copies of images against.
    images: AtomicU64,
    /// Ends every stream when dcmgr stops (the HTTP server waits for open responses).
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(shutdown: CancellationToken) -> Hub {
        Hub {
            wake: Notify::new(),
            tx: broadcast::channel(256).0,
            head: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            images: AtomicU64::new(0),
            shutdown,
        }
    }

    /// A transaction that changed what the API shows has committed: the pump reads its
    /// events now, and the read model's copies from before it are no longer served.
    pub fn wake(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Every batch of events this process publishes from now on: a task waiting for an
    /// object to change subscribes, reads it, and reads again at each batch.
    pub fn changes(&self) -> broadcast::Receiver<Arc<[Event]>> {
        self.tx.subscribe()
    }

    /// The change generation: read it before reading SQL for a copy to keep.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// As [`Hub::wake`] after a commit that changed an image as others may see it (its
    /// shares, its size, the image gone): this process's copies of images go at once.
    pub fn images_changed(&self) {
        self.images.fetch_add(1, Ordering::SeqCst);
        self.wake();
    }

    /// The image generation: read it before reading an image from SQL for a copy to keep.
    pub fn image_generation(&self) -> u64 {
        self.images.load(Ordering::SeqCst)
    }
}

/// Reads new events and publishes them, prunes old ones; until `cancel`.
pub async fn pump(ctx: SharedCtx, cancel: CancellationToken) {
    let mut head = loop {
        match db::event::head(&ctx.db).await {
            Ok(h) => break h,
            Err(e) => tracing::warn!("reading the newest event: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    };
    ctx.events.head.store(head, Ordering::Release);
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ctx.events.wake.notified() => {}
            _ = tokio::time::sleep(FALLBACK_POLL) => {}
        }
        loop {
            let batch = match db::event::after(&ctx.db, None, head, PAGE).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("reading events: {e}");
                    break;
                }
            };
            let Some(last) = batch.last() else { break };
            head = last.seq;
            ctx.events.generation.fetch_add(1, Ordering::SeqCst);
            if batch.iter().any(|e| e.kind == db::event::Kind::Image.as_str()) {
                ctx.events.images.fetch_add(1, Ordering::SeqCst);
            }
            let full = batch.len() as i64 == PAGE;
            ctx.events.head.store(head, Ordering::Release);
            // No receiver is not an error: nobody is listening.
            let _ = ctx.events.tx.send(batch.into());
            if !full {
                break;
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            let keep = &ctx.config.events;
            let before = db::time(&(chrono::Utc::now() - chrono::Duration::seconds(keep.retain_secs as i64)));
            match db::event::prune(&ctx.db, &before, keep.retain_count).await {
                Ok(n) if n > 0 => tracing::debug!(removed = n, "pruned old events"),
                Ok(_) => {}
                Err(e) => tracing::warn!("pruning events: {e}"),
            }
        }
    }
}

/// What a stream sends: an event, or notice that events after `resumed_after` up to the
/// oldest one kept were pruned before the client came back.
#[derive(Debug)]
pub enum Item {
    Event(Event),
    Lost { resumed_after: u64, oldest_kept: u64 },
}

/// The caller's events after `after` (None: from now on), as a channel fed by a task;
/// with `follow` false, only those already recorded. An admin sees every account's,
/// unless it acts in one (`X-Vdc-Account`).
pub async fn subscribe(
    ctx: &SharedCtx,
    caller: &Caller,
    after: Option<u64>,
    follow: bool,
) -> crate::error::ApiResult<mpsc::Receiver<Item>> {
    // Subscribed before the first read, so nothing falls between the read and the follow.
    let mut live = ctx.events.tx.subscribe();
    let account = (!caller.admin || caller.acting_in).then(|| caller.account_id.to_string());
    let (out, rx) = mpsc::channel(PAGE as usize);
    let mut last = match after {
        Some(a) => {
            // An ID no event here has had (another site's or database's): the stream would
            // wait for it in silence.
            let head = db::event::head(&ctx.db).await?;
            if a > head {
                return Err(crate::error::ApiError::bad(
                    "invalid_last_event_id",
                    format!(
                        "event {a} is ahead of this site's newest event ({head}): resume from an ID this stream sent"
                    ),
                ));
            }
            let oldest = db::event::oldest(&ctx.db).await?;
            if oldest > a + 1 && a > 0 {
                let _ = out.try_send(Item::Lost { resumed_after: a, oldest_kept: oldest });
            }
            a
        }
        // The pump's head may lag the database: the catch-up below reads what it has
        // not published yet, so "from now" is never later than the request.
        None => ctx.events.head.load(Ordering::Acquire),
    };
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let shutdown = ctx.events.shutdown.clone();
        'catch_up: loop {
            // From SQL until this stream has everything committed so far.
            loop {
                let page = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = db::event::after(&ctx.db, account.as_deref(), last, PAGE) => r,
                };
                let page = match page {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("reading events for a stream: {e}");
                        return;
                    }
                };
                let n = page.len() as i64;
                for e in page {
                    last = e.seq;
                    if out.send(Item::Event(e)).await.is_err() {
                        return;
                    }
                }
                if n < PAGE {
                    break;
                }
            }
            if !follow {
                return;
            }
            loop {
                let batch = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = out.closed() => return,
                    b = live.recv() => b,
                };
                match batch {
                    Ok(batch) => {
                        for e in batch.iter() {
                            if e.seq <= last || account.as_deref().is_some_and(|a| e.account_id.as_str() != a) {
                                continue;
                            }
                            last = e.seq;
                            if out.send(Item::Event(e.clone())).await.is_err() {
                                return;
                            }
                        }
                    }
                    // Fell behind the pump: SQL still has everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    });
    Ok(rx)
}
