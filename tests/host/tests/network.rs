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
    let a = c
        .create_instance(&CreateInstance {
            interfaces: vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }],
            ..vdc_tests::qemu_guest(&kernel, "dhcp-guest")
        })
        .await
        .unwrap();
    let id = a.resource.id.clone();
    let inst = wait_state(&c, &id, InstanceState::Running).await;
    let ip = inst.interfaces[0].ip;
    let boot = Duration::from_secs(120);
    wait_console(&c, &id, &format!("vdc-guest: eth0 {ip}/24"), boot).await;
    wait_console(&c, &id, &format!("vdc-guest: metadata instance-id={id}"), boot).await;
    let job = c.terminate_instance(&id).await.unwrap().job;
    assert_eq!(c.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
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

/// A bundle update reaches running guests' packets: a VDC (a network, a group without
/// rules, a server and a client guest pinging it every second) is exported and imported
/// into another account, where its guests run on the real network and the pings fail;
/// the source then admits icmp from the group's own members, the newer bundle's plan on
/// the target shows that group updated, and once it is imported the target's client is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_update_changes_the_rules_of_running_guests() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-net-bundle-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 4);
    let prefix = format!("vb{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix, underlay: false });
    let s = Stack::start(o).await;
    let (kernel, _) = register_images(&s).await;
    let boot = Duration::from_secs(180);
    let src = s.account("bundle-src").await;
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
    let export = |c: vdc_cli::client::Client| async move {
        let mut out = Vec::new();
        c.export_bundle(true, false, &mut out, |_| {}).await.unwrap();
        out
    };

    let dst = s.account("bundle-dst").await;
    let first = export(src.clone()).await;
    assert!(dst.import_bundle(first, &[]).await.unwrap().created);
    let by_name = |c: vdc_cli::client::Client, name: &'static str| async move {
        c.list_all_instances().await.unwrap().into_iter().find(|i| i.name == name).unwrap().id
    };
    let (srv, cli) = (by_name(dst.clone(), "srv").await, by_name(dst.clone(), "cli").await);
    wait_state(&dst, &srv, InstanceState::Running).await;
    wait_console(&dst, &srv, &format!("vdc-guest: eth0 {srv_ip}/24"), boot).await;
    wait_console(&dst, &cli, &format!("vdc-user-data: ping {srv_ip} failed"), boot).await;

    // The source admits icmp from the group's members; the newer bundle updates the target.
    let icmp = RuleSpec {
        direction: Direction::Ingress,
        protocol: Protocol::Icmp,
        port_min: None,
        port_max: None,
        cidr: None,
        group: Some(web.id.clone()),
    };
    src.add_security_group_rule(&web.id, &icmp).await.unwrap();
    let second = export(src.clone()).await;
    let plan = dst.plan_bundle(second.clone(), &[]).await.unwrap();
    let updated: Vec<(String, String)> = plan.updates.iter().map(|u| (u.kind.clone(), u.name.clone())).collect();
    assert_eq!(updated, [("security_group".to_string(), "web".to_string())], "{plan:?}");
    assert!(plan.creates.is_empty() && plan.conflicts.is_empty(), "{plan:?}");
    let t = std::time::Instant::now();
    dst.import_bundle(second, &[]).await.unwrap();
    wait_console(&dst, &cli, &format!("vdc-user-data: ping {srv_ip} ok"), boot).await;
    eprintln!("the update's rule answered the running client's ping {:?} after the import", t.elapsed());

    for c in [&src, &dst] {
        for i in c.list_all_instances().await.unwrap() {
            let job = c.terminate_instance(&i.id).await.unwrap().job;
            assert_eq!(c.wait_job(&job.id, boot).await.unwrap().state, JobState::Succeeded);
        }
    }
    for h in &s.hosts {
        if let Some((ovs, _)) = &h.ovs {
            ovs.remove_services().await;
        }
    }
    s.stop().await;
}
