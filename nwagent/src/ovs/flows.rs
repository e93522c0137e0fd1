//! The OpenFlow 1.3 pipeline of the integration bridge, as `ovs-ofctl` flow text. Pure
//! functions: the same inputs give the same flows, so an ensure repeated (or replayed
//! after a restart) replaces flows with identical ones.
//!
//! ```text
//!  table 0  classify: from a VIF only its own MAC+IP (IP) or MAC+IP (ARP) pass, and get
//!           tun_id = the network's VNI and reg0 = 1 (local); from a tunnel: as tagged
//!  table 10 egress conntrack (zone per network): new → commit; est/rel → on; inv → drop
//!           (egress is open: vdc's groups filter ingress)
//!  table 20 L2 per network (tun_id): a local MAC → ARP straight out, IP to table 40;
//!           broadcast → the network's local ports (+ tunnels if local);
//!           unknown unicast from a local port → the network's tunnels
//!  table 40 ingress conntrack per port (reg1 = port): est/rel → out; new and allowed by
//!           a group rule → commit, out; else drop
//! ```
//! Each flow carries a cookie naming what it belongs to (the base, a network, a port or a
//! tunnel), so the flows of one thing are replaced as a unit.

use vdc_schema::bus::{ResolvedRule, SecurityGroupSpec};
use vdc_schema::net::{Ipv4Addr, MacAddr};
use vdc_schema::{Direction, Protocol};

pub const BASE: u64 = 1 << 56;

/// FNV-1a: stable across builds (std's hasher is not), so cookies survive upgrades.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    h
}

/// A cookie: the kind in the top byte, a hash of the key below.
pub fn cookie(kind: u8, key: &str) -> u64 {
    ((kind as u64) << 56) | (fnv(key) & 0x00ff_ffff_ffff_ffff)
}
pub const NET: u8 = 2;
pub const PORT: u8 = 3;
pub const TUNNEL: u8 = 4;
pub const SERVICE: u8 = 5;

/// The conntrack zone of a network (1..=65535; 0 is the default zone).
pub fn zone(vni: u32) -> u32 {
    vni % 65535 + 1
}

pub fn base_flows() -> Vec<String> {
    [
        "table=0,priority=0,actions=drop",
        "table=10,priority=100,ct_state=+trk+inv,actions=drop",
        "table=10,priority=80,ct_state=+trk+est,actions=resubmit(,20)",
        "table=10,priority=80,ct_state=+trk+rel,actions=resubmit(,20)",
        "table=10,priority=0,actions=drop",
        "table=20,priority=0,actions=drop",
        "table=40,priority=0,actions=drop",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn outputs(ports: &[u32]) -> String {
    ports.iter().map(|p| format!("output:{p}")).collect::<Vec<_>>().join(",")
}

/// The flows of one network on this host: `ports` are its local ports, `tunnels` the
/// ports towards the other hosts that have it, `service` its DHCP/metadata port here.
/// reg0 says where a packet came from: 1 a local guest, 2 the service port, 0 a tunnel.
/// A guest's broadcast reaches the local service port; only a local guest's leaves
/// through the tunnels (every host answers its own guests' DHCP).
pub fn network_flows(vni: u32, ports: &[u32], tunnels: &[u32], service: Option<u32>) -> Vec<String> {
    let z = zone(vni);
    let bcast = "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00";
    let mut f = vec![format!(
        "table=10,priority=90,tun_id={vni},ct_state=+trk+new,ip,actions=ct(commit,zone={z}),resubmit(,20)"
    )];
    let all: Vec<u32> = ports.iter().chain(service.iter()).chain(tunnels).copied().collect();
    if !all.is_empty() {
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=1,{bcast},actions={}", outputs(&all)));
    }
    if !ports.is_empty() {
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=0,{bcast},actions={}", outputs(ports)));
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=2,{bcast},actions={}", outputs(ports)));
    }
    if !tunnels.is_empty() {
        f.push(format!("table=20,priority=10,tun_id={vni},reg0=1,actions={}", outputs(tunnels)));
    }
    f
}

/// The network's service port (DHCP, metadata, gateway address): trusted, so no
/// conntrack; it may send from any address, but only with its own MAC.
pub fn service_flows(vni: u32, ofport: u32, mac: MacAddr) -> Vec<String> {
    let s = ofport;
    vec![
        format!("table=0,priority=100,in_port={s},dl_src={mac},actions=set_field:{vni}->tun_id,load:2->NXM_NX_REG0[],resubmit(,20)"),
        format!("table=0,priority=50,in_port={s},actions=drop"),
        format!("table=20,priority=100,tun_id={vni},dl_dst={mac},reg0=1,actions=output:{s}"),
    ]
}

/// A tunnel port delivers into L2; only the VNIs with flows in table 20 go anywhere.
pub fn tunnel_flows(ofport: u32) -> Vec<String> {
    vec![format!("table=0,priority=100,in_port={ofport},actions=resubmit(,20)")]
}

/// Splits a port range into value/mask pairs (OpenFlow matches ports by mask).
pub fn port_masks(min: u16, max: u16) -> Vec<(u16, u16)> {
    let mut out = vec![];
    let (mut lo, hi) = (min as u32, max as u32);
    while lo <= hi {
        // The largest aligned block that starts at lo and ends within hi.
        let mut size = if lo == 0 { 1 << 16 } else { 1u32 << lo.trailing_zeros() };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, (!(size - 1) & 0xffff) as u16));
        lo += size;
    }
    out
}

fn rule_matches(r: &ResolvedRule) -> Vec<String> {
    let proto = match r.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "ip",
    };
    let ports: Vec<Option<(u16, u16)>> = match (r.protocol, r.port_min, r.port_max) {
        (Protocol::Tcp | Protocol::Udp, Some(a), b) => port_masks(a, b.unwrap_or(a)).into_iter().map(Some).collect(),
        _ => vec![None],
    };
    let mut out = vec![];
    for cidr in &r.cidrs {
        // A /0 admits every source: no match on it.
        let src = if cidr.prefix_len() == 0 { String::new() } else { format!(",nw_src={cidr}") };
        for p in &ports {
            let dst = match p {
                Some((v, 0xffff)) => format!(",tp_dst={v}"),
                Some((v, m)) => format!(",tp_dst={v:#x}/{m:#x}"),
                None => String::new(),
            };
            out.push(format!("{proto}{src}{dst}"));
        }
    }
    out
}

/// The flows of one local port: anti-spoofing, delivery, and its groups' ingress rules.
pub fn port_flows(vni: u32, ofport: u32, mac: MacAddr, ip: Ipv4Addr, groups: &[SecurityGroupSpec]) -> Vec<String> {
    let z = zone(vni);
    let p = ofport;
    let mut f = vec![
        format!("table=0,priority=100,in_port={p},dl_src={mac},arp,arp_sha={mac},arp_spa={ip},actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],resubmit(,20)"),
        format!("table=0,priority=100,in_port={p},dl_src={mac},ip,nw_src={ip},actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],ct(table=10,zone={z})"),
        // DHCP before the guest has its address.
        format!("table=0,priority=100,in_port={p},dl_src={mac},udp,nw_src=0.0.0.0,tp_src=68,tp_dst=67,actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],resubmit(,20)"),
        // Anything else from the port (another MAC or IP, other ethertypes) is dropped.
        format!("table=0,priority=50,in_port={p},actions=drop"),
        format!("table=20,priority=100,tun_id={vni},dl_dst={mac},arp,actions=output:{p}"),
        format!("table=20,priority=100,tun_id={vni},dl_dst={mac},ip,actions=load:{p}->NXM_NX_REG1[],ct(table=40,zone={z})"),
        format!("table=40,priority=100,reg1={p},ct_state=+trk+est,actions=output:{p}"),
        // DHCP answers come only from the network's service port (guests' ports drop
        // anything sent from another address than their own).
        format!("table=40,priority=90,reg1={p},reg0=2,udp,tp_src=67,tp_dst=68,actions=output:{p}"),
        format!("table=40,priority=100,reg1={p},ct_state=+trk+rel,actions=output:{p}"),
    ];
    let mut rules: Vec<String> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.direction == Direction::Ingress)
        .flat_map(rule_matches)
        .collect();
    rules.sort();
    rules.dedup();
    for m in rules {
        f.push(format!("table=40,priority=50,reg1={p},ct_state=+trk+new,{m},actions=ct(commit,zone={z}),output:{p}"));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_become_masks() {
        assert_eq!(port_masks(22, 22), vec![(22, 0xffff)]);
        assert_eq!(port_masks(0, 65535), vec![(0, 0)]);
        assert_eq!(port_masks(8000, 8003), vec![(8000, 0xfffc)]);
        assert_eq!(port_masks(1, 3), vec![(1, 0xffff), (2, 0xfffe)]);
        // Every port in [1000, 2000] is covered exactly once, and nothing else.
        let m = port_masks(1000, 2000);
        for port in 900u32..2100 {
            let hits = m.iter().filter(|(v, k)| (port as u16 & k) == *v).count();
            assert_eq!(hits, usize::from((1000..=2000).contains(&port)), "port {port}");
        }
    }

    #[test]
    fn ingress_rules_admit_only_what_they_say() {
        let g = SecurityGroupSpec {
            id: "sg-a".parse().unwrap(),
            rules: vec![
                ResolvedRule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Tcp,
                    port_min: Some(22),
                    port_max: Some(22),
                    cidrs: vec!["0.0.0.0/0".parse().unwrap()],
                },
                ResolvedRule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Icmp,
                    port_min: None,
                    port_max: None,
                    cidrs: vec!["10.0.0.5/32".parse().unwrap()],
                },
                ResolvedRule {
                    direction: Direction::Egress,
                    protocol: Protocol::Any,
                    port_min: None,
                    port_max: None,
                    cidrs: vec!["0.0.0.0/0".parse().unwrap()],
                },
            ],
        };
        let (mac, ip) = ("02:00:00:00:00:01".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let f = port_flows(100, 7, mac, ip, &[g]);
        let allow: Vec<&String> = f.iter().filter(|l| l.contains("ct(commit")).collect();
        assert_eq!(allow.len(), 2, "{allow:#?}");
        assert!(allow.iter().any(|l| l.contains("tcp,tp_dst=22,actions")));
        assert!(allow.iter().any(|l| l.contains("icmp,nw_src=10.0.0.5/32,actions")));
        assert!(f.iter().any(|l| l.contains("in_port=7,dl_src=02:00:00:00:00:01,ip,nw_src=10.0.0.2")));
        assert_eq!(
            f,
            port_flows(100, 7, mac, ip, &[]).into_iter().chain(allow.into_iter().cloned()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn cookies_are_stable_and_typed() {
        assert_eq!(cookie(PORT, "vif-a"), cookie(PORT, "vif-a"));
        assert_ne!(cookie(PORT, "vif-a"), cookie(PORT, "vif-b"));
        assert_eq!(cookie(NET, "x") >> 56, NET as u64);
    }
}
