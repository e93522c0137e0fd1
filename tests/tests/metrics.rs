//! `GET /metrics` on a fresh stack (dcmgr + simulated agents, in one process as in
//! `vdc up`): the series move with a create → running and a refused request, labels are
//! route templates (no IDs); `[metrics] token` guards it; and a real Prometheus scraping
//! the stack answers every query of `packaging/grafana/vdc.json`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vdc_schema::api::*;
use vdc_tests::{Db, Stack, StackOptions};

/// One sample of the text format: (name, labels, value).
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").expect("label=\"value\"");
                (k.to_owned(), v.trim_end_matches('"').to_owned())
            })
            .collect();
        out.push((name.to_owned(), labels, value.parse().expect("a number")));
    }
    out
}

/// The value of the one series of `name` carrying `labels` (others may be present).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| v)
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?} in\n{text}");
    found[0]
}

async fn scrape(url: &str) -> String {
    let res = reqwest::get(format!("{url}/metrics")).await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    res.text().await.unwrap()
}

async fn network(c: &vdc_cli::client::Client) -> Network {
    c.create_network(&CreateNetwork {
        name: "m-net".into(),
        cidr: "10.9.0.0/24".into(),
        gateway: None,
        dhcp_start: None,
        dhcp_end: None,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn metrics_follow_a_create_and_a_refusal() {
    let s = Stack::start(StackOptions::new(Db::Sqlite)).await;
    let c = s.account("metrics").await;
    let before = scrape(&s.url()).await;
    let count = |t: &str, method: &str, route: &str, status: &str| {
        samples(t)
            .into_iter()
            .filter(|(n, l, _)| {
                n == "vdc_http_request_duration_seconds_count"
                    && l["method"] == method
                    && l["route"] == route
                    && l["status"] == status
            })
            .map(|(_, _, v)| v)
            .sum::<f64>()
    };
    let sent_before = value(&before, "vdc_bus_messages_total", &[("direction", "sent"), ("subject", "hva_command")]);

    let vm = s.running_instance(&c, "m-vm").await;
    // Refused: an unknown instance (404) under the route template, not its raw path.
    let missing = c.get_instance(&"i-00000000000000000000000000".parse().unwrap()).await;
    assert!(missing.is_err());
    let after = scrape(&s.url()).await;

    assert!(
        count(&after, "POST", "/api/v1/instances", "2xx") >= count(&before, "POST", "/api/v1/instances", "2xx") + 1.0,
        "{after}"
    );
    assert!(
        count(&after, "GET", "/api/v1/instances/{id}", "4xx")
            >= count(&before, "GET", "/api/v1/instances/{id}", "4xx") + 1.0,
        "{after}"
    );
    assert!(!after.contains(vm.id.as_str()), "an ID in a label:\n{after}");
    assert!(!after.contains("i-00000000"), "an ID in a label:\n{after}");
    // This dcmgr's model, read at scrape time.
    assert_eq!(value(&after, "vdc_objects", &[("kind", "instance"), ("state", "running")]), 1.0);
    assert_eq!(value(&after, "vdc_objects", &[("kind", "network"), ("state", "available")]), 1.0);
    assert_eq!(value(&after, "vdc_agents", &[("kind", "hva"), ("status", "online")]), s.hosts.len() as f64);
    assert_eq!(value(&after, "vdc_agents", &[("kind", "sta"), ("status", "online")]), s.storage.len() as f64);
    assert_eq!(value(&after, "vdc_jobs_running", &[]), 0.0);
    assert_eq!(value(&after, "vdc_reconcile_lag_seconds", &[]), 0.0);
    value(&after, "vdc_work_queue_depth", &[]);
    // The in-process agents' series are in the same registry.
    assert!(
        value(&after, "vdc_bus_messages_total", &[("direction", "sent"), ("subject", "hva_command")]) > sent_before
    );
    assert!(
        value(&after, "vdc_agent_command_duration_seconds_count", &[("agent", "hva"), ("command", "ensure_instance")])
            >= 1.0
    );
    assert!(value(&after, "vdc_driver_op_duration_seconds_count", &[("driver", "sim"), ("op", "power")]) >= 1.0);
    s.stop().await;
}

#[tokio::test]
async fn the_metrics_token_guards_the_endpoint() {
    let mut o = StackOptions::new(Db::Sqlite);
    o.metrics.token = Some("scrape-secret".into());
    let s = Stack::start(o).await;
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", s.url());
    for auth in [None, Some("Bearer wrong"), Some("scrape-secret")] {
        let mut req = http.get(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(body["error"]["message"].as_str().unwrap().contains("[metrics] token"), "{body}");
    }
    let res = http.get(&url).bearer_auth("scrape-secret").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("vdc_objects"));
    s.stop().await;
}

/// A Prometheus of the test's own: a free loopback port, its configuration and data in
/// a temporary directory; killed (and the directory removed) when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_prometheus(target: &str) -> Prometheus {
    let dir = tempfile::Builder::new().prefix("vdc-prom-").tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vdc\n    \
             static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("prometheus is installed (packaging/install-deps.sh)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
}

async fn query(p: &Prometheus, expr: &str) -> Option<Vec<serde_json::Value>> {
    let res =
        reqwest::Client::new().get(format!("{}/api/v1/query", p.url)).query(&[("query", expr)]).send().await.ok()?;
    let body: serde_json::Value = res.json().await.ok()?;
    assert_eq!(body["status"], "success", "{expr}: {body}");
    Some(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

#[tokio::test]
async fn a_real_prometheus_answers_every_dashboard_query() {
    let s = Stack::start(StackOptions::new(Db::Sqlite)).await;
    let c = s.account("prom").await;
    network(&c).await;
    s.running_instance(&c, "prom-vm").await;
    let _ = c.get_instance(&"i-00000000000000000000000000".parse().unwrap()).await;

    let target = s.url().trim_start_matches("http://").to_owned();
    let prom = start_prometheus(&target);
    // Scraped, and often enough that rate() over the dashboard's windows has two samples.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let scrapes = query(&prom, "count_over_time(up{job=\"vdc\"}[5m])").await.unwrap_or_default();
        let up = query(&prom, "up{job=\"vdc\"}").await.unwrap_or_default();
        let n = scrapes.first().and_then(|r| r["value"][1].as_str()?.parse::<f64>().ok()).unwrap_or(0.0);
        if n >= 3.0 && up.first().is_some_and(|r| r["value"][1] == "1") {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus has not scraped {target}: {scrapes:?} {up:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/grafana/vdc.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    for expr in &exprs {
        let result = query(&prom, expr).await.expect("prometheus answers");
        assert!(!result.is_empty(), "no data for the dashboard's `{expr}`");
    }
    drop(prom);
    s.stop().await;
}

/// A separate agent (the hva binary, simulated driver, over NATS) serves its own registry
/// at `--metrics-listen`; an address it cannot listen on stops it, naming the flag.
#[tokio::test]
async fn a_separate_agent_serves_its_metrics() {
    use std::process::Command;
    use vdc_tests::procs::{bin, free_port, nats_server, wait_port, Proc};
    let dir = tempfile::Builder::new().prefix("vdc-metrics-agent-").tempdir().unwrap();
    let (_nats, nats_port) = nats_server(dir.path());
    let port = free_port();
    let _hva = Proc::spawn(
        "hva",
        Command::new(bin("hva")).args([
            "--driver",
            "sim",
            "--nats",
            &format!("nats://127.0.0.1:{nats_port}"),
            "--data-dir",
            dir.path().join("hva").to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
        ]),
        dir.path(),
    );
    assert!(wait_port(port, Duration::from_secs(20)), "hva does not serve metrics on {port}");
    // With no dcmgr on the bus it keeps asking to register: counted where it is sent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(&format!("http://127.0.0.1:{port}")).await;
        let sent = samples(&text).into_iter().any(|(n, l, v)| {
            n == "vdc_bus_messages_total" && l["direction"] == "sent" && l["subject"] == "register" && v >= 1.0
        });
        if sent {
            break;
        }
        assert!(Instant::now() < deadline, "no register counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = Command::new(bin("hva"))
        .args(["--driver", "sim", "--nats", "nats://127.0.0.1:1", "--metrics-listen", "not-an-address"])
        .args(["--data-dir", dir.path().join("hva2").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--metrics-listen not-an-address"), "{err}");
}
