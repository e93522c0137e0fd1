//! A real guest on a real network: hva (libvirt, QEMU TCG) makes the NIC a tap named for
//! the interface and moves it into its host's network namespace, nwagent (an Open vSwitch
//! of the test's own, running in that namespace) plugs it, and the tiny guest gets the
//! address dcmgr assigned by DHCP and its own instance ID from the metadata service.
//! Every switch is in a namespace of its own, so these run beside `vdc up`'s OVS.
//! Needs root, libvirtd, OVS and the tiny image (tests/run.sh).

use std::time::Duration;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{register_images, wait_console, wait_state, RealNetworkSetup, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_gets_its_address_by_dhcp_and_its_identity_from_metadata() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-net-e2e-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 4);
    let prefix = format!("vt{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix, underlay: false });
    let s = Stack::start(o).await;
    let (kernel, _) = register_images(&s).await;
    let c = s.account("net").await;
    let net = c
        .create_network(&CreateNetwork {
            name: "web".into(),
            cidr: "10.77.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let on_net = |name: &str, ip: Option<String>| CreateInstance {
        interfaces: vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip }],
        ..vdc_tests::qemu_guest(&kernel, name)
    };
    // Keeps the network's DHCP server up through the second guest's end.
    let keeper = c.create_instance(&on_net("keeper", None)).await.unwrap().resource.id;
    let a = c.create_instance(&on_net("dhcp-guest", None)).await.unwrap();
    let id = a.resource.id.clone();
    let inst = wait_state(&c, &id, InstanceState::Running).await;
    let ip = inst.interfaces[0].ip;
    let boot = Duration::from_secs(120);
    wait_console(&c, &id, &format!("vdc-guest: eth0 {ip}/24"), boot).await;
    wait_console(&c, &id, &format!("vdc-guest: metadata instance-id={id}"), boot).await;
    let job = c.terminate_instance(&id).await.unwrap().job;
    assert_eq!(c.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
    // Its address again, for a new guest: dnsmasq kept the old lease (12 h), so the new
    // guest got no address ("leased to" the old MAC); it is released with the interface.
    let again = c.create_instance(&on_net("same-address", Some(ip.to_string()))).await.unwrap().resource.id;
    wait_console(&c, &again, &format!("vdc-guest: eth0 {ip}/24"), boot).await;
    for i in [again, keeper] {
        let job = c.terminate_instance(&i).await.unwrap().job;
        assert_eq!(c.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
    }
    for h in &s.hosts {
        if let Some((ovs, _)) = &h.ovs {
            ovs.remove_services().await;
        }
    }
    s.stop().await;
}

/// `#!` user-data for the tiny guest: ping `ip` and say how it went.
fn pinger(ip: &str) -> String {
    format!(
        "#!/bin/sh\nsleep 1\nif ping -c 3 -W 2 {ip} >/dev/null 2>&1; then echo \"ping {ip} ok\"; else echo \"ping {ip} failed\"; fi\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_guests_on_two_hosts_reach_each_other_over_the_overlay_and_no_one_else() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-net-2h-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(2, 4);
    let prefix = format!("vw{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix, underlay: true });
    let s = Stack::start(o).await;
    let (kernel, _) = register_images(&s).await;
    let boot = Duration::from_secs(120);
    let guest = |name: &str, net: &NetworkId, sg: &SecurityGroupId, user_data: Option<String>| CreateInstance {
        interfaces: vec![CreateInterface { network_id: net.clone(), security_groups: vec![sg.clone()], ip: None }],
        user_data,
        ..vdc_tests::qemu_guest(&kernel, name)
    };
    let network = |name: &str, cidr: &str| CreateNetwork {
        name: name.into(),
        cidr: cidr.into(),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    };
    // Account A: a network and a group admitting icmp from its own members.
    let a = s.account("a").await;
    let net = a.create_network(&network("a-net", "10.77.0.0/24")).await.unwrap();
    let group = |name: &str| CreateSecurityGroup { name: name.into(), description: String::new(), rules: vec![] };
    let sg = a.create_security_group(&group("members")).await.unwrap();
    let own = RuleSpec {
        direction: Direction::Ingress,
        protocol: Protocol::Icmp,
        port_min: None,
        port_max: None,
        cidr: None,
        group: Some(sg.id.clone()),
    };
    a.add_security_group_rule(&sg.id, &own).await.unwrap();
    let b_inst = a.create_instance(&guest("b", &net.id, &sg.id, None)).await.unwrap().resource;
    let b_inst = wait_state(&a, &b_inst.id, InstanceState::Running).await;
    let b_ip = b_inst.interfaces[0].ip.to_string();
    wait_console(&a, &b_inst.id, &format!("vdc-guest: eth0 {b_ip}/24"), boot).await;
    let a_inst = a.create_instance(&guest("a", &net.id, &sg.id, Some(pinger(&b_ip)))).await.unwrap().resource;
    let a_inst = wait_state(&a, &a_inst.id, InstanceState::Running).await;
    assert_ne!(a_inst.host_node_id, b_inst.host_node_id, "the two guests run on different hosts");
    let a_ip = a_inst.interfaces[0].ip.to_string();
    wait_console(&a, &a_inst.id, &format!("vdc-guest: eth0 {a_ip}/24"), boot).await;
    wait_console(&a, &a_inst.id, &format!("vdc-user-data: ping {b_ip} ok"), boot).await;

    // Account B, on the same hosts: cannot reach A's guests, nor see them.
    let b = s.account("b").await;
    let bnet = b.create_network(&network("b-net", "10.88.0.0/24")).await.unwrap();
    let bsg = b.create_security_group(&group("open")).await.unwrap();
    let c = b.create_instance(&guest("c", &bnet.id, &bsg.id, Some(pinger(&a_ip)))).await.unwrap().resource;
    wait_state(&b, &c.id, InstanceState::Running).await;
    wait_console(&b, &c.id, &format!("vdc-user-data: ping {a_ip} failed"), boot).await;
    assert!(b.list_all_instances().await.unwrap().iter().all(|i| i.id == c.id), "B sees only its own");
    for (client, id) in [(&a, &a_inst.id), (&a, &b_inst.id), (&b, &c.id)] {
        let job = client.terminate_instance(id).await.unwrap().job;
        assert_eq!(client.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
    }
    for h in &s.hosts {
        if let Some((ovs, _)) = &h.ovs {
            ovs.remove_services().await;
        }
    }
    s.stop().await;
}

/// A VDC moves to another site and its updates follow, on real guests and real networks:
/// site A (SQLite) holds a network, a group without rules, and a server and a client
/// guest that pings it every second. It is pushed to site B (PostgreSQL, trusting A's
/// key, its own hosts, switches and image of the same name): there the guests run with
/// the same hostnames and addresses, and the group refuses the pings as on A. A then
/// admits icmp from the group's own members; a dry-run push shows B exactly that group
/// updated, and once pushed B's running client is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vdc_moves_to_another_site_and_a_rule_change_follows_it() {
    use vdc_cli::push::{push, PushOptions};
    vdc_tests::init_logging();
    let site = |db: vdc_tests::Db, tag: &str, root: &std::path::Path| {
        let mut o = vdc_tests::real_guests(1, 4);
        o.db = db;
        let prefix = format!("{tag}{:x}", std::process::id() & 0xffff);
        o.real_network = Some(RealNetworkSetup { root: root.to_owned(), prefix, underlay: false });
        o
    };
    let root_a = tempfile::Builder::new().prefix("vdc-site-a-").tempdir_in("/var/tmp").unwrap();
    let root_b = tempfile::Builder::new().prefix("vdc-site-b-").tempdir_in("/var/tmp").unwrap();
    let a = Stack::start(site(vdc_tests::Db::Sqlite, "vd", root_a.path())).await;
    let mut ob = site(vdc_tests::Db::Postgres, "vb", root_b.path());
    ob.bundles.trusted_keys = vec![a.admin.bundle_key().await.unwrap().public_key];
    let b = Stack::start(ob).await;
    let (kernel, _) = register_images(&a).await;
    register_images(&b).await;
    let boot = Duration::from_secs(180);

    let src = a.account("laptop").await;
    let net = src
        .create_network(&CreateNetwork {
            name: "app".into(),
            cidr: "10.91.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let web = src
        .create_security_group(&CreateSecurityGroup { name: "web".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let nic = |ip: &str| {
        vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![web.id.clone()], ip: Some(ip.into()) }]
    };
    let srv_ip = "10.91.0.10";
    let looping = format!(
        "#!/bin/sh\nwhile true; do if ping -c 1 -W 1 {srv_ip} >/dev/null 2>&1; then echo \"ping {srv_ip} ok\"; \
         else echo \"ping {srv_ip} failed\"; fi; sleep 1; done\n"
    );
    src.create_instance(&CreateInstance { interfaces: nic(srv_ip), ..vdc_tests::qemu_guest(&kernel, "srv") })
        .await
        .unwrap();
    src.create_instance(&CreateInstance {
        interfaces: nic("10.91.0.11"),
        user_data: Some(looping),
        ..vdc_tests::qemu_guest(&kernel, "cli")
    })
    .await
    .unwrap();

    // The model travels (the guests boot the image of the same name at B).
    let dst = b.account("datacenter").await;
    let opts = |dry_run| PushOptions { model_only: true, dry_run, ..Default::default() };
    let first = push(&src, &dst, &opts(false)).await.unwrap();
    assert!(first.import.as_ref().unwrap().created, "{first:?}");
    let addresses = |c: vdc_cli::client::Client| async move {
        let mut v: Vec<(String, String, String)> = c
            .list_all_instances()
            .await
            .unwrap()
            .into_iter()
            .map(|i| (i.name, i.interfaces[0].ip.to_string(), i.interfaces[0].mac.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(addresses(dst.clone()).await, addresses(src.clone()).await, "names, addresses and MACs");
    let by_name = |c: vdc_cli::client::Client, name: &'static str| async move {
        c.list_all_instances().await.unwrap().into_iter().find(|i| i.name == name).unwrap().id
    };
    let (srv, cli) = (by_name(dst.clone(), "srv").await, by_name(dst.clone(), "cli").await);
    wait_state(&dst, &srv, InstanceState::Running).await;
    wait_console(&dst, &srv, "hostname=srv up", boot).await;
    wait_console(&dst, &srv, &format!("vdc-guest: eth0 {srv_ip}/24"), boot).await;
    wait_console(&dst, &cli, "hostname=cli up", boot).await;
    wait_console(&dst, &cli, &format!("vdc-user-data: ping {srv_ip} failed"), boot).await;

    // A admits icmp from the group's members; the push's plan shows B just that change.
    let icmp = RuleSpec {
        direction: Direction::Ingress,
        protocol: Protocol::Icmp,
        port_min: None,
        port_max: None,
        cidr: None,
        group: Some(web.id.clone()),
    };
    src.add_security_group_rule(&web.id, &icmp).await.unwrap();
    let dry = push(&src, &dst, &opts(true)).await.unwrap();
    let plan = dry.plan.unwrap();
    let updated: Vec<(String, String)> = plan.updates.iter().map(|u| (u.kind.clone(), u.name.clone())).collect();
    assert_eq!(updated, [("security_group".to_string(), "web".to_string())], "{plan:?}");
    assert!(plan.creates.is_empty() && plan.conflicts.is_empty() && plan.deletes.is_empty(), "{plan:?}");
    let t = std::time::Instant::now();
    let second = push(&src, &dst, &opts(false)).await.unwrap();
    assert!(second.import.unwrap().created);
    wait_console(&dst, &cli, &format!("vdc-user-data: ping {srv_ip} ok"), boot).await;
    eprintln!(
        "pushed {} then {} bytes; the update's rule answered B's running client {:?} after the push began",
        first.bytes_sent,
        second.bytes_sent,
        t.elapsed()
    );

    for (s, c) in [(&a, &src), (&b, &dst)] {
        for i in c.list_all_instances().await.unwrap() {
            let job = c.terminate_instance(&i.id).await.unwrap().job;
            assert_eq!(c.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
        }
        for h in &s.hosts {
            if let Some((ovs, _)) = &h.ovs {
                ovs.remove_services().await;
            }
        }
    }
    b.stop().await;
    a.stop().await;
}
