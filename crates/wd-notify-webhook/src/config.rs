//! Configuration, and each endpoint checked into a [`Target`].
//!
//! Routing by owner is the router's (each destination's `wd_notify::Scope`): each endpoint is
//! its own destination. A project id is matched exactly, case-sensitively;
//! there is no default, wildcard or fallback project entry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Url;

use crate::error::{Error, Result};
use crate::signing::Secret;
use crate::tls::TlsConfig;

/// One receiver: a URL and the secrets its requests are signed with.
///
/// Give two secrets while rotating keys: every request then carries both
/// signatures, and the receiver may verify with either key.
#[derive(Clone, serde::Deserialize)]
pub struct Endpoint {
    /// An absolute `http://` or `https://` URL. Credentials in it are never
    /// logged.
    pub url: String,
    /// At least one signing secret, `whsec_<base64>`.
    pub secrets: Vec<Secret>,
    /// TLS settings for this endpoint; each field set overrides
    /// [`WebhookConfig::tls`].
    #[serde(default)]
    pub tls: TlsConfig,
}

impl Endpoint {
    /// An endpoint signed with one or more secrets.
    pub fn new(url: impl Into<String>, secrets: impl IntoIterator<Item = Secret>) -> Self {
        Endpoint {
            url: url.into(),
            secrets: secrets.into_iter().collect(),
            tls: TlsConfig::default(),
        }
    }

    /// Sets this endpoint's TLS settings (overriding the global ones field
    /// by field).
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redact_raw_url(&self.url))
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("tls", &self.tls)
            .finish()
    }
}

/// Where and how webhook notifications are sent.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The service name used in the CloudEvents `source`
    /// (`urn:wd:<host>:<service>`). Default `wd`.
    pub service: String,
    /// The whole-request timeout; the specification recommends 15 to 30 s.
    /// Default 15 s.
    pub timeout: Duration,
    /// Endpoints that receive every notification, whatever its owner.
    pub operator: Vec<Endpoint>,
    /// Each project's own endpoints, keyed by exact project (tenant) id.
    pub projects: BTreeMap<String, Vec<Endpoint>>,
    /// TLS settings for every endpoint (each endpoint may override them).
    pub tls: TlsConfig,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            service: "wd".into(),
            timeout: Duration::from_secs(15),
            operator: Vec::new(),
            projects: BTreeMap::new(),
            tls: TlsConfig::default(),
        }
    }
}

impl WebhookConfig {
    /// Sets the service name used in the CloudEvents `source`.
    #[must_use]
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the TLS settings every endpoint starts from.
    #[must_use]
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Adds an operator-wide endpoint, which receives every notification.
    #[must_use]
    pub fn with_operator(mut self, endpoint: Endpoint) -> Self {
        self.operator.push(endpoint);
        self
    }

    /// Adds an endpoint for one project's notifications.
    #[must_use]
    pub fn with_project(mut self, project_id: impl Into<String>, endpoint: Endpoint) -> Self {
        self.projects
            .entry(project_id.into())
            .or_default()
            .push(endpoint);
        self
    }
}

/// Whose endpoint a target is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    Operator,
    Project(String),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Operator => f.write_str("the operator"),
            Owner::Project(p) => write!(f, "project {p}"),
        }
    }
}

/// A validated endpoint with its runtime state.
pub(crate) struct Target {
    pub(crate) owner: Owner,
    pub(crate) url: Url,
    /// The URL without credentials or query, for logs and errors.
    pub(crate) shown: String,
    pub(crate) secrets: Vec<Secret>,
    /// The HTTP client with this endpoint's TLS settings.
    pub(crate) client: reqwest::Client,
    /// Set after a 410 Gone: the receiver asked us to stop.
    gone: AtomicBool,
}

impl Target {
    /// Checks `endpoint` of `owner` and builds its HTTP client, with
    /// `config`'s TLS settings under the endpoint's own.
    pub(crate) fn new(owner: Owner, endpoint: &Endpoint, config: &WebhookConfig) -> Result<Target> {
        let shown = redact_raw_url(&endpoint.url);
        let invalid = |reason: String| Error::InvalidUrl {
            url: shown.clone(),
            owner: owner.to_string(),
            reason,
        };
        let url = Url::parse(&endpoint.url).map_err(|e| invalid(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        if url.host_str().is_none() {
            return Err(invalid("it has no host".into()));
        }
        if url.scheme() == "http" && !is_loopback(&url) {
            // Signatures stop forgery, not eavesdropping: the event names the
            // project's instance, so say so, but allow it (test setups).
            tracing::warn!(%owner, url = %shown, "webhook endpoint is plain http; its events can be read in transit");
        }
        if endpoint.secrets.is_empty() {
            return Err(Error::NoSecret {
                url: shown,
                owner: owner.to_string(),
            });
        }
        let client = crate::tls::client(&config.tls.overridden_by(&endpoint.tls), config.timeout)?;
        Ok(Target {
            shown: redact_url(&url),
            owner,
            url,
            secrets: endpoint.secrets.clone(),
            client,
            gone: AtomicBool::new(false),
        })
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({} {})", self.owner, self.shown)
    }
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or("");
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A parsed URL for display: scheme, host, port and path only. Credentials,
/// query and fragment are dropped, because tokens often hide there.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str("***@");
    }
    shown.push_str(url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    if url.query().is_some() {
        shown.push_str("?***");
    }
    shown
}

/// A URL string that may not parse, for display: whatever precedes the last
/// `@` of the authority is replaced, and query and fragment are dropped.
pub(crate) fn redact_raw_url(raw: &str) -> String {
    if let Ok(url) = Url::parse(raw) {
        return redact_url(&url);
    }
    wd_notify::redact_url(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(&[1u8; 24]).unwrap()
    }

    #[test]
    fn invalid_configurations_are_rejected_naming_the_owner_not_the_secret() {
        let cases: Vec<(WebhookConfig, &str)> = vec![
            (
                WebhookConfig::default().with_project("", Endpoint::new("https://x/", [secret()])),
                "project id `` is not valid; project ids must be non-empty with no surrounding whitespace",
            ),
            (
                WebhookConfig::default()
                    .with_project("p ", Endpoint::new("https://x/", [secret()])),
                "project id `p ` is not valid; project ids must be non-empty with no surrounding whitespace",
            ),
            (
                WebhookConfig::default().with_project("p-a", Endpoint::new("https://x/", [])),
                "webhook endpoint `https://x/` for project p-a has no signing secret; give at least one `whsec_` secret",
            ),
            (
                WebhookConfig::default().with_operator(Endpoint::new("ftp://x/", [secret()])),
                "webhook url `ftp://x/` for the operator is not valid: scheme `ftp` is not http or https; expected an absolute http:// or https:// URL",
            ),
            (
                WebhookConfig::default().with_project(
                    "p-a",
                    Endpoint::new("https://user:hunter2@[bad/x?token=abc", [secret()]),
                ),
                "webhook url `https://***@[bad/x?***` for project p-a is not valid: invalid IPv6 address; expected an absolute http:// or https:// URL",
            ),
        ];
        for (config, expected) in cases {
            let err = crate::WebhookNotifier::split(config)
                .unwrap_err()
                .to_string();
            assert_eq!(err, expected);
            assert!(
                !err.contains("hunter2") && !err.contains("token=abc"),
                "{err}"
            );
        }
    }

    #[test]
    fn loopback_hosts() {
        for (url, expected) in [
            ("http://127.0.0.1:8080/x", true),
            ("http://localhost/", true),
            ("http://[::1]:9/", true),
            ("http://10.0.0.1/", false),
            ("https://h.example/", false),
        ] {
            assert_eq!(is_loopback(&Url::parse(url).unwrap()), expected, "{url}");
        }
    }

    #[test]
    fn urls_are_redacted_for_display() {
        let cases = [
            ("https://h.example/p", "https://h.example/p"),
            (
                "https://u:pw@h.example:8443/p?token=t#frag",
                "https://***@h.example:8443/p?***",
            ),
            ("http://u@h.example/", "http://***@h.example/"),
            ("not a url with pw@host/path?q", "***@host/path?***"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_raw_url(input), expected, "{input}");
        }
    }

    #[test]
    fn debug_output_redacts_secrets_and_credentials() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let config = WebhookConfig::default().with_project(
            "p-a",
            Endpoint::new("https://u:hunter2@h.example/?k=v", [s]),
        );
        let debug = format!(
            "{config:?} {:?}",
            crate::WebhookNotifier::split(config.clone()).unwrap()
        );
        for leak in ["MfKQ9r8G", "hunter2", "k=v"] {
            assert!(!debug.contains(leak), "{leak} in {debug}");
        }
        assert!(
            debug.contains("p-a") && debug.contains("h.example"),
            "{debug}"
        );
    }
}
