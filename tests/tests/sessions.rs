//! Passwords and console sessions (issue 14): signing in (one 401 `bad_credentials` for an
//! unknown user, a user without a password and a wrong password), switching accounts,
//! signing out, setting passwords, the sign-in rate limit (per user name and per source
//! address, exactly the burst let through), sessions expiring and trimmed, and the audit
//! entries of sign-ins and of refused tokens. On SQLite and PostgreSQL.

use serde_json::{json, Value};
use std::time::Duration;
use vdc_cli::client::Client;
use vdc_schema::api::*;
use vdc_schema::state::Role;
use vdc_tests::{eventually, on_both_databases, Db, Stack, StackOptions};

on_both_databases!(sign_in_switch_and_sign_out, sign_ins_are_rate_limited, sessions_expire_and_are_trimmed);

const PASSWORD: &str = "correct-horse-battery";

struct Answer {
    status: u16,
    code: String,
    retry_after: Option<u64>,
    body: Value,
}

async fn call(url: &str, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
    call_from(reqwest::Client::new(), url, method, path, token, body).await
}

async fn call_from(
    http: reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = http.request(method, format!("{url}/api/v1{path}")).timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or_default().to_owned();
    Answer { status, code, retry_after, body }
}

async fn sign_in(url: &str, user: &str, password: &str, account: Option<&str>) -> Answer {
    let mut body = json!({"user": user, "password": password});
    if let Some(a) = account {
        body["account"] = json!(a);
    }
    call(url, reqwest::Method::POST, "/sessions", None, Some(body)).await
}

fn session(a: &Answer) -> Session {
    assert_eq!(a.status, 201, "sign-in: {}", a.body);
    serde_json::from_value(a.body.clone()).unwrap()
}

async fn user_with_password(s: &Stack, name: &str) -> User {
    s.admin.create_user(&CreateUser { name: name.into(), admin: false, password: Some(PASSWORD.into()) }).await.unwrap()
}

async fn account_id(c: &Client) -> vdc_schema::id::AccountId {
    c.whoami().await.unwrap().account.id
}

async fn sign_in_switch_and_sign_out(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    // This test signs in often from one address; the limit has its own test.
    o.auth.signin_burst = 1000;
    let s = Stack::start(o).await;
    let url = s.url();

    // A password too short is refused and creates nothing.
    let short = s
        .admin
        .create_user(&CreateUser { name: "shorty".into(), admin: false, password: Some("2short".into()) })
        .await
        .unwrap_err();
    assert_eq!(short.code(), "password_too_short", "{short}");
    let users = s.admin.get::<Value>("/users?name=shorty").await.unwrap();
    assert_eq!(users["items"], json!([]), "{users}");
    // Ten spaces, or NULs, were accepted.
    for weak in [" ".repeat(10), "\0".repeat(10), "password\n12".into()] {
        let e = s
            .admin
            .create_user(&CreateUser { name: "weak".into(), admin: false, password: Some(weak.clone()) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_password", "{weak:?}: {e}");
    }
    let fine = CreateUser { name: "spaced".into(), admin: false, password: Some("correct horse battery".into()) };
    s.admin.create_user(&fine).await.unwrap();

    let carol = user_with_password(&s, "carol").await;
    let shown = s.admin.get::<Value>(&format!("/users/{}", carol.id)).await.unwrap();
    assert!(!shown.to_string().contains("argon2") && shown.get("password").is_none(), "{shown}");
    let team_a = s.account("team-a").await;
    let team_b = s.account("team-b").await;
    let (a_id, b_id) = (account_id(&team_a).await, account_id(&team_b).await);
    team_a.add_member(&a_id, &AddMember { user: "carol".into(), role: Role::Member }).await.unwrap();
    team_b.add_member(&b_id, &AddMember { user: "carol".into(), role: Role::Reader }).await.unwrap();
    team_b.post::<_, Value>("/networks", &json!({"name": "b-net", "cidr": "10.20.0.0/24"})).await.unwrap();

    // Unknown user, user without a password, wrong password: one answer.
    let wrong = sign_in(&url, "carol", "not-the-password", None).await;
    let unknown = sign_in(&url, "nobody-here", PASSWORD, None).await;
    let no_password = sign_in(&url, "team-a", PASSWORD, None).await;
    let wrong_in_b = sign_in(&url, "carol", "not-the-password", Some("team-b")).await;
    for a in [&wrong, &unknown, &no_password, &wrong_in_b] {
        assert_eq!((a.status, a.code.as_str()), (401, "bad_credentials"), "{}", a.body);
        assert_eq!(a.body, wrong.body);
    }
    // And about as long: an unknown user is verified against a dummy hash.
    let (mut known, mut unknown) = (vec![], vec![]);
    for _ in 0..3 {
        for (user, into) in [("carol", &mut known), ("nobody-here", &mut unknown)] {
            let t = std::time::Instant::now();
            assert_eq!(sign_in(&url, user, "not-the-password", None).await.status, 401);
            into.push(t.elapsed());
        }
    }
    known.sort();
    unknown.sort();
    eprintln!("a wrong password takes {:?}, an unknown user {:?} (medians of 3)", known[1], unknown[1]);
    assert!(unknown[1] * 3 > known[1] && known[1] * 3 > unknown[1], "{known:?} {unknown:?}");

    // The right one: a session in the account she was first made a member of. Not the
    // first by name: another owner who adds her to "aaa" does not draw her sessions there.
    let aaa = s.account("aaa").await;
    aaa.add_member(&account_id(&aaa).await, &AddMember { user: "carol".into(), role: Role::Member }).await.unwrap();
    let first = session(&sign_in(&url, "carol", PASSWORD, None).await);
    assert_eq!(first.user.name, "carol");
    assert_eq!((first.account.id.clone(), first.role), (a_id.clone(), Role::Member));
    assert_eq!(first.accounts.len(), 3);
    let ttl = first.expires_at - chrono::Utc::now();
    assert!(ttl > chrono::Duration::hours(11) && ttl <= chrono::Duration::hours(12), "{ttl}");
    let carol_a = Client::new(&url, &first.token);
    let me = carol_a.whoami().await.unwrap();
    assert_eq!((me.user.id, me.token.id.clone()), (carol.id.clone(), first.id.clone()));
    assert!(me.token.name.starts_with("session-"), "{}", me.token.name);
    carol_a.post::<_, Value>("/networks", &json!({"name": "a-net", "cidr": "10.10.0.0/24"})).await.unwrap();
    // The session is an ordinary token: listed (its owner sees it), never its secret.
    let listed = team_a.get::<Value>("/tokens").await.unwrap();
    assert!(listed.to_string().contains(first.id.as_str()) && !listed.to_string().contains(&first.token));
    // A token name cannot pose as a session.
    let posing =
        CreateToken { name: "session-fake".into(), account_id: None, expires_at: None, role: None, user_id: None };
    assert_eq!(carol_a.create_token(&posing).await.unwrap_err().code(), "invalid_name");

    // Signing in to a named account (by name or ID); not hers: 404.
    let in_b = session(&sign_in(&url, "carol", PASSWORD, Some("team-b")).await);
    assert_eq!((in_b.account.id.clone(), in_b.role), (b_id.clone(), Role::Reader));
    let other = s.account("team-c").await;
    let c_id = account_id(&other).await;
    assert_eq!(sign_in(&url, "carol", PASSWORD, Some(c_id.as_str())).await.status, 404);

    // Switching: a new session in the other account, the old one revoked.
    let switched: Session = serde_json::from_value(
        call(&url, reqwest::Method::POST, "/sessions/switch", Some(&first.token), Some(json!({"account": b_id})))
            .await
            .body,
    )
    .unwrap();
    assert_eq!((switched.account.id.clone(), switched.role), (b_id.clone(), Role::Reader));
    // It ends when the session switched from would have: switching again and again
    // made one stolen session live for ever.
    assert!(switched.expires_at <= first.expires_at, "{} after {}", switched.expires_at, first.expires_at);
    let old = call(&url, reqwest::Method::GET, "/networks", Some(&first.token), None).await;
    assert_eq!((old.status, old.code.as_str()), (401, "token_revoked"));
    let nets = call(&url, reqwest::Method::GET, "/networks", Some(&switched.token), None).await;
    let names: Vec<&str> = nets.body["items"].as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["b-net"]);
    // As a reader there, no change.
    let refused = call(
        &url,
        reqwest::Method::POST,
        "/networks",
        Some(&switched.token),
        Some(json!({"name": "x", "cidr": "10.30.0.0/24"})),
    )
    .await;
    assert_eq!((refused.status, refused.code.as_str()), (403, "read_only"));
    // Not one of hers: 404, the session stays.
    let foreign =
        call(&url, reqwest::Method::POST, "/sessions/switch", Some(&switched.token), Some(json!({"account": c_id})))
            .await;
    assert_eq!(foreign.status, 404, "{}", foreign.body);

    // 12 concurrent switches of one session: exactly one wins.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let (url, t, a) = (url.clone(), switched.token.clone(), a_id.to_string());
            tokio::spawn(async move {
                call(&url, reqwest::Method::POST, "/sessions/switch", Some(&t), Some(json!({"account": a})))
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = vec![];
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| [201, 401].contains(s)), "{statuses:?}");

    // Signing out: only a session; then its token is refused.
    let api = call(&url, reqwest::Method::DELETE, "/sessions/current", Some(team_a.token()), None).await;
    assert_eq!((api.status, api.code.as_str()), (409, "not_a_session"));
    assert_eq!(call(&url, reqwest::Method::DELETE, "/sessions/current", Some(&in_b.token), None).await.status, 204);
    let gone = call(&url, reqwest::Method::GET, "/whoami", Some(&in_b.token), None).await;
    assert_eq!((gone.status, gone.code.as_str()), (401, "token_revoked"));
    let again = call(&url, reqwest::Method::DELETE, "/sessions/current", Some(&in_b.token), None).await;
    assert_eq!((again.status, again.code.as_str()), (401, "token_revoked"));

    // Passwords: her own (a session), not another's; an admin sets anyone's.
    // A new password signs her other sessions out, not the one she changed it with.
    let mine = session(&sign_in(&url, "carol", PASSWORD, None).await);
    let elsewhere = session(&sign_in(&url, "carol", PASSWORD, None).await);
    let carol_c = Client::new(&url, &mine.token);
    assert_eq!(Client::new(&url, &elsewhere.token).whoami().await.unwrap().user.name, "carol");
    // She gives the password she has: a session or token someone else holds cannot
    // lock her out.
    let code = |r: Result<(), vdc_cli::client::ClientError>| r.unwrap_err().code().to_owned();
    assert_eq!(
        code(carol_c.set_password(&carol.id, Some("a-new-long-password"), None).await),
        "current_password_required"
    );
    assert_eq!(code(carol_c.set_password(&carol.id, None, None).await), "current_password_required");
    assert_eq!(
        code(carol_c.set_password(&carol.id, Some("a-new-long-password"), Some("not-her-password")).await),
        "wrong_password"
    );
    assert_eq!(Client::new(&url, &elsewhere.token).whoami().await.unwrap().user.name, "carol", "nothing changed");
    // Of changes at once with the right password, one wins; the others are told.
    let changes: Vec<_> = (0..6)
        .map(|n| {
            let (c, id) = (carol_c.clone(), carol.id.clone());
            tokio::spawn(
                async move { c.set_password(&id, Some(&format!("a-new-long-password{n}")), Some(PASSWORD)).await },
            )
        })
        .collect();
    let mut won = vec![];
    for (n, h) in changes.into_iter().enumerate() {
        match h.await.unwrap() {
            Ok(()) => won.push(n),
            Err(e) => assert!(["password_changed", "wrong_password"].contains(&e.code()), "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    carol_c
        .set_password(&carol.id, Some("a-new-long-password"), Some(&format!("a-new-long-password{}", won[0])))
        .await
        .unwrap();
    let out = call(&url, reqwest::Method::GET, "/whoami", Some(&elsewhere.token), None).await;
    assert_eq!((out.status, out.code.as_str()), (401, "token_revoked"));
    assert_eq!(carol_c.whoami().await.unwrap().user.name, "carol");
    assert_eq!(sign_in(&url, "carol", PASSWORD, None).await.code, "bad_credentials");
    session(&sign_in(&url, "carol", "a-new-long-password", None).await);
    let dave = user_with_password(&s, "dave").await;
    let not_hers = carol_c.set_password(&dave.id, Some("taken-over-password"), None).await.unwrap_err();
    assert_eq!(not_hers.code(), "forbidden", "{not_hers}");
    // Dave is a member of no account.
    let homeless = sign_in(&url, "dave", PASSWORD, None).await;
    assert_eq!((homeless.status, homeless.code.as_str()), (422, "no_account"), "{}", homeless.body);
    // An admin's change signs all of them out.
    s.admin.set_password(&carol.id, Some(PASSWORD), None).await.unwrap();
    assert_eq!(carol_c.whoami().await.unwrap_err().code(), "token_revoked");
    let carol_c = Client::new(&url, &session(&sign_in(&url, "carol", PASSWORD, None).await).token);
    let too_short = carol_c.set_password(&carol.id, Some("short"), None).await.unwrap_err();
    assert_eq!(too_short.code(), "password_too_short", "{too_short}");
    // Removed: the same answer as a wrong password.
    s.admin.set_password(&carol.id, None, None).await.unwrap();
    assert_eq!(sign_in(&url, "carol", PASSWORD, None).await.code, "bad_credentials");

    // The audit log: sign-ins (answered and refused, never the password), sign-outs,
    // and the refused revoked token named by its ID.
    let log = s.admin.get::<Value>("/audit?limit=1000").await.unwrap();
    let text = log.to_string();
    assert!(!text.contains(PASSWORD) && !text.contains("a-new-long-password"), "a password in the audit log");
    let entries = log["items"].as_array().unwrap();
    let of = |action: &str, status: u64| {
        entries.iter().filter(move |e| e["action"] == action && e["status"] == status).collect::<Vec<_>>()
    };
    let ok = of("session.create", 201);
    assert!(ok.iter().any(|e| e["token_id"] == first.id.as_str()
        && e["user_id"] == carol.id.as_str()
        && e["account_id"] == a_id.as_str()
        && e["resource_id"] == first.id.as_str()));
    let failed = of("session.create", 401);
    // A known user's failed attempt names the account it was for: her first, or the one
    // she named.
    for account in [&a_id, &b_id] {
        assert!(failed.iter().any(|e| e["user_id"] == carol.id.as_str()
            && e["error_code"] == "bad_credentials"
            && e["account_id"] == account.as_str()));
    }
    // So that account's owner sees it.
    let owners: Value = team_b.get("/audit?limit=1000").await.unwrap();
    assert!(owners["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "session.create" && e["status"] == 401 && e["user_id"] == carol.id.as_str()));
    assert!(failed.iter().any(|e| e["user_id"].is_null()), "the unknown user's attempt");
    assert!(of("session.switch", 201).iter().any(|e| e["token_id"] == switched.id.as_str()));
    assert!(of("session.delete", 204).iter().any(|e| e["token_id"] == in_b.id.as_str()));
    let revoked = of("session.delete", 401);
    assert!(
        revoked.iter().any(|e| e["token_id"] == in_b.id.as_str()
            && e["user_id"] == carol.id.as_str()
            && e["error_code"] == "token_revoked"),
        "the revoked token's 401 names it: {revoked:?}"
    );
    s.stop().await;
}

async fn sign_ins_are_rate_limited(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    // One a minute: nothing refills during the test, so exactly the burst passes.
    o.auth.signin_per_minute = 1;
    o.auth.signin_burst = 10;
    o.auth.signin_user_per_minute = Some(1);
    o.auth.signin_user_burst = Some(15);
    let s = Stack::start(o).await;
    let url = s.url();
    user_with_password(&s, "erin").await;
    user_with_password(&s, "frank").await;
    let owner = s.account("team").await;
    let team = account_id(&owner).await;
    for u in ["erin", "frank"] {
        owner.add_member(&team, &AddMember { user: u.into(), role: Role::Member }).await.unwrap();
    }

    // 30 concurrent wrong passwords for erin from 127.0.0.1: exactly the burst is checked.
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { sign_in(&url, "erin", "guessing-password", None).await })
        })
        .collect();
    let mut answers = vec![];
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let checked = answers.iter().filter(|a| a.status == 401 && a.code == "bad_credentials").count();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == 429 && a.code == "rate_limited").collect();
    assert_eq!((checked, limited.len()), (10, 20), "{:?}", answers.iter().map(|a| a.status).collect::<Vec<_>>());
    assert!(limited.iter().all(|a| a.retry_after.is_some_and(|r| (1..=60).contains(&r))));

    // From another address erin signs in: guesses from one address no longer lock her
    // out from every other (they did, at 5 a minute). Frank does too; from 127.0.0.1
    // nobody does (that address's bucket is empty).
    let from =
        |last: u8| reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, last])).build().unwrap();
    let body = |u: &str, p: &str| Some(json!({"user": u, "password": p}));
    let post = |c: &reqwest::Client, u: &str, p: &str| {
        call_from(c.clone(), &url, reqwest::Method::POST, "/sessions", None, body(u, p))
    };
    assert_eq!(post(&from(2), "erin", PASSWORD).await.status, 201, "erin from elsewhere");
    assert_eq!(post(&from(2), "frank", PASSWORD).await.status, 201);
    assert_eq!(post(&reqwest::Client::new(), "frank", PASSWORD).await.status, 429);
    // Guesses spread over many addresses: her name's limit over all of them (15 here)
    // holds, for the right password too.
    for last in 3..7 {
        let a = post(&from(last), "erin", "guessing-password").await;
        assert_eq!((a.status, a.code.as_str()), (401, "bad_credentials"), "guess {last}");
    }
    let erin = post(&from(9), "erin", PASSWORD).await;
    assert_eq!((erin.status, erin.code.as_str()), (429, "rate_limited"), "past her name's limit");
    // The general API is not affected ([auth] rate_limit_per_second is off).
    assert!(owner.whoami().await.is_ok());
    s.stop().await;
}

async fn sessions_expire_and_are_trimmed(db: Db) {
    let mut o = StackOptions::new(db);
    o.hosts = 1;
    o.auth.session_ttl_secs = 2;
    o.auth.max_sessions_per_user = 5;
    o.auth.signin_burst = 1000;
    let s = Stack::start(o).await;
    let url = s.url();
    let gina = user_with_password(&s, "gina").await;
    let owner = s.account("team").await;
    let team = account_id(&owner).await;
    owner.add_member(&team, &AddMember { user: "gina".into(), role: Role::Owner }).await.unwrap();

    // A session expires: 401 token_expired, recorded in the audit log with its ID.
    let short = session(&sign_in(&url, "gina", PASSWORD, None).await);
    assert_eq!(call(&url, reqwest::Method::GET, "/whoami", Some(&short.token), None).await.status, 200);
    eventually(Duration::from_secs(6), || async {
        let a = call(&url, reqwest::Method::GET, "/whoami", Some(&short.token), None).await;
        (a.code == "token_expired").then_some(())
    })
    .await
    .expect("the session expires");
    let late = call(&url, reqwest::Method::POST, "/keypairs", Some(&short.token), Some(json!({"name": "late"}))).await;
    assert_eq!((late.status, late.code.as_str()), (401, "token_expired"));
    let log = s.admin.get::<Value>(&format!("/audit?user={}", gina.id)).await.unwrap();
    let entries = log["items"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["action"] == "keypair.create"
            && e["status"] == 401
            && e["token_id"] == short.id.as_str()
            && e["account_id"] == team.as_str()
            && e["error_code"] == "token_expired"),
        "{entries:?}"
    );

    // 20 concurrent sign-ins: all answered, at most 5 live sessions kept (the newest).
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { sign_in(&url, "gina", PASSWORD, None).await })
        })
        .collect();
    let mut sessions = vec![];
    for c in calls {
        sessions.push(session(&c.await.unwrap()));
    }
    let live = owner.list_all_tokens().await.unwrap();
    let live: Vec<_> = live.iter().filter(|t| t.name.starts_with("session-") && t.user_id == gina.id).collect();
    assert_eq!(live.len(), 5, "{live:?}");
    let mut working = 0;
    for t in &sessions {
        match call(&url, reqwest::Method::GET, "/whoami", Some(&t.token), None).await {
            a if a.status == 200 => working += 1,
            a => assert!(["token_revoked", "token_expired"].contains(&a.code.as_str()), "{}", a.body),
        }
    }
    assert!(working <= 5, "{working} sessions work");
    s.stop().await;
}

/// `vdc user create --password-stdin` and `vdc user passwd --password-stdin`, through the
/// binary: the password comes from standard input, never from the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_sets_passwords() {
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    let s = Stack::start(o).await;
    let url = s.url();
    let run = |token: String, args: Vec<&'static str>, stdin: &'static str| {
        let dir = s.tmp.path().join(format!("cli-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        vdc_cli::config::save(&config, &vdc_cli::config::CliConfig::new(url.clone(), &token)).unwrap();
        tokio::task::spawn_blocking(move || vdc(&config, &args, stdin))
    };
    let out = run(s.admin_token.clone(), vec!["user", "create", "ivy", "--password-stdin"], "ivy-first-password\n")
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let owner = s.account("ivies").await;
    let acct = account_id(&owner).await;
    owner.add_member(&acct, &AddMember { user: "ivy".into(), role: Role::Reader }).await.unwrap();
    let first = session(&sign_in(&url, "ivy", "ivy-first-password", None).await);
    // Without --password-stdin the passwords are asked on a terminal; a pipe is told so.
    let out = run(first.token.clone(), vec!["user", "passwd"], "ivy-second-password\n").await.unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not a terminal") && said.contains("--password-stdin"), "{said}");
    // Too short: refused with its code, the password unchanged.
    let out = run(first.token.clone(), vec!["user", "passwd", "--password-stdin"], "short\n").await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10"), "{}", String::from_utf8_lossy(&out.stderr));
    // Her own, as a reader with her session.
    let out =
        run(first.token.clone(), vec!["user", "passwd", "--password-stdin"], "ivy-second-password\r\n").await.unwrap();
    assert!(!out.status.success(), "without the current password");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("current password") && said.contains("first line"), "{said}");
    let out = run(
        first.token.clone(),
        vec!["user", "passwd", "--password-stdin"],
        "ivy-first-password\nivy-second-password\r\n",
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sign_in(&url, "ivy", "ivy-first-password", None).await.code, "bad_credentials");
    session(&sign_in(&url, "ivy", "ivy-second-password", None).await);
    // Another user's: only an admin.
    let out = run(first.token.clone(), vec!["user", "passwd", "ivies", "--password-stdin"], "taken-over-password\n")
        .await
        .unwrap();
    assert!(!out.status.success());
    let out = run(s.admin_token.clone(), vec!["user", "passwd", "ivy", "--password-stdin"], "ivy-third-password\n")
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    session(&sign_in(&url, "ivy", "ivy-third-password", None).await);
    s.stop().await;
}

/// `vdc login` through the binary: a session per account kept in the config file, the
/// default account switched by the last login, `--account NAME` acting with that account's
/// session, a named account with no session refused with what to do (never acted on with
/// another account's token), and `vdc logout` revoking what it forgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_logs_in_to_each_account() {
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    let s = Stack::start(o).await;
    let url = s.url();
    s.admin
        .create_user(&CreateUser { name: "kai".into(), admin: false, password: Some(PASSWORD.into()) })
        .await
        .unwrap();
    let mut owners = vec![];
    for (name, net, cidr) in [("kai-a", "net-a", "10.81.0.0/24"), ("kai-b", "net-b", "10.82.0.0/24")] {
        let owner = s.account(name).await;
        owners.push(owner.clone());
        let id = account_id(&owner).await;
        owner.add_member(&id, &AddMember { user: "kai".into(), role: Role::Member }).await.unwrap();
        owner.post::<_, Value>("/networks", &json!({"name": net, "cidr": cidr})).await.unwrap();
    }
    let config = s.tmp.path().join("kai-cli/config.toml");
    vdc_cli::config::save(&config, &vdc_cli::config::CliConfig { api: Some(url.clone()), ..Default::default() })
        .unwrap();
    let run = |args: Vec<&str>, stdin: &str| {
        let out = vdc(&config, &args, stdin);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let networks = |out: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(out).unwrap();
        v.as_array()
            .unwrap_or_else(|| v["items"].as_array().unwrap())
            .iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let (ok, _, err) = run(vec!["login", "kai", "--password-stdin", "--account", "kai-a"], "wrong-password!\n");
    assert!(!ok && err.contains("bad_credentials"), "{err}");
    let (ok, _, err) = run(vec!["login", "kai", "--password-stdin", "--account", "kai-a"], &format!("{PASSWORD}\n"));
    assert!(ok && err.contains("in account kai-a (member)") && err.contains("kai-b"), "{err}");
    // Signing in to the same account again signs the session it replaces out (it stayed
    // valid, kept nowhere).
    let first = vdc_cli::config::read(&config).unwrap().unwrap().tokens["kai-a"].clone();
    let (ok, _, err) = run(vec!["login", "kai", "--password-stdin", "--account", "kai-a"], &format!("{PASSWORD}\n"));
    assert!(ok, "{err}");
    assert_eq!(Client::new(&url, &first).whoami().await.unwrap_err().code(), "token_revoked");
    let (ok, out, err) = run(vec!["network", "list", "-o", "json"], "");
    assert!(ok, "{err}");
    assert_eq!(networks(&out), ["net-a"]);
    let (ok, _, err) = run(vec!["login", "kai", "--password-stdin", "--account", "kai-b"], &format!("{PASSWORD}\n"));
    assert!(ok, "{err}");
    // The last login is the default; the other account's session is still kept.
    let (_, out, _) = run(vec!["network", "list", "-o", "json"], "");
    assert_eq!(networks(&out), ["net-b"]);
    let (ok, out, err) = run(vec!["--account", "kai-a", "network", "list", "-o", "json"], "");
    assert!(ok, "{err}");
    assert_eq!(networks(&out), ["net-a"]);
    let kept = vdc_cli::config::read(&config).unwrap().unwrap();
    assert_eq!((kept.account.as_deref(), kept.tokens.len(), kept.token), (Some("kai-b"), 2, None));
    // An account with no session here: refused, saying how to sign in to it.
    let (ok, _, err) = run(vec!["--account", "kai-c", "network", "list"], "");
    assert!(!ok && err.contains("vdc login") && err.contains("kai-c"), "{err}");

    // Sign out of kai-b: its token is revoked and forgotten; kai-a's stays.
    let b_token = kept.tokens["kai-b"].clone();
    let (ok, _, err) = run(vec!["logout"], "");
    assert!(ok, "{err}");
    assert_eq!(Client::new(&url, &b_token).whoami().await.unwrap_err().code(), "token_revoked");
    let kept = vdc_cli::config::read(&config).unwrap().unwrap();
    assert_eq!(kept.tokens.keys().collect::<Vec<_>>(), ["kai-a"]);
    let (ok, _, err) = run(vec!["--account", "kai-a", "logout", "--all"], "");
    assert!(ok, "{err}");
    assert!(vdc_cli::config::read(&config).unwrap().unwrap().tokens.is_empty());

    // A tenant's token of one account with another named: never acted on in the wrong
    // account.
    let mut plain = vdc_cli::config::CliConfig::new(url.clone(), owners[1].token().to_owned());
    plain.tokens.clear();
    vdc_cli::config::save(&config, &plain).unwrap();
    let (ok, _, err) = run(vec!["--account", "kai-a", "network", "list"], "");
    assert!(!ok && err.contains("the token acts in account") && err.contains("vdc login"), "{err}");
    // An admin's token acts in the account it names (README: operators in tenants' accounts).
    let mut plain = vdc_cli::config::CliConfig::new(url.clone(), s.admin_token.clone());
    plain.tokens.clear();
    vdc_cli::config::save(&config, &plain).unwrap();
    let (ok, out, err) = run(vec!["--account", "kai-a", "network", "list", "-o", "json"], "");
    assert!(ok, "{err}");
    assert_eq!(networks(&out), ["net-a"]);
    s.stop().await;
}

/// The `vdc` binary with the config file `config` (and none of the environment's
/// settings), `stdin` on its standard input.
fn vdc(config: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(vdc_tests::procs::bin("vdc"))
        .env("VDC_CONFIG", config)
        .env_remove("VDC_API")
        .env_remove("VDC_TOKEN")
        .env_remove("VDC_ACCOUNT")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
