//! The shared state of one dcmgr: database, bus, configuration, caches and the queue of
//! objects whose ensure must be (re)sent.

use crate::config::Config;
use crate::db::Pool;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use vdc_bus::Transport;
use vdc_schema::bus::AgentKind;
use vdc_schema::id::*;

/// Who is calling the API.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: AccountId,
    pub admin: bool,
}

/// An object whose desired state must be pushed to its agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    Instance(InstanceId),
    Interface(VifId),
    Volume(VolumeId),
    Snapshot(SnapshotId),
    /// Every interface of every member of the group, and of groups referring to it.
    SecurityGroup(SecurityGroupId),
    /// Everything placed on an agent that just (re)registered.
    NodeSync(AgentKind, String),
}

/// Hooks for tests and benchmarks: called with each ensure as it leaves dcmgr.
pub type EnsureObserver = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Ctx {
    pub db: Pool,
    pub bus: Arc<dyn Transport>,
    pub config: Config,
    /// token hash → caller; tokens are only ever added or revoked through this process.
    pub tokens: RwLock<HashMap<String, Caller>>,
    pub work: mpsc::UnboundedSender<Work>,
    /// (kind, node id) → last heartbeat (ms) and whether dcmgr has marked it offline.
    pub agents: RwLock<HashMap<(AgentKind, String), AgentSeen>>,
    pub ensure_observer: Option<EnsureObserver>,
}

#[derive(Debug, Clone, Copy)]
pub struct AgentSeen {
    pub last_seen_ms: i64,
    pub offline: bool,
    /// False for agents remembered from the database at start: their next heartbeat is
    /// told to register again, which makes them re-report everything.
    pub registered: bool,
}

impl Ctx {
    pub fn enqueue(&self, w: Work) {
        // The receiver lives as long as dcmgr; a send error only happens during shutdown.
        let _ = self.work.send(w);
    }

    pub fn agent_online(&self, kind: AgentKind, node: &str) -> bool {
        self.agents.read().unwrap().get(&(kind, node.to_owned())).is_some_and(|a| !a.offline)
    }
}

pub type SharedCtx = Arc<Ctx>;
