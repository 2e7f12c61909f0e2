//! The agent's small HTTP server (`--metrics ADDR`): `GET /metrics`
//! (OpenMetrics text), `GET /healthz` (200 `ok`, or 503 with one line
//! saying why) and `GET /status` (JSON, what `wdguard status` prints).
//!
//! It answers a scraper and an operator, nothing else, so it is kept small
//! and bounded: HTTP/1 only, no keep-alive, request headers within 8 KiB and
//! 5 s, a whole connection within 10 s, at most 16 connections at once
//! (more are closed at once), GET and HEAD only, no request body read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wd_compute::Metrics;

const MAX_CONNECTIONS: usize = 16;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 8 * 1024;

fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .with_state(metrics)
}

async fn scrape(State(m): State<Metrics>) -> Response {
    (
        [(header::CONTENT_TYPE, wd_compute::metrics::CONTENT_TYPE)],
        m.encode(),
    )
        .into_response()
}

async fn healthz(State(m): State<Metrics>) -> Response {
    match m.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn status(State(m): State<Metrics>) -> Response {
    match serde_json::to_string(&m.status()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Binds `addr` and serves until the returned task is aborted. Binding
/// happens here, so a bad or busy address fails the agent's start.
pub async fn start(
    addr: &str,
    metrics: Metrics,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on `{addr}`"))?;
    let local = listener.local_addr().context("metrics listener address")?;
    tracing::info!(addr = %local, "serving /metrics, /healthz and /status");
    let app = router(metrics);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEADER_BYTES)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(slot);
            });
        }
    });
    Ok((local, task))
}
