//! Per-token request rate limits (`[auth] rate_limit_per_second`, issue 14 point 7): a burst
//! over the limit answers 429 `rate_limited` with `Retry-After`, passes again after that
//! wait, leaves other tokens alone; calls without a valid token are limited by address;
//! 50 concurrent calls never let more than the bucket (and what refilled meanwhile) through.

use std::time::{Duration, Instant};
use vdc_tests::{Db, Stack, StackOptions};

const RATE: u32 = 4;
const BURST: u32 = 8;

async fn get(url: &str, path: &str, token: Option<&str>) -> (u16, Option<u64>, String) {
    let mut req = reqwest::Client::new().get(format!("{url}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, retry, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

/// Sends `n` calls one after the other; returns how many passed and the first refusal.
async fn burst(url: &str, path: &str, token: Option<&str>, n: usize) -> (usize, Option<(u16, Option<u64>, String)>) {
    let (mut passed, mut refused) = (0, None);
    for _ in 0..n {
        let a = get(url, path, token).await;
        if a.0 == 429 {
            refused.get_or_insert(a);
        } else {
            passed += 1;
        }
    }
    (passed, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_over_its_rate_waits_and_others_do_not() {
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    o.auth.rate_limit_per_second = Some(RATE);
    o.auth.rate_limit_burst = Some(BURST);
    let s = Stack::start(o).await;
    let url = s.url();
    let alice = s.account("alice").await;
    let bob = s.account("bob").await;

    // A burst: the bucket's calls pass (plus what refills during the loop), the rest 429.
    let t = Instant::now();
    let (passed, refused) = burst(&url, "/api/v1/keypairs", Some(alice.token()), 30).await;
    let refill = (t.elapsed().as_secs_f64() * RATE as f64).ceil() as usize;
    assert!(passed >= BURST as usize && passed <= BURST as usize + refill, "{passed} passed (refill {refill})");
    let (status, retry, code) = refused.expect("a call over the limit is refused");
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    let retry = retry.expect("429 carries Retry-After");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");

    // Another token is not affected.
    assert_eq!(get(&url, "/api/v1/keypairs", Some(bob.token())).await.0, 200);

    // After the wait it passes again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(get(&url, "/api/v1/keypairs", Some(alice.token())).await.0, 200);

    // Without a valid token the address is limited: 401 until its bucket is empty, then
    // 429 (guessing tokens is limited too), for the public document as well.
    let (passed, refused) = burst(&url, "/api/v1/keypairs", Some("vdc_guess"), 30).await;
    assert!(passed >= BURST as usize && passed < 30, "{passed} unauthenticated calls answered 401");
    assert_eq!(refused.unwrap().2, "rate_limited");
    assert_eq!(get(&url, "/api/v1/openapi.json", None).await.0, 429);
    // A valid token from the same address keeps its own bucket.
    assert_eq!(get(&url, "/api/v1/keypairs", Some(bob.token())).await.0, 200);

    // 50 at once from a fresh token: never more than the bucket (and its refill) passes.
    let carol = s.account("carol").await;
    let t = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (url, token) = (url.clone(), carol.token().to_owned());
            tokio::spawn(async move { get(&url, "/api/v1/keypairs", Some(&token)).await.0 })
        })
        .collect();
    let mut statuses = vec![];
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    let refill = (t.elapsed().as_secs_f64() * RATE as f64).ceil() as usize;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    assert!(
        ok >= BURST as usize && ok <= BURST as usize + refill,
        "{ok} of 50 passed (burst {BURST}, refill {refill})"
    );
    eprintln!("50 concurrent calls: {ok} passed in {:?}", t.elapsed());
    s.stop().await;
}

/// Connections are limited per address (beyond: 503 `too_many_connections`, closed), one
/// that sends no whole request head within `[http] header_timeout_secs` is closed (idle
/// or a byte at a time), and an account holds at most `event_streams_per_account` event
/// streams (beyond: 429 `too_many_streams`) while another's are unaffected. One client
/// had held 19,990 idle connections or event streams, every descriptor of dcmgr, and the
/// API stopped for every tenant (red team, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_and_event_streams_are_limited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    vdc_tests::init_logging();
    let mut o = StackOptions::new(Db::Sqlite);
    o.hosts = 1;
    o.http.max_connections_per_source = 8;
    o.http.header_timeout_secs = 2;
    o.http.event_streams_per_account = 3;
    let s = Stack::start(o).await;
    let addr = s.url().trim_start_matches("http://").to_owned();
    let alice = s.account("alice").await;
    let bob = s.account("bob").await;
    // Let the accounts' clients' pooled connections go (they count too).
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut idle = vec![];
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let mut ninth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut said = String::new();
    tokio::time::timeout(Duration::from_secs(5), ninth.read_to_string(&mut said)).await.unwrap().unwrap();
    assert!(said.starts_with("HTTP/1.1 503") && said.contains("too_many_connections"), "{said:?}");

    // The idle ones, and one sending its head too slowly, are closed after the timeout.
    let t = Instant::now();
    for c in &mut idle {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await.expect("closed").unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "closed after about 2 s: {:?}", t.elapsed());
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /api/v1 HTTP/1.1\r\n").await.unwrap();
    let mut rest = vec![];
    let r = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "a request head never finished is cut");
    assert!(alice.whoami().await.is_ok(), "room again");

    // Event streams: three of alice's, not a fourth; bob's are his own.
    let mut streams = vec![];
    for _ in 0..3 {
        streams.push(alice.events(None, true).await.expect("a stream"));
    }
    let over = alice.events(None, true).await.err().expect("a fourth stream is refused");
    assert_eq!((over.status(), over.code()), (Some(429), "too_many_streams"), "{over}");
    bob.events(None, true).await.expect("another account's stream");
    drop(streams);
    s.stop().await;
}
