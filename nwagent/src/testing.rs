//! Fixtures for tests on a real Open vSwitch: "hosts" are network namespaces, each with
//! its own ovsdb-server and ovs-vswitchd (private run directory, userspace datapath)
//! and an underlay bridge `br-phy` holding the host's tunnel address; "guests" are
//! namespaces joined to a host by a veth whose host end has the name hva would give the
//! interface's device. Names carry a unique prefix; everything is removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::ovs::daemon::sh;

/// Runs a command inside a namespace.
pub fn ns(netns: &str, args: &[&str]) -> std::io::Result<String> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// A unique prefix for this test run's namespaces (short: interface names are ≤ 15).
pub fn prefix() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("vn{:x}", (std::process::id() ^ t.subsec_nanos()) & 0xfffff)
}

pub use crate::ovs::daemon::Switch;

pub struct Host {
    pub netns: String,
    pub dir: PathBuf,
    pub tunnel_ip: String,
    pub switch: Option<Switch>,
}

impl Host {
    /// A host namespace with OVS running and `br-phy` (underlay port `ul`, address
    /// `tunnel_ip/24`); the underlay veth must already be in the namespace.
    pub fn start(netns: &str, dir: &Path, underlay: &str, tunnel_ip: &str) -> std::io::Result<Host> {
        let mut h =
            Host { netns: netns.to_owned(), dir: dir.to_owned(), tunnel_ip: tunnel_ip.to_owned(), switch: None };
        ns(netns, &["ip", "link", "set", "lo", "up"])?;
        h.switch = Some(Switch::start(Some(netns), dir)?);
        let sw = h.switch.as_ref().expect("just set");
        let vsctl = |args: &[&str]| sw.vsctl(args);
        vsctl(&["add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev"])?;
        vsctl(&["add-port", "br-phy", underlay])?;
        ns(netns, &["ip", "link", "set", underlay, "up"])?;
        ns(netns, &["ip", "addr", "add", &format!("{tunnel_ip}/24"), "dev", "br-phy"])?;
        ns(netns, &["ip", "link", "set", "br-phy", "up"])?;
        Ok(h)
    }

    pub fn db_socket(&self) -> PathBuf {
        self.dir.join("db.sock")
    }

    /// `ovs-ofctl dump-flows` of a bridge, without counters, sorted: comparable.
    pub fn flows(&self, bridge: &str) -> Vec<String> {
        self.switch.as_ref().map(|s| s.flows(bridge)).unwrap_or_default()
    }
}

/// Removes the network service namespaces named `<prefix>-…` and kills what runs in
/// them (dnsmasq): also when a test failed before nwagent removed them.
pub fn remove_service_namespaces(prefix: &str) {
    let list = sh("ip", &["netns", "list"]).unwrap_or_default();
    for n in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if n.starts_with(&format!("{prefix}-")) {
            for pid in sh("ip", &["netns", "pids", n]).unwrap_or_default().lines() {
                let _ = sh("kill", &[pid.trim()]);
            }
            let _ = sh("ip", &["netns", "del", n]);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_service_namespaces(&self.netns);
        self.switch.take();
        let _ = sh("ip", &["netns", "del", &self.netns]);
    }
}

/// Joins two host namespaces with a veth `ul0` in each.
pub fn underlay(a: &str, b: &str) -> std::io::Result<()> {
    sh("ip", &["link", "add", "ul0", "netns", a, "type", "veth", "peer", "name", "ul0", "netns", b])?;
    Ok(())
}

pub struct Guest {
    pub netns: String,
    pub ip: String,
}

impl Guest {
    /// A guest namespace whose eth0 (MAC `mac`, `ip/prefix`; prefix 0: no address) is a
    /// veth to `host`, where its end is named `dev`.
    pub fn start(netns: &str, host: &Host, dev: &str, mac: &str, ip: &str, prefix: u8) -> std::io::Result<Guest> {
        sh("ip", &["netns", "add", netns])?;
        let g = Guest { netns: netns.to_owned(), ip: ip.to_owned() };
        sh("ip", &["link", "add", dev, "netns", &host.netns, "type", "veth", "peer", "name", "eth0", "netns", netns])?;
        ns(&host.netns, &["ip", "link", "set", dev, "up"])?;
        ns(netns, &["ip", "link", "set", "lo", "up"])?;
        ns(netns, &["ip", "link", "set", "eth0", "address", mac, "mtu", "1450", "up"])?;
        if prefix > 0 {
            ns(netns, &["ip", "addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"])?;
        }
        // TCP through the userspace datapath needs checksums done in software.
        ns(netns, &["ethtool", "-K", "eth0", "tx", "off"])?;
        Ok(g)
    }

    pub fn ping(&self, ip: &str) -> bool {
        ns(&self.netns, &["ping", "-c", "1", "-W", "2", ip]).is_ok()
    }

    pub fn ping_from(&self, src: &str, ip: &str) -> bool {
        ns(&self.netns, &["ping", "-c", "1", "-W", "1", "-I", src, ip]).is_ok()
    }

    /// Can this guest open a TCP connection to `ip:port` (where a listener runs)?
    pub fn connects(&self, ip: &str, port: u16) -> bool {
        ns(&self.netns, &["nc", "-z", "-w", "2", ip, &port.to_string()]).is_ok()
    }

    /// Starts listeners on `ports` for `secs` seconds.
    pub fn listen(&self, ports: &[u16], secs: u32) {
        for p in ports {
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.netns,
                    "timeout",
                    &secs.to_string(),
                    "nc",
                    "-k",
                    "-l",
                    "-p",
                    &p.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.netns]);
    }
}

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
