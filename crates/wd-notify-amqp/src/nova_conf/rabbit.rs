//! `[oslo_messaging_rabbit]`, with the transport URL's query overriding it,
//! as oslo.messaging's `ConfigOptsProxy` does.
//!
//! Every option of the section (oslo.messaging 18) is listed in [`OPTIONS`]
//! with what wd does with it:
//!
//! - honoured: the declarations (`amqp_durable_queues`, `amqp_auto_delete`,
//!   `rabbit_quorum_queue` and its limits, `rabbit_ha_queues`), TLS (`ssl`,
//!   `ssl_ca_file`, `ssl_cert_file`, `ssl_key_file`, `ssl_version`), the
//!   reconnect interval (`rabbit_retry_interval`, `rabbit_interval_max`) and
//!   `heartbeat_timeout_threshold`;
//! - not honoured although oslo's notifier would behave differently: logged
//!   once at startup by name, with what wd does instead;
//! - options of RPC servers and consumers only, or without effect in oslo:
//!   a notifier behaves the same whatever they say.
//!
//! A query key that is not an option of the section is an error, as in oslo.

use std::time::Duration;

use super::{Conf, RABBIT_SECTION, Unhonoured, parse_bool};
use crate::config::{AmqpConfig, Quorum};
use crate::error::Result;
use crate::tls::{TlsSettings, TlsVersion};
use crate::transport::AmqpUrl;

/// What wd does with an option.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read and followed.
    Honoured,
    /// Changes oslo's notifier, not followed by wd: logged with this reason
    /// when set to anything but `default`.
    Unhonoured {
        default: &'static str,
        why: &'static str,
    },
    /// Only RPC or consumers use it, or oslo ignores it.
    NoEffect,
}

/// Every option of `[oslo_messaging_rabbit]` in oslo.messaging 18.
const OPTIONS: &[(&str, Use)] = &[
    ("amqp_durable_queues", Use::Honoured),
    ("amqp_auto_delete", Use::Honoured),
    ("rpc_conn_pool_size", Use::NoEffect),
    ("conn_pool_min_size", Use::NoEffect),
    ("conn_pool_ttl", Use::NoEffect),
    ("ssl", Use::Honoured),
    ("ssl_version", Use::Honoured),
    ("ssl_key_file", Use::Honoured),
    ("ssl_cert_file", Use::Honoured),
    ("ssl_ca_file", Use::Honoured),
    // oslo 18 reads neither (host names are checked as the table in
    // `tls.rs` says, whatever these say).
    ("ssl_enforce_hostname_verification", Use::NoEffect),
    ("ssl_enforce_fips_mode", Use::NoEffect),
    (
        "kombu_reconnect_delay",
        Use::Unhonoured {
            default: "1.0",
            why: "oslo waits this long before reconnecting after a failed publish; wd reconnects with its backoff from rabbit_retry_interval up to rabbit_interval_max",
        },
    ),
    (
        "kombu_reconnect_splay",
        Use::Unhonoured {
            default: "0.0",
            why: "oslo adds up to this much random delay to reconnects; wd jitters every backoff on its own",
        },
    ),
    (
        "kombu_compression",
        Use::Unhonoured {
            default: "",
            why: "oslo compresses message bodies; wd publishes them uncompressed, which every oslo listener reads",
        },
    ),
    ("kombu_missing_consumer_retry_timeout", Use::NoEffect),
    (
        "kombu_failover_strategy",
        Use::Unhonoured {
            default: "round-robin",
            why: "oslo picks a random node at each failover; wd moves to the next node of its own random order",
        },
    ),
    (
        "rabbit_login_method",
        Use::Unhonoured {
            default: "AMQPLAIN",
            why: "wd logs in with PLAIN (the same user and password as AMQPLAIN); other methods are not supported",
        },
    ),
    ("rabbit_retry_interval", Use::Honoured),
    (
        "rabbit_retry_backoff",
        Use::Unhonoured {
            default: "2",
            why: "oslo adds this many seconds per failed connection attempt; wd doubles its wait, from rabbit_retry_interval up to rabbit_interval_max",
        },
    ),
    ("rabbit_interval_max", Use::Honoured),
    ("rabbit_ha_queues", Use::Honoured),
    ("rabbit_quorum_queue", Use::Honoured),
    ("rabbit_transient_quorum_queue", Use::NoEffect),
    ("rabbit_quorum_delivery_limit", Use::Honoured),
    ("rabbit_quorum_max_memory_length", Use::Honoured),
    ("rabbit_quorum_max_memory_bytes", Use::Honoured),
    ("rabbit_transient_queues_ttl", Use::NoEffect),
    ("rabbit_qos_prefetch_count", Use::NoEffect),
    ("heartbeat_timeout_threshold", Use::Honoured),
    (
        "heartbeat_rate",
        Use::Unhonoured {
            default: "3",
            why: "oslo checks the heartbeat this many times per timeout; wd's AMQP client sends heartbeats at half the negotiated timeout",
        },
    ),
    ("direct_mandatory_flag", Use::NoEffect),
    ("enable_cancel_on_failover", Use::NoEffect),
    ("use_queue_manager", Use::NoEffect),
    ("hostname", Use::NoEffect),
    ("processname", Use::NoEffect),
    ("rabbit_stream_fanout", Use::NoEffect),
];

/// The rabbit section of one `nova.conf`, with one transport URL's query.
pub(super) struct Rabbit<'c, 'a> {
    pub(super) conf: &'c Conf<'a>,
    pub(super) url: &'c AmqpUrl,
    /// The section the transport URL came from, for messages.
    pub(super) url_section: &'static str,
}

impl Rabbit<'_, '_> {
    /// Refuses query keys that are not options of the section, as oslo does.
    pub(super) fn check_query(&self) -> Result<()> {
        for (key, _) in self.url.options() {
            if !OPTIONS.iter().any(|(name, _)| name == key) {
                return Err(self.conf.error(
                    self.url_section,
                    "transport_url",
                    format!(
                        "query option `{key}` is not an option of [{RABBIT_SECTION}], which is what oslo.messaging reads from the query; remove it or fix its spelling"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The effective value of `key`: the URL query's, else the file's.
    /// Returns where it came from too, for messages.
    fn get(&self, key: &str) -> Result<Option<(String, String)>> {
        if let Some(v) = self.url.option(key) {
            return Ok(Some((
                format!("[{}] transport_url ?{key}", self.url_section),
                v.to_owned(),
            )));
        }
        Ok(self
            .conf
            .last(RABBIT_SECTION, key)?
            .map(|v| (format!("[{RABBIT_SECTION}] {key}"), v)))
    }

    fn error(&self, origin: &str, reason: String) -> crate::error::Error {
        // `origin` is `[section] key` or `[section] transport_url ?key`.
        let (section, key) = origin
            .trim_start_matches('[')
            .split_once("] ")
            .unwrap_or((RABBIT_SECTION, origin));
        self.conf.error(section, key, reason)
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key)? {
            None => Ok(default),
            Some((origin, v)) => parse_bool(&v).map_err(|reason| self.error(&origin, reason)),
        }
    }

    fn uint(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key)? {
            None => Ok(default),
            Some((origin, v)) => v.trim().parse::<u64>().map_err(|_| {
                self.error(&origin, format!("`{v}` is not a whole number of 0 or more"))
            }),
        }
    }

    fn path(&self, key: &str) -> Result<Option<std::path::PathBuf>> {
        Ok(self
            .get(key)?
            .map(|(_, v)| v)
            .filter(|v| !v.trim().is_empty())
            .map(|v| std::path::PathBuf::from(v.trim())))
    }

    /// `config` with every honoured option applied, and the unhonoured ones.
    pub(super) fn apply(&self, config: AmqpConfig) -> Result<(AmqpConfig, Vec<Unhonoured>)> {
        let quorum = if self.bool("rabbit_quorum_queue", false)? {
            Some(Quorum {
                delivery_limit: self.uint("rabbit_quorum_delivery_limit", 0)?,
                max_memory_length: self.uint("rabbit_quorum_max_memory_length", 0)?,
                max_memory_bytes: self.uint("rabbit_quorum_max_memory_bytes", 0)?,
            })
        } else {
            None
        };
        // oslo: `durable = amqp_durable_queues or rabbit_quorum_queue`.
        let durable = self.bool("amqp_durable_queues", false)? || quorum.is_some();
        let mut config = config
            .with_durable(durable)
            .with_auto_delete(self.bool("amqp_auto_delete", false)?)
            .with_ha_queues(self.bool("rabbit_ha_queues", false)?)
            .with_quorum(quorum);

        // The query's `ssl` already decided the URL's TLS; the file's
        // applies only when the query does not say.
        let tls = match self.url.option("ssl") {
            Some(_) => self.url.tls(),
            None => self.bool("ssl", false)?,
        };
        config.url = if tls {
            config.url.with_tls()
        } else {
            config.url.without_tls()
        };
        if tls {
            let mut settings = TlsSettings {
                ca_file: self.path("ssl_ca_file")?,
                cert_file: self.path("ssl_cert_file")?,
                key_file: self.path("ssl_key_file")?,
                ..TlsSettings::default()
            };
            if let Some((origin, v)) = self.get("ssl_version")? {
                settings.version =
                    TlsVersion::parse_oslo(&v).map_err(|reason| self.error(&origin, reason))?;
            }
            config = config.with_tls(settings);
        }

        let min = self.uint("rabbit_retry_interval", 1)?.clamp(1, 3600);
        let max = self.uint("rabbit_interval_max", 30)?.clamp(1, 3600);
        config = config.with_reconnect(Duration::from_secs(min), Duration::from_secs(max));
        config.heartbeat =
            Some(u16::try_from(self.uint("heartbeat_timeout_threshold", 60)?).unwrap_or(u16::MAX));

        let mut unhonoured = Vec::new();
        for (name, usage) in OPTIONS {
            let Use::Unhonoured { default, why } = usage else {
                continue;
            };
            if let Some((origin, value)) = self.get(name)?
                && !value.trim().eq_ignore_ascii_case(default)
                && !(value.trim().parse::<f64>().ok())
                    .zip(default.parse::<f64>().ok())
                    .is_some_and(|(a, b)| a == b)
            {
                unhonoured.push(Unhonoured {
                    option: origin,
                    value,
                    why: (*why).to_owned(),
                });
            }
        }
        Ok((config, unhonoured))
    }
}
