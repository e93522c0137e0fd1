//! The agent side of the bus, shared by hva, nwagent and sta.
//!
//! ```text
//!   register ──ack──► report_all ──► heartbeat every N s ──"unknown"──► register again
//!   commands  ──► CommandHandler (the agent's driver trait)
//!   driver ──► ReportSink ──► journal (fsync) ──► ReportBatch ──ack──► forget
//! ```

use crate::journal::{Journal, JournalError};
use crate::transport::{Subscription, Transport};
use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use vdc_schema::agent::{AgentError, Hypervisor, NetworkAgent, StorageAgent};
use vdc_schema::bus::{
    self, subject, Ack, AgentKind, Command, Heartbeat, HeartbeatReply, HostInfo, ObjectReport, Query, QueryReply,
    Register, Registered, ReportBatch, StorageInfo,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BATCH: usize = 512;
/// How long a report batch first waits for its ack. dcmgr acks in milliseconds; a batch
/// unanswered this long was lost, or the dcmgr that took it died, and every report after
/// it waited the whole REQUEST_TIMEOUT (10 s) before. Each batch in a row that times out
/// waits twice as long, up to REQUEST_TIMEOUT, so a dcmgr slow under load is not sent
/// the same batch over and over.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Who this agent is and what it offers.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node_id: String,
    pub kind: AgentKind,
    pub host: Option<HostInfo>,
    pub storage: Option<StorageInfo>,
    /// nwagent: the host's tunnel endpoint, announced at registration.
    pub tunnel_ip: Option<std::net::Ipv4Addr>,
    /// The report journal; `None` keeps it in memory (simulated agents at scale).
    pub journal: Option<PathBuf>,
}

/// Where a driver posts what it observed. Cheap to clone.
#[derive(Clone)]
pub struct ReportSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    journal: Mutex<Journal>,
    wake: Notify,
    last_gen: AtomicU64,
}

impl ReportSink {
    pub fn open(journal: Option<&std::path::Path>) -> Result<Self, JournalError> {
        let journal = match journal {
            Some(p) => Journal::open(p)?,
            None => Journal::memory(),
        };
        let last_gen = AtomicU64::new(journal.last_gen());
        Ok(ReportSink { inner: Arc::new(SinkInner { journal: Mutex::new(journal), wake: Notify::new(), last_gen }) })
    }

    /// A generation larger than any handed out before, also across restarts: wall-clock
    /// microseconds, bumped past the last one seen.
    fn next_gen(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let prev = self
            .inner
            .last_gen
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(now.max(last + 1)))
            .unwrap_or(0);
        now.max(prev + 1)
    }

    /// Journals a report and wakes the sender. A journal write error is logged; the
    /// report still goes out from memory.
    pub fn report(&self, object: ObjectReport) {
        let gen = self.next_gen();
        debug!(object = object.object_id(), gen, "report");
        if let Err(e) = self.inner.journal.lock().unwrap().append(gen, object) {
            warn!("cannot journal report: {e}");
        }
        self.inner.wake.notify_one();
    }

    pub fn pending(&self) -> usize {
        self.inner.journal.lock().unwrap().pending()
    }

    /// The newest unacknowledged report of `object_id` (for a driver's own tests, which
    /// run without dcmgr to acknowledge).
    pub fn newest(&self, object_id: &str) -> Option<ObjectReport> {
        let batch = self.inner.journal.lock().unwrap().batch(usize::MAX);
        batch.into_iter().filter(|r| r.object.object_id() == object_id).max_by_key(|r| r.gen).map(|r| r.object)
    }
}

/// Turns bus commands and queries into calls on the agent's driver.
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    async fn command(&self, cmd: Command) -> Result<(), AgentError>;
    async fn query(&self, _q: Query) -> QueryReply {
        QueryReply::Error { code: "unsupported".into(), message: "this agent answers no queries".into() }
    }
    /// See [`Hypervisor::drain`].
    async fn drain(&self) {}
}

use crate::metrics::time_command as time;

fn wrong(cmd: &Command, kind: &str) -> AgentError {
    AgentError::Invalid(format!("{kind} does not handle {cmd:?}"))
}

/// Serves hva commands with any [`Hypervisor`].
pub struct HypervisorHandler(pub Arc<dyn Hypervisor>);

#[async_trait]
impl CommandHandler for HypervisorHandler {
    async fn command(&self, cmd: Command) -> Result<(), AgentError> {
        match cmd {
            Command::EnsureInstance(spec) => time("hva", "ensure_instance", self.0.ensure_instance(spec)).await,
            Command::EnsureInstanceAbsent { id, spec_gen } => {
                time("hva", "ensure_instance_absent", self.0.ensure_instance_absent(id, spec_gen)).await
            }
            Command::CaptureInstance(spec) => time("hva", "capture_instance", self.0.capture_instance(spec)).await,
            Command::ReportAll => time("hva", "report_all", self.0.report_all()).await,
            other => Err(wrong(&other, "hva")),
        }
    }

    async fn drain(&self) {
        self.0.drain().await
    }

    async fn query(&self, q: Query) -> QueryReply {
        match q {
            Query::ConsoleLog { id } => match self.0.console_log(id).await {
                Ok(output) => QueryReply::ConsoleLog { output },
                Err(AgentError::NotFound(m)) => QueryReply::Error { code: "not_found".into(), message: m },
                Err(e) => QueryReply::Error { code: "agent_error".into(), message: e.to_string() },
            },
        }
    }
}

/// Serves nwagent commands with any [`NetworkAgent`].
pub struct NetworkHandler(pub Arc<dyn NetworkAgent>);

#[async_trait]
impl CommandHandler for NetworkHandler {
    async fn command(&self, cmd: Command) -> Result<(), AgentError> {
        match cmd {
            Command::EnsureInterface(spec) => time("nwagent", "ensure_interface", self.0.ensure_interface(spec)).await,
            Command::EnsureInterfaceAbsent { id, spec_gen } => {
                time("nwagent", "ensure_interface_absent", self.0.ensure_interface_absent(id, spec_gen)).await
            }
            Command::ReportAll => time("nwagent", "report_all", self.0.report_all()).await,
            other => Err(wrong(&other, "nwagent")),
        }
    }

    async fn drain(&self) {
        self.0.drain().await
    }
}

/// Serves sta commands with any [`StorageAgent`].
pub struct StorageHandler(pub Arc<dyn StorageAgent>);

#[async_trait]
impl CommandHandler for StorageHandler {
    async fn command(&self, cmd: Command) -> Result<(), AgentError> {
        match cmd {
            Command::EnsureVolume(spec) => time("sta", "ensure_volume", self.0.ensure_volume(spec)).await,
            Command::EnsureVolumeAbsent { id, spec_gen } => {
                time("sta", "ensure_volume_absent", self.0.ensure_volume_absent(id, spec_gen)).await
            }
            Command::EnsureSnapshot(spec) => time("sta", "ensure_snapshot", self.0.ensure_snapshot(spec)).await,
            Command::EnsureSnapshotAbsent { id, volume_id } => {
                time("sta", "ensure_snapshot_absent", self.0.ensure_snapshot_absent(id, volume_id)).await
            }
            Command::ImageFromSnapshot(spec) => {
                time("sta", "image_from_snapshot", self.0.image_from_snapshot(spec)).await
            }
            Command::ReportAll => time("sta", "report_all", self.0.report_all()).await,
            other => Err(wrong(&other, "sta")),
        }
    }

    async fn drain(&self) {
        self.0.drain().await
    }
}

/// A running agent; dropping it does not stop it, [`AgentHandle::stop`] does.
pub struct AgentHandle {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    handler: Arc<dyn CommandHandler>,
}

/// How long a stop waits for the work commands started (a removal, a capture); what is
/// still running then is cut, and done again after the next start.
const DRAIN_WAIT: Duration = Duration::from_secs(15);

impl AgentHandle {
    /// Stops taking commands, then waits (up to [`DRAIN_WAIT`]) for the work they started.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if tokio::time::timeout(DRAIN_WAIT, self.handler.drain()).await.is_err() {
            warn!("work still running {} s after the stop is cut short", DRAIN_WAIT.as_secs());
        }
    }

    /// Stops without waiting (for a simulated crash).
    pub fn abort(self) {
        self.cancel.cancel();
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Starts the agent's bus loops.
pub async fn start(
    bus: Arc<dyn Transport>,
    cfg: AgentConfig,
    sink: ReportSink,
    handler: Arc<dyn CommandHandler>,
) -> Result<AgentHandle, crate::BusError> {
    let cancel = CancellationToken::new();
    let span = tracing::info_span!("agent", kind = %cfg.kind, node = %cfg.node_id);
    // Subscribe before registering, so no ensure sent in reply to registration is missed.
    let commands = bus.subscribe(&subject::agent(cfg.kind, &cfg.node_id)).await?;
    let queries = bus.subscribe(&subject::agent_query(cfg.kind, &cfg.node_id)).await?;
    let cfg = Arc::new(cfg);
    let tasks = vec![
        tokio::spawn(command_loop(commands, handler.clone(), cancel.clone()).instrument(span.clone())),
        tokio::spawn(query_loop(bus.clone(), queries, handler.clone(), cancel.clone()).instrument(span.clone())),
        tokio::spawn(
            membership_loop(bus.clone(), cfg.clone(), handler.clone(), cancel.clone()).instrument(span.clone()),
        ),
        tokio::spawn(report_loop(bus, cfg, sink, cancel.clone()).instrument(span)),
    ];
    Ok(AgentHandle { cancel, tasks, handler })
}

async fn command_loop(mut sub: Subscription, handler: Arc<dyn CommandHandler>, cancel: CancellationToken) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        match bus::decode_traced::<Command>(&msg.payload) {
            Ok((cmd, trace)) => {
                let (resource, job) = trace.map(|t| (t.resource, t.job)).unwrap_or_default();
                let span = tracing::info_span!("command", resource = %resource, job = job.as_deref().unwrap_or(""));
                if let Err(e) = tracing::Instrument::instrument(handler.command(cmd), span.clone()).await {
                    span.in_scope(|| warn!("command failed: {e}"));
                }
            }
            Err(e) => warn!("dropping undecodable command: {e}"),
        }
    }
}

async fn query_loop(
    bus: Arc<dyn Transport>,
    mut sub: Subscription,
    handler: Arc<dyn CommandHandler>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(reply) = msg.reply else { continue };
        let answer = match bus::decode::<Query>(&msg.payload) {
            Ok(q) => handler.query(q).await,
            Err(e) => QueryReply::Error { code: "bad_query".into(), message: e.to_string() },
        };
        let _ = bus.publish(&reply, bus::encode(&answer).into()).await;
    }
}

async fn register(bus: &dyn Transport, cfg: &AgentConfig, cancel: &CancellationToken) -> Option<Duration> {
    let msg = Register {
        node_id: cfg.node_id.clone(),
        kind: cfg.kind,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: cfg.host.clone(),
        storage: cfg.storage.clone(),
        tunnel_ip: cfg.tunnel_ip,
    };
    let payload = bytes::Bytes::from(bus::encode(&msg));
    let mut backoff = Duration::from_millis(100);
    loop {
        match bus.request(subject::REGISTER, payload.clone(), REQUEST_TIMEOUT).await {
            Ok(b) => match bus::decode::<Registered>(&b) {
                Ok(r) => {
                    info!("registered with dcmgr");
                    return Some(Duration::from_millis(r.heartbeat_interval_ms.clamp(100, 60_000)));
                }
                Err(e) => warn!("bad registration answer: {e}"),
            },
            Err(e) => debug!("registration: {e}"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(3));
    }
}

async fn membership_loop(
    bus: Arc<dyn Transport>,
    cfg: Arc<AgentConfig>,
    handler: Arc<dyn CommandHandler>,
    cancel: CancellationToken,
) {
    let hb = bytes::Bytes::from(bus::encode(&Heartbeat { node_id: cfg.node_id.clone(), kind: cfg.kind }));
    'register: loop {
        let Some(interval) = register(bus.as_ref(), &cfg, &cancel).await else { return };
        // A heartbeat left waiting on a dcmgr that died holds back the next ones, and the
        // dcmgr started in its place counts the silence (seen: hosts marked offline just
        // after a restart). One unanswered for an interval is stale anyway: dcmgr has
        // counted it on receipt, and the next one asks again.
        let hb_timeout = interval.clamp(Duration::from_secs(1), REQUEST_TIMEOUT);
        // dcmgr rebuilds its view from reports: after (re)registration, tell it everything.
        if let Err(e) = handler.command(Command::ReportAll).await {
            warn!("report_all failed: {e}");
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match bus.request(subject::HEARTBEAT, hb.clone(), hb_timeout).await {
                Ok(b) => match bus::decode::<HeartbeatReply>(&b) {
                    Ok(HeartbeatReply { known: false }) => {
                        info!("dcmgr does not know this agent; registering again");
                        continue 'register;
                    }
                    Ok(_) => {}
                    Err(e) => warn!("bad heartbeat answer: {e}"),
                },
                Err(e) => debug!("heartbeat: {e}"),
            }
        }
    }
}

async fn report_loop(bus: Arc<dyn Transport>, cfg: Arc<AgentConfig>, sink: ReportSink, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(50);
    let mut ack_wait = ACK_WAIT;
    loop {
        let (batch, syncer) = {
            let j = sink.inner.journal.lock().unwrap();
            let b = j.batch(MAX_BATCH);
            let s = if b.is_empty() { None } else { j.syncer() };
            (b, s)
        };
        if let Some(s) = syncer {
            // fdatasync takes milliseconds here: not on a thread of the runtime, which the
            // agent's other work (and in the all-in-one dcmgr's) shares.
            match tokio::task::spawn_blocking(move || s.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("cannot sync journal: {e}"),
                Err(e) => warn!("cannot sync journal: {e}"),
            }
        }
        if batch.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sink.inner.wake.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        let msg = ReportBatch { node_id: cfg.node_id.clone(), kind: cfg.kind, reports: batch };
        let sent = bus.request(subject::REPORT, bus::encode(&msg).into(), ack_wait).await;
        match sent.map(|b| bus::decode::<Ack>(&b)) {
            Ok(Ok(ack)) => {
                backoff = Duration::from_millis(50);
                ack_wait = ACK_WAIT;
                if let Err(e) = sink.inner.journal.lock().unwrap().ack(&ack.seqs) {
                    warn!("cannot record ack: {e}");
                }
            }
            Ok(Err(e)) => warn!("bad ack: {e}"),
            Err(e) => {
                debug!("reports not delivered, will retry: {e}");
                if matches!(e, crate::transport::BusError::Timeout(_)) {
                    ack_wait = (ack_wait * 2).min(REQUEST_TIMEOUT);
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::InProc;

    struct Idle;

    fn config() -> AgentConfig {
        AgentConfig {
            node_id: "hn-test".into(),
            kind: AgentKind::Hva,
            host: None,
            storage: None,
            tunnel_ip: None,
            journal: None,
        }
    }

    #[async_trait]
    impl CommandHandler for Idle {
        async fn command(&self, _cmd: Command) -> Result<(), AgentError> {
            Ok(())
        }
    }

    /// A dcmgr that dies holding a heartbeat must not hold back the next ones: the dcmgr
    /// started in its place would count the agent silent.
    #[tokio::test]
    async fn an_unanswered_heartbeat_does_not_hold_back_the_next() {
        let bus = InProc::new();
        let mut reg = bus.subscribe(subject::REGISTER).await.unwrap();
        let mut beats = bus.subscribe(subject::HEARTBEAT).await.unwrap();
        let agent = start(bus.clone(), config(), ReportSink::open(None).unwrap(), Arc::new(Idle)).await.unwrap();
        let m = reg.next().await.unwrap();
        let ok = Registered { heartbeat_interval_ms: 100 };
        bus.publish(&m.reply.unwrap(), bus::encode(&ok).into()).await.unwrap();
        // Heartbeats arrive and are never answered (the dcmgr that took them is gone).
        let start = tokio::time::Instant::now();
        let mut seen = 0;
        while start.elapsed() < Duration::from_millis(3500) {
            if tokio::time::timeout(Duration::from_millis(200), beats.next()).await.is_ok() {
                seen += 1;
            }
        }
        agent.stop().await;
        assert!(seen >= 2, "{seen} heartbeat(s) in 3.5 s: one unanswered held back the rest");
    }

    /// The gaps between the next `n` arrivals on `sub`, and the last one.
    async fn gaps(sub: &mut Subscription, n: usize) -> (Vec<Duration>, crate::transport::Message) {
        let mut m = sub.next().await.unwrap();
        let mut last = tokio::time::Instant::now();
        let mut gaps = vec![];
        for _ in 1..n {
            m = sub.next().await.unwrap();
            gaps.push(last.elapsed());
            last = tokio::time::Instant::now();
        }
        (gaps, m)
    }

    /// A report batch whose ack never comes (lost, or its dcmgr died) is sent again after
    /// ACK_WAIT, not after the 10 s of any request; the wait grows while batches go
    /// unanswered and is ACK_WAIT again after an ack.
    #[tokio::test(start_paused = true)]
    async fn a_lost_report_batch_goes_again_after_the_ack_wait() {
        let bus = InProc::new();
        let mut reg = bus.subscribe(subject::REGISTER).await.unwrap();
        let mut reports = bus.subscribe(subject::REPORT).await.unwrap();
        let sink = ReportSink::open(None).unwrap();
        let agent = start(bus.clone(), config(), sink.clone(), Arc::new(Idle)).await.unwrap();
        let m = reg.next().await.unwrap();
        let ok = Registered { heartbeat_interval_ms: 60_000 };
        bus.publish(&m.reply.unwrap(), bus::encode(&ok).into()).await.unwrap();
        let report = |n: u64| {
            sink.report(ObjectReport::Instance(vdc_schema::bus::InstanceReport {
                id: "i-1m91yyv9a00zht5".parse().unwrap(),
                spec_gen: n,
                state: vdc_schema::ObservedInstance::Running,
                reboot_gen: 0,
                volumes: vec![],
                reason: None,
            }))
        };
        report(1);
        let (unanswered, m) = gaps(&mut reports, 4).await;
        let within = |d: Duration, lo: u64| d >= Duration::from_secs(lo) && d < Duration::from_millis(lo * 1000 + 500);
        assert!(
            within(unanswered[0], 2) && within(unanswered[1], 4) && within(unanswered[2], 8),
            "waited {unanswered:?} for acks"
        );
        let batch: ReportBatch = bus::decode(&m.payload).unwrap();
        let seqs = batch.reports.iter().map(|r| r.seq).collect();
        bus.publish(&m.reply.unwrap(), bus::encode(&Ack { seqs }).into()).await.unwrap();
        report(2);
        let (again, _) = gaps(&mut reports, 2).await;
        assert!(within(again[0], 2), "after an ack, a lost batch waited {:?}", again[0]);
        agent.stop().await;
    }

    /// A handler whose commands leave work running for 200 ms.
    struct Slow(Arc<std::sync::atomic::AtomicBool>);

    #[async_trait]
    impl CommandHandler for Slow {
        async fn command(&self, _cmd: Command) -> Result<(), AgentError> {
            Ok(())
        }
        async fn drain(&self) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A stop waits for the work commands started: `vdc up` stopped right after a
    /// terminate cut nwagent's removal of the interface, its switch gone under it.
    #[tokio::test]
    async fn a_stop_waits_for_the_work_commands_started() {
        let bus = InProc::new();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = Arc::new(Slow(done.clone()));
        let agent = start(bus.clone(), config(), ReportSink::open(None).unwrap(), handler).await.unwrap();
        agent.stop().await;
        assert!(done.load(Ordering::SeqCst), "stop returned before the work ended");
    }
}
