//! `vdc up`: the all-in-one cloud in one process — dcmgr, one hva, one nwagent and one
//! sta on the in-process bus, SQLite in the data directory, an admin account and token,
//! and a default image. It writes the CLI configuration so `vdc` works at once.

use crate::commands::UpArgs;
use crate::config::{self, CliConfig};
use crate::external::{self, ExternalNet, ExternalOptions};
use anyhow::Context;
use rand::Rng;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vdc_bus::sim::{load_or_create_id, SimKnobs};
use vdc_bus::Transport;
use vdc_dcmgr::ctx::Caller;
use vdc_dcmgr::{server, Config, Dcmgr};
use vdc_schema::api::CreateImage;
use vdc_schema::{Arch, HostNodeId, HypervisorKind, ImageFormat, StorageNodeId};

/// The name of the image registered by default.
pub const DEFAULT_IMAGE: &str = "tiny";

/// `/var/lib/vdc` for root (QEMU runs as its own user and cannot enter root's home),
/// else `~/.local/share/vdc`.
pub fn default_data_dir() -> PathBuf {
    if effective_uid() == Some(0) {
        return PathBuf::from("/var/lib/vdc");
    }
    dirs::data_local_dir().unwrap_or_else(|| PathBuf::from(".")).join("vdc")
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(2)?.parse().ok()
}

fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_owned());
        }
    }
    let mut rng = rand::thread_rng();
    let token: String = (0..40).map(|_| rng.sample(rand::distributions::Alphanumeric) as char).collect();
    let token = format!("vdc_{token}");
    std::fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(token)
}

/// A running all-in-one.
pub struct AllInOne {
    pub dcmgr: Dcmgr,
    pub token: String,
    /// What hva runs: "libvirt" or "sim", and why.
    pub hva_driver: String,
    /// What nwagent and sta run, and why.
    pub nw_driver: String,
    pub sta_driver: String,
    agents: Vec<vdc_bus::AgentHandle>,
    /// The Open vSwitch daemons of this all-in-one, when it runs its own, and the task
    /// that starts them again when one dies ([`watch_switch`]).
    switch: Option<(std::sync::Arc<vdc_nwagent::ovs::daemon::Switch>, tokio::task::JoinHandle<()>)>,
    /// The external network on the host (floating IPs), when the network is real.
    external: Option<ExternalNet>,
    /// What the external network is, and why.
    pub ext_driver: String,
    /// Held while it runs: its data directory's lock and, with a real network, its
    /// network namespace's ([`claim`]).
    _locks: Vec<std::fs::File>,
}

/// Takes the exclusive `flock` of `path` for as long as the file is open, writing `who`
/// in it; or says what holds it. Taken before anything is started or changed: a second
/// `vdc up` on a running one's data directory, refused only once its dcmgr found the
/// database locked, had already stopped the first one's Open vSwitch (red team,
/// 2026-12-06).
fn claim(path: &Path, who: &str) -> Result<Option<std::fs::File>, String> {
    use std::io::{Read, Seek, Write};
    let mut file = match std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path) {
        Ok(f) => f,
        Err(e) => return Err(format!("cannot open {}: {e}", path.display())),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            let _ = file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(who.as_bytes()));
            Ok(Some(file))
        }
        Err(rustix::io::Errno::WOULDBLOCK) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(holder.trim().to_owned())
        }
        Err(e) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// This process's network namespace, as `/proc/self/ns/net` names it (`net:[4026531840]`).
fn netns_id() -> Option<String> {
    let link = std::fs::read_link("/proc/self/ns/net").ok()?;
    let s = link.to_string_lossy();
    Some(s.trim_start_matches("net:[").trim_end_matches(']').to_owned())
}

/// Whether the all-in-one has an external network, and which range.
#[derive(Debug, Clone, Copy, Default)]
pub enum External {
    /// `--no-external`
    Off,
    /// The range saved in the data directory, else the first free candidate.
    #[default]
    Auto,
    /// `--external-cidr`
    Cidr(vdc_schema::net::Ipv4Net),
}

impl External {
    pub fn from_args(no_external: bool, cidr: Option<&str>) -> anyhow::Result<External> {
        Ok(match (no_external, cidr) {
            (true, _) => External::Off,
            (false, Some(c)) => External::Cidr(external::parse_cidr(c)?),
            (false, None) => External::Auto,
        })
    }
}

/// The file recording whether a data directory's guests are real or simulated.
const GUESTS_FILE: &str = "guests";
/// The all-in-one's image cache: a few GiB at most (its room is kept out of the disk
/// offered to root disks).
const IMAGE_CACHE_MAX: u64 = 8 << 30;

/// Refuses to run a data directory's cloud with guests of the other kind: its instances,
/// volumes and agents' state belong to real guests (libvirt) or to simulated ones. A
/// cloud made with real guests, started again where libvirt is not running (after a
/// reboot, say), would otherwise come up simulated and show its instances running while
/// nothing runs, the simulated agents' state kept in the real ones' directories. The first
/// start records the kind.
fn keep_guests(data_dir: &Path, real: bool, why_not: Option<&str>) -> anyhow::Result<()> {
    let file = data_dir.join(GUESTS_FILE);
    let recorded = std::fs::read_to_string(&file).ok();
    // A directory from before the file: its own Open vSwitch ran only with real guests.
    let kind = match recorded.as_deref() {
        Some(r) => Some(r.trim()),
        None if data_dir.join("ovs").is_dir() => Some("real"),
        None => None,
    };
    if let Some(e) = guests_refused(kind, real, why_not, data_dir) {
        anyhow::bail!(e);
    }
    if recorded.is_none() {
        std::fs::write(&file, if real { "real\n" } else { "simulated\n" })
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(())
}

/// Why a cloud whose guests were `recorded` cannot start with `real` (or simulated) ones.
fn guests_refused(recorded: Option<&str>, real: bool, why_not: Option<&str>, data_dir: &Path) -> Option<String> {
    let dir = data_dir.display();
    match (recorded, real) {
        (Some("real"), false) => Some(match why_not {
            Some(why) => format!(
                "the cloud in {dir} runs real guests, but libvirt is not usable here ({why}): start it \
                 (`bash packaging/start-libvirt.sh`) and run `vdc up` again; for a simulated cloud give \
                 another --data-dir"
            ),
            None => format!(
                "the cloud in {dir} runs real guests: run it without --sim; for a simulated cloud give \
                 another --data-dir"
            ),
        }),
        (Some("simulated"), true) => Some(format!(
            "the cloud in {dir} was made with simulated guests (`vdc up --sim`): run it with --sim, or give \
             another --data-dir (or remove this one) for real guests"
        )),
        _ => None,
    }
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).chain([PathBuf::from("/usr/sbin")]).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// The machine-wide place of the tiny image (packaging/setup.sh builds it there as root).
pub const SYSTEM_TINY_IMAGE: &str = "/var/cache/vdc/tiny-image";

/// The tiny image's directory: `--tiny-image`, else `DATA_DIR/tiny-image`, else
/// [`SYSTEM_TINY_IMAGE`].
pub fn tiny_image_dir(data_dir: &Path, given: Option<&Path>) -> Option<PathBuf> {
    let candidates = match given {
        Some(g) => vec![g.to_path_buf()],
        None => vec![data_dir.join("tiny-image"), PathBuf::from(SYSTEM_TINY_IMAGE)],
    };
    candidates.into_iter().find(|d| d.join("vmlinuz").exists())
}

/// libvirtd's network namespace (`/proc/PID/ns/net`), when it is not this process's.
fn libvirtd_netns_if_not_ours() -> Option<String> {
    let pid = ["/run/libvirtd.pid", "/var/run/libvirtd.pid"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())?
        .trim()
        .to_owned();
    let theirs = format!("/proc/{pid}/ns/net");
    match (std::fs::read_link(&theirs), std::fs::read_link("/proc/self/ns/net")) {
        (Ok(a), Ok(b)) if a != b => Some(theirs),
        _ => None,
    }
}

impl AllInOne {
    /// Starts the cloud in `data_dir` as `args` ask (its listen address, `--sim`, its
    /// namespace prefix, retention and trusted keys); hva uses libvirt when it answers
    /// (unless `--sim`), else the sim.
    pub async fn start(
        data_dir: &Path,
        tiny: Option<PathBuf>,
        ext: External,
        args: &UpArgs,
    ) -> anyhow::Result<AllInOne> {
        let fresh = std::fs::read_dir(data_dir).map_or(true, |mut d| d.next().is_none());
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let who =
            format!("pid {} listening on {}, data directory {}", std::process::id(), args.listen, data_dir.display());
        let lock = match claim(&data_dir.join("up.lock"), &who) {
            Ok(lock) => lock,
            Err(holder) => anyhow::bail!(
                "another vdc up runs on the data directory {} ({holder}): stop it first, or give this one \
                 another --data-dir; nothing was started or changed",
                data_dir.display()
            ),
        };
        match Self::start_claimed(data_dir, tiny, ext, args, &who).await {
            Ok(mut aio) => {
                aio._locks.extend(lock);
                Ok(aio)
            }
            Err(e) => {
                // A start refused or failed on a new data directory leaves none behind
                // (removed while its lock is still held).
                if fresh {
                    let _ = std::fs::remove_dir_all(data_dir);
                }
                Err(e)
            }
        }
    }

    async fn start_claimed(
        data_dir: &Path,
        tiny: Option<PathBuf>,
        ext: External,
        args: &UpArgs,
        who: &str,
    ) -> anyhow::Result<AllInOne> {
        let (listen, sim, namespace_prefix) = (args.listen.as_str(), args.sim, args.namespace_prefix.as_str());
        let (retention_days, trusted_keys) = (args.retention_days, &args.trust_keys);
        let mut locks = vec![];
        let token = admin_token(data_dir)?;
        let bus: Arc<dyn Transport> = vdc_bus::InProc::new();

        let host_id = load_or_create_id(&data_dir.join("hva/node-id"), || HostNodeId::generate().to_string())?;
        let store_id = load_or_create_id(&data_dir.join("sta/node-id"), || StorageNodeId::generate().to_string())?;
        let (cpus, memory_mib) = vdc_hva::host_capacity(vdc_hva::RESERVED_MEMORY_MIB);
        let knobs = SimKnobs::default();
        // Root disks and volumes share the data directory's file system: each is offered
        // half of its room, so that the two are not both promised the same free space
        // (250 GiB of volumes and 38 GiB of root disks on 38 GiB, red team 2026-12-07).
        let shared_room = {
            let _ = std::fs::create_dir_all(data_dir);
            let own = [data_dir.join("hva/instances"), data_dir.join("sta/volumes")];
            let caches =
                [(data_dir.join("hva/images"), IMAGE_CACHE_MAX), (data_dir.join("sta/images"), IMAGE_CACHE_MAX)];
            vdc_bus::room::room_mib(data_dir, &own, &caches)
        };
        let hva_opts = vdc_hva::HvaOptions {
            node_id: host_id.clone(),
            cpus,
            memory_mib,
            hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu, HypervisorKind::Lxc],
            data_dir: Some(data_dir.join("hva")),
            sim: knobs,
            disk_mib: shared_room.map(|r| r / 2),
        };
        let lv = vdc_hva::libvirt::LibvirtConfig {
            data_dir: data_dir.join("hva"),
            builtin_images: tiny.clone(),
            qemu_uri: "qemu:///system".into(),
            lxc_uri: "lxc:///system".into(),
            stop_timeout: std::time::Duration::from_secs(30),
            poll_interval: std::time::Duration::from_millis(500),
            bridge: None,
            initiator: String::new(), // start_libvirt derives it from the node ID
            taps: false,
            tap_netns: None,
            // libvirtd makes taps where it runs; an all-in-one started inside another
            // network namespace (its Open vSwitch there too) takes them in.
            taps_from_netns: libvirtd_netns_if_not_ours(),
            image_cache_max_bytes: Some(IMAGE_CACHE_MAX),
            idmap: Some(vdc_bus::idmap::IdMap::DEFAULT),
        };
        let detected = if sim {
            None
        } else {
            let c = lv.clone();
            let d =
                tokio::task::spawn_blocking(move || vdc_hva::detect(&c, std::time::Duration::from_secs(10))).await?;
            Some(d)
        };
        let libvirt = detected.as_ref().is_some_and(|d| !d.hypervisors.is_empty());
        // What QEMU's driver answered says it best ("Failed to connect socket …").
        let why_not = detected.as_ref().map(|d| match d.capabilities.get("qemu").and_then(|q| q.as_str()) {
            Some(q) => q.to_owned(),
            None => d.capabilities.to_string(),
        });
        keep_guests(data_dir, libvirt, why_not.as_deref())?;
        // Real networking needs real guests, Open vSwitch and dnsmasq; this all-in-one runs
        // OVS daemons of its own (a private database and run directory in DATA_DIR/ovs),
        // so it needs no Open vSwitch service and touches no bridge but its own.
        let mut nw_why = String::new();
        let switch = if !libvirt {
            nw_why = "simulated (guests are simulated too)".into();
            None
        } else if !(have("ovs-vswitchd") && have("ovsdb-server") && have("dnsmasq")) {
            nw_why = "simulated (Open vSwitch or dnsmasq is not installed: run packaging/setup.sh)".into();
            None
        } else {
            // Its bridges and nftables table have fixed names: one real all-in-one per
            // network namespace (a second one took the first's masquerade table and
            // broke both).
            if let Some(id) = netns_id() {
                let dir = Path::new("/run/vdc-up");
                let _ = std::fs::create_dir_all(dir);
                match claim(&dir.join(format!("netns-{id}.lock")), who) {
                    Ok(lock) => locks.extend(lock),
                    Err(holder) if holder.starts_with("cannot ") => tracing::warn!("{holder}"),
                    Err(holder) => anyhow::bail!(
                        "another vdc up with real guests runs in this network namespace ({holder}): its bridges \
                         (vdc-ex, vdc-int) and nftables table are this one's too. Run this one in a namespace of \
                         its own (ip netns exec NAME vdc up …), or with --sim; nothing was started or changed"
                    ),
                }
            }
            match vdc_nwagent::ovs::daemon::Switch::start_persistent(&data_dir.join("ovs")) {
                Ok(s) => Some(std::sync::Arc::new(s)),
                Err(e) => {
                    nw_why = format!("simulated (Open vSwitch did not start: {e})");
                    None
                }
            }
        };
        // The external network is real when the network is: a bridge on the host, NAT.
        // With a simulated network dcmgr still gets the range, so floating IPs can be
        // tried, but nothing is made on the host.
        let ext_opts = |cidr| ExternalOptions {
            netns: None,
            bridge: external::BRIDGE.into(),
            nft_table: external::NFT_TABLE.into(),
            cidr,
            state_file: data_dir.join("external.json"),
        };
        let asked = match ext {
            External::Cidr(c) => Some(c),
            _ => None,
        };
        let (external, external_config, ext_driver) = match ext {
            External::Off => (None, None, "none (--no-external: no floating IPs)".to_owned()),
            _ if switch.is_some() => {
                let net = ExternalNet::start(&ext_opts(asked), vdc_bus::cmd::system()).await?;
                let c = net.dcmgr_config();
                let why = format!(
                    "{} on bridge {} (host {}, floating IPs {}–{}, NAT to the host's default route)",
                    net.cidr, net.bridge, net.gateway, c.pool_start, c.pool_end
                );
                (Some(net), Some(c), why)
            }
            _ => {
                let c = ExternalNet::simulated(&ext_opts(asked), vdc_bus::cmd::system()).await?;
                let why = format!("{} (simulated: nothing on the host)", c.cidr);
                (None, Some(c), why)
            }
        };
        let config = Config {
            listen: listen.to_owned(),
            database_url: format!("sqlite://{}", data_dir.join("vdc.db").display()),
            admin_token: Some(token.clone()),
            external: external_config,
            images: vdc_dcmgr::config::ImagesConfig {
                dir: Some(data_dir.join("images")),
                // The tiny image is registered from its directory.
                file_dirs: tiny.iter().cloned().collect(),
                ..Default::default()
            },
            quotas: all_in_one_quotas(),
            retention: vdc_dcmgr::config::RetentionConfig { ended_days: retention_days },
            bundles: vdc_dcmgr::config::BundlesConfig { trusted_keys: trusted_keys.to_vec() },
            ..Config::default()
        };
        let dcmgr = Dcmgr::start(config, server::Options { bus: Some(bus.clone()), ..Default::default() }).await?;

        let mut lv = lv;
        lv.taps = switch.is_some();
        let (hva, hva_driver) = match detected {
            Some(d) if !d.hypervisors.is_empty() => {
                let why =
                    format!("libvirt ({})", d.hypervisors.iter().map(|h| h.as_str()).collect::<Vec<_>>().join(", "));
                (vdc_hva::start_libvirt(bus.clone(), hva_opts, lv, d).await?.0, why)
            }
            other => {
                let why = match other {
                    None => "sim (asked for with --sim)".to_owned(),
                    Some(d) => format!("sim (libvirt is not usable here: {})", d.capabilities),
                };
                (vdc_hva::start_sim(bus.clone(), hva_opts).await?.0, why)
            }
        };
        let nw = match &switch {
            Some(sw) => {
                let cfg = vdc_nwagent::ovs::OvsConfig {
                    db_socket: sw.db_socket(),
                    rundir: sw.dir.clone(),
                    bridge: "vdc-int".into(),
                    // One host: no peers, so the tunnel endpoint is never used.
                    tunnel_ip: std::net::Ipv4Addr::LOCALHOST,
                    data_dir: data_dir.join("nwagent"),
                    plug_timeout: std::time::Duration::from_secs(120),
                    host_netns: None,
                    service_prefix: namespace_prefix.into(),
                    external_bridge: external.as_ref().map(|e| e.bridge.clone()),
                };
                nw_why = "Open vSwitch (bridge vdc-int, DHCP and metadata per network)".into();
                vdc_nwagent::start_ovs(bus.clone(), host_id.clone(), cfg).await?.0
            }
            None => {
                vdc_nwagent::start_sim(
                    bus.clone(),
                    vdc_nwagent::NwOptions {
                        node_id: host_id.clone(),
                        data_dir: Some(data_dir.join("nwagent")),
                        sim: knobs,
                        tunnel_ip: None,
                    },
                )
                .await?
                .0
            }
        };
        // Volumes as files in DATA_DIR/sta/volumes, attached to the local guests directly
        // (no iSCSI on one machine).
        let (sta, sta_driver) = if libvirt {
            let opts = vdc_sta::RealOptions {
                node_id: store_id,
                data_dir: data_dir.join("sta"),
                backend: vdc_sta::backend::BackendConfig::File { dir: data_dir.join("sta/volumes") },
                iscsi: None,
                local_host: Some(host_id.parse()?),
                image_cache_max_bytes: Some(IMAGE_CACHE_MAX),
                capacity_mib: shared_room.map(|r| r / 2),
            };
            let why = format!("file volumes in {} (attached locally)", data_dir.join("sta/volumes").display());
            (vdc_sta::start_real(bus.clone(), opts).await?.0, why)
        } else {
            let opts = vdc_sta::StaOptions {
                node_id: store_id,
                capacity_mib: 100 << 10,
                data_dir: Some(data_dir.join("sta")),
                sim: knobs,
            };
            (vdc_sta::start_sim(bus.clone(), opts).await?.0, "simulated (guests are simulated too)".to_owned())
        };
        ensure_default_images(&dcmgr, tiny.as_deref()).await?;
        Ok(AllInOne {
            dcmgr,
            token,
            hva_driver,
            nw_driver: nw_why,
            sta_driver,
            agents: vec![hva, nw, sta],
            switch: switch.map(|sw| (sw.clone(), tokio::spawn(watch_switch(sw)))),
            external,
            ext_driver,
            _locks: locks,
        })
    }

    pub async fn stop(self) {
        for a in self.agents {
            a.stop().await;
        }
        self.dcmgr.stop().await;
        // Our OVS daemons stop; their database (bridge, ports) stays for the next start,
        // and so do the guests, each network's DHCP server and router, and the external
        // bridge. The NAT to the host's network goes.
        if let Some((sw, watch)) = self.switch {
            watch.abort();
            let _ = watch.await;
            // A revival under way holds the switch until it is done.
            for _ in 0..150 {
                if std::sync::Arc::strong_count(&sw) == 1 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let vswitchd = std::fs::read_to_string(sw.dir.join("ovs-vswitchd.pid")).ok();
            drop(sw);
            remove_datapath_taps(vswitchd.as_deref().and_then(|p| p.trim().parse().ok())).await;
        }
        if let Some(e) = self.external {
            e.stop().await;
        }
    }
}

/// Plays a service manager's part for the all-in-one's own Open vSwitch: a killed
/// ovs-vswitchd left every guest without a network while the host showed online (red
/// team, 2026-12-06). Started again, it comes back with its bridges and ports, and
/// nwagent sees the new process and puts the flows back.
async fn watch_switch(sw: std::sync::Arc<vdc_nwagent::ovs::daemon::Switch>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let s = sw.clone();
        match tokio::task::spawn_blocking(move || s.revive()).await {
            Ok(Ok(dead)) if !dead.is_empty() => tracing::error!(
                dead = dead.join(", "),
                dir = %sw.dir.display(),
                "Open vSwitch daemons of this cloud had died: started them again; nwagent restores the flows \
                 (see the daemons' logs there)"
            ),
            Ok(Err(e)) => tracing::error!(
                dir = %sw.dir.display(),
                "Open vSwitch daemons of this cloud died and did not start again, so guests have no network: {e}"
            ),
            _ => {}
        }
    }
}

/// The userspace datapath leaves its taps (`vdc-int`, `ovs-netdev`) behind when
/// ovs-vswitchd exits; they carry nothing until the next start makes them again.
/// `ovs-netdev` is shared by every userspace switch of the namespace, so it goes only
/// when no other ovs-vswitchd runs in ours.
async fn remove_datapath_taps(vswitchd: Option<u32>) {
    if let Some(pid) = vswitchd {
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let ip = vdc_bus::cmd::system();
    let _ = ip.run("ip", &["link", "del", "vdc-int"]).await;
    if !other_vswitchd_here() {
        let _ = ip.run("ip", &["link", "del", "ovs-netdev"]).await;
    }
}

fn other_vswitchd_here() -> bool {
    let ours = std::fs::read_link("/proc/self/ns/net").ok();
    let Ok(procs) = std::fs::read_dir("/proc") else { return true };
    procs.flatten().any(|p| {
        let path = p.path();
        std::fs::read_to_string(path.join("comm")).is_ok_and(|c| c.trim() == "ovs-vswitchd")
            && std::fs::read_link(path.join("ns/net")).ok() == ours
    })
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let sums = std::fs::read_to_string(path.parent().unwrap_or(Path::new(".")).join("SHA256SUMS"))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    sums.lines()
        .find_map(|l| l.split_once("  ").filter(|(_, f)| f.trim_start_matches('*') == name).map(|(h, _)| h.to_owned()))
        .map(|h| format!("sha256:{h}"))
        .with_context(|| format!("{name} is not listed in SHA256SUMS"))
}

/// Registers the default public images once: `tiny` (a kernel and initramfs for kvm and
/// qemu) and `tiny-lxc` (a root filesystem), from the tiny image when it is built.
async fn ensure_default_images(dcmgr: &Dcmgr, tiny: Option<&Path>) -> anyhow::Result<()> {
    let ctx = &dcmgr.ctx;
    let admin = vdc_dcmgr::app::account::admin_id(ctx)
        .await
        .map_err(|e| anyhow::anyhow!("looking up the admin account: {e}"))?
        .context("the admin account is missing")?;
    let caller = Caller::system(admin.parse()?);
    let path = |f: &str| tiny.map(|d| d.join(f).display().to_string());
    let images = [
        CreateImage {
            name: DEFAULT_IMAGE.into(),
            format: ImageFormat::Kernel,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Qemu, HypervisorKind::Kvm],
            source: Some(path("vmlinuz").unwrap_or_else(|| "builtin:tiny-kernel".into())),
            checksum: tiny.map(|d| sha256_of(&d.join("vmlinuz"))).transpose()?,
            initrd: Some(path("initrd.gz").unwrap_or_else(|| "builtin:tiny-initrd".into())),
            kernel_cmdline: Some("console=ttyS0 panic=-1 quiet".into()),
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            // Its initrd unpacks into memory: with 64 MiB the guest never booted, and
            // showed `running` all the same (QEMU TCG, measured 2026-12-06).
            min_memory: Some(128 << 20),
            os: None,
            public: true,
            default_user: Some("root".into()),
        },
        CreateImage {
            name: "tiny-lxc".into(),
            format: ImageFormat::Tar,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Lxc],
            source: Some(path("rootfs.tar.gz").unwrap_or_else(|| "builtin:tiny-rootfs".into())),
            checksum: tiny.map(|d| sha256_of(&d.join("rootfs.tar.gz"))).transpose()?,
            initrd: None,
            kernel_cmdline: None,
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
            public: true,
            default_user: Some("root".into()),
        },
    ];
    for req in images {
        let exists = vdc_dcmgr::app::image::exists_public(ctx, &req.name).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        if !exists {
            match vdc_dcmgr::app::image::insert(ctx, &caller, req).await {
                Ok(_) => {}
                // The admin's image of that name is private, or deleted and still used:
                // the cloud starts without the built-in one.
                Err(e) if e.code() == "name_taken" => tracing::info!("built-in image not registered: {e}"),
                Err(e) => anyhow::bail!("{e}"),
            }
        }
    }
    Ok(())
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let tiny = tiny_image_dir(&data_dir, args.tiny_image.as_deref());
    let ext = External::from_args(args.no_external, args.external_cidr.as_deref())?;
    for k in &args.trust_keys {
        vdc_bundle::parse_key(k).map_err(|e| anyhow::anyhow!("--trust-key {k:?}: {e}"))?;
    }
    // Listened for from the start: a Ctrl-C while the cloud started was taken by a
    // handler installed meanwhile and lost, and the cloud came up and ran on (red team,
    // 2026-12-06). The start is not cut short (a half-made switch or external network
    // would be left behind): the cloud stops as soon as it is up.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        vdc_bus::sim::shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let starting = AllInOne::start(&data_dir, tiny.clone(), ext, &args);
    tokio::pin!(starting);
    let aio = tokio::select! {
        aio = &mut starting => aio?,
        _ = &mut stop_rx => {
            eprintln!("stopping once the cloud is up (it is starting)…");
            let aio = starting.await?;
            aio.stop().await;
            return Ok(());
        }
    };
    let url = aio.dcmgr.url();
    // The token of an earlier start may have been revoked since: say so, rather than
    // print a token every command then refuses (red team, 2026-12-07).
    let token_note = match crate::client::Client::new(url.clone(), aio.token.clone()).whoami().await {
        Ok(_) => String::new(),
        Err(e) => format!(
            "\n              REFUSED ({e}): write a working admin token to {}",
            data_dir.join("admin-token").display()
        ),
    };
    let cfg_path = config::config_path();
    config::save(&cfg_path, &CliConfig::new(url.clone(), aio.token.clone()))?;
    println!(
        "vdc all-in-one is running.

  API:        {url}/api/v1   (console: {url}/)
  data:       {}
  admin token {}{}
  CLI config  {} (written; `vdc` now talks to this cloud)

  hva:        {}{}
  nwagent:    {}
  sta:        {}
  external:   {}

Try:
  vdc keypair create mykey --private-key-out mykey.pem
  vdc network create net1 --cidr 10.0.0.0/24
  vdc secgroup create web --rule tcp:22 --rule icmp
  vdc image list                     # tiny (kvm, qemu) and tiny-lxc (lxc)
  vdc instance create web1 --image tiny --network net1 --secgroup web --keypair mykey --wait
  vdc instance console-log web1
  vdc floating-ip create             # an address of the external network
  vdc floating-ip associate <fip-…> web1
  ping <the floating IP>             # from this host; guests reach out through NAT
  vdc image import debian FILE.qcow2 --default-user debian   # a cloud image; then:
  vdc instance ssh NAME -- hostname  # through its floating IP, with mykey.pem
  vdc instance list

Ctrl-C stops the cloud (guests keep running, though their networking stops with this
Open vSwitch until the next start; they are found again then); its state stays in the
data directory.",
        data_dir.display(),
        aio.token,
        token_note,
        cfg_path.display(),
        aio.hva_driver,
        if tiny.is_none() {
            "\n  (no tiny image in DATA_DIR/tiny-image or /var/cache/vdc/tiny-image: run packaging/setup.sh)"
        } else {
            ""
        },
        aio.nw_driver,
        aio.sta_driver,
        aio.ext_driver,
    );
    let _ = stop_rx.await;
    eprintln!("stopping…");
    aio.stop().await;
    Ok(())
}

/// The all-in-one's default quotas: generous (one machine, its own operator), yet a
/// runaway script stops at a limit rather than at the host's last byte.
pub fn all_in_one_quotas() -> std::collections::BTreeMap<vdc_schema::api::QuotaKey, u64> {
    use vdc_schema::api::QuotaKey::*;
    std::collections::BTreeMap::from([
        (Instances, 100),
        (Vcpus, 400),
        (MemoryMib, 1 << 20),
        (Volumes, 200),
        (VolumeGib, 2048),
        (Snapshots, 500),
        (Networks, 100),
        (SecurityGroups, 200),
        (FloatingIps, 100),
        (Images, 200),
        (ImageGib, 1024),
        (Keypairs, 200),
        (ServerGroups, 100),
        (RootDiskGib, 1024),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_keeps_the_kind_of_guests_it_was_made_with() {
        let d = Path::new("/var/lib/vdc");
        // First start, or the same kind again.
        assert_eq!(guests_refused(None, true, None, d), None);
        assert_eq!(guests_refused(None, false, Some("no libvirt"), d), None);
        assert_eq!(guests_refused(Some("real"), true, None, d), None);
        assert_eq!(guests_refused(Some("simulated"), false, None, d), None);
        // Real guests, libvirt down: say how to start it.
        let e = guests_refused(Some("real"), false, Some("Failed to connect socket"), d).unwrap();
        assert!(e.contains("/var/lib/vdc") && e.contains("start-libvirt.sh") && e.contains("Failed to connect"), "{e}");
        // Real guests, --sim asked.
        let e = guests_refused(Some("real"), false, None, d).unwrap();
        assert!(e.contains("without --sim"), "{e}");
        let e = guests_refused(Some("simulated"), true, None, d).unwrap();
        assert!(e.contains("with --sim"), "{e}");
    }

    #[test]
    fn the_first_start_records_the_kind() {
        let d = tempfile::tempdir().unwrap();
        keep_guests(d.path(), true, None).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join(GUESTS_FILE)).unwrap(), "real\n");
        keep_guests(d.path(), true, None).unwrap();
        assert!(keep_guests(d.path(), false, Some("libvirtd is not running")).is_err());
        assert_eq!(std::fs::read_to_string(d.path().join(GUESTS_FILE)).unwrap(), "real\n", "unchanged");
        // Made before the file was: its switch's directory says real guests ran.
        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir(old.path().join("ovs")).unwrap();
        assert!(keep_guests(old.path(), false, Some("libvirtd is not running")).is_err());
        assert!(!old.path().join(GUESTS_FILE).exists());
        keep_guests(old.path(), true, None).unwrap();
        assert_eq!(std::fs::read_to_string(old.path().join(GUESTS_FILE)).unwrap(), "real\n");
    }
}
