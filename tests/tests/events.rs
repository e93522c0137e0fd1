//! `GET /api/v1/events` against a fresh stack (dcmgr + simulated agents), on SQLite and
//! PostgreSQL: a create's events arrive in order as they happen; a client resuming with
//! `Last-Event-ID` gets exactly what it missed (twice over, and across a dcmgr restart);
//! another account's events never show; `vdc events` prints them.

use std::time::Duration;
use vdc_cli::client::{Client, EventStream, StreamItem};
use vdc_schema::api::*;
use vdc_schema::id::*;
use vdc_schema::InstanceState;
use vdc_tests::{on_both_databases, wait_state, Db, Stack, StackOptions};

on_both_databases!(
    events_follow_resume_and_stay_in_their_account,
    events_survive_a_dcmgr_restart,
    rules_and_associations_are_updates,
    a_stream_ends_when_its_token_no_longer_admits_the_caller
);

/// An open stream is asked again before each event: one kept sending the account's
/// events after its member was removed, or its token revoked (or signed out).
async fn a_stream_ends_when_its_token_no_longer_admits_the_caller(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let owner = s.account("own").await;
    let acct = owner.whoami().await.unwrap().account.id;
    let net = |name: &str, n: u8| CreateNetwork {
        name: name.into(),
        cidr: format!("10.{n}.0.0/24"),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    };
    let mut streams = vec![];
    for who in ["removed", "revoked"] {
        let user = s.admin.create_user(&CreateUser { name: who.into(), admin: false, password: None }).await.unwrap();
        owner.add_member(&acct, &AddMember { user: who.into(), role: vdc_schema::Role::Member }).await.unwrap();
        let req = CreateToken {
            name: who.into(),
            account_id: Some(acct.clone()),
            expires_at: None,
            role: None,
            user_id: Some(user.id.clone()),
        };
        let t = s.admin.create_token(&req).await.unwrap();
        let stream = Client::new(s.url(), t.secret).events(None, true).await.unwrap();
        streams.push((who, user.id, t.token.id, stream));
    }
    let first = owner.create_network(&net("first", 31)).await.unwrap();
    for (_, _, _, st) in &mut streams {
        until(st, |e| e.resource_id == first.id.as_str()).await;
    }
    owner.remove_member(&acct, &streams[0].1).await.unwrap();
    owner.revoke_token(&streams[1].2).await.unwrap();
    let second = owner.create_network(&net("second", 32)).await.unwrap();
    for (who, _, _, st) in &mut streams {
        let rest = tokio::time::timeout(Duration::from_secs(10), async {
            let mut seen = vec![];
            while let Ok(Some(StreamItem::Event(e))) = st.next().await {
                seen.push(e);
            }
            seen
        })
        .await
        .unwrap_or_else(|_| panic!("{who}: the stream did not end"));
        assert!(!rest.iter().any(|e| e.resource_id == second.id.as_str()), "{who}: {rest:#?}");
    }
    s.stop().await;
}

/// Reads events until `stop` holds for one (returned last), failing after 20 s.
async fn until(s: &mut EventStream, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.next().await.expect("stream readable").expect("stream open") {
                StreamItem::Event(e) => {
                    let done = stop(&e);
                    got.push(e);
                    if done {
                        return;
                    }
                }
                StreamItem::Lost { .. } => panic!("nothing is pruned in this test"),
            }
        }
    })
    .await;
    assert!(r.is_ok(), "the awaited event did not come; got {got:#?}");
    got
}

/// The events after `after` recorded now, up to `last` (what a stream read so far:
/// later events, an interface's report say, may be recorded by now).
async fn recorded_to(c: &Client, after: u64, last: &Event) -> Vec<Event> {
    recorded(c, after).await.into_iter().take_while(|e| e.seq <= last.seq).collect()
}

/// Every event after `after` that is recorded now (the stream not followed).
async fn recorded(c: &Client, after: u64) -> Vec<Event> {
    let mut s = c.events(Some(after), false).await.unwrap();
    let mut all = Vec::new();
    while let Some(item) = s.next().await.unwrap() {
        match item {
            StreamItem::Event(e) => all.push(e),
            StreamItem::Lost { .. } => panic!("nothing is pruned in this test"),
        }
    }
    all
}

fn is(e: &Event, kind: &str, id: &str, state: &str) -> bool {
    e.kind == kind && e.resource_id == id && e.state == state
}

async fn network(c: &Client, name: &str) -> Network {
    c.create_network(&CreateNetwork {
        name: name.into(),
        cidr: "10.7.0.0/24".into(),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    })
    .await
    .unwrap()
}

async fn create_instance(s: &Stack, c: &Client, net: &NetworkId, name: &str) -> Accepted<Instance> {
    c.create_instance(&CreateInstance {
        name: Some(name.into()),
        image_id: s.image.clone(),
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
    })
    .await
    .unwrap()
}

async fn events_follow_resume_and_stay_in_their_account(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let a = s.account("ev-a").await;
    let b = s.account("ev-b").await;
    let mut sa = a.events(None, true).await.unwrap();
    let mut sb = b.events(None, true).await.unwrap();

    // create → running, as it happens and in commit order.
    let net = network(&a, "ev-net").await;
    let acc = create_instance(&s, &a, &net.id, "ev-vm").await;
    let id = acc.resource.id.to_string();
    let job = acc.job.id.to_string();
    let vif = acc.resource.interfaces[0].id.to_string();
    let (mut job_done, mut vif_active) = (false, false);
    let got = until(&mut sa, |e| {
        job_done |= is(e, "job", &job, "succeeded");
        vif_active |= is(e, "interface", &vif, "active");
        job_done && vif_active
    })
    .await;
    assert!(got.windows(2).all(|w| w[0].seq < w[1].seq), "seq grows: {got:#?}");
    let mine = got[0].account_id.clone();
    assert!(got.iter().all(|e| e.account_id == mine), "{got:#?}");
    let pos = |kind: &str, rid: &str, change: &str, state: &str| {
        got.iter()
            .position(|e| e.kind == kind && e.resource_id == rid && e.change == change && e.state == state)
            .unwrap_or_else(|| panic!("no {kind} {rid} {change} {state} in {got:#?}"))
    };
    let created = pos("instance", &id, "created", "pending");
    let job_started = pos("job", &job, "created", "running");
    let running = pos("instance", &id, "state", "running");
    let job_done = pos("job", &job, "state", "succeeded");
    assert!(pos("network", net.id.as_str(), "created", "") < created);
    assert!(created < running && job_started < job_done && job_started < running, "{got:#?}");
    assert_eq!(got[job_started].detail, format!("instance.create {id}"));
    // nwagent's report of the interface is an event of its own, naming its instance.
    let plugged = pos("interface", &vif, "state", "active");
    assert_eq!(got[plugged].detail, id);
    assert!(created < plugged, "{got:#?}");
    // The stream holds exactly what SQL recorded (nothing before, nothing more).
    assert_eq!(recorded_to(&a, 0, got.last().unwrap()).await, got);

    // Resume with Last-Event-ID, twice: each time exactly the events missed.
    let mid = got[created].seq;
    assert_eq!(recorded_to(&a, mid, got.last().unwrap()).await, got[created + 1..].to_vec());
    drop(sa);
    let stop = a.stop_instance(&acc.resource.id).await.unwrap();
    let mut sa = a.events(Some(got.last().unwrap().seq), true).await.unwrap();
    let first = until(&mut sa, |e| is(e, "instance", &id, "stopping")).await;
    assert!(first.iter().all(|e| e.seq > got.last().unwrap().seq), "only what was missed: {first:#?}");
    drop(sa);
    let stop_job = stop.job.id.to_string();
    wait_state(&a, &acc.resource.id, InstanceState::Stopped).await;
    let mut sa = a.events(Some(first.last().unwrap().seq), true).await.unwrap();
    let second = until(&mut sa, |e| is(e, "job", &stop_job, "succeeded")).await;
    assert!(second.iter().any(|e| is(e, "instance", &id, "stopped")), "{second:#?}");
    let mut all = got.clone();
    all.extend(first);
    all.extend(second);
    assert_eq!(
        recorded_to(&a, 0, all.last().unwrap()).await,
        all,
        "the three connections together saw every event once"
    );

    // Another account sees none of it, and its own events only.
    let bnet = network(&b, "ev-net").await;
    let bgot = until(&mut sb, |e| e.resource_id == bnet.id.as_str()).await;
    assert_eq!(bgot.len(), 1, "b's stream carried only b's network: {bgot:#?}");
    assert_ne!(bgot[0].account_id, mine);
    assert!(recorded(&b, 0).await.iter().all(|e| e.account_id == bgot[0].account_id));
    assert!(!recorded(&a, 0).await.iter().any(|e| e.resource_id == bnet.id.as_str()));
    // An admin sees every account's.
    let everything = recorded(&s.admin, 0).await;
    assert!(everything.iter().any(|e| e.resource_id == bnet.id.as_str()));
    assert!(everything.iter().any(|e| e.resource_id == id));
    // Acting in one account (X-Vdc-Account, as the console's account picker), that
    // account's only (it was every account's).
    let in_b = s.admin.clone().acting_in(bgot[0].account_id.as_str());
    let b_only = recorded(&in_b, 0).await;
    assert!(b_only.iter().any(|e| e.resource_id == bnet.id.as_str()));
    assert!(b_only.iter().all(|e| e.account_id == bgot[0].account_id), "{b_only:#?}");

    // A malformed Last-Event-ID is refused with what to send.
    let r = reqwest::Client::new()
        .get(a.url("/events"))
        .bearer_auth(a.token())
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid_last_event_id"));
    // So is one beyond every event here (another site's): the stream would have waited
    // for it in silence.
    for (header, query) in [(Some("99999999"), ""), (None, "?after=99999999")] {
        let mut req = reqwest::Client::new().get(a.url(&format!("/events{query}"))).bearer_auth(a.token());
        if let Some(h) = header {
            req = req.header("Last-Event-ID", h);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 400, "{header:?} {query}");
        assert!(r.text().await.unwrap().contains("is ahead of this site's newest event"), "{header:?} {query}");
    }
    s.stop().await;
}

/// What changes besides a state is an `updated` event: a group's rules added and
/// removed, a floating IP associated and disassociated (the console's security group and
/// address views follow them).
async fn rules_and_associations_are_updates(db: Db) {
    let mut o = StackOptions::new(db);
    o.external = Some(vdc_tests::test_external("203.0.113.20"));
    let s = Stack::start(o).await;
    let a = s.account("ev-upd").await;
    let net = network(&a, "ev-net").await;
    let acc = create_instance(&s, &a, &net.id, "ev-vm").await;
    wait_state(&a, &acc.resource.id, InstanceState::Running).await;
    let sg = a
        .create_security_group(&CreateSecurityGroup { name: "web".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let fip = a.create_floating_ip(&CreateFloatingIp { ip: None }).await.unwrap();
    let mut st = a.events(Some(recorded(&a, 0).await.last().unwrap().seq), true).await.unwrap();
    let rule = RuleSpec {
        direction: vdc_schema::Direction::Ingress,
        protocol: vdc_schema::Protocol::Tcp,
        port_min: Some(22),
        port_max: Some(22),
        cidr: Some("0.0.0.0/0".into()),
        group: None,
    };
    let with = a.add_security_group_rule(&sg.id, &rule).await.unwrap();
    let updated = |e: &Event, id: &str| e.resource_id == id && e.change == "updated";
    until(&mut st, |e| updated(e, sg.id.as_str())).await;
    a.delete_security_group_rule(&sg.id, &with.rules[0].id).await.unwrap();
    until(&mut st, |e| updated(e, sg.id.as_str())).await;
    let assoc = AssociateFloatingIp { instance_id: acc.resource.id.clone(), interface_id: None };
    a.associate_floating_ip(&fip.id, &assoc).await.unwrap();
    until(&mut st, |e| updated(e, fip.id.as_str())).await;
    a.disassociate_floating_ip(&fip.id).await.unwrap();
    until(&mut st, |e| updated(e, fip.id.as_str())).await;
    let all = recorded(&a, 0).await;
    let kinds: Vec<(&str, &str)> =
        all.iter().filter(|e| e.change == "updated").map(|e| (e.kind.as_str(), e.resource_id.as_str())).collect();
    let (g, f) = (sg.id.as_str(), fip.id.as_str());
    assert_eq!(kinds, [("security_group", g), ("security_group", g), ("floating_ip", f), ("floating_ip", f)]);
    s.stop().await;
}

async fn events_survive_a_dcmgr_restart(db: Db) {
    let mut s = Stack::start(StackOptions::new(db)).await;
    let a = s.account("ev-r").await;
    let net = network(&a, "ev-net").await;
    let mut sa = a.events(Some(0), true).await.unwrap();
    let acc = create_instance(&s, &a, &net.id, "ev-vm").await;
    let id = acc.resource.id.to_string();
    let before = until(&mut sa, |e| is(e, "instance", &id, "running")).await;
    s.restart_dcmgr().await;
    // The old stream ended with the old dcmgr (no hang on shutdown).
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match sa.next().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the stream of the stopped dcmgr ended");
    // Changes while no client listens, then a resume from the last event seen.
    let stop = a.stop_instance(&acc.resource.id).await.unwrap();
    let stop_job = stop.job.id.to_string();
    let mut sa = a.events(Some(before.last().unwrap().seq), true).await.unwrap();
    let after = until(&mut sa, |e| is(e, "job", &stop_job, "succeeded")).await;
    let mut all = before;
    all.extend(after);
    assert_eq!(recorded_to(&a, 0, all.last().unwrap()).await, all, "nothing lost or repeated across the restart");
    assert!(all.iter().any(|e| is(e, "instance", &id, "stopped")));
    s.stop().await;
}

/// `vdc events` prints the account's events; `--wait` follows the stream to the job's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vdc_events_prints_them() {
    use std::process::Command;
    use vdc_tests::procs::bin;
    vdc_tests::init_logging();
    let s = Stack::start(StackOptions::new(Db::Sqlite)).await;
    let a = s.account("ev-cli").await;
    let net = network(&a, "ev-net").await;
    let run = |args: Vec<String>| {
        let (url, token) = (s.url(), a.token().to_owned());
        tokio::task::spawn_blocking(move || {
            Command::new(bin("vdc"))
                .env("VDC_API", url)
                .env("VDC_TOKEN", token)
                .env("VDC_CONFIG", "/nonexistent/vdc-events-test.toml")
                .args(args)
                .output()
                .unwrap()
        })
    };
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let t = std::time::Instant::now();
    let out = run(argv(&[
        "-o",
        "json",
        "instance",
        "create",
        "ev-vm",
        "--network",
        "ev-net",
        "--image",
        s.image.as_str(),
        "--wait",
    ]))
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let inst: Instance = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(inst.state, InstanceState::Running, "--wait returned once running ({:?})", t.elapsed());
    // nwagent's report of the interface may come after the instance's: once it is in,
    // nothing more is recorded while the CLI reads.
    let vif = inst.interfaces[0].id.to_string();
    for _ in 0..400 {
        if recorded(&a, 0).await.iter().any(|e| is(e, "interface", &vif, "active")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = run(argv(&["-o", "json", "events"])).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Event> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, recorded(&a, 0).await);
    assert!(lines.iter().any(|e| e.resource_id == net.id.as_str() && e.change == "created"));
    assert!(lines.iter().any(|e| is(e, "instance", inst.id.as_str(), "running")));
    let out = run(argv(&["events", "--after", &lines[1].seq.to_string()])).await.unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(table.lines().count(), lines.len() - 2, "{table}");
    assert!(table.contains(inst.id.as_str()) && table.contains("running"), "{table}");
    s.stop().await;
}
