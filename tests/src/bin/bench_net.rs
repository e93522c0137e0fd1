//! `vdc-bench-net`: nwagent's figures on a real Open vSwitch (root; OVS, iperf3).
//!
//!   cargo run --release -p vdc-tests --bin vdc-bench-net -- [--ports 100] [--rules 20] [--seconds 5]
//!
//! - the time to programme N interfaces with M security group rules each (ensure → all
//!   reported active), on one host;
//! - TCP throughput (iperf3) between two guests on two hosts through vdc's VXLAN
//!   overlay, against a bare OVS netdev bridge (NORMAL) joining two guests' veths.
//!
//! Prints figures; asserts nothing. Everything lives in namespaces it makes and removes.

use clap::Parser;
use std::time::{Duration, Instant};
use vdc_bus::ReportSink;
use vdc_nwagent::ovs::{OvsConfig, OvsNetwork};
use vdc_nwagent::testing::{ns, prefix, sh, underlay, Guest, Host, Switch};
use vdc_schema::agent::NetworkAgent;
use vdc_schema::bus::*;
use vdc_schema::id::*;
use vdc_schema::net::{Ipv4Addr, Ipv4Net, MacAddr};
use vdc_schema::{Direction, ObservedInterface, Protocol};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    ports: usize,
    #[arg(long, default_value_t = 20)]
    rules: usize,
    #[arg(long, default_value_t = 5)]
    seconds: u32,
}

fn cfg(host: &Host, ip: Ipv4Addr) -> OvsConfig {
    OvsConfig {
        db_socket: host.db_socket(),
        rundir: host.dir.clone(),
        bridge: "br-int".into(),
        tunnel_ip: ip,
        data_dir: host.dir.join("nwagent"),
        plug_timeout: Duration::from_secs(30),
        host_netns: Some(host.netns.clone()),
        service_prefix: host.netns.clone(),
        external_bridge: None,
    }
}

fn spec(net: &NetworkSpec, i: usize, rules: usize) -> InterfaceSpec {
    let rules = (0..rules)
        .map(|r| ResolvedRule {
            direction: Direction::Ingress,
            protocol: Protocol::Tcp,
            port_min: Some(1000 + r as u16 * 10),
            port_max: Some(1000 + r as u16 * 10 + 9),
            cidrs: vec![Ipv4Net::new(Ipv4Addr::new(10, (r % 200) as u8, 0, 0), 16).unwrap()],
        })
        .collect();
    InterfaceSpec {
        id: VifId::generate(),
        spec_gen: 1,
        instance_id: InstanceId::generate(),
        account_id: AccountId::generate(),
        network: net.clone(),
        mac: MacAddr::new([0x02, 0, 0, 0, (i >> 8) as u8, (i & 0xff) as u8]),
        ip: Ipv4Addr::new(10, 20, (i / 250) as u8, (i % 250 + 2) as u8),
        security_groups: vec![SecurityGroupSpec { id: SecurityGroupId::generate(), rules }],
        metadata: None,
        floating_ip: None,
    }
}

async fn all_active(sink: &ReportSink, ids: &[VifId]) {
    loop {
        let done = ids.iter().all(|id| {
            matches!(sink.newest(id.as_str()), Some(ObjectReport::Interface(r)) if r.state == ObservedInterface::Active)
        });
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn iperf(client: &Guest, server: &Guest, secs: u32) -> f64 {
    let srv = std::process::Command::new("ip")
        .args(["netns", "exec", &server.netns, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("iperf3");
    std::thread::sleep(Duration::from_millis(500));
    let out = ns(&client.netns, &["iperf3", "-c", &server.ip, "-t", &secs.to_string(), "-J"]).unwrap_or_default();
    drop(srv);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let p = prefix();
    let dir = tempfile::Builder::new().prefix("vdc-bench-net-").tempdir_in("/var/tmp")?;
    let (h1, h2) = (format!("{p}-h1"), format!("{p}-h2"));
    sh("ip", &["netns", "add", &h1])?;
    sh("ip", &["netns", "add", &h2])?;
    underlay(&h1, &h2)?;
    let host1 = Host::start(&h1, &dir.path().join("h1"), "ul0", "10.251.0.1")?;
    let host2 = Host::start(&h2, &dir.path().join("h2"), "ul0", "10.251.0.2")?;
    let sink1 = ReportSink::open(None)?;
    let sink2 = ReportSink::open(None)?;
    let n1 = OvsNetwork::open(cfg(&host1, Ipv4Addr::new(10, 251, 0, 1)), sink1.clone()).await?;
    let n2 = OvsNetwork::open(cfg(&host2, Ipv4Addr::new(10, 251, 0, 2)), sink2.clone()).await?;

    // 1. Programming N ports × M rules on host 1 (their devices exist beforehand, as
    //    when hva has started the guests).
    let net = NetworkSpec {
        id: NetworkId::generate(),
        vni: 300,
        cidr: "10.20.0.0/16".parse()?,
        gateway: "10.20.0.1".parse()?,
        peers: vec![],
        external: None,
    };
    let specs: Vec<InterfaceSpec> = (0..args.ports).map(|i| spec(&net, i, args.rules)).collect();
    for (i, s) in specs.iter().enumerate() {
        let dev = vif_device_name(&s.id);
        ns(&h1, &["ip", "link", "add", &dev, "type", "veth", "peer", "name", &format!("bp{i}")])?;
        ns(&h1, &["ip", "link", "set", &dev, "up"])?;
    }
    let start = Instant::now();
    for s in &specs {
        n1.ensure_interface(s.clone()).await?;
    }
    let ids: Vec<VifId> = specs.iter().map(|s| s.id.clone()).collect();
    all_active(&sink1, &ids).await;
    let took = start.elapsed();
    let flows = host1.flows("br-int").len();
    println!(
        "programme {} interfaces x {} rules: {:.2} s ({:.1} ms per interface), {} flows",
        args.ports,
        args.rules,
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / args.ports as f64,
        flows
    );
    for s in &specs {
        n1.ensure_interface_absent(s.id.clone(), 2).await?;
    }

    // 2. Throughput across the overlay.
    let mk = |peer: &str| NetworkSpec {
        id: NetworkId::generate(),
        vni: 400,
        cidr: "10.30.0.0/24".parse().unwrap(),
        gateway: "10.30.0.1".parse().unwrap(),
        peers: vec![peer.parse().unwrap()],
        external: None,
    };
    let any = |cidr: &str| ResolvedRule {
        direction: Direction::Ingress,
        protocol: Protocol::Any,
        port_min: None,
        port_max: None,
        cidrs: vec![cidr.parse().unwrap()],
    };
    let mut a = spec(&mk("10.251.0.2"), 1, 0);
    a.ip = "10.30.0.11".parse()?;
    a.security_groups[0].rules = vec![any("0.0.0.0/0")];
    let mut b = spec(&mk("10.251.0.1"), 2, 0);
    b.network.id = a.network.id.clone();
    b.ip = "10.30.0.12".parse()?;
    b.security_groups[0].rules = vec![any("0.0.0.0/0")];
    let (a_mac, a_ip, b_mac, b_ip) = (a.mac.to_string(), a.ip.to_string(), b.mac.to_string(), b.ip.to_string());
    let ga = Guest::start(&format!("{p}-ga"), &host1, &vif_device_name(&a.id), &a_mac, &a_ip, 24)?;
    let gb = Guest::start(&format!("{p}-gb"), &host2, &vif_device_name(&b.id), &b_mac, &b_ip, 24)?;
    n1.ensure_interface(a.clone()).await?;
    n2.ensure_interface(b.clone()).await?;
    all_active(&sink1, std::slice::from_ref(&a.id)).await;
    all_active(&sink2, std::slice::from_ref(&b.id)).await;
    let _ = ga.ping(&b_ip);
    let overlay = iperf(&ga, &gb, args.seconds);

    // The baseline: a bare netdev bridge (NORMAL) joining two guests' veths in one
    // namespace, same MTU and offload settings.
    let h3 = format!("{p}-h3");
    sh("ip", &["netns", "add", &h3])?;
    let bare = Switch::start(Some(&h3), &dir.path().join("h3"))?;
    bare.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"])?;
    let host3 = Host { netns: h3.clone(), dir: dir.path().join("h3"), tunnel_ip: String::new(), switch: Some(bare) };
    let gx = Guest::start(&format!("{p}-gx"), &host3, "bx1", "02:00:00:00:09:01", "10.40.0.1", 24)?;
    let gy = Guest::start(&format!("{p}-gy"), &host3, "bx2", "02:00:00:00:09:02", "10.40.0.2", 24)?;
    for d in ["bx1", "bx2"] {
        host3.switch.as_ref().unwrap().vsctl(&["add-port", "br0", d])?;
    }
    let _ = gx.ping("10.40.0.2");
    let baseline = iperf(&gx, &gy, args.seconds);
    println!("TCP, one stream, {} s:", args.seconds);
    println!("  vdc overlay (VXLAN, 2 hosts, conntrack SG): {overlay:.2} Gbit/s");
    println!("  bare OVS netdev bridge (NORMAL, 1 host):    {baseline:.2} Gbit/s");
    println!("  ratio: {:.2}", if baseline > 0.0 { overlay / baseline } else { 0.0 });
    n1.remove_services().await;
    n2.remove_services().await;
    drop((ga, gb, gx, gy, host3, host1, host2));
    Ok(())
}
