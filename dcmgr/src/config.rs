//! dcmgr's configuration file (TOML). Unknown keys are an error, so a typo is caught at
//! start rather than silently ignored.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the Web API, e.g. `127.0.0.1:9000`; port 0 picks a free one.
    pub listen: String,
    /// `sqlite://PATH` (created if missing) or `postgres://…`.
    pub database_url: String,
    /// NATS server URL; without it dcmgr only serves in-process agents.
    pub nats_url: Option<String>,
    /// How often agents heartbeat.
    pub heartbeat_interval_ms: u64,
    /// An agent silent for this long is marked offline.
    pub agent_timeout_ms: u64,
    /// How often the reconciler looks for objects that have not converged.
    pub reconcile_interval_ms: u64,
    /// Re-send an ensure when an object has not converged this long after the last one.
    pub resend_after_ms: u64,
    /// A host's router for a network gives its SNAT address back to the external pool
    /// once no instance of the network has been on the host for this long.
    pub router_release_after_ms: u64,
    /// Number of tasks sending ensures to agents.
    pub dispatch_workers: usize,
    /// Bootstrap: if set, an admin account `admin` with this token is created at start.
    pub admin_token: Option<String>,
    /// The site's external network: floating IPs and routers' SNAT addresses come from
    /// its pool. Without it there are no floating IPs and no outbound NAT.
    pub external: Option<ExternalConfig>,
    /// vCPUs the scheduler places per host core: 4.0 lets a 2-core host run eight 1-vCPU
    /// guests. Guests mostly idle, and QEMU/LXC share cores fairly.
    pub cpu_allocation_ratio: f64,
    /// MiB placed per MiB of host memory. 1.0, because memory overcommit ends in the OOM
    /// killer rather than in slowness.
    pub memory_allocation_ratio: f64,
    /// MiB of root disks booked per MiB a host reports for them. 1.0: a disk image's thin
    /// disk may grow to its full size, and a full host file system stops every guest.
    pub disk_allocation_ratio: f64,
    /// Per-host ratios, keyed by host node ID (`[hosts.hn-…]`), for hosts that differ.
    pub hosts: BTreeMap<String, HostOverride>,
    /// Where the scheduler puts a new instance among the hosts with room: `spread` (the
    /// host with the most free memory, then free vCPUs) or `pack` (the fullest host that
    /// still fits, so whole hosts stay free for large instances or to be switched off).
    pub placement: Placement,
    /// The image store and what it accepts.
    pub images: ImagesConfig,
    /// VDC bundles: which other sites' bundles this site imports.
    pub bundles: BundlesConfig,
    /// Default quota of every account (`[quotas]`, e.g. `instances = 20`); a key not
    /// given is unlimited. An admin sets an account's own with
    /// `PUT /api/v1/accounts/{id}/quotas`.
    pub quotas: BTreeMap<vdc_schema::api::QuotaKey, u64>,
    /// API tokens.
    pub auth: AuthConfig,
    /// How long the event log (`GET /api/v1/events`) is kept.
    pub events: EventsConfig,
    /// `GET /metrics` (Prometheus).
    pub metrics: MetricsConfig,
    /// How long the audit log (`GET /api/v1/audit`) is kept.
    pub audit: AuditConfig,
    /// How long what ended (terminated instances, deleted volumes and snapshots,
    /// finished jobs) stays in the database.
    pub retention: RetentionConfig,
    /// The Web API's connections.
    pub http: HttpConfig,
}

/// How many connections the Web API holds, and for how long an idle one: a client
/// holding 19,990 idle connections took every descriptor of dcmgr, and the API and
/// console stopped for every tenant (red team, 2026-12-06).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Connections open at once (default: the process's open-files limit less 1,024 kept
    /// for the database, the bus and files, at most 16,384). Those beyond are answered
    /// 503 and closed.
    pub max_connections: Option<usize>,
    /// Connections open at once from one address (default 1,024).
    pub max_connections_per_source: usize,
    /// A connection that has not sent a whole request head this long after it opened or
    /// after its last answer is closed (default 30 s; slow or idle clients).
    pub header_timeout_secs: u64,
    /// Event streams (`GET /api/v1/events`) open at once per account (default 64); more
    /// are answered 429 `too_many_streams` (the CLI then polls).
    pub event_streams_per_account: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: None,
            max_connections_per_source: 1024,
            header_timeout_secs: 30,
            event_streams_per_account: 64,
        }
    }
}

impl HttpConfig {
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let files = vdc_bus::conn_limits::open_files_limit().unwrap_or(1024 + 16_384);
            (files.saturating_sub(1024) as usize).clamp(64, 16_384)
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// When set, `/metrics` wants `Authorization: Bearer <token>`; open otherwise (it
    /// shows counts and latencies, no IDs or names).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    Spread,
    Pack,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Working tokens (not revoked, not expired) one user may hold in one account: a
    /// tenant cannot mint without end.
    pub max_tokens_per_user: u32,
    /// Requests per second one token may make (and one source address without a valid
    /// token); over it the API answers 429 `rate_limited` with `Retry-After`. Off unless
    /// set: the right number depends on the clients (`vdc-bench` and the test suites make
    /// thousands of calls a second from one token), so the operator chooses it.
    pub rate_limit_per_second: Option<u32>,
    /// Requests a token may make at once above the rate (its bucket's size); defaults to
    /// twice the rate.
    pub rate_limit_burst: Option<u32>,
    /// On PostgreSQL, where several dcmgrs may serve one database, how long a resolved
    /// token is trusted before it is read again: a token revoked through another dcmgr
    /// stops working here within this time. (On SQLite there is one dcmgr and revokes
    /// empty the cache at once.)
    pub token_cache_ttl_ms: u64,
    /// How long a console session (`POST /api/v1/sessions`) works (default 12 hours).
    pub session_ttl_secs: u64,
    /// Live sessions one user keeps in one account; signing in once more revokes the
    /// oldest (default 20).
    pub max_sessions_per_user: u32,
    /// Sign-in attempts per minute, per user name and per source address, whatever
    /// `rate_limit_per_second` says (default 5): password guessing is slow.
    pub signin_per_minute: u32,
    /// Sign-in attempts let through at once above that rate (default 10).
    pub signin_burst: u32,
    /// Sign-in attempts per minute for one user name from all addresses together
    /// (default ten times `signin_per_minute`): the per-name limit counts each address
    /// apart (`signin_per_minute`), so that guesses from one address do not lock the user
    /// out from the others, and this bounds guesses spread over many addresses.
    pub signin_user_per_minute: Option<u32>,
    /// Attempts at once above that rate (default ten times `signin_burst`).
    pub signin_user_burst: Option<u32>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            max_tokens_per_user: 50,
            rate_limit_per_second: None,
            rate_limit_burst: None,
            token_cache_ttl_ms: 2000,
            session_ttl_secs: 12 * 3600,
            max_sessions_per_user: 20,
            signin_per_minute: 5,
            signin_burst: 10,
            signin_user_per_minute: None,
            signin_user_burst: None,
        }
    }
}

impl AuthConfig {
    /// The rate limit as (per second, burst), `None` when off; zero is refused (a limit
    /// that lets nothing through is a typo, not a policy).
    pub fn rate_limit(&self) -> Result<Option<(std::num::NonZeroU32, std::num::NonZeroU32)>, String> {
        let Some(rate) = self.rate_limit_per_second else {
            return match self.rate_limit_burst {
                Some(_) => Err("[auth] rate_limit_burst needs rate_limit_per_second".into()),
                None => Ok(None),
            };
        };
        let rate = std::num::NonZeroU32::new(rate)
            .ok_or("[auth] rate_limit_per_second = 0 lets no request through: leave it out to turn limits off")?;
        let burst = match self.rate_limit_burst {
            Some(b) => std::num::NonZeroU32::new(b).ok_or("[auth] rate_limit_burst must be at least 1")?,
            None => rate.saturating_mul(std::num::NonZeroU32::new(2).unwrap()),
        };
        Ok(Some((rate, burst)))
    }

    /// The limit of one user name's sign-ins from all addresses: (per minute, burst).
    pub fn signin_user_limit(&self) -> Result<(std::num::NonZeroU32, std::num::NonZeroU32), String> {
        let (rate, burst) = self.signin_limit()?;
        let ten = std::num::NonZeroU32::new(10).unwrap();
        let rate = match self.signin_user_per_minute {
            Some(r) => std::num::NonZeroU32::new(r).ok_or("[auth] signin_user_per_minute must be at least 1")?,
            None => rate.saturating_mul(ten),
        };
        let burst = match self.signin_user_burst {
            Some(b) => std::num::NonZeroU32::new(b).ok_or("[auth] signin_user_burst must be at least 1")?,
            None => burst.saturating_mul(ten),
        };
        Ok((rate, burst))
    }

    /// The sign-in limit as (per minute, burst); always on, zero refused.
    pub fn signin_limit(&self) -> Result<(std::num::NonZeroU32, std::num::NonZeroU32), String> {
        let rate = std::num::NonZeroU32::new(self.signin_per_minute)
            .ok_or("[auth] signin_per_minute must be at least 1 (sign-in attempts are always limited)")?;
        let burst = std::num::NonZeroU32::new(self.signin_burst).ok_or("[auth] signin_burst must be at least 1")?;
        if self.session_ttl_secs == 0 {
            return Err("[auth] session_ttl_secs must be at least 1".into());
        }
        if self.max_sessions_per_user == 0 {
            return Err("[auth] max_sessions_per_user must be at least 1".into());
        }
        Ok((rate, burst))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events older than this are pruned (default 7 days): a client away longer is told
    /// what it lost.
    pub retain_secs: u64,
    /// At most this many events are kept (default 1,000,000).
    pub retain_count: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retain_secs: 7 * 24 * 3600, retain_count: 1_000_000 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Entries older than this many days are pruned (default 90).
    pub retain_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { retain_days: 90 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Terminated instances, deleted volumes and snapshots and finished jobs are removed
    /// this many days after they ended (default 30; 0 keeps them for ever). Until then
    /// `GET` by ID and the `state=` filters find them.
    pub ended_days: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { ended_days: 30 }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundlesConfig {
    /// Public keys (64 hex digits, as `vdc bundle key` shows them) of the sites whose
    /// bundles are accepted. This site's own key is always trusted.
    pub trusted_keys: Vec<String>,
}

/// What the scheduler may place on a host: its capacity times the allocation ratios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocatable {
    pub cpus: u64,
    pub memory_mib: u64,
    /// None: the host did not report its disk, and none is booked against it.
    pub disk_mib: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostOverride {
    pub cpu_allocation_ratio: Option<f64>,
    pub memory_allocation_ratio: Option<f64>,
    pub disk_allocation_ratio: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Where image data is kept (content-addressed blobs, and uploads being received).
    /// Default: `images/` beside a SQLite database, else `/var/lib/vdc/images`.
    pub dir: Option<std::path::PathBuf>,
    /// The largest image data accepted (upload or URL import), in bytes.
    pub max_bytes: u64,
    /// The largest disk an image may describe (qemu-img's virtual size), in bytes.
    pub max_virtual_bytes: u64,
    /// Addresses URL imports may reach although they are loopback, link-local, private or
    /// otherwise not public, as CIDRs (e.g. `["127.0.0.1/32"]` for a mirror on this host).
    pub import_allow: Vec<String>,
    /// The ports URL imports may reach on public addresses (as Glance's
    /// `allowed_ports`): 80 and 443 by default, so that an import cannot probe other
    /// services; empty allows any. Addresses in `import_allow` may use any port.
    pub import_ports: Vec<u16>,
    /// A URL import that has not finished after this long fails.
    pub import_timeout_s: u64,
    /// A URL import whose server sends nothing (no answer, no data) for this long fails;
    /// an upload whose client sends nothing for this long is cut (its image stays pending).
    pub import_stall_timeout_s: u64,
    /// Directories whose files operators may register as images (`file://` or a path).
    pub file_dirs: Vec<std::path::PathBuf>,
    /// The base URL hosts fetch image data from (dcmgr's Web API as they reach it, e.g.
    /// `http://dcmgr.internal:9000`). Default: the address dcmgr listens on.
    pub agent_url: Option<String>,
    /// Where blobs are kept: `fs` (in `dir`) or `s3` (the bucket of `[images.s3]`;
    /// `dir` still holds uploads being received and the node key).
    pub store: StoreKind,
    /// The S3-compatible object store of `store = "s3"`.
    pub s3: Option<S3Config>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    #[default]
    Fs,
    S3,
}

/// An S3-compatible bucket holding the image blobs (`blobs/sha256/<hex>` keys).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// e.g. `https://s3.eu-west-1.amazonaws.com` or `http://radosgw.internal:7480`.
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    /// The secret key itself, or (better) `secret_key_file`, a file holding it.
    pub secret_key: Option<String>,
    pub secret_key_file: Option<std::path::PathBuf>,
    /// `endpoint/bucket/key` (most self-hosted servers) rather than `bucket.endpoint/key`.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// Blobs larger than this go up in parts of this size (MiB, 5 to 5120).
    #[serde(default = "default_part_mib")]
    pub part_size_mib: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn yes() -> bool {
    true
}

fn default_part_mib() -> u64 {
    64
}

// By hand: the secret stays out of logs and error messages.
impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &self.secret_key.as_ref().map(|_| "…"))
            .field("secret_key_file", &self.secret_key_file)
            .field("path_style", &self.path_style)
            .field("part_size_mib", &self.part_size_mib)
            .finish()
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            dir: None,
            max_bytes: 64 << 30,
            max_virtual_bytes: 2 << 40,
            import_allow: vec![],
            import_ports: vec![80, 443],
            import_timeout_s: 3600,
            import_stall_timeout_s: 60,
            file_dirs: vec![],
            agent_url: None,
            store: StoreKind::Fs,
            s3: None,
        }
    }
}

impl Config {
    /// The image store's directory (see [`ImagesConfig::dir`]).
    pub fn images_dir(&self) -> std::path::PathBuf {
        if let Some(d) = &self.images.dir {
            return d.clone();
        }
        match self.database_url.strip_prefix("sqlite://") {
            Some(p) => {
                let p = std::path::Path::new(p.split('?').next().unwrap_or(p));
                p.parent().unwrap_or(std::path::Path::new(".")).join("images")
            }
            None => "/var/lib/vdc/images".into(),
        }
    }

    /// `images.import_allow` as networks.
    pub fn import_allow(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.images
            .import_allow
            .iter()
            .map(|s| s.parse().map_err(|e| format!("images.import_allow {s:?}: {e}")))
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// e.g. `203.0.113.0/24`
    pub cidr: String,
    pub gateway: String,
    /// The first and last address handed out.
    pub pool_start: String,
    pub pool_end: String,
    /// Addresses of the pool that floating IPs may not take: kept for the routers'
    /// outbound SNAT addresses (one per network per host with its instances), which are
    /// taken when an instance comes up. Default: a sixteenth of the pool.
    #[serde(default)]
    pub router_reserve: Option<u32>,
}

impl ExternalConfig {
    /// The pool as a range of addresses, checked against the network.
    pub fn pool(&self) -> Result<(std::net::Ipv4Addr, std::net::Ipv4Addr, ipnet::Ipv4Net), String> {
        let net: ipnet::Ipv4Net = self.cidr.parse().map_err(|e| format!("external.cidr {:?}: {e}", self.cidr))?;
        let ip = |what: &str, s: &str| -> Result<std::net::Ipv4Addr, String> {
            let a: std::net::Ipv4Addr = s.parse().map_err(|e| format!("external.{what} {s:?}: {e}"))?;
            if !net.contains(&a) {
                return Err(format!("external.{what} {a} is outside external.cidr {net}"));
            }
            Ok(a)
        };
        let (a, b) = (ip("pool_start", &self.pool_start)?, ip("pool_end", &self.pool_end)?);
        ip("gateway", &self.gateway)?;
        if a > b {
            return Err(format!("external.pool_start {a} is after external.pool_end {b}"));
        }
        Ok((a, b, net))
    }

    /// The network and its gateway, checked as [`Self::pool`] checks them.
    pub fn network(&self) -> Result<(ipnet::Ipv4Net, std::net::Ipv4Addr), String> {
        let (_, _, net) = self.pool()?;
        let gateway = self.gateway.parse().map_err(|e| format!("external.gateway {:?}: {e}", self.gateway))?;
        Ok((net, gateway))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9000".into(),
            database_url: "sqlite://vdc.db".into(),
            nats_url: None,
            heartbeat_interval_ms: 2000,
            agent_timeout_ms: 10_000,
            reconcile_interval_ms: 2000,
            resend_after_ms: 5000,
            router_release_after_ms: 60_000,
            dispatch_workers: 4,
            admin_token: None,
            external: None,
            cpu_allocation_ratio: 4.0,
            memory_allocation_ratio: 1.0,
            disk_allocation_ratio: 1.0,
            hosts: BTreeMap::new(),
            placement: Placement::Spread,
            images: ImagesConfig::default(),
            bundles: BundlesConfig::default(),
            auth: AuthConfig::default(),
            quotas: BTreeMap::new(),
            events: EventsConfig::default(),
            metrics: MetricsConfig::default(),
            audit: AuditConfig::default(),
            retention: RetentionConfig::default(),
            http: HttpConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid configuration in {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
}

impl Config {
    /// What the scheduler may place on host `id` with `cpus` cores, `memory_mib` of
    /// memory and `disk_mib` for root disks (if it said), rounded down.
    pub fn allocatable(&self, id: &str, cpus: u64, memory_mib: u64, disk_mib: Option<u64>) -> Allocatable {
        let o = self.hosts.get(id);
        let cpu = o.and_then(|o| o.cpu_allocation_ratio).unwrap_or(self.cpu_allocation_ratio);
        let mem = o.and_then(|o| o.memory_allocation_ratio).unwrap_or(self.memory_allocation_ratio);
        let disk = o.and_then(|o| o.disk_allocation_ratio).unwrap_or(self.disk_allocation_ratio);
        Allocatable {
            cpus: (cpus as f64 * cpu).floor() as u64,
            memory_mib: (memory_mib as f64 * mem).floor() as u64,
            disk_mib: disk_mib.map(|d| (d as f64 * disk).floor() as u64),
        }
    }

    /// Refuses ratios that would make placement meaningless.
    pub fn check_ratios(&self) -> Result<(), String> {
        let ok = |what: &str, r: f64| {
            if r.is_finite() && (0.1..=64.0).contains(&r) {
                Ok(())
            } else {
                Err(format!("{what} = {r} is out of range: use a number from 0.1 to 64"))
            }
        };
        ok("cpu_allocation_ratio", self.cpu_allocation_ratio)?;
        ok("memory_allocation_ratio", self.memory_allocation_ratio)?;
        ok("disk_allocation_ratio", self.disk_allocation_ratio)?;
        for (id, o) in &self.hosts {
            if let Some(r) = o.disk_allocation_ratio {
                ok(&format!("hosts.{id}.disk_allocation_ratio"), r)?;
            }
            if let Some(r) = o.cpu_allocation_ratio {
                ok(&format!("hosts.{id}.cpu_allocation_ratio"), r)?;
            }
            if let Some(r) = o.memory_allocation_ratio {
                ok(&format!("hosts.{id}.memory_allocation_ratio"), r)?;
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: p, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_s3_store_is_configured_in_images_s3_and_its_secret_is_not_shown() {
        let c: Config = toml::from_str(
            "[images]\nstore = \"s3\"\n[images.s3]\nendpoint = \"http://127.0.0.1:7480\"\nbucket = \"b\"\n\
             access_key = \"AK\"\nsecret_key = \"SEKRIT\"\n",
        )
        .unwrap();
        assert_eq!(c.images.store, StoreKind::S3);
        let s3 = c.images.s3.as_ref().unwrap();
        assert_eq!((s3.region.as_str(), s3.path_style, s3.part_size_mib), ("us-east-1", true, 64));
        assert!(!format!("{c:?}").contains("SEKRIT"));
        assert_eq!(toml::from_str::<Config>("").unwrap().images.store, StoreKind::Fs);
        assert!(toml::from_str::<Config>("[images]\nstore = \"nfs\"").is_err());
        assert!(toml::from_str::<Config>(
            "[images.s3]\nendpoint = \"x\"\nbucket = \"b\"\naccess_key = \"a\"\nsekret = 1"
        )
        .is_err());
    }

    #[test]
    fn quotas_are_named_keys_with_counts() {
        use vdc_schema::api::QuotaKey;
        let c: Config = toml::from_str("[quotas]\ninstances = 5\nvolume_gib = 100\n").unwrap();
        assert_eq!(c.quotas.get(&QuotaKey::Instances), Some(&5));
        assert_eq!(c.quotas.get(&QuotaKey::VolumeGib), Some(&100));
        assert_eq!(c.quotas.get(&QuotaKey::Vcpus), None);
        let e = toml::from_str::<Config>("[quotas]\ninstance = 5").unwrap_err().to_string();
        assert!(e.contains("instance") && e.contains("instances"), "{e}");
        assert!(toml::from_str::<Config>("[quotas]\nvcpus = -1").is_err());
        let example: Config = toml::from_str(include_str!("../../packaging/examples/dcmgr.toml")).unwrap();
        assert_eq!(example.quotas.len(), QuotaKey::ALL.len(), "the example names every quota");
    }

    #[test]
    fn ratios_default_to_cpu_4_memory_1_and_hosts_can_differ() {
        let c: Config = toml::from_str(
            "[hosts.hn-big]\ncpu_allocation_ratio = 1.5\n[hosts.hn-mem]\nmemory_allocation_ratio = 1.5\n\
             [hosts.hn-disk]\ndisk_allocation_ratio = 1.5\n",
        )
        .unwrap();
        c.check_ratios().unwrap();
        let a = |id, cpus, memory_mib, disk_mib| {
            let a: Allocatable = c.allocatable(id, cpus, memory_mib, disk_mib);
            (a.cpus, a.memory_mib, a.disk_mib)
        };
        assert_eq!(a("hn-any", 2, 2048, Some(1000)), (8, 2048, Some(1000)));
        assert_eq!(a("hn-big", 3, 1000, None), (4, 1000, None));
        assert_eq!(a("hn-mem", 2, 1000, Some(10)), (8, 1500, Some(10)));
        assert_eq!(a("hn-disk", 2, 1000, Some(1000)), (8, 1000, Some(1500)));
        let bad: Config = toml::from_str("cpu_allocation_ratio = 0.0").unwrap();
        assert!(bad.check_ratios().unwrap_err().contains("cpu_allocation_ratio"));
        let bad: Config = toml::from_str("[hosts.hn-x]\nmemory_allocation_ratio = -1.0").unwrap();
        assert!(bad.check_ratios().unwrap_err().contains("hosts.hn-x"));
        assert!(toml::from_str::<Config>("[hosts.hn-x]\ncpu_ratio = 2.0").is_err());
    }

    #[test]
    fn rate_limits_are_off_unless_set_and_zero_is_refused() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.auth.rate_limit().unwrap(), None);
        let c: Config = toml::from_str("[auth]\nrate_limit_per_second = 10").unwrap();
        let (rate, burst) = c.auth.rate_limit().unwrap().unwrap();
        assert_eq!((rate.get(), burst.get()), (10, 20));
        let c: Config = toml::from_str("[auth]\nrate_limit_per_second = 0").unwrap();
        assert!(c.auth.rate_limit().unwrap_err().contains("rate_limit_per_second = 0"));
        let c: Config = toml::from_str("[auth]\nrate_limit_burst = 5").unwrap();
        assert!(c.auth.rate_limit().unwrap_err().contains("needs rate_limit_per_second"));
    }
}
