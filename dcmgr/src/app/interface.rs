//! Interfaces (vifs): an instance's address on a network, with its security groups.
//! Addresses are allocated inside the instance's create transaction; a unique
//! (network, ip) key is the last guard against two creates taking the same address.
//! Interfaces have no requests of their own: instances create and remove them, and
//! [`crate::controller::interface`] sends them to nwagent.

use crate::ctx::{SharedCtx, Work};
use crate::datastore::interface::GroupChange;
use crate::datastore::{self as db, floating_ip as fipstore, interface as store};
use crate::error::{ApiError, ApiResult};
use rand::Rng;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use vdc_schema::api::{Interface, Network};
use vdc_schema::id::*;
use vdc_schema::net::MacAddr;
use vdc_schema::{InterfaceState, ObservedInterface};

/// One interface to create, checked before the transaction.
#[derive(Debug, Clone)]
pub struct Planned {
    pub network: Network,
    pub security_groups: Vec<SecurityGroupId>,
    pub fixed_ip: Option<Ipv4Addr>,
    /// The MAC to keep (an imported interface's, checked free); a new one otherwise.
    pub mac: Option<MacAddr>,
}

pub fn check_fixed_ip(net: &Network, ip: &str) -> ApiResult<Ipv4Addr> {
    let a: Ipv4Addr =
        ip.parse().map_err(|_| ApiError::bad("invalid_ip", format!("ip {ip:?} is not an IPv4 address")))?;
    if a == net.gateway {
        return Err(ApiError::bad("invalid_ip", format!("ip {a} is the gateway of network {}", net.id)));
    }
    if a < net.dhcp_start || a > net.dhcp_end {
        return Err(ApiError::bad(
            "invalid_ip",
            format!("ip {a} is outside the DHCP range {}–{} of network {}", net.dhcp_start, net.dhcp_end, net.id),
        ));
    }
    Ok(a)
}

/// The address a new interface on `net` takes, given the addresses `used` on it: the
/// fixed one asked for unless it is taken, else the first free one of the DHCP range
/// that is not the gateway.
pub fn pick_address(net: &Network, used: &HashSet<u32>, fixed: Option<Ipv4Addr>) -> ApiResult<Ipv4Addr> {
    match fixed {
        Some(a) if used.contains(&u32::from(a)) => {
            Err(ApiError::conflict("ip_in_use", format!("ip {a} is already used on network {}", net.id)))
        }
        Some(a) => Ok(a),
        None => {
            let (lo, hi, gw) = (u32::from(net.dhcp_start), u32::from(net.dhcp_end), u32::from(net.gateway));
            let free = (lo..=hi).find(|a| !used.contains(a) && *a != gw);
            Ok(Ipv4Addr::from(free.ok_or_else(|| ApiError::Unprocessable {
                code: "network_full",
                message: format!("network {} has no free address in its DHCP range", net.id),
            })?))
        }
    }
}

/// A random address of the QEMU/KVM OUI 52:54:00.
fn random_mac() -> MacAddr {
    let mut rng = rand::thread_rng();
    MacAddr::new([0x52, 0x54, 0x00, rng.gen(), rng.gen(), rng.gen()])
}

/// Allocates an address and inserts the interface, within the caller's transaction;
/// with `later` its rows are sent with the transaction's next round trip ([`db::Tx::later`]).
pub async fn insert(
    tx: &mut db::Tx<'_>,
    account: &AccountId,
    instance: &InstanceId,
    position: usize,
    p: &Planned,
    later: bool,
) -> ApiResult<Interface> {
    let used = store::used_ips(tx, p.network.id.as_str()).await?;
    let used: HashSet<u32> = used.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()).map(u32::from).collect();
    let ip = pick_address(&p.network, &used, p.fixed_ip)?;
    let id = VifId::generate();
    let mac = p.mac.unwrap_or_else(random_mac);
    store::insert(
        tx,
        &store::New {
            id: id.as_str(),
            instance: instance.as_str(),
            account: account.as_str(),
            network: p.network.id.as_str(),
            mac: &mac.to_string(),
            ip: &ip.to_string(),
            position: position as i64,
        },
        later,
    )
    .await?;
    for g in &p.security_groups {
        store::add_group(tx, id.as_str(), g.as_str(), later).await?;
        // The members of groups referring to it now resolve one more address.
        store::bump_for_group_with(tx, g.as_str(), GroupChange::Members, later).await?;
    }
    Ok(Interface {
        id,
        network_id: p.network.id.clone(),
        mac,
        ip,
        security_groups: p.security_groups.clone(),
        state: InterfaceState::Pending,
        floating_ip: None,
    })
}

/// Interfaces of the instances of `account` whose IDs fall in `first..=last` (one query
/// for a whole page of instances).
pub async fn for_instances(
    conn: &mut db::Conn,
    account: &str,
    first: &str,
    last: &str,
) -> ApiResult<Vec<(String, Interface)>> {
    let rows = store::for_instances(conn, account, first, last).await?;
    let groups = store::groups_for_instances(conn, account, first, last).await?;
    let mut by_vif: std::collections::HashMap<String, Vec<SecurityGroupId>> = Default::default();
    for (vif, g) in groups {
        if let Ok(g) = g.parse() {
            by_vif.entry(vif).or_default().push(g);
        }
    }
    rows.into_iter()
        .map(|r| {
            let groups = by_vif.remove(&r.id).unwrap_or_default();
            let instance = r.instance_id.clone();
            Ok((instance, r.into_api(groups)?))
        })
        .collect()
}

/// Removes the interfaces of a terminated instance (nwagent is told to unplug them);
/// members of groups that referred to them get new address lists. Returns the removed
/// interfaces and the groups they were members of.
pub async fn remove_for_instance(tx: &mut db::Tx<'_>, instance: &str) -> ApiResult<(Vec<String>, Vec<String>)> {
    let vifs = store::ids_of_instance(tx, instance).await?;
    let groups = store::groups_of_instance(tx, instance).await?;
    // Its floating IPs stay with the account, unassociated.
    fipstore::disassociate_instance(tx, instance).await?;
    store::delete_for_instance(tx, instance, &vifs).await?;
    for g in &groups {
        store::bump_for_group(tx, g, GroupChange::Members).await?;
    }
    Ok((vifs, groups))
}

/// Re-sends the ensures of every interface touched by the groups of a removed instance.
pub fn enqueue_groups(ctx: &SharedCtx, groups: &[String]) {
    for g in groups {
        if let Ok(g) = g.parse() {
            ctx.enqueue(Work::SecurityGroup(g, GroupChange::Members));
        }
    }
}

/// What nwagent's report of an interface at spec generation `spec_gen` records: its
/// state, and the generation it holds (only an active interface holds one; the
/// reconciler re-sends while that is behind `spec_gen`).
pub fn on_report(observed: ObservedInterface, spec_gen: u64) -> (InterfaceState, i64) {
    let state = match observed {
        ObservedInterface::Active => InterfaceState::Active,
        ObservedInterface::Failed => InterfaceState::Failed,
        ObservedInterface::Absent => InterfaceState::Pending,
    };
    let applied = if state == InterfaceState::Active { spec_gen as i64 } else { 0 };
    (state, applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        Network {
            id: "nw-a".parse().unwrap(),
            name: "a".into(),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            dhcp_start: "10.0.0.1".parse().unwrap(),
            dhcp_end: "10.0.0.4".parse().unwrap(),
            vni: 100,
            created_at: Default::default(),
        }
    }

    fn set(ips: &[&str]) -> HashSet<u32> {
        ips.iter().map(|s| u32::from(s.parse::<Ipv4Addr>().unwrap())).collect()
    }

    #[test]
    fn addresses_are_the_first_free_of_the_range_but_the_gateway() {
        let n = net();
        assert_eq!(pick_address(&n, &set(&[]), None).unwrap().to_string(), "10.0.0.2");
        assert_eq!(pick_address(&n, &set(&["10.0.0.2", "10.0.0.3"]), None).unwrap().to_string(), "10.0.0.4");
        let full = set(&["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        assert_eq!(pick_address(&n, &full, None).unwrap_err().code(), "network_full");
    }

    #[test]
    fn a_fixed_address_must_be_free() {
        let n = net();
        let a: Ipv4Addr = "10.0.0.3".parse().unwrap();
        assert_eq!(pick_address(&n, &set(&["10.0.0.2"]), Some(a)).unwrap(), a);
        assert_eq!(pick_address(&n, &set(&["10.0.0.3"]), Some(a)).unwrap_err().code(), "ip_in_use");
        assert_eq!(check_fixed_ip(&n, "10.0.0.1").unwrap_err().code(), "invalid_ip", "the gateway");
        assert_eq!(check_fixed_ip(&n, "10.0.0.5").unwrap_err().code(), "invalid_ip", "outside the range");
        assert_eq!(check_fixed_ip(&n, "10.0.0.4").unwrap(), "10.0.0.4".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn only_an_active_interface_holds_its_generation() {
        assert_eq!(on_report(ObservedInterface::Active, 7), (InterfaceState::Active, 7));
        assert_eq!(on_report(ObservedInterface::Failed, 7), (InterfaceState::Failed, 0));
        assert_eq!(on_report(ObservedInterface::Absent, 7), (InterfaceState::Pending, 0));
    }
}
