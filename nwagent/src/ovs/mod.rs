//! The Open vSwitch driver: one integration bridge per host (`datapath_type=netdev` where
//! the kernel has no openvswitch module), configured over OVSDB ([`ovsdb`]); a VXLAN port
//! per peer host (`key=flow`: the VNI travels in tun_id); flows through OpenFlow 1.3
//! bundles ([`ofctl`]) built by [`flows`].
//!
//! ```text
//!  ensure_interface(spec) ─► port <vif device> on the bridge ─► wait for its ofport
//!      ─► tunnels to spec.network.peers ─► one bundle: the port's flows + its network's
//!      flows + tunnel flows ─► report active
//! ```
//! What nwagent was told is kept in `state.json`, so a restarted nwagent recomputes the
//! same flows for every network before dcmgr has re-sent all interfaces; flows already
//! in the switch keep traffic flowing meanwhile.

pub mod daemon;
pub mod flows;
pub mod ofctl;
pub mod ovsdb;
pub mod service;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use vdc_bus::coalesce::{Coalescer, Ranked};
use vdc_bus::ReportSink;
use vdc_schema::agent::{AgentError, NetworkAgent};
use vdc_schema::bus::{vif_device_name, InterfaceReport, InterfaceSpec, ObjectReport};
use vdc_schema::id::VifId;
use vdc_schema::net::Ipv4Addr;
use vdc_schema::ObservedInterface;

#[derive(Debug, Clone)]
pub struct OvsConfig {
    /// ovsdb-server's Unix socket.
    pub db_socket: PathBuf,
    /// ovs-vswitchd's run directory (holds `<bridge>.mgmt`).
    pub rundir: PathBuf,
    pub bridge: String,
    /// This host's tunnel endpoint (announced to dcmgr; peers reach this host there).
    pub tunnel_ip: Ipv4Addr,
    /// Where `state.json` lives.
    pub data_dir: PathBuf,
    /// How long a port may wait for its device (hva creates it when the guest starts).
    pub plug_timeout: Duration,
    /// The namespace OVS runs in, when not nwagent's own (tests).
    pub host_netns: Option<String>,
    /// Prefix of the per-network service namespaces (`vdc`).
    pub service_prefix: String,
    /// The Linux bridge on the external network (floating IPs, outbound NAT); none: no
    /// external access from this host.
    pub external_bridge: Option<String>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Port {
    spec: InterfaceSpec,
    ofport: Option<u32>,
    /// The index of the device the switch opened for this port (0: not known yet). A new
    /// index under the same name means the device was made again: see [`Inner::plug`].
    #[serde(default, skip_serializing_if = "is_zero")]
    ifindex: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// How often the ports' devices are checked for having been made again.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Default, Serialize, Deserialize)]
struct State {
    ports: BTreeMap<VifId, Port>,
    /// tunnel remote IP → ofport
    tunnels: BTreeMap<Ipv4Addr, u32>,
    /// VNI → the peers of the newest spec received for that network (an older one may
    /// still list a host that has left it).
    peers: BTreeMap<u32, Vec<Ipv4Addr>>,
    /// VNI → the ofport of the network's service port.
    services: BTreeMap<u32, u32>,
}

pub struct OvsNetwork {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: OvsConfig,
    db: ovsdb::Ovsdb,
    of: ofctl::Ofctl,
    svc: service::Services,
    sink: ReportSink,
    /// One change at a time: flows of a network depend on all of its ports.
    state: tokio::sync::Mutex<State>,
    /// Set when the process ends: the device watch stops.
    stopped: std::sync::atomic::AtomicBool,
    /// One worker per interface: re-sent ensures wait there instead of piling up.
    work: Coalescer<VifId, Want>,
    tools: crate::cmd::Runner,
    /// The pid of the ovs-vswitchd the flows were last restored into.
    vswitchd: std::sync::Mutex<Option<String>>,
}

/// What dcmgr last asked of one interface.
enum Want {
    Ensure(Box<InterfaceSpec>),
    Absent(u64),
}

impl Ranked for Want {
    /// A removal outranks an ensure of the same generation.
    type Rank = (u64, bool);
    fn rank(&self) -> (u64, bool) {
        match self {
            Want::Ensure(s) => (s.spec_gen, false),
            Want::Absent(g) => (*g, true),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error(transparent)]
    Ovsdb(#[from] ovsdb::OvsdbError),
    #[error(transparent)]
    Ofctl(#[from] ofctl::OfctlError),
    #[error(transparent)]
    Service(#[from] service::ServiceError),
    #[error("{0}")]
    Other(String),
    /// A newer request for the interface arrived while this one waited; it runs next.
    #[error("superseded by a newer request")]
    Superseded,
}

/// Adds or updates the port of a guest's interface (external IDs: which interface it is,
/// and its MAC), asking for port number `ofport` if it is added.
async fn ensure_vif_port(
    db: &ovsdb::Ovsdb,
    bridge: &str,
    spec: &InterfaceSpec,
    ofport: Option<u32>,
) -> Result<(), ovsdb::OvsdbError> {
    let (id, mac) = (spec.id.to_string(), spec.mac.to_string());
    let ids = [("vdc-vif", id.as_str()), ("attached-mac", mac.as_str())];
    db.ensure_port_at(bridge, &vif_device_name(&spec.id), "", &[], &ids, ofport).await
}

/// The tunnel port towards one peer: `vx` + the peer's IPv4 in hex.
fn tunnel_name(ip: Ipv4Addr) -> String {
    format!("vx{:08x}", u32::from(ip))
}

impl Inner {
    fn save(&self, st: &State) {
        let path = self.cfg.data_dir.join("state.json");
        let tmp = path.with_extension("tmp");
        let ok =
            std::fs::write(&tmp, serde_json::to_vec(st).unwrap_or_default()).and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = ok {
            tracing::error!("cannot save {}: {e}", path.display());
        }
    }

    fn report(&self, id: &VifId, gen: u64, state: ObservedInterface, reason: Option<String>) {
        self.sink.report(ObjectReport::Interface(InterfaceReport { id: id.clone(), spec_gen: gen, state, reason }));
    }

    /// The flows of network `vni` as the state stands.
    fn network_set(&self, st: &State, vni: u32) -> (u64, Vec<String>) {
        let mut ports: Vec<u32> =
            st.ports.values().filter(|p| p.spec.network.vni == vni).filter_map(|p| p.ofport).collect();
        ports.sort();
        let peers = st.peers.get(&vni).cloned().unwrap_or_default();
        let mut tunnels: Vec<u32> = peers.iter().filter_map(|ip| st.tunnels.get(ip).copied()).collect();
        tunnels.sort();
        tunnels.dedup();
        let svc = st.services.get(&vni).copied();
        let flows = if ports.is_empty() { vec![] } else { flows::network_flows(vni, &ports, &tunnels, svc) };
        (flows::cookie(flows::NET, &vni.to_string()), flows)
    }

    fn port_set(&self, p: &Port) -> (u64, Vec<String>) {
        let c = flows::cookie(flows::PORT, p.spec.id.as_str());
        match p.ofport {
            Some(ofport) => (
                c,
                flows::port_flows(
                    p.spec.network.vni,
                    ofport,
                    p.spec.mac,
                    p.spec.ip,
                    p.spec.network.gateway,
                    &p.spec.security_groups,
                ),
            ),
            None => (c, vec![]),
        }
    }

    async fn ensure_tunnels(&self, st: &mut State, peers: &[Ipv4Addr]) -> Result<Vec<(u64, Vec<String>)>, OvsError> {
        let mut sets = vec![];
        for &ip in peers {
            if st.tunnels.contains_key(&ip) {
                continue;
            }
            let (name, remote) = (tunnel_name(ip), ip.to_string());
            self.db
                .ensure_port(
                    &self.cfg.bridge,
                    &name,
                    "vxlan",
                    &[("remote_ip", &remote), ("key", "flow")],
                    &[("vdc-peer", &remote)],
                )
                .await?;
            let ofport = self.wait_ofport(&name, Duration::from_secs(10)).await?;
            st.tunnels.insert(ip, ofport);
            sets.push((flows::cookie(flows::TUNNEL, &remote), flows::tunnel_flows(ofport)));
        }
        Ok(sets)
    }

    /// Sets a guest's device up. Its host end is moved into the switch's namespace, and a
    /// move takes a device down: one left down passes nothing (seen: a container's veth
    /// stayed down, its DHCP discovers never reached the switch). Making it pass is the
    /// switch side's job, so nwagent does it on every plug and whenever its watch sees
    /// a guest's device down.
    async fn bring_up(&self, dev: &str) -> Result<(), OvsError> {
        let mut args = vec![];
        if let Some(ns) = &self.cfg.host_netns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["link", "set", "dev", dev, "up"]);
        self.tools.run("ip", &args).await.map_err(|e| OvsError::Other(format!("setting {dev} up: {e}")))?;
        Ok(())
    }

    /// Whether network device `dev` exists (in the host's namespace).
    async fn device_exists(&self, dev: &str) -> bool {
        let mut args = vec![];
        if let Some(ns) = &self.cfg.host_netns {
            args.extend(["-n", ns.as_str()]);
        }
        args.extend(["link", "show", "dev", dev]);
        self.tools.run("ip", &args).await.is_ok()
    }

    async fn wait_ofport(&self, name: &str, timeout: Duration) -> Result<u32, OvsError> {
        Ok(self.wait_plugged(name, timeout, None).await?.ofport as u32)
    }

    /// Waits until the switch has an OpenFlow port number for `name`; returns its row.
    /// Gives up early when `for_spec`'s interface has a newer request waiting.
    async fn wait_plugged(
        &self,
        name: &str,
        timeout: Duration,
        for_spec: Option<&InterfaceSpec>,
    ) -> Result<ovsdb::IfaceRow, OvsError> {
        let start = std::time::Instant::now();
        let mut last = None;
        loop {
            if let Some(row) = self.db.interface(name).await? {
                if row.ofport > 0 {
                    return Ok(row);
                }
                last = row.error;
            }
            if for_spec.is_some_and(|s| self.work.superseded(&s.id, &(s.spec_gen, false))) {
                return Err(OvsError::Superseded);
            }
            if start.elapsed() > timeout {
                return Err(OvsError::Other(format!(
                    "port {name} got no OpenFlow port number within {timeout:?}{}",
                    last.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The (ofport, ifindex) of a guest's port whose Interface row is `row`. When the
    /// device is not the one the switch opened before (`known_ifindex`): the guest's tap
    /// or veth was deleted and made again under the same name (stop/start, halt/poweron,
    /// a container restart), the port is removed and added again.
    ///
    /// Why: Open vSwitch's userspace datapath keeps the port of a vanished device, and
    /// when a device of that name comes back OVSDB shows the same ofport, the new
    /// ifindex and no error, yet the datapath never receives a packet from it (measured
    /// with OVS 3.1, netdev datapath: flow counters stay still). Removing and re-adding
    /// the port (two changes ovs-vswitchd applies one after the other) opens the new
    /// device; the same port number is asked for, so the flows stay valid.
    ///
    /// Called with the state locked, `known_*` read from it: an ensure and the watch
    /// never both re-add the same port.
    async fn plug(
        &self,
        spec: &InterfaceSpec,
        row: &ovsdb::IfaceRow,
        known_ifindex: i64,
        known_ofport: Option<u32>,
    ) -> Result<(u32, i64), OvsError> {
        let dev = vif_device_name(&spec.id);
        // While the device is away (a stopped guest) the switch keeps the port and its
        // number, with no ifindex: remember the device it had, to see the next one is new.
        if row.ifindex <= 0 {
            return Ok((row.ofport as u32, known_ifindex));
        }
        if known_ifindex == 0 || row.ifindex == known_ifindex {
            return Ok((row.ofport as u32, row.ifindex));
        }
        let want = known_ofport.unwrap_or(row.ofport as u32);
        tracing::info!(vif = %spec.id, dev, old = known_ifindex, new = row.ifindex, "device made again; re-adding its port");
        self.db.remove_port(&self.cfg.bridge, &dev).await?;
        self.db.wait_applied(Duration::from_secs(10)).await?;
        ensure_vif_port(&self.db, &self.cfg.bridge, spec, Some(want)).await?;
        let row = self.wait_plugged(&dev, Duration::from_secs(10), None).await?;
        Ok((row.ofport as u32, row.ifindex))
    }

    /// Puts the base flows and every known network's and port's flows in place, with the
    /// port numbers the switch has now: at open, and when ovs-vswitchd was started again
    /// under us (it comes back from its database with bridges and ports but no flows).
    async fn restore(&self) -> Result<(), OvsError> {
        let pid = vswitchd_pid(&self.cfg.rundir);
        // Wait for ovs-vswitchd to create the bridge's management socket.
        let mgmt = self.cfg.rundir.join(format!("{}.mgmt", self.cfg.bridge));
        for _ in 0..100 {
            if mgmt.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Its ports back from the database, with their numbers.
        self.db.wait_applied(Duration::from_secs(10)).await?;
        limit_conntrack(&self.cfg.rundir, &self.tools).await;
        let mut st = self.state.lock().await;
        // Port numbers as the switch has them now (a port it lost waits for the next
        // ensure, which re-adds it).
        let ids: Vec<VifId> = st.ports.keys().cloned().collect();
        for id in ids {
            let row = self.db.interface(&vif_device_name(&id)).await?;
            let ofport = row.filter(|r| r.ofport > 0).map(|r| r.ofport as u32);
            if let Some(p) = st.ports.get_mut(&id) {
                p.ofport = ofport;
            }
        }
        let tunnels: Vec<Ipv4Addr> = st.tunnels.keys().copied().collect();
        for ip in tunnels {
            let row = self.db.interface(&tunnel_name(ip)).await?;
            match row.filter(|r| r.ofport > 0) {
                Some(r) => st.tunnels.insert(ip, r.ofport as u32),
                None => st.tunnels.remove(&ip),
            };
        }
        let vnis: Vec<u32> = st.services.keys().copied().collect();
        for v in vnis {
            let row = self.db.interface(&service::service_dev(v)).await?;
            match row.filter(|r| r.ofport > 0) {
                Some(r) => st.services.insert(v, r.ofport as u32),
                None => st.services.remove(&v),
            };
        }
        let mut sets = vec![(flows::BASE, flows::base_flows())];
        for (ip, ofport) in &st.tunnels {
            sets.push((flows::cookie(flows::TUNNEL, &ip.to_string()), flows::tunnel_flows(*ofport)));
        }
        let mut vnis: Vec<u32> = st.ports.values().map(|p| p.spec.network.vni).collect();
        vnis.sort();
        vnis.dedup();
        for p in st.ports.values() {
            sets.push(self.port_set(p));
        }
        // DHCP keeps running across a restart; metadata is served by this process.
        for &v in &vnis {
            sets.extend(self.ensure_service(&mut st, v).await?);
        }
        for v in vnis {
            sets.push(self.network_set(&st, v));
        }
        self.of.replace(&sets).await?;
        *self.vswitchd.lock().unwrap_or_else(|e| e.into_inner()) = pid;
        Ok(())
    }

    /// Whether the switch's ovs-vswitchd is another process than the one flows were last
    /// restored into (its pid file changed; a missing one is a switch still starting).
    fn switch_restarted(&self) -> bool {
        let now = vswitchd_pid(&self.cfg.rundir);
        now.is_some() && now != *self.vswitchd.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass of the device watch: every port whose device was made again is plugged
    /// anew, and its flows follow if its port number changed.
    async fn watch_once(&self) -> Result<(), OvsError> {
        let rows: HashMap<String, ovsdb::IfaceRow> =
            self.db.interfaces().await?.into_iter().map(|r| (r.name.clone(), r)).collect();
        let mut st = self.state.lock().await;
        let ids: Vec<VifId> = st.ports.keys().cloned().collect();
        for id in ids {
            let Some(p) = st.ports.get(&id).cloned() else { continue };
            let Some(row) = rows.get(&vif_device_name(&id)) else { continue };
            if row.ifindex > 0 && row.admin_down {
                tracing::info!(vif = %id, dev = row.name, "guest device down: set up");
                if let Err(e) = self.bring_up(&row.name).await {
                    tracing::warn!(vif = %id, "{e}");
                }
            }
            if row.ifindex <= 0 || row.ofport <= 0 || row.ifindex == p.ifindex {
                if row.ifindex != p.ifindex {
                    tracing::debug!(vif = %id, ifindex = row.ifindex, ofport = row.ofport, known = p.ifindex, "device not (yet) on the switch");
                }
                continue;
            }
            let (ofport, ifindex) = self.plug(&p.spec, row, p.ifindex, p.ofport).await?;
            let port = Port { ofport: Some(ofport), ifindex, ..p.clone() };
            let moved = port.ofport != p.ofport;
            let mut sets = vec![self.port_set(&port)];
            st.ports.insert(id, port);
            if moved {
                sets.push(self.network_set(&st, p.spec.network.vni));
                self.of.replace(&sets).await?;
            }
            self.save(&st);
        }
        Ok(())
    }

    /// Brings the network's DHCP and metadata service up to date with its ports here;
    /// returns the flows of its service port.
    async fn ensure_service(&self, st: &mut State, vni: u32) -> Result<Vec<(u64, Vec<String>)>, OvsError> {
        let ports: Vec<&Port> = st.ports.values().filter(|p| p.spec.network.vni == vni).collect();
        let cookie = flows::cookie(flows::SERVICE, &vni.to_string());
        let Some(first) = ports.first() else {
            self.svc.remove(vni).await?;
            self.db.remove_port(&self.cfg.bridge, &service::service_dev(vni)).await?;
            st.services.remove(&vni);
            return Ok(vec![(cookie, vec![])]);
        };
        let (cidr, gateway) = (first.spec.network.cidr, first.spec.network.gateway);
        let metas: Vec<service::Meta> = ports
            .iter()
            .filter_map(|p| {
                Some(service::Meta {
                    instance_id: p.spec.instance_id.to_string(),
                    ip: p.spec.ip,
                    meta: p.spec.metadata.clone()?,
                })
            })
            .collect();
        let leases: Vec<_> = ports
            .iter()
            .map(|p| {
                let name = p.spec.metadata.as_ref().map(|m| m.hostname.clone()).unwrap_or_default();
                (p.spec.mac, p.spec.ip, name)
            })
            .collect();
        let external = ports.iter().max_by_key(|p| p.spec.spec_gen).and_then(|p| p.spec.network.external.clone());
        let fips = ports.iter().filter_map(|p| Some((p.spec.floating_ip?, p.spec.ip))).collect();
        let n = service::NetService { vni, cidr, gateway, guests: metas, leases, external, fips };
        let dev = service::service_dev(vni);
        if self.svc.ensure(&n).await? {
            // A device made again under a kept port's name gets no packets into the
            // userspace datapath (as a guest's tap, see `wait_plugged`): port made anew.
            self.db.remove_port(&self.cfg.bridge, &dev).await?;
            st.services.remove(&vni);
        }
        let ofport = match st.services.get(&vni) {
            Some(p) => *p,
            None => {
                self.db.ensure_port(&self.cfg.bridge, &dev, "", &[], &[("vdc-service", &vni.to_string())]).await?;
                let p = self.wait_ofport(&dev, Duration::from_secs(10)).await?;
                st.services.insert(vni, p);
                p
            }
        };
        Ok(vec![(cookie, flows::service_flows(vni, ofport, service::service_mac(vni)))])
    }

    async fn ensure(&self, spec: InterfaceSpec) -> Result<(), OvsError> {
        let mut st = self.state.lock().await;
        if st.ports.get(&spec.id).is_some_and(|p| p.spec.spec_gen > spec.spec_gen) {
            return Ok(());
        }
        let dev = vif_device_name(&spec.id);
        ensure_vif_port(&self.db, &self.cfg.bridge, &spec, None).await?;
        let mut sets = self.ensure_tunnels(&mut st, &spec.network.peers).await?;
        let old_vni = st.ports.get(&spec.id).map(|p| p.spec.network.vni);
        // The device may appear later (hva plugs it when the guest starts): wait here,
        // bounded. Always asked of OVSDB: a port re-added after a switch restart can have
        // another number than the one remembered.
        drop(st);
        let mut row = self.wait_plugged(&dev, self.cfg.plug_timeout, Some(&spec)).await?;
        // A port whose device is away (a stopped guest about to start again) keeps its
        // number: it is programmed now, and the watch sets the device up when it is back.
        if row.ifindex > 0 {
            if row.admin_down {
                tracing::info!(vif = %spec.id, dev, "guest device plugged down: set up");
            }
            if let Err(e) = self.bring_up(&dev).await {
                // OVSDB can still show a device deleted a moment ago (a guest just
                // stopped): one that is not there is away, as with no ifindex. Before,
                // the interface failed (seen in the re-plug host test, 1 run in 10).
                if self.device_exists(&dev).await {
                    return Err(e);
                }
                tracing::info!(vif = %spec.id, dev, "device gone since the switch saw it: programmed without it");
                row.ifindex = 0;
            }
        }
        let mut st = self.state.lock().await;
        let (known_ifindex, known_ofport) = st.ports.get(&spec.id).map(|p| (p.ifindex, p.ofport)).unwrap_or((0, None));
        let (ofport, ifindex) = self.plug(&spec, &row, known_ifindex, known_ofport).await?;
        let ofport = Some(ofport);
        let port = Port { spec: spec.clone(), ofport, ifindex };
        sets.push(self.port_set(&port));
        st.ports.insert(spec.id.clone(), port);
        st.peers.insert(spec.network.vni, spec.network.peers.clone());
        sets.extend(self.ensure_service(&mut st, spec.network.vni).await?);
        sets.push(self.network_set(&st, spec.network.vni));
        if let Some(v) = old_vni.filter(|v| *v != spec.network.vni) {
            sets.extend(self.ensure_service(&mut st, v).await?);
            sets.push(self.network_set(&st, v));
        }
        self.of.replace(&sets).await?;
        self.save(&st);
        drop(st);
        tracing::info!(vif = %spec.id, dev, ofport, vni = spec.network.vni, "interface programmed");
        self.report(&spec.id, spec.spec_gen, ObservedInterface::Active, None);
        Ok(())
    }

    async fn remove(&self, id: &VifId, spec_gen: u64) -> Result<(), OvsError> {
        let mut st = self.state.lock().await;
        if st.ports.get(id).is_some_and(|p| superseded(p.spec.spec_gen, spec_gen)) {
            tracing::info!(vif = %id, spec_gen, "removal of an interface placed here again since: kept");
            return Ok(());
        }
        let old = st.ports.remove(id);
        let mut sets = vec![(flows::cookie(flows::PORT, id.as_str()), vec![])];
        if let Some(p) = &old {
            sets.extend(self.ensure_service(&mut st, p.spec.network.vni).await?);
            sets.push(self.network_set(&st, p.spec.network.vni));
        }
        self.of.replace(&sets).await?;
        self.db.remove_port(&self.cfg.bridge, &vif_device_name(id)).await?;
        self.save(&st);
        drop(st);
        let gen = old.map(|p| p.spec.spec_gen.max(spec_gen)).unwrap_or(spec_gen);
        self.report(id, gen, ObservedInterface::Absent, None);
        Ok(())
    }
}

/// Connections conntrack keeps per zone, so per network ([`flows::zone`]). The table is
/// the switch's, shared by every tenant: one guest opening 100,000 UDP flows a second
/// filled all 3,000,000 entries in 30 s, and every other network's new connections
/// failed (red team, 2026-12-06). A network's guests now fill only their own share.
pub const CT_ZONE_LIMIT: u32 = 100_000;

/// The pid in the switch's `ovs-vswitchd.pid`, when there is one.
fn vswitchd_pid(rundir: &std::path::Path) -> Option<String> {
    let pid = std::fs::read_to_string(rundir.join("ovs-vswitchd.pid")).ok()?;
    Some(pid.trim().to_owned()).filter(|p| !p.is_empty())
}

/// Sets [`CT_ZONE_LIMIT`] as the switch's default zone limit (`dpctl/ct-set-limits`);
/// a switch that cannot is logged, not refused.
async fn limit_conntrack(rundir: &std::path::Path, tools: &crate::cmd::Runner) {
    let Ok(pid) = std::fs::read_to_string(rundir.join("ovs-vswitchd.pid")) else {
        tracing::warn!(rundir = %rundir.display(), "no ovs-vswitchd.pid: conntrack zones are not limited");
        return;
    };
    let ctl = rundir.join(format!("ovs-vswitchd.{}.ctl", pid.trim()));
    let limit = format!("default={CT_ZONE_LIMIT}");
    if let Err(e) = tools.run("ovs-appctl", &["-t", &ctl.to_string_lossy(), "dpctl/ct-set-limits", &limit]).await {
        tracing::warn!(error = %e, "conntrack zones are not limited");
    }
}

/// Whether a removal decided at `asked` comes after the port was ensured again at `held`
/// (0 asks for the removal of whatever is held).
pub fn superseded(held: u64, asked: u64) -> bool {
    asked != 0 && held > asked
}

impl OvsNetwork {
    /// Opens the switch: makes the bridge exist and puts the base flows (and, after a
    /// restart, every known network's and port's flows) in place.
    pub async fn open(cfg: OvsConfig, sink: ReportSink) -> Result<Self, OvsError> {
        Self::open_with(cfg, sink, crate::cmd::system()).await
    }

    /// [`OvsNetwork::open`] running `ovs-ofctl`, `ip`, `nft` and `dnsmasq` through `tools`.
    pub async fn open_with(cfg: OvsConfig, sink: ReportSink, tools: crate::cmd::Runner) -> Result<Self, OvsError> {
        std::fs::create_dir_all(&cfg.data_dir)
            .map_err(|e| OvsError::Other(format!("{}: {e}", cfg.data_dir.display())))?;
        let db = ovsdb::Ovsdb::new(&cfg.db_socket);
        // The userspace datapath where the kernel module is missing (detected, not assumed).
        let datapath = if std::path::Path::new("/sys/module/openvswitch").exists() { "system" } else { "netdev" };
        db.ensure_bridge(&cfg.bridge, datapath).await?;
        let of = ofctl::Ofctl::with_runner(&cfg.rundir, &cfg.bridge, tools.clone());
        let st: State = std::fs::read(cfg.data_dir.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let svc = service::Services::new(
            cfg.host_netns.clone(),
            cfg.external_bridge.clone(),
            cfg.service_prefix.clone(),
            cfg.data_dir.join("services"),
        )
        .with_runner(tools.clone());
        let inner = Inner {
            cfg,
            db,
            of,
            svc,
            sink,
            state: tokio::sync::Mutex::new(st),
            stopped: Default::default(),
            work: Coalescer::default(),
            tools,
            vswitchd: Default::default(),
        };
        inner.restore().await?;
        tracing::info!(bridge = %inner.cfg.bridge, datapath, "switch ready");
        let inner = Arc::new(inner);
        // Polled rather than monitored: one query every half second is cheap, and a
        // guest's DHCP client retries for longer than that.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(WATCH_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                if inner.switch_restarted() {
                    tracing::warn!(bridge = %inner.cfg.bridge, "ovs-vswitchd was started again: restoring every flow");
                    match inner.restore().await {
                        Ok(()) => tracing::info!(bridge = %inner.cfg.bridge, "flows restored"),
                        Err(e) => tracing::warn!("flows not restored, retried: {e}"),
                    }
                }
                if let Err(e) = inner.watch_once().await {
                    tracing::warn!("device watch: {e}");
                }
            }
        });
        Ok(OvsNetwork { inner })
    }

    fn submit(&self, id: VifId, want: Want) {
        let inner = Arc::downgrade(&self.inner);
        self.inner.work.submit(id.clone(), want, move |want| {
            let (inner, id) = (inner.upgrade(), id.clone());
            async move {
                let Some(inner) = inner else { return };
                match want {
                    Want::Ensure(spec) => {
                        let gen = spec.spec_gen;
                        match inner.ensure(*spec).await {
                            Ok(()) | Err(OvsError::Superseded) => {}
                            Err(e) => {
                                tracing::warn!(vif = %id, "interface not programmed: {e}");
                                inner.report(&id, gen, ObservedInterface::Failed, Some(e.to_string()));
                            }
                        }
                    }
                    Want::Absent(gen) => {
                        if let Err(e) = inner.remove(&id, gen).await {
                            tracing::warn!(vif = %id, "interface not removed, retried on the next ensure: {e}");
                        }
                    }
                }
            }
        });
    }

    /// Stops every network's DHCP and metadata service and removes their namespaces
    /// (tests; in production they outlive nwagent restarts).
    pub async fn remove_services(&self) {
        let st = self.inner.state.lock().await;
        for v in st.services.keys() {
            let _ = self.inner.svc.remove(*v).await;
        }
    }

    /// Whether no interface's ensure or removal is queued or running (tests).
    pub fn idle(&self) -> bool {
        self.inner.work.running() == 0
    }

    /// What the end of the nwagent process does: its metadata servers stop; flows, ports
    /// and DHCP servers stay.
    pub fn shut_down(&self) {
        self.inner.stopped.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.svc.stop_metadata();
    }
}

#[async_trait]
impl NetworkAgent for OvsNetwork {
    async fn ensure_interface(&self, spec: InterfaceSpec) -> Result<(), AgentError> {
        self.submit(spec.id.clone(), Want::Ensure(Box::new(spec)));
        Ok(())
    }

    async fn ensure_interface_absent(&self, id: VifId, spec_gen: u64) -> Result<(), AgentError> {
        self.submit(id, Want::Absent(spec_gen));
        Ok(())
    }

    /// Every port held, also one whose device was gone at the restart (a stopped guest's,
    /// or a deleted interface's whose removal never came): dcmgr unplugs those it no longer
    /// knows. Left unreported, a deleted one kept its address's DHCP reservation for good.
    async fn report_all(&self) -> Result<(), AgentError> {
        let st = self.inner.state.lock().await;
        let all: HashMap<VifId, u64> = st.ports.iter().map(|(k, p)| (k.clone(), p.spec.spec_gen)).collect();
        drop(st);
        for (id, gen) in all {
            self.inner.report(&id, gen, ObservedInterface::Active, None);
        }
        Ok(())
    }

    async fn drain(&self) {
        self.inner.work.drain().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removal_decided_before_a_newer_ensure_keeps_the_port() {
        assert!(superseded(5, 4), "placed here again (generation 5) after the removal was decided at 4");
        assert!(!superseded(4, 4));
        assert!(!superseded(3, 4));
        assert!(!superseded(9, 0), "0 removes whatever is held");
    }

    /// A `state.json` written before addresses were typed reads back as it was: tunnels
    /// keyed by their address string, peers and the interface specs' addresses as strings.
    #[test]
    fn saved_state_keeps_its_format() {
        let saved = serde_json::json!({
            "ports": {"vif-a": {"ofport": 7, "spec": {
                "id": "vif-a", "spec_gen": 2, "instance_id": "i-a", "account_id": "a-a",
                "network": {"id": "nw-a", "vni": 100, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1",
                    "peers": ["192.0.2.2"], "external": null},
                "mac": "52:54:00:ab:cd:ef", "ip": "10.0.0.2", "security_groups": [], "metadata": null,
                "floating_ip": null}}},
            "tunnels": {"192.0.2.10": 9, "192.0.2.2": 8},
            "peers": {"100": ["192.0.2.2", "192.0.2.10"]},
            "services": {"100": 3},
        });
        let st: State = serde_json::from_value(saved.clone()).unwrap();
        assert_eq!(st.tunnels.get(&Ipv4Addr::new(192, 0, 2, 10)), Some(&9));
        assert_eq!(st.peers[&100], [Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(serde_json::to_value(&st).unwrap(), saved);
        assert_eq!(tunnel_name(Ipv4Addr::new(192, 0, 2, 10)), "vxc000020a");
    }
}
