//! The webhook [`Notifier`]: one endpoint, its delivery and its outcomes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use time::OffsetDateTime;
use wd_notify::{BoxError, Notification, Notifier, NotifyError};

use crate::config::{Endpoint, Owner, Target, WebhookConfig, display_url};
use crate::error::{Error, Result};
use crate::event;
use crate::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
use crate::tls::TlsCache;

/// Delivers notifications as signed CloudEvents to one endpoint: the
/// operator's, or one project's.
///
/// Each endpoint is its own destination, with its own queue and retry in a
/// [`wd_notify::Router`], which routes each notification by its owner:
/// [`WebhookNotifier::split`] makes one notifier per endpoint of a
/// configuration. As a second guard, a project's notifier sends nothing for
/// an instance of another owner (it answers `Ok` without a request).
pub struct WebhookNotifier {
    target: Target,
    service: String,
}

impl fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("target", &self.target)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl WebhookNotifier {
    /// The notifier of `config`'s one endpoint.
    ///
    /// # Errors
    ///
    /// As [`WebhookNotifier::split`], and [`Error::EndpointCount`] when
    /// `config` has not exactly one endpoint (split it).
    pub fn new(config: WebhookConfig) -> Result<Self> {
        let mut all = Self::split(config)?;
        if all.len() != 1 {
            return Err(Error::EndpointCount { count: all.len() });
        }
        Ok(all.remove(0).notifier)
    }

    /// Splits `config` into one notifier per endpoint, each with its own
    /// HTTP client (and connection pool), so that each endpoint can have
    /// its own queue and worker and a hostile endpoint delays no other.
    ///
    /// # Errors
    ///
    /// The first bad setting: the service name, the timeout, a project id,
    /// an endpoint's URL, secrets or TLS files.
    pub fn split(config: WebhookConfig) -> Result<Vec<WebhookEndpoint>> {
        event::check_service(&config.service)?;
        if config.timeout.is_zero() {
            return Err(Error::InvalidTimeout);
        }
        // One TLS configuration per distinct setting for all of them: the
        // system trust store is held once, however many endpoints.
        let mut tls = TlsCache::default();
        let mut out = Vec::new();
        let mut one = |owner: Owner, e: &Endpoint| -> Result<WebhookEndpoint> {
            let project = match &owner {
                Owner::Operator => None,
                Owner::Project(p) => Some(p.clone()),
            };
            Ok(WebhookEndpoint {
                shown: display_url(&e.url),
                fingerprint: fingerprint(project.as_deref(), &e.url),
                project,
                notifier: WebhookNotifier {
                    target: Target::new(owner, e, &config, &mut tls)?,
                    service: config.service.clone(),
                },
            })
        };
        for e in &config.operator {
            out.push(one(Owner::Operator, e)?);
        }
        let projects: &BTreeMap<String, Vec<Endpoint>> = &config.projects;
        for (project, endpoints) in projects {
            if project.is_empty() || project.trim() != project {
                return Err(Error::InvalidProject {
                    project: project.clone(),
                });
            }
            for e in endpoints {
                out.push(one(Owner::Project(project.clone()), e)?);
            }
        }
        Ok(out)
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
        if let Owner::Project(p) = &self.target.owner
            && n.instance.project_id.as_deref() != Some(p.as_str())
        {
            tracing::debug!(event_id = %n.event_id, "not this endpoint's owner; nothing sent");
            return Ok(());
        }
        let id = n.event_id.to_string();
        let body = self.body(n);
        match self.deliver(&self.target, &id, &body).await {
            Outcome::Delivered => {
                tracing::debug!(event_id = %n.event_id, owner = %self.target.owner,
                    url = %self.target.shown, "webhook delivered");
                Ok(())
            }
            Outcome::Rejected(why) => Err(NotifyError::Permanent {
                message: format!("webhook delivery of event {} refused: {why}", n.event_id),
                source: None,
            }),
            Outcome::Retry {
                message,
                retry_after,
                source,
            } => Err(NotifyError::Retryable {
                message: format!("webhook delivery of event {} failed: {message}", n.event_id),
                retry_after,
                source,
            }),
        }
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
        let key = crate::Secret::from_bytes(&[7u8; 24]).unwrap();
        let one =
            WebhookConfig::default().with_operator(Endpoint::new("https://h/", [key.clone()]));
        assert!(WebhookNotifier::new(one.clone()).is_ok());
        for config in [
            WebhookConfig::default(),
            one.with_project("p", Endpoint::new("https://h/p", [key])),
        ] {
            let e = WebhookNotifier::new(config).unwrap_err().to_string();
            assert!(e.contains("exactly one endpoint"), "{e}");
        }
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

    #[tokio::test]
    async fn a_project_endpoint_sends_nothing_for_another_owner() {
        let key = crate::Secret::from_bytes(&[7u8; 24]).unwrap();
        // Nothing listens on the discard port: a request would fail.
        let config = WebhookConfig::default()
            .with_project("p-a", Endpoint::new("http://127.0.0.1:9/a", [key]));
        let notifier = WebhookNotifier::new(config).unwrap();
        let mut n = Notification::new(
            wd_notify::Instance::new(uuid::Uuid::from_u128(1)),
            "compute-1",
            wd_notify::Domain::new(uuid::Uuid::from_u128(2), "instance-1"),
            "pause",
            OffsetDateTime::now_utc(),
        );
        // Unknown, missing, empty, and near-miss owners: no request.
        for project in [
            None,
            Some("p-c"),
            Some(""),
            Some("P-A"),
            Some(" p-a"),
            Some("p-a "),
        ] {
            n.instance.project_id = project.map(str::to_owned);
            assert!(notifier.notify(&n).await.is_ok(), "{project:?}");
        }
        // Its own owner: a request, which fails here.
        n.instance.project_id = Some("p-a".into());
        assert!(notifier.notify(&n).await.unwrap_err().is_retryable());
    }
}
