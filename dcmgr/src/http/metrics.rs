//! `GET /metrics`: the Prometheus text format, outside `/api/v1` (it is for the operator's
//! Prometheus, not for tenants, and not in the OpenAPI document). Open by default, as
//! Prometheus expects; with `[metrics] token` it wants `Authorization: Bearer <token>`
//! (Prometheus' `authorization` setting). It shows counts and latencies, never an ID.
//!
//! The process's counters and histograms (`vdc_bus::metrics`: API latency, bus messages,
//! and, in the all-in-one, every agent's commands and driver calls) are followed by what
//! this dcmgr reads at scrape time: objects by kind and state (one GROUP BY per kind),
//! agents online, the work queue, running jobs and the age of the oldest, how its
//! instance reads were answered (the read model in memory, or SQL) and how its creates
//! were committed (together or alone).

use crate::ctx::SharedCtx;
use crate::error::ApiError;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};
use vdc_schema::bus::AgentKind;

/// Times every routed request by its route template (`/api/v1/instances/{id}`), so no ID
/// becomes a label. Requests no route matches are not timed (the fallback answers them).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let method = req.method().clone();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    if let Some(route) = route {
        let class = match res.status().as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        vdc_bus::metrics::get()
            .http
            .with_label_values(&[method.as_str(), &route, class])
            .observe(started.elapsed().as_secs_f64());
    }
    res
}

pub async fn serve(State(ctx): State<SharedCtx>, headers: HeaderMap) -> Result<Response, ApiError> {
    if let Some(want) = &ctx.config.metrics.token {
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim);
        // Compared as digests, so the time taken does not tell how much of it matched.
        use sha2::{Digest, Sha256};
        if got.map(|g| Sha256::digest(g.as_bytes())) != Some(Sha256::digest(want.as_bytes())) {
            return Err(ApiError::Unauthorized(
                "/metrics wants 'Authorization: Bearer <token>' with dcmgr's [metrics] token".into(),
            ));
        }
    }
    let families = scrape(&ctx).await?;
    Ok(([(header::CONTENT_TYPE, vdc_bus::metrics::CONTENT_TYPE)], vdc_bus::metrics::render(families)).into_response())
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge definition");
    r.register(Box::new(g.clone())).expect("registered once per scrape");
    g
}

/// A counter this process keeps itself, shown as it is now: one series per label value.
fn counts<const N: usize>(r: &Registry, name: &str, help: &str, label: &str, values: [(&str, u64); N]) {
    let c = prometheus::IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid counter definition");
    r.register(Box::new(c.clone())).expect("registered once per scrape");
    for (v, n) in values {
        c.with_label_values(&[v]).inc_by(n);
    }
}

/// This dcmgr's gauges, read now into a registry of the scrape's own (several dcmgrs in
/// one test process each show their own model).
async fn scrape(ctx: &SharedCtx) -> Result<Vec<MetricFamily>, ApiError> {
    let r = Registry::new();
    let objects = gauge(&r, "vdc_objects", "Objects by kind and state", &["kind", "state"]);
    for (kind, state, n) in crate::datastore::metrics::objects_by_state(&ctx.db).await? {
        objects.with_label_values(&[kind, &state]).set(n);
    }
    let agents = gauge(&r, "vdc_agents", "Agents dcmgr knows, by kind and whether online", &["kind", "status"]);
    for kind in [AgentKind::Hva, AgentKind::Nwagent, AgentKind::Sta] {
        for status in ["online", "offline"] {
            agents.with_label_values(&[kind.as_str(), status]).set(0);
        }
    }
    for ((kind, _), seen) in ctx.agents.read().unwrap().iter() {
        agents.with_label_values(&[kind.as_str(), if seen.offline { "offline" } else { "online" }]).inc();
    }
    let queue = gauge(&r, "vdc_work_queue_depth", "Objects queued for an ensure, not yet taken by a dispatcher", &[]);
    queue.with_label_values(&[] as &[&str]).set(ctx.queued.lock().unwrap().len() as i64);
    gauge(&r, "vdc_dcmgr_leader", "1 if this dcmgr does the once-only duties (reconciling, agents' states)", &[])
        .with_label_values(&[] as &[&str])
        .set(ctx.is_leader() as i64);
    let (running, oldest) = crate::datastore::metrics::running_jobs(&ctx.db).await?;
    gauge(&r, "vdc_jobs_running", "Jobs not yet ended: intent not yet reached", &[])
        .with_label_values(&[] as &[&str])
        .set(running);
    // The reconcile lag: how long the oldest unconverged object has been waiting.
    let lag_ms = oldest
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds().max(0))
        .unwrap_or(0);
    let lag = prometheus::GaugeVec::new(
        Opts::new("vdc_reconcile_lag_seconds", "Age of the oldest running job (0 when none runs)"),
        &[],
    )
    .expect("a valid gauge definition");
    r.register(Box::new(lag.clone())).expect("registered once per scrape");
    lag.with_label_values(&[] as &[&str]).set(lag_ms as f64 / 1000.0);
    let (memory, sql) = ctx.views.reads();
    counts(
        &r,
        "vdc_instance_reads_total",
        "Instance GETs and lists answered from the read model in memory or from SQL",
        "source",
        [("memory", memory), ("sql", sql)],
    );
    let (shared, own) = ctx.creates.recorded();
    counts(
        &r,
        "vdc_instance_creates_recorded_total",
        "Instance creates committed in a transaction shared with others waiting for SQLite's writer, or in their own",
        "transaction",
        [("shared", shared), ("own", own)],
    );
    Ok(r.gather())
}
