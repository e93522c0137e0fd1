//! A real guest on a real network: hva (libvirt, QEMU TCG) makes the NIC a tap named for
//! the interface, nwagent (Open vSwitch of the test's own, in this namespace) plugs it,
//! and the tiny guest gets the address dcmgr assigned by DHCP and its own instance ID
//! from the metadata service. Needs root, libvirtd, OVS and the tiny image (tests/run.sh).

use std::time::Duration;
use vdc_schema::api::*;
use vdc_schema::*;
use vdc_tests::{register_images, wait_console, wait_state, Db, LibvirtSetup, RealNetworkSetup, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_gets_its_address_by_dhcp_and_its_identity_from_metadata() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-net-e2e-").tempdir_in("/var/tmp").unwrap();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    o.host_cpus = 4;
    o.host_memory_mib = 4096;
    o.agent_timeout_ms = 5000;
    o.libvirt = Some(LibvirtSetup::from_env());
    let prefix = format!("vt{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix });
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
            name: Some("dhcp-guest".into()),
            image_id: kernel,
            hypervisor: Some(HypervisorKind::Qemu),
            cpus: 1,
            memory_mib: 256,
            interfaces: vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }],
            ssh_key_id: None,
            user_data: None,
        })
        .await
        .unwrap();
    let id = a.resource.id.clone();
    let inst = wait_state(&c, &id, InstanceState::Running).await;
    let ip = inst.interfaces[0].ip.clone();
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
