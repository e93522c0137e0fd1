//! Placement policies (issue 15, point 6) on simulated hosts, every scenario on SQLite and
//! on PostgreSQL: server groups (affinity, anti-affinity and their soft forms), host
//! zones and labels, refusals that name the constraint, and concurrent creates into one
//! group.

use clap::Parser;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::*;
use vdc_tests::{eventually, on_both_databases, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    server_groups_place_together_or_apart,
    zones_and_labels_choose_the_host,
    concurrent_creates_keep_the_group_policy,
    instances_in_groups_travel_in_bundles_with_their_group,
    the_cli_speaks_groups_zones_and_labels,
    a_stopped_instance_starts_on_the_host_that_keeps_its_disk,
    a_host_gone_for_good_is_evacuated,
    a_cordoned_host_takes_no_new_instances,
    a_burst_of_creates_is_spread,
    root_disks_are_booked_on_the_host_that_keeps_them,
    an_import_whose_disks_do_not_fit_is_refused_whole,
);

/// The status, code and message of an API error; panics if the call succeeded.
fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, message, .. }) => (status, code, message),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn inst(image: &ImageId, name: &str) -> CreateInstance {
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

fn in_group(image: &ImageId, name: &str, group: &str) -> CreateInstance {
    CreateInstance { server_group: Some(group.into()), ..inst(image, name) }
}

async fn group(c: &Client, name: &str, policy: ServerGroupPolicy) -> ServerGroup {
    c.create_server_group(&CreateServerGroup { name: name.into(), policy }).await.unwrap()
}

async fn groups(c: &Client) -> Vec<ServerGroup> {
    c.list_all("/server_groups", &ListQuery::default()).await.unwrap()
}

fn hosts_of(instances: &[Instance]) -> Vec<HostNodeId> {
    instances.iter().map(|i| i.host_node_id.clone().expect("placed")).collect()
}

fn distinct(h: &[HostNodeId]) -> usize {
    h.iter().collect::<HashSet<_>>().len()
}

/// Waits (10 s at most) until host `id`'s state is `state`, as its heartbeats decide.
async fn host_becomes(s: &Stack, id: &HostNodeId, state: NodeState, what: &str) {
    eventually(Duration::from_secs(10), || async {
        (s.admin.get_host_node(id).await.ok()?.state == state).then_some(())
    })
    .await
    .expect(what);
}

async fn host_ids(s: &Stack) -> Vec<HostNodeId> {
    s.admin.list_all_host_nodes().await.unwrap().into_iter().map(|h| h.id).collect()
}

async fn server_groups_place_together_or_apart(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 3;
    // 8 allocatable vCPUs per host.
    opts.host_cpus = 2;
    opts.quotas = BTreeMap::from([(QuotaKey::ServerGroups, 5)]);
    let s = Stack::start(opts).await;
    let c = s.account("groups").await;
    let other = s.account("other").await;

    let apart = group(&c, "apart", ServerGroupPolicy::AntiAffinity).await;
    assert!(apart.id.as_str().starts_with("srvg-"), "{}", apart.id);
    assert!(apart.members.is_empty());
    let (status, code, _) = err(c
        .create_server_group(&CreateServerGroup { name: "apart".into(), policy: ServerGroupPolicy::Affinity })
        .await);
    assert_eq!((status, code.as_str()), (409, "name_taken"));
    // The name is the account's: another may use it.
    let theirs = group(&other, "apart", ServerGroupPolicy::Affinity).await;
    // An unknown policy is a malformed body.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/server_groups", s.url()))
        .bearer_auth(&s.admin_token)
        .json(&serde_json::json!({"name": "x", "policy": "spread"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Anti-affinity: one member per host, by ID or by name; the fourth has nowhere to go.
    let mut members = vec![];
    for (i, g) in [apart.id.as_str(), "apart", "apart"].into_iter().enumerate() {
        members.push(c.create_instance(&in_group(&s.image, &format!("a{i}"), g)).await.unwrap().resource);
    }
    assert_eq!(distinct(&hosts_of(&members)), 3, "one host each");
    assert!(members.iter().all(|m| m.server_group_id.as_ref() == Some(&apart.id)));
    let (status, code, message) = err(c.create_instance(&in_group(&s.image, "a3", "apart")).await);
    assert_eq!((status, code.as_str()), (422, "placement_unsatisfiable"), "{message}");
    assert!(message.contains("apart") && message.contains("anti-affinity"), "{message}");
    assert!(!message.contains("GiB") && !message.contains("free"), "no capacity figures: {message}");
    // Another account's group is unknown, whatever its name or ID.
    let (status, code, _) = err(c.create_instance(&in_group(&s.image, "x", theirs.id.as_str())).await);
    assert_eq!((status, code.as_str()), (404, "not_found"));
    assert_eq!(err(other.get_server_group(&apart.id).await).0, 404);
    assert_eq!(err(other.delete_server_group(&apart.id).await).0, 404);

    // The group lists its members; it cannot go while it has any.
    let shown = c.get_server_group(&apart.id).await.unwrap();
    assert_eq!(shown.members, members.iter().map(|m| m.id.clone()).collect::<Vec<_>>());
    let listed = groups(&c).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].members.len(), 3);
    let (status, code, message) = err(c.delete_server_group(&apart.id).await);
    assert_eq!((status, code.as_str()), (409, "server_group_in_use"));
    assert!(message.contains(members[0].id.as_str()), "{message}");

    // A stopped member starts again on a host without the others.
    let first = &members[0];
    wait_state(&c, &first.id, InstanceState::Running).await;
    c.stop_instance(&first.id).await.unwrap();
    wait_state(&c, &first.id, InstanceState::Stopped).await;
    // Its host is free of the group now: a new member may take it.
    let newcomer = c.create_instance(&in_group(&s.image, "a4", "apart")).await.unwrap().resource;
    assert_eq!(newcomer.host_node_id, first.host_node_id);
    let (status, code, _) = err(c.start_instance(&first.id).await);
    assert_eq!((status, code.as_str()), (422, "placement_unsatisfiable"));

    // Terminated instances are no members: then the group goes.
    for m in members.iter().chain([&newcomer]) {
        c.terminate_instance(&m.id).await.unwrap();
        wait_state(&c, &m.id, InstanceState::Terminated).await;
    }
    assert!(c.get_server_group(&apart.id).await.unwrap().members.is_empty());
    c.delete_server_group(&apart.id).await.unwrap();
    assert_eq!(err(c.get_server_group(&apart.id).await).0, 404);
    // A terminated instance that was in it keeps no link to a group that is gone.
    assert_eq!(c.get_instance(&first.id).await.unwrap().server_group_id, None);

    // Affinity: every member on the first one's host.
    group(&c, "together", ServerGroupPolicy::Affinity).await;
    let mut members = vec![];
    for i in 0..4 {
        members.push(c.create_instance(&in_group(&s.image, &format!("t{i}"), "together")).await.unwrap().resource);
    }
    assert_eq!(distinct(&hosts_of(&members)), 1, "one host for all");
    // More than that host holds (8 vCPUs): refused, naming the policy.
    let big = CreateInstance { cpus: 5, ..in_group(&s.image, "big", "together") };
    let (status, code, message) = err(c.create_instance(&big).await);
    assert_eq!((status, code.as_str()), (422, "placement_unsatisfiable"), "{message}");
    assert!(message.contains("affinity"), "{message}");

    // Soft anti-affinity spreads while it can, then places anyway.
    group(&c, "soft", ServerGroupPolicy::SoftAntiAffinity).await;
    let mut soft = vec![];
    for i in 0..4 {
        soft.push(c.create_instance(&in_group(&s.image, &format!("s{i}"), "soft")).await.unwrap().resource);
    }
    assert_eq!(distinct(&hosts_of(&soft[..3])), 3, "spread first");
    assert_eq!(soft.len(), 4);
    // Soft affinity packs while it can.
    group(&c, "soft-together", ServerGroupPolicy::SoftAffinity).await;
    let mut st = vec![];
    for i in 0..3 {
        st.push(c.create_instance(&in_group(&s.image, &format!("st{i}"), "soft-together")).await.unwrap().resource);
    }
    assert_eq!(distinct(&hosts_of(&st)), 1);

    // The quota on server groups (5): the fifth is allowed, the sixth not.
    group(&c, "g4", ServerGroupPolicy::Affinity).await;
    group(&c, "g5", ServerGroupPolicy::Affinity).await;
    let (status, code, message) =
        err(c.create_server_group(&CreateServerGroup { name: "g6".into(), policy: ServerGroupPolicy::Affinity }).await);
    assert_eq!((status, code.as_str()), (422, "quota_exceeded"));
    assert!(message.contains("server_groups"), "{message}");
    s.stop().await;
}

async fn zones_and_labels_choose_the_host(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 3;
    // 16 allocatable vCPUs per host.
    opts.host_cpus = 4;
    let s = Stack::start(opts).await;
    let c = s.account("zoned").await;
    let hosts = host_ids(&s).await;
    let (h0, h1) = (&hosts[0], &hosts[1]);
    let labels = |l: &[(&str, Option<&str>)]| -> BTreeMap<String, Option<String>> {
        l.iter().map(|(k, v)| (k.to_string(), v.map(String::from))).collect()
    };
    let set = |id: &HostNodeId, zone: Option<&str>, l: BTreeMap<String, Option<String>>| {
        let req = UpdateHostNode { zone: zone.map(String::from), labels: l, ..Default::default() };
        let (admin, id) = (s.admin.clone(), id.clone());
        async move { admin.update_host_node(&id, &req).await }
    };
    // Only an admin sets them, with valid names.
    let req = UpdateHostNode { zone: Some("z1".into()), ..Default::default() };
    assert_eq!(err(c.update_host_node(h0, &req).await).0, 403);
    let (status, code, _) = err(set(h0, Some("bad zone"), labels(&[])).await);
    assert_eq!((status, code.as_str()), (400, "invalid_zone"));
    let (status, code, _) = err(set(h0, None, labels(&[("a,b", Some("x"))])).await);
    assert_eq!((status, code.as_str()), (400, "invalid_label"));
    assert_eq!(err(set(&"hn-nosuchhost".parse().unwrap(), Some("z1"), labels(&[])).await).0, 404);

    let h = set(h0, Some("z1"), labels(&[("ssd", Some("true")), ("rack", Some("r_1"))])).await.unwrap();
    assert_eq!(h.zone.as_deref(), Some("z1"));
    assert_eq!(h.labels.len(), 2);
    // Labels merge: null removes one, others stay; the zone stays when not named.
    let h = set(h0, None, labels(&[("rack", None), ("gpu", Some("a100"))])).await.unwrap();
    assert_eq!((h.zone.as_deref(), h.labels.get("ssd").map(String::as_str)), (Some("z1"), Some("true")));
    assert_eq!(h.labels.keys().collect::<Vec<_>>(), ["gpu", "ssd"]);
    // Concurrent label changes of one host merge: none is lost.
    let h2 = &hosts[2];
    let patches = (0..12).map(|i| {
        let key = format!("k{i}");
        set(h2, Some(if i % 2 == 0 { "even" } else { "odd" }), labels(&[(key.as_str(), Some("v"))]))
    });
    for r in futures::future::join_all(patches).await {
        r.unwrap();
    }
    let h = s.admin.get_host_node(h2).await.unwrap();
    assert_eq!(h.labels.len(), 12, "{:?}", h.labels);
    assert!(matches!(h.zone.as_deref(), Some("even" | "odd")));
    set(h2, Some(""), (0..12).map(|i| (format!("k{i}"), None)).collect()).await.unwrap();
    assert!(s.admin.get_host_node(h2).await.unwrap().labels.is_empty());
    set(h1, Some("z2"), labels(&[("ssd", Some("true"))])).await.unwrap();
    // Registrations do not undo what the admin set.
    let listed = s.admin.list_all_host_nodes().await.unwrap();
    assert_eq!(listed.iter().filter(|h| h.zone.is_some()).count(), 2);

    let z = |zone: Option<&str>, l: &[(&str, &str)]| CreateInstance {
        zone: zone.map(String::from),
        host_labels: l.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..inst(&s.image, "z")
    };
    for _ in 0..3 {
        let i = c.create_instance(&z(Some("z1"), &[])).await.unwrap().resource;
        assert_eq!(i.host_node_id.as_ref(), Some(h0));
        let i = c.create_instance(&z(None, &[("gpu", "a100")])).await.unwrap().resource;
        assert_eq!(i.host_node_id.as_ref(), Some(h0));
        let i = c.create_instance(&z(Some("z2"), &[("ssd", "true")])).await.unwrap().resource;
        assert_eq!(i.host_node_id.as_ref(), Some(h1));
        let i = c.create_instance(&z(None, &[("ssd", "true")])).await.unwrap().resource;
        assert!(i.host_node_id.as_ref() == Some(h0) || i.host_node_id.as_ref() == Some(h1));
    }
    // `_` is a character, not a wildcard.
    set(h0, None, labels(&[("rack", Some("r_1"))])).await.unwrap();
    assert_eq!(err(c.create_instance(&z(None, &[("rack", "rx1")])).await).1, "placement_unsatisfiable");
    assert!(c.create_instance(&z(None, &[("rack", "r_1")])).await.is_ok());

    // What no host offers is refused, naming it.
    let (status, code, message) = err(c.create_instance(&z(Some("z9"), &[])).await);
    assert_eq!((status, code.as_str()), (422, "placement_unsatisfiable"));
    assert!(message.contains("\"z9\""), "{message}");
    let (_, code, message) = err(c.create_instance(&z(Some("z2"), &[("gpu", "a100")])).await);
    assert_eq!(code, "placement_unsatisfiable");
    assert!(message.contains("gpu=a100"), "{message}");
    let (status, code, _) = err(c.create_instance(&z(Some("not a zone"), &[])).await);
    assert_eq!((status, code.as_str()), (400, "invalid_zone"));
    // A zone whose hosts are full says no_capacity, without figures.
    let big = CreateInstance { cpus: 17, ..z(Some("z2"), &[]) };
    let (_, code, message) = err(c.create_instance(&big).await);
    assert_eq!(code, "no_capacity");
    assert!(message.contains("zone \"z2\""), "{message}");

    // A stopped instance starts again in its zone.
    let i = c.create_instance(&z(Some("z2"), &[])).await.unwrap().resource;
    wait_state(&c, &i.id, InstanceState::Running).await;
    c.stop_instance(&i.id).await.unwrap();
    wait_state(&c, &i.id, InstanceState::Stopped).await;
    let started = c.start_instance(&i.id).await.unwrap().resource;
    assert_eq!(started.host_node_id.as_ref(), Some(h1));

    // The zone is cleared with "".
    let h = set(h1, Some(""), labels(&[])).await.unwrap();
    assert_eq!(h.zone, None);
    assert_eq!(err(c.create_instance(&z(Some("z2"), &[])).await).1, "placement_unsatisfiable");
    s.stop().await;
}

/// N concurrent creates into one anti-affinity group over M hosts give exactly min(N, M)
/// instances, on distinct hosts; concurrent creates into an affinity group all land on
/// one host; starts of stopped members racing creates keep the policy; a delete racing
/// creates either finds members or leaves none.
async fn concurrent_creates_keep_the_group_policy(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 4;
    let s = Stack::start(opts).await;
    let c = s.account("racer").await;

    group(&c, "apart", ServerGroupPolicy::AntiAffinity).await;
    let t = std::time::Instant::now();
    let creates = (0..12).map(|i| {
        let (c, req) = (c.clone(), in_group(&s.image, &format!("a{i}"), "apart"));
        async move { c.create_instance(&req).await }
    });
    let (mut placed, mut refused) = (vec![], 0);
    for r in futures::future::join_all(creates).await {
        match r {
            Ok(a) => placed.push(a.resource),
            Err(ClientError::Api { code, .. }) if code == "placement_unsatisfiable" => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    eprintln!("12 concurrent creates into one anti-affinity group over 4 hosts: {:?}", t.elapsed());
    assert_eq!((placed.len(), refused), (4, 8), "min(N, M) placed");
    assert_eq!(distinct(&hosts_of(&placed)), 4, "on distinct hosts");

    group(&c, "together", ServerGroupPolicy::Affinity).await;
    let creates = (0..8).map(|i| {
        let (c, req) = (c.clone(), in_group(&s.image, &format!("t{i}"), "together"));
        async move { c.create_instance(&req).await }
    });
    let placed: Vec<Instance> =
        futures::future::join_all(creates).await.into_iter().map(|r| r.unwrap().resource).collect();
    assert_eq!(placed.len(), 8);
    assert_eq!(distinct(&hosts_of(&placed)), 1, "all on one host");

    // Starts of stopped members (each under its instance's lock, not the account's)
    // racing creates into the same anti-affinity group: still one member per host.
    group(&c, "spread", ServerGroupPolicy::AntiAffinity).await;
    let mut stopped = vec![];
    for i in 0..4 {
        let m = c.create_instance(&in_group(&s.image, &format!("sp{i}"), "spread")).await.unwrap().resource;
        wait_state(&c, &m.id, InstanceState::Running).await;
        c.stop_instance(&m.id).await.unwrap();
        stopped.push(m.id);
    }
    for id in &stopped {
        wait_state(&c, id, InstanceState::Stopped).await;
    }
    let t = std::time::Instant::now();
    let starts = stopped.iter().map(|id| {
        let (c, id) = (c.clone(), id.clone());
        async move { c.start_instance(&id).await.map(|a| a.resource) }
    });
    let creates = (0..4).map(|i| {
        let (c, req) = (c.clone(), in_group(&s.image, &format!("sp-new{i}"), "spread"));
        async move { c.create_instance(&req).await.map(|a| a.resource) }
    });
    let (started, created) = tokio::join!(futures::future::join_all(starts), futures::future::join_all(creates));
    let mut placed = vec![];
    for r in started.into_iter().chain(created) {
        match r {
            Ok(i) => placed.push(i),
            Err(ClientError::Api { code, .. }) if code == "placement_unsatisfiable" => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    eprintln!("4 starts and 4 creates into one anti-affinity group over 4 hosts: {:?}", t.elapsed());
    assert_eq!(placed.len(), 4, "one per host");
    assert_eq!(distinct(&hosts_of(&placed)), 4);

    // Delete against creates: whatever wins, no instance is in a group that is gone.
    for round in 0..3 {
        let g = group(&c, &format!("race{round}"), ServerGroupPolicy::SoftAntiAffinity).await;
        let creates = (0..6).map(|i| {
            let (c, req) = (c.clone(), in_group(&s.image, &format!("r{round}-{i}"), g.id.as_str()));
            async move { c.create_instance(&req).await.map(|a| a.resource) }
        });
        let del = {
            let (c, id) = (c.clone(), g.id.clone());
            async move { c.delete_server_group(&id).await }
        };
        let (made, deleted) = tokio::join!(futures::future::join_all(creates), del);
        let made: Vec<Instance> = made
            .into_iter()
            .filter_map(|r| match r {
                Ok(i) => Some(i),
                Err(ClientError::Api { status: 404, .. }) => None,
                Err(e) => panic!("unexpected {e}"),
            })
            .collect();
        match deleted {
            Ok(()) => {
                // Deleted: every create that succeeded committed before it and would have
                // been a member, so there were none.
                assert!(made.is_empty(), "round {round}: deleted with members {made:?}");
            }
            Err(ClientError::Api { status: 409, code, .. }) => {
                assert_eq!(code, "server_group_in_use");
                assert!(!made.is_empty());
                assert_eq!(c.get_server_group(&g.id).await.unwrap().members.len(), made.len());
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    s.stop().await;
}

/// Bundles carry server groups: an instance in one imports into the group made for it
/// (more in `bundles::server_groups_travel_and_place_their_members_by_policy`).
async fn instances_in_groups_travel_in_bundles_with_their_group(db: Db) {
    let a = Stack::start(StackOptions::new(db)).await;
    let key = a.admin.bundle_key().await.unwrap().public_key;
    let mut opts = StackOptions::new(db);
    opts.bundles.trusted_keys = vec![key];
    let b = Stack::start(opts).await;
    let ca = a.account("mover").await;
    group(&ca, "web", ServerGroupPolicy::AntiAffinity).await;
    let i = ca.create_instance(&in_group(&a.image, "web1", "web")).await.unwrap().resource;
    wait_state(&ca, &i.id, InstanceState::Running).await;
    let mut bytes = Vec::new();
    ca.export_bundle(false, true, &mut bytes, |_| {}).await.unwrap();
    let cb = b.account("mover").await;
    assert!(cb.import_bundle(bytes, &[]).await.unwrap().created);
    let imported = cb.list_all_instances().await.unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].name, "web1");
    let here = groups(&cb).await;
    assert_eq!(here.len(), 1);
    assert_eq!((here[0].name.as_str(), here[0].policy), ("web", ServerGroupPolicy::AntiAffinity));
    assert_eq!(imported[0].server_group_id.as_ref(), Some(&here[0].id));
    a.stop().await;
    b.stop().await;
}

/// Runs `vdc ARGS…` in-process as the holder of `c`'s token.
async fn vdc(c: &Client, args: &[&str]) -> Result<(), vdc_cli::error::CliError> {
    use vdc_cli::commands::{self, Cli, GlobalArgs};
    let cli = Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("vdc {}: {e}", args.join(" ")));
    let global = GlobalArgs {
        output: vdc_cli::output::OutputArg::Format(vdc_cli::output::OutputFormat::Json),
        api: Some(c.base_url().to_string()),
        token: Some(c.token().to_string()),
        account: None,
        wait_timeout: 30,
        verbose: 0,
    };
    commands::run(&global, cli.command).await
}

async fn ok(c: &Client, args: &[&str]) {
    if let Err(e) = vdc(c, args).await {
        panic!("vdc {}: {}", args.join(" "), e.report());
    }
}

async fn the_cli_speaks_groups_zones_and_labels(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 2;
    let s = Stack::start(opts).await;
    let c = s.account("cli").await;
    let hosts = host_ids(&s).await;
    ok(&s.admin, &["host", "zone", hosts[1].as_str(), "east"]).await;
    ok(&s.admin, &["host", "label", hosts[1].as_str(), "ssd=true", "rack=r1"]).await;
    ok(&s.admin, &["host", "label", hosts[1].as_str(), "rack-"]).await;
    ok(&s.admin, &["host", "list"]).await;
    let h = s.admin.get_host_node(&hosts[1]).await.unwrap();
    assert_eq!(h.zone.as_deref(), Some("east"));
    assert_eq!(h.labels, BTreeMap::from([("ssd".to_string(), "true".to_string())]));

    ok(&c, &["server-group", "create", "web", "--policy", "anti-affinity"]).await;
    ok(&c, &["server-group", "list"]).await;
    ok(
        &c,
        &[
            "instance",
            "create",
            "w1",
            "--image",
            "tiny",
            "--server-group",
            "web",
            "--zone",
            "east",
            "--host-label",
            "ssd=true",
        ],
    )
    .await;
    let w1 = c.list_all_instances().await.unwrap().remove(0);
    assert_eq!(w1.host_node_id.as_ref(), Some(&hosts[1]));
    let web = groups(&c).await.remove(0);
    assert_eq!(w1.server_group_id.as_ref(), Some(&web.id));
    ok(&c, &["server-group", "show", "web"]).await;
    ok(&c, &["instance", "show", "w1"]).await;
    assert!(vdc(&c, &["server-group", "delete", "web"]).await.is_err(), "it has a member");
    ok(&c, &["instance", "terminate", "w1", "--wait"]).await;
    ok(&c, &["server-group", "delete", "web"]).await;
    assert!(groups(&c).await.is_empty());
    ok(&s.admin, &["host", "zone", hosts[1].as_str(), "--clear"]).await;
    assert_eq!(s.admin.get_host_node(&hosts[1]).await.unwrap().zone, None);
    s.stop().await;
}

/// hva keeps a stopped guest's disk on its last host, so a start goes back there and
/// nowhere else: before, a start whose last host was full or not among the best
/// candidates booted a fresh copy of the image on another host, and the old host was told
/// to remove the guest, disk and all. A start that cannot go back now is refused, naming
/// the host, and leaves the instance stopped.
async fn a_stopped_instance_starts_on_the_host_that_keeps_its_disk(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 3;
    // 8 allocatable vCPUs per host: two 4-vCPU instances fill one.
    opts.host_cpus = 2;
    opts.agent_timeout_ms = 800;
    let mut s = Stack::start(opts).await;
    let c = s.account("disks").await;
    let image = s.image.clone();
    let big = |name: &str| CreateInstance { cpus: 4, ..inst(&image, name) };
    let keep = c.create_instance(&big("keep")).await.unwrap().resource;
    let home = keep.host_node_id.clone().expect("placed");
    wait_state(&c, &keep.id, InstanceState::Running).await;
    // Stopped and started again while its host has room, over and over: it stays.
    for _ in 0..2 {
        c.stop_instance(&keep.id).await.unwrap();
        assert_eq!(wait_state(&c, &keep.id, InstanceState::Stopped).await.host_node_id, None);
        c.start_instance(&keep.id).await.unwrap();
        assert_eq!(wait_state(&c, &keep.id, InstanceState::Running).await.host_node_id, Some(home.clone()));
    }

    // While it is stopped, its host fills up (the others stay empty).
    c.stop_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Stopped).await;
    s.admin.update_host_node(&home, &UpdateHostNode { zone: Some("full".into()), ..Default::default() }).await.unwrap();
    let mut fillers = vec![];
    for name in ["f1", "f2"] {
        let f = c.create_instance(&CreateInstance { zone: Some("full".into()), ..big(name) }).await.unwrap().resource;
        assert_eq!(f.host_node_id.as_ref(), Some(&home));
        fillers.push(f);
    }
    let (status, code, message) = err(c.start_instance(&keep.id).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
    assert!(message.contains(home.as_str()) && message.contains(keep.id.as_str()), "{message}");
    let now = c.get_instance(&keep.id).await.unwrap();
    assert_eq!((now.state, now.host_node_id), (InstanceState::Stopped, None), "the refused start changed nothing");
    // Room there again: it starts there.
    c.terminate_instance(&fillers[0].id).await.unwrap();
    wait_state(&c, &fillers[0].id, InstanceState::Terminated).await;
    c.start_instance(&keep.id).await.unwrap();
    assert_eq!(wait_state(&c, &keep.id, InstanceState::Running).await.host_node_id, Some(home.clone()));

    // Two stopped instances whose host has room for one, each started ten times at once:
    // one runs there, the other is refused and stays stopped, the host is never overbooked.
    let f2 = fillers[1].id.clone();
    for i in [&keep.id, &f2] {
        c.stop_instance(i).await.unwrap();
    }
    for i in [&keep.id, &f2] {
        wait_state(&c, i, InstanceState::Stopped).await;
    }
    let f3 = c.create_instance(&CreateInstance { zone: Some("full".into()), ..big("f3") }).await.unwrap().resource;
    assert_eq!(f3.host_node_id.as_ref(), Some(&home));
    let starts: Vec<_> = (0..20)
        .map(|n| {
            let (c, id) = (c.clone(), if n % 2 == 0 { keep.id.clone() } else { f2.clone() });
            tokio::spawn(async move { (id.clone(), c.start_instance(&id).await) })
        })
        .collect();
    let mut started = HashSet::new();
    for t in starts {
        match t.await.unwrap() {
            (id, Ok(_)) => {
                started.insert(id);
            }
            (_, r) => {
                let (status, code, message) = err(r);
                assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
            }
        }
    }
    assert_eq!(started.len(), 1, "one of the two starts: {started:?}");
    let winner = started.into_iter().next().unwrap();
    assert_eq!(wait_state(&c, &winner, InstanceState::Running).await.host_node_id.as_ref(), Some(&home));
    let loser = if winner == keep.id { f2.clone() } else { keep.id.clone() };
    assert_eq!(c.get_instance(&loser).await.unwrap().state, InstanceState::Stopped);
    let h = s.admin.get_host_node(&home).await.unwrap();
    assert_eq!((h.cpus_used, h.cpus_allocatable), (8, 8));
    for i in [&f3.id, &f2] {
        c.terminate_instance(i).await.unwrap();
        wait_state(&c, i, InstanceState::Terminated).await;
    }

    // Its host offline: a start waits for it (503), then goes back there.
    c.stop_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Stopped).await;
    let i = s.hosts.iter().position(|h| h.node_id == home.as_str()).expect("one of the stack's hosts");
    s.crash_hva(i);
    host_becomes(&s, &home, NodeState::Offline, "a silent host goes offline").await;
    let (status, code, message) = err(c.start_instance(&keep.id).await);
    assert_eq!((status, code.as_str()), (503, "agent_unavailable"), "{message}");
    assert!(message.contains(home.as_str()), "{message}");
    assert_eq!(c.get_instance(&keep.id).await.unwrap().state, InstanceState::Stopped);
    s.restart_hva(i).await;
    host_becomes(&s, &home, NodeState::Online, "the host comes back").await;
    c.start_instance(&keep.id).await.unwrap();
    assert_eq!(wait_state(&c, &keep.id, InstanceState::Running).await.host_node_id.as_ref(), Some(&home));

    // What the host holds, of every account, for its operator: placed instances, and
    // stopped ones whose disk it keeps; terminated ones are not listed.
    let other = s.account("others").await;
    let theirs = other.create_instance(&CreateInstance { zone: Some("full".into()), ..big("theirs") }).await.unwrap();
    c.stop_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Stopped).await;
    let path = format!("/host_nodes/{home}/instances");
    let held: Vec<HostInstance> = s.admin.list_all(&path, &ListQuery::default()).await.unwrap();
    let seen: Vec<_> =
        held.iter().map(|h| (h.id.clone(), h.account_name.as_str(), h.placed, h.cpus)).collect::<Vec<_>>();
    let mut want = vec![(keep.id.clone(), "disks", false, 4), (theirs.resource.id.clone(), "others", true, 4)];
    want.sort();
    assert_eq!(seen, want);
    let one: Page<HostInstance> =
        s.admin.list(&path, &ListQuery { limit: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(one.items.len(), 1);
    assert!(one.next_cursor.is_some());
    ok(&s.admin, &["host", "instances", home.as_str()]).await;
    let (status, code, _) = err(c.list::<HostInstance>(&path, &ListQuery::default()).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, code, _) =
        err(s.admin.list::<HostInstance>("/host_nodes/hn-nosuch/instances", &ListQuery::default()).await);
    assert_eq!((status, code.as_str()), (404, "not_found"));
    s.stop().await;
}

/// A host that died for good: an admin evacuates it, and what it held starts anew on
/// another host (fresh root disks, same volumes and addresses) while starts race with
/// the evacuation; should the host come back, it is told to remove its stale copies.
async fn a_host_gone_for_good_is_evacuated(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 2;
    opts.agent_timeout_ms = 800;
    opts.external = Some(vdc_tests::test_external("203.0.113.13"));
    let mut s = Stack::start(opts).await;
    let c = s.account("evac").await;
    // Disk images of 1 GiB root disks: the dead host books them no more.
    let mut disk = vdc_tests::image_request("disk", ImageFormat::Qcow2);
    disk.source = Some("/var/lib/vdc/images/debian.qcow2".into());
    disk.public = true;
    let image = s.admin.create_image(&disk).await.unwrap().id;
    let in_group = |image: &ImageId, name: &str, group: &str| CreateInstance {
        root_disk_size: Some(1 << 30),
        ..in_group(image, name, group)
    };
    // An affinity group puts them all on one host (and allows any host once none runs).
    let g = group(&c, "together", ServerGroupPolicy::Affinity).await;
    let net = c
        .create_network(&CreateNetwork {
            name: "n".into(),
            cidr: "10.31.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let nic = CreateInterface { network_id: net.id.clone(), security_groups: vec![], ip: None };
    let run = c
        .create_instance(&CreateInstance { interfaces: vec![nic], ..in_group(&image, "run", g.name.as_str()) })
        .await
        .unwrap()
        .resource;
    let held = c.create_instance(&in_group(&image, "held", g.name.as_str())).await.unwrap().resource;
    let doomed = c.create_instance(&in_group(&image, "doomed", g.name.as_str())).await.unwrap().resource;
    let home = run.host_node_id.clone().expect("placed");
    for i in [&run, &held, &doomed] {
        assert_eq!(wait_state(&c, &i.id, InstanceState::Running).await.host_node_id.as_ref(), Some(&home));
    }
    let vol = c
        .create_volume(&CreateVolume { name: "data".into(), size_mib: Some(64), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    c.wait_job(&vol.job.id, Duration::from_secs(15)).await.unwrap();
    let job = c.attach_volume(&vol.resource.id, &run.id).await.unwrap().job;
    c.wait_job(&job.id, Duration::from_secs(15)).await.unwrap();
    let vif = run.interfaces[0].id.clone();
    let fip = c.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    let assoc = AssociateFloatingIp { instance_id: run.id.clone(), interface_id: None };
    c.associate_floating_ip(&fip.id, &assoc).await.unwrap();
    let port_on = |s: &Stack, host: &HostNodeId| {
        s.hosts.iter().find(|h| h.node_id == host.as_str()).and_then(|h| h.nw_driver.as_ref()?.port(&vif))
    };
    eventually(Duration::from_secs(5), || async { (port_on(&s, &home)?.floating_ip? == fip.ip).then_some(()) })
        .await
        .expect("the home host maps the floating IP");
    c.stop_instance(&held.id).await.unwrap();
    wait_state(&c, &held.id, InstanceState::Stopped).await;
    let evacuate = |s: &Stack| {
        let (admin, home) = (s.admin.clone(), home.clone());
        async move { admin.evacuate_host_node(&home).await }
    };

    // Not while it is online, not by a tenant, not an unknown host.
    let (status, code, message) = err(evacuate(&s).await);
    assert_eq!((status, code.as_str()), (409, "host_online"), "{message}");
    assert_eq!(err(c.evacuate_host_node(&home).await).0, 403);
    assert_eq!(err(s.admin.evacuate_host_node(&"hn-nosuch".parse().unwrap()).await).0, 404);
    assert_eq!(c.get_instance(&run.id).await.unwrap().state, InstanceState::Running);

    // The host dies; a terminate asked meanwhile waits for it.
    let i = s.hosts.iter().position(|h| h.node_id == home.as_str()).unwrap();
    s.crash_hva(i);
    host_becomes(&s, &home, NodeState::Offline, "a silent host goes offline").await;
    c.terminate_instance(&doomed.id).await.unwrap();

    // Evacuations and starts at once: each instance is taken off once; a start before
    // the evacuation is refused (the host is down) or already done, one after it places
    // the instance on the other host, or is refused while its affinity group still has a
    // member on the dead host.
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..12 {
        let (admin, c, home) = (s.admin.clone(), c.clone(), home.clone());
        let (run, held) = (run.id.clone(), held.id.clone());
        tasks.spawn(async move {
            match k % 3 {
                0 => Ok(admin.evacuate_host_node(&home).await.unwrap().instances),
                1 => Err(c.start_instance(&run).await.map(|_| ())),
                _ => Err(c.start_instance(&held).await.map(|_| ())),
            }
        });
    }
    let mut evacuated = vec![];
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(ids) => evacuated.extend(ids),
            Err(Ok(())) => {}
            Err(Err(ClientError::Api { status: 503, code, .. })) => assert_eq!(code, "agent_unavailable"),
            // Its group's other members still on the dead host, in the middle of it.
            Err(Err(ClientError::Api { status: 422, code, .. })) => assert_eq!(code, "placement_unsatisfiable"),
            Err(Err(e)) => panic!("a start racing with the evacuation: {e}"),
        }
    }
    evacuated.sort();
    let mut want = vec![run.id.clone(), held.id.clone(), doomed.id.clone()];
    want.sort();
    assert_eq!(evacuated, want, "each instance taken off once");
    assert_eq!(wait_state(&c, &doomed.id, InstanceState::Terminated).await.host_node_id, None);
    for i in [&run, &held] {
        let now = c.get_instance(&i.id).await.unwrap();
        assert_ne!(now.host_node_id.as_ref(), Some(&home), "{now:?}");
        if now.state == InstanceState::Stopped {
            c.start_instance(&i.id).await.unwrap();
        }
        let now = wait_state(&c, &i.id, InstanceState::Running).await;
        assert!(now.host_node_id.is_some() && now.host_node_id.as_ref() != Some(&home), "{now:?}");
    }
    // The same addresses and volume; the dead host books nothing, the other both.
    let now = c.get_instance(&run.id).await.unwrap();
    assert_eq!(now.interfaces[0].ip, run.interfaces[0].ip);
    assert_eq!(now.volumes, std::slice::from_ref(&vol.resource.id));
    assert_eq!(c.get_volume(&vol.resource.id).await.unwrap().state, VolumeState::Attached);
    let booked = |h: &HostNode| (h.cpus_used, h.memory_used_mib, h.disk_used_mib);
    assert_eq!(booked(&s.admin.get_host_node(&home).await.unwrap()), (0, 0, 0));
    let there = now.host_node_id.clone().unwrap();
    assert_eq!(booked(&s.admin.get_host_node(&there).await.unwrap()), (2, 512, 2048));
    // The floating IP follows it: the new host maps it (with a router address of its
    // own for the network), the dead host's switch, still up, lets it go.
    let moved = eventually(Duration::from_secs(10), || async {
        let p = port_on(&s, &there)?;
        (p.floating_ip? == fip.ip).then_some(p)
    })
    .await
    .expect("the new host maps the floating IP");
    assert!(moved.network.external.is_some(), "{moved:?}");
    eventually(Duration::from_secs(10), || async { port_on(&s, &home).is_none().then_some(()) })
        .await
        .expect("the dead host's switch no longer maps the floating IP");
    assert_eq!(c.get_floating_ip(&fip.id).await.unwrap().instance_id.as_ref(), Some(&run.id));
    // The pool (4 addresses) holds the floating IP and the new host's router: the dead
    // host's router gave its address back at the evacuation (before, it kept it).
    assert_eq!(vdc_tests::free_floating_ips(&c).await, 2, "two addresses left in the pool");
    // Nothing is left on it; evacuating again finds nothing.
    assert!(s
        .admin
        .list_all::<HostInstance>(&format!("/host_nodes/{home}/instances"), &ListQuery::default())
        .await
        .unwrap()
        .is_empty());
    assert!(evacuate(&s).await.unwrap().instances.is_empty());
    // No job of theirs waits for the dead host.
    let jobs: Vec<Job> = c.list_all("/jobs", &ListQuery::default()).await.unwrap();
    let theirs = |j: &&Job| [&run.id, &held.id, &doomed.id].iter().any(|i| j.resource_id == i.as_str());
    assert!(jobs.iter().filter(theirs).all(|j| j.state != JobState::Running), "{jobs:?}");
    // The host comes back with its old guests: it is told to remove them.
    s.restart_hva(i).await;
    eventually(Duration::from_secs(10), || async { s.hosts[i].hva_driver.as_ref().unwrap().is_empty().then_some(()) })
        .await
        .expect("the stale guests are removed from the host that came back");
    assert_eq!(c.get_instance(&run.id).await.unwrap().host_node_id, Some(there.clone()));

    // The other host dies too: the CLI evacuates it and starts what was meant to run
    // (each in its own account) on the first one, back now.
    host_becomes(&s, &home, NodeState::Online, "the first host is back").await;
    c.stop_instance(&held.id).await.unwrap();
    wait_state(&c, &held.id, InstanceState::Stopped).await;
    let j = s.hosts.iter().position(|h| h.node_id == there.as_str()).unwrap();
    s.crash_hva(j);
    host_becomes(&s, &there, NodeState::Offline, "the other host goes offline").await;
    ok(&s.admin, &["host", "evacuate", there.as_str(), "--start"]).await;
    assert_eq!(wait_state(&c, &run.id, InstanceState::Running).await.host_node_id, Some(home.clone()));
    let held_now = c.get_instance(&held.id).await.unwrap();
    assert_eq!((held_now.state, held_now.host_node_id), (InstanceState::Stopped, None), "stopped stays stopped");
    s.stop().await;
}

/// An admin cordons a host (maintenance, retirement): from the moment the call answers,
/// no new instance goes there, even with creates in flight; what runs there keeps
/// running, and an instance stopped there starts there again. With every host cordoned a
/// create is refused, saying why; uncordoned, the host takes instances again.
async fn a_cordoned_host_takes_no_new_instances(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 2;
    opts.host_cpus = 64;
    opts.host_memory_mib = 65536;
    let mut s = Stack::start(opts).await;
    let c = s.account("cordon").await;
    let image = s.image.clone();
    // Spread puts the first two on different hosts: the one on `a` lives there.
    let first = c.create_instance(&inst(&image, "r1")).await.unwrap().resource;
    let second = c.create_instance(&inst(&image, "r2")).await.unwrap().resource;
    let (a, b) = (first.host_node_id.clone().expect("placed"), second.host_node_id.clone().expect("placed"));
    assert_ne!(a, b);
    let resident = wait_state(&c, &first.id, InstanceState::Running).await;
    // b half full: spread would place every new instance on a.
    s.admin.update_host_node(&b, &UpdateHostNode { zone: Some("b".into()), ..Default::default() }).await.unwrap();
    let heavy = CreateInstance { memory_mib: 32768, zone: Some("b".into()), ..inst(&image, "heavy") };
    assert_eq!(c.create_instance(&heavy).await.unwrap().resource.host_node_id.as_ref(), Some(&b));
    let cordon = |open: bool| UpdateHostNode { schedulable: Some(open), ..Default::default() };
    let (status, code, _) = err(c.update_host_node(&a, &cordon(false)).await);
    assert_eq!((status, code.as_str()), (403, "forbidden"), "only an admin cordons");
    assert!(s.admin.get_host_node(&a).await.unwrap().schedulable);

    // Cordoned while 20 creates are in flight; the 20 sent after it answered all go to b.
    // (Without the cordon they would go to a, which has the more room.)
    let create = |name: String| {
        let (c, image) = (c.clone(), image.clone());
        tokio::spawn(async move { c.create_instance(&inst(&image, &name)).await.map(|a| a.resource) })
    };
    let during: Vec<_> = (0..20).map(|n| create(format!("d{n}"))).collect();
    let why = UpdateHostNode { cordon_reason: Some("disk swap (ticket 42)".into()), ..cordon(false) };
    let h = s.admin.update_host_node(&a, &why).await.unwrap();
    assert!(!h.schedulable);
    assert_eq!(h.cordon_reason.as_deref(), Some("disk swap (ticket 42)"));
    let after: Vec<_> = (0..20).map(|n| create(format!("a{n}"))).collect();
    for t in during {
        t.await.unwrap().expect("accepted while the cordon came");
    }
    for t in after {
        let i = t.await.unwrap().expect("accepted: b has room");
        assert_eq!(i.host_node_id.as_ref(), Some(&b), "{} placed after the cordon answered", i.name);
    }
    assert!(!s.admin.get_host_node(&a).await.unwrap().schedulable);
    ok(&s.admin, &["host", "list"]).await;

    // What lives on a stays: running, and stopped then started, there again.
    assert_eq!(c.get_instance(&resident.id).await.unwrap().state, InstanceState::Running);
    c.stop_instance(&resident.id).await.unwrap();
    wait_state(&c, &resident.id, InstanceState::Stopped).await;
    c.start_instance(&resident.id).await.unwrap();
    assert_eq!(wait_state(&c, &resident.id, InstanceState::Running).await.host_node_id.as_ref(), Some(&a));

    // A cordon outlives the host's agent restarting: its registration leaves it alone.
    let i = s.hosts.iter().position(|h| h.node_id == a.as_str()).expect("one of the stack's hosts");
    s.crash_hva(i);
    s.restart_hva(i).await;
    host_becomes(&s, &a, NodeState::Online, "a registers again").await;
    let h = s.admin.get_host_node(&a).await.unwrap();
    assert!(!h.schedulable);
    assert_eq!(h.cordon_reason.as_deref(), Some("disk swap (ticket 42)"), "the reason outlives it too");

    // A cordon again without a reason keeps it; a reason alone changes it. A reason is one
    // line for a cordoned host: anything else is refused and changes nothing.
    assert_eq!(
        s.admin.update_host_node(&a, &cordon(false)).await.unwrap().cordon_reason.as_deref(),
        Some("disk swap (ticket 42)")
    );
    let reason = |r: &str| UpdateHostNode { cordon_reason: Some(r.into()), ..Default::default() };
    let h = s.admin.update_host_node(&a, &reason("disk swapped, burn-in")).await.unwrap();
    assert_eq!((h.schedulable, h.cordon_reason.as_deref()), (false, Some("disk swapped, burn-in")));
    for bad in [
        UpdateHostNode { cordon_reason: Some("open it".into()), ..cordon(true) },
        reason("two\nlines"),
        reason(&"x".repeat(256)),
        UpdateHostNode { cordon_reason: Some("b is open".into()), ..Default::default() },
    ] {
        let target = if bad.cordon_reason.as_deref() == Some("b is open") { &b } else { &a };
        let (status, code, message) = err(s.admin.update_host_node(target, &bad).await);
        assert_eq!((status, code.as_str()), (400, "invalid_cordon_reason"), "{message}");
    }
    let h = s.admin.get_host_node(&a).await.unwrap();
    assert_eq!((h.schedulable, h.cordon_reason.as_deref()), (false, Some("disk swapped, burn-in")));
    let h = s.admin.get_host_node(&b).await.unwrap();
    assert_eq!((h.schedulable, h.cordon_reason), (true, None));

    // Every host cordoned (b through the CLI): a create is refused and makes nothing.
    ok(&s.admin, &["host", "cordon", b.as_str(), "--reason", "retiring"]).await;
    assert_eq!(s.admin.get_host_node(&b).await.unwrap().cordon_reason.as_deref(), Some("retiring"));
    let before = c.list_all_instances().await.unwrap().len();
    let (status, code, message) = err(c.create_instance(&inst(&image, "refused")).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
    assert!(message.contains("takes new instances"), "{message}");
    assert_eq!(c.list_all_instances().await.unwrap().len(), before);

    // Uncordoned: a takes new instances again (spread: it has the more room).
    ok(&s.admin, &["host", "uncordon", a.as_str()]).await;
    let h = s.admin.get_host_node(&a).await.unwrap();
    assert_eq!((h.schedulable, h.cordon_reason), (true, None), "opened, its reason goes");
    let back = c.create_instance(&inst(&image, "back")).await.unwrap().resource;
    assert_eq!(back.host_node_id.as_ref(), Some(&a));
    s.stop().await;
}

/// Spread placement holds for creates sent at once: each reservation goes to the host
/// with the most room at that moment, not to the one that had the most when every create
/// read its candidates (40 concurrent creates over 4 equal hosts all went to one before).
async fn a_burst_of_creates_is_spread(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 4;
    opts.host_cpus = 64;
    opts.host_memory_mib = 65536;
    let s = Stack::start(opts).await;
    let c = s.account("burst").await;
    let creates: Vec<_> = (0..40)
        .map(|n| {
            let (c, image) = (c.clone(), s.image.clone());
            tokio::spawn(async move { c.create_instance(&inst(&image, &format!("b{n}"))).await.unwrap().resource })
        })
        .collect();
    let mut per_host: std::collections::HashMap<HostNodeId, usize> = Default::default();
    for t in creates {
        *per_host.entry(t.await.unwrap().host_node_id.expect("placed")).or_default() += 1;
    }
    let mut counts: Vec<usize> = per_host.values().copied().collect();
    counts.sort();
    println!("40 concurrent creates over 4 hosts: {counts:?}");
    assert_eq!(counts.len(), 4, "every host took some: {counts:?}");
    assert!(counts[0] >= 5, "no host far behind: {counts:?}");
    s.stop().await;
}

/// A disk image's root disk is booked on its host (as Nova's DISK_GB) while the host
/// keeps it, running or stopped, and given back when it is terminated: a QEMU disk of
/// 2 TiB virtual size was placed on a host with 45 GB free (red team, 2026-12-07).
async fn root_disks_are_booked_on_the_host_that_keeps_them(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.hosts = 1;
    opts.host_cpus = 64;
    opts.host_memory_mib = 1 << 20;
    opts.host_disk_mib = Some(40 << 10);
    let s = Stack::start(opts).await;
    let c = s.account("disks").await;
    let host = host_ids(&s).await.remove(0);
    let booked = |s: &Stack| {
        let (admin, host) = (s.admin.clone(), host.clone());
        async move {
            let h = admin.get_host_node(&host).await.unwrap();
            assert_eq!((h.disk_mib, h.disk_allocatable_mib), (Some(40 << 10), Some(40 << 10)));
            h.disk_used_mib
        }
    };
    // A tenant's qcow2 of 64 GiB virtual size (a few hundred KiB of data): no host holds it.
    let img = empty_disk_image(&c, "big", "64G").await;
    assert_eq!(img.virtual_size, Some(64 << 30));
    let (status, code, message) = err(c.create_instance(&inst(&img.id, "huge")).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
    assert!(message.contains("root disk of 64 GiB"), "{message}");
    assert!(c.list_all_instances().await.unwrap().is_empty(), "nothing made");
    assert_eq!(booked(&s).await, 0);

    // An operator's disk image (its size unknown to dcmgr) sized at create.
    let mut disk = vdc_tests::image_request("disk", ImageFormat::Qcow2);
    disk.source = Some("/var/lib/vdc/images/debian.qcow2".into());
    disk.public = true;
    let disk = s.admin.create_image(&disk).await.unwrap();
    let sized = |name: &str, gib: u64| CreateInstance { root_disk_size: Some(gib << 30), ..inst(&disk.id, name) };
    let keep = c.create_instance(&sized("keep", 16)).await.unwrap().resource;
    wait_state(&c, &keep.id, InstanceState::Running).await;
    assert_eq!(booked(&s).await, 16 << 10);
    // Stopped, it keeps its disk there, booked.
    c.stop_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Stopped).await;
    assert_eq!(booked(&s).await, 16 << 10);

    // 30 creates of 2 GiB at once where 24 GiB are left: 12 are placed, no more.
    let creates: Vec<_> = (0..30)
        .map(|n| {
            let (c, req) = (c.clone(), sized(&format!("d{n}"), 2));
            tokio::spawn(async move { c.create_instance(&req).await })
        })
        .collect();
    let mut placed = vec![];
    for t in creates {
        match t.await.unwrap() {
            Ok(a) => placed.push(a.resource.id),
            Err(e) => {
                let (status, code, message) = err::<()>(Err(e));
                assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
            }
        }
    }
    assert_eq!(placed.len(), 12, "the host's 24 GiB left hold twelve");
    assert_eq!(booked(&s).await, 40 << 10);
    // The host's instances say what each books; they add up to its disk used.
    let path = format!("/host_nodes/{host}/instances");
    let held: Vec<HostInstance> = s.admin.list_all(&path, &ListQuery::default()).await.unwrap();
    assert_eq!(held.iter().map(|i| i.disk_mib).sum::<u64>(), 40 << 10);
    assert_eq!(held.iter().find(|i| i.id == keep.id).map(|i| (i.disk_mib, i.placed)), Some((16 << 10, false)));
    // Started again on its host, its disk is not booked twice.
    c.start_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Running).await;
    assert_eq!(booked(&s).await, 40 << 10);
    // A container has a root filesystem of its own: where the host is full, none fits.
    let mut ct = vdc_tests::image_request("ct", ImageFormat::Tar);
    ct.hypervisors = vec![HypervisorKind::Lxc];
    ct.source = Some("builtin:tiny-rootfs".into());
    ct.public = true;
    let ct = s.admin.create_image(&ct).await.unwrap();
    let (status, code, message) = err(c.create_instance(&inst(&ct.id, "box")).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");

    // Terminated, the disk is given back, and a create that did not fit now does.
    c.terminate_instance(&keep.id).await.unwrap();
    wait_state(&c, &keep.id, InstanceState::Terminated).await;
    assert_eq!(booked(&s).await, 24 << 10);
    // The container, given no size, books 2 GiB (red team, 2026-12-07: a container's
    // root had no limit and booked nothing).
    let box1 = c.create_instance(&inst(&ct.id, "box")).await.unwrap().resource;
    assert_eq!(box1.root_disk_size, Some(2 << 30));
    assert_eq!(booked(&s).await, 26 << 10);
    let late = c.create_instance(&sized("late", 14)).await.unwrap().resource;
    assert_eq!(booked(&s).await, 40 << 10);
    for id in placed.iter().chain([&late.id, &box1.id]) {
        c.terminate_instance(id).await.unwrap();
    }
    for id in placed.iter().chain([&late.id, &box1.id]) {
        wait_state(&c, id, InstanceState::Terminated).await;
    }
    assert_eq!(booked(&s).await, 0);
}

/// A bundle's instance whose disk image no host here has room for: the import says so
/// (not a race to retry), and makes nothing.
async fn an_import_whose_disks_do_not_fit_is_refused_whole(db: Db) {
    let a = Stack::start(StackOptions::new(db)).await;
    let key = a.admin.bundle_key().await.unwrap().public_key;
    let mut opts = StackOptions::new(db);
    opts.bundles.trusted_keys = vec![key];
    opts.host_disk_mib = Some(16 << 10);
    let b = Stack::start(opts).await;
    let ca = a.account("mover").await;
    let img = empty_disk_image(&ca, "d24", "24G").await;
    let i = ca.create_instance(&inst(&img.id, "web1")).await.unwrap().resource;
    wait_state(&ca, &i.id, InstanceState::Running).await;
    let mut bytes = Vec::new();
    ca.export_bundle(false, false, &mut bytes, |_| {}).await.unwrap();
    let cb = b.account("mover").await;
    let (status, code, message) = err(cb.import_bundle(bytes.clone(), &[]).await);
    assert_eq!((status, code.as_str()), (422, "no_capacity"), "{message}");
    assert!(message.contains("root disk of 24 GiB"), "{message}");
    assert!(cb.list_all_instances().await.unwrap().is_empty(), "nothing made");
    assert!(cb.list_all_images().await.unwrap().iter().all(|i| i.name != "d24"), "nothing made");
    let host = b.admin.list_all_host_nodes().await.unwrap().remove(0);
    assert_eq!((host.cpus_used, host.disk_used_mib), (0, 0));
    a.stop().await;
    b.stop().await;
}

/// A tenant's image `name`: an empty qcow2 of virtual size `size` (`64G`; a few hundred
/// KiB of data), uploaded.
async fn empty_disk_image(c: &Client, name: &str, size: &str) -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("d.qcow2");
    let made =
        std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg(size).status();
    assert!(made.expect("qemu-img").success());
    let img = c.create_image(&vdc_tests::image_request(name, ImageFormat::Qcow2)).await.unwrap();
    c.upload_image(&img.id, std::fs::read(&disk).unwrap()).await.unwrap()
}
