//! The process's Prometheus metrics: one registry per process, so the all-in-one (`vdc up`:
//! dcmgr and every agent in one process) shows everything at dcmgr's `/metrics`, and a
//! separate agent serves the same registry at `--metrics-listen`.
//!
//! Only counters and fixed-bucket histograms live here (an atomic add on the hot path);
//! what is read from the database (objects by state, jobs) is computed by dcmgr at scrape
//! time and appended to [`render`]'s output. Labels are bounded sets (route templates,
//! subject kinds, operation names): never an ID.

use prometheus::proto::MetricFamily;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use std::future::Future;
use std::sync::LazyLock;
use std::time::Instant;

/// What a bus subject is, as a label: the node ID in an agent's subject is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    Register,
    Heartbeat,
    Report,
    HvaCommand,
    NwagentCommand,
    StaCommand,
    HvaQuery,
    NwagentQuery,
    StaQuery,
    /// The answer of a request (`_INBOX.…`).
    Reply,
    Other,
}

const SUBJECT_KINDS: [SubjectKind; 11] = [
    SubjectKind::Register,
    SubjectKind::Heartbeat,
    SubjectKind::Report,
    SubjectKind::HvaCommand,
    SubjectKind::NwagentCommand,
    SubjectKind::StaCommand,
    SubjectKind::HvaQuery,
    SubjectKind::NwagentQuery,
    SubjectKind::StaQuery,
    SubjectKind::Reply,
    SubjectKind::Other,
];

impl SubjectKind {
    pub fn of(subject: &str) -> SubjectKind {
        use vdc_schema::bus::subject;
        match subject {
            subject::REGISTER => return SubjectKind::Register,
            subject::HEARTBEAT => return SubjectKind::Heartbeat,
            subject::REPORT => return SubjectKind::Report,
            _ => {}
        }
        if let Some(rest) = subject.strip_prefix("vdc.agent.") {
            let query = rest.ends_with(".query");
            return match (rest.split('.').next(), query) {
                (Some("hva"), false) => SubjectKind::HvaCommand,
                (Some("nwagent"), false) => SubjectKind::NwagentCommand,
                (Some("sta"), false) => SubjectKind::StaCommand,
                (Some("hva"), true) => SubjectKind::HvaQuery,
                (Some("nwagent"), true) => SubjectKind::NwagentQuery,
                (Some("sta"), true) => SubjectKind::StaQuery,
                _ => SubjectKind::Other,
            };
        }
        if subject.starts_with("_INBOX.") {
            return SubjectKind::Reply;
        }
        SubjectKind::Other
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Register => "register",
            SubjectKind::Heartbeat => "heartbeat",
            SubjectKind::Report => "report",
            SubjectKind::HvaCommand => "hva_command",
            SubjectKind::NwagentCommand => "nwagent_command",
            SubjectKind::StaCommand => "sta_command",
            SubjectKind::HvaQuery => "hva_query",
            SubjectKind::NwagentQuery => "nwagent_query",
            SubjectKind::StaQuery => "sta_query",
            SubjectKind::Reply => "reply",
            SubjectKind::Other => "other",
        }
    }
}

/// Every series this process keeps.
pub struct Metrics {
    registry: Registry,
    /// dcmgr's Web API: `vdc_http_request_duration_seconds{method, route, status}`.
    pub http: HistogramVec,
    /// The agent runtime: `vdc_agent_command_duration_seconds{agent, command}` and errors.
    pub commands: HistogramVec,
    pub command_errors: IntCounterVec,
    /// Drivers' calls to the host: `vdc_driver_op_duration_seconds{driver, op}` and errors.
    pub driver_ops: HistogramVec,
    pub driver_errors: IntCounterVec,
    /// Resolved once, so counting a message is one atomic add.
    sent: Vec<IntCounter>,
    received: Vec<IntCounter>,
}

const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
const OP_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), labels)
        .expect("a valid histogram definition");
    r.register(Box::new(h.clone())).expect("each metric is registered once");
    h
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter definition");
    r.register(Box::new(c.clone())).expect("each metric is registered once");
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let http = histogram(
            &r,
            "vdc_http_request_duration_seconds",
            "dcmgr Web API requests by route template and status class",
            LATENCY_BUCKETS,
            &["method", "route", "status"],
        );
        let commands = histogram(
            &r,
            "vdc_agent_command_duration_seconds",
            "Commands (ensures) an agent carried out, by agent kind and command",
            OP_BUCKETS,
            &["agent", "command"],
        );
        let command_errors = counter(
            &r,
            "vdc_agent_command_errors_total",
            "Commands an agent failed to carry out",
            &["agent", "command"],
        );
        let driver_ops = histogram(
            &r,
            "vdc_driver_op_duration_seconds",
            "Drivers' operations on the host: libvirt calls, host tools (ovs-vsctl, tgtadm, qemu-img, …)",
            OP_BUCKETS,
            &["driver", "op"],
        );
        let driver_errors =
            counter(&r, "vdc_driver_op_errors_total", "Drivers' operations that failed", &["driver", "op"]);
        let bus = counter(
            &r,
            "vdc_bus_messages_total",
            "Bus messages this process sent or received, by subject kind",
            &["direction", "subject"],
        );
        let sent = SUBJECT_KINDS.iter().map(|k| bus.with_label_values(&["sent", k.as_str()])).collect();
        let received = SUBJECT_KINDS.iter().map(|k| bus.with_label_values(&["received", k.as_str()])).collect();
        Metrics { registry: r, http, commands, command_errors, driver_ops, driver_errors, sent, received }
    }

    fn index(kind: SubjectKind) -> usize {
        SUBJECT_KINDS.iter().position(|k| *k == kind).unwrap_or(SUBJECT_KINDS.len() - 1)
    }
}

/// Counts a message published (or a request sent) on `subject`.
pub fn bus_sent(subject: &str) {
    get().sent[Metrics::index(SubjectKind::of(subject))].inc();
}

/// Counts a message taken from a subscription on `subject` (or a reply received).
pub fn bus_received(subject: &str) {
    get().received[Metrics::index(SubjectKind::of(subject))].inc();
}

/// Records one driver operation that took `started.elapsed()`.
pub fn driver_op(driver: &str, op: &str, started: Instant, ok: bool) {
    let m = get();
    m.driver_ops.with_label_values(&[driver, op]).observe(started.elapsed().as_secs_f64());
    // Resolved on success too, so the error series exists (at 0) for every operation seen.
    let errors = m.driver_errors.with_label_values(&[driver, op]);
    if !ok {
        errors.inc();
    }
}

/// Times a synchronous driver call.
pub fn time_driver<T, E>(driver: &str, op: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let started = Instant::now();
    let r = f();
    driver_op(driver, op, started, r.is_ok());
    r
}

/// Times an agent command.
pub async fn time_command<T, E>(agent: &str, command: &str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    let started = Instant::now();
    let r = f.await;
    let m = get();
    m.commands.with_label_values(&[agent, command]).observe(started.elapsed().as_secs_f64());
    let errors = m.command_errors.with_label_values(&[agent, command]);
    if r.is_err() {
        errors.inc();
    }
    r
}

/// The text exposition of this process's registry followed by `extra` (what dcmgr reads
/// at scrape time).
pub fn render(extra: Vec<MetricFamily>) -> String {
    let mut families = get().registry.gather();
    families.extend(extra);
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a family without metrics, which gather() drops.
    if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
        tracing::warn!("encoding metrics: {e}");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` (this process's registry) on `addr` for as long as the process
/// runs: an agent's `--metrics-listen`. Returns the bound address (port 0 picks one).
pub async fn serve(addr: &str) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render(Vec::new())) }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server failed: {e}");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_kinds_drop_node_ids() {
        assert_eq!(SubjectKind::of("vdc.agent.hva.hn-1234"), SubjectKind::HvaCommand);
        assert_eq!(SubjectKind::of("vdc.agent.sta.sn-1.query"), SubjectKind::StaQuery);
        assert_eq!(SubjectKind::of("vdc.dcmgr.report"), SubjectKind::Report);
        assert_eq!(SubjectKind::of("_INBOX.17"), SubjectKind::Reply);
        assert_eq!(SubjectKind::of("elsewhere"), SubjectKind::Other);
    }

    #[test]
    fn counted_messages_appear_in_the_text_format() {
        bus_sent("vdc.agent.nwagent.hn-9");
        let text = render(Vec::new());
        let line = text
            .lines()
            .find(|l| l.starts_with("vdc_bus_messages_total{direction=\"sent\",subject=\"nwagent_command\"}"))
            .expect("the series is rendered");
        assert!(!line.ends_with(" 0"), "{line}");
        assert!(!text.contains("hn-9"));
    }
}
