//! The all-in-one's external network (`vdc up`'s [`ExternalNet`]) on a real host side:
//! a "host" namespace with its own Open vSwitch, a default route to a "wan" namespace, a
//! route of its own that collides with the first candidate range, and nwagent with the
//! external bridge that `ExternalNet` made. Everything lives in namespaces of this test
//! (own bridge, nft table and data directory), so it runs beside a real `vdc up` and
//! changes nothing in the machine's own namespace. Root only.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;
use vdc_bus::ReportSink;
use vdc_cli::external::{ExternalError, ExternalNet, ExternalOptions};
use vdc_nwagent::ovs::{OvsConfig, OvsNetwork};
use vdc_nwagent::testing::{eventually, ns, sh, Guest, Host};
use vdc_schema::agent::NetworkAgent;
use vdc_schema::bus::{
    vif_device_name, ExternalSpec, InterfaceSpec, NetworkSpec, ObjectReport, ResolvedRule, SecurityGroupSpec,
};
use vdc_schema::id::*;
use vdc_schema::{Direction, ObservedInterface, Protocol};

fn rule(protocol: Protocol, port: Option<u16>) -> ResolvedRule {
    ResolvedRule {
        direction: Direction::Ingress,
        protocol,
        port_min: port,
        port_max: port,
        cidrs: vec!["0.0.0.0/0".parse().unwrap()],
    }
}

async fn active(net: &OvsNetwork, sink: &ReportSink, spec: &InterfaceSpec) {
    net.ensure_interface(spec.clone()).await.unwrap();
    let start = std::time::Instant::now();
    loop {
        match sink.newest(spec.id.as_str()) {
            Some(ObjectReport::Interface(r)) if r.spec_gen >= spec.spec_gen && r.state == ObservedInterface::Active => {
                return
            }
            Some(ObjectReport::Interface(r)) if r.state == ObservedInterface::Failed => panic!("failed: {r:?}"),
            other => assert!(start.elapsed() < Duration::from_secs(20), "{} not active: {other:?}", spec.id),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP listener in `netns` on `addr:port` that logs who connected.
struct Listener {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Listener {
    fn start(netns: &str, addr: &str, port: u16, log: std::path::PathBuf) -> Listener {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "timeout", "60", "nc", "-n", "-k", "-l", "-v", addr])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            // A group of its own, killed whole on drop: killing only `ip` (which became
            // `timeout`) would leave nc running, holding whatever the test inherited.
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Listener { child, log }
    }

    fn saw(&self, from: &str) -> bool {
        let want = format!("Connection received on {from} ");
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&self.log).unwrap_or_default().contains(&want))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// Deletes a namespace of the test's own on drop (also on failure).
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = sh("ip", &["netns", "del", &self.0]);
    }
}

/// `echo hi | nc` from the guest: the connection, not the answer, is what is checked.
fn send(g: &Guest, ip: &str, port: u16) -> bool {
    ns(&g.netns, &["sh", "-c", &format!("echo hi | nc -n -N -w 2 {ip} {port}")]).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floating_ips_from_the_host_and_snat_to_its_default_route() {
    let p = vdc_nwagent::testing::prefix();
    let dir = tempfile::Builder::new().prefix("vdc-ext-").tempdir_in("/var/tmp").unwrap();
    let (h, wan) = (format!("{p}-h"), format!("{p}-wan"));
    sh("ip", &["netns", "add", &h]).unwrap();
    let _h_guard = NsGuard(h.clone());
    sh("ip", &["netns", "add", &wan]).unwrap();
    let _wan_guard = NsGuard(wan.clone());
    // The host: an underlay nobody uses (one host), an uplink to "wan" with the default
    // route, and a LAN route over the first candidate range.
    ns(&h, &["ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]).unwrap();
    ns(&h, &["ip", "link", "set", "ul0p", "up"]).unwrap();
    let host = Host::start(&h, &dir.path().join("ovs"), "ul0", "10.251.0.1").expect("OVS host starts");
    sh("ip", &["link", "add", "up0", "netns", &h, "type", "veth", "peer", "name", "eth0", "netns", &wan]).unwrap();
    ns(&wan, &["ip", "link", "set", "lo", "up"]).unwrap();
    ns(&wan, &["ip", "addr", "add", "198.51.100.1/24", "dev", "eth0"]).unwrap();
    ns(&wan, &["ip", "link", "set", "eth0", "up"]).unwrap();
    ns(&h, &["ip", "addr", "add", "198.51.100.2/24", "dev", "up0"]).unwrap();
    ns(&h, &["ip", "link", "set", "up0", "up"]).unwrap();
    ns(&h, &["ip", "route", "add", "default", "via", "198.51.100.1"]).unwrap();
    ns(&h, &["ip", "route", "add", "192.168.213.0/24", "via", "198.51.100.1"]).unwrap();

    let bridge = format!("{p}-ex");
    let table = format!("{p}_nat");
    let opts = ExternalOptions {
        netns: Some(h.clone()),
        bridge: bridge.clone(),
        nft_table: table.clone(),
        cidr: None,
        state_file: dir.path().join("external.json"),
    };
    let tools = vdc_bus::cmd::system();

    // A range that collides with the host's routes is refused, and nothing is made.
    let asked = ExternalOptions { cidr: Some("192.168.213.0/24".parse().unwrap()), ..opts.clone() };
    let e = ExternalNet::start(&asked, tools.clone()).await.err().expect("a colliding range is refused");
    assert!(matches!(e, ExternalError::Collides { .. }), "{e}");
    assert!(e.to_string().contains("192.168.213.0/24 dev up0"), "{e}");
    assert!(ns(&h, &["ip", "link", "show", &bridge]).is_err(), "no bridge for a refused range");
    assert!(!opts.state_file.exists(), "no range saved for a refused one");

    // The automatic range skips the LAN's: the second candidate.
    // A new namespace inherits the host's forwarding, which a `vdc up` running on the
    // host turns on: start from off, as a fresh host is.
    ns(&h, &["sysctl", "-qw", "net.ipv4.ip_forward=0"]).unwrap();
    assert_eq!(ns(&h, &["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap().trim(), "0");
    let ext = ExternalNet::start(&opts, tools.clone()).await.unwrap();
    assert_eq!(ext.cidr.to_string(), "192.168.217.0/24");
    assert_eq!(ext.gateway.to_string(), "192.168.217.1");
    let c = ext.dcmgr_config();
    assert_eq!((c.pool_start.as_str(), c.pool_end.as_str()), ("192.168.217.2", "192.168.217.254"));

    let cfg = OvsConfig {
        db_socket: host.db_socket(),
        rundir: host.dir.clone(),
        bridge: "br-int".into(),
        tunnel_ip: "10.251.0.1".parse().unwrap(),
        data_dir: dir.path().join("nwagent"),
        plug_timeout: Duration::from_secs(10),
        host_netns: Some(h.clone()),
        service_prefix: h.clone(),
        external_bridge: Some(ext.bridge.clone()),
    };
    let sink = ReportSink::open(None).unwrap();
    let net = OvsNetwork::open(cfg, sink.clone()).await.expect("switch opens");
    let network = NetworkSpec {
        id: NetworkId::generate(),
        vni: 300,
        cidr: "10.10.0.0/24".parse().unwrap(),
        gateway: "10.10.0.1".parse().unwrap(),
        peers: vec![],
        external: Some(ExternalSpec { cidr: ext.cidr, gateway: ext.gateway, snat_ip: c.pool_start.parse().unwrap() }),
    };
    let instance_id = InstanceId::generate();
    let spec = InterfaceSpec {
        id: VifId::generate(),
        spec_gen: 1,
        metadata: None,
        instance_id,
        account_id: AccountId::generate(),
        network,
        mac: "02:00:00:00:03:01".parse().unwrap(),
        ip: "10.10.0.11".parse().unwrap(),
        security_groups: vec![SecurityGroupSpec {
            id: SecurityGroupId::generate(),
            rules: vec![rule(Protocol::Icmp, None), rule(Protocol::Tcp, Some(22))],
        }],
        floating_ip: Some("192.168.217.50".parse().unwrap()),
    };
    let g = Guest::start(&format!("{p}-g"), &host, &vif_device_name(&spec.id), "02:00:00:00:03:01", "10.10.0.11", 24)
        .expect("guest ns");
    ns(&g.netns, &["ip", "route", "add", "default", "via", "10.10.0.1"]).unwrap();
    active(&net, &sink, &spec).await;

    // The host reaches the guest through its floating IP: ping and TCP.
    let from_host = |args: &[&str]| ns(&h, args).is_ok();
    assert!(
        eventually(Duration::from_secs(10), || from_host(&["ping", "-c", "1", "-W", "1", "192.168.217.50"])),
        "the host pings the floating IP"
    );
    g.listen(&[22], 60);
    assert!(from_host(&["nc", "-z", "-w", "2", "192.168.217.50", "22"]), "the host connects to the guest's tcp/22");
    assert!(!from_host(&["nc", "-z", "-w", "2", "192.168.217.50", "23"]), "…and not to what its group closes");

    // The guest reaches a listener on the host's end of the bridge, as its floating IP,
    // and the outside through the host's default route, masqueraded as the host.
    let on_bridge = Listener::start(&h, "192.168.217.1", 9000, dir.path().join("bridge.log"));
    let outside = Listener::start(&wan, "198.51.100.1", 9001, dir.path().join("wan.log"));
    assert!(send(&g, "192.168.217.1", 9000), "guest → the host's bridge address");
    assert!(on_bridge.saw("192.168.217.50"), "the host sees the floating IP");
    assert!(send(&g, "198.51.100.1", 9001), "guest → outside");
    assert!(outside.saw("198.51.100.2"), "outside sees the host's address (masquerade)");
    assert!(ns(&wan, &["ping", "-c", "1", "-W", "1", "192.168.217.50"]).is_err(), "outside has no way in");

    // Stop (as `vdc up` does on Ctrl-C): the NAT table goes and forwarding is off again;
    // the bridge stays, so the host still reaches the guest.
    ext.stop().await;
    assert!(ns(&h, &["nft", "list", "table", "ip", &table]).is_err(), "the nft table is removed on stop");
    assert_eq!(ns(&h, &["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap().trim(), "0");
    assert!(!send(&g, "198.51.100.1", 9001), "no way out while stopped");
    assert!(from_host(&["ping", "-c", "1", "-W", "1", "192.168.217.50"]), "the bridge outlives the stop");

    // Restart: the same range (the bridge's own route is no collision), the same
    // floating IP works, outbound NAT is back. A different range is refused.
    let changed = ExternalOptions { cidr: Some("10.213.213.0/24".parse().unwrap()), ..opts.clone() };
    let e = ExternalNet::start(&changed, tools.clone()).await.err().expect("a changed range is refused");
    assert!(matches!(e, ExternalError::Changed { .. }), "{e}");
    let ext = ExternalNet::start(&opts, tools.clone()).await.unwrap();
    assert_eq!(ext.cidr.to_string(), "192.168.217.0/24");
    let addrs = ns(&h, &["ip", "-4", "-o", "addr", "show", "dev", &bridge]).unwrap();
    assert_eq!(addrs.matches("inet ").count(), 1, "one address after a restart: {addrs}");
    assert!(ns(&h, &["nft", "list", "table", "ip", &table]).unwrap().contains("masquerade"));
    assert!(send(&g, "198.51.100.1", 9001), "guest → outside after the restart");
    assert!(from_host(&["nc", "-z", "-w", "2", "192.168.217.50", "22"]), "host → guest after the restart");

    // The network's last port removed, its router goes with it: nothing on the host holds
    // the SNAT address or answers for the floating IP, which dcmgr may then hand out again
    // (`router_release_after_ms`).
    let holders = || -> Vec<String> {
        let list = sh("ip", &["netns", "list"]).unwrap_or_default();
        list.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(h.as_str()))
            .filter(|n| {
                ns(n, &["ip", "-4", "-o", "addr"]).is_ok_and(|a| a.contains(&format!("inet {}/", c.pool_start)))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(holders().len(), 1, "the router holds the SNAT address");
    net.ensure_interface_absent(spec.id.clone(), spec.spec_gen).await.unwrap();
    assert!(eventually(Duration::from_secs(10), || net.idle()));
    assert!(eventually(Duration::from_secs(10), || holders().is_empty()), "still held by {:?}", holders());
    assert!(!from_host(&["ping", "-c", "1", "-W", "1", "192.168.217.50"]), "the floating IP no longer answers");

    drop((on_bridge, outside));
    net.remove_services().await;
    ext.remove().await;
    assert!(ns(&h, &["ip", "link", "show", &bridge]).is_err(), "remove deletes the bridge");
    drop(g);
    drop(host);
}
