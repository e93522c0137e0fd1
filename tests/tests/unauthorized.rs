//! Every operation of the OpenAPI document refused as it should be (issue 14, point 5), on
//! SQLite and PostgreSQL. The operations are read from `dcmgr/openapi.json`; each is sent,
//! with path IDs of real objects of a victim account and a minimal valid body, by: no token,
//! malformed tokens, an expired and a revoked token, another account's token, the victim's
//! reader (for anything that changes state), member and owner (on admin operations). Each
//! answer's status and code is asserted, and the victim's objects are the same at the end.
//!
//! [`CLASSES`] names what each operation is; the test fails when the document has an
//! operation the table lacks, or the table one the document no longer has, so a new
//! endpoint cannot land without a rule (as omicron's `unauthorized_coverage.rs`).

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::id::{AccountId, UserId};
use vdc_schema::state::{Role, ServerGroupPolicy};
use vdc_tests::{eventually, on_both_databases, Db, Stack, StackOptions};

on_both_databases!(every_operation_refuses_who_it_should);

/// What an operation is, which decides who is refused and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Needs no token.
    Public,
    /// Reads the caller's own account: another account's token gets an answer of its
    /// own, with none of the victim's IDs in it.
    OwnRead,
    /// Changes the caller's own account (a create that names no other object): a reader
    /// is refused; another account's token would act on its own account (not sent).
    OwnWrite,
    /// A create whose body names the victim's objects: another account's token gets 404.
    RefWrite,
    /// Reads a victim's object named in the path: another account's token gets 404.
    ObjectRead,
    /// Reads a token of the victim's owner: another user of the account (the reader) gets
    /// 404 as another account does (a non-owner sees its own tokens only).
    UserObjectRead,
    /// Changes a victim's object named in the path: a reader gets 403 `read_only`,
    /// another account's token 404.
    ObjectWrite,
    /// Manages the victim account's members: a reader gets `read_only`, a member
    /// `owner_only`, another account's token 404.
    OwnerOnly,
    /// Reads what only the account's owner may (the audit log): a reader and a member get
    /// 403 `owner_only`; another account's owner reads its own account's.
    OwnerRead,
    /// A cloud operator's: every non-admin gets 403 `forbidden`.
    AdminOnly,
    /// Signing in: needs no token, the credentials are in the body (wrong ones: 401
    /// `bad_credentials`).
    SignIn,
    /// Acts on the call's own token (signing out, switching accounts): with an API token
    /// rather than a console session, 409 `not_a_session`.
    OwnSession,
    /// A user's own (its password): a non-admin naming another user gets 403 `forbidden`.
    SelfOrAdmin,
    /// The caller's own role in the account named in the path (leaving it): any role of
    /// the account may (not probed: the reader would leave), another account's token
    /// gets 404.
    OwnMembership,
}

use Class::*;

/// Every operation of the document by its `operationId`. A new operation needs a line here.
const CLASSES: &[(&str, Class)] = &[
    ("api_info", OwnRead),
    ("openapi_document", Public),
    ("account_list", AdminOnly),
    ("account_create", AdminOnly),
    ("account_show", ObjectRead),
    ("account_delete", AdminOnly),
    ("account_members", ObjectRead),
    ("account_member_add", OwnerOnly),
    ("account_member_remove", OwnerOnly),
    ("account_leave", OwnMembership),
    ("account_quotas", ObjectRead),
    ("account_set_quotas", AdminOnly),
    ("account_create_token", ObjectWrite),
    ("user_list", AdminOnly),
    ("user_create", AdminOnly),
    ("user_show", AdminOnly),
    ("user_delete", AdminOnly),
    ("token_list", OwnRead),
    ("token_create", RefWrite),
    ("token_show", UserObjectRead),
    ("token_revoke", ObjectWrite),
    ("quota_show_own", OwnRead),
    ("keypair_list", OwnRead),
    ("keypair_create", OwnWrite),
    ("keypair_show", ObjectRead),
    ("keypair_delete", ObjectWrite),
    ("server_group_list", OwnRead),
    ("server_group_create", OwnWrite),
    ("server_group_show", ObjectRead),
    ("server_group_delete", ObjectWrite),
    ("image_list", OwnRead),
    ("image_create", OwnWrite),
    ("image_show", ObjectRead),
    ("image_delete", ObjectWrite),
    ("image_upload", ObjectWrite),
    ("image_members", ObjectRead),
    ("image_share", ObjectWrite),
    ("image_unshare", ObjectWrite),
    ("network_list", OwnRead),
    ("network_create", OwnWrite),
    ("network_show", ObjectRead),
    ("network_delete", ObjectWrite),
    ("security_group_list", OwnRead),
    ("security_group_create", OwnWrite),
    ("security_group_show", ObjectRead),
    ("security_group_delete", ObjectWrite),
    ("security_group_add_rule", ObjectWrite),
    ("security_group_delete_rule", ObjectWrite),
    ("instance_list", OwnRead),
    ("instance_create", RefWrite),
    ("instance_show", ObjectRead),
    ("instance_delete", ObjectWrite),
    ("instance_start", ObjectWrite),
    ("instance_stop", ObjectWrite),
    ("instance_halt", ObjectWrite),
    ("instance_poweron", ObjectWrite),
    ("instance_reboot", ObjectWrite),
    ("instance_terminate", ObjectWrite),
    ("instance_console", ObjectRead),
    ("instance_capture", ObjectWrite),
    ("volume_list", OwnRead),
    ("volume_create", RefWrite),
    ("volume_show", ObjectRead),
    ("volume_delete", ObjectWrite),
    ("volume_attach", ObjectWrite),
    ("volume_detach", ObjectWrite),
    ("volume_extend", ObjectWrite),
    ("snapshot_list", OwnRead),
    ("snapshot_create", RefWrite),
    ("snapshot_show", ObjectRead),
    ("snapshot_delete", ObjectWrite),
    ("snapshot_image", ObjectWrite),
    ("floating_ip_list", OwnRead),
    ("floating_ip_create", OwnWrite),
    ("floating_ip_show", ObjectRead),
    ("floating_ip_delete", ObjectWrite),
    ("floating_ip_associate", ObjectWrite),
    ("floating_ip_disassociate", ObjectWrite),
    ("host_node_list", AdminOnly),
    ("host_node_show", AdminOnly),
    ("host_node_update", AdminOnly),
    ("host_node_instances", AdminOnly),
    ("host_node_evacuate", AdminOnly),
    ("storage_node_list", AdminOnly),
    ("storage_node_show", AdminOnly),
    ("job_list", OwnRead),
    ("job_show", ObjectRead),
    ("event_stream", OwnRead),
    ("bundle_key", OwnRead),
    ("bundle_export", OwnWrite),
    // Verifies a bundle and says what an import would do; changes nothing.
    ("bundle_plan", OwnRead),
    ("bundle_import", OwnWrite),
    // Which chunks the caller's account lacks here (a push asks); changes nothing.
    ("bundle_chunks_missing", OwnRead),
    // Which chunks of a bundle an import would use (a push asks); changes nothing.
    ("bundle_chunks_wanted", OwnRead),
    ("bundle_import_list", OwnRead),
    ("bundle_import_show", ObjectRead),
    ("audit_list", OwnerRead),
    ("whoami", OwnRead),
    ("user_set_password", SelfOrAdmin),
    ("session_create", SignIn),
    ("session_delete", OwnSession),
    ("session_switch", OwnSession),
];

/// One operation of the document.
struct Operation {
    id: String,
    method: reqwest::Method,
    path: String,
    /// The request body's media type, if it has one.
    body_type: Option<String>,
}

fn operations() -> Vec<Operation> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dcmgr/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut ops = vec![];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let body_type = op["requestBody"]["content"].as_object().and_then(|c| c.keys().next().cloned());
            ops.push(Operation {
                id: op["operationId"].as_str().unwrap().to_owned(),
                method: method.to_uppercase().parse().unwrap(),
                path: path.clone(),
                body_type,
            });
        }
    }
    ops
}

#[test]
fn the_table_names_every_operation_of_the_document() {
    let documented: std::collections::BTreeSet<String> = operations().into_iter().map(|o| o.id).collect();
    let table: std::collections::BTreeSet<String> = CLASSES.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(table.len(), CLASSES.len(), "an operation is named twice in CLASSES");
    let missing: Vec<_> = documented.difference(&table).collect();
    assert!(missing.is_empty(), "operations without an authorization rule: add them to CLASSES: {missing:?}");
    let gone: Vec<_> = table.difference(&documented).collect();
    assert!(gone.is_empty(), "CLASSES names operations the document no longer has: {gone:?}");
}

/// The victim account's objects, by the path parameter or collection that names them.
struct Victim {
    ids: BTreeMap<&'static str, String>,
    bundle: Vec<u8>,
}

impl Victim {
    fn id(&self, what: &str) -> &str {
        self.ids.get(what).unwrap_or_else(|| panic!("no victim object for {what}: add one to the set-up"))
    }

    /// The path with its parameters filled: `{id}` by the collection it follows.
    fn fill(&self, path: &str) -> String {
        let Some(rest) = path.strip_prefix("/api/v1/") else {
            return path.to_owned();
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let mut out = vec![];
        for (i, seg) in segments.iter().enumerate() {
            out.push(match *seg {
                "{id}" => self.id(segments[i - 1]).to_owned(),
                "{user_id}" => self.id("member_user").to_owned(),
                "{rule_id}" => self.id("rule").to_owned(),
                "{account_id}" => self.id("other_account").to_owned(),
                s if s.starts_with('{') => panic!("no value for {s} in {path}: add it to Victim::fill"),
                s => s.to_owned(),
            });
        }
        format!("/api/v1/{}", out.join("/"))
    }

    /// A minimal valid body for a JSON request, naming the victim's objects where it can.
    fn body(&self, op: &str) -> Value {
        match op {
            "account_create" | "user_create" => json!({"name": "intruder"}),
            "account_member_add" => json!({"user": "vreader", "role": "owner"}),
            "account_set_quotas" => json!({"quotas": {"instances": 1000}}),
            "token_create" => json!({"name": "sneak", "account_id": self.id("accounts")}),
            "keypair_create" => json!({"name": "sneak"}),
            "server_group_create" => json!({"name": "sneak", "policy": "affinity"}),
            "image_create" => json!({"name": "sneak", "format": "raw", "hypervisors": ["qemu"]}),
            "network_create" => json!({"name": "sneak", "cidr": "10.88.0.0/24"}),
            "security_group_create" => json!({"name": "sneak"}),
            "security_group_add_rule" => json!({"protocol": "tcp", "port_min": 1, "port_max": 2, "cidr": "0.0.0.0/0"}),
            "instance_create" => json!({
                "image_id": self.id("images"), "ssh_key_id": self.id("keypairs"),
                "interfaces": [{"network_id": self.id("networks"), "security_groups": [self.id("security_groups")]}],
            }),
            "instance_capture" | "snapshot_image" => json!({"image_name": "sneak"}),
            "volume_create" => json!({"name": "sneak", "snapshot_id": self.id("snapshots")}),
            "volume_attach" | "floating_ip_associate" => json!({"instance_id": self.id("instances")}),
            "volume_extend" => json!({"size_mib": 4096}),
            "snapshot_create" => json!({"name": "sneak", "volume_id": self.id("volumes")}),
            "bundle_chunks_missing" => json!({"chunks": [vdc_bundle::sha256_hex(b"victim")]}),
            "user_set_password" => json!({"password": "intruder-password"}),
            "session_create" => json!({"user": "vmember", "password": "not-the-password"}),
            "session_switch" => json!({"account": self.id("accounts")}),
            _ => json!({}),
        }
    }
}

/// How a probe sends its credentials.
#[derive(Clone)]
enum Auth {
    None,
    Header(String),
}

struct Answer {
    status: u16,
    code: String,
    body: String,
}

async fn send(url: &str, op: &Operation, v: &Victim, auth: &Auth) -> Answer {
    let http = reqwest::Client::new();
    let mut path = v.fill(&op.path);
    // The event stream ends at the end of the log instead of following it.
    if op.id == "event_stream" {
        path.push_str("?follow=false");
    }
    if op.id == "bundle_export" {
        path.push_str("?model_only=true");
    }
    let mut req = http.request(op.method.clone(), format!("{url}{path}")).timeout(Duration::from_secs(20));
    if let Auth::Header(h) = auth {
        req = req.header("Authorization", h);
    }
    req = match op.body_type.as_deref() {
        Some("application/json") => req.json(&v.body(&op.id)),
        Some(other) => req.header("Content-Type", other).body(v.bundle.clone()),
        None => req,
    };
    let resp = req.send().await.unwrap_or_else(|e| panic!("{} {path}: {e}", op.method));
    let status = resp.status().as_u16();
    let body = String::from_utf8_lossy(&resp.bytes().await.unwrap_or_default()).into_owned();
    let code = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Answer { status, code, body }
}

/// What the victim has, as its owner and the admin see it: compared before and after.
async fn victim_state(s: &Stack, owner: &Client, account: &str) -> Value {
    let mut out = serde_json::Map::new();
    for (name, path) in [
        ("keypairs", "/keypairs"),
        ("server_groups", "/server_groups"),
        ("networks", "/networks"),
        ("security_groups", "/security_groups"),
        ("instances", "/instances"),
        ("volumes", "/volumes"),
        ("snapshots", "/snapshots"),
        ("floating_ips", "/floating-ips"),
        ("images", "/images"),
        ("tokens", "/tokens"),
        ("jobs", "/jobs"),
        ("quotas", "/quotas"),
        ("bundle_imports", "/bundle/imports"),
    ] {
        out.insert(name.into(), owner.get::<Value>(path).await.unwrap());
    }
    out.insert("members".into(), owner.get::<Value>(&format!("/accounts/{account}/members")).await.unwrap());
    out.insert("accounts".into(), s.admin.get::<Value>("/accounts").await.unwrap());
    out.insert("users".into(), s.admin.get::<Value>("/users").await.unwrap());
    Value::Object(out)
}

/// A user of the victim account with `role`, and a token of it.
async fn role_token(s: &Stack, owner: &Client, account: &AccountId, name: &str, role: Role) -> (UserId, String) {
    let user = s.admin.create_user(&CreateUser { name: name.into(), admin: false, password: None }).await.unwrap();
    owner.add_member(account, &AddMember { user: name.into(), role }).await.unwrap();
    let t = CreateToken {
        name: "t".into(),
        account_id: Some(account.clone()),
        expires_at: None,
        role: None,
        user_id: Some(user.id.clone()),
    };
    (user.id, s.admin.create_token(&t).await.unwrap().secret)
}

async fn every_operation_refuses_who_it_should(db: Db) {
    let started = Instant::now();
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.13"));
    let s = Stack::start(o).await;
    let url = s.url();
    let token =
        |name: &str| CreateToken { name: name.into(), account_id: None, expires_at: None, role: None, user_id: None };

    // The victim: an owner, a member and a reader, and one object of every kind.
    let owner = s.account("victim").await;
    let mine = owner.list_all_tokens().await.unwrap().remove(0);
    let account = mine.account_id.clone();
    let mut ids: BTreeMap<&'static str, String> = BTreeMap::new();
    ids.insert("accounts", account.to_string());
    let expiring = CreateToken { expires_at: Some(chrono::Utc::now() + chrono::Duration::seconds(2)), ..token("soon") };
    let expired = owner.create_token(&expiring).await.unwrap().secret;
    let revoked = owner.create_token(&token("gone")).await.unwrap();
    owner.revoke_token(&revoked.token.id).await.unwrap();
    ids.insert("tokens", owner.create_token(&token("ci")).await.unwrap().token.id.to_string());
    let (_, reader) = role_token(&s, &owner, &account, "vreader", Role::Reader).await;
    let (member_user, member) = role_token(&s, &owner, &account, "vmember", Role::Member).await;
    ids.insert("member_user", member_user.to_string());
    ids.insert("users", member_user.to_string());

    let kp = owner.create_keypair(&CreateKeyPair { name: "kp".into(), public_key: None }).await.unwrap();
    ids.insert("keypairs", kp.keypair.id.to_string());
    let group = CreateServerGroup { name: "sg".into(), policy: ServerGroupPolicy::AntiAffinity };
    ids.insert("server_groups", owner.create_server_group(&group).await.unwrap().id.to_string());
    let inst = s.running_instance(&owner, "web").await;
    ids.insert("instances", inst.id.to_string());
    ids.insert("networks", inst.interfaces[0].network_id.to_string());
    let sg = owner
        .create_security_group(&CreateSecurityGroup { name: "sg".into(), description: String::new(), rules: vec![] })
        .await
        .unwrap();
    let rule: RuleSpec =
        serde_json::from_value(json!({"protocol": "tcp", "port_min": 22, "port_max": 22, "cidr": "0.0.0.0/0"}))
            .unwrap();
    let sg = owner.add_security_group_rule(&sg.id, &rule).await.unwrap();
    ids.insert("security_groups", sg.id.to_string());
    ids.insert("rule", sg.rules[0].id.to_string());
    let vol = owner
        .create_volume(&CreateVolume { name: "data".into(), size_mib: Some(64), snapshot_id: None, image_id: None })
        .await
        .unwrap();
    owner.wait_job_ok(&vol.job.id, Duration::from_secs(20)).await.unwrap();
    ids.insert("volumes", vol.resource.id.to_string());
    ids.insert("jobs", vol.job.id.to_string());
    let snap = owner
        .create_snapshot(&CreateSnapshot { volume_id: vol.resource.id.clone(), name: "snap".into() })
        .await
        .unwrap();
    owner.wait_job_ok(&snap.job.id, Duration::from_secs(20)).await.unwrap();
    ids.insert("snapshots", snap.resource.id.to_string());
    let image_req = CreateSnapshotImage {
        image_name: "img".into(),
        format: None,
        arch: None,
        hypervisors: None,
        boot_mode: None,
        os: None,
        min_disk: None,
        min_memory: None,
        default_user: None,
    };
    let img = owner.snapshot_image(&snap.resource.id, &image_req).await.unwrap();
    owner.wait_job_ok(&img.job.id, Duration::from_secs(20)).await.unwrap();
    ids.insert("images", img.resource.id.to_string());
    let fip = owner.create_floating_ip(&CreateFloatingIp { ip: None }).await.unwrap();
    ids.insert("floating-ips", fip.id.to_string());

    // Another account: the intruder, and (shared an image) a friend of the victim.
    let intruder = s.account("intruder").await;
    let intruder_account = intruder.list_all_tokens().await.unwrap().remove(0).account_id;
    ids.insert("other_account", intruder_account.to_string());
    let friend = s.account("friend").await;
    let friend_account = friend.list_all_tokens().await.unwrap().remove(0).account_id;
    owner.share_image(&img.resource.id, &friend_account).await.unwrap();
    // A bundle import in the victim account (a key pair exported by the friend).
    friend.create_keypair(&CreateKeyPair { name: "moved".into(), public_key: None }).await.unwrap();
    let mut bundle = vec![];
    friend.export_bundle(true, false, &mut bundle, |_| {}).await.unwrap();
    let imported = owner.import_bundle(bundle.clone(), &[]).await.unwrap();
    ids.insert("bundle", imported.import.id.to_string());
    ids.insert("imports", imported.import.id.to_string());
    ids.insert("host_nodes", s.admin.list_all_host_nodes().await.unwrap()[0].id.to_string());
    ids.insert("storage_nodes", s.admin.list_all_storage_nodes().await.unwrap()[0].id.to_string());
    let victim = Victim { ids, bundle };

    // Settled: nothing of the victim's still converging, so the state compares exactly.
    eventually(Duration::from_secs(20), || async {
        let jobs = owner.list_all_jobs().await.ok()?;
        jobs.iter().all(|j| j.finished_at.is_some()).then_some(())
    })
    .await
    .expect("the victim's jobs finish");
    let expired_auth = Auth::Header(format!("Bearer {expired}"));
    let is_expired = || async {
        let a = send(
            &url,
            &Operation { id: "api_info".into(), method: reqwest::Method::GET, path: "/api/v1".into(), body_type: None },
            &victim,
            &expired_auth,
        )
        .await;
        (a.code == "token_expired").then_some(())
    };
    eventually(Duration::from_secs(5), is_expired).await.expect("the expiring token expires");
    let before = victim_state(&s, &owner, account.as_str()).await;
    let victim_ids: Vec<String> = victim
        .ids
        .iter()
        .filter(|(k, _)| !["other_account", "host_nodes", "storage_nodes"].contains(k))
        .map(|(_, v)| v.clone())
        .collect();
    let set_up = started.elapsed();

    let classes: BTreeMap<&str, Class> = CLASSES.iter().copied().collect();
    let bearer = |t: &str| Auth::Header(format!("Bearer {t}"));
    let owner_secret = owner.token().to_owned();
    let intruder_secret = intruder.token().to_owned();
    let mut probes = 0;
    let mut failures: Vec<String> = vec![];
    for op in operations() {
        let class = *classes.get(op.id.as_str()).unwrap_or_else(|| panic!("{} has no class in CLASSES", op.id));
        let what = format!("{} {} ({})", op.method, op.path, op.id);
        let expect = |failures: &mut Vec<String>, who: &str, a: Answer, status: u16, code: &str| {
            if a.status != status || a.code != code {
                let body: String = a.body.chars().take(200).collect();
                failures.push(format!("{what} as {who}: expected {status} {code}, got {} {} {body}", a.status, a.code));
            }
        };
        if class == Public {
            let a = send(&url, &op, &victim, &Auth::None).await;
            assert_eq!(a.status, 200, "{what} without a token");
            probes += 1;
            continue;
        }
        if class == SignIn {
            let a = send(&url, &op, &victim, &Auth::None).await;
            expect(&mut failures, "a wrong password", a, 401, "bad_credentials");
            probes += 1;
            continue;
        }
        // No valid token: 401 with what is wrong, whatever the operation.
        for (who, auth, code) in [
            ("no token", Auth::None, "unauthorized"),
            ("a Basic header", Auth::Header("Basic dmljdGltOnB3".into()), "unauthorized"),
            ("an empty bearer", Auth::Header("Bearer ".into()), "unauthorized"),
            ("an unknown token", bearer("vdc_0000000000000000000000000000"), "unauthorized"),
            ("an expired token", expired_auth.clone(), "token_expired"),
            ("a revoked token", bearer(&revoked.secret), "token_revoked"),
        ] {
            let a = send(&url, &op, &victim, &auth).await;
            expect(&mut failures, who, a, 401, code);
            probes += 1;
        }
        // The victim's own non-admins.
        let writes = !matches!(class, OwnRead | ObjectRead | UserObjectRead | OwnerRead | OwnSession | SelfOrAdmin);
        let mut roles = vec![("the reader", &reader)];
        if class == OwnMembership {
            roles.clear();
        }
        if matches!(class, AdminOnly | OwnerOnly | OwnerRead) {
            roles.push(("a member", &member));
        }
        if class == AdminOnly {
            roles.push(("the owner", &owner_secret));
        }
        for (who, secret) in roles {
            let a = send(&url, &op, &victim, &bearer(secret)).await;
            probes += 1;
            match (class, who) {
                (AdminOnly, _) | (SelfOrAdmin, _) => expect(&mut failures, who, a, 403, "forbidden"),
                (OwnSession, _) => expect(&mut failures, who, a, 409, "not_a_session"),
                (OwnerOnly, "a member") | (OwnerRead, _) => expect(&mut failures, who, a, 403, "owner_only"),
                (UserObjectRead, _) => expect(&mut failures, who, a, 404, "not_found"),
                _ if writes => expect(&mut failures, who, a, 403, "read_only"),
                // A reader reads.
                _ => {
                    if a.status >= 300 {
                        failures.push(format!("{what} as the reader: refused {} {}", a.status, a.code));
                    }
                }
            }
        }
        // Another account's token: never the victim's object, never a change.
        let a = match class {
            OwnWrite => continue,
            _ => send(&url, &op, &victim, &bearer(&intruder_secret)).await,
        };
        probes += 1;
        match class {
            AdminOnly | SelfOrAdmin => expect(&mut failures, "another account", a, 403, "forbidden"),
            OwnSession => expect(&mut failures, "another account", a, 409, "not_a_session"),
            OwnRead => {
                if a.status >= 300 {
                    failures.push(format!("{what} as another account: refused {} {}", a.status, a.code));
                } else if let Some(id) = victim_ids.iter().find(|id| a.body.contains(id.as_str())) {
                    failures.push(format!("{what} as another account shows the victim's {id}"));
                }
            }
            // Its own account's log: it names the victim's IDs only where the intruder's own
            // refused requests named them, so only that it is answered is checked.
            OwnerRead => {
                if a.status >= 300 {
                    failures.push(format!("{what} as another account's owner: refused {} {}", a.status, a.code));
                }
            }
            _ => expect(&mut failures, "another account", a, 404, "not_found"),
        }
    }
    let probing = started.elapsed() - set_up;
    assert!(failures.is_empty(), "{} refusals are wrong:\n{}", failures.len(), failures.join("\n"));
    let after = victim_state(&s, &owner, account.as_str()).await;
    assert_eq!(before, after, "the victim's objects changed");
    eprintln!("{probes} probes of {} operations: set-up {set_up:?}, probes {probing:?}", CLASSES.len());
    assert!(probes > 500, "only {probes} probes");
    s.stop().await;
}
