//! Egress rules and the network's DNS, with packets: nwagent's Open vSwitch driver on a
//! real OVS (a host namespace with its own ovsdb-server and ovs-vswitchd on the
//! userspace datapath), guests as namespaces, the network's dnsmasq in its service
//! namespace, and an "outside" namespace on the host's external bridge running an
//! upstream resolver. Root only; nothing is made in the machine's own namespace except
//! `/etc/netns/<service namespace>/resolv.conf` (the test's own name, removed after).

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use vdc_bus::ReportSink;
use vdc_nwagent::ovs::{OvsConfig, OvsNetwork};
use vdc_nwagent::testing::{eventually, ns, sh, Guest, Host};
use vdc_schema::agent::NetworkAgent;
use vdc_schema::bus::{
    vif_device_name, ExternalSpec, InstanceMetadata, InterfaceSpec, NetworkSpec, ObjectReport, ResolvedRule,
    SecurityGroupSpec,
};
use vdc_schema::id::*;
use vdc_schema::{Direction, ObservedInterface, Protocol};

fn rule(direction: Direction, protocol: Protocol, port: Option<u16>, cidr: &str) -> ResolvedRule {
    ResolvedRule { direction, protocol, port_min: port, port_max: port, cidrs: vec![cidr.parse().unwrap()] }
}

fn iface(net: &NetworkSpec, hostname: &str, mac: &str, ip: &str, rules: Vec<ResolvedRule>) -> InterfaceSpec {
    InterfaceSpec {
        id: VifId::generate(),
        spec_gen: 1,
        instance_id: InstanceId::generate(),
        account_id: AccountId::generate(),
        network: net.clone(),
        mac: mac.parse().unwrap(),
        ip: ip.parse().unwrap(),
        security_groups: vec![SecurityGroupSpec { id: SecurityGroupId::generate(), rules }],
        metadata: Some(InstanceMetadata { hostname: hostname.into(), public_keys: vec![], user_data: None }),
        floating_ip: None,
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

/// Removes what the test made outside its namespaces, and stops its processes.
struct Cleanup {
    netns: Vec<String>,
    files: Vec<std::path::PathBuf>,
    children: Vec<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.files {
            let _ = std::fs::remove_file(f);
            if let Some(d) = f.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
        for n in &self.netns {
            let _ = sh("ip", &["netns", "del", n]);
        }
    }
}

/// `busybox nslookup NAME SERVER` in `netns`: the IPv4 addresses of the answer.
fn lookup(netns: &str, name: &str, server: &str) -> Vec<String> {
    let out = ns(netns, &["sh", "-c", &format!("busybox nslookup -type=a {name} {server} 2>&1; true")]).unwrap();
    // The answer's addresses follow its "Name:" line (the server's own come before).
    out.split_once("Name:")
        .map(|(_, a)| {
            a.lines().filter_map(|l| l.trim().strip_prefix("Address:")).map(|a| a.trim().to_owned()).collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_rules_are_enforced_and_guests_resolve_each_other() {
    let p = vdc_nwagent::testing::prefix();
    let dir = tempfile::Builder::new().prefix("vdc-netpolicy-").tempdir_in("/var/tmp").unwrap();
    let (h1, out) = (format!("{p}-h1"), format!("{p}-out"));
    let mut cleanup = Cleanup { netns: vec![], files: vec![], children: vec![] };
    for n in [&h1, &out] {
        sh("ip", &["netns", "add", n]).unwrap();
        cleanup.netns.push(n.clone());
    }
    // One host: its underlay is a veth to nowhere (no tunnels here).
    ns(&h1, &["ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]).unwrap();
    // The external network: a Linux bridge in the host, "outside" behind a veth, holding
    // an upstream resolver that knows example.test.
    ns(&h1, &["ip", "link", "add", "br-ex", "type", "bridge"]).unwrap();
    ns(&h1, &["ip", "link", "set", "br-ex", "up"]).unwrap();
    sh("ip", &["link", "add", "ex0", "netns", &h1, "type", "veth", "peer", "name", "eth0", "netns", &out]).unwrap();
    ns(&h1, &["ip", "link", "set", "ex0", "master", "br-ex", "up"]).unwrap();
    ns(&out, &["ip", "addr", "add", "203.0.113.100/24", "dev", "eth0"]).unwrap();
    ns(&out, &["ip", "link", "set", "eth0", "up"]).unwrap();
    ns(&out, &["ip", "link", "set", "lo", "up"]).unwrap();
    let upstream = Command::new("ip")
        .args(["netns", "exec", &out, "dnsmasq", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts"])
        .args(["--interface=eth0", "--bind-interfaces", "--address=/example.test/192.0.2.77"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cleanup.children.push(upstream);

    let host = Host::start(&h1, &dir.path().join("h1"), "ul0", "10.251.0.1").expect("OVS host starts");
    // The host's resolvers, as the network's service namespace is to use them (the
    // iproute2 convention for a namespace's own resolv.conf, honoured by nwagent).
    let vni = 100;
    let svc_ns = format!("{h1}-n{vni:x}");
    let resolv = std::path::PathBuf::from(format!("/etc/netns/{svc_ns}/resolv.conf"));
    std::fs::create_dir_all(resolv.parent().unwrap()).unwrap();
    std::fs::write(&resolv, "nameserver 127.0.0.53\nnameserver 203.0.113.100\n").unwrap();
    cleanup.files.push(resolv);
    let cfg = OvsConfig {
        db_socket: host.db_socket(),
        rundir: host.dir.clone(),
        bridge: "br-int".into(),
        tunnel_ip: "10.251.0.1".parse().unwrap(),
        data_dir: dir.path().join("nwagent"),
        plug_timeout: Duration::from_secs(10),
        host_netns: Some(h1.clone()),
        service_prefix: h1.clone(),
        external_bridge: Some("br-ex".into()),
    };
    let sink = ReportSink::open(None).unwrap();
    let mut net = OvsNetwork::open(cfg.clone(), sink.clone()).await.expect("switch opens");

    let network = NetworkSpec {
        id: NetworkId::generate(),
        vni,
        cidr: "10.20.0.0/24".parse().unwrap(),
        gateway: "10.20.0.1".parse().unwrap(),
        peers: vec![],
        external: Some(ExternalSpec {
            cidr: "203.0.113.0/24".parse().unwrap(),
            gateway: "203.0.113.1".parse().unwrap(),
            snat_ip: "203.0.113.11".parse().unwrap(),
        }),
    };
    use Direction::{Egress, Ingress};
    // g1 may start only tcp/80 into the network (and admits ssh); g2 has no egress rules
    // and admits tcp/80, tcp/81 and icmp.
    let mut s1 = iface(
        &network,
        "app-1",
        "02:00:00:00:03:01",
        "10.20.0.11",
        vec![
            rule(Egress, Protocol::Tcp, Some(80), "10.20.0.0/24"),
            rule(Ingress, Protocol::Tcp, Some(22), "0.0.0.0/0"),
        ],
    );
    let s2 = iface(
        &network,
        "web-2",
        "02:00:00:00:03:02",
        "10.20.0.12",
        vec![
            rule(Ingress, Protocol::Tcp, Some(80), "0.0.0.0/0"),
            rule(Ingress, Protocol::Tcp, Some(81), "0.0.0.0/0"),
            rule(Ingress, Protocol::Icmp, None, "0.0.0.0/0"),
        ],
    );
    // g1 starts without an address: it takes it by DHCP, its egress rules notwithstanding.
    let g1 = Guest::start(&format!("{p}-g1"), &host, &vif_device_name(&s1.id), &s1.mac.to_string(), "0.0.0.0", 0)
        .expect("guest ns");
    let g2 = Guest::start(&format!("{p}-g2"), &host, &vif_device_name(&s2.id), &s2.mac.to_string(), "10.20.0.12", 24)
        .expect("guest ns");
    active(&net, &sink, &s1).await;
    active(&net, &sink, &s2).await;

    // DHCP: the lease names the network's DNS server (the gateway address).
    let script = dir.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] && echo \"bound $ip/$mask router $router dns $dns\"\nexit 0\n",
    )
    .unwrap();
    sh("chmod", &["+x", &script.to_string_lossy()]).unwrap();
    let udhcpc = ["busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "5", "-s", &script.to_string_lossy()];
    let lease = ns(&g1.netns, &udhcpc).unwrap_or_else(|e| panic!("no DHCP answer: {e}"));
    assert!(lease.contains("bound 10.20.0.11/24 router 10.20.0.1 dns 10.20.0.1"), "{lease}");
    ns(&g1.netns, &["ip", "addr", "add", "10.20.0.11/24", "dev", "eth0"]).unwrap();
    for g in [&g1, &g2] {
        ns(&g.netns, &["ip", "route", "add", "default", "via", "10.20.0.1"]).unwrap();
    }

    // DNS from the lease's server: the other guest by its hostname (g1's egress rules
    // do not cut it off from the network's resolver), other names from upstream.
    assert!(
        eventually(Duration::from_secs(10), || lookup(&g1.netns, "web-2", "10.20.0.1") == ["10.20.0.12"]),
        "web-2 resolves to g2: {:?}",
        lookup(&g1.netns, "web-2", "10.20.0.1")
    );
    assert_eq!(lookup(&g2.netns, "app-1", "10.20.0.1"), ["10.20.0.11"], "and g1 from g2");
    assert_eq!(lookup(&g1.netns, "example.test", "10.20.0.1"), ["192.0.2.77"], "forwarded to the host's resolver");
    assert!(lookup(&g1.netns, "nobody-here", "10.20.0.1").is_empty(), "an unknown name is not answered");
    // Metadata too.
    let url = "http://169.254.169.254/latest/meta-data/instance-id";
    // (Debian's static busybox wget crashes with -T: `timeout` bounds it instead.)
    let md = ns(&g1.netns, &["timeout", "5", "busybox", "wget", "-q", "-O", "-", url]);
    assert_eq!(md.unwrap_or_default().trim(), s1.instance_id.as_str(), "metadata with egress rules");

    // Egress: tcp/80 into the network passes, tcp/81 and icmp do not, nor the outside.
    g2.listen(&[80, 81], 60);
    g1.listen(&[22], 60);
    assert!(g1.connects("10.20.0.12", 80), "tcp/80 allowed by g1's egress rule");
    assert!(!g1.connects("10.20.0.12", 81), "tcp/81 not allowed out of g1");
    assert!(!g1.ping("10.20.0.12"), "icmp not allowed out of g1 (g2 would admit it)");
    assert!(!g1.ping("203.0.113.100"), "nor to the outside");
    // Without egress rules everything goes out: g2 reaches the outside through the
    // router, and g1's ssh, whose answers g1 sends back despite its egress rules.
    assert!(eventually(Duration::from_secs(5), || g2.ping("203.0.113.100")), "g2 reaches outside");
    assert!(g2.connects("10.20.0.11", 22), "answers to admitted inbound traffic pass g1's egress");
    assert!(!g2.ping("10.20.0.11"), "g1's ingress still admits no icmp");
    // Nor sent to g1's address in a broadcast or multicast frame: those were flooded to
    // every port past the groups, and g1 answered (red team, 2026-12-06).
    for lladdr in ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb"] {
        ns(&g2.netns, &["ip", "neigh", "replace", "10.20.0.11", "lladdr", lladdr, "nud", "permanent", "dev", "eth0"])
            .unwrap();
        assert!(!g2.ping("10.20.0.11"), "icmp to g1 in a frame to {lladdr} passed its ingress rules");
    }
    ns(&g2.netns, &["ip", "neigh", "del", "10.20.0.11", "dev", "eth0"]).unwrap();

    // nwagent restarts: the same flows come back, dnsmasq keeps answering.
    let before = host.flows("br-int");
    net.shut_down();
    drop(std::mem::replace(&mut net, OvsNetwork::open(cfg, sink.clone()).await.unwrap()));
    assert_eq!(host.flows("br-int"), before, "reopening keeps the same flows");
    assert!(!g1.connects("10.20.0.12", 81), "still enforced after the restart");
    assert_eq!(lookup(&g1.netns, "web-2", "10.20.0.1"), ["10.20.0.12"], "names answer after the restart");

    // The egress rule goes: g1's egress is open again, on the running guest.
    s1.spec_gen = 2;
    s1.security_groups[0].rules.retain(|r| r.direction == Ingress);
    active(&net, &sink, &s1).await;
    assert!(g1.connects("10.20.0.12", 81), "tcp/81 open once g1 has no egress rules");
    assert!(g1.ping("10.20.0.12"), "icmp too");
    // A renamed guest answers by its new name (dnsmasq re-reads its hosts on SIGHUP).
    let mut s2 = s2;
    s2.spec_gen = 2;
    s2.metadata.as_mut().unwrap().hostname = "web-two".into();
    active(&net, &sink, &s2).await;
    assert!(
        eventually(Duration::from_secs(5), || lookup(&g1.netns, "web-two", "10.20.0.1") == ["10.20.0.12"]),
        "the new name answers"
    );
    assert!(lookup(&g1.netns, "web-2", "10.20.0.1").is_empty(), "the old one no longer");

    // Removing a rule cuts the sessions it admitted, not only new ones (their conntrack
    // entries stay established; every packet that is not an answer asks the rules
    // again). Ingress: a TCP stream into g2's tcp/82 stops when the rule goes. (A port
    // of its own: the listeners above may still hold 80 and 81, and nc binds beside
    // them, so a connection could reach one of theirs.)
    s2.spec_gen = 3;
    s2.security_groups[0].rules.push(rule(Ingress, Protocol::Tcp, Some(82), "0.0.0.0/0"));
    active(&net, &sink, &s2).await;
    let into_g2 = Running::start(
        &g1.netns,
        "while :; do echo x; sleep 0.2; done | nc 10.20.0.12 82",
        dir.path().join("received-82"),
        Some((&g2.netns, "nc -l -p 82")),
    );
    assert!(eventually(Duration::from_secs(5), || into_g2.grows()), "the stream into tcp/82 flows");
    s2.spec_gen = 4;
    s2.security_groups[0].rules.retain(|r| r.port_min != Some(82));
    active(&net, &sink, &s2).await;
    assert!(into_g2.stopped(), "the established stream ends with the rule that admitted it");
    g2.listen(&[80], 10);
    assert!(g1.connects("10.20.0.12", 80), "tcp/80's rule still stands");
    // Egress: g1 may ping out while a rule says so; a running ping stops when it goes.
    s1.spec_gen = 3;
    s1.security_groups[0].rules.push(rule(Egress, Protocol::Tcp, Some(80), "10.20.0.0/24"));
    s1.security_groups[0].rules.push(rule(Egress, Protocol::Icmp, None, "10.20.0.0/24"));
    active(&net, &sink, &s1).await;
    let ping = Running::start(&g1.netns, "ping -i 0.2 10.20.0.12", dir.path().join("ping"), None);
    assert!(eventually(Duration::from_secs(5), || ping.grows()), "g1's ping runs under its egress rule");
    s1.spec_gen = 4;
    s1.security_groups[0].rules.retain(|r| r.protocol != Protocol::Icmp);
    active(&net, &sink, &s1).await;
    assert!(ping.stopped(), "the running ping stops with its egress rule");
    g1.listen(&[22], 10);
    assert!(g2.connects("10.20.0.11", 22), "answers to admitted inbound traffic still pass g1's egress");

    // A guest is no DHCP server: what it sends from udp/67 is dropped where it enters,
    // even to a guest that admits udp/68 (a rogue server handed new guests its own
    // address, gateway and DNS); from another port it arrives.
    s1.spec_gen = 5;
    s1.security_groups[0].rules.push(rule(Ingress, Protocol::Udp, Some(68), "0.0.0.0/0"));
    active(&net, &sink, &s1).await;
    // What g2 sends to g1's udp/68 from `from_port`, as g1's listener receives it.
    let to_g1 = |from_port: u16, out: &str| {
        let send = format!("while :; do echo offer; sleep 0.2; done | socat -u - UDP:10.20.0.11:68,bind=:{from_port}");
        Running::start(&g2.netns, &send, dir.path().join(out), Some((&g1.netns, "socat -u UDP-RECV:68,reuseaddr -")))
    };
    let plain = to_g1(6767, "plain-68");
    assert!(eventually(Duration::from_secs(5), || plain.grows()), "udp/68 from another port arrives");
    drop(plain);
    // What g1's rules admit arrives in a broadcast frame too, through them (TCP would
    // not: Linux takes it only in frames to its own MAC).
    ns(
        &g2.netns,
        &["ip", "neigh", "replace", "10.20.0.11", "lladdr", "ff:ff:ff:ff:ff:ff", "nud", "permanent", "dev", "eth0"],
    )
    .unwrap();
    let in_bcast = to_g1(6768, "bcast-68");
    assert!(eventually(Duration::from_secs(5), || in_bcast.grows()), "admitted udp/68 in a broadcast frame");
    drop(in_bcast);
    ns(&g2.netns, &["ip", "neigh", "del", "10.20.0.11", "dev", "eth0"]).unwrap();
    let rogue = to_g1(67, "rogue-67");
    assert!(!rogue.grows() && !rogue.grows(), "a guest's udp/67 reached another guest");
    drop(rogue);

    net.remove_services().await;
    drop((into_g2, ping, g1, g2, host));
}

/// A command left running in a guest whose output grows while its traffic passes: a
/// ping's answers, or what a listener in another guest receives. Killed when dropped.
struct Running {
    children: Vec<Child>,
    out: std::path::PathBuf,
}

impl Running {
    /// Runs `cmd` in `netns`, its output to `out`; with `listener` (its namespace and
    /// command), that first, and `out` is what it receives.
    fn start(netns: &str, cmd: &str, out: std::path::PathBuf, listener: Option<(&str, &str)>) -> Running {
        let spawn = |netns: &str, cmd: &str, out: Stdio| {
            use std::os::unix::process::CommandExt;
            Command::new("ip")
                .args(["netns", "exec", netns, "timeout", "60", "sh", "-c", cmd])
                // A group of its own: a pipeline's commands end with it (below).
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        let file = || Stdio::from(std::fs::File::create(&out).unwrap());
        let children = match listener {
            Some((ns, listen)) => {
                let l = spawn(ns, listen, file());
                std::thread::sleep(Duration::from_millis(300));
                vec![l, spawn(netns, cmd, Stdio::null())]
            }
            None => vec![spawn(netns, cmd, file())],
        };
        Running { children, out }
    }

    /// Does the output grow within a second and a half?
    fn grows(&self) -> bool {
        let len = || std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0);
        let before = len();
        std::thread::sleep(Duration::from_millis(1500));
        len() > before
    }

    /// Has it stopped (what was in flight when asked aside)?
    fn stopped(&self) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        !self.grows()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.children {
            // The whole group: `timeout` passes TERM on to its shell only, and a
            // pipeline's commands went on sending after it.
            let _ = Command::new("kill").args(["--", &format!("-{}", c.id())]).status();
            let _ = c.wait();
        }
    }
}
