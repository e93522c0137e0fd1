//! Faults across real processes: dcmgr on PostgreSQL, nats-server, and per host an hva
//! and an nwagent process, plus an sta (all agents with their simulated drivers, as
//! separate processes over NATS).
//! - dcmgr is SIGKILLed in the middle of a burst of 20 creates and restarted: no accepted
//!   instance is lost, none is duplicated, all converge, no capacity leaks;
//! - nats-server is restarted: agents and dcmgr reconnect and state converges;
//! - each host's agents are replaced one host at a time while operations go on: guests
//!   keep running and no operation fails.
//!
//! Prints a table with one row per step and the time it took.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::{HypervisorKind, InstanceState, InterfaceState, JobState, NodeState};
use vdc_tests::procs::{self, bin, Proc};
use vdc_tests::{eventually, wait_state};

const NODES: [&str; 2] = ["hn-faults0000001", "hn-faults0000002"];

struct Host {
    hva: Proc,
    nw: Proc,
}

fn agents(i: usize, round: usize, nats: u16, dir: &std::path::Path, logs: &std::path::Path) -> Host {
    let url = format!("nats://127.0.0.1:{nats}");
    let node = NODES[i];
    let hva = Proc::spawn(
        &format!("hva{i}-{round}"),
        Command::new(bin("hva")).args([
            "--driver",
            "sim",
            "--nats",
            &url,
            "--data-dir",
            dir.join(format!("hva{i}")).to_str().unwrap(),
            "--node-id",
            node,
            "--cpus",
            "32",
            "--memory-mib",
            "65536",
            "--hypervisors",
            "qemu",
            "--sim-delay-ms",
            "20",
        ]),
        logs,
    );
    let nw = Proc::spawn(
        &format!("nwagent{i}-{round}"),
        Command::new(bin("nwagent")).args([
            "--driver",
            "sim",
            "--nats",
            &url,
            "--data-dir",
            dir.join(format!("nw{i}")).to_str().unwrap(),
            "--node-id",
            node,
        ]),
        logs,
    );
    Host { hva, nw }
}

fn dcmgr(cfg: &std::path::Path, logs: &std::path::Path, round: usize, port: u16) -> Proc {
    let p = Proc::spawn(
        &format!("dcmgr-{round}"),
        Command::new(bin("dcmgr")).args(["--config", cfg.to_str().unwrap()]),
        logs,
    );
    assert!(procs::wait_port(port, Duration::from_secs(30)), "dcmgr did not listen");
    p
}

fn req(img: &ImageId, name: &str, net: &NetworkId) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: img.clone(),
        hypervisor: None,
        cpus: 1,
        memory_mib: 256,
        interfaces: vec![CreateInterface { network_id: net.clone(), security_groups: vec![], ip: None }],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

async fn online(admin: &Client, want: usize) {
    eventually(Duration::from_secs(30), || async {
        let hosts = admin.list_all_host_nodes().await.ok()?;
        (hosts.iter().filter(|h| h.state == NodeState::Online).count() == want).then_some(())
    })
    .await
    .expect("hosts online");
}

async fn job_ok(c: &Client, job: &JobId) {
    let j = c.wait_job(job, Duration::from_secs(30)).await.unwrap();
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
}

/// Every instance running, names unique, and the hosts' reservations equal to them.
async fn consistent(admin: &Client) -> Vec<Instance> {
    let all = admin.list_all_instances().await.unwrap();
    let live: Vec<&Instance> = all.iter().filter(|i| i.state != InstanceState::Terminated).collect();
    let mut names = HashMap::new();
    for i in &live {
        *names.entry(i.name.clone()).or_insert(0) += 1;
    }
    assert!(names.values().all(|&n| n == 1), "duplicated instances: {names:?}");
    let mut out = vec![];
    for i in &live {
        out.push(wait_state(admin, &i.id, InstanceState::Running).await);
    }
    let hosts = admin.list_all_host_nodes().await.unwrap();
    let used: u32 = hosts.iter().map(|h| h.cpus_used).sum();
    assert_eq!(used as usize, out.len(), "reserved CPUs match the instances (1 vCPU each)");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmgr_kill_nats_restart_and_rolling_agent_replacement() {
    vdc_tests::init_logging();
    let mut table: Vec<(String, Duration)> = vec![];
    let mut step = |name: &str, since: Instant| table.push((name.to_owned(), since.elapsed()));
    let t = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (dir, logs) = (tmp.path(), tmp.path());
    let (db_url, pg_admin, db_name) = vdc_tests::create_pg_database().await.expect("a PostgreSQL database");
    let (mut nats, nats_port) = procs::nats_server(logs);
    let api_port = procs::free_port();
    let token = "vdc_faults_admin";
    let cfg = dir.join("dcmgr.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{api_port}\"\ndatabase_url = \"{db_url}\"\nnats_url = \"nats://127.0.0.1:{nats_port}\"\n\
             heartbeat_interval_ms = 200\nagent_timeout_ms = 2000\nreconcile_interval_ms = 300\nresend_after_ms = 1000\n\
             admin_token = \"{token}\"\n[images]\ndir = \"{}\"\n",
            // Never the default, /var/lib/vdc/images on PostgreSQL: the all-in-one's own.
            dir.join("images").display()
        ),
    )
    .unwrap();
    let mut dc = dcmgr(&cfg, logs, 0, api_port);
    let mut hosts = vec![agents(0, 0, nats_port, dir, logs), agents(1, 0, nats_port, dir, logs)];
    let _sta = Proc::spawn(
        "sta",
        Command::new(bin("sta")).args([
            "--driver",
            "sim",
            "--nats",
            &format!("nats://127.0.0.1:{nats_port}"),
            "--data-dir",
            dir.join("sta").to_str().unwrap(),
        ]),
        logs,
    );
    let admin = Client::new(format!("http://127.0.0.1:{api_port}"), token);
    online(&admin, 2).await;
    let img = admin.create_image(&vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu])).await.unwrap();
    let net = admin
        .create_network(&CreateNetwork {
            name: "n".into(),
            cidr: "10.50.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    step("start PostgreSQL db, NATS, dcmgr, 2 × (hva + nwagent), sta", t);

    // 1. SIGKILL dcmgr during a burst of 20 creates.
    let t = Instant::now();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<InstanceId>::new()));
    let mut tasks = vec![];
    for i in 0..20 {
        let (c, r, acc) = (admin.clone(), req(&img.id, &format!("burst-{i}"), &net.id), accepted.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(15 * i)).await;
            match c.create_instance(&r).await {
                Ok(a) => {
                    acc.lock().unwrap().push(a.resource.id);
                    None
                }
                Err(_) => Some(r),
            }
        }));
    }
    eventually(Duration::from_secs(10), || async { (accepted.lock().unwrap().len() >= 5).then_some(()) })
        .await
        .expect("some creates are accepted");
    dc.kill();
    let mut refused = vec![];
    for t in tasks {
        refused.extend(t.await.unwrap());
    }
    let accepted: Vec<InstanceId> = accepted.lock().unwrap().clone();
    dc = dcmgr(&cfg, logs, 1, api_port);
    online(&admin, 2).await;
    // A client retries what got no answer; nothing may come out twice.
    for r in &refused {
        if admin.list_all_instances().await.unwrap().iter().all(|i| Some(i.name.as_str()) != r.name.as_deref()) {
            admin.create_instance(r).await.unwrap();
        }
    }
    let all = consistent(&admin).await;
    for id in &accepted {
        assert!(all.iter().any(|i| &i.id == id), "accepted instance {id} was lost");
    }
    assert_eq!(all.len(), 20, "every create landed exactly once");
    // An interface is reported active by nwagent on its own schedule, after its guest
    // runs (a lost ensure is re-sent by the reconciler): wait for all of them.
    eventually(Duration::from_secs(20), || async {
        let all = admin.list_all_instances().await.ok()?;
        let live = all.iter().filter(|i| i.state != InstanceState::Terminated);
        live.clone().all(|i| i.interfaces.len() == 1 && i.interfaces[0].state == InterfaceState::Active).then_some(())
    })
    .await
    .expect("every instance's interface becomes active");
    step(
        &format!(
            "dcmgr SIGKILL mid-burst ({} accepted before, {} retried), restart, converge",
            accepted.len(),
            refused.len()
        ),
        t,
    );

    // 2. Restart nats-server.
    let t = Instant::now();
    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats = procs::nats_server_on(logs, nats_port, "nats-server-again");
    online(&admin, 2).await;
    let a = admin.create_instance(&req(&img.id, "after-nats", &net.id)).await.unwrap();
    job_ok(&admin, &a.job.id).await;
    let s = admin.stop_instance(&all[0].id).await.unwrap();
    job_ok(&admin, &s.job.id).await;
    let s = admin.start_instance(&all[0].id).await.unwrap();
    job_ok(&admin, &s.job.id).await;
    consistent(&admin).await;
    step("nats-server restart, agents reconnect, create/stop/start", t);

    // 3. Replace each host's agents in turn while operations go on elsewhere.
    for h in 0..2 {
        let t = Instant::now();
        hosts[h].hva.kill();
        hosts[h].nw.kill();
        // Operations meanwhile: a create (placed on either host; completes when its agent is
        // back) and a stop/start of a guest on the other host.
        let other = consistent_on(&admin, NODES[1 - h]).await;
        let c = admin.create_instance(&req(&img.id, &format!("during-{h}"), &net.id)).await.unwrap();
        let stop = admin.stop_instance(&other).await.unwrap();
        hosts[h] = agents(h, 1, nats_port, dir, logs);
        job_ok(&admin, &c.job.id).await;
        job_ok(&admin, &stop.job.id).await;
        let start = admin.start_instance(&other).await.unwrap();
        job_ok(&admin, &start.job.id).await;
        online(&admin, 2).await;
        let all = consistent(&admin).await;
        assert!(all.iter().all(|i| i.state == InstanceState::Running));
        step(&format!("replace host {h}'s hva + nwagent during operations"), t);
    }
    drop((dc, nats, hosts));
    {
        use sqlx::Connection;
        if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")).execute(&mut conn).await;
        }
    }
    println!("\n{:<78} {:>8}", "step", "seconds");
    for (name, d) in &table {
        println!("{name:<78} {:>8.2}", d.as_secs_f64());
    }
}

/// A running instance on `host`.
async fn consistent_on(admin: &Client, host: &str) -> InstanceId {
    let all = admin.list_all_instances().await.unwrap();
    all.into_iter()
        .find(|i| i.state == InstanceState::Running && i.host_node_id.as_ref().map(|h| h.as_str()) == Some(host))
        .map(|i| i.id)
        .expect("a running instance on the other host")
}
