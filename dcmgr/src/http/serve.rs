//! The Web API's accept loop: axum::serve's, with each connection admitted under
//! [`HttpConfig`]'s limits and one that sends no request head for a while closed. A
//! client holding 19,990 idle connections (or request heads sent a byte at a time) had
//! taken every descriptor of dcmgr (red team, 2026-12-06).

use crate::config::HttpConfig;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use vdc_bus::conn_limits::ConnLimits;

/// What a connection beyond the limits is told before it is closed.
static TOO_MANY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body =
        r#"{"error":{"code":"too_many_connections","message":"too many connections are open; try again later"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
         retry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Serves `app` on `listener` until `stop`, then lets the connections end their
/// requests (the caller bounds how long).
pub async fn serve(listener: tokio::net::TcpListener, app: Router, cfg: &HttpConfig, stop: CancellationToken) {
    let limits = ConnLimits::new(cfg.max_connections_per_source, cfg.max_connections());
    let header_timeout = Duration::from_secs(cfg.header_timeout_secs.max(1));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut refused_logged: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            let _ = stream.try_write(&TOO_MANY);
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                refused_logged = Some(std::time::Instant::now());
                tracing::warn!(%peer, open = limits.open(), "API: too many connections; refusing more (logged once per 10 s)");
            }
            continue;
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(req)
        });
        // HTTP/1.1 only: the automatic choice of HTTP/2 waited for a connection's first
        // bytes before the head's timeout could start, so an idle one stayed for good.
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = conn.await {
                tracing::trace!("API connection: {e}");
            }
        });
    }
    graceful.shutdown().await;
}
