//! [`AgentSettings`]: the agent's configuration file, as `wdguard watch
//! --config` and an embedding driver read it. Each transport's section
//! belongs to (and is checked by) its crate; this file only gathers them.

use std::path::PathBuf;

use serde::Deserialize;
use wd_notify::settings::{CoalesceSettings, QueueSettings, SettingsError};

/// The agent's configuration (TOML, as in the packaged `/etc/wd/wd.toml`).
/// Every key is optional; unknown keys are errors.
///
/// Sections:
/// - `[webhook]` and `[[webhook.projects]]`:
///   `wd_notify_webhook::WebhookSettings` (feature `webhook`);
/// - `[amqp]`: `wd_notify_amqp::AmqpSettings` (feature `amqp`);
/// - `[queue]`, `[coalesce]`: [`QueueSettings`], [`CoalesceSettings`] from
///   `wd-notify`;
/// - `[directory]`: [`DirectorySettings`](crate::directory::DirectorySettings).
///
/// A build without a transport's feature refuses that transport's section
/// and targets with an error naming the feature.
///
/// The program hosting the agent owns its log and any HTTP server, and
/// their keys: `wdguard watch` reads `log_format`, `log_level` and
/// `metrics` from the same file before it hands the rest to this type. The
/// `Debug` output hides every credential.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// The libvirt URI [default `qemu:///system`].
    pub connect: Option<String>,
    /// This compute host's name [default: Nova's `[DEFAULT] host`, else the
    /// machine's hostname].
    pub host: Option<String>,
    /// Where to notify: `log`, http(s) webhook URLs (operator endpoints),
    /// a broker URL (`amqp://`, `amqps://`, `rabbit://`).
    #[serde(default)]
    pub notify: Vec<String>,
    /// The spool root: each destination's durable queue, and the episode
    /// ledger. Without one, queues are in memory.
    pub spool: Option<PathBuf>,
    /// Nova's configuration file: publish to the bus Nova publishes to.
    pub nova_config: Option<PathBuf>,
    /// Keep retrying when libvirt is unreachable at startup, instead of
    /// failing [default false].
    pub wait: Option<bool>,
    /// Open libvirt read-only [default true].
    pub read_only: Option<bool>,
    /// The SASL credentials for a libvirt server that asks for them
    /// (`qemu+tcp://`, `qemu+tls://`), for what libvirt's own `auth.conf`
    /// does not give.
    #[serde(default)]
    pub connect_auth: ConnectAuthSettings,
    /// Webhook settings.
    #[cfg(feature = "webhook")]
    #[serde(default)]
    pub webhook: wd_notify_webhook::WebhookSettings,
    /// Webhook settings: refused, this build has no webhook transport.
    #[cfg(not(feature = "webhook"))]
    pub webhook: Option<serde::de::IgnoredAny>,
    /// Message-bus settings.
    #[cfg(feature = "amqp")]
    #[serde(default)]
    pub amqp: wd_notify_amqp::AmqpSettings,
    /// Message-bus settings: refused, this build has no AMQP transport.
    #[cfg(not(feature = "amqp"))]
    pub amqp: Option<serde::de::IgnoredAny>,
    /// Storm control.
    #[serde(default)]
    pub coalesce: CoalesceSettings,
    /// Each destination's queue: its bounds, redelivery delays and attempt
    /// timeout (its one retry loop).
    #[serde(default)]
    pub queue: QueueSettings,
    /// The bounds of the owner cache.
    #[serde(default)]
    pub directory: crate::directory::DirectorySettings,
    /// How often the delivery health line is logged, in seconds [default
    /// 300].
    pub health_interval_secs: Option<f64>,
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let notify: Vec<String> = self.notify.iter().map(|t| display_target(t)).collect();
        f.debug_struct("AgentSettings")
            .field("connect", &self.connect)
            .field("host", &self.host)
            .field("notify", &notify)
            .field("spool", &self.spool)
            .field("nova_config", &self.nova_config)
            .field("wait", &self.wait)
            .field("read_only", &self.read_only)
            .field("connect_auth", &self.connect_auth)
            .field("webhook", &self.webhook)
            .field("amqp", &self.amqp)
            .field("coalesce", &self.coalesce)
            .field("queue", &self.queue)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

/// A notify target as logs, `Debug` and errors show it: a webhook URL as
/// scheme, host, port and a short hash (its path and query may be a
/// tenant's or hold a token), a broker URL without its password.
pub fn display_target(target: &str) -> String {
    if !(target.starts_with("http://") || target.starts_with("https://")) {
        return wd_notify::redact_url(target);
    }
    #[cfg(feature = "webhook")]
    {
        wd_notify_webhook::display_url(target)
    }
    #[cfg(not(feature = "webhook"))]
    {
        let (scheme, rest) = target.split_once("://").unwrap_or(("http", target));
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        format!("{scheme}://{host}/…")
    }
}

/// Whether a notify target is a secret: a broker URL with a password
/// (`user:password@`), or a webhook URL that is one by
/// `wd_notify_webhook::url_holds_secret` (user info, a query, or a token in
/// its path). Such a target may not be given on the command line, and a
/// config file holding one must not be readable by others.
pub fn target_holds_secret(target: &str) -> bool {
    #[cfg(feature = "webhook")]
    if target.starts_with("http://") || target.starts_with("https://") {
        return wd_notify_webhook::url_holds_secret(target);
    }
    #[cfg(feature = "amqp")]
    {
        wd_notify_amqp::settings::is_broker(target)
            && wd_notify_amqp::settings::has_password(target)
    }
    #[cfg(not(feature = "amqp"))]
    {
        match (target.find("://"), target.rfind('@')) {
            (Some(s), Some(at)) if at > s => target[s + 3..at].contains(':'),
            _ => false,
        }
    }
}

impl AgentSettings {
    /// Whether the configuration holds a secret: a webhook or project
    /// secret, a webhook URL that is one, or a broker password (in `[amqp]`
    /// or in a notify target). A file holding one must not be readable by
    /// others.
    pub fn holds_secrets(&self) -> bool {
        !self.secret_keys().is_empty()
    }

    /// The keys that hold a secret (`notify[1]`, `webhook.projects[0].url`,
    /// `amqp.password`, …), for messages that name them, never their values.
    pub fn secret_keys(&self) -> Vec<String> {
        #[cfg_attr(not(any(feature = "webhook", feature = "amqp")), allow(unused_mut))]
        let mut keys: Vec<String> = self
            .notify
            .iter()
            .enumerate()
            .filter(|(_, t)| target_holds_secret(t))
            .map(|(i, _)| format!("notify[{i}]"))
            .collect();
        if self.connect_auth.password.is_some() {
            keys.push("connect_auth.password".to_owned());
        }
        #[cfg(feature = "webhook")]
        keys.extend(self.webhook.secret_keys());
        #[cfg(feature = "amqp")]
        {
            if self.amqp.password.is_some() {
                keys.push("amqp.password".to_owned());
            }
            if self
                .amqp
                .url
                .as_deref()
                .is_some_and(wd_notify_amqp::settings::has_password)
            {
                keys.push("amqp.url".to_owned());
            }
        }
        keys
    }
}

/// `[connect_auth]`: the user name and password the agent answers when its
/// libvirt server asks for them (SASL, as over `qemu+tcp://`), after libvirt
/// has taken what its client file `auth.conf` holds (`LIBVIRT_AUTH_FILE`,
/// else `~/.config/libvirt/auth.conf`, else `/etc/libvirt/auth.conf`). Give
/// both or neither; a file with the password must not be readable by
/// others. The agent never prompts: what neither gives fails the
/// connection with an error naming the missing credential.
#[derive(Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectAuthSettings {
    /// The SASL user name (libvirt's `authname`).
    pub username: Option<String>,
    /// Its password.
    pub password: Option<String>,
}

impl std::fmt::Debug for ConnectAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectAuthSettings")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ConnectAuthSettings {
    /// The credentials, or `None` when none are configured.
    ///
    /// # Errors
    ///
    /// A [`SettingsError`] when only one of the two keys is given, or the
    /// user name is empty.
    pub fn credentials(&self) -> Result<Option<wd_events::Credentials>, SettingsError> {
        match (&self.username, &self.password) {
            (None, None) => Ok(None),
            (Some(u), _) if u.trim().is_empty() => Err(SettingsError::key(
                "connect_auth.username",
                "must not be empty",
            )),
            (Some(u), Some(p)) => Ok(Some(wd_events::Credentials::new(u, p))),
            (Some(_), None) => Err(SettingsError::key(
                "connect_auth.password",
                "is missing: give it with `connect_auth.username`, or neither (to use libvirt's auth.conf)",
            )),
            (None, Some(_)) => Err(SettingsError::key(
                "connect_auth.username",
                "is missing: give it with `connect_auth.password`, or neither (to use libvirt's auth.conf)",
            )),
        }
    }
}
