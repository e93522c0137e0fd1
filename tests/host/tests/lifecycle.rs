//! A real guest keeps its network through every lifecycle path: reboot, stop/start,
//! halt/poweron, an hva restart, an nwagent restart (before and after its tap is
//! re-created), the whole host as `vdc up` restarts it, a reboot of the machine. One guest is reused across all paths; after each, its console must show a
//! new DHCP lease for its address and its instance ID from the metadata service.
//! Needs root, libvirtd, OVS and the tiny image (tests/run.sh).

use std::time::Duration;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{register_images, RealNetworkSetup, Stack};

const BOOT: Duration = Duration::from_secs(90);

/// Waits until `needle` appears at least `n` times in the console (the log is appended
/// across restarts of the guest).
async fn wait_count(s: &Stack, c: &vdc_cli::client::Client, id: &InstanceId, needle: &str, n: usize) {
    let start = std::time::Instant::now();
    let mut out = String::new();
    while start.elapsed() < BOOT {
        out = c.console_log(id).await.map(|l| l.output).unwrap_or_default();
        if out.matches(needle).count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!(
        "console of {id} never showed {needle:?} {n} times within {BOOT:?}; it has:\n{out}\n{}",
        s.network_diagnostics()
    )
}

/// The guest's `n`-th boot took its lease and its metadata.
async fn networked(
    s: &Stack,
    c: &vdc_cli::client::Client,
    id: &InstanceId,
    ip: vdc_schema::net::Ipv4Addr,
    n: usize,
    path: &str,
) {
    eprintln!("lifecycle: waiting for boot {n} ({path})");
    wait_count(s, c, id, &format!("vdc-guest: eth0 {ip}/24"), n).await;
    wait_count(s, c, id, &format!("vdc-guest: metadata instance-id={id}"), n).await;
    let out = c.console_log(id).await.unwrap().output;
    assert_eq!(out.matches("vdc-guest: eth0 no-dhcp").count(), 0, "after {path}:\n{out}");
}

async fn act(c: &vdc_cli::client::Client, job: JobId) {
    assert_eq!(c.wait_job(&job, BOOT).await.unwrap().state, JobState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_guest_keeps_its_network_through_every_lifecycle_path() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-lifecycle-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 4);
    let prefix = format!("vl{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix, underlay: false });
    let mut s = Stack::start(o).await;
    let (kernel, _) = register_images(&s).await;
    let c = s.account("life").await;
    let net = c
        .create_network(&CreateNetwork {
            name: "life".into(),
            cidr: "10.78.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let a = c
        .create_instance(&CreateInstance {
            interfaces: vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }],
            ..vdc_tests::qemu_guest(&kernel, "life-guest")
        })
        .await
        .unwrap();
    let id = a.resource.id.clone();
    act(&c, a.job.id.clone()).await;
    let ip = c.get_instance(&id).await.unwrap().interfaces[0].ip;
    let mut boots = 1;
    networked(&s, &c, &id, ip, boots, "create").await;

    // Reboot: QEMU keeps its process and its tap.
    act(&c, c.reboot_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "reboot").await;

    // Stop/start: QEMU ends, its tap goes; a new QEMU makes a new tap of the same name.
    act(&c, c.stop_instance(&id).await.unwrap().job.id).await;
    act(&c, c.start_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "stop/start").await;

    // Halt/poweron: the same, keeping the host.
    act(&c, c.halt_instance(&id).await.unwrap().job.id).await;
    act(&c, c.poweron_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "halt/poweron").await;

    // hva restarts while the guest runs; then the guest is stopped and started by it.
    s.crash_hva(0);
    s.restart_hva(0).await;
    s.wait_nodes_online().await.unwrap();
    act(&c, c.reboot_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "hva restart, reboot").await;
    act(&c, c.stop_instance(&id).await.unwrap().job.id).await;
    act(&c, c.start_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "hva restart, stop/start").await;

    // nwagent restarts, then the tap is re-created.
    s.stop_nwagent(0).await;
    s.restart_nwagent(0).await;
    s.wait_nodes_online().await.unwrap();
    act(&c, c.halt_instance(&id).await.unwrap().job.id).await;
    act(&c, c.poweron_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "nwagent restart, halt/poweron").await;

    // The tap is re-created while nwagent is away, then nwagent comes back.
    s.stop_nwagent(0).await;
    act(&c, c.halt_instance(&id).await.unwrap().job.id).await;
    act(&c, c.poweron_instance(&id).await.unwrap().job.id).await;
    s.restart_nwagent(0).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "halt/poweron while nwagent was away").await;

    // The whole host restarts around its running guest, as `vdc up` does when it is
    // restarted: nwagent, hva, dcmgr and the switch stop; the switch, dcmgr, hva and
    // nwagent start again. The guest keeps running; rebooted, it takes its lease again.
    s.stop_nwagent(0).await;
    s.crash_hva(0);
    s.restart_switch(0);
    s.restart_dcmgr().await;
    s.restart_hva(0).await;
    s.restart_nwagent(0).await;
    s.wait_nodes_online().await.unwrap();
    act(&c, c.reboot_instance(&id).await.unwrap().job.id).await;
    boots += 1;
    networked(&s, &c, &id, ip, boots, "host restart (as vdc up restarted), reboot").await;

    // The machine reboots: the guest is off when the host's agents start again. It was
    // meant to run and did not power itself off (its state was saved in an earlier boot of
    // the host), so it runs again rather than being taken as halted.
    s.stop_nwagent(0).await;
    let state = s.hosts[0].libvirt.as_ref().unwrap().data_dir().join("instances").join(id.as_str()).join("state.json");
    s.crash_hva(0);
    let off = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", &format!("vdc-{id}")])
        .output()
        .unwrap();
    assert!(off.status.success(), "{}", String::from_utf8_lossy(&off.stderr));
    let mut saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert!(saved["boot_id"].is_string(), "hva records the boot it saved in: {saved}");
    saved["boot_id"] = "an-earlier-boot".into();
    std::fs::write(&state, serde_json::to_vec(&saved).unwrap()).unwrap();
    s.restart_switch(0);
    s.restart_dcmgr().await;
    s.restart_hva(0).await;
    s.restart_nwagent(0).await;
    s.wait_nodes_online().await.unwrap();
    boots += 1;
    networked(&s, &c, &id, ip, boots, "machine reboot").await;
    assert_eq!(c.get_instance(&id).await.unwrap().state, InstanceState::Running);

    let job = c.terminate_instance(&id).await.unwrap().job;
    act(&c, job.id).await;
    for h in &s.hosts {
        if let Some((ovs, _)) = &h.ovs {
            ovs.remove_services().await;
        }
    }
    s.stop().await;
}

/// A container's NIC is a veth whose host end nwagent plugs into Open vSwitch, as a QEMU
/// guest's tap: it takes its lease and its metadata, and again after a reboot (LXC
/// restarts the container: a new veth) and a stop/start; its security groups hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_gets_its_network_on_open_vswitch() {
    vdc_tests::init_logging();
    let root = tempfile::Builder::new().prefix("vdc-lxcnet-").tempdir_in("/var/tmp").unwrap();
    let mut o = vdc_tests::real_guests(1, 4);
    let prefix = format!("vc{:x}", std::process::id() & 0xffff);
    o.real_network = Some(RealNetworkSetup { root: root.path().to_owned(), prefix, underlay: false });
    let s = Stack::start(o).await;
    let (_, rootfs) = register_images(&s).await;
    let c = s.account("lxcnet").await;
    let net = c
        .create_network(&CreateNetwork {
            name: "ct".into(),
            cidr: "10.79.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    // Security groups hold for containers (checked below).
    let group = |name: &str| CreateSecurityGroup { name: name.into(), description: String::new(), rules: vec![] };
    let members = c.create_security_group(&group("members")).await.unwrap();
    let outsiders = c.create_security_group(&group("outsiders")).await.unwrap();
    let rule = RuleSpec {
        direction: Direction::Ingress,
        protocol: Protocol::Icmp,
        port_min: None,
        port_max: None,
        cidr: None,
        group: Some(members.id.clone()),
    };
    c.add_security_group_rule(&members.id, &rule).await.unwrap();
    let a = c
        .create_instance(&CreateInstance {
            interfaces: vec![CreateInterface {
                network_id: net.id.clone(),
                security_groups: vec![members.id.clone()],
                ip: None,
            }],
            hypervisor: Some(HypervisorKind::Lxc),
            memory_mib: 128,
            ..vdc_tests::qemu_guest(&rootfs, "ct1")
        })
        .await
        .unwrap();
    let id = a.resource.id.clone();
    act(&c, a.job.id.clone()).await;
    let ip = c.get_instance(&id).await.unwrap().interfaces[0].ip;
    networked(&s, &c, &id, ip, 1, "create").await;
    act(&c, c.reboot_instance(&id).await.unwrap().job.id).await;
    networked(&s, &c, &id, ip, 2, "reboot").await;
    act(&c, c.stop_instance(&id).await.unwrap().job.id).await;
    act(&c, c.start_instance(&id).await.unwrap().job.id).await;
    networked(&s, &c, &id, ip, 3, "stop/start").await;
    // It reboots itself: libvirt starts it again under a new controller, with new
    // devices and console, and hva sets them up again (before, the console stopped and
    // TCP to the metadata service failed: checksum offload was back on).
    vdc_tests::reboot_container_from_inside(&id);
    networked(&s, &c, &id, ip, 4, "reboot from inside").await;
    let i = c.get_instance(&id).await.unwrap();
    assert_eq!((i.state, i.goal), (InstanceState::Running, InstanceGoal::Running), "{i:?}");

    // ct1's groups admit icmp only from members: ct2 is one, ct3 is not.
    let pinger = |name: &str, sg: &SecurityGroupId| {
        CreateInstance {
        interfaces: vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![sg.clone()], ip: None }],
        hypervisor: Some(HypervisorKind::Lxc),
        memory_mib: 128,
        user_data: Some(format!(
            "#!/bin/sh\nif ping -c 3 -W 2 {ip} >/dev/null 2>&1; then echo \"ping {ip} ok\"; else echo \"ping {ip} failed\"; fi\n"
        )),
        ..vdc_tests::qemu_guest(&rootfs, name)
    }
    };
    let m = c.create_instance(&pinger("ct2", &members.id)).await.unwrap();
    let o = c.create_instance(&pinger("ct3", &outsiders.id)).await.unwrap();
    for (x, verdict) in [(&m, "ok"), (&o, "failed")] {
        act(&c, x.job.id.clone()).await;
        wait_count(&s, &c, &x.resource.id, &format!("vdc-user-data: ping {ip} {verdict}"), 1).await;
        act(&c, c.terminate_instance(&x.resource.id).await.unwrap().job.id).await;
    }
    act(&c, c.terminate_instance(&id).await.unwrap().job.id).await;
    for h in &s.hosts {
        if let Some((ovs, _)) = &h.ovs {
            ovs.remove_services().await;
        }
    }
    s.stop().await;
}
