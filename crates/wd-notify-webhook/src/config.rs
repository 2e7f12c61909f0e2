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
use crate::tls::{TlsCache, TlsConfig};

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
            .field("url", &display_url(&self.url))
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
    /// The URL for logs and errors ([`display_url`]).
    pub(crate) shown: String,
    pub(crate) secrets: Vec<Secret>,
    /// The HTTP client with this endpoint's TLS settings.
    pub(crate) client: reqwest::Client,
    /// Set after a 410 Gone: the receiver asked us to stop.
    gone: AtomicBool,
}

impl Target {
    /// Checks `endpoint` of `owner` and builds its HTTP client, with
    /// `config`'s TLS settings under the endpoint's own; the TLS
    /// configuration comes from `tls`, shared by every endpoint with the
    /// same settings (one connection pool per endpoint).
    pub(crate) fn new(
        owner: Owner,
        endpoint: &Endpoint,
        config: &WebhookConfig,
        tls: &mut TlsCache,
    ) -> Result<Target> {
        let shown = display_url(&endpoint.url);
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
        let client = tls.client(&config.tls.overridden_by(&endpoint.tls), config.timeout)?;
        Ok(Target {
            shown: display_url(url.as_str()),
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

/// How an endpoint is named in logs, errors and `/status`: its scheme,
/// host and port, and `#` with the first 8 hex digits of the SHA-256 of the
/// whole URL, which tells apart two endpoints on one host (compare with
/// `printf %s URL | sha256sum`). The user info, path, query and fragment
/// never show: Slack, Discord and Teams put the credential in the path.
///
/// ```
/// use wd_notify_webhook::display_url;
/// let shown = display_url("https://hooks.slack.com/services/T0/B0/XXXXXXXXXXXXXXXXXXXXXXXX");
/// assert!(shown.starts_with("https://hooks.slack.com #"), "{shown}");
/// assert!(!shown.contains("services"));
/// ```
pub fn display_url(raw: &str) -> String {
    use sha2::Digest as _;
    let parsed = Url::parse(raw).ok().filter(|u| u.host_str().is_some());
    // The parsed form, so that `display_url` of a URL and of its
    // normalised spelling agree.
    let hashed = parsed.as_ref().map_or(raw, Url::as_str);
    let digest = sha2::Sha256::digest(hashed.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    match parsed {
        Some(url) => match url.port() {
            Some(port) => format!(
                "{}://{}:{port} #{hash}",
                url.scheme(),
                url.host_str().unwrap_or("")
            ),
            None => format!(
                "{}://{} #{hash}",
                url.scheme(),
                url.host_str().unwrap_or("")
            ),
        },
        None => format!("(unparsable url) #{hash}"),
    }
}

/// Hosts whose webhook URLs carry their credential in the path: anyone who
/// knows the URL may post to the channel.
const TOKEN_PATH_HOSTS: [&str; 5] = [
    "hooks.slack.com",
    "discord.com",
    "discordapp.com",
    "webhook.office.com",
    "outlook.office.com",
];

/// Whether a webhook URL is itself a secret: it has user info
/// (`user:password@`), a query (`?token=`, `?code=`, `?sig=`), a host that
/// puts the credential in the path (Slack, Discord, Teams), or a path
/// segment that looks like a token: 16 characters or more, only letters,
/// digits, `-`, `_` and `.`, with both letters and digits. Such a URL may
/// not be given on the command line, and a config file holding one must
/// not be readable by others.
///
/// ```
/// use wd_notify_webhook::url_holds_secret;
/// assert!(url_holds_secret("https://hooks.slack.com/services/T0/B0/XXXX"));
/// assert!(url_holds_secret("https://h.example/hook/9f8e7d6c5b4a39281706"));
/// assert!(url_holds_secret("https://u:pw@h.example/hook"));
/// assert!(!url_holds_secret("https://h.example/watchdog/events"));
/// ```
pub fn url_holds_secret(raw: &str) -> bool {
    let Ok(url) = Url::parse(raw) else {
        // Unparsable: judged on the text, safe rather than sorry.
        return raw.contains('@') || raw.contains('?') || raw.split('/').any(token_like);
    };
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || TOKEN_PATH_HOSTS
            .iter()
            .any(|h| host == *h || host.ends_with(&format!(".{h}")))
        || url.path_segments().is_some_and(|mut s| s.any(token_like))
}

fn token_like(segment: &str) -> bool {
    segment.len() >= 16
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '%'))
        && segment.chars().any(|c| c.is_ascii_digit())
        && segment.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::from_bytes(&[1u8; 24]).unwrap()
    }

    #[test]
    fn invalid_configurations_are_rejected_naming_the_owner_not_the_secret() {
        let bad = display_url("https://user:hunter2@[bad/x?token=abc");
        let bad = format!(
            "webhook url `{bad}` for project p-a is not valid: invalid IPv6 address; expected an absolute http:// or https:// URL"
        );
        let x = display_url("https://x/");
        let no_secret = format!(
            "webhook endpoint `{x}` for project p-a has no signing secret; give at least one `whsec_` secret"
        );
        let ftp = display_url("ftp://x/");
        let ftp = format!(
            "webhook url `{ftp}` for the operator is not valid: scheme `ftp` is not http or https; expected an absolute http:// or https:// URL"
        );
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
                &no_secret,
            ),
            (
                WebhookConfig::default().with_operator(Endpoint::new("ftp://x/", [secret()])),
                &ftp,
            ),
            (
                WebhookConfig::default().with_project(
                    "p-a",
                    Endpoint::new("https://user:hunter2@[bad/x?token=abc", [secret()]),
                ),
                &bad,
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
    fn urls_show_only_scheme_host_port_and_a_short_hash() {
        let check = |input: &str, prefix: &str| {
            let shown = display_url(input);
            assert!(shown.starts_with(prefix), "{input}: {shown}");
            let hash = shown.rsplit_once(" #").unwrap().1;
            assert!(
                hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()),
                "{shown}"
            );
            for leak in ["pw", "token", "frag", "/p", "path", "secret"] {
                assert!(!shown.contains(leak), "{leak} in {shown}");
            }
        };
        check("https://h.example/p", "https://h.example #");
        check(
            "https://u:pw@h.example:8443/p?token=t#frag",
            "https://h.example:8443 #",
        );
        check("http://u@h.example/secret", "http://h.example #");
        check("not a url with pw@host/path?q", "(unparsable url) #");
        // Two endpoints on one host are told apart; a spelling of the same
        // URL is not.
        assert_ne!(display_url("https://h/a"), display_url("https://h/b"));
        assert_eq!(display_url("https://H/a"), display_url("https://h/a"));
    }

    #[test]
    fn urls_that_are_secrets() {
        let check =
            |url: &str, expected: bool| assert_eq!(url_holds_secret(url), expected, "{url}");
        check(
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
            true,
        );
        check("https://discord.com/api/webhooks/1234/abcd", true);
        check(
            "https://contoso.webhook.office.com/webhookb2/x/IncomingWebhook/y/z",
            true,
        );
        check(
            "https://h.example/hooks/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
            true,
        );
        check("https://h.example/hook?code=abc", true);
        check("https://user:pw@h.example/hook", true);
        check("https://user@h.example/hook", true);
        check("not a url/abcdefgh12345678", true);
        check("https://h.example/watchdog/events", false);
        check("https://h.example/api/v1/notifications", false);
        check("http://127.0.0.1:8080/p1", false);
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
