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
    /// Unplug an interface that is gone from the model from its last host.
    UnplugInterface(VifId, String),
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
    /// Work queued and not yet taken by a dispatcher: the same object is queued once
    /// (a burst of changes to one group sends its members one ensure each, not one per change).
    pub queued: std::sync::Mutex<std::collections::HashSet<Work>>,
    /// (kind, node id) → last heartbeat (ms) and whether dcmgr has marked it offline.
    pub agents: RwLock<HashMap<(AgentKind, String), AgentSeen>>,
    pub ensure_observer: Option<EnsureObserver>,
    /// Where image data is kept.
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    /// Images whose data is arriving now (one upload or import at a time per image).
    pub ingesting: std::sync::Mutex<std::collections::HashSet<ImageId>>,
    /// Held while a blob is stored and its image committed, or an unused blob removed, so
    /// a blob is never removed between an upload storing it and its image referring to it.
    pub blob_refs: tokio::sync::Mutex<()>,
    /// Signs the credentials agents fetch blobs with (see `app::node_auth`).
    pub node_key: [u8; 32],
    /// This site's bundle signing key (`site-key` in the image store's directory).
    pub site_key: vdc_bundle::SigningKey,
    /// Keys whose bundles are imported: this site's and `[bundles] trusted_keys`.
    pub trusted_keys: Vec<vdc_bundle::VerifyingKey>,
    /// The address the Web API listens on, once bound.
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The event stream's pump and subscribers (`app::event`).
    pub events: crate::app::event::Hub,
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
        if !self.queued.lock().unwrap().insert(w.clone()) {
            return;
        }
        // The receiver lives as long as dcmgr; a send error only happens during shutdown.
        let _ = self.work.send(w);
    }

    /// A dispatcher took `w`: a change after this point queues it again.
    pub fn taken(&self, w: &Work) {
        self.queued.lock().unwrap().remove(w);
    }

    /// The base URL agents reach dcmgr at: `images.agent_url`, else the listening address.
    pub fn agent_url(&self) -> String {
        if let Some(u) = &self.config.images.agent_url {
            return u.trim_end_matches('/').to_owned();
        }
        let mut a = self.http_addr.get().copied().unwrap_or_else(|| ([127, 0, 0, 1], 9000).into());
        if a.ip().is_unspecified() {
            a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{a}")
    }

    pub fn agent_online(&self, kind: AgentKind, node: &str) -> bool {
        self.agents.read().unwrap().get(&(kind, node.to_owned())).is_some_and(|a| !a.offline)
    }
}

pub type SharedCtx = Arc<Ctx>;
