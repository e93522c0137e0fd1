//! Writes that can wait a few milliseconds, queued and written many at a time by a task
//! of their own: on SQLite's one writer a transaction or statement for each would stand
//! behind every create's own.

use std::future::Future;
use tokio::sync::{mpsc, oneshot};

enum Msg<T> {
    Item(T),
    /// Answered once every item queued before it is written.
    Flush(oneshot::Sender<()>),
}

pub struct Batcher<T> {
    tx: mpsc::Sender<Msg<T>>,
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writing task on the current runtime: `write` gets what is queued, at most
    /// `most` items at a time, and logs its own failures. The task ends once the batcher
    /// is dropped and what was queued is written.
    pub fn start<F, Fut>(most: usize, mut write: F) -> Batcher<T>
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::channel::<Msg<T>>(4 * most);
        tokio::spawn(async move {
            let mut msgs = Vec::with_capacity(most);
            while rx.recv_many(&mut msgs, most).await > 0 {
                let (mut items, mut flushes) = (Vec::with_capacity(msgs.len()), Vec::new());
                for m in msgs.drain(..) {
                    match m {
                        Msg::Item(i) => items.push(i),
                        Msg::Flush(done) => flushes.push(done),
                    }
                }
                if !items.is_empty() {
                    write(items).await;
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        Batcher { tx }
    }

    /// Queues one item (waits while the queue is full: the writes fall behind no further).
    /// Gives it back when the writing task has stopped.
    pub async fn push(&self, item: T) -> Result<(), T> {
        self.tx.send(Msg::Item(item)).await.map_err(|mpsc::error::SendError(m)| match m {
            Msg::Item(i) => i,
            Msg::Flush(_) => unreachable!("an item was sent"),
        })
    }

    /// Returns once every item queued before the call is written (or failed to be).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}
