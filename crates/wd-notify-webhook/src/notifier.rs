//! The webhook [`Notifier`]: delivery, outcomes, and per-endpoint bookkeeping.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use time::OffsetDateTime;
use uuid::Uuid;
use wd_notify::{BoxError, Notification, Notifier, NotifyError};

use crate::config::{Endpoint, Routes, Target, WebhookConfig, display_url};
use crate::error::{Error, Result};
use crate::event;
use crate::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::tls::TlsCache;

/// How many (event, endpoint) outcomes are remembered, so that a retried
/// notification is not sent again to endpoints that already took it.
const LEDGER_CAPACITY: usize = 16_384;

/// Delivers notifications as signed CloudEvents to the owner's endpoints and
/// the operator's.
///
/// One `notify` sends to every endpoint the owner is routed to, concurrently.
/// It succeeds when all of them accepted the event. When some fail, the error
/// is retryable if any failure was, and a retried `notify` of the same event
/// sends only to the endpoints that have not yet answered for good (accepted
/// or permanently refused), so receivers see few duplicates; they must still
/// deduplicate on the event id, because delivery is at least once.
///
/// A notification whose owner has no endpoint and that has no operator
/// endpoint to go to is not an error: the webhook channel simply has no
/// subscriber for it (it is logged at debug level).
pub struct WebhookNotifier {
    routes: Routes,
    service: String,
    ledger: Mutex<Ledger>,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("routes", &self.routes)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// Validates `config` and builds the notifier.
    pub fn new(config: WebhookConfig) -> Result<Self> {
        Self::with_tls(config, &mut TlsCache::default())
    }

    fn with_tls(config: WebhookConfig, tls: &mut TlsCache) -> Result<Self> {
        event::check_service(&config.service)?;
        if config.timeout.is_zero() {
            return Err(Error::InvalidTimeout);
        }
        let routes = Routes::new(&config, tls)?;
        Ok(WebhookNotifier {
            routes,
            service: config.service,
            ledger: Mutex::new(Ledger::default()),
        })
    }

    /// Splits `config` into one notifier per endpoint, each with its own
    /// HTTP client (and connection pool), so that each endpoint can have
    /// its own queue and worker and a hostile endpoint delays no other.
    /// Routing is unchanged: each notifier still sends only to its own
    /// endpoint, and only for its owner's notifications.
    ///
    /// # Errors
    ///
    /// As [`WebhookNotifier::new`], for the whole configuration.
    pub fn split(config: WebhookConfig) -> Result<Vec<WebhookEndpoint>> {
        // One TLS configuration per distinct setting for all of them: the
        // system trust store is held once, however many endpoints.
        let mut tls = TlsCache::default();
        // Validates every endpoint first, so that an error names the first bad one.
        WebhookNotifier::with_tls(config.clone(), &mut tls)?;
        let mut single = |operator: Vec<Endpoint>, projects: BTreeMap<String, Vec<Endpoint>>| {
            WebhookNotifier::with_tls(
                WebhookConfig {
                    operator,
                    projects,
                    ..config.clone()
                },
                &mut tls,
            )
        };
        let mut out = Vec::new();
        for e in &config.operator {
            out.push(WebhookEndpoint {
                project: None,
                shown: display_url(&e.url),
                fingerprint: fingerprint(None, &e.url),
                notifier: single(vec![e.clone()], BTreeMap::new())?,
            });
        }
        for (project, endpoints) in &config.projects {
            for e in endpoints {
                let mut map = BTreeMap::new();
                map.insert(project.clone(), vec![e.clone()]);
                out.push(WebhookEndpoint {
                    project: Some(project.clone()),
                    shown: display_url(&e.url),
                    fingerprint: fingerprint(Some(project), &e.url),
                    notifier: single(Vec::new(), map)?,
                });
            }
        }
        Ok(out)
    }

    /// Whether a notification owned by `project` has any endpoint to go to
    /// here (the operator's, or that project's own). When it has none,
    /// `notify` succeeds without sending anything.
    pub fn routes(&self, project: Option<&str>) -> bool {
        !self.routes.targets_for(project).is_empty()
    }

    /// The request body `notify` sends for `n`.
    pub fn body(&self, n: &Notification) -> Vec<u8> {
        event::body(n, &self.service)
    }

    async fn deliver(&self, target: &Target, id: &str, body: &[u8]) -> Outcome {
        if target.is_gone() {
            return Outcome::Rejected(format!(
                "{} {}: disabled after 410 Gone",
                target.owner, target.shown
            ));
        }
        let timestamp = unix_now();
        let signature = signing::sign(id, timestamp, body, &target.secrets);
        let response = target
            .client
            .post(target.url.clone())
            .header(CONTENT_TYPE, event::CONTENT_TYPE)
            .header(
                USER_AGENT,
                concat!("wd-notify-webhook/", env!("CARGO_PKG_VERSION")),
            )
            .header(HEADER_ID, id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .body(body.to_vec())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                // `without_url`: the URL may carry credentials.
                let e = e.without_url();
                if let Some(problem) = crate::tls::certificate_problem(&e) {
                    // Retryable: the fix is configuration (a CA file, a
                    // renewed certificate), and the entry must wait for it.
                    return Outcome::Retry {
                        message: format!(
                            "{} {}: tls certificate error: {problem}",
                            target.owner, target.shown
                        ),
                        retry_after: None,
                        source: Some(Box::new(wd_notify::CertificateError::new(
                            problem,
                            Some(Box::new(e)),
                        ))),
                    };
                }
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                return Outcome::Retry {
                    message: format!("{} {}: {what}", target.owner, target.shown),
                    retry_after: None,
                    source: Some(Box::new(e)),
                };
            }
        };
        let status = response.status();
        let described = format!("{} {}: {status}", target.owner, target.shown);
        match classify(status) {
            Class::Delivered => Outcome::Delivered,
            Class::Retry => Outcome::Retry {
                message: described,
                retry_after: retry_after(response.headers(), SystemTime::now()),
                source: None,
            },
            Class::Gone => {
                target.mark_gone();
                tracing::warn!(
                    owner = %target.owner,
                    url = %target.shown,
                    "webhook endpoint answered 410 Gone; it is disabled until restart"
                );
                Outcome::Rejected(described)
            }
            Class::Reject => Outcome::Rejected(described),
        }
    }
}

/// One endpoint of a split configuration ([`WebhookNotifier::split`]).
#[derive(Debug)]
#[non_exhaustive]
pub struct WebhookEndpoint {
    /// `None` for an operator endpoint (every notification), else the
    /// project whose notifications it receives.
    pub project: Option<String>,
    /// The URL for logs and status: scheme, host, port and a short hash
    /// ([`display_url`](crate::display_url)), never path or query.
    pub shown: String,
    /// A stable identity: hex SHA-256 of the owner and the full URL. The URL
    /// (and any credential in it) cannot be recovered from it, so it may name
    /// files and directories.
    pub fingerprint: String,
    /// The notifier for this endpoint alone.
    pub notifier: WebhookNotifier,
}

fn fingerprint(project: Option<&str>, url: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    match project {
        None => h.update(b"operator\0"),
        Some(p) => {
            h.update(b"project\0");
            h.update(p.as_bytes());
            h.update(b"\0");
        }
    }
    h.update(url.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, n: &Notification) -> Result<(), NotifyError> {
        let project = n.instance.project_id.as_deref();
        let targets = self.routes.targets_for(project);
        if targets.is_empty() {
            tracing::debug!(
                event_id = %n.event_id,
                project = project.unwrap_or("<none>"),
                "no webhook endpoint for this owner and no operator endpoint"
            );
            return Ok(());
        }
        let id = n.event_id.to_string();
        let body = self.body(n);

        let mut pending = Vec::new();
        let mut rejected = Vec::new();
        {
            let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for &(index, target) in &targets {
                match ledger.get(n.event_id, index) {
                    Some(Final::Delivered) => {}
                    Some(Final::Rejected(why)) => rejected.push(why.clone()),
                    None => pending.push((index, target)),
                }
            }
        }

        let outcomes = futures::future::join_all(
            pending
                .iter()
                .map(|&(_, target)| self.deliver(target, &id, &body)),
        )
        .await;

        let mut retry = Vec::new();
        let mut retry_after: Option<Duration> = None;
        let mut first_source: Option<BoxError> = None;
        {
            let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            for (&(index, target), outcome) in pending.iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => {
                        tracing::debug!(event_id = %n.event_id, owner = %target.owner, url = %target.shown, "webhook delivered");
                        ledger.put(n.event_id, index, Final::Delivered);
                    }
                    Outcome::Rejected(why) => {
                        ledger.put(n.event_id, index, Final::Rejected(why.clone()));
                        rejected.push(why);
                    }
                    Outcome::Retry {
                        message,
                        retry_after: after,
                        source,
                    } => {
                        retry.push(message);
                        retry_after = retry_after.max(after);
                        if first_source.is_none() {
                            first_source = source;
                        }
                    }
                }
            }
        }

        if !retry.is_empty() {
            let mut failures = retry;
            failures.extend(rejected.iter().map(|r| format!("{r} (not retried)")));
            return Err(NotifyError::Retryable {
                message: format!(
                    "webhook delivery of event {} failed: {}",
                    n.event_id,
                    failures.join("; ")
                ),
                retry_after,
                source: first_source,
            });
        }
        if !rejected.is_empty() {
            return Err(NotifyError::Permanent {
                message: format!(
                    "webhook delivery of event {} refused: {}",
                    n.event_id,
                    rejected.join("; ")
                ),
                source: None,
            });
        }
        Ok(())
    }
}

enum Outcome {
    Delivered,
    Retry {
        message: String,
        retry_after: Option<Duration>,
        source: Option<BoxError>,
    },
    Rejected(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Delivered,
    Rejected(String),
}

/// A bounded memory of final per-endpoint outcomes, oldest forgotten first.
#[derive(Default)]
struct Ledger {
    outcomes: HashMap<(Uuid, usize), Final>,
    order: VecDeque<(Uuid, usize)>,
}

impl Ledger {
    fn get(&self, event: Uuid, target: usize) -> Option<&Final> {
        self.outcomes.get(&(event, target))
    }

    fn put(&mut self, event: Uuid, target: usize, outcome: Final) {
        if self.outcomes.insert((event, target), outcome).is_none() {
            self.order.push_back((event, target));
            while self.order.len() > LEDGER_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.outcomes.remove(&old);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Delivered,
    Retry,
    Gone,
    Reject,
}

/// What a response status means for delivery.
fn classify(status: StatusCode) -> Class {
    match status.as_u16() {
        200..=299 => Class::Delivered,
        // 408 is the receiver timing out on us: as retryable as our own timeout.
        408 | 429 | 500..=599 => Class::Retry,
        410 => Class::Gone,
        _ => Class::Reject,
    }
}

/// The wait a `Retry-After` header asks for: delay-seconds, or an HTTP date
/// (IMF-fixdate, the form RFC 9110 requires senders to use). A date in the
/// past means no wait.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let at = time::PrimitiveDateTime::parse(value, &format)
        .ok()?
        .assume_utc();
    let now = OffsetDateTime::from(now);
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn statuses() {
        let cases = [
            (200, Class::Delivered),
            (204, Class::Delivered),
            (299, Class::Delivered),
            (301, Class::Reject),
            (400, Class::Reject),
            (401, Class::Reject),
            (404, Class::Reject),
            (408, Class::Retry),
            (410, Class::Gone),
            (413, Class::Reject),
            (429, Class::Retry),
            (500, Class::Retry),
            (502, Class::Retry),
            (503, Class::Retry),
            (504, Class::Retry),
        ];
        for (code, expected) in cases {
            assert_eq!(
                classify(StatusCode::from_u16(code).unwrap()),
                expected,
                "{code}"
            );
        }
    }

    #[test]
    fn retry_after_values() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let cases = [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:50:07 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("soon", None),
            ("Sunday, 06-Nov-94 08:49:37 GMT", None),
        ];
        for (value, expected) in cases {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, HeaderValue::from_static(value));
            assert_eq!(retry_after(&h, now), expected, "{value}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn invalid_settings_are_rejected() {
        let cases = [
            (
                WebhookConfig::default().with_timeout(Duration::ZERO),
                "webhook timeout must be more than zero; the specification recommends 15 to 30 s",
            ),
            (
                WebhookConfig::default().with_service("wd ctl"),
                "service name `wd ctl` is not valid; allowed: 1 to 64 of A-Z a-z 0-9 - . _",
            ),
        ];
        for (config, expected) in cases {
            assert_eq!(
                WebhookNotifier::new(config).unwrap_err().to_string(),
                expected
            );
        }
        assert!(WebhookNotifier::new(WebhookConfig::default()).is_ok());
    }

    #[test]
    fn split_gives_one_notifier_per_endpoint_with_a_stable_fingerprint() {
        let key = crate::Secret::from_bytes(&[7u8; 24]).unwrap();
        let config = WebhookConfig::default()
            .with_operator(Endpoint::new(
                "https://u:pw@ops.example/h?t=1",
                [key.clone()],
            ))
            .with_project("p1", Endpoint::new("https://a.example/1", [key.clone()]))
            .with_project("p1", Endpoint::new("https://a.example/2", [key.clone()]))
            .with_project("p2", Endpoint::new("https://a.example/1", [key]));
        let parts = WebhookNotifier::split(config.clone()).unwrap();
        let owners: Vec<_> = parts.iter().map(|p| p.project.as_deref()).collect();
        assert_eq!(owners, [None, Some("p1"), Some("p1"), Some("p2")]);
        assert!(
            parts[0].shown.starts_with("https://ops.example #"),
            "{}",
            parts[0].shown
        );
        let prints: std::collections::HashSet<_> =
            parts.iter().map(|p| p.fingerprint.clone()).collect();
        assert_eq!(
            prints.len(),
            4,
            "the same URL for two projects is two endpoints"
        );
        let again = WebhookNotifier::split(config).unwrap();
        assert_eq!(again[3].fingerprint, parts[3].fingerprint);
        assert!(parts.iter().all(|p| p.fingerprint.len() == 64));
        assert!(
            WebhookNotifier::split(
                WebhookConfig::default().with_project("p", Endpoint::new("ftp://x", []))
            )
            .is_err()
        );
    }

    #[test]
    fn ledger_forgets_oldest_first() {
        let mut ledger = Ledger::default();
        let first = Uuid::from_u128(0);
        ledger.put(first, 0, Final::Delivered);
        for i in 1..=LEDGER_CAPACITY as u128 {
            ledger.put(Uuid::from_u128(i), 0, Final::Delivered);
        }
        assert_eq!(ledger.get(first, 0), None);
        assert_eq!(ledger.get(Uuid::from_u128(1), 0), Some(&Final::Delivered));
        assert_eq!(ledger.outcomes.len(), LEDGER_CAPACITY);
    }
}
