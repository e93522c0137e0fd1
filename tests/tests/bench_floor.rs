//! The floors `vdc-bench` divides its figures by (`vdc_tests::floor`) read what dcmgr
//! reads, on SQLite and PostgreSQL: the bare server answers the JSON dcmgr answered, and
//! the raw statements find the rows behind dcmgr's answer. A floor whose SQL drifted from
//! dcmgr's would be measuring something else.

use vdc_schema::api::*;
use vdc_tests::{floor, on_both_databases, Db, Stack, StackOptions};

on_both_databases!(the_floors_read_what_dcmgr_reads);

async fn the_floors_read_what_dcmgr_reads(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("floor").await;
    let net = c
        .create_network(&CreateNetwork {
            name: "n".into(),
            cidr: "10.7.0.0/24".into(),
            gateway: None,
            dhcp_start: None,
            dhcp_end: None,
        })
        .await
        .unwrap();
    let sg = c
        .create_security_group(&CreateSecurityGroup { name: "g".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..3 {
        let req = CreateInstance {
            name: Some(format!("f{n}")),
            image_id: s.image.clone(),
            hypervisor: None,
            cpus: 1,
            memory_mib: 64,
            interfaces: vec![CreateInterface {
                network_id: net.id.clone(),
                security_groups: vec![sg.id.clone()],
                ip: None,
            }],
            ssh_key_id: None,
            user_data: Some("#cloud-config\n".into()),
            root_disk_size: None,
            server_group: None,
            zone: None,
            host_labels: Default::default(),
        };
        ids.push(c.create_instance(&req).await.unwrap().resource.id);
    }
    let account = c.whoami().await.unwrap().account.id.to_string();

    // The raw statements: the instance row, its interface and its group membership.
    let raw = floor::RawSql::connect(&s.database_url).await.unwrap();
    assert_eq!(raw.get_instance(&account, ids[0].as_str()).await.unwrap(), 3);
    assert!(raw.get_instance(&account, "i-nothere").await.is_err(), "a missing instance is an error");
    // Three rows, three interfaces, three memberships.
    assert_eq!(raw.list_instances(&account, 1000).await.unwrap(), 9);

    // The bare server answers byte for byte what dcmgr answered, as the bench starts it.
    let q = ListQuery { limit: Some(1000), ..Default::default() };
    let one = c.get_instance(&ids[1]).await.unwrap();
    let bare = floor::MemoryServer::start(vec![one.clone()]).await.unwrap();
    let bare_one = vdc_cli::client::Client::new(&bare.url, c.token()).get_instance(&ids[1]).await.unwrap();
    assert_eq!(serde_json::to_string(&bare_one).unwrap(), serde_json::to_string(&one).unwrap());
    let page = c.list_instances(&q).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let bare = floor::MemoryServer::start(page.items.clone()).await.unwrap();
    let bare_page = vdc_cli::client::Client::new(&bare.url, c.token()).list_instances(&q).await.unwrap();
    assert_eq!(serde_json::to_string(&bare_page).unwrap(), serde_json::to_string(&page).unwrap());
    s.stop().await;
}
