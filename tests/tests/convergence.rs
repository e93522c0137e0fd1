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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_applied_together_hold_back_no_other_sqlite() {
    vdc_tests::init_logging();
    reports_applied_together_hold_back_no_other(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reports_applied_together_hold_back_no_other_postgres() {
    vdc_tests::init_logging();
    reports_applied_together_hold_back_no_other(Db::Postgres).await
}

/// On SQLite the reports waiting are applied in one transaction
/// (`controller::reports::apply_group`). One that cannot be applied (its instance's row
/// is unreadable) must not take the others down with it: they are applied on their own,
/// and only its own sequence number goes unacked; nothing of the shared attempt stays.
async fn reports_applied_together_hold_back_no_other(db: Db) {
    use sqlx::Connection;
    use vdc_schema::bus::{AgentKind, InstanceReport, ObjectReport, Report, ReportBatch};
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("acme").await;
    let bad = s.running_instance(&c, "bad").await;
    let good = s.running_instance(&c, "good").await;
    let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
    let gens = |id: &InstanceId| {
        let id = id.to_string();
        let url = s.database_url.clone();
        async move {
            let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
            sqlx::query_as::<_, (i64, i64, i64)>("SELECT spec_gen, reboot_gen, report_gen FROM instances WHERE id = $1")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    };
    let batch = |inst: &Instance, seq: u64, gen: u64, (spec_gen, reboot_gen): (i64, i64)| ReportBatch {
        node_id: inst.host_node_id.clone().unwrap().to_string(),
        kind: AgentKind::Hva,
        reports: vec![Report {
            seq,
            gen,
            object: ObjectReport::Instance(InstanceReport {
                id: inst.id.clone(),
                spec_gen: spec_gen as u64,
                state: ObservedInstance::Running,
                reboot_gen: reboot_gen as u64,
                volumes: vec![],
                reason: None,
            }),
        }],
    };
    let ctx = &s.dcmgr().ctx;
    // Both together, nothing wrong: both applied.
    let (b, g) = (gens(&bad.id).await, gens(&good.id).await);
    // Generations are the agents' clocks in microseconds: these are days ahead of theirs.
    let first = b.2.max(g.2) as u64 + 1_000_000_000_000;
    let second = first + 1_000_000_000_000;
    let acks = vdc_dcmgr::controller::reports::apply_group(
        ctx,
        &[batch(&bad, 1, first, (b.0, b.1)), batch(&good, 2, first, (g.0, g.1))],
    )
    .await;
    assert_eq!(acks, [vec![1], vec![2]]);
    assert_eq!(gens(&bad.id).await.2, first as i64);
    assert_eq!(gens(&good.id).await.2, first as i64);
    // The second one's row cannot be read: the shared transaction, which had applied the
    // first, fails; the first is applied on its own.
    sqlx::query("UPDATE instances SET goal = 'bogus' WHERE id = $1")
        .bind(bad.id.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    let acks = vdc_dcmgr::controller::reports::apply_group(
        ctx,
        &[batch(&good, 4, second, (g.0, g.1)), batch(&bad, 3, second, (b.0, b.1))],
    )
    .await;
    assert_eq!(acks, [vec![4], vec![]], "only the report that could not be applied is left unacked");
    assert_eq!(gens(&bad.id).await.2, first as i64, "nothing of the failed report stays");
    assert_eq!(gens(&good.id).await.2, second as i64);
    sqlx::query("UPDATE instances SET goal = 'running' WHERE id = $1")
        .bind(bad.id.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(c.get_instance(&good.id).await.unwrap().state, InstanceState::Running);
    s.stop().await;
}
