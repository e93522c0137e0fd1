//! At most one worker per object, however often dcmgr asks.
//!
//! dcmgr re-sends an ensure until the agent reports the object converged (every
//! `resend_after`), and an ensure can wait long for a device to appear. Spawning a task
//! per ensure piled up tens of identical ones behind an agent's lock; each then redid
//! the whole change in turn, and a new guest's ensure queued behind them got its DHCP
//! entry after its client had given up (seen in CI under load). Here a request for an
//! object whose worker runs only replaces the one waiting request: each object gets its
//! current run plus, at most, one more with the newest request.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A request with a rank: a waiting request is replaced only by one of equal or higher
/// rank (a late, reordered copy of an older request never displaces a newer one).
pub trait Ranked {
    type Rank: Ord;
    fn rank(&self) -> Self::Rank;
}

pub struct Coalescer<K, T> {
    /// key → the request waiting for the running worker to end (none: just running).
    slots: Arc<Mutex<HashMap<K, Option<T>>>>,
    /// The workers, for [`Coalescer::drain`].
    workers: tokio_util::task::TaskTracker,
}

impl<K, T> Clone for Coalescer<K, T> {
    fn clone(&self) -> Self {
        Coalescer { slots: self.slots.clone(), workers: self.workers.clone() }
    }
}

impl<K, T> Default for Coalescer<K, T> {
    fn default() -> Self {
        Coalescer { slots: Default::default(), workers: Default::default() }
    }
}

impl<K, T> Coalescer<K, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    T: Ranked + Send + 'static,
{
    /// Runs `run(request)` on a task of its own unless a worker for `key` runs; then
    /// `request` waits (replacing a waiting one of lower or equal rank) and runs when the
    /// current run ends.
    pub fn submit<F, Fut>(&self, key: K, request: T, run: F)
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        {
            let mut slots = self.slots.lock().unwrap();
            if let Some(waiting) = slots.get_mut(&key) {
                if waiting.as_ref().is_none_or(|w| request.rank() >= w.rank()) {
                    *waiting = Some(request);
                }
                return;
            }
            slots.insert(key.clone(), None);
        }
        let slots = self.slots.clone();
        self.workers.spawn(async move {
            let mut request = request;
            loop {
                run(request).await;
                let mut s = slots.lock().unwrap();
                match s.get_mut(&key).and_then(Option::take) {
                    Some(next) => request = next,
                    None => {
                        s.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Whether a request of higher rank than `rank` waits for `key`: the running one is
    /// out of date and may give up a long wait.
    pub fn superseded(&self, key: &K, rank: &T::Rank) -> bool {
        self.slots.lock().unwrap().get(key).and_then(Option::as_ref).is_some_and(|w| w.rank() > *rank)
    }

    /// Waits until no worker runs, the ones a waiting request would start again too (at
    /// shutdown, once no more requests come).
    pub async fn drain(&self) {
        self.workers.close();
        self.workers.wait().await;
    }

    /// How many objects have a worker running (tests, metrics).
    pub fn running(&self) -> usize {
        self.slots.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    struct Req(u64);
    impl Ranked for Req {
        type Rank = u64;
        fn rank(&self) -> u64 {
            self.0
        }
    }

    #[tokio::test]
    async fn a_burst_of_requests_makes_one_run_and_one_more_with_the_newest() {
        let c: Coalescer<&'static str, Req> = Coalescer::default();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::watch::channel(false);
        let go = |c: &Coalescer<&'static str, Req>, n: u64| {
            let (runs, rx) = (runs.clone(), rx.clone());
            c.submit("a", Req(n), move |r| {
                let (runs, mut rx) = (runs.clone(), rx.clone());
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                    runs.lock().unwrap().push(r.0);
                }
            });
        };
        go(&c, 1);
        for n in [2, 5, 3, 4, 5] {
            go(&c, n);
        }
        assert!(c.superseded(&"a", &1));
        assert!(!c.superseded(&"a", &5));
        tx.send(true).unwrap();
        for _ in 0..100 {
            if c.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // 3 and 4 arrived after 5 (reordered copies): they never displace it.
        assert_eq!(*runs.lock().unwrap(), [1, 5]);
        assert_eq!(c.running(), 0);
    }

    #[tokio::test]
    async fn keys_run_side_by_side_and_a_later_request_starts_afresh() {
        let c: Coalescer<u32, Req> = Coalescer::default();
        let n = Arc::new(AtomicUsize::new(0));
        for k in 0..10 {
            let n = n.clone();
            c.submit(k, Req(0), move |_| {
                let n = n.clone();
                async move {
                    n.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        for _ in 0..100 {
            if c.running() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.load(Ordering::SeqCst), 10);
        let n2 = n.clone();
        c.submit(0, Req(0), move |_| {
            let n = n2.clone();
            async move {
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        for _ in 0..100 {
            if n.load(Ordering::SeqCst) == 11 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.load(Ordering::SeqCst), 11);
    }

    #[tokio::test]
    async fn a_drain_waits_for_the_running_worker_and_the_one_waiting() {
        let c: Coalescer<&'static str, Req> = Coalescer::default();
        let runs = Arc::new(Mutex::new(Vec::new()));
        for n in [1, 2] {
            let runs = runs.clone();
            c.submit("a", Req(n), move |r| {
                let runs = runs.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    runs.lock().unwrap().push(r.0);
                }
            });
        }
        c.drain().await;
        assert_eq!(*runs.lock().unwrap(), [1, 2], "both ran to their end");
        assert_eq!(c.running(), 0);
    }
}
