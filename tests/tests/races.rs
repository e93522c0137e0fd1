//! Concurrency is a user: for every kind of conflicting change, 20 or more requests at
//! once, in rounds, on SQLite and on PostgreSQL. Exactly one of a set of conflicting
//! requests wins, the others get 409 with a clear code (or 200 when they asked for what
//! the winner did), every accepted job ends, and nothing is left orphaned.

use futures::future::join_all;
use std::time::Duration;
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{eventually, on_both_databases, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    attach_attach,
    attach_delete,
    detach_delete,
    network_delete_interface_create,
    group_delete_instance_create,
    snapshot_volume_delete,
    floating_ip_associations,
    terminate_attach,
    image_delete_instance_create,
    image_delete_same_bytes_upload,
    image_delete_volume_create,
    instance_actions,
    creates_fill_an_overcommitted_host,
    capture_start_terminate,
    snapshot_image_delete,
    same_name_creates,
    reads_follow_writes,
    addresses_run_out_exactly,
    account_delete_creates_in_it,
);

const ROUNDS: usize = 3;

/// What one request of a race got: its status (202, 200, 204 or an error's) and code.
#[derive(Debug, Clone)]
struct Outcome {
    status: u16,
    code: String,
    job: Option<Job>,
}

fn outcome<T>(r: Result<T, ClientError>, job: impl Fn(&T) -> Option<(Job, bool)>) -> Outcome {
    match r {
        Ok(v) => {
            let (j, accepted) = job(&v).map(|(j, a)| (Some(j), a)).unwrap_or((None, true));
            Outcome { status: if accepted { 202 } else { 200 }, code: String::new(), job: j }
        }
        Err(ClientError::Api { status, code, .. }) => Outcome { status, code, job: None },
        Err(e) => panic!("expected an API answer, got {e}"),
    }
}

/// An `Accepted` answer: 202 when its job still runs or did work, 200 when it was
/// already done. The client does not expose the status, so the job tells: a job that
/// finished with a message ("already …", "not attached") was answered 200.
fn accepted<T>(a: &Accepted<T>) -> Option<(Job, bool)> {
    let already = a.job.state == JobState::Succeeded && a.job.message.as_deref().is_some_and(|m| m != "done");
    Some((a.job.clone(), !already))
}

async fn wait_jobs_end(c: &Client, outcomes: &[Outcome]) {
    for o in outcomes {
        if let Some(j) = &o.job {
            let end = c.wait_job(&j.id, Duration::from_secs(20)).await.expect("every job ends");
            assert_ne!(end.state, JobState::Running, "job {} ended", end.id);
        }
    }
}

fn count(outcomes: &[Outcome], status: u16) -> usize {
    outcomes.iter().filter(|o| o.status == status).count()
}

fn codes(outcomes: &[Outcome]) -> Vec<String> {
    let mut c: Vec<String> =
        outcomes.iter().filter(|o| o.status >= 400).map(|o| format!("{} {}", o.status, o.code)).collect();
    c.sort();
    c.dedup();
    c
}

fn inst_req(image: &ImageId, name: &str, net: Option<&NetworkId>, groups: &[SecurityGroupId]) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: image.clone(),
        hypervisor: None,
        cpus: 1,
        memory_mib: 64,
        interfaces: net
            .map(|n| vec![CreateInterface { network_id: n.clone(), security_groups: groups.to_vec(), ip: None }])
            .unwrap_or_default(),
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

async fn new_volume(c: &Client, name: &str) -> VolumeId {
    let a = c
        .create_volume(&CreateVolume { name: name.into(), size_mib: Some(16), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    c.wait_job_ok(&a.job.id, Duration::from_secs(15)).await.unwrap();
    a.resource.id
}

fn stack(db: Db) -> StackOptions {
    let mut o = StackOptions::new(db);
    o.host_cpus = 64;
    o.host_memory_mib = 1 << 20;
    o.sim.delay = Duration::from_millis(5);
    o
}

async fn attach_attach(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("aa").await;
    let insts =
        [s.running_instance(&c, "a1").await, s.running_instance(&c, "a2").await, s.running_instance(&c, "a3").await];
    for round in 0..ROUNDS {
        let vol = new_volume(&c, &format!("v{round}")).await;
        let reqs = (0..30).map(|i| {
            let (c, vol, inst) = (c.clone(), vol.clone(), insts[i % 3].id.clone());
            async move { (inst.clone(), outcome(c.attach_volume(&vol, &inst).await, accepted)) }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        assert_eq!(count(&outcomes, 202), 1, "round {round}: exactly one attach wins: {:?}", codes(&outcomes));
        let winner = results.iter().find(|r| r.1.status == 202).unwrap().0.clone();
        for (inst, o) in &results {
            match o.status {
                202 => {}
                200 => assert_eq!(inst, &winner, "only the winner's instance is told 'already attached'"),
                409 => {
                    assert_ne!(inst, &winner);
                    assert_eq!(o.code, "volume_attached");
                }
                s => panic!("unexpected {s} {}", o.code),
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        let v = c.get_volume(&vol).await.unwrap();
        assert_eq!((v.state, v.instance_id.as_ref()), (VolumeState::Attached, Some(&winner)));
        for i in &insts {
            let got = c.get_instance(&i.id).await.unwrap();
            assert_eq!(got.volumes.contains(&vol), i.id == winner, "{} lists only its own volumes", i.id);
        }
        let d = c.detach_volume(&vol).await.unwrap();
        c.wait_job_ok(&d.job.id, Duration::from_secs(15)).await.unwrap();
    }
    s.stop().await;
}

async fn attach_delete(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("ad").await;
    let inst = s.running_instance(&c, "x").await;
    let mut attach_won = 0;
    let mut delete_won = 0;
    for round in 0..ROUNDS * 2 {
        let vol = new_volume(&c, &format!("v{round}")).await;
        let reqs = (0..20).map(|i| {
            let (c, vol, inst) = (c.clone(), vol.clone(), inst.id.clone());
            async move {
                if i % 2 == 0 {
                    ("attach", outcome(c.attach_volume(&vol, &inst).await, accepted))
                } else {
                    ("delete", outcome(c.delete_volume(&vol).await, accepted))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let attaches = results.iter().filter(|r| r.0 == "attach" && r.1.status == 202).count();
        let deletes = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert_eq!(attaches + deletes, 1, "round {round}: one of attach and delete wins: {:?}", codes(&outcomes));
        for (kind, o) in &results {
            if o.status >= 400 {
                let want = match (*kind, attaches) {
                    ("attach", 0) => "invalid_state",
                    ("delete", 1) => "volume_attached",
                    _ => panic!("a loser of the same kind as the winner gets 200, not {} {}", o.status, o.code),
                };
                assert_eq!((o.status, o.code.as_str()), (409, want));
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        let v = c.get_volume(&vol).await.unwrap();
        if attaches == 1 {
            attach_won += 1;
            assert_eq!((v.state, v.instance_id.as_ref()), (VolumeState::Attached, Some(&inst.id)));
            let d = c.detach_volume(&vol).await.unwrap();
            c.wait_job_ok(&d.job.id, Duration::from_secs(15)).await.unwrap();
        } else {
            delete_won += 1;
            assert_eq!((v.state, v.instance_id), (VolumeState::Deleted, None));
            assert!(!c.get_instance(&inst.id).await.unwrap().volumes.contains(&vol));
        }
        for o in outcomes.iter().filter_map(|o| o.job.as_ref()) {
            let j = c.get_job(&o.id).await.unwrap();
            assert_eq!(j.state, JobState::Succeeded, "accepted work succeeds: {j:?}");
        }
    }
    tracing_summary("attach × delete", attach_won, delete_won);
    s.stop().await;
}

fn tracing_summary(what: &str, a: usize, b: usize) {
    eprintln!("{what}: first won {a} rounds, second {b}");
}

async fn detach_delete(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("dd").await;
    let inst = s.running_instance(&c, "x").await;
    for round in 0..ROUNDS {
        let vol = new_volume(&c, &format!("v{round}")).await;
        let a = c.attach_volume(&vol, &inst.id).await.unwrap();
        c.wait_job_ok(&a.job.id, Duration::from_secs(15)).await.unwrap();
        let reqs = (0..20).map(|i| {
            let (c, vol) = (c.clone(), vol.clone());
            async move {
                if i % 2 == 0 {
                    ("detach", outcome(c.detach_volume(&vol).await, accepted))
                } else {
                    ("delete", outcome(c.delete_volume(&vol).await, accepted))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let detaches = results.iter().filter(|r| r.0 == "detach" && r.1.status == 202).count();
        let deletes = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert_eq!(detaches, 1, "round {round}: one detach is accepted: {:?}", codes(&outcomes));
        assert!(deletes <= 1, "round {round}: at most one delete, after the detach finished");
        for (kind, o) in &results {
            if o.status >= 400 {
                // A delete before the detach finished is refused; a detach after a delete
                // that came once it had finished finds the volume going.
                let want = match *kind {
                    "delete" => "volume_attached",
                    _ if deletes == 1 => "invalid_state",
                    _ => panic!("a detach is refused while no delete was accepted: {}", o.code),
                };
                assert_eq!((o.status, o.code.as_str()), (409, want), "{kind}");
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        let v = c.get_volume(&vol).await.unwrap();
        assert_eq!(v.instance_id, None);
        assert_eq!(v.state, if deletes == 1 { VolumeState::Deleted } else { VolumeState::Available });
        assert!(c.get_instance(&inst.id).await.unwrap().volumes.is_empty(), "nothing left attached");
    }
    s.stop().await;
}

async fn network_delete_interface_create(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("nd").await;
    for round in 0..ROUNDS {
        let net = c
            .create_network(&CreateNetwork {
                name: format!("n{round}"),
                cidr: format!("10.{round}.0.0/24"),
                gateway: None,
                dhcp_start: None,
                dhcp_end: None,
            })
            .await
            .unwrap();
        let reqs = (0..24).map(|i| {
            let (c, net, img) = (c.clone(), net.id.clone(), s.image.clone());
            async move {
                if i % 2 == 0 {
                    let r = c.create_instance(&inst_req(&img, &format!("r{round}-{i}"), Some(&net), &[])).await;
                    ("create", outcome(r, |a| Some((a.job.clone(), true))))
                } else {
                    ("delete", outcome(c.delete_network(&net).await, |_| None))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let created = results.iter().filter(|r| r.0 == "create" && r.1.status == 202).count();
        let deleted = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert!(deleted <= 1, "round {round}: the network is deleted once");
        assert!(created == 0 || deleted == 0, "round {round}: an interface never lands on a deleted network");
        for (kind, o) in &results {
            if o.status >= 400 {
                let ok = match *kind {
                    "create" => (o.status, o.code.as_str()) == (404, "not_found"),
                    _ => [(409, "network_in_use"), (404, "not_found")].contains(&(o.status, o.code.as_str())),
                };
                assert!(ok, "{kind}: {} {}", o.status, o.code);
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        // Nothing orphaned: every interface is on a network that exists.
        for i in c.list_all_instances().await.unwrap() {
            for vif in &i.interfaces {
                c.get_network(&vif.network_id).await.expect("the interface's network exists");
            }
        }
        if deleted == 0 {
            // Clean up for the next round: terminate, then the delete goes through.
            for i in c.list_all_instances().await.unwrap().into_iter().filter(|i| i.state != InstanceState::Terminated)
            {
                let t = c.terminate_instance(&i.id).await.unwrap();
                c.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
            }
            c.delete_network(&net.id).await.unwrap();
        }
    }
    s.stop().await;
}

async fn group_delete_instance_create(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("gd").await;
    let net = c
        .create_network(&CreateNetwork {
            name: "n".into(),
            cidr: "10.8.0.0/22".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    for round in 0..ROUNDS {
        let g = c
            .create_security_group(&CreateSecurityGroup {
                name: format!("g{round}"),
                description: String::new(),
                rules: vec![],
            })
            .await
            .unwrap();
        let reqs = (0..24).map(|i| {
            let (c, net, g, img) = (c.clone(), net.id.clone(), g.id.clone(), s.image.clone());
            async move {
                if i % 2 == 0 {
                    let r = c.create_instance(&inst_req(&img, &format!("r{round}-{i}"), Some(&net), &[g])).await;
                    ("create", outcome(r, |a| Some((a.job.clone(), true))))
                } else {
                    ("delete", outcome(c.delete_security_group(&g).await, |_| None))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let created = results.iter().filter(|r| r.0 == "create" && r.1.status == 202).count();
        let deleted = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert!(deleted <= 1);
        assert!(created == 0 || deleted == 0, "round {round}: no member of a deleted group: {:?}", codes(&outcomes));
        for (kind, o) in &results {
            if o.status >= 400 {
                let ok = match *kind {
                    "create" => (o.status, o.code.as_str()) == (404, "not_found"),
                    _ => [(409, "security_group_in_use"), (404, "not_found")].contains(&(o.status, o.code.as_str())),
                };
                assert!(ok, "{kind}: {} {}", o.status, o.code);
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        for i in c.list_all_instances().await.unwrap() {
            for vif in &i.interfaces {
                for g in &vif.security_groups {
                    c.get_security_group(g).await.expect("an interface's group exists");
                }
            }
        }
        for i in c.list_all_instances().await.unwrap().into_iter().filter(|i| i.state != InstanceState::Terminated) {
            let t = c.terminate_instance(&i.id).await.unwrap();
            c.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
        }
    }
    s.stop().await;
}

async fn snapshot_volume_delete(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("sd").await;
    for round in 0..ROUNDS * 2 {
        let vol = new_volume(&c, &format!("v{round}")).await;
        let reqs = (0..20).map(|i| {
            let (c, vol) = (c.clone(), vol.clone());
            async move {
                if i % 2 == 0 {
                    let req = CreateSnapshot { volume_id: vol, name: format!("s{i}") };
                    ("snapshot", outcome(c.create_snapshot(&req).await, |a| Some((a.job.clone(), true))))
                } else {
                    ("delete", outcome(c.delete_volume(&vol).await, accepted))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let snaps = results.iter().filter(|r| r.0 == "snapshot" && r.1.status == 202).count();
        let deletes = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert!(deletes <= 1);
        assert!(snaps == 0 || deletes == 0, "round {round}: no snapshot of a deleted volume: {:?}", codes(&outcomes));
        for (kind, o) in &results {
            if o.status >= 400 {
                let want = if *kind == "snapshot" { "invalid_state" } else { "volume_has_snapshots" };
                assert_eq!((o.status, o.code.as_str()), (409, want), "{kind}");
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        let v = c.get_volume(&vol).await.unwrap();
        assert_eq!(v.state, if deletes == 1 { VolumeState::Deleted } else { VolumeState::Available });
        let of_vol: Vec<Snapshot> =
            c.list_all_snapshots().await.unwrap().into_iter().filter(|s| s.volume_id == vol).collect();
        assert_eq!(of_vol.len(), snaps, "every accepted snapshot exists, no other");
        assert!(of_vol.iter().all(|s| s.state == SnapshotState::Available));
    }
    s.stop().await;
}

async fn floating_ip_associations(db: Db) {
    let mut o = stack(db);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.99"));
    let s = Stack::start(o).await;
    let c = s.account("fa").await;
    let a = s.running_instance(&c, "a").await;
    let b = s.running_instance(&c, "b").await;
    for round in 0..ROUNDS {
        // One address, two instances: it ends on one, and only that one's port maps it
        // (checked below, when the other carries another address).
        let fip = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
        let reqs = (0..20).map(|i| {
            let (c, fip, inst) = (c.clone(), fip.id.clone(), if i % 2 == 0 { a.id.clone() } else { b.id.clone() });
            async move {
                let req = AssociateFloatingIp { instance_id: inst.clone(), interface_id: None };
                (inst, outcome(c.associate_floating_ip(&fip, &req).await, |_| None))
            }
        });
        let results = join_all(reqs).await;
        let got = c.get_floating_ip(&fip.id).await.unwrap();
        let winner = got.instance_id.clone().expect("associated");
        // Each request moves it (as Neutron's port update does); one of them is last.
        for (_, o) in &results {
            assert_eq!(o.status, 202, "round {round}: {}", o.code);
        }
        // Two addresses, one interface: exactly one of them maps to it.
        let f1 = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
        let f2 = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
        let loser_inst = if winner == a.id { b.id.clone() } else { a.id.clone() };
        let reqs = (0..20).map(|i| {
            let (c, fip, inst) =
                (c.clone(), if i % 2 == 0 { f1.id.clone() } else { f2.id.clone() }, loser_inst.clone());
            async move {
                let req = AssociateFloatingIp { instance_id: inst, interface_id: None };
                (fip.clone(), outcome(c.associate_floating_ip(&fip, &req).await, |_| None))
            }
        });
        let results = join_all(reqs).await;
        let g1 = c.get_floating_ip(&f1.id).await.unwrap();
        let g2 = c.get_floating_ip(&f2.id).await.unwrap();
        assert!(g1.instance_id.is_some() != g2.instance_id.is_some(), "round {round}: exactly one maps: {g1:?} {g2:?}");
        let won = if g1.instance_id.is_some() { &f1.id } else { &f2.id };
        for (fip, o) in &results {
            if fip == won {
                assert_eq!(o.status, 202);
            } else {
                assert_eq!((o.status, o.code.as_str()), (409, "interface_has_floating_ip"));
            }
        }
        // nwagent converges on the winners.
        let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
        let (won_ip, va, vb) = (
            c.get_floating_ip(won).await.unwrap().ip,
            winner_vif(&c, &winner).await,
            winner_vif(&c, &loser_inst).await,
        );
        eventually(Duration::from_secs(10), || async {
            (port(&va)?.floating_ip? == got.ip && port(&vb)?.floating_ip? == won_ip).then_some(())
        })
        .await
        .expect("both interfaces carry their address");
        for f in [&fip.id, &f1.id, &f2.id] {
            c.disassociate_floating_ip(f).await.unwrap();
            c.delete_floating_ip(f).await.unwrap();
        }
    }
    s.stop().await;
}

async fn winner_vif(c: &Client, i: &InstanceId) -> VifId {
    c.get_instance(i).await.unwrap().interfaces[0].id.clone()
}

async fn terminate_attach(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("ta").await;
    for round in 0..ROUNDS {
        let inst = s.running_instance(&c, &format!("t{round}")).await;
        let mut vols = vec![];
        for i in 0..10 {
            vols.push(new_volume(&c, &format!("r{round}v{i}")).await);
        }
        let attaches = vols.iter().map(|v| {
            let (c, v, i) = (c.clone(), v.clone(), inst.id.clone());
            async move { outcome(c.attach_volume(&v, &i).await, accepted) }
        });
        let terms = (0..10).map(|_| {
            let (c, i) = (c.clone(), inst.id.clone());
            async move { outcome(c.terminate_instance(&i).await, accepted) }
        });
        let (mut outcomes, t) = futures::join!(join_all(attaches), join_all(terms));
        assert!(count(&t, 202) >= 1, "a terminate is accepted");
        for o in outcomes.iter().chain(&t) {
            if o.status >= 400 {
                assert_eq!((o.status, o.code.as_str()), (409, "invalid_state"));
            }
        }
        outcomes.extend(t);
        wait_jobs_end(&c, &outcomes).await;
        wait_state(&c, &inst.id, InstanceState::Terminated).await;
        // Nothing stays attached to the terminated instance, and every volume is usable.
        for v in &vols {
            let got = eventually(Duration::from_secs(10), || async {
                let v = c.get_volume(v).await.ok()?;
                (v.state == VolumeState::Available).then_some(v)
            })
            .await
            .unwrap_or_else(|_| panic!("volume {v} is available again"));
            assert_eq!(got.instance_id, None);
        }
        assert!(c.get_instance(&inst.id).await.unwrap().volumes.is_empty());
    }
    s.stop().await;
}

/// Instances created from a public image while its owner deletes it: one delete wins at
/// once, the instances accepted before it boot from the image's data, none after it;
/// once they are terminated the image is removed (its name free again).
async fn image_delete_instance_create(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("id").await;
    for round in 0..ROUNDS {
        let req = CreateImage {
            hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu],
            source: Some("/var/lib/vdc/images/debian.qcow2".into()),
            checksum: Some(format!("sha256:{}", "ab".repeat(32))),
            public: true,
            ..vdc_tests::image_request(&format!("img{round}"), ImageFormat::Qcow2)
        };
        let img = s.admin.create_image(&req).await.unwrap();
        let reqs = (0..24).map(|i| {
            let (c, op, img) = (c.clone(), s.admin.clone(), img.id.clone());
            async move {
                if i % 2 == 0 {
                    let r = c.create_instance(&inst_req(&img, &format!("r{round}-{i}"), None, &[])).await;
                    ("create", outcome(r, |a| Some((a.job.clone(), true))))
                } else {
                    // The operator deletes the public image the tenant boots.
                    ("delete", outcome(op.delete_image(&img).await, |_| None))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let deleted = results.iter().filter(|r| r.0 == "delete" && r.1.status == 202).count();
        assert_eq!(deleted, 1, "round {round}: one delete wins, used or not: {:?}", codes(&outcomes));
        for (kind, o) in &results {
            if o.status >= 400 {
                assert_eq!((o.status, o.code.as_str()), (404, "not_found"), "{kind}");
            }
        }
        // Gone for every account at once: nothing new boots it.
        assert_eq!(outcome(c.get_image(&img.id).await, |_| None).status, 404);
        let late = c.create_instance(&inst_req(&img.id, &format!("late{round}"), None, &[])).await;
        assert_eq!(outcome(late, |_| None).status, 404);
        // What was created before the delete boots from it, and its name is held for it.
        for o in &outcomes {
            if let Some(j) = &o.job {
                let end = c.wait_job(&j.id, Duration::from_secs(20)).await.expect("every job ends");
                assert_eq!(end.state, JobState::Succeeded, "round {round}: an accepted instance boots: {end:?}");
            }
        }
        let live: Vec<_> = c
            .list_all_instances()
            .await
            .unwrap()
            .into_iter()
            .filter(|i| i.state != InstanceState::Terminated)
            .collect();
        if !live.is_empty() {
            assert_eq!(outcome(s.admin.create_image(&req).await, |_| None).code, "name_taken");
        }
        for i in live {
            let t = c.terminate_instance(&i.id).await.unwrap();
            c.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
        }
        // None left: the leader removes it, which frees its name.
        let again = eventually(Duration::from_secs(20), || async { s.admin.create_image(&req).await.ok() }).await;
        s.admin.delete_image(&again.expect("the deleted image is collected once unused").id).await.unwrap();
    }
    s.stop().await;
}

/// Volumes made from an image while its owner deletes it. A volume being made needs the
/// image (sta copies it in): the delete hides the image at once and keeps its data until
/// every volume is made, then the leader removes both; the made volumes still work (an
/// extend is sent without the image). Before, a delete could take the image from under a
/// volume being made, which then never ended, and a made volume's every later change
/// failed to be sent.
async fn image_delete_volume_create(db: Db) {
    let mut o = stack(db);
    // Volumes stay `creating` long enough for the deletes to meet them.
    o.sim.delay = Duration::from_millis(150);
    let s = Stack::start(o).await;
    let c = s.account("filling").await;
    let blobs = s.opts.images.dir.clone().expect("the harness sets it").join("blobs/sha256");
    let mut deleted_while_made = 0;
    for round in 0..ROUNDS {
        let img = c.create_image(&vdc_tests::image_request(&format!("fill{round}"), ImageFormat::Raw)).await.unwrap();
        let data = vec![7 + round as u8; 64 << 10];
        let blob = blobs.join(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)));
        assert_eq!(c.upload_image(&img.id, data).await.unwrap().state, ImageState::Available);
        let reqs = (0..24).map(|i| {
            let (c, img) = (c.clone(), img.id.clone());
            async move {
                // Creates at 0, 10, 20 … ms, each followed 5 ms later by a delete.
                tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
                if i % 2 == 0 {
                    let req = CreateVolume {
                        name: format!("r{round}-{i}"),
                        size_mib: Some(16),
                        snapshot_id: None,
                        image_id: Some(img),
                    };
                    ("create", outcome(c.create_volume(&req).await, |a| Some((a.job.clone(), true))))
                } else {
                    ("delete", outcome(c.delete_image(&img).await, |_| None))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        let deleted = results.iter().filter(|r| r.0 == "delete" && r.1.status < 300).count();
        assert_eq!(deleted, 1, "round {round}: one delete wins: {:?}", codes(&outcomes));
        for (kind, o) in &results {
            if o.status >= 400 {
                assert_eq!((o.status, o.code.as_str()), (404, "not_found"), "{kind}");
            }
        }
        let late = CreateVolume {
            name: format!("late{round}"),
            size_mib: Some(16),
            snapshot_id: None,
            image_id: Some(img.id.clone()),
        };
        assert_eq!(outcome(c.create_volume(&late).await, |_| None).status, 404, "nothing new is made of it");
        let making = c.list_all_volumes().await.unwrap().iter().any(|v| v.state == VolumeState::Creating);
        if making {
            assert!(blob.exists(), "round {round}: its data stays while volumes are made of it");
            deleted_while_made += 1;
        }
        for o in &outcomes {
            if let Some(j) = &o.job {
                let end = c.wait_job(&j.id, Duration::from_secs(20)).await.expect("every job ends");
                assert_eq!(end.state, JobState::Succeeded, "round {round}: every volume is made: {end:?}");
            }
        }
        // Made: the image's data goes, and the volumes' later changes are still sent.
        eventually(Duration::from_secs(20), || async { (!blob.exists()).then_some(()) })
            .await
            .expect("the deleted image's data is removed once no volume is made of it");
        for v in c.list_all_volumes().await.unwrap() {
            if v.image_id.as_ref() == Some(&img.id) {
                assert_eq!(v.state, VolumeState::Available, "{v:?}");
                let a = c.extend_volume(&v.id, &ExtendVolume { size_mib: 32 }).await.unwrap();
                let end = c.wait_job(&a.job.id, Duration::from_secs(20)).await.unwrap();
                assert_eq!(end.state, JobState::Succeeded, "an extend without the image: {end:?}");
                assert_eq!(c.get_volume(&v.id).await.unwrap().size_mib, 32);
                c.delete_volume(&v.id).await.unwrap();
            }
        }
    }
    assert!(deleted_while_made > 0, "some delete met volumes being made");
    s.stop().await;
}

/// The last image of some bytes deleted while other images upload the same bytes: the
/// blob is content-addressed, so the delete must not take the file the uploads keep
/// (nor leave one no image holds). Every upload ends `available` with its data stored.
async fn image_delete_same_bytes_upload(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("bytes").await;
    let store = s.opts.images.dir.clone().expect("the harness sets it");
    let (blobs, trash) = (store.join("blobs/sha256"), store.join("blobs/trash"));
    for round in 0..8 {
        let data: Vec<u8> =
            (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(round as u32) >> 13) as u8).collect();
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
        let old = c.create_image(&vdc_tests::image_request(&format!("old{round}"), ImageFormat::Raw)).await.unwrap();
        assert_eq!(c.upload_image(&old.id, data.clone()).await.unwrap().state, ImageState::Available);
        let mut new = Vec::new();
        for i in 0..16 {
            new.push(
                c.create_image(&vdc_tests::image_request(&format!("new{round}-{i}"), ImageFormat::Raw))
                    .await
                    .unwrap()
                    .id,
            );
        }
        // Spread over the moment of the delete: some store the bytes before it counts
        // the blob's users, some while it removes the blob, some after. An upload takes
        // 50-180 ms here (debug build, the format probed), so the rounds move the delete
        // across that time.
        let uploads = new.iter().enumerate().map(|(i, id)| {
            let (c, id, data) = (c.clone(), id.clone(), data.clone());
            async move {
                tokio::time::sleep(Duration::from_millis(3 * i as u64)).await;
                c.upload_image(&id, data).await
            }
        });
        let delete = async {
            tokio::time::sleep(Duration::from_millis(30 + 15 * round as u64)).await;
            c.delete_image(&old.id).await
        };
        let (deleted, uploaded) = tokio::join!(delete, join_all(uploads));
        deleted.expect("the old image is nobody's to keep");
        for u in uploaded {
            assert_eq!(u.expect("an upload of bytes being deleted").state, ImageState::Available, "round {round}");
        }
        let kept = std::fs::read(blobs.join(&sha)).unwrap_or_else(|e| panic!("round {round}: the blob is gone: {e}"));
        assert!(kept == data, "round {round}: the stored blob holds the uploaded bytes");
        for id in &new {
            c.delete_image(id).await.unwrap();
        }
        assert!(!blobs.join(&sha).exists(), "round {round}: the last image's delete takes the blob");
    }
    eventually(Duration::from_secs(10), || async { std::fs::read_dir(&trash).ok()?.next().is_none().then_some(()) })
        .await
        .expect("deleted blobs are unlinked");
    s.stop().await;
}

/// Stop, start, reboot and terminate of one instance, all at once: every request is
/// answered (202, 200 or 409), every job ends, and once terminate is accepted the
/// instance ends terminated with its reservation given back.
async fn instance_actions(db: Db) {
    let mut o = stack(db);
    o.hosts = 1;
    let s = Stack::start(o).await;
    let c = s.account("ia").await;
    for round in 0..ROUNDS {
        let inst = s.running_instance(&c, &format!("x{round}")).await;
        let reqs = (0..24).map(|i| {
            let (c, id) = (c.clone(), inst.id.clone());
            async move {
                let r = match i % 4 {
                    0 => c.stop_instance(&id).await,
                    1 => c.start_instance(&id).await,
                    2 => c.reboot_instance(&id).await,
                    _ => c.terminate_instance(&id).await,
                };
                outcome(r, accepted)
            }
        });
        let outcomes = join_all(reqs).await;
        for o in &outcomes {
            assert!(
                [200, 202].contains(&o.status) || (o.status, o.code.as_str()) == (409, "invalid_state"),
                "round {round}: {} {}",
                o.status,
                o.code
            );
        }
        assert!(count(&outcomes, 202) >= 1, "round {round}: a terminate is accepted at the least");
        wait_jobs_end(&c, &outcomes).await;
        wait_state(&c, &inst.id, InstanceState::Terminated).await;
        eventually(Duration::from_secs(10), || async {
            let hosts = s.admin.list_all_host_nodes().await.ok()?;
            hosts.iter().all(|h| h.cpus_used == 0 && h.memory_used_mib == 0).then_some(())
        })
        .await
        .expect("every reservation is given back");
    }
    s.stop().await;
}

/// 20 creates at once on a 2-core host with CPU ratio 4.0: exactly 8 get a place, the
/// rest `no_capacity`, and the host is never booked beyond what it may hold; again once
/// the first 8 are gone.
async fn creates_fill_an_overcommitted_host(db: Db) {
    let mut o = stack(db);
    o.hosts = 1;
    o.host_cpus = 2;
    let s = Stack::start(o).await;
    let c = s.account("dense").await;
    for round in 0..2 {
        let reqs = (0..20).map(|i| {
            let (c, img) = (c.clone(), s.image.clone());
            async move {
                outcome(c.create_instance(&inst_req(&img, &format!("r{round}-{i}"), None, &[])).await, |a| {
                    Some((a.job.clone(), true))
                })
            }
        });
        let outcomes = join_all(reqs).await;
        let placed = outcomes.iter().filter(|o| o.status == 202).count();
        assert_eq!(placed, 8, "round {round}: {:?}", codes(&outcomes));
        assert!(outcomes.iter().all(|o| o.status == 202 || (o.status, o.code.as_str()) == (422, "no_capacity")));
        let host = &s.admin.list_all_host_nodes().await.unwrap()[0];
        assert_eq!((host.cpus_used, host.cpus_allocatable), (8, 8), "round {round}");
        wait_jobs_end(&c, &outcomes).await;
        for i in c.list_all_instances().await.unwrap() {
            if i.state != InstanceState::Terminated {
                let t = c.terminate_instance(&i.id).await.unwrap();
                c.wait_job(&t.job.id, Duration::from_secs(15)).await.unwrap();
            }
        }
        eventually(Duration::from_secs(10), || async {
            let h = s.admin.list_all_host_nodes().await.ok()?;
            (h[0].cpus_used == 0).then_some(())
        })
        .await
        .expect("terminated instances give their place back");
    }
    s.stop().await;
}

/// Capture, start and terminate of one stopped instance, all at once (the simulated hva
/// sends its disk back): at most one capture is accepted, every refusal has its code,
/// every job ends, and once terminate is accepted the instance ends terminated with no
/// captured image left pending; an image is available exactly when its job succeeded.
async fn capture_start_terminate(db: Db) {
    let mut o = stack(db);
    o.hosts = 1;
    let s = Stack::start(o).await;
    let c = s.account("cap").await;
    let disk = s.tmp.path().join("race.qcow2");
    let st = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", disk.to_str().unwrap(), "16M"])
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let img = c
        .create_image(&CreateImage {
            hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu],
            ..vdc_tests::image_request("race", ImageFormat::Qcow2)
        })
        .await
        .unwrap();
    c.upload_image(&img.id, std::fs::read(&disk).unwrap()).await.unwrap();
    for round in 0..ROUNDS {
        let inst = c.create_instance(&inst_req(&img.id, &format!("c{round}"), None, &[])).await.unwrap().resource;
        wait_state(&c, &inst.id, InstanceState::Running).await;
        let stop = c.stop_instance(&inst.id).await.unwrap();
        c.wait_job(&stop.job.id, Duration::from_secs(20)).await.unwrap();
        let reqs = (0..24).map(|i| {
            let (c, id) = (c.clone(), inst.id.clone());
            async move {
                match i % 3 {
                    0 => {
                        let req = CaptureInstance {
                            image_name: format!("cap{round}-{i}"),
                            os: None,
                            min_disk: None,
                            min_memory: None,
                            default_user: None,
                        };
                        ("capture", outcome(c.capture_instance(&id, &req).await, |a| Some((a.job.clone(), true))))
                    }
                    1 => ("start", outcome(c.start_instance(&id).await, accepted)),
                    _ => ("terminate", outcome(c.terminate_instance(&id).await, accepted)),
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        for (kind, o) in &results {
            if o.status >= 400 {
                let ok = match *kind {
                    // Not stopped (nor running), or a capture of it under way.
                    "capture" => {
                        o.status == 409 && ["instance_not_stopped", "instance_capturing"].contains(&o.code.as_str())
                    }
                    _ => (o.status, o.code.as_str()) == (409, "invalid_state"),
                };
                assert!(ok, "round {round}: {kind}: {} {}", o.status, o.code);
            }
        }
        assert!(
            results.iter().any(|r| r.0 == "terminate" && [200, 202].contains(&r.1.status)),
            "round {round}: terminate is never refused"
        );
        wait_jobs_end(&c, &outcomes).await;
        wait_state(&c, &inst.id, InstanceState::Terminated).await;
        // One capture of an instance at a time (a started one may be captured as it runs).
        let mut spans = vec![];
        for r in results.iter().filter(|r| r.0 == "capture" && r.1.status == 202) {
            let job = c.wait_job(&r.1.job.as_ref().unwrap().id, Duration::from_secs(20)).await.unwrap();
            spans.push((job.created_at, job.finished_at.unwrap_or(job.created_at)));
            let image: ImageId = job.resource_id.parse().unwrap();
            let image = c.get_image(&image).await.unwrap();
            assert_ne!(image.state, ImageState::Pending, "round {round}: the capture ended");
            assert_eq!(
                image.state == ImageState::Available,
                job.state == JobState::Succeeded,
                "round {round}: {image:?} {job:?}"
            );
        }
        spans.sort();
        assert!(spans.windows(2).all(|w| w[1].0 >= w[0].1), "round {round}: captures overlap: {spans:?}");
    }
    s.stop().await;
}

/// Images from one snapshot and its delete, all at once: a delete wins only when no
/// image of it is pending (others get 409 `snapshot_capturing`), an image is accepted
/// only while the snapshot is available (others get 409 `invalid_state`), and every
/// accepted image gets the snapshot's data (the simulated sta fails one whose snapshot
/// it no longer has). The snapshot can always be deleted once the images are done.
async fn snapshot_image_delete(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("si").await;
    for round in 0..ROUNDS {
        let vol = new_volume(&c, &format!("v{round}")).await;
        let snap = c.create_snapshot(&CreateSnapshot { volume_id: vol, name: format!("s{round}") }).await.unwrap();
        c.wait_job_ok(&snap.job.id, Duration::from_secs(20)).await.unwrap();
        let snap = snap.resource.id;
        let reqs = (0..24).map(|i| {
            let (c, snap) = (c.clone(), snap.clone());
            async move {
                if i % 2 == 0 {
                    let req = CreateSnapshotImage { image_name: format!("si{round}-{i}"), ..Default::default() };
                    ("image", outcome(c.snapshot_image(&snap, &req).await, |a| Some((a.job.clone(), true))))
                } else {
                    ("delete", outcome(c.delete_snapshot(&snap).await, accepted))
                }
            }
        });
        let results = join_all(reqs).await;
        let outcomes: Vec<Outcome> = results.iter().map(|r| r.1.clone()).collect();
        for (kind, o) in &results {
            if o.status >= 400 {
                let want = if *kind == "image" { "invalid_state" } else { "snapshot_capturing" };
                assert_eq!((o.status, o.code.as_str()), (409, want), "round {round}: {kind}");
            }
        }
        wait_jobs_end(&c, &outcomes).await;
        for r in results.iter().filter(|r| r.0 == "image" && r.1.status == 202) {
            let job = c.wait_job(&r.1.job.as_ref().unwrap().id, Duration::from_secs(20)).await.unwrap();
            assert_eq!(job.state, JobState::Succeeded, "round {round}: no delete under an image: {job:?}");
            let image = c.get_image(&job.resource_id.parse().unwrap()).await.unwrap();
            assert_eq!(image.state, ImageState::Available, "round {round}");
        }
        let del = c.delete_snapshot(&snap).await.unwrap();
        c.wait_job_ok(&del.job.id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(c.get_snapshot(&snap).await.unwrap().state, SnapshotState::Deleted);
    }
    s.stop().await;
}

/// Names are unique within an account: of 20 creates of one name at once, of each kind,
/// exactly one is made; the others get 409 `name_taken`. Another account may use it.
async fn same_name_creates(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("names").await;
    let other = s.account("names2").await;
    for round in 0..ROUNDS {
        let name = format!("dup{round}");
        let nets = join_all((0..20).map(|i| {
            let (c, name) = (c.clone(), name.clone());
            async move {
                let r = c
                    .create_network(&CreateNetwork {
                        name,
                        cidr: format!("10.{}.{i}.0/24", 100 + round),
                        gateway: None,
                        dhcp_start: None,
                        dhcp_end: None,
                    })
                    .await;
                outcome(r, |_| None)
            }
        }))
        .await;
        let groups = join_all((0..20).map(|_| {
            let (c, name) = (c.clone(), name.clone());
            async move {
                let r = c
                    .create_security_group(&CreateSecurityGroup { name, description: String::new(), rules: vec![] })
                    .await;
                outcome(r, |_| None)
            }
        }))
        .await;
        let vols = join_all((0..20).map(|_| {
            let (c, name) = (c.clone(), name.clone());
            async move {
                let r = c
                    .create_volume(&CreateVolume { name, size_mib: Some(16), snapshot_id: None, image_id: None })
                    .await;
                outcome(r, |a| Some((a.job.clone(), true)))
            }
        }))
        .await;
        let images =
            join_all(
                (0..20).map(|_| {
                    let (c, name) = (c.clone(), name.clone());
                    async move {
                        outcome(c.create_image(&vdc_tests::image_request(&name, ImageFormat::Raw)).await, |_| None)
                    }
                }),
            )
            .await;
        for (kind, outcomes) in [("network", &nets), ("group", &groups), ("volume", &vols), ("image", &images)] {
            let made = outcomes.iter().filter(|o| o.status == 202).count();
            assert_eq!(made, 1, "round {round}, {kind}: {:?}", codes(outcomes));
            assert_eq!(codes(outcomes), ["409 name_taken"], "round {round}, {kind}");
        }
        wait_jobs_end(&c, &vols).await;
        assert_eq!(c.list_all_networks().await.unwrap().iter().filter(|n| n.name == name).count(), 1);
        assert_eq!(c.list_all_volumes().await.unwrap().iter().filter(|v| v.name == name).count(), 1);
        // Another account's namespace is its own.
        let n = other
            .create_network(&CreateNetwork {
                name: name.clone(),
                cidr: "10.99.0.0/24".into(),
                gateway: None,
                dhcp_start: None,
                dhcp_end: None,
            })
            .await
            .unwrap();
        other.delete_network(&n.id).await.unwrap();
    }
    // A deleted volume gives its name back.
    let v = c.list_all_volumes().await.unwrap().into_iter().find(|v| v.name == "dup0").unwrap();
    let d = c.delete_volume(&v.id).await.unwrap();
    c.wait_job_ok(&d.job.id, Duration::from_secs(15)).await.unwrap();
    let again = c
        .create_volume(&CreateVolume { name: "dup0".into(), size_mib: Some(16), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    c.wait_job_ok(&again.job.id, Duration::from_secs(15)).await.unwrap();
    s.stop().await;
}

/// dcmgr serves instance reads from a read model in memory (`app::views`) while they are
/// current. 16 instances stopped and started at once, three times over, while four
/// readers keep their GET and list warm: a GET and a list right after each accepted
/// action always show it (its goal, and a state past the old one), never a copy read
/// before it.
async fn reads_follow_writes(db: Db) {
    let s = Stack::start(stack(db)).await;
    let c = s.account("rw").await;
    let mut ids = Vec::new();
    for i in 0..16 {
        ids.push(s.running_instance(&c, &format!("rw{i}")).await.id);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (c, ids, stop) = (c.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.get_instance(&ids[(reads as usize + r) % ids.len()]).await.unwrap();
                    c.list_all_instances().await.unwrap();
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let seen = |c: Client, id: InstanceId| async move {
        let one = c.get_instance(&id).await.unwrap();
        let listed = c.list_all_instances().await.unwrap().into_iter().find(|i| i.id == id).unwrap();
        (one, listed)
    };
    let writers = ids.iter().map(|id| {
        let (c, id) = (c.clone(), id.clone());
        async move {
            for _ in 0..3 {
                c.stop_instance(&id).await.unwrap();
                for i in <[Instance; 2]>::from(seen(c.clone(), id.clone()).await) {
                    assert_eq!(i.goal, InstanceGoal::Stopped, "read right after the stop: {i:?}");
                    assert_ne!(i.state, InstanceState::Running, "read right after the stop: {i:?}");
                }
                wait_state(&c, &id, InstanceState::Stopped).await;
                c.start_instance(&id).await.unwrap();
                for i in <[Instance; 2]>::from(seen(c.clone(), id.clone()).await) {
                    assert_eq!(i.goal, InstanceGoal::Running, "read right after the start: {i:?}");
                    assert_ne!(i.state, InstanceState::Stopped, "read right after the start: {i:?}");
                }
                wait_state(&c, &id, InstanceState::Running).await;
            }
        }
    });
    join_all(writers).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads: u64 = join_all(readers).await.into_iter().map(|r| r.unwrap()).sum();
    assert!(reads > 0);
    // Once nothing changes, reads are answered from memory (dcmgr's /metrics counts them).
    let memory_reads = || async {
        let text = reqwest::get(format!("{}/metrics", s.url())).await.ok()?.text().await.ok()?;
        let line = text.lines().find(|l| l.starts_with("vdc_instance_reads_total{source=\"memory\"}"))?;
        line.rsplit(' ').next()?.parse::<f64>().ok()
    };
    let before = memory_reads().await.expect("/metrics shows vdc_instance_reads_total");
    eventually(Duration::from_secs(10), || async {
        c.get_instance(&ids[0]).await.ok()?;
        (memory_reads().await? > before).then_some(())
    })
    .await
    .expect("a GET of an unchanged instance is answered from memory");
    s.stop().await;
}

/// The last addresses of a network and of the floating-IP pool, asked for by many at
/// once: exactly as many requests are accepted as there were addresses, each address goes
/// to one of them, the others are refused saying the network or pool is full, and a
/// refused create leaves no instance behind. Freed, the addresses are handed out again.
async fn addresses_run_out_exactly(db: Db) {
    let mut o = stack(db);
    o.hosts = 1;
    // Floating IPs .10–.17: 8 addresses.
    o.external = Some(vdc_tests::test_external("203.0.113.17"));
    let s = Stack::start(o).await;
    let c = s.account("addrs").await;
    let other = s.account("addrs2").await;
    // A /28 holds 13 guest addresses (.2–.14).
    let req = CreateNetwork {
        name: "small".into(),
        cidr: "10.9.0.0/28".into(),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    };
    let net = c.create_network(&req).await.unwrap();
    for round in 0..2 {
        let creates = (0..30).map(|n| {
            let (c, image, net) = (c.clone(), s.image.clone(), net.id.clone());
            async move { c.create_instance(&inst_req(&image, &format!("r{round}-{n}"), Some(&net), &[])).await }
        });
        let mut ips = std::collections::HashSet::new();
        let mut ids = vec![];
        for r in join_all(creates).await {
            match r {
                Ok(a) => {
                    assert!(ips.insert(a.resource.interfaces[0].ip.to_string()), "an address given twice");
                    ids.push(a.resource.id);
                }
                Err(ClientError::Api { status, code, .. }) => {
                    assert_eq!((status, code.as_str()), (422, "network_full"))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ids.len(), 13, "round {round}: one create per address");
        let live = c.list_all_instances().await.unwrap();
        assert_eq!(live.iter().filter(|i| i.state != InstanceState::Terminated).count(), 13, "nothing half-created");
        // Freed (terminated), the addresses serve the next round.
        for id in &ids {
            c.terminate_instance(id).await.unwrap();
        }
        for id in &ids {
            wait_state(&c, id, InstanceState::Terminated).await;
        }
    }

    // Floating IPs: two accounts ask for 12 each from a pool of 8, of which the host's
    // router for the network took one for its SNAT (kept while the network exists).
    for round in 0..2 {
        let asks = (0..24).map(|n| {
            let c = if n % 2 == 0 { c.clone() } else { other.clone() };
            async move { (c.create_floating_ip(&CreateFloatingIp::default()).await, c) }
        });
        let mut ips = std::collections::HashSet::new();
        let mut got = vec![];
        for (r, who) in join_all(asks).await {
            match r {
                Ok(f) => {
                    assert!(ips.insert(f.ip.to_string()), "a floating IP given twice: {}", f.ip);
                    got.push((f.id, who));
                }
                Err(ClientError::Api { status, code, message, .. }) => {
                    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}")
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), 7, "round {round}: one per free address of the pool");
        for (id, who) in got {
            who.delete_floating_ip(&id).await.unwrap();
        }
    }
    s.stop().await;
}

/// On PostgreSQL creates lock the image they boot only against its deletion
/// (`db::lock_referred`, a share lock): two hold it at once, where each waited for the
/// one before it to commit; a delete's lock waits for both. (On SQLite every write
/// transaction takes its turn at the one writer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_share_their_image_until_it_is_deleted_postgres() {
    use vdc_dcmgr::datastore::{self as db, Lock};
    vdc_tests::init_logging();
    let s = Stack::start(stack(Db::Postgres)).await;
    let pool = s.dcmgr().ctx.db.clone();
    let img = s.image.to_string();
    let mut one = db::begin(&pool).await.unwrap();
    assert!(db::lock_referred(&mut one, Lock::Image, &img).await.unwrap());
    let mut two = db::begin(&pool).await.unwrap();
    let shared = tokio::time::timeout(Duration::from_secs(5), db::lock_referred(&mut two, Lock::Image, &img)).await;
    assert!(shared.expect("a second create waited for the first").unwrap());
    let delete = tokio::spawn({
        let (pool, img) = (pool.clone(), img.clone());
        async move {
            let mut tx = db::begin(&pool).await.unwrap();
            let found = db::lock(&mut tx, Lock::Image, &img).await.unwrap();
            tx.rollback().await.unwrap();
            found
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delete.is_finished(), "a delete's lock did not wait for the creates");
    one.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!delete.is_finished(), "a delete's lock did not wait for the second create");
    two.commit().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), delete).await.unwrap().unwrap());
    s.stop().await;
}

/// An account deleted while creates in it are decided: either the delete is refused
/// (`account_in_use`, it holds what they made) or they are (the account is gone); never
/// an instance or a server group left in no account, which nobody could terminate.
async fn account_delete_creates_in_it(db: Db) {
    let s = Stack::start(stack(db)).await;
    let mut deleted = 0;
    for round in 0..6 {
        let name = format!("gone{round}");
        let c = s.account(&name).await;
        let id = c.whoami().await.unwrap().account.id;
        let creates = (0..6).map(|i| {
            let (c, image) = (c.clone(), s.image.clone());
            async move {
                if i % 2 == 0 {
                    c.create_instance(&inst_req(&image, &format!("i{i}"), None, &[])).await.map(drop)
                } else {
                    let req = CreateServerGroup { name: format!("g{i}"), policy: ServerGroupPolicy::Affinity };
                    c.create_server_group(&req).await.map(drop)
                }
            }
        });
        let (del, made) = tokio::join!(s.admin.delete_account(&id), join_all(creates));
        match del {
            Ok(()) => deleted += 1,
            Err(e) => assert_eq!(e.code(), "account_in_use", "round {round}: {e}"),
        }
        for m in made {
            if let Err(e) = m {
                assert!(matches!(e.code(), "not_found" | "token_revoked" | "unauthorized"), "round {round}: {e}");
            }
        }
    }
    let orphans: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM instances i WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = i.account_id)),
                (SELECT COUNT(*) FROM server_groups g WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = g.account_id))",
    )
    .fetch_one(&s.dcmgr().ctx.db)
    .await
    .unwrap();
    assert_eq!(orphans, (0, 0), "nothing is left in a deleted account ({deleted} of 6 deletes won)");
    s.stop().await;
}
