//! The agent's small HTTP server (`--metrics ADDR`, and the local socket
//! `--status-socket PATH`): `GET /metrics` (OpenMetrics text), `GET
//! /healthz` (200 `ok`, or 503 with one line saying why) and `GET /status`
//! (JSON, what `wdguard status` prints).
//!
//! On the local socket only, `POST /queue/drain?name=NAME` and `POST
//! /queue/drop?name=NAME` (no body; `wdguard queue drain|drop`) deliver or
//! drop the backlog of a removed or orphaned destination. They change the
//! agent, so the TCP address, which may be off-host, refuses them (403).
//!
//! **What leaves the host.** `/metrics` carries no project id, URL or error
//! text. `/status` (destination names, last error texts) and the reason of
//! an unhealthy `/healthz` are tenant details: they are answered only to a
//! loopback peer and on the local socket (mode 0660: root and the agent's
//! group). Any other peer gets 403 for `/status` and a bare `unhealthy` from
//! `/healthz`.
//!
//! **Slow clients.** It answers a scraper and an operator, nothing else, so
//! it is kept small and bounded: HTTP/1 only, no keep-alive, request headers
//! within 8 KiB and 5 s, no request body (413), a whole connection within
//! 10 s, at most 16 connections at once and 4 per client address. When a
//! bound is reached, the oldest connection that has not yet sent its whole
//! request (of that client, or of anyone when the server is full) is closed
//! to make room: a slow client delays only itself, never a scrape that
//! sends its request at once.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Notify;
use wd_compute::Metrics;

const MAX_CONNECTIONS: usize = 16;
const MAX_PER_CLIENT: usize = 4;
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The port `--metrics` uses when given a bare port, and the address when
/// given nothing but `--metrics` in the config.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9187";

/// What an operator asks of a removed destination's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOp {
    /// Deliver it, then close the queue.
    Drain,
    /// Delete it.
    Drop,
}

/// One `POST /queue/…` from the local socket, for the agent's main loop;
/// `reply` carries the JSON answer or the one-line refusal.
pub struct ControlRequest {
    pub op: QueueOp,
    pub name: String,
    pub reply: tokio::sync::oneshot::Sender<std::result::Result<serde_json::Value, String>>,
}

/// Where the local socket sends its control requests.
pub type Control = tokio::sync::mpsc::Sender<ControlRequest>;

/// Who is asking: tenant details go to local peers only, and control
/// requests come from the local socket only (`control` is `None` on TCP).
#[derive(Clone)]
struct App {
    metrics: Metrics,
    local: bool,
    control: Option<Control>,
}

fn router(metrics: Metrics, local: bool, control: Option<Control>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .route(
            "/queue/drain",
            post(|app, uri| queue(app, uri, QueueOp::Drain)),
        )
        .route(
            "/queue/drop",
            post(|app, uri| queue(app, uri, QueueOp::Drop)),
        )
        .with_state(App {
            metrics,
            local,
            control,
        })
}

/// The longest destination name a control request may carry.
const MAX_NAME: usize = 256;

async fn queue(State(app): State<App>, uri: axum::http::Uri, op: QueueOp) -> Response {
    let refuse = |code, text: String| (code, format!("{text}\n")).into_response();
    let Some(control) = app.control else {
        return refuse(
            StatusCode::FORBIDDEN,
            "/queue/drain and /queue/drop change the agent and answer only on its local socket (--status-socket)".to_owned(),
        );
    };
    let name = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "name")
        .map(|(_, v)| v.into_owned());
    let name = match name {
        Some(n) if !n.is_empty() && n.len() <= MAX_NAME => n,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "give the destination as ?name=DIR (its queue directory as `wdguard status --format json` shows it, or its name), percent-encoded, at most {MAX_NAME} bytes"
                ),
            );
        }
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if control
        .send(ControlRequest { op, name, reply })
        .await
        .is_err()
    {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".to_owned(),
        );
    }
    match answer.await {
        Ok(Ok(v)) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Ok(Err(why)) => refuse(StatusCode::CONFLICT, why),
        Err(_) => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is stopping".to_owned(),
        ),
    }
}

async fn scrape(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, wd_compute::metrics::CONTENT_TYPE)],
        app.metrics.encode(),
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    match app.metrics.health() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        // The reason may name a destination: local peers only.
        Err(why) if app.local => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy\n").into_response(),
    }
}

async fn status(State(app): State<App>) -> Response {
    if !app.local {
        return (
            StatusCode::FORBIDDEN,
            "/status holds tenant details and answers only on loopback and the agent's local socket (--status-socket)\n",
        )
            .into_response();
    }
    match serde_json::to_string(&app.metrics.status()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `--metrics ADDR`: `IP:PORT`, or a bare port on loopback.
pub fn parse_addr(addr: &str) -> Result<SocketAddr> {
    if let Ok(port) = addr.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    addr.parse().with_context(|| {
        format!("metrics address `{addr}` is not valid; allowed: IP:PORT (e.g. {DEFAULT_ADDR}, [::1]:9187, or 0.0.0.0:9187 to serve off-host) or a bare port on loopback")
    })
}

/// One open connection in the [`Table`].
struct Conn {
    id: u64,
    peer: Option<IpAddr>,
    /// Set once its whole request head has arrived.
    answered: Arc<AtomicBool>,
    close: Arc<Notify>,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    conns: Mutex<Vec<Conn>>,
    next: AtomicU64,
}

impl Table {
    /// Admits a connection from `peer`, closing the oldest one still
    /// sending its request when a bound is reached; `None` when every
    /// connection in the way is already being answered.
    fn admit(&self, peer: Option<IpAddr>) -> Option<(u64, Arc<AtomicBool>, Arc<Notify>)> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let same = |c: &Conn| peer.is_some() && c.peer == peer;
        let pending = |c: &Conn| !c.answered.load(Ordering::Relaxed);
        let victim = if conns.iter().filter(|c| same(c)).count() >= MAX_PER_CLIENT {
            Some(conns.iter().position(|c| same(c) && pending(c)))
        } else if conns.len() >= MAX_CONNECTIONS {
            Some(conns.iter().position(pending))
        } else {
            None
        };
        match victim {
            Some(None) => return None,
            Some(Some(i)) => {
                let old = conns.remove(i);
                old.close.notify_one();
            }
            None => {}
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let answered = Arc::new(AtomicBool::new(false));
        let close = Arc::new(Notify::new());
        conns.push(Conn {
            id,
            peer,
            answered: answered.clone(),
            close: close.clone(),
        });
        Some((id, answered, close))
    }

    fn remove(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c.id != id);
    }
}

/// Serves one connection within the bounds, on `app`.
fn serve_one<S>(table: &Arc<Table>, app: &Router, peer: Option<IpAddr>, stream: S)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some((id, answered, close)) = table.admit(peer) else {
        drop(stream);
        return;
    };
    let inner = TowerToHyperService::new(app.clone());
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        answered.store(true, Ordering::Relaxed);
        let inner = inner.clone();
        async move {
            // GET and HEAD carry no body; a client that sends one would
            // hold the connection while it trickles in.
            let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
            let length = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() != b"0");
            if chunked || length {
                return Ok((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "no request body is accepted\n",
                )
                    .into_response());
            }
            hyper::service::Service::call(&inner, req).await
        }
    });
    let table = table.clone();
    tokio::spawn(async move {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_HEADER_BYTES)
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service);
        tokio::select! {
            _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
            () = close.notified() => {}
        }
        table.remove(id);
    });
}

/// Binds `addr` and serves until the returned task is aborted. Binding
/// happens here, so a bad or busy address fails the agent's start.
pub async fn start(
    addr: &str,
    metrics: Metrics,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bind = parse_addr(addr)?;
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen for metrics on `{addr}`"))?;
    let local = listener.local_addr().context("metrics listener address")?;
    if local.ip().is_loopback() {
        tracing::info!(addr = %local, "serving /metrics, /healthz and /status");
    } else {
        tracing::warn!(addr = %local,
            "serving /metrics and /healthz off-host: anyone who can reach this address may scrape them (no tenant details; /status answers loopback only); limit it with a firewall or a TLS proxy, see the README");
    }
    let local_app = router(metrics.clone(), true, None);
    let remote_app = router(metrics, false, None);
    let table = Arc::new(Table::default());
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let app = if peer.ip().is_loopback() {
                        &local_app
                    } else {
                        &remote_app
                    };
                    serve_one(&table, app, Some(peer.ip()), stream);
                }
                Err(e) => {
                    // Out of file descriptors and the like: pause, do not spin.
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    Ok((local, task))
}

/// Serves the same endpoints, tenant details included, on the Unix socket
/// `path`, mode 0660 (root and the agent's group), until the task is
/// aborted; its control requests go to `control`. A stale socket file from
/// an earlier run is replaced.
pub async fn start_unix(
    path: &Path,
    metrics: Metrics,
    control: Control,
) -> Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(m) = std::fs::symlink_metadata(path)
        && m.file_type().is_socket()
    {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the status socket `{}`", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of `{}`", path.display()))?;
    tracing::info!(path = %path.display(), "serving /metrics, /healthz and /status on the local socket");
    let app = router(metrics, true, Some(control));
    let table = Arc::new(Table::default());
    let path: PathBuf = path.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => serve_one(&table, &app, None, stream),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "status socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests;
