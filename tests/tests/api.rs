//! The Web API against a fresh stack (dcmgr + simulated agents), every scenario on SQLite
//! and on PostgreSQL.

use std::time::Duration;
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::bus::{self, subject};
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{eventually, on_both_databases, wait_converged, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    auth_and_api_info,
    accounts_are_admin_only,
    keypairs,
    images,
    networks,
    networks_keep_clear_of_the_external_network,
    security_groups,
    instance_lifecycle,
    instance_bad_input,
    cross_account_access_is_404,
    volumes_and_snapshots,
    pagination,
    scheduler_never_overcommits,
    overcommit_follows_the_ratios,
    placement_spreads_or_packs,
    reconciler_survives_message_loss,
    agent_crash_goes_offline_and_converges,
    a_failed_instance_is_not_started_again_when_its_host_returns,
    a_stopped_instance_terminated_leaves_no_port,
    an_idempotency_key_makes_a_retry_safe,
    idempotency_claims_expire_and_are_taken_over,
    dcmgr_restart_keeps_everything,
    untrusted_bus_messages_are_dropped,
    stale_reports_are_dropped,
    a_guest_this_database_never_heard_of_is_left_alone,
    security_group_changes_reach_running_guests,
    tunnel_peers_follow_placement,
    floating_ips,
    routers_give_their_address_back,
    floating_ips_leave_the_routers_reserve,
    gone_resources_leave_their_lists_after_an_hour,
    ended_rows_leave_the_database_after_the_retention,
);

/// The status and code of an API error; panics if the call succeeded.
fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn net_req(name: &str, cidr: &str) -> CreateNetwork {
    CreateNetwork { name: name.into(), cidr: cidr.into(), gateway: None, dhcp_start: None, dhcp_end: None }
}

fn inst_req(image: &ImageId, name: &str) -> CreateInstance {
    CreateInstance {
        name: Some(name.into()),
        image_id: image.clone(),
        hypervisor: None,
        cpus: 1,
        memory_mib: 256,
        interfaces: vec![],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

fn rule(proto: Protocol, port: Option<u16>, cidr: Option<&str>, group: Option<&SecurityGroupId>) -> RuleSpec {
    RuleSpec {
        direction: Direction::Ingress,
        protocol: proto,
        port_min: port,
        port_max: port,
        cidr: cidr.map(Into::into),
        group: group.cloned(),
    }
}

async fn wait_job(c: &Client, job: &Job) -> Job {
    c.wait_job(&job.id, Duration::from_secs(15)).await.expect("job finishes")
}

async fn auth_and_api_info(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let info = s.admin.api_info().await.unwrap();
    assert_eq!(info.api_version, API_VERSION);
    assert!(info.extensions.iter().any(|e| e == "instances"));

    let http = reqwest::Client::new();
    let r = http.get(format!("{}/api/v1/instances", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "unauthorized");
    let bad = Client::new(s.url(), "vdc_not_a_token");
    assert_eq!(err(bad.list_instances(&ListQuery::default()).await), (401, "unauthorized".into()));
    // The scheme in any case (RFC 7235): `bearer …` was refused.
    for (scheme, status) in [("bearer", 200), ("BEARER", 200), ("Basic", 401), ("Bearer_", 401)] {
        let r = http
            .get(format!("{}/api/v1/whoami", s.url()))
            .header("authorization", format!("{scheme} {}", s.admin_token))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{scheme}");
    }
    // A malformed body gets our error shape, not a plain-text rejection.
    let r = http
        .post(format!("{}/api/v1/networks", s.url()))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body(r#"{"name": "x", "cidr": 5, "surprise": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error.code, "invalid_body");
    // Only a JSON object, sent as JSON, is a body; white space before it is fine.
    for (ctype, body, status) in [
        ("application/json", "[]", 400),
        ("application/json", "\"x\"", 400),
        ("application/json", "{\"name\": \"x\"", 400),
        ("text/plain", "{\"name\": \"ws\", \"cidr\": \"10.9.0.0/24\"}", 400),
        ("application/json; charset=utf-8", " \n{\"name\": \"ws\", \"cidr\": \"10.9.0.0/24\"}", 201),
    ] {
        let r = http
            .post(format!("{}/api/v1/networks", s.url()))
            .bearer_auth(&s.admin_token)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{ctype} {body:?}");
        if status == 400 {
            assert_eq!(r.json::<ErrorBody>().await.unwrap().error.code, "invalid_body", "{ctype} {body:?}");
        }
    }
    // Too large: says the limit (it said "Failed to buffer the request body"). A client
    // of its own: the server closes a connection whose body it did not read, and a pooled
    // connection would fail the next request.
    let big = format!("{{\"name\": \"x\", \"description\": \"{}\"}}", "a".repeat(3 << 20));
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/security_groups", s.url()))
        .bearer_auth(&s.admin_token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e = r.json::<ErrorBody>().await.unwrap().error;
    assert_eq!(
        (e.code.as_str(), e.message.as_str()),
        ("invalid_body", "the request body is over 2 MiB, the most a JSON body may be")
    );
    let r = http.get(format!("{}/api/v1/nothing-here", s.url())).bearer_auth(&s.admin_token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error.code, "not_found");
    // A method a path does not take: 405, with Allow and the same error shape (it had
    // an empty body).
    let r = http.put(format!("{}/api/v1/instances", s.url())).bearer_auth(&s.admin_token).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow:?}");
    assert_eq!(r.json::<ErrorBody>().await.unwrap().error.code, "method_not_allowed");
    s.stop().await;
}

async fn accounts_are_admin_only(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    assert_eq!(err(alice.create_account(&CreateAccount { name: "eve".into(), admin: false }).await).0, 403);
    assert_eq!(err(alice.list_accounts(&ListQuery::default()).await).0, 403);
    assert_eq!(err(alice.list_host_nodes(&ListQuery::default()).await).0, 403);
    assert_eq!(err(s.admin.create_account(&CreateAccount { name: "alice".into(), admin: false }).await).0, 409);
    assert_eq!(err(s.admin.create_account(&CreateAccount { name: "bad name!".into(), admin: false }).await).0, 400);
    let accounts = s.admin.list_all_accounts().await.unwrap();
    let a = accounts.iter().find(|a| a.name == "alice").unwrap();
    // A second token works; deleting the account revokes both.
    let t2 = s.admin.create_account_token(&a.id).await.unwrap();
    let alice2 = Client::new(s.url(), t2.token);
    alice2.list_instances(&ListQuery::default()).await.unwrap();
    // Not while it holds something: its network, key pair and image would be left
    // behind for good (the image's data too, and a shared one usable by others).
    let net = alice.create_network(&net_req("kept", "10.77.0.0/24")).await.unwrap();
    let key = alice.create_keypair(&CreateKeyPair { name: "k".into(), public_key: None }).await.unwrap();
    let img = alice.create_image(&vdc_tests::image_request("i", ImageFormat::Raw)).await.unwrap();
    let held = s.admin.delete_account(&a.id).await.unwrap_err();
    assert_eq!(held.code(), "account_in_use");
    assert!(held.to_string().contains("still holds 1 image, 1 network, 1 key pair:"), "{held}");
    alice.delete_network(&net.id).await.unwrap();
    alice.delete_keypair(&key.keypair.id).await.unwrap();
    alice.delete_image(&img.id).await.unwrap();
    s.admin.delete_account(&a.id).await.unwrap();
    assert_eq!(err(alice2.list_instances(&ListQuery::default()).await).0, 401);
    assert_eq!(err(alice.list_instances(&ListQuery::default()).await).0, 401);
    s.stop().await;
}

async fn keypairs(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("kp").await;
    let gen = c.create_keypair(&CreateKeyPair { name: "gen".into(), public_key: None }).await.unwrap();
    let private = gen.private_key.expect("a generated key returns its private half once");
    assert!(private.contains("BEGIN OPENSSH PRIVATE KEY"));
    assert!(gen.keypair.public_key.starts_with("ssh-ed25519 "));
    assert!(gen.keypair.fingerprint.starts_with("SHA256:"));
    // It is never shown again.
    let again = c.get_keypair(&gen.keypair.id).await.unwrap();
    assert_eq!(again.public_key, gen.keypair.public_key);

    let imported = c
        .create_keypair(&CreateKeyPair { name: "mine".into(), public_key: Some(gen.keypair.public_key.clone()) })
        .await
        .unwrap();
    assert!(imported.private_key.is_none());
    assert_eq!(imported.keypair.fingerprint, gen.keypair.fingerprint);

    let bad = CreateKeyPair { name: "bad".into(), public_key: Some("ssh-rsa AAAAnot-base64!!".into()) };
    assert_eq!(err(c.create_keypair(&bad).await), (400, "invalid_public_key".into()));
    let bad = CreateKeyPair { name: "bad".into(), public_key: Some("hello".into()) };
    assert_eq!(err(c.create_keypair(&bad).await).1, "invalid_public_key");
    assert_eq!(err(c.create_keypair(&CreateKeyPair { name: "gen".into(), public_key: None }).await).1, "name_taken");

    c.delete_keypair(&imported.keypair.id).await.unwrap();
    assert_eq!(err(c.get_keypair(&imported.keypair.id).await).0, 404);
    s.stop().await;
}

async fn images(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("img").await;
    let op = &s.admin;
    let req = |name: &str| CreateImage {
        name: name.into(),
        format: ImageFormat::Qcow2,
        arch: Arch::X86_64,
        hypervisors: vec![HypervisorKind::Kvm, HypervisorKind::Qemu],
        source: Some("/var/lib/vdc/images/debian.qcow2".into()),
        checksum: Some(format!("sha256:{}", "ab".repeat(32))),
        initrd: None,
        kernel_cmdline: None,
        boot_mode: Default::default(),
        kernel_id: None,
        min_disk: None,
        min_memory: None,
        os: None,
        public: false,
        default_user: None,
    };
    // A tenant can never name a host file (it would be booted and copied as root).
    for source in ["/etc/shadow", "file:///etc/shadow", "builtin:../../etc"] {
        let mut r = req("steal");
        r.source = Some(source.into());
        assert_eq!(err(c.create_image(&r).await).0, 403, "{source}");
    }
    assert!(c.list_all_images().await.unwrap().iter().all(|i| i.name != "steal"), "nothing was recorded");
    // URLs are imported by dcmgr, never from loopback or the metadata address (no SSRF):
    // the image fails (tests/images.rs has the rest).
    for (i, source) in ["http://127.0.0.1:9000/x", "https://169.254.169.254/latest/meta-data/"].into_iter().enumerate()
    {
        let mut r = req(&format!("url{i}"));
        r.source = Some(source.into());
        r.checksum = None;
        let img = c.create_image(&r).await.unwrap();
        let img = c.wait_image(&img.id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(img.state, ImageState::Failed, "{source}");
        assert!(img.failure_reason.unwrap().starts_with("forbidden_address"), "{source}");
    }
    // An operator's private image is visible to the operator only; public ones to all.
    let img = op.create_image(&req("debian")).await.unwrap();
    assert_eq!(img.hypervisors, vec![HypervisorKind::Kvm, HypervisorKind::Qemu]);
    let mine = op.list_all_images().await.unwrap();
    assert!(mine.iter().any(|i| i.id == img.id) && mine.iter().any(|i| i.id == s.image));
    let theirs = c.list_all_images().await.unwrap();
    assert!(!theirs.iter().any(|i| i.id == img.id) && theirs.iter().any(|i| i.id == s.image));
    assert_eq!(err(c.get_image(&img.id).await).0, 404);
    assert_eq!(
        err(c.delete_image(&s.image).await),
        (403, "not_image_owner".into()),
        "a public image is not the tenant's"
    );

    let mut bad = req("x");
    bad.checksum = Some("md5:123".into());
    assert_eq!(err(op.create_image(&bad).await), (400, "invalid_checksum".into()));
    let mut bad = req("x");
    bad.hypervisors.clear();
    assert_eq!(err(op.create_image(&bad).await).0, 400);
    op.delete_image(&img.id).await.unwrap();
    assert_eq!(err(op.get_image(&img.id).await).0, 404);
    s.stop().await;
}

async fn networks(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("net").await;
    let other = s.account("other").await;
    let n = c.create_network(&net_req("a", "10.0.0.0/24")).await.unwrap();
    assert_eq!(
        (n.gateway.to_string().as_str(), n.dhcp_start.to_string().as_str(), n.dhcp_end.to_string().as_str()),
        ("10.0.0.1", "10.0.0.2", "10.0.0.254")
    );
    assert_eq!(err(c.create_network(&net_req("b", "10.0.0.128/25")).await), (409, "cidr_overlap".into()));
    assert_eq!(err(c.create_network(&net_req("b", "10.0.0.0/16")).await), (409, "cidr_overlap".into()));
    // Another account may use the same range, with its own VNI.
    let n2 = other.create_network(&net_req("a", "10.0.0.0/24")).await.unwrap();
    assert_ne!(n.vni, n2.vni);
    let n3 = c.create_network(&net_req("c", "10.0.1.0/24")).await.unwrap();
    assert_ne!(n3.vni, n.vni);
    assert_eq!(err(c.create_network(&net_req("d", "10.0.2.7/24")).await), (400, "invalid_cidr".into()));
    assert_eq!(err(c.create_network(&net_req("d", "fish")).await).0, 400);
    // Reserved ranges, and addresses whose leading zeros some tools read as octal.
    for cidr in ["127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/8", "0.0.0.0/8", "010.050.005.000/24"] {
        assert_eq!(err(c.create_network(&net_req("d", cidr)).await), (400, "invalid_cidr".into()), "{cidr}");
    }
    // Names that look like another: bidirectional overrides, zero-width characters, tabs.
    // Nor path-like ones, which a bundle cannot carry: "web/front" made the account's
    // export fail, with no rename to mend it.
    // Nor the shape of a generated network ID: a deleted one, looked up by the CLI as a
    // name, would be another network.
    let id_shaped = format!("nw-{}", &NetworkId::generate().as_str()[3..]);
    for name in
        ["evil\u{202E}gnp.exe", "a\u{200B}b", "a\tb", "\u{FEFF}a", "web/front", "a\\b", "..", "x..y", &id_shaped]
    {
        assert_eq!(
            err(c.create_network(&net_req(name, "10.0.9.0/24")).await),
            (400, "invalid_name".into()),
            "{name:?}"
        );
    }
    // One name per account: a second "c" is refused, and names nothing new.
    assert_eq!(err(c.create_network(&net_req("c", "10.0.8.0/24")).await), (409, "name_taken".into()));
    assert_eq!(c.list_all_networks().await.unwrap().len(), 2);
    let mut bad = net_req("e", "10.0.3.0/24");
    bad.gateway = Some("10.0.4.1".into());
    assert_eq!(err(c.create_network(&bad).await).0, 400);
    // In use: refused; free: deleted.
    let mut req = inst_req(&s.image, "i");
    req.interfaces = vec![CreateInterface { network_id: n.id.clone(), security_groups: vec![], ip: None }];
    let a = c.create_instance(&req).await.unwrap();
    assert_eq!(a.resource.interfaces[0].ip.to_string(), "10.0.0.2");
    assert_eq!(err(c.delete_network(&n.id).await), (409, "network_in_use".into()));
    let a = c.terminate_instance(&a.resource.id).await.unwrap();
    wait_job(&c, &a.job).await;
    wait_state(&c, &a.resource.id, InstanceState::Terminated).await;
    c.delete_network(&n.id).await.unwrap();
    s.stop().await;
}

/// A tenant network inside the site's external network (a private range here) would
/// keep its guests' traffic to floating IPs and routers on the tenant network.
async fn networks_keep_clear_of_the_external_network(db: Db) {
    let mut o = StackOptions::new(db);
    o.external = Some(vdc_dcmgr::config::ExternalConfig {
        cidr: "192.168.213.0/24".into(),
        gateway: "192.168.213.1".into(),
        pool_start: "192.168.213.10".into(),
        pool_end: "192.168.213.20".into(),
        router_reserve: None,
    });
    let s = Stack::start(o).await;
    let c = s.account("ext").await;
    for cidr in ["192.168.213.0/24", "192.168.213.64/26", "192.168.0.0/16"] {
        let e = c.create_network(&net_req("inside", cidr)).await.unwrap_err().to_string();
        assert!(e.contains("overlaps this site's external network 192.168.213.0/24"), "{cidr}: {e}");
    }
    assert_eq!(err(c.create_network(&net_req("inside", "192.168.213.0/24")).await), (409, "cidr_overlap".into()));
    c.create_network(&net_req("beside", "192.168.214.0/24")).await.unwrap();
    s.stop().await;
}

async fn security_groups(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("sg").await;
    let web = c
        .create_security_group(&CreateSecurityGroup {
            name: "web".into(),
            description: "ssh from anywhere".into(),
            rules: vec![rule(Protocol::Tcp, Some(22), Some("0.0.0.0/0"), None)],
        })
        .await
        .unwrap();
    assert_eq!(web.rules.len(), 1);
    // A rule given twice at create is refused, as one added twice is (it was kept twice).
    let twice = CreateSecurityGroup {
        name: "twice".into(),
        description: String::new(),
        rules: vec![rule(Protocol::Tcp, Some(22), Some("0.0.0.0/0"), None); 2],
    };
    assert_eq!(err(c.create_security_group(&twice).await), (409, "duplicate_rule".into()));
    // A description is what a bundle carries: one line of at most 255 visible characters
    // (1,024 bytes of anything were taken, and the group's bundle refused at import).
    for bad in ["x".repeat(256), "two\nlines".into(), "\u{202E}txt.exe".into()] {
        let req = CreateSecurityGroup { name: "described".into(), description: bad, rules: vec![] };
        assert_eq!(err(c.create_security_group(&req).await), (400, "invalid_description".into()));
    }
    let req = CreateSecurityGroup { name: "described".into(), description: "é".repeat(255), rules: vec![] };
    c.create_security_group(&req).await.unwrap();
    // A rule that refers to a group, including itself.
    let web = c.add_security_group_rule(&web.id, &rule(Protocol::Icmp, None, None, Some(&web.id))).await.unwrap();
    assert_eq!(web.rules.len(), 2);
    assert_eq!(web.rules[1].spec.group.as_ref(), Some(&web.id));
    assert_eq!(err(c.add_security_group_rule(&web.id, &web.rules[0].spec).await).1, "duplicate_rule");
    let bad = rule(Protocol::Tcp, Some(22), None, None);
    assert_eq!(err(c.add_security_group_rule(&web.id, &bad).await), (400, "invalid_rule".into()));
    let bad = RuleSpec { port_min: Some(30), port_max: Some(20), ..rule(Protocol::Tcp, None, Some("0.0.0.0/0"), None) };
    assert_eq!(err(c.add_security_group_rule(&web.id, &bad).await).0, 400);
    // Egress rules: the same checks as ingress; the same spec in the other direction is
    // another rule.
    let out = RuleSpec { direction: Direction::Egress, ..web.rules[0].spec.clone() };
    let web = c.add_security_group_rule(&web.id, &out).await.unwrap();
    assert_eq!(web.rules.len(), 3);
    assert!(web.rules.iter().any(|r| r.spec.direction == Direction::Egress && r.spec.port_min == Some(22)));
    assert_eq!(err(c.add_security_group_rule(&web.id, &out).await).1, "duplicate_rule");
    let bad = RuleSpec { direction: Direction::Egress, ..rule(Protocol::Tcp, Some(22), None, None) };
    assert_eq!(err(c.add_security_group_rule(&web.id, &bad).await), (400, "invalid_rule".into()));
    let bad = RuleSpec { direction: Direction::Egress, ..rule(Protocol::Any, Some(1), Some("0.0.0.0/0"), None) };
    assert_eq!(err(c.add_security_group_rule(&web.id, &bad).await), (400, "invalid_rule".into()));
    let eid = web.rules.iter().find(|r| r.spec.direction == Direction::Egress).unwrap().id.clone();
    let web = c.delete_security_group_rule(&web.id, &eid).await.unwrap();
    let ghost: SecurityGroupId = "sg-doesnotexist".parse().unwrap();
    assert_eq!(err(c.add_security_group_rule(&web.id, &rule(Protocol::Any, None, None, Some(&ghost))).await).0, 404);
    let web = c.delete_security_group_rule(&web.id, &web.rules[0].id).await.unwrap();
    assert_eq!(web.rules.len(), 1);
    c.delete_security_group(&web.id).await.unwrap();
    assert_eq!(err(c.get_security_group(&web.id).await).0, 404);
    s.stop().await;
}

async fn instance_lifecycle(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("life").await;
    let key = c.create_keypair(&CreateKeyPair { name: "k".into(), public_key: None }).await.unwrap();
    let net = c.create_network(&net_req("n", "10.1.0.0/24")).await.unwrap();
    let sg = c
        .create_security_group(&CreateSecurityGroup {
            name: "g".into(),
            description: String::new(),
            rules: vec![rule(Protocol::Tcp, Some(22), Some("0.0.0.0/0"), None)],
        })
        .await
        .unwrap();
    let mut req = inst_req(&s.image, "web1");
    req.ssh_key_id = Some(key.keypair.id.clone());
    req.user_data = Some("#cloud-config\n".into());
    req.interfaces =
        vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![sg.id.clone()], ip: None }];
    let acc = c.create_instance(&req).await.unwrap();
    assert_eq!(acc.resource.state, InstanceState::Pending);
    assert_eq!(acc.job.state, JobState::Running);
    let id = acc.resource.id.clone();
    let job = wait_job(&c, &acc.job).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let i = wait_state(&c, &id, InstanceState::Running).await;
    assert!(i.host_node_id.is_some());
    assert_eq!(i.interfaces[0].security_groups, vec![sg.id.clone()]);
    // The interface is plugged by the host's nwagent.
    eventually(Duration::from_secs(5), || async {
        let i = c.get_instance(&id).await.ok()?;
        (i.interfaces[0].state == InterfaceState::Active).then_some(())
    })
    .await
    .expect("interface becomes active");
    let console = c.console_log(&id).await.unwrap();
    assert!(console.output.contains(id.as_str()), "{}", console.output);

    // stop releases the host; stop again is success, not an error, and a repeated
    // request while the first is under way does not cancel it.
    let a = c.stop_instance(&id).await.unwrap();
    let repeat = c.stop_instance(&id).await.unwrap();
    assert_eq!(repeat.job.state, JobState::Succeeded);
    assert_eq!(wait_job(&c, &a.job).await.state, JobState::Succeeded);
    let i = c.get_instance(&id).await.unwrap();
    assert_eq!((i.state, i.host_node_id.is_none()), (InstanceState::Stopped, true));
    let again = c.stop_instance(&id).await.unwrap();
    assert_eq!(again.job.state, JobState::Succeeded);
    assert_eq!(err(c.reboot_instance(&id).await), (409, "invalid_state".into()));
    assert_eq!(err(c.halt_instance(&id).await).0, 409);

    let a = c.start_instance(&id).await.unwrap();
    assert_eq!(wait_job(&c, &a.job).await.state, JobState::Succeeded);
    wait_state(&c, &id, InstanceState::Running).await;
    let a = c.reboot_instance(&id).await.unwrap();
    assert_eq!(wait_job(&c, &a.job).await.state, JobState::Succeeded);
    assert_eq!(c.console_log(&id).await.unwrap().output.matches("boot ").count(), 3, "booted, started, rebooted");
    // halt keeps the host; poweron starts it there.
    let a = c.halt_instance(&id).await.unwrap();
    wait_job(&c, &a.job).await;
    let halted = wait_state(&c, &id, InstanceState::Halted).await;
    assert!(halted.host_node_id.is_some());
    let a = c.poweron_instance(&id).await.unwrap();
    wait_job(&c, &a.job).await;
    let on = wait_state(&c, &id, InstanceState::Running).await;
    assert_eq!(on.host_node_id, halted.host_node_id);

    let a = c.terminate_instance(&id).await.unwrap();
    assert_eq!(wait_job(&c, &a.job).await.state, JobState::Succeeded);
    let gone = c.get_instance(&id).await.unwrap();
    assert_eq!(gone.state, InstanceState::Terminated);
    assert!(gone.interfaces.is_empty(), "interfaces and addresses are released");
    assert_eq!(c.terminate_instance(&id).await.unwrap().job.state, JobState::Succeeded);
    assert_eq!(err(c.start_instance(&id).await).0, 409);
    // Capacity is back on the hosts and the host forgot the guest.
    let hosts = s.admin.list_all_host_nodes().await.unwrap();
    assert!(hosts.iter().all(|h| h.cpus_used == 0 && h.memory_used_mib == 0), "{hosts:?}");
    assert!(s.hosts.iter().all(|h| h.hva_driver.as_ref().unwrap().is_empty()));
    s.stop().await;
}

async fn instance_bad_input(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hypervisors = vec![HypervisorKind::Qemu];
    let s = Stack::start(opts).await;
    let c = s.account("bad").await;
    let ghost: ImageId = "img-nosuchimage".parse().unwrap();
    assert_eq!(err(c.create_instance(&inst_req(&ghost, "x")).await), (404, "not_found".into()));
    let mut r = inst_req(&s.image, "x");
    r.memory_mib = 8 << 20;
    assert_eq!(err(c.create_instance(&r).await), (400, "invalid_memory".into()));
    r.memory_mib = 1 << 20;
    let (status, code) = err(c.create_instance(&r).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"));
    let mut r = inst_req(&s.image, "x");
    r.cpus = 0;
    assert_eq!(err(c.create_instance(&r).await).1, "invalid_cpus");
    // A container image, but no host offers lxc.
    let mut tar = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Lxc]);
    (tar.name, tar.format, tar.source, tar.initrd) =
        ("tiny-lxc".into(), ImageFormat::Tar, Some("builtin:tiny-rootfs".into()), None);
    let tar = s.admin.create_image(&tar).await.unwrap();
    let r = inst_req(&tar.id, "x");
    assert_eq!(err(c.create_instance(&r).await), (422, "no_capacity".into()));
    let only_kvm = s
        .admin
        .create_image(&CreateImage {
            name: "kvm-only".into(),
            format: ImageFormat::Raw,
            arch: Arch::X86_64,
            hypervisors: vec![HypervisorKind::Kvm],
            source: Some("/var/lib/vdc/images/x.raw".into()),
            checksum: None,
            initrd: None,
            kernel_cmdline: None,
            boot_mode: Default::default(),
            kernel_id: None,
            min_disk: None,
            min_memory: None,
            os: None,
            public: true,
            default_user: None,
        })
        .await
        .unwrap();
    let mut r = inst_req(&only_kvm.id, "x");
    r.hypervisor = Some(HypervisorKind::Lxc);
    assert_eq!(err(c.create_instance(&r).await), (400, "unsupported_hypervisor".into()));
    // Unknown references in the body are 404s that name the resource.
    let mut r = inst_req(&s.image, "x");
    r.ssh_key_id = Some("ssh-nosuchkey".parse().unwrap());
    assert_eq!(err(c.create_instance(&r).await).0, 404);
    let net = c.create_network(&net_req("n", "10.2.0.0/29")).await.unwrap();
    let mut r = inst_req(&s.image, "x");
    r.interfaces =
        vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: Some("10.2.0.99".into()) }];
    assert_eq!(err(c.create_instance(&r).await), (400, "invalid_ip".into()));
    r.interfaces[0].ip = Some("10.2.0.1".into());
    let gw = c.create_instance(&r).await.unwrap_err().to_string();
    assert!(gw.contains("ip 10.2.0.1 is the gateway of network"), "{gw}");
    // One group twice on an interface: refused, naming it (it was a 503 `busy`).
    let sg = c
        .create_security_group(&CreateSecurityGroup { name: "twice".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    r.interfaces[0].ip = None;
    r.interfaces[0].security_groups = vec![sg.id.clone(), sg.id.clone()];
    assert_eq!(err(c.create_instance(&r).await), (400, "duplicate_security_group".into()));
    r.interfaces[0].security_groups = vec![];
    r.interfaces[0].ip = Some("10.2.0.3".into());
    let fixed = c.create_instance(&r).await.unwrap();
    assert_eq!(fixed.resource.interfaces[0].ip.to_string(), "10.2.0.3");
    assert_eq!(err(c.create_instance(&r).await), (409, "ip_in_use".into()));
    // A /29 has 5 addresses for guests (.2–.6); the sixth request finds it full.
    r.interfaces[0].ip = None;
    for _ in 0..4 {
        c.create_instance(&r).await.unwrap();
    }
    assert_eq!(err(c.create_instance(&r).await), (422, "network_full".into()));
    // A failed start ends in failed, with the reason.
    let failing = c.create_instance(&inst_req(&s.image, "simfail-1")).await.unwrap();
    let job = wait_job(&c, &failing.job).await;
    assert_eq!(job.state, JobState::Failed);
    let f = wait_state(&c, &failing.resource.id, InstanceState::Failed).await;
    assert!(f.failure_reason.unwrap().contains("injected failure"));
    // Nothing half-created: the refused requests left no instances behind.
    let all = c.list_all_instances().await.unwrap();
    assert_eq!(all.len(), 6, "{all:?}");
    s.stop().await;
}

async fn cross_account_access_is_404(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let a = s.account("a").await;
    let b = s.account("b").await;
    let inst = s.running_instance(&a, "secret").await;
    let net = a.list_all_networks().await.unwrap().remove(0);
    let vol = a
        .create_volume(&CreateVolume { name: "v".into(), size_mib: Some(10), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    let key = a.create_keypair(&CreateKeyPair { name: "k".into(), public_key: None }).await.unwrap();
    let sg = a
        .create_security_group(&CreateSecurityGroup { name: "g".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let unknown: InstanceId = "i-doesnotexist00".parse().unwrap();
    // A foreign ID answers exactly like an unknown one.
    let foreign = err(b.get_instance(&inst.id).await);
    assert_eq!(foreign, err(b.get_instance(&unknown).await));
    assert_eq!(foreign, (404, "not_found".into()));
    assert_eq!(err(b.stop_instance(&inst.id).await).0, 404);
    assert_eq!(err(b.terminate_instance(&inst.id).await).0, 404);
    assert_eq!(err(b.console_log(&inst.id).await).0, 404);
    assert_eq!(err(b.get_network(&net.id).await).0, 404);
    assert_eq!(err(b.delete_network(&net.id).await).0, 404);
    assert_eq!(err(b.get_volume(&vol.resource.id).await).0, 404);
    assert_eq!(err(b.attach_volume(&vol.resource.id, &inst.id).await).0, 404);
    assert_eq!(err(b.get_keypair(&key.keypair.id).await).0, 404);
    assert_eq!(err(b.get_security_group(&sg.id).await).0, 404);
    assert_eq!(err(b.get_job(&vol.job.id).await).0, 404);
    // B cannot use A's resources in its own requests either.
    let mut r = inst_req(&s.image, "x");
    r.interfaces = vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }];
    assert_eq!(err(b.create_instance(&r).await).0, 404);
    let mut r = inst_req(&s.image, "x");
    r.ssh_key_id = Some(key.keypair.id.clone());
    assert_eq!(err(b.create_instance(&r).await).0, 404);
    assert!(b.list_all_instances().await.unwrap().is_empty());
    assert!(b.list_all_volumes().await.unwrap().is_empty());
    assert!(b.list_all_jobs().await.unwrap().is_empty());
    // And A's instance is untouched.
    assert_eq!(a.get_instance(&inst.id).await.unwrap().state, InstanceState::Running);
    // An ID with a bidirectional override and an escape sequence is echoed escaped (it
    // turned the rest of the message around), and cut.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/instances/i-abc%E2%80%AEfed%1B%5B31m{}", s.url(), "x".repeat(300)))
        .bearer_auth(b.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    let m = body["error"]["message"].as_str().unwrap();
    assert!(m.starts_with("instance i-abc\\u{202e}fed\\u{1b}[31mxx"), "{m}");
    assert!(!m.contains('\u{202e}') && !m.contains('\u{1b}') && m.len() < 160, "{m}");
    s.stop().await;
}

async fn volumes_and_snapshots(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("vol").await;
    let inst = s.running_instance(&c, "db").await;
    let acc = c
        .create_volume(&CreateVolume { name: "data".into(), size_mib: Some(1024), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    let vol = acc.resource.id.clone();
    assert_eq!(wait_job(&c, &acc.job).await.state, JobState::Succeeded);
    assert_eq!(c.get_volume(&vol).await.unwrap().state, VolumeState::Available);

    let a = c.attach_volume(&vol, &inst.id).await.unwrap();
    assert_eq!(wait_job(&c, &a.job).await.state, JobState::Succeeded);
    let v = c.get_volume(&vol).await.unwrap();
    assert_eq!((v.state, v.instance_id.as_ref()), (VolumeState::Attached, Some(&inst.id)));
    assert_eq!(c.get_instance(&inst.id).await.unwrap().volumes, vec![vol.clone()]);
    assert_eq!(err(c.delete_volume(&vol).await), (409, "volume_attached".into()));
    let other = s.running_instance(&c, "other").await;
    assert_eq!(err(c.attach_volume(&vol, &other.id).await), (409, "volume_attached".into()));

    let snap = c.create_snapshot(&CreateSnapshot { volume_id: vol.clone(), name: "s1".into() }).await.unwrap();
    assert_eq!(wait_job(&c, &snap.job).await.state, JobState::Succeeded);
    let from = c
        .create_volume(&CreateVolume {
            name: "copy".into(),
            size_mib: None,
            snapshot_id: Some(snap.resource.id.clone()),
            image_id: None,
        })
        .await
        .unwrap();
    assert_eq!(from.resource.size_mib, 1024);
    assert_eq!(wait_job(&c, &from.job).await.state, JobState::Succeeded);

    let d = c.detach_volume(&vol).await.unwrap();
    assert_eq!(wait_job(&c, &d.job).await.state, JobState::Succeeded);
    let v = c.get_volume(&vol).await.unwrap();
    assert_eq!((v.state, v.instance_id), (VolumeState::Available, None));
    // Attach to a stopped instance: recorded at once, effective when it starts.
    let st = c.stop_instance(&other.id).await.unwrap();
    wait_job(&c, &st.job).await;
    let a = c.attach_volume(&vol, &other.id).await.unwrap();
    assert_eq!(a.resource.state, VolumeState::Attached);
    let d = c.detach_volume(&vol).await.unwrap();
    assert_eq!(d.resource.state, VolumeState::Available);
    // A container takes no volume: refused at once, running or stopped, nothing changed.
    let net = c.list_all_networks().await.unwrap().remove(0);
    let mut tar = vdc_tests::builtin_tiny_image(vec![HypervisorKind::Lxc]);
    (tar.name, tar.format, tar.source, tar.initrd, tar.kernel_cmdline) =
        ("tiny-lxc".into(), ImageFormat::Tar, Some("builtin:tiny-rootfs".into()), None, None);
    let tar = s.admin.create_image(&tar).await.unwrap();
    let ct = c
        .create_instance(&CreateInstance {
            name: Some("ct".into()),
            image_id: tar.id.clone(),
            hypervisor: Some(HypervisorKind::Lxc),
            cpus: 1,
            memory_mib: 128,
            interfaces: vec![CreateInterface { network_id: net.id, security_groups: vec![], ip: None }],
            ssh_key_id: None,
            user_data: None,
            root_disk_size: None,
            server_group: None,
            zone: None,
            host_labels: Default::default(),
        })
        .await
        .unwrap()
        .resource;
    wait_state(&c, &ct.id, InstanceState::Running).await;
    assert_eq!(err(c.attach_volume(&vol, &ct.id).await), (409, "volumes_unsupported".into()));
    let st = c.stop_instance(&ct.id).await.unwrap();
    wait_job(&c, &st.job).await;
    assert_eq!(err(c.attach_volume(&vol, &ct.id).await), (409, "volumes_unsupported".into()));
    let v = c.get_volume(&vol).await.unwrap();
    assert_eq!((v.state, v.instance_id), (VolumeState::Available, None));
    assert!(c.get_instance(&ct.id).await.unwrap().volumes.is_empty());
    // An attach to a container recorded before they were refused (an older dcmgr) is
    // undone at the container's next report, not left `attaching`.
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
        sqlx::query("UPDATE volumes SET state = 'attaching', instance_id = $1 WHERE id = $2")
            .bind(ct.id.as_str())
            .bind(vol.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let st = c.start_instance(&ct.id).await.unwrap();
    wait_job(&c, &st.job).await;
    eventually(Duration::from_secs(10), || async {
        let v = c.get_volume(&vol).await.ok()?;
        (v.state == VolumeState::Available && v.instance_id.is_none()).then_some(())
    })
    .await
    .expect("the stale attach is undone");

    assert_eq!(err(c.delete_volume(&vol).await), (409, "volume_has_snapshots".into()));
    let ds = c.delete_snapshot(&snap.resource.id).await.unwrap();
    assert_eq!(wait_job(&c, &ds.job).await.state, JobState::Succeeded);
    let dv = c.delete_volume(&vol).await.unwrap();
    assert_eq!(wait_job(&c, &dv.job).await.state, JobState::Succeeded);
    assert_eq!(c.get_volume(&vol).await.unwrap().state, VolumeState::Deleted);

    // Refusals with clear errors.
    let bad = CreateVolume { name: "x".into(), size_mib: Some(0), snapshot_id: None, image_id: None };
    assert_eq!(err(c.create_volume(&bad).await), (400, "invalid_size".into()));
    let bad = CreateVolume { name: "x".into(), size_mib: None, snapshot_id: None, image_id: None };
    assert_eq!(err(c.create_volume(&bad).await), (400, "invalid_size".into()));
    let bad = CreateVolume { name: "x".into(), size_mib: Some(1 << 30), snapshot_id: None, image_id: None };
    assert_eq!(err(c.create_volume(&bad).await).0, 400);
    let bad = CreateVolume {
        name: "x".into(),
        size_mib: None,
        snapshot_id: Some("snap-nosuchsnap".parse().unwrap()),
        image_id: None,
    };
    assert_eq!(err(c.create_volume(&bad).await), (404, "not_found".into()));
    let bad = CreateVolume { name: "x".into(), size_mib: Some(200 << 10), snapshot_id: None, image_id: None };
    assert_eq!(err(c.create_volume(&bad).await), (422, "no_capacity".into()));
    // The stack's image is a kernel: it cannot fill a volume.
    let bad = CreateVolume { name: "x".into(), size_mib: Some(64), snapshot_id: None, image_id: Some(s.image.clone()) };
    assert_eq!(err(c.create_volume(&bad).await), (400, "invalid_image".into()));
    let bad = CreateVolume {
        name: "x".into(),
        size_mib: Some(64),
        snapshot_id: Some("snap-nosuchsnap".parse().unwrap()),
        image_id: Some(s.image.clone()),
    };
    assert_eq!(err(c.create_volume(&bad).await), (400, "invalid_source".into()));

    // Grow: only larger, only detached, with the node's capacity reserved.
    let req = CreateVolume { name: "g".into(), size_mib: Some(100), snapshot_id: None, image_id: None };
    let v = c.create_volume(&req).await.unwrap();
    assert_eq!(wait_job(&c, &v.job).await.state, JobState::Succeeded);
    let g = c.extend_volume(&v.resource.id, &ExtendVolume { size_mib: 300 }).await.unwrap();
    assert_eq!(g.resource.size_mib, 300);
    assert_eq!(wait_job(&c, &g.job).await.state, JobState::Succeeded);
    let small = c.extend_volume(&v.resource.id, &ExtendVolume { size_mib: 300 }).await;
    assert_eq!(err(small), (400, "invalid_size".into()));
    let huge = c.extend_volume(&v.resource.id, &ExtendVolume { size_mib: 200 << 10 }).await;
    assert_eq!(err(huge), (422, "no_capacity".into()));
    s.stop().await;
}

async fn pagination(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("pages").await;
    for i in 0..5 {
        c.create_keypair(&CreateKeyPair { name: format!("k{i}"), public_key: None }).await.unwrap();
    }
    let mut seen = vec![];
    let mut q = ListQuery { limit: Some(2), ..Default::default() };
    loop {
        let p: Page<KeyPair> = c.list_keypairs(&q).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.into_iter().map(|k| k.name));
        match p.next_cursor {
            Some(cur) => q.cursor = Some(cur),
            None => break,
        }
    }
    assert_eq!(seen, ["k0", "k1", "k2", "k3", "k4"], "pages follow creation order");
    let q = ListQuery { name: Some("k3".into()), ..Default::default() };
    assert_eq!(c.list_keypairs(&q).await.unwrap().items.len(), 1);
    assert_eq!(err(c.list_keypairs(&ListQuery { limit: Some(0), ..Default::default() }).await).1, "invalid_limit");
    assert_eq!(err(c.list_keypairs(&ListQuery { limit: Some(5000), ..Default::default() }).await).1, "invalid_limit");
    let bad = ListQuery { cursor: Some("'; drop table".into()), ..Default::default() };
    assert_eq!(err(c.list_keypairs(&bad).await).1, "invalid_cursor");
    // A cursor is an ID of the list's kind: another string answered an empty page, as if
    // the list had ended.
    for cursor in ["xyz", "i-1m97bva1k00e4n7", "ssh-"] {
        let bad = ListQuery { cursor: Some(cursor.into()), ..Default::default() };
        assert_eq!(err(c.list_keypairs(&bad).await).1, "invalid_cursor", "{cursor}");
    }
    let bad = ListQuery { cursor: Some("ssh-1m97bva1k00e4n7".into()), ..Default::default() };
    assert_eq!(err(c.list_instances(&bad).await).1, "invalid_cursor");
    let bad = ListQuery { state: Some("sleeping".into()), ..Default::default() };
    assert_eq!(err(c.list_instances(&bad).await).1, "invalid_state_filter");
    // Lists without states refuse the filter (images?state=failed listed available ones).
    let failed = ListQuery { state: Some("failed".into()), ..Default::default() };
    assert_eq!(err(c.list_images(&failed).await).1, "invalid_query");
    assert_eq!(err(c.list_keypairs(&failed).await).1, "invalid_query");
    let running = ListQuery { state: Some("running".into()), ..Default::default() };
    assert!(c.list_instances(&running).await.is_ok());
    assert!(c.list_volumes(&ListQuery { state: Some("available".into()), ..Default::default() }).await.is_ok());
    assert!(c.list_jobs(&failed).await.is_ok());
    assert!(c.list_snapshots(&failed).await.is_ok());

    // Jobs come newest first, so a console or a script reads the latest on one page
    // however many the account has run; the cursor leads to older ones.
    let mut made = vec![];
    for i in 0..5 {
        let v = CreateVolume { name: format!("v{i}"), size_mib: Some(10), snapshot_id: None, image_id: None };
        made.push(c.create_volume(&v).await.unwrap().job.id);
    }
    made.reverse();
    let mut seen = vec![];
    let mut q = ListQuery { limit: Some(2), ..Default::default() };
    loop {
        let p: Page<Job> = c.list("/jobs", &q).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.into_iter().map(|j| j.id));
        match p.next_cursor {
            Some(cur) => q.cursor = Some(cur),
            None => break,
        }
    }
    assert_eq!(seen, made, "newest first, each once");
    s.stop().await;
}

async fn scheduler_never_overcommits(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 2;
    opts.host_cpus = 1;
    opts.host_memory_mib = 100_000;
    let s = Stack::start(opts).await;
    let c = s.account("burst").await;
    let mut tasks = Vec::new();
    for i in 0..14 {
        let (c, img) = (c.clone(), s.image.clone());
        tasks.push(tokio::spawn(async move { c.create_instance(&inst_req(&img, &format!("b{i}"))).await }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ClientError::Api { status: 422, code, .. }) if code == "no_capacity" => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, full), (8, 6), "2 hosts × 1 core × ratio 4 hold exactly 8 one-vCPU instances");
    let hosts = s.admin.list_all_host_nodes().await.unwrap();
    assert!(hosts.iter().all(|h| h.cpus_used == 4 && h.cpus_allocatable == 4), "spread evenly: {hosts:?}");
    s.stop().await;
}

/// CPU overcommit by dcmgr's ratio (default 4.0), none for memory (1.0), and a per-host
/// override that takes effect when dcmgr restarts.
async fn overcommit_follows_the_ratios(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    opts.host_cpus = 2;
    opts.host_memory_mib = 4096;
    let mut s = Stack::start(opts).await;
    let c = s.account("dense").await;
    let host = &s.admin.list_all_host_nodes().await.unwrap()[0];
    assert_eq!((host.cpus, host.cpus_allocatable), (2, 8));
    // Last seen: the agents' heartbeats (every 200 ms here), not only their registration.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let now = chrono::Utc::now();
    let seen = s.admin.get_host_node(&host.id).await.unwrap().last_seen;
    assert!(now - seen < chrono::Duration::milliseconds(1000), "host last seen {seen}, now {now}");
    let sn = &s.admin.list_all_storage_nodes().await.unwrap()[0];
    assert!(now - sn.last_seen < chrono::Duration::milliseconds(1000), "storage last seen {}, now {now}", sn.last_seen);
    assert_eq!((host.memory_mib, host.memory_allocatable_mib), (4096, 4096));
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(c.create_instance(&inst_req(&s.image, &format!("d{i}"))).await.unwrap().resource.id);
    }
    let (status, code) = err(c.create_instance(&inst_req(&s.image, "d8")).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "the 9th vCPU on a 2-core host");
    let host = &s.admin.list_all_host_nodes().await.unwrap()[0];
    assert_eq!((host.cpus_used, host.memory_used_mib), (8, 8 * 256));
    for id in &ids {
        wait_state(&c, id, InstanceState::Running).await;
    }

    // Memory is not overcommitted: 4096 MiB hold what the 8 guests use plus 2048 more.
    let mut big = inst_req(&s.image, "big");
    big.memory_mib = 2049;
    let host_id = host.id.to_string();
    s.opts.host_overrides.insert(
        host_id.clone(),
        vdc_dcmgr::config::HostOverride {
            cpu_allocation_ratio: Some(5.0),
            memory_allocation_ratio: None,
            disk_allocation_ratio: None,
        },
    );
    s.restart_dcmgr().await;
    let host = s.admin.get_host_node(&host.id).await.unwrap();
    assert_eq!((host.cpus_allocatable, host.cpus_used), (10, 8), "the override applies at restart; usage is kept");
    let (_, code) = err(c.create_instance(&big).await);
    assert_eq!(code, "no_capacity", "2049 MiB do not fit in the 2048 left");
    big.memory_mib = 2048;
    c.create_instance(&big).await.unwrap();
    let host = s.admin.get_host_node(&host.id).await.unwrap();
    assert_eq!((host.cpus_used, host.memory_used_mib), (9, 4096));
    s.stop().await;
}

/// `placement = "spread"` puts each new instance on the emptiest host; `pack` fills the
/// fullest host that still fits first, also when many creates race.
async fn placement_spreads_or_packs(db: Db) {
    use vdc_dcmgr::config::Placement;
    for placement in [Placement::Spread, Placement::Pack] {
        let mut opts = StackOptions::new(db);
        opts.hosts = 3;
        opts.host_cpus = 2;
        opts.host_memory_mib = 4096;
        opts.placement = placement;
        let s = Stack::start(opts).await;
        let c = s.account("placed").await;
        let per_host = |hosts: &[vdc_schema::api::HostNode]| {
            let mut used: Vec<u32> = hosts.iter().map(|h| h.cpus_used).collect();
            used.sort_unstable_by(|a, b| b.cmp(a));
            used
        };
        for i in 0..3 {
            c.create_instance(&inst_req(&s.image, &format!("seq{i}"))).await.unwrap();
        }
        let used = per_host(&s.admin.list_all_host_nodes().await.unwrap());
        match placement {
            Placement::Spread => assert_eq!(used, [1, 1, 1], "spread: one on each host"),
            Placement::Pack => assert_eq!(used, [3, 0, 0], "pack: all on one host"),
        }
        // 9 more at once: 12 one-vCPU guests on hosts of 8 allocatable vCPUs each.
        let creates = (0..9).map(|i| {
            let (c, req) = (c.clone(), inst_req(&s.image, &format!("par{i}")));
            async move { c.create_instance(&req).await }
        });
        for r in futures::future::join_all(creates).await {
            r.unwrap();
        }
        let used = per_host(&s.admin.list_all_host_nodes().await.unwrap());
        match placement {
            // Racing creates read the same order, so spread is not exact under a burst.
            Placement::Spread => assert!(used.iter().sum::<u32>() == 12 && used[2] >= 1, "{used:?}"),
            Placement::Pack => assert_eq!(used, [8, 4, 0], "pack: a host filled before the next is used"),
        }
        s.stop().await;
    }
}

async fn reconciler_survives_message_loss(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.sim.drop_rate = 0.5;
    let s = Stack::start(opts).await;
    let c = s.account("lossy").await;
    let mut ids = vec![];
    for i in 0..8 {
        ids.push(c.create_instance(&inst_req(&s.image, &format!("l{i}"))).await.unwrap().resource.id);
    }
    for id in &ids {
        wait_state(&c, id, InstanceState::Running).await;
    }
    s.stop().await;
}

/// A failed instance stays failed when its host's agent registers again (a restart of
/// `vdc up`, of hva): the agent is not sent it, as the reconciler never re-sends one;
/// its tenant's start tries again. Before, each registration booted it again, and it
/// failed again (red team, 2026-12-07).
async fn a_failed_instance_is_not_started_again_when_its_host_returns(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    let mut s = Stack::start(opts).await;
    let c = s.account("failing").await;
    let ok = s.running_instance(&c, "fine").await;
    let failing = c.create_instance(&inst_req(&s.image, "simfail-1")).await.unwrap().resource.id;
    wait_state(&c, &failing, InstanceState::Failed).await;
    // How often it was seen starting (its events, replayed from the first).
    let starts = |c: Client, id: InstanceId| async move {
        let mut stream = c.events(Some(0), false).await.unwrap();
        let mut n = 0;
        while let Some(item) = stream.next().await.unwrap() {
            if let vdc_cli::client::StreamItem::Event(e) = item {
                n += (e.resource_id == id.as_str() && e.state == "starting") as usize;
            }
        }
        n
    };
    let before = starts(c.clone(), failing.clone()).await;
    s.crash_hva(0);
    s.restart_hva(0).await;
    s.wait_nodes_online().await.unwrap();
    wait_state(&c, &ok.id, InstanceState::Running).await;
    // Sent again, it would start (starting), and fail again (its hostname asks for it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.get_instance(&failing).await.unwrap().state, InstanceState::Failed);
    assert_eq!(starts(c.clone(), failing.clone()).await, before, "not started again");
    // A start tries again.
    let st = c.start_instance(&failing).await.unwrap();
    assert_eq!(st.resource.state, InstanceState::Starting);
    wait_job(&c, &st.job).await;
    wait_state(&c, &failing, InstanceState::Failed).await;
    let after = starts(c.clone(), failing.clone()).await;
    assert!(after > before, "a start sends it: {before} then {after}");
    s.stop().await;
}

/// A stopped instance keeps its port on its last host (for its next start); terminated,
/// the port goes there too. Before, it stayed with its DHCP reservation and floating IP
/// NAT: the next guest given the address got no lease, and a floating IP allocated again
/// answered from two routers (red team, 2026-12-07).
async fn a_stopped_instance_terminated_leaves_no_port(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    let s = Stack::start(opts).await;
    let c = s.account("stopped").await;
    let port = |vif: &VifId| s.hosts[0].nw_driver.as_ref().unwrap().port(vif);
    for round in 0..2 {
        let i = s.running_instance(&c, &format!("gone-{round}")).await;
        let vif = i.interfaces[0].id.clone();
        eventually(Duration::from_secs(5), || async { port(&vif).map(|_| ()) }).await.expect("plugged");
        let st = c.stop_instance(&i.id).await.unwrap();
        assert_eq!(wait_job(&c, &st.job).await.state, JobState::Succeeded);
        assert_eq!(c.get_instance(&i.id).await.unwrap().host_node_id, None, "a stopped instance holds no host");
        let t = c.terminate_instance(&i.id).await.unwrap();
        assert_eq!(wait_job(&c, &t.job).await.state, JobState::Succeeded);
        eventually(Duration::from_secs(5), || async { port(&vif).is_none().then_some(()) })
            .await
            .expect("the port of a stopped instance goes with its terminate");
    }
    s.stop().await;
}

/// A POST with an `Idempotency-Key`: ten at once with one key make one instance, and each
/// answer names it (the first, or its replay); the key with another body is refused;
/// another account's key of the same name is its own; a refused request lets its key
/// go; malformed keys are refused, and other methods ignore keys. Before, a script retrying a
/// create made a second instance (red team, 2026-12-07).
async fn an_idempotency_key_makes_a_retry_safe(db: Db) {
    let mut o = StackOptions::new(db);
    o.external = Some(vdc_tests::test_external("203.0.113.99"));
    let s = Stack::start(o).await;
    let c = s.account("retrier").await;
    let other = s.account("other").await;
    let http = reqwest::Client::new();
    let post = |token: String, path: &str, key: &str, body: serde_json::Value| {
        let req = http
            .post(format!("{}/api/v1{path}", s.url()))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&body);
        async move {
            let r = req.send().await.unwrap();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            let status = r.status().as_u16();
            (status, replayed, r.json::<serde_json::Value>().await.unwrap())
        }
    };
    let create = serde_json::to_value(inst_req(&s.image, "once")).unwrap();
    let tries = (0..10).map(|_| post(c.token().to_owned(), "/instances", "create-once-1", create.clone()));
    let answers = futures::future::join_all(tries).await;
    let ok: Vec<&(u16, bool, serde_json::Value)> = answers.iter().filter(|a| a.0 == 202).collect();
    assert!(!ok.is_empty(), "{answers:?}");
    assert_eq!(ok.iter().filter(|a| !a.1).count(), 1, "one ran: {answers:?}");
    let id = ok[0].2["resource"]["id"].clone();
    assert!(ok.iter().all(|a| a.2["resource"]["id"] == id), "{answers:?}");
    for a in answers.iter().filter(|a| a.0 != 202) {
        assert_eq!((a.0, a.2["error"]["code"].as_str()), (409, Some("idempotency_key_in_use")), "{a:?}");
    }
    // A retry after it ended: the same answer, replayed.
    let again = post(c.token().to_owned(), "/instances", "create-once-1", create.clone()).await;
    assert_eq!((again.0, again.1, &again.2["resource"]["id"]), (202, true, &id));
    assert_eq!(c.list_all_instances().await.unwrap().len(), 1);
    // The key for another request: refused.
    let mut changed = create.clone();
    changed["name"] = "twice".into();
    let reused = post(c.token().to_owned(), "/instances", "create-once-1", changed).await;
    assert_eq!((reused.0, reused.2["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));
    // Another account's key of the same name is its own.
    let theirs = post(other.token().to_owned(), "/instances", "create-once-1", create.clone()).await;
    assert_eq!((theirs.0, theirs.1), (202, false), "{theirs:?}");
    assert_ne!(theirs.2["resource"]["id"], id);
    // A floating IP allocated twice with one key: one address.
    let fip1 = post(c.token().to_owned(), "/floating-ips", "fip-1", serde_json::json!({})).await;
    let fip2 = post(c.token().to_owned(), "/floating-ips", "fip-1", serde_json::json!({})).await;
    assert_eq!((fip1.0, fip2.1), (201, true), "{fip1:?} {fip2:?}");
    assert_eq!(fip1.2["ip"], fip2.2["ip"]);
    assert_eq!(c.list_all_floating_ips().await.unwrap().len(), 1);
    // A refused request lets its key go: the retry runs again.
    let key = serde_json::json!({"name": "deploy"});
    c.create_keypair(&CreateKeyPair { name: "deploy".into(), public_key: None }).await.unwrap();
    let taken = post(c.token().to_owned(), "/keypairs", "kp-1", key.clone()).await;
    assert_eq!((taken.0, taken.2["error"]["code"].as_str()), (409, Some("name_taken")));
    let kp = c.list_all_keypairs().await.unwrap().remove(0);
    c.delete_keypair(&kp.id).await.unwrap();
    let made = post(c.token().to_owned(), "/keypairs", "kp-1", key).await;
    assert_eq!((made.0, made.1), (201, false), "{made:?}");
    // An answer that holds a secret is shown once: its replay names what was made,
    // without the secret, which is not kept. The key is the credential's: another token
    // of the same user runs its own request.
    let tok = post(c.token().to_owned(), "/tokens", "tok-1", serde_json::json!({"name": "ci"})).await;
    assert_eq!(tok.0, 201, "{tok:?}");
    let secret = tok.2["secret"].as_str().unwrap().to_owned();
    let again = post(c.token().to_owned(), "/tokens", "tok-1", serde_json::json!({"name": "ci"})).await;
    assert_eq!((again.0, again.1, again.2["error"]["code"].as_str()), (409, true, Some("idempotency_secret_not_kept")));
    let tok_id = tok.2["token"]["id"].as_str().unwrap();
    assert!(again.2["error"]["message"].as_str().unwrap().contains(tok_id), "{again:?}");
    assert!(!again.2.to_string().contains(&secret));
    let kept: Vec<(String,)> =
        sqlx::query_as("SELECT body FROM idempotency_keys").fetch_all(&s.dcmgr().ctx.db).await.unwrap();
    assert!(kept.iter().all(|b| !b.0.contains(&secret)), "a token's secret kept: {kept:?}");
    let pair = post(c.token().to_owned(), "/keypairs", "kp-gen", serde_json::json!({"name": "gen"})).await;
    let private = pair.2["private_key"].as_str().unwrap().to_owned();
    let again = post(c.token().to_owned(), "/keypairs", "kp-gen", serde_json::json!({"name": "gen"})).await;
    assert_eq!((again.0, again.2["error"]["code"].as_str()), (409, Some("idempotency_secret_not_kept")));
    assert!(!again.2.to_string().contains(&private));
    let ci = post(secret.clone(), "/tokens", "tok-1", serde_json::json!({"name": "ci2"})).await;
    assert_eq!((ci.0, ci.1), (201, false), "another credential's key: {ci:?}");
    assert_ne!(ci.2["token"]["id"], tok.2["token"]["id"]);
    // Malformed keys, and keys where they mean nothing.
    for bad in ["", "caf\u{e9}", &"k".repeat(256), "two words"] {
        let r = http
            .post(format!("{}/api/v1/keypairs", s.url()))
            .bearer_auth(c.token())
            .header("Idempotency-Key", bad)
            .json(&serde_json::json!({"name": "x"}))
            .send()
            .await;
        // (A header value reqwest itself refuses to send is as good as refused.)
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_idempotency_key")), "{bad:?}");
        }
    }
    // Two keys: which one was meant is not guessed.
    let r = http
        .post(format!("{}/api/v1/keypairs", s.url()))
        .bearer_auth(c.token())
        .header("Idempotency-Key", "one")
        .header("Idempotency-Key", "two")
        .json(&serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // Other methods are idempotent already: the key changes nothing, and a method no
    // route takes is still 405.
    let r = http
        .delete(format!("{}/api/v1/keypairs/{}", s.url(), made.2["keypair"]["id"].as_str().unwrap()))
        .bearer_auth(c.token())
        .header("Idempotency-Key", "del-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert!(!c.list_all_keypairs().await.unwrap().iter().any(|k| k.name == "deploy"));
    let r = http
        .request(reqwest::Method::TRACE, format!("{}/api/v1/keypairs", s.url()))
        .bearer_auth(c.token())
        .header("Idempotency-Key", "trace-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    s.stop().await;
}

/// The claims behind `Idempotency-Key`: one claim per key; a claim still running long
/// after it was made (its dcmgr stopped mid-request) is taken over, a done one is kept
/// for its day and then forgotten.
async fn idempotency_claims_expire_and_are_taken_over(db: Db) {
    use vdc_dcmgr::datastore::idempotency::{claim, finish, prune, Claim};
    let s = Stack::start(StackOptions::new(db)).await;
    let pool = &s.dcmgr().ctx.db;
    let (t0, t1, t2) = ("2026-12-07T00:00:00.000Z", "2026-12-07T00:01:00.000Z", "2026-12-07T00:10:00.000Z");
    let never = "2000-01-01T00:00:00.000Z";
    assert_eq!(claim(pool, "k", "fp", t0, never, never).await.unwrap(), Claim::New);
    assert_eq!(claim(pool, "k", "fp", t1, never, never).await.unwrap(), Claim::Running);
    assert_eq!(claim(pool, "k", "other", t1, never, never).await.unwrap(), Claim::Other);
    // Still running 10 minutes on: abandoned (claims made before t1 are), taken over.
    assert_eq!(claim(pool, "k", "fp", t2, never, t1).await.unwrap(), Claim::New);
    finish(pool, "k", 201, "{\"id\":\"x\"}").await.unwrap();
    let done = Claim::Done { status: 201, body: "{\"id\":\"x\"}".into() };
    assert_eq!(claim(pool, "k", "fp", t2, never, t2).await.unwrap(), done, "a done claim is never abandoned");
    // A day on: expired, claimed anew; pruned.
    assert_eq!(
        claim(pool, "k", "fp2", "2026-12-08T00:20:00.000Z", "2026-12-07T00:20:00.000Z", never).await.unwrap(),
        Claim::New
    );
    assert_eq!(prune(pool, "2026-12-09T00:00:00.000Z").await.unwrap(), 1);
    assert_eq!(claim(pool, "k", "fp", t0, never, never).await.unwrap(), Claim::New);
    s.stop().await;
}

async fn agent_crash_goes_offline_and_converges(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    opts.agent_timeout_ms = 800;
    let mut s = Stack::start(opts).await;
    let c = s.account("crash").await;
    let a = s.running_instance(&c, "survivor").await;
    let b = c.create_instance(&inst_req(&s.image, "second")).await.unwrap().resource;
    wait_state(&c, &b.id, InstanceState::Running).await;
    s.crash_hva(0);
    eventually(Duration::from_secs(10), || async {
        let h = s.admin.list_all_host_nodes().await.ok()?;
        (h[0].state == NodeState::Offline).then_some(())
    })
    .await
    .expect("a silent host goes offline");
    // The host cannot act now: a clear 503, and nothing recorded.
    assert_eq!(err(c.stop_instance(&a.id).await), (503, "agent_unavailable".into()));
    assert_eq!(c.get_instance(&a.id).await.unwrap().state, InstanceState::Running);
    // Terminate is recorded anyway and delivered once the host is back.
    let t = c.terminate_instance(&b.id).await.unwrap();
    assert_eq!(t.resource.state, InstanceState::ShuttingDown);
    s.restart_hva(0).await;
    s.wait_nodes_online().await.unwrap();
    assert_eq!(wait_job(&c, &t.job).await.state, JobState::Succeeded);
    assert_eq!(
        s.hosts[0].hva_driver.as_ref().unwrap().len(),
        1,
        "the restarted agent kept the guest it had and removed the terminated one"
    );
    wait_state(&c, &a.id, InstanceState::Running).await;
    let st = c.stop_instance(&a.id).await.unwrap();
    assert_eq!(wait_job(&c, &st.job).await.state, JobState::Succeeded);
    s.stop().await;
}

async fn dcmgr_restart_keeps_everything(db: Db) {
    let mut s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("durable").await;
    let a = s.running_instance(&c, "keep").await;
    let pending = c.create_instance(&inst_req(&s.image, "in-flight")).await.unwrap().resource;
    s.restart_dcmgr().await;
    // The same token works (accounts live in the database, the cache was rebuilt).
    assert_eq!(c.get_instance(&a.id).await.unwrap().state, InstanceState::Running);
    wait_state(&c, &pending.id, InstanceState::Running).await;
    let st = c.stop_instance(&a.id).await.unwrap();
    assert_eq!(wait_job(&c, &st.job).await.state, JobState::Succeeded);
    assert_eq!(c.list_all_instances().await.unwrap().len(), 2, "nothing lost, nothing duplicated");
    s.stop().await;
}

async fn untrusted_bus_messages_are_dropped(db: Db) {
    use vdc_bus::Transport;
    let s = Stack::start(StackOptions::new(db)).await;
    let bus = s.bus.clone();
    let t = Duration::from_millis(300);
    // Garbage, a wrong protocol version, a bad node ID, absurd capacity: no answer, no record.
    let _ = bus.request(subject::REGISTER, b"\xff\x00garbage"[..].into(), t).await;
    let _ = bus.request(subject::REPORT, br#"{"proto":99,"msg":{}}"#[..].into(), t).await;
    let reg = |node: &str, cpus: u32| bus::Register {
        node_id: node.into(),
        kind: bus::AgentKind::Hva,
        agent_version: "x".into(),
        host: Some(bus::HostInfo {
            cpus,
            memory_mib: 1024,
            hypervisors: vec![HypervisorKind::Qemu],
            capabilities: Default::default(),
            boot_modes: vdc_schema::bus::bios_only(),
            disk_mib: None,
        }),
        storage: None,
        tunnel_ip: None,
    };
    let _ = bus.request(subject::REGISTER, bus::encode(&reg("../../etc", 4)).into(), t).await;
    let _ = bus.request(subject::REGISTER, bus::encode(&reg("hn-huge", 0)).into(), t).await;
    let hosts = s.admin.list_all_host_nodes().await.unwrap();
    assert_eq!(hosts.len(), 2, "{hosts:?}");
    // An hva may not report a volume (another agent kind's object).
    let vol = s
        .admin
        .create_volume(&CreateVolume { name: "v".into(), size_mib: Some(1), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    wait_job(&s.admin, &vol.job).await;
    let forged = bus::ReportBatch {
        node_id: s.hosts[0].node_id.clone(),
        kind: bus::AgentKind::Hva,
        reports: vec![bus::Report {
            seq: 1,
            gen: u64::MAX / 2,
            object: bus::ObjectReport::Volume(bus::VolumeReport {
                id: vol.resource.id.clone(),
                spec_gen: 99,
                state: ObservedStorage::Absent,
                size_mib: 1,
                target: None,
                reason: None,
            }),
        }],
    };
    let _ = bus.request(subject::REPORT, bus::encode(&forged).into(), t).await;
    assert_eq!(s.admin.get_volume(&vol.resource.id).await.unwrap().state, VolumeState::Available);
    // dcmgr still serves.
    s.running_instance(&s.admin, "still-alive").await;
    s.stop().await;
}

async fn stale_reports_are_dropped(db: Db) {
    use vdc_bus::Transport;
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("stale").await;
    let i = s.running_instance(&c, "x").await;
    let node = i.host_node_id.clone().unwrap().to_string();
    // An old observation (generation 1) saying the guest is off arrives late.
    let late = bus::ReportBatch {
        node_id: node.clone(),
        kind: bus::AgentKind::Hva,
        reports: vec![bus::Report {
            seq: 1,
            gen: 1,
            object: bus::ObjectReport::Instance(bus::InstanceReport {
                id: i.id.clone(),
                spec_gen: 1,
                state: ObservedInstance::Off,
                reboot_gen: 0,
                volumes: vec![],
                reason: None,
            }),
        }],
    };
    let ack = s.bus.request(subject::REPORT, bus::encode(&late).into(), Duration::from_secs(2)).await.unwrap();
    let ack: bus::Ack = bus::decode(&ack).unwrap();
    assert_eq!(ack.seqs, [1], "stale reports are acked (so the agent forgets them) but not applied");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get_instance(&i.id).await.unwrap().state, InstanceState::Running);
    // A report from a host the instance is not placed on is ignored too.
    let mut wrong_host = late.clone();
    wrong_host.node_id = "hn-someotherhost".into();
    if let bus::ObjectReport::Instance(r) = &mut wrong_host.reports[0].object {
        r.state = ObservedInstance::Failed;
    }
    wrong_host.reports[0].gen = u64::MAX / 2;
    s.bus.request(subject::REPORT, bus::encode(&wrong_host).into(), Duration::from_secs(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.get_instance(&i.id).await.unwrap().state, InstanceState::Running);
    s.stop().await;
}

async fn security_group_changes_reach_running_guests(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("sgmove").await;
    let net = c.create_network(&net_req("n", "10.5.0.0/24")).await.unwrap();
    let db_sg = c
        .create_security_group(&CreateSecurityGroup { name: "db".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let app_sg = c
        .create_security_group(&CreateSecurityGroup { name: "app".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    // db admits tcp/5432 from members of app.
    c.add_security_group_rule(&db_sg.id, &rule(Protocol::Tcp, Some(5432), None, Some(&app_sg.id))).await.unwrap();
    let mk = |name: &str, sg: &SecurityGroupId| {
        let mut r = inst_req(&s.image, name);
        r.interfaces =
            vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![sg.clone()], ip: None }];
        r
    };
    let dbi = c.create_instance(&mk("db", &db_sg.id)).await.unwrap().resource;
    let dbi = wait_state(&c, &dbi.id, InstanceState::Running).await;
    let vif = dbi.interfaces[0].id.clone();
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    let allowed = |vif: &VifId| -> Vec<String> {
        port(vif)
            .map(|p| p.security_groups[0].rules.iter().flat_map(|r| r.cidrs.iter().map(|c| c.to_string())).collect())
            .unwrap_or_default()
    };
    // An app instance appears: db's rule now admits its address, without a reboot.
    let app = c.create_instance(&mk("app", &app_sg.id)).await.unwrap().resource;
    let app_ip = format!("{}/32", app.interfaces[0].ip);
    eventually(Duration::from_secs(5), || async { allowed(&vif).contains(&app_ip).then_some(()) })
        .await
        .expect("db's interface learns the new app member");
    // Another app member: db's interface learns it, and the first app member is not sent
    // anything (no rule of app names app: its members resolve nothing from its members).
    // A group of thousands must not be re-sent whole for every create into it.
    let ensures =
        |vif: &VifId| -> u64 { s.hosts.iter().filter_map(|h| h.nw_driver.as_ref()).map(|d| d.ensures_of(vif)).sum() };
    let app = wait_converged(&c, &app.id).await;
    let app_vif = app.interfaces[0].id.clone();
    let (app_sent, db_sent) = (ensures(&app_vif), ensures(&vif));
    let app2 = c.create_instance(&mk("app2", &app_sg.id)).await.unwrap().resource;
    let app2_ip = format!("{}/32", app2.interfaces[0].ip);
    eventually(Duration::from_secs(5), || async { allowed(&vif).contains(&app2_ip).then_some(()) })
        .await
        .expect("db's interface learns the second app member");
    let app2 = wait_converged(&c, &app2.id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ensures(&app_vif), app_sent, "a member of a group no rule names was re-sent when the group grew");
    assert!(ensures(&vif) > db_sent, "db's interface was not re-sent");
    // A group naming itself: its members learn each other, and every later member.
    c.add_security_group_rule(&app_sg.id, &rule(Protocol::Icmp, None, None, Some(&app_sg.id))).await.unwrap();
    eventually(Duration::from_secs(5), || async { allowed(&app_vif).contains(&app2_ip).then_some(()) })
        .await
        .expect("a rule naming its own group reaches its members");
    let app3 = c.create_instance(&mk("app3", &app_sg.id)).await.unwrap().resource;
    let app3_ip = format!("{}/32", app3.interfaces[0].ip);
    let app2_vif = app2.interfaces[0].id.clone();
    eventually(Duration::from_secs(5), || async {
        (allowed(&app_vif).contains(&app3_ip) && allowed(&app2_vif).contains(&app3_ip)).then_some(())
    })
    .await
    .expect("members of a group naming itself learn a new member");
    let t = c.terminate_instance(&app3.id).await.unwrap();
    wait_job(&c, &t.job).await;
    eventually(Duration::from_secs(5), || async { (!allowed(&app_vif).contains(&app3_ip)).then_some(()) })
        .await
        .expect("a group naming itself withdraws a terminated member's address");
    // A new rule on db reaches its running interface too.
    c.add_security_group_rule(&db_sg.id, &rule(Protocol::Tcp, Some(22), Some("192.0.2.0/24"), None)).await.unwrap();
    eventually(Duration::from_secs(5), || async { allowed(&vif).contains(&"192.0.2.0/24".to_string()).then_some(()) })
        .await
        .expect("a rule change reaches the running guest");
    // An egress rule towards app's members reaches db's interface as egress, resolved to
    // their addresses (nwagent matches them as destinations).
    let mut to_app = rule(Protocol::Tcp, Some(8080), None, Some(&app_sg.id));
    to_app.direction = Direction::Egress;
    c.add_security_group_rule(&db_sg.id, &to_app).await.unwrap();
    let egress = |vif: &VifId| -> Vec<String> {
        port(vif)
            .map(|p| {
                p.security_groups[0]
                    .rules
                    .iter()
                    .filter(|r| r.direction == Direction::Egress && r.port_min == Some(8080))
                    .flat_map(|r| r.cidrs.iter().map(|c| c.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut members = vec![app_ip.clone(), app2_ip.clone()];
    members.sort();
    eventually(Duration::from_secs(5), || async {
        let mut e = egress(&vif);
        e.sort();
        (e == members).then_some(())
    })
    .await
    .expect("an egress rule reaches the running guest");
    // The app instance goes away: its address is withdrawn.
    let t = c.terminate_instance(&app.id).await.unwrap();
    wait_job(&c, &t.job).await;
    eventually(Duration::from_secs(5), || async { (!allowed(&vif).contains(&app_ip)).then_some(()) })
        .await
        .expect("a terminated member's address is withdrawn");
    s.stop().await;
}

/// Each host on a network tunnels to every other host with an interface on it. A host new
/// to the network is announced to the others once: later interfaces there re-send nothing
/// elsewhere (a create would otherwise re-send an interface on every host of its network).
async fn tunnel_peers_follow_placement(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await; // two hosts, spread
    let c = s.account("peers").await;
    let net = c.create_network(&net_req("n", "10.6.0.0/24")).await.unwrap();
    let g = c
        .create_security_group(&CreateSecurityGroup { name: "g".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let mut req = inst_req(&s.image, "x");
    req.interfaces =
        vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![g.id.clone()], ip: None }];
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    let ensures =
        |vif: &VifId| -> u64 { s.hosts.iter().filter_map(|h| h.nw_driver.as_ref()).map(|d| d.ensures_of(vif)).sum() };
    let tunnel = |host: &HostNodeId| {
        let i = s.hosts.iter().position(|h| h.node_id == host.as_str()).expect("a stack host");
        std::net::Ipv4Addr::from(0xc612_0000u32 + i as u32 + 1)
    };
    let peers = |vif: &VifId| port(vif).map(|p| p.network.peers.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let a = wait_converged(&c, &c.create_instance(&req).await.unwrap().resource.id).await;
    let b = wait_converged(&c, &c.create_instance(&req).await.unwrap().resource.id).await;
    let (ha, hb) = (a.host_node_id.clone().unwrap(), b.host_node_id.clone().unwrap());
    assert_ne!(ha, hb, "spread places the second instance on the other host");
    let (va, vb) = (a.interfaces[0].id.clone(), b.interfaces[0].id.clone());
    // a's host learns b's when b arrives; b's knows a's from its first ensure.
    eventually(Duration::from_secs(5), || async { (peers(&va)? == [tunnel(&hb).to_string()]).then_some(()) })
        .await
        .expect("a's interface tunnels to b's host");
    assert_eq!(peers(&vb).unwrap(), [tunnel(&ha).to_string()]);
    // More instances on hosts already on the network: nothing is re-sent to a or b.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sa, sb) = (ensures(&va), ensures(&vb));
    let mut more = vec![];
    for _ in 0..10 {
        more.push(c.create_instance(&req).await.unwrap().resource.id);
    }
    for id in &more {
        wait_converged(&c, id).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((ensures(&va), ensures(&vb)), (sa, sb), "instances on hosts the network already has re-sent a or b");
    // The second time: every instance leaves b's host, then one comes back to it; a's
    // host hears of it again.
    let on_b: Vec<InstanceId> = c
        .list_all_instances()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.host_node_id.as_ref() == Some(&hb) && i.state == InstanceState::Running)
        .map(|i| i.id)
        .collect();
    // All at once: of concurrent departures, the last one out tells a's host.
    let terminates = on_b.iter().map(|id| c.terminate_instance(id));
    for t in futures::future::join_all(terminates).await {
        wait_job(&c, &t.unwrap().job).await;
    }
    eventually(Duration::from_secs(5), || async { peers(&va)?.is_empty().then_some(()) })
        .await
        .expect("a's host stops tunnelling to a host the network left (its last instance there terminated)");
    let sa = ensures(&va);
    let back = wait_converged(&c, &c.create_instance(&req).await.unwrap().resource.id).await;
    assert_eq!(back.host_node_id.as_ref(), Some(&hb), "spread fills the emptied host first");
    eventually(Duration::from_secs(5), || async { (ensures(&va) > sa).then_some(()) })
        .await
        .expect("a's host is told again of a host that left the network and came back");
    assert_eq!(peers(&va).unwrap(), [tunnel(&hb).to_string()]);
    // The same instance back on the same host: it stops (b's host has no instance of the
    // network left, and a's host drops it), and it starts there again: a's host hears of
    // it again.
    let t = c.stop_instance(&back.id).await.unwrap();
    wait_job(&c, &t.job).await;
    eventually(Duration::from_secs(5), || async { peers(&va)?.is_empty().then_some(()) })
        .await
        .expect("a's host drops a host the network left (its last instance there stopped)");
    let t = c.start_instance(&back.id).await.unwrap();
    wait_job(&c, &t.job).await;
    let again = wait_converged(&c, &back.id).await;
    assert_eq!(again.host_node_id.as_ref(), Some(&hb), "spread starts it on the emptier host again");
    eventually(Duration::from_secs(5), || async { (peers(&va)? == [tunnel(&hb).to_string()]).then_some(()) })
        .await
        .expect("a's host hears again of a host an instance came back to");
    s.stop().await;
}

async fn floating_ips(db: Db) {
    // Without an external network there is nothing to allocate.
    let plain = Stack::start(StackOptions::new(db)).await;
    let c = plain.account("nofip").await;
    assert_eq!(err(c.create_floating_ip(&CreateFloatingIp::default()).await), (422, "no_external_network".into()));
    // The message says what to do, and nothing was allocated.
    match c.create_floating_ip(&CreateFloatingIp { ip: Some("203.0.113.5".into()) }).await {
        Err(ClientError::Api { status: 422, message, .. }) => {
            assert!(message.contains("[external]") && message.contains("--no-external"), "{message}")
        }
        other => panic!("expected no_external_network, got {other:?}"),
    }
    assert!(c.list_all_floating_ips().await.unwrap().is_empty());
    plain.stop().await;

    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.13"));
    let s = Stack::start(o).await;
    let c = s.account("fip").await;
    let other = s.account("other").await;
    let inst = s.running_instance(&c, "web").await;
    let vif = inst.interfaces[0].id.clone();
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    // The instance's host got a router SNAT address for the network from the pool.
    let external = eventually(Duration::from_secs(5), || async { port(&vif)?.network.external }).await.unwrap();
    assert_eq!(external.gateway.to_string(), "203.0.113.1");

    let a = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    assert_ne!(a.ip, external.snat_ip, "a router's address is never handed out twice");
    let bad = CreateFloatingIp { ip: Some("198.51.100.7".into()) };
    assert_eq!(err(c.create_floating_ip(&bad).await), (400, "invalid_ip".into()));
    let dup = CreateFloatingIp { ip: Some(a.ip.to_string()) };
    assert_eq!(err(c.create_floating_ip(&dup).await), (409, "ip_in_use".into()));
    assert_eq!(err(other.get_floating_ip(&a.id).await).0, 404, "foreign = unknown");

    let assoc = AssociateFloatingIp { instance_id: inst.id.clone(), interface_id: None };
    let got = c.associate_floating_ip(&a.id, &assoc).await.unwrap();
    assert_eq!((got.instance_id.as_ref(), got.interface_id.as_ref()), (Some(&inst.id), Some(&vif)));
    eventually(Duration::from_secs(5), || async { (port(&vif)?.floating_ip? == a.ip).then_some(()) })
        .await
        .expect("nwagent is told the interface's floating IP");
    // The instance shows it on its interface, in a get and in a list (as OpenStack's servers do).
    assert_eq!(c.get_instance(&inst.id).await.unwrap().interfaces[0].floating_ip, Some(a.ip));
    let listed = c.list_all_instances().await.unwrap();
    assert_eq!(listed.iter().find(|i| i.id == inst.id).unwrap().interfaces[0].floating_ip, Some(a.ip));
    let b = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    assert_eq!(err(c.associate_floating_ip(&b.id, &assoc).await), (409, "interface_has_floating_ip".into()));
    assert_eq!(err(c.delete_floating_ip(&a.id).await), (409, "floating_ip_associated".into()));
    assert_eq!(err(other.associate_floating_ip(&a.id, &assoc).await).0, 404);
    // The pool (4 addresses: the router's, a, b and one more) runs out with a clear error.
    c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    assert_eq!(err(c.create_floating_ip(&CreateFloatingIp::default()).await), (422, "no_capacity".into()));

    c.disassociate_floating_ip(&a.id).await.unwrap();
    eventually(Duration::from_secs(5), || async { port(&vif)?.floating_ip.is_none().then_some(()) })
        .await
        .expect("the mapping is withdrawn");
    assert_eq!(c.get_instance(&inst.id).await.unwrap().interfaces[0].floating_ip, None);
    c.associate_floating_ip(&a.id, &assoc).await.unwrap();
    // Associated again with another instance, the address moves (as Neutron's does): the
    // first interface's host withdraws it, the second's maps it.
    let web2 = s.running_instance(&c, "web2").await;
    let vif2 = web2.interfaces[0].id.clone();
    let moved = c
        .associate_floating_ip(&a.id, &AssociateFloatingIp { instance_id: web2.id.clone(), interface_id: None })
        .await
        .unwrap();
    assert_eq!((moved.instance_id.as_ref(), moved.interface_id.as_ref()), (Some(&web2.id), Some(&vif2)));
    eventually(Duration::from_secs(5), || async {
        (port(&vif)?.floating_ip.is_none() && port(&vif2)?.floating_ip? == a.ip).then_some(())
    })
    .await
    .expect("the address moved on the data plane");
    assert_eq!(c.get_instance(&inst.id).await.unwrap().interfaces[0].floating_ip, None);
    c.associate_floating_ip(&a.id, &assoc).await.unwrap();
    eventually(Duration::from_secs(5), || async {
        (port(&vif2)?.floating_ip.is_none() && port(&vif)?.floating_ip? == a.ip).then_some(())
    })
    .await
    .expect("and back");
    // A stopped instance's port stays on its host for the next start, and follows its
    // floating IP: moved away meanwhile, the host no longer maps it.
    wait_job(&c, &c.stop_instance(&inst.id).await.unwrap().job).await;
    wait_state(&c, &inst.id, InstanceState::Stopped).await;
    c.disassociate_floating_ip(&a.id).await.unwrap();
    eventually(Duration::from_secs(5), || async { port(&vif)?.floating_ip.is_none().then_some(()) })
        .await
        .expect("the stopped instance's host lets the floating IP go");
    c.associate_floating_ip(&a.id, &assoc).await.unwrap();
    eventually(Duration::from_secs(5), || async { (port(&vif)?.floating_ip? == a.ip).then_some(()) })
        .await
        .expect("and maps it again when it comes back");
    c.start_instance(&inst.id).await.unwrap();
    wait_state(&c, &inst.id, InstanceState::Running).await;
    assert_eq!(port(&vif).unwrap().floating_ip, Some(a.ip));
    // Terminating the instance keeps the address with the account, unassociated.
    let t = c.terminate_instance(&inst.id).await.unwrap();
    wait_job(&c, &t.job).await;
    assert!(c.get_floating_ip(&a.id).await.unwrap().instance_id.is_none());
    c.delete_floating_ip(&a.id).await.unwrap();
    assert_eq!(err(c.get_floating_ip(&a.id).await).0, 404);
    assert_eq!(c.list_all_floating_ips().await.unwrap().len(), 2);
    s.stop().await;
}

/// A terminated instance, a deleted volume and a deleted snapshot stay in their lists for an hour (the test
/// moves their last change back to 2000), then only a state filter or their ID finds
/// them: lists no longer grow with everything ever made.
async fn gone_resources_leave_their_lists_after_an_hour(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("tidy").await;
    let names = |v: Vec<Instance>| v.into_iter().map(|i| i.name).collect::<Vec<_>>();
    let all = ListQuery::default();
    let old = c.create_instance(&inst_req(&s.image, "old")).await.unwrap().resource;
    let live = c.create_instance(&inst_req(&s.image, "live")).await.unwrap().resource;
    wait_state(&c, &old.id, InstanceState::Running).await;
    let t = c.terminate_instance(&old.id).await.unwrap();
    wait_job(&c, &t.job).await;
    let vol = |name: &str| CreateVolume { name: name.into(), size_mib: Some(10), snapshot_id: None, image_id: None };
    let gone = c.create_volume(&vol("gone")).await.unwrap();
    wait_job(&c, &gone.job).await;
    let kept = c.create_volume(&vol("kept")).await.unwrap();
    wait_job(&c, &kept.job).await;
    let snap = |name: &str| CreateSnapshot { volume_id: kept.resource.id.clone(), name: name.into() };
    let old_snap = c.create_snapshot(&snap("old-snap")).await.unwrap();
    wait_job(&c, &old_snap.job).await;
    let new_snap = c.create_snapshot(&snap("new-snap")).await.unwrap();
    wait_job(&c, &new_snap.job).await;
    wait_job(&c, &c.delete_snapshot(&old_snap.resource.id).await.unwrap().job).await;
    wait_job(&c, &c.delete_volume(&gone.resource.id).await.unwrap().job).await;
    // Just ended: still listed.
    assert_eq!(names(c.list_all("/instances", &all).await.unwrap()), ["old", "live"]);
    assert_eq!(c.list_all::<Volume>("/volumes", &all).await.unwrap().len(), 2);
    assert_eq!(c.list_all::<Snapshot>("/snapshots", &all).await.unwrap().len(), 2);
    {
        use sqlx::Connection;
        let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
        let long_ago = "2000-01-01T00:00:00.000Z";
        for (sql, id) in [
            ("UPDATE instances SET updated_at = $1 WHERE id = $2", old.id.as_str()),
            ("UPDATE volumes SET updated_at = $1 WHERE id = $2", gone.resource.id.as_str()),
            // A live one that has not changed for as long stays listed.
            ("UPDATE instances SET updated_at = $1 WHERE id = $2", live.id.as_str()),
            ("UPDATE volumes SET updated_at = $1 WHERE id = $2", kept.resource.id.as_str()),
            ("UPDATE snapshots SET updated_at = $1 WHERE id = $2", old_snap.resource.id.as_str()),
            ("UPDATE snapshots SET updated_at = $1 WHERE id = $2", new_snap.resource.id.as_str()),
        ] {
            sqlx::query(sql).bind(long_ago).bind(id).execute(&mut conn).await.unwrap();
        }
    }
    // The read model serves a list for up to a second.
    eventually(Duration::from_secs(5), || async {
        let l = names(c.list_all("/instances", &all).await.ok()?);
        (l == ["live"]).then_some(())
    })
    .await
    .expect("the instance terminated long ago leaves the list");
    let by_name = ListQuery { name: Some("old".into()), ..Default::default() };
    assert!(c.list_all::<Instance>("/instances", &by_name).await.unwrap().is_empty());
    let terminated = ListQuery { state: Some("terminated".into()), ..Default::default() };
    assert_eq!(names(c.list_all("/instances", &terminated).await.unwrap()), ["old"]);
    assert_eq!(c.get_instance(&old.id).await.unwrap().state, InstanceState::Terminated);
    let vols: Vec<Volume> = c.list_all("/volumes", &all).await.unwrap();
    assert_eq!(vols.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["kept"]);
    let deleted = ListQuery { state: Some("deleted".into()), ..Default::default() };
    assert_eq!(c.list_all::<Volume>("/volumes", &deleted).await.unwrap()[0].id, gone.resource.id);
    assert_eq!(c.get_volume(&gone.resource.id).await.unwrap().state, VolumeState::Deleted);
    let snaps: Vec<Snapshot> = c.list_all("/snapshots", &all).await.unwrap();
    assert_eq!(snaps.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["new-snap"]);
    assert_eq!(c.list_all::<Snapshot>("/snapshots", &deleted).await.unwrap()[0].id, old_snap.resource.id);
    s.stop().await;
}

async fn ended_rows_leave_the_database_after_the_retention(db: Db) {
    use sqlx::Connection;
    use vdc_dcmgr::app::retention::{prune_ended, Removed};
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("keep").await;
    let ctx = s.dcmgr().ctx.clone();
    let mut ended = Vec::new();
    for name in ["old", "recent", "live"] {
        let i = c.create_instance(&inst_req(&s.image, name)).await.unwrap().resource;
        wait_state(&c, &i.id, InstanceState::Running).await;
        ended.push(i);
    }
    let [old, recent, live] = <[Instance; 3]>::try_from(ended).unwrap();
    let mut jobs = Vec::new();
    for i in [&old, &recent] {
        let t = c.terminate_instance(&i.id).await.unwrap();
        jobs.push(wait_job(&c, &t.job).await);
    }
    let vol = CreateVolume { name: "data".into(), size_mib: Some(10), snapshot_id: None, image_id: None };
    let vol = c.create_volume(&vol).await.unwrap();
    wait_job(&c, &vol.job).await;
    let snap = CreateSnapshot { volume_id: vol.resource.id.clone(), name: "snap".into() };
    let snap = c.create_snapshot(&snap).await.unwrap();
    wait_job(&c, &snap.job).await;
    wait_job(&c, &c.delete_snapshot(&snap.resource.id).await.unwrap().job).await;
    wait_job(&c, &c.delete_volume(&vol.resource.id).await.unwrap().job).await;
    let mut conn = sqlx::AnyConnection::connect(&s.database_url).await.unwrap();
    let long_ago = "2000-01-01T00:00:00.000Z";
    let back_date = [
        "UPDATE instances SET updated_at = $1 WHERE id = $2",
        "UPDATE volumes SET updated_at = $1 WHERE id = $2",
        "UPDATE snapshots SET updated_at = $1 WHERE id = $2",
        "UPDATE jobs SET finished_at = $1 WHERE id = $2",
    ];
    for (sql, id) in [
        (back_date[0], old.id.as_str()),
        // Running, unchanged as long: kept.
        (back_date[0], live.id.as_str()),
        // Deleted, but its snapshot's row (deleted just now) still names it: kept until
        // the snapshot's row goes.
        (back_date[1], vol.resource.id.as_str()),
        (back_date[3], jobs[0].id.as_str()),
    ] {
        sqlx::query(sql).bind(long_ago).bind(id).execute(&mut conn).await.unwrap();
    }
    // A job still running, however old, stays.
    sqlx::query(
        "INSERT INTO jobs (id, account_id, action, resource_id, target, state, created_at) \
         VALUES ('job-stillrunning', $1, 'instance.create', 'i-none', 'never', 'running', $2)",
    )
    .bind(c.whoami().await.unwrap().account.id.as_str())
    .bind(long_ago)
    .execute(&mut conn)
    .await
    .unwrap();

    // Several controllers prune at once: each row goes once.
    let passes = futures::future::join_all((0..4).map(|_| prune_ended(&ctx))).await;
    let mut sum = Removed::default();
    for p in passes {
        let p = p.expect("a pass succeeds beside the others");
        sum.instances += p.instances;
        sum.volumes += p.volumes;
        sum.snapshots += p.snapshots;
        sum.jobs += p.jobs;
    }
    assert_eq!(sum, Removed { instances: 1, volumes: 0, snapshots: 0, jobs: 1 });
    assert_eq!(err(c.get_instance(&old.id).await), (404, "not_found".into()));
    assert_eq!(err(c.get_job(&jobs[0].id).await), (404, "not_found".into()));
    assert_eq!(c.get_instance(&recent.id).await.unwrap().state, InstanceState::Terminated);
    assert_eq!(c.get_instance(&live.id).await.unwrap().state, InstanceState::Running);
    assert_eq!(c.get_job(&jobs[1].id).await.unwrap().state, jobs[1].state);
    assert_eq!(c.get_volume(&vol.resource.id).await.unwrap().state, VolumeState::Deleted);
    let terminated = ListQuery { state: Some("terminated".into()), ..Default::default() };
    let names: Vec<String> =
        c.list_all::<Instance>("/instances", &terminated).await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["recent"]);
    let running: (String,) =
        sqlx::query_as("SELECT state FROM jobs WHERE id = 'job-stillrunning'").fetch_one(&mut conn).await.unwrap();
    assert_eq!(running.0, "running");
    // The second time removes nothing.
    assert_eq!(prune_ended(&ctx).await.unwrap(), Removed::default());

    // The snapshot deleted long ago: it goes, and its volume with it in the same pass.
    assert_eq!(c.get_snapshot(&snap.resource.id).await.unwrap().state, SnapshotState::Deleted);
    sqlx::query(back_date[2]).bind(long_ago).bind(snap.resource.id.as_str()).execute(&mut conn).await.unwrap();
    assert_eq!(prune_ended(&ctx).await.unwrap(), Removed { instances: 0, volumes: 1, snapshots: 1, jobs: 0 });
    assert_eq!(err(c.get_snapshot(&snap.resource.id).await), (404, "not_found".into()));
    assert_eq!(err(c.get_volume(&vol.resource.id).await), (404, "not_found".into()));
    // The names are free, the account goes on as before.
    let again = c.create_instance(&inst_req(&s.image, "old")).await.unwrap().resource;
    wait_state(&c, &again.id, InstanceState::Running).await;
    s.stop().await;
}

/// Tenants holding every floating IP left new routers without an address, so guests
/// had no outbound NAT and only dcmgr's log said so: floating IPs leave
/// `external.router_reserve` addresses to the routers, and the refusal says why.
async fn floating_ips_leave_the_routers_reserve(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    let mut ext = vdc_tests::test_external("203.0.113.20"); // 11 addresses
    ext.router_reserve = Some(3);
    o.external = Some(ext);
    let s = Stack::start(o).await;
    let (c, d) = (s.account("hoarder").await, s.account("builder").await);
    let mut held = vec![];
    let refusal = loop {
        match c.create_floating_ip(&CreateFloatingIp::default()).await {
            Ok(f) => held.push(f),
            Err(e) => break e,
        }
    };
    assert_eq!(held.len(), 8, "11 addresses, 3 kept for routers");
    assert!(refusal.to_string().contains("kept for the routers' outbound NAT"), "{refusal}");
    let asked = CreateFloatingIp { ip: Some("203.0.113.20".into()) };
    assert_eq!(err(d.create_floating_ip(&asked).await).1, "no_capacity", "a named address too");
    // Another account's instances still get their routers' addresses.
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    for (i, cidr) in ["10.41.0.0/24", "10.42.0.0/24", "10.43.0.0/24"].into_iter().enumerate() {
        let net = d.create_network(&net_req(&format!("n{i}"), cidr)).await.unwrap();
        let mut r = inst_req(&s.image, &format!("i{i}"));
        r.interfaces = vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }];
        let vif = d.create_instance(&r).await.unwrap().resource.interfaces[0].id.clone();
        eventually(Duration::from_secs(5), || async { Some(port(&vif)?.network.external?.snat_ip) })
            .await
            .expect("the router of a new network has an address");
    }
    // The pool is full now; a freed address goes to a floating IP again.
    assert_eq!(err(d.create_floating_ip(&CreateFloatingIp::default()).await).1, "no_capacity");
    c.delete_floating_ip(&held[0].id).await.unwrap();
    d.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    s.stop().await;
}

/// A host's router for a network holds an address of the external pool (its SNAT) while
/// an instance of the network is on the host, running or stopped there, and gives it back
/// once none has been there for `router_release_after_ms`. Before, it kept the address
/// until the network was deleted: a network held one for every host it ever ran on, and
/// a pool used up that way left new instances without outbound NAT.
async fn routers_give_their_address_back(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.12")); // 3 addresses
    o.router_release_after_ms = 300;
    let s = Stack::start(o).await;
    let c = s.account("routers").await;
    let port = |vif: &VifId| s.hosts.iter().find_map(|h| h.nw_driver.as_ref()?.port(vif));
    let on = |net: &Network, name: &str| {
        let mut r = inst_req(&s.image, name);
        r.interfaces = vec![CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None }];
        r
    };
    let free = || vdc_tests::free_floating_ips(&c);
    let (n1, n2) = (
        c.create_network(&net_req("r1", "10.31.0.0/24")).await.unwrap(),
        c.create_network(&net_req("r2", "10.32.0.0/24")).await.unwrap(),
    );
    let i1 = c.create_instance(&on(&n1, "i1")).await.unwrap().resource;
    let i2 = c.create_instance(&on(&n2, "i2")).await.unwrap().resource;
    let snat = |i: &Instance| {
        let vif = i.interfaces[0].id.clone();
        async move {
            eventually(Duration::from_secs(5), || async { Some(port(&vif)?.network.external?.snat_ip) })
                .await
                .expect("the host's router has an address")
        }
    };
    let (s1, s2) = (snat(&i1).await, snat(&i2).await);
    assert_ne!(s1, s2, "a router per network on the host");
    assert_eq!(free().await, 1, "two routers hold two of the three addresses");

    // Stopped, i2 keeps its port on the host for its next start, and the router its address.
    c.stop_instance(&i2.id).await.unwrap();
    wait_state(&c, &i2.id, InstanceState::Stopped).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(free().await, 1, "a stopped instance's router keeps its address");

    // Terminated, i1 leaves n1 with no instance on the host: its router's address goes back.
    c.terminate_instance(&i1.id).await.unwrap();
    wait_state(&c, &i1.id, InstanceState::Terminated).await;
    eventually(Duration::from_secs(10), || async { (free().await == 2).then_some(()) })
        .await
        .expect("n1's router gives its address back");

    // n1 on the host again: its router takes an address again; i2 starts with its own.
    let i3 = c.create_instance(&on(&n1, "i3")).await.unwrap().resource;
    snat(&i3).await;
    c.start_instance(&i2.id).await.unwrap();
    wait_state(&c, &i2.id, InstanceState::Running).await;
    assert_eq!(snat(&i2).await, s2);
    assert_eq!(free().await, 1);
    s.stop().await;
}

/// A host that reports a guest this database has no record of (a dcmgr started on
/// another database beside the site's NATS) is not told to remove it: such a dcmgr
/// removed a whole site's guests. One whose record says it belongs elsewhere still is.
async fn a_guest_this_database_never_heard_of_is_left_alone(db: Db) {
    use vdc_schema::agent::Hypervisor;
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    let s = Stack::start(opts).await;
    let c = s.account("gh").await;
    let sim = s.hosts[0].hva_driver.clone().unwrap();
    let image = vdc_hva::testing::image(ImageFormat::Raw, "/x");
    let stranger = vdc_hva::testing::spec(InstanceId::generate().as_str(), HypervisorKind::Kvm, image);
    sim.ensure_instance(stranger).await.unwrap();
    // The report of it went in (an instance of this database's, made after it, runs).
    let mine = c.create_instance(&inst_req(&s.image, "mine")).await.unwrap().resource;
    wait_state(&c, &mine.id, InstanceState::Running).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sim.len(), 2, "the stranger still runs beside this database's instance");
    s.stop().await;
}
