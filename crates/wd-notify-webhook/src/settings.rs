//! The `[webhook]` section of an agent's configuration file, and the checks
//! that turn it (with the operator endpoints and the environment) into a
//! [`WebhookConfig`].

use std::path::PathBuf;

use serde::Deserialize;
use wd_notify::QueueConfig;
use wd_notify::settings::{MAX_SECS, SettingsError, seconds};

use crate::{Endpoint, Secret, TlsConfig, WebhookConfig, url_holds_secret};

/// The environment variable holding the operator webhook secret(s),
/// `whsec_…`, space- or comma-separated for key rotation. It wins over
/// `[webhook] secrets`.
pub const SECRET_ENV: &str = "WD_WEBHOOK_SECRET";

/// The longest request timeout `[webhook] timeout_secs` accepts.
pub const MAX_TIMEOUT_SECS: f64 = 300.0;

/// `[webhook]`. Every key is optional; unknown keys are errors. Its `Debug`
/// shows no secret ([`Secret`]'s own `Debug` hides it).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Secrets for the operator endpoints (the http(s) targets in
    /// `notify`).
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// Request timeout in seconds [default 15, at most 300].
    pub timeout_secs: Option<f64>,
    /// The service name in the CloudEvents `source` [default `wd`].
    pub service: Option<String>,
    /// Per-project endpoints: a project's notifications go only there (and
    /// to operator endpoints).
    #[serde(default)]
    pub projects: Vec<ProjectSettings>,
    /// A PEM file of extra CAs every webhook trusts, besides the system
    /// trust store.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    /// The PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// `[[webhook.projects]]`: one project's endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    /// The project (tenant) id, exactly as in Nova's metadata.
    pub project: String,
    /// The endpoint URL.
    pub url: String,
    /// Its signing secrets.
    pub secrets: Vec<Secret>,
    /// The most entries waiting in this endpoint's own queue [default:
    /// `queue.max_entries`].
    pub max_entries: Option<usize>,
    /// The most bytes waiting in this endpoint's own queue [default:
    /// `queue.max_bytes`].
    pub max_bytes: Option<u64>,
    /// The longest wait between retries for this endpoint, and the most its
    /// `Retry-After` is honoured, in seconds [default:
    /// `queue.retry_max_delay_secs`].
    pub max_delay_secs: Option<f64>,
    /// Extra CAs for this endpoint only (overrides `[webhook] ca_file`).
    pub ca_file: Option<PathBuf>,
    /// This endpoint's client certificate (overrides `[webhook]`'s).
    pub client_cert: Option<PathBuf>,
    /// This endpoint's client key.
    pub client_key: Option<PathBuf>,
}

/// Parses [`SECRET_ENV`]'s value: secrets separated by commas or spaces.
///
/// # Errors
///
/// A [`SettingsError`] naming the variable (never the value).
pub fn parse_secret_list(raw: &str) -> Result<Vec<Secret>, SettingsError> {
    raw.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(|s| Secret::parse(s).map_err(|e| SettingsError(format!("{SECRET_ENV}: {e}"))))
        .collect()
}

impl WebhookSettings {
    /// Whether the section holds a secret (an operator or project secret,
    /// or a project URL that is one, see [`url_holds_secret`]).
    pub fn holds_secrets(&self) -> bool {
        !self.secret_keys().is_empty()
    }

    /// The keys that hold a secret, e.g. `webhook.secrets` and
    /// `webhook.projects[2].url`, for a message that names them (never
    /// their values).
    pub fn secret_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        if !self.secrets.is_empty() {
            keys.push("webhook.secrets".to_owned());
        }
        for (i, p) in self.projects.iter().enumerate() {
            if !p.secrets.is_empty() {
                keys.push(format!("webhook.projects[{i}].secrets"));
            }
            if url_holds_secret(&p.url) {
                keys.push(format!("webhook.projects[{i}].url"));
            }
        }
        keys
    }

    /// The checked webhook configuration: `operator_urls` (the http(s)
    /// targets of `notify`) signed with the secrets of [`SECRET_ENV`] (read
    /// through `env`) or else `[webhook] secrets`, and every project
    /// endpoint. `None` when there is no endpoint at all.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] naming the key that is wrong: an operator
    /// endpoint without secrets, a project entry without secrets, a timeout
    /// out of range, a malformed secret in the environment.
    pub fn config(
        &self,
        operator_urls: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<WebhookConfig>, SettingsError> {
        // The timeout is checked even when no endpoint uses it, so that a
        // bad value never waits for the first endpoint to be added.
        let mut c = WebhookConfig::default();
        if let Some(t) = self.timeout_secs {
            c = c.with_timeout(seconds("webhook.timeout_secs", t, MAX_TIMEOUT_SECS)?);
        }
        if operator_urls.is_empty() && self.projects.is_empty() {
            return Ok(None);
        }
        if let Some(s) = &self.service {
            c = c.with_service(s.clone());
        }
        c = c.with_tls(TlsConfig {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
        });
        for p in &self.projects {
            if p.secrets.is_empty() {
                return Err(SettingsError::key(
                    "webhook.projects",
                    format!("entry for project `{}` has no secrets", p.project),
                ));
            }
            c = c.with_project(
                p.project.clone(),
                Endpoint::new(p.url.clone(), p.secrets.clone()).with_tls(TlsConfig {
                    ca_file: p.ca_file.clone(),
                    client_cert: p.client_cert.clone(),
                    client_key: p.client_key.clone(),
                }),
            );
        }
        if !operator_urls.is_empty() {
            let secrets = match env(SECRET_ENV) {
                Some(raw) => parse_secret_list(&raw)?,
                None => self.secrets.clone(),
            };
            if secrets.is_empty() {
                return Err(SettingsError(format!(
                    "a webhook endpoint needs a signing secret: set {SECRET_ENV} or `[webhook] secrets` in the config file"
                )));
            }
            for url in operator_urls {
                c = c.with_operator(Endpoint::new(url.clone(), secrets.clone()));
            }
        }
        Ok(Some(c))
    }

    /// Project `project`'s own queue settings, from its
    /// `[[webhook.projects]]` entries on top of `base` (every entry for the
    /// project applies to all its endpoints' queues; the last one wins), or
    /// `None` when no entry sets any.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] when `max_delay_secs` is out of range.
    pub fn project_queue(
        &self,
        project: &str,
        base: &QueueConfig,
    ) -> Result<Option<QueueConfig>, SettingsError> {
        let mut queue = base.clone();
        let mut custom = false;
        for e in self.projects.iter().filter(|e| e.project == project) {
            if let Some(n) = e.max_entries {
                queue = queue.max_entries(n);
                custom = true;
            }
            if let Some(n) = e.max_bytes {
                queue = queue.max_bytes(n);
                custom = true;
            }
            if let Some(v) = e.max_delay_secs {
                let max = seconds("webhook.projects.max_delay_secs", v, MAX_SECS)?;
                let min = queue.retry_min_delay.min(max);
                queue = queue.retry_delays(min, max);
                custom = true;
            }
        }
        if custom {
            wd_notify::settings::check_queue("webhook.projects", &queue)?;
        }
        Ok(custom.then_some(queue))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn project(id: &str, secrets: Vec<Secret>) -> ProjectSettings {
        ProjectSettings {
            project: id.into(),
            url: format!("https://{id}.example/hook"),
            secrets,
            max_entries: None,
            max_bytes: None,
            max_delay_secs: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
        }
    }

    #[test]
    fn no_endpoint_is_no_config() {
        let s = WebhookSettings::default();
        assert!(s.config(&[], &|_| None).unwrap().is_none());
        assert!(!s.holds_secrets());
    }

    #[test]
    fn operator_secrets_come_from_the_environment_first() {
        let s = WebhookSettings::default();
        let urls = ["https://ops.example/hook".to_owned()];
        let err = s.config(&urls, &|_| None).unwrap_err().to_string();
        assert!(
            err.contains("needs a signing secret: set WD_WEBHOOK_SECRET"),
            "{err}"
        );
        let env = |k: &str| (k == SECRET_ENV).then(|| format!("{SECRET}, {SECRET}"));
        let c = s.config(&urls, &env).unwrap().unwrap();
        assert_eq!(c.operator.len(), 1);
        assert_eq!(c.operator[0].secrets.len(), 2);
        let err = s
            .config(&urls, &|_| Some("whsec_!!!".into()))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("WD_WEBHOOK_SECRET: "), "{err}");
        assert!(!err.contains("!!!"), "the value leaked: {err}");
    }

    #[test]
    fn projects_need_secrets_and_may_bound_their_queue() {
        let secret = Secret::parse(SECRET).unwrap();
        let mut s = WebhookSettings {
            projects: vec![project("p1", vec![])],
            ..WebhookSettings::default()
        };
        assert!(!s.holds_secrets());
        let err = s.config(&[], &|_| None).unwrap_err().to_string();
        assert_eq!(
            err,
            "config key `webhook.projects` entry for project `p1` has no secrets"
        );
        s.projects = vec![project("p1", vec![secret.clone()])];
        assert!(s.holds_secrets());
        assert!(s.config(&[], &|_| None).unwrap().is_some());
        let base = QueueConfig::default();
        assert_eq!(s.project_queue("p1", &base).unwrap(), None);
        s.projects[0].max_entries = Some(3);
        s.projects[0].max_delay_secs = Some(2.0);
        let q = s.project_queue("p1", &base).unwrap().unwrap();
        assert_eq!(q.max_entries, 3);
        assert_eq!(q.retry_max_delay, std::time::Duration::from_secs(2));
        assert!(q.retry_min_delay <= q.retry_max_delay);
        assert_eq!(s.project_queue("p2", &base).unwrap(), None);
        s.projects[0].max_delay_secs = Some(f64::NAN);
        assert!(s.project_queue("p1", &base).is_err());
    }

    #[test]
    fn a_project_url_with_a_token_counts_as_a_secret_by_its_key() {
        let mut s = WebhookSettings {
            projects: vec![project("p1", vec![]), project("p2", vec![])],
            ..WebhookSettings::default()
        };
        assert!(s.secret_keys().is_empty());
        s.projects[1].url =
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX".into();
        assert_eq!(s.secret_keys(), ["webhook.projects[1].url"]);
        assert!(s.holds_secrets());
        s.projects[0].url = "https://u:pw@p1.example/hook".into();
        s.projects[0].secrets = vec![Secret::parse(SECRET).unwrap()];
        assert_eq!(
            s.secret_keys(),
            [
                "webhook.projects[0].secrets",
                "webhook.projects[0].url",
                "webhook.projects[1].url"
            ]
        );
    }

    #[test]
    fn the_timeout_is_bounded_even_with_no_endpoint() {
        let s = WebhookSettings {
            timeout_secs: Some(1000.0),
            ..WebhookSettings::default()
        };
        let err = s.config(&[], &|_| None).unwrap_err().to_string();
        assert!(
            err.contains(
                "`webhook.timeout_secs` must be a positive number of seconds, at most 300"
            ),
            "{err}"
        );
    }
}
