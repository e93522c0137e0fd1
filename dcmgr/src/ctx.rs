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

/// Who is calling the API: a user acting in one account through one token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: AccountId,
    /// A cloud operator (and the token has no role cap): see `app::authz`.
    pub admin: bool,
    pub user_id: UserId,
    /// The token of the call (none for dcmgr itself).
    pub token_id: Option<TokenId>,
    /// The role the call acts with in `account_id`: the user's, capped by the token's.
    pub role: vdc_schema::state::Role,
    /// The token's own cap, which tokens it mints inherit.
    pub token_role: Option<vdc_schema::state::Role>,
    /// When the token stops working (checked on every call, cached or not).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// An admin acting in another account (`X-Vdc-Account`): its views are that
    /// account's, its event stream too.
    pub acting_in: bool,
}

impl Caller {
    /// dcmgr itself acting as an admin user in `account_id` (start-up work).
    pub fn system(account_id: AccountId) -> Caller {
        Caller {
            account_id,
            admin: true,
            // No user row: nothing done as dcmgr itself is a user's.
            user_id: "u-system".parse().expect("a valid user ID"),
            token_id: None,
            role: vdc_schema::state::Role::Owner,
            token_role: None,
            expires_at: None,
            acting_in: false,
        }
    }
}

/// Resolved tokens. Every eviction bumps `epoch`; a caller read from the database is
/// cached only if no eviction happened since the read began, so a token revoked while
/// it was being resolved is not cached as valid. With a `ttl` (several controllers on one
/// database), an entry is read again once it is older: a revoke made through another
/// dcmgr stops the token here within the TTL.
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: HashMap<String, (Caller, std::time::Instant)>,
    epoch: u64,
    ttl: Option<std::time::Duration>,
}

impl TokenCache {
    pub fn with_ttl(ttl: Option<std::time::Duration>) -> TokenCache {
        TokenCache { ttl, ..Default::default() }
    }
    pub fn get(&self, hash: &str) -> Option<&Caller> {
        let (caller, at) = self.entries.get(hash)?;
        match self.ttl {
            Some(ttl) if at.elapsed() >= ttl => None,
            _ => Some(caller),
        }
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// Caches `caller` unless something was evicted since `epoch`.
    pub fn insert_since(&mut self, epoch: u64, hash: String, caller: Caller) {
        if self.epoch == epoch {
            self.entries.insert(hash, (caller, std::time::Instant::now()));
        }
    }
    pub fn remove(&mut self, hash: &str) {
        self.epoch += 1;
        self.entries.remove(hash);
    }
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &mut Caller) -> bool) {
        self.epoch += 1;
        self.entries.retain(|h, (c, _)| keep(h, c));
    }
}

/// An object whose desired state must be pushed to its agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Work {
    Instance(InstanceId),
    Interface(VifId),
    Volume(VolumeId),
    Snapshot(SnapshotId),
    /// The interfaces a change of the group reaches (its rules: its members; its members:
    /// the members of groups referring to it).
    SecurityGroup(SecurityGroupId, crate::datastore::interface::GroupChange),
    /// Unplug an interface from a host it is no longer on (gone from the model, or its
    /// instance evacuated), unless placed there again after generation `u64` (0: always).
    UnplugInterface(VifId, String, u64),
    /// Everything placed on an agent that just (re)registered.
    NodeSync(AgentKind, String),
}

/// Hooks for tests and benchmarks: called with each ensure as it leaves dcmgr.
pub type EnsureObserver = Arc<dyn Fn(&str) + Send + Sync>;

pub struct Ctx {
    pub db: Pool,
    pub bus: Arc<dyn Transport>,
    pub config: Config,
    /// token hash → caller. On SQLite tokens are only ever added or revoked through this
    /// process; on PostgreSQL entries expire after `[auth] token_cache_ttl_ms`.
    pub tokens: RwLock<TokenCache>,
    /// The hosts' free room, for placement (see [`crate::app::room`]).
    pub room: crate::app::room::Room,
    pub work: mpsc::UnboundedSender<Work>,
    /// Work queued and not yet taken by a dispatcher: the same object is queued once
    /// (a burst of changes to one group sends its members one ensure each, not one per change).
    pub queued: std::sync::Mutex<std::collections::HashSet<Work>>,
    /// (kind, node id) → last heartbeat (ms) and whether dcmgr has marked it offline.
    pub agents: RwLock<HashMap<(AgentKind, String), AgentSeen>>,
    pub ensure_observer: Option<EnsureObserver>,
    /// Where image data is kept.
    pub blobs: Arc<dyn crate::blobs::BlobStore>,
    /// Images receiving their data now, each with what cancels it (its image deleted).
    pub ingesting: std::sync::Mutex<HashMap<ImageId, tokio_util::sync::CancellationToken>>,
    /// The bundle exports running in this process (`app::bundle_data::ExportRun`): the
    /// sweep of cut-off exports leaves them alone.
    pub exports: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Cancelled when this dcmgr stops: its background work (URL imports) ends with it.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The chunk lists of blobs captured lately (`blobs::ChunkLists`), for a bundle export.
    pub chunk_lists: crate::blobs::ChunkLists,
    /// This process's part of the blob locks: take them with [`crate::app::blob_refs::hold`].
    pub blob_refs: crate::app::blob_refs::Stripes,
    /// Signs the credentials agents fetch blobs with (see `app::node_auth`); the site's,
    /// shared by its dcmgrs (`app::site_secret`).
    pub node_key: [u8; 32],
    /// This site's bundle signing key, shared by its dcmgrs (`app::site_secret`).
    pub site_key: vdc_bundle::SigningKey,
    /// Keys whose bundles are imported: this site's and `[bundles] trusted_keys`.
    pub trusted_keys: Vec<vdc_bundle::VerifyingKey>,
    /// The address the Web API listens on, once bound.
    pub http_addr: std::sync::OnceLock<std::net::SocketAddr>,
    /// The event stream's pump and subscribers (`app::event`).
    pub events: crate::app::event::Hub,
    /// Instances as the API shows them, while current (`app::views`).
    pub views: crate::app::views::Views,
    /// Request rate limits, when `[auth] rate_limit_per_second` is set.
    pub rate_limits: Option<crate::app::rate_limit::RateLimits>,
    /// Writes the audit log in batches (`app::audit::Writer`).
    pub audit: crate::app::audit::Writer,
    /// Marks ensures sent in batches (`controller::sent::Marks`).
    pub sent: crate::controller::sent::Marks,
    /// This dcmgr's PostgreSQL advisory locks, on one connection: set when the database
    /// may be shared with other dcmgrs ([`Ctx::shared`]).
    pub locks: Option<crate::datastore::locks::SharedLocks>,
    /// This dcmgr holds the leader lock (`controller::leader`); always true when not shared.
    pub leader: std::sync::atomic::AtomicBool,
    /// Sign-in attempts, per source address and per user name from each address
    /// (`[auth] signin_per_minute`, `signin_burst`): always on.
    pub signin_limits: crate::app::rate_limit::RateLimits,
    /// Sign-in attempts per user name from all addresses (`[auth] signin_user_*`).
    pub signin_user_limits: crate::app::rate_limit::RateLimits,
    /// Creates waiting for SQLite's writer, recorded together (`app::instance::Creates`).
    pub creates: crate::app::instance::Creates,
    /// Accounts whose instance creates quotas limit (`app::quota::Limited`).
    pub limited: crate::app::quota::Limited,
    /// Event streams open per account (`[http] event_streams_per_account`).
    pub streams: std::sync::Arc<vdc_bus::conn_limits::ConnLimits<String>>,
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
    /// The database may be shared with other dcmgrs (PostgreSQL): duties that must be
    /// done once (reconciling, recording agents online or offline) wait for `leader`.
    pub fn shared(&self) -> bool {
        self.locks.is_some()
    }

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

    /// Whether this dcmgr does the once-only duties now (see `controller::leader`).
    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn agent_online(&self, kind: AgentKind, node: &str) -> bool {
        self.agents.read().unwrap().get(&(kind, node.to_owned())).is_some_and(|a| !a.offline)
    }
}

pub type SharedCtx = Arc<Ctx>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cache_entries_expire_after_the_ttl_only_when_one_is_set() {
        let caller = Caller::system(AccountId::generate());
        let mut shared = TokenCache::with_ttl(Some(std::time::Duration::from_millis(30)));
        let mut single = TokenCache::default();
        shared.insert_since(0, "h".into(), caller.clone());
        single.insert_since(0, "h".into(), caller);
        assert!(shared.get("h").is_some());
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert!(shared.get("h").is_none(), "read again after the TTL");
        assert!(single.get("h").is_some(), "no TTL on one dcmgr");
    }
}
