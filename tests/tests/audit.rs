//! The audit log and who-am-I (issue 14), on SQLite and PostgreSQL: every state-changing
//! request is recorded once it is answered, refusals included, with who, which account,
//! what, the answer, the request ID and the source; owners read their account's entries,
//! admins everyone's, others are refused; old entries are pruned.

use std::collections::{BTreeMap, HashSet};
use vdc_cli::client::{Client, ClientError};
use vdc_schema::api::*;
use vdc_schema::state::Role;
use vdc_tests::{on_both_databases, Db, Stack, StackOptions};

on_both_databases!(
    changes_and_refusals_are_recorded,
    who_reads_the_log,
    filters_and_pages,
    retention_prunes_old_entries,
    concurrent_creates_are_each_recorded,
    a_request_whose_client_hangs_up_is_done_and_recorded,
    whoami_says_who_the_token_is,
    an_export_is_a_members_and_is_recorded,
);

/// A bundle export captures disks (with `stop`, stops and starts instances) and carries
/// every disk's bytes and the instances' user data: a reader's token exported, stopping
/// instances, and nothing was recorded (a GET). Now `read_only`, and recorded.
async fn an_export_is_a_members_and_is_recorded(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let t = team(&s, "erin").await;
    t.owner.create_keypair(&keypair("k")).await.unwrap();
    for stop in [false, true] {
        for model_only in [false, true] {
            let mut out = Vec::new();
            match t.reader.export_bundle(model_only, stop, &mut out, |_| {}).await {
                Err(vdc_cli::client::UploadError::Api(e)) => assert_eq!(err::<()>(Err(e)), (403, "read_only".into())),
                other => panic!("a reader's export: {other:?}"),
            }
            assert!(out.is_empty());
        }
    }
    let mut out = Vec::new();
    let n = t.member.export_bundle(true, false, &mut out, |_| {}).await.unwrap();
    assert!(n > 0 && out.len() as u64 == n);
    let seen: Vec<(Option<String>, u16, Option<String>)> = all(&t.owner, only("bundle.export"))
        .await
        .into_iter()
        .map(|e| (e.user_id.map(|u| u.to_string()), e.status, e.error_code))
        .collect();
    let reader = t.reader_me.user.id.to_string();
    let member = t.member.whoami().await.unwrap().user.id.to_string();
    let mut want = vec![(Some(member), 200, None)];
    want.extend((0..4).map(|_| (Some(reader.clone()), 403, Some("read_only".to_owned()))));
    assert_eq!(seen, want, "newest first");
    s.stop().await;
}

fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn keypair(name: &str) -> CreateKeyPair {
    CreateKeyPair { name: name.into(), public_key: None }
}

fn token(name: &str, user: Option<vdc_schema::id::UserId>) -> CreateToken {
    CreateToken { name: name.into(), account_id: None, expires_at: None, role: None, user_id: user }
}

/// Every entry visible to `c` matching `q`, following the cursor.
async fn all(c: &Client, mut q: AuditQuery) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page = c.list_audit(&q).await.unwrap();
        out.extend(page.items);
        match page.next_cursor {
            Some(next) => q.cursor = Some(next),
            None => return out,
        }
    }
}

fn only(action: &str) -> AuditQuery {
    AuditQuery { action: Some(action.into()), ..Default::default() }
}

/// An owner `name` of a new account, a reader and a member of it (with their tokens).
struct Team {
    owner: Client,
    owner_me: Whoami,
    reader: Client,
    reader_me: Whoami,
    member: Client,
}

async fn team(s: &Stack, name: &str) -> Team {
    let owner = s.account(name).await;
    let owner_me = owner.whoami().await.unwrap();
    let acct = owner_me.account.id.clone();
    let mut clients = Vec::new();
    for (who, role) in [("reader", Role::Reader), ("member", Role::Member)] {
        let user = s
            .admin
            .create_user(&CreateUser { name: format!("{name}-{who}"), admin: false, password: None })
            .await
            .unwrap();
        owner.add_member(&acct, &AddMember { user: user.name.clone(), role }).await.unwrap();
        // A member's first token is an admin's to make.
        let t = CreateToken { account_id: Some(acct.clone()), ..token(who, Some(user.id)) };
        let t = s.admin.create_token(&t).await.unwrap();
        clients.push(Client::new(s.url(), t.secret));
    }
    let member = clients.pop().unwrap();
    let reader = clients.pop().unwrap();
    let reader_me = reader.whoami().await.unwrap();
    Team { owner, owner_me, reader, reader_me, member }
}

async fn changes_and_refusals_are_recorded(db: Db) {
    let mut o = StackOptions::new(db);
    o.quotas = BTreeMap::from([(QuotaKey::Keypairs, 1)]);
    let s = Stack::start(o).await;
    let t = team(&s, "alice").await;
    let me = &t.owner_me;
    let acct = me.account.id.clone();

    // A create, a refused create (quota), a delete.
    let k1 = t.owner.create_keypair(&keypair("k1")).await.unwrap();
    assert_eq!(err(t.owner.create_keypair(&keypair("k2")).await), (422, "quota_exceeded".into()));
    t.owner.delete_keypair(&k1.keypair.id).await.unwrap();
    // A reader's change is refused and recorded.
    assert_eq!(err(t.reader.create_keypair(&keypair("k3")).await), (403, "read_only".into()));
    // Reads are not recorded.
    t.owner.list_keypairs(&ListQuery::default()).await.unwrap();

    let creates = all(&t.owner, only("keypair.create")).await;
    assert_eq!(creates.len(), 3, "{creates:#?}");
    // Newest first.
    let (refused_reader, refused_quota, created) = (&creates[0], &creates[1], &creates[2]);
    assert!(refused_reader.id > refused_quota.id && refused_quota.id > created.id);
    for e in [created, refused_quota] {
        assert_eq!(e.user_id.as_ref(), Some(&me.user.id));
        assert_eq!(e.token_id.as_ref(), Some(&me.token.id));
        assert_eq!(e.account_id.as_ref(), Some(&acct));
        assert_eq!(e.resource_kind, "keypair");
        assert!(e.source.starts_with("127.0.0.1:"), "{e:?}");
        assert!(e.time <= chrono::Utc::now() && e.time > chrono::Utc::now() - chrono::Duration::seconds(60));
    }
    assert_eq!((created.status, created.error_code.as_deref()), (201, None));
    assert_eq!(created.resource_id.as_deref(), Some(k1.keypair.id.as_str()));
    assert_eq!((refused_quota.status, refused_quota.error_code.as_deref()), (422, Some("quota_exceeded")));
    assert_eq!(refused_quota.resource_id, None);
    assert_eq!((refused_reader.status, refused_reader.error_code.as_deref()), (403, Some("read_only")));
    assert_eq!(refused_reader.user_id.as_ref(), Some(&t.reader_me.user.id));
    assert_eq!(refused_reader.token_id.as_ref(), Some(&t.reader_me.token.id));
    assert_eq!(refused_reader.account_id.as_ref(), Some(&acct));

    let deletes = all(&t.owner, only("keypair.delete")).await;
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    assert_eq!((deletes[0].status, deletes[0].resource_id.as_deref()), (204, Some(k1.keypair.id.as_str())));
    assert_eq!(deletes[0].token_id.as_ref(), Some(&me.token.id));
    // The account's log holds these, the members' tokens, and nothing read.
    let everything = all(&t.owner, AuditQuery::default()).await;
    assert!(everything.iter().all(|e| e.account_id.as_ref() == Some(&acct)), "{everything:#?}");
    assert!(!everything.iter().any(|e| e.action.contains("list") || e.action.contains("show")), "{everything:#?}");

    // Without a token: 401, recorded without a user; the answer names the request.
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/api/v1/keypairs", s.url())).json(&keypair("anon")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let anon = all(&s.admin, only("keypair.create")).await;
    let anon = anon.iter().find(|e| e.request_id.as_str() == rid).unwrap_or_else(|| panic!("{rid}: {anon:#?}"));
    assert_eq!((anon.status, anon.error_code.as_deref()), (401, Some("unauthorized")));
    assert_eq!((&anon.user_id, &anon.token_id, &anon.account_id), (&None, &None, &None));
    // The request ID of an answered request is its entry's.
    let r = http
        .put(format!("{}/api/v1/accounts/{acct}/quotas", s.url()))
        .bearer_auth(t.owner.token())
        .json(&serde_json::json!({"quotas": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let q = all(&t.owner, only("account.set_quotas")).await;
    assert_eq!(q.len(), 1, "{q:#?}");
    assert_eq!((q[0].request_id.as_str(), q[0].status), (rid.as_str(), 403));
    assert_eq!(q[0].resource_id.as_deref(), Some(acct.as_str()));
    // A route that does not exist is recorded too (a probe is worth knowing about), with
    // no account: no token is resolved for it, so only an admin sees it.
    let r = http.delete(format!("{}/api/v1/nothing/here", s.url())).bearer_auth(t.owner.token()).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let probes = all(&s.admin, only("unknown")).await;
    assert_eq!(probes.len(), 1, "{probes:#?}");
    assert_eq!((probes[0].status, probes[0].account_id.as_ref()), (404, None));
    // Reads carry a request ID too, and are not recorded.
    let r = http.get(format!("{}/api/v1/keypairs", s.url())).bearer_auth(t.owner.token()).send().await.unwrap();
    assert!(r.headers()["x-request-id"].to_str().unwrap().starts_with("req-"));
    s.stop().await;
}

async fn who_reads_the_log(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = team(&s, "alice").await;
    let bob = team(&s, "bob").await;
    alice.owner.create_keypair(&keypair("ka")).await.unwrap();
    bob.owner.create_keypair(&keypair("kb")).await.unwrap();
    let (a, b) = (alice.owner_me.account.id.clone(), bob.owner_me.account.id.clone());

    // An owner sees their account only, and asking for another is asking for an unknown one.
    let own = all(&alice.owner, only("keypair.create")).await;
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].account_id.as_ref(), Some(&a));
    let other = AuditQuery { account: Some(b.clone()), ..Default::default() };
    assert_eq!(err(alice.owner.list_audit(&other).await), (404, "not_found".into()));
    // Members and readers are refused.
    assert_eq!(err(alice.member.list_audit(&AuditQuery::default()).await), (403, "owner_only".into()));
    assert_eq!(err(alice.reader.list_audit(&AuditQuery::default()).await), (403, "owner_only".into()));
    // An owner's token capped to reader is a reader's.
    let capped = CreateToken { role: Some(Role::Reader), ..token("capped", None) };
    let capped = Client::new(s.url(), alice.owner.create_token(&capped).await.unwrap().secret);
    assert_eq!(err(capped.list_audit(&AuditQuery::default()).await), (403, "owner_only".into()));
    // An admin sees every account's, or one's.
    let every = all(&s.admin, only("keypair.create")).await;
    let accounts: HashSet<_> = every.iter().filter_map(|e| e.account_id.clone()).collect();
    assert_eq!(accounts, HashSet::from([a.clone(), b.clone()]));
    let bobs = all(&s.admin, AuditQuery { account: Some(b.clone()), ..only("keypair.create") }).await;
    assert_eq!(bobs.len(), 1);
    assert_eq!(bobs[0].account_id.as_ref(), Some(&b));
    s.stop().await;
}

async fn filters_and_pages(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let t = team(&s, "carol").await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(t.owner.create_keypair(&keypair(&format!("k{i}"))).await.unwrap().keypair.id);
    }
    // Stored times have milliseconds: keep `middle` clear of both sides' entries.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let middle = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let _ = t.reader.create_keypair(&keypair("nope")).await;
    t.member.create_keypair(&keypair("m1")).await.unwrap();

    // Pages of 2, newest first, each entry once.
    let mut q = AuditQuery { limit: Some(2), ..only("keypair.create") };
    let mut seen = Vec::new();
    loop {
        let page = t.owner.list_audit(&q).await.unwrap();
        assert!(page.items.len() <= 2);
        seen.extend(page.items);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:#?}");
    assert!(seen.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let oldest_five: Vec<_> = seen[2..].iter().rev().map(|e| e.resource_id.clone().unwrap()).collect();
    assert_eq!(oldest_five, made.iter().map(|m| m.to_string()).collect::<Vec<_>>());

    // By user, by time, by action.
    let reader = all(&t.owner, AuditQuery { user: Some(t.reader_me.user.id.clone()), ..Default::default() }).await;
    assert_eq!(reader.len(), 1);
    assert_eq!(reader[0].error_code.as_deref(), Some("read_only"));
    let since = all(&t.owner, AuditQuery { since: Some(middle), ..only("keypair.create") }).await;
    assert_eq!(since.len(), 2, "{since:#?}");
    let until = all(&t.owner, AuditQuery { until: Some(middle), ..only("keypair.create") }).await;
    assert_eq!(until.len(), 5);
    assert!(all(&t.owner, only("keypair.delete")).await.is_empty());
    // Bad queries say what is wrong.
    let bad =
        AuditQuery { since: Some(middle), until: Some(middle - chrono::Duration::hours(1)), ..Default::default() };
    assert_eq!(err(t.owner.list_audit(&bad).await), (400, "invalid_query".into()));
    assert_eq!(err(t.owner.list_audit(&AuditQuery { limit: Some(0), ..Default::default() }).await).1, "invalid_limit");
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/audit?since=yesterday", s.url()))
        .bearer_auth(t.owner.token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await;
}

async fn retention_prunes_old_entries(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("dave").await;
    c.create_keypair(&keypair("k")).await.unwrap();
    let ctx = &s.dcmgr().ctx;
    let recent = all(&s.admin, only("keypair.create")).await;
    assert_eq!(recent.len(), 1);
    // Entries from 91 and 89 days ago (the default keeps 90 days).
    let mut old = recent[0].clone();
    for (days, id) in [(91, "aud-0old"), (89, "aud-0kept")] {
        old.id = id.parse().unwrap();
        old.time = chrono::Utc::now() - chrono::Duration::days(days);
        vdc_dcmgr::db::audit::insert_many(&ctx.db, std::slice::from_ref(&old)).await.unwrap();
    }
    assert_eq!(all(&s.admin, only("keypair.create")).await.len(), 3);
    assert_eq!(vdc_dcmgr::app::audit::prune(ctx).await.unwrap(), 1);
    let left: Vec<String> = all(&s.admin, only("keypair.create")).await.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(left, [recent[0].id.to_string(), "aud-0kept".into()]);
    // Pruning again removes nothing more.
    assert_eq!(vdc_dcmgr::app::audit::prune(ctx).await.unwrap(), 0);
    s.stop().await;
}

async fn concurrent_creates_are_each_recorded(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("erin").await;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.create_keypair(&keypair(&format!("race-{i}"))).await.unwrap().keypair.id })
        })
        .collect();
    let mut made = HashSet::new();
    for t in tasks {
        made.insert(t.await.unwrap().to_string());
    }
    let entries = all(&c, only("keypair.create")).await;
    assert_eq!(entries.len(), 30);
    let recorded: HashSet<String> = entries.iter().map(|e| e.resource_id.clone().unwrap()).collect();
    assert_eq!(recorded, made);
    assert!(entries.iter().all(|e| e.status == 201));
    let ids: HashSet<_> = entries.iter().map(|e| e.request_id.clone()).collect();
    assert_eq!(ids.len(), 30, "one request ID each");
    s.stop().await;
}

/// Clients that send a create and hang up at once: a create that began is done and
/// recorded. Before, the client's hang-up dropped the request where it was, often after
/// its change committed and before its audit entry was written: a tenant could hide its
/// changes from the log (red team, 2026-12-07: 10 key pairs made, 7 recorded).
async fn a_request_whose_client_hangs_up_is_done_and_recorded(db: Db) {
    use tokio::io::AsyncWriteExt;
    let s = Stack::start(StackOptions::new(db)).await;
    let c = s.account("hangup").await;
    let addr = s.url().trim_start_matches("http://").to_owned();
    for i in 0..20 {
        let body = format!(r#"{{"name":"gone-{i}"}}"#);
        let req = format!(
            "POST /api/v1/keypairs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: \
             application/json\r\nContent-Length: {}\r\n\r\n{body}",
            c.token(),
            body.len()
        );
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(req.as_bytes()).await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
    }
    // Each request either never began (the server saw the hang-up first) or is done and
    // recorded: what was made is what the log says, once it settles.
    let (made, entries) = vdc_tests::eventually(std::time::Duration::from_secs(10), || async {
        let keys = c.list_all_keypairs().await.ok()?;
        let made: HashSet<String> =
            keys.iter().filter(|k| k.name.starts_with("gone-")).map(|k| k.id.to_string()).collect();
        let entries = all(&c, only("keypair.create")).await;
        let recorded: HashSet<String> = entries.iter().filter_map(|e| e.resource_id.clone()).collect();
        (!made.is_empty() && made == recorded).then_some((made, entries))
    })
    .await
    .unwrap_or_else(|_| {
        let keys = futures::executor::block_on(c.list_all_keypairs()).unwrap();
        let entries = futures::executor::block_on(all(&c, only("keypair.create")));
        panic!("{} keys made, {} recorded", keys.len(), entries.len())
    });
    assert_eq!(entries.len(), made.len());
    assert!(entries.iter().all(|e| e.status == 201));
    s.stop().await;
}

async fn whoami_says_who_the_token_is(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let t = team(&s, "frank").await;
    let admin = s.admin.whoami().await.unwrap();
    assert!(admin.admin && admin.user.admin);
    assert_eq!(admin.account.name, "admin");
    assert_eq!(admin.role, Role::Owner);

    let owner = &t.owner_me;
    assert_eq!((owner.user.name.as_str(), owner.account.name.as_str()), ("frank", "frank"));
    assert_eq!((owner.role, owner.admin, owner.token.name.as_str()), (Role::Owner, false, "initial"));
    assert_eq!(owner.accounts.len(), 1);

    // The reader is also an owner elsewhere: listed with both roles, acting as a reader.
    let other = s.account("frank-other").await;
    let other_acct = other.whoami().await.unwrap().account.id;
    other.add_member(&other_acct, &AddMember { user: "frank-reader".into(), role: Role::Owner }).await.unwrap();
    let r = t.reader.whoami().await.unwrap();
    assert_eq!((r.user.name.as_str(), r.role, r.admin), ("frank-reader", Role::Reader, false));
    assert_eq!(r.account.id, owner.account.id);
    assert_eq!(r.token.id, t.reader_me.token.id);
    let roles: Vec<(&str, Role)> = r.accounts.iter().map(|a| (a.account_name.as_str(), a.role)).collect();
    assert_eq!(roles, [("frank", Role::Reader), ("frank-other", Role::Owner)]);

    // A capped, expiring token says so.
    let until = chrono::Utc::now() + chrono::Duration::hours(1);
    let capped = CreateToken { role: Some(Role::Reader), expires_at: Some(until), ..token("capped", None) };
    let capped = Client::new(s.url(), t.owner.create_token(&capped).await.unwrap().secret);
    let c = capped.whoami().await.unwrap();
    assert_eq!((c.role, c.token.role, c.token.name.as_str()), (Role::Reader, Some(Role::Reader), "capped"));
    assert!(c.token.expires_at.is_some_and(|e| (e - until).num_seconds().abs() <= 1));
    // Reading who you are is not a change.
    assert!(all(&s.admin, only("unknown")).await.is_empty());
    s.stop().await;
}

/// The real `vdc` binary: `vdc whoami` and `vdc audit list` with its filters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vdc_audit_list_and_whoami() {
    use std::process::Command;
    use vdc_tests::procs::bin;
    vdc_tests::init_logging();
    let s = Stack::start(StackOptions::new(Db::Sqlite)).await;
    let t = team(&s, "gina").await;
    t.owner.create_keypair(&keypair("g1")).await.unwrap();
    let _ = t.reader.create_keypair(&keypair("g2")).await;
    s.account("gina-elsewhere").await.create_keypair(&keypair("g3")).await.unwrap();
    let run = |token: String, args: &[&str]| {
        let url = s.url();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(bin("vdc"))
                .env("VDC_API", url)
                .env("VDC_TOKEN", token)
                .env("VDC_CONFIG", "/nonexistent/vdc-audit-test.toml")
                .env_remove("VDC_ACCOUNT")
                .args(&args)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success(), text, String::from_utf8_lossy(&out.stderr).into_owned())
        })
    };
    let owner = t.owner.token().to_owned();
    let (ok, out, e) = run(owner.clone(), &["whoami"]).await.unwrap();
    assert!(ok, "{e}");
    assert!(out.contains("gina") && out.contains("owner"), "{out}");

    // The table: the owner's account, newest first, the refusal with its code.
    let (ok, out, e) = run(owner.clone(), &["audit", "list", "--since", "1h"]).await.unwrap();
    assert!(ok, "{e}");
    assert!(out.contains("ACTION") && out.contains("keypair.create"), "{out}");
    assert!(out.contains("read_only") && !out.contains("gina-elsewhere"), "{out}");
    let (ok, out, e) = run(owner.clone(), &["-o", "json", "audit", "list", "--user", "gina-reader"]).await.unwrap();
    assert!(ok, "{e}");
    let entries = serde_json::from_str::<Page<AuditEntry>>(&out).unwrap_or_else(|e| panic!("{e}: {out}")).items;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].error_code.as_deref(), Some("read_only"));
    let (ok, out, _) =
        run(owner.clone(), &["-o", "json", "audit", "list", "--since", "2099-01-01T00:00:00Z"]).await.unwrap();
    assert!(ok);
    assert_eq!(serde_json::from_str::<Page<AuditEntry>>(&out).unwrap().items.len(), 0);
    // An admin: every account, or one by name; one page with --limit.
    let admin = s.admin.token().to_owned();
    let (ok, out, e) =
        run(admin.clone(), &["-o", "json", "audit", "list", "--account", "gina-elsewhere"]).await.unwrap();
    assert!(ok, "{e}");
    let entries = serde_json::from_str::<Page<AuditEntry>>(&out).unwrap().items;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].action, "keypair.create");
    let (ok, out, e) = run(admin.clone(), &["-o", "json", "audit", "list", "--limit", "1"]).await.unwrap();
    assert!(ok, "{e}");
    assert_eq!(serde_json::from_str::<Page<AuditEntry>>(&out).unwrap().items.len(), 1);
    // A member is refused, with the reason.
    let (ok, _, e) = run(t.member.token().to_owned(), &["audit", "list"]).await.unwrap();
    assert!(!ok && e.contains("owner"), "{e}");
    let (ok, _, e) = run(owner, &["audit", "list", "--since", "yesterday"]).await.unwrap();
    assert!(!ok && e.contains("duration"), "{e}");
    s.stop().await;
}
