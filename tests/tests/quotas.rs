//! Per-account quotas through the API, on SQLite and PostgreSQL: every kind refused at
//! its limit with `quota_exceeded` naming the quota and the limit, usage shown, only an
//! admin sets them (unknown keys and negative values named), a deleted object frees its
//! share, and 50 concurrent creates against a limit of N get exactly N. Instance creates
//! of an account without limits run side by side on PostgreSQL (its row locked shared),
//! and a limit set among them holds for every create decided after it.

use futures::future::join_all;
use std::collections::BTreeMap;
use std::time::Duration;
use vdc_cli::client::ClientError;
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{image_request, on_both_databases, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    limits_usage_and_freeing,
    fifty_concurrent_creates_get_exactly_the_limit,
    a_limit_set_among_unlimited_creates_holds,
    a_burst_of_creates_is_decided_one_by_one,
    root_disks_count_against_their_quota,
);

/// (status, code, message) of an API error.
fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, message, .. }) => (status, code, message),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

/// Asserts a 422 `quota_exceeded` that names `key` and its `limit`.
fn exceeded<T: std::fmt::Debug>(r: Result<T, ClientError>, key: &str, limit: u64) {
    let (status, code, message) = err(r);
    assert_eq!((status, code.as_str()), (422, "quota_exceeded"), "{message}");
    assert!(message.starts_with(&format!("quota {key} is {limit} and ")), "{message}");
}

fn quotas(pairs: &[(&str, Option<i64>)]) -> SetQuotas {
    SetQuotas { quotas: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
}

fn usage(q: &AccountQuotas, key: QuotaKey) -> (u64, Option<u64>, bool) {
    let u = q.quotas.iter().find(|u| u.key == key).expect("every key is shown");
    (u.used, u.limit, u.set_for_account)
}

fn net(name: &str, cidr: &str) -> CreateNetwork {
    CreateNetwork { name: name.into(), cidr: cidr.into(), gateway: None, dhcp_start: None, dhcp_end: None }
}

fn group(name: &str) -> CreateSecurityGroup {
    CreateSecurityGroup { name: name.into(), description: String::new(), rules: vec![] }
}

fn key(name: &str) -> CreateKeyPair {
    CreateKeyPair { name: name.into(), public_key: None }
}

fn inst(image: &ImageId, name: &str, cpus: u32) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: image.clone(),
        hypervisor: None,
        cpus,
        memory_mib: 64,
        interfaces: vec![],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

fn vol(name: &str, size_mib: u64) -> CreateVolume {
    CreateVolume { name: name.into(), size_mib: Some(size_mib), snapshot_id: None, image_id: None }
}

const WAIT: Duration = Duration::from_secs(15);

async fn limits_usage_and_freeing(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.quotas = BTreeMap::from([(QuotaKey::Keypairs, 2), (QuotaKey::Networks, 3)]);
    o.external = Some(vdc_tests::test_external("203.0.113.20"));
    let s = Stack::start(o).await;
    let c = s.account("quota").await;
    let other = s.account("quota-other").await;

    // A tenant sees its own quotas: the configured defaults, unlimited where none is set.
    let own = c.own_quotas().await.unwrap();
    let id = own.account_id.clone();
    assert_eq!(own.quotas.len(), QuotaKey::ALL.len());
    assert_eq!(usage(&own, QuotaKey::Keypairs), (0, Some(2), false));
    assert_eq!(usage(&own, QuotaKey::Instances), (0, None, false));
    assert_eq!(c.account_quotas(&id).await.unwrap().account_id, id);
    // Another tenant's are unknown to it; only an admin sets them.
    assert_eq!(err(other.account_quotas(&id).await).0, 404);
    let (status, code, _) = err(c.set_account_quotas(&id, &quotas(&[("instances", Some(100))])).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    // Unknown keys and negative values are named; a request with one changes nothing.
    let (status, code, message) = err(s.admin.set_account_quotas(&id, &quotas(&[("cpus", Some(4))])).await);
    assert_eq!((status, code.as_str()), (422, "invalid_quota"));
    assert!(message.contains("unknown quota \"cpus\"") && message.contains("vcpus"), "{message}");
    let bad = quotas(&[("instances", Some(5)), ("vcpus", Some(-1))]);
    let (status, code, message) = err(s.admin.set_account_quotas(&id, &bad).await);
    assert_eq!((status, code.as_str()), (422, "invalid_quota"));
    assert!(message.contains("quota vcpus = -1 is negative"), "{message}");
    assert_eq!(usage(&c.own_quotas().await.unwrap(), QuotaKey::Instances), (0, None, false));

    let set = quotas(&[
        ("instances", Some(2)),
        ("vcpus", Some(3)),
        ("volumes", Some(1)),
        ("volume_gib", Some(1)),
        ("snapshots", Some(1)),
        ("security_groups", Some(1)),
        ("floating_ips", Some(1)),
        ("images", Some(1)),
        ("image_gib", Some(0)),
    ]);
    let after = s.admin.set_account_quotas(&id, &set).await.unwrap();
    assert_eq!(usage(&after, QuotaKey::Vcpus), (0, Some(3), true));
    assert_eq!(usage(&after, QuotaKey::Keypairs), (0, Some(2), false));

    // Key pairs (the configured default of 2), and the second time after a delete.
    let k1 = c.create_keypair(&key("k1")).await.unwrap();
    c.create_keypair(&key("k2")).await.unwrap();
    exceeded(c.create_keypair(&key("k3")).await, "keypairs", 2);
    c.delete_keypair(&k1.keypair.id).await.unwrap();
    c.create_keypair(&key("k3")).await.expect("a deleted key pair frees its quota");
    exceeded(c.create_keypair(&key("k4")).await, "keypairs", 2);
    // The other account has its own count.
    other.create_keypair(&key("k1")).await.unwrap();

    // Networks (default 3) and security groups (set to 1).
    for i in 0..3 {
        c.create_network(&net(&format!("n{i}"), &format!("10.{i}.0.0/24"))).await.unwrap();
    }
    exceeded(c.create_network(&net("n3", "10.3.0.0/24")).await, "networks", 3);
    let g = c.create_security_group(&group("g1")).await.unwrap();
    exceeded(c.create_security_group(&group("g2")).await, "security_groups", 1);
    c.delete_security_group(&g.id).await.unwrap();
    c.create_security_group(&group("g2")).await.expect("a deleted group frees its quota");

    // Instances: vCPUs and count; a terminated one frees both.
    let a = c.create_instance(&inst(&s.image, "a", 2)).await.unwrap();
    exceeded(c.create_instance(&inst(&s.image, "b", 2)).await, "vcpus", 3);
    c.create_instance(&inst(&s.image, "b", 1)).await.unwrap();
    exceeded(c.create_instance(&inst(&s.image, "c", 1)).await, "instances", 2);
    let q = c.own_quotas().await.unwrap();
    assert_eq!(usage(&q, QuotaKey::Instances).0, 2);
    assert_eq!(usage(&q, QuotaKey::Vcpus).0, 3);
    assert_eq!(usage(&q, QuotaKey::MemoryMib).0, 128);
    wait_state(&c, &a.resource.id, InstanceState::Running).await;
    let t = c.terminate_instance(&a.resource.id).await.unwrap();
    c.wait_job_ok(&t.job.id, WAIT).await.unwrap();
    c.create_instance(&inst(&s.image, "c", 2)).await.expect("a terminated instance frees its quota");

    // Volumes: count and GiB, at create and extend; snapshots.
    let v = c.create_volume(&vol("v1", 1000)).await.unwrap();
    c.wait_job_ok(&v.job.id, WAIT).await.unwrap();
    exceeded(c.create_volume(&vol("v2", 1)).await, "volumes", 1);
    exceeded(c.extend_volume(&v.resource.id, &ExtendVolume { size_mib: 1100 }).await, "volume_gib", 1);
    let grown = c.extend_volume(&v.resource.id, &ExtendVolume { size_mib: 1024 }).await.unwrap();
    c.wait_job_ok(&grown.job.id, WAIT).await.unwrap();
    let snap =
        c.create_snapshot(&CreateSnapshot { volume_id: v.resource.id.clone(), name: "s1".into() }).await.unwrap();
    c.wait_job_ok(&snap.job.id, WAIT).await.unwrap();
    exceeded(
        c.create_snapshot(&CreateSnapshot { volume_id: v.resource.id.clone(), name: "s2".into() }).await,
        "snapshots",
        1,
    );
    assert_eq!(usage(&c.own_quotas().await.unwrap(), QuotaKey::VolumeGib), (1, Some(1), true));

    // Floating IPs.
    let f = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    exceeded(c.create_floating_ip(&CreateFloatingIp::default()).await, "floating_ips", 1);
    c.delete_floating_ip(&f.id).await.unwrap();
    c.create_floating_ip(&CreateFloatingIp::default()).await.expect("a released address frees its quota");

    // Images: the count at create; the size when the data is known (image_gib 0: none).
    let img = c.create_image(&image_request("up1", ImageFormat::Raw)).await.unwrap();
    exceeded(c.create_image(&image_request("up2", ImageFormat::Raw)).await, "images", 1);
    exceeded(c.upload_image(&img.id, vec![0u8; 1 << 20]).await, "image_gib", 0);
    let failed = c.get_image(&img.id).await.unwrap();
    assert_eq!(failed.state, ImageState::Failed);
    assert!(failed.failure_reason.as_deref().unwrap_or_default().starts_with("quota_exceeded: quota image_gib"));
    c.delete_image(&img.id).await.unwrap();
    s.admin.set_account_quotas(&id, &quotas(&[("image_gib", Some(1))])).await.unwrap();
    let img = c.create_image(&image_request("up2", ImageFormat::Raw)).await.expect("a deleted image frees its quota");
    let up = c.upload_image(&img.id, vec![0u8; 1 << 20]).await.unwrap();
    assert_eq!(up.state, ImageState::Available);

    // Usage as the admin sees it; null returns a key to the default.
    let q = s.admin.account_quotas(&id).await.unwrap();
    assert_eq!(usage(&q, QuotaKey::Instances), (2, Some(2), true));
    assert_eq!(usage(&q, QuotaKey::Vcpus), (3, Some(3), true));
    assert_eq!(usage(&q, QuotaKey::Keypairs), (2, Some(2), false));
    assert_eq!(usage(&q, QuotaKey::Networks), (3, Some(3), false));
    assert_eq!(usage(&q, QuotaKey::Volumes), (1, Some(1), true));
    assert_eq!(usage(&q, QuotaKey::Snapshots), (1, Some(1), true));
    assert_eq!(usage(&q, QuotaKey::FloatingIps), (1, Some(1), true));
    assert_eq!(usage(&q, QuotaKey::Images), (1, Some(1), true));
    assert_eq!(usage(&q, QuotaKey::ImageGib), (1, Some(1), true));
    let q = s.admin.set_account_quotas(&id, &quotas(&[("instances", None)])).await.unwrap();
    assert_eq!(usage(&q, QuotaKey::Instances), (2, None, false));
    // The count is unlimited again: the next refusal is for vCPUs.
    exceeded(c.create_instance(&inst(&s.image, "d", 1)).await, "vcpus", 3);
    s.stop().await;
}

/// 50 creates at once of one kind against a limit of N: exactly N accepted, every
/// other one 422 `quota_exceeded`, and the usage says N.
async fn fifty_concurrent_creates_get_exactly_the_limit(db: Db) {
    let mut o = StackOptions::new(db);
    o.host_cpus = 64;
    o.host_memory_mib = 1 << 20;
    let s = Stack::start(o).await;
    let c = s.account("race").await;
    let id = c.own_quotas().await.unwrap().account_id;
    let limits = quotas(&[("instances", Some(7)), ("networks", Some(5)), ("keypairs", Some(6))]);
    s.admin.set_account_quotas(&id, &limits).await.unwrap();

    fn tally<T>(results: Vec<Result<T, ClientError>>) -> (usize, Vec<String>) {
        let mut refused = vec![];
        let mut ok = 0;
        for r in results {
            match r {
                Ok(_) => ok += 1,
                Err(ClientError::Api { status, code, .. }) => refused.push(format!("{status} {code}")),
                Err(e) => panic!("expected an API answer, got {e}"),
            }
        }
        refused.sort();
        refused.dedup();
        (ok, refused)
    }
    let check = |what: &str, (ok, refused): (usize, Vec<String>), n: usize| {
        assert_eq!(ok, n, "{what}: exactly the limit accepted");
        assert_eq!(refused, ["422 quota_exceeded"], "{what}");
    };
    let c = &c;
    let image = &s.image;
    let r = join_all((0..50).map(|i| async move { c.create_instance(&inst(image, &format!("i{i}"), 1)).await })).await;
    check("instances", tally(r), 7);
    let r = join_all(
        (0..50).map(|i| async move { c.create_network(&net(&format!("n{i}"), &format!("10.{i}.0.0/24"))).await }),
    )
    .await;
    check("networks", tally(r), 5);
    let r = join_all((0..50).map(|i| async move { c.create_keypair(&key(&format!("k{i}"))).await })).await;
    check("keypairs", tally(r), 6);
    let q = c.own_quotas().await.unwrap();
    assert_eq!(
        [QuotaKey::Instances, QuotaKey::Vcpus, QuotaKey::Networks, QuotaKey::Keypairs].map(|k| usage(&q, k).0),
        [7, 7, 5, 6]
    );
    assert_eq!(c.list_all_networks().await.unwrap().len(), 5, "no refused create left anything behind");
    s.stop().await;
}

/// 60 instance creates at once from an account without limits, and, once 15 are
/// accepted, a limit of 30 set among them. Every refusal is `quota_exceeded` with 30 in
/// use (so a refusal means at least 30 were accepted), nothing is counted twice or lost,
/// the next create is refused, and with the limit removed 10 more at once are accepted.
/// On PostgreSQL the creates hold the account's row shared until the limit is set, then
/// find it and are decided again under the whole lock.
async fn a_limit_set_among_unlimited_creates_holds(db: Db) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut o = StackOptions::new(db);
    o.host_cpus = 256;
    o.host_memory_mib = 1 << 22;
    let s = Stack::start(o).await;
    let c = s.account("burst").await;
    let id = c.own_quotas().await.unwrap().account_id;
    let accepted = AtomicUsize::new(0);
    let (c, image, accepted, admin) = (&c, &s.image, &accepted, &s.admin);
    let creates = join_all((0..60).map(|i| async move {
        let r = c.create_instance(&inst(image, &format!("b{i}"), 1)).await;
        if r.is_ok() {
            accepted.fetch_add(1, Ordering::SeqCst);
        }
        r
    }));
    let limit = async move {
        while accepted.load(Ordering::SeqCst) < 15 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        admin.set_account_quotas(&id, &quotas(&[("instances", Some(30))])).await.unwrap();
    };
    let (results, ()) = futures::join!(creates, limit);
    let mut ok = 0;
    for r in results {
        match r {
            Ok(_) => ok += 1,
            Err(e) => exceeded(Err::<(), _>(e), "instances", 30),
        }
    }
    assert!(ok >= 30, "a refusal is made with 30 in use, and 60 were asked: {ok} accepted");
    let q = c.own_quotas().await.unwrap();
    assert_eq!(usage(&q, QuotaKey::Instances), (ok as u64, Some(30), true));
    assert_eq!(c.list_all_instances().await.unwrap().len(), ok, "each accepted create made once");
    exceeded(c.create_instance(&inst(image, "after", 1)).await, "instances", 30);
    let id = q.account_id;
    admin.set_account_quotas(&id, &quotas(&[("instances", None)])).await.unwrap();
    let r = join_all((0..10).map(|i| async move { c.create_instance(&inst(image, &format!("m{i}"), 1)).await })).await;
    assert!(r.iter().all(Result::is_ok), "with the limit removed: {:?}", r.iter().find(|r| r.is_err()));
    assert_eq!(usage(&c.own_quotas().await.unwrap(), QuotaKey::Instances).0, ok as u64 + 10);
    s.stop().await;
}

/// 48 creates at once from two accounts: one capped at 4 instances, and some asking for
/// more memory than any host has. Each is decided as if it came alone: the capped
/// account gets exactly 4 and `quota_exceeded` for the rest, the oversized ones
/// `no_capacity`, every other one is accepted once and runs. On SQLite the creates that
/// wait for the writer are committed together, each after a savepoint, and a refused
/// one is undone alone (`/metrics` shows creates committed together).
async fn a_burst_of_creates_is_decided_one_by_one(db: Db) {
    let sqlite = matches!(db, Db::Sqlite);
    let mut o = StackOptions::new(db);
    o.host_cpus = 64;
    o.host_memory_mib = 1 << 20;
    let s = Stack::start(o).await;
    let capped = s.account("capped").await;
    let free = s.account("free").await;
    let id = capped.own_quotas().await.unwrap().account_id;
    s.admin.set_account_quotas(&id, &quotas(&[("instances", Some(4))])).await.unwrap();
    let (capped, free, image) = (&capped, &free, &s.image);
    let results = join_all((0..48).map(|i| async move {
        let r = match i % 3 {
            0 => capped.create_instance(&inst(image, &format!("c{i}"), 1)).await,
            1 => free.create_instance(&inst(image, &format!("f{i}"), 1)).await,
            _ => {
                free.create_instance(&CreateInstance { memory_mib: 4 << 20, ..inst(image, &format!("big{i}"), 1) })
                    .await
            }
        };
        (i % 3, r)
    }))
    .await;
    let mut accepted = vec![];
    let mut refused = BTreeMap::<(u64, String), usize>::new();
    for (kind, r) in results {
        match r {
            Ok(a) => {
                assert_ne!(kind, 2, "an instance larger than any host was accepted");
                accepted.push((kind, a.resource.id));
            }
            Err(e) => *refused.entry((kind, err::<()>(Err(e)).1)).or_default() += 1,
        }
    }
    let refused: Vec<_> = refused.into_iter().collect();
    assert_eq!(
        refused,
        [((0, "quota_exceeded".to_owned()), 12), ((2, "no_capacity".to_owned()), 16)],
        "only the capped account's creates past its limit and the oversized ones are refused"
    );
    assert_eq!(accepted.iter().filter(|(k, _)| *k == 0).count(), 4);
    assert_eq!(accepted.iter().filter(|(k, _)| *k == 1).count(), 16);
    for (kind, id) in &accepted {
        let c = if *kind == 0 { capped } else { free };
        wait_state(c, id, InstanceState::Running).await;
    }
    // Nothing doubled, nothing of a refused create left behind.
    assert_eq!(capped.list_all_instances().await.unwrap().len(), 4);
    assert_eq!(free.list_all_instances().await.unwrap().len(), 16);
    let q = free.own_quotas().await.unwrap();
    assert_eq!(usage(&q, QuotaKey::Instances).0, 16);
    let hosts = s.admin.list_all_host_nodes().await.unwrap();
    assert_eq!(hosts.iter().map(|h| h.cpus_used).sum::<u32>(), 20, "reservations: {hosts:?}");
    let metrics = reqwest::get(format!("{}/metrics", s.url())).await.unwrap().text().await.unwrap();
    let recorded = |how: &str| -> u64 {
        let series = format!("vdc_instance_creates_recorded_total{{transaction=\"{how}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&series)).unwrap_or_else(|| panic!("{series} in\n{metrics}"));
        line[series.len()..].parse().unwrap()
    };
    assert_eq!(recorded("shared") + recorded("own"), 20, "each accepted create committed once");
    if sqlite {
        assert!(recorded("shared") > 0, "no creates were committed together");
    } else {
        assert_eq!(recorded("shared"), 0, "PostgreSQL commits each create alone");
    }
    s.stop().await;
}

/// `root_disk_gib` limits the root disks an account's instances book, stopped ones too:
/// a tenant capped in vCPUs and memory booked a host's whole disk with one stopped
/// instance of a 38 GiB root disk (red team, 2026-12-07).
async fn root_disks_count_against_their_quota(db: Db) {
    let mut o = StackOptions::new(db);
    o.host_cpus = 64;
    o.host_memory_mib = 1 << 20;
    let s = Stack::start(o).await;
    let c = s.account("disks").await;
    let id = c.own_quotas().await.unwrap().account_id;
    s.admin.set_account_quotas(&id, &quotas(&[("root_disk_gib", Some(10))])).await.unwrap();
    let mut disk = image_request("disk", ImageFormat::Qcow2);
    disk.source = Some("/var/lib/vdc/images/debian.qcow2".into());
    disk.public = true;
    let disk = s.admin.create_image(&disk).await.unwrap();
    let sized = |name: &str, gib: u64| CreateInstance { root_disk_size: Some(gib << 30), ..inst(&disk.id, name, 1) };
    let big = c.create_instance(&sized("big", 6)).await.unwrap().resource;
    wait_state(&c, &big.id, InstanceState::Running).await;
    c.stop_instance(&big.id).await.unwrap();
    wait_state(&c, &big.id, InstanceState::Stopped).await;
    let (status, code, message) = err(c.create_instance(&sized("more", 6)).await);
    assert_eq!((status, code.as_str()), (422, "quota_exceeded"), "{message}");
    assert!(message.contains("quota root_disk_gib is 10 and 6 of it is in use; this needs 6144 MiB more"), "{message}");
    assert_eq!(usage(&c.own_quotas().await.unwrap(), QuotaKey::RootDiskGib), (6, Some(10), true));
    // At once: exactly what the 4 GiB left hold.
    let c = &c;
    let r = join_all((0..10).map(|i| async move { c.create_instance(&sized(&format!("d{i}"), 1)).await })).await;
    assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 4, "{r:?}");
    // Terminated, its disk is free again.
    c.terminate_instance(&big.id).await.unwrap();
    wait_state(c, &big.id, InstanceState::Terminated).await;
    c.create_instance(&sized("again", 6)).await.unwrap();
    s.stop().await;
}
