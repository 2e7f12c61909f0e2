//! A webhook receiver on 127.0.0.1 that verifies every request's signature
//! exactly as the Standard Webhooks specification says, records the
//! CloudEvents it accepts, and can be told to fail.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::Value;
use tokio::sync::Notify;
use wd_notify_webhook::{DEFAULT_TOLERANCE, Secret, verify};

/// One signed request the receiver verified.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path (one path per simulated project endpoint).
    pub path: String,
    /// The verified `webhook-id` header.
    pub webhook_id: String,
    /// The parsed CloudEvent.
    pub event: Value,
    /// When the request arrived, taken before anything else (for latency
    /// measurements against another clock, such as `virsh event`'s).
    pub received_at: SystemTime,
}

impl Received {
    /// The notification (`data`) of the CloudEvent.
    pub fn data(&self) -> &Value {
        &self.event["data"]
    }

    /// `data.event_id`, or `""`.
    pub fn event_id(&self) -> &str {
        self.data()["event_id"].as_str().unwrap_or_default()
    }

    /// `data.instance.uuid`, or `""`.
    pub fn instance_uuid(&self) -> &str {
        self.data()["instance"]["uuid"].as_str().unwrap_or_default()
    }

    /// `data.domain.name`, or `""`.
    pub fn domain_name(&self) -> &str {
        self.data()["domain"]["name"].as_str().unwrap_or_default()
    }

    /// `data.domain.id` (libvirt's runtime id of the domain run), if given.
    pub fn run_id(&self) -> Option<u64> {
        self.data()["domain"]["id"].as_u64()
    }

    /// `data.occurrences.count`, or 0.
    pub fn count(&self) -> u64 {
        self.data()["occurrences"]["count"]
            .as_u64()
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    accepted: Mutex<Vec<Received>>,
    refused: Mutex<Vec<Received>>,
    rejected_signatures: Mutex<u32>,
    failed_on_purpose: Mutex<u32>,
    changed: Notify,
}

/// The running receiver; it stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1 (any free port) that accepts requests
    /// signed with `secret`.
    pub async fn start(secret: &str) -> anyhow::Result<Receiver> {
        Self::start_with(secret, &[]).await
    }

    /// Starts a receiver whose endpoint `path` accepts only requests signed
    /// with its own secret, for each `(path, secret)` in `per_path`; every
    /// other path accepts requests signed with `secret`.
    pub async fn start_with(secret: &str, per_path: &[(&str, &str)]) -> anyhow::Result<Receiver> {
        let default = Arc::new(vec![Secret::parse(secret)?]);
        let mut by_path = HashMap::new();
        for (path, s) in per_path {
            by_path.insert((*path).to_owned(), Arc::new(vec![Secret::parse(s)?]));
        }
        let by_path = Arc::new(by_path);
        let status = Arc::new(AtomicU16::new(200));
        let state = Arc::new(State::default());
        let (st, sts) = (state.clone(), status.clone());
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let received_at = SystemTime::now();
            let (state, status) = (st.clone(), sts.clone());
            let secrets = by_path
                .get(uri.path())
                .cloned()
                .unwrap_or_else(|| default.clone());
            async move {
                let Ok(verified) = verify(&headers, &body, &secrets, DEFAULT_TOLERANCE) else {
                    *state.rejected_signatures.lock().unwrap() += 1;
                    state.changed.notify_waiters();
                    return StatusCode::UNAUTHORIZED;
                };
                let Ok(event) = serde_json::from_slice::<Value>(&body) else {
                    return StatusCode::BAD_REQUEST;
                };
                let got = Received {
                    path: uri.path().to_owned(),
                    webhook_id: verified.id,
                    event,
                    received_at,
                };
                let code = status.load(Ordering::SeqCst);
                if code != 200 {
                    *state.failed_on_purpose.lock().unwrap() += 1;
                    state.refused.lock().unwrap().push(got);
                    state.changed.notify_waiters();
                    return StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                }
                state.accepted.lock().unwrap().push(got);
                state.changed.notify_waiters();
                StatusCode::NO_CONTENT
            }
        };
        let app = axum::Router::new().route("/{*path}", post(handler));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            addr,
            status,
            state,
            task,
        })
    }

    /// The URL of endpoint `path` (e.g. `/project-a`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Makes every request fail with `code` (e.g. 503) until set back to 200.
    /// Signatures are still verified first: a badly signed request is
    /// counted as such, a well signed one is recorded as refused.
    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Everything accepted so far.
    pub fn accepted(&self) -> Vec<Received> {
        self.state.accepted.lock().unwrap().clone()
    }

    /// Correctly signed requests refused on purpose (see
    /// [`Receiver::set_status`]).
    pub fn refused(&self) -> Vec<Received> {
        self.state.refused.lock().unwrap().clone()
    }

    /// Requests refused because their signature did not verify.
    pub fn rejected_signatures(&self) -> u32 {
        *self.state.rejected_signatures.lock().unwrap()
    }

    /// Requests failed on purpose (see [`Receiver::set_status`]).
    pub fn failed_on_purpose(&self) -> u32 {
        *self.state.failed_on_purpose.lock().unwrap()
    }

    /// Waits until `pred` holds for the accepted requests, or `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            let now = self.accepted();
            if pred(&now) || Instant::now() >= deadline {
                return now;
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    /// Waits until `pred` holds for the refused requests, or `timeout`.
    pub async fn wait_for_refused(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.state.changed.notified();
            let now = self.refused();
            if pred(&now) || Instant::now() >= deadline {
                return now;
            }
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wd_notify_webhook::sign;

    const A: &str = "whsec_d2QtZTJlIHByb2plY3QgQSBzZWNyZXQgMzIgYnl0ZXM=";
    const OPS: &str = "whsec_d2QtZTJlIG9wZXJhdG9yIHNlY3JldCAzMiBieXRlcyE=";
    const BODY: &str = r#"{"id":"e-1","data":{"event_id":"e-1"}}"#;

    /// POSTs `BODY` to `path`, signed with `secret` (or unsigned), and
    /// returns the status code.
    async fn post(r: &Receiver, path: &str, secret: Option<&str>) -> u16 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut headers = String::new();
        if let Some(s) = secret {
            let sig = sign("e-1", now, BODY.as_bytes(), &[Secret::parse(s).unwrap()]);
            headers = format!(
                "webhook-id: e-1\r\nwebhook-timestamp: {now}\r\nwebhook-signature: {sig}\r\n"
            );
        }
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{BODY}",
            r.addr,
            BODY.len()
        );
        let mut stream = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn each_path_accepts_only_its_own_secret_and_outages_refuse_signed_requests() {
        let r = Receiver::start_with(OPS, &[("/project-a", A)])
            .await
            .unwrap();
        let check = |path: &'static str, secret: Option<&'static str>, expected: u16| {
            let r = &r;
            async move {
                assert_eq!(post(r, path, secret).await, expected, "{path} {secret:?}");
            }
        };
        check("/project-a", Some(A), 204).await;
        check("/project-a", Some(OPS), 401).await;
        check("/ops", Some(OPS), 204).await;
        check("/ops", Some(A), 401).await;
        check("/ops", None, 401).await;
        r.set_status(503);
        check("/ops", Some(OPS), 503).await;
        check("/ops", Some(A), 401).await;

        let accepted = r.accepted();
        assert_eq!(
            accepted.iter().map(|x| x.path.as_str()).collect::<Vec<_>>(),
            ["/project-a", "/ops"]
        );
        assert_eq!(accepted[0].webhook_id, "e-1");
        assert_eq!(accepted[0].event_id(), "e-1");
        assert_eq!(r.rejected_signatures(), 4);
        assert_eq!(r.failed_on_purpose(), 1);
        assert_eq!(r.refused().len(), 1);
    }
}
