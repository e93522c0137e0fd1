//! `vdc-bench`: measures dcmgr against the targets in DEVELOPERS.md and prints figures.
//! Nothing here asserts: targets are reported, not tested.
//!
//!   cargo run --release -p vdc-tests --bin vdc-bench -- [--db sqlite|postgres]
//!
//! - create → ensure sent to the (simulated) agent: p50 / p99, one request at a time;
//! - creates accepted, placed and ensured per second, 32 in flight;
//! - `GET /api/v1/instances/{id}`: requests per second with `wrk -t2 -c64`, as a ratio to
//!   its floor in the same run: a bare axum server answering the same JSON from memory
//!   (`vdc_tests::floor`); beside it, the same statements through sqlx's own driver;
//! - `GET /api/v1/instances?limit=1000` over 1,000 running instances: p50, as a ratio to
//!   the same list served from memory, read by the same client; and its statements alone;
//! - event delay: a state change to its event at a client of `GET /api/v1/events`.
//!
//! The large site (`--hosts 10000 --instances 1000000`) runs its simulated agents in
//! processes of their own (`--agent-processes`, this binary again), heartbeating over a
//! nats-server to dcmgr, which runs here with the client: the figures are dcmgr's.

use clap::Parser;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vdc_schema::api::*;
use vdc_tests::{floor, Db, Stack, StackOptions};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "sqlite")]
    db: String,
    /// Sequential creates for the latency figure.
    #[arg(long, default_value_t = 500)]
    latency_creates: usize,
    /// Creates for the throughput figure.
    #[arg(long, default_value_t = 4000)]
    throughput_creates: usize,
    /// Seconds of GET load.
    #[arg(long, default_value_t = 10)]
    get_seconds: u64,
    /// Sequential creates for the event delay figure.
    #[arg(long, default_value_t = 300)]
    event_creates: usize,
    /// Only the event delay figure.
    #[arg(long)]
    events_only: bool,
    /// Only the create figures (latency and throughput): for profiling the create path.
    #[arg(long)]
    creates_only: bool,
    /// Simulated hosts (each a simulated hva and nwagent heartbeating over the bus).
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// Instances seeded straight into the database before measuring (the large-site
    /// mode: `--hosts 10000 --instances 1000000`); 0 runs the usual figures.
    #[arg(long, default_value_t = 0)]
    instances: usize,
    /// dcmgr with the suite's short heartbeat, reconcile and resend periods (0.2, 0.2 and
    /// 0.5 s) instead of its defaults (2, 2 and 5 s), as figures before 2026-12-05 were.
    #[arg(long)]
    test_timers: bool,
    /// The simulated agents keep their report journals in memory, as at the large site:
    /// their fsyncs, which real agents make on their own hosts, leave the two cores that
    /// dcmgr is measured on.
    #[arg(long)]
    journals_in_memory: bool,
    /// The throughput creates come from this many accounts in turn (an account's creates
    /// lock its row, for its quotas).
    #[arg(long, default_value_t = 1)]
    accounts: usize,
    /// The large site's simulated agents run in this many processes over NATS.
    #[arg(long, default_value_t = 4)]
    agent_processes: usize,
    /// (A child process of the large site: runs `--hosts` simulated hosts, numbered from
    /// `--first-host`, on the NATS server at this URL.)
    #[arg(long, hide = true)]
    sim_hosts_child: Option<String>,
    #[arg(long, hide = true, default_value_t = 0)]
    first_host: usize,
}

/// 1 TiB of root disks per simulated host: the scheduler books disks as on real ones.
const HOST_DISK_MIB: u64 = 1 << 20;
const HOST_CPUS: u32 = 4096;
const HOST_MEMORY_MIB: u64 = 1 << 30;
const SIM_DELAY: Duration = Duration::from_millis(5);

/// A child of the large site: simulated hosts (a hva and an nwagent each) over NATS
/// until killed.
async fn sim_hosts_child(url: &str, first: usize, hosts: usize) -> anyhow::Result<()> {
    use vdc_schema::HypervisorKind as K;
    let bus: Arc<dyn vdc_bus::Transport> = vdc_bus::Nats::connect(url, "vdc-bench-agents").await?;
    let sim = vdc_bus::sim::SimKnobs { delay: SIM_DELAY, fail_rate: 0.0, drop_rate: 0.0 };
    let mut running = Vec::new();
    for i in first..first + hosts {
        let node_id = vdc_schema::id::HostNodeId::generate().to_string();
        let hva = vdc_hva::start_sim(
            bus.clone(),
            vdc_hva::HvaOptions {
                node_id: node_id.clone(),
                cpus: HOST_CPUS,
                memory_mib: HOST_MEMORY_MIB,
                hypervisors: vec![K::Kvm, K::Qemu, K::Lxc],
                data_dir: None,
                sim,
                disk_mib: Some(HOST_DISK_MIB),
            },
        )
        .await?;
        let nw = vdc_nwagent::start_sim(
            bus.clone(),
            // 198.18/15 (benchmarking), a distinct one per host, as the in-process hosts'.
            vdc_nwagent::NwOptions {
                node_id,
                data_dir: None,
                sim,
                tunnel_ip: Some(std::net::Ipv4Addr::from(0xc612_0000u32 + i as u32 + 1)),
            },
        )
        .await?;
        running.push((hva, nw));
    }
    println!("{hosts} simulated hosts running");
    std::future::pending::<()>().await;
    Ok(())
}

/// The large site's agents: `hosts` simulated hosts in `processes` children of this
/// binary on the NATS server at `url`; returns once dcmgr knows them all online.
async fn agent_processes(
    stack: &Stack,
    url: &str,
    hosts: usize,
    processes: usize,
    logs: &std::path::Path,
) -> anyhow::Result<Vec<vdc_tests::procs::Proc>> {
    let exe = std::env::current_exe()?;
    let processes = processes.clamp(1, hosts.max(1));
    let mut children = Vec::new();
    for p in 0..processes {
        let (first, end) = (hosts * p / processes, hosts * (p + 1) / processes);
        // At a lower priority: a real site's hosts are other machines, and dcmgr's
        // figures should not be its simulated hosts' on this one's cores. (Heartbeats late
        // for it would still show as agents marked offline.)
        let mut cmd = std::process::Command::new("nice");
        cmd.args(["-n", "10"]).arg(&exe).arg("--sim-hosts-child").arg(url).arg("--first-host").arg(first.to_string());
        cmd.arg("--hosts").arg((end - first).to_string());
        children.push(vdc_tests::procs::Proc::spawn(&format!("agents-{p}"), &mut cmd, logs));
    }
    let ctx = &stack.dcmgr().ctx;
    let t = Instant::now();
    loop {
        let online = ctx.agents.read().unwrap().values().filter(|a| !a.offline).count();
        if online >= 2 * hosts {
            return Ok(children);
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(600),
            "{online} of {} agents online after 600 s; see {}",
            2 * hosts,
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The CPU time process `pid` (`self` for this one) has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command's closing parenthesis: state is field 3, utime and stime 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
}

/// The resident and peak memory of process `pid` (`self` for this one), as /proc says.
fn memory_of(pid: &str) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned()).unwrap_or_else(|| "?".into())
    };
    (field("VmRSS:"), field("VmHWM:"))
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

fn create_req(img: &vdc_schema::ImageId) -> CreateInstance {
    CreateInstance {
        name: None,
        image_id: img.clone(),
        hypervisor: None,
        cpus: 1,
        memory_mib: 64,
        interfaces: vec![],
        ssh_key_id: None,
        user_data: None,
        root_disk_size: None,
        server_group: None,
        zone: None,
        host_labels: Default::default(),
    }
}

async fn wait_sent(sent: &Sent, id: &str) -> Instant {
    loop {
        if let Some(t) = sent.lock().unwrap().get(id) {
            return *t;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Creates `n` instances one at a time: each from its request to its ensure sent.
async fn sequential_creates(
    c: &vdc_cli::client::Client,
    img: &vdc_schema::ImageId,
    sent: &Sent,
    n: usize,
) -> anyhow::Result<Histogram<u64>> {
    let mut lat = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        let t0 = Instant::now();
        let a = c.create_instance(&create_req(img)).await?;
        let t1 = wait_sent(sent, a.resource.id.as_str()).await;
        lat.record(t1.duration_since(t0).as_micros() as u64)?;
    }
    Ok(lat)
}

/// Creates `n` instances, 32 in flight: their IDs, and the seconds until every one's
/// ensure was sent.
async fn concurrent_creates(
    clients: &[vdc_cli::client::Client],
    img: &vdc_schema::ImageId,
    sent: &Sent,
    n: usize,
) -> anyhow::Result<(Vec<String>, f64)> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, img, sem) = (clients[i % clients.len()].clone(), img.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            c.create_instance(&create_req(&img)).await.map(|a| a.resource.id.to_string())
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await??);
    }
    for id in &ids {
        wait_sent(sent, id).await;
    }
    Ok((ids, t0.elapsed().as_secs_f64()))
}

/// Calls `f` over and over for three seconds, one call at a time: calls per second.
async fn rate<F, Fut>(mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let t = Instant::now();
    let mut n = 0u32;
    while t.elapsed() < Duration::from_secs(3) {
        f().await?;
        n += 1;
    }
    Ok(f64::from(n) / t.elapsed().as_secs_f64())
}

/// Runs `f` in `tasks` tasks at once for `seconds`: completed calls per second.
async fn in_flight<F, Fut>(tasks: usize, seconds: u64, f: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let t = Instant::now();
    let deadline = t + Duration::from_secs(seconds);
    let runs = (0..tasks).map(|_| {
        let f = f.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                f().await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    });
    let mut calls = 0;
    for r in runs.collect::<Vec<_>>() {
        calls += r.await??;
    }
    Ok(calls as f64 / t.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    vdc_tests::init_logging();
    if let Some(url) = &args.sim_hosts_child {
        return sim_hosts_child(url, args.first_host, args.hosts).await;
    }
    let db = if args.db == "postgres" { Db::Postgres } else { Db::Sqlite };
    let sent: Sent = Arc::default();
    let observer_sent = sent.clone();
    let mut opts = StackOptions::new(db);
    opts.hosts = args.hosts;
    opts.host_cpus = HOST_CPUS;
    opts.host_memory_mib = HOST_MEMORY_MIB;
    opts.sim.delay = SIM_DELAY;
    opts.default_timers = !args.test_timers;
    // The large site keeps the usual liveness timeout: heartbeats must be held.
    opts.agent_timeout_ms = if args.instances > 0 { 10_000 } else { 60_000 };
    // Two journal files per host would pass the 20,000 open files a process may hold here.
    opts.journals_on_disk = args.instances == 0 && !args.journals_in_memory;
    opts.ensure_observer = Some(Arc::new(move |id: &str| {
        observer_sent.lock().unwrap().entry(id.to_owned()).or_insert_with(Instant::now);
    }));
    let started = Instant::now();
    let logs = tempfile::tempdir()?;
    // The large site: dcmgr here, on a nats-server, its agents in processes of their own.
    let nats = if args.instances > 0 {
        let (proc, port) = vdc_tests::procs::nats_server(logs.path());
        let url = format!("nats://127.0.0.1:{port}");
        opts.transport = Some(vdc_bus::Nats::connect(&url, "dcmgr").await?);
        (opts.hosts, opts.storage_nodes) = (0, 0);
        Some((proc, url))
    } else {
        None
    };
    let stack = Stack::start(opts).await;
    let c = stack.account("bench").await;
    println!(
        "vdc-bench: dcmgr on {} ({:?}), {} simulated hosts in this process (started and registered in {:.1} s)",
        stack.url(),
        db,
        stack.hosts.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some((nats, url)) = &nats {
        let started = Instant::now();
        let children = agent_processes(&stack, url, args.hosts, args.agent_processes, logs.path()).await?;
        println!(
            "{} simulated hosts (a hva and an nwagent each) in {} processes over NATS: started and registered in {:.1} s",
            args.hosts,
            children.len(),
            started.elapsed().as_secs_f64()
        );
        // What the heartbeats alone cost, nothing else running: dcmgr's share is this
        // process's (the client is idle), beside the agents' and nats-server's, which a
        // real site runs on other machines.
        let pids: Vec<String> = children.iter().map(|p| p.pid().to_string()).collect();
        let nats_pid = nats.pid().to_string();
        let sample = || (cpu_ticks("self"), cpu_ticks(&nats_pid), pids.iter().map(|p| cpu_ticks(p)).sum::<u64>());
        let before = sample();
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let secs = t.elapsed().as_secs_f64();
        let after = sample();
        let share = |a: u64, b: u64| (a - b) as f64 / secs;
        println!(
            "heartbeats alone, {:.0} s: dcmgr {:.0} % of one core; nats-server {:.0} %; the agent processes {:.0} % (this machine has {} cores)",
            secs,
            share(after.0, before.0),
            share(after.1, before.1),
            share(after.2, before.2),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        large_site(&stack, &c, &sent, args.instances).await?;
        let rss: Vec<String> = children.iter().map(|p| memory_of(&p.pid().to_string()).0).collect();
        println!("memory of the agent processes: {}", rss.join(", "));
        // The agents' reports of the creates applied, then the agents stopped: they would
        // report to a dcmgr that stopped.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(60) {
            let (pending,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM instances WHERE state = 'pending'")
                .fetch_one(&stack.dcmgr().ctx.db)
                .await?;
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(children);
        stack.stop().await;
        return Ok(());
    }
    if args.events_only {
        event_delay(&stack, args.event_creates).await?;
        stack.stop().await;
        return Ok(());
    }

    // 1. create → ensure sent, one at a time.
    let lat = sequential_creates(&c, &stack.image, &sent, args.latency_creates).await?;
    println!(
        "create → ensure sent ({} sequential): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        args.latency_creates,
        ms(&lat, 0.5),
        ms(&lat, 0.99),
        lat.max() as f64 / 1000.0
    );

    // 2. throughput: creates accepted, placed and ensured per second.
    let t0 = Instant::now();
    let mut clients = vec![c.clone()];
    for i in 1..args.accounts.max(1) {
        clients.push(stack.account(&format!("bench{i}")).await);
    }
    let (ids, secs) = concurrent_creates(&clients, &stack.image, &sent, args.throughput_creates).await?;
    println!(
        "creates accepted+placed+ensured: {} in {:.2} s = {:.0}/s (32 in flight, {} account{})",
        args.throughput_creates,
        secs,
        args.throughput_creates as f64 / secs,
        clients.len(),
        if clients.len() == 1 { "" } else { "s" }
    );
    // The same creates until the agents' reports of them are applied: a rate of ensures
    // sent bought by reports left waiting would show here.
    let running = loop {
        let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM instances WHERE state <> 'running'")
            .fetch_one(&stack.dcmgr().ctx.db)
            .await?;
        if left == 0 || t0.elapsed() > Duration::from_secs(120) {
            break t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!(
        "the same, until all run (their reports applied): {:.2} s = {:.0}/s",
        running,
        args.throughput_creates as f64 / running
    );
    if args.creates_only {
        stack.stop().await;
        return Ok(());
    }

    // 3. GET one instance, and its floors in the same run.
    let account = c.whoami().await?.account.id.to_string();
    let raw = floor::RawSql::connect(&stack.database_url).await?;
    let id: vdc_schema::InstanceId = ids[0].parse()?;
    let one = c.get_instance(&id).await?;
    let target = format!("{}/api/v1/instances/{id}", stack.url());
    let token = c.token().to_owned();
    let sql_get = {
        let (raw, account, id) = (raw.clone(), Arc::new(account.clone()), Arc::new(id.to_string()));
        in_flight(64, args.get_seconds, move || {
            let (raw, account, id) = (raw.clone(), account.clone(), id.clone());
            async move { raw.get_instance(&account, &id).await.map(|_| ()) }
        })
        .await?
    };
    match floor::wrk(&target, &token, args.get_seconds)? {
        Some((rps, p50)) => {
            let bare = floor::MemoryServer::start(vec![one.clone()]).await?;
            let (bare_rps, bare_p50) =
                floor::wrk(&format!("{}/api/v1/instances/{id}", bare.url), &token, args.get_seconds)?
                    .unwrap_or_default();
            println!(
                "GET /instances/{{id}} (wrk -t2 -c64): {rps:.0} req/s (latency {p50}) = {:.3} × bare axum from memory \
                 ({bare_rps:.0} req/s, {bare_p50}); its 4 statements through sqlx's own driver, 64 in flight: {sql_get:.0}/s",
                rps / bare_rps
            );
        }
        None => {
            let http = {
                let (c, id) = (c.clone(), id.clone());
                in_flight(64, args.get_seconds, move || {
                    let (c, id) = (c.clone(), id.clone());
                    async move { Ok(c.get_instance(&id).await.map(|_| ())?) }
                })
                .await?
            };
            println!(
                "GET /instances/{{id}} (in-process client, 64 in flight; install wrk for the figure with its floor): \
                 {http:.0} req/s; its statements through sqlx's own driver: {sql_get:.0}/s"
            );
        }
    }

    // 4. list 1,000 instances (a fresh account holding exactly 1,000), and its floors.
    let lister = stack.account("lister").await;
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, img, sem) = (lister.clone(), stack.image.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            c.create_instance(&create_req(&img)).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let q = ListQuery { limit: Some(1000), ..Default::default() };
    // Measured once all are running: a console polling a VDC that is not changing. While
    // instances change, dcmgr's read model is invalidated and lists come from SQL.
    let settled = Instant::now();
    let all: Page<Instance> = loop {
        let p: Page<Instance> = lister.list_instances(&q).await?;
        if p.items.iter().all(|i| i.state == vdc_schema::InstanceState::Running) {
            break p;
        }
        anyhow::ensure!(settled.elapsed() < Duration::from_secs(120), "the 1,000 instances did not all run");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let bare = floor::MemoryServer::start(all.items).await?;
    let bare_client = vdc_cli::client::Client::new(&bare.url, lister.token());
    let lister_account = lister.whoami().await?.account.id.to_string();
    let (mut list, mut list_bare, mut list_sql) =
        (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for _ in 0..50 {
        let t0 = Instant::now();
        let page: Page<Instance> = lister.list_instances(&q).await?;
        list.record(t0.elapsed().as_micros() as u64)?;
        anyhow::ensure!(page.items.len() == 1000, "the list held {} instances", page.items.len());
        let t0 = Instant::now();
        let page: Page<Instance> = bare_client.list_instances(&q).await?;
        list_bare.record(t0.elapsed().as_micros() as u64)?;
        anyhow::ensure!(page.items.len() == 1000, "the bare server listed {} instances", page.items.len());
        let t0 = Instant::now();
        raw.list_instances(&lister_account, 1000).await?;
        list_sql.record(t0.elapsed().as_micros() as u64)?;
    }
    println!(
        "GET /instances?limit=1000 (1,000 items, 50 runs): p50 {:.2} ms, p99 {:.2} ms = {:.2} × the in-memory floor \
         (bare axum, same client: p50 {:.2} ms); its statements through sqlx's own driver: p50 {:.2} ms",
        ms(&list, 0.5),
        ms(&list, 0.99),
        ms(&list, 0.5) / ms(&list_bare, 0.5),
        ms(&list_bare, 0.5),
        ms(&list_sql, 0.5)
    );
    event_delay(&stack, args.event_creates).await?;
    stack.stop().await;
    Ok(())
}

/// The delay from a state change to its event at a client following the stream: for a
/// create, from its 202 (sent after the commit) to the `created` event; for the host's
/// report making it `running`, from the event's recorded time (in the committing
/// transaction, millisecond resolution) to its arrival.
async fn event_delay(stack: &Stack, creates: usize) -> anyhow::Result<()> {
    use vdc_cli::client::StreamItem;
    let c = stack.account("events").await;
    let mut stream = c.events(None, true).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Ok(Some(StreamItem::Event(e))) = stream.next().await {
            let wall =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
            if tx.send((e, Instant::now(), wall)).is_err() {
                return;
            }
        }
    });
    let (mut created, mut from_commit) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
    for _ in 0..creates {
        let a = c.create_instance(&create_req(&stack.image)).await?;
        let t1 = Instant::now();
        let id = a.resource.id.to_string();
        let mut seen_created = false;
        while !seen_created {
            let (e, at, wall) = rx.recv().await.ok_or_else(|| anyhow::anyhow!("the event stream ended"))?;
            if e.resource_id == id && e.change == "created" {
                created.record(at.saturating_duration_since(t1).as_micros() as u64)?;
                seen_created = true;
            }
            if e.kind == "instance" && e.state == "running" {
                from_commit.record((wall - e.time.timestamp_micros()).max(0) as u64)?;
            }
        }
    }
    // The last instances' running events.
    while let Ok(Some((e, _, wall))) = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
        if e.kind == "instance" && e.state == "running" {
            from_commit.record((wall - e.time.timestamp_micros()).max(0) as u64)?;
        }
    }
    reader.abort();
    println!(
        "event delay, create 202 → `created` event at the client ({creates} sequential): p50 {:.2} ms, p99 {:.2} ms",
        ms(&created, 0.5),
        ms(&created, 0.99)
    );
    println!(
        "event delay, report committed → `running` event at the client ({} events, ms clock): p50 {:.2} ms, p99 {:.2} ms",
        from_commit.len(),
        ms(&from_commit, 0.5),
        ms(&from_commit, 0.99)
    );
    Ok(())
}

/// The large site: `instances` instances seeded straight into the database (running,
/// spread over every host, their reservations counted), then the figures a datacenter
/// needs: paginated lists of an account holding them all, creates placed over every
/// host, candidate selection alone, heartbeats held, and the process's memory.
async fn large_site(stack: &Stack, c: &vdc_cli::client::Client, sent: &Sent, instances: usize) -> anyhow::Result<()> {
    let ctx = &stack.dcmgr().ctx;
    let account = c.whoami().await?.account.id.to_string();
    let hosts: Vec<(String,)> = sqlx::query_as("SELECT id FROM host_nodes ORDER BY id").fetch_all(&ctx.db).await?;
    let hosts: Vec<String> = hosts.into_iter().map(|h| h.0).collect();
    let image = stack.image.to_string();
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let t = Instant::now();
    const BATCH: usize = 5000;
    let mut per_host = vec![0u64; hosts.len()];
    for start in (0..instances).step_by(BATCH) {
        let mut sql = String::from(
            "INSERT INTO instances (id, account_id, name, image_id, hypervisor, cpus, memory_mib, state, goal, \
             host_node_id, last_host_id, spec_gen, report_gen, ensure_sent_at, created_at, updated_at) VALUES ",
        );
        for n in start..(start + BATCH).min(instances) {
            let h = n % hosts.len();
            per_host[h] += 1;
            if n > start {
                sql.push(',');
            }
            // IDs sort before the API's time-ordered ones, in seeding order.
            sql.push_str(&format!(
                "('i-0seed{n:010}', '{account}', 'seed-{n}', '{image}', 'qemu', 1, 64, 'running', 'running', \
                 '{host}', '{host}', 1, 1, 0, '{now}', '{now}')",
                host = hosts[h]
            ));
        }
        sqlx::query(&sql).execute(&ctx.db).await?;
    }
    let mut tx = ctx.db.begin().await?;
    for (h, n) in hosts.iter().zip(&per_host) {
        sqlx::query(
            "UPDATE host_nodes SET cpus_used = cpus_used + $1, memory_used_mib = memory_used_mib + $2 WHERE id = $3",
        )
        .bind(*n as i64)
        .bind(*n as i64 * 64)
        .bind(h)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    println!(
        "seeded {instances} running instances over {} hosts in {:.1} s (straight into the database)",
        hosts.len(),
        t.elapsed().as_secs_f64()
    );

    // Lists: the first page, a page in the middle (by cursor) and the last, 100 items each.
    let pages = [None, Some(format!("i-0seed{:010}", instances / 2)), Some(format!("i-0seed{:010}", instances - 50))];
    for (what, cursor) in ["first", "middle", "last"].iter().zip(pages) {
        let q = ListQuery { limit: Some(100), cursor: cursor.clone(), ..Default::default() };
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..30 {
            let t0 = Instant::now();
            let page: Page<Instance> = c.list_instances(&q).await?;
            h.record(t0.elapsed().as_micros() as u64)?;
            anyhow::ensure!(!page.items.is_empty(), "an empty {what} page");
        }
        println!(
            "GET /instances?limit=100, {what} page of {instances}: p50 {:.2} ms, p99 {:.2} ms",
            ms(&h, 0.5),
            ms(&h, 0.99)
        );
    }

    // Candidate selection alone, over every host: the scheduler's (the read model in
    // dcmgr's memory, read again from SQL every second), and the SQL query it replaces.
    let demand = vdc_dcmgr::app::scheduler::Demand {
        hypervisor: vdc_schema::HypervisorKind::Qemu,
        cpus: 1,
        memory_mib: 64,
        disk_mib: 1024,
        uefi: false,
    };
    let none = &vdc_dcmgr::app::scheduler::Constraints::default();
    let per_s = rate(move || async move {
        let found = vdc_dcmgr::app::scheduler::candidates(ctx, demand, none).await?;
        anyhow::ensure!(!found.is_empty(), "no candidate host");
        Ok(())
    })
    .await?;
    println!("placement candidates over {} hosts (the read model, sequential): {per_s:.0}/s", hosts.len());
    let per_s = rate(move || async move {
        let found = vdc_dcmgr::db::host::candidates(
            &ctx.db,
            demand.hypervisor,
            (demand.cpus, demand.memory_mib, demand.disk_mib),
            None,
            ctx.config.placement,
            &none.filter(),
        )
        .await?;
        anyhow::ensure!(!found.is_empty(), "no candidate host");
        Ok(())
    })
    .await?;
    println!("placement candidates over {} hosts (the SQL query alone, sequential): {per_s:.0}/s", hosts.len());

    // Creates placed among them, one at a time, then 32 in flight.
    let lat = sequential_creates(c, &stack.image, sent, 100).await?;
    println!("create → ensure sent (100 sequential): p50 {:.2} ms, p99 {:.2} ms", ms(&lat, 0.5), ms(&lat, 0.99));
    let (_, secs) = concurrent_creates(std::slice::from_ref(c), &stack.image, sent, 1000).await?;
    println!("creates accepted+placed+ensured: 1000 = {:.0}/s (32 in flight)", 1000.0 / secs);

    // Heartbeats held: every agent still online after all that, and now.
    let offline = ctx.agents.read().unwrap().values().filter(|a| a.offline).count();
    let known = ctx.agents.read().unwrap().len();
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT id FROM host_nodes WHERE state <> 'online'").fetch_all(&ctx.db).await?;
    println!("agents: {known} known, {offline} marked offline in memory; host rows not online: {}", rows.len());
    let (rss, hwm) = memory_of("self");
    println!("memory of the bench process (dcmgr and the client; SQLite's page cache on SQLite): {rss} (peak {hwm})");
    retention(ctx, c, &stack.image, instances).await
}

/// What ended long ago: the seeded instances terminated 40 days back, the account's
/// unfiltered list (live ones and what ended within the hour) before and after
/// `app::retention` removes them, and a client's creates while it does (the removal
/// shares SQLite's single writer with them).
async fn retention(
    ctx: &vdc_dcmgr::ctx::SharedCtx,
    c: &vdc_cli::client::Client,
    img: &vdc_schema::ImageId,
    instances: usize,
) -> anyhow::Result<()> {
    let ended = (chrono::Utc::now() - chrono::Duration::days(40)).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let t = Instant::now();
    // At dcmgr's write turn: beside it, on SQLite, dcmgr's reports met a locked file for
    // the 10 s this takes and failed.
    let mut tx = vdc_dcmgr::datastore::begin(&ctx.db).await?;
    sqlx::query(
        "UPDATE instances SET state = 'terminated', goal = 'terminated', host_node_id = NULL, updated_at = $1 \
         WHERE id LIKE 'i-0seed%'",
    )
    .bind(&ended)
    .execute(tx.conn().await?)
    .await?;
    sqlx::query("UPDATE host_nodes SET cpus_used = 0, memory_used_mib = 0").execute(tx.conn().await?).await?;
    tx.commit().await?;
    println!("terminated the {instances} seeded instances 40 days back in {:.1} s", t.elapsed().as_secs_f64());
    let list = |label: &'static str| async move {
        let q = ListQuery { limit: Some(100), ..Default::default() };
        let mut h = Histogram::<u64>::new(3)?;
        let mut first = Duration::ZERO;
        for n in 0..10 {
            let t0 = Instant::now();
            c.list_instances(&q).await?;
            if n == 0 {
                first = t0.elapsed();
            }
            h.record(t0.elapsed().as_micros() as u64)?;
        }
        // The first call reads SQL; the others may come from the read model (`app::views`).
        println!(
            "GET /instances?limit=100 (live and just ended) {label}: first {:.2} ms, p50 {:.2} ms, max {:.2} ms",
            first.as_secs_f64() * 1000.0,
            ms(&h, 0.5),
            h.max() as f64 / 1000.0
        );
        anyhow::Ok(())
    };
    list("beside them").await?;
    // A client creates instances one after the other while the rows go.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let creator = {
        let (c, stop, img) = (c.clone(), stop.clone(), img.clone());
        tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                c.create_instance(&create_req(&img)).await?;
                h.record(t0.elapsed().as_micros() as u64)?;
            }
            anyhow::Ok(h)
        })
    };
    let t = Instant::now();
    let removed = vdc_dcmgr::app::retention::prune_ended(ctx).await?;
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let h = creator.await??;
    anyhow::ensure!(removed.instances as usize == instances, "removed {removed:?} of {instances}");
    println!(
        "retention removed {} instances ended 40 days ago in {secs:.1} s ({:.0} rows/s); creates meanwhile (POST → 202, \
         one at a time): p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms ({} creates)",
        removed.instances,
        removed.instances as f64 / secs,
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0,
        h.len()
    );
    list("after they went").await
}
