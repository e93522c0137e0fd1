//! Per-network services on each host: a namespace `<prefix>-n<vni>` joined to the
//! integration bridge by a veth, holding the network's gateway address and
//! 169.254.169.254, where
//! - dnsmasq answers DHCP with exactly the addresses dcmgr assigned (static leases for
//!   this host's interfaces; other clients get nothing), and is the network's DNS server
//!   (handed out by DHCP, at the gateway address): it answers for this host's guests of
//!   the network by hostname and forwards other names to the host's resolvers. Those are
//!   read from `/etc/resolv.conf` (loopback stubs such as systemd-resolved's 127.0.0.53
//!   are unreachable from a namespace: the servers behind them are read from
//!   `/run/systemd/resolve/resolv.conf`). The namespace reaches them only through its
//!   router (a network with an external side); without one, forwarded names fail and
//!   the network's own names still answer,
//! - the metadata server answers EC2-style requests, choosing the instance by the
//!   request's source address (which anti-spoofing guarantees), and
//! - with an external network, the namespace is the network's router on this host: a
//!   second veth (`ext0`) on the host's external bridge holds the router's SNAT address
//!   and the floating IPs of this host's guests; nftables does 1:1 DNAT/SNAT for
//!   floating IPs, SNAT to the router's address for the others, and forwards nothing
//!   from outside that is not an answer or a floating IP's traffic.
//!
//! Why dnsmasq rather than answering DHCP in OpenFlow: it is the DHCP server every
//! cloud uses (OpenStack, Incus), it handles renewals, options and odd clients
//! correctly, and a static hosts file is all it needs from us.

use crate::cmd::{self, CmdError, Runner};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use vdc_schema::bus::{ExternalSpec, InstanceMetadata};
use vdc_schema::net::{Ipv4Addr, Ipv4Net, MacAddr};

#[derive(Debug, Clone, thiserror::Error)]
#[error("network service: {0}")]
pub struct ServiceError(pub String);

fn err(e: impl std::fmt::Display) -> ServiceError {
    ServiceError(e.to_string())
}

impl From<CmdError> for ServiceError {
    fn from(e: CmdError) -> Self {
        err(e)
    }
}

pub const METADATA_IP: &str = "169.254.169.254";

/// What one guest may ask the metadata service.
#[derive(Clone, Debug)]
pub struct Meta {
    pub instance_id: String,
    pub ip: Ipv4Addr,
    pub meta: InstanceMetadata,
}

type Table = Arc<RwLock<HashMap<Ipv4Addr, Meta>>>;

/// The metadata service is a guest's to call, and so a hostile guest's: one held 19,990
/// idle connections open, every descriptor of the all-in-one's process, and the API,
/// metadata and reconcilers of every tenant stopped. So connections are counted per
/// source address and in all (refused beyond: closed at once) and each lives at most
/// [`METADATA_CONN_SECS`] (cloud-init's requests take milliseconds).
pub const METADATA_CONNS_PER_SOURCE: usize = 8;
/// Connections of all the metadata servers of this process at once.
pub const METADATA_CONNS: usize = 512;
/// The longest a metadata connection stays open, answering or not.
pub const METADATA_CONN_SECS: u64 = 10;

pub use vdc_bus::conn_limits::ConnLimits;

/// The limits of this process's metadata servers (one set for all of them).
pub fn metadata_limits() -> Arc<ConnLimits> {
    ConnLimits::new(METADATA_CONNS_PER_SOURCE, METADATA_CONNS)
}

/// Serves `app` on `listener` under `limits` (see [`METADATA_CONNS_PER_SOURCE`]). Its
/// connections are tasks of this one: aborting it closes them all.
async fn serve_metadata(listener: tokio::net::TcpListener, app: Router, limits: Arc<ConnLimits>) {
    use tower::ServiceExt;
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(error = %e, "metadata: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            tracing::debug!(%peer, "metadata: too many connections, closed");
            continue;
        };
        let app = app.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(METADATA_CONN_SECS), conn).await;
        });
    }
}

struct Running {
    table: Table,
    server: tokio::task::JoinHandle<()>,
}

/// What one network's services on this host are to provide.
#[derive(Debug, Clone)]
pub struct NetService {
    pub vni: u32,
    pub cidr: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The metadata of this host's guests on the network.
    pub guests: Vec<Meta>,
    /// (MAC, IP, hostname) of this host's interfaces: DHCP's static leases.
    pub leases: Vec<(MacAddr, Ipv4Addr, String)>,
    pub external: Option<ExternalSpec>,
    /// (floating IP, fixed IP) of this host's guests.
    pub fips: Vec<(Ipv4Addr, Ipv4Addr)>,
}

pub struct Services {
    /// Where OVS and its bridge live (None: this process's own namespace).
    pub host_netns: Option<String>,
    /// The Linux bridge on the external network that routers attach to.
    pub external_bridge: Option<String>,
    /// Namespace name prefix (`vdc` in production; unique per test run in tests).
    pub prefix: String,
    pub dir: PathBuf,
    running: std::sync::Mutex<HashMap<u32, Running>>,
    /// Set (under `running`'s lock) once the metadata servers are stopped: an ensure still
    /// under way then starts none. One it started after the stop kept its listener bound
    /// for good, and the next nwagent in the process could not bind (host test, a second
    /// in-process restart).
    stopped: std::sync::atomic::AtomicBool,
    /// Of every metadata server of this process.
    metadata_limits: Arc<ConnLimits>,
    tools: Runner,
}

impl Services {
    /// Stops the metadata servers, as the end of this process would (DHCP stays).
    pub fn stop_metadata(&self) {
        let mut running = self.running.lock().unwrap();
        self.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        for (_, r) in running.drain() {
            r.server.abort();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop_metadata();
    }
}

/// The service port's MAC: locally administered, derived from the VNI.
pub fn service_mac(vni: u32) -> MacAddr {
    let [a, b, c, d] = vni.to_be_bytes();
    MacAddr::new([0x02, 0x5d, a, b, c, d])
}

/// The host end of the service veth (≤ 15 bytes).
pub fn service_dev(vni: u32) -> String {
    format!("vs{vni:x}")
}

impl Services {
    pub fn new(host_netns: Option<String>, external_bridge: Option<String>, prefix: String, dir: PathBuf) -> Self {
        Services {
            host_netns,
            external_bridge,
            prefix,
            dir,
            running: Default::default(),
            stopped: Default::default(),
            metadata_limits: metadata_limits(),
            tools: cmd::system(),
        }
    }

    /// The same services, running `ip`, `nft`, `dnsmasq` and `kill` through `tools`.
    pub fn with_runner(mut self, tools: Runner) -> Self {
        self.tools = tools;
        self
    }

    pub fn netns(&self, vni: u32) -> String {
        format!("{}-n{vni:x}", self.prefix)
    }

    /// `ip` in the host's namespace.
    async fn host_ip(&self, args: &[&str]) -> Result<String, ServiceError> {
        let mut all = vec![];
        if let Some(n) = &self.host_netns {
            all.extend(["-n", n.as_str()]);
        }
        all.extend_from_slice(args);
        Ok(self.tools.run("ip", &all).await?)
    }

    async fn in_ns(&self, vni: u32, args: &[&str]) -> Result<String, ServiceError> {
        let ns = self.netns(vni);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        Ok(self.tools.run("ip", &all).await?)
    }

    /// Makes the network's service namespace, DHCP server and metadata server exist,
    /// with `guests` (this host's interfaces on the network); idempotent. True when the
    /// switch-side device was made (again) now: a switch port of that name is stale.
    pub async fn ensure(&self, n: &NetService) -> Result<bool, ServiceError> {
        let made = self.ensure_netns(n).await?;
        self.ensure_dhcp(n).await?;
        self.ensure_metadata(n.vni, &n.guests).await?;
        match (&n.external, &self.external_bridge) {
            (Some(ext), Some(br)) => self.ensure_router(n, ext, br).await?,
            (Some(_), None) => {
                tracing::warn!(vni = n.vni, "the network has an external side but this host has no --external-bridge");
            }
            (None, _) => {}
        }
        Ok(made)
    }

    /// The namespace, and the veth joining it to the integration bridge with the
    /// gateway's and the metadata service's addresses.
    async fn ensure_netns(&self, n: &NetService) -> Result<bool, ServiceError> {
        let (vni, gateway, prefix_len) = (n.vni, n.gateway, n.cidr.prefix_len());
        let ns = self.netns(vni);
        let dev = service_dev(vni);
        let listed =
            self.tools.run("ip", &["netns", "list"]).await?.lines().any(|l| l.split_whitespace().next() == Some(&ns));
        // A listed name can be a stale file: its namespace is unreachable since the mount
        // namespace that held its name went (nwagent restarted under `ip netns exec`, as in
        // `vdc up`'s hermetic test), while its veths and dnsmasq may live on. All of it is
        // removed and made again.
        let alive = listed && self.tools.run("ip", &["-n", &ns, "link", "show", "lo"]).await.is_ok();
        if listed && !alive {
            tracing::warn!(netns = %ns, "the network service's namespace is gone: making it again");
            self.remove(vni).await?;
        }
        if !alive {
            self.tools.run("ip", &["netns", "add", &ns]).await?;
        }
        let made = self.host_ip(&["link", "show", &dev]).await.is_err();
        if made {
            self.host_ip(&["link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &ns]).await?;
            self.host_ip(&["link", "set", &dev, "up"]).await?;
            self.in_ns(vni, &["ip", "link", "set", "lo", "up"]).await?;
            let mac = service_mac(vni).to_string();
            self.in_ns(vni, &["ip", "link", "set", "eth0", "address", &mac, "mtu", "1450", "up"]).await?;
            self.in_ns(vni, &["ip", "addr", "add", &format!("{gateway}/{prefix_len}"), "dev", "eth0"]).await?;
            self.in_ns(vni, &["ip", "addr", "add", &format!("{METADATA_IP}/32"), "dev", "eth0"]).await?;
            // Checksums in software: the userspace datapath does not fill them in.
            let _ = self.in_ns(vni, &["ethtool", "-K", "eth0", "tx", "off"]).await;
        }
        Ok(made)
    }

    /// The router side: ext0 on the external bridge, its addresses, and the NAT rules.
    async fn ensure_router(&self, n: &NetService, ext: &ExternalSpec, bridge: &str) -> Result<(), ServiceError> {
        let vni = n.vni;
        let dev = format!("xr{vni:x}");
        let ns = self.netns(vni);
        if self.host_ip(&["link", "show", &dev]).await.is_err() {
            self.host_ip(&["link", "add", &dev, "type", "veth", "peer", "name", "ext0", "netns", &ns]).await?;
            self.in_ns(vni, &["ip", "link", "set", "ext0", "up"]).await?;
            self.in_ns(vni, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).await?;
        }
        // Every time: a bridge made again (the all-in-one's, after a reboot of the host
        // side) has lost its ports.
        self.host_ip(&["link", "set", &dev, "master", bridge, "up"]).await?;
        // Addresses: the SNAT one on the external subnet, each floating IP as a /32.
        let mut want: Vec<String> = vec![format!("{}/{}", ext.snat_ip, ext.cidr.prefix_len())];
        want.extend(n.fips.iter().map(|(fip, _)| format!("{fip}/32")));
        let have_json = self.in_ns(vni, &["ip", "-j", "addr", "show", "dev", "ext0"]).await?;
        let have: Vec<String> = serde_json::from_str::<serde_json::Value>(&have_json)
            .ok()
            .and_then(|v| v.as_array()?.first()?.get("addr_info")?.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|a| a["family"] == "inet")
            .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
            .collect();
        for a in want.iter().filter(|a| !have.contains(a)) {
            self.in_ns(vni, &["ip", "addr", "add", a, "dev", "ext0"]).await?;
            // The neighbours (the host, the upstream router) still map an address that was
            // on another router (a floating IP moved between networks or hosts) to that
            // one's MAC until their entry ages out: about 30 s without an answer (red
            // team, 2026-12-06). A gratuitous ARP updates them now, as Neutron's L3 agent
            // does; sent aside, for arping waits a second.
            let (tools, ns, ip) = (self.tools.clone(), self.netns(vni), a.split('/').next().unwrap_or(a).to_owned());
            tokio::spawn(async move {
                let args = ["netns", "exec", &ns, "arping", "-U", "-c", "1", "-I", "ext0", &ip];
                if let Err(e) = tools.run("ip", &args).await {
                    tracing::warn!(address = ip, "no gratuitous ARP (is arping installed?): {e}");
                }
            });
        }
        for a in have.iter().filter(|a| !want.contains(a)) {
            self.in_ns(vni, &["ip", "addr", "del", a, "dev", "ext0"]).await?;
        }
        self.in_ns(vni, &["ip", "route", "replace", "default", "via", &ext.gateway.to_string(), "dev", "ext0"]).await?;
        // The whole ruleset in one nft transaction: never half-applied.
        let rules = nat_rules(n, ext);
        let file = self.dir.join(format!("nat-{vni}.nft"));
        std::fs::write(&file, rules).map_err(err)?;
        self.in_ns(vni, &["nft", "-f", &file.to_string_lossy()]).await?;
        Ok(())
    }

    /// dnsmasq for the network: DHCP with static leases, and DNS. Its files are rewritten
    /// when they change; a running dnsmasq re-reads them on SIGHUP (hosts files) or by
    /// itself (the upstream resolv file, polled). A dnsmasq started with other arguments
    /// (another gateway, or by an nwagent before DNS was served) is replaced.
    async fn ensure_dhcp(&self, n: &NetService) -> Result<(), ServiceError> {
        let vni = n.vni;
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let hosts = self.dir.join(format!("dhcp-{vni}.hosts"));
        let pairs: String = n.leases.iter().map(|(mac, ip, name)| format!("{mac},{ip},{name}\n")).collect();
        let gone = gone_leases(&std::fs::read_to_string(&hosts).unwrap_or_default(), &pairs);
        write_if_changed(&hosts, &pairs)?;
        let names = self.dir.join(format!("dns-{vni}.hosts"));
        write_if_changed(&names, &dns_hosts(&n.leases))?;
        let resolv = self.dir.join(format!("dns-{vni}.resolv"));
        let upstream = self.upstreams(vni);
        if upstream.is_empty() {
            tracing::warn!(
                vni,
                "no upstream resolver reachable from a namespace: guests resolve only the network's names"
            );
        }
        let text: String = upstream.iter().map(|ip| format!("nameserver {ip}\n")).collect();
        // dnsmasq polls it and re-reads it when its mtime moves.
        write_if_changed(&resolv, &text)?;
        let pidfile = self.dir.join(format!("dhcp-{vni}.pid"));
        let argsfile = self.dir.join(format!("dhcp-{vni}.args"));
        let range = format!("{},static,{},12h", n.cidr.network(), n.cidr.netmask());
        let lease = self.dir.join(format!("dhcp-{vni}.leases"));
        let gateway = n.gateway;
        let args: Vec<String> = vec![
            "--conf-file=/dev/null".into(),
            "--interface=eth0".into(),
            "--bind-interfaces".into(),
            "--except-interface=lo".into(),
            // DNS: the network's guests by name (never the host's /etc/hosts), other
            // names forwarded upstream; plain names and private reverse lookups stay here.
            "--no-hosts".into(),
            format!("--addn-hosts={}", names.display()),
            format!("--resolv-file={}", resolv.display()),
            "--domain-needed".into(),
            "--bogus-priv".into(),
            format!("--dhcp-range={range}"),
            format!("--dhcp-hostsfile={}", hosts.display()),
            format!("--dhcp-leasefile={}", lease.display()),
            format!("--dhcp-option=option:router,{gateway}"),
            format!("--dhcp-option=option:dns-server,{gateway}"),
            format!("--pid-file={}", pidfile.display()),
            "--dhcp-authoritative".into(),
            // Its own log beside its files: what an operator reads when a guest says it
            // got no lease. Not every exchange: a guest sending DISCOVERs with made-up
            // client addresses grew it by 2.6 MB/s, a line each (red team, 2026-12-06);
            // problems are still logged.
            format!("--log-facility={}", self.dir.join(format!("dhcp-{vni}.log")).display()),
            "--quiet-dhcp".into(),
        ];
        let pid =
            std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()).filter(|p| alive(*p));
        let old = match pid {
            Some(pid) => {
                let same = std::fs::read_to_string(&argsfile).ok().as_deref() == Some(args.join("\n").as_str());
                if same {
                    // dnsmasq re-reads its hosts files on SIGHUP. Sent on every ensure, not
                    // only when the files change: a run that sent it only on change once saw a
                    // new guest get no lease (cause not found; see dhcp-VNI.log next time).
                    self.tools.run("kill", &["-HUP", &pid.to_string()]).await?;
                    // dnsmasq keeps a removed interface's lease for its 12 h: the next
                    // interface given the address got none ("leased to" the old MAC).
                    for (mac, ip) in gone {
                        if let Err(e) = self.in_ns(vni, &["dhcp_release", "eth0", &ip, &mac]).await {
                            tracing::warn!(vni, %ip, %mac, "releasing a removed interface's DHCP lease: {e}");
                        }
                    }
                    return Ok(());
                }
                tracing::info!(vni, pid, "dnsmasq runs with other arguments: replaced");
                vec![pid]
            }
            // What runs in the namespace (ours by its name) without a pid file here is an
            // earlier run's dnsmasq whose files were removed (`vdc up` on a new data
            // directory): it holds the addresses the new one binds.
            None => {
                let ns = self.netns(vni);
                let out = self.tools.run("ip", &["netns", "pids", &ns]).await?;
                let pids: Vec<i32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
                if !pids.is_empty() {
                    tracing::warn!(vni, ?pids, netns = %ns, "processes of an earlier run hold the network service's namespace: stopped");
                }
                pids
            }
        };
        for pid in &old {
            self.tools.run("kill", &[&pid.to_string()]).await?;
        }
        // Their sockets must be closed before the new one binds the same addresses.
        for _ in 0..50 {
            if !old.iter().any(|p| alive(*p)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // Leases of interfaces gone while no dnsmasq ran (or before leases were
        // released) would hold their addresses from the next interface for 12 h.
        if let Ok(held) = std::fs::read_to_string(&lease) {
            write_if_changed(&lease, &current_leases(&held, &pairs))?;
        }
        let mut argv = vec!["dnsmasq"];
        argv.extend(args.iter().map(String::as_str));
        self.in_ns(vni, &argv).await?;
        write_atomic(&argsfile, &args.join("\n"))?;
        Ok(())
    }

    /// The resolvers dnsmasq forwards to, as the host has them (see [`upstreams`]):
    /// `/etc/netns/<namespace>/resolv.conf` when the operator wrote one (the iproute2
    /// convention for per-namespace resolvers), else `/etc/resolv.conf`.
    fn upstreams(&self, vni: u32) -> Vec<std::net::IpAddr> {
        let own = format!("/etc/netns/{}/resolv.conf", self.netns(vni));
        let main = std::fs::read_to_string(&own).or_else(|_| std::fs::read_to_string("/etc/resolv.conf"));
        let stub = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        upstreams(&main.unwrap_or_default(), stub.as_deref())
    }

    async fn ensure_metadata(&self, vni: u32, guests: &[Meta]) -> Result<(), ServiceError> {
        let table: HashMap<Ipv4Addr, Meta> = guests.iter().map(|m| (m.ip, m.clone())).collect();
        if let Some(r) = self.running.lock().unwrap().get(&vni) {
            *r.table.write().unwrap() = table;
            return Ok(());
        }
        let listener = bind_in_netns(&format!("/var/run/netns/{}", self.netns(vni)), &format!("{METADATA_IP}:80"))?;
        let table: Table = Arc::new(RwLock::new(table));
        let app = metadata_router(table.clone());
        let listener = tokio::net::TcpListener::from_std(listener).map_err(err)?;
        let mut running = self.running.lock().unwrap();
        if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(()); // the listener closes here
        }
        let server = tokio::spawn(serve_metadata(listener, app, self.metadata_limits.clone()));
        running.insert(vni, Running { table, server });
        Ok(())
    }

    /// Stops the network's services and removes its namespace (and so its veth).
    pub async fn remove(&self, vni: u32) -> Result<(), ServiceError> {
        if let Some(r) = self.running.lock().unwrap().remove(&vni) {
            r.server.abort();
        }
        let pidfile = self.dir.join(format!("dhcp-{vni}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().map(|p| p.trim().to_owned()) {
            let _ = self.tools.run("kill", &[&pid]).await;
            let _ = std::fs::remove_file(&pidfile);
        }
        let _ = self.host_ip(&["link", "del", &service_dev(vni)]).await;
        let _ = self.host_ip(&["link", "del", &format!("xr{vni:x}")]).await;
        let _ = std::fs::remove_file(self.dir.join(format!("nat-{vni}.nft")));
        let _ = self.tools.run("ip", &["netns", "del", &self.netns(vni)]).await;
        for name in ["dhcp-{}.hosts", "dhcp-{}.leases", "dhcp-{}.args", "dhcp-{}.log", "dns-{}.hosts", "dns-{}.resolv"]
        {
            let _ = std::fs::remove_file(self.dir.join(name.replace("{}", &vni.to_string())));
        }
        Ok(())
    }
}

/// The name servers of a resolv.conf that a network namespace can reach. Loopback ones
/// (systemd-resolved's 127.0.0.53 stub, a local cache) live in the host's namespace and
/// are unreachable from the service namespace: when the host has such a stub, the
/// servers behind it are taken from systemd-resolved's `resolv.conf` (`systemd`).
pub fn upstreams(resolv_conf: &str, systemd: Option<&str>) -> Vec<std::net::IpAddr> {
    let servers = |text: &str| -> Vec<std::net::IpAddr> {
        text.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("nameserver")).then(|| w.next()?.split('%').next()?.parse().ok()).flatten()
            })
            .collect()
    };
    let all = servers(resolv_conf);
    let mut out: Vec<std::net::IpAddr> = all.iter().copied().filter(|ip| !ip.is_loopback()).collect();
    if all.iter().any(|ip| ip.is_loopback()) {
        out.extend(systemd.map(servers).unwrap_or_default().into_iter().filter(|ip| !ip.is_loopback()));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|ip| seen.insert(*ip));
    out
}

/// The network's names for DNS (`/etc/hosts` format): each guest's hostname.
/// The (MAC, IP) pairs of a dnsmasq hosts file (`MAC,IP,NAME` lines).
fn host_pairs(hosts: &str) -> std::collections::HashSet<(&str, &str)> {
    hosts
        .lines()
        .filter_map(|l| {
            let mut p = l.split(',');
            Some((p.next()?, p.next()?))
        })
        .collect()
}

/// The lines of dnsmasq's lease file `held` (`EXPIRY MAC IP NAME CLIENT-ID`) whose MAC
/// and address the hosts file `hosts` still pairs.
fn current_leases(held: &str, hosts: &str) -> String {
    let pairs = host_pairs(hosts);
    held.lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() >= 3 && pairs.contains(&(f[1], f[2]))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The (MAC, IP) pairs of the hosts file `before` that `after` no longer has.
fn gone_leases(before: &str, after: &str) -> Vec<(String, String)> {
    let kept = host_pairs(after);
    let mut gone: Vec<(String, String)> =
        host_pairs(before).difference(&kept).map(|(m, i)| (m.to_string(), i.to_string())).collect();
    gone.sort();
    gone
}

fn dns_hosts(leases: &[(MacAddr, Ipv4Addr, String)]) -> String {
    leases.iter().filter(|(_, _, name)| !name.is_empty()).map(|(_, ip, name)| format!("{ip} {name}\n")).collect()
}

/// Writes `text` unless the file already holds it (dnsmasq polls some of its files'
/// mtimes).
fn write_if_changed(path: &std::path::Path, text: &str) -> Result<(), ServiceError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(text) {
        return Ok(());
    }
    write_atomic(path, text)
}

fn write_atomic(path: &std::path::Path, text: &str) -> Result<(), ServiceError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Is `pid` a running process (a zombie is not: nothing may reap it here)?
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The router's nftables ruleset, as one transaction that replaces the previous one:
/// 1:1 NAT for each floating IP, SNAT to the router's address for the rest of the
/// network, and forwarding of nothing from outside but answers and floating IPs' traffic.
fn nat_rules(n: &NetService, ext: &ExternalSpec) -> String {
    let mut pre = String::new();
    let mut post = String::new();
    for (fip, fixed) in &n.fips {
        pre.push_str(&format!("    ip daddr {fip} dnat to {fixed}\n"));
        post.push_str(&format!("    oifname \"ext0\" ip saddr {fixed} snat to {fip}\n"));
    }
    post.push_str(&format!("    oifname \"ext0\" ip saddr {} snat to {}\n", n.cidr, ext.snat_ip));
    format!(
        "table ip vdc\ndelete table ip vdc\ntable ip vdc {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state invalid drop\n    ct state established,related accept\n    iifname \"eth0\" oifname \"ext0\" accept\n    ct status dnat accept\n  }}\n}}\n"
    )
}

/// Binds a TCP listener inside another network namespace: a short-lived thread enters
/// the namespace, binds, and hands the socket back (a socket stays in the namespace it
/// was made in).
fn bind_in_netns(ns_path: &str, addr: &str) -> Result<std::net::TcpListener, ServiceError> {
    let (ns_path, addr) = (ns_path.to_owned(), addr.to_owned());
    std::thread::spawn(move || -> Result<std::net::TcpListener, ServiceError> {
        let f = std::fs::File::open(&ns_path).map_err(|e| ServiceError(format!("{ns_path}: {e}")))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&f),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| ServiceError(format!("entering {ns_path}: {e}")))?;
        let l = std::net::TcpListener::bind(&addr).map_err(|e| ServiceError(format!("binding {addr}: {e}")))?;
        l.set_nonblocking(true).map_err(err)?;
        Ok(l)
    })
    .join()
    .map_err(|_| ServiceError("the namespace thread panicked".into()))?
}

fn who(table: &Table, peer: &SocketAddr) -> Option<Meta> {
    let std::net::IpAddr::V4(ip) = peer.ip() else { return None };
    table.read().unwrap().get(&ip).cloned()
}

type Answer = Result<String, StatusCode>;

/// The EC2 metadata versions cloud-init and other clients ask for (cloud-init tries
/// `2009-04-04` and `2021-03-23`; all serve the same data here).
const EC2_VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2009-04-04",
    "2011-01-01",
    "2012-01-12",
    "2014-02-25",
    "2016-09-02",
    "2021-03-23",
    "latest",
];

/// The metadata service: EC2-style under every version cloud-init reads (directory
/// listings end in `/`), IMDSv2's token `PUT` (accepted; the guest is known by its source
/// address, which anti-spoofing guarantees), and OpenStack's `meta_data.json`.
fn metadata_router(table: Table) -> Router {
    Router::new()
        .route("/", get(versions))
        .route("/{version}", get(version_index))
        .route("/{version}/", get(version_index))
        .route("/{version}/meta-data", get(index))
        .route("/{version}/meta-data/", get(index))
        .route("/{version}/meta-data/{key}", get(item))
        .route("/{version}/meta-data/public-keys/", get(keys))
        .route("/{version}/meta-data/public-keys/{n}", get(key_index))
        .route("/{version}/meta-data/public-keys/{n}/", get(key_index))
        .route("/{version}/meta-data/public-keys/{n}/openssh-key", get(key))
        .route("/{version}/user-data", get(user_data))
        .route("/latest/api/token", axum::routing::put(token))
        .route("/openstack", get(openstack_versions))
        .route("/openstack/", get(openstack_versions))
        .route("/openstack/{version}/meta_data.json", get(openstack_meta))
        .route("/openstack/{version}/user_data", get(openstack_user_data))
        .with_state(table)
}

/// The guest asking, for a version of the EC2 API this service knows; else 404.
fn guest(table: &Table, peer: &SocketAddr, version: &str) -> Result<Meta, StatusCode> {
    if !EC2_VERSIONS.contains(&version) {
        return Err(StatusCode::NOT_FOUND);
    }
    who(table, peer).ok_or(StatusCode::NOT_FOUND)
}

async fn versions() -> String {
    EC2_VERSIONS.iter().map(|v| format!("{v}\n")).collect()
}

async fn version_index(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    Ok(if m.meta.user_data.is_some() { "meta-data/\nuser-data\n" } else { "meta-data/\n" }.into())
}

async fn index(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Answer {
    guest(&t, &peer, &version)?;
    Ok("instance-id\nhostname\nlocal-hostname\nlocal-ipv4\npublic-keys/\n".into())
}

async fn item(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((version, key)): Path<(String, String)>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    match key.as_str() {
        "instance-id" => Ok(m.instance_id),
        "hostname" | "local-hostname" => Ok(m.meta.hostname),
        "local-ipv4" => Ok(m.ip.to_string()),
        "public-keys" => Ok((0..m.meta.public_keys.len()).map(|i| format!("{i}=key-{i}\n")).collect()),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

async fn keys(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    Ok((0..m.meta.public_keys.len()).map(|i| format!("{i}=key-{i}\n")).collect())
}

async fn key_index(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((version, n)): Path<(String, usize)>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    m.meta.public_keys.get(n).map(|_| "openssh-key\n".to_owned()).ok_or(StatusCode::NOT_FOUND)
}

async fn key(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((version, n)): Path<(String, usize)>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    m.meta.public_keys.get(n).map(|k| format!("{k}\n")).ok_or(StatusCode::NOT_FOUND)
}

async fn user_data(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Answer {
    let m = guest(&t, &peer, &version)?;
    m.meta.user_data.ok_or(StatusCode::NOT_FOUND)
}

/// IMDSv2: a session token for the guest to send back. Any value works, since the guest
/// is known by its address; the token only has to exist for clients that insist on it.
async fn token(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Answer {
    let m = who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    Ok(format!("vdc-{}", m.instance_id))
}

/// The guest asking, for the one OpenStack metadata version served (`latest`); else 404.
fn openstack_guest(table: &Table, peer: &SocketAddr, version: &str) -> Result<Meta, StatusCode> {
    if version != "latest" {
        return Err(StatusCode::NOT_FOUND);
    }
    who(table, peer).ok_or(StatusCode::NOT_FOUND)
}

async fn openstack_versions() -> String {
    "latest\n".into()
}

async fn openstack_meta(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Result<axum::Json<serde_json::Value>, StatusCode> {
    let m = openstack_guest(&t, &peer, &version)?;
    let keys: serde_json::Map<String, serde_json::Value> =
        m.meta.public_keys.iter().enumerate().map(|(i, k)| (format!("key-{i}"), k.clone().into())).collect();
    Ok(axum::Json(serde_json::json!({
        "uuid": m.instance_id,
        "hostname": m.meta.hostname,
        "name": m.meta.hostname,
        "launch_index": 0,
        "public_keys": keys,
    })))
}

async fn openstack_user_data(
    State(t): State<Table>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(version): Path<String>,
) -> Answer {
    let m = openstack_guest(&t, &peer, &version)?;
    m.meta.user_data.ok_or(StatusCode::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::FakeRunner;

    /// Services of host namespace `h1`, namespaces prefixed `vt`, on a fake.
    fn services(dir: &std::path::Path) -> (Arc<FakeRunner>, Services) {
        let f = FakeRunner::new();
        let s =
            Services::new(Some("h1".into()), Some("br-ex".into()), "vt".into(), dir.to_owned()).with_runner(f.clone());
        (f, s)
    }

    fn net(fips: &[(&str, &str)]) -> NetService {
        NetService {
            vni: 42,
            cidr: "10.10.0.0/24".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            guests: vec![],
            leases: vec![("52:54:00:00:00:05".parse().unwrap(), "10.10.0.5".parse().unwrap(), "web".into())],
            external: Some(ExternalSpec {
                cidr: "203.0.113.0/24".parse().unwrap(),
                gateway: "203.0.113.1".parse().unwrap(),
                snat_ip: "203.0.113.2".parse().unwrap(),
            }),
            fips: fips.iter().map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).collect(),
        }
    }

    #[tokio::test]
    async fn the_namespace_is_made_once_with_the_gateway_and_metadata_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        f.ok(&["ip", "netns", "list"], "vt-n7 (id: 0)\n");
        f.fail(&["ip", "-n", "h1", "link", "show"], "Device \"vs2a\" does not exist.");
        s.ensure_netns(&net(&[])).await.unwrap();
        assert_eq!(
            f.lines(),
            [
                "ip netns list",
                "ip netns add vt-n2a",
                "ip -n h1 link show vs2a",
                "ip -n h1 link add vs2a type veth peer name eth0 netns vt-n2a",
                "ip -n h1 link set vs2a up",
                "ip netns exec vt-n2a ip link set lo up",
                "ip netns exec vt-n2a ip link set eth0 address 02:5d:00:00:00:2a mtu 1450 up",
                "ip netns exec vt-n2a ip addr add 10.10.0.1/24 dev eth0",
                "ip netns exec vt-n2a ip addr add 169.254.169.254/32 dev eth0",
                "ip netns exec vt-n2a ethtool -K eth0 tx off",
            ]
        );
        // There already: nothing is added.
        f.clear();
        f.ok(&["ip", "netns", "list"], "vt-n7 (id: 0)\nvt-n2a (id: 1)\n");
        f.ok(&["ip", "-n", "h1", "link", "show"], "");
        s.ensure_netns(&net(&[])).await.unwrap();
        assert_eq!(f.lines(), ["ip netns list", "ip -n vt-n2a link show lo", "ip -n h1 link show vs2a"]);
        // Listed but dead (a stale name whose namespace went with its mount namespace):
        // made again, and its veth with it.
        f.clear();
        f.fail(&["ip", "-n", "vt-n2a", "link", "show", "lo"], "setting the network namespace failed: Invalid argument");
        f.fail(&["ip", "-n", "h1", "link", "show"], "Device \"vs2a\" does not exist.");
        s.ensure_netns(&net(&[])).await.unwrap();
        assert_eq!(
            f.lines()[..8],
            [
                "ip netns list",
                "ip -n vt-n2a link show lo",
                "ip -n h1 link del vs2a",
                "ip -n h1 link del xr2a",
                "ip netns del vt-n2a",
                "ip netns add vt-n2a",
                "ip -n h1 link show vs2a",
                "ip -n h1 link add vs2a type veth peer name eth0 netns vt-n2a",
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_step_stops_the_ensure_and_names_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        f.fail(&["ip", "netns", "add"], "Permission denied");
        let e = s.ensure(&net(&[])).await.unwrap_err();
        assert_eq!(e.to_string(), "network service: `ip netns add vt-n2a` failed: Permission denied");
        assert_eq!(f.lines(), ["ip netns list", "ip netns add vt-n2a"]);
    }

    #[tokio::test]
    async fn a_new_router_joins_the_external_bridge_and_forwards() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        f.fail(&["ip", "-n", "h1", "link", "show", "xr2a"], "Device \"xr2a\" does not exist.");
        f.ok(&["ip", "netns", "exec", "vt-n2a", "ip", "-j", "addr"], "[]");
        let n = net(&[]);
        s.ensure_router(&n, n.external.as_ref().unwrap(), "br-ex").await.unwrap();
        assert_eq!(
            f.lines()[..7],
            [
                "ip -n h1 link show xr2a",
                "ip -n h1 link add xr2a type veth peer name ext0 netns vt-n2a",
                "ip netns exec vt-n2a ip link set ext0 up",
                "ip netns exec vt-n2a sysctl -qw net.ipv4.ip_forward=1",
                "ip -n h1 link set xr2a master br-ex up",
                "ip netns exec vt-n2a ip -j addr show dev ext0",
                "ip netns exec vt-n2a ip addr add 203.0.113.2/24 dev ext0",
            ]
        );
    }

    #[tokio::test]
    async fn a_floating_ip_is_an_address_and_one_nft_transaction_of_1_to_1_nat() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        // ext0 has the SNAT address and a floating IP that is no longer this host's.
        let have = r#"[{"ifname":"ext0","addr_info":[{"family":"inet","local":"203.0.113.2","prefixlen":24},
            {"family":"inet","local":"203.0.113.99","prefixlen":32},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        f.ok(&["ip", "netns", "exec", "vt-n2a", "ip", "-j", "addr"], have);
        let n = net(&[("203.0.113.10", "10.10.0.5")]);
        s.ensure_router(&n, n.external.as_ref().unwrap(), "br-ex").await.unwrap();
        let file = dir.path().join("nat-42.nft");
        // Each address added is announced (aside, so in no fixed place among the others).
        let garp = "ip netns exec vt-n2a arping -U -c 1 -I ext0 203.0.113.10";
        for _ in 0..100 {
            if f.lines().iter().any(|l| l == garp) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let (garps, lines): (Vec<String>, Vec<String>) = f.lines().into_iter().partition(|l| l.contains(" arping "));
        assert_eq!(garps, [garp]);
        assert_eq!(
            lines,
            [
                "ip -n h1 link show xr2a".to_owned(),
                "ip -n h1 link set xr2a master br-ex up".into(),
                "ip netns exec vt-n2a ip -j addr show dev ext0".into(),
                "ip netns exec vt-n2a ip addr add 203.0.113.10/32 dev ext0".into(),
                "ip netns exec vt-n2a ip addr del 203.0.113.99/32 dev ext0".into(),
                "ip netns exec vt-n2a ip route replace default via 203.0.113.1 dev ext0".into(),
                format!("ip netns exec vt-n2a nft -f {}", file.display()),
            ]
        );
        let rules = std::fs::read_to_string(&file).unwrap();
        assert!(
            rules.starts_with("table ip vdc\ndelete table ip vdc\ntable ip vdc {\n"),
            "replaces the table whole:\n{rules}"
        );
        assert!(
            rules.contains(
                "  chain pre {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr 203.0.113.10 dnat to 10.10.0.5\n  }\n"
            ),
            "{rules}"
        );
        // The floating IP's own SNAT comes before the network's catch-all.
        assert!(
            rules.contains(
                "  chain post {\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"ext0\" ip saddr 10.10.0.5 snat to 203.0.113.10\n    oifname \"ext0\" ip saddr 10.10.0.0/24 snat to 203.0.113.2\n  }\n"
            ),
            "{rules}"
        );
        // Packets conntrack finds invalid (a RST opening nothing) would leave un-NATed,
        // with the tenant's private source address.
        assert!(
            rules.contains("policy drop;\n    ct state invalid drop\n    ct state established,related accept\n"),
            "{rules}"
        );
    }

    #[test]
    fn a_removed_interfaces_lease_goes() {
        let before = "52:54:00:00:00:05,10.10.0.5,web\n52:54:00:00:00:06,10.10.0.6,db\n";
        let after = "52:54:00:00:00:06,10.10.0.6,db\n52:54:00:00:00:07,10.10.0.5,new\n";
        assert_eq!(gone_leases(before, after), [("52:54:00:00:00:05".to_owned(), "10.10.0.5".to_owned())]);
        let held = "1700000000 52:54:00:00:00:05 10.10.0.5 web *\n1700000000 52:54:00:00:00:06 10.10.0.6 db 01:aa\n";
        assert_eq!(current_leases(held, after), "1700000000 52:54:00:00:00:06 10.10.0.6 db 01:aa\n");
    }

    #[tokio::test]
    async fn dnsmasq_starts_with_static_leases_and_dns_then_reloads_them() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        let mut n = net(&[]);
        s.ensure_dhcp(&n).await.unwrap();
        let d = dir.path().display();
        assert_eq!(f.lines()[0], "ip netns pids vt-n2a", "no pid file: what holds the namespace is asked");
        assert_eq!(
            f.calls()[1].argv,
            [
                "ip".to_owned(),
                "netns".into(),
                "exec".into(),
                "vt-n2a".into(),
                "dnsmasq".into(),
                "--conf-file=/dev/null".into(),
                "--interface=eth0".into(),
                "--bind-interfaces".into(),
                "--except-interface=lo".into(),
                "--no-hosts".into(),
                format!("--addn-hosts={d}/dns-42.hosts"),
                format!("--resolv-file={d}/dns-42.resolv"),
                "--domain-needed".into(),
                "--bogus-priv".into(),
                "--dhcp-range=10.10.0.0,static,255.255.255.0,12h".into(),
                format!("--dhcp-hostsfile={d}/dhcp-42.hosts"),
                format!("--dhcp-leasefile={d}/dhcp-42.leases"),
                "--dhcp-option=option:router,10.10.0.1".into(),
                "--dhcp-option=option:dns-server,10.10.0.1".into(),
                format!("--pid-file={d}/dhcp-42.pid"),
                "--dhcp-authoritative".into(),
                format!("--log-facility={d}/dhcp-42.log"),
                "--quiet-dhcp".into(),
            ]
        );
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_eq!(read("dhcp-42.hosts"), "52:54:00:00:00:05,10.10.0.5,web\n");
        assert_eq!(read("dns-42.hosts"), "10.10.0.5 web\n");
        assert!(!read("dns-42.resolv").contains("127."), "never a loopback resolver: {}", read("dns-42.resolv"));
        // dnsmasq runs (a live pid): a change of leases is a SIGHUP, not a second dnsmasq.
        f.clear();
        let pid = std::process::id();
        std::fs::write(dir.path().join("dhcp-42.pid"), format!("{pid}\n")).unwrap();
        n.leases.clear();
        s.ensure_dhcp(&n).await.unwrap();
        // The removed interface's lease is released: its address goes to the next one.
        assert_eq!(
            f.lines(),
            [format!("kill -HUP {pid}"), "ip netns exec vt-n2a dhcp_release eth0 10.10.0.5 52:54:00:00:00:05".into()]
        );
        assert_eq!(read("dhcp-42.hosts"), "");
        assert_eq!(read("dns-42.hosts"), "");
        // One started with other arguments (here: by an nwagent that served no DNS) is
        // replaced by one with today's.
        f.clear();
        let mut old = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        std::fs::write(dir.path().join("dhcp-42.pid"), format!("{}\n", old.id())).unwrap();
        std::fs::write(dir.path().join("dhcp-42.args"), "--port=0").unwrap();
        let reaper = std::thread::spawn(move || old.wait());
        s.ensure_dhcp(&n).await.unwrap();
        reaper.join().unwrap().unwrap();
        let lines = f.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("kill ") && !lines[0].contains("-HUP"), "{lines:?}");
        assert!(lines[1].starts_with("ip netns exec vt-n2a dnsmasq --conf-file=/dev/null"), "{lines:?}");
        assert!(read("dhcp-42.args").contains("--dhcp-option=option:dns-server,10.10.0.1"));
        // No pid file (an earlier run's files were removed) but a process in the
        // namespace: it is stopped before dnsmasq starts, or the new one could not bind.
        f.clear();
        std::fs::remove_file(dir.path().join("dhcp-42.pid")).unwrap();
        let mut left = std::process::Command::new("sleep").arg("0.3").spawn().unwrap();
        let left_pid = left.id() as i32;
        f.ok(&["ip", "netns", "pids"], &format!("{left_pid}\n"));
        let reaper = std::thread::spawn(move || left.wait());
        s.ensure_dhcp(&n).await.unwrap();
        assert!(!alive(left_pid), "dnsmasq started before the old process ended");
        reaper.join().unwrap().unwrap();
        let lines = f.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0], "ip netns pids vt-n2a");
        assert!(lines[1].starts_with("kill ") && !lines[1].contains("-HUP"), "{lines:?}");
        assert!(lines[2].starts_with("ip netns exec vt-n2a dnsmasq "), "{lines:?}");
    }

    #[test]
    fn upstream_resolvers_are_the_hosts_minus_unreachable_stubs() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(upstreams("# a comment\nsearch lan\nnameserver 10.255.255.53\n", None), [ip("10.255.255.53")]);
        // systemd-resolved's stub: the servers behind it.
        let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
        let real = "nameserver 192.0.2.53\nnameserver 2001:db8::53\nnameserver 192.0.2.53\n";
        assert_eq!(upstreams(stub, Some(real)), [ip("192.0.2.53"), ip("2001:db8::53")]);
        // A stub with nothing behind it known: none (names of the network still answer).
        assert!(upstreams(stub, None).is_empty());
        assert!(upstreams("nameserver ::1\n", None).is_empty());
        // A reachable server next to a stub is kept first.
        assert_eq!(upstreams("nameserver 127.0.0.1\nnameserver 198.51.100.1\n", Some(real))[0], ip("198.51.100.1"));
        assert_eq!(upstreams("nameserver fe80::1%eth0\n", None), [ip("fe80::1")]);
    }

    #[tokio::test]
    async fn remove_goes_through_every_step_even_when_some_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (f, s) = services(dir.path());
        for name in ["dhcp-42.pid", "dhcp-42.hosts", "dhcp-42.leases", "nat-42.nft"] {
            std::fs::write(dir.path().join(name), "12345\n").unwrap();
        }
        for name in ["dhcp-42.args", "dns-42.hosts", "dns-42.resolv"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        f.fail(&["kill"], "No such process").fail(&["ip"], "Cannot find device");
        s.remove(42).await.unwrap();
        assert_eq!(
            f.lines(),
            ["kill 12345", "ip -n h1 link del vs2a", "ip -n h1 link del xr2a", "ip netns del vt-n2a"]
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "its files are gone");
    }

    async fn get_as(app: &Router, from: [u8; 4], method: &str, uri: &str) -> (u16, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder().method(method).uri(uri).body(axum::body::Body::empty()).unwrap();
        let app = app.clone().layer(axum::extract::connect_info::MockConnectInfo(SocketAddr::from((from, 40000))));
        let res = app.oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_guest_cannot_hold_the_metadata_servers_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let guest = Meta {
            instance_id: "i-a".into(),
            ip: [127, 0, 0, 2].into(),
            meta: vdc_schema::bus::InstanceMetadata { hostname: "a".into(), public_keys: vec![], user_data: None },
        };
        let table: Table = Arc::new(RwLock::new([(guest.ip, guest)].into_iter().collect()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = metadata_limits();
        let server = tokio::spawn(serve_metadata(listener, metadata_router(table), limits.clone()));
        let from = |ip: [u8; 4]| {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(SocketAddr::from((ip, 0))).unwrap();
            s.connect(addr)
        };
        // A hostile guest (127.0.0.3) opens many idle connections: beyond its share they
        // are closed at once.
        let mut held = vec![];
        for _ in 0..METADATA_CONNS_PER_SOURCE {
            held.push(from([127, 0, 0, 3]).await.unwrap());
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while limits.open() < METADATA_CONNS_PER_SOURCE {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("its connections admitted");
        let mut extra = from([127, 0, 0, 3]).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), extra.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed at once: {n:?}");
        assert_eq!(limits.open(), METADATA_CONNS_PER_SOURCE);
        // Another guest is still answered meanwhile.
        let mut other = from([127, 0, 0, 2]).await.unwrap();
        other
            .write_all(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        other.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("i-a"), "{answer}");
        // Closed by the guest: its share is free again.
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while limits.open() > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("released");
        server.abort();
    }

    /// An idle connection is closed after [`METADATA_CONN_SECS`] whatever it does.
    #[tokio::test]
    async fn an_idle_metadata_connection_is_closed() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = metadata_limits();
        let server = tokio::spawn(serve_metadata(listener, metadata_router(Table::default()), limits.clone()));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(std::time::Duration::from_secs(METADATA_CONN_SECS + 5), idle.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
        assert!(started.elapsed() >= std::time::Duration::from_secs(METADATA_CONN_SECS - 1));
        server.abort();
    }

    #[tokio::test]
    async fn metadata_answers_as_cloud_init_reads_it() {
        let guest = |ip: [u8; 4], id: &str, user_data: Option<&str>| Meta {
            instance_id: id.into(),
            ip: ip.into(),
            meta: vdc_schema::bus::InstanceMetadata {
                hostname: format!("host-{id}"),
                public_keys: vec!["ssh-ed25519 AAAA k".into()],
                user_data: user_data.map(Into::into),
            },
        };
        let table: Table = Arc::new(RwLock::new(
            [guest([10, 0, 0, 2], "i-a", Some("#!/bin/sh\necho hi\n")), guest([10, 0, 0, 3], "i-b", None)]
                .into_iter()
                .map(|m| (m.ip, m))
                .collect(),
        ));
        let app = metadata_router(table);
        let a = [10, 0, 0, 2];
        // Every version cloud-init asks for answers the same, with directory listings.
        for v in ["latest", "2009-04-04", "2021-03-23"] {
            assert_eq!(
                get_as(&app, a, "GET", &format!("/{v}/meta-data/instance-id")).await,
                (200, "i-a".into()),
                "{v}"
            );
            let (st, listing) = get_as(&app, a, "GET", &format!("/{v}/meta-data/")).await;
            assert!(st == 200 && listing.contains("public-keys/\n"), "{v}: {listing}");
        }
        assert_eq!(get_as(&app, a, "GET", "/1999-01-01/meta-data/instance-id").await.0, 404, "unknown version");
        assert!(get_as(&app, a, "GET", "/").await.1.contains("2009-04-04\n"));
        assert_eq!(get_as(&app, a, "GET", "/latest/").await.1, "meta-data/\nuser-data\n");
        assert_eq!(get_as(&app, a, "GET", "/latest/meta-data/public-keys/").await.1, "0=key-0\n");
        assert_eq!(get_as(&app, a, "GET", "/latest/meta-data/public-keys/0/").await.1, "openssh-key\n");
        assert_eq!(
            get_as(&app, a, "GET", "/latest/meta-data/public-keys/0/openssh-key").await.1,
            "ssh-ed25519 AAAA k\n"
        );
        assert_eq!(get_as(&app, a, "GET", "/2009-04-04/user-data").await, (200, "#!/bin/sh\necho hi\n".into()));
        // A guest without user-data gets 404 for it, as cloud-init expects.
        assert_eq!(get_as(&app, [10, 0, 0, 3], "GET", "/latest/user-data").await.0, 404);
        assert_eq!(get_as(&app, [10, 0, 0, 3], "GET", "/latest/").await.1, "meta-data/\n");
        // IMDSv2's token PUT is accepted.
        let (st, tok) = get_as(&app, a, "PUT", "/latest/api/token").await;
        assert!(st == 200 && !tok.is_empty());
        // OpenStack's view.
        let (st, json) = get_as(&app, a, "GET", "/openstack/latest/meta_data.json").await;
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (st, v["uuid"].as_str(), v["public_keys"]["key-0"].as_str()),
            (200, Some("i-a"), Some("ssh-ed25519 AAAA k"))
        );
        assert_eq!(get_as(&app, a, "GET", "/openstack/latest/user_data").await.0, 200);
        // An address no guest has learns nothing.
        assert_eq!(get_as(&app, [10, 0, 0, 9], "GET", "/latest/meta-data/instance-id").await.0, 404);
        assert_eq!(get_as(&app, [10, 0, 0, 9], "GET", "/openstack/latest/meta_data.json").await.0, 404);
    }
}
