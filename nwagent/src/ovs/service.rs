//! Per-network services on each host: a namespace `<prefix>-n<vni>` joined to the
//! integration bridge by a veth, holding the network's gateway address and
//! 169.254.169.254, where
//! - dnsmasq answers DHCP with exactly the addresses dcmgr assigned (static leases for
//!   this host's interfaces; other clients get nothing),
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

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use vdc_schema::bus::{ExternalSpec, InstanceMetadata};

#[derive(Debug, Clone, thiserror::Error)]
#[error("network service: {0}")]
pub struct ServiceError(pub String);

fn err(e: impl std::fmt::Display) -> ServiceError {
    ServiceError(e.to_string())
}

pub const METADATA_IP: &str = "169.254.169.254";

/// What one guest may ask the metadata service.
#[derive(Clone, Debug)]
pub struct Meta {
    pub instance_id: String,
    pub ip: String,
    pub meta: InstanceMetadata,
}

type Table = Arc<RwLock<HashMap<String, Meta>>>;

struct Running {
    table: Table,
    server: tokio::task::JoinHandle<()>,
}

/// What one network's services on this host are to provide.
#[derive(Debug, Clone)]
pub struct NetService {
    pub vni: u32,
    pub cidr: String,
    pub gateway: String,
    /// The metadata of this host's guests on the network.
    pub guests: Vec<Meta>,
    /// (MAC, IP, hostname) of this host's interfaces: DHCP's static leases.
    pub leases: Vec<(String, String, String)>,
    pub external: Option<ExternalSpec>,
    /// (floating IP, fixed IP) of this host's guests.
    pub fips: Vec<(String, String)>,
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
}

impl Services {
    /// Stops the metadata servers, as the end of this process would (DHCP stays).
    pub fn stop_metadata(&self) {
        for (_, r) in self.running.lock().unwrap().drain() {
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
pub fn service_mac(vni: u32) -> String {
    format!("02:5d:{:02x}:{:02x}:{:02x}:{:02x}", vni >> 24, (vni >> 16) & 0xff, (vni >> 8) & 0xff, vni & 0xff)
}

/// The host end of the service veth (≤ 15 bytes).
pub fn service_dev(vni: u32) -> String {
    format!("vs{vni:x}")
}

async fn run(prog: &str, args: &[&str]) -> Result<String, ServiceError> {
    tracing::debug!("run {prog} {}", args.join(" "));
    let out = tokio::process::Command::new(prog).args(args).output().await.map_err(err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ServiceError(format!(
            "`{prog} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Services {
    pub fn new(host_netns: Option<String>, external_bridge: Option<String>, prefix: String, dir: PathBuf) -> Self {
        Services { host_netns, external_bridge, prefix, dir, running: Default::default() }
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
        run("ip", &all).await
    }

    async fn in_ns(&self, vni: u32, args: &[&str]) -> Result<String, ServiceError> {
        let ns = self.netns(vni);
        let mut all = vec!["netns", "exec", ns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all).await
    }

    /// Makes the network's service namespace, DHCP server and metadata server exist,
    /// with `guests` (this host's interfaces on the network); idempotent.
    pub async fn ensure(&self, n: &NetService) -> Result<(), ServiceError> {
        let (vni, cidr, gateway) = (n.vni, n.cidr.as_str(), n.gateway.as_str());
        let ns = self.netns(vni);
        let dev = service_dev(vni);
        let prefix_len = cidr.split('/').nth(1).unwrap_or("24");
        let exists = run("ip", &["netns", "list"]).await?.lines().any(|l| l.split_whitespace().next() == Some(&ns));
        if !exists {
            run("ip", &["netns", "add", &ns]).await?;
        }
        if self.host_ip(&["link", "show", &dev]).await.is_err() {
            self.host_ip(&["link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &ns]).await?;
            self.host_ip(&["link", "set", &dev, "up"]).await?;
            self.in_ns(vni, &["ip", "link", "set", "lo", "up"]).await?;
            self.in_ns(vni, &["ip", "link", "set", "eth0", "address", &service_mac(vni), "mtu", "1450", "up"]).await?;
            self.in_ns(vni, &["ip", "addr", "add", &format!("{gateway}/{prefix_len}"), "dev", "eth0"]).await?;
            self.in_ns(vni, &["ip", "addr", "add", &format!("{METADATA_IP}/32"), "dev", "eth0"]).await?;
            // Checksums in software: the userspace datapath does not fill them in.
            let _ = self.in_ns(vni, &["ethtool", "-K", "eth0", "tx", "off"]).await;
        }
        self.ensure_dhcp(vni, cidr, gateway, &n.leases).await?;
        self.ensure_metadata(vni, &n.guests).await?;
        match (&n.external, &self.external_bridge) {
            (Some(ext), Some(br)) => self.ensure_router(n, ext, br).await,
            (Some(_), None) => {
                tracing::warn!(vni, "the network has an external side but this host has no --external-bridge");
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }

    /// The router side: ext0 on the external bridge, its addresses, and the NAT rules.
    async fn ensure_router(&self, n: &NetService, ext: &ExternalSpec, bridge: &str) -> Result<(), ServiceError> {
        let vni = n.vni;
        let dev = format!("xr{vni:x}");
        let ns = self.netns(vni);
        let ext_net: ipnet::Ipv4Net = ext.cidr.parse().map_err(err)?;
        if self.host_ip(&["link", "show", &dev]).await.is_err() {
            self.host_ip(&["link", "add", &dev, "type", "veth", "peer", "name", "ext0", "netns", &ns]).await?;
            self.host_ip(&["link", "set", &dev, "master", bridge, "up"]).await?;
            self.in_ns(vni, &["ip", "link", "set", "ext0", "up"]).await?;
            self.in_ns(vni, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]).await?;
        }
        // Addresses: the SNAT one on the external subnet, each floating IP as a /32.
        let mut want: Vec<String> = vec![format!("{}/{}", ext.snat_ip, ext_net.prefix_len())];
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
        }
        for a in have.iter().filter(|a| !want.contains(a)) {
            self.in_ns(vni, &["ip", "addr", "del", a, "dev", "ext0"]).await?;
        }
        self.in_ns(vni, &["ip", "route", "replace", "default", "via", &ext.gateway, "dev", "ext0"]).await?;
        // The whole ruleset in one nft transaction: never half-applied.
        let mut pre = String::new();
        let mut post = String::new();
        for (fip, fixed) in &n.fips {
            pre.push_str(&format!("    ip daddr {fip} dnat to {fixed}\n"));
            post.push_str(&format!("    oifname \"ext0\" ip saddr {fixed} snat to {fip}\n"));
        }
        post.push_str(&format!("    oifname \"ext0\" ip saddr {} snat to {}\n", n.cidr, ext.snat_ip));
        let rules = format!(
            "table ip vdc\ndelete table ip vdc\ntable ip vdc {{\n  chain pre {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n{post}  }}\n  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    ct state established,related accept\n    iifname \"eth0\" oifname \"ext0\" accept\n    ct status dnat accept\n  }}\n}}\n"
        );
        let file = self.dir.join(format!("nat-{vni}.nft"));
        std::fs::write(&file, rules).map_err(err)?;
        self.in_ns(vni, &["nft", "-f", &file.to_string_lossy()]).await?;
        Ok(())
    }

    async fn ensure_dhcp(
        &self,
        vni: u32,
        cidr: &str,
        gateway: &str,
        macs: &[(String, String, String)],
    ) -> Result<(), ServiceError> {
        std::fs::create_dir_all(&self.dir).map_err(err)?;
        let hosts = self.dir.join(format!("dhcp-{vni}.hosts"));
        let text: String = macs.iter().map(|(mac, ip, name)| format!("{mac},{ip},{name}\n")).collect();
        let tmp = hosts.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &hosts).map_err(err)?;
        let pidfile = self.dir.join(format!("dhcp-{vni}.pid"));
        let pid = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
            // dnsmasq re-reads its hosts file on SIGHUP.
            run("kill", &["-HUP", &pid.to_string()]).await?;
            return Ok(());
        }
        let net: ipnet::Ipv4Net = cidr.parse().map_err(err)?;
        let range = format!("{},static,{},12h", net.network(), net.netmask());
        let lease = self.dir.join(format!("dhcp-{vni}.leases"));
        self.in_ns(
            vni,
            &[
                "dnsmasq",
                "--conf-file=/dev/null",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--except-interface=lo",
                &format!("--dhcp-range={range}"),
                &format!("--dhcp-hostsfile={}", hosts.display()),
                &format!("--dhcp-leasefile={}", lease.display()),
                &format!("--dhcp-option=option:router,{gateway}"),
                &format!("--pid-file={}", pidfile.display()),
                "--dhcp-authoritative",
            ],
        )
        .await?;
        Ok(())
    }

    async fn ensure_metadata(&self, vni: u32, guests: &[Meta]) -> Result<(), ServiceError> {
        let table: HashMap<String, Meta> = guests.iter().map(|m| (m.ip.clone(), m.clone())).collect();
        if let Some(r) = self.running.lock().unwrap().get(&vni) {
            *r.table.write().unwrap() = table;
            return Ok(());
        }
        let listener = bind_in_netns(&format!("/var/run/netns/{}", self.netns(vni)), &format!("{METADATA_IP}:80"))?;
        let table: Table = Arc::new(RwLock::new(table));
        let app = Router::new()
            .route("/latest/meta-data/", get(index))
            .route("/latest/meta-data/{key}", get(item))
            .route("/latest/meta-data/public-keys/", get(keys))
            .route("/latest/meta-data/public-keys/{n}/openssh-key", get(key))
            .route("/latest/user-data", get(user_data))
            .with_state(table.clone());
        let listener = tokio::net::TcpListener::from_std(listener).map_err(err)?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await;
        });
        self.running.lock().unwrap().insert(vni, Running { table, server });
        Ok(())
    }

    /// Stops the network's services and removes its namespace (and so its veth).
    pub async fn remove(&self, vni: u32) -> Result<(), ServiceError> {
        if let Some(r) = self.running.lock().unwrap().remove(&vni) {
            r.server.abort();
        }
        let pidfile = self.dir.join(format!("dhcp-{vni}.pid"));
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().map(|p| p.trim().to_owned()) {
            let _ = run("kill", &[&pid]).await;
            let _ = std::fs::remove_file(&pidfile);
        }
        let _ = self.host_ip(&["link", "del", &service_dev(vni)]).await;
        let _ = self.host_ip(&["link", "del", &format!("xr{vni:x}")]).await;
        let _ = std::fs::remove_file(self.dir.join(format!("nat-{vni}.nft")));
        let _ = run("ip", &["netns", "del", &self.netns(vni)]).await;
        for ext in ["hosts", "leases"] {
            let _ = std::fs::remove_file(self.dir.join(format!("dhcp-{vni}.{ext}")));
        }
        Ok(())
    }
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
    table.read().unwrap().get(&peer.ip().to_string()).cloned()
}

type Answer = Result<String, StatusCode>;

async fn index(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Answer {
    who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    Ok("instance-id\nhostname\nlocal-hostname\nlocal-ipv4\npublic-keys/\n".into())
}

async fn item(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Path(key): Path<String>) -> Answer {
    let m = who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    match key.as_str() {
        "instance-id" => Ok(m.instance_id),
        "hostname" | "local-hostname" => Ok(m.meta.hostname),
        "local-ipv4" => Ok(m.ip),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

async fn keys(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Answer {
    let m = who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    Ok((0..m.meta.public_keys.len()).map(|i| format!("{i}=key-{i}\n")).collect())
}

async fn key(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>, Path(n): Path<usize>) -> Answer {
    let m = who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    m.meta.public_keys.get(n).map(|k| format!("{k}\n")).ok_or(StatusCode::NOT_FOUND)
}

async fn user_data(State(t): State<Table>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Answer {
    let m = who(&t, &peer).ok_or(StatusCode::NOT_FOUND)?;
    m.meta.user_data.ok_or(StatusCode::NOT_FOUND)
}
