//! Fault injection: every Nth command to an agent and every Nth report batch is lost,
//! and dcmgr is killed and restarted between the steps of a small VDC's life. Every job
//! still ends and every object converges: instances, volume attachments, and what each
//! interface's host holds (group rules with resolved members, floating IPs).

use std::collections::BTreeSet;
use std::time::Duration;
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{eventually, Db, Stack, StackOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lossy_bus_and_dcmgr_restarts_converge_sqlite() {
    vdc_tests::init_logging();
    lossy_bus_and_dcmgr_restarts_converge(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lossy_bus_and_dcmgr_restarts_converge_postgres() {
    vdc_tests::init_logging();
    lossy_bus_and_dcmgr_restarts_converge(Db::Postgres).await
}

const JOB_TIMEOUT: Duration = Duration::from_secs(60);

async fn ok(c: &Client, job: &Job) {
    let j = c.wait_job(&job.id, JOB_TIMEOUT).await.expect("the job ends");
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
}

fn iface(net: &NetworkId, g: &SecurityGroupId) -> Vec<CreateInterface> {
    vec![CreateInterface { network_id: net.clone(), security_groups: vec![g.clone()], ip: None }]
}

async fn lossy_bus_and_dcmgr_restarts_converge(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 2;
    o.external = Some(vdc_tests::test_external("203.0.113.50"));
    let mut s = Stack::start(o).await;
    s.bus.drop_every(7);
    let c = s.account("lossy").await;

    // Step 1: a network, a group, four instances in it.
    let net = c
        .create_network(&CreateNetwork {
            name: "n".into(),
            cidr: "10.4.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let g = c
        .create_security_group(&CreateSecurityGroup { name: "g".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let mut insts = vec![];
    for i in 0..4 {
        let a = c
            .create_instance(&CreateInstance {
                name: Some(format!("vm{i}")),
                image_id: s.image.clone(),
                hypervisor: None,
                cpus: 1,
                memory_mib: 128,
                interfaces: iface(&net.id, &g.id),
                ssh_key_id: None,
                user_data: None,
                root_disk_size: None,
                server_group: None,
                zone: None,
                host_labels: Default::default(),
            })
            .await
            .unwrap();
        insts.push(a);
    }
    for a in &insts {
        ok(&c, &a.job).await;
    }
    let ids: Vec<InstanceId> = insts.iter().map(|a| a.resource.id.clone()).collect();

    // Step 2, after a dcmgr restart: a rule admitting the group's own members, which
    // every member's host must learn with all four addresses.
    s.restart_dcmgr().await;
    let rule = RuleSpec {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        port_min: Some(22),
        port_max: Some(22),
        cidr: None,
        group: Some(g.id.clone()),
    };
    c.add_security_group_rule(&g.id, &rule).await.unwrap();

    // Step 3: volumes attached, a floating IP associated, one instance stopped.
    let mut vols = vec![];
    for (i, inst) in ids.iter().enumerate().take(2) {
        let v = c
            .create_volume(&CreateVolume {
                name: format!("v{i}"),
                size_mib: Some(32),
                snapshot_id: None,
                image_id: None,
            })
            .await
            .unwrap();
        ok(&c, &v.job).await;
        let a = c.attach_volume(&v.resource.id, inst).await.unwrap();
        ok(&c, &a.job).await;
        vols.push(v.resource.id);
    }
    let fip = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    c.associate_floating_ip(&fip.id, &AssociateFloatingIp { instance_id: ids[0].clone(), interface_id: None })
        .await
        .unwrap();
    s.restart_dcmgr().await;
    let st = c.stop_instance(&ids[3]).await.unwrap();
    ok(&c, &st.job).await;

    // Step 4, after another restart: detach one volume, terminate one instance (its
    // address leaves the group), start the stopped one again.
    s.restart_dcmgr().await;
    let d = c.detach_volume(&vols[1]).await.unwrap();
    ok(&c, &d.job).await;
    let t = c.terminate_instance(&ids[2]).await.unwrap();
    ok(&c, &t.job).await;
    let st = c.start_instance(&ids[3]).await.unwrap();
    ok(&c, &st.job).await;
    assert!(s.bus.dropped() > 0, "the bus really lost messages");

    // Every job of the account ended.
    for j in c.list_all_jobs().await.unwrap() {
        assert_ne!(j.state, JobState::Running, "job {} ({}) ended", j.id, j.action);
    }
    // The model is what was asked.
    let want_states =
        [InstanceState::Running, InstanceState::Running, InstanceState::Terminated, InstanceState::Running];
    for (id, want) in ids.iter().zip(want_states) {
        assert_eq!(c.get_instance(id).await.unwrap().state, want, "{id}");
    }
    let v0 = c.get_volume(&vols[0]).await.unwrap();
    assert_eq!((v0.state, v0.instance_id.as_ref()), (VolumeState::Attached, Some(&ids[0])));
    let v1 = c.get_volume(&vols[1]).await.unwrap();
    assert_eq!((v1.state, v1.instance_id), (VolumeState::Available, None));

    // What the hosts hold converges on it: each live member's interface carries the
    // rule with exactly the three live members' addresses, and instance 0 its address.
    let live: Vec<Instance> = futures::future::join_all([&ids[0], &ids[1], &ids[3]].map(|i| c.get_instance(i)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let members: BTreeSet<String> = live.iter().map(|i| format!("{}/32", i.interfaces[0].ip)).collect();
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    for inst in &live {
        let vif = inst.interfaces[0].id.clone();
        let want_fip = (inst.id == ids[0]).then_some(fip.ip);
        eventually(Duration::from_secs(20), || async {
            let p = port(&vif)?;
            let rules = &p.security_groups.first()?.rules;
            let cidrs: BTreeSet<String> = rules.first()?.cidrs.iter().map(|c| c.to_string()).collect();
            (rules.len() == 1 && cidrs == members && p.floating_ip == want_fip).then_some(())
        })
        .await
        .unwrap_or_else(|_| panic!("{}'s interface converges; it holds {:?}", inst.id, port(&vif)));
    }
    s.stop().await;
}
