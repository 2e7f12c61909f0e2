//! The bus settings Nova already has, read from its `nova.conf`.
//!
//! `wdguard watch --nova-config /etc/nova/nova.conf` publishes where and how
//! Nova publishes, with no configuration of its own:
//!
//! | section / key                                    | used as (default)                                   |
//! |--------------------------------------------------|-----------------------------------------------------|
//! | `[oslo_messaging_notifications] driver`          | whether and how to publish (below)                  |
//! | `[oslo_messaging_notifications] transport_url`   | the broker (falls back to the next row)             |
//! | `[DEFAULT] transport_url`                        | the broker                                          |
//! | `[oslo_messaging_notifications] topics`          | legacy topics (`notifications`)                     |
//! | `[notifications] notification_format`            | the [`NotificationFormat`] (Nova's default, `unversioned`)      |
//! | `[notifications] versioned_notifications_topics` | versioned topics (`versioned_notifications`)        |
//! | `[DEFAULT] host`                                 | the compute host's name                             |
//! | `[DEFAULT] control_exchange`                     | the exchange (`nova`)                               |
//! | `[oslo_messaging_rabbit] …`                      | declarations, TLS, reconnects: see below            |
//!
//! `[oslo_messaging_rabbit]` is read as oslo.messaging reads it, with the
//! transport URL's query overriding the file (`?ssl=1&ssl_ca_file=…`):
//!
//! - `rabbit_quorum_queue` (with `rabbit_quorum_delivery_limit`,
//!   `rabbit_quorum_max_memory_length`, `rabbit_quorum_max_memory_bytes`):
//!   queues are declared `x-queue-type: quorum`, and the exchange and queues
//!   durable, whatever `amqp_durable_queues` says;
//! - `amqp_durable_queues`, `amqp_auto_delete`, `rabbit_ha_queues`
//!   (`x-ha-policy: all`): the exchange's and queues' declarations;
//! - `ssl`, `ssl_ca_file`, `ssl_cert_file`, `ssl_key_file`, `ssl_version`:
//!   TLS, with oslo's trust and host-name rules ([`TlsSettings`]);
//! - `rabbit_retry_interval`, `rabbit_interval_max`: the reconnect backoff;
//!   `heartbeat_timeout_threshold`: the AMQP heartbeat.
//!
//! The options that would make oslo's notifier behave differently but that
//! wd does not follow (`kombu_compression`, `kombu_failover_strategy =
//! shuffle`, `rabbit_login_method`, `[oslo_messaging_notifications] retry`,
//! …) are listed in [`NovaConf::unhonoured`] and logged by name when the file
//! is loaded; options only RPC servers use change nothing for a notifier.
//! Values go through oslo.config's `$` interpolation (`$my_ip`, `${host}`,
//! `$$` for a literal `$`).
//!
//! [`TlsSettings`]: crate::TlsSettings
//!
//! oslo.messaging's notification drivers, and what each means here:
//!
//! - `messagingv2`: publish with the 2.0 envelope (what Nova deployments use);
//! - `messaging`: publish the bare message (oslo's older 1.0 format);
//! - `log`: oslo writes notifications to its log, so wd logs them too;
//! - `noop`, or no driver at all (oslo's default): Nova sends no
//!   notifications, so wd publishes none to the bus;
//! - `routing` and `test` are refused: the first needs its own routing file,
//!   the second exists only inside one Python process.
//!
//! The INI dialect is oslo.config's: `#` and `;` start a comment only at the
//! start of a line, values are not unescaped, a repeated key's last value
//! wins (a multi-valued key such as `driver` keeps them all), and a section
//! may appear more than once. Every error names the file, the section and the
//! key, and never shows a password.

use std::path::Path;

use ini::{Ini, ParseOption};

use crate::config::{AmqpConfig, NotificationFormat};
use crate::error::{Error, Result};
use crate::transport::AmqpUrl;

mod interpolate;
mod rabbit;

use rabbit::Rabbit;

/// The notification section of oslo.messaging.
pub const NOTIFICATIONS_SECTION: &str = "oslo_messaging_notifications";

/// The RabbitMQ driver's section of oslo.messaging.
pub const RABBIT_SECTION: &str = "oslo_messaging_rabbit";

/// oslo.config's booleans (case-insensitive).
fn parse_bool(v: &str) -> std::result::Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("`{v}` is not a boolean; allowed: true, false")),
    }
}

/// The largest `nova.conf` read, in bytes: real ones are tens of KiB.
const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// An oslo.messaging notification driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Driver {
    /// `messagingv2`: the 2.0 envelope.
    MessagingV2,
    /// `messaging`: the bare 1.0 message.
    Messaging,
    /// `log`: notifications go to the log.
    Log,
    /// `noop`: nothing is sent.
    Noop,
}

/// What `nova.conf` says about notifications.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NovaConf {
    /// The drivers, in file order (empty: Nova sends no notifications).
    pub drivers: Vec<Driver>,
    /// The publisher for the bus, when a `messaging` or `messagingv2`
    /// driver is set.
    pub bus: Option<AmqpConfig>,
    /// `[DEFAULT] host`, when set.
    pub host: Option<String>,
    /// Options that change what oslo.messaging would do but that wd does
    /// not honour, each with why; [`NovaConf::load`] logs them.
    pub unhonoured: Vec<Unhonoured>,
}

/// An option set in `nova.conf` (or the transport URL's query) that changes
/// oslo.messaging's behaviour and that wd does not follow.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unhonoured {
    /// `[section] key`, or `transport_url ?key`.
    pub option: String,
    /// Its value.
    pub value: String,
    /// What oslo does with it and what wd does instead.
    pub why: String,
}

impl NovaConf {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<NovaConf> {
        let shown = path.display().to_string();
        let read_err = |reason: String| Error::ReadNovaConf {
            path: shown.clone(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| read_err(e.to_string()))?
            .len();
        if len > MAX_BYTES {
            return Err(read_err(format!(
                "it is {len} bytes; at most {MAX_BYTES} are read"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read_err(e.to_string()))?;
        let conf = NovaConf::parse(&shown, &text)?;
        for u in &conf.unhonoured {
            tracing::warn!(config = %shown, option = %u.option, value = %u.value,
                "nova.conf option not honoured by wd: {}", u.why);
        }
        Ok(conf)
    }

    /// Parses the text of a `nova.conf`; `path` is only for messages.
    pub fn parse(path: &str, text: &str) -> Result<NovaConf> {
        let ini = Ini::load_from_str_opt(
            text,
            ParseOption {
                // oslo.config strips one pair of surrounding quotes, keeps
                // backslashes, and joins indented continuation lines.
                enabled_quote: true,
                enabled_escape: false,
                enabled_indented_mutiline_value: true,
                enabled_preserve_key_leading_whitespace: false,
            },
        )
        .map_err(|e| Error::ReadNovaConf {
            path: path.to_owned(),
            // The parser's message names a position, never a value.
            reason: format!("not INI at line {}: {}", e.line + 1, e.msg),
        })?;
        let conf = Conf { path, ini: &ini };

        let mut drivers = Vec::new();
        for raw in conf.all(NOTIFICATIONS_SECTION, "driver")? {
            for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                drivers.push(match name {
                    "messagingv2" => Driver::MessagingV2,
                    "messaging" => Driver::Messaging,
                    "log" => Driver::Log,
                    "noop" => Driver::Noop,
                    other => {
                        return Err(conf.error(
                            NOTIFICATIONS_SECTION,
                            "driver",
                            format!(
                                "driver `{other}` is not supported; allowed: messagingv2, messaging, log, noop"
                            ),
                        ));
                    }
                });
            }
        }
        let v2 = drivers.contains(&Driver::MessagingV2);
        let v1 = drivers.contains(&Driver::Messaging);
        if v1 && v2 {
            return Err(conf.error(
                NOTIFICATIONS_SECTION,
                "driver",
                "both `messaging` and `messagingv2` are set, which would publish every notification twice; keep one".into(),
            ));
        }

        let host = match conf.last("DEFAULT", "host")?.as_deref() {
            Some("") => {
                return Err(conf.error(
                    "DEFAULT",
                    "host",
                    "is empty; set this compute host's name or remove the key".into(),
                ));
            }
            Some(h) if h.len() > 255 || h.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(conf.error(
                    "DEFAULT",
                    "host",
                    format!("`{h}` is not a host name: 1 to 255 characters without spaces"),
                ));
            }
            other => other.map(str::to_owned),
        };

        let (bus, unhonoured) = if v1 || v2 {
            let (bus, unhonoured) = conf.bus(v2)?;
            (Some(bus), unhonoured)
        } else {
            (None, Vec::new())
        };
        Ok(NovaConf {
            drivers,
            bus,
            host,
            unhonoured,
        })
    }

    /// Whether Nova writes notifications to its log (driver `log`).
    pub fn logs(&self) -> bool {
        self.drivers.contains(&Driver::Log)
    }
}

struct Conf<'a> {
    path: &'a str,
    ini: &'a Ini,
}

impl<'a> Conf<'a> {
    fn error(&self, section: &str, key: &str, reason: String) -> Error {
        Error::NovaConf {
            path: self.path.to_owned(),
            section: section.to_owned(),
            key: key.to_owned(),
            reason,
        }
    }

    /// Every raw value of `key` in every `[section]`, in file order.
    fn raw_all<'s>(&self, section: &'s str, key: &'s str) -> impl Iterator<Item = &'a str> + 's
    where
        'a: 's,
    {
        let ini: &'a Ini = self.ini;
        ini.section_all(Some(section))
            .flat_map(move |p| p.get_all(key))
            .map(str::trim)
    }

    /// `value` of `[section] key` with oslo.config's `$` interpolation.
    fn interpolated(&self, section: &str, key: &str, value: &str) -> Result<String> {
        let lookup = |s: &str, k: &str| self.raw_all(s, k).last().map(str::to_owned);
        interpolate::interpolate(value, section, &lookup).map_err(|reason| {
            // A URL's `$` may be inside its password: name no fragment of it.
            let reason = if key.contains("url") || key.contains("password") {
                "a `$` starts a reference to another option that this file does not set (or the references loop); write a literal `$` as `$$`".to_owned()
            } else {
                reason
            };
            self.error(section, key, reason)
        })
    }

    /// Every value of `key` in every `[section]`, in file order, interpolated.
    fn all(&self, section: &str, key: &str) -> Result<Vec<String>> {
        self.raw_all(section, key)
            .map(|v| self.interpolated(section, key, v))
            .collect()
    }

    /// The last value of `key` in `[section]`, as oslo.config takes it.
    fn last(&self, section: &str, key: &str) -> Result<Option<String>> {
        match self.raw_all(section, key).last() {
            Some(v) => self.interpolated(section, key, v).map(Some),
            None => Ok(None),
        }
    }

    fn topics(&self, section: &str, key: &str, default: &str) -> Result<Vec<String>> {
        let Some(raw) = self.last(section, key)? else {
            return Ok(vec![default.to_owned()]);
        };
        let topics: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        if topics.is_empty() {
            return Err(self.error(
                section,
                key,
                format!("is empty; give one or more topics, comma-separated (default `{default}`)"),
            ));
        }
        Ok(topics)
    }

    fn bus(&self, envelope: bool) -> Result<(AmqpConfig, Vec<Unhonoured>)> {
        let (section, raw) = match self.last(NOTIFICATIONS_SECTION, "transport_url")? {
            Some(u) if !u.is_empty() => (NOTIFICATIONS_SECTION, u),
            _ => match self.last("DEFAULT", "transport_url")? {
                Some(u) if !u.is_empty() => ("DEFAULT", u),
                _ => {
                    return Err(self.error(
                        "DEFAULT",
                        "transport_url",
                        format!(
                            "is not set, nor [{NOTIFICATIONS_SECTION}] transport_url; the driver publishes to a broker, so give one (rabbit://user:password@host:5672/vhost)"
                        ),
                    ));
                }
            },
        };
        let scheme = raw
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        if scheme != "rabbit" {
            let why = match scheme.as_str() {
                "amqp" => {
                    "oslo's amqp:// is its AMQP 1.0 driver, which wd does not speak".to_owned()
                }
                "" => "it has no scheme".to_owned(),
                other => format!("scheme `{other}` is not a RabbitMQ transport"),
            };
            return Err(self.error(
                section,
                "transport_url",
                format!(
                    "`{}`: {why}; allowed: rabbit://user:password@host1:port[,user:password@host2:port]/vhost",
                    wd_notify::redact_url(&raw)
                ),
            ));
        }
        let url = AmqpUrl::new(raw.as_str()).map_err(|e| {
            let reason = match e {
                Error::InvalidUrl { url, reason } => format!("`{url}`: {reason}"),
                other => other.to_string(),
            };
            self.error(section, "transport_url", reason)
        })?;
        let rabbit = Rabbit {
            conf: self,
            url: &url,
            url_section: section,
        };
        rabbit.check_query()?;

        let mut config = AmqpConfig::new(url.clone())
            .with_envelope(envelope)
            .with_legacy_topics(self.topics(NOTIFICATIONS_SECTION, "topics", "notifications")?)
            .with_topics(self.topics(
                "notifications",
                "versioned_notifications_topics",
                "versioned_notifications",
            )?)
            // Nova's default when the key is absent.
            .with_format(NotificationFormat::Unversioned);
        if let Some(f) = self.last("notifications", "notification_format")? {
            let format = f
                .parse::<NotificationFormat>()
                .map_err(|e| self.error("notifications", "notification_format", e.to_string()))?;
            config = config.with_format(format);
        }
        if let Some(x) = self.last("DEFAULT", "control_exchange")? {
            config = config.with_exchange(x);
        }
        let (config, unhonoured) = rabbit.apply(config)?;
        config.validate().map_err(|e| {
            let (section, key) = match &e {
                Error::InvalidName {
                    what: "exchange", ..
                } => ("DEFAULT", "control_exchange"),
                Error::InvalidName {
                    what: "legacy topic",
                    ..
                } => (NOTIFICATIONS_SECTION, "topics"),
                Error::Queues { .. } => (RABBIT_SECTION, "rabbit_quorum_queue"),
                _ => ("notifications", "versioned_notifications_topics"),
            };
            self.error(section, key, e.to_string())
        })?;
        let mut unhonoured = unhonoured;
        if let Some(r) = self.last(NOTIFICATIONS_SECTION, "retry")?
            && r.trim() != "-1"
        {
            unhonoured.push(Unhonoured {
                option: format!("[{NOTIFICATIONS_SECTION}] retry"),
                value: r,
                why: "oslo gives up on a notification after that many retries and drops it; wd keeps every notification in its queue and retries until it is delivered or the queue's bounds evict it".into(),
            });
        }
        Ok((config, unhonoured))
    }
}

#[cfg(test)]
mod tests;
