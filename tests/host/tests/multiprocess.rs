//! The spine as separate processes: a real nats-server, a dcmgr process and two
//! `hva --driver sim` processes. One hva is killed with SIGKILL (its host goes offline),
//! then restarted (it re-reports and its instances converge).

use std::process::Command;
use std::time::Duration;
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::{HypervisorKind, InstanceState, NodeState};
use vdc_tests::procs::{self, bin, Proc};
use vdc_tests::{eventually, wait_state};

fn hva(name: &str, nats: u16, dir: &std::path::Path, node: &str, logs: &std::path::Path) -> Proc {
    Proc::spawn(
        name,
        Command::new(bin("hva")).args([
            "--driver",
            "sim",
            "--nats",
            &format!("nats://127.0.0.1:{nats}"),
            "--data-dir",
            dir.to_str().unwrap(),
            "--node-id",
            node,
            "--cpus",
            "4",
            "--memory-mib",
            "8192",
            "--hypervisors",
            "qemu",
        ]),
        logs,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_dcmgr_and_two_hva_processes() {
    vdc_tests::init_logging();
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path();
    let (_nats, nats_port) = procs::nats_server(logs);
    let api_port = procs::free_port();
    let token = "vdc_multiprocess_admin";
    let cfg = tmp.path().join("dcmgr.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{api_port}\"\ndatabase_url = \"sqlite://{}\"\nnats_url = \"nats://127.0.0.1:{nats_port}\"\n\
             heartbeat_interval_ms = 200\nagent_timeout_ms = 1500\nreconcile_interval_ms = 300\nresend_after_ms = 1000\n\
             admin_token = \"{token}\"\n",
            tmp.path().join("vdc.db").display()
        ),
    )
    .unwrap();
    let _dcmgr = Proc::spawn("dcmgr", Command::new(bin("dcmgr")).args(["--config", cfg.to_str().unwrap()]), logs);
    assert!(procs::wait_port(api_port, Duration::from_secs(20)), "dcmgr did not listen");
    let nodes = ["hn-multiprocess1", "hn-multiprocess2"];
    let mut hvas = [
        hva("hva1", nats_port, &tmp.path().join("hva1"), nodes[0], logs),
        hva("hva2", nats_port, &tmp.path().join("hva2"), nodes[1], logs),
    ];
    let admin = Client::new(format!("http://127.0.0.1:{api_port}"), token);
    let online = |want: usize| {
        let admin = admin.clone();
        async move {
            let hosts = admin.list_all_host_nodes().await.ok()?;
            (hosts.iter().filter(|h| h.state == NodeState::Online).count() == want).then_some(hosts)
        }
    };
    eventually(Duration::from_secs(20), || online(2)).await.expect("both hva processes register over NATS");

    let img = admin.create_image(&vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu])).await.unwrap();
    let mut ids = vec![];
    for i in 0..6 {
        let req = CreateInstance {
            name: Some(format!("mp{i}")),
            image_id: img.id.clone(),
            hypervisor: None,
            cpus: 1,
            memory_mib: 512,
            interfaces: vec![],
            ssh_key_id: None,
            user_data: None,
            root_disk_size: None,
            server_group: None,
            zone: None,
            host_labels: Default::default(),
        };
        ids.push(admin.create_instance(&req).await.unwrap().resource.id);
    }
    let mut per_host = std::collections::HashMap::new();
    for id in &ids {
        let i = wait_state(&admin, id, InstanceState::Running).await;
        *per_host.entry(i.host_node_id.unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(per_host.len(), 2, "instances are spread across both hosts: {per_host:?}");
    assert!(per_host.values().all(|&n| n == 3), "least-usage placement balances them: {per_host:?}");

    // SIGKILL one hva: its host goes offline, the other stays online.
    hvas[0].kill();
    let hosts = eventually(Duration::from_secs(15), || async {
        let hosts = admin.list_all_host_nodes().await.ok()?;
        hosts.iter().any(|h| h.id.as_str() == nodes[0] && h.state == NodeState::Offline).then_some(hosts)
    })
    .await
    .expect("the killed host goes offline");
    assert!(hosts.iter().any(|h| h.id.as_str() == nodes[1] && h.state == NodeState::Online));
    let on_dead: Vec<_> = {
        let mut v = vec![];
        for id in &ids {
            let i = admin.get_instance(id).await.unwrap();
            if i.host_node_id.as_ref().map(|h| h.as_str()) == Some(nodes[0]) {
                v.push(i.id);
            }
        }
        v
    };
    assert_eq!(on_dead.len(), 3);
    // While it is down, a reboot of its guest cannot be carried out: 503, not a hang.
    match admin.reboot_instance(&on_dead[0]).await {
        Err(vdc_cli::ClientError::Api { status: 503, .. }) => {}
        other => panic!("expected 503, got {other:?}"),
    }
    // New instances go to the live host.
    let more = admin
        .create_instance(&CreateInstance {
            name: Some("after-crash".into()),
            image_id: img.id.clone(),
            hypervisor: None,
            cpus: 1,
            memory_mib: 512,
            interfaces: vec![],
            ssh_key_id: None,
            user_data: None,
            root_disk_size: None,
            server_group: None,
            zone: None,
            host_labels: Default::default(),
        })
        .await
        .unwrap();
    assert_eq!(more.resource.host_node_id.as_ref().map(|h| h.as_str()), Some(nodes[1]));

    // Restart it: it registers again, re-reports its guests (kept in its data directory)
    // and they converge; the reboot that was refused now works.
    hvas[0] = hva("hva1-again", nats_port, &tmp.path().join("hva1"), nodes[0], logs);
    eventually(Duration::from_secs(20), || online(2)).await.expect("the restarted host comes back online");
    for id in &on_dead {
        wait_state(&admin, id, InstanceState::Running).await;
    }
    let r = admin.reboot_instance(&on_dead[0]).await.unwrap();
    let job = admin.wait_job(&r.job.id, Duration::from_secs(15)).await.unwrap();
    assert_eq!(job.state, vdc_schema::JobState::Succeeded, "{job:?}");
    assert!(hvas[0].log_text().contains("registered with dcmgr"), "{}", hvas[0].log_text());
    let stop = admin.stop_instance(&on_dead[1]).await.unwrap();
    assert_eq!(
        admin.wait_job(&stop.job.id, Duration::from_secs(15)).await.unwrap().state,
        vdc_schema::JobState::Succeeded
    );
}
