//! The `[amqp]` section of an agent's configuration file, and the checks
//! that turn it (with a broker URL and the environment) into an
//! [`AmqpConfig`].

use serde::Deserialize;
use wd_notify::settings::SettingsError;

use crate::{AmqpConfig, AmqpUrl, NotificationFormat, Priority};

/// The environment variable holding the broker password. It wins over
/// `[amqp] password`; a password in the URL itself wins over both.
pub const PASSWORD_ENV: &str = "WD_AMQP_PASSWORD";

/// `[amqp]`. Every key is optional; unknown keys are errors. Its `Debug`
/// hides the password and the URL's credentials.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// The broker URL (may also be given as a notify target).
    pub url: Option<String>,
    /// The broker password, if not in `url` or [`PASSWORD_ENV`].
    pub password: Option<String>,
    /// The topic exchange [default `nova`].
    pub exchange: Option<String>,
    /// Which of Nova's forms: `unversioned`, `versioned` or `both`
    /// [default `both`].
    pub format: Option<String>,
    /// The versioned form's topic [default `versioned_notifications`].
    pub topic: Option<String>,
    /// The legacy form's topic [default `notifications`].
    pub legacy_topic: Option<String>,
    /// The exchange's durability; must match the deployment [default false].
    pub durable: Option<bool>,
    /// Declare the exchange (true) or only publish to an existing one.
    pub declare: Option<bool>,
    /// Declare a queue named like the routing key and bind it, as
    /// oslo.messaging's notifier does, so notifications wait for listeners
    /// [default true]. With false, a notification no queue takes is a failed
    /// delivery that the queue retries.
    pub declare_queue: Option<bool>,
    /// The priority [default `INFO`].
    pub priority: Option<String>,
    /// The service half of the versioned `publisher_id` [default `wd`].
    pub service: Option<String>,
    /// The service half of the legacy `publisher_id` [default `compute`].
    pub legacy_service: Option<String>,
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSettings")
            .field("url", &self.url.as_deref().map(wd_notify::redact_url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("exchange", &self.exchange)
            .field("format", &self.format)
            .field("topic", &self.topic)
            .field("legacy_topic", &self.legacy_topic)
            .finish_non_exhaustive()
    }
}

/// Whether `target` names a message broker (`amqp://`, `amqps://` or an
/// oslo transport URL `rabbit://`).
pub fn is_broker(target: &str) -> bool {
    let scheme = target
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase());
    matches!(scheme.as_deref(), Some("amqp" | "amqps" | "rabbit"))
}

/// Whether a broker URL carries a password (in any of its nodes). An
/// unparsable URL with `user:…@` counts as carrying one.
pub fn has_password(url: &str) -> bool {
    match AmqpUrl::new(url) {
        Ok(u) => u.has_password(),
        Err(_) => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => url[s + 3..at].contains(':'),
            _ => false,
        },
    }
}

impl AmqpSettings {
    /// Whether the section holds a secret: a password, in `password` or in
    /// `url`.
    pub fn holds_secrets(&self) -> bool {
        self.password.is_some() || self.url.as_deref().is_some_and(has_password)
    }

    /// The checked configuration for the broker at `url`, with the password
    /// of [`PASSWORD_ENV`] (read through `env`) or `[amqp] password` when
    /// the URL has none.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] naming what is wrong: the URL (shown without
    /// credentials), `amqp.format` or `amqp.priority`.
    pub fn config(
        &self,
        url: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AmqpConfig, SettingsError> {
        let bad_url = |e: crate::Error| SettingsError(format!("AMQP target: {e}"));
        let parsed = AmqpUrl::new(url).map_err(bad_url)?;
        let parsed = match env(PASSWORD_ENV).or_else(|| self.password.clone()) {
            Some(p) if !parsed.has_password() => parsed.with_password(&p).map_err(bad_url)?,
            _ => parsed,
        };
        let mut c = AmqpConfig::new(parsed);
        if let Some(x) = &self.exchange {
            c = c.with_exchange(x.clone());
        }
        if let Some(x) = &self.topic {
            c = c.with_topic(x.clone());
        }
        if let Some(x) = &self.legacy_topic {
            c = c.with_legacy_topics(vec![x.clone()]);
        }
        if let Some(x) = &self.format {
            let f: NotificationFormat = x
                .parse()
                .map_err(|e| SettingsError(format!("config key `amqp.format`: {e}")))?;
            c = c.with_format(f);
        }
        if let Some(x) = &self.legacy_service {
            c = c.with_legacy_service(x.clone());
        }
        if let Some(x) = self.durable {
            c = c.with_durable(x);
        }
        if let Some(x) = self.declare {
            c = c.with_declare(x);
        }
        c = c.with_declare_queue(self.declare_queue.unwrap_or(true));
        if let Some(x) = &self.service {
            c = c.with_service(x.clone());
        }
        if let Some(x) = &self.priority {
            let p: Priority = x
                .parse()
                .map_err(|e| SettingsError(format!("config key `amqp.priority`: {e}")))?;
            c = c.with_priority(p);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brokers_and_their_passwords_are_recognised() {
        assert!(is_broker("AMQP://h/") && is_broker("amqps://h/") && is_broker("rabbit://h/"));
        assert!(!is_broker("https://h/") && !is_broker("log"));
        assert!(has_password("rabbit://guest@h1:5673,guest:s3cret@h2:5672/"));
        assert!(!has_password("amqp://guest@h/%2f"));
        assert!(has_password("amqp://u:s3cret@[bad"));
    }

    #[test]
    fn the_password_comes_from_url_then_environment_then_file() {
        let s = AmqpSettings {
            password: Some("from-file".into()),
            ..AmqpSettings::default()
        };
        assert!(s.holds_secrets());
        let env_pw = |k: &str| (k == PASSWORD_ENV).then(|| "from-env".to_owned());
        let url = |u: &str| AmqpUrl::new(u).unwrap();
        let c = s.config("amqp://u@127.0.0.1/%2f", &env_pw).unwrap();
        assert!(c.url == url("amqp://u:from-env@127.0.0.1/%2f"));
        let c = s.config("amqp://u@127.0.0.1/%2f", &|_| None).unwrap();
        assert!(c.url == url("amqp://u:from-file@127.0.0.1/%2f"));
        let c = s.config("amqp://u:inurl@127.0.0.1/%2f", &env_pw).unwrap();
        assert!(c.url == url("amqp://u:inurl@127.0.0.1/%2f"));
    }

    #[test]
    fn bad_values_are_named_and_secrets_hidden() {
        let s = AmqpSettings {
            format: Some("all".into()),
            password: Some("s3cret".into()),
            ..AmqpSettings::default()
        };
        let err = s
            .config("amqp://u@h/%2f", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config key `amqp.format`: unknown notification format `all`"),
            "{err}"
        );
        let s = AmqpSettings {
            priority: Some("LOUD".into()),
            ..AmqpSettings::default()
        };
        let err = s
            .config("amqp://u@h/%2f", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp.priority"), "{err}");
        let err = s
            .config("rabbit://u:s3cret@h:x/", &|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("AMQP target: ") && !err.contains("s3cret"),
            "{err}"
        );
        let shown = format!(
            "{:?}",
            AmqpSettings {
                url: Some("amqp://u:s3cret@h/%2f".into()),
                password: Some("s3cret".into()),
                ..AmqpSettings::default()
            }
        );
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
