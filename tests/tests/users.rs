//! Tokens, users and roles through the Web API (issue 14), on SQLite and PostgreSQL: each
//! refusal (expired, revoked, a reader's write, a member managing others, another
//! account's token) with its status and code, the happy paths, and races on one token.

use clap::Parser;
use std::time::Duration;
use vdc_cli::client::{Client, ClientError};
use vdc_cli::commands::{self, Cli};
use vdc_cli::error::CliError;
use vdc_schema::api::*;
use vdc_schema::state::Role;
use vdc_tests::{on_both_databases, Db, Stack, StackOptions};

on_both_databases!(
    tokens_are_named_expire_and_are_revoked,
    roles_decide_what_a_token_may_do,
    token_races,
    token_cap,
    the_cli_manages_users_members_and_tokens,
    an_admin_acts_in_another_account,
    an_admin_finds_instances_in_every_account,
    a_token_changes_nothing_beyond_its_limits,
);

fn err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Api { status, code, .. }) => (status, code),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

fn token(name: &str) -> CreateToken {
    CreateToken { name: name.into(), account_id: None, expires_at: None, role: None, user_id: None }
}

fn keypair(name: &str) -> CreateKeyPair {
    CreateKeyPair { name: name.into(), public_key: None }
}

async fn tokens_are_named_expire_and_are_revoked(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    let ci = alice.create_token(&token("ci")).await.unwrap();
    assert!(ci.secret.starts_with("vdc_"));
    let ci_client = Client::new(s.url(), ci.secret.clone());
    ci_client.create_keypair(&keypair("k1")).await.unwrap();

    // Listed by name, never with their secret.
    let listed = alice.list_all_tokens().await.unwrap();
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["initial", "ci"]);
    let raw = reqwest::Client::new()
        .get(format!("{}/api/v1/tokens", s.url()))
        .bearer_auth(&ci.secret)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(raw.contains("\"ci\"") && !raw.contains(&ci.secret) && !raw.contains("vdc_"), "{raw}");

    // Names are unique among the user's live tokens; bad names and past expiries are refused.
    assert_eq!(err(alice.create_token(&token("ci")).await), (409, "name_taken".into()));
    assert_eq!(err(alice.create_token(&token("bad name")).await), (400, "invalid_name".into()));
    let past = CreateToken { expires_at: Some(chrono::Utc::now() - chrono::Duration::seconds(5)), ..token("old") };
    assert_eq!(err(alice.create_token(&past).await), (400, "invalid_expiry".into()));
    // Year 10000 was stored as 1970: a token dead when made.
    let far = "+10000-01-01T00:00:00Z".parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    let far = CreateToken { expires_at: Some(far), ..token("far") };
    assert_eq!(err(alice.create_token(&far).await), (400, "invalid_expiry".into()));

    // An expiring token works until it expires, then answers 401 token_expired (it was
    // cached by then: the cache checks the expiry too).
    let soon =
        CreateToken { expires_at: Some(chrono::Utc::now() + chrono::Duration::milliseconds(1500)), ..token("soon") };
    let soon = alice.create_token(&soon).await.unwrap();
    assert!(soon.token.expires_at.is_some());
    let soon_client = Client::new(s.url(), soon.secret);
    soon_client.list_keypairs(&ListQuery::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_eq!(err(soon_client.list_keypairs(&ListQuery::default()).await), (401, "token_expired".into()));

    // Revoked one by one: the others keep working; a second revoke is a conflict.
    alice.revoke_token(&ci.token.id).await.unwrap();
    assert_eq!(err(ci_client.list_keypairs(&ListQuery::default()).await), (401, "token_revoked".into()));
    assert_eq!(err(alice.revoke_token(&ci.token.id).await), (409, "token_revoked".into()));
    alice.list_keypairs(&ListQuery::default()).await.unwrap();
    assert!(!alice.list_all_tokens().await.unwrap().iter().any(|t| t.name == "ci"));
    // The name is free again.
    let ci2 = alice.create_token(&token("ci")).await.unwrap();
    assert_ne!(ci2.token.id, ci.token.id);

    assert_eq!(alice.get_token(&ci2.token.id).await.unwrap().name, "ci");
    assert_eq!(err(alice.get_token(&ci.token.id).await).0, 404, "a revoked token is shown no more");

    // Another account's token: its tokens are unknown here (404), its secret is no key.
    let bob = s.account("bob").await;
    assert_eq!(err(bob.revoke_token(&ci2.token.id).await), (404, "not_found".into()));
    assert_eq!(err(bob.get_token(&ci2.token.id).await), (404, "not_found".into()));
    assert!(bob.list_all_tokens().await.unwrap().iter().all(|t| t.account_id != ci2.token.account_id));
    let alice_acct = ci2.token.account_id.clone();
    assert_eq!(err(bob.list_members(&alice_acct).await), (404, "not_found".into()));
    let into_alice = CreateToken { account_id: Some(alice_acct.clone()), ..token("sneak") };
    assert_eq!(err(bob.create_token(&into_alice).await), (404, "not_found".into()));

    // A token capped to reader reads, and changes nothing (403 read_only), not even tokens.
    let ro = alice.create_token(&CreateToken { role: Some(Role::Reader), ..token("dashboard") }).await.unwrap();
    assert_eq!(ro.token.role, Some(Role::Reader));
    let ro = Client::new(s.url(), ro.secret);
    assert_eq!(ro.list_all_keypairs().await.unwrap().len(), 1);
    assert_eq!(err(ro.create_keypair(&keypair("k2")).await), (403, "read_only".into()));
    assert_eq!(err(ro.create_token(&token("more")).await), (403, "read_only".into()));
    assert_eq!(err(ro.revoke_token(&ci2.token.id).await), (403, "read_only".into()));

    // The old per-account call still makes a working token.
    let acct = s.admin.list_all_accounts().await.unwrap().into_iter().find(|a| a.name == "alice").unwrap();
    let legacy = s.admin.create_account_token(&acct.id).await.unwrap();
    Client::new(s.url(), legacy.token).list_keypairs(&ListQuery::default()).await.unwrap();

    // A malformed or unknown token is plain unauthorized.
    assert_eq!(
        err(Client::new(s.url(), "vdc_nope").list_keypairs(&ListQuery::default()).await),
        (401, "unauthorized".into())
    );

    // Not while it holds something (its key pair): nothing of it is left behind.
    let held = s.admin.delete_account(&acct.id).await.unwrap_err().to_string();
    assert!(held.contains("still holds 1 key pair:"), "{held}");
    let k1 = alice.list_all_keypairs().await.unwrap().into_iter().find(|k| k.name == "k1").unwrap();
    alice.delete_keypair(&k1.id).await.unwrap();
    // Deleting the account takes its tokens and its owner (a role nowhere else) with it:
    // the name is free for a new account and owner.
    s.admin.delete_account(&acct.id).await.unwrap();
    assert_eq!(err(alice.list_keypairs(&ListQuery::default()).await), (401, "unauthorized".into()));
    let again = s.account("alice").await;
    assert_eq!(again.list_all_tokens().await.unwrap().len(), 1);
    s.stop().await;
}

async fn roles_decide_what_a_token_may_do(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await; // owner of account alice
    let acct = alice.list_all_tokens().await.unwrap()[0].account_id.clone();
    let alice_user = alice.list_all_tokens().await.unwrap()[0].user_id.clone();

    // Users are an admin's; a tenant is refused.
    let rita = s.admin.create_user(&CreateUser { name: "rita".into(), admin: false, password: None }).await.unwrap();
    let max = s.admin.create_user(&CreateUser { name: "max".into(), admin: false, password: None }).await.unwrap();
    assert_eq!(
        err(s.admin.create_user(&CreateUser { name: "rita".into(), admin: false, password: None }).await),
        (409, "name_taken".into())
    );
    assert_eq!(
        err(alice.create_user(&CreateUser { name: "eve".into(), admin: false, password: None }).await),
        (403, "forbidden".into())
    );
    assert_eq!(err(alice.list_users(&ListQuery::default()).await).0, 403);
    assert_eq!(s.admin.get_user(&max.id).await.unwrap().name, "max");

    // The owner gives roles; an admin mints each member a first token.
    let m = alice.add_member(&acct, &AddMember { user: "rita".into(), role: Role::Reader }).await.unwrap();
    assert_eq!((m.user_id.clone(), m.role), (rita.id.clone(), Role::Reader));
    alice.add_member(&acct, &AddMember { user: "max".into(), role: Role::Member }).await.unwrap();
    assert_eq!(err(alice.add_member(&acct, &AddMember { user: "nobody".into(), role: Role::Member }).await).0, 404);
    let first = |u: &vdc_schema::id::UserId, name: &str| CreateToken {
        user_id: Some(u.clone()),
        account_id: Some(acct.clone()),
        ..token(name)
    };
    // An owner makes no other user's credential: it could add any user (the cloud's
    // admin, another tenant's owner) to its account and act as them.
    assert_eq!(err(alice.create_token(&first(&rita.id, "laptop")).await), (403, "forbidden".into()));
    let admin_user = s.admin.list_users(&ListQuery::default()).await.unwrap().items;
    let admin_user = admin_user.iter().find(|u| u.admin).unwrap();
    // Nor does it add a cloud operator (its sessions carry the cloud's power); an admin may.
    let operator = AddMember { user: admin_user.name.clone(), role: Role::Reader };
    assert_eq!(err(alice.add_member(&acct, &operator).await), (403, "forbidden".into()));
    s.admin.add_member(&acct, &operator).await.unwrap();
    assert_eq!(err(alice.create_token(&first(&admin_user.id, "stolen")).await), (403, "forbidden".into()));
    alice.remove_member(&acct, &admin_user.id).await.unwrap();
    // Names that look like an account's or a user's ID are no one's.
    for name in ["a-1m97bzjkf01nztv", "u-1m97bz27y013s6g"] {
        let req = CreateUser { name: name.into(), admin: false, password: None };
        assert_eq!(err(s.admin.create_user(&req).await), (400, "invalid_name".into()), "{name}");
    }
    s.admin.create_user(&CreateUser { name: "u-boot".into(), admin: false, password: None }).await.unwrap();
    let rita_c = Client::new(s.url(), s.admin.create_token(&first(&rita.id, "laptop")).await.unwrap().secret);
    let max_t = s.admin.create_token(&first(&max.id, "laptop")).await.unwrap();
    let max_c = Client::new(s.url(), max_t.secret);
    let roles: Vec<(String, Role)> =
        alice.list_members(&acct).await.unwrap().into_iter().map(|m| (m.user_name, m.role)).collect();
    assert_eq!(roles, [("alice".into(), Role::Owner), ("max".into(), Role::Member), ("rita".into(), Role::Reader)]);

    // A reader reads everything in the account and changes nothing.
    let kp = max_c.create_keypair(&keypair("shared")).await.unwrap();
    assert_eq!(rita_c.get_keypair(&kp.keypair.id).await.unwrap().name, "shared");
    assert_eq!(rita_c.list_members(&acct).await.unwrap().len(), 3);
    for (status, code) in [
        err(rita_c.create_keypair(&keypair("mine")).await),
        err(rita_c.delete_keypair(&kp.keypair.id).await),
        err(rita_c
            .create_network(&CreateNetwork {
                name: "n".into(),
                cidr: "10.9.0.0/24".into(),
                gateway: None,
                dhcp_start: None,
                dhcp_end: None,
            })
            .await),
        err(rita_c.create_token(&token("more")).await),
        err(rita_c.add_member(&acct, &AddMember { user: "rita".into(), role: Role::Owner }).await),
    ] {
        assert_eq!((status, code.as_str()), (403, "read_only"));
    }
    assert_eq!(s.admin.list_all_keypairs().await.unwrap().len(), 0, "the admin's account has none");

    // A member works in the account but manages neither members nor others' tokens.
    max_c.delete_keypair(&kp.keypair.id).await.unwrap();
    let mine = max_c.create_token(&token("ci")).await.unwrap();
    let owner_t = CreateToken { role: Some(Role::Owner), ..token("boss") };
    assert_eq!(err(max_c.create_token(&owner_t).await), (400, "invalid_role".into()));
    let seen: Vec<String> = max_c.list_all_tokens().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(seen, ["laptop", "ci"], "a member lists its own tokens only");
    assert_eq!(alice.list_all_tokens().await.unwrap().len(), 4, "an owner lists everyone's");
    let alice_initial = alice.list_all_tokens().await.unwrap().into_iter().find(|t| t.user_id == alice_user).unwrap();
    assert_eq!(err(max_c.revoke_token(&alice_initial.id).await), (403, "owner_only".into()));
    assert_eq!(err(max_c.get_token(&alice_initial.id).await).0, 404, "a member sees its own tokens only");
    assert_eq!(err(max_c.create_token(&first(&rita.id, "x")).await), (403, "forbidden".into()));
    assert_eq!(
        err(max_c.add_member(&acct, &AddMember { user: "max".into(), role: Role::Owner }).await),
        (403, "owner_only".into())
    );
    assert_eq!(err(max_c.remove_member(&acct, &rita.id).await), (403, "owner_only".into()));
    max_c.revoke_token(&mine.token.id).await.unwrap();
    // A member's token is never stronger than the member: asked for more, it is refused
    // (it was quietly made weaker).
    let up = max_c.create_token(&CreateToken { role: Some(Role::Owner), ..token("up") }).await.unwrap_err();
    assert!(up.to_string().contains("role owner cannot be made here: the most it can be is member"), "{up}");

    // The owner changes roles; a role change applies to tokens already in use.
    alice.add_member(&acct, &AddMember { user: "rita".into(), role: Role::Member }).await.unwrap();
    rita_c.create_keypair(&keypair("now-i-can")).await.unwrap();
    // An account keeps an owner.
    assert_eq!(err(alice.remove_member(&acct, &alice_user).await), (409, "last_owner".into()));
    assert_eq!(
        err(alice.add_member(&acct, &AddMember { user: "alice".into(), role: Role::Member }).await),
        (409, "last_owner".into())
    );
    assert_eq!(err(s.admin.delete_user(&alice_user).await), (409, "last_owner".into()));
    // Removing a member revokes its tokens there.
    alice.remove_member(&acct, &max.id).await.unwrap();
    assert_eq!(err(max_c.list_keypairs(&ListQuery::default()).await), (401, "token_revoked".into()));
    assert_eq!(err(alice.remove_member(&acct, &max.id).await), (404, "not_found".into()));
    // Deleting a user makes its tokens unknown.
    s.admin.delete_user(&rita.id).await.unwrap();
    assert_eq!(err(rita_c.list_keypairs(&ListQuery::default()).await), (401, "unauthorized".into()));
    assert_eq!(err(s.admin.get_user(&rita.id).await).0, 404);
    s.stop().await;
}

/// 30 concurrent creates of one token name: exactly one wins, the others see its name
/// taken; 30 concurrent revokes of that token: exactly one revokes it.
async fn token_races(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    let creates = (0..30).map(|_| {
        let c = alice.clone();
        async move { c.create_token(&token("race")).await }
    });
    let results = futures::future::join_all(creates).await;
    let won: Vec<&TokenCreated> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "exactly one create wins");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, ClientError::Api { status: 409, code, .. } if code == "name_taken"), "{e}");
        }
    }
    let id = won[0].token.id.clone();
    let racer = Client::new(s.url(), won[0].secret.clone());
    racer.list_keypairs(&ListQuery::default()).await.unwrap();
    let revokes = (0..30).map(|_| {
        let c = alice.clone();
        let id = id.clone();
        async move { c.revoke_token(&id).await }
    });
    let results = futures::future::join_all(revokes).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "exactly one revoke wins");
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, ClientError::Api { status: 409, code, .. } if code == "token_revoked"), "{e}");
        }
    }
    assert_eq!(err(racer.list_keypairs(&ListQuery::default()).await), (401, "token_revoked".into()));
    assert_eq!(alice.list_all_tokens().await.unwrap().len(), 1);
    s.stop().await;
}

/// `[auth] max_tokens_per_user`: concurrent creates past the cap get exactly the cap.
async fn token_cap(db: Db) {
    let mut opts = StackOptions::new(db);
    opts.auth.max_tokens_per_user = 5;
    let s = Stack::start(opts).await;
    let alice = s.account("alice").await; // holds "initial"
    let creates = (0..10).map(|i| {
        let c = alice.clone();
        async move { c.create_token(&token(&format!("t{i}"))).await }
    });
    let results = futures::future::join_all(creates).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    for r in &results {
        if let Err(e) = r {
            assert!(matches!(e, ClientError::Api { status: 422, code, .. } if code == "too_many_tokens"), "{e}");
        }
    }
    // A revoked token frees its place.
    let t = alice.list_all_tokens().await.unwrap().pop().unwrap();
    alice.revoke_token(&t.id).await.unwrap();
    alice.create_token(&token("again")).await.unwrap();
    assert_eq!(err(alice.create_token(&token("over")).await), (422, "too_many_tokens".into()));
    s.stop().await;
}

/// Runs `vdc ARGS…` in-process as the holder of `c`'s token (global flags such as
/// `--account` taken from ARGS).
async fn vdc(c: &Client, args: &[&str]) -> Result<(), CliError> {
    let cli = Cli::try_parse_from(std::iter::once("vdc").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("vdc {}: {e}", args.join(" ")));
    let mut global = cli.global.clone();
    global.api = Some(c.base_url().to_string());
    global.token = Some(c.token().to_string());
    global.output = vdc_cli::output::OutputArg::Format(vdc_cli::output::OutputFormat::Json);
    commands::run(&global, cli.command).await
}

async fn ok(c: &Client, args: &[&str]) {
    if let Err(e) = vdc(c, args).await {
        panic!("vdc {}: {}", args.join(" "), e.report());
    }
}

async fn the_cli_manages_users_members_and_tokens(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await;
    let acct = alice.list_all_tokens().await.unwrap()[0].account_id.clone();
    ok(&s.admin, &["user", "create", "rita"]).await;
    ok(&s.admin, &["user", "show", "rita"]).await;
    ok(&s.admin, &["user", "list"]).await;
    assert!(vdc(&alice, &["user", "list"]).await.is_err(), "users are an admin's");

    ok(&alice, &["account", "member", "add", "rita", "--role", "reader"]).await;
    ok(&alice, &["account", "member", "list"]).await;
    // Its own usage, by name or ID, as with none named; another's is an admin's.
    ok(&alice, &["account", "usage", "alice"]).await;
    ok(&alice, &["account", "usage", acct.as_str()]).await;
    assert!(vdc(&alice, &["account", "usage", "admin"]).await.is_err());
    ok(&s.admin, &["--account", acct.as_str(), "account", "member", "list"]).await;
    assert!(vdc(&alice, &["--account", "a-0000000000000", "account", "member", "list"]).await.is_err());
    let members = alice.list_members(&acct).await.unwrap();
    assert!(members.iter().any(|m| m.user_name == "rita" && m.role == Role::Reader), "{members:?}");

    assert!(vdc(&alice, &["token", "create", "laptop", "--user", "rita"]).await.is_err(), "an admin's");
    ok(&s.admin, &["--account", acct.as_str(), "token", "create", "laptop", "--user", "rita"]).await;
    ok(&alice, &["token", "create", "ci", "--expires", "30d", "--role", "reader"]).await;
    let tokens = alice.list_all_tokens().await.unwrap();
    let rita = members.iter().find(|m| m.user_name == "rita").unwrap();
    assert!(tokens.iter().any(|t| t.name == "laptop" && t.user_id == rita.user_id));
    let ci = tokens.iter().find(|t| t.name == "ci").unwrap();
    assert_eq!(ci.role, Some(Role::Reader));
    let left = ci.expires_at.unwrap() - chrono::Utc::now();
    assert!(left > chrono::Duration::days(29) && left <= chrono::Duration::days(30), "{left}");
    assert!(Cli::try_parse_from(["vdc", "token", "create", "x", "--expires", "soon"]).is_err());
    ok(&alice, &["token", "list"]).await;
    // By ID as well as by name.
    let laptop = tokens.iter().find(|t| t.name == "laptop").unwrap();
    ok(&alice, &["token", "revoke", laptop.id.as_str()]).await;
    assert_eq!(err(alice.get_token(&laptop.id).await).0, 404);
    ok(&alice, &["token", "revoke", "ci"]).await;
    assert!(!alice.list_all_tokens().await.unwrap().iter().any(|t| t.name == "ci"));
    assert!(vdc(&alice, &["token", "revoke", "ci"]).await.is_err(), "a revoked token is listed no more");

    ok(&alice, &["account", "member", "remove", "rita"]).await;
    assert_eq!(alice.list_members(&acct).await.unwrap().len(), 1);
    // A user added to an account (an owner need not ask) can leave it, with its tokens
    // there; the last owner cannot.
    ok(&alice, &["account", "member", "add", "rita", "--role", "reader"]).await;
    let req = CreateToken { user_id: Some(rita.user_id.clone()), account_id: Some(acct.clone()), ..token("mine") };
    let secret = s.admin.create_token(&req).await.unwrap().secret;
    let as_rita = Client::new(s.url(), secret);
    ok(&as_rita, &["account", "leave"]).await;
    assert_eq!(err(as_rita.whoami().await).0, 401, "its token there is revoked");
    assert_eq!(alice.list_members(&acct).await.unwrap().len(), 1);
    let e = vdc(&alice, &["account", "leave"]).await.unwrap_err().report();
    assert!(e.contains("only owner"), "{e}");
    ok(&s.admin, &["user", "delete", "rita"]).await;
    let q = ListQuery { name: Some("rita".into()), ..Default::default() };
    assert!(s.admin.list_users(&q).await.unwrap().items.is_empty());
    s.stop().await;
}

/// An operator acts in a tenant's account (`X-Vdc-Account`, `vdc --account NAME`) as
/// OpenStack's admin does in a project: by name or ID, as an owner there, named in that
/// account's audit log. Only an admin's uncapped token may: a tenant's token naming
/// another account, known or not, is refused alike, and so is a capped admin token.
async fn an_admin_acts_in_another_account(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let (alice, bob) = (s.account("alice").await, s.account("bob").await);
    let alice_acct = alice.whoami().await.unwrap().account.id;
    let as_alice = s.admin.clone().acting_in("alice");
    let me = as_alice.whoami().await.unwrap();
    assert_eq!((me.account.name.as_str(), me.role, me.admin), ("alice", Role::Owner, true));
    let kp = as_alice.create_keypair(&keypair("ops")).await.unwrap().keypair;
    assert_eq!(alice.get_keypair(&kp.id).await.unwrap().name, "ops", "made in alice's account");
    assert_eq!(err(s.admin.get_keypair(&kp.id).await).0, 404, "not in the admin's own");
    let by_id = s.admin.clone().acting_in(alice_acct.as_str());
    by_id.delete_keypair(&kp.id).await.unwrap();
    assert_eq!(err(alice.get_keypair(&kp.id).await).0, 404);
    // The account's owner sees who it was.
    let audit = alice.list_audit(&Default::default()).await.unwrap().items;
    let admin_user = s.admin.whoami().await.unwrap().user.id;
    assert!(audit.iter().any(|e| e.action.contains("keypair") && e.user_id.as_ref() == Some(&admin_user)), "{audit:?}");
    assert_eq!(
        err(s.admin.clone().acting_in("nobody").list_keypairs(&Default::default()).await),
        (404, "not_found".into())
    );

    // Others cannot, whatever they name.
    for name in ["alice", alice_acct.as_str(), "nobody"] {
        assert_eq!(
            err(bob.clone().acting_in(name).list_keypairs(&Default::default()).await),
            (403, "forbidden".into())
        );
    }
    bob.clone().acting_in("bob").list_keypairs(&Default::default()).await.expect("its own account, named");
    let capped = s.admin.create_token(&CreateToken { role: Some(Role::Reader), ..token("dash") }).await.unwrap();
    let capped = Client::new(s.url(), capped.secret).acting_in("alice");
    assert_eq!(err(capped.list_keypairs(&Default::default()).await), (403, "forbidden".into()));
    assert!(alice.list_all_keypairs().await.unwrap().is_empty());

    // The CLI: `--account NAME` with an admin's token acts there; a tenant's is told how.
    ok(&s.admin, &["--account", "alice", "keypair", "create", "deploy"]).await;
    assert_eq!(alice.list_all_keypairs().await.unwrap().len(), 1);
    let e = vdc(&bob, &["--account", "alice", "keypair", "list"]).await.unwrap_err().report();
    assert!(e.contains("the token acts in account bob"), "{e}");
    // `whoami` answers for the account named, not silently for the token's own.
    ok(&s.admin, &["--account", "alice", "whoami"]).await;
    let e = vdc(&bob, &["--account", "alice", "whoami"]).await.unwrap_err().report();
    assert!(e.contains("the token acts in account bob"), "{e}");
    s.stop().await;
}

/// An operator's "whose is this address?" and "what is failing anywhere?" (OpenStack's
/// `server list --all-projects`): an admin lists every account's instances, each naming
/// its account, filtered by state, name or address; a tenant filters its own by address
/// and may not look further.
async fn an_admin_finds_instances_in_every_account(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.external = Some(vdc_tests::test_external("203.0.113.13"));
    let s = Stack::start(o).await;
    let (alice, bob) = (s.account("alice").await, s.account("bob").await);
    let (alice_acct, bob_acct) = (alice.whoami().await.unwrap().account.id, bob.whoami().await.unwrap().account.id);
    let a = s.running_instance(&alice, "web").await;
    let b = s.running_instance(&bob, "web").await;
    // Each account's network is its own: the same private address in both.
    let ip = a.interfaces[0].ip;
    assert_eq!(b.interfaces[0].ip, ip);
    assert_eq!(a.account_id, alice_acct);
    let fip = bob.create_floating_ip(&CreateFloatingIp::default()).await.unwrap();
    let assoc = AssociateFloatingIp { instance_id: b.id.clone(), interface_id: None };
    bob.associate_floating_ip(&fip.id, &assoc).await.unwrap();
    let q = |address: Option<String>, all: bool| ListQuery {
        address,
        all_accounts: all.then_some(true),
        ..Default::default()
    };
    let ids = |v: Vec<Instance>| v.into_iter().map(|i| (i.id, i.account_id)).collect::<Vec<_>>();

    // A tenant: its own, by either address; nobody else's.
    let own = ids(alice.list_all("/instances", &q(Some(ip.to_string()), false)).await.unwrap());
    assert_eq!(own, [(a.id.clone(), alice_acct.clone())]);
    assert!(alice.list_all::<Instance>("/instances", &q(Some(fip.ip.to_string()), false)).await.unwrap().is_empty());
    let by_fip = ids(bob.list_all("/instances", &q(Some(fip.ip.to_string()), false)).await.unwrap());
    assert_eq!(by_fip, [(b.id.clone(), bob_acct.clone())]);
    assert!(bob.list_all::<Instance>("/instances", &q(Some("10.9.0.200".into()), false)).await.unwrap().is_empty());
    assert_eq!(err(alice.list::<Instance>("/instances", &q(None, true)).await), (403, "forbidden".into()));
    let capped = s.admin.create_token(&CreateToken { role: Some(Role::Reader), ..token("dash") }).await.unwrap();
    let capped = Client::new(s.url(), capped.secret);
    assert_eq!(err(capped.list::<Instance>("/instances", &q(None, true)).await), (403, "forbidden".into()));
    assert_eq!(
        err(alice.list::<Instance>("/instances", &q(Some("10.9.0".into()), false)).await),
        (400, "invalid_address".into())
    );
    // Other lists have no such filters.
    assert_eq!(
        err(alice.list::<Volume>("/volumes", &q(Some(ip.to_string()), false)).await),
        (400, "invalid_query".into())
    );
    assert_eq!(err(s.admin.list::<Volume>("/volumes", &q(None, true)).await), (400, "invalid_query".into()));

    // The admin: both accounts, by page, each naming its account; by address across them.
    let all = ids(s.admin.list_all("/instances", &ListQuery { limit: Some(1), ..q(None, true) }).await.unwrap());
    assert!(
        all.contains(&(a.id.clone(), alice_acct.clone())) && all.contains(&(b.id.clone(), bob_acct.clone())),
        "{all:?}"
    );
    assert_eq!(all.len(), 2, "the admin's own account has none: {all:?}");
    let mut both = ids(s.admin.list_all("/instances", &q(Some(ip.to_string()), true)).await.unwrap());
    both.sort();
    let mut want = vec![(a.id.clone(), alice_acct.clone()), (b.id.clone(), bob_acct.clone())];
    want.sort();
    assert_eq!(both, want);
    let whose = ids(s.admin.list_all("/instances", &q(Some(fip.ip.to_string()), true)).await.unwrap());
    assert_eq!(whose, [(b.id.clone(), bob_acct.clone())]);
    let named = ListQuery { name: Some("web".into()), state: Some("running".into()), ..q(None, true) };
    assert_eq!(s.admin.list_all::<Instance>("/instances", &named).await.unwrap().len(), 2);
    // Without all_accounts the admin's own (empty) account, as before.
    assert!(s.admin.list_all::<Instance>("/instances", &q(Some(ip.to_string()), false)).await.unwrap().is_empty());
    // A terminated one stays in the list for an hour, as in an account's own.
    bob.terminate_instance(&b.id).await.unwrap();
    vdc_tests::wait_state(&bob, &b.id, vdc_schema::InstanceState::Terminated).await;
    let listed = s.admin.list_all::<Instance>("/instances", &q(None, true)).await.unwrap();
    assert_eq!(listed.len(), 2);

    // The CLI's table names the account; a tenant is told it may not.
    let cli = |c: &Client, args: &[&str]| {
        let mut argv: Vec<String> = ["--api", &s.url(), "--token", c.token()].iter().map(|a| a.to_string()).collect();
        argv.extend(args.iter().map(|a| a.to_string()));
        std::process::Command::new(vdc_tests::procs::bin("vdc"))
            .env_remove("VDC_CONFIG")
            .env_remove("VDC_API")
            .env_remove("VDC_TOKEN")
            .env("HOME", "/nonexistent")
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = cli(&s.admin, &["instance", "list", "--all-accounts"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        table.contains(&format!("alice ({alice_acct})")) && table.contains(&format!("bob ({bob_acct})")),
        "{table}"
    );
    // A terminated instance's address is free again: only alice's holds it now.
    let out = cli(&s.admin, &["instance", "list", "--all-accounts", "--address", &ip.to_string()]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(alice_acct.as_str()) && !table.contains(bob_acct.as_str()), "{table}");
    let out = cli(&alice, &["instance", "list", "--all-accounts"]);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && msg.contains("only an admin"), "{msg}");
    s.stop().await;
}

/// A token's limits hold for what it makes and for its user's standing: a token capped
/// to reader does not take its user out of the account, a token made to expire makes none
/// that outlives it, and a user's role in another account decides what it makes there;
/// every user revokes its own tokens (red team, 2026-12-07).
async fn a_token_changes_nothing_beyond_its_limits(db: Db) {
    let s = Stack::start(StackOptions::new(db)).await;
    let alice = s.account("alice").await; // owner of account alice
    let bob = s.account("bob").await;
    let acct = alice.list_all_tokens().await.unwrap()[0].account_id.clone();
    let bacct = bob.list_all_tokens().await.unwrap()[0].account_id.clone();
    let alice_user = alice.list_all_tokens().await.unwrap()[0].user_id.clone();

    // An owner's dashboard token, capped to reader: it neither leaves nor revokes.
    let dash = alice.create_token(&CreateToken { role: Some(Role::Reader), ..token("dash") }).await.unwrap();
    let dash_c = Client::new(s.url(), dash.secret);
    assert_eq!(err(dash_c.leave_account(&acct).await), (403, "read_only".into()));
    let first = alice.list_all_tokens().await.unwrap().into_iter().find(|t| t.name == "initial").unwrap();
    assert_eq!(err(dash_c.revoke_token(&first.id).await), (403, "read_only".into()));
    let members = alice.list_members(&acct).await.unwrap();
    assert!(members.iter().any(|m| m.user_id == alice_user && m.role == Role::Owner), "{members:?}");

    // A reader user revokes its own tokens, and may leave.
    let rita = s.admin.create_user(&CreateUser { name: "rita".into(), admin: false, password: None }).await.unwrap();
    alice.add_member(&acct, &AddMember { user: "rita".into(), role: Role::Reader }).await.unwrap();
    bob.add_member(&bacct, &AddMember { user: "rita".into(), role: Role::Reader }).await.unwrap();
    let mint = |name: &str, account: &vdc_schema::id::AccountId| CreateToken {
        user_id: Some(rita.id.clone()),
        account_id: Some(account.clone()),
        ..token(name)
    };
    let rita_c = Client::new(s.url(), s.admin.create_token(&mint("laptop", &acct)).await.unwrap().secret);
    let spare = s.admin.create_token(&mint("spare", &acct)).await.unwrap();
    rita_c.revoke_token(&spare.token.id).await.unwrap();
    // A reader in bob's account makes no token there, from her account either.
    let there = CreateToken { account_id: Some(bacct.clone()), ..token("there") };
    assert_eq!(err(rita_c.create_token(&there).await), (403, "read_only".into()));
    rita_c.leave_account(&acct).await.unwrap();

    // A token made in another account of its user is audited there, where its owners
    // look.
    bob.add_member(&bacct, &AddMember { user: "alice".into(), role: Role::Member }).await.unwrap();
    let in_b = alice.create_token(&CreateToken { account_id: Some(bacct.clone()), ..token("in-b") }).await.unwrap();
    let q = AuditQuery { action: Some("token.create".into()), ..Default::default() };
    let seen = bob.list_audit(&q).await.unwrap().items;
    assert!(seen.iter().any(|e| e.resource_id.as_deref() == Some(in_b.token.id.as_str())), "{seen:?}");
    // A token made to expire makes only tokens that expire no later.
    let end = chrono::Utc::now() + chrono::Duration::hours(1);
    let short = alice.create_token(&CreateToken { expires_at: Some(end), ..token("short") }).await.unwrap();
    let short_c = Client::new(s.url(), short.secret);
    assert_eq!(err(short_c.create_token(&token("forever")).await), (400, "invalid_expiry".into()));
    let later = CreateToken { expires_at: Some(end + chrono::Duration::hours(1)), ..token("later") };
    assert_eq!(err(short_c.create_token(&later).await), (400, "invalid_expiry".into()));
    let sooner = CreateToken { expires_at: Some(end - chrono::Duration::minutes(1)), ..token("sooner") };
    short_c.create_token(&sooner).await.unwrap();
    s.stop().await;
}
