//! Connections counted per source address and in all, for the HTTP servers a hostile
//! client can reach (dcmgr's API, nwagent's metadata service). One client holding 19,990
//! idle connections took every descriptor of the process, and everything it served
//! stopped for every tenant (red team, 2026-12-06, once through each server).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections (or streams) open, per source (an address, an account) and in all,
/// under two limits.
pub struct ConnLimits<K = IpAddr> {
    per_source: usize,
    total: usize,
    open: Mutex<(usize, HashMap<K, usize>)>,
}

/// One admitted connection: released when dropped.
pub struct ConnPermit<K: Hash + Eq = IpAddr> {
    limits: Arc<ConnLimits<K>>,
    source: K,
}

impl<K: Hash + Eq + Clone> ConnLimits<K> {
    pub fn new(per_source: usize, total: usize) -> Arc<Self> {
        Arc::new(ConnLimits { per_source, total, open: Default::default() })
    }

    /// A permit for a new connection from `source`, if it is under both limits.
    pub fn admit(self: &Arc<Self>, source: K) -> Option<ConnPermit<K>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        let mine = per.get(&source).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_source {
            return None;
        }
        per.insert(source.clone(), mine + 1);
        *total += 1;
        Some(ConnPermit { limits: self.clone(), source })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl<K: Hash + Eq> Drop for ConnPermit<K> {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per) = &mut *open;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.source);
            }
        }
    }
}

/// The process's limit of open descriptors (its soft `RLIMIT_NOFILE`), when it can say.
pub fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_and_the_whole_are_limited_and_permits_give_back() {
        let l = ConnLimits::<IpAddr>::new(2, 3);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = l.admit(a).unwrap();
        let _a2 = l.admit(a).unwrap();
        assert!(l.admit(a).is_none(), "a third from one source");
        let _b1 = l.admit(b).unwrap();
        assert!(l.admit(b).is_none(), "a fourth in all");
        assert_eq!(l.open(), 3);
        drop(a1);
        assert!(l.admit(a).is_some(), "a permit given back makes room");
    }
}
