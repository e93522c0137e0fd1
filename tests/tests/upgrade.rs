//! An upgrade, as an operator makes one: this dcmgr started on a database an older vdc
//! wrote, with its agents (same node IDs) and its image store, on SQLite and PostgreSQL.
//!
//! The fixture (`tests/fixtures/upgrade`) was written by vdc main 0fabcde (2026-12-01,
//! migrations up to 0019), with `make_upgrade_fixture.rs` there run as a test of that
//! version: an account `tenant` with two networks, two security groups (one admitting
//! the other by reference), a key pair, an uploaded image, two instances (`app`
//! running with a fixed address, a volume attached and a floating IP; `db` stopped), a
//! snapshot of the volume; the same VDC imported through a bundle into `tenant-b`; a
//! user `alice` in `tenant`. `rows.sql` is its database's rows (`dump.py`), `blobs/` its
//! image store, `agents/` its (simulated) agents' journals and state as their hosts keep
//! them, `tokens` the API tokens it made.
//!
//! Every later migration runs on those rows here, and then the VDC is used the way its
//! users would: their old tokens, the instances coming back on their hosts, stop and
//! start, a new instance and a volume from the old snapshot, the event stream going on
//! from the old events, and an export of the whole VDC with the old image's data.

use std::borrow::Cow;
use std::time::Duration;
use vdc_cli::client::{Client, StreamItem};
use vdc_schema::api::*;
use vdc_schema::*;
use vdc_tests::{eventually, on_both_databases, wait_state, Db, Existing, Stack, StackOptions};

on_both_databases!(an_older_vdcs_database_is_served_after_the_upgrade);

/// The last migration of the vdc that wrote the fixture.
const FIXTURE_MIGRATION: i64 = 19;
const ROWS: &str = include_str!("../fixtures/upgrade/rows.sql");
const TOKENS: &str = include_str!("../fixtures/upgrade/tokens");

fn fixture_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/upgrade")
}

fn token(who: &str) -> String {
    TOKENS
        .lines()
        .find_map(|l| l.strip_prefix(who).and_then(|t| t.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no token of {who} in the fixture"))
        .to_owned()
}

/// The fixture's database as its vdc left it: its migrations, then its rows; and its
/// last event's ID.
async fn older_database(db: Db, dir: &std::path::Path) -> (Existing, i64) {
    let (url, pg) = match db {
        Db::Sqlite => (format!("sqlite://{}?mode=rwc", dir.join("vdc.db").display()), None),
        Db::Postgres => {
            let (url, admin, name) = vdc_tests::create_pg_database().await.unwrap();
            (url, Some((admin, name)))
        }
    };
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
    let all = sqlx::migrate!("../dcmgr/migrations");
    let older = sqlx::migrate::Migrator {
        migrations: Cow::Owned(all.migrations.iter().filter(|m| m.version <= FIXTURE_MIGRATION).cloned().collect()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older.run(&pool).await.unwrap();
    sqlx::raw_sql(ROWS).execute(&pool).await.unwrap();
    if db == Db::Postgres {
        // The older dcmgr's event IDs came from this sequence, which it had advanced.
        sqlx::raw_sql("CREATE SEQUENCE events_seq; SELECT setval('events_seq', (SELECT max(id) FROM events));")
            .execute(&pool)
            .await
            .unwrap();
    }
    let ids = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, String>(sql).fetch_all(&pool).await.unwrap() }
    };
    let existing = Existing {
        database_url: url,
        pg,
        host_ids: ids("SELECT id FROM host_nodes ORDER BY id").await,
        storage_ids: ids("SELECT id FROM storage_nodes ORDER BY id").await,
        agent_dirs: Some(fixture_dir().join("agents")),
    };
    let max_event: i64 = sqlx::query_scalar("SELECT max(id) FROM events").fetch_one(&pool).await.unwrap();
    pool.close().await;
    (existing, max_event)
}

async fn an_older_vdcs_database_is_served_after_the_upgrade(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let (existing, max_event) = older_database(db, dir.path()).await;
    assert_eq!((existing.host_ids.len(), existing.storage_ids.len()), (2, 1));
    // The image store as the older dcmgr left it.
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("blobs/sha256")).unwrap();
    for e in std::fs::read_dir(fixture_dir().join("blobs")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), images.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let mut opts = StackOptions::new(db);
    opts.existing = Some(existing);
    opts.images.dir = Some(images);
    // The older stack's external network.
    opts.external = Some(vdc_tests::test_external("203.0.113.20"));
    let mut s = Stack::start(opts).await;

    // The tenants' tokens work, as who they were.
    let c = Client::new(s.url(), token("tenant"));
    let cb = Client::new(s.url(), token("tenant-b"));
    assert_eq!(c.whoami().await.unwrap().account.name, "tenant");
    assert_eq!(cb.whoami().await.unwrap().account.name, "tenant-b");
    let tenant = c.whoami().await.unwrap().account.id;
    let members = s.admin.list_members(&tenant).await.unwrap();
    assert!(members.iter().any(|m| m.user_name == "alice" && m.role == Role::Member), "{members:?}");

    // The instances come back on their hosts as they were: app running, db stopped.
    let by_name = |v: &[Instance], n: &str| v.iter().find(|i| i.name == n).cloned().unwrap_or_else(|| panic!("no {n}"));
    let listed = c.list_all_instances().await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let app = by_name(&listed, "app");
    let dbi = by_name(&listed, "db");
    let app = vdc_tests::wait_converged(&c, &app.id).await;
    assert!(app.interfaces.iter().any(|v| v.ip.to_string() == "10.50.0.20"), "{:?}", app.interfaces);
    assert_eq!(c.get_instance(&dbi.id).await.unwrap().state, InstanceState::Stopped);
    // Their disk images' sizes, read after the migrations, are booked on their hosts.
    let mut want = 0;
    for (client, i) in [(&c, &app), (&cb, &by_name(&cb.list_all_instances().await.unwrap(), "app"))] {
        let size = client.get_image(&i.image_id).await.unwrap().virtual_size.expect("read at start");
        want += size.div_ceil(1 << 20);
    }
    let disk_booked = |s: &Stack| {
        let admin = s.admin.clone();
        async move { admin.list_all_host_nodes().await.unwrap().iter().map(|h| h.disk_used_mib).sum::<u64>() }
    };
    assert!(want > 0);
    assert_eq!(disk_booked(&s).await, want);

    // Stopped and started again (the second time), and the stopped one started.
    c.stop_instance(&app.id).await.unwrap();
    wait_state(&c, &app.id, InstanceState::Stopped).await;
    c.start_instance(&app.id).await.unwrap();
    wait_state(&c, &app.id, InstanceState::Running).await;
    c.start_instance(&dbi.id).await.unwrap();
    wait_state(&c, &dbi.id, InstanceState::Running).await;

    // The upgraded dcmgr started again (the second start: nothing left to migrate, and
    // no disk booked twice).
    s.restart_dcmgr().await;
    assert_eq!(disk_booked(&s).await, want);
    assert_eq!(c.get_instance(&app.id).await.unwrap().state, InstanceState::Running);

    // A new instance on the old network: an address of its own.
    let front = c.list_all_networks().await.unwrap().into_iter().find(|n| n.name == "front").unwrap();
    let web = c.list_all_security_groups().await.unwrap().into_iter().find(|g| g.name == "web").unwrap();
    let new = c
        .create_instance(&CreateInstance {
            memory_mib: 64,
            interfaces: vec![CreateInterface {
                network_id: front.id.clone(),
                security_groups: vec![web.id.clone()],
                ip: None,
            }],
            ..vdc_tests::qemu_guest(&s.image, "web2")
        })
        .await
        .unwrap()
        .resource;
    let new = vdc_tests::wait_converged(&c, &new.id).await;
    let ip = new.interfaces[0].ip.to_string();
    assert!(ip.starts_with("10.50.0.") && ip != "10.50.0.20", "{ip}");

    // The old volume stays attached to app; a volume made of the old snapshot.
    let vols = c.list_all_volumes().await.unwrap();
    let data = vols.iter().find(|v| v.name == "data").unwrap();
    assert_eq!((data.state, data.instance_id.as_ref()), (VolumeState::Attached, Some(&app.id)), "{data:?}");
    let snap = c.list_all_snapshots().await.unwrap().into_iter().find(|s| s.name == "data-1").unwrap();
    assert_eq!(snap.state, SnapshotState::Available);
    let restored = c
        .create_volume(&CreateVolume {
            name: "restored".into(),
            size_mib: None,
            snapshot_id: Some(snap.id),
            image_id: None,
        })
        .await
        .unwrap()
        .resource;
    eventually(Duration::from_secs(15), || async {
        (c.get_volume(&restored.id).await.ok()?.state == VolumeState::Available).then_some(())
    })
    .await
    .unwrap_or_else(|()| {
        panic!("a volume of the old snapshot: {:?}", futures::executor::block_on(c.get_volume(&restored.id)))
    });
    let fips = c.list_all_floating_ips().await.unwrap();
    assert_eq!(fips.len(), 1);
    assert_eq!(fips[0].instance_id.as_ref(), Some(&app.id));

    // The import into tenant-b: its record and its instances.
    let imports = cb.list_bundle_imports().await.unwrap();
    assert_eq!(imports.len(), 1, "{imports:?}");
    for i in cb.list_all_instances().await.unwrap() {
        if i.state != InstanceState::Stopped {
            vdc_tests::wait_converged(&cb, &i.id).await;
        }
    }

    // The event stream goes on from the old events: the new ones come after them.
    let mut stream = c.events(Some(max_event as u64), false).await.unwrap();
    let mut seen = vec![];
    while let Some(item) = stream.next().await.unwrap() {
        if let StreamItem::Event(e) = item {
            assert!(e.seq > max_event as u64);
            seen.push((e.kind, e.resource_id));
        }
    }
    assert!(seen.contains(&("instance".to_owned(), new.id.to_string())), "{seen:?}");
    let audit = c.list_audit(&Default::default()).await.unwrap();
    assert!(!audit.items.is_empty());

    // The whole VDC exports, the old image's data with it, and another account can
    // import it.
    let mut bundle = Vec::new();
    c.export_bundle(false, true, &mut bundle, |_| {}).await.unwrap();
    let other = s.account("tenant-c").await;
    let plan = other.plan_bundle(bundle.clone(), &["network:front=10.60.0.0/24".into()]).await;
    assert!(plan.is_ok(), "{plan:?}");
    let imported = other.import_bundle(bundle, &[]).await.unwrap();
    assert!(imported.created, "{imported:?}");
    let app_c = eventually(Duration::from_secs(20), || async {
        other
            .list_all_instances()
            .await
            .ok()?
            .into_iter()
            .find(|i| i.name == "app" && i.state == InstanceState::Running)
    })
    .await
    .expect("app imported elsewhere runs");
    assert!(app_c.interfaces.iter().any(|v| v.ip.to_string() == "10.50.0.20"));

    s.stop().await;
}
