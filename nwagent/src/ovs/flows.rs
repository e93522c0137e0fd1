//! The OpenFlow 1.3 pipeline of the integration bridge, as `ovs-ofctl` flow text. Pure
//! functions: the same inputs give the same flows, so an ensure repeated (or replayed
//! after a restart) replaces flows with identical ones.
//!
//! ```text
//!  table 0  classify: from a VIF only its own MAC+IP (IP) or MAC+IP (ARP) pass (never
//!           DHCP server replies nor VLAN-tagged frames), and get
//!           tun_id = the network's VNI and reg0 = 1 (local); from a tunnel: as tagged
//!  table 10 egress conntrack (zone per network): est/rel → on; inv → drop; new → commit
//!           when the port's groups allow it (open when none of them has egress
//!           rules; else their egress rules + the network's services), else drop; a
//!           port with egress rules sends est packets of its own connections only while
//!           a rule still allows them
//!  table 20 L2 per network (tun_id): a local MAC → ARP straight out, IP to table 40;
//!           broadcast → the network's local ports (+ tunnels if local), IP broadcast
//!           and multicast through each local port's table 40;
//!           unknown unicast from a local port → the network's tunnels
//!  table 40 ingress conntrack per port (reg1 = port): answers (est+rpl) and rel → out;
//!           new and allowed by a group rule → commit, out; est (not an answer) → out
//!           while a rule still allows it; else drop. So removing a rule cuts the
//!           sessions it admitted at once, without flushing conntrack
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
    // Broadcast and multicast IP reach each local guest through its port's ingress
    // rules (table 40, as unicast does): sent straight out, a frame to ff:ff:ff:ff:ff:ff
    // carrying any IP packet passed every group (red team, 2026-12-06). ARP floods as
    // it is (anti-spoofed where it enters); the service port and the tunnels are not
    // guests (the other hosts apply their guests' rules).
    // (`ct(table=…)` ends its action list: a clone per port.)
    let through_ingress = |ports: &[u32]| {
        ports.iter().map(|p| format!("clone(load:{p}->NXM_NX_REG1[],ct(table=40,zone={z}))")).collect::<Vec<_>>()
    };
    let mut from_guest: Vec<String> = through_ingress(ports);
    from_guest.extend(service.iter().chain(tunnels).map(|p| format!("output:{p}")));
    let all: Vec<u32> = ports.iter().chain(service.iter()).chain(tunnels).copied().collect();
    if !all.is_empty() {
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=1,{bcast},actions={}", outputs(&all)));
        f.push(format!("table=20,priority=55,tun_id={vni},reg0=1,ip,{bcast},actions={}", from_guest.join(",")));
    }
    if !ports.is_empty() {
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=0,{bcast},actions={}", outputs(ports)));
        f.push(format!(
            "table=20,priority=55,tun_id={vni},reg0=0,ip,{bcast},actions={}",
            through_ingress(ports).join(",")
        ));
        f.push(format!("table=20,priority=50,tun_id={vni},reg0=2,{bcast},actions={}", outputs(ports)));
        f.push(format!(
            "table=20,priority=55,tun_id={vni},reg0=2,ip,{bcast},actions={}",
            through_ingress(ports).join(",")
        ));
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

/// The match of a rule's traffic: `peer` is the field that holds the other side's address
/// (`nw_src` for ingress, `nw_dst` for egress).
fn rule_matches(r: &ResolvedRule, peer: &str) -> Vec<String> {
    let proto = match r.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Icmp => "icmp",
        Protocol::Any => "ip",
    };
    let ports: Vec<String> = match (r.protocol, r.port_min, r.port_max) {
        (Protocol::Tcp | Protocol::Udp, Some(a), b) => port_masks(a, b.unwrap_or(a))
            .into_iter()
            .map(|(v, m)| if m == 0xffff { format!(",tp_dst={v}") } else { format!(",tp_dst={v:#x}/{m:#x}") })
            .collect(),
        // For icmp, port_min is the ICMP type.
        (Protocol::Icmp, Some(t), _) => vec![format!(",icmp_type={t}")],
        _ => vec![String::new()],
    };
    let mut out = vec![];
    for cidr in &r.cidrs {
        // A /0 admits every address: no match on it.
        let addr = if cidr.prefix_len() == 0 { String::new() } else { format!(",{peer}={cidr}") };
        for p in &ports {
            out.push(format!("{proto}{addr}{p}"));
        }
    }
    out
}

/// The sorted, deduplicated matches of the groups' rules of one direction.
fn matches(groups: &[SecurityGroupSpec], direction: Direction) -> Vec<String> {
    let peer = if direction == Direction::Ingress { "nw_src" } else { "nw_dst" };
    let mut m: Vec<String> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter(|r| r.direction == direction)
        .flat_map(|r| rule_matches(r, peer))
        .collect();
    m.sort();
    m.dedup();
    m
}

/// What a guest may always start, whatever its egress rules: the network's own services
/// on the service port. DHCP renewals (unicast to the server, or broadcast when
/// rebinding), DNS to the network's resolver, and the metadata service. A guest cut off
/// from them would lose its address, its names and its keys, which no egress rule
/// means to forbid. ARP and DHCP from 0.0.0.0 never reach conntrack (table 0 sends them
/// straight to L2), so they need nothing here.
fn service_matches(gateway: Ipv4Addr) -> Vec<String> {
    vec![
        format!("udp,nw_dst={gateway},tp_src=68,tp_dst=67"),
        "udp,nw_dst=255.255.255.255,tp_src=68,tp_dst=67".to_owned(),
        format!("udp,nw_dst={gateway},tp_dst=53"),
        format!("tcp,nw_dst={gateway},tp_dst=53"),
        format!("tcp,nw_dst={},tp_dst=80", crate::ovs::service::METADATA_IP),
    ]
}

/// The flows of one local port: anti-spoofing, delivery, its groups' ingress rules, and
/// their egress rules. Egress: when none of the port's groups has an egress rule, the
/// port's new connections are all committed by the network's flow in table 10 (open, as
/// a group without egress rules promises); when any has, the port may start exactly
/// what the union of its groups' egress rules allows, plus the network's services
/// ([`service_matches`]). Answers to admitted inbound traffic are `+est`/`+rel` in table
/// 10 and pass either way.
pub fn port_flows(
    vni: u32,
    ofport: u32,
    mac: MacAddr,
    ip: Ipv4Addr,
    gateway: Ipv4Addr,
    groups: &[SecurityGroupSpec],
) -> Vec<String> {
    let z = zone(vni);
    let p = ofport;
    let mut f = vec![
        format!("table=0,priority=100,in_port={p},dl_src={mac},arp,arp_sha={mac},arp_spa={ip},actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],resubmit(,20)"),
        format!("table=0,priority=100,in_port={p},dl_src={mac},ip,nw_src={ip},actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],ct(table=10,zone={z})"),
        // DHCP before the guest has its address.
        format!("table=0,priority=100,in_port={p},dl_src={mac},udp,nw_src=0.0.0.0,tp_src=68,tp_dst=67,actions=set_field:{vni}->tun_id,load:1->NXM_NX_REG0[],resubmit(,20)"),
        // Anything else from the port (another MAC or IP, other ethertypes) is dropped.
        format!("table=0,priority=50,in_port={p},actions=drop"),
        // A guest is no DHCP server (a rogue one handed new guests its own address,
        // gateway and DNS), and sends no VLAN-tagged frames: dropped before the rest.
        format!("table=0,priority=110,in_port={p},udp,tp_src=67,actions=drop"),
        format!("table=0,priority=110,in_port={p},vlan_tci=0x1000/0x1000,actions=drop"),
        format!("table=20,priority=100,tun_id={vni},dl_dst={mac},arp,actions=output:{p}"),
        format!("table=20,priority=100,tun_id={vni},dl_dst={mac},ip,actions=load:{p}->NXM_NX_REG1[],ct(table=40,zone={z})"),
        // Answers to what the guest started. The other direction of a connection it
        // admitted must still be admitted below: removing a rule cuts the sessions it let
        // in, with no conntrack entries to flush.
        format!("table=40,priority=100,reg1={p},ct_state=+trk+est+rpl,actions=output:{p}"),
        // DHCP answers come only from the network's service port (guests' ports drop
        // anything sent from another address than their own).
        format!("table=40,priority=90,reg1={p},reg0=2,udp,tp_src=67,tp_dst=68,actions=output:{p}"),
        format!("table=40,priority=100,reg1={p},ct_state=+trk+rel,actions=output:{p}"),
    ];
    for m in matches(groups, Direction::Ingress) {
        f.push(format!("table=40,priority=50,reg1={p},ct_state=+trk+new,{m},actions=ct(commit,zone={z}),output:{p}"));
        f.push(format!("table=40,priority=50,reg1={p},ct_state=+trk+est-rpl,{m},actions=output:{p}"));
    }
    let has_egress = groups.iter().flat_map(|g| &g.rules).any(|r| r.direction == Direction::Egress);
    if has_egress {
        // Above the network's open commit (priority 90), below est/rel/inv (80 and 100
        // match other states, so they never meet these).
        let mut allowed = service_matches(gateway);
        allowed.extend(matches(groups, Direction::Egress));
        // A connection's further packets from the port must still be allowed, as in
        // table 40: the base flow (80) passes them only for ports without egress rules.
        for m in allowed {
            f.push(format!(
                "table=10,priority=95,in_port={p},ct_state=+trk+new,{m},actions=ct(commit,zone={z}),resubmit(,20)"
            ));
            f.push(format!("table=10,priority=95,in_port={p},ct_state=+trk+est-rpl,{m},actions=resubmit(,20)"));
        }
        f.push(format!("table=10,priority=91,in_port={p},ct_state=+trk+new,ip,actions=drop"));
        f.push(format!("table=10,priority=91,in_port={p},ct_state=+trk+est-rpl,ip,actions=drop"));
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
        let (mac, ip, gw) =
            ("02:00:00:00:00:01".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let f = port_flows(100, 7, mac, ip, gw, &[g]);
        let allow: Vec<&String> = f.iter().filter(|l| l.starts_with("table=40,priority=50")).collect();
        // Each rule admits new connections (committed) and their further packets
        // (not answers) while it stands.
        let rule = |m: &str| {
            [
                format!("table=40,priority=50,reg1=7,ct_state=+trk+new,{m},actions=ct(commit,zone=101),output:7"),
                format!("table=40,priority=50,reg1=7,ct_state=+trk+est-rpl,{m},actions=output:7"),
            ]
        };
        let want: Vec<String> = [rule("icmp,nw_src=10.0.0.5/32"), rule("tcp,tp_dst=22")].concat();
        assert_eq!(allow, want.iter().collect::<Vec<_>>());
        // Answers pass whatever the rules.
        assert!(f.contains(&"table=40,priority=100,reg1=7,ct_state=+trk+est+rpl,actions=output:7".to_owned()));
        assert!(!f.iter().any(|l| l.contains("ct_state=+trk+est,")), "no est flow without the direction");
        assert!(f.iter().any(|l| l.contains("in_port=7,dl_src=02:00:00:00:00:01,ip,nw_src=10.0.0.2")));
        let egress: Vec<&String> = f.iter().filter(|l| l.starts_with("table=10")).collect();
        assert_eq!(
            f,
            port_flows(100, 7, mac, ip, gw, &[])
                .into_iter()
                .chain(allow.into_iter().cloned())
                .chain(egress.into_iter().cloned())
                .collect::<Vec<_>>()
        );
    }

    fn egress(protocol: Protocol, port: Option<u16>, cidr: &str) -> ResolvedRule {
        ResolvedRule {
            direction: Direction::Egress,
            protocol,
            port_min: port,
            port_max: port,
            cidrs: vec![cidr.parse().unwrap()],
        }
    }

    fn group(rules: Vec<ResolvedRule>) -> SecurityGroupSpec {
        SecurityGroupSpec { id: vdc_schema::id::SecurityGroupId::generate(), rules }
    }

    #[test]
    fn egress_rules_allow_exactly_what_they_say_and_the_networks_services() {
        let (mac, ip, gw) =
            ("02:00:00:00:00:01".parse().unwrap(), "10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let web = group(vec![
            egress(Protocol::Tcp, Some(80), "192.0.2.0/24"),
            egress(Protocol::Icmp, Some(8), "10.0.0.0/24"),
        ]);
        // An ingress-only group next to it does not open egress again.
        let ssh =
            group(vec![ResolvedRule { direction: Direction::Ingress, ..egress(Protocol::Tcp, Some(22), "0.0.0.0/0") }]);
        let f = port_flows(100, 7, mac, ip, gw, &[web, ssh.clone()]);
        let t10: Vec<&str> = f.iter().filter(|l| l.starts_with("table=10")).map(String::as_str).collect();
        let allow = |m: &str| {
            [
                format!(
                    "table=10,priority=95,in_port=7,ct_state=+trk+new,{m},actions=ct(commit,zone=101),resubmit(,20)"
                ),
                format!("table=10,priority=95,in_port=7,ct_state=+trk+est-rpl,{m},actions=resubmit(,20)"),
            ]
        };
        let want = [
            allow("udp,nw_dst=10.0.0.1,tp_src=68,tp_dst=67"),
            allow("udp,nw_dst=255.255.255.255,tp_src=68,tp_dst=67"),
            allow("udp,nw_dst=10.0.0.1,tp_dst=53"),
            allow("tcp,nw_dst=10.0.0.1,tp_dst=53"),
            allow("tcp,nw_dst=169.254.169.254,tp_dst=80"),
            allow("icmp,nw_dst=10.0.0.0/24,icmp_type=8"),
            allow("tcp,nw_dst=192.0.2.0/24,tp_dst=80"),
            [
                "table=10,priority=91,in_port=7,ct_state=+trk+new,ip,actions=drop".to_owned(),
                "table=10,priority=91,in_port=7,ct_state=+trk+est-rpl,ip,actions=drop".to_owned(),
            ],
        ]
        .concat();
        assert_eq!(t10, want);
        // Above the network's open commit, which a port without egress rules keeps.
        let open = network_flows(100, &[7], &[], None);
        assert!(open[0].starts_with("table=10,priority=90,tun_id=100,ct_state=+trk+new,ip,"), "{open:?}");
        assert!(!port_flows(100, 7, mac, ip, gw, &[ssh]).iter().any(|l| l.starts_with("table=10")));
        // Answers to admitted traffic (est/rel) are matched by the base flows, for every port.
        assert!(base_flows().contains(&"table=10,priority=80,ct_state=+trk+est,actions=resubmit(,20)".to_owned()));
        // A group reference whose group has no members yet allows nothing, but still
        // closes egress: the group has egress rules.
        let empty = group(vec![ResolvedRule { cidrs: vec![], ..egress(Protocol::Any, None, "0.0.0.0/0") }]);
        let f = port_flows(100, 7, mac, ip, gw, &[empty]);
        assert_eq!(f.iter().filter(|l| l.starts_with("table=10,priority=95")).count(), 10);
        assert!(f.iter().any(|l| l.ends_with("ct_state=+trk+new,ip,actions=drop")));
        assert!(f.iter().any(|l| l.ends_with("ct_state=+trk+est-rpl,ip,actions=drop")));
    }

    #[test]
    fn cookies_are_stable_and_typed() {
        assert_eq!(cookie(PORT, "vif-a"), cookie(PORT, "vif-a"));
        assert_ne!(cookie(PORT, "vif-a"), cookie(PORT, "vif-b"));
        assert_eq!(cookie(NET, "x") >> 56, NET as u64);
    }
}
