//! Several controllers (issue 15, point 5): three dcmgr processes on one PostgreSQL and
//! one nats-server, four simulated hva processes. PostgreSQL only (SQLite is one
//! controller): the tests' server, `VDC_TEST_PG_URL` or a private one (`tests/src/pg.rs`).
//!
//! - an event of a create made through one dcmgr reaches a stream opened on another;
//! - a token revoked through one dcmgr stops working on another within the token cache's
//!   TTL;
//! - `/metrics` answers on each, and exactly one leads;
//! - 1,000 concurrent creates spread round-robin over the three APIs; the leader is
//!   killed with SIGKILL when about half are accepted. A create that got no answer from
//!   it is looked up in the database once it is dead, and sent to a survivor only if it
//!   was not committed. Then: every create exists exactly once (counted by name), all
//!   reach `running`, no request to a live dcmgr failed, no host went offline, and one
//!   survivor leads.
//! - an image's data is taken in by one dcmgr at a time: a URL import is fetched once
//!   (not again by a dcmgr starting meanwhile), taken over by the leader when the dcmgr
//!   fetching it is killed, and stopped by a delete through another dcmgr; of two
//!   uploads to one image through two dcmgrs, the second is refused as busy.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdc_cli::client::{Client, StreamItem};
use vdc_cli::ClientError;
use vdc_schema::api::*;
use vdc_schema::{HypervisorKind, ImageState, InstanceState, NodeState};
use vdc_tests::eventually;
use vdc_tests::procs::{self, bin, Proc};

const CONTROLLERS: usize = 3;
const HOSTS: usize = 4;
const CREATES: usize = 1000;
const IN_FLIGHT: usize = 64;
const TOKEN: &str = "vdc_multictl_admin";

fn dcmgr(i: usize, tmp: &std::path::Path, db: &str, nats: u16, port: u16) -> Proc {
    let cfg = tmp.join(format!("dcmgr{i}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndatabase_url = \"{db}\"\nnats_url = \"nats://127.0.0.1:{nats}\"\n\
             heartbeat_interval_ms = 500\nagent_timeout_ms = 10000\nreconcile_interval_ms = 500\nresend_after_ms = 3000\n\
             admin_token = \"{TOKEN}\"\ncpu_allocation_ratio = 16.0\n\
             [auth]\ntoken_cache_ttl_ms = 1000\n\
             [images]\ndir = \"{}\"\nimport_allow = [\"127.0.0.1/32\"]\n",
            // One image store for all: README, several controllers.
            tmp.join("images").display()
        ),
    )
    .unwrap();
    Proc::spawn(&format!("dcmgr{i}"), Command::new(bin("dcmgr")).args(["--config", cfg.to_str().unwrap()]), tmp)
}

fn hva(i: usize, tmp: &std::path::Path, nats: u16, metrics: u16) -> Proc {
    Proc::spawn(
        &format!("hva{i}"),
        Command::new(bin("hva")).args([
            "--driver",
            "sim",
            "--nats",
            &format!("nats://127.0.0.1:{nats}"),
            "--data-dir",
            tmp.join(format!("hva{i}")).to_str().unwrap(),
            "--node-id",
            &format!("hn-multictl{i}"),
            "--cpus",
            "64",
            "--memory-mib",
            "131072",
            "--hypervisors",
            "qemu",
            "--sim-delay-ms",
            "20",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ]),
        tmp,
    )
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap()
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// The value of the unlabelled gauge `name` in a scrape.
fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn request(image: &vdc_schema::id::ImageId, name: &str) -> CreateInstance {
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

async fn count(db: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(db).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_controllers_one_killed_mid_storm() {
    vdc_tests::init_logging();
    let tmp = tempfile::Builder::new().prefix("vdc-multictl-").tempdir().unwrap();
    let dir = tmp.path();
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    let db = sqlx::PgPool::connect(&db_url).await.unwrap();
    let (_nats, nats) = procs::nats_server(dir);
    let ports: Vec<u16> = (0..CONTROLLERS).map(|_| procs::free_port()).collect();
    // All at once on a new database: one makes the schema, the admin account and the
    // site's keys, and the others take them.
    let mut ctls: Vec<Option<Proc>> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        ctls.push(Some(dcmgr(i, dir, &db_url, nats, *port)));
    }
    for (i, port) in ports.iter().enumerate() {
        let p = ctls[i].as_ref().unwrap();
        assert!(procs::wait_port(*port, Duration::from_secs(30)), "dcmgr{i} did not listen:\n{}", p.log_text());
    }
    let hva_metrics: Vec<u16> = (0..HOSTS).map(|_| procs::free_port()).collect();
    let _hvas: Vec<Proc> = (0..HOSTS).map(|i| hva(i, dir, nats, hva_metrics[i])).collect();
    let clients: Vec<Client> = ports.iter().map(|p| Client::new(format!("http://127.0.0.1:{p}"), TOKEN)).collect();
    eventually(Duration::from_secs(30), || async {
        let hosts = clients[1].list_all_host_nodes().await.ok()?;
        (hosts.iter().filter(|h| h.state == NodeState::Online).count() == HOSTS).then_some(())
    })
    .await
    .expect("every hva registers");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM accounts WHERE name = 'admin'").await, 1);
    let mut keys = Vec::new();
    for c in &clients {
        keys.push(c.bundle_key().await.unwrap().public_key);
    }
    assert!(keys.iter().all(|k| *k == keys[0]), "one site key: {keys:?}");
    let image = clients[0].create_image(&vdc_tests::builtin_tiny_image(vec![HypervisorKind::Qemu])).await.unwrap();

    // Events cross processes: a create through dcmgr0, seen on a stream of dcmgr2.
    let mut stream = clients[2].events(None, true).await.unwrap();
    let made = clients[0].create_instance(&request(&image.id, "mc-event")).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(StreamItem::Event(e)) = stream.next().await.unwrap() {
                if e.kind == "instance" && e.resource_id == made.resource.id.as_str() && e.state == "running" {
                    return e;
                }
            }
        }
    })
    .await
    .expect("the stream on dcmgr2 shows the instance made through dcmgr0 running");
    drop(stream);
    println!("event of a create on dcmgr0 seen on dcmgr2: seq {}", seen.seq);

    // The read model of instances (dcmgr's app::views) across processes. dcmgr0 and
    // dcmgr1 hold the instance and the list as read (the second read from memory). A stop
    // through dcmgr0 shows on dcmgr0 at once, and on dcmgr1 within its event pump's poll
    // (0.5 s) or the read model's TTL (1 s).
    let id = &made.resource.id;
    let state_in_list = |c: &Client| {
        let c = c.clone();
        async move { c.list_all_instances().await.unwrap().into_iter().find(|i| i.id == *id).map(|i| i.state) }
    };
    for c in &clients[..2] {
        for _ in 0..2 {
            assert_eq!(c.get_instance(id).await.unwrap().state, InstanceState::Running);
            assert_eq!(state_in_list(c).await, Some(InstanceState::Running));
        }
    }
    clients[0].stop_instance(id).await.unwrap();
    let stopped_at = Instant::now();
    assert_ne!(clients[0].get_instance(id).await.unwrap().state, InstanceState::Running, "dcmgr0 reads its own write");
    assert_ne!(state_in_list(&clients[0]).await, Some(InstanceState::Running), "in its list too");
    eventually(Duration::from_secs(5), || async {
        let got = clients[1].get_instance(id).await.ok()?.state;
        (got != InstanceState::Running && state_in_list(&clients[1]).await != Some(InstanceState::Running))
            .then_some(())
    })
    .await
    .expect("dcmgr1 shows the stop made through dcmgr0");
    let took = stopped_at.elapsed();
    assert!(took < Duration::from_secs(3), "dcmgr1 showed the stop after {took:?}, beyond the 1 s TTL");
    println!("a stop through dcmgr0 shown by dcmgr1's GET and list after {took:?}");

    // A token revoked through dcmgr0 stops on dcmgr1 within the cache's TTL (1 s here).
    let minted = clients[0]
        .create_token(&CreateToken {
            name: "multictl".into(),
            account_id: None,
            expires_at: None,
            role: None,
            user_id: None,
        })
        .await
        .unwrap();
    let other = Client::new(format!("http://127.0.0.1:{}", ports[1]), &minted.secret);
    other.whoami().await.expect("the new token works on dcmgr1 (and is cached there)");
    clients[0].revoke_token(&minted.token.id).await.unwrap();
    let revoked_at = Instant::now();
    let refused = eventually(Duration::from_secs(5), || async {
        match other.whoami().await {
            Err(ClientError::Api { status: 401, code, .. }) => Some(code),
            _ => None,
        }
    })
    .await
    .expect("the revoked token is refused by dcmgr1");
    assert_eq!(refused, "token_revoked");
    let took = revoked_at.elapsed();
    // The TTL plus the time a loaded machine takes to answer; without the TTL it never is.
    assert!(took < Duration::from_secs(3), "refused after {took:?}, beyond the 1 s TTL");
    println!("revoke through dcmgr0 refused on dcmgr1 after {took:?}");

    // Metrics on each; one leader.
    let mut leader = None;
    for (i, port) in ports.iter().enumerate() {
        let text = scrape(*port).await;
        assert!(text.contains("vdc_agents{"), "dcmgr{i} /metrics:\n{text}");
        if gauge(&text, "vdc_dcmgr_leader") == Some(1.0) {
            assert!(leader.replace(i).is_none(), "two leaders");
        }
    }
    let leader = leader.expect("one dcmgr leads");
    println!("dcmgr{leader} leads; it is the one killed");

    // Hosts must stay online throughout (sampled from the database).
    let stop_watch = Arc::new(AtomicBool::new(false));
    let offline_seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let watch = {
        let (db, stop, seen) = (db.clone(), stop_watch.clone(), offline_seen.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let rows: Vec<(String, String)> =
                    sqlx::query_as("SELECT id, state FROM host_nodes WHERE state <> 'online'")
                        .fetch_all(&db)
                        .await
                        .unwrap();
                seen.lock().unwrap().extend(rows.into_iter().map(|(id, s)| format!("{id} {s}")));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // The storm.
    let accepted = Arc::new(AtomicUsize::new(0));
    // `killed`: the kill has begun (no answer from it is expected); `is_dead`: it is gone
    // and whatever it committed is in the database.
    let killed = Arc::new(AtomicBool::new(false));
    let is_dead = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let (half_tx, half_rx) = tokio::sync::oneshot::channel::<()>();
    let half_tx = Arc::new(Mutex::new(Some(half_tx)));
    let mut victim = ctls[leader].take().unwrap();
    let killer = {
        let (killed, is_dead) = (killed.clone(), is_dead.clone());
        tokio::spawn(async move {
            let _ = half_rx.await;
            killed.store(true, Ordering::SeqCst);
            victim.kill();
            let at = Instant::now();
            // Its connections are closed; a commit it had sent is in or out by now.
            tokio::time::sleep(Duration::from_millis(500)).await;
            is_dead.store(true, Ordering::SeqCst);
            (victim, at)
        })
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let survivors: Vec<usize> = (0..CONTROLLERS).filter(|&i| i != leader).collect();
    let (retried, unanswered_committed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..CREATES {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let (clients, image, accepted, killed, failures, half_tx, db, is_dead, survivors) = (
            clients.clone(),
            image.id.clone(),
            accepted.clone(),
            killed.clone(),
            failures.clone(),
            half_tx.clone(),
            db.clone(),
            is_dead.clone(),
            survivors.clone(),
        );
        let (retried, unanswered_committed) = (retried.clone(), unanswered_committed.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let name = format!("mc-{n:04}");
            let to = n % CONTROLLERS;
            let req = request(&image, &name);
            match clients[to].create_instance(&req).await {
                Ok(_) => {
                    if accepted.fetch_add(1, Ordering::SeqCst) + 1 == CREATES / 2 {
                        if let Some(tx) = half_tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                    return;
                }
                Err(ClientError::Transport(_)) if to == leader && killed.load(Ordering::SeqCst) => {}
                Err(e) => {
                    failures.lock().unwrap().push(format!("{name} on dcmgr{to}: {e}"));
                    return;
                }
            }
            // No answer from the killed dcmgr: once it is dead, was it committed?
            while !is_dead.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let there: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instances WHERE name = $1")
                .bind(&name)
                .fetch_one(&db)
                .await
                .unwrap();
            if there > 0 {
                unanswered_committed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            retried.fetch_add(1, Ordering::SeqCst);
            let to = survivors[n % survivors.len()];
            if let Err(e) = clients[to].create_instance(&req).await {
                failures.lock().unwrap().push(format!("{name} (retried) on dcmgr{to}: {e}"));
            } else {
                accepted.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let storm = started.elapsed();
    assert!(killed.load(Ordering::SeqCst), "the leader was killed mid-way");
    let (_victim, kill_at) = killer.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "requests to live controllers failed ({}): {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    println!(
        "{CREATES} creates over {CONTROLLERS} controllers in {storm:?}: {:.0} creates/s; {} got no answer from the killed one \
         ({} of them committed, {} sent again to a survivor)",
        CREATES as f64 / storm.as_secs_f64(),
        retried.load(Ordering::SeqCst) + unanswered_committed.load(Ordering::SeqCst),
        unanswered_committed.load(Ordering::SeqCst),
        retried.load(Ordering::SeqCst),
    );
    let not_running_at_end =
        count(&db, "SELECT COUNT(*) FROM instances WHERE name LIKE 'mc-0%' AND state <> 'running'").await;
    println!("{not_running_at_end} not yet running when the last create was answered");

    // All converge: each name exactly once, all running.
    let converged = eventually(Duration::from_secs(60), || async {
        let running = count(&db, "SELECT COUNT(*) FROM instances WHERE name LIKE 'mc-0%' AND state = 'running'").await;
        (running as usize >= CREATES).then_some(())
    })
    .await;
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM instances WHERE name LIKE 'mc-0%' GROUP BY state")
            .fetch_all(&db)
            .await
            .unwrap();
    assert!(converged.is_ok(), "not all running after 60 s: {by_state:?}");
    println!("all {CREATES} running {:?} after the kill", kill_at.elapsed());
    let doubled: Vec<(String, i64)> = sqlx::query_as(
        "SELECT name, COUNT(*) FROM instances WHERE name LIKE 'mc-0%' GROUP BY name HAVING COUNT(*) > 1",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert!(doubled.is_empty(), "created twice: {doubled:?}");
    let names = count(&db, "SELECT COUNT(DISTINCT name) FROM instances WHERE name LIKE 'mc-0%'").await;
    assert_eq!(names as usize, CREATES, "every create exists (none lost)");
    let total = count(&db, "SELECT COUNT(*) FROM instances WHERE name LIKE 'mc-0%'").await;
    assert_eq!(total as usize, CREATES);

    stop_watch.store(true, Ordering::Relaxed);
    watch.await.unwrap();
    let offline = offline_seen.lock().unwrap().clone();
    assert!(offline.is_empty(), "hosts went offline during the test: {offline:?}");

    // The survivors answer, one of them leads, and both see every host online.
    let mut leaders = HashMap::new();
    for &i in &survivors {
        let hosts = clients[i].list_all_host_nodes().await.unwrap();
        assert!(hosts.iter().all(|h| h.state == NodeState::Online), "dcmgr{i}: {hosts:?}");
        let text = scrape(ports[i]).await;
        leaders.insert(i, gauge(&text, "vdc_dcmgr_leader"));
    }
    assert_eq!(leaders.values().filter(|v| **v == Some(1.0)).count(), 1, "one survivor leads: {leaders:?}");

    // Each report batch went to one dcmgr (a queue group), each heartbeat to every one.
    let (mut sent_reports, mut sent_heartbeats) = (0.0, 0.0);
    for port in &hva_metrics {
        let text = scrape(*port).await;
        sent_reports += sum(&text, "vdc_bus_messages_total", &[("direction", "sent"), ("subject", "report")]);
        sent_heartbeats += sum(&text, "vdc_bus_messages_total", &[("direction", "sent"), ("subject", "heartbeat")]);
    }
    let mut received_reports = 0.0;
    for &i in &survivors {
        let text = scrape(ports[i]).await;
        received_reports += sum(&text, "vdc_bus_messages_total", &[("direction", "received"), ("subject", "report")]);
        let heartbeats = sum(&text, "vdc_bus_messages_total", &[("direction", "received"), ("subject", "heartbeat")]);
        assert!(heartbeats >= 0.9 * sent_heartbeats, "dcmgr{i} got {heartbeats} of {sent_heartbeats} heartbeats");
    }
    println!("report batches: {sent_reports} sent by the agents, {received_reports} taken by the two survivors");
    assert!(
        received_reports > 0.0 && received_reports <= sent_reports,
        "the survivors took {received_reports} report batches of {sent_reports} sent: each goes to one dcmgr"
    );

    // A cordon through one dcmgr holds at once on the other, whose placement model
    // (read again every second) still has the hosts open: its reservations are refused
    // by the database and it places on the one host left open.
    let (one, other) = (&clients[survivors[0]], &clients[survivors[1]]);
    let hosts = one.list_all_host_nodes().await.unwrap();
    let open = hosts[0].id.clone();
    other.create_instance(&request(&image.id, "cordon-warm")).await.unwrap();
    for h in &hosts[1..] {
        let req = UpdateHostNode { schedulable: Some(false), ..Default::default() };
        assert!(!one.update_host_node(&h.id, &req).await.unwrap().schedulable);
    }
    for n in 0..10 {
        let i = other.create_instance(&request(&image.id, &format!("cordon-{n}"))).await.unwrap().resource;
        assert_eq!(i.host_node_id.as_ref(), Some(&open), "cordon-{n} placed on a cordoned host");
    }
    drop(ctls);
}

/// SQLite takes one dcmgr: a second one on the same file is refused, saying why; once
/// the first has stopped, another starts.
#[tokio::test]
async fn a_second_dcmgr_on_one_sqlite_file_is_refused() {
    use vdc_dcmgr::{server::Options, Config, Dcmgr};
    let tmp = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: format!("sqlite://{}", tmp.path().join("vdc.db").display()),
        images: vdc_dcmgr::config::ImagesConfig { dir: Some(tmp.path().join("images")), ..Default::default() },
        ..Default::default()
    };
    let first = Dcmgr::start(config.clone(), Options::default()).await.unwrap();
    let err = match Dcmgr::start(config.clone(), Options::default()).await {
        Ok(_) => panic!("a second dcmgr started on the first one's SQLite database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("another dcmgr serves the SQLite database") && err.contains("PostgreSQL"), "{err}");
    first.stop().await;
    let again = Dcmgr::start(config, Options::default()).await.expect("starts once the first has stopped");

    // A busy port stops a dcmgr before it opens (and migrates) its database.
    let busy = Config {
        listen: again.ctx.http_addr.get().unwrap().to_string(),
        database_url: format!("sqlite://{}", tmp.path().join("other.db").display()),
        images: vdc_dcmgr::config::ImagesConfig { dir: Some(tmp.path().join("other")), ..Default::default() },
        ..Default::default()
    };
    let err = match Dcmgr::start(busy, Options::default()).await {
        Ok(_) => panic!("a dcmgr started on a busy port"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("listening on"), "{err}");
    assert!(!tmp.path().join("other.db").exists(), "the database was opened first");
    again.stop().await;
}

/// The blob locks span dcmgrs on one PostgreSQL: while one holds a blob's lock another
/// waits for it, a blob of another stripe does not wait, a holder gives it back when
/// done, and a dcmgr that dies (its connection closed) frees what it held. Each dcmgr
/// holds all its locks on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blob_lock_spans_controllers_and_dies_with_its_holder() {
    use vdc_dcmgr::app::blob_refs::{stripe, LOCK_CLASS};
    use vdc_dcmgr::datastore::locks::SharedLocks;
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    // One session, so the unlock gives back what the try took.
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db_url).await.unwrap();
    let (a, b) = (stripe(&"a1".repeat(32)), stripe(&"b2".repeat(32)));
    let free = |s: i32| {
        let db = db.clone();
        async move {
            let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1, $2)")
                .bind(LOCK_CLASS)
                .bind(s)
                .fetch_one(&db)
                .await
                .unwrap();
            if got {
                // Give it back at once (the pool keeps the session).
                sqlx::query("SELECT pg_advisory_unlock($1, $2)").bind(LOCK_CLASS).bind(s).execute(&db).await.unwrap();
            }
            got
        }
    };
    let (one, two) = (SharedLocks::new(db_url.clone()), SharedLocks::new(db_url.clone()));
    let held = one.lock(LOCK_CLASS, &[a].into()).await.unwrap();
    assert!(!free(a).await, "held by one controller: another cannot take it");
    assert!(free(b).await, "another blob's lock is free");
    let other = tokio::time::timeout(Duration::from_secs(10), two.lock(LOCK_CLASS, &[b].into()))
        .await
        .expect("another blob's lock is taken while the first is held")
        .unwrap();
    drop(other);
    let waiter = tokio::spawn({
        let two = two.clone();
        async move { two.lock(LOCK_CLASS, &[a, b].into()).await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "a second holder of the same blob waits");
    drop(held);
    let second = tokio::time::timeout(Duration::from_secs(10), waiter).await.expect("taken once given back").unwrap();
    assert!(!free(a).await && !free(b).await);
    assert_eq!(one.count().await, 0, "given back");

    // Many locks of one dcmgr: one connection holds them all.
    let mut many = Vec::new();
    for key in 0..50 {
        many.push(one.try_lock(vdc_dcmgr::app::image::INGEST_CLASS, key).await.unwrap().expect("free"));
    }
    let sessions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(vdc_dcmgr::app::image::INGEST_CLASS as i64)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!((sessions, one.count().await), (1, 50), "50 locks on one connection");

    two.close(); // as when a dcmgr dies holding them
    eventually(Duration::from_secs(10), || async { (free(a).await && free(b).await).then_some(()) })
        .await
        .expect("freed with its holder's connection");
    drop(second);
    drop(many);
    eventually(Duration::from_secs(10), || async { (one.count().await == 0).then_some(()) }).await.expect("given back");
}

/// Uploads in flight on one dcmgr, on PostgreSQL: each one's claim of its image is an
/// advisory lock. They took a connection each, so 40 uploads were 40 connections beside
/// the pool, and PostgreSQL's default 100 were soon gone for every dcmgr. Now the
/// dcmgr's connections stay within its pool and a few of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_do_not_take_a_connection_each() {
    const UPLOADS: usize = 40;
    vdc_tests::init_logging();
    let tmp = tempfile::Builder::new().prefix("vdc-multictl-conns-").tempdir().unwrap();
    let dir = tmp.path();
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    let db = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db_url).await.unwrap();
    let (_nats, nats) = procs::nats_server(dir);
    let port = procs::free_port();
    let ctl = dcmgr(0, dir, &db_url, nats, port);
    assert!(procs::wait_port(port, Duration::from_secs(30)), "dcmgr:\n{}", ctl.log_text());
    let client = Client::new(format!("http://127.0.0.1:{port}"), TOKEN);
    let conns = || async {
        count(
            &db,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
    };

    use futures::SinkExt;
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for i in 0..UPLOADS {
        let img = client
            .create_image(&vdc_tests::image_request(&format!("up{i}"), vdc_schema::ImageFormat::Raw))
            .await
            .unwrap();
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        tx.send(Ok(vec![7u8; 64 << 10])).await.unwrap();
        senders.push(tx);
        uploads.push(tokio::spawn({
            let (c, id) = (client.clone(), img.id.clone());
            async move { c.upload_image(&id, reqwest::Body::wrap_stream(rx)).await }
        }));
    }
    // Every upload has claimed its image.
    let claims = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = {} \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        vdc_dcmgr::app::image::INGEST_CLASS
    );
    eventually(Duration::from_secs(20), || async { (count(&db, &claims).await == UPLOADS as i64).then_some(()) })
        .await
        .expect("the uploads are in flight");
    let during = conns().await;
    eprintln!("{during} connections of dcmgr's with {UPLOADS} uploads in flight");
    // The pool's 16, the leader's lock, the advisory locks', the event stream's listener.
    assert!(during <= 20, "{during} connections with {UPLOADS} uploads in flight");

    for mut tx in senders {
        tx.send(Ok(vec![7u8; 64 << 10])).await.unwrap();
    }
    for u in uploads {
        let img = u.await.unwrap().unwrap();
        assert_eq!((img.state, img.size_bytes), (ImageState::Available, Some(128 << 10)));
    }
}

/// A server on loopback for URL imports, counting the requests it answers. `/slow`
/// announces `SLOW_LEN` bytes of zeros and sends 1 KiB every 100 ms to its first client,
/// and all of them at once to later ones; `ended` says a slow client closed before the end.
async fn import_server() -> (u16, Arc<AtomicUsize>, Arc<AtomicBool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (hits, ended) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let (h, e) = (hits.clone(), ended.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = l.accept().await else { return };
            let first = h.fetch_add(1, Ordering::SeqCst) == 0;
            let e = e.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {SLOW_LEN}\r\nConnection: close\r\n\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let step = if first { 1024 } else { SLOW_LEN };
                for _ in 0..SLOW_LEN / step {
                    if conn.write_all(&vec![0u8; step]).await.is_err() {
                        e.store(true, Ordering::SeqCst);
                        return;
                    }
                    if first {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
    });
    (port, hits, ended)
}

const SLOW_LEN: usize = 1 << 20;

fn url_image(name: &str, url: String) -> vdc_schema::api::CreateImage {
    vdc_schema::api::CreateImage { source: Some(url), ..vdc_tests::image_request(name, vdc_schema::ImageFormat::Raw) }
}

/// Before, each dcmgr claimed an image's ingest in its own memory only: one starting
/// while another fetched a URL fetched it again, one killed mid-fetch left the image
/// pending for ever, a delete through another dcmgr let the download run to its end, and
/// the loser of two uploads got 404 after sending all its data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_data_is_taken_in_by_one_controller_at_a_time() {
    vdc_tests::init_logging();
    let tmp = tempfile::Builder::new().prefix("vdc-multictl-ingest-").tempdir().unwrap();
    let dir = tmp.path();
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    let (_nats, nats) = procs::nats_server(dir);
    let ports: Vec<u16> = (0..3).map(|_| procs::free_port()).collect();
    let clients: Vec<Client> = ports.iter().map(|p| Client::new(format!("http://127.0.0.1:{p}"), TOKEN)).collect();
    // dcmgr0 first, and leading before dcmgr1 starts: the leader is known.
    let ctl0 = dcmgr(0, dir, &db_url, nats, ports[0]);
    assert!(procs::wait_port(ports[0], Duration::from_secs(30)), "dcmgr0:\n{}", ctl0.log_text());
    eventually(Duration::from_secs(20), || async {
        (gauge(&scrape(ports[0]).await, "vdc_dcmgr_leader") == Some(1.0)).then_some(())
    })
    .await
    .expect("dcmgr0 leads");
    let mut ctl1 = dcmgr(1, dir, &db_url, nats, ports[1]);
    assert!(procs::wait_port(ports[1], Duration::from_secs(30)), "dcmgr1:\n{}", ctl1.log_text());
    let (port, hits, ended) = import_server().await;
    let url = format!("http://127.0.0.1:{port}/slow");

    // Created through dcmgr1, which fetches it (slowly: its first request).
    let img = clients[1].create_image(&url_image("taken-over", url.clone())).await.unwrap();
    eventually(Duration::from_secs(10), || async { (hits.load(Ordering::SeqCst) == 1).then_some(()) })
        .await
        .expect("dcmgr1 fetches it");
    // A dcmgr starting meanwhile resumes pending imports, and the leader looks for them
    // every 5 s: neither fetches this one again.
    let ctl2 = dcmgr(2, dir, &db_url, nats, ports[2]);
    assert!(procs::wait_port(ports[2], Duration::from_secs(30)), "dcmgr2:\n{}", ctl2.log_text());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once while dcmgr1 fetches it");
    assert_eq!(clients[0].get_image(&img.id).await.unwrap().state, ImageState::Pending);
    // dcmgr1 dies: its claim goes with its session, and the leader takes the import over.
    ctl1.kill();
    let done = clients[0].wait_image(&img.id, Duration::from_secs(30)).await.unwrap();
    assert_eq!(done.state, ImageState::Available, "{:?}", done.failure_reason);
    assert_eq!(done.size_bytes, Some(SLOW_LEN as u64));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "fetched again once, by the leader");

    // Deleted through dcmgr2 while dcmgr0 (its creator) fetches it: the download stops.
    let (port, _, ended2) = import_server().await;
    let slow = clients[0].create_image(&url_image("deleted", format!("http://127.0.0.1:{port}/slow"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    clients[2].delete_image(&slow.id).await.unwrap();
    eventually(Duration::from_secs(5), || async { ended2.load(Ordering::SeqCst).then_some(()) })
        .await
        .expect("the download stops when its image is deleted through another dcmgr");
    assert!(ended.load(Ordering::SeqCst) || hits.load(Ordering::SeqCst) == 2);

    // Two uploads to one image, through dcmgr0 and dcmgr2: the second is busy at once.
    let upload = vdc_tests::image_request("up", vdc_schema::ImageFormat::Raw);
    let up = clients[0].create_image(&upload).await.unwrap();
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let first = tokio::spawn({
        let (c, id) = (clients[0].clone(), up.id.clone());
        async move { c.upload_image(&id, reqwest::Body::wrap_stream(rx)).await }
    });
    use futures::SinkExt;
    tx.send(Ok(vec![0u8; 64 << 10])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match clients[2].upload_image(&up.id, vec![0u8; 128 << 10]).await {
        Err(ClientError::Api { status, code, .. }) => assert_eq!((status, code.as_str()), (409, "invalid_state")),
        other => panic!("the second upload: {other:?}"),
    }
    tx.send(Ok(vec![0u8; 64 << 10])).await.unwrap();
    drop(tx);
    let stored = first.await.unwrap().unwrap();
    assert_eq!((stored.state, stored.size_bytes), (ImageState::Available, Some(128 << 10)));
}

/// A dcmgr whose NATS is unreachable hears no agent: it must not lead, or it records
/// every agent offline (one with a wrong nats_url did, for a whole site). It takes the
/// lead once its NATS answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dcmgr_without_its_nats_does_not_lead() {
    use vdc_dcmgr::{server::Options, Config, Dcmgr};
    let tmp = tempfile::tempdir().unwrap();
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    let port = procs::free_port();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: db_url,
        nats_url: Some(format!("nats://127.0.0.1:{port}")),
        images: vdc_dcmgr::config::ImagesConfig { dir: Some(tmp.path().join("images")), ..Default::default() },
        ..Default::default()
    };
    let d = Dcmgr::start(config, Options::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!d.ctx.is_leader(), "no NATS, no lead");
    let _nats = procs::nats_server_on(tmp.path(), port, "nats-server");
    vdc_tests::eventually(Duration::from_secs(15), || async { d.ctx.is_leader().then_some(()) })
        .await
        .expect("it leads once its NATS answers");
    d.stop().await;
}

/// dcmgrs of one site configured differently are told so: the second names the settings
/// that differ from the first's (a tenant's quota depended on the dcmgr that answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dcmgr_configured_unlike_the_site_says_what_differs() {
    use vdc_dcmgr::app::site_settings::record;
    use vdc_dcmgr::{server::Options, Config, Dcmgr};
    let tmp = tempfile::tempdir().unwrap();
    let (db_url, _, _) = vdc_tests::create_pg_database().await.unwrap();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        database_url: db_url,
        images: vdc_dcmgr::config::ImagesConfig { dir: Some(tmp.path().join("images")), ..Default::default() },
        quotas: [(QuotaKey::Instances, 20)].into_iter().collect(),
        ..Default::default()
    };
    let d = Dcmgr::start(config.clone(), Options::default()).await.unwrap();
    assert!(record(&d.ctx.db, &config).await.unwrap().is_empty(), "the same again");
    let mut other = config.clone();
    other.quotas.insert(QuotaKey::Instances, 3);
    other.placement = vdc_dcmgr::config::Placement::Pack;
    let differ = record(&d.ctx.db, &other).await.unwrap();
    assert_eq!(differ.len(), 2, "{differ:?}");
    assert!(differ[0].starts_with("placement: Pack here, Spread before"), "{differ:?}");
    assert!(differ[1].starts_with("quotas: "), "{differ:?}");
    d.stop().await;
}
