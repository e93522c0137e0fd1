//! The test harness: every test gets a fresh stack — its own database (a SQLite file, or
//! a new PostgreSQL database), dcmgr on port 0 and simulated agents on an in-process bus —
//! and tears it down afterwards.
//!
//! PostgreSQL tests use `VDC_TEST_PG_URL` (a superuser URL of a running server;
//! `tests/run.sh` starts one), else a private server the harness starts for the test
//! process and removes when it exits ([`pg`]). Without PostgreSQL installed they fail
//! rather than skip.

pub mod floor;
pub mod pg;
pub mod procs;
pub mod s3;

use std::sync::Arc;
use std::time::{Duration, Instant};
use vdc_bus::sim::SimKnobs;
use vdc_bus::{AgentHandle, InProc, Transport};
use vdc_cli::client::Client;
use vdc_dcmgr::ctx::EnsureObserver;
use vdc_dcmgr::{server, Config, Dcmgr};
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::{HypervisorKind, ImageFormat, InstanceState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct StackOptions {
    pub db: Db,
    pub hosts: usize,
    pub host_cpus: u32,
    pub host_memory_mib: u64,
    /// MiB of root disks each host reports (None: reports none, as an older hva).
    pub host_disk_mib: Option<u64>,
    pub hypervisors: Vec<HypervisorKind>,
    pub storage_nodes: usize,
    pub sim: SimKnobs,
    pub agent_timeout_ms: u64,
    /// dcmgr's heartbeat, reconcile and resend periods as configured by default (2 s, 2 s,
    /// 5 s) instead of the tests' short ones (0.2 s, 0.2 s, 0.5 s), which would have a
    /// benchmark measure extra heartbeats and ensures sent again that no site sends.
    pub default_timers: bool,
    /// dcmgr's `router_release_after_ms`.
    pub router_release_after_ms: u64,
    pub ensure_observer: Option<EnsureObserver>,
    /// Journals on disk (as in production) instead of in memory.
    pub journals_on_disk: bool,
    /// Run hva with the real libvirt driver instead of the simulated one.
    pub libvirt: Option<LibvirtSetup>,
    /// Run sta with a real backend instead of the simulated one.
    pub real_storage: Option<RealStorageSetup>,
    /// Run nwagent with Open vSwitch (an OVS of the test's own per host, each in a
    /// network namespace of its own) instead of the simulated one; libvirt hosts then
    /// plug taps and move them into their host's namespace.
    pub real_network: Option<RealNetworkSetup>,
    /// dcmgr's external network (floating IPs).
    pub external: Option<vdc_dcmgr::config::ExternalConfig>,
    /// dcmgr's CPU overcommit (its default, 4.0, unless a test says otherwise).
    pub cpu_allocation_ratio: f64,
    /// dcmgr's placement policy (spread unless a test says otherwise).
    pub placement: vdc_dcmgr::config::Placement,
    /// dcmgr's per-host ratios, by host node ID.
    pub host_overrides: std::collections::BTreeMap<String, vdc_dcmgr::config::HostOverride>,
    /// dcmgr's image store settings; its directory defaults to one in the stack's
    /// temporary directory.
    pub images: vdc_dcmgr::config::ImagesConfig,
    /// dcmgr's bundle trust list.
    pub bundles: vdc_dcmgr::config::BundlesConfig,
    /// dcmgr's token settings (the cap per user).
    pub auth: vdc_dcmgr::config::AuthConfig,
    /// dcmgr's `[http]` (connection and stream limits).
    pub http: vdc_dcmgr::config::HttpConfig,
    /// dcmgr's default quotas (`[quotas]`); none: unlimited.
    pub quotas: std::collections::BTreeMap<vdc_schema::api::QuotaKey, u64>,
    /// dcmgr's `[metrics]` (a token on /metrics).
    pub metrics: vdc_dcmgr::config::MetricsConfig,
    /// The bus of dcmgr and the stack's agents, instead of the in-process one: NATS when
    /// agents of other processes join (the large site's benchmark).
    pub transport: Option<Arc<dyn Transport>>,
    /// A database made before the stack starts (an upgrade's), instead of a new one.
    pub existing: Option<Existing>,
}

/// A database made before the stack starts: its dcmgr migrates and serves it, and its
/// agents take the node IDs it records (as agents do across an upgrade).
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub database_url: String,
    /// On the tests' PostgreSQL: (the admin URL, the database's name), dropped with the stack.
    pub pg: Option<(String, String)>,
    pub host_ids: Vec<String>,
    pub storage_ids: Vec<String>,
    /// The agents' data directories as their hosts kept them (`KIND/NODE/…`, as
    /// `journals_on_disk` lays them out), copied in before they start.
    pub agent_dirs: Option<std::path::PathBuf>,
}

/// Where real-network hosts keep their OVS, and the prefix (unique per test) of their
/// namespaces. Every host is a network namespace of its own, `<prefix>-h<i>`, with its
/// own ovsdb-server and ovs-vswitchd inside (bridge `br-int`) and its service
/// namespaces named `<prefix>-h<i>-…`; guests' taps are moved there. Nothing of it is in
/// the machine's own namespace, so tests run beside `vdc up` or another OVS.
#[derive(Clone, Debug)]
pub struct RealNetworkSetup {
    pub root: std::path::PathBuf,
    pub prefix: String,
    /// Join the hosts (two) by an underlay veth (tunnel addresses 10.251.0.1 and .2), so
    /// traffic between them crosses a real VXLAN overlay. Without it each host stands
    /// alone (tunnel address 127.0.0.1, no peers).
    pub underlay: bool,
}

impl RealNetworkSetup {
    pub fn host_netns(&self, i: usize) -> String {
        format!("{}-h{i}", self.prefix)
    }
}

/// A real storage node: its backend, and the tgtd it exports through (None: only local
/// attachments to host 0).
#[derive(Clone, Debug)]
pub struct RealStorageSetup {
    pub backend: vdc_sta::backend::BackendConfig,
    pub iscsi: Option<(u16, String)>,
    pub data_dir: std::path::PathBuf,
}

/// Where a libvirt-backed test host keeps its files. The root is world-traversable
/// (QEMU runs as its own user) and unique per test; [`Stack::stop`] removes it.
#[derive(Clone, Debug)]
pub struct LibvirtSetup {
    pub tiny_image_dir: std::path::PathBuf,
    pub root: std::path::PathBuf,
    pub stop_timeout: Duration,
    pub kvm_probe_timeout: Duration,
}

impl LibvirtSetup {
    /// Uses `VDC_TINY_IMAGE_DIR` (tests/run.sh builds the image there).
    pub fn from_env() -> LibvirtSetup {
        let dir = std::env::var_os("VDC_TINY_IMAGE_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| {
            panic!("VDC_TINY_IMAGE_DIR is not set: run the tests with tests/run.sh, which builds the tiny image")
        });
        assert!(dir.join("vmlinuz").exists(), "{} holds no tiny image", dir.display());
        let root =
            std::path::PathBuf::from(format!("/var/lib/vdc-test-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&root).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        LibvirtSetup {
            tiny_image_dir: dir,
            root,
            stop_timeout: Duration::from_secs(3),
            kvm_probe_timeout: Duration::ZERO,
        }
    }

    pub fn config(&self, node: &str) -> vdc_hva::libvirt::LibvirtConfig {
        vdc_hva::libvirt::LibvirtConfig {
            data_dir: self.root.join(node),
            builtin_images: Some(self.tiny_image_dir.clone()),
            qemu_uri: "qemu:///system".into(),
            lxc_uri: "lxc:///system".into(),
            stop_timeout: self.stop_timeout,
            poll_interval: Duration::from_millis(300),
            bridge: None,
            initiator: String::new(),
            taps: false,
            tap_netns: None,
            taps_from_netns: None,
            image_cache_max_bytes: None,
            idmap: Some(vdc_bus::idmap::IdMap::DEFAULT),
        }
    }
}

impl StackOptions {
    pub fn new(db: Db) -> Self {
        StackOptions {
            db,
            hosts: 2,
            host_cpus: 8,
            host_memory_mib: 16384,
            host_disk_mib: Some(1 << 20),
            hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu, HypervisorKind::Lxc],
            storage_nodes: 1,
            sim: SimKnobs { delay: Duration::from_millis(20), fail_rate: 0.0, drop_rate: 0.0 },
            agent_timeout_ms: 1500,
            default_timers: false,
            router_release_after_ms: 60_000,
            ensure_observer: None,
            journals_on_disk: true,
            libvirt: None,
            real_storage: None,
            real_network: None,
            external: None,
            cpu_allocation_ratio: vdc_dcmgr::Config::default().cpu_allocation_ratio,
            host_overrides: Default::default(),
            placement: vdc_dcmgr::config::Placement::Spread,
            // Where the suites' operator images claim to be.
            images: vdc_dcmgr::config::ImagesConfig {
                file_dirs: vec!["/var/lib/vdc/images".into()],
                ..Default::default()
            },
            bundles: Default::default(),
            auth: Default::default(),
            http: Default::default(),
            quotas: Default::default(),
            metrics: Default::default(),
            transport: None,
            existing: None,
        }
    }
}

pub struct HostAgents {
    pub node_id: String,
    pub hva: Option<AgentHandle>,
    pub nw: Option<AgentHandle>,
    /// Set for simulated hosts.
    pub hva_driver: Option<Arc<vdc_hva::sim::SimHypervisor>>,
    /// Set for libvirt hosts.
    pub libvirt: Option<Arc<vdc_hva::libvirt::LibvirtHypervisor>>,
    /// Set for simulated networking.
    pub nw_driver: Option<Arc<vdc_nwagent::sim::SimNetwork>>,
    /// Set for real networking: the driver, and the host (a namespace `Host` with its
    /// own OVS), kept alive here.
    pub ovs: Option<(Arc<vdc_nwagent::ovs::OvsNetwork>, Box<dyn std::any::Any + Send + Sync>)>,
    /// Set for real networking: how nwagent was started (to start it again).
    pub ovs_cfg: Option<vdc_nwagent::ovs::OvsConfig>,
}

pub enum HvaDriver {
    Sim(Arc<vdc_hva::sim::SimHypervisor>),
    Libvirt(Arc<vdc_hva::libvirt::LibvirtHypervisor>),
}

type SplitDriver = (Option<Arc<vdc_hva::sim::SimHypervisor>>, Option<Arc<vdc_hva::libvirt::LibvirtHypervisor>>);

impl HvaDriver {
    fn split(self) -> SplitDriver {
        match self {
            HvaDriver::Sim(d) => (Some(d), None),
            HvaDriver::Libvirt(d) => (None, Some(d)),
        }
    }
}

pub struct Stack {
    pub dcmgr: Option<Dcmgr>,
    pub admin: Client,
    pub admin_token: String,
    /// The in-process bus (for the tests that drop or inject messages), which dcmgr and
    /// the agents use unless the options name a transport.
    pub bus: Arc<InProc>,
    transport: Arc<dyn Transport>,
    pub hosts: Vec<HostAgents>,
    pub storage: Vec<(String, Option<AgentHandle>)>,
    /// A public image every account can boot (qemu, kvm and lxc).
    pub image: ImageId,
    pub opts: StackOptions,
    pub tmp: tempfile::TempDir,
    pub database_url: String,
    pg: Option<(String, String)>,
}

/// Copies the files under `from` to the same paths under `to`.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// A fresh database on the test PostgreSQL ([`pg::admin_url`]): (its URL, the admin URL,
/// its name).
pub async fn create_pg_database() -> anyhow::Result<(String, String, String)> {
    use sqlx::Connection;
    // The first call may start the private server: a few seconds of blocking work.
    let admin = match tokio::task::spawn_blocking(pg::admin_url).await {
        Ok(url) => url,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => anyhow::bail!("{e}"),
    };
    let name = format!("vdct_{}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    conn.close().await?;
    let (base, _) = admin.rsplit_once('/').expect("VDC_TEST_PG_URL ends with /DBNAME");
    Ok((format!("{base}/{name}"), admin, name))
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Stack {
        Self::try_start(opts).await.expect("test stack starts")
    }

    pub async fn try_start(mut opts: StackOptions) -> anyhow::Result<Stack> {
        let tmp = tempfile::tempdir()?;
        opts.images.dir.get_or_insert_with(|| tmp.path().join("images"));
        if let Some(lv) = &opts.libvirt {
            opts.images.file_dirs.push(lv.tiny_image_dir.clone());
        }
        let (database_url, pg) = match (&opts.existing, opts.db) {
            (Some(e), _) => (e.database_url.clone(), e.pg.clone()),
            (None, Db::Sqlite) => (format!("sqlite://{}", tmp.path().join("vdc.db").display()), None),
            (None, Db::Postgres) => {
                let (url, admin, name) = create_pg_database().await?;
                (url, Some((admin, name)))
            }
        };
        let bus = InProc::new();
        let transport = opts.transport.clone().unwrap_or_else(|| bus.clone());
        let admin_token = "vdc_test_admin_token".to_owned();
        let dcmgr = start_dcmgr(&database_url, &transport, &opts, &admin_token).await?;
        let admin = Client::new(dcmgr.url(), &admin_token);
        let mut stack = Stack {
            dcmgr: Some(dcmgr),
            admin,
            admin_token,
            bus,
            transport,
            hosts: vec![],
            storage: vec![],
            image: "img-placeholder".parse()?,
            opts: opts.clone(),
            tmp,
            database_url,
            pg,
        };
        // (If anything below fails, dropping `stack` removes what was made.)
        if let Some(rn) = &opts.real_network {
            anyhow::ensure!(!rn.underlay || opts.hosts == 2, "the underlay joins two hosts: use 2 hosts");
            for i in 0..opts.hosts {
                let ns = rn.host_netns(i);
                vdc_nwagent::testing::sh("ip", &["netns", "add", &ns])?;
                vdc_nwagent::testing::ns(&ns, &["ip", "link", "set", "lo", "up"])?;
            }
            if rn.underlay {
                vdc_nwagent::testing::underlay(&rn.host_netns(0), &rn.host_netns(1))?;
            }
        }
        let existing = opts.existing.clone().unwrap_or_default();
        if let Some(from) = &existing.agent_dirs {
            copy_tree(from, stack.tmp.path())?;
        }
        for i in 0..opts.hosts {
            let node_id = existing.host_ids.get(i).cloned().unwrap_or_else(|| HostNodeId::generate().to_string());
            let host = stack.start_host(&node_id, i).await?;
            stack.hosts.push(host);
        }
        for i in 0..opts.storage_nodes {
            let node_id = existing.storage_ids.get(i).cloned().unwrap_or_else(|| StorageNodeId::generate().to_string());
            let h = stack.start_storage(&node_id, i).await?;
            stack.storage.push((node_id, Some(h)));
        }
        stack.wait_nodes_online().await?;
        // A kernel image: QEMU and KVM boot it; LXC boots tar and dir images only. An
        // existing database has it from the stack that made it.
        let vms = vec![HypervisorKind::Qemu, HypervisorKind::Kvm];
        let tiny = builtin_tiny_image(vms);
        stack.image = match opts.existing {
            Some(_) => {
                let all = stack.admin.list_all_images().await?;
                all.into_iter()
                    .find(|i| i.name == tiny.name)
                    .ok_or_else(|| anyhow::anyhow!("no image {:?}", tiny.name))?
                    .id
            }
            None => stack.admin.create_image(&tiny).await?.id,
        };
        Ok(stack)
    }

    fn agent_dir(&self, kind: &str, node: &str) -> Option<std::path::PathBuf> {
        self.opts.journals_on_disk.then(|| self.tmp.path().join(kind).join(node))
    }

    async fn start_hva(&self, node_id: &str, index: usize) -> anyhow::Result<(AgentHandle, HvaDriver)> {
        let bus = self.transport.clone();
        let opts = vdc_hva::HvaOptions {
            node_id: node_id.to_owned(),
            cpus: self.opts.host_cpus,
            memory_mib: self.opts.host_memory_mib,
            hypervisors: self.opts.hypervisors.clone(),
            data_dir: self.agent_dir("hva", node_id),
            sim: self.opts.sim,
            disk_mib: self.opts.host_disk_mib,
        };
        match &self.opts.libvirt {
            None => {
                let (h, d) = vdc_hva::start_sim(bus, opts).await?;
                Ok((h, HvaDriver::Sim(d)))
            }
            Some(lv) => {
                let mut cfg = lv.config(node_id);
                cfg.taps = self.opts.real_network.is_some();
                cfg.tap_netns = self.opts.real_network.as_ref().map(|r| r.host_netns(index));
                let (c2, probe) = (cfg.clone(), lv.kvm_probe_timeout);
                let detected = tokio::task::spawn_blocking(move || vdc_hva::detect(&c2, probe)).await?;
                let (h, d) = vdc_hva::start_libvirt(bus, opts, cfg, detected).await?;
                Ok((h, HvaDriver::Libvirt(d)))
            }
        }
    }

    async fn start_host(&self, node_id: &str, index: usize) -> anyhow::Result<HostAgents> {
        let bus = self.transport.clone();
        let (hva, driver) = self.start_hva(node_id, index).await?;
        let (hva_driver, libvirt) = driver.split();
        if let Some(rn) = &self.opts.real_network {
            let dir = rn.root.join(node_id);
            let ns = rn.host_netns(index);
            // The host's namespace with its own OVS (and, joined, `br-phy` on the underlay
            // holding the tunnel address). Dropping the host stops its OVS and deletes the
            // namespace.
            let host = if rn.underlay {
                vdc_nwagent::testing::Host::start(&ns, &dir, "ul0", &format!("10.251.0.{}", index + 1))?
            } else {
                let switch = vdc_nwagent::testing::Switch::start(Some(&ns), &dir)?;
                vdc_nwagent::testing::Host {
                    netns: ns.clone(),
                    dir: dir.clone(),
                    tunnel_ip: "127.0.0.1".into(),
                    switch: Some(switch),
                }
            };
            let cfg = vdc_nwagent::ovs::OvsConfig {
                db_socket: host.db_socket(),
                rundir: host.dir.clone(),
                bridge: "br-int".into(),
                tunnel_ip: host.tunnel_ip.parse()?,
                data_dir: dir.join("nwagent"),
                plug_timeout: Duration::from_secs(120),
                host_netns: Some(ns.clone()),
                service_prefix: ns,
                external_bridge: None,
            };
            let keep: Box<dyn std::any::Any + Send + Sync> = Box::new(host);
            let (nw, driver) = vdc_nwagent::start_ovs(bus, node_id.to_owned(), cfg.clone()).await?;
            return Ok(HostAgents {
                node_id: node_id.to_owned(),
                hva: Some(hva),
                nw: Some(nw),
                hva_driver,
                libvirt,
                nw_driver: None,
                ovs: Some((driver, keep)),
                ovs_cfg: Some(cfg),
            });
        }
        let (nw, nw_driver) = vdc_nwagent::start_sim(
            bus,
            vdc_nwagent::NwOptions {
                node_id: node_id.to_owned(),
                data_dir: self.agent_dir("nwagent", node_id),
                sim: self.opts.sim,
                // 198.18/15 (benchmarking), a distinct one per host.
                tunnel_ip: Some(std::net::Ipv4Addr::from(0xc612_0000u32 + index as u32 + 1)),
            },
        )
        .await?;
        Ok(HostAgents {
            node_id: node_id.to_owned(),
            hva: Some(hva),
            nw: Some(nw),
            hva_driver,
            libvirt,
            nw_driver: Some(nw_driver),
            ovs: None,
            ovs_cfg: None,
        })
    }

    async fn start_storage(&self, node_id: &str, _index: usize) -> anyhow::Result<AgentHandle> {
        if let Some(rs) = &self.opts.real_storage {
            let local_host = match &rs.iscsi {
                None => Some(self.hosts.first().ok_or_else(|| anyhow::anyhow!("no host"))?.node_id.parse()?),
                Some(_) => None,
            };
            let (h, _) = vdc_sta::start_real(
                self.transport.clone(),
                vdc_sta::RealOptions {
                    node_id: node_id.to_owned(),
                    data_dir: rs.data_dir.join(node_id),
                    backend: rs.backend.clone(),
                    iscsi: rs.iscsi.clone(),
                    local_host,
                    image_cache_max_bytes: None,
                    capacity_mib: None,
                },
            )
            .await?;
            return Ok(h);
        }
        let (h, _) = vdc_sta::start_sim(
            self.transport.clone(),
            vdc_sta::StaOptions {
                node_id: node_id.to_owned(),
                capacity_mib: 100 << 10,
                data_dir: self.agent_dir("sta", node_id),
                sim: self.opts.sim,
            },
        )
        .await?;
        Ok(h)
    }

    pub fn dcmgr(&self) -> &Dcmgr {
        self.dcmgr.as_ref().expect("dcmgr is running")
    }

    pub fn url(&self) -> String {
        self.dcmgr().url()
    }

    /// Kills host `i`'s hva without a goodbye (a crash).
    pub fn crash_hva(&mut self, i: usize) {
        if let Some(h) = self.hosts[i].hva.take() {
            h.abort();
        }
        // As the process's end would: the driver's poller reports nothing more (into the
        // journal the next hva replays).
        if let Some(lv) = &self.hosts[i].libvirt {
            lv.stop();
        }
    }

    /// Kills storage node `i`'s sta without a goodbye (a crash).
    pub fn crash_storage(&mut self, i: usize) {
        if let Some(h) = self.storage[i].1.take() {
            h.abort();
        }
    }

    /// Starts storage node `i`'s sta again with the same node ID.
    pub async fn restart_storage(&mut self, i: usize) {
        let node = self.storage[i].0.clone();
        let h = self.start_storage(&node, i).await.expect("sta restarts");
        self.storage[i].1 = Some(h);
    }

    /// Starts host `i`'s hva again with the same node ID and data directory.
    pub async fn restart_hva(&mut self, i: usize) {
        let node = self.hosts[i].node_id.clone();
        let (hva, driver) = self.start_hva(&node, i).await.expect("hva restarts");
        let (sim, libvirt) = driver.split();
        self.hosts[i].hva = Some(hva);
        self.hosts[i].hva_driver = sim;
        self.hosts[i].libvirt = libvirt;
    }

    /// Stops host `i`'s nwagent as its process would end (a real-network host: its
    /// metadata servers stop; flows, ports and DHCP servers stay in the switch).
    pub async fn stop_nwagent(&mut self, i: usize) {
        if let Some(h) = self.hosts[i].nw.take() {
            h.abort();
        }
        if let Some((driver, _)) = &self.hosts[i].ovs {
            driver.shut_down();
        }
    }

    /// Stops host `i`'s Open vSwitch daemons and starts them again on the same database
    /// (what restarting `vdc up` does to its switch): ports keep their numbers, flows
    /// are gone until nwagent puts them back.
    pub fn restart_switch(&mut self, i: usize) {
        let (_, keep) = self.hosts[i].ovs.as_mut().expect("a real-network host");
        let host = keep.downcast_mut::<vdc_nwagent::testing::Host>().expect("a namespace host");
        if let Some(mut old) = host.switch.take() {
            old.remove_bridges = false;
        }
        let sw = vdc_nwagent::ovs::daemon::Switch::start(Some(&host.netns), &host.dir).expect("the switch restarts");
        host.switch = Some(sw);
    }

    /// Starts host `i`'s nwagent (Open vSwitch driver) again with the same node ID,
    /// switch and data directory.
    pub async fn restart_nwagent(&mut self, i: usize) {
        let node = self.hosts[i].node_id.clone();
        let cfg = self.hosts[i].ovs_cfg.clone().expect("a real-network host");
        let (nw, driver) = vdc_nwagent::start_ovs(self.transport.clone(), node, cfg).await.expect("nwagent restarts");
        self.hosts[i].nw = Some(nw);
        if let Some(o) = &mut self.hosts[i].ovs {
            o.0 = driver;
        }
    }

    /// Stops dcmgr (the agents keep running) and starts a new one on the same database.
    pub async fn restart_dcmgr(&mut self) {
        let old = self.dcmgr.take().expect("dcmgr running");
        let addr = old.addr;
        old.stop().await;
        let mut opts = self.opts.clone();
        opts.ensure_observer = None;
        let mut last = None;
        // The old listener's port is free again once it has stopped; retry briefly.
        for _ in 0..50 {
            match start_dcmgr_on(&self.database_url, &self.transport, &opts, &self.admin_token, &addr.to_string()).await
            {
                Ok(d) => {
                    self.dcmgr = Some(d);
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("dcmgr did not restart: {last:?}");
    }

    pub async fn wait_nodes_online(&self) -> anyhow::Result<()> {
        let want = self.hosts.len();
        let want_sn = self.storage.len();
        eventually(Duration::from_secs(10), || async {
            let hosts = self.admin.list_all_host_nodes().await.ok()?;
            let sn = self.admin.list_all_storage_nodes().await.ok()?;
            let online = hosts.iter().filter(|h| h.state == vdc_schema::NodeState::Online).count();
            let sn_online = sn.iter().filter(|h| h.state == vdc_schema::NodeState::Online).count();
            (online >= want && sn_online >= want_sn).then_some(())
        })
        .await
        .map_err(|_| anyhow::anyhow!("agents did not come online"))
    }

    /// A new account and a client acting as it.
    pub async fn account(&self, name: &str) -> Client {
        let created = self
            .admin
            .create_account(&CreateAccount { name: name.into(), admin: false })
            .await
            .expect("account created");
        Client::new(self.url(), created.token)
    }

    /// A network, a security group and an instance on them; returns once it runs.
    pub async fn running_instance(&self, c: &Client, name: &str) -> Instance {
        let nets = c.list_all_networks().await.unwrap();
        let net = match nets.into_iter().next() {
            Some(n) => n,
            None => c
                .create_network(&CreateNetwork {
                    name: "net".into(),
                    cidr: "10.9.0.0/24".into(),
                    gateway: None,
                    dhcp_start: None,
                    dhcp_end: None,
                })
                .await
                .unwrap(),
        };
        let acc = c
            .create_instance(&CreateInstance {
                name: Some(name.into()),
                image_id: self.image.clone(),
                hypervisor: None,
                cpus: 1,
                memory_mib: 256,
                interfaces: vec![CreateInterface { network_id: net.id, security_groups: vec![], ip: None }],
                ssh_key_id: None,
                user_data: None,
                root_disk_size: None,
                server_group: None,
                zone: None,
                host_labels: Default::default(),
            })
            .await
            .unwrap();
        wait_state(c, &acc.resource.id, InstanceState::Running).await
    }

    /// What an engineer reads when a guest got no lease: per real-network host, each
    /// network's dnsmasq log and hosts file, the switch's interfaces and flows (with
    /// counters) and the guests' devices. Best effort: a failed command prints its error.
    pub fn network_diagnostics(&self) -> String {
        let mut out = String::new();
        let run = |out: &mut String, prog: &str, args: &[&str]| {
            out.push_str(&format!("$ {prog} {}\n", args.join(" ")));
            match std::process::Command::new(prog).args(args).output() {
                Ok(o) => {
                    out.push_str(&String::from_utf8_lossy(&o.stdout));
                    out.push_str(&String::from_utf8_lossy(&o.stderr));
                }
                Err(e) => out.push_str(&format!("({e})\n")),
            }
        };
        for h in &self.hosts {
            let Some(cfg) = &h.ovs_cfg else { continue };
            out.push_str(&format!("==== host {} ====\n", h.node_id));
            let services = cfg.data_dir.join("services");
            let mut files: Vec<_> =
                std::fs::read_dir(&services).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
            files.sort();
            for f in files {
                let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
                if name.ends_with(".log") || name.ends_with(".hosts") || name.ends_with(".pid") {
                    let text = std::fs::read_to_string(&f).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(80).collect();
                    out.push_str(&format!("--- {name} (last {} lines)\n", tail.len()));
                    for l in tail.into_iter().rev() {
                        out.push_str(l);
                        out.push('\n');
                    }
                }
            }
            let db = format!("--db=unix:{}", cfg.db_socket.display());
            run(
                &mut out,
                "ovs-vsctl",
                &[&db, "--columns=name,ofport,ifindex,admin_state,link_state,error", "list", "interface"],
            );
            let mgmt = format!("unix:{}", cfg.rundir.join(format!("{}.mgmt", cfg.bridge)).display());
            run(&mut out, "ovs-ofctl", &["-O", "OpenFlow13", "dump-flows", &mgmt]);
            if let Some(ns) = &cfg.host_netns {
                run(&mut out, "ip", &["-n", ns, "-s", "link"]);
            }
            run(&mut out, "pgrep", &["-af", "dnsmasq"]);
        }
        out
    }

    pub async fn stop(mut self) {
        for h in &mut self.hosts {
            if let Some(a) = h.hva.take() {
                a.stop().await;
            }
            if let Some(a) = h.nw.take() {
                a.stop().await;
            }
        }
        for (_, h) in self.storage.drain(..) {
            if let Some(h) = h {
                h.stop().await;
            }
        }
        if let Some(d) = self.dcmgr.take() {
            d.stop().await;
        }
        self.remove_guests();
        // Then the hosts' OVS and namespaces (their guests' taps are gone).
        self.hosts.clear();
        if let Some((admin, name)) = self.pg.take() {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
            }
        }
    }
}

impl Stack {
    /// Destroys and undefines every domain this stack's hosts made, and removes their
    /// files; runs on drop too, so a failed test leaves nothing behind.
    fn remove_guests(&self) {
        self.remove_guests_once();
    }

    /// One pass of [`Stack::remove_guests`]; whether it found anything to remove.
    fn remove_guests_once(&self) -> bool {
        let Some(lv) = &self.opts.libvirt else { return false };
        // Every vdc domain whose files are under this stack's root: also those a failed
        // instance left (its directory gone) or an agent task defined while stopping.
        // Other domains (another test's, `vdc up`'s) are left alone.
        let root = lv.root.to_string_lossy().into_owned();
        let mut found = lv.root.exists();
        for uri in ["qemu:///system", "lxc:///system"] {
            let virsh = |args: &[&str]| std::process::Command::new("virsh").arg("-c").arg(uri).args(args).output();
            let names = virsh(&["list", "--all", "--name"]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            for dom in names.unwrap_or_default().lines().map(str::trim).filter(|d| d.starts_with("vdc-")) {
                let xml = virsh(&["dumpxml", dom]).map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                if xml.unwrap_or_default().contains(&root) {
                    found = true;
                    let _ = virsh(&["destroy", dom]);
                    let _ = virsh(&["undefine", dom]);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&lv.root);
        found
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // After a failure (stop() was not reached) agents may be in the middle of work:
        // stop them first; a guest hva's driver was already creating may still appear
        // for a moment (its work runs to the end), so look again until all stays quiet.
        let failed = !self.hosts.is_empty();
        for h in &mut self.hosts {
            for a in [h.hva.take(), h.nw.take()].into_iter().flatten() {
                a.abort();
            }
        }
        for (_, h) in &mut self.storage {
            if let Some(h) = h.take() {
                h.abort();
            }
        }
        self.remove_guests();
        if failed && self.opts.libvirt.is_some() {
            let mut quiet = 0;
            while quiet < 6 {
                std::thread::sleep(Duration::from_millis(500));
                quiet = if self.remove_guests_once() { 0 } else { quiet + 1 };
            }
        }
        // Then each host's OVS and namespace (dropping the `Host`).
        self.hosts.clear();
        if let Some(rn) = &self.opts.real_network {
            // What is left: namespaces of hosts that never started, service namespaces.
            vdc_nwagent::testing::remove_service_namespaces(&rn.prefix);
        }
    }
}

fn test_config(database_url: &str, opts: &StackOptions, admin_token: &str, listen: &str) -> Config {
    let defaults = Config::default();
    let (heartbeat, reconcile, resend) = if opts.default_timers {
        (defaults.heartbeat_interval_ms, defaults.reconcile_interval_ms, defaults.resend_after_ms)
    } else {
        (200, 200, 500)
    };
    Config {
        listen: listen.to_owned(),
        database_url: database_url.to_owned(),
        nats_url: None,
        heartbeat_interval_ms: heartbeat,
        agent_timeout_ms: opts.agent_timeout_ms,
        reconcile_interval_ms: reconcile,
        resend_after_ms: resend,
        router_release_after_ms: opts.router_release_after_ms,
        dispatch_workers: 4,
        admin_token: Some(admin_token.to_owned()),
        external: opts.external.clone(),
        cpu_allocation_ratio: opts.cpu_allocation_ratio,
        hosts: opts.host_overrides.clone(),
        placement: opts.placement,
        images: {
            // A real-guest test registers host files it made in its own directory.
            let mut images = opts.images.clone();
            images.file_dirs.extend(opts.libvirt.as_ref().map(|l| l.root.clone()));
            images
        },
        bundles: opts.bundles.clone(),
        auth: opts.auth.clone(),
        http: opts.http.clone(),
        quotas: opts.quotas.clone(),
        metrics: opts.metrics.clone(),
        ..defaults
    }
}

async fn start_dcmgr(db: &str, bus: &Arc<dyn Transport>, opts: &StackOptions, token: &str) -> anyhow::Result<Dcmgr> {
    start_dcmgr_on(db, bus, opts, token, "127.0.0.1:0").await
}

async fn start_dcmgr_on(
    db: &str,
    bus: &Arc<dyn Transport>,
    opts: &StackOptions,
    token: &str,
    listen: &str,
) -> anyhow::Result<Dcmgr> {
    let bus = bus.clone();
    Dcmgr::start(
        test_config(db, opts, token, listen),
        server::Options { bus: Some(bus), ensure_observer: opts.ensure_observer.clone() },
    )
    .await
}

/// Polls `f` until it returns Some or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Result<T, ()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How many addresses the external pool has left: floating IPs taken one by one until it
/// answers `no_capacity`, then given back.
pub async fn free_floating_ips(c: &Client) -> usize {
    let mut held = vec![];
    loop {
        match c.create_floating_ip(&CreateFloatingIp::default()).await {
            Ok(f) => held.push(f.id),
            Err(vdc_cli::client::ClientError::Api { status: 422, code, .. }) if code == "no_capacity" => break,
            Err(e) => panic!("{e}"),
        }
    }
    for id in &held {
        c.delete_floating_ip(id).await.unwrap();
    }
    held.len()
}

/// Waits (up to 15 s) until the instance is in `state`; panics with its last state otherwise.
pub async fn wait_state(c: &Client, id: &InstanceId, state: InstanceState) -> Instance {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(15) {
        if let Ok(i) = c.get_instance(id).await {
            if i.state == state {
                return i;
            }
            last = Some(i);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("instance {id} did not reach {state}; last seen: {last:?}")
}

/// Waits until an instance runs with every interface active (its network programmed).
pub async fn wait_converged(c: &Client, id: &InstanceId) -> Instance {
    eventually(Duration::from_secs(15), || async {
        let i = c.get_instance(id).await.ok()?;
        let active = i.interfaces.iter().all(|v| v.state == vdc_schema::InterfaceState::Active);
        (i.state == InstanceState::Running && active).then_some(i)
    })
    .await
    .unwrap_or_else(|()| panic!("instance {id} did not run with its interfaces active"))
}

/// Initializes logging once for a test binary (RUST_LOG controls it).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// Registers the tiny image of a libvirt stack: (the kernel image for QEMU/KVM, the
/// rootfs tarball for LXC).
pub async fn register_images(s: &Stack) -> (ImageId, ImageId) {
    use sha2::{Digest, Sha256};
    let sha256 = |p: &std::path::Path| format!("sha256:{}", hex::encode(Sha256::digest(std::fs::read(p).unwrap())));
    let dir = &s.opts.libvirt.as_ref().expect("a libvirt stack").tiny_image_dir;
    let kernel = s
        .admin
        .create_image(&CreateImage {
            name: "tiny-qemu".into(),
            format: ImageFormat::Kernel,
            arch: vdc_schema::Arch::X86_64,
            hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
            source: Some(dir.join("vmlinuz").display().to_string()),
            checksum: Some(sha256(&dir.join("vmlinuz"))),
            initrd: Some(dir.join("initrd.gz").display().to_string()),
            kernel_cmdline: Some("console=ttyS0 panic=-1 quiet".into()),
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
            public: true,
            default_user: None,
        })
        .await
        .unwrap();
    let rootfs = s
        .admin
        .create_image(&CreateImage {
            name: "tiny-lxc".into(),
            format: ImageFormat::Tar,
            arch: vdc_schema::Arch::X86_64,
            hypervisors: vec![HypervisorKind::Lxc],
            source: Some(dir.join("rootfs.tar.gz").display().to_string()),
            checksum: Some(sha256(&dir.join("rootfs.tar.gz"))),
            initrd: None,
            kernel_cmdline: None,
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
            public: true,
            default_user: None,
        })
        .await
        .unwrap();
    (kernel.id, rootfs.id)
}

/// Waits for `needle` in an instance's console; returns the console and the time taken.
pub async fn wait_console(c: &Client, id: &InstanceId, needle: &str, timeout: Duration) -> (String, Duration) {
    let start = Instant::now();
    let mut out = String::new();
    while start.elapsed() < timeout {
        out = c.console_log(id).await.map(|l| l.output).unwrap_or_default();
        if out.contains(needle) {
            return (out, start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("console of {id} never showed {needle:?} within {timeout:?}; it has:\n{out}")
}

/// Whether libvirt has the instance's domain. Only libvirt's "not found" answers no: a
/// virsh that could not ask (a busy daemon) asks again, and fails the test if it never can.
pub fn virsh_has(uri: &str, id: &vdc_schema::id::InstanceId) -> bool {
    let name = format!("vdc-{id}");
    let mut err = String::new();
    for _ in 0..10 {
        let o = std::process::Command::new("virsh").args(["-c", uri, "dominfo", &name]).output().expect("virsh runs");
        if o.status.success() {
            return true;
        }
        err = String::from_utf8_lossy(&o.stderr).into_owned();
        if err.contains("failed to get domain") || err.contains("Domain not found") {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("virsh could not tell whether {name} exists on {uri}: {err}")
}

/// Runs `reboot -f` inside container `id` (what its own `reboot` does): the kernel ends
/// its init as a reboot, and libvirt starts it again (`on_reboot=restart`).
pub fn reboot_container_from_inside(id: &vdc_schema::id::InstanceId) {
    let out = in_container(id, false, &["/bin/busybox", "reboot", "-f"]);
    assert!(out.status.success(), "reboot: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `args` in container `id` (its PID and mount namespaces; in its user namespace
/// too with `as_its_root`: as the container's root, an unprivileged user of the host).
pub fn in_container(id: &vdc_schema::id::InstanceId, as_its_root: bool, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("virsh").args(["-c", "lxc:///system", "domid", &format!("vdc-{id}")]).output();
    let controller = String::from_utf8_lossy(&out.unwrap().stdout).trim().to_owned();
    let children = std::fs::read_to_string(format!("/proc/{controller}/task/{controller}/children")).unwrap();
    let init = children.split_whitespace().next().expect("the container's init").to_owned();
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args(["-t", &init, "-p", "-m"]);
    if as_its_root {
        cmd.arg("-U");
    }
    cmd.arg("--").args(args).output().unwrap()
}

/// `path` as the libvirt daemon sees it (in its own mount namespace, where hva mounts
/// containers' root filesystems).
pub fn seen_by_libvirtd(path: &std::path::Path) -> std::path::PathBuf {
    let pid = std::fs::read_to_string("/run/libvirtd.pid").expect("libvirtd's PID file");
    std::path::PathBuf::from(format!("/proc/{}/root", pid.trim())).join(path.strip_prefix("/").unwrap_or(path))
}

/// A stack with `hosts` libvirt hosts of `cpus` CPUs (real TCG guests of the tiny image).
pub fn real_guests(hosts: usize, cpus: u32) -> StackOptions {
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = hosts;
    o.host_cpus = cpus;
    o.host_memory_mib = 4096;
    o.agent_timeout_ms = 5000;
    o.libvirt = Some(LibvirtSetup::from_env());
    o
}

/// One QEMU guest of `image`: 1 vCPU, 256 MiB, no interface, key or user data.
pub fn qemu_guest(image: &ImageId, name: &str) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: image.clone(),
        hypervisor: Some(HypervisorKind::Qemu),
        cpus: 1,
        memory_mib: 256,
        interfaces: vec![],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

/// A private image of `format` for QEMU whose data is uploaded afterwards (no source).
/// The suites' external network, 203.0.113.0/24 (TEST-NET-3), floating IPs from .10 to
/// `pool_end`.
pub fn test_external(pool_end: &str) -> vdc_dcmgr::config::ExternalConfig {
    vdc_dcmgr::config::ExternalConfig {
        cidr: "203.0.113.0/24".into(),
        gateway: "203.0.113.1".into(),
        pool_start: "203.0.113.10".into(),
        pool_end: pool_end.into(),
        router_reserve: None,
    }
}

/// `len` bytes that do not compress (xorshift), so zstd does not flatter a figure and a
/// bundle carries them whole.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn image_request(name: &str, format: ImageFormat) -> CreateImage {
    CreateImage {
        name: name.into(),
        format,
        arch: vdc_schema::Arch::X86_64,
        hypervisors: vec![HypervisorKind::Qemu],
        source: None,
        checksum: None,
        initrd: None,
        kernel_cmdline: None,
        boot_mode: Default::default(),
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: false,
        default_user: None,
    }
}

/// The tiny image from hva's builtin sources (simulated hosts, or hva's tiny image dir).
pub fn builtin_tiny_image(hypervisors: Vec<HypervisorKind>) -> CreateImage {
    CreateImage {
        name: "tiny".into(),
        format: ImageFormat::Kernel,
        arch: vdc_schema::Arch::X86_64,
        hypervisors,
        source: Some("builtin:tiny-kernel".into()),
        checksum: None,
        initrd: Some("builtin:tiny-initrd".into()),
        kernel_cmdline: None,
        boot_mode: Default::default(),
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: true,
        default_user: Some("root".into()),
    }
}

/// Runs each scenario `async fn name(db: Db)` of a test file once per database, as
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { $crate::init_logging(); super::$name($crate::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { $crate::init_logging(); super::$name($crate::Db::Postgres).await })*
        }
    };
}
